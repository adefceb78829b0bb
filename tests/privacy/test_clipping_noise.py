"""Whole-update clipping and per-leaf Gaussian noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import tree
from fedjax_med.privacy import clipping
from fedjax_med.privacy import noise


def test_clip_uses_norm_of_all_leaves():
  # Leaves with norms 3 and 4 give a global norm of 5.
  update = {'a': jnp.array([3.0]), 'b': jnp.array([[0.0, 4.0]])}

  result = clipping.clip_update(update, 1.0)

  assert float(result.norm) == pytest.approx(5.0)
  np.testing.assert_allclose(result.update['a'], [0.6], rtol=1e-6)
  np.testing.assert_allclose(result.update['b'], [[0.0, 0.8]], rtol=1e-6)
  assert bool(result.clipped)


def test_clip_leaves_small_update():
  update = {'a': jnp.array([0.3, 0.4])}

  result = clipping.clip_update(update, 1.0)

  np.testing.assert_array_equal(result.update['a'], update['a'])
  assert not bool(result.clipped)


def test_clip_zero_update_stays_zero():
  result = clipping.clip_update({'a': jnp.zeros(3)}, 1.0)

  assert not np.any(np.isnan(np.asarray(result.update['a'])))


def test_noise_std_matches(key):
  tree_in = {'a': jnp.zeros((200, 100)), 'b': jnp.zeros((20_000,))}

  noisy = noise.add_gaussian_noise(tree_in, 0.5, key=key)

  assert float(jnp.std(noisy['a'])) == pytest.approx(0.5, rel=0.03)
  assert float(jnp.std(noisy['b'])) == pytest.approx(0.5, rel=0.03)


def test_noise_leaves_independent(key):
  tree_in = {'a': jnp.zeros(1000), 'b': jnp.zeros(1000)}

  noisy = noise.add_gaussian_noise(tree_in, 1.0, key=key)

  correlation = np.corrcoef(noisy['a'], noisy['b'])[0, 1]
  assert abs(correlation) < 0.15


def test_tree_norm_matches_flat(key):
  tree_in = {'a': jax.random.normal(key, (4, 3)), 'b': jnp.arange(5.0)}

  flat = np.concatenate([np.ravel(tree_in['a']), np.ravel(tree_in['b'])])

  assert float(tree.tree_l2_norm(tree_in)) == pytest.approx(
      np.linalg.norm(flat), rel=1e-6
  )


def test_clip_huge_finite_update():
  # Squaring 1e20 overflows float32; the norm must still be finite.
  update = {'a': jnp.array([1e20, 1e20], jnp.float32)}

  result = clipping.clip_update(update, 1.0)

  np.testing.assert_allclose(result.update['a'], [0.70710677] * 2, rtol=1e-5)
  assert float(result.norm) == pytest.approx(1.41421356e20, rel=1e-5)


def test_clip_zero_bound_gives_zeros():
  result = clipping.clip_update({'a': jnp.array([3.0, 4.0])}, 0.0)

  np.testing.assert_array_equal(result.update['a'], [0.0, 0.0])


def test_tree_norm_infinite_entry():
  norm = tree.tree_l2_norm({'a': jnp.array([1.0, jnp.inf])})

  assert float(norm) == float('inf')


def test_clip_float64_update_hits_bound_to_float64_precision():
  # A float32 norm is off by about 1e-7 relative, so the clipped float64
  # update used to exceed the bound by that much.
  with jax.enable_x64(True):
    update = {
        'a': jnp.linspace(0.1, 3.3, 7, dtype=jnp.float64),
        'b': jnp.full((3,), 1 / 3, jnp.float64),
    }

    result = clipping.clip_update(update, 1.0)
    norm = tree.tree_l2_norm(result.update)

    assert norm.dtype == jnp.float64
    flat = np.concatenate([np.asarray(x) for x in result.update.values()])
    assert abs(np.linalg.norm(flat) - 1.0) < 1e-14


def test_tree_norm_of_bfloat16_is_float32():
  norm = tree.tree_l2_norm({'a': jnp.array([3.0, 4.0], jnp.bfloat16)})

  assert norm.dtype == jnp.float32
  assert float(norm) == 5.0


def test_clip_update_above_float32_reciprocal_range():
  # clip_norm / norm = 7.9e-39 is subnormal, and the CPU flushes it to 0,
  # which made the clipped update all zeros instead of norm 1.
  update = {'a': jnp.array([9e37, -9e37], jnp.float32)}

  result = jax.jit(lambda u: clipping.clip_update(u, 1.0))(update)

  np.testing.assert_allclose(result.update['a'], [0.70710677, -0.70710677],
                             rtol=1e-6)
  assert bool(result.clipped)


@pytest.mark.parametrize('compiled', [False, True])
def test_tree_norm_near_float32_max(compiled):
  # Dividing by the largest entry, 2e38, went through its reciprocal 5e-39,
  # which is subnormal and flushed to zero: eager gave 5e37, and a
  # per-example vmap gave 0, so DP-SGD left the gradient unclipped.
  update = {'a': jnp.array([1e38, -2e38, 3.0]), 'b': jnp.array([[5e37]])}
  norm_fn = jax.jit(tree.tree_l2_norm) if compiled else tree.tree_l2_norm

  norm = norm_fn(update)

  np.testing.assert_allclose(norm, np.sqrt(1 + 4 + 0.25) * 1e38, rtol=1e-6)


def test_per_example_clip_near_float32_max():
  grads = {'a': jnp.array([[1e38, -2e38, 3.0], [1.0, 2.0, 2.0]])}

  result = jax.vmap(clipping.clip_update, in_axes=(0, None))(grads, 1.0)

  assert bool(result.clipped[0])
  np.testing.assert_allclose(
      result.update['a'][0], [1 / np.sqrt(5), -2 / np.sqrt(5), 0.0],
      rtol=1e-6, atol=1e-30)
  np.testing.assert_allclose(result.update['a'][1], [1 / 3, 2 / 3, 2 / 3],
                             rtol=1e-6)


def test_clip_update_norm_above_float32_max():
  # The norm 4.2e38 is inf in float32, and clip_norm / inf = 0 zeroed the
  # update.
  update = {'a': jnp.array([3e38, 3e38, 0.0], jnp.float32)}

  result = clipping.clip_update(update, 1.0)

  assert bool(result.clipped)
  assert float(result.norm) == float('inf')
  np.testing.assert_allclose(result.update['a'],
                             [0.70710677, 0.70710677, 0.0], rtol=1e-6)
