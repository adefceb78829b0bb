"""Krum and multi-Krum: select the updates closest to their neighbors.

Each valid update is scored by the sum of squared L2 distances to its
n - f - 2 nearest other valid updates, where n is the number of valid clients
and f the assumed number of Byzantine clients. Krum returns the update with
the lowest score and multi-Krum averages the m lowest (Blanchard et al.,
2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS).
"""

import jax
import jax.numpy as jnp

from fedjax_med import tree
from fedjax_med.aggregation import _flat
from fedjax_med.aggregation import median as median_lib
from fedjax_med.typing import PyTree


def pairwise_squared_distances(matrix: jax.Array) -> jax.Array:
  """Return the `[clients, clients]` squared L2 distances between rows.

  Each row is subtracted directly instead of using the Gram matrix, so
  equal distances come out bitwise equal and ties are exact. The loop over
  rows keeps memory at O(C * D).
  """

  def distances_to(row):
    return jnp.sum(jnp.square(matrix - row[None, :]), axis=1)

  return jax.lax.map(distances_to, matrix)


def scaled_pairwise_squared_distances(
    matrix: jax.Array, mask: jax.Array
) -> jax.Array:
  """Return `pairwise_squared_distances` of `matrix` times 2^-k, per pair.

  Distances do not change when every row moves by the same vector, so the
  rows are first centered on the coordinate-wise median of the rows of
  `mask`. They are then multiplied by 2^-k, where 2^k is near the median,
  over those rows, of each centered row's largest magnitude. Without the
  scaling, float32 squared distances between honest updates of entries
  about 1e18 overflowed to inf, and Krum picked an attacker on index order.
  Without the centering, a coordinate of 1e20 shared by every update hid
  differences of 0.1 in the others. The medians ignore a minority of huge rows, whose distances may
  still be inf. A power of two keeps the ordering and the exact ties of the
  centered distances wherever neither overflows nor underflows.
  """
  center = median_lib.coordinate_median({'m': matrix}, mask)['m']
  centered = matrix - center[None, :].astype(matrix.dtype)
  row_max = jnp.max(jnp.abs(centered), axis=1, initial=0.0)
  exponent = tree.power_of_two_exponent(
      _flat.valid_lower_median(row_max, mask))
  return pairwise_squared_distances(jnp.ldexp(centered, -exponent))


def valid_first_order(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Return the row indices sorted: rows of `mask` first, then by value.

  Equal values keep the lower index first. Unlike `jnp.argmin` over values
  set to inf outside `mask`, the first index is a row of `mask` even when
  every value there is inf, as when float32 squared distances overflow.
  """
  index = jnp.arange(values.shape[0])
  return jnp.lexsort((index, values, ~mask))


def krum_scores(
    distances: jax.Array, mask: jax.Array, num_byzantine: int
) -> jax.Array:
  """Return the `[clients]` Krum scores; inf for rows where `mask` is False.

  The neighbor count is n - f - 2 for the n valid rows of `mask`, clipped to
  [1, n - 1]. A lone valid client scores 0.

  Args:
    distances: `[clients, clients]` squared distances, finite on valid rows
      and columns.
    mask: `[clients]` bool of the rows that take part.
    num_byzantine: f, the assumed number of Byzantine clients.
  """
  clients = mask.shape[0]
  count = jnp.sum(mask.astype(jnp.int32))
  neighbors = jnp.clip(count - num_byzantine - 2, 1, jnp.maximum(count - 1, 0))
  others = mask[None, :] & mask[:, None] & ~jnp.eye(clients, dtype=bool)
  # Excluded pairs sort last, so the first `neighbors` entries of each
  # sorted row are the nearest other valid updates.
  nearest = jnp.sort(jnp.where(others, distances, jnp.inf), axis=1)
  position = jnp.arange(clients)[None, :]
  chosen = jnp.where(position < neighbors, nearest, jnp.zeros_like(nearest))
  scores = jnp.sum(chosen, axis=1)
  return jnp.where(mask, scores, jnp.inf)


def _check_krum_arguments(
    client_updates: PyTree, mask: jax.Array, num_byzantine: int
) -> int:
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('mask', mask, clients)
  num_byzantine = _flat.check_int('num_byzantine', num_byzantine, 0)
  if clients <= 2 * num_byzantine + 2:
    raise ValueError(
        f'Krum needs more than 2 * num_byzantine + 2 = '
        f'{2 * num_byzantine + 2} clients, got {clients} with num_byzantine='
        f'{num_byzantine}; lower num_byzantine or sample more clients.'
    )
  return clients


def krum(
    client_updates: PyTree, mask: jax.Array, *, num_byzantine: int
) -> PyTree:
  """Return the valid update with the lowest Krum score.

  Krum tolerates f Byzantine clients out of n when n > 2f + 2. Cost:
  O(C^2 * D) time for the pairwise distances plus O(C^2 log C) for the
  neighbor sort, and O(C^2 + C * D) memory, for C clients and D parameters.

  Exactly equal scores are broken by the lowest client index. Scores that
  differ only by float rounding are not treated as ties.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    mask: `[clients]` bool; False rows are ignored whatever they contain,
      and so are rows with NaN or inf.
    num_byzantine: f, a Python int fixed at trace time. The check n > 2f + 2
      uses n = the number of rows, since the valid count is known only at
      run time. With fewer valid clients at run time the neighbor count is
      n - f - 2 for the valid n, clipped to at least 1.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no client is valid.

  Raises:
    ValueError: if `num_byzantine` is not an int >= 0, if there are at most
      2 * num_byzantine + 2 rows, or if the shapes of `client_updates` and
      `mask` disagree.

  References:
    Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017,
    https://papers.nips.cc/paper/6617-machine-learning-with-adversaries-byzantine-tolerant-gradient-descent.
  """
  _check_krum_arguments(client_updates, mask, num_byzantine)
  matrix, unflatten = _flat.flatten_clients(client_updates)
  mask = _flat.finite_rows(matrix, mask)
  matrix = _flat.mask_rows(matrix, mask)
  scores = krum_scores(scaled_pairwise_squared_distances(matrix, mask), mask,
                       num_byzantine)
  best = valid_first_order(scores, mask)[0]
  selected = jnp.where(jnp.any(mask), matrix[best], jnp.zeros_like(matrix[0]))
  return unflatten(selected)


def multi_krum(
    client_updates: PyTree,
    mask: jax.Array,
    *,
    num_byzantine: int,
    num_selected: int | None = None,
) -> PyTree:
  """Average the `num_selected` valid updates with the lowest Krum scores.

  Scores are computed once over all valid clients, as in Krum. Breakdown
  condition and cost are those of `krum`, plus O(C log C) for the ranking.
  Exactly equal scores are ranked by the lowest client index. When fewer
  than `num_selected` clients are valid at run time, all valid ones are
  averaged.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    mask: `[clients]` bool; False rows are ignored whatever they contain,
      and so are rows with NaN or inf.
    num_byzantine: f, a Python int; see `krum`.
    num_selected: m, a Python int in [1, clients]. m = 1 is Krum. None
      selects n - f of the n clients valid at run time (at least 1), so
      masked slots (dropouts, Poisson sampling) do not let the f
      highest-scoring updates back in.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no client is valid.

  Raises:
    ValueError: as `krum`, and if `num_selected` is not an int in
      [1, clients].

  References:
    Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017,
    https://papers.nips.cc/paper/6617-machine-learning-with-adversaries-byzantine-tolerant-gradient-descent.
  """
  clients = _check_krum_arguments(client_updates, mask, num_byzantine)
  if num_selected is not None:
    num_selected = _flat.check_int('num_selected', num_selected, 1)
    if num_selected > clients:
      raise ValueError(
          f'num_selected (`server.num_selected`) must be at most the cohort '
          f'of {clients} clients, got {num_selected}. Lower it, or leave it '
          'unset for n - f.'
      )
  matrix, unflatten = _flat.flatten_clients(client_updates)
  mask = _flat.finite_rows(matrix, mask)
  matrix = _flat.mask_rows(matrix, mask)
  if num_selected is None:
    valid = jnp.sum(mask.astype(jnp.int32))
    num_selected = jnp.maximum(valid - num_byzantine, 1)
  scores = krum_scores(scaled_pairwise_squared_distances(matrix, mask), mask,
                       num_byzantine)
  order = valid_first_order(scores, mask)
  rank = jnp.zeros(clients, jnp.int32).at[order].set(
      jnp.arange(clients, dtype=jnp.int32))
  selected = (rank < num_selected) & mask
  count = jnp.sum(selected.astype(matrix.dtype))
  total = jnp.sum(_flat.mask_rows(matrix, selected), axis=0)
  return unflatten(total / jnp.maximum(count, 1.0))
