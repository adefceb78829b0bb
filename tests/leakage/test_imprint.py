"""The imprint attack of a malicious server on summed client gradients.

The private records are 64 Fed-Heart-Disease train rows, split over 8
clients of 8. The server's public data is the test split of all four
hospitals (249 rows), which it uses only to place the bin thresholds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data.heart_disease import load_heart_disease
from fedjax_med.errors import InputError
from fedjax_med.leakage import analytic
from fedjax_med.leakage import imprint
from fedjax_med.models import tabular

NUM_BINS = 128
NUM_CLIENTS = 8
RECORDS_PER_CLIENT = 8
# Float32 recovery of a record alone in its bin is exact to about 3e-6.
EXACT = 1e-4
# The mean of several records is 0.2 or more from its nearest record.
FAILED = 0.1


@functools.lru_cache(maxsize=1)
def _heart():
  data = load_heart_disease()
  train = [data.train.client(i) for i in range(data.num_clients)]
  test = [data.test.client(i) for i in range(data.num_clients)]
  x = np.concatenate([client['x'] for client in train])
  y = np.concatenate([client['y'] for client in train])
  public = np.concatenate([client['x'] for client in test])
  return x, y, public


def _client_records(seed=0):
  """Return `x [clients, records, 13]` and `y [clients, records]`."""
  x, y, _ = _heart()
  rows = np.random.default_rng(seed).choice(
      x.shape[0], NUM_CLIENTS * RECORDS_PER_CLIENT, replace=False)
  rows = rows.reshape(NUM_CLIENTS, RECORDS_PER_CLIENT)
  return jnp.asarray(x[rows]), jnp.asarray(y[rows])


def _attack_setup(num_classes=2):
  """Return `(model, params, measurement, thresholds)` of the server."""
  _, _, public = _heart()
  measurement = imprint.random_measurement(jax.random.key(5), 13)
  thresholds = imprint.imprint_thresholds(
      public @ np.asarray(measurement), NUM_BINS)
  params = imprint.make_imprint_params(
      jax.random.key(6), measurement, thresholds, num_classes)
  return (imprint.imprint_model(NUM_BINS, num_classes), params, measurement,
          thresholds)


@functools.partial(jax.jit, static_argnums=0)
def _summed_gradient(model, params, x, y):
  """Sum over clients of each client's mean-loss gradient."""

  def loss(p, client_x, client_y):
    logits = model.apply(p, client_x)
    return jnp.mean(
        tabular.per_example_loss(logits, client_y, model.num_classes))

  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)
  return jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)


def _bin_occupancy(records, measurement, thresholds):
  """Return each record's bin and the number of records in each bin."""
  bins = np.asarray(imprint.assign_bins(
      records @ measurement, jnp.asarray(thresholds)))
  counts = np.bincount(bins[bins >= 0], minlength=NUM_BINS)
  return bins, counts


def test_aggregate_recovers_lone_records():
  model, params, measurement, thresholds = _attack_setup()
  x, y = _client_records()
  records = x.reshape(-1, 13)
  bins, counts = _bin_occupancy(records, measurement, thresholds)
  alone = (bins >= 0) & (counts[bins] == 1)

  grads = _summed_gradient(model, params, x, y)['params']['Dense_0']
  candidates, non_empty = imprint.recover_from_imprint(
      grads['kernel'], grads['bias'])
  errors = np.asarray(imprint.match_records(candidates, records))
  recovered = errors < EXACT

  # Measured: 35 of the 64 records are alone in their bin and recovered.
  assert recovered.mean() >= 0.25
  np.testing.assert_array_equal(recovered, alone)
  np.testing.assert_array_equal(non_empty, counts > 0)


def test_mixed_and_empty_bins_match_nothing():
  model, params, measurement, thresholds = _attack_setup()
  x, y = _client_records()
  records = x.reshape(-1, 13)
  _, counts = _bin_occupancy(records, measurement, thresholds)

  grads = _summed_gradient(model, params, x, y)['params']['Dense_0']
  candidates, _ = imprint.recover_from_imprint(grads['kernel'], grads['bias'])
  candidate_errors = np.asarray(jax.vmap(
      lambda c: analytic.record_error(c, records))(candidates))

  assert np.sum(counts > 1) > 0
  assert np.all(candidate_errors[counts > 1] > FAILED)
  assert np.all(np.isnan(np.asarray(candidates)[counts == 0]))
  assert np.all(candidate_errors[counts == 1] < EXACT)


def test_fedavg_weighted_updates_recover_records():
  # Clients of 2 to 16 records each take one SGD step, and the server
  # averages their updates weighted by example count, as FedAvg does.
  model, params, measurement, thresholds = _attack_setup()
  x_all, y_all, _ = _heart()
  sizes = np.asarray([2, 4, 6, 8, 10, 12, 14, 16])
  rows = np.random.default_rng(1).choice(
      x_all.shape[0], int(sizes.sum()), replace=False)
  padded_x = np.zeros((sizes.size, sizes.max(), 13), np.float32)
  padded_y = np.zeros((sizes.size, sizes.max()), np.int32)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  for client, (start, size) in enumerate(zip(starts, sizes)):
    padded_x[client, :size] = x_all[rows[start:start + size]]
    padded_y[client, :size] = y_all[rows[start:start + size]]
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=1, batch_size=int(sizes.max()))
  deltas = jax.vmap(local_update, in_axes=(None, 0, 0, 0))(
      params, {'x': jnp.asarray(padded_x), 'y': jnp.asarray(padded_y)},
      jnp.asarray(sizes), jax.random.split(jax.random.key(8), sizes.size)
  ).delta
  weights = jnp.asarray(sizes / sizes.sum(), jnp.float32)
  average = jax.tree.map(
      lambda d: jnp.tensordot(weights, d, axes=1), deltas)['params']['Dense_0']

  records = jnp.asarray(x_all[rows])
  bins, counts = _bin_occupancy(records, measurement, thresholds)
  alone = (bins >= 0) & (counts[bins] == 1)
  candidates, _ = imprint.recover_from_imprint(
      average['kernel'], average['bias'])
  errors = np.asarray(imprint.match_records(candidates, records))

  assert alone.sum() >= 0.25 * records.shape[0]
  assert np.all(errors[alone] < EXACT)
  assert np.all(errors[~alone] > FAILED)


def test_small_gain_keeps_update_digits():
  # The float32 FedAvg update (trained minus sent params) keeps only the
  # digits of the gradient that the params leave. The docstring of
  # `make_imprint_params` quotes these errors.
  model, _, measurement, thresholds = _attack_setup()
  x, y = _client_records()
  records = x.reshape(-1, 13)
  bins, counts = _bin_occupancy(records, measurement, thresholds)
  alone = (bins >= 0) & (counts[bins] == 1)
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=1, batch_size=records.shape[0])

  worst = {}
  for gain in (1.0, 1e-3):
    params = imprint.make_imprint_params(
        jax.random.key(6), measurement, thresholds, 2, gain=gain)
    update = local_update(
        params, {'x': records, 'y': y.reshape(-1)}, records.shape[0],
        jax.random.key(8)).delta['params']['Dense_0']
    candidates, _ = imprint.recover_from_imprint(
        update['kernel'], update['bias'])
    errors = np.asarray(imprint.match_records(candidates, records))
    worst[gain] = float(errors[alone].max())

  # Measured: 0.20 at gain 1 and 1.7e-6 at gain 1e-3, on 35 lone records.
  assert worst[1.0] > 1e-2
  assert worst[1e-3] < 1e-5


def test_softmax_output_recovers_records():
  model, params, measurement, thresholds = _attack_setup(num_classes=4)
  x, y = _client_records()
  records = x.reshape(-1, 13)
  bins, counts = _bin_occupancy(records, measurement, thresholds)
  alone = (bins >= 0) & (counts[bins] == 1)

  grads = _summed_gradient(model, params, x, y)['params']['Dense_0']
  candidates, _ = imprint.recover_from_imprint(grads['kernel'], grads['bias'])
  errors = np.asarray(imprint.match_records(candidates, records))

  np.testing.assert_array_equal(errors < EXACT, alone)


def test_honest_analytic_attack_recovers_none():
  x, y = _client_records()
  records = x.reshape(-1, 13)
  model = tabular.from_flax(tabular.LogisticRegression(num_classes=2), 2)
  params = model.init(jax.random.key(1), x[0])
  imprint_model, imprint_params, _, _ = _attack_setup()

  honest = _summed_gradient(model, params, x, y)['params']['Dense_0']
  crafted = _summed_gradient(
      imprint_model, imprint_params, x, y)['params']['Dense_0']
  honest_error = analytic.record_error(
      analytic.recover_inputs(honest['kernel'], honest['bias']), records)
  crafted_error = analytic.record_error(
      analytic.recover_inputs(crafted['kernel'], crafted['bias']), records)

  assert float(honest_error) > FAILED
  assert float(crafted_error) > FAILED


def test_params_shapes_and_shared_rows():
  _, params, measurement, thresholds = _attack_setup()
  layers = params['params']

  kernel = np.asarray(layers['Dense_0']['kernel'])
  np.testing.assert_allclose(
      kernel, np.tile(1e-3 * np.asarray(measurement)[:, None], (1, NUM_BINS)),
      rtol=1e-6)
  np.testing.assert_allclose(
      layers['Dense_0']['bias'], -1e-3 * thresholds, rtol=1e-6)
  output = np.asarray(layers['Dense_1']['kernel'])
  assert output.shape == (NUM_BINS, 1)
  assert np.all(output == output[0])
  assert float(np.abs(output[0, 0])) > 0


def test_gain_leaves_logits_unchanged():
  model, params, measurement, thresholds = _attack_setup()
  unit_gain = imprint.make_imprint_params(
      jax.random.key(6), measurement, thresholds, 2, gain=1.0)
  x, _ = _client_records()
  records = x.reshape(-1, 13)

  logits = model.apply(params, records)
  unit_gain_logits = model.apply(unit_gain, records)

  np.testing.assert_allclose(logits, unit_gain_logits, rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(logits))) < 1.0


def test_thresholds_split_public_data_evenly():
  _, _, public = _heart()
  measurements = public @ np.asarray(
      imprint.random_measurement(jax.random.key(5), 13))

  thresholds = imprint.imprint_thresholds(measurements, 8)
  bins = np.asarray(imprint.assign_bins(
      jnp.asarray(measurements, jnp.float32), jnp.asarray(thresholds)))
  counts = np.bincount(bins, minlength=8)

  assert thresholds.shape == (8,)
  assert np.all(np.diff(thresholds) > 0)
  assert thresholds[0] < measurements.min()
  assert counts.min() >= 30
  assert counts.max() <= 33


def test_thresholds_reject_one_bin():
  with pytest.raises(InputError, match='num_bins must be at least 2 and an integer; got 1'):
    imprint.imprint_thresholds(np.arange(10.0), 1)


def test_thresholds_reject_too_few_distinct_values():
  with pytest.raises(InputError, match='too few distinct values for 8'):
    imprint.imprint_thresholds(np.asarray([0.0, 0.0, 0.0, 1.0]), 8)


def test_params_reject_unsorted_thresholds():
  with pytest.raises(InputError, match='strictly increasing.*index 1'):
    imprint.make_imprint_params(
        jax.random.key(0), np.ones(3), np.asarray([0.0, 1.0, 1.0]), 2)


def test_params_reject_zero_gain():
  with pytest.raises(InputError, match='gain must be positive; got 0'):
    imprint.make_imprint_params(
        jax.random.key(0), np.ones(3), np.asarray([0.0, 1.0]), 2, gain=0.0)


def test_params_reject_zero_measurement():
  with pytest.raises(InputError, match='all zeros'):
    imprint.make_imprint_params(
        jax.random.key(0), np.zeros(3), np.asarray([0.0, 1.0]), 2)


def test_thresholds_reject_fractional_bins():
  with pytest.raises(InputError, match='got 2.5'):
    imprint.imprint_thresholds(np.arange(10.0), 2.5)


@pytest.mark.parametrize('rtol', [-1.0, float('nan'), float('inf')])
def test_recovery_rejects_invalid_rtol(rtol):
  with pytest.raises(InputError, match=f'got {rtol!r}'):
    imprint.recover_from_imprint(jnp.ones((3, 4)), jnp.ones(4), rtol=rtol)
