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
  # Horner's rule from the highest coefficient down to the secret.
  values = jnp.zeros((*secrets.shape, num_shares), jnp.uint32)
  for coefficient in coefficients[::-1]:
    values = field.add(field.multiply(values, xs), coefficient[..., None])
  return field.add(field.multiply(values, xs), secrets[..., None])


def lagrange_at_zero(xs: jax.Array) -> jax.Array:
  """Return the weights `l_j` with `f(0) = sum_j l_j f(x_j)`, `[..., t]`.

  `l_j = prod_{m != j} x_m / (x_m - x_j)`; the `xs` must be distinct and
  nonzero.
  """
  xs = jnp.asarray(xs, jnp.uint32)
  t = xs.shape[-1]
  others = xs[..., None, :]  # x_m
  own = xs[..., :, None]  # x_j
  is_self = jnp.eye(t, dtype=bool)
  numerators = jnp.where(is_self, jnp.uint32(1), others)
  denominators = jnp.where(is_self, jnp.uint32(1),
                           field.subtract(others, own))

  def product(values):
    result = values[..., 0]
    for m in range(1, t):
      result = field.multiply(result, values[..., m])
    return result

  return field.multiply(product(numerators),
                        field.inverse(product(denominators)))


def reconstruct(xs: jax.Array, shares: jax.Array) -> jax.Array:
  """Return the secret from `t` shares `f(xs)`, both `[..., t]`."""
  weights = lagrange_at_zero(xs)
  terms = field.multiply(weights, jnp.asarray(shares, jnp.uint32))
  result = terms[..., 0]
  for j in range(1, terms.shape[-1]):
    result = field.add(result, terms[..., j])
  return result
