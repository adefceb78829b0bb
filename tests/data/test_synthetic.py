"""Tests for the Synthetic(alpha, beta) generator."""

import time

import jax
import numpy as np
import pytest

from fedjax_med.data import synthetic
from fedjax_med.errors import InputError


def _small(key, **overrides):
  arguments = dict(
      key=key, num_clients=8, alpha=0.5, beta=0.5, num_features=6,
      num_classes=4, min_examples=3, max_examples=30, test_fraction=0.25,
  )  # fmt: skip
  arguments.update(overrides)
  return synthetic.synthetic(**arguments)


def _row_mask(num_examples, width):
  return np.arange(width)[None, :] < np.asarray(num_examples)[:, None]


def test_synthetic_shapes(key):
  dataset = _small(key)
  train_width = int(np.max(dataset.train.num_examples))
  test_width = int(np.max(dataset.test.num_examples))

  assert dataset.num_clients == 8
  assert dataset.num_features == 6
  assert dataset.num_classes == 4
  assert dataset.train.examples['x'].shape == (8, train_width, 6)
  assert dataset.train.examples['y'].shape == (8, train_width)
  assert dataset.test.examples['x'].shape == (8, test_width, 6)
  assert dataset.train.examples['x'].dtype == np.float32
  assert dataset.train.examples['y'].dtype == np.int32
  assert len(dataset.client_names) == 8
  assert len(dataset.feature_names) == 6


def test_synthetic_same_key_identical(key):
  first = _small(key)
  second = _small(key)

  for split in ('train', 'test'):
    for field in ('x', 'y'):
      np.testing.assert_array_equal(
          getattr(first, split).examples[field],
          getattr(second, split).examples[field],
      )
  np.testing.assert_array_equal(first.train.num_examples,
                                second.train.num_examples)


def test_synthetic_keys_differ(key):
  first = _small(key)
  second = _small(jax.random.fold_in(key, 1))

  assert not np.array_equal(first.train.examples['x'],
                            second.train.examples['x'])


def test_synthetic_padding_zero(key):
  dataset = _small(key, num_clients=50, min_examples=1)

  for data in (dataset.train, dataset.test):
    x = np.asarray(data.examples['x'])
    y = np.asarray(data.examples['y'])
    mask = _row_mask(data.num_examples, x.shape[1])
    assert not x[~mask].any()
    assert not y[~mask].any()
    assert np.all(np.abs(x[mask]).sum(axis=-1) > 0)


def test_synthetic_counts_in_bounds(key):
  dataset = _small(key, num_clients=200, min_examples=4, max_examples=12)
  total = np.asarray(dataset.train.num_examples + dataset.test.num_examples)

  assert total.min() >= 4
  assert total.max() <= 12
  # lognormal(4, 2) extra rows reach the cap for most clients.
  assert (total == 12).sum() > 100


def test_synthetic_train_test_split(key):
  dataset = _small(key, num_clients=100, test_fraction=0.25)
  num_train = np.asarray(dataset.train.num_examples)
  num_test = np.asarray(dataset.test.num_examples)

  np.testing.assert_array_equal(
      num_train, np.floor(0.75 * (num_train + num_test))
  )


def test_synthetic_fedprox_split_rule(key):
  # FedProx keeps int(0.9 * n) train rows, so 10 rows give 9 train rows.
  dataset = _small(key, min_examples=10, max_examples=10, test_fraction=0.1)

  np.testing.assert_array_equal(dataset.train.num_examples, 9)
  np.testing.assert_array_equal(dataset.test.num_examples, 1)


def test_synthetic_one_test_row_minimum(key):
  # floor(0.9 * 2) = 1 train row, so the other row is a test row.
  dataset = _small(key, min_examples=2, max_examples=2, test_fraction=0.1)

  np.testing.assert_array_equal(dataset.train.num_examples, 1)
  np.testing.assert_array_equal(dataset.test.num_examples, 1)


def test_synthetic_zero_test_rows(key):
  dataset = _small(key, min_examples=2, max_examples=2, test_fraction=0.0)

  np.testing.assert_array_equal(dataset.train.num_examples, 2)
  np.testing.assert_array_equal(dataset.test.num_examples, 0)
  assert dataset.test.examples['x'].shape == (8, 1, 6)
  assert not np.asarray(dataset.test.examples['x']).any()


def test_synthetic_labels_in_range(key):
  dataset = _small(key, num_clients=40)
  labels = np.asarray(dataset.train.examples['y'])
  mask = _row_mask(dataset.train.num_examples, labels.shape[1])

  assert labels[mask].min() >= 0
  assert labels[mask].max() < 4


def test_synthetic_feature_variance(key):
  """With beta = 0 and a shared mean, feature j has variance ~ 1 + j^-1.2."""
  dataset = _small(
      key, num_clients=4000, alpha=0.0, beta=0.0, num_features=3,
      min_examples=20, max_examples=20, test_fraction=0.5,
  )  # fmt: skip
  x = np.asarray(dataset.train.examples['x'], dtype=np.float64)
  # v_k ~ N(0, 1) per client plus row noise with variance j^-1.2.
  variance = x.reshape(-1, 3).var(axis=0)
  expected = 1.0 + np.arange(1, 4) ** -1.2

  np.testing.assert_allclose(variance, expected, rtol=0.08)


def test_synthetic_alpha_zero_labels_vary(key):
  dataset = _small(key, num_clients=20, alpha=0.0, beta=0.0)
  labels = np.asarray(dataset.train.examples['y'])
  mask = _row_mask(dataset.train.num_examples, labels.shape[1])

  assert len(np.unique(labels[mask])) > 1


@pytest.mark.parametrize(
    'overrides, name',
    [
        ({'num_clients': 0}, 'num_clients'),
        ({'alpha': -1.0}, 'alpha'),
        ({'beta': -0.1}, 'beta'),
        ({'min_examples': 0}, 'min_examples'),
        ({'min_examples': 5, 'max_examples': 4}, 'max_examples'),
        ({'num_classes': 1}, 'num_classes'),
        ({'num_features': 0}, 'num_features'),
        ({'test_fraction': 1.0}, 'test_fraction'),
        ({'lognormal_sigma': -1.0}, 'lognormal_sigma'),
        ({'test_fraction': '0.2'}, 'test_fraction'),
        ({'num_clients': 4.0}, 'num_clients'),
        ({'alpha': '1'}, 'alpha'),
        ({'lognormal_mean': float('nan')}, 'lognormal_mean'),
    ],
)
def test_synthetic_invalid_arguments(key, overrides, name):
  with pytest.raises(InputError, match=f'`{name}`'):
    _small(key, **overrides)


def test_synthetic_100k_clients(key):
  start = time.perf_counter()
  dataset = synthetic.synthetic(
      key=key, num_clients=100_000, alpha=1.0, beta=1.0, num_features=10,
      min_examples=5, max_examples=20,
  )  # fmt: skip
  jax.block_until_ready((dataset.train.examples, dataset.test.examples))
  elapsed = time.perf_counter() - start
  total = np.asarray(dataset.train.num_examples + dataset.test.num_examples)

  assert dataset.train.examples['x'].shape == (100_000, 18, 10)
  assert dataset.test.examples['x'].shape == (100_000, 2, 10)
  assert total.min() >= 5
  assert total.max() == 20
  # A loose bound, so that a loaded CI machine does not fail the test. A
  # shared 2-core CPU took 2-3.5 s, compile included (jax 0.10.2).
  assert elapsed < 30.0
