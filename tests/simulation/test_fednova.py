"""FedNova: updates normalized by each client's number of local steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling


def _quadratic_gradient(params, batch, valid, step_key):
  del step_key
  # f(w) = a / 2 (w - b)^2 with (a, b) in each row; filler rows count 0.
  curvature, optimum = batch['x'][:, 0], batch['x'][:, 1]
  residual = params['w'] - optimum
  weights = valid / jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(weights * 0.5 * curvature * residual ** 2)
  return loss, {'w': jnp.sum(weights * curvature * residual)}


def _setup(rows, aggregator, fednova, mu=0.0):
  # Client i has rows[i] copies of its quadratic, so one epoch of batch 1
  # takes rows[i] steps.
  clients = [
      {'x': np.tile(np.array([[a, b]], np.float32), (n, 1)),
       'y': np.zeros(n, np.int32)}
      for a, b, n in zip((0.5, 1.0, 2.0), (4.0, -1.0, 1.0), rows)
  ]
  data = jax.device_put(federated.stack_clients(clients))
  local_update = local_training.build_scan(
      _quadratic_gradient, optax.sgd(0.1), num_steps=max(rows), batch_size=1,
      num_epochs=1, proximal_mu=mu,
  )
  ids = jnp.arange(3)
  sampler = lambda key: sampling.Cohort(ids, jnp.ones(3, bool), jnp.int32(0))
  round_fn = round_lib.build_round(
      data, local_update, sampler, optax.sgd(1.0), aggregator=aggregator,
      fednova=fednova, fednova_proximal=0.1 * mu if fednova else 0.0,
  )
  return data, local_update, round_fn


@pytest.mark.parametrize('aggregator, mu', [
    ('mean', 0.0), ('fedavg', 0.0),
    # FedProx: eta mu = 0.2, and 1.5 where the ratio 1 - eta mu < 0.
    ('fedavg', 2.0), ('mean', 15.0),
])
def test_fednova_by_hand(aggregator, mu, key):
  # With FedProx, tau_i was used where Wang et al. (2020) normalize by
  # ||a_i||_1 = (1 - (1 - eta mu)**tau_i) / (eta mu).
  rows = (1, 3, 6)
  data, local_update, round_fn = _setup(rows, aggregator, fednova=True,
                                        mu=mu)
  state = round_lib.init_server_state({'w': jnp.float32(0.0)}, optax.sgd(1.0))

  new_state, _ = round_fn(state, key)

  clients_key = jax.random.fold_in(key, round_lib._CLIENTS_TAG)
  deltas = []
  for client in range(3):
    examples = jax.tree.map(lambda a: a[client], data.examples)
    result = local_update(state.params, examples, data.num_examples[client],
                          jax.random.fold_in(clients_key, client))
    assert int(result.num_steps) == rows[client]
    deltas.append(float(result.delta['w']))
  weights = np.ones(3) if aggregator == 'mean' else np.array(rows, float)
  weights = weights / weights.sum()
  steps = np.array(rows, float)
  if mu:
    ratio = 1 - 0.1 * mu
    steps = np.array([sum(ratio**k for k in range(n)) for n in rows])
  expected = np.sum(weights * steps) * np.sum(weights * np.array(deltas) / steps)
  np.testing.assert_allclose(float(new_state.params['w']), expected,
                             rtol=1e-5)


def test_fednova_equal_steps_is_plain_average(key):
  rows = (4, 4, 4)
  _, _, plain = _setup(rows, 'mean', fednova=False)
  _, _, nova = _setup(rows, 'mean', fednova=True)
  state = round_lib.init_server_state({'w': jnp.float32(0.0)}, optax.sgd(1.0))

  np.testing.assert_allclose(float(nova(state, key)[0].params['w']),
                             float(plain(state, key)[0].params['w']),
                             rtol=1e-6)


def test_fednova_rejects_median():
  with pytest.raises(ValueError, match='FedNova'):
    _setup((1, 2, 3), 'median', fednova=True)


def test_fednova_rejects_scaffold():
  # The control variates would be built from the rescaled updates.
  data, local_update, _ = _setup((1, 2, 3), 'mean', fednova=False)
  sampler = lambda key: sampling.Cohort(
      jnp.arange(3), jnp.ones(3, bool), jnp.int32(0))
  with pytest.raises(ValueError, match='SCAFFOLD'):
    round_lib.build_round(data, local_update, sampler, optax.sgd(1.0),
                          fednova=True, scaffold_learning_rate=0.1)
