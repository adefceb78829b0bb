"""The metadata that travels with each client update, and what it reveals.

A deployed client sends its update in a message whose envelope names the
client, its network address, the send time and the payload size. Secure
aggregation hides the payload's content, because the server reads only the
sum, but not the envelope. So the server still learns who took part in each
round, from where and when. `server_view` separates the two.

The addresses are placeholders. `client_address` derives a stable address
in the private range 10.0.0.0/8 from the client id, so tests and reports can
show that an address links a client across rounds. They are not the
addresses of any real host.
"""

import dataclasses
import hashlib
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.errors import InputError
from fedjax_med.typing import PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class UpdateEnvelope:
  """The envelope of one client's update message in one round.

  Attributes:
    round: index of the round the update belongs to.
    client_id: the sender's id.
    address: the sender's network address (a placeholder, see
      `client_address`).
    sent_at: send time in seconds, on the same clock as the round start.
    payload_bytes: size of the update payload in bytes.
  """

  round: int
  client_id: str
  address: str
  sent_at: float
  payload_bytes: int


@dataclasses.dataclass(frozen=True)
class ServerView:
  """The information a server obtains from the envelopes and updates.

  Attributes:
    participants: `(round, client_id)` of every update received, in
      the order of `sent_at`.
    addresses: client id to address, for every participant.
    sent_at: `(round, client_id)` to send time in seconds.
    payload_bytes: `(round, client_id)` to payload size in bytes. A masked
      update under secure aggregation has the same size as a plain one, so
      sizes are visible either way.
    individual_updates: `(round, client_id)` of the updates whose content
      the server reads one by one: every participant's without secure
      aggregation, none with it.
    aggregates: round to the ids of the clients whose updates the server
      reads only as one sum. It is empty without secure aggregation.
  """

  participants: tuple[tuple[int, str], ...]
  addresses: Mapping[str, str]
  sent_at: Mapping[tuple[int, str], float]
  payload_bytes: Mapping[tuple[int, str], int]
  individual_updates: tuple[tuple[int, str], ...]
  aggregates: Mapping[int, tuple[str, ...]]


def client_address(client_id: str) -> str:
  """Return a placeholder IPv4 address in 10.0.0.0/8 for `client_id`.

  The last three octets are the first three bytes of the SHA-256 digest of
  the id, so the address is the same in every round and every run. Two ids
  may share an address (a 1 in 2**24 chance per pair).
  """
  digest = hashlib.sha256(client_id.encode('utf-8')).digest()
  return f'10.{digest[0]}.{digest[1]}.{digest[2]}'


def payload_nbytes(update: PyTree) -> int:
  """Return the size in bytes of an update sent as its raw arrays."""
  return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(update)))


def round_envelopes(
    key: PRNGKey,
    round_index: int,
    cohort: Sequence[int] | np.ndarray,
    client_ids: Sequence[str],
    start_time: float,
    payload_bytes: int | Sequence[int],
    mean_delay_s: float = 30.0,
) -> tuple[UpdateEnvelope, ...]:
  """Build the envelopes of one simulated round.

  Each participant sends its update after a delay drawn from an exponential
  distribution with mean `mean_delay_s`. The delay of client `c` uses
  `jax.random.fold_in(key, c)`, so it does not depend on the cohort's order
  or size, and the same key gives the same times.

  Args:
    key: PRNG key of the round's delays.
    round_index: the round, stored in every envelope.
    cohort: indices into `client_ids` of the clients that take part.
    client_ids: the id of every client of the population.
    start_time: the round's start, in seconds.
    payload_bytes: the update size in bytes, one value for every client (a
      model sends the same shapes from every client) or one per cohort
      member.
    mean_delay_s: mean delay between the round start and a send, in
      seconds.

  Returns:
    One `UpdateEnvelope` per cohort member, in cohort order.

  Raises:
    InputError: if a cohort index is out of range or repeated, a payload
      size is not a whole number or is negative, the number of payload
      sizes does not match the cohort, `start_time` is not finite, or
      `mean_delay_s` is negative or not finite.
  """
  if len(set(client_ids)) != len(client_ids):
    repeated = next(i for i in client_ids if list(client_ids).count(i) > 1)
    raise InputError(f'Client id {repeated!r} appears twice in client_ids; '
                     'give every client a distinct id.')
  cohort_array = np.asarray(cohort)
  if cohort_array.size and not np.issubdtype(cohort_array.dtype, np.integer):
    raise InputError(f'Cohort indices must be integers; got {cohort}.')
  cohort = [int(index) for index in cohort_array.reshape(-1)]
  for index in cohort:
    if not 0 <= index < len(client_ids):
      raise InputError(f'Cohort index {index} is out of range for '
                       f'{len(client_ids)} clients.')
  if len(set(cohort)) != len(cohort):
    raise InputError(f'The cohort repeats a client: {cohort}.')
  sizes = _payload_sizes(payload_bytes, len(cohort))
  if not math.isfinite(_to_float(start_time)):
    raise InputError(f'start_time must be a finite number of seconds; got '
                     f'{start_time!r}.')
  if not 0 <= _to_float(mean_delay_s) < math.inf:
    raise InputError(f'mean_delay_s must be non-negative and finite; got '
                     f'{mean_delay_s!r}.')

  if not cohort:
    return ()
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(cohort))
  delays = np.asarray(jax.vmap(jax.random.exponential)(keys))
  envelopes = []
  for index, size, delay in zip(cohort, sizes, delays):
    envelopes.append(UpdateEnvelope(
        round=int(round_index),
        client_id=client_ids[index],
        address=client_address(client_ids[index]),
        sent_at=float(start_time) + mean_delay_s * float(delay),
        payload_bytes=size,
    ))
  return tuple(envelopes)


def _to_float(value) -> float:
  """Return `value` as a float, or NaN if it is not a number."""
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _payload_sizes(payload_bytes, cohort_size: int) -> list[int]:
  """Return one checked payload size per cohort member."""
  array = np.asarray(payload_bytes)
  # `int()` would truncate 1.7 to 1, so a float size is an error.
  if array.ndim > 1 or (
      array.size and not np.issubdtype(array.dtype, np.integer)
  ):
    raise InputError(f'payload_bytes must be a whole number of bytes or a '
                     f'sequence of them; got {payload_bytes!r}.')
  if array.ndim == 0:
    sizes = [int(array)] * cohort_size
  else:
    sizes = [int(size) for size in array]
  if len(sizes) != cohort_size:
    raise InputError(f'Expected one payload size or {cohort_size} (one per '
                     f'cohort member); got {len(sizes)}.')
  if any(size < 0 for size in sizes):
    raise InputError(f'Payload sizes must be non-negative; got {sizes}.')
  return sizes


def server_view(
    envelopes: Sequence[UpdateEnvelope], secure_aggregation: bool
) -> ServerView:
  """Return what the server learns from a set of envelopes and updates.

  Participation, addresses, send times and payload sizes come from the
  envelopes and are visible in every case. Without secure aggregation the
  server also reads each update. With it, the server reads only each
  round's sum, so `individual_updates` is empty.

  Args:
    envelopes: envelopes of one or several rounds.
    secure_aggregation: whether the updates are combined by secure
      aggregation.

  Returns:
    A `ServerView`, its entries in the order of `sent_at`.
  """
  ordered = sorted(envelopes, key=lambda envelope: envelope.sent_at)
  participants = tuple((e.round, e.client_id) for e in ordered)
  aggregates = {}
  if secure_aggregation:
    for envelope in ordered:
      aggregates.setdefault(envelope.round, []).append(envelope.client_id)
  return ServerView(
      participants=participants,
      addresses={e.client_id: e.address for e in ordered},
      sent_at={(e.round, e.client_id): e.sent_at for e in ordered},
      payload_bytes={(e.round, e.client_id): e.payload_bytes for e in ordered},
      individual_updates=() if secure_aggregation else participants,
      aggregates={
          round_index: tuple(ids) for round_index, ids in aggregates.items()
      },
  )
