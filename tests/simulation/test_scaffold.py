"""SCAFFOLD on quadratic clients: it reaches the optimum FedAvg misses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

# Client i minimizes f_i(w) = a_i / 2 * (w - b_i)^2 with its own curvature.
CURVATURES = np.array([0.05, 2.0, 1.0], np.float32)
OPTIMA = np.array([10.0, 0.0, -2.0], np.float32)
STEP = 0.3
LOCAL_STEPS = 20


def _population():
  clients = [
      {'x': np.array([[a, b]], np.float32), 'y': np.zeros(1, np.int32)}
      for a, b in zip(CURVATURES, OPTIMA)
  ]
  return jax.device_put(federated.stack_clients(clients))


def _quadratic_gradient(params, batch, valid, step_key):
  del valid, step_key
  curvature, optimum = batch['x'][0, 0], batch['x'][0, 1]
  residual = params['w'] - optimum
  return 0.5 * curvature * residual ** 2, {'w': curvature * residual}


def _run(scaffold, rounds=300):
  data = _population()
  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(STEP), num_steps=LOCAL_STEPS,
      batch_size=1,
  )
  ids = jnp.arange(3)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(3, bool), jnp.int32(0))
  round_fn = round_lib.build_round(
      data, local_update, sampler, optax.sgd(1.0), aggregator='mean',
      scaffold_learning_rate=STEP if scaffold else None,
  )
  state = round_lib.init_server_state(
      {'w': jnp.float32(0.0)}, optax.sgd(1.0),
      scaffold_clients=3 if scaffold else None,
  )
  for index in range(rounds):
    state, _ = round_fn(state, jax.random.key(index))
  return state


def test_scaffold_reaches_global_optimum():
  # The minimizer of the mean of the f_i is sum(a_i b_i) / sum(a_i).
  optimum = float(np.sum(CURVATURES * OPTIMA) / np.sum(CURVATURES))
  # FedAvg's fixed point solves w = mean(b_i + r_i (w - b_i)) with
  # r_i = (1 - eta a_i)^K, the contraction of K local gradient steps.
  contraction = (1 - STEP * CURVATURES) ** LOCAL_STEPS
  fedavg_point = float(np.sum((1 - contraction) * OPTIMA)
                       / np.sum(1 - contraction))

  scaffold = _run(scaffold=True)
  fedavg = _run(scaffold=False)

  assert abs(fedavg_point - optimum) > 0.1
  np.testing.assert_allclose(float(fedavg.params['w']), fedavg_point,
                             atol=1e-4)
  np.testing.assert_allclose(float(scaffold.params['w']), optimum, atol=1e-4)


def test_scaffold_controls_converge_to_gradients():
  state = _run(scaffold=True)
  w = float(state.params['w'])
  # At the optimum each c_i is client i's gradient there, and c their mean
  # (the uniform aggregator gives each client weight 1/3).
  gradients = CURVATURES * (w - OPTIMA)
  np.testing.assert_allclose(
      np.asarray(state.client_controls['w']), gradients, atol=1e-4)
  np.testing.assert_allclose(float(state.control['w']), gradients.mean(),
                             atol=1e-4)


def test_scaffold_needs_controls_in_state():
  data = _population()
  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(STEP), num_steps=2, batch_size=1)
  ids = jnp.arange(3)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(3, bool), jnp.int32(0))
  round_fn = round_lib.build_round(
      data, local_update, sampler, optax.sgd(1.0),
      scaffold_learning_rate=STEP)
  state = round_lib.init_server_state({'w': jnp.float32(0.0)}, optax.sgd(1.0))
  with pytest.raises(ValueError, match='scaffold_clients'):
    round_fn(state, jax.random.key(0))


def test_scaffold_weighted_control_with_fedavg():
  # Clients with 1, 3 and 6 rows of the same quadratic: with fedavg the
  # server control must stay the example-weighted mean of the c_i.
  clients = [
      {'x': np.tile(np.array([[a, b]], np.float32), (n, 1)),
       'y': np.zeros(n, np.int32)}
      for a, b, n in zip(CURVATURES, OPTIMA, (1, 3, 6))
  ]
  data = jax.device_put(federated.stack_clients(clients))
  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(STEP), num_steps=4, batch_size=1)
  ids = jnp.arange(3)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(3, bool), jnp.int32(0))
  round_fn = round_lib.build_round(
      data, local_update, sampler, optax.sgd(1.0), aggregator='fedavg',
      scaffold_learning_rate=STEP)
  state = round_lib.init_server_state(
      {'w': jnp.float32(0.0)}, optax.sgd(1.0), scaffold_clients=3)
  for index in range(3):
    state, _ = round_fn(state, jax.random.key(index))

  weights = np.array([1.0, 3.0, 6.0]) / 10.0
  np.testing.assert_allclose(
      float(state.control['w']),
      float(np.sum(weights * np.asarray(state.client_controls['w']))),
      rtol=1e-5)


def test_scaffold_weights_follow_swapped_data():
  # The control weights came from the data the round was built with, so
  # `round_fn(train_data=...)` with other sizes broke c = sum_i p_i c_i.
  def data_of(sizes):
    clients = [
        {'x': np.tile(np.array([[a, b]], np.float32), (n, 1)),
         'y': np.zeros(n, np.int32)}
        for a, b, n in zip(CURVATURES, OPTIMA, sizes)
    ]
    return jax.device_put(federated.stack_clients(clients))

  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(STEP), num_steps=4, batch_size=1)
  ids = jnp.arange(3)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(3, bool), jnp.int32(0))
  round_fn = round_lib.build_round(
      data_of((1, 3, 6)), local_update, sampler, optax.sgd(1.0),
      aggregator='fedavg', scaffold_learning_rate=STEP)
  state = round_lib.init_server_state(
      {'w': jnp.float32(0.0)}, optax.sgd(1.0), scaffold_clients=3)
  for index in range(3):
    state, _ = round_fn(state, jax.random.key(index),
                        train_data=data_of((6, 3, 1)))

  weights = np.array([6.0, 3.0, 1.0]) / 10.0
  np.testing.assert_allclose(
      float(state.control['w']),
      float(np.sum(weights * np.asarray(state.client_controls['w']))),
      rtol=1e-5)


def test_scaffold_mean_skips_clients_without_rows():
  # With the uniform mean, a client without rows kept c_i = 0 and still
  # counted 1/N in c.
  clients = [
      {'x': np.array([[a, b]], np.float32), 'y': np.zeros(1, np.int32)}
      for a, b in zip(CURVATURES, OPTIMA)
  ] + [{'x': np.zeros((0, 2), np.float32), 'y': np.zeros(0, np.int32)}]
  data = jax.device_put(federated.stack_clients(clients))
  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(STEP), num_steps=4, batch_size=1)
  ids = jnp.arange(4)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(4, bool), jnp.int32(0))
  round_fn = round_lib.build_round(
      data, local_update, sampler, optax.sgd(1.0), aggregator='mean',
      scaffold_learning_rate=STEP)
  state = round_lib.init_server_state(
      {'w': jnp.float32(0.0)}, optax.sgd(1.0), scaffold_clients=4)
  for index in range(3):
    state, _ = round_fn(state, jax.random.key(index))

  controls = np.asarray(state.client_controls['w'])
  assert controls[3] == 0.0
  np.testing.assert_allclose(float(state.control['w']),
                             float(np.mean(controls[:3])), rtol=1e-5)


def test_scaffold_rejects_robust_aggregator():
  data = _population()
  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(STEP), num_steps=2, batch_size=1)
  ids = jnp.arange(3)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(3, bool), jnp.int32(0))
  with pytest.raises(ValueError, match='aggregator median'):
    round_lib.build_round(
        data, local_update, sampler, optax.sgd(1.0), aggregator='median',
        scaffold_learning_rate=STEP)
