"""Client-level DP mechanisms of a round: clipping, weights and noise.

A round releases the aggregate of clipped client updates. Three ways of
adding Gaussian noise are simulated, each with noise multiplier `z` and clip
bound `C`:

* central: the server adds std `z * C` once to the (weighted) sum;
* distributed: each of `m` reporting clients adds std `z * C / sqrt(m)` to
  its own weighted update, so the sum carries std `z * C` when at least `m`
  clients report;
* local: each client adds std `z * C` to its own clipped update, which then
  enters any aggregator.

Under central or distributed noise the noised sum is divided by a fixed
denominator (the expected total weight of a round), never by the realized
one: a denominator that depends on who took part would change the
sensitivity. Example-count weights are unbounded, so FedAvg under DP caps
each weight at 1 as `min(num_examples / weight_cap, 1)`, which bounds every
client's weighted contribution by `C`.

Adaptive clipping (Andrew et al., 2021) moves `C` each round toward a
target quantile of the update norms, from a noised count of the clients
whose update was not clipped. Each client adds its indicator minus 1/2, so
the count has sensitivity 1/2 and its noise multiplier is
`2 * count_noise_stddev`. The count release costs privacy too: for a
total noise multiplier `z`, the update noise is raised to
`z_update = (z**-2 - (2 * count_noise_stddev)**-2)**-0.5`, and the
accountant is given `z`, never `z_update`.

References:
  McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private
  Recurrent Language Models", ICLR 2018, https://arxiv.org/abs/1710.06963.

  Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning
  with Adaptive Clipping", NeurIPS 2021, https://arxiv.org/abs/1905.03871.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med import tree
from fedjax_med.privacy import clipping
from fedjax_med.privacy import noise
from fedjax_med.typing import PRNGKey, PyTree

NOISE_KINDS = ('none', 'central', 'local', 'distributed')
CLIPPINGS = ('flat', 'per_layer')


class PrivacySettings(NamedTuple):
  """Clipping, weighting and noise of client updates.

  Attributes:
    clip_norm: L2 bound `C` on each client update, or None for no clip.
    noise_multiplier: `z`, the noise std divided by `C`.
    noise_kind: 'none', 'central', 'distributed' or 'local'.
    clipping: 'flat' bounds the whole update by `C`; 'per_layer' bounds each
      leaf by `C / sqrt(num_leaves)`, so the sensitivity
      `sqrt(sum of the leaf bounds squared)` is again `C`.
    weight_cap: FedAvg weights become `min(num_examples / weight_cap, 1)`;
      required for 'fedavg' with central or distributed noise.
    denominator: fixed divisor of the weighted sum under central or
      distributed noise, normally the expected total weight of a round.
    min_reporting_clients: `m` of distributed noise.
    adaptive_clipping: track a quantile of update norms; `clip_norm` is then
      the starting bound.
    target_quantile: the quantile `gamma` that the bound tracks.
    clip_learning_rate: `eta`; each round multiplies the bound by
      `exp(-eta * (unclipped_fraction - gamma))`.
    count_noise_stddev: `sigma_b`, std of the noise on the unclipped count.
    expected_clients: expected number of reporting clients, which divides
      the noised count.
  """

  clip_norm: float | None = None
  noise_multiplier: float = 0.0
  noise_kind: str = 'none'
  clipping: str = 'flat'
  weight_cap: float | None = None
  denominator: float | None = None
  min_reporting_clients: int | None = None
  adaptive_clipping: bool = False
  target_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  count_noise_stddev: float = 0.0
  expected_clients: float | None = None

  @property
  def sums_noise(self) -> bool:
    """True when the noise is calibrated to the sum (central, distributed)."""
    return self.noise_kind in ('central', 'distributed')


def _finite_positive(value) -> bool:
  return value is not None and math.isfinite(value) and value > 0


def validate_privacy(privacy: PrivacySettings, aggregator: str) -> None:
  """Raise ValueError for settings that do not give what they promise."""
  if privacy.noise_kind not in NOISE_KINDS:
    raise ValueError(
        f'`noise` must be one of {NOISE_KINDS}; got {privacy.noise_kind!r}.'
    )
  if privacy.clipping not in CLIPPINGS:
    raise ValueError(
        f'`clipping` must be one of {CLIPPINGS}; got {privacy.clipping!r}.'
    )
  if privacy.clip_norm is not None and not privacy.clip_norm >= 0:
    raise ValueError(
        f'`clip_norm` must be non-negative; got {privacy.clip_norm}. Leave '
        'it unset for no clipping.'
    )
  traced = tree.is_traced(privacy.noise_multiplier)
  if not traced and not (math.isfinite(privacy.noise_multiplier)
                         and privacy.noise_multiplier >= 0):
    raise ValueError(
        '`noise_multiplier` must be finite and non-negative; got '
        f'{privacy.noise_multiplier}.'
    )
  if privacy.noise_kind == 'none':
    if not traced and privacy.noise_multiplier > 0:
      raise ValueError(
          f'`noise_multiplier={privacy.noise_multiplier}` has no effect with '
          "`noise_kind='none'`. Choose central, distributed or local noise, "
          'or set the multiplier to 0.'
      )
    return
  if privacy.clip_norm is None:
    raise ValueError(
        f'`noise={privacy.noise_kind}` needs a `clip_norm`, because the noise '
        'std is `noise_multiplier * clip_norm`.'
    )
  if aggregator == 'qffl':
    # Checked before the sum-noise message, which suggests local noise.
    raise ValueError(
        f'`noise={privacy.noise_kind}` does not apply to aggregator qffl: '
        'each client also sends its training loss, which q-FFL weighs by and '
        'no noise covers, so a privacy claim would leave it out. Use '
        "aggregator 'mean' or 'fedavg' with DP, or qffl with `noise='none'`."
    )
  if privacy.sums_noise:
    _validate_sum_noise(privacy, aggregator)
  if privacy.adaptive_clipping:
    _validate_adaptive(privacy)


def _validate_adaptive(privacy: PrivacySettings) -> None:
  if privacy.clip_norm is None or not privacy.clip_norm > 0:
    raise ValueError(
        'Adaptive clipping needs a positive starting `clip_norm`; got '
        f'{privacy.clip_norm}.'
    )
  if not 0.0 <= privacy.target_quantile <= 1.0:
    raise ValueError(
        f'`target_quantile` must be in [0, 1]; got {privacy.target_quantile}.'
    )
  if not _finite_positive(privacy.expected_clients):
    raise ValueError(
        'Adaptive clipping needs `expected_clients` > 0; got '
        f'{privacy.expected_clients}.'
    )
  if privacy.noise_kind == 'local':
    raise ValueError(
        'Adaptive clipping with local noise is not supported: the unclipped '
        'count would need local noise too. Use central or distributed noise.'
    )
  if privacy.noise_kind != 'none':
    adaptive_noise_multiplier(
        privacy.noise_multiplier, privacy.count_noise_stddev
    )


def adaptive_noise_multiplier(
    noise_multiplier: float, count_noise_stddev: float
) -> float:
  """Return `z_update`, the update noise that leaves `z` for the count.

  Raises:
    ValueError: unless `0 < noise_multiplier < 2 * count_noise_stddev`.
  """
  if not 0 < noise_multiplier < 2 * count_noise_stddev:
    raise ValueError(
        f'Adaptive clipping needs noise_multiplier ({noise_multiplier}) '
        f'below 2 * count_noise_stddev ({2 * count_noise_stddev}), because '
        'the count release must spend part of the budget. Raise '
        '`count_noise_stddev` or lower the noise multiplier.'
    )
  return (noise_multiplier**-2 - (2 * count_noise_stddev) ** -2) ** -0.5


def adapt_clip_norm(
    clip_norm: jax.Array, norms: jax.Array, contributes: jax.Array,
    privacy: PrivacySettings, *, key: PRNGKey,
) -> jax.Array:
  """Return the next round's clip bound from this round's update norms.

  Args:
    clip_norm: this round's bound, a scalar.
    norms: `[clients]` L2 norms of the updates before clipping.
    contributes: `[clients]` bool, the clients whose update counted.
    privacy: the settings, with `adaptive_clipping` on.
    key: key of the count noise.
  """
  # Each reporting client contributes its indicator minus 1/2, so adding or
  # removing one client moves the released sum by at most 1/2. That
  # sensitivity is what makes the count's noise multiplier
  # 2 * count_noise_stddev in `adaptive_noise_multiplier`.
  unclipped = (contributes & (norms <= clip_norm)).astype(jnp.float32)
  centered = jnp.sum(jnp.where(contributes, unclipped - 0.5, 0.0))
  noised = centered + privacy.count_noise_stddev * jax.random.normal(key)
  fraction = noised / privacy.expected_clients + 0.5
  step = -privacy.clip_learning_rate * (fraction - privacy.target_quantile)
  return clip_norm * jnp.exp(step)


def _validate_sum_noise(privacy: PrivacySettings, aggregator: str) -> None:
  kind = privacy.noise_kind
  if aggregator not in ('fedavg', 'mean'):
    raise ValueError(
        f'`noise={kind}` is calibrated to a sum of clipped updates and does '
        f'not apply to aggregator {aggregator}. Use aggregator mean, or '
        'fedavg with a `weight_cap`, or local noise.'
    )
  if aggregator == 'fedavg' and not _finite_positive(privacy.weight_cap):
    raise ValueError(
        f'`noise={kind}` with aggregator fedavg needs a `weight_cap`: '
        'example-count weights make the sensitivity unbounded. Set '
        '`weight_cap` (weights become min(num_examples / weight_cap, 1)) or '
        'use aggregator mean.'
    )
  if not _finite_positive(privacy.denominator):
    raise ValueError(
        f'`noise={kind}` needs a fixed `denominator` (the expected total '
        f'weight of a round); got {privacy.denominator}. A denominator that '
        'depends on who took part changes the sensitivity.'
    )
  if kind == 'distributed' and not (
      privacy.min_reporting_clients and privacy.min_reporting_clients >= 1
  ):
    raise ValueError(
        '`noise=distributed` needs `min_reporting_clients` >= 1, the number '
        'of clients guaranteed to report; got '
        f'{privacy.min_reporting_clients}.'
    )


def client_weights(
    aggregator: str, contributes: jax.Array, counts: jax.Array,
    weight_cap: float | None,
) -> jax.Array:
  """Return `[cohort]` aggregation weights; 0 for clients that do not count."""
  if aggregator == 'fedavg':
    weights = counts.astype(jnp.float32)
    if weight_cap is not None:
      weights = jnp.minimum(weights / weight_cap, 1.0)
  else:
    weights = jnp.ones(counts.shape, jnp.float32)
  return jnp.where(contributes, weights, 0.0)


def _clip_per_layer(update: PyTree, clip_norm: float) -> clipping.ClipResult:
  """Clip each leaf to `clip_norm / sqrt(num_leaves)`."""
  leaves, treedef = jax.tree.flatten(update)
  leaf_bound = clip_norm / math.sqrt(len(leaves))
  results = [clipping.clip_update(leaf, leaf_bound) for leaf in leaves]
  clipped = jax.tree.unflatten(treedef, [result.update for result in results])
  was_clipped = jnp.any(jnp.stack([result.clipped for result in results]))
  return clipping.ClipResult(clipped, tree.tree_l2_norm(update), was_clipped)


def clip_client_update(
    update: PyTree, privacy: PrivacySettings
) -> clipping.ClipResult:
  """Clip one client's update with the rule that `privacy.clipping` selects."""
  if privacy.clipping == 'per_layer' and privacy.clip_norm is not None:
    return _clip_per_layer(update, privacy.clip_norm)
  return clipping.clip_update(update, privacy.clip_norm)


def client_noise_stddev(privacy: PrivacySettings) -> float:
  """Return the std each client adds itself: local or distributed noise."""
  if privacy.noise_kind == 'local':
    return privacy.noise_multiplier * privacy.clip_norm
  if privacy.noise_kind == 'distributed':
    return (privacy.noise_multiplier * privacy.clip_norm
            / math.sqrt(privacy.min_reporting_clients))
  return 0.0


def add_client_noise(
    updates: PyTree, client_keys: jax.Array, stddev: float
) -> PyTree:
  """Add independent noise to each client's update, `[clients, ...]`."""
  return jax.vmap(
      lambda update, key: noise.add_gaussian_noise(update, stddev, key=key)
  )(updates, client_keys)


def noised_mean(
    updates: PyTree, weights: jax.Array, privacy: PrivacySettings,
    *, key: PRNGKey, denominator_weights: jax.Array | None = None,
) -> PyTree:
  """Return `(sum_c weights[c] * updates[c] + noise) / denominator`.

  Central noise of std `z * C` is added once to the sum. Distributed noise
  was already added by each client. The denominator is the fixed
  `privacy.denominator` under central or distributed noise, else the
  realized total of `denominator_weights` (default: `weights`). FedBuff
  passes its example weights there, so that staleness discounts an update
  without raising the weight of the others.
  """
  # In at least float32: example counts above 256 are not exact in bfloat16.
  summed = jax.tree.map(
      lambda leaf: jnp.tensordot(
          weights.astype(_sum_dtype(leaf)), leaf.astype(_sum_dtype(leaf)),
          axes=1),
      updates,
  )
  if privacy.noise_kind == 'central':
    stddev = privacy.noise_multiplier * privacy.clip_norm
    summed = noise.add_gaussian_noise(summed, stddev, key=key)
  if privacy.sums_noise:
    denominator = jnp.float32(privacy.denominator)
  else:
    total = jnp.sum(weights if denominator_weights is None
                    else denominator_weights)
    denominator = jnp.where(total > 0, total, 1.0)
  return jax.tree.map(lambda leaf: leaf / denominator, summed)


def _sum_dtype(leaf: jax.Array):
  """Return the dtype to sum `leaf` in: its own, or float32 if narrower."""
  return jnp.promote_types(leaf.dtype, jnp.float32)

