"""Rounds with secure aggregation against the same rounds without it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.privacy import mechanisms
from fedjax_med.secure import protocol
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

MODEL = tabular.from_flax(tabular.LogisticRegression(2), 2)
COUNTS = [4, 12, 7, 9, 3, 15, 6, 8]


def _population():
  rng = np.random.default_rng(0)
  clients = []
  for count in COUNTS:
    clients.append({
        'x': rng.normal(size=(count, 3)).astype(np.float32),
        'y': (rng.random(count) > 0.5).astype(np.int32),
    })
  return jax.device_put(federated.stack_clients(clients))


def _all_clients(key):
  del key
  ids = jnp.arange(len(COUNTS), dtype=jnp.int32)
  return sampling.Cohort(ids, jnp.ones(ids.shape, bool), jnp.int32(0))


def _round(secure=None, **kwargs):
  local_update = local_training.build_local_update(
      MODEL, optax.sgd(0.1), num_steps=6, batch_size=2)
  return round_lib.build_round(
      _population(), local_update, _all_clients, optax.sgd(1.0),
      secure_aggregation=secure, **kwargs)


def _state():
  params = MODEL.init(jax.random.key(0), jnp.zeros((1, 3)))
  return round_lib.init_server_state(params, optax.sgd(1.0))


def _max_difference(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('aggregator', ['fedavg', 'mean'])
@pytest.mark.parametrize('dropout_rate', [0.0, 0.3])
def test_secure_round_equals_plain_round(aggregator, dropout_rate):
  privacy = mechanisms.PrivacySettings(clip_norm=5.0)
  kwargs = dict(aggregator=aggregator, privacy=privacy,
                dropout_rate=dropout_rate)
  secure = protocol.SecureAggregationSettings(threshold_fraction=0.3)
  plain_fn, secure_fn = _round(**kwargs), _round(secure, **kwargs)
  key = jax.random.key(3)
  plain, plain_metrics = plain_fn(_state(), key)
  result, metrics = secure_fn(_state(), key)
  plan = secure_fn.secure_plan(_state().params)
  # The weighted mean of n clients is off by at most n / scale per
  # coordinate in its numerator and denominator.
  assert _max_difference(plain.params, result.params) < 1e-4
  assert _max_difference(plain.params, result.params) > 0
  assert plan.scale > 1e6
  assert int(metrics['num_contributing']) == int(
      plain_metrics['num_contributing'])
  assert not bool(metrics['secagg_failed'])
  assert bool(metrics['secagg_rebuilt_correct'])


def test_secure_round_fails_cleanly_below_threshold():
  secure = protocol.SecureAggregationSettings(threshold_fraction=0.9)
  round_fn = _round(secure, privacy=mechanisms.PrivacySettings(clip_norm=5.0),
                    dropout_rate=0.5)
  state = _state()
  new_state, metrics = round_fn(state, jax.random.key(0))
  assert bool(metrics['secagg_failed'])
  assert bool(metrics['skipped'])
  assert _max_difference(state.params, new_state.params) == 0.0


def test_distributed_discrete_noise_has_planned_std():
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_multiplier=1.0, noise_kind='distributed',
      denominator=8.0, min_reporting_clients=8)
  secure = protocol.SecureAggregationSettings()
  # A zero learning rate makes every update zero, so the aggregate is the
  # noise alone: std z * C / denominator = 1 / 8 per coordinate.
  local_update = local_training.build_local_update(
      MODEL, optax.sgd(0.0), num_steps=1, batch_size=2)
  round_fn = round_lib.build_round(
      _population(), local_update, _all_clients, optax.sgd(1.0),
      aggregator='mean', privacy=privacy, secure_aggregation=secure)
  state = _state()
  changes = []
  for index in range(200):
    new_state, _ = round_fn(state, jax.random.key(index))
    changes.append(np.concatenate([
        np.ravel(new - old) for new, old in zip(
            jax.tree.leaves(new_state.params), jax.tree.leaves(state.params))
    ]))
  std = np.std(np.stack(changes))
  assert std == pytest.approx(1 / 8, rel=0.1)
  plan = round_fn.secure_plan(state.params)
  assert plan.noise_sigma > 0
  assert plan.overflow_probability < 1e-6


@pytest.mark.parametrize('aggregator', ['median', 'krum'])
def test_individual_update_aggregators_rejected(aggregator):
  secure = protocol.SecureAggregationSettings()
  with pytest.raises(ValueError, match='sees only the sum'):
    _round(secure, aggregator=aggregator,
           privacy=mechanisms.PrivacySettings(clip_norm=1.0))


def test_secure_round_needs_clip_norm():
  with pytest.raises(ValueError, match='clip_norm'):
    _round(protocol.SecureAggregationSettings())


def test_secure_round_rejects_local_noise():
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_multiplier=1.0, noise_kind='local')
  with pytest.raises(ValueError, match='local noise'):
    _round(protocol.SecureAggregationSettings(), aggregator='mean',
           privacy=privacy)


def test_explicit_scale_that_overflows_rejected():
  secure = protocol.SecureAggregationSettings(bits=16, scale=1e6)
  round_fn = _round(secure, privacy=mechanisms.PrivacySettings(clip_norm=1.0))
  with pytest.raises(ValueError, match='overflow'):
    round_fn(_state(), jax.random.key(0))


def test_noisy_scale_that_overflows_rejected():
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_multiplier=0.001, noise_kind='distributed',
      denominator=8.0, min_reporting_clients=8)
  secure = protocol.SecureAggregationSettings(scale=4e9)
  round_fn = _round(secure, aggregator='mean', privacy=privacy)
  with pytest.raises(ValueError, match='under distributed noise'):
    round_fn(_state(), jax.random.key(0))


def test_scale_below_one_unit_rejected():
  secure = protocol.SecureAggregationSettings(scale=1e-9)
  round_fn = _round(secure, privacy=mechanisms.PrivacySettings(clip_norm=10.0))
  with pytest.raises(ValueError, match='less than one ring unit'):
    round_fn(_state(), jax.random.key(0))


def test_settings_of_wrong_type_rejected():
  with pytest.raises(TypeError, match='SecureAggregationSettings'):
    _round(True, privacy=mechanisms.PrivacySettings(clip_norm=1.0))


def test_failed_round_not_below_min_reporting():
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_multiplier=1.0, noise_kind='distributed',
      denominator=8.0, min_reporting_clients=8)
  secure = protocol.SecureAggregationSettings(threshold_fraction=0.9)
  round_fn = _round(secure, aggregator='mean', privacy=privacy,
                    dropout_rate=0.5)
  _, metrics = round_fn(_state(), jax.random.key(0))
  assert bool(metrics['secagg_failed'])
  assert not bool(metrics['below_min_reporting'])


def test_quantization_norm_grows_with_weight_bound():
  # Ten identical updates of norm 1 with weight 20 each. Against a weight
  # bound of 1e5 each encodes in about 0.65 ring units of a 16-bit ring.
  # Dividing by the total relative weight 0.002 then amplifies the
  # rounding error 500-fold, and the metric has to show that.
  from fedjax_med.secure import aggregate as secure_aggregate
  clients = 10
  updates = {'w': jnp.tile(jnp.array([[0.5, -0.5, 0.5, -0.5]]), (clients, 1))}
  weights = jnp.full((clients,), 20.0)
  everyone = jnp.ones((clients,), bool)
  privacy = mechanisms.PrivacySettings(clip_norm=1.0)
  errors, metric = {}, {}
  for weight_bound in (1e3, 1e5):
    aggregate, plan = secure_aggregate.build_secure_aggregate(
        protocol.SecureAggregationSettings(bits=16), privacy, 'fedavg',
        clients, {'w': jnp.zeros(4)}, weight_bound)
    # Rounding noise of the 4 coordinates plus that of the weight, which
    # moves the mean (norm 1) by its relative error.
    expected = np.sqrt(clients * (4 + 1) / 6) / plan.scale / (
        clients * 20 / weight_bound)
    seeds = jnp.arange(20)
    client_keys = jax.vmap(
        lambda seed: jax.random.split(jax.random.key(seed), clients))(seeds)
    round_keys = jax.vmap(jax.random.key)(100 + seeds)
    # One compiled program for the 20 trials.
    trials = jax.jit(jax.vmap(
        aggregate, in_axes=(None, None, None, None, 0, 0)))
    mean, failed, metrics = trials(
        updates, weights, everyone, everyone, client_keys, round_keys)
    assert not np.any(np.asarray(failed))
    trial_errors = np.linalg.norm(
        np.asarray(mean['w']) - np.asarray(updates['w'][0]), axis=1)
    errors[weight_bound] = np.sqrt(np.mean(np.square(trial_errors)))
    metric[weight_bound] = float(metrics['secagg_quantization_norm'][0])
    # The metric divides by the decoded total weight, 0.002 or 0.2 up to
    # a few ring units of rounding.
    np.testing.assert_allclose(metric[weight_bound], expected, rtol=0.3)

  # The measured root-mean-square error is of the metric's order.
  assert 0.3 < errors[1e5] / metric[1e5] < 3
  assert metric[1e5] / metric[1e3] == pytest.approx(100, rel=0.3)
  assert errors[1e5] > 0.3
