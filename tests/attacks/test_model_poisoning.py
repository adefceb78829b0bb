"""Model-poisoning attacks: only malicious rows change, by the stated rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.attacks import model_poisoning

UPDATES = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])}
MALICIOUS = jnp.array([False, False, False, True])
HONEST = ~MALICIOUS


def test_sign_flip_malicious_only():
  result = model_poisoning.sign_flip(UPDATES, MALICIOUS, scale=2.0)

  np.testing.assert_array_equal(result['w'][3], [-14.0, -16.0])
  np.testing.assert_array_equal(result['w'][:3], UPDATES['w'][:3])


def test_scaling_boosts():
  result = jax.jit(model_poisoning.scaling, static_argnames='factor')(
      UPDATES, MALICIOUS, factor=10.0)

  np.testing.assert_array_equal(result['w'][3], [70.0, 80.0])


def test_little_is_enough_value():
  # Honest rows 1, 3, 5 and 2, 4, 6: means 3 and 4, population std
  # sqrt(8 / 3) = 1.63299 for both columns.
  result = model_poisoning.little_is_enough(UPDATES, MALICIOUS, HONEST, z=1.0)

  np.testing.assert_allclose(
      result['w'][3], [3.0 - 1.63299, 4.0 - 1.63299], rtol=1e-5)
  np.testing.assert_array_equal(result['w'][:3], UPDATES['w'][:3])


def test_little_is_enough_z_max():
  # n = 50, f = 12: s = 26 - 12 = 14, Phi^-1(36 / 50) = 0.5828.
  assert model_poisoning.little_is_enough_z(50, 12) == pytest.approx(
      0.58284, abs=1e-4)


def test_inner_product_manipulation():
  result = model_poisoning.inner_product_manipulation(
      UPDATES, MALICIOUS, HONEST, epsilon=0.5)

  np.testing.assert_allclose(result['w'][3], [-1.5, -2.0])


def test_gaussian_noise_std(key):
  updates = {'w': jnp.zeros((2, 20_000))}
  malicious = jnp.array([False, True])

  result = model_poisoning.gaussian_noise(
      updates, malicious, stddev=3.0, key=key)

  assert float(jnp.std(result['w'][1])) == pytest.approx(3.0, rel=0.03)
  assert not np.any(np.asarray(result['w'][0]))


def test_choose_malicious_count(key):
  mask = model_poisoning.choose_malicious(1000, 0.3, key=key)
  other = model_poisoning.choose_malicious(
      1000, 0.3, key=jax.random.fold_in(key, 1))

  assert int(mask.sum()) == 300
  assert not np.array_equal(mask, other)


def test_choose_malicious_invalid(key):
  with pytest.raises(ValueError, match='fraction'):
    model_poisoning.choose_malicious(10, 1.5, key=key)
