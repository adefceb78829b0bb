"""DP-SGD local training: clipping, noise scale, masking, keys and vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import tree
from fedjax_med.client import dp_sgd
from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

_NUM_FEATURES = 3
# Entries of the zero-gradient model below. A std estimated from this many
# samples has a standard error of about 0.5%.
_NUM_NOISE_ENTRIES = 20_000


def _model():
  return tabular.from_flax(tabular.LogisticRegression(2), 2)


def _zero_gradient_model():
  """A model whose loss has zero gradient, so an update is pure noise."""

  def init(key, sample_x):
    del key, sample_x
    return {
        'a': jnp.zeros((_NUM_NOISE_ENTRIES // 2,)),
        'b': jnp.zeros((_NUM_NOISE_ENTRIES // 2,)),
    }

  def apply(params, x):
    constant = 0.0 * (jnp.sum(params['a']) + jnp.sum(params['b']))
    return jnp.zeros((x.shape[0], 1)) + constant

  return tabular.Model(init=init, apply=apply, num_classes=2)


def _client(num_rows, num_padding, padding_value=0.0, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_rows, _NUM_FEATURES)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  padding_x = np.full((num_padding, _NUM_FEATURES), padding_value, np.float32)
  x = np.concatenate([x, padding_x])
  y = np.concatenate([y, np.full((num_padding,), 7, np.int32)])
  return {'x': jnp.asarray(x), 'y': jnp.asarray(y)}


def _params(model, key):
  return model.init(key, jnp.zeros((1, _NUM_FEATURES)))


def _flat(params):
  return np.concatenate(
      [np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(params)]
  )


def _build(model, optimizer, **kwargs):
  settings = dict(
      num_steps=1, batch_size=4, l2_norm_clip=1.0, noise_multiplier=0.0
  )
  settings.update(kwargs)
  return dp_sgd.build_dp_sgd_local_update(model, optimizer, **settings)


@pytest.mark.parametrize('num_epochs', [None, 2])
@pytest.mark.parametrize(
    'optimizer', [optax.sgd(0.1), optax.adam(0.01)], ids=['sgd', 'adam']
)
def test_matches_local_training_without_noise(key, optimizer, num_epochs):
  model = _model()
  params = _params(model, key)
  # 8 rows in batches of 4: every batch is full, so dividing by batch_size
  # equals averaging over the real rows.
  client = _client(8, 3)
  plain = local_training.build_local_update(
      model, optimizer, num_steps=6, batch_size=4, num_epochs=num_epochs
  )
  private = _build(
      model, optimizer, num_steps=6, l2_norm_clip=1e6, num_epochs=num_epochs
  )

  expected = plain(params, client, jnp.int32(8), key)
  result = private(params, client, jnp.int32(8), key)

  np.testing.assert_allclose(
      _flat(result.delta), _flat(expected.delta), rtol=1e-5, atol=1e-7
  )
  np.testing.assert_allclose(result.loss, expected.loss, rtol=1e-6)
  assert int(result.num_steps) == int(expected.num_steps)
  assert np.any(_flat(result.delta) != 0)


def test_partial_batch_divides_by_batch_size(key):
  model = _model()
  params = _params(model, key)
  client = _client(1, 2)
  plain = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=1, batch_size=4
  )
  private = _build(model, optax.sgd(0.1), l2_norm_clip=1e6)

  expected = plain(params, client, jnp.int32(1), key)
  result = private(params, client, jnp.int32(1), key)

  # One real row in a batch of 4: the three slots past the epoch add
  # nothing, and the sum is divided by 4 rather than by 1.
  np.testing.assert_allclose(
      _flat(result.delta), _flat(expected.delta) / 4, rtol=1e-5
  )


@pytest.mark.parametrize('num_rows', [1, 3, 9])
def test_tiny_clip_bounds_step(key, num_rows):
  model = _model()
  learning_rate = 0.5
  clip = 1e-3
  batch_size = 4
  private = _build(model, optax.sgd(learning_rate), l2_norm_clip=clip)
  # Zero params keep the tiny delta free of float32 rounding against large
  # params, and still give every example a nonzero gradient.
  params = tree.tree_zeros_like(_params(model, key))

  result = private(params, _client(num_rows, 0), jnp.int32(num_rows), key)

  real_count = min(num_rows, batch_size)
  bound = learning_rate * clip * real_count / batch_size
  norm = float(tree.tree_l2_norm(result.delta))
  assert norm <= bound * (1 + 1e-5)
  if num_rows == 1:
    # A single clipped gradient has norm exactly `clip`.
    np.testing.assert_allclose(norm, bound, rtol=1e-5)


@pytest.mark.parametrize('jit', [False, True])
def test_padding_never_read(key, jit):
  model = _model()
  private = _build(
      model, optax.sgd(0.1), num_steps=20, batch_size=2, noise_multiplier=1.0
  )
  if jit:
    private = jax.jit(private)
  params = _params(model, key)

  unpadded = private(params, _client(5, 0), jnp.int32(5), key)
  padded = private(params, _client(5, 9, jnp.nan), jnp.int32(5), key)

  assert np.all(np.isfinite(_flat(padded.delta)))
  np.testing.assert_allclose(
      _flat(padded.delta), _flat(unpadded.delta), rtol=1e-6
  )
  assert np.isfinite(float(padded.loss))


@pytest.mark.parametrize('num_steps', [1, 2])
def test_noise_std_per_entry(key, num_steps):
  model = _zero_gradient_model()
  noise_multiplier = 2.0
  clip = 0.5
  batch_size = 4
  private = _build(
      model, optax.sgd(1.0), num_steps=num_steps, batch_size=batch_size,
      l2_norm_clip=clip, noise_multiplier=noise_multiplier,
  )
  params = _params(model, key)
  client_keys = jax.random.split(key, 4)

  deltas = [
      _flat(private(params, _client(6, 0), jnp.int32(6), client_key).delta)
      for client_key in client_keys
  ]
  samples = np.concatenate(deltas)

  # Independent noise in every step adds variances: std grows as sqrt(steps).
  expected_std = math.sqrt(num_steps) * noise_multiplier * clip / batch_size
  np.testing.assert_allclose(np.std(samples), expected_std, rtol=0.03)
  assert abs(np.mean(samples)) < 0.03 * expected_std


def test_noise_independent_across_clients_and_leaves(key):
  model = _zero_gradient_model()
  private = _build(
      model, optax.sgd(1.0), l2_norm_clip=1.0, noise_multiplier=1.0
  )
  params = _params(model, key)
  client_keys = jax.random.split(key, 3)
  batched = jax.vmap(private, in_axes=(None, None, None, 0))

  result = batched(params, _client(6, 0), jnp.int32(6), client_keys)

  a, b = np.asarray(result.delta['a']), np.asarray(result.delta['b'])
  # With 10,000 entries an independent pair has |correlation| near 0.01.
  for first in range(3):
    for second in range(first + 1, 3):
      correlation = np.corrcoef(a[first], a[second])[0, 1]
      assert abs(correlation) < 0.05
  leaf_correlation = np.corrcoef(a[0], b[0])[0, 1]
  assert abs(leaf_correlation) < 0.05


def test_vmap_and_jit_match_single_calls(key):
  model = _model()
  private = _build(
      model, optax.adam(0.05), num_steps=7, batch_size=3, l2_norm_clip=0.5,
      noise_multiplier=1.0,
  )
  params = _params(model, key)
  counts = [6, 0, 2]
  clients = [
      _client(count, 8 - count, seed=i) for i, count in enumerate(counts)
  ]
  client_keys = jax.random.split(key, len(counts))
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *clients)
  batched = jax.jit(jax.vmap(private, in_axes=(None, 0, 0, 0)))

  result = batched(params, stacked, jnp.asarray(counts), client_keys)

  for i, count in enumerate(counts):
    single = private(params, clients[i], jnp.int32(count), client_keys[i])
    batched_delta = jax.tree.map(lambda leaf, i=i: leaf[i], result.delta)
    np.testing.assert_allclose(
        _flat(batched_delta), _flat(single.delta), rtol=1e-5, atol=1e-6
    )
    assert int(result.num_steps[i]) == int(single.num_steps)


def test_zero_examples_zero_delta(key):
  model = _model()
  private = _build(
      model, optax.adamw(0.1, weight_decay=0.5), num_steps=5, batch_size=2,
      noise_multiplier=3.0,
  )

  result = private(_params(model, key), _client(0, 4), jnp.int32(0), key)

  np.testing.assert_array_equal(_flat(result.delta), 0.0)
  assert int(result.num_steps) == 0
  assert not bool(result.truncated)


def test_epochs_mode_step_count(key):
  model = _model()
  private = _build(
      model, optax.sgd(0.1), num_steps=4, batch_size=2, noise_multiplier=1.0,
      num_epochs=2,
  )
  params = _params(model, key)

  # 3 rows in batches of 2 are 2 batches per epoch, so 4 steps; 5 rows need
  # 6 steps and stop at the scan length.
  small = private(params, _client(3, 2), jnp.int32(3), key)
  large = private(params, _client(5, 0), jnp.int32(5), key)

  assert int(small.num_steps) == 4
  assert not bool(small.truncated)
  assert int(large.num_steps) == 4
  assert bool(large.truncated)


def test_noisy_training_lowers_loss(key):
  model = _model()
  private = _build(
      model, optax.sgd(0.5), num_steps=200, batch_size=16, l2_norm_clip=1.0,
      noise_multiplier=0.5,
  )
  client = _client(64, 0)
  params = _params(model, key)

  result = private(params, client, jnp.int32(64), key)
  trained = jax.tree.map(jnp.add, params, result.delta)

  def loss(p):
    logits = model.apply(p, client['x'])
    return float(jnp.mean(tabular.per_example_loss(logits, client['y'], 2)))

  assert loss(trained) < 0.7 * loss(params)


@pytest.mark.parametrize(
    'argument, value',
    [
        ('l2_norm_clip', 0.0),
        ('l2_norm_clip', -1.0),
        ('l2_norm_clip', math.inf),
        ('l2_norm_clip', math.nan),
        ('noise_multiplier', -0.5),
        ('noise_multiplier', math.inf),
        ('noise_multiplier', math.nan),
        ('batch_size', 0),
        ('num_steps', 0),
        ('num_epochs', 0),
        # A float failed inside JAX with "Shapes must be 1D sequences of
        # concrete values of integer type", a bool with "iota does not
        # accept dtype bool".
        ('num_steps', 2.5),
        ('num_steps', True),
        ('batch_size', 4.0),
        ('batch_size', True),
        ('num_epochs', 1.5),
        ('num_epochs', False),
        # True was read as 1.0.
        ('l2_norm_clip', True),
        ('noise_multiplier', True),
    ],
)
def test_invalid_argument(argument, value):
  with pytest.raises(ValueError, match=f'`{argument}`.*got {value}'):
    _build(_model(), optax.sgd(0.1), **{argument: value})


@pytest.mark.parametrize('value', [
    # 0-d bool arrays were read as 1.0, and a string failed in math.isfinite.
    np.array(True), jnp.asarray(True), '1.0', None,
], ids=['numpy_bool', 'jax_bool', 'string', 'none'])
@pytest.mark.parametrize('argument', ['l2_norm_clip', 'noise_multiplier'])
def test_non_number_argument(argument, value):
  with pytest.raises(ValueError, match=f'`{argument}` must be a real number'):
    _build(_model(), optax.sgd(0.1), **{argument: value})


def test_round_rejects_label_outside_classes():
  # Labels of 5 for a binary model used to give a train_loss of -7.2.
  rng = np.random.default_rng(0)
  data = federated.stack_clients([
      {'x': rng.normal(size=(5, _NUM_FEATURES)).astype(np.float32),
       'y': np.full(5, 5, np.int32)} for _ in range(2)])
  private = _build(_model(), optax.sgd(0.1))

  assert private.num_classes == 2
  with pytest.raises(ValueError, match='Client 0 has label 5 in row 0'):
    round_lib.build_round(data, private, sampling.uniform_sampler(2, 2),
                          optax.sgd(1.0))


def test_logit_width_mismatch_rejected(key):
  # A model of 3 logits declared binary used to train to a loss of 0.95.
  wide = tabular.from_flax(tabular.LogisticRegression(3), 2)
  private = _build(wide, optax.sgd(0.1))

  with pytest.raises(ValueError, match=r'logits shaped \(3,\).*needs \(1,\)'):
    private(_params(wide, key), _client(5, 0), jnp.int32(5), key)
