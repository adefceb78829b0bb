"""Availability, dropouts, stragglers, the virtual clock and byte counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.communication import compression
from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.models import cnn
from fedjax_med.simulation import local_leaves
from fedjax_med.simulation import participation as participation_lib
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling
from tests.simulation import small_population as small


def _all_sampler(num_clients):
  return sampling.uniform_sampler(num_clients, num_clients)


# --- availability -----------------------------------------------------------


def test_available_clients_probabilities(key):
  participation = participation_lib.Participation(
      availability=np.array([0.0, 1.0, 0.0, 1.0], np.float32))
  available = participation_lib.available_clients(
      participation, key, jnp.float32(0.0), 4)
  np.testing.assert_array_equal(available, [False, True, False, True])


def test_schedule_slot_follows_clock(key):
  # Client 0 is online only in slot 1, client 1 only in slot 2.
  schedule = np.zeros((2, 3), np.float32)
  schedule[0, 1] = 1.0
  schedule[1, 2] = 1.0
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=10.0, server_seconds=1.0)
  cases = {0.0: [False, False], 15.0: [True, False], 29.9: [False, True],
           35.0: [False, False], 45.0: [True, False]}
  for clock, expected in cases.items():
    available = participation_lib.available_clients(
        participation, key, jnp.float32(clock), 2)
    np.testing.assert_array_equal(available, expected, err_msg=str(clock))


def test_office_hours_shifts_by_offset():
  schedule = participation_lib.office_hours(
      2, utc_offsets=np.array([0, 3]), opening_hour=8, closing_hour=10,
      open_probability=0.75, closed_probability=0.0)
  assert schedule.shape == (2, 24)
  assert set(np.flatnonzero(schedule[0])) == {8, 9}
  # Three hours ahead: local 8:00 is 5:00 on the clock.
  assert set(np.flatnonzero(schedule[1])) == {5, 6}
  assert schedule[0, 8] == 0.75


def test_uniform_sampler_draws_only_available(key):
  available = jnp.array([True, False, True, False, True, False])
  sample = sampling.uniform_sampler(6, 2)
  for index in range(20):
    cohort = sample(jax.random.fold_in(key, index), available=available)
    assert bool(jnp.all(cohort.mask))
    assert set(np.asarray(cohort.client_ids)) <= {0, 2, 4}
    assert len(set(np.asarray(cohort.client_ids))) == 2


def test_uniform_sampler_masks_missing_slots(key):
  available = jnp.array([False, True, False, False])
  cohort = sampling.uniform_sampler(4, 3)(key, available=available)
  np.testing.assert_array_equal(cohort.mask, [True, False, False])
  assert int(cohort.client_ids[0]) == 1


def test_poisson_sampler_respects_available(key):
  available = jnp.array([True, False] * 50)
  sample = sampling.poisson_sampler(100, 1.0, capacity=100)
  cohort = sample(key, available=available)
  chosen = np.asarray(cohort.client_ids)[np.asarray(cohort.mask)]
  assert sorted(chosen) == list(range(0, 100, 2))


def test_round_never_samples_offline_clients(key):
  data = small.population([5] * 8)
  availability = np.array([1, 0] * 4, np.float32)
  participation = participation_lib.Participation(availability=availability)
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(8, 3),
      optax.sgd(1.0),
      participation=participation)
  state = small.server_state(key, num_clients=8)
  for index in range(4):
    state, metrics = round_fn(state, jax.random.fold_in(key, index))
    assert int(metrics['num_available']) == 4
  contributions = np.asarray(state.contributions)
  assert contributions[1::2].sum() == 0
  assert contributions.sum() == 12


def test_availability_needs_sampler_with_mask():
  data = small.population([5] * 4)
  participation = participation_lib.Participation(
      availability=np.ones(4, np.float32))

  def sampler(key):
    del key
    return sampling.Cohort(jnp.arange(4), jnp.ones(4, bool), jnp.int32(0))

  with pytest.raises(ValueError, match='available='):
    round_lib.build_round(data, small.local_update(), sampler, optax.sgd(1.0),
                          participation=participation)


# --- dropouts ---------------------------------------------------------------


def test_per_client_dropout(key):
  data = small.population([5] * 6)
  dropout = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
  participation = participation_lib.Participation(dropout=dropout)
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(6), optax.sgd(1.0),
      participation=participation)
  state = small.server_state(key, num_clients=6)
  state, metrics = round_fn(state, key)
  assert int(metrics['num_sampled']) == 6
  assert int(metrics['num_dropped']) == 3
  assert int(metrics['num_reported']) == 3
  np.testing.assert_array_equal(state.contributions, [0, 1, 0, 1, 0, 1])
  # Dropped clients downloaded the model and sent nothing.
  assert float(metrics['bytes_down']) == 6 * 4 * small.NUM_PARAMS
  assert float(metrics['bytes_up']) == 3 * 4 * small.NUM_PARAMS


def test_dropout_equals_round_without_dropped(key):
  data = small.population([4, 9, 6, 7])
  participation = participation_lib.Participation(
      dropout=np.array([0.0, 1.0, 0.0, 0.0], np.float32))
  with_dropout = round_lib.build_round(
      data, small.local_update(), _all_sampler(4), optax.sgd(1.0),
      participation=participation)
  emptied = federated.FederatedData(
      data.examples, jnp.asarray(data.num_examples).at[1].set(0))
  without = round_lib.build_round(
      emptied, small.local_update(), _all_sampler(4), optax.sgd(1.0),
      participation=participation_lib.Participation())
  state = small.server_state(key, num_clients=4)
  left, _ = with_dropout(state, key)
  right, _ = without(state, key)
  small.assert_leaves_close(left.params, right.params, rtol=1e-6, atol=1e-7)


# --- stragglers -------------------------------------------------------------


def _straggler_round(policy, fednova=False, deadline=3.0):
  # Client i takes 1 / speed[i] seconds per step, plus 0.25 s to download
  # and 0.25 s to upload.
  data = small.population([20, 20, 20, 20])
  speeds = np.array([4.0, 2.0, 1.0, 0.5], np.float32)
  link_speed = 4 * small.NUM_PARAMS / 0.25
  participation = participation_lib.Participation(
      steps_per_second=speeds,
      download_bytes_per_second=np.full(4, link_speed, np.float32),
      upload_bytes_per_second=np.full(4, link_speed, np.float32),
      deadline=deadline, straggler_policy=policy)
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(4), optax.sgd(1.0),
      participation=participation, fednova=fednova)
  return data, round_fn


def test_wait_policy_waits_for_slowest(key):
  _, round_fn = _straggler_round('wait')
  state, metrics = round_fn(small.server_state(key, num_clients=4), key)
  # Slowest: 0.25 + 6 / 0.5 + 0.25 = 12.5 s.
  np.testing.assert_allclose(metrics['round_seconds'], 12.5, rtol=1e-6)
  np.testing.assert_allclose(state.clock, 12.5, rtol=1e-6)
  # Finish times 2.0, 3.5, 6.5, 12.5 against a 3 s deadline.
  assert int(metrics['num_stragglers']) == 3
  assert int(metrics['num_contributing']) == 4


def test_drop_policy_discards_late_clients(key):
  _, round_fn = _straggler_round('drop')
  state, metrics = round_fn(small.server_state(key, num_clients=4), key)
  assert int(metrics['num_stragglers']) == 3
  assert int(metrics['num_reported']) == 1
  assert int(metrics['num_contributing']) == 1
  np.testing.assert_allclose(metrics['round_seconds'], 3.0, rtol=1e-6)
  np.testing.assert_array_equal(state.contributions, [1, 0, 0, 0])
  assert float(metrics['bytes_up']) == 4 * small.NUM_PARAMS


def test_drop_policy_with_link_speeds_only(key):
  # Uploads take 1, 2, 4 and 8 s and steps take no time.
  data = small.population([20, 20, 20, 20])
  upload = 4 * small.NUM_PARAMS / np.array([1.0, 2.0, 4.0, 8.0], np.float32)
  participation = participation_lib.Participation(
      upload_bytes_per_second=upload, deadline=3.0, straggler_policy='drop')
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(4), optax.sgd(1.0),
      participation=participation)
  state, metrics = round_fn(small.server_state(key, num_clients=4), key)
  assert int(metrics['num_stragglers']) == 2
  assert int(metrics['num_reported']) == 2
  np.testing.assert_array_equal(state.contributions, [1, 1, 0, 0])
  np.testing.assert_allclose(metrics['round_seconds'], 3.0, rtol=1e-6)


def test_partial_policy_uses_finished_steps(key):
  data, round_fn = _straggler_round('partial')
  state = small.server_state(key, num_clients=4)
  new_state, metrics = round_fn(state, key)
  # 2.5 s between download and upload: 10, 5, 2 and 1 steps fit.
  limits = [6, 5, 2, 1]
  assert int(metrics['num_stragglers']) == 3
  assert int(metrics['num_contributing']) == 4
  local_update = small.local_update()
  clients_key = jax.random.fold_in(key, round_lib._CLIENTS_TAG)
  deltas = []
  for client, limit in enumerate(limits):
    examples = jax.tree.map(lambda a, c=client: a[c], data.examples)
    result = local_update(
        state.params, examples, data.num_examples[client],
        jax.random.fold_in(clients_key, client), step_limit=limit)
    assert int(result.num_steps) == limit
    deltas.append(result.delta)
  expected = jax.tree.map(
      lambda p, *d: p + sum(d) / 4.0, state.params, *deltas)
  small.assert_leaves_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
  # Client 1 reports last: 0.25 + 5 * 0.5 + 0.25 s.
  np.testing.assert_allclose(metrics['round_seconds'], 3.0, rtol=1e-6)


def test_partial_with_fednova_rescales(key):
  data, round_fn = _straggler_round('partial', fednova=True)
  state = small.server_state(key, num_clients=4)
  new_state, _ = round_fn(state, key)
  limits = np.array([6, 5, 2, 1], np.float32)
  local_update = small.local_update()
  clients_key = jax.random.fold_in(key, round_lib._CLIENTS_TAG)
  deltas = []
  for client, limit in enumerate(limits):
    examples = jax.tree.map(lambda a, c=client: a[c], data.examples)
    deltas.append(local_update(
        state.params, examples, data.num_examples[client],
        jax.random.fold_in(clients_key, client),
        step_limit=int(limit)).delta)
  # Equal example counts: tau_eff is the mean step count.
  effective = limits.mean()
  expected = jax.tree.map(
      lambda p, *d: p + sum(
          leaf * effective / tau for leaf, tau in zip(d, limits)) / 4.0,
      state.params, *deltas)
  small.assert_leaves_close(new_state.params, expected, rtol=1e-5, atol=1e-6)


def test_partial_drops_client_without_time(key):
  # A 0.6 s deadline leaves 0.1 s: client 0 fits no step at 4 steps/s.
  _, round_fn = _straggler_round('partial', deadline=0.6)
  state, metrics = round_fn(small.server_state(key, num_clients=4), key)
  assert int(metrics['num_reported']) == 0
  assert bool(metrics['skipped'])
  np.testing.assert_array_equal(state.contributions, [0, 0, 0, 0])


def test_step_limit_above_planned_changes_nothing(key):
  data = small.population([7])
  local_update = small.local_update()
  examples = jax.tree.map(lambda a: a[0], data.examples)
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  free = local_update(params, examples, data.num_examples[0], key)
  limited = local_update(params, examples, data.num_examples[0], key,
                         step_limit=100)
  small.assert_leaves_close(free.delta, limited.delta, rtol=0, atol=0)
  assert int(limited.planned_steps) == small.NUM_STEPS


def test_same_key_same_round(key):
  data = small.population([20, 20, 20, 20])
  participation = participation_lib.Participation(
      steps_per_second=np.ones(4, np.float32), speed_jitter=0.5,
      dropout=0.3, deadline=4.0, straggler_policy='partial')
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(4), optax.sgd(1.0),
      participation=participation)
  state = small.server_state(key, num_clients=4)
  first, first_metrics = round_fn(state, key)
  second, second_metrics = round_fn(state, key)
  small.assert_leaves_close(first.params, second.params, rtol=0, atol=0)
  assert float(first_metrics['clock']) == float(second_metrics['clock'])


# --- compression in the round -------------------------------------------------


def test_top_k_everything_equals_plain_round(key):
  data = small.population([4, 9, 6])
  settings = compression.CompressionSettings('top_k', fraction=1.0)
  compressed = round_lib.build_round(
      data, small.local_update(), _all_sampler(3), optax.sgd(1.0),
      compression=settings)
  plain = round_lib.build_round(
      data, small.local_update(), _all_sampler(3), optax.sgd(1.0))
  state = small.server_state(key, num_clients=3, error_feedback=True)
  left, metrics = compressed(state, key)
  right, _ = plain(state._replace(clock=None, contributions=None,
                                  residual=None), key)
  small.assert_leaves_close(left.params, right.params, rtol=0, atol=0)
  np.testing.assert_array_equal(left.residual, np.zeros((3, small.NUM_PARAMS)))
  assert float(metrics['bytes_up']) == 3 * compression.encoded_bytes(
      settings, small.NUM_PARAMS)


def test_error_feedback_stores_unsent_part(key):
  data = small.population([4, 9, 6])
  settings = compression.CompressionSettings('top_k', fraction=0.25)
  participation = participation_lib.Participation(
      dropout=np.array([0.0, 0.0, 1.0], np.float32))
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(3), optax.sgd(1.0),
      compression=settings, participation=participation)
  state = small.server_state(key, num_clients=3, error_feedback=True)
  new_state, _ = round_fn(state, key)
  residual = np.asarray(new_state.residual)
  # One of four coordinates sent: three stay behind for clients 0 and 1.
  assert np.count_nonzero(residual[0]) == 3
  assert np.count_nonzero(residual[1]) == 3
  # Client 2 dropped out and keeps its old (zero) residual.
  np.testing.assert_array_equal(residual[2], np.zeros(small.NUM_PARAMS))


def test_compression_round_message_bytes(key):
  data = small.population([4, 9])
  settings = compression.CompressionSettings('qsgd', levels=4)
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(2), optax.sgd(1.0),
      compression=settings)
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  sizes = round_fn.message_bytes(params)
  assert sizes == {'down': 4 * small.NUM_PARAMS,
                   'up': compression.encoded_bytes(settings, small.NUM_PARAMS)}
  _, metrics = round_fn(small.server_state(key, num_clients=2), key)
  assert float(metrics['bytes_up']) == 2 * sizes['up']


def test_compression_rejects_local_noise():
  data = small.population([4, 9])
  privacy = round_lib.PrivacySettings(
      clip_norm=1.0, noise_multiplier=1.0, noise_kind='local')
  with pytest.raises(ValueError, match='Compression'):
    round_lib.build_round(
        data, small.local_update(), _all_sampler(2), optax.sgd(1.0),
        privacy=privacy,
        compression=compression.CompressionSettings('qsgd'))


def test_round_needs_clock_state(key):
  data = small.population([4, 9])
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(2), optax.sgd(1.0),
      participation=participation_lib.Participation(dropout=0.5))
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  state = round_lib.init_server_state(params, optax.sgd(1.0))
  with pytest.raises(ValueError, match='num_clients'):
    round_fn(state, key)


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize('fields, message', [
    ({'availability': np.ones(3)}, 'availability'),
    ({'availability': np.full(4, 1.5)}, 'availability'),
    ({'dropout': -0.1}, 'dropout'),
    ({'dropout': np.ones(5)}, 'dropout'),
    ({'steps_per_second': np.zeros(4)}, 'steps_per_second'),
    ({'upload_bytes_per_second': np.full(4, np.nan)},
     'upload_bytes_per_second'),
    ({'speed_jitter': -1.0}, 'speed_jitter'),
    ({'straggler_policy': 'skip'}, 'straggler_policy'),
    ({'straggler_policy': 'drop', 'steps_per_second': np.ones(4)},
     'deadline'),
    ({'straggler_policy': 'drop', 'deadline': 5.0}, 'steps_per_second'),
    ({'straggler_policy': 'partial', 'deadline': 5.0,
      'upload_bytes_per_second': np.ones(4)}, 'steps_per_second'),
    ({'deadline': -1.0}, 'deadline'),
    ({'availability': np.ones((4, 24))}, 'clock'),
])
def test_validate_rejects(fields, message):
  participation = participation_lib.Participation(**fields)
  with pytest.raises(InputError, match=message):
    participation_lib.validate(participation, 4)


def test_draws_follow_client_not_slot(key):
  participation = participation_lib.Participation(
      dropout=0.5, steps_per_second=np.ones(10, np.float32),
      speed_jitter=0.5)
  forward = jnp.array([3, 5, 7])
  backward = jnp.array([7, 5, 3])
  np.testing.assert_array_equal(
      participation_lib.stays(participation, key, forward),
      participation_lib.stays(participation, key, backward)[::-1])
  times = [participation_lib.timing(
      participation, key, ids, model_bytes=4, upload_bytes=4).step
           for ids in (forward, backward)]
  np.testing.assert_array_equal(times[0], times[1][::-1])
  assert len(set(np.asarray(times[0]).tolist())) == 3


def test_partial_limit_exact_for_whole_steps(key):
  participation = participation_lib.Participation(
      steps_per_second=np.array([7.0, 3.0], np.float32), deadline=1.0,
      straggler_policy='partial')
  times = participation_lib.timing(
      participation, key, jnp.array([0, 1]), model_bytes=4, upload_bytes=4)
  np.testing.assert_array_equal(times.step_limit, [7, 3])


def test_sync_clock_skips_offline_slot(key):
  # Slot 0 is open, but at 1e-7 no client comes online in practice, so the
  # first round finds no client and jumps to slot 1.
  data = small.population([5] * 4)
  schedule = np.tile(np.array([[1e-7, 1.0]], np.float32), (4, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0,
      steps_per_second=np.full(4, 10.0, np.float32))
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(4, 2),
      optax.sgd(1.0),
      participation=participation)
  state, metrics = round_fn(small.server_state(key, num_clients=4), key)
  assert int(metrics['num_sampled']) == 0
  np.testing.assert_allclose(metrics['clock'], 100.0)
  state, metrics = round_fn(state, jax.random.fold_in(key, 1))
  assert int(metrics['num_sampled']) == 2
  # 0.6 s of training after the jump to 100 s.
  np.testing.assert_allclose(metrics['clock'], 100.6, rtol=1e-6)


def test_round_starts_after_closed_slots(key):
  # Slots 1 and 2 have every client at probability 0. Rounds due there
  # used to run with no client online, and under central noise released
  # noise alone; they now start in slot 3.
  data = small.population([5] * 4)
  schedule = np.tile(np.array([[1.0, 0.0, 0.0, 1.0]], np.float32), (4, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0, server_seconds=100.0)
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(4, 2),
      optax.sgd(1.0), participation=participation)
  state = small.server_state(key, num_clients=4)
  clocks, available, seconds = [], [], []
  for index in range(3):
    state, metrics = round_fn(state, jax.random.fold_in(key, index))
    clocks.append(float(metrics['clock']))
    available.append(int(metrics['num_available']))
    seconds.append(float(metrics['round_seconds']))
  # Slot 0 runs to 100 s. The next round starts at 300 s (slot 3) and
  # ends at 400 s, in the next day's slot 0, which is open.
  assert available == [4, 4, 4]
  np.testing.assert_allclose(clocks, [100.0, 400.0, 500.0])
  np.testing.assert_allclose(seconds, [100.0, 100.0, 100.0])


@pytest.mark.parametrize('clock, expected', [
    (0.0, 300.0), (150.0, 300.0), (299.0, 300.0), (300.0, 300.0),
    (350.0, 350.0), (420.0, 420.0), (1210.0, 1300.0), (2350.0, 2350.0),
])
def test_open_slot_start(clock, expected):
  # Slots 0 to 2 are closed, slot 3 and 4 open, with a period of 5 slots.
  schedule = np.array([[0.0, 0.0, 0.0, 0.5, 0.0],
                       [0.0, 0.0, 0.0, 0.0, 0.2]], np.float32)
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0, server_seconds=1.0)
  start = participation_lib.open_slot_start(participation, jnp.float32(clock))
  np.testing.assert_allclose(start, expected)


def test_schedule_never_open_rejected():
  participation = participation_lib.Participation(
      availability=np.zeros((4, 24), np.float32), server_seconds=1.0)
  with pytest.raises(InputError, match='no client is ever online'):
    participation_lib.validate(participation, 4)


def test_empty_draw_with_clients_online_takes_server_seconds(key):
  # Everyone is online in every slot, and Poisson sampling at rate 0.02
  # often draws no client. Such a round lasts server_seconds, not until the
  # next slot: the jump is for slots with no client online.
  data = small.population([5] * 10)
  participation = participation_lib.Participation(
      availability=np.ones((10, 24), np.float32), server_seconds=1.0)
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.poisson_sampler(10, 0.02),
      optax.sgd(1.0), participation=participation)
  state = small.server_state(key, num_clients=10)
  empty = 0
  for index in range(6):
    state, metrics = round_fn(state, jax.random.fold_in(key, index))
    assert int(metrics['num_available']) == 10
    np.testing.assert_allclose(metrics['round_seconds'], 1.0)
    empty += int(metrics['num_sampled']) == 0
  assert empty >= 3
  np.testing.assert_allclose(state.clock, 6.0)


def test_offline_jump_lands_on_slot_start(key):
  # server_seconds is a whole slot. A jump used to add it on top of the
  # slot start, skipping the first online slot after a gap.
  data = small.population([5] * 4)
  schedule = np.tile(np.array([[1.0, 1e-7, 1.0, 1.0]], np.float32), (4, 1))
  participation = participation_lib.Participation(
      availability=schedule, seconds_per_slot=100.0, server_seconds=100.0)
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(4, 2),
      optax.sgd(1.0), participation=participation)
  state = small.server_state(key, num_clients=4)
  clocks, available = [], []
  for index in range(4):
    state, metrics = round_fn(state, jax.random.fold_in(key, index))
    clocks.append(float(metrics['clock']))
    available.append(int(metrics['num_available']))
  # Slot 0 runs (to 100 s), slot 1 has no client online (jump to 200 s), slots 2
  # and 3 run.
  assert available == [4, 0, 4, 4]
  np.testing.assert_allclose(clocks, [100.0, 200.0, 300.0, 400.0])


def test_dropouts_noticed_after_their_download(key):
  # Every client drops out; each download takes 1 s. The server notices
  # the dropouts when the downloads end, so the round lasts 1 s (it used
  # to take no time at all, which made dropouts shorten rounds).
  data = small.population([5] * 4)
  link_speed = 4 * small.NUM_PARAMS / 1.0
  participation = participation_lib.Participation(
      dropout=np.ones(4, np.float32),
      download_bytes_per_second=np.full(4, link_speed, np.float32),
      deadline=5.0, straggler_policy='drop')
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(4), optax.sgd(1.0),
      participation=participation)
  state, metrics = round_fn(small.server_state(key, num_clients=4), key)
  assert int(metrics['num_reported']) == 0
  np.testing.assert_allclose(metrics['round_seconds'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(state.clock, 1.0, rtol=1e-6)


@pytest.mark.parametrize('policy', ['drop', 'partial'])
def test_deadline_caps_late_noticed_dropout(key, policy):
  # Client 1 drops out and its download takes 100 s. Clients 0 and 2
  # report after 0.5 s, so no update is late. The round used to wait
  # for the dropout until 100 s, past the 5 s deadline.
  data = small.population([5] * 3)
  download = 4 * small.NUM_PARAMS / np.array([0.5, 100.0, 0.5], np.float32)
  participation = participation_lib.Participation(
      dropout=np.array([0.0, 1.0, 0.0], np.float32),
      steps_per_second=np.full(3, 1e6, np.float32),
      download_bytes_per_second=download, deadline=5.0,
      straggler_policy=policy, server_seconds=2.0)
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(3), optax.sgd(1.0),
      participation=participation)

  state, metrics = round_fn(small.server_state(key, num_clients=3), key)

  assert int(metrics['num_reported']) == 2
  assert int(metrics['num_stragglers']) == 0
  # The 5 s deadline plus 2 s on the server.
  np.testing.assert_allclose(metrics['round_seconds'], 7.0, rtol=1e-6)
  np.testing.assert_allclose(state.clock, 7.0, rtol=1e-6)


def test_round_seconds_wait_ignores_deadline():
  participation = participation_lib.Participation(
      steps_per_second=np.ones(2, np.float32), deadline=5.0)
  seconds = participation_lib.round_seconds(
      participation, finish=jnp.array([1.0, 0.0]),
      reported=jnp.array([True, False]), late=jnp.zeros(2, bool),
      noticed=jnp.array([0.0, 100.0]))
  np.testing.assert_allclose(seconds, 100.0)


def test_scaffold_counts_control_variates(key):
  # SCAFFOLD sends c down and c_i+ - c_i up, each as large as the model.
  # Each link moves 4 * NUM_PARAMS bytes a second, and 6 steps take 6 s.
  data = small.population([20] * 3)
  model_bytes = 4 * small.NUM_PARAMS
  participation = participation_lib.Participation(
      steps_per_second=np.ones(3, np.float32),
      download_bytes_per_second=np.full(3, model_bytes, np.float32),
      upload_bytes_per_second=np.full(3, model_bytes, np.float32))
  round_fn = round_lib.build_round(
      data, small.local_update(learning_rate=0.1), _all_sampler(3),
      optax.sgd(1.0), participation=participation,
      scaffold_learning_rate=0.1)
  state = small.server_state(key, num_clients=3, scaffold_clients=3)

  sizes = round_fn.message_bytes(state.params)
  _, metrics = round_fn(state, key)

  assert sizes == {'down': 2 * model_bytes, 'up': 2 * model_bytes}
  # 2 s to download, 6 s of steps and 2 s to upload.
  np.testing.assert_allclose(metrics['round_seconds'], 10.0, rtol=1e-6)
  assert float(metrics['bytes_down']) == 3 * 2 * model_bytes
  assert float(metrics['bytes_up']) == 3 * 2 * model_bytes


def test_fedbn_leaves_out_local_leaves():
  # The dense layer has 3 * 2 + 2 shared values. The BatchNorm layer's
  # 2 + 2 weights and 2 + 2 statistics stay on the clients.
  params = {
      'params': {
          'Dense_0': {'kernel': jnp.zeros((3, 2)), 'bias': jnp.zeros(2)},
          'BatchNorm_0': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)},
      },
      'batch_stats': {
          'BatchNorm_0': {'mean': jnp.zeros(2), 'var': jnp.ones(2)},
      },
  }
  mask = cnn.norm_mask(params)

  sizes = participation_lib.message_bytes(params, None, local_mask=mask)

  assert sizes == {'down': 4 * 8, 'up': 4 * 8}


def test_fedbn_round_times_shared_leaves(key):
  # The BatchNorm leaves of a ResNet stay local and only the shared
  # leaves travel, so each link takes exactly 1 s.
  model = cnn.from_flax_stateful(
      cnn.ResNet(3, widths=(4, 8)), 3, (8, 8, 1))
  rng = np.random.default_rng(0)
  data = jax.device_put(federated.stack_clients([
      {'x': rng.random((4, 8, 8, 1)).astype(np.float32),
       'y': rng.integers(0, 3, 4).astype(np.int32)} for _ in range(2)]))
  params = model.init(key, jnp.zeros((1, 8, 8, 1)))
  mask = cnn.norm_mask(params)
  total = sum(leaf.size for leaf in jax.tree.leaves(params))
  local = sum(leaf.size for leaf in jax.tree.leaves(
      local_leaves.split(params, mask)))
  shared_bytes = 4 * (total - local)
  participation = participation_lib.Participation(
      download_bytes_per_second=np.full(2, shared_bytes, np.float32),
      upload_bytes_per_second=np.full(2, shared_bytes, np.float32))
  local_update = local_training.build_local_update(
      model, optax.sgd(0.05), num_steps=1, batch_size=4)
  round_fn = round_lib.build_round(
      data, local_update, _all_sampler(2), optax.sgd(1.0),
      local_mask=mask, participation=participation)
  state = round_lib.init_server_state(
      params, optax.sgd(1.0), local_mask=mask, local_clients=2,
      num_clients=2)

  sizes = round_fn.message_bytes(params)
  _, metrics = round_fn(state, key)

  assert local > 0
  assert sizes == {'down': shared_bytes, 'up': shared_bytes}
  np.testing.assert_allclose(metrics['round_seconds'], 2.0, rtol=1e-6)
  assert float(metrics['bytes_up']) == 2 * shared_bytes


def test_round_rejects_state_of_other_population(key):
  data = small.population([5] * 6)
  round_fn = round_lib.build_round(
      data, small.local_update(), _all_sampler(6), optax.sgd(1.0),
      participation=participation_lib.Participation())
  with pytest.raises(ValueError, match='built for 6'):
    round_fn(small.server_state(key, num_clients=4), key)
