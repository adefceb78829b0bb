"""Image reconstruction metrics: MSE, PSNR, SSIM and best-match pairing.

Every metric takes images shaped `[n, height, width, channels]` with pixel
values in [0, 1] and returns one value per image, `[n]`. Reconstructions are
compared as given, without clipping, so a DLG reconstruction outside [0, 1]
is charged for it. A caller that clips first, as
`experiments/gradient_leakage.py` does, is not charged.
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import skimage.metrics

from fedjax_med.errors import InputError

# Pixel values span [0, 1].
DATA_RANGE = 1.0
# Side of SSIM's square window. scikit-image's default is 7, which fits
# inside the 16x16 patches of `fedjax_med.data.medical_images`.
SSIM_WIN_SIZE = 7


def _check_pair(reconstructions, targets) -> None:
  if reconstructions.shape != targets.shape:
    raise InputError(
        f'`reconstructions` and `targets` must have the same shape; got '
        f'{reconstructions.shape} and {targets.shape}.'
    )
  if reconstructions.ndim != 4:
    raise InputError(
        'Images must be shaped [n, height, width, channels]; got shape '
        f'{reconstructions.shape}. Add a leading axis for a single image.'
    )
  if 0 in reconstructions.shape:
    raise InputError(
        f'Images must not be empty; got shape {reconstructions.shape}.')
  # Reconstructions may leave [0, 1] and are charged for it, but targets
  # outside it mean images on another scale (for example 0-255), for which
  # PSNR and SSIM at data range 1 are wrong.
  if not isinstance(targets, jax.core.Tracer):
    if not np.all(np.isfinite(targets)):
      raise InputError(
          '`targets` contain NaN or inf; pass the original images, scaled '
          'to [0, 1].')
    low, high = float(np.min(targets)), float(np.max(targets))
    if low < 0 or high > DATA_RANGE:
      raise InputError(
          f'`targets` must lie in [0, {DATA_RANGE:g}]; got values from '
          f'{low:g} to {high:g}. Scale images to [0, 1] first.')


def mse(reconstructions, targets) -> jnp.ndarray:
  """Return the mean squared pixel error of each image, `[n]`."""
  reconstructions, targets = jnp.asarray(reconstructions), jnp.asarray(targets)
  _check_pair(reconstructions, targets)
  return jnp.mean(jnp.square(reconstructions - targets), axis=(1, 2, 3))


def psnr(reconstructions, targets) -> jnp.ndarray:
  """Return the peak signal-to-noise ratio of each image in dB, `[n]`.

  `PSNR = 10 log10(DATA_RANGE**2 / MSE)` with `DATA_RANGE = 1`. An exact
  reconstruction (MSE 0) gets `inf`, as `skimage.metrics.
  peak_signal_noise_ratio` returns.
  """
  error = mse(reconstructions, targets)
  return 10.0 * jnp.log10(DATA_RANGE**2 / error)


def ssim(reconstructions, targets, win_size: int = SSIM_WIN_SIZE) -> np.ndarray:
  """Return the structural similarity of each image, `[n]`, on the host.

  Each pair goes through `skimage.metrics.structural_similarity` with
  `data_range=1`, `channel_axis=-1` (the mean over channels), a uniform
  `win_size` x `win_size` window and scikit-image's other defaults (K1=0.01,
  K2=0.03, sample covariance). Identical images score 1.

  Args:
    reconstructions: `[n, height, width, channels]`.
    targets: `[n, height, width, channels]`.
    win_size: odd window side, at most the image's height and width.

  Raises:
    InputError: if the shapes differ or `win_size` does not fit.
  """
  reconstructions = np.asarray(reconstructions, np.float64)
  targets = np.asarray(targets, np.float64)
  _check_pair(reconstructions, targets)
  height, width = targets.shape[1:3]
  # scikit-image raises a TypeError deep inside for a float window.
  is_integer = isinstance(win_size, numbers.Integral) and not isinstance(
      win_size, bool
  )
  if not is_integer or (
      win_size % 2 != 1 or win_size < 3 or win_size > min(height, width)
  ):
    raise InputError(
        f'`win_size` must be an odd integer from 3 to {min(height, width)} '
        f'(the image side); got {win_size!r}.'
    )
  return np.array([
      skimage.metrics.structural_similarity(
          reconstruction, target, win_size=win_size, data_range=DATA_RANGE,
          channel_axis=-1,
      )
      for reconstruction, target in zip(reconstructions, targets)
  ])


class Match(NamedTuple):
  """A one-to-one pairing of reconstructions with targets.

  Attributes:
    indices: int `[n]`; target `i` is paired with reconstruction
      `indices[i]`.
    reconstructions: the reconstructions reordered to follow the targets,
      `reconstructions[indices]`.
  """

  indices: np.ndarray
  reconstructions: np.ndarray


def best_match(reconstructions, targets) -> Match:
  """Pair each target with a distinct reconstruction, minimizing total MSE.

  A batch attack recovers a set of images in no particular order. This
  solves the assignment problem on the `[n, n]` matrix of pairwise MSEs with
  `scipy.optimize.linear_sum_assignment` (the Hungarian method), so metrics
  can then compare images pairwise.

  Args:
    reconstructions: `[n, height, width, channels]`.
    targets: `[n, height, width, channels]`.

  A reconstruction with NaN or inf pixels, as a diverged attack leaves,
  counts as the farthest from every target, so it is paired last.

  Returns:
    The `Match`.
  """
  reconstructions = np.asarray(reconstructions)
  targets = np.asarray(targets)
  _check_pair(reconstructions, targets)
  flat_reconstructions = reconstructions.reshape(len(reconstructions), -1)
  flat_targets = targets.reshape(len(targets), -1)
  difference = flat_targets[:, np.newaxis, :] - flat_reconstructions[np.newaxis]
  with np.errstate(over='ignore', invalid='ignore'):
    cost = np.mean(np.square(difference, dtype=np.float64), axis=-1)
  # The Hungarian method rejects NaN and inf, so they cost more than any n
  # finite pairs together, yet little enough that sums of finite costs keep
  # their precision next to it.
  finite = np.isfinite(cost)
  largest = float(np.max(cost, where=finite, initial=0.0))
  worst = (largest + 1.0) * (len(cost) + 1)
  cost = np.where(finite, cost, worst)
  _, indices = scipy.optimize.linear_sum_assignment(cost)
  return Match(indices=indices, reconstructions=reconstructions[indices])
