"""Tests for the image datasets: digits, synthetic images, folders and .npz."""

import functools
import gzip

import jax
import numpy as np
import pytest
import skimage.color
import skimage.io

from fedjax_med.data import images
from fedjax_med.errors import InputError

# Images per digit 0..9 in scikit-learn's digits set.
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# The first 8 pixels (top row) of image 0 in digits.csv.gz. Its label is 0.
FIRST_IMAGE_TOP_ROW = [0, 0, 5, 13, 9, 1, 0, 0]
# The shape of the synthetic tests. Shared shapes and sizes let the tests
# reuse one compiled program.
SHAPE = (16, 16, 3)
CLIENT_SIZES = dict(
    num_clients=3, examples_per_client=np.array([3, 0, 5]),
    test_examples_per_client=2, image_shape=SHAPE,
)  # fmt: skip


# Helpers.


def _pooled(dataset):
  """Return every real train and test image and label, in one array each."""
  parts = [
      data.client(client)
      for data in (dataset.train, dataset.test)
      for client in range(dataset.num_clients)
  ]
  x = np.concatenate([part['x'] for part in parts])
  y = np.concatenate([part['y'] for part in parts])
  return x, y


def _sorted_rows(x, y):
  """Sort images with their labels, to compare two collections as multisets."""
  rows = np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def _nearest_mean_accuracy(x, y, num_classes, num_train):
  """Fit class means on the first rows, return the accuracy on the rest."""
  x = np.asarray(x).reshape(len(x), -1)
  y = np.asarray(y)
  means = np.stack([
      x[:num_train][y[:num_train] == k].mean(axis=0)
      for k in range(num_classes)
  ])
  distances = ((x[num_train:, None, :] - means[None, :, :]) ** 2).sum(-1)
  return float((distances.argmin(axis=1) == y[num_train:]).mean())


def _save_png(path, image):
  path.parent.mkdir(parents=True, exist_ok=True)
  skimage.io.imsave(path, image, check_contrast=False)
  return path


def _gray(value, shape=(6, 5)):
  return np.full(shape, value, np.uint8)


def _two_site_tree(root):
  """Write sites 'a' (classes cat, dog) and 'b' (dog, fox) of gray PNGs."""
  for site, class_name, count in [
      ('a', 'cat', 3), ('a', 'dog', 4), ('b', 'dog', 3), ('b', 'fox', 5)
  ]:
    for index in range(count):
      _save_png(
          root / site / class_name / f'{index}.png', _gray(10 * index + 1)
      )
  return root


def _save_npz(path, **arrays):
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  return path


def _site_arrays(count, seed, shape=(5, 4)):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (count,) + shape, dtype=np.uint8)
  labels = np.arange(count) % 3
  return pixels, labels


# Bundled digits.


def test_load_digits_shapes():
  x, y = images.load_digits()

  assert x.shape == (1797, 8, 8, 1)
  assert x.dtype == np.float32
  assert y.shape == (1797,)
  assert y.dtype == np.int32
  assert x.min() == 0.0
  assert x.max() == 1.0


def test_load_digits_class_counts():
  _, y = images.load_digits()

  np.testing.assert_array_equal(np.bincount(y), DIGIT_COUNTS)


def test_load_digits_first_image():
  x, y = images.load_digits()

  np.testing.assert_array_equal(
      x[0, 0, :, 0], np.asarray(FIRST_IMAGE_TOP_ROW, np.float32) / 16
  )
  assert x[0, 1, 2, 0] == np.float32(13 / 16)
  assert y[0] == 0


def test_load_digits_tampered_file(tmp_path, monkeypatch):
  tampered = tmp_path / images.DIGITS_FILE
  text = gzip.decompress(images.digits_path().read_bytes())
  tampered.write_bytes(gzip.compress(text.replace(b'0,0,5,13', b'0,0,6,13', 1)))
  monkeypatch.setattr(images, 'digits_path', lambda: tampered)

  with pytest.raises(InputError, match='SHA-256'):
    images.load_digits()


def test_load_digits_missing_file(tmp_path, monkeypatch):
  monkeypatch.setattr(images, 'digits_path', lambda: tmp_path / 'gone.csv.gz')

  with pytest.raises(InputError, match='gone.csv.gz is missing'):
    images.load_digits()


def test_digits_dataset_100_clients(key):
  dataset = images.digits_dataset(100, key=key)
  sizes = dataset.train.num_examples + dataset.test.num_examples

  assert dataset.num_clients == 100
  assert set(sizes.tolist()) == {17, 18}
  assert int(sizes.sum()) == 1797
  assert dataset.train.examples['x'].shape[2:] == (8, 8, 1)
  assert dataset.test.examples['y'].dtype == np.int32


def test_digits_dataset_covers_each_image_once(key):
  dataset = images.digits_dataset(100, key=key)
  x, y = images.load_digits()

  np.testing.assert_array_equal(
      _sorted_rows(*_pooled(dataset)), _sorted_rows(x, y)
  )


def test_digits_dataset_description(key):
  dataset = images.digits_dataset(100, key=key)

  assert dataset.name == 'digits'
  assert dataset.client_names[0] == 'site_000'
  assert dataset.client_names[99] == 'site_099'
  assert dataset.num_classes == 10
  assert dataset.feature_names == ('gray',)
  assert dataset.source_files == (images.digits_path(),)


def test_digits_dataset_dirichlet_skew(key):
  iid = images.digits_dataset(5, key=key)
  skewed = images.digits_dataset(5, key=key, alpha=0.1)

  def mean_top_share(dataset):
    shares = []
    for client in range(dataset.num_clients):
      labels = dataset.train.client(client)['y']
      shares.append(np.bincount(labels).max() / len(labels))
    return np.mean(shares)

  assert mean_top_share(iid) < 0.2
  assert mean_top_share(skewed) > 0.4
  np.testing.assert_array_equal(
      _sorted_rows(*_pooled(skewed)), _sorted_rows(*images.load_digits())
  )


def test_digits_dataset_same_key_same_split(key):
  first = images.digits_dataset(10, key=key)
  second = images.digits_dataset(10, key=jax.random.key(0))
  other = images.digits_dataset(10, key=jax.random.fold_in(key, 1))

  np.testing.assert_array_equal(
      first.train.examples['x'], second.train.examples['x']
  )
  np.testing.assert_array_equal(
      first.test.examples['y'], second.test.examples['y']
  )
  assert not np.array_equal(
      first.train.examples['x'], other.train.examples['x']
  )


def test_digits_dataset_too_many_clients(key):
  with pytest.raises(InputError, match='1000 clients with min_examples=2'):
    images.digits_dataset(1000, key=key)


# Synthetic images.


def test_synthetic_images_shapes(key):
  x, y = images.synthetic_images(key, 50, image_shape=SHAPE)

  assert x.shape == (50,) + SHAPE
  assert x.dtype == np.float32
  assert y.shape == (50,)
  assert y.dtype == np.int32
  assert float(x.min()) >= 0.0
  assert float(x.max()) <= 1.0
  assert set(np.asarray(y).tolist()) <= set(range(10))


def test_synthetic_images_same_key(key):
  first_x, first_y = images.synthetic_images(key, 50, image_shape=SHAPE)
  second_x, second_y = images.synthetic_images(
      jax.random.key(0), 50, image_shape=SHAPE
  )
  other_x, _ = images.synthetic_images(
      jax.random.fold_in(key, 1), 50, image_shape=SHAPE
  )

  np.testing.assert_array_equal(first_x, second_x)
  np.testing.assert_array_equal(first_y, second_y)
  assert not np.array_equal(first_x, other_x)


def test_synthetic_images_separation_zero_is_chance(key):
  x, y = images.synthetic_images(
      key, 4000, image_shape=SHAPE, separation=0.0
  )

  # Chance is 0.1, and the accuracy on 1,000 test images has std 0.01.
  assert _nearest_mean_accuracy(x, y, 10, 3000) < 0.15


def test_synthetic_images_large_separation_is_easy(key):
  x, y = images.synthetic_images(
      key, 4000, image_shape=SHAPE, separation=3.0
  )

  assert _nearest_mean_accuracy(x, y, 10, 3000) > 0.95


def test_synthetic_images_accuracy_grows_with_separation(key):
  accuracies = []
  for separation in (0.3, 1.0, 2.0):
    x, y = images.synthetic_images(
        key, 4000, image_shape=SHAPE, separation=separation
    )
    accuracies.append(_nearest_mean_accuracy(x, y, 10, 3000))

  assert accuracies[0] < accuracies[1] < accuracies[2]


def test_synthetic_images_traced_separation(key):
  generate = jax.jit(
      functools.partial(images.synthetic_images, num_examples=50,
                        image_shape=SHAPE)
  )

  traced_x, traced_y = generate(key, separation=jax.numpy.float32(2.0))
  eager_x, eager_y = images.synthetic_images(
      key, 50, image_shape=SHAPE, separation=2.0
  )

  np.testing.assert_allclose(traced_x, eager_x, atol=1e-6)
  np.testing.assert_array_equal(traced_y, eager_y)


def test_synthetic_images_pixel_noise(key):
  smooth, _ = images.synthetic_images(key, 50, image_shape=SHAPE)
  noisy, _ = images.synthetic_images(
      key, 50, image_shape=SHAPE, pixel_noise_std=0.5
  )

  assert not np.array_equal(smooth, noisy)
  assert np.isfinite(np.asarray(noisy)).all()
  assert float(noisy.min()) >= 0.0
  assert float(noisy.max()) <= 1.0


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'num_examples': 0}, '`num_examples` must be >= 1'),
        ({'image_shape': (16, 16)}, '`image_shape` must be three'),
        ({'num_classes': 1}, '`num_classes` must be >= 2'),
        ({'separation': -1.0}, '`separation` must be a finite number'),
        ({'noise_std': float('nan')}, '`noise_std` must be a finite number'),
        ({'cell_size': 0}, '`cell_size` must be >= 1'),
        ({'key': 0}, '`key` must be a single JAX PRNG key'),
    ],
)
def test_synthetic_images_invalid_arguments(key, overrides, message):
  arguments = {'key': key, 'num_examples': 10, 'image_shape': SHAPE}
  arguments.update(overrides)

  with pytest.raises(InputError, match=message):
    images.synthetic_images(**arguments)


def test_synthetic_clients_padding(key):
  dataset = images.synthetic_image_clients(key, **CLIENT_SIZES)
  train_x = np.asarray(dataset.train.examples['x'])
  train_y = np.asarray(dataset.train.examples['y'])

  assert train_x.shape == (3, 5) + SHAPE
  assert dataset.test.examples['x'].shape == (3, 2) + SHAPE
  np.testing.assert_array_equal(dataset.train.num_examples, [3, 0, 5])
  np.testing.assert_array_equal(dataset.test.num_examples, [2, 2, 2])
  assert not train_x[0, 3:].any()
  assert not train_x[1].any()
  assert not train_y[0, 3:].any()
  assert train_x[0, :3].min() > 0.0
  assert train_x[2].min() > 0.0


def test_synthetic_clients_description(key):
  dataset = images.synthetic_image_clients(key, **CLIENT_SIZES)

  assert dataset.name == 'synthetic_images'
  assert dataset.client_names == ('site_000', 'site_001', 'site_002')
  assert dataset.feature_names == ('red', 'green', 'blue')
  assert dataset.num_classes == 10
  assert dataset.train.examples['y'].dtype == np.int32


def test_synthetic_clients_same_key(key):
  arguments = dict(CLIENT_SIZES, alpha=0.5)
  first = images.synthetic_image_clients(key, **arguments)
  second = images.synthetic_image_clients(jax.random.key(0), **arguments)
  other = images.synthetic_image_clients(
      jax.random.fold_in(key, 1), **arguments
  )

  np.testing.assert_array_equal(
      first.train.examples['x'], second.train.examples['x']
  )
  np.testing.assert_array_equal(
      first.test.examples['y'], second.test.examples['y']
  )
  assert not np.array_equal(
      first.train.examples['x'], other.train.examples['x']
  )


def test_synthetic_clients_label_skew(key):
  def train_labels(alpha):
    dataset = images.synthetic_image_clients(
        key, num_clients=20, examples_per_client=100,
        test_examples_per_client=1, image_shape=(4, 4, 1), num_classes=4,
        alpha=alpha,
    )  # fmt: skip
    return np.asarray(dataset.train.examples['y'])

  def mean_top_share(labels):
    return np.mean([np.bincount(row).max() / len(row) for row in labels])

  iid = train_labels(None)
  skewed = train_labels(0.05)

  # With 4 equally likely classes, the top class of 100 labels has about 31.
  assert mean_top_share(iid) < 0.4
  assert mean_top_share(skewed) > 0.7
  assert set(iid.ravel().tolist()) == {0, 1, 2, 3}


def test_synthetic_clients_share_prototypes(key):
  dataset = images.synthetic_image_clients(
      key, num_clients=2, examples_per_client=400,
      test_examples_per_client=200, image_shape=SHAPE, separation=3.0,
  )  # fmt: skip
  first = dataset.train.client(0)
  second = dataset.test.client(1)
  x = np.concatenate([first['x'], second['x']])
  y = np.concatenate([first['y'], second['y']])

  # Class means of client 0 classify client 1, so the classes look alike.
  assert _nearest_mean_accuracy(x, y, 10, len(first['y'])) > 0.9


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'examples_per_client': np.array([1, 2])}, 'one count per client'),
        ({'examples_per_client': -1}, '`examples_per_client` must be >= 0'),
        ({'test_examples_per_client': 1.5}, 'must be an integer'),
        ({'num_clients': 0}, '`num_clients` must be >= 1'),
        ({'alpha': 0.0}, '`alpha` must be > 0'),
        ({'alpha': -1.0}, '`alpha` must be a finite number'),
    ],
)
def test_synthetic_clients_invalid_arguments(key, overrides, message):
  arguments = dict(CLIENT_SIZES, **overrides)

  with pytest.raises(InputError, match=message):
    images.synthetic_image_clients(key, **arguments)


# Image folders.


def test_image_folder_class_union(tmp_path, key):
  _two_site_tree(tmp_path / 'study')

  dataset = images.load_image_folder(tmp_path / 'study', key=key)
  layout = images.scan_image_folder(tmp_path / 'study')

  assert layout.class_names == ('cat', 'dog', 'fox')
  assert dataset.client_names == ('a', 'b')
  assert dataset.num_classes == 3
  assert dataset.name == 'study'
  assert len(dataset.source_files) == 15
  sizes = dataset.train.num_examples + dataset.test.num_examples
  np.testing.assert_array_equal(sizes, [7, 8])
  site_a = np.concatenate(
      [dataset.train.client(0)['y'], dataset.test.client(0)['y']]
  )
  site_b = np.concatenate(
      [dataset.train.client(1)['y'], dataset.test.client(1)['y']]
  )
  np.testing.assert_array_equal(np.bincount(site_a, minlength=3), [3, 4, 0])
  np.testing.assert_array_equal(np.bincount(site_b, minlength=3), [0, 3, 5])


def test_image_folder_pixel_values(tmp_path, key):
  _save_png(tmp_path / 'site' / 'one' / 'a.png', _gray(51))
  _save_png(tmp_path / 'site' / 'one' / 'b.png', _gray(255))

  dataset = images.load_image_folder(tmp_path, key=key, test_fraction=0.0)
  x, _ = _pooled(dataset)

  assert x.shape == (2, 6, 5, 1)
  assert dataset.feature_names == ('gray',)
  np.testing.assert_allclose(np.sort(x[:, 0, 0, 0]), [0.2, 1.0], rtol=1e-6)


def test_image_folder_mixed_channels_become_rgb(tmp_path, key):
  rgb = np.zeros((6, 5, 3), np.uint8)
  rgb[..., 0] = 255
  _save_png(tmp_path / 'site' / 'one' / 'gray.png', _gray(51))
  _save_png(tmp_path / 'site' / 'one' / 'rgb.png', rgb)

  dataset = images.load_image_folder(tmp_path, key=key, test_fraction=0.0)
  x = dataset.train.client(0)['x']

  assert x.shape == (2, 6, 5, 3)
  np.testing.assert_allclose(x[0, 0, 0], [0.2, 0.2, 0.2], rtol=1e-6)
  np.testing.assert_allclose(x[1, 0, 0], [1.0, 0.0, 0.0])


def test_image_folder_grayscale_option(tmp_path, key):
  rgb = np.zeros((6, 5, 3), np.uint8)
  rgb[..., 1] = 255
  _save_png(tmp_path / 'site' / 'one' / 'rgb.png', rgb)

  dataset = images.load_image_folder(
      tmp_path, key=key, grayscale=True, test_fraction=0.0
  )
  x = dataset.train.client(0)['x']

  assert x.shape == (1, 6, 5, 1)
  expected = skimage.color.rgb2gray(np.array([[[0.0, 1.0, 0.0]]]))[0, 0]
  np.testing.assert_allclose(x[0, 0, 0, 0], expected, rtol=1e-6)


def test_image_folder_drops_alpha(tmp_path, key):
  rgba = np.zeros((6, 5, 4), np.uint8)
  rgba[..., 2] = 255
  rgba[..., 3] = 128
  _save_png(tmp_path / 'site' / 'one' / 'rgba.png', rgba)

  dataset = images.load_image_folder(tmp_path, key=key, test_fraction=0.0)
  x = dataset.train.client(0)['x']

  assert x.shape == (1, 6, 5, 3)
  np.testing.assert_allclose(x[0, 0, 0], [0.0, 0.0, 1.0])


def test_image_folder_reads_cmyk_jpeg(tmp_path, key):
  # skimage returns a CMYK JPEG's raw channels; they were read as inverted
  # RGB plus alpha: 50 / 255 came back as 0.804.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'site' / 'one'
  folder.mkdir(parents=True)
  rgb = np.full((8, 8, 3), 50, np.uint8)
  Image.fromarray(rgb).convert('CMYK').save(folder / 'cmyk.jpg')

  dataset = images.load_image_folder(tmp_path, key=key, test_fraction=0.0)
  x = dataset.train.client(0)['x']

  assert x.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(x, 50 / 255, atol=2 / 255)


def test_image_folder_warns_of_mixed_scales(tmp_path, key):
  # An 8-bit PNG site next to a site of int32 TIFFs in the thousands
  # loaded without a word, with maxima 1.0 and 1.2e-4 (.npz sites warned).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for site, suffix, values in (('a', 'png', np.uint8(200)),
                               ('b', 'tif', np.int32(26_000))):
    folder = tmp_path / site / 'one'
    folder.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), values)).save(folder / f'x.{suffix}')

  with pytest.warns(UserWarning, match=r'a reach 0.784 but those of .*b only'
                    r' 1.21e-05'):
    images.load_image_folder(tmp_path, key=key, test_fraction=0.0)


def test_image_folder_resize(tmp_path, key):
  _save_png(tmp_path / 'site' / 'one' / 'small.png', _gray(100, (6, 5)))
  _save_png(tmp_path / 'site' / 'one' / 'large.png', _gray(100, (30, 40)))

  dataset = images.load_image_folder(
      tmp_path, key=key, image_size=(4, 8), test_fraction=0.0
  )
  x = dataset.train.client(0)['x']

  assert x.shape == (2, 4, 8, 1)
  np.testing.assert_allclose(x, 100 / 255, rtol=1e-5)


def test_image_folder_size_mismatch(tmp_path, key):
  _save_png(tmp_path / 'site' / 'one' / 'a.png', _gray(1, (6, 5)))
  _save_png(tmp_path / 'site' / 'one' / 'b.png', _gray(1, (7, 5)))

  with pytest.raises(InputError, match=r'a\.png \(6x5\) and .*b\.png \(7x5\)'
                     r'.*image_size'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_skips_hidden_files(tmp_path, key):
  _two_site_tree(tmp_path)
  (tmp_path / 'a' / 'cat' / '.DS_Store').write_bytes(b'\x00\x01')
  (tmp_path / '.cache').mkdir()
  (tmp_path / 'README.txt').write_text('notes')

  dataset = images.load_image_folder(tmp_path, key=key)

  assert dataset.client_names == ('a', 'b')
  assert len(dataset.source_files) == 15


def test_image_folder_same_key_same_split(tmp_path, key):
  _two_site_tree(tmp_path)

  first = images.load_image_folder(tmp_path, key=key)
  second = images.load_image_folder(tmp_path, key=jax.random.key(0))

  np.testing.assert_array_equal(
      first.test.examples['x'], second.test.examples['x']
  )
  np.testing.assert_array_equal(first.test.num_examples, [2, 2])


def test_image_folder_missing_root(tmp_path, key):
  with pytest.raises(InputError, match='nowhere does not exist'):
    images.load_image_folder(tmp_path / 'nowhere', key=key)


def test_image_folder_root_is_file(tmp_path, key):
  path = _save_png(tmp_path / 'one.png', _gray(1))

  with pytest.raises(InputError, match='is a file, not a folder'):
    images.load_image_folder(path, key=key)


def test_image_folder_no_sites(tmp_path, key):
  (tmp_path / 'notes.txt').write_text('no sites here')

  with pytest.raises(InputError, match='contains no site folders'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_site_without_classes(tmp_path, key):
  _two_site_tree(tmp_path)
  (tmp_path / 'c').mkdir()

  with pytest.raises(InputError, match='c contains no class folders'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_site_without_images(tmp_path, key):
  _two_site_tree(tmp_path)
  (tmp_path / 'c' / 'cat').mkdir(parents=True)

  with pytest.raises(InputError, match='contains no image files'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_loose_image(tmp_path, key):
  _two_site_tree(tmp_path)
  _save_png(tmp_path / 'a' / 'loose.png', _gray(1))

  with pytest.raises(InputError, match='loose.png is not inside a class'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_corrupt_file(tmp_path, key):
  _two_site_tree(tmp_path)
  good = (tmp_path / 'a' / 'cat' / '0.png').read_bytes()
  (tmp_path / 'b' / 'fox' / 'broken.png').write_bytes(good[: len(good) // 2])

  with pytest.raises(InputError, match=r'Could not read image .*broken\.png'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_unsupported_extension(tmp_path, key):
  _two_site_tree(tmp_path)
  (tmp_path / 'a' / 'dog' / 'scan.dcm').write_bytes(b'DICM')

  with pytest.raises(InputError, match=r"scan\.dcm has the unsupported "
                     r"extension '\.dcm'"):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_nan_pixels(tmp_path, key):
  path = tmp_path / 'site' / 'one' / 'bad.tif'
  path.parent.mkdir(parents=True)
  image = np.full((6, 5), 0.5, np.float32)
  image[2, 3] = np.nan
  skimage.io.imsave(path, image, check_contrast=False)

  with pytest.raises(InputError, match=r'bad\.tif contains NaN'):
    images.load_image_folder(tmp_path, key=key)


def test_image_folder_float64_beyond_float32(tmp_path, key):
  path = tmp_path / 'site' / 'one' / 'big.tif'
  path.parent.mkdir(parents=True)
  image = np.full((6, 5), 0.5, np.float64)
  image[2, 3] = 1e300
  skimage.io.imsave(path, image, check_contrast=False)

  with pytest.raises(InputError) as error:
    images.load_image_folder(tmp_path, key=key)
  message = str(error.value)

  assert 'big.tif contains values beyond the float32 range' in message
  assert 'first in pixel row 2' in message


@pytest.mark.parametrize(
    'image_shape', [(8, 8), (0, 8, 1), (8.0, 8, 1), (True, 8, 1), 8], ids=str
)
def test_synthetic_invalid_shape(key, image_shape):
  with pytest.raises(InputError, match='`image_shape` must be three'):
    images.synthetic_images(key, 10, image_shape=image_shape)


@pytest.mark.parametrize(
    'image_size', [(4,), (0, 4), (4.0, 4), 4], ids=str
)
def test_image_folder_invalid_size(tmp_path, key, image_size):
  _two_site_tree(tmp_path)

  with pytest.raises(InputError, match='`image_size` must be None or two'):
    images.load_image_folder(tmp_path, key=key, image_size=image_size)


# .npz sites.


def test_npz_sites_uint8_scaling(tmp_path, key):
  _save_npz(tmp_path / 'one.npz', images=np.array([[[0, 51], [102, 255]]],
                                                   np.uint8),
            labels=np.array([0]))

  dataset = images.load_npz_sites([tmp_path / 'one.npz'], key=key,
                                  test_fraction=0.0)
  x = dataset.train.client(0)['x']

  assert x.shape == (1, 2, 2, 1)
  assert x.dtype == np.float32
  np.testing.assert_allclose(x[0, :, :, 0], [[0.0, 0.2], [0.4, 1.0]],
                             rtol=1e-6)


def test_npz_sites_uint16_and_float(tmp_path, key):
  _save_npz(tmp_path / 'a.npz', x=np.full((2, 3, 3), 65535, np.uint16),
            y=np.array([0, 1]))
  _save_npz(tmp_path / 'b.npz', x=np.full((2, 3, 3), 0.25), y=[1.0, 0.0])

  dataset = images.load_npz_sites(tmp_path, key=key, test_fraction=0.0)

  np.testing.assert_array_equal(dataset.train.client(0)['x'], 1.0)
  np.testing.assert_array_equal(dataset.train.client(1)['x'], 0.25)


def test_npz_sites_warn_of_mixed_scales(tmp_path, key):
  # A uint8 site scaled to [0, 1] next to a float site in [0, 255] gave
  # one client inputs 255 times larger, without a word.
  _save_npz(tmp_path / 'a.npz', x=np.full((2, 3, 3), 200, np.uint8),
            y=np.array([0, 1]))
  _save_npz(tmp_path / 'b.npz', x=np.full((2, 3, 3), 200.0), y=[1, 0])

  with pytest.warns(UserWarning, match=r'b.npz reach 200 but those of .*a.npz'
                    r' only 0.784'):
    images.load_npz_sites(tmp_path, key=key, test_fraction=0.0)


def test_npz_sites_accept_small_channels_last(tmp_path, key):
  # 4x4 images with 5 channels were rejected as channels-first.
  _save_npz(tmp_path / 'a.npz', x=np.full((2, 4, 4, 5), 0.5),
            y=np.array([0, 1]))

  dataset = images.load_npz_sites(tmp_path, key=key, test_fraction=0.0)

  assert dataset.train.client(0)['x'].shape == (2, 4, 4, 5)


def test_npz_sites_folder_order(tmp_path, key):
  folder = tmp_path / 'hospitals'
  for name, seed in [('north', 0), ('east', 1), ('south', 2)]:
    pixels, labels = _site_arrays(9, seed)
    _save_npz(folder / f'{name}.npz', images=pixels, labels=labels)
  (folder / 'notes.txt').write_text('not a site')

  dataset = images.load_npz_sites(folder, key=key)

  assert dataset.client_names == ('east', 'north', 'south')
  assert dataset.name == 'hospitals'
  assert dataset.num_classes == 3
  assert dataset.source_files == tuple(
      folder / f'{name}.npz' for name in ('east', 'north', 'south')
  )
  np.testing.assert_array_equal(
      dataset.train.num_examples + dataset.test.num_examples, [9, 9, 9]
  )


def test_npz_sites_list_name_and_channels(tmp_path, key):
  pixels = np.zeros((4, 5, 4, 2), np.uint8)
  path = _save_npz(tmp_path / 'only.npz', images=pixels, labels=[0, 1, 0, 1])

  dataset = images.load_npz_sites([path], key=key)

  assert dataset.name == 'npz_sites'
  assert dataset.client_names == ('only',)
  assert dataset.feature_names == ('channel_0', 'channel_1')
  assert dataset.num_classes == 2


def test_npz_sites_num_classes(tmp_path, key):
  pixels, labels = _site_arrays(6, 0)
  path = _save_npz(tmp_path / 'a.npz', images=pixels, labels=labels)

  dataset = images.load_npz_sites([path], key=key, num_classes=7)

  assert dataset.num_classes == 7


@pytest.mark.parametrize('labels, message', [
    # range(2**40 + 1) was built to list the missing classes, which
    # exhausted memory.
    (np.array([0, 1, 0, 2**40]), r'such as \[2, 3, 4, 5, 6\]'),
    # 2**63 + 5 as uint64 wrapped to 5 in the int64 cast.
    (np.array([0, 0, 0, 2**63 + 5], np.uint64), 'does not fit int64'),
    # The int64 cast turned 1e300 into -2**63, reported as negative.
    (np.array([0.0, 1.0, 0.0, 1e300]),
     'label 1e[+]300 of image 3 is beyond the int32 range'),
])
def test_npz_sites_reject_huge_labels(tmp_path, key, labels, message):
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((4, 4, 4), np.uint8),
                   labels=labels)
  with pytest.raises(InputError, match=message):
    images.load_npz_sites([path], key=key)


def test_npz_sites_match_image_folder(tmp_path, key):
  # The same images as PNG files and as .npz arrays, in the folder's order
  # (class, then file name), give the same split for the same key.
  for site, seed in [('a', 0), ('b', 1)]:
    pixels, labels = _site_arrays(12, seed)
    order = np.argsort(labels, kind='stable')
    pixels, labels = pixels[order], labels[order]
    for index, (image, label) in enumerate(zip(pixels, labels)):
      _save_png(tmp_path / 'png' / site / f'class{label}' / f'{index:02d}.png',
                image)
    _save_npz(tmp_path / 'npz' / f'{site}.npz', images=pixels, labels=labels)

  from_folder = images.load_image_folder(tmp_path / 'png', key=key)
  from_npz = images.load_npz_sites(tmp_path / 'npz', key=key)

  for split in ('train', 'test'):
    folder_data = getattr(from_folder, split)
    npz_data = getattr(from_npz, split)
    np.testing.assert_array_equal(folder_data.examples['x'],
                                  npz_data.examples['x'])
    np.testing.assert_array_equal(folder_data.examples['y'],
                                  npz_data.examples['y'])


def test_npz_sites_missing_file(tmp_path, key):
  with pytest.raises(InputError, match='gone.npz does not exist'):
    images.load_npz_sites([tmp_path / 'gone.npz'], key=key)


def test_npz_sites_missing_folder(tmp_path, key):
  with pytest.raises(InputError, match='nowhere does not exist'):
    images.load_npz_sites(tmp_path / 'nowhere', key=key)


def test_npz_sites_empty_folder(tmp_path, key):
  (tmp_path / 'site.npy').write_bytes(b'')

  with pytest.raises(InputError, match='contains no .npz files'):
    images.load_npz_sites(tmp_path, key=key)


def test_npz_sites_missing_keys(tmp_path, key):
  path = _save_npz(tmp_path / 'a.npz', pixels=np.zeros((2, 3, 3)),
                   labels=[0, 1])

  with pytest.raises(InputError, match=r"no array named 'images' or 'x'. It "
                     r"contains \['labels', 'pixels'\]"):
    images.load_npz_sites([path], key=key)


def test_npz_sites_both_image_keys(tmp_path, key):
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((2, 3, 3)),
                   x=np.zeros((2, 3, 3)), labels=[0, 1])

  with pytest.raises(InputError, match="both 'images' and 'x'"):
    images.load_npz_sites([path], key=key)


def test_npz_sites_corrupt_file(tmp_path, key):
  path = tmp_path / 'a.npz'
  path.write_bytes(b'PK\x03\x04 this is not a zip archive')

  with pytest.raises(InputError, match=r'Could not read .*a\.npz'):
    images.load_npz_sites([path], key=key)


@pytest.mark.parametrize(
    'arrays, message',
    [
        ({'images': np.zeros((2, 3)), 'labels': [0, 1]},
         r'images have shape \(2, 3\)'),
        ({'images': np.zeros((2, 3, 3)), 'labels': [[0, 1]]},
         r'labels have shape \(1, 2\)'),
        ({'images': np.zeros((2, 3, 3)), 'labels': [0, 1, 1]},
         '2 images but 3 labels'),
        ({'images': np.zeros((0, 3, 3)), 'labels': np.zeros(0, int)},
         'contains no images'),
        ({'images': np.full((2, 3, 3), np.inf), 'labels': [0, 1]},
         'NaN or infinite values, first in image 0'),
        ({'images': np.zeros((2, 3, 3), np.int16), 'labels': [0, 1]},
         'dtype int16'),
        ({'images': np.zeros((2, 3, 3)), 'labels': [0, -2]},
         'label -2 of image 1 is negative'),
        ({'images': np.zeros((2, 3, 3)), 'labels': [0.5, 1.0]},
         'label 0.5 of image 0 is not an integer'),
    ],
    ids=['images_ndim', 'labels_ndim', 'lengths', 'empty', 'infinite',
         'signed', 'negative', 'fractional'],
)
def test_npz_sites_invalid_arrays(tmp_path, key, arrays, message):
  path = _save_npz(tmp_path / 'site.npz', **arrays)

  with pytest.raises(InputError, match=message):
    images.load_npz_sites([path], key=key)


def test_npz_sites_nan_images(tmp_path, key):
  pixels = np.zeros((3, 3, 3))
  pixels[2, 1, 1] = np.nan
  path = _save_npz(tmp_path / 'a.npz', images=pixels, labels=[0, 1, 0])

  with pytest.raises(InputError, match='NaN or infinite values, first in '
                     'image 2'):
    images.load_npz_sites([path], key=key)


def test_npz_sites_float64_beyond_float32(tmp_path, key):
  # 1e300 passed the float64 check, became inf in float32, and the error
  # named row 30 of the pooled images, no file, and partitioning.
  _save_npz(tmp_path / 'a.npz', images=np.zeros((20, 3, 3)),
            labels=np.arange(20) % 2)
  pixels = np.zeros((20, 3, 3))
  pixels[10, 1, 1] = 1e300
  _save_npz(tmp_path / 'b.npz', images=pixels, labels=np.arange(20) % 2)

  with pytest.raises(InputError) as error:
    images.load_npz_sites(tmp_path, key=key)
  message = str(error.value)

  assert 'b.npz: images contain values beyond the float32 range' in message
  assert 'first in image 10' in message
  assert 'counting from 0 in this file' in message
  assert 'partitioning' not in message


def test_npz_sites_missing_class_advice(tmp_path, key):
  # The message asked config users to pass `num_classes`, which is no
  # config key.
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((4, 3, 3)),
                   labels=[0, 2, 0, 2])

  with pytest.raises(InputError) as error:
    images.load_npz_sites([path], key=key)
  message = str(error.value)

  assert 'such as [1]' in message
  assert 'Relabel the classes as 0 to K - 1 with one mapping' in message
  assert 'numpy.unique' in message
  assert 'A Python caller can instead pass `num_classes`' in message


def test_npz_sites_shape_differs(tmp_path, key):
  _save_npz(tmp_path / 'a.npz', images=np.zeros((2, 3, 3)), labels=[0, 1])
  _save_npz(tmp_path / 'b.npz', images=np.zeros((2, 3, 4)), labels=[0, 1])

  with pytest.raises(InputError, match=r'b\.npz are shaped \(3, 4, 1\)'):
    images.load_npz_sites(tmp_path, key=key)


def test_npz_sites_label_out_of_range(tmp_path, key):
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((2, 3, 3)),
                   labels=[0, 4])

  with pytest.raises(InputError, match='label 4 is out of range for '
                     'num_classes=3'):
    images.load_npz_sites([path], key=key, num_classes=3)


def test_npz_sites_channels_first_rejected(tmp_path, key):
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((2, 3, 8, 8)),
                   labels=[0, 1])

  with pytest.raises(InputError, match=r'numpy\.moveaxis\(images, 1, -1\)'):
    images.load_npz_sites([path], key=key)


def test_npz_sites_label_gap_rejected(tmp_path, key):
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((4, 3, 3)),
                   labels=[0, 2, 0, 2])

  with pytest.raises(InputError,
                     match=r'1 of the classes 0 to 2 have no image, such as '
                     r'\[1\]'):
    images.load_npz_sites([path], key=key)


def test_npz_sites_label_gap_kept_with_num_classes(tmp_path, key):
  path = _save_npz(tmp_path / 'a.npz', images=np.zeros((4, 3, 3)),
                   labels=[0, 2, 0, 2])

  dataset = images.load_npz_sites([path], key=key, num_classes=3)

  assert dataset.num_classes == 3


def test_image_folder_class_empty_everywhere(tmp_path):
  _two_site_tree(tmp_path)
  (tmp_path / 'a' / 'unknown').mkdir()

  with pytest.raises(InputError, match="Class 'unknown' has no image"):
    images.scan_image_folder(tmp_path)


def test_npz_sites_repeated_stem(tmp_path, key):
  first = _save_npz(tmp_path / 'x' / 'site.npz', images=np.zeros((2, 3, 3)),
                    labels=[0, 1])
  second = _save_npz(tmp_path / 'y' / 'site.npz', images=np.zeros((2, 3, 3)),
                     labels=[0, 1])

  with pytest.raises(InputError, match="share the name 'site'"):
    images.load_npz_sites([first, second], key=key)

