"""Gaussian noise for updates, one independent key per leaf."""

import jax

from fedjax_med.typing import PRNGKey, PyTree


def add_gaussian_noise(tree: PyTree, stddev: float, *, key: PRNGKey) -> PyTree:
  """Add `N(0, stddev**2)` noise to every entry of `tree`.

  Each leaf draws from its own subkey of `key`, so no two leaves share noise.
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noisy = [
      leaf + stddev * jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
      for leaf, leaf_key in zip(leaves, keys)
  ]
  return jax.tree.unflatten(treedef, noisy)
