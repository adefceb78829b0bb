"""Geometric median of client updates by the smoothed Weiszfeld algorithm.

The weighted geometric median minimizes sum_i w_i * ||v - x_i|| over v.
Robust Federated Aggregation (RFA) approximates it with Weiszfeld steps
whose distances are floored at a smoothing constant nu (Pillutla, Kakade
and Harchaoui, 2022, "Robust Aggregation for Federated Learning", IEEE
Transactions on Signal Processing, https://arxiv.org/abs/1912.13445).
"""

import jax
import jax.numpy as jnp

from fedjax_med import tree
from fedjax_med.aggregation import _flat
from fedjax_med.typing import PyTree


def geometric_median(
    client_updates: PyTree,
    weights: jax.Array,
    *,
    num_iterations: int,
    smoothing: float = 1e-6,
) -> PyTree:
  """Approximate the weighted geometric median with smoothed Weiszfeld steps.

  Starting from the weighted mean, each step sets
  v <- sum_i b_i x_i / sum_i b_i with b_i = w_i / max(nu, ||v - x_i||).
  The geometric median has breakdown point 1/2: an adversary needs half of
  the total weight to move it arbitrarily far. Cost: O(T * C * D) time and
  O(C * D) memory for T iterations, C clients and D parameters.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    weights: `[clients]` non-negative weights. Rows with weight <= 0 are
      ignored whatever they contain, and so are rows with NaN or inf.
    num_iterations: T, a Python int >= 1 of Weiszfeld steps; the loop always
      runs all of them.
    smoothing: nu > 0, the floor on each distance, which keeps a step finite
      when v lands on a client update.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no weight is > 0.

  Raises:
    ValueError: if `num_iterations` is not an int >= 1, `smoothing` is not
      finite and > 0, or the shapes of `client_updates` and `weights`
      disagree.

  References:
    Pillutla, Kakade and Harchaoui, "Robust Aggregation for Federated
    Learning", IEEE Transactions on Signal Processing 70, 2022,
    https://arxiv.org/abs/1912.13445.
  """
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('weights', weights, clients)
  num_iterations = _flat.check_int('num_iterations', num_iterations, 1)
  smoothing = _flat.check_positive_float('smoothing', smoothing)

  matrix, unflatten = _flat.flatten_clients(client_updates)
  valid = _flat.finite_rows(matrix, weights > 0)
  matrix = _flat.mask_rows(matrix, valid)
  base_weights = jnp.where(valid, weights, 0).astype(matrix.dtype)

  def weighted_average(step_weights):
    total = jnp.sum(step_weights)
    summed = jnp.sum(step_weights[:, None] * matrix, axis=0)
    return summed / jnp.where(total > 0, total, 1.0)

  def weiszfeld_step(_, estimate):
    distances = jnp.maximum(
        _flat.row_l2_norms(matrix - estimate[None, :]), smoothing)
    # b_i = w_i / d_i times the common factor min_j d_j, which the weighted
    # average cancels. Plain w_i / d_i flushes to zero for every client when
    # all distances are above about 8.5e37.
    nearest = jnp.min(jnp.where(valid, distances, jnp.inf))
    nearest = jnp.where(jnp.isfinite(nearest), nearest, 1.0)
    return weighted_average(base_weights * tree.divide(nearest, distances))

  start = weighted_average(base_weights)
  median = jax.lax.fori_loop(0, num_iterations, weiszfeld_step, start)
  return unflatten(median)
