"""Params that stay on the clients: FedBN's normalization layers.

FedBN (Li et al., 2021) averages every layer but the normalization layers,
whose weights and statistics each client keeps for itself. The round takes
a bool `mask` shaped like the params, True for a leaf that stays local (as
`models.cnn.norm_mask` marks them). It keeps one copy of those leaves per
client of the population in `ServerState.local`: a nested dict of only
the local leaves, each shaped `[clients, *leaf_shape]`. The server never
reads or averages them: a cohort member trains from the global params with
its own local leaves put in, writes its new local leaves back, and sends
only the rest.

Params must be nested dicts, as flax's are.

Reference:
  Li, Jiang, Zhang, Kamp and Dou. FedBN: Federated Learning on Non-IID
  Features via Local Batch Normalization. ICLR 2021.
  https://arxiv.org/abs/2102.07623
"""

import flax.traverse_util
import jax
import jax.numpy as jnp

from fedjax_med.typing import Params


def _local_paths(mask: Params) -> list[tuple[str, ...]]:
  flat = flax.traverse_util.flatten_dict(mask)
  return [path for path, is_local in flat.items() if bool(is_local)]


def check_mask(params: Params, mask: Params) -> None:
  """Raise ValueError unless `mask` is a bool per leaf of `params`."""
  if jax.tree.structure(params) != jax.tree.structure(mask):
    raise ValueError(
        'The local-leaf mask must have the structure of the params; got '
        f'{jax.tree.structure(mask)} for params {jax.tree.structure(params)}.'
    )
  if not _local_paths(mask):
    raise ValueError(
        'The local-leaf mask marks no leaf as local, so FedBN would equal '
        'FedAvg. Check that the model has normalization layers.'
    )


def split(params: Params, mask: Params) -> Params:
  """Return the nested dict of only the leaves of `params` marked in `mask`."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: flat[path] for path in _local_paths(mask)})


def merge(params: Params, local: Params) -> Params:
  """Return `params` with the leaves present in `local` replaced by them."""
  flat = flax.traverse_util.flatten_dict(params)
  flat.update(flax.traverse_util.flatten_dict(local))
  return flax.traverse_util.unflatten_dict(flat)


def zero_local(params: Params, mask: Params) -> Params:
  """Return `params` with the leaves marked in `mask` set to zero."""
  return jax.tree.map(
      lambda leaf, is_local: jnp.zeros_like(leaf) if is_local else leaf,
      params, mask,
  )


def init_local(params: Params, mask: Params, num_clients: int) -> Params:
  """Return every client's copy of the local leaves, starting at `params`."""
  return jax.tree.map(
      lambda leaf: jnp.broadcast_to(leaf, (num_clients,) + leaf.shape),
      split(params, mask),
  )


def client_params(params: Params, local: Params) -> Params:
  """Return each client's model, leaves shaped `[clients, *leaf_shape]`.

  Pass the result to `simulation.evaluate.build_evaluate(...,
  personalized=True)` to evaluate every client with its own local leaves.
  """
  return jax.vmap(merge, in_axes=(None, 0))(params, local)
