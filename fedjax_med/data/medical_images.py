"""Small patches of four medical images that ship inside scikit-image.

The images are files in the installed `skimage/data` folder, read directly
from there, so loading needs no network and no download cache. The
scikit-image functions that return them (`skimage.data.retina()` and so on)
fall back to downloading a file when the packaged copy is missing or has an
unexpected hash; this module reads the packaged file and checks its SHA-256
itself instead. Each source image is one class:

0. fundus: `retina.jpg`, `skimage.data.retina()`, a 1411x1411 RGB fundus
   photograph of a normal left eye. Its docstring says it was downloaded from
   Wikimedia Commons (File:Fundus_photograph_of_normal_left_eye.jpg) and is
   made available under the Creative Commons CC0 1.0 Universal Public Domain
   Dedication. Reference: Häggström, Mikael (2014). "Medical gallery of
   Mikael Häggström 2014". WikiJournal of Medicine 1 (2).
   doi:10.15347/wjm/2014.008.
1. microaneurysms: `microaneurysms.png`, `skimage.data.microaneurysms()`, a
   102x102 grayscale detail (green channel) of a retina with lesions, cropped
   from image 07_dr.JPG of the High-Resolution Fundus (HRF) Image Database.
   Its docstring says: "No copyright restrictions. CC0 given by owner
   (Andreas Maier)." Reference: Budai, Bock, Maier, Hornegger and Michelson.
   Robust Vessel Segmentation in Fundus Images. International Journal of
   Biomedical Imaging, 2013. doi:10.1155/2013/154860.
2. immunohistochemistry: `ihc.png`, `skimage.data.immunohistochemistry()`, a
   512x512 RGB image of colonic glands with IHC staining of the FHL2 protein
   (DAB) and hematoxylin counterstaining, acquired at the Center for
   Microscopy And Molecular Imaging (CMMI). Its docstring says: "No known
   copyright restrictions."
3. cell: `cell.png`, `skimage.data.cell()`, a 660x550 grayscale quantitative
   phase image of a cell floating in saline, retrieved from a digital
   hologram, with a pixel spacing of 0.107 µm. Its docstring says it is CC0,
   dedicated to the public domain. Reference: Müller, Schürmann, Girardo,
   Cojoc and Guck. Accurate evaluation of size and refractive index for
   spherical objects in quantitative phase imaging. Optics Express 26(8):
   10729-10743, 2018. doi:10.1364/OE.26.010729.

The descriptions and licenses above are quoted or summarized from the
docstrings of the `skimage.data` functions in scikit-image 0.26.0. The
package's `skimage/data/README.txt` only says that the folder contains a
subset of scikit-image's sample data.

A patch is one cell of a grid of non-overlapping `size` x `size` squares that
starts at the image's top-left corner. Cells that are nearly uniform (the
black border around the fundus, flat background) are skipped.
"""

import functools
import hashlib
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import skimage.color
import skimage.data
import skimage.io
import skimage.util

from fedjax_med.errors import InputError
from fedjax_med.typing import PRNGKey

CLASS_NAMES = ('fundus', 'microaneurysms', 'immunohistochemistry', 'cell')
# Packaged file of each class, in `CLASS_NAMES` order.
FILE_NAMES = ('retina.jpg', 'microaneurysms.png', 'ihc.png', 'cell.png')
# SHA-256 of each file, as listed in `skimage/data/_registry.py` of
# scikit-image 0.26.0.
_SHA256 = {
    'retina.jpg':
        '38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6',
    'microaneurysms.png':
        'a1e1be59aa447f8ce082f7fa809997ab369a2b137cb6c4202abc647c7ccf6456',
    'ihc.png':
        'f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef',
    'cell.png':
        '8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515',
}

MIN_SIZE = 4
# The smallest source image, microaneurysms, is 102x102 pixels.
MAX_SIZE = 102
# A patch is kept when the standard deviation of its grayscale pixels is above
# MIN_STD and at most MAX_DARK_FRACTION of its pixels are darker than
# DARK_LEVEL. With size 16 the thresholds drop the fundus's black border and
# its flattest regions, so 2 in 5 of the fundus grid cells remain. They keep
# all 36 cells of the microaneurysms image and about 3 in 5 cells of the
# cell image.
MIN_STD = 0.01
DARK_LEVEL = 0.05
MAX_DARK_FRACTION = 0.5


class Patches(NamedTuple):
  """Image patches with their source.

  Attributes:
    images: float32 `[n, size, size, channels]` in [0, 1]. `channels` is 1
      for grayscale and 3 for RGB.
    labels: int32 `[n]`, the index of the source image in `CLASS_NAMES`.
    positions: int32 `[n, 2]`, the (row, column) of each patch's top-left
      pixel in its source image.
  """

  images: np.ndarray
  labels: np.ndarray
  positions: np.ndarray


def data_dir() -> pathlib.Path:
  """Return the installed `skimage/data` folder that contains the images."""
  return pathlib.Path(skimage.data.__file__).resolve().parent


def source_paths() -> tuple[pathlib.Path, ...]:
  """Return the path of each class's image file, in `CLASS_NAMES` order."""
  return tuple(data_dir() / name for name in FILE_NAMES)


@functools.cache
def _read_image(name: str) -> np.ndarray:
  """Read a packaged image as float64 RGB `[height, width, 3]` in [0, 1].

  Grayscale files are repeated into three equal channels.
  """
  path = data_dir() / name
  try:
    content = path.read_bytes()
  except FileNotFoundError:
    raise InputError(
        f'{path} is missing from the installed scikit-image; reinstall '
        'scikit-image (for example `pip install --force-reinstall '
        'scikit-image`).'
    ) from None
  digest = hashlib.sha256(content).hexdigest()
  if digest != _SHA256[name]:
    raise InputError(
        f'{path} has SHA-256 {digest}, but scikit-image 0.26.0 ships this '
        f'file with SHA-256 {_SHA256[name]}; reinstall scikit-image.'
    )
  image = skimage.util.img_as_float(skimage.io.imread(path))
  if image.ndim == 2:
    image = np.repeat(image[..., np.newaxis], 3, axis=-1)
  return image[..., :3]


def _grid_cells(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Split an image into its grid of `size` x `size` cells.

  Returns:
    The cells `[cells, size, size, channels]` and their top-left (row,
    column) positions `[cells, 2]`, in row-major order.
  """
  rows, columns = image.shape[0] // size, image.shape[1] // size
  cropped = image[:rows * size, :columns * size]
  cells = cropped.reshape(rows, size, columns, size, -1).swapaxes(1, 2)
  grid = np.stack(np.meshgrid(np.arange(rows), np.arange(columns),
                              indexing='ij'), axis=-1)
  cells = cells.reshape(-1, size, size, image.shape[-1])
  return cells, grid.reshape(-1, 2) * size


def _non_empty(gray_cells: np.ndarray) -> np.ndarray:
  """Return a bool per cell: True when it passes MIN_STD and the dark limit."""
  std = gray_cells.std(axis=(1, 2))
  dark_fraction = (gray_cells < DARK_LEVEL).mean(axis=(1, 2))
  return (std > MIN_STD) & (dark_fraction <= MAX_DARK_FRACTION)


@functools.cache
def _candidates(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Return the RGB and grayscale non-empty cells and their positions."""
  image = _read_image(name)
  cells, positions = _grid_cells(image, size)
  gray = skimage.color.rgb2gray(cells)
  keep = _non_empty(gray)
  return cells[keep], gray[keep][..., np.newaxis], positions[keep]


def available_patches(size: int = 16) -> dict[str, int]:
  """Return the number of non-empty patches of each class for `size`."""
  _check_size(size)
  return {
      class_name: len(_candidates(file_name, size)[2])
      for class_name, file_name in zip(CLASS_NAMES, FILE_NAMES)
  }


def _check_size(size: int) -> None:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise InputError(f'`size` must be an integer; got {size!r}.')
  if not MIN_SIZE <= size <= MAX_SIZE:
    raise InputError(
        f'`size` must be between {MIN_SIZE} and {MAX_SIZE} pixels (the side '
        f'of the smallest source image); got {size}.'
    )


def _host_rng(key: PRNGKey | int) -> np.random.Generator:
  """Return a numpy Generator seeded with 128 bits drawn from `key`."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    key = jax.random.key(int(key))
  if (isinstance(key, jax.Array) and key.dtype == jnp.uint32
      and key.shape == (2,)):
    # A raw key from `jax.random.PRNGKey`.
    key = jax.random.wrap_key_data(key)
  if not isinstance(key, jax.Array) or key.shape:
    raise InputError(
        '`key` must be an integer seed or a single JAX PRNG key such as '
        f'`jax.random.key(0)`; got {key!r}.'
    )
  bits = jax.random.bits(key, (4,), jnp.uint32)
  return np.random.default_rng([int(word) for word in np.asarray(bits)])


def load_patches(
    size: int = 16,
    per_image: int = 32,
    key: PRNGKey | int = 0,
    grayscale: bool = True,
) -> Patches:
  """Sample `per_image` non-empty patches from each of the four images.

  Args:
    size: side of a square patch in pixels, from MIN_SIZE to MAX_SIZE.
    per_image: patches drawn from each image, without replacement. At most
      the smallest count in `available_patches(size)`, which is 36 for
      `size=16` (the 6x6 grid of the 102x102 microaneurysms image).
    key: JAX PRNG key or integer seed. The same key and arguments give the
      same patches.
    grayscale: if True, convert RGB images to luminance with
      `skimage.color.rgb2gray` (`0.2125 R + 0.7154 G + 0.0721 B`) and return
      one channel. If False, return three channels, with grayscale sources
      repeated into all three.

  Returns:
    `Patches` with `4 * per_image` rows: class 0's patches first, then class
    1's, and so on. Within a class the order is random.

  Raises:
    InputError: if `size` or `per_image` is out of range, or `key` is not a
      single key or an integer. Also if an image file is missing or differs
      from the one scikit-image 0.26.0 ships.
  """
  _check_size(size)
  if isinstance(per_image, bool) or not isinstance(
      per_image, (int, np.integer)
  ):
    raise InputError(f'`per_image` must be an integer; got {per_image!r}.')
  if per_image < 1:
    raise InputError(f'`per_image` must be >= 1; got {per_image}.')
  available = available_patches(size)
  scarcest = min(available, key=available.get)
  if per_image > available[scarcest]:
    raise InputError(
        f'`per_image`={per_image} exceeds the {available[scarcest]} non-empty '
        f'{size}x{size} patches of the {scarcest} image; pass per_image <= '
        f'{available[scarcest]} or a smaller `size`.'
    )
  rng = _host_rng(key)

  images, labels, positions = [], [], []
  for label, file_name in enumerate(FILE_NAMES):
    rgb, gray, cell_positions = _candidates(file_name, size)
    chosen = rng.choice(len(cell_positions), size=per_image, replace=False)
    images.append((gray if grayscale else rgb)[chosen])
    labels.append(np.full(per_image, label, np.int32))
    positions.append(cell_positions[chosen])
  return Patches(
      images=np.concatenate(images).astype(np.float32),
      labels=np.concatenate(labels),
      positions=np.concatenate(positions).astype(np.int32),
  )
