"""Aggregators by name, with one calling convention for the round.

`build_aggregate(name, ...)` returns `aggregate(client_updates, weights,
mask) -> update`, where `client_updates` has leaves `[clients, ...]`,
`weights [clients]` are the example or uniform weights (0 for clients that
do not count) and `mask [clients]` marks the contributing clients.
"""

import functools
from typing import Callable

import jax

from fedjax_med.aggregation import bulyan
from fedjax_med.aggregation import clipping_aggregators
from fedjax_med.aggregation import geometric_median
from fedjax_med.aggregation import krum
from fedjax_med.aggregation import mean
from fedjax_med.aggregation import median
from fedjax_med.aggregation import trimmed_mean
from fedjax_med.typing import PyTree

Aggregate = Callable[[PyTree, jax.Array, jax.Array], PyTree]

# Aggregators that a server seeing only a sum (secure aggregation) or a
# noised sum (central DP) can compute.
SUM_BASED = ('fedavg', 'mean', 'norm_bounded')
ROBUST = ('median', 'trimmed_mean', 'krum', 'multi_krum', 'geometric_median',
          'bulyan', 'norm_bounded')
AGGREGATORS = ('fedavg', 'mean') + ROBUST


def build_aggregate(
    name: str,
    *,
    num_byzantine: int = 1,
    trim_fraction: float = 0.1,
    num_selected: int | None = None,
    max_norm: float | None = None,
    num_iterations: int = 10,
) -> Aggregate:
  """Return the aggregator `name` with its settings bound.

  Raises:
    ValueError: for an unknown name or a missing setting.
  """
  if name not in AGGREGATORS:
    raise ValueError(
        f'`aggregator` must be one of {AGGREGATORS}; got {name!r}.'
    )
  if name in ('fedavg', 'mean'):
    return lambda updates, weights, mask: mean.weighted_mean(updates, weights)
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
    return lambda updates, weights, mask: bound(updates, weights)
  if name == 'norm_bounded':
    if max_norm is None:
      raise ValueError('Aggregator norm_bounded needs `max_norm`.')
    bound = functools.partial(
        clipping_aggregators.norm_bounded_mean, max_norm=max_norm)
    return lambda updates, weights, mask: bound(updates, weights)
  if name == 'bulyan':
    bound = functools.partial(bulyan.bulyan, num_byzantine=num_byzantine)
    return lambda updates, weights, mask: bound(updates, mask)
  if name == 'multi_krum':
    return functools.partial(
        _multi_krum, num_byzantine=num_byzantine, num_selected=num_selected)
  bound = functools.partial(krum.krum, num_byzantine=num_byzantine)
  return lambda updates, weights, mask: bound(updates, mask)


def _multi_krum(updates, weights, mask, *, num_byzantine, num_selected):
  del weights
  rows = jax.tree.leaves(updates)[0].shape[0]
  selected = num_selected or rows - num_byzantine
  return krum.multi_krum(
      updates, mask, num_byzantine=num_byzantine, num_selected=selected)


def check_cohort(aggregate: Aggregate, cohort_size: int) -> None:
  """Trace `aggregate` on a cohort of this size, raising its ValueError.

  Krum and Bulyan check their client-count conditions on the cohort size
  when traced, so this surfaces an impossible setting before any round runs.
  """
  updates = jax.ShapeDtypeStruct((cohort_size, 1), jax.numpy.float32)
  weights = jax.ShapeDtypeStruct((cohort_size,), jax.numpy.float32)
  mask = jax.ShapeDtypeStruct((cohort_size,), jax.numpy.bool_)
  jax.eval_shape(aggregate, updates, weights, mask)
