"""Tests for partitions of a pooled dataset into federated clients."""

import math

import jax
import numpy as np
import pytest

from fedjax_med.data import federated
from fedjax_med.data import partitions
from fedjax_med.data import tabular
from fedjax_med.errors import InputError


def _labels(class_sizes):
  """Return labels with `class_sizes[k]` rows of class k, interleaved."""
  labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
  return np.random.default_rng(0).permutation(labels)


def _assert_each_row_once(client_indices, num_examples):
  every_row = np.concatenate(client_indices)
  np.testing.assert_array_equal(np.sort(every_row), np.arange(num_examples))


def _label_shares(labels, rows, num_classes):
  return np.bincount(labels[rows], minlength=num_classes) / len(rows)


# Each random scheme as (labels, key) -> client indices.
_SCHEMES = {
    'dirichlet': lambda labels, key: partitions.partition_dirichlet(
        labels, num_clients=7, alpha=0.5, key=key
    ),
    'pathological': lambda labels, key: partitions.partition_pathological(
        labels, num_clients=7, classes_per_client=2, key=key
    ),
    'quantity_skew': lambda labels, key: partitions.partition_quantity_skew(
        len(labels), num_clients=7, key=key, sigma=1.0
    ),
}


@pytest.mark.parametrize('scheme', sorted(_SCHEMES))
def test_scheme_assigns_each_row_once(scheme, key):
  labels = _labels([120, 80, 40, 60, 100])

  client_indices = _SCHEMES[scheme](labels, key)

  assert len(client_indices) == 7
  _assert_each_row_once(client_indices, len(labels))
  for rows in client_indices:
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, np.sort(rows))


@pytest.mark.parametrize('scheme', sorted(_SCHEMES))
def test_scheme_same_key_same_partition(scheme, key):
  labels = _labels([120, 80, 40, 60, 100])

  first = _SCHEMES[scheme](labels, key)
  second = _SCHEMES[scheme](labels, jax.random.key(0))

  for rows_first, rows_second in zip(first, second, strict=True):
    np.testing.assert_array_equal(rows_first, rows_second)


@pytest.mark.parametrize('scheme', sorted(_SCHEMES))
def test_scheme_keys_differ(scheme, key):
  labels = _labels([120, 80, 40, 60, 100])

  first = _SCHEMES[scheme](labels, key)
  second = _SCHEMES[scheme](labels, jax.random.fold_in(key, 1))

  assert any(
      not np.array_equal(rows_first, rows_second)
      for rows_first, rows_second in zip(first, second)
  )


@pytest.mark.parametrize('alpha', [0.01, 1.0, 1e3])
def test_dirichlet_more_clients_than_class_rows(alpha, key):
  # Class 2 has 3 rows for 50 clients, so most clients get none of it.
  labels = _labels([40, 25, 3])

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=50, alpha=alpha, key=key, min_examples=0
  )

  assert len(client_indices) == 50
  _assert_each_row_once(client_indices, len(labels))


def test_dirichlet_large_alpha_near_global(key):
  labels = _labels([2000] * 5)
  global_shares = np.full(5, 0.2)

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=10, alpha=1e3, key=key
  )

  # With alpha = 1000 and 10 clients, each share p_kc ~ Beta(1000, 9000)
  # has a relative std of about 3%, so a client's total variation distance
  # to the global label distribution is about 0.012. Measured with this
  # function over keys 0 to 19, the largest client distance was 0.024,
  # alpha = 10 gave 0.17 and alpha = 1 gave 0.5, so 0.05 separates
  # near-IID from skewed.
  for rows in client_indices:
    shares = _label_shares(labels, rows, 5)
    assert 0.5 * np.abs(shares - global_shares).sum() < 0.05


def _fraction_dominated(labels, client_indices):
  """Fraction of non-empty clients whose top label has >= 90% of rows."""
  nonempty = [rows for rows in client_indices if len(rows)]
  top_shares = [
      np.bincount(labels[rows]).max() / len(rows) for rows in nonempty
  ]
  return np.mean(np.asarray(top_shares) >= 0.9)


def test_dirichlet_small_alpha_one_class_dominates(key):
  labels = _labels([2000] * 5)

  fractions = []
  for index in range(10):
    client_indices = partitions.partition_dirichlet(
        labels,
        num_clients=20,
        alpha=0.01,
        key=jax.random.fold_in(key, index),
        min_examples=0,
    )
    fractions.append(_fraction_dominated(labels, client_indices))

  # With alpha = 0.01 nearly all of a class goes to one client, so a
  # non-empty client is dominated by one class unless it wins two classes.
  # Measured with this function over keys 0 to 99, the fraction averaged
  # 0.86 with a std of about 0.1, so the mean of 10 keys lies above 0.7 by
  # 5 standard errors. alpha = 1 gave 0 on every key.
  assert np.mean(fractions) > 0.7


def test_dirichlet_moderate_alpha_no_dominance(key):
  labels = _labels([2000] * 5)

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=20, alpha=1.0, key=key
  )

  assert _fraction_dominated(labels, client_indices) < 0.3


def test_dirichlet_min_examples_met(key):
  labels = _labels([200] * 10)

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=20, alpha=0.1, key=key, min_examples=5
  )

  assert min(len(rows) for rows in client_indices) >= 5
  _assert_each_row_once(client_indices, len(labels))


def test_dirichlet_min_zero_keeps_empty_clients(key):
  labels = _labels([100] * 3)

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=40, alpha=0.01, key=key, min_examples=0
  )

  assert len(client_indices) == 40
  assert any(len(rows) == 0 for rows in client_indices)
  _assert_each_row_once(client_indices, len(labels))


def test_dirichlet_unreachable_min_raises(key):
  labels = _labels([100] * 3)

  with pytest.raises(InputError, match='max_draws=5'):
    partitions.partition_dirichlet(
        labels, num_clients=40, alpha=0.01, key=key, max_draws=5
    )


def test_dirichlet_skips_empty_class(key):
  labels = _labels([50, 0, 50])

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=4, alpha=1.0, key=key, num_classes=5
  )

  _assert_each_row_once(client_indices, len(labels))


@pytest.mark.parametrize('alpha', [1e300, 5e307, np.finfo(np.float64).max])
@pytest.mark.parametrize('min_examples', [0, 1])
def test_dirichlet_huge_alpha_equal_shares(alpha, min_examples, key):
  # numpy's Dirichlet draw returns all-zero shares once C * alpha overflows,
  # which would give every row to the last client. The limit gives each
  # client 1 / C of every class.
  labels = _labels([40, 40, 40])

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=4, alpha=alpha, key=key, min_examples=min_examples
  )

  _assert_each_row_once(client_indices, len(labels))
  for rows in client_indices:
    np.testing.assert_array_equal(np.bincount(labels[rows]), [10, 10, 10])


@pytest.mark.parametrize('alpha', [1e-300, 1e-310, 5e-324])
def test_dirichlet_tiny_alpha_one_owner(alpha, key):
  labels = _labels([30, 20, 10])

  client_indices = partitions.partition_dirichlet(
      labels, num_clients=5, alpha=alpha, key=key, min_examples=0
  )

  _assert_each_row_once(client_indices, len(labels))
  for label in range(3):
    holders = [rows for rows in client_indices if label in labels[rows]]
    assert len(holders) == 1


@pytest.mark.parametrize('alpha', [1e-310, 5e-324])
def test_dirichlet_tiny_alpha_uniform_owner(alpha, key):
  # numpy's draw at alpha 5e-324 gives a class to the last of 4 clients
  # more than half the time. The limit picks a uniform client, so each of
  # the 4 gets about 100 of 400 keys, with a binomial std of 8.7.
  wins = np.zeros(4, np.int64)
  for index in range(400):
    client_indices = partitions.partition_dirichlet(
        np.zeros(8, np.int64), num_clients=4, alpha=alpha,
        key=jax.random.fold_in(key, index), min_examples=0,
    )
    wins[np.argmax([len(rows) for rows in client_indices])] += 1

  for client in range(4):
    assert 60 <= wins[client] <= 140, wins


@pytest.mark.parametrize(
    'class_sizes, num_clients, classes_per_client',
    [
        ([300, 10, 55, 90, 120, 7, 64, 33, 200, 41], 20, 2),
        ([100] * 5, 7, 3),
        ([2, 50, 50], 10, 2),  # Class 0 has fewer rows than clients.
        ([5, 5, 5, 5], 3, 4),  # Every client gets every class.
        ([30, 30, 30, 30], 2, 2),  # One client per class pair.
    ],
)
def test_pathological_exactly_k_labels(
    class_sizes, num_clients, classes_per_client, key
):
  labels = _labels(class_sizes)

  client_indices = partitions.partition_pathological(
      labels,
      num_clients=num_clients,
      classes_per_client=classes_per_client,
      key=key,
  )

  assert len(client_indices) == num_clients
  _assert_each_row_once(client_indices, len(labels))
  for rows in client_indices:
    assert len(np.unique(labels[rows])) == classes_per_client


def test_pathological_balanced_equal_sizes(key):
  # 10 classes of 100 rows, 20 clients of 2 classes: each class is cut into
  # 4 pieces of 25 rows, so every client has exactly 50 rows, as with
  # McMahan's 40 equal shards.
  labels = _labels([100] * 10)

  client_indices = partitions.partition_pathological(
      labels, num_clients=20, classes_per_client=2, key=key
  )

  assert [len(rows) for rows in client_indices] == [50] * 20


def test_pathological_class_pairs_vary(key):
  labels = _labels([100] * 10)

  client_indices = partitions.partition_pathological(
      labels, num_clients=50, classes_per_client=2, key=key
  )

  # A fixed round-robin assignment would repeat at most 5 pairs.
  pairs = {tuple(np.unique(labels[rows])) for rows in client_indices}
  assert len(pairs) > 10


@pytest.mark.parametrize(
    'class_sizes, num_clients, classes_per_client, message',
    [
        ([10, 10, 10], 4, 4, 'exceeds the 3 classes present'),
        ([10, 10, 10, 10, 10], 2, 2, 'some rows would have no client'),
        ([1, 1, 1], 3, 2, 'Too few rows'),
    ],
)
def test_pathological_impossible_raises(
    class_sizes, num_clients, classes_per_client, message, key
):
  labels = _labels(class_sizes)

  with pytest.raises(InputError, match=message):
    partitions.partition_pathological(
        labels,
        num_clients=num_clients,
        classes_per_client=classes_per_client,
        key=key,
    )


def test_pathological_k_above_num_classes_raises(key):
  with pytest.raises(InputError, match='classes_per_client=6'):
    partitions.partition_pathological(
        _labels([10] * 5), num_clients=3, classes_per_client=6, key=key
    )


def _client_sizes(client_indices):
  return np.asarray([len(rows) for rows in client_indices], np.float64)


def _gini(sizes):
  sizes = np.sort(sizes)
  ranks = np.arange(1, len(sizes) + 1)
  return (2 * ranks - len(sizes) - 1) @ sizes / (len(sizes) * sizes.sum())


def test_quantity_skew_lognormal_gini(key):
  client_indices = partitions.partition_quantity_skew(
      500_000, num_clients=1000, key=key, sigma=1.0, min_examples=0
  )
  sizes = _client_sizes(client_indices)

  # The Gini coefficient of a log-normal with log-std sigma is erf(sigma / 2),
  # which is 0.52 for sigma = 1, and equal sizes give 0. Measured over keys
  # 0 to 9 with 1000 clients, the sample Gini stayed within 0.03 of 0.52.
  assert sizes.sum() == 500_000
  assert abs(_gini(sizes) - math.erf(0.5)) < 0.05


def test_quantity_skew_lognormal_log_std(key):
  client_indices = partitions.partition_quantity_skew(
      500_000, num_clients=1000, key=key, sigma=0.5, min_examples=0
  )
  sizes = _client_sizes(client_indices)

  # Normalizing the weights shifts log(size) but keeps its std at sigma.
  # The std of a sample std of 1000 normals is about sigma / 45.
  assert abs(np.log(sizes).std() - 0.5) < 0.05


def test_quantity_skew_power_law_tail_index(key):
  client_indices = partitions.partition_quantity_skew(
      500_000,
      num_clients=1000,
      key=key,
      distribution='power_law',
      tail_index=1.5,
      min_examples=0,
  )
  sizes = _client_sizes(client_indices)

  # Sizes are proportional to Pareto weights, and a Pareto tail index is
  # scale-free, so the maximum-likelihood (Hill) estimate over all clients
  # recovers it with a standard error of about 1.5 / sqrt(1000) = 0.05.
  tail_estimate = len(sizes) / np.log(sizes / sizes.min()).sum()
  assert sizes.sum() == 500_000
  assert abs(tail_estimate - 1.5) < 0.2


def test_quantity_skew_min_examples_met(key):
  client_indices = partitions.partition_quantity_skew(
      2000, num_clients=100, key=key, sigma=3.0, min_examples=7
  )
  sizes = _client_sizes(client_indices)

  assert sizes.min() >= 7
  assert sizes.sum() == 2000
  assert sizes.max() / sizes.min() > 10
  _assert_each_row_once(client_indices, 2000)


def test_quantity_skew_sigma_zero_equal_sizes(key):
  client_indices = partitions.partition_quantity_skew(
      1003, num_clients=10, key=key, sigma=0.0
  )
  sizes = _client_sizes(client_indices)

  assert sizes.max() - sizes.min() <= 1
  assert sizes.sum() == 1003


def test_quantity_skew_more_clients_than_rows(key):
  client_indices = partitions.partition_quantity_skew(
      5, num_clients=12, key=key, min_examples=0
  )

  assert len(client_indices) == 12
  _assert_each_row_once(client_indices, 5)


@pytest.mark.parametrize(
    'num_examples, num_clients, tail_index, num_keys',
    [(100_000, 1000, 0.01, 20), (10, 3, 1e-3, 5), (50, 5, 5e-324, 5)],
)
def test_quantity_skew_tiny_tail_valid(
    num_examples, num_clients, tail_index, num_keys, key
):
  # A tiny tail index makes numpy's Pareto draws inf, and inf - inf would
  # give NaN weights and negative client sizes.
  for index in range(num_keys):
    client_indices = partitions.partition_quantity_skew(
        num_examples, num_clients=num_clients,
        key=jax.random.fold_in(key, index), distribution='power_law',
        tail_index=tail_index, min_examples=1,
    )
    sizes = _client_sizes(client_indices)

    _assert_each_row_once(client_indices, num_examples)
    assert sizes.min() >= 1


@pytest.mark.parametrize('parameters', [
    {'distribution': 'power_law', 'tail_index': 5e-324},
    {'sigma': np.finfo(np.float64).max},
])
def test_quantity_skew_extreme_one_client(parameters, key):
  # In the limit one weight dwarfs the rest, so one client gets every row
  # beyond the other clients' `min_examples`.
  client_indices = partitions.partition_quantity_skew(
      100, num_clients=5, key=key, min_examples=3, **parameters
  )

  np.testing.assert_array_equal(
      np.sort(_client_sizes(client_indices)), [3, 3, 3, 3, 88]
  )
  _assert_each_row_once(client_indices, 100)


def test_group_split_reproduces_groups():
  groups = np.asarray(['cleveland', 'va', 'hungary', 'va', 'cleveland', 'zz'])

  client_indices, names = partitions.partition_by_group(groups)

  assert names == ('cleveland', 'va', 'hungary', 'zz')
  expected = [[0, 4], [1, 3], [2], [5]]
  for rows, expected_rows in zip(client_indices, expected, strict=True):
    np.testing.assert_array_equal(rows, expected_rows)


def test_group_split_integer_ids():
  groups = np.random.default_rng(1).integers(0, 6, size=500)

  client_indices, names = partitions.partition_by_group(groups)

  _assert_each_row_once(client_indices, 500)
  for rows, name in zip(client_indices, names, strict=True):
    np.testing.assert_array_equal(rows, np.flatnonzero(groups == int(name)))


def _pooled(num_examples=400, num_features=3, num_classes=4):
  """Return `x` whose column 0 is the row index, and balanced labels."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(num_examples, num_features))
  x[:, 0] = np.arange(num_examples)
  y = np.arange(num_examples) % num_classes
  return x, y


def _real_row_ids(data):
  return [
      data.examples['x'][c, : data.num_examples[c], 0].astype(np.int64)
      for c in range(data.num_clients)
  ]


def test_gather_clients_rows_match(key):
  x, y = _pooled()
  client_indices = partitions.partition_dirichlet(
      y, num_clients=5, alpha=0.5, key=key
  )

  data = partitions.gather_clients(x, y, client_indices)

  assert data.examples['x'].dtype == np.float32
  assert data.examples['y'].dtype == np.int32
  for client, rows in enumerate(client_indices):
    np.testing.assert_array_equal(data.num_examples[client], len(rows))
    np.testing.assert_allclose(data.client(client)['x'], x[rows], rtol=1e-6)
    np.testing.assert_array_equal(data.client(client)['y'], y[rows])


def test_build_dataset_splits_each_row_once(key):
  x, y = _pooled()
  client_indices = partitions.partition_dirichlet(
      y, num_clients=6, alpha=0.5, key=key
  )

  dataset = partitions.build_dataset(
      x, y, client_indices, key=key, test_fraction=0.25
  )

  train_ids = _real_row_ids(dataset.train)
  test_ids = _real_row_ids(dataset.test)
  _assert_each_row_once(train_ids + test_ids, len(y))
  for rows, train_rows, test_rows in zip(client_indices, train_ids, test_ids):
    assert len(test_rows) == math.ceil(0.25 * len(rows))
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train_rows, test_rows])), rows
    )
  assert dataset.num_clients == 6
  assert dataset.num_classes == 4
  assert dataset.client_names == tuple(f'client_{c}' for c in range(6))
  assert dataset.feature_names == ('x0', 'x1', 'x2')


def test_build_dataset_standardizes_each_client(key):
  # Rows z-scored before pooling carried statistics of rows that became
  # other clients' test rows; each new client is now z-scored from its own
  # train rows.
  x, y = _pooled()
  x[:, 1] = x[:, 1] * 30.0 + 100.0
  client_indices = partitions.partition_dirichlet(
      y, num_clients=5, alpha=1.0, key=key)

  raw = partitions.build_dataset(x, y, client_indices, key=key,
                                 test_fraction=0.25)
  scaled = partitions.build_dataset(x, y, client_indices, key=key,
                                    test_fraction=0.25, standardize=True)

  for client in range(5):
    n_train = int(raw.train.num_examples[client])
    n_test = int(raw.test.num_examples[client])
    expected_train, expected_test = tabular.zscore(
        np.asarray(raw.train.examples['x'][client, :n_train]),
        np.asarray(raw.test.examples['x'][client, :n_test]))
    np.testing.assert_array_equal(
        scaled.train.examples['x'][client, :n_train], expected_train)
    np.testing.assert_array_equal(
        scaled.test.examples['x'][client, :n_test], expected_test)
    np.testing.assert_allclose(expected_train.mean(axis=0), 0.0, atol=1e-5)


def test_build_dataset_same_key_same_split(key):
  x, y = _pooled()
  client_indices = partitions.partition_quantity_skew(
      len(y), num_clients=4, key=key
  )

  first = partitions.build_dataset(x, y, client_indices, key=key)
  second = partitions.build_dataset(x, y, client_indices, key=key)
  third = partitions.build_dataset(
      x, y, client_indices, key=jax.random.fold_in(key, 1)
  )

  np.testing.assert_array_equal(
      first.test.examples['x'], second.test.examples['x']
  )
  assert not np.array_equal(first.test.examples['x'], third.test.examples['x'])


def test_build_dataset_zero_test_fraction(key):
  x, y = _pooled()
  client_indices, names = partitions.partition_by_group(y % 3)

  dataset = partitions.build_dataset(
      x, y, client_indices, key=key, test_fraction=0.0, client_names=names
  )

  np.testing.assert_array_equal(dataset.test.num_examples, [0, 0, 0])
  np.testing.assert_array_equal(
      dataset.train.num_examples, [len(rows) for rows in client_indices]
  )
  assert dataset.client_names == ('0', '1', '2')


def test_build_dataset_overlap_raises(key):
  x, y = _pooled()

  with pytest.raises(InputError, match='Row 3 is listed 2 times'):
    partitions.build_dataset(x, y, [np.arange(5), np.arange(3, 8)], key=key)


def _data_from_clients(client_x):
  return federated.stack_clients(
      [{'x': x, 'y': np.zeros(len(x), np.int32)} for x in client_x]
  )


def test_feature_shift_closed_form_moments(key):
  rng = np.random.default_rng(3)
  base = rng.normal(loc=[1.0, -2.0], scale=[1.0, 3.0], size=(20_000, 2))
  data = _data_from_clients([base, base[:15_000], base[:5_000]])
  shift = partitions.FeatureShift(
      scales=np.asarray([[1.0, 1.0], [2.0, 0.5], [0.25, 3.0]]),
      offsets=np.asarray([[0.0, 0.0], [5.0, -1.0], [-3.0, 2.0]]),
      noise_stds=np.asarray([0.0, 1.0, 2.0]),
  )

  shifted = partitions.apply_feature_shift(data, shift, key=key)

  for client in range(3):
    original = data.client(client)['x'].astype(np.float64)
    moved = shifted.client(client)['x'].astype(np.float64)
    scales = shift.scales[client]
    noise_std = shift.noise_stds[client]
    expected_mean = scales * original.mean(0) + shift.offsets[client]
    expected_std = np.sqrt(scales**2 * original.var(0) + noise_std**2)
    # The noise mean has a standard error of noise_std / sqrt(rows), which
    # is at most 2 / sqrt(5000) = 0.028. The sample variance of the noise
    # has a relative standard error of about sqrt(2 / rows) = 2%.
    np.testing.assert_allclose(moved.mean(0), expected_mean, atol=0.12)
    np.testing.assert_allclose(moved.std(0), expected_std, rtol=0.05)


def test_feature_shift_zero_noise_is_exact(key):
  base = np.random.default_rng(4).normal(size=(30, 4))
  data = _data_from_clients([base, base[:10]])
  shift = partitions.draw_feature_shift(
      key=key,
      num_clients=2,
      num_channels=4,
      scale_std=0.5,
      offset_std=2.0,
      max_noise_std=0.0,
  )

  shifted = partitions.apply_feature_shift(data, shift, key=key)

  for client in range(2):
    np.testing.assert_allclose(
        shifted.client(client)['x'],
        shift.scales[client] * data.client(client)['x'] + shift.offsets[client],
        rtol=1e-5,
        atol=1e-5,
    )


def test_feature_shift_keeps_padding_and_labels(key):
  base = np.random.default_rng(5).normal(size=(8, 3))
  data = federated.stack_clients([
      {'x': base, 'y': np.arange(8, dtype=np.int32)},
      {'x': base[:3], 'y': np.arange(3, dtype=np.int32)},
      {'x': base[:0], 'y': np.arange(0, dtype=np.int32)},
  ])
  shift = partitions.draw_feature_shift(
      key=key,
      num_clients=3,
      num_channels=3,
      scale_std=1.0,
      offset_std=1.0,
      max_noise_std=1.0,
  )

  shifted = partitions.apply_feature_shift(data, shift, key=key)

  np.testing.assert_array_equal(shifted.examples['x'][1, 3:], 0.0)
  np.testing.assert_array_equal(shifted.examples['x'][2], 0.0)
  np.testing.assert_array_equal(shifted.examples['y'], data.examples['y'])
  np.testing.assert_array_equal(shifted.num_examples, data.num_examples)
  assert not np.allclose(shifted.examples['x'][0], data.examples['x'][0])


def test_draw_feature_shift_statistics(key):
  shift = partitions.draw_feature_shift(
      key=key,
      num_clients=4000,
      num_channels=2,
      scale_std=0.3,
      offset_std=2.0,
      max_noise_std=0.5,
  )

  # 8000 draws per gain and offset give std estimates within about 1%.
  assert shift.scales.shape == (4000, 2)
  assert shift.noise_stds.shape == (4000,)
  assert np.all(shift.scales > 0)
  assert abs(np.log(shift.scales).std() - 0.3) < 0.015
  assert abs(np.median(shift.scales) - 1.0) < 0.02
  assert abs(shift.offsets.std() - 2.0) < 0.1
  assert shift.noise_stds.min() >= 0.0
  assert shift.noise_stds.max() <= 0.5
  assert abs(shift.noise_stds.mean() - 0.25) < 0.02


def test_shift_dataset_same_shift_both_splits(key):
  x, y = _pooled()
  client_indices = partitions.partition_pathological(
      y, num_clients=4, classes_per_client=2, key=key
  )
  dataset = partitions.build_dataset(x, y, client_indices, key=key)

  shifted, shift = partitions.shift_dataset(
      dataset, key=key, scale_std=0.5, offset_std=1.0, max_noise_std=0.0
  )

  for split in ('train', 'test'):
    original = getattr(dataset, split)
    moved = getattr(shifted, split)
    for client in range(4):
      np.testing.assert_allclose(
          moved.client(client)['x'],
          shift.scales[client] * original.client(client)['x']
          + shift.offsets[client],
          rtol=1e-5,
          atol=1e-4,
      )


def test_shift_shape_mismatch_raises(key):
  data = _data_from_clients([np.zeros((4, 3)), np.zeros((2, 3))])
  shift = partitions.FeatureShift(
      scales=np.ones((2, 2)), offsets=np.zeros((2, 3)), noise_stds=np.zeros(2)
  )

  with pytest.raises(InputError, match=r'shift.scales'):
    partitions.apply_feature_shift(data, shift, key=key)


@pytest.mark.parametrize('field', ['scales', 'offsets'])
@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_nonfinite_shift_rejected(key, field, value):
  data = _data_from_clients([np.ones((4, 3)), np.ones((2, 3))])
  values = {'scales': np.ones((2, 3)), 'offsets': np.zeros((2, 3))}
  values[field][1, 2] = value
  shift = partitions.FeatureShift(**values, noise_stds=np.zeros(2))

  with pytest.raises(InputError, match=f'shift.{field}` must be finite'):
    partitions.apply_feature_shift(data, shift, key=key)


def test_shift_overflow_names_client(key):
  # Every value is finite, but 1e30 * 1e10 is beyond float32.
  data = _data_from_clients([np.ones((4, 3)), np.full((2, 3), 1e10)])
  shift = partitions.FeatureShift(
      scales=np.full((2, 3), 1e30), offsets=np.zeros((2, 3)),
      noise_stds=np.zeros(2))

  with pytest.raises(InputError, match='client 1 overflow float32'):
    partitions.apply_feature_shift(data, shift, key=key)


@pytest.mark.parametrize('argument', [
    'scale_std', 'offset_std', 'max_noise_std'])
def test_draw_beyond_float32_names_argument(key, argument):
  spreads = {'scale_std': 0.0, 'offset_std': 0.0, 'max_noise_std': 0.0}
  # exp(1e3 * z) and 1e39 * z leave float32 for most z.
  spreads[argument] = 1e3 if argument == 'scale_std' else 1e39

  with pytest.raises(InputError, match=f'`{argument}` .* float32'):
    partitions.draw_feature_shift(
        key=key, num_clients=4, num_channels=3, **spreads)


_LABELS = _labels([20, 20, 20])


@pytest.mark.parametrize(
    'call, message',
    [
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=3, alpha=0.0, key=key
            ),
            'alpha',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=3, alpha=float('nan'), key=key
            ),
            'alpha',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=3, alpha=float('inf'), key=key
            ),
            'alpha',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=0, alpha=1.0, key=key
            ),
            'num_clients',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=3, alpha=1.0, key=key, num_classes=2
            ),
            'Label 2 is out of range',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                np.asarray([0, 1, -1]), num_clients=2, alpha=1.0, key=key
            ),
            'must be >= 0',
        ),
        (
            # 2**32 was stored as int32 class 0.
            lambda key: partitions.partition_dirichlet(
                np.asarray([0, 1, 2**32]), num_clients=2, alpha=1.0, key=key
            ),
            'label 4294967296, above the int32 maximum',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                np.asarray([0.0, 1.0]), num_clients=2, alpha=1.0, key=key
            ),
            'integer dtype',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=3, alpha=1.0, key=0
            ),
            'JAX PRNG key',
        ),
        (
            lambda key: partitions.partition_dirichlet(
                _LABELS, num_clients=61, alpha=1.0, key=key
            ),
            'need 61 rows',
        ),
        (
            lambda key: partitions.partition_pathological(
                _LABELS, num_clients=0, classes_per_client=1, key=key
            ),
            'num_clients',
        ),
        (
            lambda key: partitions.partition_quantity_skew(
                60, num_clients=3, key=key, distribution='power_law', sigma=1.0
            ),
            'sigma',
        ),
        (
            lambda key: partitions.partition_quantity_skew(
                60, num_clients=3, key=key, tail_index=2.0
            ),
            'tail_index',
        ),
        (
            lambda key: partitions.partition_quantity_skew(
                60, num_clients=3, key=key, distribution='zipf'
            ),
            'distribution',
        ),
        (
            lambda key: partitions.partition_quantity_skew(
                60, num_clients=3, key=key, sigma=-1.0
            ),
            'sigma',
        ),
        (
            lambda key: partitions.partition_quantity_skew(
                60, num_clients=7, key=key, min_examples=10
            ),
            'need 70 rows',
        ),
        (
            lambda key: partitions.partition_by_group(
                np.asarray([1.0, np.nan])
            ),
            'NaN',
        ),
        (
            lambda key: partitions.partition_by_group(np.asarray([])),
            'non-empty',
        ),
        (
            lambda key: partitions.draw_feature_shift(
                key=key,
                num_clients=2,
                num_channels=2,
                scale_std=-0.1,
                offset_std=1.0,
                max_noise_std=1.0,
            ),
            'scale_std',
        ),
    ],
)
def test_invalid_arguments_raise(call, message, key):
  with pytest.raises(InputError, match=message):
    call(key)


def test_nan_features_raise(key):
  x, y = _pooled()
  x[7, 1] = np.nan

  with pytest.raises(InputError, match='first in row 7'):
    partitions.gather_clients(x, y, [np.arange(len(y))])
  with pytest.raises(InputError, match='first in row 7'):
    partitions.build_dataset(x, y, [np.arange(len(y))], key=key)


def test_features_beyond_float32_raise(key):
  # 1e300 passed the float64 finiteness check and became inf in float32.
  x, y = _pooled()
  x = x.astype(np.float64)
  x[7, 1] = 1e300

  with pytest.raises(InputError) as error:
    partitions.build_dataset(x, y, [np.arange(len(y))], key=key)
  message = str(error.value)

  assert 'beyond the float32 range' in message
  assert 'first in row 7' in message
  assert 'largest magnitude 1e+300' in message


@pytest.mark.parametrize(
    'test_fraction, client_indices, message',
    [
        (1.0, [np.arange(10)], 'test_fraction'),
        (-0.1, [np.arange(10)], 'test_fraction'),
        (0.2, [np.asarray([0, 400])], r'outside \[0, 400\)'),
        (0.2, [np.asarray([0.5])], 'integer array'),
        (0.2, [], 'client_indices'),
    ],
)
def test_build_dataset_invalid_raises(
    test_fraction, client_indices, message, key
):
  x, y = _pooled()

  with pytest.raises(InputError, match=message):
    partitions.build_dataset(
        x, y, client_indices, key=key, test_fraction=test_fraction
    )


def test_dirichlet_sizes_do_not_depend_on_client_index():
  # Near-equal shares rounded at the same cut points for every class and
  # seed: at alpha 1e6, clients 2 and 7 of 100 always got 10 rows and the
  # others 20, so a client's size was set by its index.
  labels = np.repeat(np.arange(10), 180)
  sizes = np.array([
      [len(rows) for rows in partitions.partition_dirichlet(
          labels, num_clients=100, alpha=1e6, key=jax.random.key(seed),
          min_examples=0)]
      for seed in range(20)])
  assert (sizes.sum(axis=1) == 1800).all()
  mean = sizes.mean(axis=0)
  assert mean.min() > 16.5
  assert mean.max() < 19.5
