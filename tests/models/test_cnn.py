"""Tests for the stateful flax wrapper and its batch statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models import cnn


class _DenseBatchNorm(nn.Module):
  """A dense layer, flax's BatchNorm and an output layer."""

  train: bool = False
  momentum: float = 0.99  # flax's default.

  @nn.compact
  def __call__(self, x, mask=None):
    hidden = nn.Dense(4, name='dense')(x)
    row_mask = None if mask is None else jnp.broadcast_to(
        mask[:, None], hidden.shape)
    hidden = nn.BatchNorm(use_running_average=not self.train,
                          momentum=self.momentum, name='norm')(
                              hidden, mask=row_mask)
    return nn.Dense(1, name='logits')(hidden)


def _rows():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(40, 6)) * 3 + 5).astype(np.float32)


@pytest.mark.parametrize('momentum', [0.99, 0.9, 0.0])
def test_refresh_stats_any_momentum_exact(key, momentum):
  # At momentum 0.99 the stored mean was 0.01 times the true one.
  x = _rows()
  mask = np.arange(40) < 30
  model = cnn.from_flax_stateful(
      _DenseBatchNorm(momentum=momentum), 2, input_shape=(6,))
  params = model.init(key, x[:1])

  stats = model.refresh_stats(params, x, mask)['batch_stats']['norm']

  dense = params['params']['dense']
  hidden = x[:30] @ np.asarray(dense['kernel']) + np.asarray(dense['bias'])
  np.testing.assert_allclose(stats['mean'], hidden.mean(0), atol=1e-5)
  np.testing.assert_allclose(stats['var'], hidden.var(0), rtol=1e-5)


def test_refresh_stats_keeps_weights(key):
  x = _rows()
  model = cnn.from_flax_stateful(_DenseBatchNorm(), 2, input_shape=(6,))
  params = model.init(key, x[:1])

  refreshed = model.refresh_stats(params, x, np.ones(40, bool))

  for got, want in zip(jax.tree.leaves(refreshed['params']),
                       jax.tree.leaves(params['params'])):
    np.testing.assert_array_equal(got, want)


def test_refresh_stats_momentum_one_rejected(key):
  x = _rows()
  model = cnn.from_flax_stateful(
      _DenseBatchNorm(momentum=1.0), 2, input_shape=(6,))
  params = model.init(key, x[:1])

  with pytest.raises(ValueError, match="'norm' has momentum=1.0"):
    model.refresh_stats(params, x, np.ones(40, bool))


class _StatefulDropout(nn.Module):
  """A dense layer and dropout that draws random numbers in training."""

  train: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    del mask
    hidden = nn.Dense(4)(x)
    hidden = nn.Dropout(0.5, deterministic=not self.train)(hidden)
    return nn.Dense(1)(hidden)


def test_stateful_rejects_training_dropout(key):
  # init passed in evaluation mode, then the first round failed with
  # flax's InvalidRngError. The wrapper runs init once when built.
  del key
  with pytest.raises(ValueError, match=(
      '_StatefulDropout draws random numbers when applied.*'
      'from_flax_stateful applies the module without RNG streams')):
    cnn.from_flax_stateful(_StatefulDropout(), 2, (6,))
