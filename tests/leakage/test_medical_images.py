"""Tests for the scikit-image medical image patches."""

import pathlib
import sysconfig

import jax
import numpy as np
import pytest
import skimage.color
import skimage.data

from fedjax_med.data import medical_images
from fedjax_med.errors import InputError


@pytest.fixture(scope='module')
def patches():
  return medical_images.load_patches(size=16, per_image=8, key=0)


def test_shapes_and_dtypes(patches):
  assert patches.images.shape == (32, 16, 16, 1)
  assert patches.images.dtype == np.float32
  assert patches.labels.shape == (32,)
  assert np.issubdtype(patches.labels.dtype, np.integer)
  assert patches.positions.shape == (32, 2)


def test_pixels_in_unit_range(patches):
  assert patches.images.min() >= 0.0
  assert patches.images.max() <= 1.0


def test_all_four_classes(patches):
  assert len(medical_images.CLASS_NAMES) == 4
  counts = np.bincount(patches.labels, minlength=4)
  np.testing.assert_array_equal(counts, [8, 8, 8, 8])


def test_rgb_has_three_channels():
  rgb = medical_images.load_patches(size=16, per_image=4, key=0,
                                    grayscale=False)
  gray = medical_images.load_patches(size=16, per_image=4, key=0)
  assert rgb.images.shape == (16, 16, 16, 3)
  np.testing.assert_array_equal(rgb.positions, gray.positions)
  # The fundus is a colour photograph, so its channels differ.
  fundus = rgb.images[rgb.labels == 0]
  assert np.abs(fundus[..., 0] - fundus[..., 1]).max() > 0.05
  # The cell image is grayscale, repeated into three equal channels.
  cell = rgb.images[rgb.labels == 3]
  np.testing.assert_array_equal(cell[..., 0], cell[..., 2])


def test_same_key_same_patches(patches):
  again = medical_images.load_patches(size=16, per_image=8, key=0)
  np.testing.assert_array_equal(again.images, patches.images)
  np.testing.assert_array_equal(again.positions, patches.positions)


def test_seed_and_raw_key_equal_key(patches):
  from_key = medical_images.load_patches(
      size=16, per_image=8, key=jax.random.key(0)
  )
  np.testing.assert_array_equal(from_key.positions, patches.positions)
  from_raw_key = medical_images.load_patches(
      size=16, per_image=8, key=jax.random.PRNGKey(0)
  )
  np.testing.assert_array_equal(from_raw_key.positions, patches.positions)


def test_different_keys_differ(patches):
  other = medical_images.load_patches(size=16, per_image=8, key=1)
  fundus = patches.labels == 0
  assert not np.array_equal(other.positions[fundus], patches.positions[fundus])
  assert not np.array_equal(other.images, patches.images)


def test_no_near_empty_patch():
  patches = medical_images.load_patches(size=16, per_image=36, key=3)
  std = patches.images.std(axis=(1, 2, 3))
  dark = (patches.images < medical_images.DARK_LEVEL).mean(axis=(1, 2, 3))
  assert std.min() > medical_images.MIN_STD
  assert dark.max() <= medical_images.MAX_DARK_FRACTION


def test_patch_matches_source_pixels(patches):
  retina = skimage.color.rgb2gray(skimage.data.retina())
  index = int(np.flatnonzero(patches.labels == 0)[0])
  row, column = patches.positions[index]
  expected = retina[row:row + 16, column:column + 16]
  np.testing.assert_allclose(patches.images[index, ..., 0], expected,
                             atol=1e-6)


def test_positions_on_grid_inside_image(patches):
  assert np.all(patches.positions % 16 == 0)
  shapes = {0: (1411, 1411), 1: (102, 102), 2: (512, 512), 3: (660, 550)}
  for label, (height, width) in shapes.items():
    rows, columns = patches.positions[patches.labels == label].T
    assert rows.max() + 16 <= height
    assert columns.max() + 16 <= width
    # Sampling is without replacement.
    assert len(set(zip(rows, columns))) == len(rows)


def test_files_come_from_installed_skimage():
  site_packages = pathlib.Path(sysconfig.get_paths()['purelib']).resolve()
  expected_dir = site_packages / 'skimage' / 'data'
  assert medical_images.data_dir() == expected_dir
  for path in medical_images.source_paths():
    assert path.parent == expected_dir
    assert path.is_file()


def test_available_patches_for_size_16():
  available = medical_images.available_patches(16)
  assert available['microaneurysms'] == 36
  assert min(available.values()) == 36


def test_size_too_small():
  with pytest.raises(InputError, match='between 4 and 102'):
    medical_images.load_patches(size=2)


def test_size_too_large():
  with pytest.raises(InputError, match='between 4 and 102'):
    medical_images.load_patches(size=200)


def test_per_image_too_large():
  with pytest.raises(InputError, match='per_image <= 36'):
    medical_images.load_patches(size=16, per_image=37)


def test_per_image_not_positive():
  with pytest.raises(InputError, match='per_image'):
    medical_images.load_patches(per_image=0)


def test_bad_key():
  with pytest.raises(InputError, match='PRNG key'):
    medical_images.load_patches(key='zero')
