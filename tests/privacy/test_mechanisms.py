"""Client-level DP mechanisms: distributed noise, capped weights, per-layer."""

import math

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

MODEL = tabular.from_flax(tabular.LogisticRegression(2), 2)


def _zero_update_round(privacy, num_clients=4, aggregator='mean',
                       dropout_rate=0.0):
  rng = np.random.default_rng(0)
  clients = [{'x': rng.normal(size=(5, 3)).astype(np.float32),
              'y': np.zeros(5, np.int32)} for _ in range(num_clients)]
  # A learning rate of 0 makes every delta 0: the aggregate is pure noise.
  local_update = local_training.build_local_update(
      MODEL, optax.sgd(0.0), num_steps=1, batch_size=2
  )
  return round_lib.build_round(
      federated.stack_clients(clients), local_update,
      sampling.uniform_sampler(num_clients, num_clients), optax.sgd(1.0),
      aggregator=aggregator, privacy=privacy, dropout_rate=dropout_rate,
  )


def _noise_samples(round_fn, key, rounds=60):
  params = MODEL.init(key, jnp.zeros((1, 3)))
  state = round_lib.init_server_state(params, optax.sgd(1.0))
  start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  samples, metrics = [], []
  for round_index in range(rounds):
    new_state, round_metrics = round_fn(state, jax.random.fold_in(key, round_index))
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(new_state.params)])
    samples.append(flat - start)
    metrics.append(round_metrics)
  return np.asarray(samples), metrics


def test_distributed_noise_std(key):
  # 4 clients each add std 1 * 2 / sqrt(4) = 1; the sum has std 2 and the
  # mean (denominator 4) has std 0.5.
  privacy = mechanisms.PrivacySettings(
      2.0, 1.0, 'distributed', denominator=4.0, min_reporting_clients=4
  )

  samples, metrics = _noise_samples(_zero_update_round(privacy), key)

  assert np.std(samples) == pytest.approx(0.5, rel=0.1)
  assert not any(bool(m['below_min_reporting']) for m in metrics)


def test_distributed_shortfall_flagged(key):
  privacy = mechanisms.PrivacySettings(
      2.0, 1.0, 'distributed', denominator=4.0, min_reporting_clients=4
  )
  round_fn = _zero_update_round(privacy, dropout_rate=0.5)

  _, metrics = _noise_samples(round_fn, key, rounds=10)

  assert any(bool(m['below_min_reporting']) for m in metrics)


def test_central_noise_fixed_denominator(key):
  # Denominator 8 with 4 clients: the mean's std is 1 * 2 / 8 = 0.25.
  privacy = mechanisms.PrivacySettings(2.0, 1.0, 'central', denominator=8.0)

  samples, _ = _noise_samples(_zero_update_round(privacy), key)

  assert np.std(samples) == pytest.approx(0.25, rel=0.1)


def test_noise_differs_across_rounds(key):
  privacy = mechanisms.PrivacySettings(2.0, 1.0, 'central', denominator=4.0)

  samples, _ = _noise_samples(_zero_update_round(privacy), key)

  # 59 consecutive pairs of 4 coordinates: correlation std about 0.065.
  correlation = np.corrcoef(samples[:-1].ravel(), samples[1:].ravel())[0, 1]
  assert abs(correlation) < 0.3


def test_noised_mean_denominator_weights(key):
  updates = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}
  weights = jnp.array([1.0, 0.5])

  own = mechanisms.noised_mean(
      updates, weights, mechanisms.PrivacySettings(), key=key)
  other = mechanisms.noised_mean(
      updates, weights, mechanisms.PrivacySettings(), key=key,
      denominator_weights=jnp.array([1.0, 1.0]))

  # (1 * [1, 2] + 0.5 * [3, 4]) divided by 1.5, then by 2.
  np.testing.assert_allclose(own['w'], [2.5 / 1.5, 4.0 / 1.5], rtol=1e-6)
  np.testing.assert_allclose(other['w'], [1.25, 2.0], rtol=1e-6)


def test_capped_weights():
  counts = jnp.array([10, 100, 300, 0])
  contributes = jnp.array([True, True, True, False])

  weights = mechanisms.client_weights('fedavg', contributes, counts, 100.0)

  np.testing.assert_allclose(weights, [0.1, 1.0, 1.0, 0.0])


def test_per_layer_clip_bounds_each_leaf():
  update = {'a': jnp.array([30.0, 40.0]), 'b': jnp.array([0.1]),
            'c': jnp.array([5.0, 0.0, 0.0]), 'd': jnp.array([-7.0])}
  privacy = mechanisms.PrivacySettings(clip_norm=2.0, clipping='per_layer')

  result = mechanisms.clip_client_update(update, privacy)

  # Four leaves: each is bounded by 2 / sqrt(4) = 1.
  for name in ('a', 'c', 'd'):
    assert float(jnp.linalg.norm(result.update[name])) == pytest.approx(1.0)
  np.testing.assert_allclose(result.update['b'], [0.1])
  total = math.sqrt(sum(float(jnp.sum(leaf**2))
                        for leaf in jax.tree.leaves(result.update)))
  assert total <= 2.0


@pytest.mark.parametrize('settings, aggregator, match', [
    (mechanisms.PrivacySettings(1.0, 1.0, 'central', denominator=4.0),
     'fedavg', 'weight_cap'),
    (mechanisms.PrivacySettings(1.0, 1.0, 'central', denominator=4.0),
     'median', 'median'),
    (mechanisms.PrivacySettings(1.0, 1.0, 'central'), 'mean', 'denominator'),
    (mechanisms.PrivacySettings(1.0, 1.0, 'distributed', denominator=4.0),
     'mean', 'min_reporting_clients'),
    (mechanisms.PrivacySettings(1.0, -1.0, 'local'), 'mean', 'noise_multiplier'),
    (mechanisms.PrivacySettings(1.0, float('inf'), 'local'), 'mean',
     'noise_multiplier'),
    (mechanisms.PrivacySettings(None, 1.0, 'local'), 'mean', 'clip_norm'),
    # The library ran q-FFL with local noise, whose loss goes unnoised.
    (mechanisms.PrivacySettings(1.0, 1.0, 'local'), 'qffl', 'training loss'),
    (mechanisms.PrivacySettings(1.0, 1.0, 'central', denominator=4.0),
     'qffl', 'training loss'),
], ids=['uncapped-fedavg', 'median', 'no-denominator', 'no-min-reporting',
        'negative-noise', 'infinite-noise', 'no-clip', 'qffl-local',
        'qffl-central'])
def test_invalid_settings_rejected(settings, aggregator, match):
  with pytest.raises(ValueError, match=match):
    mechanisms.validate_privacy(settings, aggregator)


def _fixed_delta_round(norms, privacy):
  """A round whose client c always proposes the update (norms[c], 0)."""
  clients = [{'x': np.array([[norm, 0.0]], np.float32),
              'y': np.zeros(1, np.int32)} for norm in norms]

  def local_update(server_params, examples, num_examples, key):
    del server_params, num_examples, key
    delta = {'w': examples['x'][0]}
    return local_training.LocalResult(
        delta, jnp.float32(0.0), jnp.int32(1), jnp.bool_(False)
    )

  return round_lib.build_round(
      federated.stack_clients(clients), local_update,
      sampling.uniform_sampler(len(norms), len(norms)), optax.sgd(0.0),
      aggregator='mean', privacy=privacy,
  )


def test_adaptive_clip_tracks_median(key):
  norms = np.arange(1.0, 11.0)  # The median norm is between 5 and 6.
  privacy = mechanisms.PrivacySettings(
      clip_norm=0.5, adaptive_clipping=True, target_quantile=0.5,
      clip_learning_rate=0.2, expected_clients=10.0,
  )
  round_fn = jax.jit(_fixed_delta_round(norms, privacy))
  state = round_lib.init_server_state(
      {'w': jnp.zeros(2)}, optax.sgd(0.0), clip_norm=0.5
  )

  for round_index in range(150):
    state, metrics = round_fn(state, jax.random.fold_in(key, round_index))

  assert 4.5 < float(state.clip_norm) < 6.5
  assert float(metrics['clip_norm']) > 0.0


def test_adaptive_clip_rises_from_small(key):
  privacy = mechanisms.PrivacySettings(
      clip_norm=0.1, adaptive_clipping=True, target_quantile=0.9,
      expected_clients=3.0,
  )
  round_fn = _fixed_delta_round([2.0, 2.0, 2.0], privacy)
  state = round_lib.init_server_state(
      {'w': jnp.zeros(2)}, optax.sgd(0.0), clip_norm=0.1
  )

  new_state, _ = round_fn(state, key)

  # Nothing was unclipped: the bound grows by exp(0.2 * 0.9).
  assert float(new_state.clip_norm) == pytest.approx(0.1 * math.exp(0.18))


def test_adaptive_update_noise_multiplier():
  # z = 1, sigma_b = 1: (1 - 1 / 4) ** -0.5 = 1.1547.
  assert mechanisms.adaptive_noise_multiplier(1.0, 1.0) == pytest.approx(
      1.1547005, rel=1e-6)


def test_adaptive_noise_too_large_rejected():
  with pytest.raises(ValueError, match='count_noise_stddev'):
    mechanisms.adaptive_noise_multiplier(2.0, 1.0)


def test_adaptive_clip_steady_at_quantile(key):
  # Two of four norms are below 2.5: the unclipped fraction is exactly the
  # target 0.5, so without count noise the bound must not move.
  privacy = mechanisms.PrivacySettings(
      clip_norm=2.5, adaptive_clipping=True, target_quantile=0.5,
      expected_clients=4.0,
  )
  round_fn = _fixed_delta_round([1.0, 2.0, 3.0, 4.0], privacy)
  state = round_lib.init_server_state(
      {'w': jnp.zeros(2)}, optax.sgd(0.0), clip_norm=2.5
  )

  new_state, _ = round_fn(state, key)

  assert float(new_state.clip_norm) == pytest.approx(2.5, rel=1e-6)


def test_adaptive_needs_clip_in_state(key):
  privacy = mechanisms.PrivacySettings(
      clip_norm=2.5, adaptive_clipping=True, expected_clients=2.0,
  )
  round_fn = _fixed_delta_round([1.0, 2.0], privacy)
  state = round_lib.init_server_state({'w': jnp.zeros(2)}, optax.sgd(0.0))

  with pytest.raises(ValueError, match='init_server_state'):
    round_fn(state, key)


def test_noised_mean_of_bfloat16_keeps_counts():
  # The weights were cast to the leaf's bfloat16, where 1001 and 1000 are
  # one value, so the mean of +1 and -1 was 0.
  updates = {'w': jnp.asarray([[1.0], [-1.0]], jnp.bfloat16)}

  result = mechanisms.noised_mean(
      updates, jnp.asarray([1001.0, 1000.0]), mechanisms.PrivacySettings(),
      key=jax.random.key(0))['w']

  assert float(result[0]) == pytest.approx(1 / 2001, rel=1e-3)

