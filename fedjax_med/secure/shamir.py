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
    key: jax.Array, secrets: jax.Array, num_shares: int, threshold: int
) -> jax.Array:
  """Split each secret into `num_shares` shares, any `threshold` of which
  recover it.

  Args:
    key: PRNG key of the polynomials' random coefficients.
    secrets: `[...]` uint32 field elements.
    num_shares: holders per secret; holder `r` gets the evaluation at
      `x = r + 1`.
    threshold: shares needed to reconstruct, in [1, num_shares].

  Returns:
    `[..., num_shares]` uint32 shares.
  """
  if not 1 <= threshold <= num_shares:
    raise ValueError(
        f'Shamir threshold must be in [1, {num_shares}] for {num_shares} '
        f'shares; got {threshold}.'
    )
  secrets = jnp.asarray(secrets, jnp.uint32)
  coefficients = field.random_elements(
      key, (threshold - 1, *secrets.shape)
  )
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


def lagrange_at_zero(xs: jax.Array) -> jax.Array:
  """Return the weights `l_j` with `f(0) = sum_j l_j f(x_j)`, `[..., t]`.

  `l_j = prod_{m != j} x_m / (x_m - x_j)`; the `xs` must be distinct and
  nonzero.
  """
  xs = jnp.asarray(xs, jnp.uint32)
  t = xs.shape[-1]
  positions = jnp.arange(t)

  def multiply_in(m, carry):
    numerators, denominators = carry
    x_m = jnp.broadcast_to(jnp.take(xs, m, axis=-1)[..., None], xs.shape)
    is_self = positions == m
    numerators = field.multiply(
        numerators, jnp.where(is_self, jnp.uint32(1), x_m))
    denominators = field.multiply(
        denominators,
        jnp.where(is_self, jnp.uint32(1), field.subtract(x_m, xs)))
    return numerators, denominators

  ones = jnp.ones_like(xs)
  numerators, denominators = jax.lax.fori_loop(
      0, t, multiply_in, (ones, ones))
  return field.multiply(numerators, field.inverse(denominators))


def reconstruct(xs: jax.Array, shares: jax.Array) -> jax.Array:
  """Return the secret from `t` shares `f(xs)`, both `[..., t]`."""
  weights = lagrange_at_zero(xs)
  terms = field.multiply(weights, jnp.asarray(shares, jnp.uint32))
  return jax.lax.fori_loop(
      1, terms.shape[-1],
      lambda j, total: field.add(total, terms[..., j]), terms[..., 0])
