"""Flax convolutional classifiers for image clients.

Inputs are images shaped `[batch, height, width, channels]` and outputs are
`[batch, num_logits(num_classes)]` logits, as for the tabular models, so the
same local training, round and evaluation run them.

* `LeNet5`: two ReLU 5x5 convolutions with max pooling and two dense layers,
  after LeCun et al. (1998), with 'SAME' padding so that 8x8 digits fit.
* `ResNet`: a small residual network (He et al., 2016) whose convolutions
  are each followed by batch or group normalization.
* `PflCNN`: the small CNN that pfl-research benchmarks CIFAR-10 with: two
  valid 3x3 convolutions (32 and 64 channels), one 2x2 max pool, a dense
  layer of 128 units and the output layer. pfl's model also has dropout,
  which this one leaves out because local training draws no dropout keys.

Batch normalization stores running statistics, which flax keeps in a
`batch_stats` collection beside `params`. `from_flax_stateful` wraps such a
module into a `tabular.Model` whose params are the whole variables dict
`{'params': ..., 'batch_stats': ...}`:

* `apply` evaluates with the stored statistics;
* `apply_train` normalizes each layer with the statistics of the masked
  rows of the minibatch, the way training mode does;
* `refresh_stats` replaces the stored statistics with those of all the
  given rows at the current weights. Local training calls it once after
  its last step, so a client's statistics are exact for its data and its
  trained weights, as "precise BatchNorm" (Wu and Johnson, 2021)
  recommends, instead of a moving average over steps whose weights kept
  changing. This holds for every `nn.BatchNorm` whatever its `momentum`
  (see `_replace_batch_stats`).

References:
  LeCun, Bottou, Bengio and Haffner. Gradient-Based Learning Applied to
  Document Recognition. Proceedings of the IEEE 86(11), 1998.

  He, Zhang, Ren and Sun. Deep Residual Learning for Image Recognition.
  CVPR 2016. https://arxiv.org/abs/1512.03385

  Wu and Johnson. Rethinking "Batch" in BatchNorm. 2021.
  https://arxiv.org/abs/2105.07576

  Granqvist et al. pfl-research: simulation framework for accelerating
  research in Private Federated Learning. 2024.
  https://arxiv.org/abs/2404.06430
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.errors import InputError
from fedjax_med.models import tabular
from fedjax_med.typing import Params, PRNGKey

NORMS = ('batch', 'group', 'none')


class LeNet5(nn.Module):
  """Two ReLU 5x5 convolutions, each with 2x2 max pooling, then dense layers.

  Attributes:
    num_classes: number of label classes; 2 gives one log-odds logit.
    channels: output channels of the two convolutions.
    hidden_size: width of the dense hidden layer.
  """

  num_classes: int
  channels: tuple[int, int] = (6, 16)
  hidden_size: int = 84

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for index, width in enumerate(self.channels):
      x = nn.Conv(width, (5, 5), padding='SAME', name=f'conv_{index}')(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding='SAME')
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden_size, name='hidden')(x))
    return nn.Dense(tabular.num_logits(self.num_classes), name='logits')(x)


class PflCNN(nn.Module):
  """pfl-research's CIFAR-10 CNN without its dropout layers.

  With a 32x32x3 input it has 1,626,442 params for 10 classes: the
  convolutions leave 28x28x64 features, the pool 14x14x64 = 12,544.

  Attributes:
    num_classes: number of label classes; 2 gives one log-odds logit.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Two valid 3x3 convolutions and a 2x2 pool leave no feature below 6x6,
    # and flax then failed with a ZeroDivisionError.
    if x.ndim != 4 or min(x.shape[1:3]) < 6:
      raise InputError(
          'PflCNN needs [batch, height, width, channels] images of at least '
          '6x6 pixels (two valid 3x3 convolutions, then a 2x2 pool); got '
          f'shape {x.shape}. Use larger images or CNN.')
    init = nn.initializers.glorot_uniform()
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID', kernel_init=init,
                        name='conv_0')(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding='VALID', kernel_init=init,
                        name='conv_1')(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, kernel_init=init, name='hidden')(x))
    return nn.Dense(tabular.num_logits(self.num_classes), kernel_init=init,
                    name='logits')(x)


def _row_mask(mask: jax.Array | None, x: jax.Array) -> jax.Array | None:
  """Return the `[batch]` row mask shaped to broadcast against `x`."""
  if mask is None:
    return None
  return mask.reshape(mask.shape[:1] + (1,) * (x.ndim - 1))


class _Norm(nn.Module):
  """Batch norm over the masked rows, group norm, or nothing."""

  kind: str
  train: bool

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    if self.kind == 'batch':
      # Momentum 0: a training-mode call with a mutable `batch_stats`
      # stores exactly the statistics of its masked rows, which is what
      # `refresh_stats` needs. Minibatch steps discard what they store.
      norm = nn.BatchNorm(
          use_running_average=not self.train, momentum=0.0, epsilon=1e-5,
          name='norm',
      )
      return norm(x, mask=_row_mask(mask, x) if self.train else None)
    if self.kind == 'group':
      # The largest group count up to 8 that divides the channels.
      groups = math.gcd(8, x.shape[-1])
      return nn.GroupNorm(num_groups=groups, name='norm')(x)
    return x


class ResNet(nn.Module):
  """A small residual network with a normalization after every convolution.

  A 3x3 stem convolution is followed by `blocks_per_stage` basic blocks
  (two 3x3 convolutions and a skip connection) per stage. Each stage after
  the first halves the resolution and uses the given width. Global average
  pooling feeds the output layer.

  Attributes:
    num_classes: number of label classes; 2 gives one log-odds logit.
    widths: channels of each stage.
    blocks_per_stage: basic blocks in every stage.
    norm: 'batch' (BatchNorm, running statistics in `batch_stats`), 'group'
      (GroupNorm with the largest group count up to 8 that divides the
      channels, no statistics) or 'none'.
    train: normalize with the statistics of the batch (training mode)
      instead of the stored ones. `from_flax_stateful` sets it.
  """

  num_classes: int
  widths: Sequence[int] = (16, 32)
  blocks_per_stage: int = 1
  norm: str = 'batch'
  train: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    if self.norm not in NORMS:
      raise InputError(
          f'`norm` must be one of {NORMS}; got {self.norm!r}.'
      )
    x = nn.Conv(self.widths[0], (3, 3), padding='SAME', use_bias=False,
                name='stem_conv')(x)
    x = nn.relu(_Norm(self.norm, self.train, name='stem_norm')(x, mask))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        name = f'stage_{stage}_block_{block}'
        residual = x
        y = nn.Conv(width, (3, 3), strides=(stride, stride), padding='SAME',
                    use_bias=False, name=f'{name}_conv_0')(x)
        y = nn.relu(_Norm(self.norm, self.train, name=f'{name}_norm_0')(
            y, mask))
        y = nn.Conv(width, (3, 3), padding='SAME', use_bias=False,
                    name=f'{name}_conv_1')(y)
        y = _Norm(self.norm, self.train, name=f'{name}_norm_1')(y, mask)
        if residual.shape != y.shape:
          residual = nn.Conv(width, (1, 1), strides=(stride, stride),
                             use_bias=False, name=f'{name}_skip')(residual)
          residual = _Norm(self.norm, self.train, name=f'{name}_skip_norm')(
              residual, mask)
        x = nn.relu(residual + y)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(tabular.num_logits(self.num_classes), name='logits')(x)


def _valid_stats(params: Params) -> Params:
  """Return `params` with every stored variance raised to at least 0.

  A client computes a variance >= 0, but the server's copy is an average of
  updates that clipping, DP noise or a poisoning attack may have changed,
  and a negative variance would make the normalization NaN.
  """
  if 'batch_stats' not in params:
    return params
  stats = jax.tree_util.tree_map_with_path(
      lambda path, leaf: (jnp.maximum(leaf, 0.0)
                          if getattr(path[-1], 'key', None) == 'var'
                          else leaf),
      params['batch_stats'])
  return {**params, 'batch_stats': stats}


def _replace_batch_stats(next_fun, args, kwargs, context):
  """Make a training-mode `nn.BatchNorm` call store its batch statistics.

  A flax method interceptor (`nn.intercept_methods`). flax's BatchNorm
  (flax 0.12.8) stores `momentum * old + (1 - momentum) * batch` for its
  mean and variance. This interceptor zeroes the stored values before the
  call and divides what the call stores by the same `1 - momentum`, which
  leaves the statistics of the batch alone, to about one float32 rounding.
  The layer's output does not read the stored values in training mode, so
  it is unchanged. Calls in running-average mode, calls of other modules and
  layers with momentum 0 pass through untouched.

  Raises:
    ValueError: if a training-mode BatchNorm has momentum 1, which never
      stores the batch statistics.
  """
  module = context.module
  if not isinstance(module, nn.BatchNorm) or context.method_name != (
      '__call__'):
    return next_fun(*args, **kwargs)
  use_running_average = kwargs.get(
      'use_running_average', args[1] if len(args) > 1 else None)
  if use_running_average is None:
    use_running_average = module.use_running_average
  if use_running_average or module.momentum == 0:
    return next_fun(*args, **kwargs)
  batch_weight = 1 - module.momentum
  if batch_weight == 0:
    raise ValueError(
        f'BatchNorm layer {module.name!r} has momentum={module.momentum}, so '
        'a training-mode call keeps its stored statistics and '
        '`refresh_stats` cannot replace them. Use a momentum below 1.'
    )
  for name in ('mean', 'var'):
    module.put_variable('batch_stats', name, jnp.zeros_like(
        module.get_variable('batch_stats', name)))
  outputs = next_fun(*args, **kwargs)
  for name in ('mean', 'var'):
    stored = module.get_variable('batch_stats', name)
    module.put_variable('batch_stats', name, stored / batch_weight)
  return outputs


def from_flax_stateful(
    module: nn.Module, num_classes: int, input_shape: Sequence[int],
) -> tabular.Model:
  """Wrap a module with a `train` attribute and a `mask` argument.

  The module's variables may include a `batch_stats` collection (see the
  module docstring for the three apply functions). Without one, the
  returned `refresh_stats` is None.

  `refresh_stats` stores the exact statistics of the masked rows in every
  `nn.BatchNorm` (and subclass) layer, at any `momentum` below 1: flax's
  default 0.99 works as well as the 0 that `ResNet` uses. A layer of
  another class that writes `batch_stats` keeps what its training-mode
  call stores, which is the batch statistics only if that layer stores no
  moving average. A BatchNorm with momentum 1 makes `refresh_stats` raise
  ValueError when local training traces it.

  Args:
    module: a flax module such as `ResNet`, called as `module(x, mask)`,
      whose `train` attribute selects batch statistics.
    num_classes: number of label classes; 2 means one log-odds logit.
    input_shape: `(height, width, channels)` of one image, used to find out
      whether the module stores statistics.

  Returns:
    A `tabular.Model` whose params are the module's whole variables dict.
  """
  eval_module = module.clone(train=False)
  train_module = module.clone(train=True)

  def init(key: PRNGKey, sample_x: jax.Array) -> Params:
    variables = dict(eval_module.init(key, sample_x))
    mask = jnp.ones(jnp.shape(sample_x)[:1], bool)
    tabular.check_no_rng_streams(
        type(module).__name__, 'from_flax_stateful', train_module.apply,
        variables, sample_x, mask,
        mutable=['batch_stats'] if 'batch_stats' in variables else False)
    return variables

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return eval_module.apply(_valid_stats(params), x)

  def apply_train(params: Params, x: jax.Array, mask: jax.Array
                  ) -> jax.Array:
    if 'batch_stats' not in params:
      return train_module.apply(params, x, mask)
    logits, _ = train_module.apply(params, x, mask, mutable=['batch_stats'])
    return logits

  def refresh_stats(params: Params, x: jax.Array, mask: jax.Array) -> Params:
    with nn.intercept_methods(_replace_batch_stats):
      _, updated = train_module.apply(
          params, x, mask, mutable=['batch_stats'])
    return {**params, 'batch_stats': updated['batch_stats']}

  sample = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  stores_stats = 'batch_stats' in jax.eval_shape(
      init, jax.random.key(0), sample)
  return tabular.Model(
      init=init, apply=apply, num_classes=num_classes,
      apply_train=apply_train,
      refresh_stats=refresh_stats if stores_stats else None,
  )


def norm_mask(params: Params) -> Params:
  """Return a bool per leaf: True for normalization weights and statistics.

  A leaf is a normalization leaf when it is in the `batch_stats` collection
  or belongs to a module whose name contains 'norm' (any case), such as
  `ResNet`'s `*_norm*` layers or flax's default `BatchNorm_0`. FedBN keeps
  these leaves on the clients.
  """

  def is_norm(path, leaf) -> bool:
    del leaf
    names = [str(getattr(entry, 'key', entry)) for entry in path]
    if names and names[0] == 'batch_stats':
      return True
    return any('norm' in name.lower() for name in names[1:-1])

  return jax.tree_util.tree_map_with_path(is_norm, params)
