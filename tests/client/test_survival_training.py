"""Cox local training on a small synthetic survival table, and its C-index."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import survival_training
from fedjax_med.data import federated
from fedjax_med.evaluation import concordance
from fedjax_med.models import survival
from fedjax_med.simulation import evaluate_survival
from fedjax_med.simulation import round as simulation_round
from fedjax_med.simulation import sampling

NUM_FEATURES = 3
TRUE_COEFFICIENTS = np.array([1.5, -1.0, 0.5], np.float32)


def _table(num_rows, seed=0):
  """Rows with exponential times whose hazard is exp(x @ TRUE_COEFFICIENTS)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_rows, NUM_FEATURES)).astype(np.float32)
  hazard = np.exp(x @ TRUE_COEFFICIENTS)
  event_time = rng.exponential(1.0 / hazard)
  censor_time = rng.exponential(2.0, size=num_rows)
  return {
      'x': x,
      'time': np.minimum(event_time, censor_time).astype(np.float32),
      'event': (event_time <= censor_time).astype(np.int32),
  }


def _pad(table, num_padding, value):
  """Append padding rows filled with `value`, which must never be read.

  Integer columns (`event`) get 7 instead, an invalid event indicator.
  """
  padded = {}
  for name, column in table.items():
    fill = value if column.dtype.kind == 'f' else 7
    filler = np.full((num_padding,) + column.shape[1:], fill, column.dtype)
    padded[name] = jnp.asarray(np.concatenate([column, filler]))
  return padded


def _params(seed=1):
  """Nonzero starting params, so the gradient is not that of equal risks."""
  model = survival_training.cox_model(jax.nn.initializers.normal(0.5))
  return model, model.init(jax.random.key(seed), jnp.zeros((1, NUM_FEATURES)))


def _full_loss(model, params, table):
  risk = survival_training.log_risk(model, params, jnp.asarray(table['x']))
  return survival.cox_partial_likelihood_loss(
      risk, table['time'], table['event']
  )


def test_loss_decreases_over_steps(key):
  table = _table(40)
  model, params = _params()
  local_update = survival_training.build_survival_local_update(
      model, optax.sgd(0.1), num_steps=60, batch_size=40
  )

  result = jax.jit(local_update)(params, _pad(table, 0, 0.0), 40, key)
  trained = optax.apply_updates(params, result.delta)

  assert int(result.num_steps) == 60
  assert float(_full_loss(model, trained, table)) < float(
      _full_loss(model, params, table)
  ) - 0.1


def test_loss_decreases_with_minibatches(key):
  table = _table(40)
  model, params = _params()
  local_update = survival_training.build_survival_local_update(
      model, optax.adam(0.05), num_steps=100, batch_size=8
  )

  result = local_update(params, _pad(table, 0, 0.0), 40, key)
  trained = optax.apply_updates(params, result.delta)

  assert float(_full_loss(model, trained, table)) < float(
      _full_loss(model, params, table)
  )


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_full_batch_step_is_gradient(key, jit):
  table = _table(12)
  model, params = _params()
  local_update = survival_training.build_survival_local_update(
      model, optax.sgd(1.0), num_steps=1, batch_size=12
  )
  if jit:
    local_update = jax.jit(local_update)

  result = local_update(params, _pad(table, 0, 0.0), 12, key)
  grads = jax.grad(_full_loss, argnums=1)(model, params, table)

  np.testing.assert_allclose(
      result.delta['params']['Dense_0']['kernel'],
      -grads['params']['Dense_0']['kernel'],
      rtol=1e-5, atol=1e-6,
  )
  np.testing.assert_allclose(
      result.loss, _full_loss(model, params, table), rtol=1e-6
  )


def test_rows_normalization_scales_gradient(key):
  table = _table(12)
  num_events = int(table['event'].sum())
  model, params = _params()
  local_update = survival_training.build_survival_local_update(
      model, optax.sgd(1.0), num_steps=1, batch_size=12,
      loss_normalization='rows',
  )

  result = local_update(params, _pad(table, 0, 0.0), 12, key)
  grads = jax.grad(_full_loss, argnums=1)(model, params, table)

  assert 0 < num_events < 12
  np.testing.assert_allclose(
      result.delta['params']['Dense_0']['kernel'],
      -grads['params']['Dense_0']['kernel'] * num_events / 12,
      rtol=1e-5, atol=1e-6,
  )


@pytest.mark.parametrize('padding_value', [0.0, 1e6, np.nan])
def test_padding_rows_ignored(key, padding_value):
  table = _table(13)
  model, params = _params()
  # 13 rows in batches of 4: the last batch of each epoch has 3 valid rows
  # and one filler slot.
  local_update = jax.jit(
      survival_training.build_survival_local_update(
          model, optax.sgd(0.1), num_steps=9, batch_size=4
      )
  )

  unpadded = local_update(params, _pad(table, 0, 0.0), 13, key)
  padded = local_update(params, _pad(table, 7, padding_value), 13, key)

  np.testing.assert_allclose(
      padded.delta['params']['Dense_0']['kernel'],
      unpadded.delta['params']['Dense_0']['kernel'],
      rtol=1e-6, atol=1e-7,
  )
  np.testing.assert_allclose(padded.loss, unpadded.loss, rtol=1e-6)
  assert np.all(np.isfinite(padded.delta['params']['Dense_0']['kernel']))


def test_invalid_rows_do_not_count():
  table = {name: jnp.asarray(column) for name, column in _table(10).items()}
  model, params = _params()
  valid = jnp.arange(10) < 6
  garbage = {
      'x': table['x'].at[6:].set(1e3),
      'time': table['time'].at[6:].set(-5.0),
      'event': table['event'].at[6:].set(1),
  }
  first_six = {name: column[:6] for name, column in table.items()}

  masked = survival_training.batch_cox_loss(model, params, garbage, valid)
  expected = _full_loss(model, params, first_six)

  np.testing.assert_allclose(masked, expected, rtol=1e-6)


def test_zero_example_client_no_step(key):
  model, params = _params()
  local_update = survival_training.build_survival_local_update(
      model, optax.sgd(0.1), num_steps=5, batch_size=4
  )

  result = local_update(params, _pad(_table(0), 4, 0.0), 0, key)

  assert int(result.num_steps) == 0
  assert np.all(np.asarray(result.delta['params']['Dense_0']['kernel']) == 0)


def test_column_output_is_squeezed():
  model = survival_training.cox_model()
  params = model.init(jax.random.key(0), jnp.zeros((1, NUM_FEATURES)))
  column_model = model._replace(
      apply=lambda p, x: model.apply(p, x)[:, None]
  )

  risk = survival_training.log_risk(column_model, params, jnp.ones((5, 3)))

  assert risk.shape == (5,)


@pytest.mark.parametrize(
    'settings',
    [
        {'num_steps': 0},
        {'batch_size': 0},
        {'num_epochs': 0},
        {'num_steps': 2.5},
        {'batch_size': True},
        {'num_epochs': 2.0},
        {'proximal_mu': -1.0},
        {'loss_normalization': 'patients'},
    ],
    ids=['steps', 'batch', 'epochs', 'float_steps', 'bool_batch',
         'float_epochs', 'mu', 'normalization'],
)
def test_invalid_settings_raise(settings):
  model = survival_training.cox_model()
  arguments = {'num_steps': 5, 'batch_size': 4} | settings

  with pytest.raises(ValueError):
    survival_training.build_survival_local_update(
        model, optax.sgd(0.1), **arguments
    )


def test_missing_time_raises(key):
  model, params = _params()
  local_update = survival_training.build_survival_local_update(
      model, optax.sgd(0.1), num_steps=2, batch_size=4
  )
  examples = {'x': jnp.zeros((6, 3)), 'y': jnp.zeros(6, jnp.int32)}

  with pytest.raises(ValueError, match='lack'):
    local_update(params, examples, 6, key)


# Evaluation by C-index, `simulation.evaluate_survival`.


def _test_data():
  """Three clients: two with events, one whose patients are all censored."""
  clients = [_table(15, seed=2), _table(9, seed=3), _table(5, seed=4)]
  clients[2]['event'][:] = 0
  return clients, federated.stack_clients(clients)


def test_evaluate_matches_concordance():
  clients, test_data = _test_data()
  model, params = _params()
  evaluate = evaluate_survival.build_evaluate_survival(model, test_data)

  scores = evaluate(params)

  for index in (0, 1):
    risk = survival_training.log_risk(
        model, params, jnp.asarray(clients[index]['x'])
    )
    expected = concordance.concordance_index(
        np.asarray(risk), clients[index]['time'], clients[index]['event']
    )
    assert scores.c_index[index] == pytest.approx(expected.c_index)
    assert scores.num_comparable[index] == expected.num_comparable
    assert scores.reasons[index] is None


def test_evaluate_censored_client_nan():
  _, test_data = _test_data()
  model, params = _params()

  scores = evaluate_survival.build_evaluate_survival(model, test_data)(params)

  assert np.isnan(scores.c_index[2])
  assert 'no patient has an observed event' in scores.reasons[2]
  assert scores.mean_c_index == pytest.approx(np.mean(scores.c_index[:2]))


def test_evaluate_rejects_nan_feature():
  # A NaN covariate gave a NaN risk, reported as diverged training, and
  # the pooled C-index of every client became NaN.
  clients = [_table(15, seed=2), _table(9, seed=3)]
  clients[1]['x'][4, 0] = np.nan
  model, _ = _params()
  with pytest.raises(ValueError, match=(
      "Client 1 has nan in row 4 of `test_data.examples\\['x'\\]`")):
    evaluate_survival.build_evaluate_survival(
        model, federated.stack_clients(clients))


@pytest.mark.parametrize('field, value, message', [
    # Finite in float64, 1e39 gave an infinite risk reported as diverged
    # training.
    ('x', 1e39, 'Client 0 has 1e[+]39 in row 2'),
    ('time', 'soon', "`test_data.examples\\['time'\\]` has dtype object"),
])
def test_evaluate_rejects_values_as_training_does(field, value, message):
  clients = [_table(15, seed=2), _table(9, seed=3)]
  if isinstance(value, str):
    clients[0][field] = clients[0][field].astype(object)
    clients[1][field] = clients[1][field].astype(object)
    clients[0][field][2] = value
  elif clients[0][field].ndim == 2:
    for client in clients:
      client[field] = client[field].astype(np.float64)
    clients[0][field][2, 1] = value
  else:
    clients[0][field][2] = value
  model, _ = _params()
  with pytest.raises(ValueError, match=message):
    evaluate_survival.build_evaluate_survival(
        model, federated.stack_clients(clients))


def test_evaluate_pooled_rows():
  clients, test_data = _test_data()
  model, params = _params()

  scores = evaluate_survival.build_evaluate_survival(model, test_data)(params)

  pooled = {
      name: np.concatenate([client[name] for client in clients])
      for name in clients[0]
  }
  risk = survival_training.log_risk(model, params, jnp.asarray(pooled['x']))
  expected = concordance.concordance_index(
      np.asarray(risk), pooled['time'], pooled['event']
  )
  assert scores.pooled_c_index == pytest.approx(expected.c_index)
  assert scores.pooled_reason is None
  assert scores.log_risk.shape == (3, 15)


def test_evaluate_diverged_model_nan():
  _, test_data = _test_data()
  model, params = _params()
  params = jax.tree.map(lambda leaf: jnp.full_like(leaf, jnp.nan), params)

  scores = evaluate_survival.build_evaluate_survival(model, test_data)(params)

  assert np.all(np.isnan(scores.c_index))
  assert 'NaN or infinite risk' in scores.reasons[0]
  assert np.isnan(scores.mean_c_index)


def test_evaluate_requires_time():
  model = survival_training.cox_model()
  test_data = federated.stack_clients([{'x': np.zeros((3, 3), np.float32)}])

  with pytest.raises(ValueError, match='time'):
    evaluate_survival.build_evaluate_survival(model, test_data)


def test_evaluate_client_without_rows():
  # numpy cannot reshape 0 rows to (0, -1), so the evaluator raised before
  # concordance_index could report that the client has no rows.
  clients = [_table(15, seed=2), {name: column[:0] for name, column in
                                  _table(3, seed=3).items()}]
  model, params = _params()

  scores = evaluate_survival.build_evaluate_survival(
      model, federated.stack_clients(clients))(params)

  assert np.isnan(scores.c_index[1])
  assert scores.reasons[1] == 'there are no real rows'
  assert scores.mean_c_index == scores.c_index[0]


@pytest.mark.parametrize('field, value, message', [
    # The Cox loss counted -1 ("unknown") and 2 as deaths.
    ('event', -1, "event -1 in row 3 of `train_data.examples\\['event'\\]`"),
    ('event', 2, 'event 2 in row 3'),
    ('time', -5.0, 'time -5.0 in row 3'),
])
def test_round_rejects_invalid_survival_rows(key, field, value, message):
  clients = [_table(8, seed=2), _table(6, seed=3)]
  clients[1][field][3] = value
  data = federated.stack_clients(clients)
  update = survival_training.build_survival_local_update(
      survival_training.cox_model(), optax.sgd(0.1), num_steps=2,
      batch_size=4)
  sampler = sampling.uniform_sampler(2, 2)

  with pytest.raises(ValueError, match=f'Client 1 has {message}'):
    simulation_round.build_round(data, update, sampler, optax.sgd(1.0))
  with pytest.raises(ValueError, match='Client 1 has'):
    evaluate_survival.build_evaluate_survival(
        survival_training.cox_model(), data)
