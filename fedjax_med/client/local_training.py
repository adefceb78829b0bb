"""Local training of one client as a pure function, `lax.scan` over steps.

`build_local_update` returns a function of (server params, one client's padded
examples, its example count, key) that runs an optax optimizer for a fixed
number of scan steps and returns the model delta. The round maps it over the
cohort axis with `jax.vmap`.

Minibatches follow PyTorch's shuffled `DataLoader` with `drop_last=False`:
each epoch visits a fresh permutation of the client's real rows in batches of
`batch_size`, and the last batch of an epoch contains the remainder. Padding rows
are never drawn: they sort after every real row and get zero loss weight.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med import tree
from fedjax_med.client import key_tags
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.typing import Params, PRNGKey


_STEP_KEY_TAG = key_tags.DP_SGD_STEPS


class LocalResult(NamedTuple):
  """Output of one client's local training.

  Attributes:
    delta: trained params minus the server params, same pytree as params.
    loss: mean training loss over the steps taken, before each step's update.
    num_steps: number of optimizer steps actually taken.
    truncated: True when `num_epochs` needed more steps than the scan has,
      so the client stopped early.
    initial_loss: mean loss over all the client's rows at the server
      params, before any step, when the update was built with
      `report_initial_loss=True` (q-FFL needs it); NaN otherwise.
    planned_steps: steps the client would have taken without a
      `step_limit`, or None from an update that does not report it.
  """

  delta: Params
  loss: jax.Array
  num_steps: jax.Array
  truncated: jax.Array
  initial_loss: jax.Array = float('nan')
  planned_steps: jax.Array | None = None


LocalUpdate = Callable[[Params, dict, jax.Array, PRNGKey], LocalResult]


def batches_per_epoch(num_examples: jax.Array, batch_size: int) -> jax.Array:
  return (jnp.maximum(num_examples, 1) + batch_size - 1) // batch_size


def _epoch_permutation(
    key: PRNGKey, epoch: jax.Array, num_examples: jax.Array, max_examples: int
) -> jax.Array:
  """Return `[max_examples]` row order of `epoch`: real rows first, shuffled."""
  # Padding rows get a sort key above every real row's, so they land after
  # position n - 1. Each row's sort key comes from its own index, so the
  # permutation of the real rows does not depend on how far the client is
  # padded.
  epoch_key = jax.random.fold_in(key, epoch)
  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      epoch_key, jnp.arange(max_examples)
  )
  sort_keys = jax.vmap(jax.random.uniform)(row_keys)
  is_padding = jnp.arange(max_examples) >= num_examples
  return jnp.argsort(jnp.where(is_padding, 2.0, sort_keys))


def _batch_of(
    permutation: jax.Array, batch_in_epoch: jax.Array,
    num_examples: jax.Array, batch_size: int,
) -> tuple[jax.Array, jax.Array]:
  """Return the `[batch]` row indices and validity mask of one batch."""
  max_examples = permutation.shape[0]
  positions = batch_in_epoch * batch_size + jnp.arange(batch_size)
  valid = positions < num_examples
  # Slots past the end of the epoch repeat a real row with weight 0, so a
  # padding row (which may hold anything, even NaN) is never read.
  indices = jnp.where(
      valid, permutation[jnp.minimum(positions, max_examples - 1)],
      permutation[0],
  )
  return indices, valid


def _batch_indices(
    key: PRNGKey, step: jax.Array, num_examples: jax.Array,
    max_examples: int, batch_size: int,
) -> tuple[jax.Array, jax.Array]:
  """Return `[batch]` row indices and a `[batch]` validity mask for `step`."""
  per_epoch = batches_per_epoch(num_examples, batch_size)
  permutation = _epoch_permutation(
      key, step // per_epoch, num_examples, max_examples)
  return _batch_of(permutation, step % per_epoch, num_examples, batch_size)


# `_visit_order` packs `epoch + 1` into the 8-bit exponent field of a
# positive float32 sort key, and one more field value marks the slots past
# the last epoch. The field must stay below 255, where the key would be inf
# or NaN, so at most 253 epochs fit.
_MAX_PACKED_EPOCHS = 253


def _visit_layout(
    max_examples: int, num_steps: int, batch_size: int,
    num_epochs: int | None,
) -> tuple[int, int] | None:
  """Return `(slots, max_epochs)` for `_visit_order`, or None.

  `max_epochs` is the maximum number of epochs that a client of 1 to
  `max_examples` rows starts in `num_steps` steps, and `slots` the maximum
  number of (epoch, row) pairs that such a client needs. None means more
  epochs than the packed sort keys can encode.
  """
  sizes = np.arange(1, max(max_examples, 1) + 1)
  epochs = -(-num_steps // -(-sizes // batch_size))
  if num_epochs is not None:
    epochs = np.minimum(epochs, num_epochs)
  max_epochs = int(epochs.max())
  if max_epochs > _MAX_PACKED_EPOCHS:
    return None
  return int((sizes * epochs).max()), max_epochs


def _visit_order(
    key: PRNGKey, num_examples: jax.Array, *, slots: int, max_epochs: int,
    visits: int,
) -> jax.Array:
  """Return the first `visits` rows of the client's epochs, end to end.

  Position `e * n + p` of the result is position `p` of
  `_epoch_permutation(key, e, n, ...)` for a client of `n` rows, as long
  as it is below `visits`. The batches of `num_steps` steps never read
  past position `num_steps * batch_size`.

  Slot `s` is row `s % n` of epoch `s // n` and gets that row's
  sort key from `_epoch_permutation`. The slots are ordered by epoch, then
  sort key, then slot, which within an epoch is the row order of a stable
  argsort. `lax.top_k` selects just the first `visits` slots of that
  order, so the client needs one partial sort of `slots` keys instead of
  one full sort of `max_examples` keys per epoch.
  """
  count = jnp.maximum(num_examples, 1)
  slot = jnp.arange(slots)
  # Slots past `max_epochs` epochs are never visited and share one field.
  epoch = jnp.minimum(slot // count, max_epochs)
  row = slot % count
  epoch_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      key, jnp.arange(max_epochs + 1)
  )
  row_keys = jax.vmap(jax.random.fold_in)(epoch_keys[epoch], row)
  sort_keys = jax.vmap(jax.random.uniform)(row_keys)
  # `jax.random.uniform` returns m * 2**-23 for a 23-bit integer m, so m
  # is exact and orders the rows as the float does, ties included. A
  # positive float32 orders as its bits, so (epoch + 1, m) packed into the
  # exponent and fraction fields orders by epoch, then by sort key.
  mantissa = (sort_keys * 2**23).astype(jnp.uint32)
  packed = ((epoch + 1).astype(jnp.uint32) << 23) | mantissa
  # `lax.top_k` returns the largest values, the lower index first on ties.
  negated = -jax.lax.bitcast_convert_type(packed, jnp.float32)
  _, order = jax.lax.top_k(negated, visits)
  return row[order]


def _visited_positions(
    step: jax.Array, num_examples: jax.Array, num_visits: int,
    batch_size: int,
) -> tuple[jax.Array, jax.Array]:
  """Return the `[batch]` positions in the visit order and validity mask.

  Row `visit_order[positions]` is the batch of `_batch_indices` for the
  same client and step.
  """
  per_epoch = batches_per_epoch(num_examples, batch_size)
  last = num_visits - 1
  epoch_start = (step // per_epoch) * num_examples
  in_epoch = (step % per_epoch) * batch_size + jnp.arange(batch_size)
  valid = in_epoch < num_examples
  # As in `_batch_of`, batch entries past the end of the epoch repeat the
  # epoch's first row with weight 0.
  positions = jnp.where(
      valid, jnp.minimum(epoch_start + in_epoch, last),
      jnp.minimum(epoch_start, last),
  )
  return positions, valid


def build_local_update(
    model: tabular.Model,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
    num_epochs: int | None = None,
    proximal_mu: float = 0.0,
    report_initial_loss: bool = False,
    compute_dtype: str = 'float32',
    min_client_examples: int | None = None,
    unroll: bool = False,
) -> LocalUpdate:
  """Build the local training function of one client.

  Args:
    model: classifier whose `apply` maps `x [batch, features]` to logits.
    optimizer: any optax optimizer; its state starts fresh on every call.
    num_steps: length of the `lax.scan`. With `num_epochs=None` every client
      with data takes exactly this many steps.
    batch_size: examples per minibatch (the last batch of an epoch may hold
      fewer).
    num_epochs: if set, a client with `n` examples takes
      `num_epochs * ceil(n / batch_size)` steps and skips the rest of the
      scan; `num_steps` must then cover the largest client (see
      `max_local_steps`), or larger clients stop early and report
      `truncated`.
    proximal_mu: FedProx's mu (Li et al., 2020, "Federated Optimization in
      Heterogeneous Networks", MLSys). Each step's gradient gets
      mu * (w - w_server) added, the gradient of (mu / 2) ||w - w_server||^2
      against the server params the round started from. 0 is FedAvg.
    report_initial_loss: also compute the loss over all the client's rows
      at the server params, at the cost of one more full-client pass.
    compute_dtype: 'float32', or 'bfloat16' for mixed precision. Each step
      runs the model's forward and backward pass on bfloat16 copies of the
      params and rows. The params, the optimizer, the loss and the returned
      delta stay float32, so aggregation is float32 too.
    min_client_examples: the fewest rows of any client with rows, if known.
      It matters only where a client could start more epochs in
      `num_steps` than the visit order of `build_scan` covers (253). There
      it bounds how many epochs a client reaches, so each epoch's shuffle
      is drawn once before the scan instead of at every step, with the
      same result. A client with fewer rows would reuse its last shuffle
      in the epochs past the bound.
    unroll: unroll the scan over the steps into straight-line code (see
      `build_scan`). It helps convolutional models on CPU.

  Returns:
    `local_update(server_params, examples, num_examples, key) -> LocalResult`
    where `examples` contains `x [examples, features]` and `y [examples]`.
    A client with zero examples takes no step and returns a zero delta.
    The reported loss excludes the proximal term.
  """
  check_schedule(num_steps, batch_size, num_epochs)
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
        f'`compute_dtype` must be one of {COMPUTE_DTYPES}; got '
        f'{compute_dtype!r}.'
    )
  dtype = jnp.dtype(compute_dtype)

  def batch_loss(params, x, y, weights):
    if dtype != jnp.float32:
      # The cast's gradient is float32 again, so the optimizer keeps
      # float32 master params.
      params = jax.tree.map(lambda leaf: leaf.astype(dtype), params)
      x = x.astype(dtype)
    if model.apply_train is None:
      logits = model.apply(params, x)
    else:
      logits = model.apply_train(params, x, weights > 0)
    tabular.check_logits(logits, model.num_classes)
    losses = tabular.per_example_loss(
        logits.astype(jnp.float32), y, model.num_classes)
    # Padding rows repeat row 0 with weight 0, and 0 * inf would turn an
    # infinite loss of row 0 into NaN.
    return jnp.sum(jnp.where(weights > 0, weights * losses, 0.0))

  grad_fn = jax.value_and_grad(batch_loss)

  def batch_gradient(params, batch, valid, step_key):
    del step_key
    weights = valid / jnp.maximum(jnp.sum(valid), 1)
    return grad_fn(params, batch['x'], batch['y'], weights)

  max_epochs = None
  if min_client_examples is not None:
    max_epochs = -(-num_steps // -(-max(min_client_examples, 1) // batch_size))
  finalize = None
  if model.refresh_stats is not None:

    def finalize(params, examples, num_examples):
      # Every real row, in float32 whatever `compute_dtype` is: the stored
      # statistics are part of the update.
      real = jnp.arange(examples['x'].shape[0]) < num_examples
      rows = jnp.where(real, jnp.arange(examples['x'].shape[0]), 0)
      return model.refresh_stats(params, examples['x'][rows], real)

  local_update = build_scan(
      batch_gradient, optimizer, num_steps=num_steps, batch_size=batch_size,
      num_epochs=num_epochs, proximal_mu=proximal_mu,
      report_initial_loss=report_initial_loss, max_epochs=max_epochs,
      finalize=finalize, unroll=unroll,
  )
  # `build_round` checks the labels of its population against this.
  local_update.num_classes = model.num_classes
  return local_update


COMPUTE_DTYPES = ('float32', 'bfloat16')


def check_schedule(num_steps, batch_size, num_epochs) -> None:
  """Raise ValueError unless the step counts are integers of at least 1.

  `num_epochs` may also be None. Bools and floats are rejected: a float
  such as 1.5 failed later inside JAX, or became 3.0 steps.
  """
  federated.check_count('num_steps', num_steps)
  federated.check_count('batch_size', batch_size)
  if num_epochs is not None:
    federated.check_count('num_epochs', num_epochs, or_none=True)

# `gradient(params, batch, valid [batch], step_key) -> (loss, grads)`: the
# loss and gradient of one minibatch. `batch` has the client's example keys
# (`x`, `y`, or others such as survival `time` and `event`), each shaped
# `[batch, ...]`; rows with `valid` False are filler that must not count.
BatchGradient = Callable[
    [Params, dict, jax.Array, PRNGKey], tuple[jax.Array, Params]
]


def build_scan(
    batch_gradient: BatchGradient,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
    num_epochs: int | None = None,
    proximal_mu: float = 0.0,
    report_initial_loss: bool = False,
    max_epochs: int | None = None,
    finalize: Callable[[Params, dict, jax.Array], Params] | None = None,
    unroll: bool = False,
) -> LocalUpdate:
  """Build a client's `lax.scan` of optimizer steps around `batch_gradient`.

  Batch selection, step masking for zero-example clients and `num_epochs`,
  and the returned `LocalResult` are shared by plain training and DP-SGD;
  only the gradient of a batch differs. `step_key` is
  `fold_in(fold_in(key, _STEP_KEY_TAG), step)`, apart from the per-epoch
  shuffle keys `fold_in(key, epoch)`, for gradients that draw noise.
  `proximal_mu` adds FedProx's mu * (w - w_server) after `batch_gradient`,
  so under DP-SGD the proximal term is neither clipped nor noised: it does
  not depend on the data.

  The returned `local_update` takes an optional `correction`, a pytree like
  the params added to every step's gradient: SCAFFOLD's c - c_i; and an
  optional `start`, params to train from instead of the server params, for
  a model that stays on the client (Ditto's personal model); and an
  optional `step_limit`, the most steps the client may take, for a
  straggler stopped at a deadline (`truncated` still reports only the scan
  length). The proximal
  term still pulls towards the server params, and the loss and the delta
  are those of the steps taken from `start`.

  The minibatches of an epoch come from one shuffle of the client's rows.
  Before the scan, each client draws its visit order: the rows of its
  first `num_steps * batch_size` batch positions, epoch after epoch, from
  one partial sort (`lax.top_k`) instead of a full sort of `max_examples`
  keys per epoch. That order covers at most 253 epochs. Where a client of
  one row could start more, the shuffles are drawn once per epoch before
  the scan if the epochs are bounded (`num_epochs`, or `max_epochs` from
  the caller) by fewer than `num_steps`, and at every step otherwise. All
  three give the same batches.

  `finalize(params, examples, num_examples) -> params`, if given, runs once
  on the trained params of a client that took a step, before the delta:
  models with batch normalization recompute their statistics there.

  `unroll=True` compiles the steps as straight-line code instead of a
  loop. XLA's CPU backend runs a convolution inside a loop body far slower
  than outside one (jax-ml/jax issue 12868); `benchmarks/cnn_round.py`
  measures both forms. Compile time then grows with `num_steps`.
  """
  traced_mu = tree.is_traced(proximal_mu)
  if not traced_mu and not (proximal_mu >= 0 and proximal_mu < float('inf')):
    raise ValueError(
        f'`proximal_mu` must be finite and >= 0; got {proximal_mu}.'
    )

  def local_update(server_params, examples, num_examples, key,
                   correction=None, start=None, step_limit=None):
    # numpy input cannot be indexed by the traced batch indices.
    examples = jax.tree.map(jnp.asarray, examples)
    max_examples = examples['x'].shape[0]
    if num_epochs is None:
      requested_steps = jnp.where(num_examples > 0, num_steps, 0)
    else:
      requested_steps = num_epochs * batches_per_epoch(num_examples, batch_size)
      requested_steps = jnp.where(num_examples > 0, requested_steps, 0)
    planned_steps = jnp.minimum(requested_steps, num_steps)
    client_steps = planned_steps
    if step_limit is not None:
      client_steps = jnp.minimum(planned_steps, step_limit)
    step_keys = jax.random.fold_in(key, _STEP_KEY_TAG)
    if report_initial_loss:
      # One pass over every real row at the server params; the gradient is
      # unused, so XLA drops it.
      # Padding rows, which may hold anything, are replaced by row 0 with
      # weight 0, as in the minibatches.
      all_rows = jnp.arange(max_examples) < num_examples
      rows = jnp.where(all_rows, jnp.arange(max_examples), 0)
      initial_loss, _ = batch_gradient(
          server_params, jax.tree.map(lambda leaf: leaf[rows], examples),
          all_rows, step_keys,
      )
    else:
      initial_loss = jnp.float32(jnp.nan)

    rows, batch_indices = _batch_source(
        examples, key, num_examples, num_steps=num_steps,
        batch_size=batch_size, num_epochs=num_epochs, max_epochs=max_epochs,
    )

    def step(carry, step_index):
      params, opt_state = carry
      indices, valid = batch_indices(step_index)
      batch = jax.tree.map(lambda leaf: leaf[indices], rows)
      loss, grads = batch_gradient(
          params, batch, valid, jax.random.fold_in(step_keys, step_index),
      )
      if traced_mu or proximal_mu:
        grads = jax.tree.map(
            lambda g, w, w0: g + proximal_mu * (w - w0),
            grads, params, server_params,
        )
      if correction is not None:
        grads = tree.tree_add(grads, correction)
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      active = step_index < client_steps
      carry = (
          tree.tree_where(active, new_params, params),
          tree.tree_where(active, new_opt_state, opt_state),
      )
      return carry, jnp.where(active, loss, 0.0)

    if start is None:
      start = server_params
    init = (start, optimizer.init(start))
    (params, _), losses = jax.lax.scan(
        step, init, jnp.arange(num_steps), unroll=bool(unroll))
    if finalize is not None:
      params = tree.tree_where(
          client_steps > 0, finalize(params, examples, num_examples), params)
    mean_loss = jnp.sum(losses) / jnp.maximum(client_steps, 1)
    delta = tree.tree_sub(params, start)
    truncated = requested_steps > num_steps
    return LocalResult(
        delta, mean_loss, client_steps, truncated, initial_loss, planned_steps
    )

  return local_update


def _batch_source(
    examples: dict, key: PRNGKey, num_examples: jax.Array, *,
    num_steps: int, batch_size: int, num_epochs: int | None,
    max_epochs: int | None,
) -> tuple[dict, Callable[[jax.Array], tuple[jax.Array, jax.Array]]]:
  """Return `(rows, batch_indices)`, the minibatches of one client.

  `batch_indices(step) -> (indices, valid)` gives `[batch]` indices into
  the leading axis of every leaf of `rows` and a `[batch]` validity mask.
  The indexed rows are the batch of `_batch_indices`, whichever way below
  draws them.

  The visit order, drawn once before the scan, is the cheapest. Where it
  is no longer than the padded client, `rows` are the examples gathered
  in that order, so the scan reads at most `num_steps * batch_size` rows
  of the client instead of all its padded rows.

  Beyond the 253 epochs that the visit order covers, `rows` are the
  examples. Each epoch's shuffle is then drawn before the scan if the
  epochs are bounded (by `num_epochs`, or `max_epochs` from the caller) by
  fewer than `num_steps`, and at every step otherwise.
  """
  max_examples = jax.tree.leaves(examples)[0].shape[0]
  layout = _visit_layout(max_examples, num_steps, batch_size, num_epochs)
  if layout is not None:
    slots, layout_epochs = layout
    num_visits = min(slots, num_steps * batch_size)
    visit_order = _visit_order(
        key, num_examples, slots=slots, max_epochs=layout_epochs,
        visits=num_visits,
    )

    def visited_batch(step):
      return _visited_positions(step, num_examples, num_visits, batch_size)

    if num_visits <= max_examples:
      rows = jax.tree.map(lambda leaf: leaf[visit_order], examples)
      return rows, visited_batch

    def visited_rows(step):
      positions, valid = visited_batch(step)
      return visit_order[positions], valid

    return examples, visited_rows

  epochs = num_epochs if num_epochs is not None else max_epochs
  if epochs is None or epochs >= num_steps:
    return examples, lambda step: _batch_indices(
        key, step, num_examples, max_examples, batch_size)

  permutations = jax.vmap(
      lambda epoch: _epoch_permutation(key, epoch, num_examples, max_examples)
  )(jnp.arange(epochs))

  def batch_indices(step):
    per_epoch = batches_per_epoch(num_examples, batch_size)
    epoch = jnp.minimum(step // per_epoch, epochs - 1)
    return _batch_of(
        permutations[epoch], step % per_epoch, num_examples, batch_size)

  return examples, batch_indices


def max_local_steps(
    max_client_examples: int, batch_size: int, num_epochs: int
) -> int:
  """Return the scan length that covers `num_epochs` of the largest client."""
  per_epoch = -(-max(max_client_examples, 1) // batch_size)
  return num_epochs * per_epoch
