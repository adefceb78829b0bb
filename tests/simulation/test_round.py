"""One federated round: FedAvg maths, skipped rounds, NaN updates, keys."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.privacy import mechanisms
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling
from tests.simulation import small_population as small


def _fixed_sampler(ids):
  ids = jnp.asarray(ids, jnp.int32)

  def sample(key):
    del key
    return sampling.Cohort(ids, jnp.ones(ids.shape, bool), jnp.int32(0))

  return sample


def _leaves_equal(a, b):
  for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(left, right)


def test_fedavg_equals_weighted_mean(key):
  data = small.population([4, 12, 7])
  local_update = small.local_update()
  round_fn = round_lib.build_round(
      data, local_update, _fixed_sampler([0, 1, 2]), optax.sgd(1.0)
  )
  state = small.server_state(key, optax.sgd(1.0))
  round_key = jax.random.fold_in(key, 5)

  new_state, metrics = round_fn(state, round_key)

  clients_key = jax.random.fold_in(round_key, round_lib._CLIENTS_TAG)
  deltas = []
  for client_id in range(3):
    examples = jax.tree.map(lambda a: a[client_id], data.examples)
    result = local_update(
        state.params, examples, data.num_examples[client_id],
        jax.random.fold_in(clients_key, client_id),
    )
    deltas.append(result.delta)
  weights = np.array([4.0, 12.0, 7.0]) / 23.0
  expected = jax.tree.map(
      lambda p, *d: p + sum(w * leaf for w, leaf in zip(weights, d)),
      state.params, *deltas,
  )
  for got, want in zip(
      jax.tree.leaves(new_state.params), jax.tree.leaves(expected)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert int(metrics['num_examples']) == 23
  assert not bool(metrics['skipped'])


def test_same_seed_same_result(key):
  data = small.population([5, 8, 3, 9])
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(4, 2), optax.sgd(1.0)
  )
  state = small.server_state(key, optax.sgd(1.0))

  first, _ = round_fn(state, jax.random.fold_in(key, 1))
  second, _ = round_fn(state, jax.random.fold_in(key, 1))
  other, _ = round_fn(state, jax.random.fold_in(key, 2))

  _leaves_equal(first.params, second.params)
  assert not np.array_equal(
      jax.tree.leaves(first.params)[0], jax.tree.leaves(other.params)[0]
  )


def test_cohort_order_does_not_matter(key):
  data = small.population([5, 8, 3])
  state = small.server_state(key, optax.sgd(1.0))
  results = []
  for order in ([0, 1, 2], [2, 0, 1]):
    round_fn = round_lib.build_round(
        data, small.local_update(), _fixed_sampler(order), optax.sgd(1.0),
        aggregator='mean',
    )
    results.append(round_fn(state, jax.random.fold_in(key, 3))[0].params)

  for left, right in zip(
      jax.tree.leaves(results[0]), jax.tree.leaves(results[1])
  ):
    np.testing.assert_allclose(left, right, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('aggregator', ['fedavg', 'mean', 'median'])
def test_all_dropped_round_skipped(key, aggregator):
  data = small.population([5, 8, 3])
  server_optimizer = optax.adam(0.1)
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(3, 3),
      server_optimizer,
      aggregator=aggregator, dropout_rate=1.0,
  )
  state = small.server_state(key, server_optimizer)

  new_state, metrics = round_fn(state, key)

  assert bool(metrics['skipped'])
  _leaves_equal(new_state.params, state.params)
  _leaves_equal(new_state.opt_state, state.opt_state)
  assert int(new_state.round) == 1


def test_empty_round_under_central_noise_applies_the_noise(key):
  # Unchanged params would show that the round was empty, which the
  # accountant does not model: the release must be the noise alone,
  # std z * C / denominator = 2 * 0.5 / 4 = 0.25 per entry.
  data = small.population([5, 8, 3])
  privacy = mechanisms.PrivacySettings(
      clip_norm=0.5, noise_multiplier=2.0, noise_kind='central',
      denominator=4.0)
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(3, 3),
      optax.sgd(1.0), aggregator='mean', dropout_rate=1.0, privacy=privacy)
  state = small.server_state(key, optax.sgd(1.0))

  moves = []
  for index in range(100):
    new_state, metrics = round_fn(state, jax.random.fold_in(key, index))
    assert int(metrics['num_contributing']) == 0
    assert not bool(metrics['skipped'])
    assert np.isnan(float(metrics['train_loss']))
    moves.append(np.concatenate([
        np.ravel(new - old) for new, old in zip(
            jax.tree.leaves(new_state.params), jax.tree.leaves(state.params))
    ]))
  moves = np.concatenate(moves)
  assert moves.size == 400
  assert np.std(moves) == pytest.approx(0.25, rel=0.15)


def test_zero_example_cohort_skipped(key):
  data = small.population([0, 6, 0])
  round_fn = round_lib.build_round(
      data, small.local_update(), _fixed_sampler([0, 2]), optax.sgd(1.0)
  )
  state = small.server_state(key, optax.sgd(1.0))

  new_state, metrics = round_fn(state, key)

  assert bool(metrics['skipped'])
  assert int(metrics['num_contributing']) == 0
  _leaves_equal(new_state.params, state.params)
  for leaf in jax.tree.leaves(new_state.params):
    assert np.all(np.isfinite(leaf))


def test_nan_update_excluded_and_counted(key):
  data = small.population([5, 8, 6])
  state = small.server_state(key, optax.sgd(1.0))

  with_nan = round_lib.build_round(
      data, small.diverging_update(8), _fixed_sampler([0, 1, 2]),
      optax.sgd(1.0)
  )
  without = round_lib.build_round(
      data, small.local_update(), _fixed_sampler([0, 2]), optax.sgd(1.0)
  )
  nan_state, metrics = with_nan(state, key)
  clean_state, _ = without(state, key)

  assert int(metrics['num_nonfinite']) == 1
  assert int(metrics['num_contributing']) == 2
  for got, want in zip(
      jax.tree.leaves(nan_state.params), jax.tree.leaves(clean_state.params)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_central_noise_std(key):
  # A learning rate of 0 makes every delta 0, so the aggregate is pure noise
  # with std noise_multiplier * clip_norm / num_clients = 1.0 * 2.0 / 4.
  data = small.population([5, 5, 5, 5])
  round_fn = round_lib.build_round(
      data, small.local_update(learning_rate=0.0),
      sampling.uniform_sampler(4, 4),
      optax.sgd(1.0), aggregator='mean',
      privacy=round_lib.PrivacySettings(2.0, 1.0, 'central', denominator=4.0),
  )
  state = small.server_state(key, optax.sgd(1.0))
  start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])

  samples = []
  for round_index in range(60):
    new_state, _ = round_fn(state, jax.random.fold_in(key, round_index))
    flat = np.concatenate(
        [np.ravel(x) for x in jax.tree.leaves(new_state.params)]
    )
    samples.append(flat - start)

  assert np.std(samples) == pytest.approx(0.5, rel=0.1)


def test_local_noise_differs_per_client(key):
  updates = {'w': jnp.zeros((2, 500))}
  client_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(2))
  privacy = round_lib.PrivacySettings(1.0, 1.0, 'local')

  noisy = mechanisms.add_client_noise(
      updates, client_keys, mechanisms.client_noise_stddev(privacy)
  )

  correlation = np.corrcoef(noisy['w'][0], noisy['w'][1])[0, 1]
  assert abs(correlation) < 0.2
  assert float(jnp.std(noisy['w'])) == pytest.approx(1.0, rel=0.1)


def test_central_noise_needs_weight_cap():
  with pytest.raises(ValueError, match='weight_cap'):
    round_lib.validate_privacy(
        round_lib.PrivacySettings(1.0, 1.0, 'central', denominator=2.0),
        'fedavg',
    )


def test_unknown_aggregator_rejected(key):
  with pytest.raises(ValueError, match='teleport'):
    round_lib.build_round(
        small.population([2]), small.local_update(), _fixed_sampler([0]),
        optax.sgd(1.0), aggregator='teleport',
    )


def test_clipping_counted(key):
  data = small.population([8, 8])
  round_fn = round_lib.build_round(
      data, small.local_update(learning_rate=1.0), _fixed_sampler([0, 1]),
      optax.sgd(1.0),
      privacy=round_lib.PrivacySettings(clip_norm=1e-4),
  )
  state = small.server_state(key, optax.sgd(1.0))

  new_state, metrics = round_fn(state, key)

  moved = np.concatenate([
      np.ravel(a - b) for a, b in zip(
          jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)
      )
  ])
  assert int(metrics['num_clipped']) == 2
  assert np.linalg.norm(moved) <= 1e-4 * (1 + 1e-5)


def test_train_loss_ignores_nan_client(key):
  data = small.population([5, 8, 6])
  round_fn = round_lib.build_round(
      data, small.diverging_update(8), _fixed_sampler([0, 1, 2]),
      optax.sgd(1.0)
  )

  _, metrics = round_fn(small.server_state(key, optax.sgd(1.0)), key)

  assert np.isfinite(float(metrics['train_loss']))


def test_dropped_clients_counted(key):
  data = small.population([5, 8, 6])
  round_fn = round_lib.build_round(
      data, small.local_update(), sampling.uniform_sampler(3, 3),
      optax.sgd(1.0),
      dropout_rate=1.0,
  )

  _, metrics = round_fn(small.server_state(key, optax.sgd(1.0)), key)

  assert int(metrics['num_sampled']) == 3
  assert int(metrics['num_dropped']) == 3
  assert int(metrics['round']) == 1


def test_noise_multiplier_without_noise_rejected():
  with pytest.raises(ValueError, match='has no effect'):
    round_lib.validate_privacy(
        round_lib.PrivacySettings(1.0, 2.0, 'none'), 'fedavg'
    )


def test_sign_flip_attack_moves_mean_not_median(key):
  from fedjax_med.attacks import model_poisoning

  data = small.population([6, 6, 6, 6, 6])
  malicious = jnp.array([False, False, False, False, True])

  def attack(updates, bad, honest, attack_key):
    del honest, attack_key
    return model_poisoning.scaling(updates, bad, factor=-100.0)

  results = {}
  for aggregator in ('mean', 'median'):
    clean_fn = round_lib.build_round(
        data, small.local_update(), _fixed_sampler([0, 1, 2, 3, 4]),
        optax.sgd(1.0), aggregator=aggregator)
    attacked_fn = round_lib.build_round(
        data, small.local_update(), _fixed_sampler([0, 1, 2, 3, 4]),
        optax.sgd(1.0), aggregator=aggregator, attack=attack,
        malicious=malicious)
    state = small.server_state(key, optax.sgd(1.0))
    clean = jax.tree.leaves(clean_fn(state, key)[0].params)
    attacked = jax.tree.leaves(attacked_fn(state, key)[0].params)
    results[aggregator] = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(clean, attacked))

  assert results['mean'] > 10 * results['median']


@pytest.mark.parametrize('sample, message', [
    (lambda key: (jnp.arange(2), jnp.ones(2, bool), 0), 'returned a tuple'),
    (lambda key: sampling.Cohort(jnp.arange(2.0), jnp.ones(2, bool),
                                 jnp.int32(0)), 'not a 1-D integer array'),
    (lambda key: sampling.Cohort(jnp.arange(2), jnp.ones(3, bool),
                                 jnp.int32(0)), 'not bool shaped'),
])
def test_custom_sampler_contract_checked(sample, message):
  # A broken custom sampler failed inside the round with JAX errors that
  # did not name it.
  with pytest.raises(ValueError, match=message):
    round_lib.build_round(small.population([5, 7, 6]), small.local_update(),
                          sample, optax.sgd(1.0))


def test_unknown_aggregator_option_rejected():
  with pytest.raises(ValueError,
                     match=r"unknown settings \['num_byzantines'\]"):
    round_lib.build_round(
        small.population([5, 7, 6]), small.local_update(),
        _fixed_sampler([0, 1]), optax.sgd(1.0), aggregator='krum',
        aggregator_options={'num_byzantines': 1})


def test_distributed_noise_larger_than_cohort_rejected():
  # Each client added noise for 10 reports in a cohort of 2, so every round
  # carried sqrt(2 / 10) of the planned noise.
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_multiplier=1.0, noise_kind='distributed',
      denominator=2.0, min_reporting_clients=10)
  with pytest.raises(ValueError, match='larger than the cohort of 2'):
    round_lib.build_round(
        small.population([5, 7, 6]), small.local_update(),
        _fixed_sampler([0, 1]), optax.sgd(1.0), aggregator='mean',
        privacy=privacy)


def test_sampler_of_other_population_rejected():
  with pytest.raises(ValueError, match='num_clients=3'):
    round_lib.build_round(
        small.population([5, 7, 6]), small.local_update(),
        sampling.uniform_sampler(10, 3), optax.sgd(1.0))


def test_custom_sampler_ids_out_of_range_left_out(key):
  data = small.population([5, 7, 6])
  round_fn = round_lib.build_round(
      data, small.local_update(), _fixed_sampler([0, 7]), optax.sgd(1.0))

  _, metrics = round_fn(small.server_state(key), key)

  assert int(metrics['num_sampled']) == 1
  assert int(metrics['num_examples']) == 5


@pytest.mark.parametrize('counts', [[5, 7, 60], [5, -7, 6]])
def test_num_examples_outside_padding_rejected(counts):
  data = small.population([5, 7, 6])
  bad = federated.FederatedData(data.examples, np.array(counts, np.int32))
  with pytest.raises(ValueError, match='num_examples'):
    round_lib.build_round(bad, small.local_update(), _fixed_sampler([0]),
                          optax.sgd(1.0))


@pytest.mark.parametrize('label', [3, -1])
def test_label_outside_classes_rejected(label):
  data = small.population([5, 7, 6])
  labels = np.array(data.examples['y'])
  labels[1, 2] = label
  bad = federated.FederatedData(
      {'x': data.examples['x'], 'y': labels}, data.num_examples)
  with pytest.raises(ValueError, match=f'Client 1 has label {label} in row 2'):
    round_lib.build_round(bad, small.local_update(), _fixed_sampler([0]),
                          optax.sgd(1.0))


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_nonfinite_feature_rejected(value):
  # One NaN cell per client made every update non-finite, so every round
  # was skipped (num_nonfinite 3 of 3) without an error.
  data = small.population([5, 7, 6])
  x = np.array(data.examples['x'])
  x[1, 4, 2] = value
  bad = data._replace(examples={**data.examples, 'x': x})

  with pytest.raises(ValueError, match=(
      f"Client 1 has {value} in row 4 of `train_data.examples\\['x'\\]`, "
      'which is not a finite float32 number')):
    round_lib.build_round(bad, small.local_update(), _fixed_sampler([0]),
                          optax.sgd(1.0))


def test_nonfinite_padding_ignored(key):
  data = small.population([5, 7, 6])
  x = np.array(data.examples['x'])
  x[0, 6] = np.nan  # Client 0 has 5 rows, so row 6 is padding.
  padded = data._replace(examples={**data.examples, 'x': x})
  round_fn = round_lib.build_round(
      padded, small.local_update(), _fixed_sampler([0, 1, 2]), optax.sgd(1.0))

  _, metrics = round_fn(small.server_state(key), key)

  assert int(metrics['num_nonfinite']) == 0


def test_swapped_nonfinite_feature_rejected(key):
  data = small.population([5, 7, 6])
  round_fn = round_lib.build_round(
      data, small.local_update(), _fixed_sampler([0, 1, 2]), optax.sgd(1.0))
  x = np.array(data.examples['x'])
  x[2, 0, 0] = np.nan

  with pytest.raises(ValueError, match='Client 2 has nan in row 0'):
    round_fn(small.server_state(key), key, train_data=data._replace(
        examples={**data.examples, 'x': x}))


def test_field_of_other_padded_length_rejected():
  # The round failed in `example_mask` with a JAX broadcasting TypeError.
  bad = federated.FederatedData(
      {'x': np.zeros((2, 5, 4), np.float32), 'y': np.zeros((2, 3), np.int32)},
      np.array([3, 2], np.int32))

  with pytest.raises(ValueError, match=r"examples\['y'\]` is padded to 3"):
    round_lib.build_round(bad, small.local_update(), _fixed_sampler([0]),
                          optax.sgd(1.0))


def test_label_in_padding_ignored():
  data = small.population([5, 7, 6])
  labels = np.array(data.examples['y'])
  labels[0, 6] = 9  # client 0 has 5 rows; row 6 is padding
  padded = federated.FederatedData(
      {'x': data.examples['x'], 'y': labels}, data.num_examples)
  round_lib.build_round(padded, small.local_update(), _fixed_sampler([0]),
                        optax.sgd(1.0))


def test_missing_labels_rejected():
  data = small.population([5, 7, 6])
  bad = federated.FederatedData({'x': data.examples['x']}, data.num_examples)
  with pytest.raises(ValueError, match="lacks \\['y'\\]"):
    round_lib.build_round(bad, small.local_update(), _fixed_sampler([0]),
                          optax.sgd(1.0))


def _swap_labels(data, labels):
  return data._replace(examples={**data.examples, 'y': labels})


@pytest.mark.parametrize('swap, message', [
    # Labels of 7 for a binary model gave a negative train_loss.
    (lambda data: _swap_labels(data, jnp.full_like(data.examples['y'], 7)),
     'Client 0 has label 7 in row 0'),
    (lambda data: _swap_labels(data, data.examples['y'].astype(jnp.float32)),
     'must be integer class labels'),
    # Client 0's count of 9, above the padded length of 8, went into the
    # num_examples metric.
    (lambda data: data._replace(num_examples=jnp.array([9, 8, 2], jnp.int32)),
     r'`train_data.num_examples` must be integers in \[0, padded length 8\]'),
], ids=['label', 'float_label', 'count'])
def test_swapped_population_checked(key, swap, message):
  data = small.population([5, 8, 6])
  round_fn = round_lib.build_round(
      data, small.local_update(), _fixed_sampler([0, 1, 2]), optax.sgd(1.0))

  with pytest.raises(ValueError, match=message):
    round_fn(small.server_state(key), key, train_data=swap(data))


def test_swapped_numpy_population_checked_each_call(key):
  data = small.population([5, 8, 6])
  round_fn = round_lib.build_round(
      data, small.local_update(), _fixed_sampler([0, 1, 2]), optax.sgd(1.0))
  labels = np.array(data.examples['y'])
  swapped = _swap_labels(data, labels)
  round_fn(small.server_state(key), key, train_data=swapped)

  labels[2, 3] = 4  # The same numpy array, changed in place.

  with pytest.raises(ValueError, match='Client 2 has label 4 in row 3'):
    round_fn(small.server_state(key), key, train_data=swapped)


def test_model_width_must_match_classes(key):
  model = tabular.from_flax(tabular.LogisticRegression(2), 3)
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=2, batch_size=2)
  round_fn = round_lib.build_round(
      small.population([5, 7]), local_update, _fixed_sampler([0, 1]),
      optax.sgd(1.0))
  with pytest.raises(ValueError, match='num_classes=3 needs \\(3,\\)'):
    round_fn(small.server_state(key), key)


@pytest.mark.parametrize('state_optimizer, round_optimizer', [
    (optax.sgd(1.0), optax.adam(0.1)),
    (optax.adam(0.1), optax.sgd(1.0)),
])
def test_state_of_other_optimizer_rejected(key, state_optimizer,
                                           round_optimizer):
  round_fn = round_lib.build_round(
      small.population([5, 7]), small.local_update(), _fixed_sampler([0, 1]),
      round_optimizer)
  with pytest.raises(ValueError, match='opt_state'):
    round_fn(small.server_state(key, state_optimizer), key)


@pytest.mark.parametrize('round_key', [0, np.arange(3, dtype=np.uint32)])
def test_round_key_must_be_a_key(key, round_key):
  round_fn = round_lib.build_round(
      small.population([5, 7]), small.local_update(), _fixed_sampler([0, 1]),
      optax.sgd(1.0))
  with pytest.raises(ValueError, match='`round_key` must be one PRNG key'):
    round_fn(small.server_state(key), round_key)


def test_raw_uint32_key_accepted(key):
  round_fn = round_lib.build_round(
      small.population([5, 7]), small.local_update(), _fixed_sampler([0, 1]),
      optax.sgd(1.0))
  state = small.server_state(key)
  raw, _ = round_fn(state, jax.random.PRNGKey(3))
  typed, _ = round_fn(state, jax.random.key(3))
  small.assert_leaves_close(raw.params, typed.params, rtol=0, atol=0)


def test_num_examples_metric_exact_past_float32():
  # Summed in float32, 16,777,217 + 2 rows came out as 16,777,218.
  counts = jnp.array([16_777_217, 2], jnp.int32)
  contributes = jnp.array([True, True])
  cohort = sampling.Cohort(jnp.array([0, 1], jnp.int32), contributes,
                           jnp.int32(0))
  local = types.SimpleNamespace(loss=jnp.array([0.5, 0.5]),
                                truncated=jnp.array([False, False]))
  state = types.SimpleNamespace(round=jnp.int32(0))

  metrics = round_lib._round_metrics(
      state, jnp.int32(2), cohort, counts, contributes, local, {},
      jnp.bool_(False))

  assert int(metrics['num_examples']) == 16_777_219


def test_slot_keys_repeat_only_for_repeated_clients():
  base = jax.random.key(0)
  ids = jnp.array([3, 5, 3, 3], jnp.int32)

  keys = jax.random.key_data(jax.jit(round_lib.slot_keys)(base, ids))

  # First slots keep the keys of fold_in alone, so cohorts without repeats
  # draw what they drew before.
  np.testing.assert_array_equal(
      keys[0], jax.random.key_data(jax.random.fold_in(base, 3)))
  np.testing.assert_array_equal(
      keys[1], jax.random.key_data(jax.random.fold_in(base, 5)))
  assert len({tuple(np.asarray(key)) for key in keys}) == 4


def test_repeated_client_gets_own_noise(key):
  # A sampler that drew client 0 twice gave both slots one key, so their
  # local noise was equal and the round equalled one with client 0 once.
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_multiplier=1.0, noise_kind='local',
      denominator=2.0)
  data = small.population([5, 7, 6])

  def round_params(ids):
    round_fn = round_lib.build_round(
        data, small.local_update(), _fixed_sampler(ids), optax.sgd(1.0),
        aggregator='mean', privacy=privacy)
    return round_fn(small.server_state(key), key)[0].params

  twice, once = round_params([0, 0]), round_params([0])

  difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(twice), jax.tree.leaves(once)))
  assert difference > 1e-3
