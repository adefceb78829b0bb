"""Analytic recovery of a record from a dense first layer with a bias.

A dense layer computes `z = x @ W + b` with `W` shaped `[in, out]`. For the
loss of one example, `dL/dW[:, j] = x * dL/db[j]` for every output unit `j`,
so `x = dL/dW[:, j] / dL/db[j]` wherever `dL/db[j] != 0`. The ratio needs no
optimization and is exact up to float rounding. Phong et al. pointed out
this leak to an honest-but-curious server ("Privacy-Preserving Deep Learning
via Additively Homomorphic Encryption", IEEE TIFS 2018), and Geiping et al.
proved it for the input of any fully connected layer ("Inverting Gradients:
How easy is it to break privacy in federated learning?", NeurIPS 2020).

The same holds for a FedAvg update of a client with one record trained by
plain SGD, because every step's first-layer gradient is `[x, 1]` times a
per-unit scalar, and so is their sum times `-learning_rate`. With several
records the ratio returns a weighted mean of them, which `record_error`
measures.

The label comes from the bias gradient of the output layer, as in iDLG
(Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients",
2020, https://arxiv.org/abs/2001.02610). With softmax cross-entropy and one
example, only the true class has a negative entry.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

from fedjax_med.errors import InputError
from fedjax_med.typing import Params

_METHODS = ('least_squares', 'largest_bias')


def recover_inputs(
    kernel_grad: jax.Array,
    bias_grad: jax.Array,
    method: str = 'least_squares',
) -> jax.Array:
  """Recover the input of a dense layer from its kernel and bias gradients.

  Args:
    kernel_grad: `[in, out]` gradient (or update) of a flax `Dense` kernel.
    bias_grad: `[out]` gradient (or update) of its bias, taken together with
      `kernel_grad`.
    method: 'least_squares' solves `kernel_grad[:, j] = x * bias_grad[j]`
      for `x` over all units together, `x = sum_j b_j W_j / sum_j b_j^2`.
      It is exact for one example and weights each unit by its bias
      gradient, so a unit with a tiny bias gradient adds little rounding
      error. 'largest_bias' divides the column of the unit with the largest
      `|bias_grad|` by that bias gradient.

  Returns:
    `[in]` estimate of the input. It is NaN when every bias gradient is 0,
    because such a gradient contains no information about the input.

  Raises:
    InputError: if `method` is unknown or the shapes do not match.
  """
  if method not in _METHODS:
    raise InputError(f'Unknown recovery method {method!r}; expected one of '
                     f'{_METHODS}.')
  kernel_grad, bias_grad = jnp.asarray(kernel_grad), jnp.asarray(bias_grad)
  if kernel_grad.ndim != 2 or bias_grad.shape != kernel_grad.shape[1:]:
    raise InputError(
        f'Expected a kernel gradient [in, out] and a bias gradient [out]; '
        f'got shapes {kernel_grad.shape} and {bias_grad.shape}.')
  if method == 'largest_bias':
    unit = jnp.argmax(jnp.abs(bias_grad))
    return kernel_grad[:, unit] / bias_grad[unit]
  weighted = kernel_grad @ bias_grad
  return weighted / jnp.sum(jnp.square(bias_grad))


def recover_label_binary(bias_grad: jax.Array) -> jax.Array:
  """Recover the label of one example from a one-logit model's bias gradient.

  For sigmoid cross-entropy `dL/db = sigmoid(z) - y`, which is negative
  exactly when `y == 1`.

  Args:
    bias_grad: the output bias gradient, shaped `[]` or `[1]`.

  Returns:
    int32 scalar label in {0, 1}.

  Raises:
    InputError: if `bias_grad` has more than one entry.
  """
  if jnp.size(bias_grad) != 1:
    raise InputError(f'Expected the bias gradient of one logit; got shape '
                     f'{jnp.shape(bias_grad)}. Use recover_label_softmax for '
                     'several logits.')
  return (jnp.reshape(bias_grad, ()) < 0).astype(jnp.int32)


def recover_label_softmax(bias_grad: jax.Array) -> jax.Array:
  """Recover the label of one example from a softmax model's bias gradient.

  For softmax cross-entropy `dL/db = p - onehot(y)`: the entry of the true
  class is `p_y - 1 < 0` and every other entry is positive.

  Args:
    bias_grad: `[classes]` gradient of the output layer's bias.

  Returns:
    int32 scalar label: the index of the most negative entry.

  Raises:
    InputError: if `bias_grad` is not one-dimensional with at least two
      entries.
  """
  shape = jnp.shape(bias_grad)
  if len(shape) != 1 or shape[0] < 2:
    # `argmin` of a 2-D array indexes the flattened array, so its result is
    # not a class.
    raise InputError(f'Expected a bias gradient shaped [classes] with at '
                     f'least 2 classes; got shape {shape}. Pass one '
                     'example\'s output bias gradient, or use '
                     'recover_label_binary for one logit.')
  return jnp.argmin(bias_grad).astype(jnp.int32)


def _dense_layers(params: Params) -> list[Mapping[str, jax.Array]]:
  """Return the `Dense_<i>` layers of flax params, ordered by `i`."""
  if isinstance(params, Mapping) and 'params' in params:
    params = params['params']
  if not isinstance(params, Mapping):
    raise InputError('Expected flax params, a mapping of layer names; got '
                     f'{type(params).__name__}.')
  layers = []
  others = []
  for name, layer in params.items():
    prefix, _, index = name.partition('_')
    if prefix == 'Dense' and index.isdigit():
      layers.append((int(index), layer))
    else:
      others.append(name)
  if not layers:
    raise InputError('Expected flax params with a Dense_0 layer; got layers '
                     f'{sorted(params)}.')
  if others:
    # A layer under another name (a custom head, a normalization layer) may
    # sit above the last Dense_<i>, and its labels would then be read from
    # a hidden layer.
    raise InputError(f'Expected only Dense_<i> layers; got also {others}. '
                     'Pass the params of a stack of flax Dense layers with '
                     'their default names, or call recover_inputs and the '
                     'label rules on the layers yourself.')
  layers.sort(key=lambda item: item[0])
  indices = [index for index, _ in layers]
  if indices != list(range(len(layers))):
    # The input is read from Dense_0, so a missing layer would make another
    # layer's ratio pass for the record.
    raise InputError(f'Expected layers Dense_0 to Dense_{len(layers) - 1} '
                     f'with no gaps; got {sorted(params)}. Pass the params '
                     'of the whole model, starting at its first layer.')
  for index, layer in layers:
    if not isinstance(layer, Mapping) or (
        'kernel' not in layer or 'bias' not in layer):
      contents = (sorted(layer) if isinstance(layer, Mapping)
                  else type(layer).__name__)
      raise InputError(f'Layer Dense_{index} needs a kernel and a bias; got '
                       f'{contents}.')
  return [layer for _, layer in layers]


def recover_from_update(update_params: Params) -> tuple[jax.Array, jax.Array]:
  """Recover the record and label behind a one-record client update.

  The update is trained params minus server params after any number of
  plain SGD steps on one record, as `client.local_training` returns it with
  `optax.sgd`. Because `update = -learning_rate * sum of gradients`, the
  input ratio is unchanged, and the label rule runs on `-update`.

  NOTE: The ratio is exact only when each step's first-layer update is a
  multiple of that step's gradient, as with SGD with or without momentum.
  Adam's per-coordinate scaling, weight decay and FedProx's proximal term
  break it.

  Args:
    update_params: a params pytree of flax dense layers,
      `{'params': {'Dense_0': {'kernel': [features, units], 'bias':
      [units]}, 'Dense_1': ..., ...}}`, the layout of `LogisticRegression`
      and `MLP` in `fedjax_med.models.tabular`. The `'params'` wrapper is
      optional. The input comes from `Dense_0`, the label from the highest
      numbered layer, whose units are the logits: one logit means a binary
      sigmoid model, more mean softmax.

  Returns:
    `(x_hat [features], label_hat)`, the label an int32 scalar. For an
    all-zero or non-finite update `x_hat` is NaN and the label is
    meaningless (0).

  Raises:
    InputError: if the params have no `Dense_0` layer with a kernel and a
      bias, or have layers under other names.
  """
  layers = _dense_layers(update_params)
  x_hat = recover_inputs(layers[0]['kernel'], layers[0]['bias'])
  output_bias_grad = -layers[-1]['bias']
  if output_bias_grad.size == 1:
    label = recover_label_binary(output_bias_grad)
  else:
    label = recover_label_softmax(output_bias_grad)
  return x_hat, label


def relative_errors(x_hat: jax.Array, records: jax.Array) -> jax.Array:
  """Return `||x_hat - x_i|| / ||x_i||` for every row `x_i` of `records`.

  Args:
    x_hat: `[features]` estimate.
    records: `[records, features]` true rows.

  Returns:
    `[records]` relative L2 errors, inf where `x_hat` is not finite.
  """
  distance = jnp.linalg.norm(records - x_hat[None, :], axis=-1)
  norm = jnp.linalg.norm(records, axis=-1)
  error = distance / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
  return jnp.where(jnp.all(jnp.isfinite(x_hat)), error, jnp.inf)


def record_error(
    x_hat: jax.Array, records: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """Return the smallest relative L2 error of `x_hat` over a client's records.

  A small value means that `x_hat` reproduces one of the records. An update
  built from several records yields a weighted mean of them, whose error
  against the nearest record is large.

  Args:
    x_hat: `[features]` estimate.
    records: `[records, features]` rows of the client.
    mask: optional `[records]` bool, True on real rows, so padding rows are
      skipped.

  Returns:
    Scalar `min_i ||x_hat - x_i|| / ||x_i||`, inf when `x_hat` is not finite
    or no row is real.
  """
  x_hat, records = jnp.asarray(x_hat), jnp.asarray(records)
  if records.ndim != 2 or records.shape[-1] != x_hat.shape[-1]:
    raise InputError(f'Expected records shaped [records, {x_hat.shape[-1]}] '
                     f'to match x_hat; got {records.shape}.')
  if mask is not None and jnp.shape(mask) != records.shape[:1]:
    raise InputError(f'Expected mask shaped [{records.shape[0]}], one entry '
                     f'per record; got {jnp.shape(mask)}.')
  if records.shape[0] == 0:
    return jnp.asarray(jnp.inf, x_hat.dtype)
  errors = relative_errors(x_hat, records)
  if mask is not None:
    errors = jnp.where(mask, errors, jnp.inf)
  return jnp.min(errors)
