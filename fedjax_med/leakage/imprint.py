"""A malicious server's imprint layer that isolates records in an aggregate.

Fowl, Geiping, Czaja, Goldblum and Goldstein, "Robbing the Fed: Directly
Obtaining Private Data in Federated Learning with Modified Models", ICLR
2022, https://arxiv.org/abs/2110.13057.

The server sends a model whose first layer is an imprint block: a dense
layer of `k` units that all share the kernel column `m` (the measurement),
with biases `-q_j` for increasing thresholds `q_0 < ... < q_{k-1}`, then a
ReLU and a dense layer to the logits. Unit `j` is active for a record `x`
exactly when its measurement `s = <m, x>` exceeds `q_j`. Every unit has the
same output weights, so a record contributes `c * [x, 1]` to the kernel and
bias gradients of each unit it activates, with one scalar `c` per record.
The difference of consecutive units' gradients keeps only the records with
`q_j < s <= q_{j+1}`, and if bin `j` contains one record, the ratio of its
kernel difference to its bias difference is that record, exactly.

Gradients of many records and clients add up, so the attack works on a sum
taken under secure aggregation as well as on one client's gradient. Any
positive weighting of the clients, such as FedAvg's example counts, leaves
the ratio unchanged. The thresholds come from quantiles of the measurement
over public records of the same kind, so the server needs the distribution
of the records, not the records themselves.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.errors import InputError
from fedjax_med.leakage import analytic
from fedjax_med.models import tabular
from fedjax_med.typing import Params, PRNGKey


class ImprintModel(nn.Module):
  """An imprint block and a linear output: `[batch, features] -> logits`.

  The flax layer names are `Dense_0` (the imprint layer, `num_bins` units)
  and `Dense_1` (the output layer), so `analytic.recover_from_update` reads
  its params too.
  """

  num_bins: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = nn.relu(nn.Dense(self.num_bins)(x))
    return nn.Dense(tabular.num_logits(self.num_classes))(hidden)


def imprint_model(num_bins: int, num_classes: int) -> tabular.Model:
  """Return the `tabular.Model` of an `ImprintModel`, for local training."""
  return tabular.from_flax(ImprintModel(num_bins, num_classes), num_classes)


def random_measurement(key: PRNGKey, num_features: int) -> jax.Array:
  """Draw a measurement direction uniformly from the unit sphere.

  Returns:
    `[num_features]` float32 vector of L2 norm 1.
  """
  direction = jax.random.normal(key, (num_features,))
  return direction / jnp.linalg.norm(direction)


def imprint_thresholds(
    public_measurements: jax.Array | np.ndarray, num_bins: int
) -> np.ndarray:
  """Place bin thresholds that split the public records into equal shares.

  Threshold `j >= 1` is the `j / num_bins` quantile of the public
  measurements (linear interpolation). Threshold 0 sits below the smallest
  public measurement by the range of the public measurements, so that the
  lowest bin also catches private records a little below every public one.
  A record below threshold 0 activates no unit and is never recovered.

  Args:
    public_measurements: `[records]` measurements `<m, x>` of public records.
    num_bins: number of bins `k`, at least 2.

  Returns:
    `[num_bins]` float32 thresholds, strictly increasing.

  Raises:
    InputError: if `num_bins < 2`, the measurements are empty or not finite,
      or they have too few distinct values for strictly increasing
      thresholds.
  """
  if isinstance(num_bins, bool) or not isinstance(
      num_bins, (int, np.integer)) or num_bins < 2:
    raise InputError(f'num_bins must be at least 2 and an integer; got '
                     f'{num_bins!r}.')
  values = np.asarray(public_measurements, np.float64).reshape(-1)
  if values.size == 0 or not np.all(np.isfinite(values)):
    raise InputError('public_measurements must be a non-empty array of finite '
                     f'values; got {values.size} values.')
  levels = np.arange(1, num_bins) / num_bins
  inner = np.quantile(values, levels)
  spread = values.max() - values.min()
  lowest = values.min() - spread
  thresholds = np.concatenate([[lowest], inner]).astype(np.float32)
  if not np.all(np.diff(thresholds) > 0):
    raise InputError(
        f'The {values.size} public measurements have too few distinct values '
        f'for {num_bins} strictly increasing thresholds; use fewer bins or '
        'more public records.')
  return thresholds


def _check_thresholds(thresholds: np.ndarray) -> None:
  if thresholds.ndim != 1 or thresholds.size < 2:
    raise InputError('thresholds must be a vector of at least 2 values (one '
                     f'per bin); got shape {thresholds.shape}.')
  if not np.all(np.isfinite(thresholds)):
    raise InputError('thresholds must be finite.')
  steps = np.diff(thresholds)
  if not np.all(steps > 0):
    position = int(np.argmax(steps <= 0))
    raise InputError(
        'thresholds must be strictly increasing; got '
        f'{thresholds[position]!r} followed by {thresholds[position + 1]!r} '
        f'at index {position}.')


def make_imprint_params(
    key: PRNGKey,
    measurement: jax.Array | np.ndarray,
    thresholds: jax.Array | np.ndarray,
    num_classes: int,
    gain: float = 1e-3,
    output_scale: float | None = None,
) -> Params:
  """Build the crafted params of an `ImprintModel`.

  Every imprint unit `j` gets kernel column `gain * measurement` and bias
  `-gain * thresholds[j]`, so it is active exactly when the measurement
  exceeds `thresholds[j]`. Every row of the output kernel is one shared
  vector `v` of L2 norm `output_scale`, drawn from `key`, and the output
  bias is 0. The shared `v` is what makes each record's contribution the
  same scalar multiple of `[x, 1]` in every unit it activates.

  Args:
    key: PRNG key for the direction of `v`.
    measurement: `[features]` direction `m`, as `random_measurement` draws.
    thresholds: `[num_bins]` strictly increasing bin thresholds, computed
      with the same `measurement`, as `imprint_thresholds` returns.
    num_classes: number of label classes; 2 means one log-odds logit.
    gain: positive scale of the imprint layer. The default output scale
      grows as `1 / gain`, so the logits do not depend on it, but the
      imprint layer's gradients grow by `1 / gain` against its params. A
      FedAvg update is trained minus server params in float32, so it keeps
      only the digits of the gradient that the params leave. Measured on 64
      heart records and 128 bins after one SGD step at learning rate 0.1
      (`test_small_gain_keeps_update_digits`), gain 1 recovers the records
      alone in their bins to relative errors up to 0.20, gain 1e-3 to
      1.7e-6.
    output_scale: L2 norm of `v`. The default,
      `1 / (gain * num_bins * (thresholds[-1] - thresholds[0]))`, keeps the
      logits of records within the thresholds' range below about 1 in
      magnitude, so the sigmoid or softmax does not saturate and every
      record's gradient scalar stays far from 0.

  Returns:
    `{'params': {'Dense_0': {'kernel': [features, num_bins], 'bias':
    [num_bins]}, 'Dense_1': {'kernel': [num_bins, logits], 'bias':
    [logits]}}}`, float32.

  Raises:
    InputError: if the measurement is not a finite non-zero vector, the
      thresholds are not strictly increasing or number fewer than 2, or
      `gain` or `output_scale` is not positive.
  """
  measurement = np.asarray(measurement, np.float32)
  thresholds = np.asarray(thresholds, np.float32)
  if measurement.ndim != 1 or not np.all(np.isfinite(measurement)):
    raise InputError('measurement must be a vector of finite values; got '
                     f'shape {measurement.shape}.')
  if not np.any(measurement != 0):
    raise InputError('measurement must not be all zeros.')
  _check_thresholds(thresholds)
  num_bins = thresholds.size
  if not gain > 0:
    raise InputError(f'gain must be positive; got {gain}.')
  if isinstance(num_classes, bool) or not isinstance(
      num_classes, (int, np.integer)) or num_classes < 2:
    raise InputError(f'num_classes must be an integer of at least 2 (2 '
                     f'means one log-odds logit); got {num_classes!r}.')
  if output_scale is None:
    spread = float(thresholds[-1] - thresholds[0])
    output_scale = 1.0 / (gain * num_bins * spread)
  if not output_scale > 0:
    raise InputError(f'output_scale must be positive; got {output_scale}.')

  logits = tabular.num_logits(num_classes)
  direction = jax.random.normal(key, (logits,))
  shared_row = output_scale * direction / jnp.linalg.norm(direction)
  return {
      'params': {
          'Dense_0': {
              'kernel': jnp.tile(gain * jnp.asarray(measurement)[:, None],
                                 (1, num_bins)),
              'bias': -gain * jnp.asarray(thresholds),
          },
          'Dense_1': {
              'kernel': jnp.tile(shared_row[None, :], (num_bins, 1)),
              'bias': jnp.zeros((logits,), jnp.float32),
          },
      }
  }


def assign_bins(measurements: jax.Array, thresholds: jax.Array) -> jax.Array:
  """Return the bin of each measurement, -1 for those at or below bin 0.

  Bin `j` contains the measurements `s` with `thresholds[j] < s <=
  thresholds[j + 1]`, and the last bin everything above its threshold.

  Args:
    measurements: `[records]` values `<m, x>`.
    thresholds: `[num_bins]` strictly increasing thresholds.

  Returns:
    `[records]` int32 bin indices in `[-1, num_bins - 1]`.
  """
  return (jnp.searchsorted(thresholds, measurements, side='left') - 1).astype(
      jnp.int32)


def recover_from_imprint(
    kernel_grad: jax.Array, bias_grad: jax.Array, rtol: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
  """Recover one candidate record per bin from an imprint layer's gradient.

  Works on a gradient or a FedAvg update (the sign and scale cancel), of one
  record, one client or a sum over many clients.

  Args:
    kernel_grad: `[features, num_bins]` gradient of the imprint kernel
      (`Dense_0`).
    bias_grad: `[num_bins]` gradient of the imprint bias.
    rtol: a bin counts as empty when the magnitude of its bias difference is
      at most `rtol` times the largest `|bias_grad|`. Float32 rounding can
      leave a tiny non-zero difference in an empty bin.

  Returns:
    `(candidates [num_bins, features], non_empty [num_bins] bool)`. Row `j`
    is the record of bin `j` if the bin contains exactly one, a weighted
    mean of its records if it contains several, and NaN if `non_empty[j]`
    is False. The gradient alone does not tell a one-record bin from a
    multi-record one. `match_records` does, given the true records.

  Raises:
    InputError: if the shapes are not `[features, num_bins]` and
      `[num_bins]`, or `rtol` is negative or not finite.
  """
  # A negative rtol marks every bin non-empty and a NaN one marks none.
  if not isinstance(rtol, jax.core.Tracer) and not 0 <= rtol < np.inf:
    raise InputError(f'rtol must be finite and at least 0; got {rtol!r}.')
  kernel_grad, bias_grad = jnp.asarray(kernel_grad), jnp.asarray(bias_grad)
  if kernel_grad.ndim != 2 or bias_grad.shape != kernel_grad.shape[1:]:
    raise InputError(
        'Expected a kernel gradient [features, num_bins] and a bias gradient '
        f'[num_bins]; got shapes {kernel_grad.shape} and {bias_grad.shape}.')
  next_kernel = jnp.concatenate(
      [kernel_grad[:, 1:], jnp.zeros_like(kernel_grad[:, :1])], axis=1)
  next_bias = jnp.concatenate([bias_grad[1:], jnp.zeros_like(bias_grad[:1])])
  kernel_diff = kernel_grad - next_kernel
  bias_diff = bias_grad - next_bias
  non_empty = jnp.abs(bias_diff) > rtol * jnp.max(jnp.abs(bias_grad))
  safe_bias = jnp.where(non_empty, bias_diff, 1.0)
  candidates = kernel_diff / safe_bias[None, :]
  candidates = jnp.where(non_empty[None, :], candidates, jnp.nan)
  return candidates.T, non_empty


def match_records(candidates: jax.Array, records: jax.Array) -> jax.Array:
  """Return each record's smallest relative error over the candidates.

  Args:
    candidates: `[candidates, features]`; rows that are not finite (empty
      bins) never match.
    records: `[records, features]` true records.

  Returns:
    `[records]` values `min_c ||candidates[c] - x_i|| / ||x_i||`, inf for a
    record when no candidate is finite.
  """
  errors = jax.vmap(analytic.relative_errors, in_axes=(0, None))(
      candidates, records)
  return jnp.min(errors, axis=0)
