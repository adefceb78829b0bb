"""q-FFL's aggregate against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.aggregation import qffl
from fedjax_med.client import local_training
from fedjax_med.models import tabular


def test_qffl_by_hand():
  # Two clients with updates (1, 0) and (0, 2), losses 0.5 and 2, q = 1,
  # L = 10, and a third, masked client full of NaN.
  updates = {'w': jnp.array([[1.0, 0.0], [0.0, 2.0], [jnp.nan, jnp.nan]])}
  losses = jnp.array([0.5, 2.0, jnp.nan])
  mask = jnp.array([True, True, False])

  result = qffl.qffl_aggregate(updates, losses, mask, q=1.0, lipschitz=10.0)

  # h_k = q F^0 ||L u_k||^2 + L F_k: 100 + 5 = 105 and 400 + 20 = 420.
  # The numerator is sum_k F_k L u_k = (5, 0) + (0, 40).
  np.testing.assert_allclose(result['w'], np.array([5.0, 40.0]) / 525.0,
                             rtol=1e-6)


def test_qffl_zero_q_is_uniform_mean():
  rng = np.random.default_rng(0)
  updates = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  losses = jnp.asarray(rng.uniform(0.1, 2.0, size=5), jnp.float32)
  mask = jnp.array([True, True, False, True, True])

  result = qffl.qffl_aggregate(updates, losses, mask, q=0.0, lipschitz=7.0)

  expected = np.asarray(updates['w'])[np.asarray(mask)].mean(axis=0)
  np.testing.assert_allclose(result['w'], expected, rtol=1e-5)


@pytest.mark.parametrize('q', [0.0, 1.0])
@pytest.mark.parametrize('loss', [np.inf, np.nan, 1e38])
def test_qffl_leaves_out_nonfinite_loss(q, loss):
  # A valid client whose loss is infinite (or whose h overflows) made the
  # step NaN for q = 1.
  updates = {'w': jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])}
  losses = jnp.array([0.5, 2.0, loss], jnp.float32)
  mask = jnp.array([True, True, True])

  result = qffl.qffl_aggregate(updates, losses, mask, q=q, lipschitz=10.0)
  expected = qffl.qffl_aggregate(updates, losses, jnp.array([True, True,
                                                             False]),
                                 q=q, lipschitz=10.0)

  if q == 0.0 and not np.isnan(loss):
    # F^0 = 1 for any loss, so q = 0 stays the uniform mean of all three.
    # A NaN loss is left out for every q.
    np.testing.assert_allclose(result['w'], [4 / 3, 5 / 3], rtol=1e-6)
  elif loss == 1e38:
    # A finite but huge loss gets almost all the weight: the step is
    # L u_3 / (||L u_3||^2 / F_3 + L), about u_3.
    np.testing.assert_allclose(result['w'], [3.0, 3.0], rtol=1e-5)
  else:
    np.testing.assert_allclose(result['w'], expected['w'], rtol=1e-6)


@pytest.mark.parametrize('q, loss_scale', [(50.0, 5.0), (50.0, 6.0),
                                           (100.0, 2.4), (100.0, 0.3)])
def test_qffl_large_q_matches_float64(q, loss_scale):
  # F^q overflowed float32 (NaN steps) or flushed to zero (zero steps).
  rng = np.random.default_rng(0)
  updates = rng.normal(size=(10, 3)) * 0.01
  losses = loss_scale * rng.uniform(0.8, 1.2, size=10)
  lipschitz = 100.0
  steps = lipschitz * updates
  weights = losses**q
  h = q * losses ** (q - 1) * np.sum(steps**2, axis=1) + lipschitz * weights
  expected = (weights[:, None] * steps).sum(0) / h.sum()

  result = qffl.qffl_aggregate(
      {'w': jnp.asarray(updates, jnp.float32)},
      jnp.asarray(losses, jnp.float32), jnp.ones(10, bool), q=q,
      lipschitz=lipschitz)

  np.testing.assert_allclose(result['w'], expected, rtol=1e-3)


@pytest.mark.parametrize('q, lipschitz', [(-1.0, 1.0), (1.0, 0.0)])
def test_qffl_invalid_settings(q, lipschitz):
  with pytest.raises(ValueError):
    qffl.qffl_aggregate({'w': jnp.zeros((2, 1))}, jnp.ones(2),
                        jnp.ones(2, bool), q=q, lipschitz=lipschitz)


def test_initial_loss_is_loss_at_server_params(key):
  model = tabular.from_flax(tabular.LogisticRegression(2), 2)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(9, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, size=9), jnp.int32)
  # Two padding rows full of NaN must not count.
  examples = {'x': jnp.concatenate([x, jnp.full((2, 3), jnp.nan)]),
              'y': jnp.concatenate([y, jnp.zeros(2, jnp.int32)])}
  params = model.init(key, x[:1])
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=3, batch_size=4,
      report_initial_loss=True)

  result = local_update(params, examples, jnp.int32(9), key)

  expected = jnp.mean(tabular.per_example_loss(model.apply(params, x), y, 2))
  np.testing.assert_allclose(result.initial_loss, expected, rtol=1e-6)


def test_initial_loss_infinite_not_nan(key):
  # Padding rows repeat row 0 with weight 0, so an infinite loss of row 0
  # gave 0 * inf = NaN, which reads as "no loss" rather than "too large".
  model = tabular.from_flax(tabular.LogisticRegression(2), 2)
  x = jnp.asarray([[1e30, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]],
                  jnp.float32)
  y = jnp.asarray([0, 1, 0], jnp.int32)
  examples = {'x': jnp.concatenate([x, jnp.zeros((2, 3))]),
              'y': jnp.concatenate([y, jnp.zeros(2, jnp.int32)])}
  params = jax.tree.map(lambda leaf: jnp.full_like(leaf, 1e10),
                        model.init(key, x[:1]))
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=1, batch_size=2,
      report_initial_loss=True)

  result = local_update(params, examples, jnp.int32(3), key)

  assert np.isposinf(float(result.initial_loss))
