"""Shamir t-of-n secret sharing over GF(2**31 - 1), vectorized.

A secret `s` is the constant term of a random polynomial `f` of degree
`t - 1`; the share of holder `r` is `f(r + 1)`. Any `t` shares determine `f`
and so `s = f(0)` by Lagrange interpolation, while fewer than `t` shares are
uniformly distributed whatever `s` is (Shamir, 1979, "How to Share a
Secret", Communications of the ACM 22(11)).
"""

import jax
import jax.numpy as jnp

from fedjax_med.secure import field


def share(
    key: jax.Array, secrets: jax.Array, num_shares: int, threshold: int,
    *, used_threshold: jax.Array | int | None = None,
) -> jax.Array:
  """Split each secret into `num_shares` shares, any `threshold` of which
  recover it.

  Args:
    key: PRNG key of the polynomials' random coefficients.
    secrets: `[...]` uint32 field elements.
    num_shares: holders per secret; holder `r` gets the evaluation at
      `x = r + 1`.
    threshold: shares needed to reconstruct, in [1, num_shares].
    used_threshold: a smaller threshold for this call, traced or not, in
      [1, threshold]: the coefficients of degree `used_threshold` and up
      are zero, so any `used_threshold` shares recover the secret. None
      uses `threshold`; the shares are the same when they are equal.

  Returns:
    `[..., num_shares]` uint32 shares.
  """
  if not 1 <= threshold <= num_shares:
    raise ValueError(
        f'Shamir threshold must be in [1, {num_shares}] for {num_shares} '
        f'shares; got {threshold}.'
    )
  if used_threshold is not None and not isinstance(
      used_threshold, jax.core.Tracer) and not (
          1 <= int(used_threshold) <= threshold):
    # 0 made every share equal the secret.
    raise ValueError(
        f'`used_threshold` must be in [1, {threshold}]; got '
        f'{used_threshold}.'
    )
  secrets = jnp.asarray(secrets, jnp.uint32)
  coefficients = field.random_elements(
      key, (threshold - 1, *secrets.shape)
  )
  if used_threshold is not None:
    # coefficients[c] multiplies x**(c + 1).
    kept = jnp.arange(threshold - 1) < used_threshold - 1
    coefficients = jnp.where(
        kept.reshape((-1,) + (1,) * secrets.ndim), coefficients,
        jnp.uint32(0))
  xs = jnp.broadcast_to(jnp.arange(1, num_shares + 1, dtype=jnp.uint32),
                        (*secrets.shape, num_shares))
  # Horner's rule from the highest coefficient down to the secret. The loops
  # here and below are `fori_loop`s, so compile time does not grow with t.
  def horner_step(index, values):
    coefficient = coefficients[threshold - 2 - index]
    return field.add(field.multiply(values, xs), coefficient[..., None])

  values = jnp.zeros((*secrets.shape, num_shares), jnp.uint32)
  if threshold > 1:
    values = jax.lax.fori_loop(0, threshold - 1, horner_step, values)
  return field.add(field.multiply(values, xs), secrets[..., None])


def lagrange_at_zero(xs: jax.Array, use: jax.Array | None = None
                     ) -> jax.Array:
  """Return the weights `l_j` with `f(0) = sum_j l_j f(x_j)`, `[..., t]`.

  `l_j = prod_{m != j} x_m / (x_m - x_j)`, the products over the points
  in `use` (`[t]` bool, default all); points outside it get weight 0. The
  `xs` in use must be distinct and nonzero.
  """
  xs = jnp.asarray(xs, jnp.uint32)
  t = xs.shape[-1]
  positions = jnp.arange(t)
  use = jnp.ones((t,), bool) if use is None else jnp.asarray(use, bool)

  def multiply_in(m, carry):
    numerators, denominators = carry
    x_m = jnp.broadcast_to(jnp.take(xs, m, axis=-1)[..., None], xs.shape)
    is_self = (positions == m) | ~use[m]
    numerators = field.multiply(
        numerators, jnp.where(is_self, jnp.uint32(1), x_m))
    denominators = field.multiply(
        denominators,
        jnp.where(is_self, jnp.uint32(1), field.subtract(x_m, xs)))
    return numerators, denominators

  ones = jnp.ones_like(xs)
  numerators, denominators = jax.lax.fori_loop(
      0, t, multiply_in, (ones, ones))
  weights = field.multiply(numerators, field.inverse(denominators))
  return jnp.where(use, weights, jnp.uint32(0))


def reconstruct(xs: jax.Array, shares: jax.Array,
                use: jax.Array | None = None) -> jax.Array:
  """Return the secret from `t` shares `f(xs)`, both `[..., t]`.

  With `use` (`[t]` bool), only those shares count; the polynomial's
  degree must be below their number.
  """
  weights = lagrange_at_zero(xs, use)
  terms = field.multiply(weights, jnp.asarray(shares, jnp.uint32))
  return jax.lax.fori_loop(
      1, terms.shape[-1],
      lambda j, total: field.add(total, terms[..., j]), terms[..., 0])
