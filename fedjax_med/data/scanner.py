"""Scanner-style site effects on the images of federated clients.

Imaging sites differ in scanner vendor, detector and acquisition protocol,
so the same anatomy gives different images at different hospitals. This
module simulates that feature shift. Every client gets a `ScannerProfile`,
and `apply_profile` passes the client's images through it in this order:

1. Resolution loss. The image is down-sampled by `resolution` with an
   antialiasing triangle filter, then up-sampled back to its shape with
   linear interpolation (`jax.image.scale_and_translate`).
2. Blur with a Gaussian point spread function of std `blur_sigma` pixels.
3. Contrast: x -> x ** gamma.
4. Intensity: x -> gain * x + offset.
5. Additive Gaussian noise with std `noise_std`, independent per value.

The order follows the acquisition chain. The detector grid and the optics
act on the signal first (steps 1 and 2). The vendor's intensity mapping
acts on the acquired image (steps 3 and 4). The noise comes last, so
`noise_std` is in the units of the output image and is not bent by gamma.

The output is not clipped to [0, 1]. A bright profile gives values above 1
and noise gives values outside [0, 1], as raw scanner values outside a
display window would. Clipping would erase the intensities of saturated
pixels, so that step 4 could no longer be undone. Clip the output yourself
(`jnp.clip(images, 0, 1)`) if a model needs [0, 1] inputs.

`invert_intensity` undoes steps 3 and 4 exactly, up to float32 rounding.
Resolution loss, blur and noise lose information and cannot be inverted.

All steps are JAX operations on the traced values of the profile, with
shapes fixed by the image alone. So `apply_profile` runs under `jax.jit`,
and under `jax.vmap` with a different profile for each client.
`shift_clients` maps it over the padded `[clients, examples, height, width,
channels]` layout of `FederatedData`, and `shift_dataset_scanners` shifts a
dataset's train and test sets with the same profile per site.

Randomness: client c draws its noise from `jax.random.fold_in(key, c)`, so
the same key gives the same images and no two clients share noise.
`assign_profiles` draws on the host from a numpy Generator seeded from the
key, as the partitions in `fedjax_med.data.partitions` do.
"""

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.data import federated
from fedjax_med.data import partitions
from fedjax_med.errors import InputError
from fedjax_med.typing import PRNGKey

# The key and count checks and the host RNG are shared with `partitions`.
# pylint: disable=protected-access

# A float, or an array of floats with one value per client.
ProfileValue = float | np.ndarray | jax.Array

# The Gaussian blur kernel is cut at this many pixels on each side of the
# center, so that its shape does not depend on the traced sigma.
BLUR_RADIUS = 9
# The largest blur sigma whose kernel reaches 3 sigma before the cut, which
# keeps all but 0.3% of the Gaussian's mass.
MAX_BLUR_SIGMA = BLUR_RADIUS / 3


class ScannerProfile(NamedTuple):
  """Acquisition differences of one scanner, or of every client.

  Each field is a float for one scanner, or an array with one value per
  client, shaped `[clients]`, for `shift_clients`. The defaults leave
  images unchanged.

  Attributes:
    gain: intensity scale, > 0.
    offset: intensity offset, added after the gain.
    gamma: contrast exponent, > 0. Values below 1 brighten mid-tones and
      values above 1 darken them.
    blur_sigma: std of the Gaussian blur in pixels, in [0, MAX_BLUR_SIGMA].
      0 leaves the image unblurred.
    noise_std: std of the additive Gaussian noise, >= 0.
    resolution: fraction of the original resolution that the scanner
      captures, in (0, 1]. 1 keeps full resolution, and 0.5 gives each
      captured pixel the size of 2x2 original pixels.
  """

  gain: ProfileValue = 1.0
  offset: ProfileValue = 0.0
  gamma: ProfileValue = 1.0
  blur_sigma: ProfileValue = 0.0
  noise_std: ProfileValue = 0.0
  resolution: ProfileValue = 1.0


#: Named profiles for images with intensities in [0, 1]. The values are
#: chosen to give visible, plausible differences. They are not measured from
#: any vendor's scanner.
PROFILES: dict[str, ScannerProfile] = {
    # The scanner the source images came from: no change.
    'reference': ScannerProfile(),
    # A vendor whose default reconstruction and display curve map the same
    # tissue brighter: a higher detector gain, a raised black level and
    # lifted mid-tones.
    'bright_vendor': ScannerProfile(
        gain=1.15, offset=0.05, gamma=0.85, noise_std=0.01
    ),
    # A vendor with a wider default intensity window and a soft
    # reconstruction kernel: compressed contrast, a grey black level and
    # slightly blurred edges.
    'low_contrast_vendor': ScannerProfile(
        gain=0.7, offset=0.15, gamma=1.25, blur_sigma=0.6, noise_std=0.01
    ),
    # An older scanner with a detector matrix of half the size, such as 256
    # instead of 512 pixels across, a wider point spread function and a
    # slightly darker output.
    'legacy_low_resolution': ScannerProfile(
        gain=0.95, offset=0.02, blur_sigma=0.8, noise_std=0.02, resolution=0.5
    ),
    # A fast protocol, such as low-dose CT or accelerated MRI: full
    # resolution and intensity mapping, but a short acquisition collects
    # fewer photons or samples and so leaves much more noise.
    'fast_noisy_protocol': ScannerProfile(noise_std=0.08),
}


class _Range(NamedTuple):
  """Valid values of one profile field. A bound of None means no bound."""

  low: float | None
  low_closed: bool
  high: float | None
  high_closed: bool

  def contains(self, values: np.ndarray) -> np.ndarray:
    inside = np.ones(values.shape, bool)
    if self.low is not None:
      inside &= values >= self.low if self.low_closed else values > self.low
    if self.high is not None:
      inside &= values <= self.high if self.high_closed else values < self.high
    return inside

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      left = '[' if self.low_closed else '('
      right = ']' if self.high_closed else ')'
      return f'in {left}{self.low:g}, {self.high:g}{right}'
    if self.low is not None:
      return f'{">=" if self.low_closed else ">"} {self.low:g}'
    return 'finite'


_RANGES = {
    'gain': _Range(0.0, False, None, False),
    'offset': _Range(None, False, None, False),
    'gamma': _Range(0.0, False, None, False),
    'blur_sigma': _Range(0.0, True, MAX_BLUR_SIGMA, True),
    'noise_std': _Range(0.0, True, None, False),
    'resolution': _Range(0.0, False, 1.0, True),
}

_RANGE_HINTS = {
    'gain': 'A gain <= 0 would erase or invert the image.',
    'gamma': 'x ** gamma is increasing and invertible only for gamma > 0.',
    'blur_sigma': (
        f'The blur kernel is cut at {BLUR_RADIUS} pixels, which covers 3 '
        f'sigma only up to sigma = {MAX_BLUR_SIGMA:g}.'
    ),
    'noise_std': 'Use 0 for no noise.',
    'resolution': 'Use 1 to keep the full resolution.',
}


def _host_values(value: ProfileValue, name: str) -> np.ndarray | None:
  """Return `value` as a float64 numpy array, or None if it is traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise InputError(
        f'`{name}` must be a number or an array of numbers; got {value!r}.'
    ) from None


def _check_profile(
    profile: ScannerProfile,
    *,
    shape: tuple[int, ...],
    argument: str,
    image_size: tuple[int, int] | None = None,
) -> None:
  """Raise unless every field of `profile` has `shape` and valid values.

  Traced fields (inside `jax.jit` or `jax.vmap`) are only checked for shape.

  Args:
    profile: the profile to check.
    shape: the expected shape of every field, () or (clients,).
    argument: the argument name used in error messages.
    image_size: (height, width) of the images, to check that `resolution`
      keeps at least one pixel.
  """
  if not isinstance(profile, ScannerProfile):
    raise InputError(
        f'`{argument}` must be a ScannerProfile; got '
        f'{type(profile).__name__}. Use `scanner.PROFILES[name]` or '
        '`scanner.stack_profiles`.'
    )
  for field, value in zip(profile._fields, profile):
    if np.shape(value) != shape:
      layout = 'scalars' if shape == () else f'shaped {shape} ([clients])'
      raise InputError(
          f'`{argument}.{field}` is shaped {np.shape(value)}, but every '
          f'field must be {layout}.'
      )
    values = _host_values(value, f'{argument}.{field}')
    if values is None:
      continue
    valid_range = _RANGES[field]
    # The profile is applied in float32: a gain of 1e39 made every image
    # inf, and one of 1e-46 rounded to 0 and erased it.
    with np.errstate(over='ignore', under='ignore'):
      applied = values.astype(np.float32)
    bad = ~(np.isfinite(applied) & valid_range.contains(applied))
    if bad.any():
      first = np.unravel_index(np.argmax(bad), bad.shape)
      where = f' for client {first[0]}' if shape else ''
      requirement = valid_range.describe()
      if valid_range.low is not None:
        requirement = f'finite and {requirement}'
      requirement = f'{requirement} in float32'
      hint = _RANGE_HINTS.get(field, '')
      raise InputError(
          f'`{argument}.{field}` must be {requirement}; got '
          f'{float(values[first])!r}{where}. {hint}'.rstrip()
      )
  if image_size is None:
    return
  resolution = _host_values(profile.resolution, f'{argument}.resolution')
  smallest = min(image_size)
  if resolution is not None and (resolution * smallest < 1).any():
    raise InputError(
        f'`{argument}.resolution` is {resolution.min():g}, which keeps less '
        f'than one pixel of a {image_size[0]}x{image_size[1]} image. Use a '
        f'resolution >= 1/{smallest} = {1 / smallest:.4g}.'
    )


def _check_images(images: jax.Array, argument: str, rank: int) -> None:
  if images.ndim != rank:
    layout = '[examples, height, width, channels]'
    if rank == 5:
      layout = '[clients, examples, height, width, channels]'
    raise InputError(
        f'`{argument}` must be shaped {layout}; got shape {images.shape}. '
        'Add a channels axis of size 1 to grayscale images.'
    )
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise InputError(
        f'`{argument}` must have a floating dtype with values in [0, 1]; got '
        f'{images.dtype}. Convert 8-bit images with `images / 255`.'
    )


def _lose_resolution(images: jax.Array, resolution: jax.Array) -> jax.Array:
  """Down-sample `[n, h, w, c]` images by `resolution`, then up-sample back.

  `resolution` is clamped to at least one pixel across the smaller side.
  """
  _, height, width, _ = images.shape
  resolution = jnp.maximum(resolution, 1.0 / min(height, width))
  scale = jnp.stack([resolution, resolution])
  translation = jnp.zeros(2, images.dtype)
  # The down-sampled image fills the top-left part of a canvas of the
  # original shape, and scale_and_translate sets the canvas pixels beyond it
  # to 0.
  small = jax.image.scale_and_translate(
      images, images.shape, (1, 2), scale, translation, 'linear',
      antialias=True,
  )
  # Up-sampling the last row or column would blend it with those zeros, so
  # the last filled row and column are repeated over them first.
  for axis, size in ((1, height), (2, width)):
    # Down-sampling a row of ones with the same scale marks the filled
    # pixels with 1 and the canvas pixels beyond them with 0.
    filled = jax.image.scale_and_translate(
        jnp.ones(size, images.dtype), (size,), (0,), resolution[None],
        jnp.zeros(1, images.dtype), 'linear', antialias=True,
    )
    num_filled = jnp.maximum(jnp.sum(filled > 0.5), 1)
    rows = jnp.minimum(jnp.arange(size), num_filled - 1)
    small = jnp.take(small, rows, axis=axis)
  restored = jax.image.scale_and_translate(
      small, images.shape, (1, 2), 1.0 / scale, translation, 'linear',
      antialias=True,
  )
  # Exactly the input at resolution 1, whatever the rounding of the
  # resampling weights.
  return jnp.where(resolution >= 1.0, images, restored)


def _blur(images: jax.Array, sigma: jax.Array) -> jax.Array:
  """Blur `[n, h, w, c]` images with a separable Gaussian of std `sigma`.

  Edges are extended by mirror reflection (numpy's 'symmetric' padding). The
  blur matrix along each axis is then symmetric with rows that sum to 1, so
  it keeps the mean of every image.
  """
  offsets = jnp.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=images.dtype)
  # sigma = 0 would divide by zero; that case returns `images` below.
  safe_sigma = jnp.where(sigma > 0, sigma, 1.0)
  weights = jnp.exp(-0.5 * jnp.square(offsets / safe_sigma))
  weights = weights / jnp.sum(weights)
  blurred = images
  for axis in (1, 2):
    size = blurred.shape[axis]
    padding = [(0, 0)] * blurred.ndim
    padding[axis] = (BLUR_RADIUS, BLUR_RADIUS)
    padded = jnp.pad(blurred, padding, mode='symmetric')
    # A sum of shifted copies keeps float32 precision on every backend,
    # whereas a matrix product at default precision may use TF32 or bfloat16
    # on GPUs and TPUs.
    total = jnp.zeros_like(blurred)
    for index in range(2 * BLUR_RADIUS + 1):
      shifted = jax.lax.slice_in_dim(padded, index, index + size, axis=axis)
      total = total + weights[index] * shifted
    blurred = total
  return jnp.where(sigma > 0, blurred, images)


def _signed_power(values: jax.Array, exponent: jax.Array) -> jax.Array:
  """Return sign(x) * |x| ** exponent, and exactly x when exponent is 1.

  The sign makes the curve defined and invertible for the negative values
  that noise or an offset can produce. On [0, 1] it is plain x ** exponent.
  """
  powered = jnp.sign(values) * jnp.power(jnp.abs(values), exponent)
  return jnp.where(exponent == 1.0, values, powered)


@jax.jit
def _apply_traced(
    images: jax.Array, profile: ScannerProfile, key: PRNGKey
) -> jax.Array:
  gain, offset, gamma, blur_sigma, noise_std, resolution = (
      jnp.asarray(value, images.dtype) for value in profile
  )
  shifted = _lose_resolution(images, resolution)
  shifted = _blur(shifted, blur_sigma)
  shifted = gain * _signed_power(shifted, gamma) + offset
  # Drawn flat, then reshaped, because XLA compiles threefry for a 4-D shape
  # several times slower: 2.9 s instead of 0.5 s for [4, 16, 16, 1] with
  # jax 0.10.2 on a 2-core CPU.
  noise = jax.random.normal(key, (images.size,), images.dtype)
  return shifted + noise_std * noise.reshape(images.shape)


def apply_profile(
    images: jax.Array | np.ndarray, profile: ScannerProfile, key: PRNGKey
) -> jax.Array:
  """Pass images through one scanner profile.

  The steps, in order: resolution loss, Gaussian blur, x -> x ** gamma,
  x -> gain * x + offset, and additive Gaussian noise (see the module
  docstring for why). The output is not clipped. The identity profile
  `ScannerProfile()` returns `images` exactly.

  The function runs under `jax.jit` and `jax.vmap` with traced profile
  values. Traced values are not checked, and a traced `resolution` below
  1/min(height, width) acts as 1/min(height, width).

  Args:
    images: `[examples, height, width, channels]` floating images with
      values in [0, 1]. A negative value v goes through the gamma step as
      `-(abs(v) ** gamma)`.
    profile: a `ScannerProfile` with scalar fields.
    key: JAX PRNG key for the noise. The same key gives the same noise.

  Returns:
    The shifted images, same shape and dtype as `images`.

  Raises:
    InputError: if `images` is not a 4-D floating array, or a field of
      `profile` is not a scalar or out of range.
  """
  images = jnp.asarray(images)
  _check_images(images, 'images', rank=4)
  _check_profile(
      profile, shape=(), argument='profile', image_size=images.shape[1:3]
  )
  federated.check_key(key)
  return _apply_traced(images, profile, key)


def invert_intensity(
    images: jax.Array | np.ndarray, profile: ScannerProfile
) -> jax.Array:
  """Undo the gamma and gain/offset steps of `profile`.

  Computes `sign(u) * abs(u) ** (1 / gamma)` with `u = (images - offset) /
  gain`, the exact inverse of `x -> gain * sign(x) * abs(x) ** gamma +
  offset` for any real x, up to float32 rounding. So on the output of `apply_profile` with
  `blur_sigma` 0, `noise_std` 0 and `resolution` 1 it returns the input.
  Near 0 with gamma > 1 the root magnifies that rounding by about
  x ** (1 - gamma) / gamma, which is 500 at x = 0.001 with gamma = 2.
  Resolution loss, blur and noise lose information and are not undone. On
  noisy images the noise passes through the inverse curve.

  Args:
    images: `[examples, height, width, channels]` floating images, as
      returned by `apply_profile`.
    profile: a `ScannerProfile` with scalar fields. Only `gain`, `offset` and
      `gamma` are used, but every field is checked.

  Returns:
    The images before the intensity steps, same shape and dtype.

  Raises:
    InputError: if `images` is not a 4-D floating array, or a field of
      `profile` is not a scalar or out of range.
  """
  images = jnp.asarray(images)
  _check_images(images, 'images', rank=4)
  _check_profile(profile, shape=(), argument='profile')
  return _invert_traced(images, profile)


@jax.jit
def _invert_traced(images: jax.Array, profile: ScannerProfile) -> jax.Array:
  gain = jnp.asarray(profile.gain, images.dtype)
  offset = jnp.asarray(profile.offset, images.dtype)
  gamma = jnp.asarray(profile.gamma, images.dtype)
  return _signed_power((images - offset) / gain, 1.0 / gamma)


def _check_names(names: Sequence[str], argument: str = 'names') -> list[str]:
  """Return `names` as a list, or raise unless all are known profiles."""
  if isinstance(names, str):
    raise InputError(
        f'`{argument}` must be a sequence of profile names; got the string '
        f'{names!r}. Pass [{names!r}] for one profile.'
    )
  names = list(names)
  if not names:
    raise InputError(
        f'`{argument}` is empty. Pass at least one of {list(PROFILES)}.'
    )
  for name in names:
    if name not in PROFILES:
      raise InputError(
          f'Unknown scanner profile {name!r} in `{argument}`. Known '
          f'profiles: {list(PROFILES)}.'
      )
  return names


def assign_profiles(
    num_clients: int,
    *,
    key: PRNGKey,
    names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
  """Draw a scanner profile for every client.

  Each client's profile is drawn independently, so with few clients a
  profile may go unused.

  Args:
    num_clients: number of clients C, >= 1.
    key: JAX PRNG key. The same key and arguments give the same assignment.
    names: profile names from `PROFILES` to draw from; all of them if None.
      A name may appear once.
    weights: relative probability of each name, finite and >= 0 with a
      positive sum; equal if None.

  Returns:
    `[clients]` int64 indices into `names`. Pass them with `names` to
    `stack_profiles`.

  Raises:
    InputError: if an argument is out of range or a name is unknown.
  """
  partitions._check_count('num_clients', num_clients, 1)
  names = _check_names(list(PROFILES) if names is None else names)
  if len(set(names)) != len(names):
    raise InputError(
        f'`names` repeats a profile: {names}. List each profile once and use '
        '`weights` to make it more likely.'
    )
  if weights is None:
    probabilities = np.full(len(names), 1.0 / len(names))
  else:
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(names),):
      raise InputError(
          f'`weights` is shaped {weights.shape}; it needs one weight per '
          f'name, shaped ({len(names)},).'
      )
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
      raise InputError(f'`weights` must be finite and >= 0; got {weights}.')
    if weights.sum() <= 0:
      raise InputError(
          f'`weights` sum to 0; give at least one name a positive weight. '
          f'Got {weights}.'
      )
    probabilities = weights / weights.sum()
  rng = partitions._host_rng(key)
  return rng.choice(len(names), size=num_clients, p=probabilities).astype(
      np.int64
  )


def stack_profiles(
    names: Sequence[str], assignment: Sequence[int] | np.ndarray
) -> ScannerProfile:
  """Stack the named profile of every client into one `ScannerProfile`.

  Args:
    names: profile names from `PROFILES`.
    assignment: `[clients]` integer index into `names` for every client,
      such as the output of `assign_profiles`.

  Returns:
    A `ScannerProfile` whose fields are float32 numpy arrays shaped
    `[clients]`, for `shift_clients`.

  Raises:
    InputError: if a name is unknown, or `assignment` is not a non-empty
      1-D integer array of indices into `names`.
  """
  names = _check_names(names)
  assignment = np.asarray(assignment)
  if assignment.ndim != 1 or assignment.size == 0:
    raise InputError(
        '`assignment` must be a non-empty 1-D array with one index per '
        f'client; got shape {assignment.shape}.'
    )
  if not np.issubdtype(assignment.dtype, np.integer):
    raise InputError(
        f'`assignment` must contain integers; got dtype {assignment.dtype}.'
    )
  outside = (assignment < 0) | (assignment >= len(names))
  if outside.any():
    raise InputError(
        f'`assignment` contains index {assignment[outside][0]}, but `names` '
        f'has {len(names)} entries, so indices must be in [0, '
        f'{len(names) - 1}].'
    )
  table = np.asarray([PROFILES[name] for name in names], np.float32)
  return ScannerProfile(*table[assignment].T)


@jax.jit
def _shift_traced(
    images: jax.Array,
    num_examples: jax.Array,
    profiles: ScannerProfile,
    key: PRNGKey,
) -> jax.Array:
  num_clients, max_examples = images.shape[:2]
  client_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      key, jnp.arange(num_clients)
  )
  shifted = jax.vmap(_apply_traced)(images, profiles, client_keys)
  real = jnp.arange(max_examples)[None, :] < num_examples[:, None]
  real = real.reshape((num_clients, max_examples, 1, 1, 1))
  return jnp.where(real, shifted, images)


def shift_clients(
    data: federated.FederatedData, profiles: ScannerProfile, *, key: PRNGKey
) -> federated.FederatedData:
  """Pass the images of every client through that client's scanner profile.

  Client c's real rows become `apply_profile(x[c], profiles[c],
  jax.random.fold_in(key, c))`, where profiles[c] takes entry c of every
  field. Padding rows and the other fields are unchanged.

  Args:
    data: `FederatedData` with `x` shaped `[clients, examples, height, width,
      channels]`, floating, with values in [0, 1].
    profiles: a `ScannerProfile` whose fields are shaped `[clients]`, such
      as the output of `stack_profiles`.
    key: JAX PRNG key for the noise.

  Returns:
    `FederatedData` whose `x` is a jax.Array of the same shape and dtype.

  Raises:
    InputError: if `data` has no 4-D images in `x`, or `profiles` does not
      have one valid value per client in every field.
  """
  if 'x' not in data.examples:
    raise InputError(
        f'`data` has fields {sorted(data.examples)}; scanner shifts need '
        'images in the field `x`.'
    )
  images = jnp.asarray(data.examples['x'])
  _check_images(images, 'data.examples["x"]', rank=5)
  _check_profile(
      profiles,
      shape=(images.shape[0],),
      argument='profiles',
      image_size=images.shape[2:4],
  )
  federated.check_key(key)
  profiles = ScannerProfile(
      *(jnp.asarray(value, images.dtype) for value in profiles)
  )
  examples = dict(data.examples)
  examples['x'] = _shift_traced(
      images, jnp.asarray(data.num_examples), profiles, key
  )
  return federated.FederatedData(examples, data.num_examples)


def shift_dataset_scanners(
    dataset: federated.FederatedDataset,
    profiles: Sequence[str] | ScannerProfile,
    *,
    key: PRNGKey,
) -> federated.FederatedDataset:
  """Shift each site's train and test images with the same scanner profile.

  A site's test images come from the same scanner as its training images,
  so both get its profile. The noise of the train and test sets is drawn
  from independent keys.

  Args:
    dataset: a `FederatedDataset` of images, `x` shaped `[clients, examples,
      height, width, channels]`.
    profiles: the profile name from `PROFILES` of every client, in client
      order, or a `ScannerProfile` whose fields are shaped `[clients]`.
    key: JAX PRNG key. The same key and arguments give the same dataset.

  Returns:
    A new `FederatedDataset` with shifted train and test images. The name,
    client names and other fields are those of `dataset`.

  Raises:
    InputError: if `profiles` does not give one valid profile per client,
      or the dataset's images are not shaped as above.
  """
  if not isinstance(profiles, ScannerProfile):
    names = _check_names(profiles, argument='profiles')
    if len(names) != dataset.num_clients:
      raise InputError(
          f'`profiles` has {len(names)} names, but the dataset has '
          f'{dataset.num_clients} clients. Give one profile name per client.'
      )
    unique = list(dict.fromkeys(names))
    profiles = stack_profiles(unique, [unique.index(name) for name in names])
  federated.check_key(key)
  train_key, test_key = jax.random.split(key)
  return dataclasses.replace(
      dataset,
      train=shift_clients(dataset.train, profiles, key=train_key),
      test=shift_clients(dataset.test, profiles, key=test_key),
  )
