"""Aggregators: textbook values, masks and edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.aggregation import mean
from fedjax_med.aggregation import median

jitted_mean = jax.jit(mean.weighted_mean)
jitted_median = jax.jit(median.coordinate_median)


@pytest.mark.parametrize('fn', [mean.weighted_mean, jitted_mean])
def test_fedavg_two_clinics_textbook(fn):
  # Clinics with 100 and 300 examples: (100*[1,2] + 300*[2,1]) / 400.
  updates = {'w': jnp.array([[1.0, 2.0], [2.0, 1.0]])}
  weights = jnp.array([100.0, 300.0])

  result = fn(updates, weights)

  np.testing.assert_allclose(result['w'], [1.75, 1.25], rtol=1e-6)


def _seven_updates():
  honest = np.tile([0.1, -0.08, 0.05, 0.02], (6, 1))
  outlier = np.array([[2.0, -1.5, 1.2, 0.8]])
  return jnp.asarray(np.concatenate([honest, outlier]), jnp.float32)


@pytest.mark.parametrize('fn', [median.coordinate_median, jitted_median])
def test_median_ignores_one_outlier(fn):
  updates = _seven_updates()

  result = fn(updates, jnp.ones(7, bool))

  np.testing.assert_allclose(result, [0.1, -0.08, 0.05, 0.02], rtol=1e-6)


def test_mean_moves_with_one_outlier():
  updates = _seven_updates()
  honest = jnp.array([0.1, -0.08, 0.05, 0.02])

  result = mean.weighted_mean(updates, jnp.ones(7))
  shift = float(jnp.linalg.norm(result - honest))

  # The mean moves by |outlier - honest| / 7 = 2.74905 / 7 = 0.39272.
  assert shift == pytest.approx(0.39272, abs=1e-4)


def test_median_even_count_midpoint():
  updates = jnp.array([[1.0], [4.0], [2.0], [10.0]])

  result = median.coordinate_median(updates, jnp.ones(4, bool))

  assert float(result[0]) == 3.0


def test_median_ignores_masked_rows():
  updates = jnp.array([[1.0], [jnp.nan], [3.0], [-100.0], [2.0]])
  mask = jnp.array([True, False, True, False, True])

  result = median.coordinate_median(updates, mask)

  assert float(result[0]) == 2.0


def test_median_no_valid_rows_is_zero():
  updates = {'a': jnp.ones((3, 2)), 'b': jnp.ones((3,))}

  result = median.coordinate_median(updates, jnp.zeros(3, bool))

  assert not np.any(np.asarray(result['a']))
  assert float(result['b']) == 0.0


def test_mean_zero_weight_is_zero_not_nan():
  updates = jnp.ones((3, 2))

  result = mean.weighted_mean(updates, jnp.zeros(3))

  np.testing.assert_array_equal(result, [0.0, 0.0])


def test_mean_zero_weight_client_ignored():
  updates = jnp.array([[1.0], [50.0], [3.0]])

  result = mean.weighted_mean(updates, jnp.array([1.0, 0.0, 1.0]))

  assert float(result[0]) == 2.0


def test_mean_zero_weight_nan_client_ignored():
  # 0 * NaN is NaN, so a NaN row of weight 0 must be dropped, not weighted.
  updates = jnp.array([[1.0], [jnp.nan], [3.0]])

  result = mean.weighted_mean(updates, jnp.array([1.0, 0.0, 1.0]))

  assert float(result[0]) == 2.0


def test_median_permutation_invariant(key):
  updates = jax.random.normal(key, (9, 5))
  mask = jnp.array([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
  order = jax.random.permutation(jax.random.fold_in(key, 1), 9)

  result = median.coordinate_median(updates, mask)
  permuted = median.coordinate_median(updates[order], mask[order])

  np.testing.assert_array_equal(result, permuted)


def test_median_matches_numpy(key):
  updates = jax.random.normal(key, (8, 6))
  mask = np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)

  result = median.coordinate_median(updates, jnp.asarray(mask))

  expected = np.median(np.asarray(updates)[mask], axis=0)
  np.testing.assert_allclose(result, expected, rtol=1e-6)
