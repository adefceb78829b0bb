"""Local training: batches from real rows only, epochs, zero-example clients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.models import tabular


def _model():
  return tabular.from_flax(tabular.LogisticRegression(2), 2)


def _client(num_rows, num_padding, padding_value=0.0, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_rows, 3)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  x = np.concatenate([x, np.full((num_padding, 3), padding_value, np.float32)])
  y = np.concatenate([y, np.full((num_padding,), 7, np.int32)])
  return {'x': jnp.asarray(x), 'y': jnp.asarray(y)}


def _params(model, key):
  return model.init(key, jnp.zeros((1, 3)))


@pytest.mark.parametrize('jit', [False, True])
def test_padding_never_read(key, jit):
  model = _model()
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=20, batch_size=2
  )
  if jit:
    local_update = jax.jit(local_update)
  params = _params(model, key)

  unpadded = local_update(params, _client(5, 0), jnp.int32(5), key)
  padded = local_update(params, _client(5, 9, jnp.nan), jnp.int32(5), key)

  for leaf, padded_leaf in zip(
      jax.tree.leaves(unpadded.delta), jax.tree.leaves(padded.delta)
  ):
    np.testing.assert_allclose(leaf, padded_leaf, rtol=1e-6)
  assert np.isfinite(float(padded.loss))


def test_epoch_visits_each_row_once(key):
  seen = []
  for step in range(3):
    indices, valid = local_training._batch_indices(
        key, jnp.int32(step), jnp.int32(7), 10, 3
    )
    seen.extend(np.asarray(indices)[np.asarray(valid)].tolist())

  assert sorted(seen) == list(range(7))


def test_epochs_shuffle_differently(key):
  first = local_training._batch_indices(key, jnp.int32(0), jnp.int32(50), 50, 50)
  second = local_training._batch_indices(key, jnp.int32(1), jnp.int32(50), 50, 50)

  assert not np.array_equal(first[0], second[0])


def test_zero_examples_zero_delta(key):
  model = _model()
  local_update = local_training.build_local_update(
      model, optax.adamw(0.1, weight_decay=0.5), num_steps=5, batch_size=2
  )

  result = local_update(_params(model, key), _client(0, 4), jnp.int32(0), key)

  for leaf in jax.tree.leaves(result.delta):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  assert int(result.num_steps) == 0


def test_epochs_mode_step_count(key):
  model = _model()
  # A client of 5 rows with batch 2 has 3 batches per epoch: 2 epochs = 6.
  num_steps = local_training.max_local_steps(9, 2, 2)
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=num_steps, batch_size=2, num_epochs=2
  )

  result = local_update(_params(model, key), _client(5, 4), jnp.int32(5), key)

  assert num_steps == 10
  assert int(result.num_steps) == 6


def test_training_lowers_loss(key):
  model = _model()
  local_update = local_training.build_local_update(
      model, optax.sgd(0.5), num_steps=200, batch_size=8
  )
  client = _client(64, 0)
  params = _params(model, key)

  result = local_update(params, client, jnp.int32(64), key)
  trained = jax.tree.map(jnp.add, params, result.delta)

  def loss(p):
    logits = model.apply(p, client['x'])
    return float(jnp.mean(tabular.per_example_loss(logits, client['y'], 2)))

  assert loss(trained) < 0.5 * loss(params)


def test_invalid_batch_size():
  with pytest.raises(ValueError, match='batch_size'):
    local_training.build_local_update(
        _model(), optax.sgd(0.1), num_steps=1, batch_size=0
    )


def test_epochs_truncation_reported(key):
  model = _model()
  # 16 rows, batch 4, 3 epochs need 12 steps; the scan has 5.
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=5, batch_size=4, num_epochs=3
  )

  result = local_update(_params(model, key), _client(16, 0), jnp.int32(16), key)

  assert int(result.num_steps) == 5
  assert bool(result.truncated)


def test_invalid_num_epochs():
  with pytest.raises(ValueError, match='num_epochs'):
    local_training.build_local_update(
        _model(), optax.sgd(0.1), num_steps=5, batch_size=2, num_epochs=0
    )
