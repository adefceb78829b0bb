"""L2 clipping of a whole client update, all leaves together."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med import tree
from fedjax_med.typing import PyTree


class ClipResult(NamedTuple):
  """A clipped update with its diagnostics.

  Attributes:
    update: the update scaled to L2 norm at most `clip_norm`.
    norm: L2 norm of the update before clipping.
    clipped: True when the update was scaled down.
  """

  update: PyTree
  norm: jax.Array
  clipped: jax.Array


def clip_update(update: PyTree, clip_norm: float | None) -> ClipResult:
  """Scale `update` so that its global L2 norm is at most `clip_norm`.

  The norm is taken over every leaf together, so the whole update, not each
  layer, is bounded. `clip_norm=None` leaves the update unchanged.
  """
  unit_norm, exponent = tree.scaled_l2_norm(update)
  norm = jnp.ldexp(unit_norm, exponent)
  if clip_norm is None:
    return ClipResult(update, norm, jnp.zeros((), bool))
  # The factor clip_norm / norm is subnormal for a norm above about
  # 8.5e37 * clip_norm, which the CPU flushes to zero, and 0 for a norm
  # above the float maximum. At unit scale, `ldexp(leaf, -exponent)`
  # times `clip_norm / unit_norm`, both factors stay normal.
  factor = clip_norm / jnp.maximum(unit_norm, 1e-30)
  clipped = norm > clip_norm

  def clip_leaf(leaf):
    dtype = jnp.result_type(leaf, factor)
    leaf = leaf.astype(dtype)
    return jnp.where(clipped, jnp.ldexp(leaf, -exponent) * factor, leaf)

  result = jax.tree.map(clip_leaf, update)
  return ClipResult(result, norm, clipped)
