"""Figures of image data: example images through each scanner profile."""

from typing import Sequence

import jax
from matplotlib import figure as figure_lib
import numpy as np

from fedjax_med.data import scanner
from fedjax_med.errors import InputError

# As in `plots.py`, figures are drawn on `Figure` objects without pyplot, so
# that drawing neither needs a display nor changes the caller's backend.


def plot_profile_examples(
    images: np.ndarray | jax.Array,
    names: Sequence[str],
    *,
    key: jax.Array,
) -> figure_lib.Figure:
  """Draw the same images as each named scanner profile would capture them.

  Row i shows every image through profile `names[i]`, with noise drawn from
  `jax.random.fold_in(key, i)`. Each panel's title is the profile name.
  Values outside [0, 1] are drawn as 0 or 1, but the images themselves are
  not clipped (see `scanner.apply_profile`).

  Args:
    images: `[examples, height, width, channels]` images with values in
      [0, 1] and 1 (grayscale) or 3 (RGB) channels. Each is one column.
    names: profile names from `scanner.PROFILES`, one row each.
    key: JAX PRNG key for the noise of the profiles.

  Returns:
    The figure, with len(names) x examples axes. Save it with
    `figure.savefig(path)`.

  Raises:
    InputError: if `images` is not shaped as above or a name is unknown.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3):
    raise InputError(
        '`images` must be shaped [examples, height, width, channels] with at '
        f'least one example and 1 or 3 channels; got shape {images.shape}.'
    )
  names = scanner._check_names(names)  # pylint: disable=protected-access
  num_examples = images.shape[0]

  figure = figure_lib.Figure(
      figsize=(1.6 * num_examples + 0.4, 1.8 * len(names) + 0.2)
  )
  axes_grid = figure.subplots(len(names), num_examples, squeeze=False)
  for row, name in enumerate(names):
    shifted = scanner.apply_profile(
        images, scanner.PROFILES[name], jax.random.fold_in(key, row)
    )
    shifted = np.clip(np.asarray(shifted), 0.0, 1.0)
    for column in range(num_examples):
      axes = axes_grid[row, column]
      # Nearest-neighbour display shows the pixels that the scanner kept,
      # so the display does not smooth away a loss of resolution.
      if images.shape[-1] == 1:
        axes.imshow(shifted[column, :, :, 0], cmap='gray', vmin=0.0,
                    vmax=1.0, interpolation='nearest')
      else:
        axes.imshow(shifted[column], interpolation='nearest')
      axes.set_title(name, fontsize=8)
      axes.set_xticks([])
      axes.set_yticks([])
  figure.tight_layout()
  return figure
