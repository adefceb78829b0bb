"""q-FFL's aggregate (q-FedAvg): clients with higher loss weigh more.

Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
Learning", ICLR 2020, https://arxiv.org/abs/1905.10497, Algorithm 2.

With global weights w, client k's local result w_k, its loss F_k at w and
the Lipschitz estimate L (1 / the local SGD step size), the paper sets
Delta w_k = L (w - w_k), Delta_k = F_k^q Delta w_k and
h_k = q F_k^(q - 1) ||Delta w_k||^2 + L F_k^q, then moves
w <- w - sum_k Delta_k / sum_k h_k. q = 0 gives the uniform mean of the
client updates; a larger q pulls the model towards the clients with the
highest loss.
"""

import jax
import jax.numpy as jnp

from fedjax_med.aggregation import _flat
from fedjax_med.typing import PyTree


def qffl_aggregate(
    client_updates: PyTree,
    losses: jax.Array,
    mask: jax.Array,
    *,
    q: float,
    lipschitz: float,
) -> PyTree:
  """Return q-FFL's step as an update to add to the global weights.

  Args:
    client_updates: pytree with leaves `[clients, *param_shape]`, each
      client's local weights minus the global weights (w_k - w).
    losses: `[clients]` loss of each client's data at the global weights.
    mask: `[clients]` bool; False rows are ignored whatever they contain.
      So are clients whose update, loss, F^q or h is NaN or infinite.
    q: fairness exponent, a Python float >= 0.
    lipschitz: L, a Python float > 0, usually 1 / local learning rate.

  Returns:
    sum_k F_k^q L (w_k - w) / sum_k h_k, with leaves `param_shape`; zeros
    when no client is valid.

  Raises:
    ValueError: if `q` < 0 or `lipschitz` is not finite and > 0.
  """
  if not q >= 0:
    raise ValueError(f'`q` must be >= 0; got {q}.')
  lipschitz = _flat.check_positive_float('lipschitz', lipschitz)
  clients = _flat.num_clients(client_updates)
  _flat.check_client_vector('mask', mask, clients)
  _flat.check_client_vector('losses', losses, clients)
  matrix, unflatten = _flat.flatten_clients(client_updates)
  mask = _flat.finite_rows(matrix, mask)
  matrix = _flat.mask_rows(matrix, mask)
  # A loss of 0 would make F^(q - 1) infinite for q < 1.
  safe_losses = jnp.where(mask, jnp.maximum(losses, 1e-10), 1.0)
  steps = lipschitz * matrix  # L (w_k - w) = -Delta w_k
  squared_norms = jnp.sum(jnp.square(steps), axis=1)
  h_all = (q * safe_losses ** (q - 1) * squared_norms
           + lipschitz * safe_losses**q)
  # A NaN or infinite loss, or a weight F^q or h that overflows float32,
  # would make the whole step NaN or let one client decide it, so such a
  # client is left out, as non-finite updates are.
  mask = (mask & jnp.isfinite(h_all) & jnp.isfinite(safe_losses**q)
          & jnp.all(jnp.isfinite(steps), axis=1))
  scaled = jnp.where(mask, safe_losses**q, 0.0).astype(matrix.dtype)
  steps = _flat.mask_rows(steps, mask)
  h = jnp.where(mask, h_all, 0.0)
  total = jnp.sum(h)
  summed = jnp.sum(scaled[:, None] * steps, axis=0)
  return unflatten(summed / jnp.where(total > 0, total, 1.0))
