"""Local training of a Cox proportional-hazards model on one client.

`build_survival_local_update` returns the same kind of function as
`local_training.build_local_update`, (server params, one client's padded
examples, its example count, key) -> `LocalResult`, so `simulation.round`
vmaps it over the cohort unchanged. Only the minibatch loss differs: it is
the negative log Cox partial likelihood of
`models.survival.cox_partial_likelihood_loss`, with Breslow's handling of
tied times, computed over the rows of the minibatch.

Risk sets are restricted to the minibatch. A patient's risk set contains the
patients of the same batch whose time is at least theirs, not every patient
of the client who is still at risk. FLamby's Fed-TCGA-BRCA baseline
(`flamby/datasets/fed_tcga_brca/loss.py`) also computes its Cox loss per
batch, although it orders tied times arbitrarily instead of using Breslow's
rule. A batch with no death has a zero loss and no gradient. The batch loss
is therefore a noisy, biased estimate of the client's full partial
likelihood. Use `batch_size >= num_examples` for exact full-batch
gradients.

References:
  Cox. Regression Models and Life-Tables. Journal of the Royal Statistical
  Society B 34(2):187-220, 1972.

  Ogier du Terrail et al. FLamby: Datasets and Benchmarks for Cross-Silo
  Federated Learning in Realistic Healthcare Settings. NeurIPS 2022 Datasets
  and Benchmarks. https://arxiv.org/abs/2210.04620
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_med.client import local_training
from fedjax_med.models import survival
from fedjax_med.models import tabular
from fedjax_med.typing import Params

# Divisors of a batch's summed event terms, its valid events or valid rows.
LOSS_NORMALIZATIONS = ('events', 'rows')
_REQUIRED_KEYS = ('x', 'time', 'event')


def cox_model(kernel_init: survival.Initializer | None = None) -> tabular.Model:
  """Wrap `LinearCox` as a `tabular.Model` whose `apply` returns `[batch]`.

  Args:
    kernel_init: initializer of the `[features, 1]` kernel. None keeps
      `LinearCox`'s zero start.

  Returns:
    A `Model` with `num_classes` 0: `apply(params, x [batch, features])`
    returns the log-risk `[batch]`, not class logits.
  """
  if kernel_init is None:
    module = survival.LinearCox()
  else:
    module = survival.LinearCox(kernel_init=kernel_init)
  return tabular.from_flax(module, num_classes=0)


def log_risk(
    model: tabular.Model, params: Params, x: jax.Array
) -> jax.Array:
  """Apply `model` and return the log-risk `[batch]` of `x [batch, features]`.

  A model output of shape `[batch, 1]` is squeezed to `[batch]`.

  Raises:
    ValueError: if the output is neither `[batch]` nor `[batch, 1]`.
  """
  output = model.apply(params, x)
  if output.ndim == 2 and output.shape[1] == 1:
    output = output[:, 0]
  if output.shape != x.shape[:1]:
    raise ValueError(
        'A Cox model must map `x` of shape [batch, features] to a log-risk '
        f'of shape [batch] or [batch, 1]; got `x` shape {x.shape} and output '
        f'shape {output.shape}.'
    )
  return output


def batch_cox_loss(
    model: tabular.Model,
    params: Params,
    batch: dict,
    valid: jax.Array,
    *,
    loss_normalization: str = 'events',
) -> jax.Array:
  """Compute the Breslow Cox loss of one minibatch, counting `valid` rows only.

  Args:
    model: Cox model, see `log_risk`.
    params: model parameters.
    batch: `x [batch, features]`, `time [batch]` and `event [batch]`.
    valid: `[batch]` bool, True on the rows that count. The others are in no
      risk set and their events are ignored.
    loss_normalization: 'events' divides the summed event terms by the
      number of valid events, as `cox_partial_likelihood_loss` does.
      'rows' divides them by the number of valid rows, as FLamby's
      Fed-TCGA-BRCA `BaselineLoss` does (a mean over the batch).

  Returns:
    A float scalar, 0 when no valid row has an event.
  """
  risk = log_risk(model, params, batch['x'])
  loss = survival.cox_partial_likelihood_loss(
      risk, batch['time'], batch['event'], valid
  )
  if loss_normalization == 'rows':
    num_events = jnp.sum((batch['event'] != 0) & valid)
    num_rows = jnp.sum(valid)
    loss = loss * jnp.maximum(num_events, 1) / jnp.maximum(num_rows, 1)
  return loss


def _check_batch_keys(batch: dict) -> None:
  missing = [name for name in _REQUIRED_KEYS if name not in batch]
  if missing:
    raise ValueError(
        f'Survival training needs the example keys {list(_REQUIRED_KEYS)}; '
        f'the client examples lack {missing} and contain {sorted(batch)}. '
        'Load a survival dataset such as `data.tcga_brca.load_tcga_brca()`.'
    )


def build_survival_local_update(
    model: tabular.Model,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
    num_epochs: int | None = None,
    proximal_mu: float = 0.0,
    loss_normalization: str = 'events',
    report_initial_loss: bool = False,
    min_client_examples: int | None = None,
    unroll: bool = False,
) -> local_training.LocalUpdate:
  """Build the local training function of one client for a Cox model.

  Batch selection, epochs, the FedProx term and the returned `LocalResult`
  are those of `local_training.build_scan`. The shuffled batches never draw
  a padding row, and the batch slots after the last row of an epoch are
  masked out of the loss (see the module docstring for the risk sets).

  Args:
    model: Cox model whose `apply` maps `x [batch, features]` to the
      log-risk `[batch]` or `[batch, 1]`, such as `cox_model()`.
    optimizer: any optax optimizer; its state starts fresh on every call.
    num_steps: length of the `lax.scan`. With `num_epochs=None` every client
      with data takes exactly this many steps.
    batch_size: rows per minibatch (the last batch of an epoch may hold
      fewer).
    num_epochs: if set, a client with `n` rows takes
      `num_epochs * ceil(n / batch_size)` steps, capped at `num_steps`.
    proximal_mu: FedProx's mu; 0 is FedAvg. See
      `local_training.build_local_update`.
    loss_normalization: 'events' (default) or 'rows', see `batch_cox_loss`.
      The two differ by the factor (valid events) / (valid rows) per batch,
      which changes the effective learning rate of SGD but hardly that of
      Adam.
    report_initial_loss: also compute the Cox loss over all the client's
      rows at the server params (q-FFL weighs clients by it), with every
      row in one risk set.
    min_client_examples: the fewest rows of any client with rows, if
      known; as in `local_training.build_local_update`.
    unroll: unroll the scan over the steps, see `local_training.build_scan`.

  Returns:
    `local_update(server_params, examples, num_examples, key) -> LocalResult`
    where `examples` contains `x [examples, features]`, `time [examples]`
    and `event [examples]`. The reported loss is the mean batch loss before
    each step, without the proximal term.

  Raises:
    ValueError: if `num_steps` or `batch_size` is not an integer of at
      least 1, `num_epochs` is neither None nor such an integer,
      `proximal_mu` is negative or not finite, or
      `loss_normalization` is unknown. A client whose examples lack `x`,
      `time` or `event` raises ValueError when the update is first called.
  """
  local_training.check_schedule(num_steps, batch_size, num_epochs)
  if loss_normalization not in LOSS_NORMALIZATIONS:
    raise ValueError(
        f'`loss_normalization` must be one of {LOSS_NORMALIZATIONS}; got '
        f'{loss_normalization!r}.'
    )

  def loss_fn(params, batch, valid):
    return batch_cox_loss(
        model, params, batch, valid, loss_normalization=loss_normalization
    )

  grad_fn = jax.value_and_grad(loss_fn)

  def batch_gradient(params, batch, valid, step_key):
    del step_key
    _check_batch_keys(batch)
    return grad_fn(params, batch, valid)

  max_epochs = None
  if min_client_examples is not None:
    batches = -(-max(min_client_examples, 1) // batch_size)
    max_epochs = -(-num_steps // batches)
  local_update = local_training.build_scan(
      batch_gradient,
      optimizer,
      num_steps=num_steps,
      batch_size=batch_size,
      num_epochs=num_epochs,
      proximal_mu=proximal_mu,
      report_initial_loss=report_initial_loss,
      max_epochs=max_epochs,
      unroll=unroll,
  )
  # `build_round` checks the times and events of its population.
  local_update.survival = True
  return local_update
