"""Client sampling with fixed output shapes.

Each sampler returns `client_ids [cohort]` and a bool `mask [cohort]` so that
the round compiles once whatever the number of participants.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.data import federated
from fedjax_med.typing import PRNGKey


class Cohort(NamedTuple):
  """Clients chosen for one round.

  Attributes:
    client_ids: `[cohort]` int32 indices into the population.
    mask: `[cohort]` bool, True for a participating slot.
    num_overflow: clients Poisson-sampled beyond the capacity and left out.
  """

  client_ids: jax.Array
  mask: jax.Array
  num_overflow: jax.Array


# `sampler(key) -> Cohort`, with client ids in [0, population size). The
# built-in samplers also take `available=`, a `[clients]` bool mask of the
# clients that can be drawn, and store their population size in the
# attribute `num_clients`, which `build_round` checks against its data.
Sampler = Callable[..., Cohort]


def uniform_sampler(num_clients: int, cohort_size: int) -> Sampler:
  """Draw `cohort_size` distinct clients uniformly at random each round.

  With `available`, the cohort is drawn uniformly from the available
  clients only, and its mask is False in the slots left when fewer than
  `cohort_size` clients are available.

  Raises:
    ValueError: if `num_clients` is not an integer of at least 1, or
      `cohort_size` is not an integer in `[1, num_clients]`.
  """
  num_clients = federated.check_count('num_clients', num_clients)
  cohort_size = federated.check_count('cohort_size', cohort_size, num_clients)

  def sample(key: PRNGKey, available: jax.Array | None = None) -> Cohort:
    if available is not None:
      available = _check_available(available, num_clients)
      # Random priorities, with the offline clients last; when fewer than
      # `cohort_size` are online, the rest of the slots are masked.
      priority = jnp.where(
          available, jax.random.uniform(key, (num_clients,)), -1.0)
      top_priority, ids = jax.lax.top_k(priority, cohort_size)
      return Cohort(ids.astype(jnp.int32), top_priority >= 0.0, jnp.int32(0))
    if cohort_size == num_clients:
      ids = jnp.arange(num_clients, dtype=jnp.int32)
    else:
      ids = jax.random.choice(key, num_clients, (cohort_size,), replace=False)
    mask = jnp.ones((cohort_size,), dtype=bool)
    return Cohort(ids.astype(jnp.int32), mask, jnp.int32(0))

  sample.num_clients = num_clients
  return sample


def poisson_capacity(num_clients: int, rate: float) -> int:
  """Return a cohort capacity that Poisson sampling exceeds very rarely.

  The expected cohort is `rate * num_clients`; the capacity adds 6 standard
  deviations plus one, capped at the population.
  """
  mean = rate * num_clients
  std = (num_clients * rate * (1.0 - rate)) ** 0.5
  return int(min(num_clients, max(1, -(-(mean + 6.0 * std + 1.0) // 1))))


def poisson_sampler(
    num_clients: int, rate: float, capacity: int | None = None
) -> Sampler:
  """Include each client independently with probability `rate`.

  With `available`, only available clients can be included, so a client's
  inclusion probability is `rate` times its availability.

  The cohort has a fixed `capacity` of slots. If more clients are drawn
  than fit, a uniformly random subset of them fills the slots and the rest
  are counted in `num_overflow`, so a caller can see that the sample was cut.

  Raises:
    ValueError: if `num_clients` is not an integer of at least 1, `rate`
      is not a number in `(0, 1]` or `capacity` is not an integer in
      `[1, num_clients]`.
  """
  num_clients = federated.check_count('num_clients', num_clients)
  if not _is_number(rate) or not 0.0 < rate <= 1.0:
    raise ValueError(f'`rate` must be a number in (0, 1]; got {rate!r}.')
  rate = float(rate)
  if capacity is None:
    capacity = poisson_capacity(num_clients, rate)
  capacity = federated.check_count('capacity', capacity, num_clients)

  def sample(key: PRNGKey, available: jax.Array | None = None) -> Cohort:
    include_key, order_key = jax.random.split(key)
    included = jax.random.uniform(include_key, (num_clients,)) < rate
    if available is not None:
      available = _check_available(available, num_clients)
      included = included & available
    # Random priorities choose which included clients fill the slots.
    priority = jax.random.uniform(order_key, (num_clients,))
    priority = jnp.where(included, priority, -1.0)
    top_priority, ids = jax.lax.top_k(priority, capacity)
    mask = top_priority >= 0.0
    num_overflow = jnp.sum(included) - jnp.sum(mask)
    return Cohort(ids.astype(jnp.int32), mask, num_overflow.astype(jnp.int32))

  sample.num_clients = num_clients
  return sample


def _is_number(value) -> bool:
  """Return whether `value` is a real scalar (a JAX or NumPy one too), not bool."""
  if isinstance(value, jax.core.Tracer):
    return False
  kind = np.asarray(value).dtype.kind if np.ndim(value) == 0 else None
  return kind in ('i', 'u', 'f')


def _check_available(available, num_clients: int) -> jax.Array:
  """Return `available` as an array; ValueError unless a `[num_clients]`
  bool mask (a list of bools passes)."""
  dtype = None
  if isinstance(available, (list, tuple)):
    available = np.asarray(available)
    # numpy's dtype: a None among the bools gives object, which JAX's
    # result_type rejects with a TypeError.
    dtype = available.dtype
  if dtype is None:
    dtype = jnp.result_type(available)
  if jnp.shape(available) != (num_clients,) or dtype != np.bool_:
    raise ValueError(
        f'`available` must be a [{num_clients}] bool mask, one entry per '
        f'client; got {dtype} of shape '
        f'{jnp.shape(available)}.')
  return jnp.asarray(available)


def apply_dropout(key: PRNGKey, cohort: Cohort, dropout_rate: float) -> Cohort:
  """Drop each sampled client independently with probability `dropout_rate`.

  Raises:
    ValueError: if `dropout_rate` is not a number in `[0, 1]`.
  """
  if not _is_number(dropout_rate) or not 0.0 <= dropout_rate <= 1.0:
    raise ValueError(
        f'`dropout_rate` must be a number in [0, 1]; got {dropout_rate!r}.')
  if dropout_rate <= 0.0:
    return cohort
  stays = jax.random.uniform(key, cohort.mask.shape) >= dropout_rate
  return cohort._replace(mask=cohort.mask & stays)
