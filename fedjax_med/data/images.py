"""Image classification datasets in the padded client layout.

Image data uses the layout of `federated.FederatedData` with spatial axes:
`x` is float32 `[clients, examples, height, width, channels]` and `y` is
int32 `[clients, examples]`. `FederatedDataset.feature_names` names the
channels, so `num_features` is the number of channels. Three sources:

* `load_digits` and `digits_dataset`: the bundled UCI handwritten digits, 1,797
  real 8x8 grayscale images in 10 classes. They are not medical images. They
  stand in for a small real imaging task that needs no download.
* `synthetic_images` and `synthetic_image_clients`: images drawn in JAX from
  smooth random class prototypes, with a `separation` that sets how easy the
  classes are to tell apart. Use them for scale runs with thousands of
  clients.
* `load_image_folder` and `load_npz_sites`: the user's own images, one site
  (client) per folder or per `.npz` file.

Every loader except the synthetic one splits each client's images into
train and test sets with `partitions.build_dataset`, stratified by label.

Reference for the digits:
  Alpaydin and Kaynak. Optical Recognition of Handwritten Digits. UCI Machine
  Learning Repository, 1998.
  https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits
  `files/digits/ATTRIBUTION.md` gives the file's origin and license.
"""

import dataclasses
import functools
import gzip
import hashlib
import io
import math
import os
import pathlib
import struct
import warnings
import zipfile
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import skimage.color
import skimage.io
import skimage.transform
import skimage.util

from fedjax_med.data import federated
from fedjax_med.data import partitions
from fedjax_med.errors import InputError
from fedjax_med.typing import PRNGKey

DIGITS_NAME = 'digits'
DIGITS_FILE = 'digits.csv.gz'
# SHA-256 of sklearn/datasets/data/digits.csv.gz in the scikit-learn 1.9.1
# wheel, the file bundled here.
DIGITS_SHA256 = (
    '09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22'
)
DIGITS_NUM_CLASSES = 10
# Each pixel counts the set pixels in a 4x4 block of a 32x32 bitmap, so it is
# an integer from 0 to 16.
DIGITS_MAX_PIXEL = 16

# Extensions that `load_image_folder` reads, compared in lower case.
IMAGE_EXTENSIONS = ('.bmp', '.jpeg', '.jpg', '.png', '.tif', '.tiff')
# Files that operating systems add to folders. `load_image_folder` skips them
# along with every file or folder whose name starts with a dot.
_SYSTEM_FILES = frozenset({'Thumbs.db', 'desktop.ini'})
# Exceptions that `skimage.io.imread` (scikit-image 0.26 with imageio, Pillow
# and tifffile) raised for broken files: OSError when no reader accepts the
# file, SyntaxError for a truncated PNG and ValueError (tifffile's
# TiffFileError) for a truncated TIFF. EOFError and struct.error are what
# Python's parsers raise on data that ends early, so they are caught too.
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


# Shared helpers.


def _check_count(name: str, value: int, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise InputError(f'`{name}` must be an integer; got {value!r}.')
  if value < minimum:
    raise InputError(f'`{name}` must be >= {minimum}; got {value}.')
  return int(value)


def _check_scale(name: str, value: float) -> None:
  """Raise unless `value` is finite and >= 0. Traced values are not checked.

  Skipping JAX arrays lets `jax.jit` and `jax.vmap` trace these arguments.
  """
  if isinstance(value, jax.Array):
    return
  if (
      isinstance(value, bool)
      or not isinstance(value, (int, float, np.integer, np.floating))
      or not math.isfinite(value)
      or value < 0
  ):
    raise InputError(f'`{name}` must be a finite number >= 0; got {value!r}.')


def site_names(num_sites: int) -> tuple[str, ...]:
  """Return 'site_000', 'site_001', ..., with at least three digits."""
  width = max(3, len(str(num_sites - 1)))
  return tuple(f'site_{index:0{width}d}' for index in range(num_sites))


def channel_names(num_channels: int) -> tuple[str, ...]:
  """Return the `feature_names` of images with `num_channels` channels.

  One channel is 'gray', three are 'red', 'green' and 'blue', and any other
  count gives 'channel_0', 'channel_1', ...
  """
  if num_channels == 1:
    return ('gray',)
  if num_channels == 3:
    return ('red', 'green', 'blue')
  return tuple(f'channel_{index}' for index in range(num_channels))


def _split_pooled(
    images: np.ndarray,
    labels: np.ndarray,
    site_sizes: Sequence[int],
    *,
    key: PRNGKey,
    test_fraction: float,
    name: str,
    num_classes: int,
    client_names: Sequence[str],
    source_files: Sequence[pathlib.Path],
) -> federated.FederatedDataset:
  """Split pooled images, stored site after site, into a FederatedDataset."""
  bounds = np.cumsum(site_sizes)
  client_indices = np.split(np.arange(bounds[-1]), bounds[:-1])
  dataset = partitions.build_dataset(
      images,
      labels,
      client_indices,
      key=key,
      test_fraction=test_fraction,
      name=name,
      num_classes=num_classes,
      client_names=client_names,
      feature_names=channel_names(images.shape[-1]),
  )
  return dataclasses.replace(dataset, source_files=tuple(source_files))


# Bundled digits.


def digits_path() -> pathlib.Path:
  """Return the path of the bundled `digits.csv.gz`."""
  return federated.bundled_folder(DIGITS_NAME) / DIGITS_FILE


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """Load the 1,797 bundled 8x8 handwritten digits.

  These are the test part of the UCI "Optical Recognition of Handwritten
  Digits" data (Alpaydin and Kaynak, 1998), as scikit-learn ships it in
  `sklearn.datasets.load_digits`: 13 writers, 10 classes (the digits 0 to 9).
  Each pixel is an integer from 0 to 16, the number of set pixels in a 4x4
  block of the original 32x32 bitmap. They are handwritten digits, not
  medical images. The file is read with numpy, so scikit-learn is not needed.

  Returns:
    `(images, labels)`: float32 `[1797, 8, 8, 1]` pixels divided by 16, so in
    [0, 1], and int32 `[1797]` digits, in the file's row order.

  Raises:
    InputError: if the bundled file is missing or its SHA-256 differs from
      the file of scikit-learn 1.9.1.
  """
  path = digits_path()
  try:
    content = path.read_bytes()
  except FileNotFoundError:
    raise InputError(
        f'Bundled file {path} is missing. Reinstall fedjax_med to restore it.'
    ) from None
  digest = hashlib.sha256(content).hexdigest()
  if digest != DIGITS_SHA256:
    raise federated.corrupt_bundled_file(
        path,
        f'its SHA-256 is {digest}, but the digits file of scikit-learn 1.9.1 '
        f'has {DIGITS_SHA256}',
    )

  table = np.loadtxt(io.BytesIO(gzip.decompress(content)), delimiter=',')
  pixels = table[:, :-1].reshape(-1, 8, 8, 1)
  images = (pixels / DIGITS_MAX_PIXEL).astype(np.float32)
  return images, table[:, -1].astype(np.int32)


def digits_dataset(
    num_clients: int,
    *,
    key: PRNGKey,
    alpha: float | None = None,
    test_fraction: float = 0.2,
    min_examples: int = 2,
) -> federated.FederatedDataset:
  """Partition the bundled digits into clients and split each one.

  Without `alpha` the 1,797 images are shuffled and dealt into clients whose
  sizes differ by at most 1 (`partitions.partition_quantity_skew` with
  sigma 0). With `alpha` each class is shared out by Dirichlet(alpha) shares
  (`partitions.partition_dirichlet`), so a small alpha gives each client few
  classes. Each client's images are then split into train and test sets by
  `partitions.build_dataset`, stratified by label.

  Args:
    num_clients: number of clients, >= 1. 100 clients get about 18 images
      each.
    key: JAX PRNG key. The same key and arguments give the same dataset.
    alpha: Dirichlet concentration, finite and > 0, or None for the equal
      random split.
    test_fraction: fraction of each client's images in its test set, in
      [0, 1).
    min_examples: minimum number of images per client, >= 0. The default 2
      leaves every client at least one training image when `test_fraction`
      is at most 0.5. With `alpha`, a partition that gives a client fewer is
      redrawn.

  Returns:
    A `FederatedDataset` named 'digits' with numpy arrays: `x` float32
    `[clients, examples, 8, 8, 1]` in [0, 1] and `y` int32. Its clients are
    'site_000', 'site_001', ..., its `num_classes` is 10 and its
    `source_files` is the bundled file.

  Raises:
    InputError: if an argument is out of range, `num_clients * min_examples`
      exceeds 1,797, no Dirichlet draw gives every client `min_examples`
      images, or the bundled file is missing or changed.
  """
  federated.check_key(key)
  _check_count('num_clients', num_clients, 1)
  federated.check_test_fraction(test_fraction)
  images, labels = load_digits()
  partition_key, split_key = jax.random.split(key)

  if alpha is None:
    client_indices = partitions.partition_quantity_skew(
        len(labels),
        num_clients=num_clients,
        key=partition_key,
        sigma=0.0,
        min_examples=min_examples,
    )
  else:
    client_indices = partitions.partition_dirichlet(
        labels,
        num_clients=num_clients,
        alpha=alpha,
        key=partition_key,
        num_classes=DIGITS_NUM_CLASSES,
        min_examples=min_examples,
    )
  dataset = partitions.build_dataset(
      images,
      labels,
      client_indices,
      key=split_key,
      test_fraction=test_fraction,
      name=DIGITS_NAME,
      num_classes=DIGITS_NUM_CLASSES,
      client_names=site_names(num_clients),
      feature_names=channel_names(1),
  )
  return dataclasses.replace(dataset, source_files=(digits_path(),))


# Synthetic images.


def _positive_ints(value: Any, length: int) -> tuple[int, ...] | None:
  """Return `value` as `length` positive ints, or None if it is not that."""
  sides = tuple(value) if isinstance(value, (tuple, list)) else ()
  if len(sides) != length or not all(
      isinstance(side, (int, np.integer)) and not isinstance(side, bool)
      and side >= 1
      for side in sides
  ):
    return None
  return tuple(int(side) for side in sides)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
  shape = _positive_ints(image_shape, 3)
  if shape is None:
    raise InputError(
        '`image_shape` must be three positive integers (height, width, '
        f'channels), such as (32, 32, 3); got {image_shape!r}.'
    )
  return shape


def _grid_shape(
    image_shape: tuple[int, int, int], cell_size: int
) -> tuple[int, int, int]:
  """Return the (rows, columns, channels) of the low-resolution grid."""
  height, width, channels = image_shape
  return (
      math.ceil(height / cell_size), math.ceil(width / cell_size), channels
  )


def _check_synthetic_arguments(
    *,
    image_shape: Sequence[int],
    num_classes: int,
    separation: float,
    noise_std: float,
    pixel_noise_std: float,
    cell_size: int,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """Return the checked image shape and its grid shape, or raise."""
  image_shape = _check_image_shape(image_shape)
  _check_count('num_classes', num_classes, 2)
  _check_count('cell_size', cell_size, 1)
  _check_scale('separation', separation)
  _check_scale('noise_std', noise_std)
  _check_scale('pixel_noise_std', pixel_noise_std)
  return image_shape, _grid_shape(image_shape, cell_size)


def _has_pixel_noise(pixel_noise_std: float) -> bool:
  """Return False only for a concrete 0, so no pixel noise is drawn for it."""
  return isinstance(pixel_noise_std, jax.Array) or pixel_noise_std != 0


def _normal(key: PRNGKey, shape: tuple[int, ...]) -> jax.Array:
  """Draw standard normals as one flat array, reshaped to `shape`.

  With jax 0.10.2 on CPU, XLA compiled a flat draw of 2.4 million normals in
  0.5 s, against 2.9 s for the same draw shaped `[1000, 50, 4, 4, 3]`.
  """
  return jax.random.normal(key, (math.prod(shape),)).reshape(shape)


@functools.partial(jax.jit, static_argnames=('image_shape', 'pixel_noise'))
def _render(
    key: PRNGKey,
    labels: jax.Array,
    prototypes: jax.Array,
    separation: jax.Array,
    noise_std: jax.Array,
    pixel_noise_std: jax.Array,
    *,
    image_shape: tuple[int, int, int],
    pixel_noise: bool,
) -> jax.Array:
  """Draw one image per entry of `labels`, of any leading shape.

  Returns:
    float32 `labels.shape + image_shape` images in [0, 1].
  """
  grid_key, pixel_key = jax.random.split(key)
  grid_noise = _normal(grid_key, labels.shape + prototypes.shape[1:])
  grid = separation * prototypes[labels] + noise_std * grid_noise
  # Cubic upsampling is linear, so each class keeps its Gaussian law with the
  # prototype as its mean, now over pixels.
  logits = jax.image.resize(grid, labels.shape + image_shape, method='cubic')
  if pixel_noise:
    logits = logits + pixel_noise_std * _normal(pixel_key, logits.shape)
  return jax.nn.sigmoid(logits)


def synthetic_images(
    key: PRNGKey,
    num_examples: int,
    *,
    image_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    separation: float = 1.0,
    noise_std: float = 1.0,
    pixel_noise_std: float = 0.0,
    cell_size: int = 8,
) -> tuple[jax.Array, jax.Array]:
  """Draw images of `num_classes` classes from smooth random prototypes.

  Every class k has a prototype P_k, a low-resolution grid of
  `ceil(height / cell_size)` x `ceil(width / cell_size)` x channels values,
  each N(0, 1). An image of class k is

    sigmoid(upsample(separation * P_k + noise_std * E)
            + pixel_noise_std * W),

  where E (grid-shaped) and W (image-shaped) are fresh N(0, 1) noise for
  each image and `upsample` is `jax.image.resize` with cubic interpolation.
  The upsampling makes both the prototypes and the noise E smooth, and W adds
  white noise to every pixel. Labels are uniform over the classes.

  How hard the task is: the sigmoid is invertible and the upsampling is
  linear, so images of class k are Gaussian with mean
  upsample(separation * P_k) before the sigmoid, and every class has the
  same noise. Hence:

  * `separation=0` gives every class the same image distribution, so no
    classifier beats chance (1 / num_classes) in expectation.
  * For fixed noise, the Bayes error of telling two classes apart decreases
    as `separation` grows. With `pixel_noise_std=0` it is at least
    Phi(-separation * ||P_k - P_j|| / (2 * noise_std)), with Phi the standard
    normal CDF. It equals that bound when the upsampling loses no
    information, as its matrices did (full column rank) in a check of grids
    up to 12 cells per side. ||P_k - P_j|| is about sqrt(2 * d) for d grid
    values. For 32x32x3 images and `cell_size=8`, d = 48 and the pairwise
    error is about Phi(-4.9 * separation / noise_std). That is an estimate,
    because the prototypes are random. A nearest-class-mean classifier fit
    on 3,000 such images scored 0.09, 0.46, 0.95 and 1.0 on 1,000 more at
    separation 0, 0.2, 0.5 and 1, with 10 classes.

  The same key and arguments give the same images. The function can run
  under `jax.jit` with `num_examples`, `image_shape`, `num_classes` and
  `cell_size` static. `separation`, `noise_std` and `pixel_noise_std` may be
  traced, and are then not range-checked.

  Args:
    key: JAX PRNG key.
    num_examples: number of images, >= 1.
    image_shape: (height, width, channels) of each image.
    num_classes: number of classes, >= 2.
    separation: weight of the class prototype, finite and >= 0.
    noise_std: std of the smooth noise E, finite and >= 0.
    pixel_noise_std: std of the white noise W, finite and >= 0. Its default
      0 skips drawing it, which saves one normal draw per pixel.
    cell_size: pixels per side of a grid cell, >= 1. A larger cell gives
      smoother, lower-resolution structure. 1 gives a grid as large as the
      image, so prototypes and E become white noise.

  Returns:
    `(images, labels)`: float32 `[num_examples, height, width, channels]` in
    [0, 1] and int32 `[num_examples]` in [0, num_classes).

  Raises:
    InputError: if an argument is out of range.
  """
  federated.check_key(key)
  num_examples = _check_count('num_examples', num_examples, 1)
  image_shape, grid_shape = _check_synthetic_arguments(
      image_shape=image_shape, num_classes=num_classes,
      separation=separation, noise_std=noise_std,
      pixel_noise_std=pixel_noise_std, cell_size=cell_size,
  )  # fmt: skip
  prototype_key, label_key, image_key = jax.random.split(key, 3)

  prototypes = _normal(prototype_key, (num_classes,) + grid_shape)
  labels = jax.random.randint(label_key, (num_examples,), 0, num_classes)
  images = _render(
      image_key, labels, prototypes, separation, noise_std, pixel_noise_std,
      image_shape=image_shape,
      pixel_noise=_has_pixel_noise(pixel_noise_std),
  )  # fmt: skip
  return images, labels.astype(jnp.int32)


def _check_client_counts(
    name: str, value: int | np.ndarray, num_clients: int
) -> np.ndarray:
  """Return `[clients]` int32 counts from an integer or an array, or raise."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    counts = np.full(num_clients, value)
  else:
    counts = np.asarray(value)
    if counts.shape != (num_clients,) or not np.issubdtype(
        counts.dtype, np.integer
    ):
      raise InputError(
          f'`{name}` must be an integer or an integer array shaped '
          f'({num_clients},), one count per client; got {value!r}.'
      )
  if counts.min() < 0:
    raise InputError(
        f'`{name}` must be >= 0; got {int(counts.min())} for client '
        f'{int(np.argmin(counts))}.'
    )
  return counts.astype(np.int32)


def _draw_split(
    key: PRNGKey,
    class_cdf: jax.Array,
    counts: jax.Array,
    width: int,
    render,
) -> dict[str, jax.Array]:
  """Draw `[clients, width]` labelled images, zeroing rows past `counts`."""
  label_key, image_key = jax.random.split(key)
  num_clients = class_cdf.shape[0]
  # Inverse-CDF sampling from each client's class probabilities. XLA compiled
  # it in 0.4 s, against 6.4 s for `jax.random.categorical`, which draws one
  # Gumbel value per class and row (jax 0.10.2 on CPU, 1,000 x 50 rows).
  uniform = jax.random.uniform(label_key, (num_clients * width,))
  uniform = uniform.reshape(num_clients, width)
  labels = jnp.sum(uniform[:, :, None] >= class_cdf[:, None, :-1], axis=-1)
  images = render(image_key, labels)
  real = jnp.arange(width)[None, :] < counts[:, None]
  return {
      'x': jnp.where(real[:, :, None, None, None], images, 0.0),
      'y': jnp.where(real, labels, 0).astype(jnp.int32),
  }


@functools.partial(
    jax.jit,
    static_argnames=('train_width', 'test_width', 'image_shape',
                     'pixel_noise'),
)
def _draw_clients(
    key: PRNGKey,
    class_probabilities: jax.Array,
    train_counts: jax.Array,
    test_counts: jax.Array,
    prototypes: jax.Array,
    separation: float,
    noise_std: float,
    pixel_noise_std: float,
    *,
    train_width: int,
    test_width: int,
    image_shape: tuple[int, int, int],
    pixel_noise: bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Draw the padded train and test examples of every client."""
  train_key, test_key = jax.random.split(key)
  class_cdf = jnp.cumsum(class_probabilities, axis=-1)
  render = functools.partial(
      _render, prototypes=prototypes, separation=separation,
      noise_std=noise_std, pixel_noise_std=pixel_noise_std,
      image_shape=image_shape, pixel_noise=pixel_noise,
  )  # fmt: skip
  train = _draw_split(train_key, class_cdf, train_counts, train_width, render)
  test = _draw_split(test_key, class_cdf, test_counts, test_width, render)
  return train, test


def _dirichlet_shares(
    key: PRNGKey, alpha: float, num_clients: int, num_classes: int
) -> np.ndarray:
  """Draw `[clients, classes]` Dirichlet(alpha) class shares on the host.

  numpy's sampler stays finite for tiny alpha, and it avoids compiling
  `jax.random.gamma`, which took 3 s (jax 0.10.2 on CPU).
  """
  bits = np.asarray(jax.random.bits(key, (4,), jnp.uint32))
  rng = np.random.default_rng([int(word) for word in bits])
  shares = rng.dirichlet(np.full(num_classes, float(alpha)), size=num_clients)
  return shares.astype(np.float32)


def synthetic_image_clients(
    key: PRNGKey,
    *,
    num_clients: int,
    examples_per_client: int | np.ndarray,
    test_examples_per_client: int | np.ndarray,
    image_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    separation: float = 1.0,
    noise_std: float = 1.0,
    pixel_noise_std: float = 0.0,
    cell_size: int = 8,
    alpha: float | None = None,
) -> federated.FederatedDataset:
  """Generate a federated image dataset from `synthetic_images`' model.

  All clients share the class prototypes, so a class looks the same
  everywhere (see `synthetic_images` for the image model and what
  `separation` means). Client c draws its labels from class probabilities
  q_c: uniform when `alpha` is None, or q_c ~ Dirichlet(alpha * 1) for label
  skew, where a small alpha gives each client few classes. Its train and
  test images both follow q_c. One jitted program draws the padded arrays
  of all clients.

  Cost: `x` contains clients x examples x height x width x channels float32
  values, so 10,000 clients x 16 images of 32x32x3 take 2 GB. On a 2-core
  CPU shared with other jobs (jax 0.10.2), 1,000 clients x 50 training
  images of 32x32x3 took about 2 s, or 5 s on the first call, which
  compiles the program. 10,000 x 16 took 8 to 10 s, or 12 to 13 s on the
  first call. A nonzero `pixel_noise_std` made the 1,000 x 50 case about 2.5
  times slower.

  Args:
    key: JAX PRNG key. The same key and arguments give identical arrays.
    num_clients: number of clients C, >= 1.
    examples_per_client: training images per client, an integer or a
      `[clients]` integer array, each >= 0.
    test_examples_per_client: test images per client, an integer or a
      `[clients]` integer array, each >= 0.
    image_shape: (height, width, channels) of each image.
    num_classes: number of classes, >= 2.
    separation: weight of the class prototype, finite and >= 0.
    noise_std: std of the smooth per-image noise, finite and >= 0.
    pixel_noise_std: std of the white per-pixel noise, finite and >= 0.
    cell_size: pixels per side of a cell of the prototype grid, >= 1.
    alpha: Dirichlet concentration of the label skew, finite and > 0, or
      None for identically distributed labels.

  Returns:
    A `FederatedDataset` named 'synthetic_images' whose arrays are jax
    arrays: `x` float32 `[clients, examples, height, width, channels]` in
    [0, 1] and `y` int32, zero in padding rows. The padded length of each
    split is its largest client, at least 1. Clients are named 'site_000',
    'site_001', ...

  Raises:
    InputError: if an argument is out of range.
  """
  federated.check_key(key)
  num_clients = _check_count('num_clients', num_clients, 1)
  train_counts = _check_client_counts(
      'examples_per_client', examples_per_client, num_clients
  )
  test_counts = _check_client_counts(
      'test_examples_per_client', test_examples_per_client, num_clients
  )
  image_shape, grid_shape = _check_synthetic_arguments(
      image_shape=image_shape, num_classes=num_classes,
      separation=separation, noise_std=noise_std,
      pixel_noise_std=pixel_noise_std, cell_size=cell_size,
  )  # fmt: skip
  if alpha is not None:
    _check_scale('alpha', alpha)
    if alpha == 0:
      raise InputError('`alpha` must be > 0, or None for no label skew; got 0.')
  prototype_key, mixture_key, examples_key = jax.random.split(key, 3)

  prototypes = _normal(prototype_key, (num_classes,) + grid_shape)
  if alpha is None:
    class_probabilities = np.full(
        (num_clients, num_classes), 1.0 / num_classes, np.float32
    )
  else:
    class_probabilities = _dirichlet_shares(
        mixture_key, alpha, num_clients, num_classes
    )
  train, test = _draw_clients(
      examples_key, jnp.asarray(class_probabilities),
      jnp.asarray(train_counts), jnp.asarray(test_counts), prototypes,
      separation, noise_std, pixel_noise_std,
      train_width=max(int(train_counts.max()), 1),
      test_width=max(int(test_counts.max()), 1),
      image_shape=image_shape,
      pixel_noise=_has_pixel_noise(pixel_noise_std),
  )  # fmt: skip

  return federated.FederatedDataset(
      name='synthetic_images',
      train=federated.FederatedData(train, train_counts),
      test=federated.FederatedData(test, test_counts),
      client_names=site_names(num_clients),
      feature_names=channel_names(image_shape[-1]),
      num_classes=num_classes,
  )


# The user's image folders.


class ImageFolderLayout(NamedTuple):
  """The sites, classes and image files of a root/<site>/<class>/ folder.

  Attributes:
    root: the folder that contains the site folders.
    site_names: site folder names, sorted. Site i is client i.
    class_names: the sorted union of the class folder names of all sites;
      a class may be empty at some sites but not at all. Label k is
      `class_names[k]`.
    files: one tuple per site of `(path, label)` pairs, sorted by class and
      then by file name.
  """

  root: pathlib.Path
  site_names: tuple[str, ...]
  class_names: tuple[str, ...]
  files: tuple[tuple[tuple[pathlib.Path, int], ...], ...]


def _is_skipped(path: pathlib.Path) -> bool:
  """Return True for hidden entries and operating-system files."""
  return path.name.startswith('.') or path.name in _SYSTEM_FILES


def _is_image_file(path: pathlib.Path) -> bool:
  return path.suffix.lower() in IMAGE_EXTENSIONS


def _check_no_loose_images(folder: pathlib.Path) -> None:
  """Raise if `folder` (the root or a site) directly contains image files."""
  for entry in sorted(folder.iterdir()):
    if entry.is_file() and not _is_skipped(entry) and _is_image_file(entry):
      raise InputError(
          f'Image {entry} is not inside a class folder. Move it to '
          'root/<site>/<class>/, the layout that load_image_folder reads.'
      )


def _class_folder_images(class_folder: pathlib.Path) -> list[pathlib.Path]:
  """Return the sorted image files of one class folder, or raise."""
  images = []
  for entry in sorted(class_folder.iterdir()):
    if _is_skipped(entry):
      continue
    if entry.is_dir():
      raise InputError(
          f'{entry} is a folder inside the class folder {class_folder}. '
          'Class folders must contain only image files; move the images up '
          'into the class folder or remove the subfolder.'
      )
    if not _is_image_file(entry):
      raise InputError(
          f'{entry} has the unsupported extension {entry.suffix!r}. '
          f'Supported extensions are {", ".join(IMAGE_EXTENSIONS)} (any '
          'case). Convert the file or move it out of the image folder.'
      )
    images.append(entry)
  return images


def scan_image_folder(root: str | os.PathLike[str]) -> ImageFolderLayout:
  """List the sites, classes and image files of an image folder.

  The folder must be laid out as `root/<site>/<class>/<image file>`. Site
  and class folders are sorted by name, and a site may lack some classes.
  Entries whose names start with a dot (such as `.DS_Store`), `Thumbs.db`
  and `desktop.ini` are skipped everywhere. Other files directly in `root`
  or in a site folder are ignored, unless they are images.

  Args:
    root: the folder that contains one folder per site.

  Returns:
    The `ImageFolderLayout`. No image is read.

  Raises:
    InputError: if `root` is missing, is not a folder or has no site
      folders, or if a site has no class folders or no images, or if a
      class has no image in any site. Also if an image lies outside a class
      folder, or a class folder contains a subfolder or a file whose
      extension is not in `IMAGE_EXTENSIONS`.
  """
  root = pathlib.Path(root)
  if not root.exists():
    raise InputError(
        f'Image folder {root} does not exist. Pass the folder that contains '
        'one subfolder per site.'
    )
  if not root.is_dir():
    raise InputError(
        f'{root} is a file, not a folder. Pass the folder that contains one '
        'subfolder per site.'
    )
  _check_no_loose_images(root)
  site_folders = [
      entry for entry in sorted(root.iterdir())
      if entry.is_dir() and not _is_skipped(entry)
  ]  # fmt: skip
  if not site_folders:
    raise InputError(
        f'{root} contains no site folders. Lay the images out as '
        'root/<site>/<class>/<image file>.'
    )

  site_classes = []
  for site_folder in site_folders:
    _check_no_loose_images(site_folder)
    class_folders = [
        entry for entry in sorted(site_folder.iterdir())
        if entry.is_dir() and not _is_skipped(entry)
    ]  # fmt: skip
    if not class_folders:
      raise InputError(
          f'Site folder {site_folder} contains no class folders. Put its '
          'images in one subfolder per class, such as '
          f'{site_folder / "<class>" / "image.png"}.'
      )
    classes = {
        folder.name: _class_folder_images(folder) for folder in class_folders
    }
    if not any(classes.values()):
      raise InputError(
          f'Site folder {site_folder} contains no image files in its class '
          f'folders. Add images with the extensions '
          f'{", ".join(IMAGE_EXTENSIONS)}, or remove the site folder.'
      )
    site_classes.append(classes)

  class_names = tuple(sorted(set().union(*site_classes)))
  for class_name in class_names:
    if not any(classes.get(class_name) for classes in site_classes):
      empty = [str(folder / class_name) for folder, classes
               in zip(site_folders, site_classes) if class_name in classes]
      raise InputError(
          f'Class {class_name!r} has no image in any site (empty folders: '
          f'{", ".join(empty)}), so it would add a class the model never '
          'sees. Remove the empty folders or add images.'
      )
  files = tuple(
      tuple(
          (path, class_names.index(class_name))
          for class_name in sorted(classes)
          for path in classes[class_name]
      )
      for classes in site_classes
  )
  return ImageFolderLayout(
      root=root,
      site_names=tuple(folder.name for folder in site_folders),
      class_names=class_names,
      files=files,
  )


def _check_image_size(
    image_size: Sequence[int] | None,
) -> tuple[int, int] | None:
  if image_size is None:
    return None
  size = _positive_ints(image_size, 2)
  if size is None:
    raise InputError(
        '`image_size` must be None or two positive integers (height, width), '
        f'such as (64, 64); got {image_size!r}.'
    )
  return size


def _is_cmyk(path: pathlib.Path) -> bool:
  """Return whether the image file stores CMYK channels (JPEG or TIFF)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as opened:
      return opened.mode == 'CMYK'
  except (OSError, ValueError):
    return False


def _read_cmyk_as_rgb(path: pathlib.Path) -> np.ndarray:
  """Return a CMYK file converted to uint8 RGB by Pillow."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as opened:
    return np.asarray(opened.convert('RGB'))


def _read_image(path: pathlib.Path, grayscale: bool) -> np.ndarray:
  """Read one image file as float64 `[height, width, channels]`.

  Channels are 1 (grayscale) or 3 (RGB). An alpha channel is dropped.
  """
  try:
    image = skimage.io.imread(path)
  except _READ_ERRORS as error:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise InputError(
        f'Could not read image {path}: {reason}. Replace or remove the file.'
    ) from None
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, np.newaxis]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise InputError(
        f'Image {path} has shape {image.shape}. Expected a single 2-D image, '
        'grayscale or RGB with an optional alpha channel. Save multi-page or '
        'volume files as one 2-D image per file.'
    )
  if image.shape[-1] == 4 and _is_cmyk(path):
    # skimage returns the raw C, M, Y and K channels, which the line below
    # would read as inverted RGB plus alpha.
    image = _read_cmyk_as_rgb(path)
  if image.shape[-1] in (2, 4):
    image = image[:, :, :-1]
  image = skimage.util.img_as_float(image)
  # The check runs on float32 values, which the dataset stores: a float64
  # pixel of 1e300 is finite here but infinite there.
  _, problem = partitions.to_float32(image, noun='pixel row')
  if problem is not None:
    raise InputError(
        f'Image {path} contains {problem}. Fix or remove the file.'
    )
  if grayscale and image.shape[-1] == 3:
    image = skimage.color.rgb2gray(image)[:, :, np.newaxis]
  return image


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    key: PRNGKey,
    image_size: Sequence[int] | None = None,
    grayscale: bool = False,
    test_fraction: float = 0.2,
) -> federated.FederatedDataset:
  """Load images laid out as `root/<site>/<class>/<image file>`.

  Each site folder is one client, in sorted order, and its class folders give
  the labels. Label k is the k-th name of the sorted union of the class
  folder names of all sites, which `scan_image_folder(root).class_names`
  returns, so a site may lack a class. Files are read with
  `skimage.io.imread` and converted with `skimage.util.img_as_float`, which
  scales unsigned integer pixels (uint8, uint16) to [0, 1] and signed ones to
  [-1, 1], and keeps float pixels as they are. So `x` is in [0, 1] for PNG,
  JPEG and BMP files, but a float or signed TIFF keeps its own range. Each
  site's images are then split into train and test sets by
  `partitions.build_dataset`, stratified by label.

  Channels: grayscale images have 1 channel and RGB images 3, and an alpha
  channel is dropped. With `grayscale=True`, RGB images are converted with
  `skimage.color.rgb2gray`. Otherwise, if any image is RGB, grayscale
  images are repeated into 3 equal channels.

  Args:
    root: the folder with one folder per site. See `scan_image_folder` for
      the files it skips.
    key: JAX PRNG key that seeds the train/test splits.
    image_size: (height, width) to resize every image to, with
      `skimage.transform.resize(anti_aliasing=True)`. Without it, all images
      must have the same height and width.
    grayscale: if True, convert every image to one channel.
    test_fraction: fraction of each site's images in its test set, in
      [0, 1).

  Returns:
    A `FederatedDataset` named after `root` with numpy arrays: `x` float32
    `[sites, examples, height, width, channels]` and `y` int32. Its
    `client_names` are the site folder names, `num_classes` is the number of
    class names and `source_files` lists every image file read.

  Raises:
    InputError: for the layout errors of `scan_image_folder`, a file that
      cannot be read as an image, an image with NaN or infinite pixels, or
      images of different sizes without `image_size`. Also if `key`,
      `image_size` or `test_fraction` is invalid.
  """
  federated.check_key(key)
  size = _check_image_size(image_size)
  federated.check_test_fraction(test_fraction)
  layout = scan_image_folder(root)

  paths = [path for site_files in layout.files for path, _ in site_files]
  labels = np.asarray(
      [label for site_files in layout.files for _, label in site_files],
      np.int32,
  )
  images = []
  for path in paths:
    image = _read_image(path, grayscale)
    if size is not None:
      image = skimage.transform.resize(
          image, size + image.shape[-1:], anti_aliasing=True
      )
    images.append(image)
  _check_same_size(images, paths)
  # As for .npz sites: a site of 16-bit scans next to one of 8-bit photos
  # loaded silently with maxima of 1.2e-4 and 1.0.
  # Per image its largest |pixel|, as gray and RGB images do not stack.
  peaks = [float(np.max(np.abs(image), initial=0.0)) for image in images]
  ends = np.cumsum([len(site_files) for site_files in layout.files])
  sites = [(layout.root / name, np.asarray(peaks[end - len(files):end]))
           for name, end, files in zip(layout.site_names, ends, layout.files)
           if files]
  _warn_if_scales_differ([path for path, _ in sites],
                         [site_peaks for _, site_peaks in sites])
  if any(image.shape[-1] == 3 for image in images):
    images = [
        np.broadcast_to(image, image.shape[:2] + (3,)) for image in images
    ]

  return _split_pooled(
      np.stack(images).astype(np.float32),
      labels,
      [len(site_files) for site_files in layout.files],
      key=key,
      test_fraction=test_fraction,
      name=layout.root.resolve().name,
      num_classes=len(layout.class_names),
      client_names=layout.site_names,
      source_files=paths,
  )


def _check_same_size(
    images: Sequence[np.ndarray], paths: Sequence[pathlib.Path]
) -> None:
  """Raise unless every image has the height and width of the first."""
  first_size = images[0].shape[:2]
  for image, path in zip(images, paths):
    if image.shape[:2] != first_size:
      raise InputError(
          f'Images {paths[0]} ({first_size[0]}x{first_size[1]}) and {path} '
          f'({image.shape[0]}x{image.shape[1]}) differ in size. Pass '
          'image_size=(height, width), or `--set image_size=H,W` on the '
          'command line, to resize every image to one size.'
      )


# The user's .npz files.

_IMAGE_KEYS = ('images', 'x')
_LABEL_KEYS = ('labels', 'y')


def _npz_paths(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[pathlib.Path]:
  """Return the site files: the given files, or a folder's sorted *.npz."""
  if isinstance(paths, (str, os.PathLike)):
    folder = pathlib.Path(paths)
    if not folder.exists():
      raise InputError(f'{folder} does not exist. Pass a folder of .npz '
                       'files or a list of .npz paths.')
    if not folder.is_dir():
      return [folder]
    files = sorted(
        entry for entry in folder.glob('*.npz')
        if entry.is_file() and not _is_skipped(entry)
    )  # fmt: skip
    if not files:
      raise InputError(
          f'Folder {folder} contains no .npz files. Save one .npz per site '
          "with arrays 'images' and 'labels'."
      )
    return files
  files = [pathlib.Path(path) for path in paths]
  if not files:
    raise InputError('`paths` is empty. Pass one .npz file per site.')
  for path in files:
    if not path.is_file():
      raise InputError(
          f'Site file {path} does not exist or is not a file. Check the path.'
      )
  return files


def _pick_key(archive_keys: list[str], names: tuple[str, str],
              path: pathlib.Path) -> str:
  """Return whichever of `names` the archive contains, or raise."""
  present = [name for name in names if name in archive_keys]
  if len(present) == 1:
    return present[0]
  if present:
    raise InputError(
        f'{path} contains both {names[0]!r} and {names[1]!r}. Keep only '
        'one of them.'
    )
  raise InputError(
      f'{path} has no array named {names[0]!r} or {names[1]!r}. It contains '
      f'{sorted(archive_keys)}. Save the arrays under one of those names.'
  )


def _scale_npz_images(images: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """Return float images: unsigned integers divided by their dtype's max."""
  if images.dtype == bool:
    return images.astype(np.float32)
  if np.issubdtype(images.dtype, np.unsignedinteger):
    return (images / np.iinfo(images.dtype).max).astype(np.float32)
  if np.issubdtype(images.dtype, np.floating):
    converted, problem = partitions.to_float32(images, noun='image')
    if problem is not None:
      raise InputError(
          f'{path}: images contain {problem}, counting from 0 in this file. '
          'Fix, rescale or drop those images.'
      )
    return converted
  raise InputError(
      f'{path}: images have dtype {images.dtype}. Expected unsigned '
      'integers (uint8, uint16), which are scaled to [0, 1], or floats. '
      'Convert signed images to float.'
  )


# Sites whose largest pixel values differ by more than this factor were
# probably stored in different units, such as uint8 scaled to [0, 1] next
# to floats in [0, 255].
_SITE_SCALE_RATIO = 50.0


def _warn_if_scales_differ(files, site_images) -> None:
  """Warn when the sites' largest |pixel| differ by over `_SITE_SCALE_RATIO`."""
  largest = [float(np.max(np.abs(images), initial=0.0))
             for images in site_images]
  positive = [(value, path) for value, path in zip(largest, files)
              if value > 0]
  if len(positive) < 2:
    return
  (low, low_path), (high, high_path) = min(positive), max(positive)
  if high > _SITE_SCALE_RATIO * low:
    warnings.warn(
        f'The images of {high_path} reach {high:.3g} but those of '
        f'{low_path} only {low:.3g}, after unsigned integers are scaled to '
        '[0, 1]. The sites probably store pixels in different units; '
        'convert them to one scale, for example floats in [0, 1].',
        UserWarning, stacklevel=3)


def _npz_labels(labels: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """Return the labels as int64, or raise for negative or fractional ones."""
  if labels.dtype == bool:
    labels = labels.astype(np.int64)
  if np.issubdtype(labels.dtype, np.floating):
    fractional = ~np.isfinite(labels) | (labels != np.round(labels))
    if fractional.any():
      first = int(np.flatnonzero(fractional)[0])
      raise InputError(
          f'{path}: label {labels[first]} of image {first} is not an '
          'integer. Labels must be class indices 0, 1, ...'
      )
    # Checked before the cast, which turned 1e300 into -2**63.
    too_large = np.abs(labels) > np.iinfo(np.int32).max
    if too_large.any():
      first = int(np.flatnonzero(too_large)[0])
      raise InputError(
          f'{path}: label {labels[first]:g} of image {first} is beyond the '
          'int32 range of class labels. Labels must be class indices 0, 1, '
          '...'
      )
    labels = labels.astype(np.int64)
  if not np.issubdtype(labels.dtype, np.integer):
    raise InputError(
        f'{path}: labels have dtype {labels.dtype}. Expected integer class '
        'indices 0, 1, ...'
    )
  if np.issubdtype(labels.dtype, np.unsignedinteger) and labels.size and (
      labels.max() > np.iinfo(np.int64).max):
    first = int(np.argmax(labels))
    raise InputError(
        f'{path}: label {labels[first]} of image {first} does not fit int64. '
        'Labels must be class indices 0, 1, ...'
    )
  if labels.size and labels.min() < 0:
    first = int(np.argmin(labels))
    raise InputError(
        f'{path}: label {labels[first]} of image {first} is negative. Labels '
        'must be class indices 0, 1, ...'
    )
  return labels.astype(np.int64)


def _unreadable_npz(path: pathlib.Path, error: Exception) -> InputError:
  return InputError(
      f'Could not read {path} as a .npz file: {error}. Save it with '
      'numpy.savez or numpy.savez_compressed, without object arrays.'
  )


def _read_npz_site(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Read one site's `[n, h, w, c]` float32 images and int64 labels."""
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise _unreadable_npz(path, error) from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise InputError(
        f'{path} is a .npy file of one array, not a .npz archive. Save the '
        "images and labels together with numpy.savez(path, images=..., "
        'labels=...).'
    )
  with archive:
    archive_keys = list(archive.files)
    image_key = _pick_key(archive_keys, _IMAGE_KEYS, path)
    label_key = _pick_key(archive_keys, _LABEL_KEYS, path)
    try:
      images = archive[image_key]
      labels = archive[label_key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
      raise _unreadable_npz(path, error) from None

  if images.ndim == 3:
    images = images[..., np.newaxis]
  if images.ndim != 4:
    raise InputError(
        f'{path}: images have shape {images.shape}. Expected [n, height, '
        'width] or [n, height, width, channels].'
    )
  # [n, 4, 4, 5] contains 4x4 images of 5 channels, so a channels-first
  # guess also needs the would-be height, axis 2, above 4.
  if (images.shape[1] in (1, 3, 4) and images.shape[2] > 4
      and images.shape[3] > 4):
    raise InputError(
        f'{path}: images have shape {images.shape}, which looks '
        'channels-first ([n, channels, height, width]). Save them '
        'channels-last with numpy.moveaxis(images, 1, -1).'
    )
  if labels.ndim != 1:
    raise InputError(
        f'{path}: labels have shape {labels.shape}. Expected [n], one '
        'integer label per image.'
    )
  if len(images) != len(labels):
    raise InputError(
        f'{path}: {len(images)} images but {len(labels)} labels. Give every '
        'image one label.'
    )
  if not len(images):
    raise InputError(f'{path} contains no images. Remove the site file.')
  return _scale_npz_images(images, path), _npz_labels(labels, path)


def load_npz_sites(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    key: PRNGKey,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
) -> federated.FederatedDataset:
  """Load one `.npz` file of images and labels per site.

  Each file is one client, named after the file's stem. It contains the
  images under 'images' or 'x', shaped `[n, height, width]` or
  `[n, height, width, channels]`, and the labels under 'labels' or 'y',
  shaped `[n]`. Images of an unsigned integer dtype (uint8, uint16, ...) are
  divided by the dtype's maximum, so they fall in [0, 1], and bool images
  become 0 and 1. Float images are kept as they are. Labels are integer
  class indices. Whole-number floats are accepted. Each site's images are
  then split into train and test sets by `partitions.build_dataset`,
  stratified by label.

  Args:
    paths: a folder, whose `*.npz` files are taken in sorted order, a single
      `.npz` file, or a list of `.npz` files in client order.
    key: JAX PRNG key that seeds the train/test splits.
    test_fraction: fraction of each site's images in its test set, in
      [0, 1).
    num_classes: number of classes, by default the largest label plus 1.

  Returns:
    A `FederatedDataset` with numpy arrays: `x` float32
    `[sites, examples, height, width, channels]` and `y` int32. Its name is
    the folder's name when `paths` is a folder, else 'npz_sites', and its
    `source_files` are the `.npz` files.

  Raises:
    InputError: if a file is missing or unreadable, the folder has no .npz
      files, two files share a stem, an array is missing (the error lists
      the arrays found), images or labels have the wrong number of
      dimensions or different lengths, sites differ in image shape, images
      contain NaN or infinite values (checked after the float32 cast, so
      1e300 counts) or have an unsupported dtype, or a label is negative,
      fractional or >= `num_classes`.
  """
  federated.check_key(key)
  federated.check_test_fraction(test_fraction)
  if num_classes is not None:
    _check_count('num_classes', num_classes, 1)
  files = _npz_paths(paths)
  names = [path.stem for path in files]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise InputError(
        f'Several site files share the name {repeated[0]!r}, so their sites '
        'would have the same name. Rename the files so that every stem is '
        'unique.'
    )

  site_images, site_labels = [], []
  for path in files:
    images, labels = _read_npz_site(path)
    if site_images and images.shape[1:] != site_images[0].shape[1:]:
      raise InputError(
          f'Images of {path} are shaped {images.shape[1:]} (height, width, '
          f'channels), but those of {files[0]} are shaped '
          f'{site_images[0].shape[1:]}. Give every site the same image '
          'shape.'
      )
    site_images.append(images)
    site_labels.append(labels)
  _warn_if_scales_differ(files, site_images)

  largest = max(int(labels.max()) for labels in site_labels)
  if num_classes is None:
    num_classes = largest + 1
    present = np.unique(np.concatenate(site_labels))
    if len(present) < num_classes:
      # Found without building range(num_classes), which a label of 2**40
      # would make too large for memory.
      missing = np.setdiff1d(np.arange(min(num_classes, len(present) + 5)),
                             present)[:5].tolist()
      first_labels = present.tolist()[:10]
      raise InputError(
          f'The labels of {len(files)} sites take {len(present)} values '
          f'({first_labels}{" ..." if len(present) > 10 else ""}) up to {largest}, '
          f'so {num_classes - len(present)} of the classes 0 to {largest} '
          f'have no image, such as {missing}. Relabel the classes as 0 to '
          'K - 1 with one mapping for all site files, such as the inverse '
          'of numpy.unique over all their labels. A Python caller can '
          'instead pass `num_classes` to `load_npz_sites` to keep the empty '
          'classes.'
      )
  for path, labels in zip(files, site_labels):
    if labels.max() >= num_classes:
      raise InputError(
          f'{path}: label {int(labels.max())} is out of range for '
          f'num_classes={num_classes}. Labels must be in [0, num_classes). '
          'Raise `num_classes` or fix the labels.'
      )

  is_folder = isinstance(paths, (str, os.PathLike)) and pathlib.Path(
      paths
  ).is_dir()
  return _split_pooled(
      np.concatenate(site_images),
      np.concatenate(site_labels).astype(np.int32),
      [len(labels) for labels in site_labels],
      key=key,
      test_fraction=test_fraction,
      name=pathlib.Path(paths).resolve().name if is_folder else 'npz_sites',
      num_classes=num_classes,
      client_names=names,
      source_files=files,
  )
