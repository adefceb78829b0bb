"""Analytic record recovery from logistic-regression gradients and updates.

Every check runs on Fed-Heart-Disease train rows (486 patients, 13 z-scored
features) and a randomly initialized `LogisticRegression`. A relative error
above `FAILED` counts as a failed recovery. Single-patient recovery is exact
to about 1e-6, while the estimate from 2 or more patients is 0.38 or more
from its nearest record (measured in `test_several_patients_hide_every_record`
on 32 clients per size), so 0.1 has a margin on both sides.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data.heart_disease import load_heart_disease
from fedjax_med.errors import InputError
from fedjax_med.leakage import analytic
from fedjax_med.models import tabular
from fedjax_med.privacy.clipping import clip_update
from fedjax_med.privacy.noise import add_gaussian_noise

FAILED = 0.1
LEARNING_RATE = 0.1
NUM_CLIENTS = 32


@functools.lru_cache(maxsize=1)
def _heart_rows():
  data = load_heart_disease()
  clients = [data.train.client(i) for i in range(data.num_clients)]
  x = np.concatenate([client['x'] for client in clients])
  y = np.concatenate([client['y'] for client in clients])
  return x, y


def _model():
  return tabular.from_flax(tabular.LogisticRegression(num_classes=2), 2)


@functools.lru_cache(maxsize=1)
def _params():
  x, _ = _heart_rows()
  return _model().init(jax.random.key(1), jnp.asarray(x[:1]))


def _gradient(params, x, y, model=None):
  """Mean-loss gradient of a batch, `x [batch, 13]`, `y [batch]`."""
  model = model or _model()

  def loss(p):
    logits = model.apply(p, x)
    return jnp.mean(tabular.per_example_loss(logits, y, model.num_classes))

  return jax.grad(loss)(params)


def _sgd_update(model, params, x, y, num_steps):
  """Return the update of `num_steps` plain SGD steps on one batch."""
  gradient = jax.jit(functools.partial(_gradient, model=model))
  trained = params
  for _ in range(num_steps):
    grads = gradient(trained, x, y)
    trained = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, trained, grads)
  return jax.tree.map(jnp.subtract, trained, params)


def _client_rows(num_patients, seed=0):
  """Draw `NUM_CLIENTS` clients of `num_patients` distinct train rows each.

  Returns:
    `(records [clients, num_patients, 13], labels [clients, num_patients])`.
  """
  x, y = _heart_rows()
  rng = np.random.default_rng(seed)
  rows = np.stack([
      rng.choice(x.shape[0], num_patients, replace=False)
      for _ in range(NUM_CLIENTS)
  ])
  return jnp.asarray(x[rows]), jnp.asarray(y[rows])


@functools.lru_cache(maxsize=None)
def _client_updates(num_patients, num_steps, sgd_batch_size=None):
  """FedAvg updates of `NUM_CLIENTS` clients of `num_patients` patients each.

  Each client takes `num_steps` plain SGD steps on minibatches of
  `sgd_batch_size` patients (default: all of them).

  Returns:
    `(updates, records [clients, num_patients, 13], labels [clients,
    num_patients])`, the updates from `client.local_training`.
  """
  records, labels = _client_rows(num_patients)
  examples = {'x': records, 'y': labels}
  local_update = local_training.build_local_update(
      _model(), optax.sgd(LEARNING_RATE), num_steps=num_steps,
      batch_size=sgd_batch_size or num_patients)
  result = jax.jit(jax.vmap(local_update, in_axes=(None, 0, 0, 0)))(
      _params(), examples, jnp.full((NUM_CLIENTS,), num_patients),
      jax.random.split(jax.random.key(2), NUM_CLIENTS))
  return result.delta, records, labels


@jax.jit
def _one_step_updates(params, records, labels):
  """Updates of one plain SGD step on each client's mean gradient."""
  gradients = jax.vmap(_gradient, in_axes=(None, 0, 0))(
      params, records, labels)
  return jax.tree.map(lambda g: -LEARNING_RATE * g, gradients)


@jax.jit
def _errors(updates, records):
  x_hat, _ = jax.vmap(analytic.recover_from_update)(updates)
  return jax.vmap(analytic.record_error)(x_hat, records)


@pytest.mark.parametrize('label', [0, 1])
def test_gradient_gives_exact_record(label):
  x, y = _heart_rows()
  row = int(np.flatnonzero(y == label)[0])
  record = jnp.asarray(x[row])
  grads = _gradient(_params(), record[None, :], jnp.asarray(y[row:row + 1]))
  dense = grads['params']['Dense_0']

  x_hat = analytic.recover_inputs(dense['kernel'], dense['bias'])
  x_max_unit = analytic.recover_inputs(
      dense['kernel'], dense['bias'], method='largest_bias')

  np.testing.assert_allclose(x_hat, record, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(x_max_unit, record, rtol=1e-5, atol=1e-6)
  assert int(analytic.recover_label_binary(dense['bias'])) == label


@pytest.mark.parametrize('label', [0, 1])
def test_five_step_update_gives_exact_record(label):
  x, y = _heart_rows()
  row = int(np.flatnonzero(y == label)[3])
  update = _sgd_update(_model(), _params(), jnp.asarray(x[row:row + 1]),
                       jnp.asarray(y[row:row + 1]), num_steps=5)

  x_hat, label_hat = analytic.recover_from_update(update)

  np.testing.assert_allclose(x_hat, x[row], rtol=1e-5, atol=1e-6)
  assert int(label_hat) == label


def test_update_label_sign_is_flipped():
  # The same bias entry reads as a gradient and as an update of opposite
  # sign, so the gradient rule applied to an update gives the wrong label.
  x, y = _heart_rows()
  row = int(np.flatnonzero(y == 1)[0])
  grads = _gradient(_params(), jnp.asarray(x[row:row + 1]),
                    jnp.asarray(y[row:row + 1]))
  update = jax.tree.map(lambda g: -LEARNING_RATE * g, grads)

  _, from_update = analytic.recover_from_update(update)
  naive = analytic.recover_label_binary(
      update['params']['Dense_0']['bias'])

  assert int(from_update) == 1
  assert int(naive) == 0


def test_vmap_recovers_every_single_patient():
  updates, records, labels = _client_updates(1, num_steps=5)

  x_hat, label_hat = jax.vmap(analytic.recover_from_update)(updates)

  np.testing.assert_allclose(x_hat, records[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(label_hat, labels[:, 0])
  errors = jax.vmap(analytic.record_error)(x_hat, records)
  assert float(jnp.max(errors)) < 1e-5


@pytest.mark.parametrize('num_patients', [2, 4, 8, 16, 32])
def test_several_patients_hide_every_record(num_patients):
  # Median / minimum relative error over the 32 clients, one SGD step on the
  # mean gradient of B patients (measured with these seeds):
  #   B=1: 4.6e-08 / 2.6e-08   B=2: 0.70 / 0.38   B=4: 1.1 / 0.49
  #   B=8: 1.0 / 0.49          B=16: 0.91 / 0.45  B=32: 0.80 / 0.57
  records, labels = _client_rows(num_patients)

  errors = _errors(_one_step_updates(_params(), records, labels), records)

  assert float(errors.min()) > FAILED


def test_one_epoch_of_single_steps_hides_records():
  # 16 SGD steps of one patient each: every step's update is a multiple of
  # [x_i, 1] at different params, so the ratio is again a weighted mean.
  updates, records, _ = _client_updates(16, num_steps=16, sgd_batch_size=1)

  errors = _errors(updates, records)

  assert float(errors.min()) > FAILED


def test_softmax_label_is_only_negative_entry():
  model = tabular.from_flax(tabular.LogisticRegression(num_classes=4), 4)
  x, _ = _heart_rows()
  record = jnp.asarray(x[:1])
  params = model.init(jax.random.key(4), record)

  gradient = jax.jit(functools.partial(_gradient, model=model))

  for label in range(4):
    grads = gradient(params, record, jnp.asarray([label]))
    update = jax.tree.map(lambda g: -LEARNING_RATE * g, grads)
    bias = grads['params']['Dense_0']['bias']

    x_hat, label_hat = analytic.recover_from_update(update)

    assert int(analytic.recover_label_softmax(bias)) == label
    assert int(label_hat) == label
    np.testing.assert_allclose(x_hat, x[0], rtol=1e-5, atol=1e-6)


def test_mlp_first_layer_and_label():
  model = tabular.from_flax(tabular.MLP(num_classes=2, hidden_sizes=(8,)), 2)
  x, y = _heart_rows()
  row = int(np.flatnonzero(y == 1)[0])
  params = model.init(jax.random.key(5), jnp.asarray(x[:1]))
  update = _sgd_update(model, params, jnp.asarray(x[row:row + 1]),
                       jnp.asarray(y[row:row + 1]), num_steps=3)

  x_hat, label_hat = analytic.recover_from_update(update)

  np.testing.assert_allclose(x_hat, x[row], rtol=1e-4, atol=1e-5)
  assert int(label_hat) == 1


def test_noise_multiplier_stops_recovery():
  # Every update's norm (0.33 or more) exceeds `clip_norm`, so each one is
  # clipped to norm `clip_norm` and the error depends only on the
  # multiplier. Median / minimum / maximum relative error over the 32
  # clients (measured with these seeds):
  #   0.001: 0.0042 / 0.0022 / 0.012    0.01: 0.042 / 0.022 / 0.11
  #   0.03: 0.12 / 0.063 / 0.27         0.1: 0.40 / 0.19 / 1.5
  #   1.0: 1.7 / 0.86 / 34
  # 0.1 is the smallest multiplier of (0.01, 0.1, 1.0) at which most
  # clients' records are not recovered.
  clip_norm = 0.1
  updates, records, _ = _client_updates(1, num_steps=5)
  norms = jax.vmap(lambda u: clip_update(u, None).norm)(updates)
  assert float(jnp.min(norms)) > clip_norm
  keys = jax.random.split(jax.random.key(7), NUM_CLIENTS)

  @jax.jit
  def errors_at(multiplier):
    def privatize(update, key):
      clipped = clip_update(update, clip_norm).update
      return add_gaussian_noise(clipped, multiplier * clip_norm, key=key)

    return _errors(jax.vmap(privatize)(updates, keys), records)

  weak = np.asarray(errors_at(0.001))
  borderline = np.asarray(errors_at(0.01))
  strong = np.asarray(errors_at(0.1))

  assert weak.max() < FAILED
  assert np.mean(borderline < FAILED) >= 0.75
  assert strong.min() > FAILED


def test_record_error_skips_padding_and_nan():
  records = jnp.asarray([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
  mask = jnp.asarray([True, True, False])

  exact = analytic.record_error(jnp.asarray([5.0, 5.0]), records)
  masked = analytic.record_error(jnp.asarray([5.0, 5.0]), records, mask)
  undefined = analytic.record_error(jnp.asarray([jnp.nan, 0.0]), records)

  assert float(exact) == 0.0
  assert float(masked) > 1.0
  assert float(undefined) == np.inf


def test_zero_bias_gradient_gives_nan():
  x_hat = analytic.recover_inputs(jnp.zeros((3, 2)), jnp.zeros((2,)))

  assert bool(jnp.all(jnp.isnan(x_hat)))


def test_rejects_params_without_dense_layer():
  with pytest.raises(InputError, match='Dense_0'):
    analytic.recover_from_update({'params': {'Conv_0': {'kernel': 1.0}}})


def test_rejects_unknown_method():
  with pytest.raises(InputError, match="'ratio'"):
    analytic.recover_inputs(jnp.zeros((3, 2)), jnp.ones((2,)), method='ratio')


def test_rejects_layers_with_other_names():
  update = {'params': {
      'Dense_0': {'kernel': jnp.ones((3, 8)), 'bias': jnp.ones((8,))},
      'head': {'kernel': jnp.ones((8, 3)), 'bias': jnp.ones((3,))},
  }}
  with pytest.raises(InputError, match=r"\['head'\]"):
    analytic.recover_from_update(update)


def test_record_error_of_no_records_is_inf():
  assert float(analytic.record_error(jnp.ones(3), jnp.ones((0, 3)))) == np.inf


def test_record_error_rejects_feature_mismatch():
  with pytest.raises(InputError, match=r'\[records, 3\]'):
    analytic.record_error(jnp.ones(3), jnp.ones((2, 4)))


def test_binary_label_rejects_several_logits():
  with pytest.raises(InputError, match='recover_label_softmax'):
    analytic.recover_label_binary(jnp.array([1.0, -1.0]))


def test_rejects_params_without_dense_0():
  update = {'Dense_1': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}

  with pytest.raises(InputError, match='Dense_0'):
    analytic.recover_from_update(update)


def test_rejects_gap_between_dense_layers():
  update = {
      'Dense_0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
      'Dense_2': {'kernel': jnp.ones((4, 2)), 'bias': jnp.ones(2)},
  }

  with pytest.raises(InputError, match=r"\['Dense_0', 'Dense_2'\]"):
    analytic.recover_from_update(update)


@pytest.mark.parametrize('shape', [(2, 3), (1,), ()])
def test_softmax_label_rejects_bad_shape(shape):
  with pytest.raises(InputError, match=re.escape(f'got shape {shape}')):
    analytic.recover_label_softmax(jnp.zeros(shape))
