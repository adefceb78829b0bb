"""GF(2**31 - 1) arithmetic and Shamir sharing against Python integers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.secure import field
from fedjax_med.secure import shamir

P = field.PRIME


def _elements(seed, size):
  values = np.random.default_rng(seed).integers(0, P, size, dtype=np.int64)
  values[:3] = [0, P - 1, 1]
  return values


def test_multiply_matches_python():
  a, b = _elements(0, 20_000), _elements(1, 20_000)
  got = np.asarray(field.multiply(a.astype(np.uint32), b.astype(np.uint32)))
  np.testing.assert_array_equal(got.astype(np.int64), (a * b) % P)


def test_add_and_subtract_match_python():
  a, b = _elements(2, 20_000), _elements(3, 20_000)
  added = np.asarray(field.add(a.astype(np.uint32), b.astype(np.uint32)))
  subtracted = np.asarray(
      field.subtract(a.astype(np.uint32), b.astype(np.uint32)))
  np.testing.assert_array_equal(added.astype(np.int64), (a + b) % P)
  np.testing.assert_array_equal(subtracted.astype(np.int64), (a - b) % P)


def test_power_matches_python():
  bases, exponents = _elements(4, 300), _elements(5, 300)
  got = np.asarray(field.power(bases.astype(np.uint32),
                               exponents.astype(np.uint32)))
  want = [pow(int(b), int(e), P) for b, e in zip(bases, exponents)]
  np.testing.assert_array_equal(got.astype(np.int64), want)


def test_inverse_times_value_is_one():
  values = _elements(6, 300)[1:]
  values[values == 0] = 7
  product = field.multiply(field.inverse(values.astype(np.uint32)),
                           values.astype(np.uint32))
  np.testing.assert_array_equal(np.asarray(product), 1)


def test_generator_has_full_order():
  for prime_factor in [2, 3, 7, 11, 31, 151, 331]:
    assert (P - 1) % prime_factor == 0
    value = field.power(jnp.uint32(field.GENERATOR),
                        jnp.uint32((P - 1) // prime_factor))
    assert int(value) != 1


def test_diffie_hellman_agrees():
  keys = field.random_elements(jax.random.key(0), (2, 50), nonzero=True)
  public = field.power(jnp.uint32(field.GENERATOR), keys)
  one_side = field.power(public[1], keys[0])
  other_side = field.power(public[0], keys[1])
  np.testing.assert_array_equal(one_side, other_side)


@pytest.mark.parametrize('threshold', [1, 3, 7])
def test_any_threshold_shares_rebuild_secret(threshold):
  secrets = field.random_elements(jax.random.key(1), (40,))
  shares = shamir.share(jax.random.key(2), secrets, 7, threshold)
  rng = np.random.default_rng(threshold)
  for _ in range(5):
    holders = np.sort(rng.choice(7, threshold, replace=False))
    xs = jnp.broadcast_to(jnp.asarray(holders + 1, jnp.uint32),
                          (40, threshold))
    rebuilt = shamir.reconstruct(xs, shares[:, holders])
    np.testing.assert_array_equal(rebuilt, secrets)


def test_fewer_shares_do_not_rebuild_secret():
  secrets = field.random_elements(jax.random.key(3), (200,))
  shares = shamir.share(jax.random.key(4), secrets, 7, 4)
  xs = jnp.broadcast_to(jnp.asarray([1, 2, 3], jnp.uint32), (200, 3))
  rebuilt = shamir.reconstruct(xs, shares[:, :3])
  assert int(jnp.sum(rebuilt == secrets)) <= 2


def test_share_rejects_bad_threshold():
  with pytest.raises(ValueError, match='threshold'):
    shamir.share(jax.random.key(0), jnp.zeros(3, jnp.uint32), 5, 6)


def test_used_threshold_lowers_the_polynomial_degree():
  secrets = field.random_elements(jax.random.key(5), (200,))
  shares = shamir.share(jax.random.key(6), secrets, 9, 6, used_threshold=3)
  use = jnp.arange(6) < 3
  # Any 3 of the 9 shares now rebuild, taking the first 3 of 6 slots.
  holders = np.array([8, 1, 4, 0, 2, 3])
  xs = jnp.broadcast_to(jnp.asarray(holders + 1, jnp.uint32), (200, 6))
  rebuilt = shamir.reconstruct(xs, shares[:, holders], use)
  np.testing.assert_array_equal(rebuilt, secrets)
  # Two shares still reveal nothing.
  two = shamir.reconstruct(xs, shares[:, holders], jnp.arange(6) < 2)
  assert int(jnp.sum(two == secrets)) <= 2
  # At the full threshold the shares are the unmodified ones.
  np.testing.assert_array_equal(
      shamir.share(jax.random.key(6), secrets, 9, 6, used_threshold=6),
      shamir.share(jax.random.key(6), secrets, 9, 6))


@pytest.mark.parametrize('used', [0, -1, 7])
def test_used_threshold_out_of_range_rejected(used):
  # 0 made every share equal the secret; 7 above 6 was used as 6.
  with pytest.raises(ValueError, match=r'used_threshold` must be in \[1, 6\]'):
    shamir.share(jax.random.key(0), jnp.ones(3, jnp.uint32), 9, 6,
                 used_threshold=used)
