"""Availability, mid-round dropouts, stragglers and a virtual clock.

`Participation` describes when each client can be reached and how fast it
works. `build_round(participation=...)` and `fedbuff.build_fedbuff_step`
read it:

* Availability is a per-client probability of being online, either one
  value per client or a daily schedule `[clients, slots]` whose slot is
  read from the virtual clock (slot `floor(clock / seconds_per_slot) mod
  slots`). Only available clients can be sampled.
* Dropout is a per-client probability that a sampled client, after it has
  downloaded the model, leaves before it reports.
* Speeds set each client's time in a round: download, local steps and
  upload. `speed_jitter` multiplies a client's step time by a lognormal
  factor drawn per client and round.
* A deadline cuts the round. The straggler policy decides what happens to
  a client that would not finish its local steps by then. 'wait' ignores
  the deadline and waits for everyone, and 'drop' discards the late
  updates. 'partial' stops the client at the deadline and uses the steps
  it finished; combine it with `fednova=True`, which divides each update
  by its step count.

All times are virtual seconds on the simulated clock, not the time the
simulation takes.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.communication import compression as compression_lib
from fedjax_med.errors import InputError
from fedjax_med.typing import Params
from fedjax_med.typing import PRNGKey

STRAGGLER_POLICIES = ('wait', 'drop', 'partial')
FLOAT32_BYTES = 4
# A step limit that never binds.
NO_STEP_LIMIT = 1 << 30


class Participation(NamedTuple):
  """Availability, dropout and speed of every client, and the deadline.

  Attributes:
    availability: `[clients]` probability that a client is online in a
      round, or `[clients, slots]` probabilities over a daily schedule
      (for example 24 hourly slots, with each site's time zone already
      applied); None means always online.
    dropout: probability that a sampled client drops out before it
      reports, a float or `[clients]`.
    steps_per_second: `[clients]` local optimizer steps per second; None
      makes local training take no time.
    upload_bytes_per_second: `[clients]` uplink speed; None means instant.
    download_bytes_per_second: `[clients]` downlink speed; None means
      instant.
    speed_jitter: standard deviation of the log of a per-round factor on
      each client's step time; 0 keeps the speeds fixed.
    deadline: seconds a round may last, or None for no deadline.
    straggler_policy: 'wait', 'drop' or 'partial' (see the module
      docstring). 'drop' and 'partial' need a `deadline`.
    seconds_per_slot: length of one slot of an availability schedule.
    server_seconds: fixed seconds each round adds to the clock on top of
      the clients' time (scheduling, aggregation).
  """

  availability: jax.Array | None = None
  dropout: jax.Array | float = 0.0
  steps_per_second: jax.Array | None = None
  upload_bytes_per_second: jax.Array | None = None
  download_bytes_per_second: jax.Array | None = None
  speed_jitter: float = 0.0
  deadline: float | None = None
  straggler_policy: str = 'wait'
  seconds_per_slot: float = 3600.0
  server_seconds: float = 0.0


class Timing(NamedTuple):
  """Per-client times of one round, in virtual seconds, `[cohort]` each.

  Attributes:
    download: time to receive the model.
    step: time of one local step.
    upload: time to send the update.
    step_limit: local steps that fit before the deadline under 'partial'
      (int32); `NO_STEP_LIMIT` otherwise.
  """

  download: jax.Array
  step: jax.Array
  upload: jax.Array
  step_limit: jax.Array


def validate(participation: Participation, num_clients: int) -> None:
  """Check shapes and ranges of `participation` for `num_clients` clients.

  Raises:
    InputError: naming the field, the value and the valid range.
  """
  p = participation
  if p.availability is not None:
    availability = np.asarray(p.availability)
    if availability.ndim not in (1, 2) or availability.shape[0] != num_clients:
      raise InputError(
          f'`availability` must be shaped ({num_clients},) or ({num_clients}, '
          f'slots); got {availability.shape}.'
      )
    if availability.ndim == 2 and availability.shape[1] < 1:
      raise InputError('`availability` needs at least one schedule slot.')
    _check_probabilities('availability', availability)
    if not np.any(availability > 0):
      raise InputError(
          '`availability` is 0 for every client, so no client is ever '
          'online and no round could run; give some client a probability '
          'above 0.')
  dropout = np.asarray(p.dropout)
  if dropout.ndim not in (0, 1) or (
      dropout.ndim == 1 and dropout.shape != (num_clients,)):
    raise InputError(
        f'`dropout` must be a float or shaped ({num_clients},); got shape '
        f'{dropout.shape}.'
    )
  _check_probabilities('dropout', dropout)
  for name in ('steps_per_second', 'upload_bytes_per_second',
               'download_bytes_per_second'):
    value = getattr(p, name)
    if value is None:
      continue
    value = np.asarray(value)
    if value.shape != (num_clients,):
      raise InputError(
          f'`{name}` must be shaped ({num_clients},); got {value.shape}.'
      )
    if not (np.all(np.isfinite(value)) and np.all(value > 0)):
      raise InputError(
          f'`{name}` must be finite and positive for every client; got '
          f'minimum {np.min(value)}.'
      )
  if not (math.isfinite(p.speed_jitter) and p.speed_jitter >= 0):
    raise InputError(
        f'`speed_jitter` must be finite and >= 0; got {p.speed_jitter}.'
    )
  if p.straggler_policy not in STRAGGLER_POLICIES:
    raise InputError(
        f'`straggler_policy` must be one of {STRAGGLER_POLICIES}; got '
        f'{p.straggler_policy!r}.'
    )
  if p.deadline is not None and not (
      math.isfinite(p.deadline) and p.deadline > 0):
    raise InputError(
        f'`deadline` must be a positive number of seconds; got {p.deadline}.'
    )
  if p.straggler_policy != 'wait' and p.deadline is None:
    raise InputError(
        f'`straggler_policy={p.straggler_policy!r}` needs a `deadline` in '
        'seconds; set one or use straggler_policy="wait".'
    )
  if p.straggler_policy == 'partial' and p.steps_per_second is None:
    raise InputError(
        "`straggler_policy='partial'` cuts local steps at the deadline; "
        'set `steps_per_second`.'
    )
  if p.straggler_policy == 'drop' and (
      p.steps_per_second is None and p.upload_bytes_per_second is None
      and p.download_bytes_per_second is None):
    raise InputError(
        'A deadline can only cut clients that take time: set '
        '`steps_per_second` or a link speed for the stragglers.'
    )
  if not (math.isfinite(p.seconds_per_slot) and p.seconds_per_slot > 0):
    raise InputError(
        f'`seconds_per_slot` must be positive; got {p.seconds_per_slot}.'
    )
  if not (math.isfinite(p.server_seconds) and p.server_seconds >= 0):
    raise InputError(
        f'`server_seconds` must be finite and >= 0; got {p.server_seconds}.'
    )
  if (has_schedule(p) and p.steps_per_second is None
      and p.server_seconds == 0):
    raise InputError(
        'An availability schedule follows the virtual clock, which does not '
        'advance without `steps_per_second` or `server_seconds`; set one.'
    )


def message_bytes(
    params, compression: compression_lib.CompressionSettings | None,
    *, scaffold: bool = False, local_mask: Params | None = None,
) -> dict[str, int]:
  """Return the bytes one client downloads and uploads in a round.

  A client downloads the params as float32 values and uploads its update
  encoded by `compression`. Under FedBN, the leaves that `local_mask`
  marks stay on the clients and are counted neither way. Under SCAFFOLD,
  the server also sends its control variate c and the client sends its
  control change c_i+ - c_i, each as uncompressed float32 values of the
  shared params' size.
  """
  leaves = jax.tree.leaves(params)
  if local_mask is None:
    size = sum(leaf.size for leaf in leaves)
  else:
    is_local = jax.tree.leaves(local_mask)
    size = sum(leaf.size for leaf, local in zip(leaves, is_local, strict=True)
               if not bool(local))
  settings = compression or compression_lib.CompressionSettings()
  down = FLOAT32_BYTES * size
  up = compression_lib.encoded_bytes(settings, size)
  if scaffold:
    down += FLOAT32_BYTES * size
    up += FLOAT32_BYTES * size
  return {'down': down, 'up': up}


def available_clients(
    participation: Participation, key: PRNGKey, clock: jax.Array,
    num_clients: int,
) -> jax.Array:
  """Draw which clients are online at virtual time `clock`, `[clients]` bool."""
  availability = participation.availability
  if availability is None:
    return jnp.ones((num_clients,), bool)
  availability = jnp.asarray(availability, jnp.float32)
  if availability.ndim == 2:
    slots = availability.shape[1]
    slot = jnp.floor(clock / participation.seconds_per_slot).astype(jnp.int32)
    availability = availability[:, jnp.mod(slot, slots)]
  return jax.random.uniform(key, (num_clients,)) < availability


def stays(
    participation: Participation, key: PRNGKey, client_ids: jax.Array
) -> jax.Array:
  """Draw which cohort members do not drop out, `[cohort]` bool.

  Each client's draw comes from `fold_in(key, client_id)`, so it does not
  depend on the client's slot in the cohort.
  """
  dropout = jnp.asarray(participation.dropout, jnp.float32)
  if dropout.ndim == 1:
    dropout = dropout[client_ids]
  return _per_client_uniform(key, client_ids) >= dropout


def timing(
    participation: Participation, key: PRNGKey, client_ids: jax.Array,
    *, model_bytes: int, upload_bytes: int,
) -> Timing:
  """Return the cohort's download, step and upload times for one round.

  `model_bytes` is what each client downloads and `upload_bytes` what it
  sends (after compression). Under 'partial', `step_limit` is the number of
  whole steps that fit between the download and the upload before the deadline;
  a client that cannot even download and upload in time gets 0.
  """
  p = participation
  size = client_ids.shape[0]
  zeros = jnp.zeros((size,), jnp.float32)
  download = zeros if p.download_bytes_per_second is None else (
      model_bytes / jnp.asarray(p.download_bytes_per_second,
                                jnp.float32)[client_ids])
  upload = zeros if p.upload_bytes_per_second is None else (
      upload_bytes / jnp.asarray(p.upload_bytes_per_second,
                                 jnp.float32)[client_ids])
  if p.steps_per_second is None:
    speed = jnp.full((size,), jnp.inf, jnp.float32)
  else:
    speed = jnp.asarray(p.steps_per_second, jnp.float32)[client_ids]
    if p.speed_jitter > 0:
      # Per client, from `fold_in(key, client_id)`, like the dropouts.
      normal = jax.vmap(
          lambda client: jax.random.normal(jax.random.fold_in(key, client))
      )(client_ids)
      speed = speed * jnp.exp(-p.speed_jitter * normal)
  step = 1.0 / speed
  step_limit = jnp.full((size,), NO_STEP_LIMIT, jnp.int32)
  if p.straggler_policy == 'partial':
    spare = p.deadline - download - upload
    # The spare time times the speed, rather than divided by the step
    # time, so that 1 s at 7 steps/s gives 7 steps, not 6.
    fits = jnp.floor(jnp.maximum(spare, 0.0) * speed)
    step_limit = jnp.clip(fits, 0, NO_STEP_LIMIT).astype(jnp.int32)
  return Timing(download, step, upload, step_limit)


def finish_times(times: Timing, num_steps: jax.Array) -> jax.Array:
  """Return each client's seconds from the round start to its report."""
  return times.download + num_steps.astype(jnp.float32) * times.step + (
      times.upload)


def round_seconds(
    participation: Participation, finish: jax.Array, reported: jax.Array,
    late: jax.Array, noticed: jax.Array | None = None,
) -> jax.Array:
  """Return the virtual length of a round.

  The server waits for the last reporting client and for `noticed`, the
  times at which it notices the clients that dropped out (their download
  time, as FedBuff uses, and 0 for the others). Under 'drop' and
  'partial' it stops waiting at the deadline, and it waits until the
  deadline when some client is late (dropped as a straggler). It then
  adds `server_seconds`.
  """
  last = jnp.max(jnp.where(reported, finish, 0.0), initial=0.0)
  if noticed is not None:
    last = jnp.maximum(last, jnp.max(noticed, initial=0.0))
  if participation.deadline is not None and (
      participation.straggler_policy != 'wait'):
    deadline = participation.deadline
    last = jnp.where(jnp.any(late), deadline, jnp.minimum(last, deadline))
  return last + participation.server_seconds


def advance_clock(
    participation: Participation, clock: jax.Array, seconds: jax.Array,
    num_available: jax.Array,
) -> jax.Array:
  """Return the clock after a round of `seconds`.

  When no client is online under an availability schedule, no round can
  run: the clock moves to the start of the next slot instead, whatever
  `seconds` is, so that a night with every client offline ends and no
  online slot is skipped.
  """
  after = clock + seconds
  if not has_schedule(participation):
    return after
  return jnp.where(num_available == 0, next_slot(participation, clock), after)


def office_hours(
    num_clients: int,
    *,
    utc_offsets: np.ndarray | None = None,
    opening_hour: int = 8,
    closing_hour: int = 18,
    open_probability: float = 0.9,
    closed_probability: float = 0.1,
) -> np.ndarray:
  """Return a `[clients, 24]` hourly schedule of a working day.

  A client is online with `open_probability` from `opening_hour` to
  `closing_hour` local time and with `closed_probability` otherwise.
  `utc_offsets[i]` (whole hours) shifts client i's day, so slot h is
  hour h of the simulated clock's time zone.
  """
  if not 0 <= opening_hour < closing_hour <= 24:
    raise InputError(
        'Opening and closing hours must satisfy 0 <= opening < closing <= '
        f'24; got {opening_hour} and {closing_hour}.'
    )
  _check_probabilities('open_probability', np.asarray(open_probability))
  _check_probabilities('closed_probability', np.asarray(closed_probability))
  if utc_offsets is None:
    utc_offsets = np.zeros(num_clients, np.int64)
  utc_offsets = np.asarray(utc_offsets)
  if utc_offsets.shape != (num_clients,):
    raise InputError(
        f'`utc_offsets` must be shaped ({num_clients},); got '
        f'{utc_offsets.shape}.'
    )
  local_hour = (np.arange(24)[None, :] + np.round(utc_offsets)[:, None]) % 24
  is_open = (local_hour >= opening_hour) & (local_hour < closing_hour)
  return np.where(is_open, open_probability, closed_probability).astype(
      np.float32)


def lognormal_speeds(
    key: PRNGKey, num_clients: int, median: float, sigma: float
) -> np.ndarray:
  """Draw `[clients]` speeds whose log is normal around `log(median)`."""
  if not (median > 0 and sigma >= 0):
    raise InputError(
        f'Speeds need median > 0 and sigma >= 0; got {median} and {sigma}.'
    )
  draws = jax.random.normal(key, (num_clients,))
  return np.asarray(median * jnp.exp(sigma * draws), np.float32)


def has_schedule(participation: Participation) -> bool:
  """Return whether `availability` is a `[clients, slots]` schedule."""
  availability = participation.availability
  return availability is not None and np.ndim(availability) == 2


def open_slot_start(participation: Participation,
                    clock: jax.Array) -> jax.Array:
  """Return `clock`, moved past slots in which no client can be online.

  A slot where the schedule gives every client probability 0 is closed.
  The schedule is public, so no round starts in such a slot, and the clock
  moves to the start of the next slot in which some client has a chance
  of being online. In an open slot `clock` is returned unchanged. Without
  a schedule, or with no closed slot, it is always unchanged.
  """
  if not has_schedule(participation):
    return clock
  is_open = np.max(np.asarray(participation.availability), axis=0) > 0
  if is_open.all():
    return clock
  num_slots = is_open.shape[0]
  # `validate` rejects a schedule with no open slot, so every slot reaches
  # an open one within num_slots - 1 steps.
  wait = np.array([
      next(k for k in range(num_slots) if is_open[(slot + k) % num_slots])
      for slot in range(num_slots)], np.float32)
  length = participation.seconds_per_slot
  index = jnp.floor(clock / length)
  skip = jnp.asarray(wait)[jnp.mod(index, num_slots).astype(jnp.int32)]
  start = ((index + skip) * length).astype(jnp.result_type(clock))
  return jnp.where(skip > 0, start, clock)


def next_slot(participation: Participation, clock: jax.Array) -> jax.Array:
  """Return the start of the availability slot after the one at `clock`.

  Without a schedule there are no slots, and `clock` is returned.
  """
  if not has_schedule(participation):
    return clock
  length = participation.seconds_per_slot
  start = (jnp.floor(clock / length) + 1.0) * length
  return start.astype(jnp.result_type(clock))


def _per_client_uniform(key: PRNGKey, client_ids: jax.Array) -> jax.Array:
  return jax.vmap(
      lambda client: jax.random.uniform(jax.random.fold_in(key, client))
  )(client_ids)


def _check_probabilities(name: str, values: np.ndarray) -> None:
  if not (np.all(np.isfinite(values)) and np.all(values >= 0)
          and np.all(values <= 1)):
    raise InputError(
        f'`{name}` must contain probabilities in [0, 1]; got values from '
        f'{np.min(values)} to {np.max(values)}.'
    )
