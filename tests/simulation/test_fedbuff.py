"""FedBuff: buffered asynchronous aggregation on the virtual clock."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.communication import compression
from fedjax_med.simulation import fedbuff
from fedjax_med.simulation import participation as participation_lib
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling
from tests.simulation import small_population as small


def _local_update():
  return small.local_update(num_steps=4)


def test_full_buffer_equals_sync_fedavg(key):
  data = small.population([3, 8, 5, 6, 9, 4])
  participation = participation_lib.Participation(
      availability=np.ones(6, np.float32))
  sync = round_lib.build_round(
      data, _local_update(), sampling.uniform_sampler(6, 3), optax.sgd(1.0),
      participation=participation)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=3, buffer_size=3,
      participation=participation)
  keys = [jax.random.fold_in(key, index) for index in range(4)]
  sync_state = small.server_state(key, num_clients=6)
  for round_key in keys[:3]:
    sync_state, _ = sync(sync_state, round_key)
  state, _ = buffered.init(small.server_state(key, num_clients=6), keys[0])
  for step_key in keys[1:]:
    state, metrics = buffered.step(state, step_key)
    assert float(metrics['max_staleness']) == 0.0
    assert int(metrics['num_collected']) == 3
  small.assert_leaves_close(state.server.params, sync_state.params, rtol=1e-6,
                atol=1e-7)
  np.testing.assert_array_equal(state.server.contributions,
                                sync_state.contributions)


def test_stale_update_weighted_by_hand(key):
  # Client 0 is fast and client 1 slow; one update per server step.
  data = small.population([6, 6])
  participation = participation_lib.Participation(
      steps_per_second=np.array([100.0, 1.0], np.float32))
  local_update = _local_update()
  buffered = fedbuff.build_fedbuff(
      data, local_update, optax.sgd(1.0), concurrency=2, buffer_size=1,
      participation=participation, aggregator='mean')
  start = small.server_state(key, num_clients=2)
  init_key = jax.random.fold_in(key, 0)
  state, _ = buffered.init(start, init_key)
  state, first = buffered.step(state, jax.random.fold_in(key, 1))
  # Four steps at 100 steps/s: client 0 arrives at 0.04 s.
  assert float(first['max_staleness']) == 0.0
  np.testing.assert_allclose(first['clock'], 0.04, rtol=1e-5)
  index = 2
  while True:
    before = state.server.params
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    index += 1
    if float(metrics['max_staleness']) > 0:
      break
  # Client 1 started at version 0 from the start params and arrives at 4 s,
  # after client 0's repeated 0.04 s trips.
  np.testing.assert_allclose(metrics['clock'], 4.0, rtol=1e-5)
  staleness = float(metrics['max_staleness'])
  assert staleness == index - 2
  clients_key = jax.random.fold_in(init_key, round_lib._CLIENTS_TAG)
  examples = jax.tree.map(lambda a: a[1], data.examples)
  slow = local_update(start.params, examples, data.num_examples[1],
                      jax.random.fold_in(clients_key, 1))
  expected = jax.tree.map(
      lambda old, delta: old + delta / np.sqrt(1.0 + staleness),
      before, slow.delta)
  small.assert_leaves_close(state.server.params, expected, rtol=1e-5, atol=1e-7)


def test_staleness_decay_applied(key):
  data = small.population([6, 6])
  participation = participation_lib.Participation(
      steps_per_second=np.array([100.0, 1.0], np.float32))
  local_update = _local_update()
  init_key = jax.random.fold_in(key, 0)
  results = {}
  for exponent in (0.0, 1.0):
    buffered = fedbuff.build_fedbuff(
        data, local_update, optax.sgd(1.0), concurrency=2, buffer_size=1,
        participation=participation, aggregator='mean',
        staleness_exponent=exponent)
    state, _ = buffered.init(small.server_state(key, num_clients=2), init_key)
    index = 1
    while True:
      before = state.server.params
      state, metrics = buffered.step(state, jax.random.fold_in(key, index))
      index += 1
      if float(metrics['max_staleness']) > 0:
        break
    results[exponent] = (before, state.server.params,
                         float(metrics['max_staleness']))
  # The same stale update, once unweighted and once divided by 1 + tau.
  before, after_plain, staleness = results[0.0]
  _, after_decayed, _ = results[1.0]
  plain_step = jax.tree.map(jnp.subtract, after_plain, before)
  decayed_step = jax.tree.map(jnp.subtract, after_decayed, results[1.0][0])
  small.assert_leaves_close(decayed_step,
                jax.tree.map(lambda x: x / (1.0 + staleness), plain_step),
                rtol=1e-5, atol=1e-7)


def _half_dropping(max_refills=16):
  # Clients 0, 2, 4 and 6 always drop out after their download.
  data = small.population([5] * 8)
  participation = participation_lib.Participation(
      dropout=np.array([1.0, 0.0] * 4, np.float32),
      steps_per_second=np.ones(8, np.float32),
      download_bytes_per_second=np.full(8, 1e3, np.float32))
  return fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=4, buffer_size=2,
      dispatch_size=4, participation=participation, max_refills=max_refills)


def test_step_waits_for_buffer(key):
  buffered = _half_dropping()
  state, _ = buffered.init(small.server_state(key, num_clients=8), key)
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  down = buffered.message_bytes(params)['down']
  collected, refilled, clock = 0, 0, 0.0
  for index in range(1, 8):
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    # Four clients never drop out, so the server can always wait for K.
    assert int(metrics['num_collected']) == 2
    assert float(metrics['clock']) > clock
    assert float(metrics['bytes_down']) == down * (
        int(metrics['num_dispatched']) + int(metrics['num_refilled']))
    clock = float(metrics['clock'])
    collected += int(metrics['num_collected'])
    refilled += int(metrics['num_refilled'])
  contributions = np.asarray(state.server.contributions)
  assert contributions[0::2].sum() == 0
  assert contributions.sum() == collected == 14
  # Without waits, steps found fewer than K valid updates in flight.
  assert refilled > 0


def test_without_refills_step_takes_fewer(key):
  buffered = _half_dropping(max_refills=0)
  state, _ = buffered.init(small.server_state(key, num_clients=8), key)
  short = 0
  for index in range(1, 8):
    waiting = int(jnp.sum(state.busy & state.valid))
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    assert int(metrics['num_collected']) == min(2, waiting)
    assert int(metrics['num_refilled']) == 0
    assert int(metrics['num_in_flight']) <= 4
    short += waiting < 2
  assert short > 0
  assert np.asarray(state.server.contributions)[0::2].sum() == 0


def test_idle_step_ends_after_noticed_dropout(key):
  # The only client drops out and is noticed at 1.6 s, in a slot where
  # no client is online. The step used to end at 1.0 s, before the dropout it
  # had handled, and start the next client in the past.
  data = small.population([5, 5])
  participation = participation_lib.Participation(
      availability=np.array([[1.0, 1e-6]] * 2, np.float32),
      dropout=1.0, steps_per_second=np.ones(2, np.float32),
      download_bytes_per_second=np.full(2, 10.0, np.float32),
      seconds_per_slot=1.0)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=1, buffer_size=1,
      participation=participation)
  state, _ = buffered.init(small.server_state(key, num_clients=2),
                           jax.random.fold_in(key, 0))
  noticed = float(state.arrival[0])

  state, metrics = buffered.step(state, jax.random.fold_in(key, 1))

  assert noticed == pytest.approx(1.6)
  assert float(metrics['clock']) >= noticed
  assert float(metrics['clock']) == 2.0


def test_refills_stop_when_all_drop(key):
  data = small.population([5] * 6)
  participation = participation_lib.Participation(
      dropout=1.0, steps_per_second=np.ones(6, np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=3, buffer_size=2,
      participation=participation, max_refills=3)
  state, _ = buffered.init(small.server_state(key, num_clients=6), key)
  for index in range(1, 4):
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    assert int(metrics['num_collected']) == 0
    # At most 3 waits, each starting at most K = 2 clients.
    assert 0 < int(metrics['num_refilled']) <= 6
    assert int(metrics['num_dropped']) == (
        int(metrics['num_refilled']) + int(metrics['num_dispatched']))
  assert int(np.sum(state.server.contributions)) == 0


def test_bytes_and_clock(key):
  data = small.population([5] * 6)
  settings = compression.CompressionSettings('qsgd', levels=2)
  participation = participation_lib.Participation(
      steps_per_second=np.linspace(1.0, 3.0, 6).astype(np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=4, buffer_size=2,
      participation=participation, compression=settings)
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  sizes = buffered.message_bytes(params)
  assert sizes['up'] == compression.encoded_bytes(settings, small.NUM_PARAMS)
  state, _ = buffered.init(small.server_state(key, num_clients=6), key)
  clock = 0.0
  for index in range(1, 5):
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    assert float(metrics['clock']) >= clock
    clock = float(metrics['clock'])
    assert float(metrics['bytes_up']) == 2 * sizes['up']
    assert float(metrics['bytes_down']) == 2 * sizes['down']


@pytest.mark.parametrize('options, message', [
    ({'concurrency': 7, 'buffer_size': 2}, 'concurrency'),
    ({'concurrency': 2, 'buffer_size': 3}, 'buffer_size'),
    ({'concurrency': 2, 'buffer_size': 1, 'dispatch_size': 0},
     'dispatch_size'),
    ({'concurrency': 2, 'buffer_size': 1, 'staleness_exponent': -1.0},
     'staleness_exponent'),
    ({'concurrency': 2, 'buffer_size': 1, 'aggregator': 'median'},
     'aggregator'),
    ({'concurrency': 2, 'buffer_size': 1, 'max_refills': -1},
     'max_refills'),
    ({'concurrency': 2, 'buffer_size': 1, 'max_refills': 2.0},
     'max_refills'),
    ({'concurrency': 2, 'buffer_size': 1,
      'participation': participation_lib.Participation(
          steps_per_second=np.ones(6, np.float32), deadline=3.0)},
     'deadline'),
])
def test_build_rejects(options, message):
  data = small.population([5] * 6)
  with pytest.raises(ValueError, match=message):
    fedbuff.build_fedbuff(data, _local_update(), optax.sgd(1.0), **options)


@pytest.mark.parametrize('options, message', [
    # Both floats used to be truncated to 3 and 1 and accepted.
    ({'concurrency': 3.7, 'buffer_size': 1.9, 'dispatch_size': 1},
     r'`concurrency` must be an integer in \[1, 6\]; got 3.7\.'),
    # The error used to name `dispatch_size`, which was not given.
    ({'concurrency': 3, 'buffer_size': 1.9},
     r'`buffer_size` must be an integer in \[1, 3\]; got 1.9\.'),
    ({'concurrency': 3, 'buffer_size': 2, 'dispatch_size': 2.0},
     r'`dispatch_size` must be an integer in \[1, 3\]; got 2.0\.'),
    ({'concurrency': True, 'buffer_size': 1},
     r'`concurrency` must be an integer in \[1, 6\]; got True\.'),
    # numpy >= 2 prints np.True_ and older versions True.
    ({'concurrency': 3, 'buffer_size': np.bool_(True)},
     r'`buffer_size` must be an integer in \[1, 3\]; got (np\.)?True_?\.'),
], ids=['float_concurrency', 'float_buffer_size', 'float_dispatch_size',
        'bool_concurrency', 'numpy_bool_buffer_size'])
def test_build_rejects_non_integer_sizes(options, message):
  data = small.population([5] * 6)
  with pytest.raises(ValueError, match=message):
    fedbuff.build_fedbuff(data, _local_update(), optax.sgd(1.0), **options)


def test_build_accepts_numpy_integer_sizes(key):
  data = small.population([5] * 6)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=np.int64(3),
      buffer_size=np.int32(2))

  state, metrics = buffered.init(small.server_state(key, num_clients=6), key)
  _, step_metrics = buffered.step(state, jax.random.fold_in(key, 1))

  assert int(metrics['num_dispatched']) == 3
  assert int(step_metrics['num_collected']) == 2
  assert int(step_metrics['num_dispatched']) == 2


def test_step_needs_clock(key):
  data = small.population([5] * 4)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=2, buffer_size=1)
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match='num_clients'):
    buffered.init(round_lib.init_server_state(params, optax.sgd(1.0)), key)


def test_clock_moves_past_dropped_clients(key):
  # Every client drops out after a download: no update ever arrives, and
  # the clock must still move so that their slots free.
  data = small.population([5] * 20)
  participation = participation_lib.Participation(
      dropout=0.7, steps_per_second=np.ones(20, np.float32),
      download_bytes_per_second=np.ones(20, np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=5, buffer_size=2,
      participation=participation)
  state, _ = buffered.init(small.server_state(key, num_clients=20), key)
  clocks, collected = [], 0
  for index in range(1, 31):
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    clocks.append(float(metrics['clock']))
    collected += int(metrics['num_collected'])
  assert clocks == sorted(clocks)
  assert clocks[-1] > clocks[10]
  assert collected > 0


def test_clock_skips_offline_night(key):
  # Slot 0 of 2 is open, but at 1e-7 no client comes online in practice:
  # the first step finds no client online, and the clock jumps to the
  # next slot instead of stalling.
  data = small.population([5] * 6)
  schedule = np.tile(np.array([[1e-7, 1.0]], np.float32), (6, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0,
      steps_per_second=np.full(6, 10.0, np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=2, buffer_size=1,
      participation=participation)
  state, _ = buffered.init(small.server_state(key, num_clients=6), key)
  assert int(jnp.sum(state.busy)) == 0
  state, metrics = buffered.step(state, jax.random.fold_in(key, 1))
  assert float(metrics['clock']) == 100.0
  assert int(metrics['num_in_flight']) == 1
  state, metrics = buffered.step(state, jax.random.fold_in(key, 2))
  assert int(metrics['num_collected']) == 1


def test_offline_jump_lands_on_slot_start(key):
  # server_seconds is 60 s. A jump over an offline slot used to add it on
  # top of the slot start.
  data = small.population([5] * 6)
  schedule = np.tile(np.array([[1e-7, 1.0]], np.float32), (6, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0, server_seconds=60.0,
      steps_per_second=np.full(6, 10.0, np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=2, buffer_size=1,
      participation=participation)
  state, _ = buffered.init(small.server_state(key, num_clients=6), key)
  state, metrics = buffered.step(state, jax.random.fold_in(key, 1))
  assert float(metrics['clock']) == 100.0


def test_steps_skip_closed_slots(key):
  # Slots 1 to 6 of 8 have every client at probability 0. An idle step
  # used to move one slot at a time through them, each a server step that
  # applied central noise alone.
  data = small.population([5] * 6)
  schedule = np.tile(np.array([[1.0, 0, 0, 0, 0, 0, 0, 1.0]], np.float32),
                     (6, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0, server_seconds=10.0,
      steps_per_second=np.full(6, 1.0, np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=2, buffer_size=2,
      participation=participation)
  state, _ = buffered.init(small.server_state(key, num_clients=6), key)
  empty = 0
  for index in range(40):
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    if int(metrics['num_collected']) == 0:
      empty += 1
      slot = int(float(metrics['clock']) // 100.0) % 8
      assert slot in (0, 7), (index, float(metrics['clock']))
  # The last arrivals before a night land in a closed slot. The clients
  # started there found no one online, and the next step, with none in
  # flight, released central noise alone, once a night. They now start at
  # the next open slot, so no step is empty.
  assert empty == 0
  assert float(metrics['clock']) > 800.0


def test_init_starts_in_open_slot(key):
  data = small.population([5] * 6)
  schedule = np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (6, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0, server_seconds=10.0,
      steps_per_second=np.full(6, 10.0, np.float32))
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=2, buffer_size=1,
      participation=participation)
  state, started = buffered.init(small.server_state(key, num_clients=6), key)
  assert int(started['num_dispatched']) == 2
  assert float(started['clock']) == 200.0


def test_init_reports_its_downloads(key):
  data = small.population([5] * 8)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=4, buffer_size=2)
  state, started = buffered.init(small.server_state(key, num_clients=8), key)
  assert int(started['num_dispatched']) == 4
  assert float(started['bytes_down']) == 4 * 4 * small.NUM_PARAMS
  assert int(jnp.sum(state.busy)) == 4


def test_dispatch_limited_to_free_slots(key):
  data = small.population([5] * 8)
  settings = compression.CompressionSettings('top_k', fraction=0.25)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=4, buffer_size=1,
      dispatch_size=4, compression=settings)
  state, _ = buffered.init(
      small.server_state(key, num_clients=8, error_feedback=True), key)
  started = {int(client) for client in state.client_ids}
  for index in range(1, 4):
    state, metrics = buffered.step(state, jax.random.fold_in(key, index))
    # One slot frees per step, so one client starts.
    assert int(metrics['num_dispatched']) == 1
    assert int(metrics['num_dropped']) == 0
    started |= {int(client) for client in state.client_ids}
  residual = np.asarray(state.server.residual)
  # Only clients that started (and sent) carry a residual.
  for client in range(8):
    if client not in started:
      np.testing.assert_array_equal(
          residual[client], np.zeros(small.NUM_PARAMS))


def test_rejects_state_of_other_population(key):
  data = small.population([5] * 6)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=2, buffer_size=1)
  with pytest.raises(ValueError, match='for 6'):
    buffered.init(small.server_state(key, num_clients=4), key)


def test_numpy_integer_sizes_accepted(key):
  data = small.population([5] * 6)
  buffered = fedbuff.build_fedbuff(
      data, _local_update(), optax.sgd(1.0), concurrency=np.int64(3),
      buffer_size=np.int32(2))
  state, _ = buffered.init(small.server_state(key, num_clients=6), key)
  assert int(jnp.sum(state.busy)) == 3


@pytest.mark.parametrize('chunk_size', [0, 1.5, -1, True])
def test_build_rejects_invalid_chunk_size(chunk_size):
  # 0 gave a ZeroDivisionError at the first step, 1.5 and -1 JAX errors.
  with pytest.raises(ValueError, match='`chunk_size` must be an integer'):
    round_lib._cohort_mapper(chunk_size, None)  # pylint: disable=protected-access
