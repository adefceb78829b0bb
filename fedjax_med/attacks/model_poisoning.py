"""Model-poisoning attacks: malicious clients replace their updates.

Every attack maps `client_updates` (a pytree with leaves shaped
`[clients, *param_shape]`) and a bool `malicious [clients]` mask to new
updates in which only the malicious rows changed. Omniscient attacks (A
Little Is Enough, inner-product manipulation) read the honest rows, which
`honest` marks; rows in neither mask, such as dropped clients, are ignored.

References:
  Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses
  For Distributed Learning", NeurIPS 2019, https://arxiv.org/abs/1902.06156.

  Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
  by Inner Product Manipulation", UAI 2020, https://arxiv.org/abs/1903.03936.

  Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020,
  https://arxiv.org/abs/1807.00459 (model replacement by scaling).
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy import special

from fedjax_med.typing import PRNGKey, PyTree


def choose_malicious(
    num_clients: int, fraction: float, *, key: PRNGKey
) -> jax.Array:
  """Return a `[clients]` bool mask with `round(fraction * num_clients)` True.

  The malicious clients are a uniformly random subset chosen by `key`, so
  each run (seed) attacks with a different set.

  Raises:
    ValueError: if `fraction` is not in [0, 1].
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'`fraction` must be in [0, 1]; got {fraction}.')
  num_malicious = round(fraction * num_clients)
  order = jax.random.permutation(key, num_clients)
  return jnp.zeros(num_clients, bool).at[order[:num_malicious]].set(True)


def _replace_rows(client_updates, malicious, replacement_fn):
  """Apply `replacement_fn(leaf)` to every leaf, only on malicious rows."""

  def replace(leaf):
    rows = malicious.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.where(rows, replacement_fn(leaf), leaf)

  return jax.tree.map(replace, client_updates)


def sign_flip(
    client_updates: PyTree, malicious: jax.Array, *, scale: float = 1.0
) -> PyTree:
  """Replace each malicious update `u` by `-scale * u`."""
  return _replace_rows(client_updates, malicious, lambda leaf: -scale * leaf)


def scaling(
    client_updates: PyTree, malicious: jax.Array, *, factor: float
) -> PyTree:
  """Multiply each malicious update by `factor` (model replacement boost)."""
  return _replace_rows(client_updates, malicious, lambda leaf: factor * leaf)


def gaussian_noise(
    client_updates: PyTree, malicious: jax.Array, *, stddev: float,
    key: PRNGKey,
) -> PyTree:
  """Replace each malicious update by pure `N(0, stddev**2)` noise."""
  leaves, treedef = jax.tree.flatten(client_updates)
  keys = jax.random.split(key, len(leaves))
  noise = [stddev * jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
           for leaf, leaf_key in zip(leaves, keys)]
  replaced = [
      jnp.where(malicious.reshape((-1,) + (1,) * (leaf.ndim - 1)), fake, leaf)
      for leaf, fake in zip(leaves, noise)
  ]
  return jax.tree.unflatten(treedef, replaced)


def _honest_moments(leaf, honest):
  """Return the coordinate-wise mean and std of the honest rows of `leaf`.

  Both keep a leading axis of size 1, so they broadcast against `leaf`.
  """
  rows = honest.reshape((-1,) + (1,) * (leaf.ndim - 1))
  count = jnp.maximum(jnp.sum(honest), 1)
  mean = jnp.sum(jnp.where(rows, leaf, 0.0), axis=0, keepdims=True) / count
  squares = jnp.where(rows, (leaf - mean) ** 2, 0.0)
  variance = jnp.sum(squares, axis=0, keepdims=True) / count
  return mean, jnp.sqrt(variance)


def little_is_enough_z(num_clients: int, num_malicious: int) -> float:
  """Return Baruch et al.'s `z_max` for `num_clients` with `num_malicious`.

  With `s = floor(n / 2 + 1) - f` honest clients needed for a majority,
  `z_max = Phi^-1((n - s) / n)`, the largest shift (in honest standard
  deviations) that a coordinate-wise defence still accepts.
  """
  needed = math.floor(num_clients / 2 + 1) - num_malicious
  quantile = (num_clients - needed) / num_clients
  return float(special.ndtri(jnp.clip(quantile, 1e-6, 1 - 1e-6)))


def little_is_enough(
    client_updates: PyTree, malicious: jax.Array, honest: jax.Array,
    *, z: float,
) -> PyTree:
  """Replace malicious updates by `mean - z * std` of the honest updates.

  The shift stays within the honest spread on every coordinate, so
  median- and distance-based defences keep it, yet all malicious clients
  push the same way.
  """

  def attack(leaf):
    mean, std = _honest_moments(leaf, honest)
    return jnp.broadcast_to(mean - z * std, leaf.shape)

  return _replace_rows(client_updates, malicious, attack)


def inner_product_manipulation(
    client_updates: PyTree, malicious: jax.Array, honest: jax.Array,
    *, epsilon: float,
) -> PyTree:
  """Replace malicious updates by `-epsilon` times the honest mean.

  A large enough `epsilon` makes the inner product of the aggregate with
  the true update negative under the mean and several robust aggregators.
  """

  def attack(leaf):
    mean, _ = _honest_moments(leaf, honest)
    return jnp.broadcast_to(-epsilon * mean, leaf.shape)

  return _replace_rows(client_updates, malicious, attack)
