"""A small logistic-regression population shared by the round tests.

Clients hold 3 Gaussian features and random binary labels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.simulation import round as round_lib

MODEL = tabular.from_flax(tabular.LogisticRegression(2), 2)
# LogisticRegression(2) on 3 features: a [3, 1] kernel and a [1] bias.
NUM_PARAMS = 4
NUM_STEPS = 6


def population(counts, nan_client=None, seed=0):
  """Return stacked clients with `counts[i]` rows; `nan_client` is all NaN."""
  rng = np.random.default_rng(seed)
  clients = []
  for index, count in enumerate(counts):
    x = rng.normal(size=(count, 3)).astype(np.float32)
    if index == nan_client:
      x[:] = np.nan
    clients.append({'x': x, 'y': (rng.random(count) > 0.5).astype(np.int32)})
  return jax.device_put(federated.stack_clients(clients))


def local_update(num_steps=NUM_STEPS, learning_rate=0.1):
  return local_training.build_local_update(
      MODEL, optax.sgd(learning_rate), num_steps=num_steps, batch_size=2)


def server_state(key, server_optimizer=optax.sgd(1.0), **kwargs):
  """Return a server state at fresh parameters; kwargs go to the init."""
  params = MODEL.init(key, jnp.zeros((1, 3)))
  return round_lib.init_server_state(params, server_optimizer, **kwargs)


def assert_leaves_close(a, b, **tolerance):
  for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(left, right, **tolerance)
