"""Conversion between a client-update pytree and a `[clients, D]` matrix.

Robust aggregators that measure distances between whole updates work on one
flat vector per client. These helpers flatten the pytree once, check the
eager arguments every aggregator shares, and rebuild the output pytree.
"""

from collections.abc import Callable
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import tree
from fedjax_med.typing import PyTree


def num_clients(client_updates: PyTree) -> int:
  """Return the static size of the leading `clients` axis.

  Raises:
    ValueError: if the pytree has no leaves, a leaf has no leading axis, or
      the leaves disagree on the number of clients.
  """
  leaves = jax.tree.leaves(client_updates)
  if not leaves:
    raise ValueError('client_updates has no leaves; pass at least one array.')
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if None in sizes:
    raise ValueError(
        'client_updates has a scalar leaf; every leaf needs a leading '
        '`clients` axis.'
    )
  if len(sizes) != 1:
    raise ValueError(
        f'client_updates leaves have different client counts {sorted(sizes)}; '
        'every leaf needs the same leading axis.'
    )
  return sizes.pop()


def check_client_vector(name: str, vector: jax.Array, clients: int) -> None:
  """Raise ValueError unless `vector` has shape `[clients]`."""
  if np.shape(vector) != (clients,):
    raise ValueError(
        f'{name} has shape {np.shape(vector)}; expected ({clients},), one '
        'entry per client.'
    )


def check_int(name: str, value: object, minimum: int) -> int:
  """Return `value` as an int, or raise ValueError if it is not >= minimum."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be a Python int, got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}.')
  return int(value)


def check_positive_float(name: str, value: object) -> float:
  """Return `value` as a float, or raise ValueError unless finite and > 0."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f'{name} must be a Python number, got {value!r}.')
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f'{name} must be finite and > 0, got {value}.')
  return float(value)


def flatten_clients(
    client_updates: PyTree,
) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
  """Flatten a client-update pytree to one row per client.

  Args:
    client_updates: pytree with leaves shaped `[clients, *param_shape]`.

  Returns:
    `(matrix, unflatten)`: `matrix` is `[clients, D]` in the promoted dtype
    of float32 and the leaves, with D the total number of parameters.
    `unflatten` maps a `[D]` vector back to a pytree with leaves shaped
    `param_shape`, each cast to its leaf's original dtype.
  """
  clients = num_clients(client_updates)
  leaves, treedef = jax.tree.flatten(client_updates)
  dtype = jnp.result_type(jnp.float32, *leaves)
  rows = [jnp.reshape(leaf, (clients, -1)).astype(dtype) for leaf in leaves]
  matrix = jnp.concatenate(rows, axis=1)
  shapes = [np.shape(leaf)[1:] for leaf in leaves]
  dtypes = [jnp.result_type(leaf) for leaf in leaves]
  boundaries = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]

  def unflatten(vector: jax.Array) -> PyTree:
    pieces = jnp.split(vector, boundaries)
    out = [
        jnp.reshape(piece, shape).astype(piece_dtype)
        for piece, shape, piece_dtype in zip(pieces, shapes, dtypes)
    ]
    return jax.tree.unflatten(treedef, out)

  return matrix, unflatten


def finite_rows(matrix: jax.Array, keep: jax.Array) -> jax.Array:
  """Return `keep` without the rows that contain NaN or inf.

  A non-finite update has no usable norm or distance, so the aggregators
  that measure whole updates leave it out, as they leave out masked rows.
  """
  return keep & jnp.all(jnp.isfinite(matrix), axis=1)


def mask_rows(matrix: jax.Array, keep: jax.Array) -> jax.Array:
  """Replace the rows where `keep` is False by zeros, discarding NaN there."""
  return jnp.where(keep[:, None], matrix, jnp.zeros_like(matrix))


def valid_lower_median(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Return the lower median of `values` over the rows of `mask`.

  An attacking minority cannot move it. With no row in `mask` it is inf.
  """
  count = jnp.sum(mask.astype(jnp.int32))
  ranked = jnp.sort(jnp.where(mask, values, jnp.inf))
  return ranked[jnp.maximum(count - 1, 0) // 2]


def row_l2_norms(matrix: jax.Array) -> jax.Array:
  """Return the `[clients]` L2 norm of each row without float overflow.

  Each row is rescaled by a power of two near its largest magnitude before
  squaring, as `fedjax_med.tree.tree_l2_norm` does for a whole tree. A norm
  above the float maximum is inf.
  """
  unit_norms, exponents = _row_scaled_l2_norms(matrix)
  return jnp.ldexp(unit_norms, exponents)


def _row_scaled_l2_norms(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Return per-row `(unit_norm, exponent)`, as `tree.scaled_l2_norm`."""
  largest = jnp.max(jnp.abs(matrix), axis=1, initial=0.0)
  exponents = tree.power_of_two_exponent(largest)
  unit = jnp.ldexp(matrix, -exponents[:, None])
  return jnp.sqrt(jnp.sum(jnp.square(unit), axis=1)), exponents


def clip_rows(matrix: jax.Array, radius: float) -> jax.Array:
  """Scale each row of `matrix` with L2 norm above `radius` to norm `radius`.

  Rows at or below `radius` are returned unchanged. The scaling runs at
  unit scale (see `fedjax_med.tree.power_of_two_exponent`), so a row with
  norm 1e38, or a finite row whose norm is above the float maximum, is
  clipped to `radius`, not flushed to zeros by a factor `radius / norm`.
  """
  unit_norms, exponents = _row_scaled_l2_norms(matrix)
  norms = jnp.ldexp(unit_norms, exponents)
  factors = radius / jnp.where(unit_norms > 0, unit_norms, 1.0)
  clipped = jnp.ldexp(matrix, -exponents[:, None]) * factors[:, None]
  return jnp.where((norms > radius)[:, None], clipped, matrix)
