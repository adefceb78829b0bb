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


def test_fedprox_closed_form_with_constant_gradient():
  # With a constant data gradient G, SGD step size eta and FedProx mu, the
  # delta d_k = w_k - w_0 follows d_(k+1) = (1 - eta mu) d_k - eta G, so
  # d_K = -G (1 - (1 - eta mu)^K) / mu. A proximal term taken against the
  # moving weights instead of w_0 would give -K eta G.
  gradient = {'w': jnp.array([1.0, -2.0]), 'b': jnp.array(0.5)}

  def constant_gradient(params, batch, valid, step_key):
    del params, batch, valid, step_key
    return jnp.float32(0.0), gradient

  eta, mu, steps = 0.1, 2.0, 7
  local_update = local_training.build_scan(
      constant_gradient, optax.sgd(eta), num_steps=steps, batch_size=2,
      proximal_mu=mu,
  )
  params = {'w': jnp.array([0.3, 0.4]), 'b': jnp.array(-1.0)}
  examples = {'x': jnp.zeros((4, 2)), 'y': jnp.zeros(4, jnp.int32)}

  result = local_update(params, examples, jnp.int32(4), jax.random.key(0))

  factor = (1 - (1 - eta * mu) ** steps) / mu
  for name in ('w', 'b'):
    np.testing.assert_allclose(
        result.delta[name], -factor * gradient[name], rtol=1e-5)


def test_fedprox_zero_mu_is_fedavg(key):
  model = _model()
  data = _client(12, 0)
  plain = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=5, batch_size=4)
  prox = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=5, batch_size=4, proximal_mu=0.0)
  params = _params(model, key)

  expected = plain(params, data, jnp.int32(12), key)
  result = prox(params, data, jnp.int32(12), key)

  for got, want in zip(jax.tree.leaves(result.delta),
                       jax.tree.leaves(expected.delta)):
    np.testing.assert_array_equal(got, want)


def test_fedprox_pulls_towards_server(key):
  model = _model()
  data = _client(12, 0)
  params = _params(model, key)
  norms = []
  for mu in (0.0, 1.0, 10.0):
    local_update = local_training.build_local_update(
        model, optax.sgd(0.1), num_steps=20, batch_size=4, proximal_mu=mu)
    delta = local_update(params, data, jnp.int32(12), key).delta
    norms.append(float(jnp.sqrt(sum(
        jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(delta)))))

  assert norms[0] > norms[1] > norms[2]


@pytest.mark.parametrize('mu', [-0.1, float('nan'), float('inf')])
def test_invalid_proximal_mu(mu):
  with pytest.raises(ValueError, match='proximal_mu'):
    local_training.build_local_update(
        _model(), optax.sgd(0.1), num_steps=2, batch_size=2, proximal_mu=mu)


def test_shuffles_drawn_once_per_epoch_give_same_batches(monkeypatch):
  # Clients of 17 and 40 rows, batch 8, 12 steps: with the hint of 17 rows
  # a client reaches at most 4 epochs, so 4 shuffles are drawn before the
  # scan instead of one per step. Both are the paths for more epochs than
  # the visit order holds, which a limit of 0 forces.
  monkeypatch.setattr(local_training, '_MAX_PACKED_EPOCHS', 0)
  model = tabular.from_flax(tabular.LogisticRegression(3), 3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  examples = {'x': jnp.asarray(x), 'y': jnp.asarray(rng.integers(0, 3, 40))}
  params = model.init(jax.random.key(0), x[:1])
  results = []
  for hint in (None, 17):
    update = jax.jit(local_training.build_local_update(
        model, optax.sgd(0.1), num_steps=12, batch_size=8,
        min_client_examples=hint))
    results.append([update(params, examples, jnp.int32(n), jax.random.key(1))
                    for n in (17, 40)])
  for per_step, per_epoch in zip(*results):
    for a, b in zip(jax.tree.leaves(per_step), jax.tree.leaves(per_epoch)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('argument, value', [
    ('num_steps', 2.5), ('batch_size', 4.0), ('num_epochs', 1.5),
    ('num_steps', True)])
def test_non_integer_sizes_rejected(argument, value):
  # 2.5 steps failed later inside JAX; 1.5 epochs silently gave 3.0 steps.
  model = tabular.from_flax(tabular.LogisticRegression(2), 2)
  settings = {'num_steps': 3, 'batch_size': 4, argument: value}
  with pytest.raises(ValueError, match=f'`{argument}` must be an integer'):
    local_training.build_local_update(model, optax.sgd(0.1), **settings)

