"""Coordinate-wise trimmed mean of client updates.

For each coordinate, the k valid values are sorted, the floor(beta * k)
smallest and the floor(beta * k) largest are dropped, and the rest are
averaged (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML, https://arxiv.org/abs/1803.01498).
"""

import fractions
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import tree
from fedjax_med.aggregation import _flat
from fedjax_med.typing import PyTree


def _trim_counts(trim_fraction: float, clients: int) -> np.ndarray:
  """Return floor(trim_fraction * k) for every valid count k in 0..clients.

  The product uses the decimal value of `trim_fraction` as written, so 0.29
  of 100 values trims 29 and not the 28 that binary rounding would give.
  """
  exact = fractions.Fraction(str(float(trim_fraction)))
  return np.array(
      [int(exact * count) for count in range(clients + 1)], np.int32
  )


def trimmed_mean(
    client_updates: PyTree, mask: jax.Array, *, trim_fraction: float
) -> PyTree:
  """Average each coordinate over the valid clients after trimming extremes.

  With k valid clients, each coordinate drops its floor(trim_fraction * k)
  smallest and largest values. Up to that many arbitrary updates on each
  side cannot move the result outside the range of the valid honest values,
  so the breakdown point is trim_fraction. Cost: O(C log C * D) time for the
  per-coordinate sort and O(C * D) memory, for C clients and D parameters.

  NaN in a valid row ranks above +inf, so it is trimmed as one of the
  largest values of its coordinate; where the trim keeps it (for example at
  trim_fraction 0) that coordinate of the result is NaN. Integer leaves
  are converted to the default float dtype first.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    mask: `[clients]` bool; False rows are ignored whatever they contain.
    trim_fraction: Python float in [0, 0.5), fixed at trace time. Under
      `jax.jit`, bind it with `functools.partial` or mark it static.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no client is
    valid. Because trim_fraction < 0.5, k - 2 * floor(trim_fraction * k) is
    at least 1 for every k >= 1, so a trim that removes every value happens
    only at k = 0; the function still returns zeros, not NaN, if it does.

  Raises:
    ValueError: if `trim_fraction` is not a number in [0, 0.5), or if the
      shapes of `client_updates` and `mask` disagree.

  References:
    Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018,
    https://arxiv.org/abs/1803.01498.
  """
  if isinstance(trim_fraction, bool) or not isinstance(
      trim_fraction, numbers.Real
  ):
    raise ValueError(
        f'trim_fraction must be a Python number, got {trim_fraction!r}.'
    )
  if not 0 <= trim_fraction < 0.5:
    reason = ('0.5 would trim every value' if trim_fraction >= 0.5
              else 'it is the share trimmed at each end')
    raise ValueError(
        f'trim_fraction must be in [0, 0.5), got {trim_fraction}; {reason}.'
    )
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('mask', mask, clients)

  count = jnp.sum(mask.astype(jnp.int32))
  trim = jnp.asarray(_trim_counts(trim_fraction, clients))[count]
  num_kept = count - 2 * trim
  safe_num_kept = jnp.maximum(num_kept, 1)

  def leaf_trimmed_mean(leaf):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      leaf = leaf.astype(jnp.result_type(float))
    row_shape = (-1,) + (1,) * (leaf.ndim - 1)
    row_mask = mask.reshape(row_shape)
    # Invalid rows become NaN, which sorts after every number, so sorted
    # positions [trim, count - trim) are the valid values that survive the
    # trim. A valid NaN ties with them. Any NaN in the kept range is NaN,
    # whichever row it came from, so the tie does not change the result.
    ordered = jnp.sort(
        jnp.where(row_mask, leaf, jnp.full_like(leaf, jnp.nan)), axis=0
    )
    position = jnp.arange(clients).reshape(row_shape)
    keep = (position >= trim) & (position < count - trim)
    kept = jnp.where(keep, ordered, jnp.zeros_like(ordered))
    divisor = safe_num_kept.astype(kept.dtype)
    # Three kept values of 2e38 overflowed the sum to inf.
    average = tree.finite_or(jnp.sum(kept, axis=0) / divisor,
                             lambda: jnp.sum(kept / divisor, axis=0))
    return jnp.where(num_kept > 0, average, jnp.zeros_like(average))

  return jax.tree.map(leaf_trimmed_mean, client_updates)
