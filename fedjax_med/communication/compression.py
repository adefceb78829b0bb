"""Compression of client updates, with the exact size of each message.

A client's update is a flat float32 vector `v` of length `d` (a round
flattens the update pytree with `jax.flatten_util.ravel_pytree`). Each
compressor has two sides that give the same reconstruction:

* `compress` is pure JAX, jittable and vmappable over clients. It returns
  what the server reconstructs and, for top-k, the client's new residual.
* `encode` and `decode` build and read the actual wire message with NumPy on
  the host, so `len(encode(...)) == encoded_bytes(...)` can be checked.

Compressors:

* 'none': the float32 vector, `4 * d` bytes.
* 'qsgd': stochastic quantization to `s` levels (Alistarh et al., 2017).
  With `r_i = |v_i| / ||v||_2 * s`, coordinate `i` gets level
  `floor(r_i) + Bernoulli(r_i - floor(r_i))` and decodes to
  `sign(v_i) * ||v||_2 * level_i / s`, so the estimate is unbiased. The paper
  compresses the levels further with Elias coding, whose length depends on
  the data. This module sends fixed-width codes instead, so the size depends
  only on `d` and `s`: a float32 norm and then `d` codes of
  `bits_per_coordinate` bits each.
* 'rotated': stochastic rotated quantization (Suresh et al., 2017, pi_srk).
  The vector is padded to `D`, a power of two, and rotated by a randomized
  Hadamard transform, which spreads its mass so that the rotated entries
  all lie within about `sqrt(2 ln D / D) ||v||` of 0. Each rotated entry is
  then rounded at random, without bias, to one of the `s + 1` evenly spaced
  points from the rotated vector's minimum to its maximum. The squared
  error is at most `D (max - min)**2 / (4 s**2)`, which the rotation makes
  at most `(2 ln D + 2) ||v||**2 / s**2` in expectation (their Theorem 3),
  against up to `min(d / s**2, sqrt(d) / s) ||v||**2` for QSGD. A message
  is the float32 minimum and maximum and `D` codes of
  `ceil(log2(s + 1))` bits. (QSGD's norm-relative levels do not gain from
  the rotation: their error depends on the L1 norm, which rotation raises.)
* 'top_k': the `k` entries of largest magnitude, with error feedback
  (Stich et al., 2018). The entries not sent are kept in a residual and
  added to the next update.

All byte counts are of one client's upload in one round. Keys are not
sent, so client and server must derive the same key for each client from
the shared round seed.

References:
  Alistarh, Grubic, Li, Tomioka and Vojnovic, "QSGD: Communication-Efficient
  SGD via Gradient Quantization and Encoding", NeurIPS 2017,
  https://arxiv.org/abs/1610.02132.

  Suresh, Yu, Kumar and McMahan, "Distributed Mean Estimation with Limited
  Communication", ICML 2017, https://arxiv.org/abs/1611.00429.

  Stich, Cordonnier and Jaggi, "Sparsified SGD with Memory", NeurIPS 2018,
  https://arxiv.org/abs/1809.07599.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import tree
from fedjax_med.errors import InputError
from fedjax_med.typing import PRNGKey

COMPRESSORS = ('none', 'qsgd', 'rotated', 'top_k')

# `r_i = |v_i| / norm * s` is float32, with a rounding error of up to about
# `s * 2**-24` levels. Above 2**24 levels that error exceeds one level, and
# the stochastic rounding could no longer be close to unbiased.
MAX_LEVELS = 2**24

_FLOAT32 = np.dtype('<f4')


class CompressionSettings(NamedTuple):
  """Compressor of client updates and its parameters.

  Attributes:
    kind: one of `COMPRESSORS`.
    levels: number of quantization levels `s`, from 1 to `MAX_LEVELS`
      (qsgd and rotated).
    fraction: share of coordinates that top_k sends, in (0, 1]. It keeps
      `k = max(1, ceil(fraction * d))` of `d` coordinates, with
      `fraction * d` rounded to 6 decimals first (`num_kept`).
    error_feedback: whether top_k keeps the coordinates it did not send in a
      residual and adds them to the next update.
  """

  kind: str = 'none'
  levels: int = 16
  fraction: float = 0.01
  error_feedback: bool = True


class _QuantizedVector(NamedTuple):
  """QSGD message before bit packing: a norm and a sign and level per entry."""

  norm: jax.Array
  negative: jax.Array
  level: jax.Array


def validate(settings: CompressionSettings) -> None:
  """Raise InputError unless every field of `settings` is valid.

  All fields are checked, including those that `settings.kind` ignores.

  Raises:
    InputError: naming the invalid field, its value and the valid range.
  """
  if settings.kind not in COMPRESSORS:
    raise InputError(
        f'`kind` must be one of {COMPRESSORS}; got {settings.kind!r}.'
    )
  levels = settings.levels
  if (isinstance(levels, bool) or not isinstance(levels, (int, np.integer))
      or not 1 <= levels <= MAX_LEVELS):
    raise InputError(
        f'`levels` must be an integer from 1 to {MAX_LEVELS}; got '
        f'{levels!r}.'
    )
  fraction = settings.fraction
  if (isinstance(fraction, bool)
      or not isinstance(fraction, (int, float, np.floating))
      or not 0 < fraction <= 1):
    raise InputError(
        f'`fraction` must be a number in (0, 1], the share of coordinates '
        f'that top_k sends; got {fraction!r}.'
    )
  if not isinstance(settings.error_feedback, (bool, np.bool_)):
    raise InputError(
        '`error_feedback` must be true or false; got '
        f'{settings.error_feedback!r}.'
    )


def _check_size(size: int) -> None:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise TypeError(f'`size` must be an int; got {size!r}.')
  if size < 1:
    raise ValueError(f'`size` must be at least 1; got {size}.')


def num_kept(settings: CompressionSettings, size: int) -> int:
  """Return `k`, the number of coordinates top_k sends of a `size`-vector.

  `fraction * size` is rounded to 6 decimals before the ceiling, so that
  float round-off does not add a coordinate. For example, 0.07 * 100 is
  7.000000000000001 in float64, and this returns 7, not 8.
  """
  validate(settings)
  _check_size(size)
  return max(1, math.ceil(round(settings.fraction * size, 6)))


def bits_per_coordinate(settings: CompressionSettings) -> int:
  """Return the number of bits in one coordinate's code, 32 for 'none'.

  For qsgd, a code is 1 sign bit and `ceil(log2(levels + 1))` level bits;
  for rotated, the `ceil(log2(levels + 1))` level bits alone.

  Raises:
    ValueError: for top_k, whose cost per coordinate depends on `d`; use
      `encoded_bytes`.
  """
  validate(settings)
  if settings.kind == 'none':
    return 32
  if settings.kind == 'top_k':
    raise ValueError(
        'top_k has no fixed number of bits per coordinate. Use '
        '`encoded_bytes(settings, size)` for its message size.'
    )
  # For s >= 1, int.bit_length(s) equals ceil(log2(s + 1)), computed exactly.
  level_bits = int(settings.levels).bit_length()
  return level_bits if settings.kind == 'rotated' else 1 + level_bits


def rotated_size(size: int) -> int:
  """Return `D`, the smallest power of two that is at least `size`."""
  _check_size(size)
  return 1 << (size - 1).bit_length()


def _index_bytes(size: int) -> int:
  """Return the width of a top_k index: 1, 2 or 4 bytes, enough for size-1."""
  for width in (1, 2, 4):
    if size - 1 < 256**width:
      return width
  raise ValueError(f'`size` {size} needs indices wider than 4 bytes.')


def _uses_bitmap(settings: CompressionSettings, size: int) -> bool:
  """Return whether top_k sends a d-bit bitmap. On a tie it sends indices."""
  kept = num_kept(settings, size)
  return math.ceil(size / 8) < kept * _index_bytes(size)


def encoded_bytes(settings: CompressionSettings, size: int) -> int:
  """Return the exact byte length of one client's message for a `size`-vector.

  * none: `4 * d`.
  * qsgd: `4 + ceil(d * bits / 8)`, with `bits = bits_per_coordinate`.
  * rotated: `8 + ceil(D * bits / 8)`, with `D = rotated_size(d)`.
  * top_k: `4 * k + min(k * index_bytes, ceil(d / 8))`, where `index_bytes`
    is the smallest of 1, 2 and 4 that can store `d - 1`.
  """
  validate(settings)
  _check_size(size)
  if settings.kind == 'none':
    return 4 * size
  if settings.kind == 'top_k':
    kept = num_kept(settings, size)
    return 4 * kept + min(kept * _index_bytes(size), math.ceil(size / 8))
  if settings.kind == 'rotated':
    return 8 + math.ceil(rotated_size(size) * bits_per_coordinate(settings)
                         / 8)
  return 4 + math.ceil(size * bits_per_coordinate(settings) / 8)


# Randomized Hadamard rotation.
#
# The helpers below are jitted, so `compress`, `encode` and `decode` run the
# same compiled programs when called outside jit. Their float32 results are
# then bit-identical, and eager calls compile once per shape instead of once
# per primitive.


@jax.jit
def hadamard_transform(vector: jax.Array) -> jax.Array:
  """Return `H @ vector` for the unnormalized Sylvester Hadamard matrix `H`.

  This is the fast Walsh-Hadamard transform: `log2(D)` butterfly stages of
  `D` additions each. `H` is symmetric with `H @ H = D * I`.

  Args:
    vector: `[D]`, with `D` a power of two.
  """
  size = vector.shape[-1]
  if vector.ndim != 1 or size & (size - 1):
    raise ValueError(
        f'hadamard_transform needs a 1-D vector whose length is a power of '
        f'two; got shape {vector.shape}. Vectorize with jax.vmap and pad with '
        'zeros to `rotated_size`.'
    )
  half = 1
  while half < size:
    # Pair entry j with entry j + half inside each block of 2 * half.
    blocks = vector.reshape(size // (2 * half), 2, half)
    first, second = blocks[:, 0, :], blocks[:, 1, :]
    vector = jnp.stack([first + second, first - second], axis=1).reshape(size)
    half *= 2
  return vector


def _random_signs(key: PRNGKey, size: int) -> jax.Array:
  return jax.random.rademacher(key, (size,), dtype=jnp.float32)


@jax.jit
def rotate(vector: jax.Array, key: PRNGKey) -> jax.Array:
  """Pad `vector` to `D = rotated_size(d)` and rotate it at random.

  Returns `H @ (signs * padded) / sqrt(D)`, with independent random signs
  drawn from `key`. The rotation is orthogonal, so it preserves the L2 norm.

  Args:
    vector: `[d]` float32.
    key: key of the signs.

  Returns:
    `[D]` float32.
  """
  size = vector.shape[0]
  padded_size = rotated_size(size)
  padded = jnp.pad(vector, (0, padded_size - size))
  signs = _random_signs(key, padded_size)
  # Scaling before the transform keeps every partial sum within about the
  # vector's norm, so a norm below float32's maximum does not overflow.
  return hadamard_transform(
      signs * padded / jnp.sqrt(jnp.float32(padded_size)))


@functools.partial(jax.jit, static_argnames='size')
def unrotate(rotated: jax.Array, key: PRNGKey, size: int) -> jax.Array:
  """Invert `rotate(vector, key)` and drop the padding.

  Args:
    rotated: `[D]` float32.
    key: the key that `rotate` was given.
    size: `d`, the length of the original vector.

  Returns:
    `[size]` float32.
  """
  padded_size = rotated.shape[0]
  signs = _random_signs(key, padded_size)
  # H^-1 = H / D and the signs are their own inverse.
  restored = signs * hadamard_transform(
      rotated / jnp.sqrt(jnp.float32(padded_size)))
  return restored[:size]


def _rotation_keys(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
  """Split a client's key into the key of the signs and of the rounding."""
  sign_key, quantize_key = jax.random.split(key)
  return sign_key, quantize_key


# QSGD. The quantizers work on `ldexp(x, -e)`, an exact rescaling to about
# 1. So a huge norm, or a tiny range divided by many levels, stays a normal
# float (see `fedjax_med.tree.power_of_two_exponent`).


def _l2_norm(vector: jax.Array) -> jax.Array:
  """Return `||vector||_2` without overflow or underflow of the squares.

  Any NaN or infinite entry makes the result NaN.
  """
  norm = tree.tree_l2_norm(vector)
  return jnp.where(jnp.all(jnp.isfinite(vector)), norm, jnp.nan)


@functools.partial(jax.jit, static_argnames='levels')
def _qsgd_quantize(
    vector: jax.Array, key: PRNGKey, levels: int
) -> _QuantizedVector:
  """Round `|vector| / norm * levels` up or down at random, unbiased."""
  norm = _l2_norm(vector)
  exponent = tree.power_of_two_exponent(norm)
  unit_norm = jnp.ldexp(norm, -exponent)
  safe_norm = jnp.where(unit_norm > 0, unit_norm, 1.0)
  scaled = jnp.abs(jnp.ldexp(vector, -exponent)) / safe_norm * levels
  lower = jnp.floor(scaled)
  round_up = jax.random.bernoulli(key, scaled - lower)
  level = lower + round_up.astype(jnp.float32)
  # Round-off can push |v_i| / norm just above 1, hence the clip to `levels`.
  # A NaN level (non-finite input) becomes 0 so that it fits the code, and
  # the NaN norm still makes every decoded entry NaN.
  level = jnp.where(jnp.isfinite(level), jnp.clip(level, 0, levels), 0)
  return _QuantizedVector(norm, vector < 0, level.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames='levels')
def _qsgd_dequantize(
    quantized: _QuantizedVector, levels: int
) -> jax.Array:
  """Return `sign * norm * level / levels` for each coordinate."""
  sign = jnp.where(quantized.negative, -1.0, 1.0)
  exponent = tree.power_of_two_exponent(quantized.norm)
  unit_norm = jnp.ldexp(quantized.norm, -exponent)
  fraction = quantized.level.astype(jnp.float32) / jnp.float32(levels)
  decoded = jnp.ldexp(sign * fraction * unit_norm, exponent)
  return jnp.where(jnp.isfinite(quantized.norm), decoded, jnp.nan)


# Stochastic rotated quantization.


class _RangeQuantized(NamedTuple):
  """A rotated vector before bit packing: its range and a level per entry."""

  low: jax.Array
  high: jax.Array
  level: jax.Array


def _range_exponent(low: jax.Array, high: jax.Array) -> jax.Array:
  return tree.power_of_two_exponent(jnp.maximum(jnp.abs(low), jnp.abs(high)))


@functools.partial(jax.jit, static_argnames='levels')
def _range_quantize(
    vector: jax.Array, key: PRNGKey, levels: int
) -> _RangeQuantized:
  """Round each entry to one of `levels + 1` points in [min, max], unbiased."""
  low, high = jnp.min(vector), jnp.max(vector)
  exponent = _range_exponent(low, high)
  unit_low = jnp.ldexp(low, -exponent)
  width = jnp.ldexp(high, -exponent) - unit_low
  safe_width = jnp.where(width > 0, width, 1.0)
  scaled = (jnp.ldexp(vector, -exponent) - unit_low) / safe_width * levels
  lower = jnp.floor(scaled)
  round_up = jax.random.bernoulli(key, scaled - lower)
  level = lower + round_up.astype(jnp.float32)
  # Round-off can leave `scaled` just outside [0, levels]. A NaN level
  # (non-finite input) becomes 0, and the NaN range still makes every
  # decoded entry NaN.
  level = jnp.where(jnp.isfinite(level), jnp.clip(level, 0, levels), 0)
  return _RangeQuantized(low, high, level.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames='levels')
def _range_dequantize(quantized: _RangeQuantized, levels: int) -> jax.Array:
  """Return `min + level * (max - min) / levels` for each entry."""
  low, high = quantized.low, quantized.high
  exponent = _range_exponent(low, high)
  unit_low = jnp.ldexp(low, -exponent)
  width = jnp.ldexp(high, -exponent) - unit_low
  fraction = quantized.level.astype(jnp.float32) / jnp.float32(levels)
  decoded = jnp.ldexp(unit_low + fraction * width, exponent)
  finite = jnp.isfinite(low) & jnp.isfinite(high)
  return jnp.where(finite, decoded, jnp.nan)


# Top-k with error feedback.


@functools.partial(jax.jit, static_argnames='kept')
def _top_k_indices(accumulated: jax.Array, kept: int) -> jax.Array:
  """Return the indices of the `kept` entries of largest magnitude.

  NaN counts as infinite, so a non-finite entry is always among those sent
  (ties go to the lower index), and the server receives a non-finite
  update.
  """
  magnitude = jnp.abs(accumulated)
  magnitude = jnp.where(jnp.isnan(magnitude), jnp.inf, magnitude)
  _, indices = jax.lax.top_k(magnitude, kept)
  return indices


def _check_vector(vector, residual):
  vector = jnp.asarray(vector, jnp.float32)
  if vector.ndim != 1:
    raise ValueError(
        f'`vector` must be a flat [d] update; got shape {vector.shape}. '
        'Flatten the pytree with jax.flatten_util.ravel_pytree, and use '
        'jax.vmap over clients.'
    )
  if residual is None:
    return vector, jnp.zeros_like(vector)
  residual = jnp.asarray(residual, jnp.float32)
  if residual.shape != vector.shape:
    raise ValueError(
        f'`residual` has shape {residual.shape}, but `vector` has '
        f'{vector.shape}. Pass the residual that compress returned for this '
        'client, or None.'
    )
  return vector, residual


def compress(
    settings: CompressionSettings,
    vector: jax.Array,
    key: PRNGKey,
    residual: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Compress one client's update and return what the server reconstructs.

  Pure JAX: jit it with `settings` static, and vmap it over
  `(vector, key, residual)` to compress a cohort.

  For qsgd and rotated, a NaN or infinite entry in `vector` makes every
  entry of the decoded vector NaN, so a round that screens out non-finite
  updates drops the client. NOTE: qsgd does the same when every entry is
  finite but the L2 norm exceeds the float32 maximum (3.4e38), because the
  message stores the norm as a float32. For top_k, a non-finite entry is always sent.
  The residual then contains NaN too, and the caller should reset it.

  Args:
    settings: the compressor; validated here.
    vector: `[d]` float32 update.
    key: key of this client's random draws. rotated splits it with
      `jax.random.split` into the key of the rotation's signs (given to
      `rotate`) and the key of the rounding. The server derives the same
      key from the shared round seed, so the signs cost no bytes.
    residual: `[d]` residual of top_k from this client's previous call, or
      None for zeros. Other kinds ignore it.

  Returns:
    `(decoded, new_residual)`, both `[d]` float32. `new_residual` is
    `vector + residual - decoded` for top_k with error feedback and zeros
    otherwise, so the output structure does not depend on the kind.
  """
  validate(settings)
  vector, residual = _check_vector(vector, residual)
  zeros = jnp.zeros_like(vector)
  if settings.kind == 'none':
    return vector, zeros
  if settings.kind == 'qsgd':
    quantized = _qsgd_quantize(vector, key, settings.levels)
    return _qsgd_dequantize(quantized, settings.levels), zeros
  if settings.kind == 'rotated':
    sign_key, quantize_key = _rotation_keys(key)
    quantized = _range_quantize(
        rotate(vector, sign_key), quantize_key, settings.levels)
    rotated = _range_dequantize(quantized, settings.levels)
    return unrotate(rotated, sign_key, vector.shape[0]), zeros

  accumulated = vector + residual
  indices = _top_k_indices(accumulated, num_kept(settings, vector.shape[0]))
  decoded = zeros.at[indices].set(accumulated[indices])
  if settings.error_feedback:
    return decoded, accumulated - decoded
  return decoded, zeros


# Wire format. All multi-byte fields are little-endian.


def _pack_codes(codes: np.ndarray, width: int) -> bytes:
  """Pack `width`-bit codes into a bit stream, least significant bit first."""
  shifts = np.arange(width, dtype=np.uint32)
  bits = ((codes.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
  return np.packbits(bits.reshape(-1), bitorder='little').tobytes()


def _unpack_codes(payload: bytes, count: int, width: int) -> np.ndarray:
  bits = np.unpackbits(
      np.frombuffer(payload, np.uint8), count=count * width,
      bitorder='little',
  ).reshape(count, width)
  weights = np.left_shift(np.uint32(1), np.arange(width, dtype=np.uint32))
  return bits.astype(np.uint32) @ weights


def _encode_quantized(quantized: _QuantizedVector, width: int) -> bytes:
  """Return the QSGD message: the float32 norm, then one code per entry.

  Bit 0 of a code is the sign (1 for negative) and the higher bits are the
  level.
  """
  level = np.asarray(quantized.level).astype(np.uint32)
  negative = np.asarray(quantized.negative).astype(np.uint32)
  norm = np.asarray(quantized.norm, _FLOAT32).tobytes()
  return norm + _pack_codes((level << 1) | negative, width)


def _decode_quantized(
    message: bytes, count: int, settings: CompressionSettings
) -> jax.Array:
  norm = np.frombuffer(message[:4], _FLOAT32)[0]
  codes = _unpack_codes(message[4:], count, bits_per_coordinate(settings))
  level = codes >> 1
  if np.any(level > settings.levels):
    raise ValueError(
        f'Invalid QSGD message: level {int(level.max())} exceeds `levels` '
        f'{settings.levels}.'
    )
  quantized = _QuantizedVector(
      jnp.float32(norm), jnp.asarray((codes & 1) == 1),
      jnp.asarray(level.astype(np.int32)))
  return _qsgd_dequantize(quantized, settings.levels)


def _encode_top_k(
    settings: CompressionSettings, vector, key, residual
) -> bytes:
  """Return the k values in ascending index order, then their positions."""
  del key  # top_k is deterministic.
  vector, residual = _check_vector(vector, residual)
  accumulated = np.asarray(vector + residual)
  size = accumulated.shape[0]
  indices = np.asarray(_top_k_indices(
      jnp.asarray(accumulated), num_kept(settings, size)))
  indices = np.sort(indices)
  values = accumulated[indices].astype(_FLOAT32).tobytes()
  if _uses_bitmap(settings, size):
    bitmap = np.zeros(size, np.uint8)
    bitmap[indices] = 1
    return values + np.packbits(bitmap, bitorder='little').tobytes()
  index_type = np.dtype(f'<u{_index_bytes(size)}')
  return values + indices.astype(index_type).tobytes()


def _decode_top_k(
    settings: CompressionSettings, message: bytes, size: int
) -> np.ndarray:
  kept = num_kept(settings, size)
  values = np.frombuffer(message[:4 * kept], _FLOAT32)
  positions = message[4 * kept:]
  if _uses_bitmap(settings, size):
    bitmap = np.unpackbits(
        np.frombuffer(positions, np.uint8), count=size, bitorder='little')
    indices = np.flatnonzero(bitmap)
  else:
    index_type = np.dtype(f'<u{_index_bytes(size)}')
    indices = np.frombuffer(positions, index_type).astype(np.int64)
  distinct = np.unique(indices).shape[0] == indices.shape[0]
  if indices.shape[0] != kept or not distinct or np.any(indices >= size):
    raise ValueError(
        f'Invalid top_k message: expected {kept} distinct positions below '
        f'{size}; got {indices.tolist()[:10]}.'
    )
  decoded = np.zeros(size, np.float32)
  decoded[indices] = values
  return decoded


def encode(
    settings: CompressionSettings,
    vector,
    key: PRNGKey,
    residual=None,
) -> bytes:
  """Return the wire message of one client's compressed update.

  Runs on the host with the same quantization and selection as `compress`,
  so `decode` of the message equals the `decoded` that `compress` returns
  for the same arguments. Its length is `encoded_bytes(settings, d)`.

  Args:
    settings: the compressor.
    vector: `[d]` float32 update.
    key: the key that `compress` would be given.
    residual: the top_k residual, or None for zeros.
  """
  validate(settings)
  if settings.kind == 'top_k':
    return _encode_top_k(settings, vector, key, residual)
  vector, _ = _check_vector(vector, None)
  if settings.kind == 'none':
    return np.asarray(vector, _FLOAT32).tobytes()
  width = bits_per_coordinate(settings)
  if settings.kind == 'qsgd':
    return _encode_quantized(
        _qsgd_quantize(vector, key, settings.levels), width)
  sign_key, quantize_key = _rotation_keys(key)
  quantized = _range_quantize(
      rotate(vector, sign_key), quantize_key, settings.levels)
  limits = np.asarray([quantized.low, quantized.high], _FLOAT32).tobytes()
  return limits + _pack_codes(np.asarray(quantized.level), width)


def decode(
    settings: CompressionSettings,
    message: bytes,
    size: int,
    key: PRNGKey | None = None,
) -> np.ndarray:
  """Reconstruct a client's update from its message, on the server.

  Args:
    settings: the compressor that encoded the message.
    message: the output of `encode`.
    size: `d`, the length of the update.
    key: the client's key; needed only by rotated, to rebuild the
      random signs of the rotation.

  Returns:
    `[size]` float32, equal to the `decoded` that `compress` returns.

  Raises:
    ValueError: if the message length is not `encoded_bytes(settings, size)`
      or its contents are out of range.
  """
  expected = encoded_bytes(settings, size)
  if len(message) != expected:
    raise ValueError(
        f'A {settings.kind} message for {size} coordinates has {expected} '
        f'bytes; got {len(message)}. Check `size` and `settings`.'
    )
  if settings.kind == 'none':
    return np.frombuffer(message, _FLOAT32).astype(np.float32)
  if settings.kind == 'top_k':
    return _decode_top_k(settings, message, size)
  if settings.kind == 'qsgd':
    return np.asarray(_decode_quantized(message, size, settings))
  if key is None:
    raise ValueError(
        'rotated needs the client\'s `key` to rebuild the rotation.')
  sign_key, _ = _rotation_keys(key)
  low, high = np.frombuffer(message[:8], _FLOAT32)
  level = _unpack_codes(message[8:], rotated_size(size),
                        bits_per_coordinate(settings))
  if np.any(level > settings.levels):
    raise ValueError(
        f'Invalid rotated message: level {int(level.max())} exceeds '
        f'`levels` {settings.levels}.'
    )
  rotated = _range_dequantize(
      _RangeQuantized(jnp.float32(low), jnp.float32(high),
                      jnp.asarray(level.astype(np.int32))), settings.levels)
  return np.asarray(unrotate(rotated, sign_key, size))
