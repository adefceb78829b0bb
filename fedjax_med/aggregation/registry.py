"""Aggregators by name, with one calling convention for the round.

`build_aggregate(name, ...)` returns `aggregate(client_updates, weights,
mask) -> update`, where `client_updates` has leaves `[clients, ...]`,
`weights [clients]` are the example or uniform weights and `mask
[clients]` marks the contributing clients. A client outside the mask is
left out by every aggregator, whatever its weight and update contain. The
aggregators in `NEEDS_CENTER` take a fourth argument, `center`, a pytree
shaped like one update: the reference point they start from, which the round
keeps in its server state. The aggregators in `NEEDS_LOSSES` take each
client's loss at the global model as a fourth argument instead.

Secure aggregation shows the server only the sum of the updates. Only the
aggregators in `SUM_BASED` can be computed from that sum, so
`build_aggregate(name, secure_aggregation=True)` refuses the others.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_med.aggregation import bulyan
from fedjax_med.aggregation import clipping_aggregators
from fedjax_med.aggregation import geometric_median
from fedjax_med.aggregation import krum
from fedjax_med.aggregation import mean
from fedjax_med.aggregation import median
from fedjax_med.aggregation import qffl
from fedjax_med.aggregation import trimmed_mean
from fedjax_med.typing import PyTree

Aggregate = Callable[[PyTree, jax.Array, jax.Array], PyTree]

#: Aggregators that a server seeing only a sum of updates (secure
#: aggregation) can compute. norm_bounded qualifies because each client can
#: clip its own update before it is summed.
SUM_BASED = ('fedavg', 'mean', 'norm_bounded')
#: Robust aggregators: the alternatives to the mean that limit the effect of
#: poisoned updates.
ROBUST = ('median', 'trimmed_mean', 'krum', 'multi_krum', 'geometric_median',
          'bulyan', 'norm_bounded', 'centered_clipping')
#: Aggregators that start from a center carried between rounds.
NEEDS_CENTER = ('centered_clipping',)
#: Aggregators that weigh clients by their loss at the global model.
NEEDS_LOSSES = ('qffl',)
#: Every name that `build_aggregate` accepts.
AGGREGATORS = ('fedavg', 'mean') + ROBUST + NEEDS_LOSSES


def build_aggregate(
    name: str,
    *,
    num_byzantine: int = 1,
    trim_fraction: float = 0.1,
    num_selected: int | None = None,
    max_norm: float | None = None,
    num_iterations: int = 10,
    clip_radius: float | None = None,
    qffl_q: float = 1.0,
    lipschitz: float | None = None,
    secure_aggregation: bool = False,
) -> Aggregate:
  """Return the aggregator `name` with its settings bound.

  Args:
    name: one of `AGGREGATORS`.
    num_byzantine: f, the number of Byzantine clients that Krum, multi-Krum
      and Bulyan tolerate.
    trim_fraction: fraction trimmed at each end by trimmed_mean.
    num_selected: updates averaged by multi-Krum; None means n - f for
      the n clients valid in the round.
    max_norm: the clip bound of norm_bounded.
    num_iterations: iterations of geometric_median and centered_clipping.
    clip_radius: tau of centered_clipping.
    qffl_q: q-FFL's fairness exponent q.
    lipschitz: q-FFL's L, usually 1 / the local SGD learning rate.
    secure_aggregation: True when the server sees only the sum of the
      updates; then only the aggregators in `SUM_BASED` are allowed.

  Raises:
    ValueError: for an unknown name, a missing setting, or an aggregator
      that needs individual updates under secure aggregation.
  """
  if name not in AGGREGATORS:
    raise ValueError(
        f'`aggregator` must be one of {AGGREGATORS}; got {name!r}.'
    )
  if secure_aggregation and name not in SUM_BASED:
    raise ValueError(
        f'Aggregator {name} needs each client\'s update, but under secure '
        'aggregation the server sees only their sum. Use one of '
        f'{SUM_BASED}, or turn secure aggregation off.'
    )
  if name == 'qffl':
    if lipschitz is None:
      raise ValueError(
          'Aggregator qffl needs `lipschitz`, usually 1 / the local SGD '
          'learning rate.'
      )
    bound = functools.partial(
        qffl.qffl_aggregate, q=qffl_q, lipschitz=lipschitz)
    return lambda updates, weights, mask, losses: bound(
        updates, losses, mask)
  if name == 'centered_clipping':
    if clip_radius is None:
      raise ValueError(
          'Aggregator centered_clipping needs `clip_radius`, the radius tau '
          'around the center.'
      )
    bound = functools.partial(
        clipping_aggregators.centered_clipping, clip_radius=clip_radius,
        num_iterations=num_iterations,
    )
    return lambda updates, weights, mask, center: bound(
        updates, mask, center=center)
  if name in ('fedavg', 'mean'):
    return lambda updates, weights, mask: mean.weighted_mean(
        updates, _masked_weights(weights, mask))
  if name == 'median':
    return lambda updates, weights, mask: median.coordinate_median(
        updates, mask)
  if name == 'trimmed_mean':
    bound = functools.partial(
        trimmed_mean.trimmed_mean, trim_fraction=trim_fraction)
    return lambda updates, weights, mask: bound(updates, mask)
  if name == 'geometric_median':
    bound = functools.partial(
        geometric_median.geometric_median, num_iterations=num_iterations)
    return lambda updates, weights, mask: bound(
        updates, _masked_weights(weights, mask))
  if name == 'norm_bounded':
    if max_norm is None:
      raise ValueError('Aggregator norm_bounded needs `max_norm`.')
    bound = functools.partial(
        clipping_aggregators.norm_bounded_mean, max_norm=max_norm)
    return lambda updates, weights, mask: bound(
        updates, _masked_weights(weights, mask))
  if name == 'bulyan':
    bound = functools.partial(bulyan.bulyan, num_byzantine=num_byzantine)
    return lambda updates, weights, mask: bound(updates, mask)
  if name == 'multi_krum':
    return functools.partial(
        _multi_krum, num_byzantine=num_byzantine, num_selected=num_selected)
  if name == 'krum':
    bound = functools.partial(krum.krum, num_byzantine=num_byzantine)
    return lambda updates, weights, mask: bound(updates, mask)
  # A name added to AGGREGATORS without a branch above.
  raise NotImplementedError(
      f'Aggregator {name!r} is listed in AGGREGATORS but build_aggregate has '
      'no branch for it; add one.'
  )


def _masked_weights(weights: jax.Array, mask: jax.Array) -> jax.Array:
  """Return `weights` with 0 where `mask` is False."""
  return jnp.where(mask, weights, jnp.zeros_like(weights))


def _multi_krum(updates, weights, mask, *, num_byzantine, num_selected):
  del weights
  return krum.multi_krum(
      updates, mask, num_byzantine=num_byzantine, num_selected=num_selected)


def check_cohort(
    aggregate: Aggregate, cohort_size: int, *, needs_center: bool = False,
    needs_losses: bool = False,
) -> None:
  """Trace `aggregate` on a cohort of this size, raising its ValueError.

  Krum and Bulyan check their client-count conditions on the cohort size
  when traced, so this surfaces an impossible setting before any round runs.
  Pass `needs_center=True` for an aggregator in `NEEDS_CENTER`.
  """
  updates = jax.ShapeDtypeStruct((cohort_size, 1), jax.numpy.float32)
  weights = jax.ShapeDtypeStruct((cohort_size,), jax.numpy.float32)
  mask = jax.ShapeDtypeStruct((cohort_size,), jax.numpy.bool_)
  if needs_center:
    center = jax.ShapeDtypeStruct((1,), jax.numpy.float32)
    jax.eval_shape(aggregate, updates, weights, mask, center)
  elif needs_losses:
    jax.eval_shape(aggregate, updates, weights, mask, weights)
  else:
    jax.eval_shape(aggregate, updates, weights, mask)
