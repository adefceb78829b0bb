"""Arithmetic in the prime field GF(p), p = 2**31 - 1, on uint32 arrays.

The secure aggregation simulation needs a real group for its key agreement
(Diffie-Hellman in the multiplicative group of GF(p)) and a field for Shamir
secret sharing. JAX runs with 32-bit integers by default, so products of two
31-bit numbers are formed from 16-bit halves and reduced with
`2**31 = 1 (mod p)`. Every function takes and returns uint32 values in
[0, p) and broadcasts like jnp arithmetic.

A 31-bit group offers no real security. The simulation uses it so that
the protocol's steps (agreement, sharing, reconstruction) run the way a
deployment runs them. The cost model still charges a deployment's 32-byte
keys.
"""

import jax
import jax.numpy as jnp

PRIME = 2**31 - 1
# 7 generates the multiplicative group of GF(2**31 - 1): its order is
# p - 1 = 2 * 3**2 * 7 * 11 * 31 * 151 * 331, and 7**((p - 1) / q) != 1 for
# each of those primes q (tests/secure/test_field_shamir.py).
GENERATOR = 7

_P = jnp.uint32(PRIME)


def _reduce(x: jax.Array) -> jax.Array:
  """Return `x mod p` for any uint32 `x`."""
  x = jnp.asarray(x, jnp.uint32)
  r = (x & _P) + (x >> 31)
  return jnp.where(r >= _P, r - _P, r)


def add(a: jax.Array, b: jax.Array) -> jax.Array:
  """Return `(a + b) mod p` for `a, b` in [0, p)."""
  return _reduce(jnp.asarray(a, jnp.uint32) + jnp.asarray(b, jnp.uint32))


def subtract(a: jax.Array, b: jax.Array) -> jax.Array:
  """Return `(a - b) mod p` for `a, b` in [0, p)."""
  return add(a, _P - jnp.asarray(b, jnp.uint32))


def multiply(a: jax.Array, b: jax.Array) -> jax.Array:
  """Return `(a * b) mod p` for `a, b` in [0, p)."""
  a = jnp.asarray(a, jnp.uint32)
  b = jnp.asarray(b, jnp.uint32)
  a_high, a_low = a >> 16, a & 0xFFFF
  b_high, b_low = b >> 16, b & 0xFFFF
  # a * b = hh * 2**32 + mid * 2**16 + ll, and 2**32 = 2 (mod p).
  high = _reduce(2 * (a_high * b_high))
  mid = a_high * b_low + a_low * b_high  # < 2**32, so it fits.
  # mid * 2**16 = (mid >> 15) * 2**31 + (mid & 0x7FFF) * 2**16.
  mid = _reduce((mid >> 15) + ((mid & 0x7FFF) << 16))
  low = _reduce(a_low * b_low)
  return add(add(high, mid), low)


def power(base: jax.Array, exponent: jax.Array) -> jax.Array:
  """Return `base**exponent mod p` by square-and-multiply over 31 bits."""
  base = jnp.asarray(base, jnp.uint32)
  exponent = jnp.asarray(exponent, jnp.uint32)
  base, exponent = jnp.broadcast_arrays(base, exponent)

  def body(bit, carry):
    result, square = carry
    use = ((exponent >> bit) & 1).astype(bool)
    result = jnp.where(use, multiply(result, square), result)
    return result, multiply(square, square)

  result, _ = jax.lax.fori_loop(
      0, 31, body, (jnp.ones_like(base), base)
  )
  return result


def inverse(a: jax.Array) -> jax.Array:
  """Return the inverse of nonzero `a` by Fermat: `a**(p - 2) mod p`."""
  return power(a, jnp.uint32(PRIME - 2))


def random_elements(key: jax.Array, shape, *, nonzero: bool = False):
  """Draw uniform field elements (in [1, p) with `nonzero`)."""
  low = 1 if nonzero else 0
  return jax.random.randint(
      key, shape, low, PRIME, dtype=jnp.int32
  ).astype(jnp.uint32)
