"""Bulyan: Krum selection followed by a coordinate-wise trimmed average.

Bulyan first selects theta = n - 2f updates by applying Krum repeatedly,
removing each pick from the candidates. Then, per coordinate, it averages
the beta = theta - 2f selected values closest to their median (El Mhamdi,
Guerraoui and Rouault, 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML).
"""

import jax
import jax.numpy as jnp

from fedjax_med.aggregation import _flat
from fedjax_med.aggregation import krum as krum_lib
from fedjax_med.aggregation import median as median_lib
from fedjax_med.typing import PyTree


def _select_by_krum(
    distances: jax.Array,
    mask: jax.Array,
    num_byzantine: int,
    num_steps: int,
    theta: jax.Array,
) -> jax.Array:
  """Return the `[clients]` bool mask of the first `theta` Krum picks.

  Once few candidates remain, Krum uses a single neighbor and the two
  closest candidates always tie. Equal Krum scores are therefore broken by
  the sum of squared distances to all remaining candidates, which does not
  depend on client order, and only then by the lowest client index.
  """
  clients = mask.shape[0]

  def pick(step, state):
    remaining, selected = state
    scores = krum_lib.krum_scores(distances, remaining, num_byzantine)
    others = remaining[None, :] & remaining[:, None]
    spread = jnp.sum(jnp.where(others, distances, 0.0), axis=1)
    lowest = jnp.min(jnp.where(remaining, scores, jnp.inf))
    tied = remaining & (scores == lowest)
    best = krum_lib.valid_first_order(spread, tied)[0]
    take = (step < theta) & jnp.any(remaining)
    chosen = take & remaining & (jnp.arange(clients) == best)
    return remaining & ~chosen, selected | chosen

  start = (mask, jnp.zeros_like(mask))
  _, selected = jax.lax.fori_loop(0, num_steps, pick, start)
  return selected


def bulyan(
    client_updates: PyTree, mask: jax.Array, *, num_byzantine: int
) -> PyTree:
  """Aggregate with Bulyan over Krum.

  Bulyan tolerates f Byzantine clients out of n when n >= 4f + 3. Cost:
  O(C^2 * D) time for the pairwise distances, O(C^3 log C) for the repeated
  Krum selection and O(C log C * D) for the per-coordinate sorts, with
  O(C^2 + C * D) memory, for C clients and D parameters.

  The check n >= 4f + 3 uses n = the number of rows. At run time, with n
  valid clients, theta = max(n - 2f, 1) and beta = max(theta - 2f, 1), and
  each Krum step uses n_remaining - f - 2 neighbors clipped to at least 1.
  Exactly equal Krum scores are broken by the sum of squared distances to
  all remaining candidates, then by the lowest client index. Values equally
  far from the median on opposite sides are resolved by the lowest client
  index, so only such exact ties make the result depend on client order.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.
    mask: `[clients]` bool; False rows are ignored whatever they contain,
      and so are rows with NaN or inf.
    num_byzantine: f, a Python int >= 0 fixed at trace time.

  Returns:
    A pytree with leaves shaped `param_shape`; zeros when no client is valid.

  Raises:
    ValueError: if `num_byzantine` is not an int >= 0, if there are fewer
      than 4 * num_byzantine + 3 rows, or if the shapes of `client_updates`
      and `mask` disagree.

  References:
    El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of
    Distributed Learning in Byzantium", ICML 2018,
    https://arxiv.org/abs/1802.07927.
  """
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('mask', mask, clients)
  num_byzantine = _flat.check_int('num_byzantine', num_byzantine, 0)
  if clients < 4 * num_byzantine + 3:
    raise ValueError(
        f'Bulyan needs at least 4 * num_byzantine + 3 = '
        f'{4 * num_byzantine + 3} clients, got {clients} with num_byzantine='
        f'{num_byzantine}; lower num_byzantine or sample more clients.'
    )

  matrix, unflatten = _flat.flatten_clients(client_updates)
  mask = _flat.finite_rows(matrix, mask)
  matrix = _flat.mask_rows(matrix, mask)
  count = jnp.sum(mask.astype(jnp.int32))
  theta = jnp.maximum(count - 2 * num_byzantine, 1)
  distances = krum_lib.scaled_pairwise_squared_distances(matrix, mask)
  selected = _select_by_krum(
      distances, mask, num_byzantine, clients - 2 * num_byzantine, theta
  )
  num_chosen = jnp.sum(selected.astype(jnp.int32))
  beta = jnp.maximum(num_chosen - 2 * num_byzantine, 1)

  center = median_lib.coordinate_median(matrix, selected)
  gaps = jnp.where(
      selected[:, None], jnp.abs(matrix - center[None, :]), jnp.inf
  )
  # A stable sort puts unselected rows (gap inf) last and breaks equal gaps
  # by the lowest client index.
  order = jnp.argsort(gaps, axis=0, stable=True)
  closest = jnp.take_along_axis(matrix, order, axis=0)
  position = jnp.arange(clients)[:, None]
  closest_beta = jnp.where(position < beta, closest, jnp.zeros_like(closest))
  average = jnp.sum(closest_beta, axis=0) / beta.astype(matrix.dtype)
  result = jnp.where(num_chosen > 0, average, jnp.zeros_like(average))
  return unflatten(result)
