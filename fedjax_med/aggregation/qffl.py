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
  # A client without a usable loss is left out, as non-finite updates are.
  # With q = 0 the loss does not enter (F^0 = 1) unless it is NaN.
  mask = mask & (jnp.isfinite(losses) if q > 0 else ~jnp.isnan(losses))
  matrix = _flat.mask_rows(matrix, mask)
  # A loss of 0 would make F^(q - 1) infinite for q < 1.
  safe_losses = jnp.where(mask, jnp.maximum(losses, 1e-10), 1.0)
  # Both sums are divided by max_j F_j^q, which the step cancels:
  # relative_k = F_k^q / max_j F_j^q = exp(q (log F_k - max_j log F_j)) is
  # in (0, 1], where F^q itself overflows or flushes to zero for q = 50.
  if q > 0:
    log_losses = jnp.log(safe_losses)
    top = jnp.max(jnp.where(mask, log_losses, -jnp.inf))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    relative = jnp.exp(q * (log_losses - top))
  else:
    relative = jnp.ones_like(safe_losses)
  steps = lipschitz * matrix  # L (w_k - w) = -Delta w_k
  squared_norms = jnp.sum(jnp.square(steps), axis=1)
  # h_k / max_j F_j^q = relative_k (q ||L u_k||^2 / F_k + L).
  h_all = relative * (q * squared_norms / safe_losses + lipschitz)
  # An h that overflows float32 would make the step NaN, so that client is
  # left out too.
  mask = mask & jnp.isfinite(h_all)
  scaled = jnp.where(mask, relative, 0.0).astype(matrix.dtype)
  steps = _flat.mask_rows(steps, mask)
  h = jnp.where(mask, h_all, 0.0)
  total = jnp.sum(h)
  summed = jnp.sum(scaled[:, None] * steps, axis=0)
  return unflatten(summed / jnp.where(total > 0, total, 1.0))
