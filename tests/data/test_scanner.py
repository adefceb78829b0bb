"""Tests for scanner-style site effects on client images."""

import jax
import jax.numpy as jnp
from matplotlib import figure as figure_lib
import numpy as np
import pytest

from fedjax_med.data import federated
from fedjax_med.data import scanner
from fedjax_med.errors import InputError
from fedjax_med.report import image_plots

# Most tests use this shape, so that each program compiles once.
SHAPE = (4, 16, 16, 1)


def _images(seed=0, shape=SHAPE, low=0.0):
  rng = np.random.default_rng(seed)
  return rng.uniform(low, 1.0, shape).astype(np.float32)


def _checkerboard():
  """Return SHAPE images of 1-pixel squares and the +-1 pattern sign."""
  rows, columns = np.indices(SHAPE[1:3])
  sign = np.where((rows + columns) % 2 == 1, 1.0, -1.0)
  sign = np.broadcast_to(sign[None, :, :, None], SHAPE)
  images = ((sign + 1.0) / 2.0).astype(np.float32)
  return images, sign


def _checkerboard_amplitude(images, sign):
  """Return the amplitude of the checkerboard pattern, 1 for the original."""
  return float(np.mean((2.0 * np.asarray(images) - 1.0) * sign))


def _federated(images_per_client):
  return federated.stack_clients([
      {'x': images, 'y': np.arange(len(images), dtype=np.int32)}
      for images in images_per_client
  ])


def test_identity_profile_exact(key):
  for images in (_images(), _images(1, shape=(2, 12, 20, 3))):
    shifted = scanner.apply_profile(images, scanner.ScannerProfile(), key)
    np.testing.assert_array_equal(np.asarray(shifted), images)
  reference = scanner.apply_profile(_images(), scanner.PROFILES['reference'],
                                    key)
  np.testing.assert_array_equal(np.asarray(reference), _images())


def test_invert_intensity_recovers_input(key):
  # Values from 0.05 up: near 0 the root of a gamma > 1 magnifies float32
  # rounding beyond 1e-6.
  images = _images(low=0.05)
  for gain, offset, gamma in [(1.3, 0.1, 0.5), (0.7, -0.2, 2.0),
                              (0.7, 0.15, 1.25), (2.5, 0.0, 1.0)]:
    profile = scanner.ScannerProfile(gain=gain, offset=offset, gamma=gamma)
    shifted = scanner.apply_profile(images, profile, key)
    restored = scanner.invert_intensity(shifted, profile)
    np.testing.assert_allclose(np.asarray(restored), images, atol=1e-6)


def test_invert_intensity_undoes_negative_values():
  profile = scanner.ScannerProfile(gain=2.0, offset=-0.5, gamma=2.0)
  values = np.array([-0.5, -0.3, 0.0, 0.8], np.float32).reshape(1, 2, 2, 1)
  restored = scanner.invert_intensity(values, profile)
  # u = (y + 0.5) / 2 = [0, 0.1, 0.25, 0.65], then sign(u) * |u| ** 0.5.
  expected = np.sqrt([0.0, 0.1, 0.25, 0.65]).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(np.asarray(restored), expected, rtol=1e-6)


def test_gamma_gain_offset_formula(key):
  values = np.array([0.0, 0.25, 0.5, 1.0])
  images = np.resize(values, SHAPE).astype(np.float32)
  profile = scanner.ScannerProfile(gain=2.0, offset=0.1, gamma=2.0)
  shifted = np.asarray(scanner.apply_profile(images, profile, key))
  expected = np.resize(2.0 * np.array([0.0, 0.0625, 0.25, 1.0]) + 0.1, SHAPE)
  np.testing.assert_allclose(shifted, expected, rtol=1e-6)
  brightened = scanner.apply_profile(
      images, scanner.ScannerProfile(gamma=0.5), key)
  expected = np.resize([0.0, 0.5, 0.5 ** 0.5, 1.0], SHAPE)
  np.testing.assert_allclose(np.asarray(brightened), expected, rtol=1e-6)


def test_blur_keeps_mean(key):
  # A bright square on a constant background.
  images = np.full(SHAPE, 0.2, np.float32)
  images[:, 5:11, 5:11] = 0.9
  blurred = np.asarray(scanner.apply_profile(
      images, scanner.ScannerProfile(blur_sigma=1.5), key))
  np.testing.assert_allclose(blurred.mean(axis=(1, 2, 3)),
                             images.mean(axis=(1, 2, 3)), atol=1e-6)
  assert blurred[0, 8, 8, 0] < 0.9
  assert blurred[0, 4, 8, 0] > 0.2
  # Mirror padding keeps the mean of any image, not only of this one.
  noise = _images(3)
  blurred_noise = np.asarray(scanner.apply_profile(
      noise, scanner.ScannerProfile(blur_sigma=3.0), key))
  np.testing.assert_allclose(blurred_noise.mean(axis=(1, 2, 3)),
                             noise.mean(axis=(1, 2, 3)), atol=1e-6)


def test_blur_reduces_noise_variance(key):
  white_noise = _images(4)
  blurred = np.asarray(scanner.apply_profile(
      white_noise, scanner.ScannerProfile(blur_sigma=1.0), key))
  # A 2-D Gaussian of std 1 keeps about 1 / (4 pi) of white noise variance.
  assert blurred.var() < 0.2 * white_noise.var()
  slightly_blurred = np.asarray(scanner.apply_profile(
      white_noise, scanner.ScannerProfile(blur_sigma=0.3), key))
  assert slightly_blurred.var() > blurred.var()


def test_resolution_removes_checkerboard(key):
  images, sign = _checkerboard()
  full = scanner.apply_profile(
      images, scanner.ScannerProfile(resolution=1.0), key)
  half = scanner.apply_profile(
      images, scanner.ScannerProfile(resolution=0.5), key)
  assert _checkerboard_amplitude(full, sign) == 1.0
  assert abs(_checkerboard_amplitude(half, sign)) < 0.05
  # The mean intensity survives the loss of detail.
  np.testing.assert_allclose(float(np.mean(half)), 0.5, atol=0.02)


def test_resolution_keeps_constant_image(key):
  # 0.37 of 12 or 20 pixels is not a whole number of pixels, which checks
  # the edge rows and columns of the down-sampled image.
  levels = np.array([0.7, 0.2, 1.0], np.float32)
  images = np.broadcast_to(levels, (2, 12, 20, 3))
  for resolution in (0.37, 0.5, 1 / 12):
    profile = scanner.ScannerProfile(resolution=resolution, blur_sigma=2.0)
    shifted = scanner.apply_profile(images, profile, key)
    np.testing.assert_allclose(np.asarray(shifted), images, atol=1e-6)


def test_resolution_keeps_smooth_ramp(key):
  ramp = np.linspace(0.0, 1.0, SHAPE[2], dtype=np.float32)
  images = np.broadcast_to(ramp[None, None, :, None], SHAPE)
  shifted = scanner.apply_profile(
      images, scanner.ScannerProfile(resolution=0.5), key)
  interior = np.asarray(shifted)[:, :, 2:-2]
  np.testing.assert_allclose(interior, images[:, :, 2:-2], atol=0.02)


def test_noise_depends_on_key_only(key):
  images = np.full(SHAPE, 0.5, np.float32)
  profile = scanner.ScannerProfile(noise_std=0.1)
  first = np.asarray(scanner.apply_profile(images, profile, key))
  again = np.asarray(scanner.apply_profile(images, profile, key))
  other = np.asarray(
      scanner.apply_profile(images, profile, jax.random.key(1)))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)
  noise = first - images
  # 1024 values estimate the std to within about 2%.
  np.testing.assert_allclose(noise.std(), 0.1, rtol=0.08)
  assert abs(noise.mean()) < 0.01


def test_profiles_valid_and_distinct(key):
  assert scanner.PROFILES['reference'] == scanner.ScannerProfile()
  assert len(scanner.PROFILES) >= 5
  images = _images(5, low=0.05)
  outputs = {}
  for name, profile in scanner.PROFILES.items():
    outputs[name] = np.asarray(scanner.apply_profile(images, profile, key))
    assert np.isfinite(outputs[name]).all(), name
  for name, output in outputs.items():
    if name != 'reference':
      assert not np.allclose(output, images, atol=0.01), name


def _client_data():
  """Return 3 clients with 4, 2 and 3 images, the first two of them shared."""
  shared = _images(6)
  return _federated([shared, shared[:2], _images(7)[:3]])


def _client_profiles():
  return scanner.ScannerProfile(
      gain=np.array([1.1, 1.1, 0.8], np.float32),
      offset=np.array([0.05, 0.05, 0.0], np.float32),
      gamma=np.array([0.9, 0.9, 1.3], np.float32),
      blur_sigma=np.array([0.5, 0.5, 1.0], np.float32),
      noise_std=np.array([0.05, 0.05, 0.02], np.float32),
      resolution=np.array([1.0, 1.0, 0.5], np.float32),
  )


def test_shift_clients_matches_loop(key):
  data = _client_data()
  profiles = _client_profiles()
  shifted = scanner.shift_clients(data, profiles, key=key)
  for client in range(data.num_clients):
    count = int(data.num_examples[client])
    profile = scanner.ScannerProfile(*(
        float(value[client]) for value in profiles))
    expected = scanner.apply_profile(
        data.examples['x'][client], profile,
        jax.random.fold_in(key, client))
    np.testing.assert_allclose(
        np.asarray(shifted.examples['x'][client, :count]),
        np.asarray(expected)[:count], atol=1e-6)


def test_shift_clients_keeps_padding_and_labels(key):
  data = _client_data()
  shifted = scanner.shift_clients(data, _client_profiles(), key=key)
  x = np.asarray(shifted.examples['x'])
  assert x.shape == data.examples['x'].shape
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x[1, 2:], 0.0)
  np.testing.assert_array_equal(x[2, 3:], 0.0)
  assert not np.allclose(x[1, :2], data.examples['x'][1, :2])
  np.testing.assert_array_equal(shifted.examples['y'], data.examples['y'])
  np.testing.assert_array_equal(shifted.num_examples, data.num_examples)


def test_shift_clients_independent_noise(key):
  # Clients 0 and 1 have the same first two images and the same profile.
  data = _client_data()
  shifted = scanner.shift_clients(data, _client_profiles(), key=key)
  x = np.asarray(shifted.examples['x'])
  assert np.abs(x[0, :2] - x[1, :2]).mean() > 0.01
  again = scanner.shift_clients(data, _client_profiles(), key=key)
  np.testing.assert_array_equal(np.asarray(again.examples['x']), x)


def test_shift_clients_accepts_lists(key):
  data = _client_data()
  arrays = _client_profiles()
  lists = scanner.ScannerProfile(*(value.tolist() for value in arrays))
  from_lists = scanner.shift_clients(data, lists, key=key)
  from_arrays = scanner.shift_clients(data, arrays, key=key)
  np.testing.assert_array_equal(np.asarray(from_lists.examples['x']),
                                np.asarray(from_arrays.examples['x']))


def test_traced_profile_matches_eager(key):
  images = _images(8)
  profiles = [
      scanner.ScannerProfile(gain=1.2, offset=-0.05, gamma=0.8,
                             blur_sigma=0.7, noise_std=0.03, resolution=0.6),
      scanner.PROFILES['legacy_low_resolution'],
  ]
  keys = jax.random.split(key, 2)
  # Under jit the profile's fields are tracers, which must skip the checks
  # of concrete values.
  jaxpr = jax.make_jaxpr(scanner.apply_profile)(images, profiles[0], keys[0])
  assert jaxpr.out_avals[0].shape == SHAPE

  stacked = jax.tree.map(lambda *values: jnp.array(values), *profiles)
  batched = jax.jit(jax.vmap(scanner.apply_profile))(
      jnp.stack([images, images]), stacked, keys)
  for index, profile in enumerate(profiles):
    eager = scanner.apply_profile(images, profile, keys[index])
    np.testing.assert_allclose(np.asarray(batched[index]), np.asarray(eager),
                               atol=1e-6)


def test_assign_profiles_repeatable(key):
  first = scanner.assign_profiles(50, key=key)
  again = scanner.assign_profiles(50, key=key)
  other = scanner.assign_profiles(50, key=jax.random.key(1))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.shape == (50,)
  assert first.dtype == np.int64
  assert first.min() >= 0
  assert first.max() < len(scanner.PROFILES)


def test_assign_profiles_follows_weights(key):
  names = ['reference', 'bright_vendor']
  only_second = scanner.assign_profiles(
      20, key=key, names=names, weights=[0.0, 1.0])
  np.testing.assert_array_equal(only_second, 1)
  skewed = scanner.assign_profiles(
      4000, key=key, names=names, weights=[3.0, 1.0])
  assert abs(np.mean(skewed == 0) - 0.75) < 0.03


def test_stack_profiles_values():
  names = ['reference', 'legacy_low_resolution']
  stacked = scanner.stack_profiles(names, np.array([1, 0, 1]))
  legacy = scanner.PROFILES['legacy_low_resolution']
  for field in scanner.ScannerProfile._fields:
    values = getattr(stacked, field)
    assert values.shape == (3,), field
    assert values.dtype == np.float32, field
    np.testing.assert_allclose(
        values,
        [getattr(legacy, field), getattr(scanner.ScannerProfile(), field),
         getattr(legacy, field)], rtol=1e-7, err_msg=field)


def _dataset():
  # Train and test are padded to the same shape as in `_client_data`.
  train = _client_data()
  test = _federated([_images(9)[:1], _images(10)[:4], _images(11)[:2]])
  return federated.FederatedDataset(
      name='scans', train=train, test=test,
      client_names=('a', 'b', 'c'), feature_names=('gray',), num_classes=4)


def test_shift_dataset_same_profile_per_site(key):
  dataset = _dataset()
  names = ['low_contrast_vendor', 'reference', 'low_contrast_vendor']
  # Without noise, a site's train and test images get the same mapping.
  quiet = scanner.stack_profiles(['low_contrast_vendor', 'reference'],
                                 [0, 1, 0])
  quiet = quiet._replace(noise_std=np.zeros(3, np.float32))
  shifted = scanner.shift_dataset_scanners(dataset, quiet, key=key)
  for split in ('train', 'test'):
    original = getattr(dataset, split)
    result = getattr(shifted, split)
    for client in range(3):
      count = int(original.num_examples[client])
      profile = scanner.ScannerProfile(*(
          float(value[client]) for value in quiet))
      expected = scanner.apply_profile(
          original.examples['x'][client], profile, key)
      np.testing.assert_allclose(
          np.asarray(result.examples['x'][client, :count]),
          np.asarray(expected)[:count], atol=1e-6, err_msg=split)

  named = scanner.shift_dataset_scanners(dataset, names, key=key)
  assert named.name == 'scans'
  assert named.client_names == ('a', 'b', 'c')
  assert named.feature_names == ('gray',)
  assert named.num_classes == 4
  assert named is not dataset
  np.testing.assert_array_equal(dataset.train.examples['x'],
                                _client_data().examples['x'])


def test_shift_dataset_independent_split_noise(key):
  # The same images in train and test must get different noise.
  images = _images(12)
  data = _federated([images, images[:2], images[:3]])
  dataset = federated.FederatedDataset(
      name='twins', train=data, test=data, client_names=('a', 'b', 'c'),
      feature_names=('gray',), num_classes=4)
  names = ['fast_noisy_protocol'] * 3
  shifted = scanner.shift_dataset_scanners(dataset, names, key=key)
  train = np.asarray(shifted.train.examples['x'])
  test = np.asarray(shifted.test.examples['x'])
  assert np.abs(train[0] - test[0]).mean() > 0.05
  again = scanner.shift_dataset_scanners(dataset, names, key=key)
  np.testing.assert_array_equal(np.asarray(again.test.examples['x']), test)


@pytest.mark.parametrize('field, value, message', [
    ('gamma', 0.0, r'profile\.gamma. must be finite and > 0 in float32; got 0\.0'),
    ('gamma', -1.0, r'profile\.gamma. must be finite and > 0 in float32; got -1\.0'),
    ('gain', 0.0, r'profile\.gain. must be finite and > 0'),
    ('resolution', 0.0, r'profile\.resolution. must be finite and in '
     r'\(0, 1\] in float32; got 0\.0'),
    ('resolution', 1.5, r'profile\.resolution. .* got 1\.5'),
    ('blur_sigma', -0.1, r'profile\.blur_sigma. must be finite and in '
     r'\[0, 3\]'),
    ('blur_sigma', 4.0, r'cut at 9 pixels'),
    ('noise_std', -0.01, r'profile\.noise_std. must be finite and >= 0'),
    ('offset', float('nan'), r'profile\.offset. must be finite in float32; got nan'),
    ('gain', float('nan'), r'profile\.gain. .* got nan'),
    ('noise_std', float('inf'), r'profile\.noise_std. .* got inf'),
    # Finite in float64, but inf or 0 in float32.
    ('gain', 1e39, r'profile\.gain. .* in float32; got 1e\+39'),
    ('offset', 1e39, r'profile\.offset. .* in float32; got 1e\+39'),
    ('noise_std', 1e39, r'profile\.noise_std. .* in float32; got 1e\+39'),
    ('gain', 1e-46, r'profile\.gain. .* in float32; got 1e-46'),
])
def test_apply_profile_rejects_values(key, field, value, message):
  profile = scanner.ScannerProfile()._replace(**{field: value})
  with pytest.raises(InputError, match=message):
    scanner.apply_profile(_images(), profile, key)


def test_apply_profile_rejects_inputs(key):
  with pytest.raises(InputError, match=r'less than one pixel of a 16x16'):
    scanner.apply_profile(_images(), scanner.ScannerProfile(resolution=0.05),
                          key)
  with pytest.raises(InputError, match=r'shaped \[examples, height, width'):
    scanner.apply_profile(_images()[..., 0], scanner.ScannerProfile(), key)
  with pytest.raises(InputError, match=r'floating dtype .* got uint8'):
    scanner.apply_profile(np.zeros(SHAPE, np.uint8), scanner.ScannerProfile(),
                          key)
  with pytest.raises(InputError, match=r'profile\.gain. is shaped \(3,\)'):
    scanner.apply_profile(_images(), _client_profiles(), key)
  with pytest.raises(InputError, match=r'must be a ScannerProfile; got dict'):
    scanner.apply_profile(_images(), {'gain': 1.0}, key)
  with pytest.raises(InputError, match=r'must be a single JAX PRNG key'):
    scanner.apply_profile(_images(), scanner.ScannerProfile(), 0)
  with pytest.raises(InputError, match=r"profile\.gamma. must be a number"):
    scanner.apply_profile(_images(), scanner.ScannerProfile(gamma='steep'),
                          key)


def test_shift_clients_rejects_inputs(key):
  data = _client_data()
  two_clients = jax.tree.map(lambda values: values[:2], _client_profiles())
  with pytest.raises(InputError, match=r'shaped \(2,\).* \(3,\) \(\[clients'):
    scanner.shift_clients(data, two_clients, key=key)
  negative = _client_profiles()._replace(
      noise_std=np.array([0.1, -0.2, 0.1], np.float32))
  with pytest.raises(InputError, match=r'got -0\.2.* for client 1'):
    scanner.shift_clients(data, negative, key=key)
  tabular = federated.FederatedData(
      {'x': np.zeros((3, 4, 5), np.float32)}, data.num_examples)
  with pytest.raises(InputError, match=r'\[clients, examples, height, width'):
    scanner.shift_clients(tabular, _client_profiles(), key=key)
  unlabeled = federated.FederatedData({'y': data.examples['y']},
                                      data.num_examples)
  with pytest.raises(InputError, match=r"fields \['y'\].* field `x`"):
    scanner.shift_clients(unlabeled, _client_profiles(), key=key)


def test_profile_names_rejected(key):
  with pytest.raises(InputError,
                     match=r"Unknown scanner profile 'siemens'.*'reference'"):
    scanner.stack_profiles(['siemens'], [0])
  with pytest.raises(InputError, match=r"Unknown .*'bogus'.*`profiles`"):
    scanner.shift_dataset_scanners(_dataset(), ['reference', 'bogus', 'x'],
                                   key=key)
  with pytest.raises(InputError, match=r'has 2 names, but the dataset has 3'):
    scanner.shift_dataset_scanners(_dataset(), ['reference'] * 2, key=key)
  with pytest.raises(InputError, match=r"got the string 'reference'"):
    scanner.shift_dataset_scanners(_dataset(), 'reference', key=key)
  with pytest.raises(InputError, match=r'`names` is empty'):
    scanner.assign_profiles(3, key=key, names=[])
  with pytest.raises(InputError, match=r'repeats a profile'):
    scanner.assign_profiles(3, key=key, names=['reference', 'reference'])


def test_assignment_and_weights_rejected(key):
  names = ['reference', 'bright_vendor']
  with pytest.raises(InputError, match=r'contains index 2.* \[0, 1\]'):
    scanner.stack_profiles(names, [0, 2])
  with pytest.raises(InputError, match=r'contains index -1'):
    scanner.stack_profiles(names, [-1])
  with pytest.raises(InputError, match=r'must contain integers'):
    scanner.stack_profiles(names, [0.0, 1.0])
  with pytest.raises(InputError, match=r'non-empty 1-D'):
    scanner.stack_profiles(names, [])
  with pytest.raises(InputError, match=r'shaped \(3,\); it needs one weight'):
    scanner.assign_profiles(3, key=key, names=names, weights=[1, 1, 1])
  with pytest.raises(InputError, match=r'finite and >= 0'):
    scanner.assign_profiles(3, key=key, names=names, weights=[1, -1])
  with pytest.raises(InputError, match=r'finite and >= 0'):
    scanner.assign_profiles(3, key=key, names=names,
                            weights=[1, float('nan')])
  with pytest.raises(InputError, match=r'sum to 0'):
    scanner.assign_profiles(3, key=key, names=names, weights=[0, 0])
  with pytest.raises(InputError, match=r'`num_clients` must be >= 1'):
    scanner.assign_profiles(0, key=key)


def test_plot_profile_examples_grid(key):
  names = ['reference', 'legacy_low_resolution', 'fast_noisy_protocol']
  figure = image_plots.plot_profile_examples(_images(13), names, key=key)
  assert isinstance(figure, figure_lib.Figure)
  assert len(figure.axes) == 3 * SHAPE[0]
  titles = [axes.get_title() for axes in figure.axes]
  assert titles[:SHAPE[0]] == ['reference'] * SHAPE[0]
  assert titles[-1] == 'fast_noisy_protocol'
  drawn_image = figure.axes[0].get_images()[0]
  assert drawn_image.get_cmap().name == 'gray'
  np.testing.assert_array_equal(drawn_image.get_array(),
                                _images(13)[0, :, :, 0])


def test_plot_profile_examples_rgb(key):
  images = _images(14, shape=(2, 12, 20, 3))
  figure = image_plots.plot_profile_examples(images, ['bright_vendor'],
                                             key=key)
  assert len(figure.axes) == 2
  assert figure.axes[1].get_images()[0].get_array().shape == (12, 20, 3)
  with pytest.raises(InputError, match=r'1 or 3 channels; got shape'):
    image_plots.plot_profile_examples(images[..., :2], ['reference'], key=key)
  with pytest.raises(InputError, match=r"Unknown scanner profile 'ge'"):
    image_plots.plot_profile_examples(images, ['ge'], key=key)
