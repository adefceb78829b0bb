"""Tests for wrapping flax modules as pure classifier functions."""

import flax.linen as nn
import jax.numpy as jnp
import pytest

from fedjax_med.models import tabular


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
