"""Aggregators that bound the L2 norm each client update can contribute.

`norm_bounded_mean` clips every update to a fixed norm before the weighted
mean (Sun et al., 2019). `centered_clipping` clips the distance of every
update from a reference point, such as the previous aggregate, and moves
that point by the mean clipped difference (Karimireddy, He and Jaggi, 2021).
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import tree
from fedjax_med.aggregation import _flat
from fedjax_med.typing import PyTree


def norm_bounded_mean(
    client_updates: PyTree, weights: jax.Array, *, max_norm: float
) -> PyTree:
  """Clip each update to L2 norm `max_norm`, then take the weighted mean.

  The norm is over all leaves of one client's update together. The output
  norm never exceeds max_norm, so no set of clients can move it arbitrarily
  far. Client i can still shift it by up to 2 * w_i * max_norm / sum(w),
  because the clip bounds each client's influence instead of discarding
  outliers. Cost: O(C * D) time and memory for C clients and D parameters.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    weights: `[clients]` non-negative weights. Rows with weight <= 0 are
      ignored whatever they contain, and so are rows with NaN or inf.
    max_norm: Python float > 0, the L2 bound on each update.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no weight is > 0.

  Raises:
    ValueError: if `max_norm` is not finite and > 0, or the shapes of
      `client_updates` and `weights` disagree.

  References:
    Sun, Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated
    Learning?", 2019, https://arxiv.org/abs/1911.07963.
  """
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('weights', weights, clients)
  max_norm = _flat.check_positive_float('max_norm', max_norm)

  matrix, unflatten = _flat.flatten_clients(client_updates)
  valid = _flat.finite_rows(matrix, weights > 0)
  matrix = _flat.mask_rows(matrix, valid)
  clean_weights = jnp.where(valid, weights, 0).astype(matrix.dtype)
  clipped = _flat.clip_rows(matrix, max_norm)
  total = jnp.sum(clean_weights)
  safe_total = jnp.where(total > 0, total, 1.0)
  summed = jnp.sum(clean_weights[:, None] * clipped, axis=0)
  # With max_norm near the float32 maximum the weighted sum overflowed.
  mean = tree.finite_or(
      summed / safe_total,
      lambda: jnp.sum((clean_weights / safe_total)[:, None] * clipped, axis=0))
  return unflatten(mean)


def centered_clipping(
    client_updates: PyTree,
    mask: jax.Array,
    *,
    center: PyTree,
    clip_radius: float,
    num_iterations: int = 1,
) -> PyTree:
  """Move `center` by the mean of client differences clipped to a radius.

  Each iteration sets v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)
  over the n valid clients. Each client moves a step by at most tau / n, so
  a fraction delta of Byzantine clients moves it by at most delta * tau
  whatever they send. How close the result is to the honest mean depends on
  the center; Karimireddy et al. give the conditions. Cost: O(L * C * D)
  time and O(C * D) memory for L iterations, C clients and D parameters.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    mask: `[clients]` bool; False rows are ignored whatever they contain,
      and so are rows with NaN or inf.
    center: pytree with the structure of `client_updates` and leaves shaped
      `param_shape`, the starting point v (the previous aggregate or server
      momentum in the paper).
    clip_radius: tau, a Python float > 0.
    num_iterations: L, a Python int >= 1.

  Returns:
    A pytree with leaves shaped `param_shape`; `center` itself, cast to the
    leaf dtypes, when no client is valid.

  Raises:
    ValueError: if `clip_radius` is not finite and > 0, `num_iterations` is
      not an int >= 1, `center` does not match `client_updates` in
      structure or leaf shapes, or the shape of `mask` is wrong.

  References:
    Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021, https://arxiv.org/abs/2012.10333.
  """
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('mask', mask, clients)
  clip_radius = _flat.check_positive_float('clip_radius', clip_radius)
  num_iterations = _flat.check_int('num_iterations', num_iterations, 1)
  expected_structure = jax.tree.structure(client_updates)
  if jax.tree.structure(center) != expected_structure:
    raise ValueError(
        f'center has tree structure {jax.tree.structure(center)}; expected '
        f'{expected_structure}, the structure of client_updates.'
    )
  for leaf, center_leaf in zip(
      jax.tree.leaves(client_updates), jax.tree.leaves(center)
  ):
    if np.shape(center_leaf) != np.shape(leaf)[1:]:
      raise ValueError(
          f'center has a leaf of shape {np.shape(center_leaf)}; expected '
          f'{np.shape(leaf)[1:]}, the client update shape without the '
          'clients axis.'
      )

  matrix, unflatten = _flat.flatten_clients(client_updates)
  mask = _flat.finite_rows(matrix, mask)
  matrix = _flat.mask_rows(matrix, mask)
  center_matrix, _ = _flat.flatten_clients(
      jax.tree.map(lambda leaf: leaf[None], center)
  )
  start = center_matrix[0].astype(matrix.dtype)
  count = jnp.sum(mask.astype(matrix.dtype))
  row_weights = mask.astype(matrix.dtype) / jnp.maximum(count, 1.0)

  def clipping_step(_, estimate):
    differences = matrix - estimate[None, :]
    clipped = _flat.clip_rows(differences, clip_radius)
    step = jnp.sum(row_weights[:, None] * clipped, axis=0)
    return estimate + step

  result = jax.lax.fori_loop(0, num_iterations, clipping_step, start)
  return unflatten(result)
