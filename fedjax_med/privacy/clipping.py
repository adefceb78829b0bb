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
  norm = tree.tree_l2_norm(update)
  if clip_norm is None:
    return ClipResult(update, norm, jnp.zeros((), bool))
  scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-30))
  return ClipResult(tree.tree_scale(update, scale), norm, norm > clip_norm)
