"""Fixed-point encoding of float vectors into the ring Z_(2**bits).

A client multiplies its (clipped, weighted) update by `scale`, rounds each
coordinate stochastically to an integer (unbiased: `x` becomes `floor(x)`
or `floor(x) + 1` with the probabilities that keep the mean), and keeps it
modulo `2**bits` in two's complement. The server sums the ring elements,
reads the sum as a signed integer and divides by `scale`.

Overflow. A coordinate of a vector with L2 norm at most `C` is at most `C`
in absolute value, so after rounding it is below `C * scale + 1`. The
signed sum of `n` such vectors stays inside the ring's signed range
[-2**(bits-1), 2**(bits-1)) when `n * (C * scale + 1) < 2**(bits-1)`.
`max_scale` returns the largest scale with that property, and
`check_no_overflow` raises if a configured scale breaks it. With noise
added (unbounded), `overflow_probability` bounds the chance that any
coordinate of the sum leaves the range, and the sum then wraps around
(modular clipping) instead of saturating.

Float32: `encode` multiplies in float32, so `max_scale` also keeps every
scaled coordinate below 2**23, where float32 rounds the product by at most
1/4 of a unit, and leaves a relative margin for that rounding. At 32 bits
and small cohorts this cap, not the ring, sets the scale.

Quantization error: each coordinate's stochastic rounding error is below
`1 / scale` and has mean 0, the float32 product adds at most `1 / (4
scale)`, and `decode` converts the integer sum to float32, which adds at
most `n / (2 scale)`. So the decoded sum of `n` vectors is within
`2 n / scale` of the true sum per coordinate.
"""

import math

import jax
import jax.numpy as jnp

MAX_BITS = 32
# `encode` multiplies in float32, which represents every integer up to
# 2**24 exactly. Keeping |x * scale| below 2**23 makes that product's
# rounding at most 1/4 of a ring unit.
MAX_SCALED = 2.0**23


def check_bits(bits: int) -> None:
  if not isinstance(bits, int) or not 2 <= bits <= MAX_BITS:
    raise ValueError(
        f'Secure aggregation ring bits must be an integer in [2, {MAX_BITS}]'
        f' (uint32 arithmetic); got {bits!r}.'
    )


def ring_mask(bits: int) -> jax.Array:
  return jnp.uint32((1 << bits) - 1 if bits < 32 else 0xFFFFFFFF)


def max_scale(bits: int, bound: float, num_clients: int) -> float:
  """Return the largest scale at which `num_clients` vectors with
  coordinates in [-bound, bound] cannot overflow `bits` bits."""
  check_bits(bits)
  if not bound > 0 or not math.isfinite(bound):
    raise ValueError(
        f'The coordinate bound must be positive and finite; got {bound}.'
    )
  # n * (bound * scale + 1) <= 2**(bits-1) - 1, where `bound * scale` may
  # come out of float32 up to one part in 2**22 high, and at most
  # MAX_SCALED.
  room = (2 ** (bits - 1) - 1) / num_clients - 2
  if room <= 0:
    raise ValueError(
        f'{num_clients} clients cannot be summed in a {bits}-bit ring even '
        'at scale 0: each rounded coordinate may be 1. Use more bits '
        '(`secure_aggregation.ring_bits`) or a smaller cohort.'
    )
  return min(room * (1 - 2.0**-22), MAX_SCALED) / bound


def check_no_overflow(
    bits: int, scale: float, bound: float, num_clients: int
) -> None:
  """Raise ValueError if the encoded sum of `num_clients` could overflow."""
  largest = max_scale(bits, bound, num_clients)
  if scale > largest * (1 + 1e-9):
    raise ValueError(
        f'Fixed-point scale {scale:g} can overflow a {bits}-bit ring: '
        f'{num_clients} clients with coordinates up to {bound:g} need '
        f'scale <= {largest:g}. Lower the scale, raise the ring bits or '
        'lower the clip bound or cohort size.'
    )


def overflow_probability(
    bits: int, scale: float, bound: float, num_clients: int,
    noise_stddev: float, dimension: int,
) -> float:
  """Bound the chance that any coordinate of a noised sum overflows.

  The signed data sum is at most `B = n * (bound * scale + 1)`. The noise
  of the sum has std `sigma` (in ring units) and is sub-Gaussian with that
  parameter: true for a sum of continuous or discrete Gaussians (Canonne,
  Kamath and Steinke, 2020, Lemma 18). So by a union bound over the
  coordinates, P(overflow) <= dimension * 2 exp(-(2**(bits-1) - B)**2 /
  (2 sigma**2)).
  """
  data = num_clients * (bound * scale + 1)
  room = 2 ** (bits - 1) - data
  if room <= 0:
    return 1.0
  if noise_stddev <= 0:
    return 0.0
  exponent = -(room**2) / (2 * noise_stddev**2)
  return min(1.0, dimension * 2 * math.exp(max(exponent, -700.0)))


def _stochastic_round(key: jax.Array, values: jax.Array) -> jax.Array:
  low = jnp.floor(values)
  up = jax.random.uniform(key, values.shape) < (values - low)
  return (low + up).astype(jnp.int32)


def encode(key: jax.Array, values: jax.Array, scale: float,
           bits: int) -> jax.Array:
  """Return `values * scale`, stochastically rounded, as uint32 ring
  elements modulo `2**bits`.

  `values * scale` must be finite and below 2**31 in magnitude. The cast to
  int32 turns NaN into 0 and clamps larger values, without an error, as
  this runs under `jit`. The round clips updates and `max_scale` picks a
  scale that keeps them inside; call `encode` directly only on such values.
  """
  integers = _stochastic_round(key, values.astype(jnp.float32) * scale)
  return jax.lax.bitcast_convert_type(integers, jnp.uint32) & ring_mask(bits)


def to_signed(ring: jax.Array, bits: int) -> jax.Array:
  """Return ring elements as int32 in [-2**(bits-1), 2**(bits-1))."""
  shift = MAX_BITS - bits
  shifted = jax.lax.bitcast_convert_type(
      jnp.asarray(ring, jnp.uint32) << shift, jnp.int32)
  return shifted >> shift  # arithmetic shift keeps the sign.


def decode(ring: jax.Array, scale: float, bits: int) -> jax.Array:
  """Return a ring sum as float32, divided by `scale`."""
  return to_signed(ring, bits).astype(jnp.float32) / scale
