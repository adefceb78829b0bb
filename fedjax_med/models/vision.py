"""Small flax image classifiers for gradient-leakage experiments.

Both models use sigmoid activations, as the networks in the DLG and iDLG
experiments do. Gradient matching differentiates the model's gradient with
respect to the input, so the attack needs smooth, twice differentiable
activations. The second derivative of ReLU is zero almost everywhere.
Weights and biases start from `U(-0.5, 0.5)` by default, the
`weights_init` of DLG's and iDLG's reference code (github.com/mit-han-lab/dlg,
github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients).

Inputs are images shaped `[batch, height, width, channels]`, 16x16x1 patches
from `fedjax_med.data.medical_images` by default. Every model returns one
logit per class, `[batch, num_classes]`.

References:
  Zhu, Liu and Han. Deep Leakage from Gradients. NeurIPS 2019.
  https://arxiv.org/abs/1906.08935

  Zhao, Mopuri and Bilen. iDLG: Improved Deep Leakage from Gradients. 2020.
  https://arxiv.org/abs/2001.02610
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_med.errors import InputError
from fedjax_med.typing import Params

Initializer = Callable[..., jax.Array]

# Half-width of DLG's and iDLG's uniform initialization.
DLG_INIT_SCALE = 0.5


def uniform_symmetric(scale: float = DLG_INIT_SCALE) -> Initializer:
  """Return an initializer drawing from `U(-scale, scale)`."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


class ImageMLP(nn.Module):
  """Flatten, one sigmoid hidden layer, then a linear output layer.

  Attributes:
    num_classes: number of output logits.
    hidden_size: width of the hidden layer.
    kernel_init: initializer of both kernels.
    bias_init: initializer of both biases.
  """

  num_classes: int
  hidden_size: int = 64
  kernel_init: Initializer = uniform_symmetric()
  bias_init: Initializer = uniform_symmetric()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(
        self.hidden_size, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name='hidden',
    )(x)
    x = nn.sigmoid(x)
    return nn.Dense(
        self.num_classes, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name='logits',
    )(x)


class LeNet(nn.Module):
  """Two sigmoid 5x5 convolutions and a linear output layer.

  A smaller version of the LeNet in DLG's experiments (three convolutions
  with 12 channels there). The first convolution has stride 2 and the second
  stride 1, both with 'SAME' padding, so a 16x16 input gives an 8x8x12
  feature map and 768 features before the output layer.

  Attributes:
    num_classes: number of output logits.
    channels: output channels of each convolution.
    kernel_init: initializer of every kernel.
    bias_init: initializer of every bias.
  """

  num_classes: int
  channels: int = 12
  kernel_init: Initializer = uniform_symmetric()
  bias_init: Initializer = uniform_symmetric()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for index, stride in enumerate((2, 1)):
      x = nn.Conv(
          self.channels, (5, 5), strides=(stride, stride), padding='SAME',
          kernel_init=self.kernel_init, bias_init=self.bias_init,
          name=f'conv_{index}',
      )(x)
      x = nn.sigmoid(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(
        self.num_classes, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name='logits',
    )(x)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Compute the softmax cross-entropy averaged over the batch.

  Args:
    logits: `[batch, num_classes]`.
    labels: integer class indices `[batch]`, or class probabilities
      `[batch, num_classes]` (soft labels, as DLG optimizes them).

  Returns:
    The scalar mean cross-entropy.

  Raises:
    InputError: if `labels` has neither shape, or integer labels are not of
      an integer dtype.
  """
  if logits.ndim != 2:
    raise InputError(
        f'`logits` must be shaped [batch, num_classes]; got shape '
        f'{logits.shape}.'
    )
  if labels.shape == logits.shape:
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))
  if labels.shape != logits.shape[:1]:
    raise InputError(
        f'`labels` must be shaped [batch] = {logits.shape[:1]} (class '
        f'indices) or [batch, num_classes] = {logits.shape} (probabilities); '
        f'got shape {labels.shape}.'
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise InputError(
        f'`labels` shaped [batch] must be integer class indices; got dtype '
        f'{labels.dtype}. Pass probabilities shaped [batch, num_classes] for '
        'soft labels.'
    )
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  )


def make_loss_fn(
    module: nn.Module,
) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
  """Return `loss(params, x, labels)`: `cross_entropy` of `module`'s logits.

  This is the loss signature that `fedjax_med.leakage.inversion` attacks.
  Each call returns a new function, and `inversion.reconstruct` compiles once
  per distinct loss function, so make the loss once and reuse it.
  """

  def loss(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    return cross_entropy(module.apply(params, x), labels)

  return loss
