"""Tests for wrapping flax modules as pure classifier functions."""

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling


class _DenseBatchNorm(nn.Module):

  @nn.compact
  def __call__(self, x):
    hidden = nn.BatchNorm(use_running_average=False)(nn.Dense(4)(x))
    return nn.Dense(1)(hidden)


class _DenseCounter(nn.Module):
  """A dense layer that counts its calls in a `counters` collection."""

  @nn.compact
  def __call__(self, x):
    calls = self.variable('counters', 'calls', lambda: jnp.zeros((), int))
    calls.value += 1
    return nn.Dense(1)(x)


def test_from_flax_init_returns_params(key):
  model = tabular.from_flax(tabular.LogisticRegression(2), 2)

  params = model.init(key, jnp.zeros((1, 3)))

  assert set(params) == {'params'}


@pytest.mark.parametrize('module, collection', [
    # The first round failed inside the trace with flax's
    # ModifyScopeVariableError on the immutable `batch_stats`.
    (_DenseBatchNorm(), 'batch_stats'),
    (_DenseCounter(), 'counters'),
], ids=['batch_norm', 'counter'])
def test_from_flax_rejects_other_collections(key, module, collection):
  model = tabular.from_flax(module, 2)

  with pytest.raises(ValueError, match=f"\\['{collection}'\\] besides"):
    model.init(key, jnp.zeros((1, 3)))


def test_from_flax_error_names_stateful_wrapper(key):
  model = tabular.from_flax(_DenseBatchNorm(), 2)

  with pytest.raises(ValueError, match='from_flax_stateful'):
    model.init(key, jnp.zeros((1, 3)))


class _DenseDropout(nn.Module):

  @nn.compact
  def __call__(self, x):
    hidden = nn.Dropout(0.5, deterministic=False)(nn.Dense(4)(x))
    return nn.Dense(1)(hidden)


class _DenseNoise(nn.Module):
  """A dense layer that adds noise from its own `noise` RNG stream."""

  @nn.compact
  def __call__(self, x):
    noise = jax.random.normal(self.make_rng('noise'), x.shape)
    return nn.Dense(1)(x + noise)


@pytest.mark.parametrize('module, stream', [
    # init passed on the init key, then the first round failed with
    # flax's InvalidRngError.
    (_DenseDropout(), 'dropout'),
    (_DenseNoise(), 'noise'),
], ids=['dropout', 'make_rng'])
def test_from_flax_rejects_rng_streams(key, module, stream):
  model = tabular.from_flax(module, 2)

  with pytest.raises(ValueError) as raised:
    model.init(key, jnp.zeros((1, 3)))

  message = str(raised.value)
  assert 'draws random numbers when applied' in message
  assert f'needs PRNG for "{stream}"' in message
  assert 'deterministic=True' in message
  assert 'https://' not in message


def test_from_flax_keeps_deterministic_dropout(key):
  class _Deterministic(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.Dense(1)(nn.Dropout(0.5, deterministic=True)(x))

  params = tabular.from_flax(_Deterministic(), 2).init(key, jnp.zeros((1, 3)))

  assert set(params) == {'params'}


class _NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(6, 8, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


class _NnxBatchNorm(nnx.Module):

  def __init__(self, rngs):
    self.dense = nnx.Linear(6, 1, rngs=rngs)
    self.norm = nnx.BatchNorm(1, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.dense(x))


def test_from_nnx_params_are_plain_dicts(key):
  model = tabular.from_nnx(_NnxNet, 3)
  params = model.init(key, jnp.ones((1, 6)))
  assert jax.tree.map(jnp.shape, params) == {
      'hidden': {'bias': (8,), 'kernel': (6, 8)},
      'out': {'bias': (3,), 'kernel': (8, 3)}}
  again = model.init(key, jnp.ones((1, 6)))
  other = model.init(jax.random.fold_in(key, 1), jnp.ones((1, 6)))
  assert jax.tree.all(jax.tree.map(jnp.array_equal, params, again))
  assert not jnp.array_equal(params['out']['kernel'],
                             other['out']['kernel'])


def test_from_nnx_apply_matches_module(key):
  model = tabular.from_nnx(_NnxNet, 3)
  x = jax.random.normal(jax.random.fold_in(key, 2), (5, 6))
  expected = _NnxNet(nnx.Rngs(key))(x)
  params = model.init(key, x[:1])
  np.testing.assert_allclose(model.apply(params, x), expected, atol=1e-6)
  # Pure: jit and vmap over a batch of params agree with the plain call.
  np.testing.assert_allclose(jax.jit(model.apply)(params, x), expected,
                             atol=1e-6)
  stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
  np.testing.assert_allclose(
      jax.vmap(model.apply, in_axes=(0, None))(stacked, x)[1], expected,
      atol=1e-6)


def test_from_nnx_trains_in_a_round(key):
  rng = np.random.default_rng(0)
  train = federated.stack_clients([
      {'x': rng.normal(size=(n, 6)).astype(np.float32),
       'y': rng.integers(0, 3, size=n)} for n in (5, 9, 12)])
  model = tabular.from_nnx(_NnxNet, 3)
  update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=3, batch_size=4)
  round_fn = round_lib.build_round(
      train, update, sampling.uniform_sampler(3, 3), optax.sgd(1.0))
  params = model.init(key, train.examples['x'][0, :1])
  state = round_lib.init_server_state(params, optax.sgd(1.0))
  new_state, metrics = round_fn(state, key)
  assert np.isfinite(float(metrics['train_loss']))
  assert not np.array_equal(new_state.params['out']['kernel'],
                            params['out']['kernel'])


def test_from_nnx_rejects_batch_stats(key):
  # The round would average BatchNorm's statistics as weights.
  with pytest.raises(ValueError) as raised:
    tabular.from_nnx(_NnxBatchNorm, 2).init(key, jnp.ones((1, 6)))

  message = str(raised.value)
  assert 'state besides nnx.Param' in message
  assert '`norm.mean` (BatchStat)' in message
  assert '`norm.var` (BatchStat)' in message


def test_from_nnx_names_a_wrong_input_width(key):
  # JAX's dot_general TypeError came through unexplained.
  with pytest.raises(ValueError, match=r'cannot take inputs shaped \(1, 5\)'):
    tabular.from_nnx(_NnxNet, 3).init(key, jnp.ones((1, 5)))


class _NnxConv(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)

  def __call__(self, x):
    return self.conv(x).mean(axis=(1, 2))


def test_from_nnx_names_a_wrong_channel_count(key):
  # JAX's conv_general_dilated ValueError came through unexplained.
  with pytest.raises(ValueError) as raised:
    tabular.from_nnx(_NnxConv, 4).init(key, jnp.ones((1, 8, 8, 2)))

  message = str(raised.value)
  assert 'cannot take inputs shaped (1, 8, 8, 2)' in message
  assert 'channels for a convolution' in message
  assert 'conv_general_dilated' in message
  assert isinstance(raised.value.__cause__, ValueError)


class _NnxRawArray(nnx.Module):

  def __init__(self, rngs):
    self.dense = nnx.Linear(6, 1, rngs=rngs)
    self.offset = jnp.zeros(1)

  def __call__(self, x):
    return self.dense(x) + self.offset


def test_from_nnx_names_a_raw_array_attribute(key):
  # The message named only the array type: "['ArrayImpl'] state".
  with pytest.raises(ValueError) as raised:
    tabular.from_nnx(_NnxRawArray, 2).init(key, jnp.ones((1, 6)))

  message = str(raised.value)
  assert '`offset` (a plain jax.Array)' in message
  assert 'ArrayImpl' not in message
  assert 'nnx.Param' in message
  assert 'inside `__call__`' in message


class _NnxDropout(nnx.Module):
  """A dense layer and nnx.Dropout built without `rngs`."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(6, 2, rngs=rngs)
    self.dropout = nnx.Dropout(0.5)

  def __call__(self, x):
    return self.dropout(self.dense(x))


def test_from_nnx_names_dropout_without_rngs(key):
  # Following the advice "Dropout without `rngs`" gave a message about the
  # input width of the first layer.
  with pytest.raises(ValueError) as raised:
    tabular.from_nnx(_NnxDropout, 2).init(key, jnp.ones((1, 6)))

  message = str(raised.value)
  assert 'draws random numbers when applied' in message
  assert '`deterministic=True`' in message
  assert 'input width' not in message
