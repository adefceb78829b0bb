"""Sample-level DP-SGD inside one client, with the contract of local training.

`build_dp_sgd_local_update` returns a `local_training.LocalUpdate`, so the
round can `jax.vmap` it over the cohort in place of `build_local_update`.
Each step takes one gradient per example of the minibatch and clips it to
L2 norm `l2_norm_clip` over all leaves together. It sums the clipped
gradients of the real examples, adds Gaussian noise of std
`noise_multiplier * l2_norm_clip` to the sum and divides by the fixed
`batch_size`. The optax optimizer then applies that noisy gradient.
Minibatches come from `local_training._batch_indices`, the same shuffled
epochs as ordinary local training.

The privacy unit is one example (one patient row) of a client, under
add-or-remove-one-example neighboring, and `privacy.example_accounting`
computes the epsilon.

References:
  Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, "Deep
  Learning with Differential Privacy", ACM CCS 2016,
  https://arxiv.org/abs/1607.00133.

  Chua, Ghazi, Kamath, Kumar, Manurangsi, Sinha and Zhang, "How Private are
  DP-SGD Implementations?", ICML 2024, https://arxiv.org/abs/2403.17673.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med import tree
from fedjax_med.client import local_training
from fedjax_med.models import tabular
from fedjax_med.privacy import clipping
from fedjax_med.privacy import noise
from fedjax_med.typing import Params, PRNGKey

def build_dp_sgd_local_update(
    model: tabular.Model,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
    l2_norm_clip: float,
    noise_multiplier: float,
    num_epochs: int | None = None,
    proximal_mu: float = 0.0,
    unroll: bool = False,
) -> local_training.LocalUpdate:
  """Build the DP-SGD training function of one client.

  Every step computes `per_example_grads` with `jax.vmap` of
  `jax.value_and_grad` over the `[batch]` rows. It clips each to L2 norm
  `l2_norm_clip` over all leaves together and sums them over the real rows
  only. Slots past the end of an epoch, which repeat a real row, add
  nothing. The step adds noise of std `noise_multiplier * l2_norm_clip` to
  every entry of the sum and divides the result by `batch_size`. The noise
  of each step comes from the step key that `local_training.build_scan`
  passes in, split into one key per leaf.

  The divisor is the constant `batch_size`, not the number of real rows in
  the batch, so the scale of each release does not depend on the data. A
  partial batch (the last of an epoch, or every batch of a client with
  fewer than `batch_size` examples) therefore gives a smaller gradient than
  ordinary training, which averages over the real rows. A client whose size
  is a multiple of `batch_size` gets, with no noise and no clipping, the
  same update as `build_local_update`.

  Warning:
    Batches here are drawn by shuffling without replacement within each
    epoch, so every example is used once per epoch (the scan may stop
    partway through the last epoch). The standard
    DP-SGD analysis (Abadi et al., 2016) assumes Poisson subsampling, in
    which each example joins each batch independently with probability
    `q`. `example_accounting.example_level_epsilon` accounts every step as
    if it were Poisson-sampled with `q = min(1, batch_size / num_examples)`.
    That is a common approximation, not a proven bound for this sampler:
    Chua et al. (2024) show that shuffled batches can be less private than
    the Poisson analysis reports. The accounting also takes the number of
    steps as given, while with `num_epochs` set it depends on the client's
    example count. The returned `loss` and `num_steps` are computed from the
    data without noise, so they are outside the guarantee.

  Args:
    model: classifier whose `apply` maps `x [batch, features]` to logits.
    optimizer: any optax optimizer; its state starts fresh on every call.
    num_steps: length of the `lax.scan`. With `num_epochs=None` every client
      with data takes exactly this many steps.
    batch_size: rows per minibatch and the divisor of the noisy sum.
    l2_norm_clip: the L2 norm bound of each per-example gradient.
    noise_multiplier: the noise std divided by `l2_norm_clip`; 0 adds no
      noise.
    num_epochs: if set, a client with `n` examples takes
      `num_epochs * ceil(n / batch_size)` steps, at most `num_steps`, and
      reports `truncated` when that cap cut it short.
    unroll: compile the steps as straight-line code (see
      `local_training.build_scan`).

  Returns:
    `local_update(server_params, examples, num_examples, key) -> LocalResult`
    where `examples` contains `x [examples, features]` and `y [examples]`.
    `loss` is the mean loss of the real rows of each step's batch, averaged
    over the steps taken. A client with zero examples takes no step and
    returns a zero delta.

  Raises:
    ValueError: if `num_steps` or `batch_size` is not an integer of at
      least 1, `num_epochs` is neither None nor such an integer,
      `l2_norm_clip` is not positive and finite,
      `noise_multiplier` is negative or not finite, or the model stores
      batch normalization statistics. The returned update raises it when
      first traced if the model's logits are not
      `[batch, num_logits(num_classes)]`.
  """
  _check_arguments(
      num_steps, batch_size, l2_norm_clip, noise_multiplier, num_epochs
  )
  if model.refresh_stats is not None:
    # Batch statistics mix the examples of a batch, so a per-example
    # gradient is undefined, and the recomputed statistics would leave the
    # client without clipping or noise.
    raise ValueError(
        'DP-SGD cannot train a model with batch normalization statistics. '
        "Use group normalization (ResNet(norm='group')) or no normalization."
    )
  noisy_gradient = _build_noisy_gradient(
      model, batch_size, l2_norm_clip, noise_multiplier
  )

  local_update = local_training.build_scan(
      noisy_gradient, optimizer, num_steps=num_steps, batch_size=batch_size,
      num_epochs=num_epochs, proximal_mu=proximal_mu, unroll=unroll,
  )
  # `build_round` checks the labels of its population against this.
  local_update.num_classes = model.num_classes
  return local_update


def _build_noisy_gradient(model, batch_size, l2_norm_clip, noise_multiplier):
  """Return `(params, batch, valid, key) -> (loss, noisy mean gradient)`."""

  def example_loss(params, x, y):
    logits = model.apply(params, x[None])
    tabular.check_logits(logits, model.num_classes)
    return tabular.per_example_loss(logits, y[None], model.num_classes)[0]

  per_example_value_and_grad = jax.vmap(
      jax.value_and_grad(example_loss), in_axes=(None, 0, 0)
  )
  stddev = noise_multiplier * l2_norm_clip

  def noisy_gradient(
      params: Params, batch: dict, valid: jax.Array, key: PRNGKey,
  ) -> tuple[jax.Array, Params]:
    losses, per_example_grads = per_example_value_and_grad(
        params, batch['x'], batch['y']
    )
    clipped = jax.vmap(clipping.clip_update, in_axes=(0, None))(
        per_example_grads, l2_norm_clip
    ).update
    # `where` rather than a product, so a masked slot adds an exact zero.
    summed = jax.tree.map(
        lambda leaf: jnp.sum(jnp.where(_expand(valid, leaf), leaf, 0.0), 0),
        clipped,
    )
    if noise_multiplier > 0:
      summed = noise.add_gaussian_noise(summed, stddev, key=key)
    num_valid = jnp.maximum(jnp.sum(valid), 1)
    loss = jnp.sum(jnp.where(valid, losses, 0.0)) / num_valid
    return loss, tree.tree_scale(summed, 1.0 / batch_size)

  return noisy_gradient


def _expand(mask: jax.Array, leaf: jax.Array) -> jax.Array:
  """Reshape a `[batch]` mask to broadcast against a `[batch, ...]` leaf."""
  return mask.reshape((-1,) + (1,) * (leaf.ndim - 1))


def _check_arguments(
    num_steps, batch_size, l2_norm_clip, noise_multiplier, num_epochs
) -> None:
  local_training.check_schedule(num_steps, batch_size, num_epochs)
  for name, value in (('l2_norm_clip', l2_norm_clip),
                      ('noise_multiplier', noise_multiplier)):
    # True passed as 1.0, and a string failed inside math.isfinite.
    dtype = np.asarray(value).dtype if not isinstance(value, str) else None
    if dtype is None or not (np.issubdtype(dtype, np.integer)
                             or np.issubdtype(dtype, np.floating)):
      raise ValueError(
          f'`{name}` must be a real number; got {value!r}. Pass a float such '
          'as 1.0.')
  if not (math.isfinite(l2_norm_clip) and l2_norm_clip > 0):
    raise ValueError(
        f'`l2_norm_clip` must be positive and finite; got {l2_norm_clip}.'
    )
  if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
    raise ValueError(
        '`noise_multiplier` must be non-negative and finite; got '
        f'{noise_multiplier}.'
    )
