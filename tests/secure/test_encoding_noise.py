"""Fixed-point encoding and distributed discrete Gaussian noise."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.secure import discrete_gaussian
from fedjax_med.secure import encoding


@pytest.mark.parametrize('bits', [8, 20, 32])
def test_to_signed_reads_twos_complement(bits):
  values = np.array([0, 1, 2**(bits - 1) - 1, 2**(bits - 1), 2**bits - 1],
                    np.uint64)
  got = np.asarray(encoding.to_signed(jnp.asarray(values, jnp.uint32), bits))
  np.testing.assert_array_equal(
      got, [0, 1, 2**(bits - 1) - 1, -2**(bits - 1), -1])


def test_encoded_sum_decodes_within_documented_error():
  clients, dim, clip = 200, 50, 1.0
  scale = encoding.max_scale(16, clip, clients)
  rng = np.random.default_rng(0)
  vectors = rng.uniform(-clip, clip, (clients, dim)).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), clients)
  ring = jax.vmap(lambda k, v: encoding.encode(k, v, scale, 16))(
      keys, vectors)
  total = jnp.sum(ring, axis=0) & encoding.ring_mask(16)
  decoded = np.asarray(encoding.decode(total, scale, 16))
  error = np.abs(decoded - vectors.sum(0))
  assert error.max() < 2 * clients / scale
  # Stochastic rounding is unbiased, so the error is far below that bound.
  assert error.mean() < 4 * math.sqrt(clients) / (2 * scale)


def test_max_scale_cannot_overflow():
  clients, bits, bound = 1000, 20, 2.0
  scale = encoding.max_scale(bits, bound, clients)
  worst = clients * (bound * scale + 1)
  assert worst < 2 ** (bits - 1)
  encoding.check_no_overflow(bits, scale, bound, clients)
  with pytest.raises(ValueError, match='overflow'):
    encoding.check_no_overflow(bits, scale * 1.01, bound, clients)


def test_extreme_inputs_at_max_scale_sum_exactly():
  clients, bits = 300, 16
  scale = encoding.max_scale(bits, 1.0, clients)
  ring = jnp.broadcast_to(
      encoding.encode(jax.random.key(0), jnp.full((3,), -1.0), scale, bits),
      (clients, 3))
  total = encoding.to_signed(
      jnp.sum(ring, axis=0) & encoding.ring_mask(bits), bits)
  each = np.asarray(encoding.to_signed(ring[0], bits), np.int64)
  assert np.all(each <= -math.floor(scale))
  np.testing.assert_array_equal(np.asarray(total), clients * each)


@pytest.mark.parametrize('bits, clients', [(32, 1), (32, 4), (32, 300),
                                           (24, 7), (16, 100)])
@pytest.mark.parametrize('value', [1.0, -1.0])
def test_bound_values_at_max_scale_do_not_wrap(bits, clients, value):
  scale = encoding.max_scale(bits, 1.0, clients)
  keys = jax.random.split(jax.random.key(0), clients)
  ring = jax.vmap(
      lambda k: encoding.encode(k, jnp.full((5,), value), scale, bits))(keys)
  total = jnp.sum(ring, axis=0) & encoding.ring_mask(bits)
  decoded = np.asarray(encoding.decode(total, scale, bits))
  np.testing.assert_allclose(decoded, clients * value,
                             atol=2 * clients / scale)


def test_too_many_clients_for_ring_rejected():
  with pytest.raises(ValueError, match='cannot be summed'):
    encoding.max_scale(8, 1.0, 200)


def test_overflow_probability_bound():
  assert encoding.overflow_probability(32, 1.0, 1.0, 10, 0.0, 5) == 0.0
  small = encoding.overflow_probability(32, 1000.0, 1.0, 10, 1e5, 100)
  large = encoding.overflow_probability(32, 1000.0, 1.0, 10, 1e9, 100)
  assert small < 1e-100
  assert large == 1.0


def _discrete_gaussian_std(sigma):
  support = np.arange(-int(20 * sigma) - 20, int(20 * sigma) + 21)
  weights = np.exp(-support**2 / (2 * sigma**2))
  weights /= weights.sum()
  return math.sqrt(np.sum(weights * support**2))


@pytest.mark.parametrize('sigma', [0.6, 2.5, 40.0])
def test_discrete_gaussian_moments(sigma):
  draws = np.asarray(discrete_gaussian.sample(
      jax.random.key(1), (100_000,), sigma))
  assert draws.dtype == np.int32
  exact = _discrete_gaussian_std(sigma)
  assert abs(draws.std() - exact) < 0.02 * exact
  assert abs(draws.mean()) < 5 * exact / math.sqrt(draws.size)


def test_discrete_gaussian_pmf_at_small_sigma():
  sigma = 0.8
  draws = np.asarray(discrete_gaussian.sample(
      jax.random.key(2), (200_000,), sigma))
  support = np.arange(-3, 4)
  weights = np.exp(-support**2 / (2 * sigma**2))
  weights /= np.exp(-np.arange(-30, 31)**2 / (2 * sigma**2)).sum()
  frequencies = np.array([(draws == value).mean() for value in support])
  np.testing.assert_allclose(frequencies, weights, atol=0.004)


def test_discrete_gaussian_rejects_bad_sigma():
  with pytest.raises(ValueError, match='sigma'):
    discrete_gaussian.sample(jax.random.key(0), (3,), 0.0)


def test_epsilon_tends_to_continuous_gaussian():
  clients, dim, clip, scale = 50, 100, 1.0, 1e4
  l2, _ = discrete_gaussian.integer_sensitivities(clip, scale, dim)
  for noise_multiplier in [0.8, 2.0]:
    sigma = noise_multiplier * l2 / math.sqrt(clients)
    discrete = discrete_gaussian.epsilon(
        sigma=sigma, num_clients=clients, clip_norm=clip, scale=scale,
        dimension=dim, rounds=20, delta=1e-5)
    continuous = discrete_gaussian.gaussian_epsilon(
        noise_multiplier, 20, 1e-5)
    assert discrete == pytest.approx(continuous, rel=1e-6)


def test_epsilon_exceeds_gaussian_at_small_sigma():
  # With sigma near 1/2 the sum of discrete Gaussians is far from one, and
  # the accounting charges for it.
  sigma, clients, dim = 0.5, 5, 100
  l2 = 2.0
  noise_multiplier = math.sqrt(clients) * sigma / l2
  curve = discrete_gaussian.rdp_curve(sigma, clients, l2, 10 * l2, dim)
  gaussian = np.asarray(discrete_gaussian.ORDERS) / (2 * noise_multiplier**2)
  assert np.all(curve > gaussian)


def test_zcdp_rho_matches_gaussian_limit():
  rho = discrete_gaussian.zcdp_rho(1e3, 10, 2e3, 2e4, 50)
  noise_multiplier = math.sqrt(10) * 1e3 / 2e3
  assert rho == pytest.approx(1 / (2 * noise_multiplier**2), rel=1e-9)
