"""Coordinate-wise median of client updates.

Each coordinate takes the median over the valid clients; with an even count
it is the midpoint of the two middle values. The median resists a minority
of arbitrarily bad updates (Yin et al., 2018, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML, arXiv:1803.01498).

Breakdown point 1/2 per coordinate: fewer than half of the valid clients
cannot move a coordinate outside the range of the honest values. Cost:
O(C log C * D) time for a sort of every coordinate over C clients and
O(C * D) memory, for D parameters.
"""

import jax
import jax.numpy as jnp

from fedjax_med.typing import PyTree


def coordinate_median(client_updates: PyTree, mask: jax.Array) -> PyTree:
  """Return the coordinate-wise median over clients where `mask` is True.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    mask: `[clients]` bool; False rows are ignored whatever they contain.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no client is valid.
  """
  count = jnp.sum(mask)
  low_index = jnp.maximum(count - 1, 0) // 2
  high_index = count // 2
  high_index = jnp.where(count > 0, high_index, 0)

  def leaf_median(leaf):
    row_mask = mask.reshape((-1,) + (1,) * (leaf.ndim - 1))
    # Invalid rows sort after every valid one, so the first `count` rows of
    # each sorted column are the valid values.
    ordered = jnp.sort(jnp.where(row_mask, leaf, jnp.inf), axis=0)
    middle = (ordered[low_index] + ordered[high_index]) / 2
    return jnp.where(count > 0, middle, jnp.zeros_like(middle))

  return jax.tree.map(leaf_median, client_updates)
