"""Weighted mean of client updates: FedAvg and the uniform mean.

FedAvg weights each client by its example count (McMahan et al., 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS, arXiv:1602.05629). The uniform mean gives every valid client weight 1.

The mean has breakdown point 0: one client with weight w_i can move it by
w_i / sum(w) times whatever it sends. A server that sees only the sum of
the weighted updates, as under secure aggregation, can still compute it.
Cost: O(C * D) time and memory for C clients and D parameters.
"""

import jax
import jax.numpy as jnp

from fedjax_med import tree
from fedjax_med.typing import PyTree


def weighted_sum(client_updates: PyTree, weights: jax.Array) -> PyTree:
  """Return `sum_c weights[c] * client_updates[c]`.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
      Entries of clients with weight 0 must be finite; zero them first.
    weights: `[clients]` non-negative weights.
  """

  def leaf_sum(leaf):
    # Summed in at least float32, because example counts above 256 are not
    # exact in bfloat16, and returned in the leaf's dtype.
    dtype = jnp.promote_types(leaf.dtype, jnp.float32)
    summed = jnp.tensordot(weights.astype(dtype), leaf.astype(dtype), axes=1)
    return summed.astype(leaf.dtype)

  return jax.tree.map(leaf_sum, client_updates)


def weighted_mean(client_updates: PyTree, weights: jax.Array) -> PyTree:
  """Return the weighted mean over clients; zeros when all weights are 0.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    weights: `[clients]` non-negative weights, such as example counts
      (FedAvg) or a 0/1 participation mask (uniform mean). Rows with
      weight 0 are ignored whatever they contain.

  Returns:
    A pytree with leaves shaped `param_shape`.
  """
  total = jnp.sum(weights)
  # 0 * NaN is NaN, so rows of weight 0 are zeroed before the sum.
  client_updates = tree.tree_zero_rows(client_updates, weights > 0)
  summed = weighted_sum(client_updates, weights)
  safe_total = jnp.where(total > 0, total, 1.0)
  mean = jax.tree.map(lambda leaf: leaf / safe_total.astype(leaf.dtype), summed)
  # One update of 1e37 at weight 100 overflowed the sum to inf.
  return tree.finite_or(
      mean, lambda: weighted_sum(client_updates, weights / safe_total))
