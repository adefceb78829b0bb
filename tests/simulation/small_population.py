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


def population(counts, seed=0):
  """Return stacked clients with `counts[i]` rows."""
  rng = np.random.default_rng(seed)
  clients = []
  for count in counts:
    x = rng.normal(size=(count, 3)).astype(np.float32)
    clients.append({'x': x, 'y': (rng.random(count) > 0.5).astype(np.int32)})
  return jax.device_put(federated.stack_clients(clients))


def local_update(num_steps=NUM_STEPS, learning_rate=0.1):
  return local_training.build_local_update(
      MODEL, optax.sgd(learning_rate), num_steps=num_steps, batch_size=2)


def diverging_update(diverging_count):
  """Return `local_update()` with a NaN delta and loss for some clients.

  A client with `diverging_count` rows acts as one whose training
  diverged. `build_round` rejects NaN in the input data, so the round's
  screening of non-finite updates is reached this way.
  """
  update = local_update()

  def diverging(server_params, examples, num_examples, key, **kwargs):
    result = update(server_params, examples, num_examples, key, **kwargs)
    diverged = num_examples == diverging_count
    return result._replace(
        delta=jax.tree.map(lambda leaf: jnp.where(diverged, jnp.nan, leaf),
                           result.delta),
        loss=jnp.where(diverged, jnp.nan, result.loss))

  diverging.num_classes = update.num_classes
  return diverging


def server_state(key, server_optimizer=optax.sgd(1.0), **kwargs):
  """Return a server state at fresh parameters; kwargs go to the init."""
  params = MODEL.init(key, jnp.zeros((1, 3)))
  return round_lib.init_server_state(params, server_optimizer, **kwargs)


def assert_leaves_close(a, b, **tolerance):
  for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(left, right, **tolerance)
