"""Asynchronous buffered aggregation (FedBuff) on a virtual clock.

Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS, https://arxiv.org/abs/2106.06639.

`concurrency` clients train at once, each from the model version that was
current when it started. The server applies an update as soon as
`buffer_size` client updates (K) have arrived, weighing update i by
`(1 + staleness_i) ** -staleness_exponent`, where the staleness counts the
server steps since the client started. It then starts `dispatch_size` new
clients from the new model.

The clients in flight are a masked batch of `concurrency` slots: per slot
the client id, the model version it started from, its arrival time on the
virtual clock and its (compressed, decoded) update. A server step is one
jitted call:

1. while dropouts leave fewer than K valid updates in flight, wait for
   the next dropout the server notices and start new clients in the free
   slots (at most `max_refills` waits). Then take the K earliest valid
   arrivals, move the clock to the last of them and free the slots of
   clients that dropped out before then;
2. screen, clip and weigh the K updates by example count and staleness,
   add central noise if set, and apply the mean through the server
   optimizer;
3. draw `dispatch_size` new clients among those available and idle, train
   them from the new params (a vmap over the new clients only) and put
   them in free slots with their arrival times.

With `buffer_size == concurrency == dispatch_size`, every update has
staleness 0, so a step equals a synchronous FedAvg round over the same
clients. `tests/simulation/test_fedbuff.py` checks this.
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_med import tree
from fedjax_med.client import local_training
from fedjax_med.communication import compression as compression_lib
from fedjax_med.data import federated
from fedjax_med.privacy import mechanisms
from fedjax_med.simulation import participation as participation_lib
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling
from fedjax_med.typing import Params, PRNGKey

# Folded into a step's key for the clients started while it waits; distinct
# from the tags of `simulation.round` that the step's key also takes.
_REFILL_TAG = 10


class FedBuffState(NamedTuple):
  """Server state plus the clients in flight.

  Attributes:
    server: the `round_lib.ServerState`; its `round` counts server steps
      (the model version) and its `clock` is the virtual time.
    client_ids: `[slots]` int32 client in each slot.
    busy: `[slots]` bool, True while a client in flight occupies the slot.
    valid: `[slots]` bool, False for a client that dropped out; its slot
      frees once the clock passes its `arrival`.
    version: `[slots]` int32 model version the client started from.
    arrival: `[slots]` float32 virtual time its update arrives (or, after
      a dropout, the time the server notices).
    delta: the slots' updates, each leaf `[slots, *param_shape]`.
    loss: `[slots]` mean local training loss.
  """

  server: round_lib.ServerState
  client_ids: jax.Array
  busy: jax.Array
  valid: jax.Array
  version: jax.Array
  arrival: jax.Array
  delta: Params
  loss: jax.Array


class FedBuff(NamedTuple):
  """The functions `build_fedbuff` returns.

  Attributes:
    init: `init(server_state, key) -> (state, metrics)`, which starts
      `concurrency` clients from the server params at the state's clock.
      Its metrics `num_dispatched` and `bytes_down` count those first
      downloads, which no step counts, and `clock` is the start time.
    step: `step(state, key) -> (state, metrics)`, one server step.
    message_bytes: `message_bytes(params) -> {'down': int, 'up': int}`,
      the bytes one client downloads and uploads.
  """

  init: Callable[[round_lib.ServerState, PRNGKey], tuple[FedBuffState, dict]]
  step: Callable[[FedBuffState, PRNGKey], tuple[FedBuffState, dict]]
  message_bytes: Callable[[Params], dict]


def build_fedbuff(
    train_data: federated.FederatedData,
    local_update: local_training.LocalUpdate,
    server_optimizer: optax.GradientTransformation,
    *,
    concurrency: int,
    buffer_size: int,
    dispatch_size: int | None = None,
    staleness_exponent: float = 0.5,
    aggregator: str = 'fedavg',
    privacy: mechanisms.PrivacySettings = mechanisms.PrivacySettings(),
    participation: participation_lib.Participation | None = None,
    compression: compression_lib.CompressionSettings | None = None,
    chunk_size: int | None = None,
    max_refills: int = 16,
) -> FedBuff:
  """Build FedBuff's jitted `init` and `step` over `train_data`.

  Args:
    train_data: the whole population, `[clients, examples, ...]`.
    local_update: a client's training, from `build_local_update`.
    server_optimizer: applied to the negative buffered mean; FedBuff's
      server learning rate is that of `optax.sgd`.
    concurrency: clients in flight at once (at most the population).
    buffer_size: K, the updates per server step (at most `concurrency`).
    dispatch_size: new clients started per step, at most the free slots;
      None uses `buffer_size`, which keeps `concurrency` constant when no
      client drops out and enough clients are online. Otherwise slots can
      free faster than this refills them, which the metric `num_in_flight`
      shows. `dispatch_size=concurrency` refills every free slot at each
      step, at the cost of training that many clients per step.
    staleness_exponent: a in the weight `(1 + staleness) ** -a`; FedBuff
      uses 0.5, and 0 weighs every update equally.
    aggregator: 'fedavg' (example weights) or 'mean'.
    privacy: clipping and central noise. Noise needs the fixed
      `privacy.denominator` and, for fedavg, `privacy.weight_cap`, as in a
      synchronous round.
    participation: availability, dropouts and speeds; a deadline and
      straggler policy are rejected, since no one waits for stragglers.
      Each step adds `server_seconds` to the clock.
    compression: each client's update encoding, as in `build_round`.
    chunk_size: train the new clients this many at a time.
    max_refills: the maximum number of times one step waits for a dropout and starts
      new clients when fewer than K valid updates are in flight. Each wait
      trains a batch of K clients. The bound keeps a population in which
      nearly every client drops out from stalling a step, which then
      applies fewer than K updates. 0 never waits.

  Returns:
    A `FedBuff` of `init`, `step` and `message_bytes`. Start from
    `round_lib.init_server_state(params, optimizer, num_clients=...)`
    (with `error_feedback=True` for top-k error feedback). The step's
    metrics are scalars: `round` (server steps so far), `clock`,
    `num_collected` (valid updates taken), `num_contributing` (of those,
    finite with rows), `num_dispatched` (started after the update),
    `num_refilled` (started while the step waited for K), `num_dropped`
    (new clients of either kind that will drop out), `num_in_flight`, `num_available`, `mean_staleness`,
    `max_staleness`, `train_loss`, `num_clipped`, `mean_update_norm`,
    `skipped`, `bytes_down`, `bytes_up` and `params_finite`.
  """
  num_clients = train_data.num_clients
  concurrency = federated.check_count('concurrency', concurrency, num_clients)
  buffer_size = federated.check_count('buffer_size', buffer_size, concurrency)
  if dispatch_size is None:
    dispatch_size = buffer_size
  dispatch_size = federated.check_count('dispatch_size', dispatch_size,
                                        concurrency)
  if max_refills != 0:
    max_refills = federated.check_count('max_refills', max_refills, 1000)
  if not (math.isfinite(staleness_exponent) and staleness_exponent >= 0):
    raise ValueError(
        f'`staleness_exponent` must be >= 0; got {staleness_exponent}.'
    )
  if aggregator not in ('fedavg', 'mean'):
    raise ValueError(
        f'FedBuff averages a buffer, so `aggregator` must be fedavg or mean; '
        f'got {aggregator!r}.'
    )
  mechanisms.validate_privacy(privacy, aggregator)
  if privacy.noise_kind not in ('none', 'central') or (
      privacy.adaptive_clipping):
    raise ValueError(
        'FedBuff supports clipping and central noise only; got noise '
        f'{privacy.noise_kind!r} and adaptive_clipping '
        f'{privacy.adaptive_clipping}.'
    )
  round_lib.check_population(train_data, local_update, sampler=None)
  participation = participation or participation_lib.Participation()
  participation_lib.validate(participation, num_clients)
  if participation.deadline is not None:
    raise ValueError(
        'FedBuff never waits for a round, so it has no deadline; set '
        '`participation.deadline=None`.'
    )
  compression = compression or compression_lib.CompressionSettings()
  compression_lib.validate(compression)
  compress = compression.kind != 'none'
  error_feedback = compression.kind == 'top_k' and compression.error_feedback
  map_cohort = round_lib._cohort_mapper(chunk_size, None)
  train_many = jax.vmap(local_update, in_axes=(None, 0, 0, 0))
  train_data = jax.device_put(train_data)

  def message_bytes(params):
    return participation_lib.message_bytes(params, compression)

  def check_state(server):
    if server.clock is None or (error_feedback and server.residual is None):
      raise ValueError(
          'FedBuff needs the clock and contribution counts in the server '
          'state: call `init_server_state(params, optimizer, '
          'num_clients=num_clients)`, with `error_feedback=True` for top-k '
          'error feedback.'
      )
    if server.contributions.shape != (num_clients,):
      raise ValueError(
          'The server state counts contributions for '
          f'{server.contributions.shape[0]} clients, but FedBuff was built '
          f'for {num_clients}; call `init_server_state(..., '
          f'num_clients={num_clients})`.'
      )

  def dispatch(server, key, idle, size, num_free):
    """Start up to `num_free` of `size` drawn clients, idle and available.

    Clients drawn beyond the free slots are masked out before anything
    about them is recorded (they are still computed, as part of the batch).
    """
    examples, num_examples = train_data.examples, train_data.num_examples
    available = participation_lib.available_clients(
        participation, jax.random.fold_in(key, round_lib._AVAILABILITY_TAG),
        server.clock, num_clients,
    )
    cohort = sampling.uniform_sampler(num_clients, size)(
        jax.random.fold_in(key, round_lib._SAMPLE_TAG),
        available=available & idle,
    )
    fits = cohort.mask & (jnp.cumsum(cohort.mask) <= num_free)
    cohort = cohort._replace(mask=fits)
    stays = participation_lib.stays(
        participation, jax.random.fold_in(key, round_lib._LEAVE_TAG),
        cohort.client_ids)
    sizes = message_bytes(server.params)
    times = participation_lib.timing(
        participation, jax.random.fold_in(key, round_lib._SPEED_TAG),
        cohort.client_ids, model_bytes=sizes['down'],
        upload_bytes=sizes['up'],
    )
    client_keys = round_lib.slot_keys(
        jax.random.fold_in(key, round_lib._CLIENTS_TAG), cohort.client_ids)
    local = map_cohort(
        lambda ids, keys: train_many(
            server.params, round_lib._gather(examples, ids),
            num_examples[ids], keys),
        cohort.client_ids, client_keys,
    )
    residual = server.residual
    if compress:
      local, new_residuals = round_lib._compress_updates(
          compression, local,  client_keys,
          residual[cohort.client_ids] if error_feedback else None,
      )
      if error_feedback:
        # Only clients that send keep what they did not send.
        sends = cohort.mask & stays
        change = jnp.where(sends[:, None],
                           new_residuals - residual[cohort.client_ids], 0.0)
        residual = residual.at[cohort.client_ids].add(change)
    finish = participation_lib.finish_times(times, local.num_steps)
    # A client that drops out leaves after its download.
    arrival = server.clock + jnp.where(stays, finish, times.download)
    num_available = jnp.sum(available)
    return cohort, stays, local, arrival, residual, num_available

  def place(state, cohort, stays, local, arrival):
    """Put the started clients into free slots (first free slot first)."""
    free_order = jnp.argsort(state.busy, stable=True)
    num_free = jnp.sum(~state.busy)
    position = jnp.cumsum(cohort.mask) - 1
    fits = cohort.mask & (position < num_free)
    target = jnp.where(fits, free_order[jnp.clip(position, 0)], -1)
    target = jnp.where(fits, target, state.busy.shape[0])

    def put(stored, new):
      return stored.at[target].set(new.astype(stored.dtype), mode='drop')

    return state._replace(
        client_ids=put(state.client_ids, cohort.client_ids),
        busy=put(state.busy, fits),
        valid=put(state.valid, stays),
        version=put(state.version,
                    jnp.broadcast_to(state.server.round, target.shape)),
        arrival=put(state.arrival, arrival),
        delta=jax.tree.map(put, state.delta, local.delta),
        loss=put(state.loss, local.loss),
    ), jnp.sum(fits)

  @jax.jit
  def init_step(server, key):
    # The first clients start in a slot where some client can be online.
    server = server._replace(clock=participation_lib.open_slot_start(
        participation, server.clock))
    slots = jax.tree.map(
        lambda leaf: jnp.zeros((concurrency,) + leaf.shape, jnp.float32),
        server.params)
    state = FedBuffState(
        server=server,
        client_ids=jnp.zeros((concurrency,), jnp.int32),
        busy=jnp.zeros((concurrency,), bool),
        valid=jnp.zeros((concurrency,), bool),
        version=jnp.zeros((concurrency,), jnp.int32),
        arrival=jnp.zeros((concurrency,), jnp.float32),
        delta=slots,
        loss=jnp.zeros((concurrency,), jnp.float32),
    )
    idle = jnp.ones((num_clients,), bool)
    cohort, stays, local, arrival, residual, _ = dispatch(
        server, key, idle, concurrency, concurrency)
    state = state._replace(server=server._replace(residual=residual))
    state, num_dispatched = place(state, cohort, stays, local, arrival)
    sizes = message_bytes(server.params)
    return state, {
        'num_dispatched': num_dispatched,
        'bytes_down': num_dispatched.astype(jnp.float32) * sizes['down'],
        'clock': server.clock,
    }

  def in_flight_clients(state):
    """Return `[clients]` bool, True for a client in a busy slot."""
    return jnp.zeros((num_clients,), jnp.int32).at[state.client_ids].max(
        state.busy.astype(jnp.int32)) > 0

  def refill(state, key):
    """Replace noticed dropouts until K valid updates are in flight.

    The server waits, as the paper's does. At the next dropout it notices,
    the slot frees and up to K new clients start from the current model in
    the free slots. This repeats until K valid updates are in flight, no
    dropout is left to notice, or `max_refills` waits have passed.

    Returns:
      `(state, clock, num_started, num_dropped)`: the clock is the last
      dropout noticed (the state's clock without a wait).
    """

    def short(carry):
      state, _, waits, _, _ = carry
      num_valid = jnp.sum(state.busy & state.valid)
      return ((num_valid < buffer_size) & jnp.any(state.busy & ~state.valid)
              & (waits < max_refills))

    def wait(carry):
      state, clock, waits, num_started, num_dropped = carry
      lost = state.busy & ~state.valid
      clock = jnp.maximum(
          clock, jnp.min(jnp.where(lost, state.arrival, jnp.inf)))
      state = state._replace(busy=state.busy & ~(lost & (state.arrival
                                                         <= clock)))
      start = state.server._replace(clock=clock)
      if participation_lib.has_schedule(participation):
        start = start._replace(
            clock=participation_lib.open_slot_start(participation, clock))
      cohort, stays, local, arrival, residual, _ = dispatch(
          start, jax.random.fold_in(key, waits),
          ~in_flight_clients(state), buffer_size,
          jnp.sum(~state.busy))
      state = state._replace(
          server=state.server._replace(residual=residual))
      state, started = place(state, cohort, stays, local, arrival)
      return (state, clock, waits + 1, num_started + started,
              num_dropped + jnp.sum(cohort.mask & ~stays))

    zero = jnp.zeros((), jnp.int32)
    state, clock, _, num_started, num_dropped = jax.lax.while_loop(
        short, wait, (state, state.server.clock, zero, zero, zero))
    return state, clock, num_started, num_dropped

  @jax.jit
  def server_step(state, key):
    # 1. Wait for K valid updates, then take the K earliest.
    state, waited_until, num_refilled, refill_dropped = refill(
        state, jax.random.fold_in(key, _REFILL_TAG))
    server = state.server
    num_examples = train_data.num_examples
    waiting = state.busy & state.valid
    pending = jnp.where(waiting, state.arrival, jnp.inf)
    neg_times, picked = jax.lax.top_k(-pending, buffer_size)
    picked_ok = jnp.isfinite(neg_times)
    collected = jnp.zeros_like(waiting).at[picked].set(picked_ok)
    # Without a valid update in flight, the clock moves to the next event:
    # the first dropout the server notices, or else, with no client in
    # flight, the next slot of an availability schedule.
    last_arrival = jnp.max(jnp.where(picked_ok, -neg_times, -jnp.inf))
    first_dropout = jnp.min(jnp.where(state.busy, state.arrival, jnp.inf))
    event = jnp.where(
        jnp.any(picked_ok), last_arrival,
        jnp.where(jnp.any(state.busy), first_dropout, server.clock))
    now = (jnp.maximum(waited_until, event)
           + participation.server_seconds)
    # With no client in flight under a schedule, the server waits for the
    # next slot and starts new clients at its beginning.
    idle = ~jnp.any(picked_ok) & ~jnp.any(state.busy)
    if participation_lib.has_schedule(participation):
      # After the last dropout the wait handled, not before it: the step
      # used to end at the slot after its start and restart clients there.
      now = jnp.where(
          idle, participation_lib.open_slot_start(
              participation,
              participation_lib.next_slot(participation, waited_until)),
          now)
    dropped = state.busy & ~state.valid & (state.arrival <= now)

    # 2. Screen, clip, weigh and apply.
    counts = num_examples[state.client_ids]
    updates, norms, contributes, diagnostics = round_lib._screen_and_clip(
        state.delta, collected, counts, privacy)
    staleness = (server.round - state.version).astype(jnp.float32)
    decay = (1.0 + staleness) ** -staleness_exponent
    weights = mechanisms.client_weights(
        aggregator, contributes, counts, privacy.weight_cap)
    aggregate = mechanisms.noised_mean(
        updates, weights * decay, privacy,
        key=jax.random.fold_in(key, round_lib._CENTRAL_NOISE_TAG),
        denominator_weights=weights)
    # Central noise is applied even to an empty buffer, as in a round.
    skipped = jnp.sum(weights) <= 0
    if privacy.noise_kind == 'central':
      skipped = jnp.zeros((), bool)
    new_server = round_lib._server_update(
        server, aggregate, skipped, server_optimizer)
    new_server = new_server._replace(
        clock=now,
        contributions=server.contributions.at[state.client_ids].add(
            contributes.astype(jnp.int32)),
    )
    example_weights = jnp.where(contributes, counts, 0).astype(jnp.float32)
    # `where`, so that the NaN loss of a screened-out client cannot leak in.
    train_loss = jnp.sum(
        jnp.where(contributes, example_weights * state.loss, 0.0)
    ) / jnp.maximum(jnp.sum(example_weights), 1.0)
    freed = collected | dropped
    state = state._replace(server=new_server, busy=state.busy & ~freed)

    # 3. Start new clients from the new params, at the next open slot when
    # the step ends in a closed one. Dispatching there started no one, and
    # the next step, idle, applied central noise alone once a night.
    start = new_server
    if participation_lib.has_schedule(participation):
      start = new_server._replace(
          clock=participation_lib.open_slot_start(participation, now))
    cohort, stays, local, arrival, residual, num_available = dispatch(
        start, key, ~in_flight_clients(state), dispatch_size,
        jnp.sum(~state.busy))
    state = state._replace(server=new_server._replace(residual=residual))
    state, num_dispatched = place(state, cohort, stays, local, arrival)

    sizes = message_bytes(server.params)
    num_collected = jnp.sum(collected)
    metrics = {
        'round': new_server.round,
        'clock': now,
        'num_collected': num_collected,
        'num_contributing': jnp.sum(contributes),
        'num_dispatched': num_dispatched,
        'num_refilled': num_refilled,
        'num_dropped': jnp.sum(cohort.mask & ~stays) + refill_dropped,
        'num_in_flight': jnp.sum(state.busy),
        'num_available': num_available,
        'mean_staleness': jnp.sum(jnp.where(collected, staleness, 0.0))
        / jnp.maximum(num_collected, 1),
        'max_staleness': jnp.max(jnp.where(collected, staleness, 0.0)),
        'train_loss': jnp.where(
            skipped | ~jnp.any(contributes), jnp.nan, train_loss),
        'skipped': skipped,
        'bytes_down': (num_dispatched + num_refilled).astype(jnp.float32)
        * sizes['down'],
        'bytes_up': num_collected.astype(jnp.float32) * sizes['up'],
        'params_finite': tree.tree_is_finite(new_server.params),
        **diagnostics,
    }
    del norms
    return state, metrics

  def init(server, key):
    check_state(server)
    return init_step(server, key)

  def step(state, key):
    check_state(state.server)
    return server_step(state, key)

  return FedBuff(init, step, message_bytes)
