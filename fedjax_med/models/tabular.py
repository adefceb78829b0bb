"""Flax models for tabular features: logistic regression and an MLP.

A binary task (`num_classes == 2`) gets one output logit, the log-odds of
class 1, as FLamby's `Linear(13, 1)` baseline does. A task with more classes
gets one logit per class.
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

from flax import errors as flax_errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_med.typing import Params, PRNGKey


def num_logits(num_classes: int) -> int:
  return 1 if num_classes == 2 else num_classes


def _uniform_fan_in(fan_in: int):
  """Initializer drawing from `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class LogisticRegression(nn.Module):
  """A linear layer over the features: `[batch, features] -> [batch, logits]`.

  Weights and bias start from `U(-1/sqrt(features), 1/sqrt(features))`, the
  initialization of PyTorch's `nn.Linear` that FLamby's baseline uses. With
  FLamby's small learning rate the model is still far from converged after
  15 rounds, so the starting point visibly changes the final accuracy.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = _uniform_fan_in(x.shape[-1])
    layer = nn.Dense(
        num_logits(self.num_classes), kernel_init=init, bias_init=init
    )
    return layer(x)


class MLP(nn.Module):
  """Fully connected ReLU layers followed by a linear output layer."""

  num_classes: int
  hidden_sizes: Sequence[int] = (32,)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    return nn.Dense(num_logits(self.num_classes))(x)


class Model(NamedTuple):
  """Pure functions of a classifier.

  Attributes:
    init: `(key, sample_x [batch, features]) -> params`.
    apply: `(params, x [batch, features]) -> logits [batch, logits]`.
    num_classes: number of label classes; 2 means one log-odds logit.
    apply_train: `(params, x, mask [batch]) -> logits` in training mode,
      for a model whose layers behave differently when training (batch
      normalization over the rows where `mask` is True). None means
      training uses `apply`.
    refresh_stats: `(params, x, mask [examples]) -> params` with the
      model's stored statistics (batch normalization's mean and variance)
      recomputed over the rows where `mask` is True. Local training calls
      it after its last step. None means the model stores no statistics.
  """

  init: Callable[[PRNGKey, jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  num_classes: int
  apply_train: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = (
      None)
  refresh_stats: Callable[[Params, jax.Array, jax.Array], Params] | None = (
      None)


def _without_link(error: Exception) -> str:
  """Return a flax error's message without its trailing documentation link."""
  return str(error).split(' (https://')[0]


def from_flax(module: nn.Module, num_classes: int) -> Model:
  """Wrap a flax module whose output has `num_logits(num_classes)` columns.

  The module is applied as a pure function of params and inputs, so it
  can hold no dropout (which needs an RNG stream) and no BatchNorm (which
  updates batch statistics). Wrap a module with BatchNorm through
  `fedjax_med.models.cnn.from_flax_stateful`. Wrap a `flax.nnx` module
  through `from_nnx`.

  The returned `init` raises ValueError if the module's variables have a
  collection besides `params`, such as BatchNorm's `batch_stats`, because
  `apply` cannot update such a collection and the round would average it
  as a weight. It also raises ValueError if applying the module needs an
  RNG stream, such as `nn.Dropout` with `deterministic=False`: `init`
  itself passes because flax falls back to the init key, but every
  training step would fail.
  """

  def init(key: PRNGKey, sample_x: jax.Array) -> Params:
    variables = module.init(key, sample_x)
    others = sorted(set(variables) - {'params'})
    if others:
      raise ValueError(
          f'{type(module).__name__} has the variable collections {others} '
          "besides 'params', which from_flax cannot update. Wrap a module "
          'with BatchNorm (`batch_stats`) through '
          '`fedjax_med.models.cnn.from_flax_stateful`, or remove the '
          'other collections.'
      )
    check_no_rng_streams(type(module).__name__, 'from_flax', module.apply,
                         variables, sample_x)
    return variables

  return Model(init=init, apply=module.apply, num_classes=num_classes)


def check_no_rng_streams(module_name: str, wrapper: str,
                         apply: Callable[..., Any], *args, **kwargs) -> None:
  """Raise ValueError if `apply(*args, **kwargs)` needs an RNG stream.

  The wrappers apply modules without RNG streams. Flax's `init` falls back
  to the init key, so a module with dropout initializes, and then every
  training step fails with flax's InvalidRngError.
  """
  try:
    jax.eval_shape(functools.partial(apply, **kwargs), *args)
  except flax_errors.InvalidRngError as error:
    raise ValueError(
        f'{module_name} draws random numbers when applied '
        f'({_without_link(error)}), but {wrapper} applies the module '
        'without RNG streams, so it can hold no dropout. Build '
        '`nn.Dropout` with `deterministic=True` or remove it, and remove '
        'other `self.make_rng` calls from `__call__`.'
    ) from error


def from_nnx(make_module: Callable[..., Any], num_classes: int) -> Model:
  """Wrap a `flax.nnx` module whose output has `num_logits(num_classes)`
  columns.

  `make_module(rngs)` builds the module, such as
  `lambda rngs: MyNet(rngs=rngs)`. `init(key, sample_x)` builds it from
  `nnx.Rngs(key)` and returns its `nnx.Param` values as a plain nested
  dict (`nnx.to_pure_dict`), which optax, checkpoints and the aggregators
  handle as any params tree. `apply(params, x)` puts them back into the
  module's graph and calls it, so it is a pure function that `jit` and
  `vmap` take.

  Only modules whose whole state is `nnx.Param` work, as with `from_flax`:
  the round would average any other state, such as BatchNorm's
  `nnx.BatchStat`, as a weight, and dropout's RNG state would stay fixed.

  Raises:
    ValueError: from `init`, if the module has state other than
      `nnx.Param`.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  # Older flax releases have these as State methods only.
  to_pure_dict = getattr(nnx, 'to_pure_dict', lambda state: (
      state.to_pure_dict()))
  replace_by_pure_dict = getattr(
      nnx, 'replace_by_pure_dict',
      lambda state, pure: state.replace_by_pure_dict(pure))
  abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
  graphdef, template, _ = nnx.split(abstract, nnx.Param, ...)

  def init(key: PRNGKey, sample_x: jax.Array) -> Params:
    module = make_module(nnx.Rngs(key))
    _, params, rest = nnx.split(module, nnx.Param, ...)
    _check_only_params(module, rest)
    try:
      jax.eval_shape(module, sample_x)
    except ValueError as error:
      if 'rngs' not in str(error):
        raise _shape_error(module, sample_x, error) from error
      # nnx.Dropout without `rngs` and not deterministic.
      raise ValueError(
          f'{type(module).__name__} draws random numbers when applied '
          f'({error}), but from_nnx applies the module without RNG '
          'streams, so it can hold no dropout. Build `nnx.Dropout` with '
          '`deterministic=True` or remove it.'
      ) from error
    except TypeError as error:
      raise _shape_error(module, sample_x, error) from error
    return to_pure_dict(params)

  def apply(params: Params, x: jax.Array) -> jax.Array:
    state = jax.tree.map(lambda leaf: leaf, template)
    replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)(x)

  return Model(init=init, apply=apply, num_classes=num_classes)


def _shape_error(module: Any, sample_x: jax.Array,
                 error: Exception) -> ValueError:
  """Return the error for a module that cannot take `sample_x`.

  JAX raises TypeError for a dense layer's dot_general and ValueError for
  a convolution's channel count; the caller chains the original.
  """
  return ValueError(
      f'{type(module).__name__} cannot take inputs shaped '
      f'{jnp.shape(sample_x)} (`sample_x`): {error} If the shapes '
      "disagree, check the input width of the module's first layer "
      "(features, or channels for a convolution) against the data."
  )


def _check_only_params(module: Any, rest: Any) -> None:
  """Raise ValueError naming each attribute of `rest`, the non-Param state."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  # flax 0.12 deprecates State.flat_state for nnx.to_flat_state.
  flat_state = getattr(nnx, 'to_flat_state', lambda state: state.flat_state())
  entries = []
  for path, value in flat_state(rest):
    name = '.'.join(str(part) for part in path)
    if isinstance(value, nnx.Variable):
      kind = type(value).__name__
    elif isinstance(value, jax.Array):
      kind = 'a plain jax.Array'
    else:
      kind = f'a plain {type(value).__module__}.{type(value).__name__}'
    entries.append(f'`{name}` ({kind})')
  if not entries:
    return
  raise ValueError(
      f'{type(module).__name__} has state besides nnx.Param, which '
      f'from_nnx cannot carry between rounds: {", ".join(entries)}. Wrap '
      'an array that training should update in `nnx.Param`, and create a '
      'constant array inside `__call__`. Build the module without other '
      'state (for example no BatchNorm, and `nnx.Dropout` with '
      '`deterministic=True` and without `rngs`), or '
      'write a `Model` by hand.'
  )


def check_logits(logits: jax.Array, num_classes: int) -> None:
  """Raise ValueError unless `logits` is `[batch, num_logits(num_classes)]`.

  Only the shape is read, so traced logits can be checked too.
  """
  expected = num_logits(num_classes)
  if logits.ndim != 2 or logits.shape[-1] != expected:
    raise ValueError(
        f'The model returns logits shaped {logits.shape[1:]} per example, '
        f'but num_classes={num_classes} needs ({expected},): one '
        'log-odds logit for 2 classes, else one logit per class. Change '
        "the model's output width or `num_classes`."
    )


def per_example_loss(
    logits: jax.Array, labels: jax.Array, num_classes: int
) -> jax.Array:
  """Return the cross-entropy of each example, shaped `[batch]`."""
  if num_classes == 2:
    return optax.sigmoid_binary_cross_entropy(
        logits[..., 0], labels.astype(logits.dtype)
    )
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def class_probabilities(logits: jax.Array, num_classes: int) -> jax.Array:
  """Return `[batch, num_classes]` probabilities from logits."""
  if num_classes == 2:
    positive = jax.nn.sigmoid(logits[..., 0])
    return jnp.stack([1.0 - positive, positive], axis=-1)
  return jax.nn.softmax(logits, axis=-1)
