"""Centralized logistic regression on the joined data, the reference.

Both vertical protocols run the same gradient descent as this module: the
weights start at zero, the intercept belongs to the label holder, and each
epoch visits the rows in the mini-batches that `batch_indices` returns. The
protocols differ from it only by fixed-point rounding (secret sharing) or
by the encoding precision of Paillier plaintexts.

Two losses, with labels y in {0, 1} and s = 2y - 1 in {-1, 1}::

  exact:  log(1 + exp(-s z)), whose gradient in z is sigmoid(z) - y;
  taylor: log 2 - s z / 2 + z**2 / 8, the second-order Taylor expansion of
          the exact loss at z = 0, whose gradient in z is 1/2 + z/4 - y.

The Taylor loss is what a protocol that cannot evaluate the sigmoid on
encrypted logits (Paillier) trains.
"""

from collections.abc import Sequence
import dataclasses
import math
import numbers
import time
import warnings

import jax
import numpy as np

from fedjax_med.errors import InputError
from fedjax_med.errors import TrainingDiverged

LOSSES = ('exact', 'taylor')
# Folded into `key(seed)` for the minibatch orders, above the 2 keys that
# secret-sharing training splits from it.
_BATCH_ORDER_TAG = 2


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  """Gradient descent settings that every vertical mode shares.

  Attributes:
    loss: 'exact' (logistic loss) or 'taylor' (its quadratic expansion).
    learning_rate: step size of plain gradient descent.
    epochs: passes over the aligned rows.
    batch_size: rows per step; None means one full-batch step per epoch.
    l2: coefficient of `l2 / 2 * |w|**2` on the weights (not the intercept).
    seed: seed of the key that orders the rows of each epoch.
  """

  loss: str = 'exact'
  learning_rate: float = 0.5
  epochs: int = 100
  batch_size: int | None = None
  l2: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise InputError(f'loss={self.loss!r} is invalid; use one of {LOSSES}')
    if not (_is_real(self.learning_rate) and 0 < self.learning_rate < math.inf):
      raise InputError(f'learning_rate={self.learning_rate!r} is invalid; use '
                       'a finite positive number')
    if not (_is_integer(self.epochs) and self.epochs >= 1):
      raise InputError(f'epochs={self.epochs!r} is invalid; use an integer '
                       '>= 1')
    if self.batch_size is not None and not (
        _is_integer(self.batch_size) and self.batch_size >= 1):
      raise InputError(f'batch_size={self.batch_size!r} is invalid; use an '
                       'integer >= 1, or None for full batches')
    if not (_is_real(self.l2) and 0 <= self.l2 < math.inf):
      raise InputError(f'l2={self.l2!r} is invalid; use a finite number >= 0')
    if not (_is_integer(self.seed) and 0 <= self.seed < 2**32):
      raise InputError(f'seed={self.seed!r} is invalid; use an integer in '
                       '[0, 2**32)')


def _is_integer(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_finite(model_name: str, weights, intercept, epoch: int) -> None:
  """Raise TrainingDiverged if a weight or the intercept is not finite."""
  finite = all(np.isfinite(np.asarray(w)).all() for w in weights)
  if not (finite and np.isfinite(float(intercept))):
    raise TrainingDiverged(
        f'{model_name} weights became NaN or infinite in epoch {epoch}; '
        'lower the learning rate')


def party_names(names, num_parties: int, reserved: str) -> tuple[str, ...]:
  """Return checked party names, `party0`, `party1`, ... by default.

  Args:
    names: one name per feature block, or None.
    num_parties: the number of feature blocks.
    reserved: the name of the protocol's helper party (the dealer or the
      arbiter), which no party may take.
  """
  if names is None:
    return tuple(f'party{k}' for k in range(num_parties))
  if isinstance(names, (str, bytes)):
    raise InputError(f'party_names={names!r} is a single value; pass one '
                     'name per feature block')
  names = tuple(names)
  if len(names) != num_parties:
    raise InputError(f'party_names has {len(names)} names for {num_parties} '
                     'feature blocks; give one per block')
  if not all(isinstance(name, str) and name for name in names):
    raise InputError(f'party_names={names!r} is invalid; use nonempty '
                     'strings')
  if len(set(names)) != len(names) or reserved in names:
    raise InputError(f'party_names={names!r} is invalid; use distinct names '
                     f'other than {reserved!r}')
  return names


def as_float_blocks(features) -> list[np.ndarray]:
  """Return each party's block as float64, or raise for non-real values.

  `np.asarray(x, np.float64)` dropped the imaginary part of a complex
  block with only a ComplexWarning, and failed on strings inside numpy.
  """
  blocks = []
  for k, x in enumerate(features):
    x = np.asarray(x)
    if x.dtype.kind not in 'biuf':
      raise InputError(
          f'feature block {k} has dtype {x.dtype}; expected real numbers '
          '(bool, integer or float). Convert the block, for example with '
          '`np.asarray(block, dtype=np.float64)`, after replacing entries '
          'such as None or strings.')
    blocks.append(x.astype(np.float64))
  return blocks


def check_blocks(features, labels) -> None:
  """Raise InputError unless the blocks and labels can be trained on."""
  if len(features) < 1:
    raise InputError('no feature blocks; pass one [rows, columns] block per '
                     'party')
  if labels.ndim != 1 or labels.shape[0] == 0:
    raise InputError(f'labels have shape {labels.shape}; expected [rows] '
                     'with at least one row')
  for k, x in enumerate(features):
    if x.ndim != 2 or x.shape[0] != labels.shape[0]:
      raise InputError(f'feature block {k} has shape {x.shape}; expected '
                       f'[{labels.shape[0]}, columns], one row per label')
    if x.shape[1] == 0:
      raise InputError(f'feature block {k} has no columns; give every party '
                       'at least one feature')
    if not np.isfinite(x).all():
      raise InputError(f'feature block {k} has a NaN or infinite value; '
                       'impute or drop those rows first')
  if labels.dtype.kind not in 'biuf':
    raise InputError(f'labels have dtype {labels.dtype}; use 0 and 1')
  invalid = labels[~np.isin(labels, (0, 1))]
  if invalid.size:
    raise InputError(f'labels contain {invalid[0].item()!r}; use 0 and 1')


def batch_indices(settings: TrainingSettings, num_rows: int) -> list[np.ndarray]:
  """Return the row indices of every step, epoch after epoch.

  The order is public: every party derives it from the shared seed, so the
  parties process the same rows in each step. A full-batch epoch visits the
  rows in order; a mini-batch epoch visits a fresh permutation. When
  `batch_size` does not divide `num_rows`, the remainder joins the epoch's
  last batch, so no batch has fewer than `batch_size` rows. A short batch
  would let a passive party with at least as many columns as the batch has
  rows solve its gradient for the batch's residuals (see
  `warn_if_gradients_reveal_residuals`).
  """
  if settings.batch_size is None or settings.batch_size >= num_rows:
    return [np.arange(num_rows)] * settings.epochs
  # Secret-sharing training splits `key(seed)` into 2 keys, which equal
  # `fold_in(key(seed), 0)` and `(..., 1)`: epoch orders folded into
  # `key(seed)` itself shared their stream with its masks.
  key = jax.random.fold_in(jax.random.key(settings.seed), _BATCH_ORDER_TAG)
  size = settings.batch_size
  steps = []
  for epoch in range(settings.epochs):
    order = np.asarray(
        jax.random.permutation(jax.random.fold_in(key, epoch), num_rows))
    steps.extend(np.array_split(order, range(size, num_rows - size + 1, size)))
  return steps


def warn_if_gradients_reveal_residuals(
    steps: Sequence[np.ndarray], features: Sequence[np.ndarray],
    names: Sequence[str]) -> None:
  """Warn when a passive party could solve its gradient for the residuals.

  A passive party k receives X_B^T r for the rows B of each step. When B has
  no more rows than the party has columns, and its rows are linearly
  independent, that system determines r, and the sign of r = p - y gives
  each label away.

  Args:
    steps: row indices of every step, as `batch_indices` returns them.
    features: one `[rows, columns_k]` block per party, the label holder
      first.
    names: the parties' names, in the same order.
  """
  smallest = min(len(rows) for rows in steps)
  exposed = [f'{name!r} ({block.shape[1]} columns)'
             for name, block in zip(names[1:], features[1:])
             if block.shape[1] >= smallest]
  if exposed:
    widest = max(block.shape[1] for block in features[1:])
    num_rows = features[0].shape[0]
    if widest < num_rows:
      fix = f'set batch_size above {widest}, or use full batches'
    else:
      fix = (f'no batch size helps with {num_rows} rows; give the wide '
             'parties fewer columns or train on more patients')
    warnings.warn(
        f'a step covers only {smallest} rows, so passive parties '
        f'{", ".join(exposed)} can solve their gradients for those rows\' '
        f'residuals and read their labels; {fix}', UserWarning, stacklevel=3)


def sigmoid(z: np.ndarray) -> np.ndarray:
  """Return the logistic function of `z`, without overflow."""
  return np.exp(-np.logaddexp(0.0, -z))


def residual(loss: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Return the gradient of the per-row loss in the logit `z`."""
  if loss == 'exact':
    return sigmoid(z) - y
  return 0.5 + z / 4 - y


def loss_value(loss: str, z: np.ndarray, y: np.ndarray) -> float:
  """Return the mean loss of logits `z` against labels `y` in {0, 1}."""
  sign = 2.0 * y - 1.0
  if loss == 'exact':
    return float(np.mean(np.logaddexp(0.0, -sign * z)))
  return float(np.mean(np.log(2.0) - sign * z / 2 + z**2 / 8))


@dataclasses.dataclass(frozen=True)
class LogisticModel:
  """Weights of a vertical logistic regression, one block per party.

  Attributes:
    weights: one float64 vector per party, in party order.
    intercept: the label holder's intercept.
    losses: mean training loss (of the trained loss) before each epoch and
      after the last, `epochs + 1` values.
  """

  weights: tuple[np.ndarray, ...]
  intercept: float
  losses: tuple[float, ...]

  def logits(self, features: tuple[np.ndarray, ...]) -> np.ndarray:
    """Return the logits of rows whose party blocks are `features`."""
    return sum(x @ w for x, w in zip(features, self.weights)) + self.intercept


def train_centralized(
    features: tuple[np.ndarray, ...],
    labels: np.ndarray,
    settings: TrainingSettings,
) -> LogisticModel:
  """Train on the joined rows in the clear, the way the protocols train.

  Args:
    features: one `[rows, columns_k]` block per party, rows aligned.
    labels: `[rows]` labels in {0, 1}.
    settings: the shared gradient descent settings.

  Returns:
    The trained model, with one weight block per party.

  Raises:
    InputError: for mismatched shapes, empty blocks, non-finite features or
      labels outside {0, 1}.
    TrainingDiverged: if the weights become NaN or infinite.
  """
  model, _ = train_centralized_timed(features, labels, settings)
  return model


def train_centralized_timed(
    features: tuple[np.ndarray, ...],
    labels: np.ndarray,
    settings: TrainingSettings,
) -> tuple[LogisticModel, tuple[float, ...]]:
  """Run `train_centralized` and time each epoch's gradient steps.

  Returns:
    The model, and the wall time in seconds of each epoch's steps. The
    times leave out the loss evaluation on all rows before every epoch,
    as the protocols' `epoch_seconds` do.
  """
  blocks = as_float_blocks(features)
  check_blocks(blocks, np.asarray(labels))
  y = np.asarray(labels, np.float64)
  widths = [x.shape[1] for x in blocks]
  joined = np.concatenate(blocks, axis=1)
  weights = np.zeros(joined.shape[1])
  intercept = 0.0
  steps = batch_indices(settings, joined.shape[0])
  steps_per_epoch = len(steps) // settings.epochs
  losses, epoch_seconds = [], []
  for epoch in range(settings.epochs):
    check_finite('centralized', (weights,), intercept, epoch)
    losses.append(loss_value(settings.loss, joined @ weights + intercept, y))
    start = time.perf_counter()
    for rows in steps[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]:
      z = joined[rows] @ weights + intercept
      r = residual(settings.loss, z, y[rows])
      gradient = joined[rows].T @ r / len(rows) + settings.l2 * weights
      weights = weights - settings.learning_rate * gradient
      intercept -= settings.learning_rate * float(np.mean(r))
    epoch_seconds.append(time.perf_counter() - start)
  check_finite('centralized', (weights,), intercept, settings.epochs)
  losses.append(loss_value(settings.loss, joined @ weights + intercept, y))
  model = LogisticModel(
      weights=tuple(np.split(weights, np.cumsum(widths)[:-1])),
      intercept=intercept,
      losses=tuple(losses),
  )
  return model, tuple(epoch_seconds)
