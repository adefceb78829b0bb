"""Pytree maths used by clipping, aggregation and the server."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedjax_med.typing import PyTree


def power_of_two_exponent(magnitude: jax.Array) -> jax.Array:
  """Return the int exponent `e` with `magnitude * 2**-e` in [0.5, 1).

  Zero, NaN and infinite magnitudes get 0. Code that must not lose huge or
  tiny floats works at unit scale on `jnp.ldexp(x, -e)`, an exact
  rescaling. XLA on CPU may divide by multiplying with a reciprocal. The
  reciprocal of a number above about 8.5e37 is subnormal, and the CPU
  flushes it to zero. At unit scale every intermediate stays a normal float.
  """
  finite = jnp.isfinite(magnitude)
  _, exponent = jnp.frexp(jnp.where(finite, magnitude, 0.0))
  return exponent


def divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """Return `numerator / denominator` without flushing a huge denominator.

  The denominator is rescaled to [0.5, 1) before the division, and the
  quotient is scaled back. So a normal quotient stays exact to rounding
  for any finite denominator (see `power_of_two_exponent`). Zero, NaN and
  infinite denominators divide as they would in a plain `/`.
  """
  exponent = power_of_two_exponent(jnp.abs(denominator))
  return jnp.ldexp(numerator / jnp.ldexp(denominator, -exponent), -exponent)


def tree_l2_norm(tree: PyTree) -> jax.Array:
  """Return the L2 norm of all leaves of `tree` taken together.

  The entries are rescaled by a power of two near the largest magnitude
  before squaring, so a finite tree whose squares would overflow float32
  (entries near 1e20) or whose entries are near the float32 maximum still
  gets its norm. The norm is inf when it exceeds the float maximum, for a
  tree with an infinite entry, and NaN for a tree with NaN.

  The norm is computed in the widest floating type among the leaves, and at
  least float32: bfloat16 leaves get a float32 norm, and float64 leaves
  (under `jax_enable_x64`) a float64 one, so clipping a float64 update to C
  gives a norm of C to float64 precision.
  """
  unit_norm, exponent = scaled_l2_norm(tree)
  return jnp.ldexp(unit_norm, exponent)


def scaled_l2_norm(tree: PyTree) -> tuple[jax.Array, jax.Array]:
  """Return `(unit_norm, exponent)` with the L2 norm `unit_norm * 2**exponent`.

  `exponent` brings the largest finite magnitude into [0.5, 1) (see
  `power_of_two_exponent`), so `unit_norm` is finite for every finite tree,
  also when the norm itself is above the float maximum. Clipping divides
  by `unit_norm` for that reason. The dtype rules are those of
  `tree_l2_norm`.
  """
  leaves = [leaf for leaf in jax.tree.leaves(tree) if leaf.size]
  dtype = jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))
  leaves = [leaf.astype(dtype) for leaf in leaves]
  if not leaves:
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
  largest = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))
  exponent = power_of_two_exponent(largest)
  squares = [
      jnp.sum(jnp.square(jnp.ldexp(leaf, -exponent))) for leaf in leaves
  ]
  return jnp.sqrt(sum(squares)), exponent


def tree_is_finite(tree: PyTree) -> jax.Array:
  """Return a scalar bool: True when every entry of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def tree_where(condition: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Select between two pytrees of equal structure with a scalar condition."""
  return jax.tree.map(
      lambda a, b: jnp.where(condition, a, b), on_true, on_false
  )


def finite_or(primary: PyTree, fallback: Callable[[], PyTree]) -> PyTree:
  """Return `primary`, with `fallback()` where only the fallback is finite.

  Aggregators sum first and divide after, which keeps their rounding, but
  the sum of finite float32 values can overflow. They pass a function that
  sums pre-divided terms as `fallback`. It runs only when `primary` has a
  NaN or infinite entry (under `vmap` both run), and it is used only where
  it is finite, so inputs with NaN or infinity keep their result.
  """

  def patched(primary):
    return jax.tree.map(
        lambda first, second: jnp.where(
            jnp.isfinite(first) | ~jnp.isfinite(second), first, second),
        primary, fallback())

  return jax.lax.cond(tree_is_finite(primary), lambda tree: tree, patched,
                      primary)


def tree_zero_rows(tree: PyTree, keep: jax.Array) -> PyTree:
  """Zero the rows of `[clients, ...]` leaves where `keep [clients]` is False.

  `jnp.where` discards whatever those rows contain, NaN included.
  """
  return jax.tree.map(
      lambda leaf: jnp.where(
          keep.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf,
          jnp.zeros_like(leaf)),
      tree)


def tree_scale(tree: PyTree, scale: jax.Array) -> PyTree:
  """Multiply every leaf by `scale`."""
  return jax.tree.map(lambda leaf: leaf * scale, tree)


def tree_zeros_like(tree: PyTree) -> PyTree:
  return jax.tree.map(jnp.zeros_like, tree)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.subtract, a, b)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def is_traced(value) -> bool:
  """Return True for a value only known inside a trace (jit, vmap, scan).

  Setting checks skip such values: `fedjax_med.sweep` passes learning rates,
  mu and noise multipliers as traced arrays, after checking each
  experiment's concrete value in its config.
  """
  return isinstance(value, jax.core.Tracer)
