"""The round with centered clipping, secure aggregation and swapped data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.aggregation import registry
from fedjax_med.attacks import model_poisoning
from fedjax_med.privacy import mechanisms
from fedjax_med.simulation import round as round_lib
from tests.simulation import small_population as small
from tests.simulation import test_round as helpers


def _deltas(local_update, data, params, round_key, ids):
  """Each client's update as a `[clients, D]` numpy matrix."""
  clients_key = jax.random.fold_in(round_key, round_lib._CLIENTS_TAG)
  rows = []
  for client_id in ids:
    examples = jax.tree.map(lambda a: a[client_id], data.examples)
    result = local_update(
        params, examples, data.num_examples[client_id],
        jax.random.fold_in(clients_key, client_id),
    )
    rows.append(np.concatenate(
        [np.ravel(leaf) for leaf in jax.tree.leaves(result.delta)]))
  return np.stack(rows)


def _flat(params):
  return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(params)])


def _clipped_step(deltas, center, radius):
  """One centered-clipping step computed in numpy."""
  differences = deltas - center
  norms = np.linalg.norm(differences, axis=1, keepdims=True)
  factors = np.minimum(1.0, radius / np.maximum(norms, 1e-30))
  return center + np.mean(differences * factors, axis=0)


def test_centered_clipping_starts_from_previous_aggregate(key):
  data = small.population([5, 8, 6, 7])
  local_update = small.local_update()
  ids = [0, 1, 2, 3]
  radius = 0.05
  round_fn = round_lib.build_round(
      data, local_update, helpers._fixed_sampler(ids), optax.sgd(1.0),
      aggregator='centered_clipping',
      aggregator_options={'clip_radius': radius, 'num_iterations': 1},
  )
  params = small.MODEL.init(key, jnp.zeros((1, 3)))
  state = round_lib.init_server_state(
      params, optax.sgd(1.0), aggregator='centered_clipping'
  )
  np.testing.assert_array_equal(_flat(state.center), 0.0)

  keys = [jax.random.fold_in(key, r) for r in (1, 2)]
  deltas = _deltas(local_update, data, state.params, keys[0], ids)
  # The radius is below every update norm, so each client is clipped.
  assert np.all(np.linalg.norm(deltas, axis=1) > radius)
  first = _clipped_step(deltas, np.zeros(deltas.shape[1]), radius)
  state_1, _ = round_fn(state, keys[0])
  np.testing.assert_allclose(_flat(state_1.center), first, rtol=1e-5)
  np.testing.assert_allclose(
      _flat(state_1.params) - _flat(state.params), first, rtol=1e-5,
      atol=1e-7,
  )

  deltas = _deltas(local_update, data, state_1.params, keys[1], ids)
  second = _clipped_step(deltas, first, radius)
  state_2, _ = round_fn(state_1, keys[1])
  np.testing.assert_allclose(_flat(state_2.center), second, rtol=1e-5)


def test_centered_clipping_needs_center_in_state(key):
  data = small.population([5, 8])
  round_fn = round_lib.build_round(
      data, small.local_update(), helpers._fixed_sampler([0, 1]),
      optax.sgd(1.0), aggregator='centered_clipping',
      aggregator_options={'clip_radius': 1.0},
  )
  with pytest.raises(ValueError, match="aggregator='centered_clipping'"):
    round_fn(small.server_state(key, optax.sgd(1.0)), key)


def test_centered_clipping_needs_radius():
  with pytest.raises(ValueError, match='clip_radius'):
    registry.build_aggregate('centered_clipping')


@pytest.mark.parametrize('name', sorted(
    set(registry.AGGREGATORS) - set(registry.SUM_BASED)))
def test_secure_aggregation_refuses_update_based(name):
  with pytest.raises(ValueError, match='only their sum'):
    registry.build_aggregate(
        name, secure_aggregation=True, clip_radius=1.0, max_norm=1.0)


@pytest.mark.parametrize('name', registry.SUM_BASED)
def test_secure_aggregation_allows_sum_based(name):
  aggregate = registry.build_aggregate(
      name, secure_aggregation=True, max_norm=10.0)
  updates = jnp.array([[1.0], [3.0]])
  result = aggregate(updates, jnp.ones(2), jnp.ones(2, bool))
  np.testing.assert_allclose(result, [2.0])


def test_distributed_noise_refuses_median(key):
  data = small.population([5, 8, 6])
  privacy = mechanisms.PrivacySettings(
      clip_norm=1.0, noise_kind='distributed', noise_multiplier=1.0,
      denominator=3.0, min_reporting_clients=3)
  with pytest.raises(ValueError, match='only their sum'):
    round_lib.build_round(
        data, small.local_update(), helpers._fixed_sampler([0, 1, 2]),
        optax.sgd(1.0), aggregator='median', privacy=privacy)


def _sign_flip(updates, bad, honest, attack_key):
  del honest, attack_key
  return model_poisoning.sign_flip(updates, bad, scale=5.0)


def test_swapped_data_and_mask_match_a_fresh_round(key):
  first = small.population([5, 8, 6, 7], seed=0)
  second = small.population([5, 8, 6, 7], seed=1)
  mask_a = jnp.array([True, False, False, False])
  mask_b = jnp.array([False, False, True, True])
  sampler = helpers._fixed_sampler([0, 1, 2, 3])
  reused = round_lib.build_round(
      first, small.local_update(), sampler, optax.sgd(1.0),
      attack=_sign_flip, malicious=mask_a)
  fresh = round_lib.build_round(
      second, small.local_update(), sampler, optax.sgd(1.0),
      attack=_sign_flip, malicious=mask_b)
  state = small.server_state(key, optax.sgd(1.0))

  swapped, _ = reused(state, key, train_data=second, malicious=mask_b)
  expected, _ = fresh(state, key)
  original, _ = reused(state, key)

  helpers._leaves_equal(swapped.params, expected.params)
  assert not np.allclose(_flat(original.params), _flat(expected.params))


def test_swapped_data_must_keep_shapes(key):
  data = small.population([5, 8])
  round_fn = round_lib.build_round(
      data, small.local_update(), helpers._fixed_sampler([0, 1]),
      optax.sgd(1.0))
  state = small.server_state(key, optax.sgd(1.0))
  with pytest.raises(ValueError, match='array shapes'):
    round_fn(state, key, train_data=small.population([5, 9]))
  with pytest.raises(ValueError, match='malicious'):
    round_fn(state, key, malicious=jnp.zeros(3, bool))
