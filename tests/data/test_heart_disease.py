"""Tests for the Fed-Heart-Disease loader against FLamby's published facts."""

import numpy as np
import pytest

from fedjax_med.data import heart_disease
from fedjax_med.data import tabular
from fedjax_med.errors import InputError

# FLamby's per-hospital train/test counts.
EXPECTED_COUNTS = {
    'cleveland': (199, 104),
    'hungarian': (172, 89),
    'switzerland': (30, 16),
    'va': (85, 45),
}


@pytest.fixture(scope='module')
def dataset():
  return heart_disease.load_heart_disease()


def _all_rows(data, field):
  """Concatenate the real rows of every client."""
  return np.concatenate(
      [data.client(c)[field] for c in range(data.num_clients)]
  )


def test_heart_disease_client_names(dataset):
  assert dataset.client_names == tuple(EXPECTED_COUNTS)
  assert dataset.name == 'fed_heart_disease'
  assert dataset.num_classes == 2


@pytest.mark.parametrize('client', range(4), ids=list(EXPECTED_COUNTS))
def test_heart_disease_split_counts(dataset, client):
  expected_train, expected_test = EXPECTED_COUNTS[dataset.client_names[client]]

  assert int(dataset.train.num_examples[client]) == expected_train
  assert int(dataset.test.num_examples[client]) == expected_test


def test_heart_disease_total_rows(dataset):
  num_train = int(dataset.train.num_examples.sum())
  num_test = int(dataset.test.num_examples.sum())

  assert num_train + num_test == 740


def test_heart_disease_feature_order(dataset):
  assert dataset.feature_names == (
      'age', 'sex', 'trestbps', 'chol', 'fbs', 'thalach', 'exang', 'oldpeak',
      'cp_2', 'cp_3', 'cp_4', 'restecg_1', 'restecg_2',
  )  # fmt: skip
  assert dataset.num_features == 13
  assert dataset.train.examples['x'].shape == (4, 199, 13)
  assert dataset.test.examples['x'].shape == (4, 104, 13)


def test_heart_disease_dtypes(dataset):
  assert dataset.train.examples['x'].dtype == np.float32
  assert dataset.train.examples['y'].dtype == np.int32
  assert dataset.train.num_examples.dtype == np.int32


def test_heart_disease_labels_binary(dataset):
  labels = np.concatenate(
      [_all_rows(dataset.train, 'y'), _all_rows(dataset.test, 'y')]
  )

  assert set(np.unique(labels)) == {0, 1}


def test_heart_disease_no_nan(dataset):
  for data in (dataset.train, dataset.test):
    assert np.isfinite(data.examples['x']).all()


def test_heart_disease_padding_zero(dataset):
  mask = np.asarray(dataset.test.example_mask())

  assert not dataset.test.examples['x'][~mask].any()
  assert not dataset.test.examples['y'][~mask].any()


@pytest.mark.parametrize('client', range(4), ids=list(EXPECTED_COUNTS))
def test_heart_disease_train_zscored(dataset, client):
  train_x = dataset.train.client(client)['x'].astype(np.float64)
  constant = np.ptp(train_x, axis=0) == 0

  np.testing.assert_allclose(train_x.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(
      train_x.std(axis=0, ddof=1)[~constant], 1.0, atol=1e-5
  )
  np.testing.assert_array_equal(train_x[:, constant], 0.0)


def test_heart_disease_swiss_chol_zero(dataset):
  chol = dataset.feature_names.index('chol')
  switzerland = dataset.client_names.index('switzerland')

  train_chol = dataset.train.client(switzerland)['x'][:, chol]
  test_chol = dataset.test.client(switzerland)['x'][:, chol]

  np.testing.assert_array_equal(train_chol, 0.0)
  np.testing.assert_array_equal(test_chol, 0.0)


def test_heart_disease_swiss_one_negative(dataset):
  switzerland = dataset.client_names.index('switzerland')
  labels = np.concatenate([
      dataset.train.client(switzerland)['y'],
      dataset.test.client(switzerland)['y'],
  ])

  assert int((labels == 0).sum()) == 1
  assert int((labels == 1).sum()) == 45


def test_heart_disease_cleveland_features(dataset):
  """Rebuild Cleveland's train features from the raw file and compare."""
  folder = heart_disease.data_dir()
  raw = np.genfromtxt(folder / 'processed.cleveland.data', delimiter=',')
  table = np.genfromtxt(
      folder / heart_disease.SPLIT_TABLE, delimiter=',', dtype=str,
      skip_header=1,
  )  # fmt: skip
  train_rows = (table[:, 0] == 'cleveland') & (table[:, 3] == 'train')
  train_lines = table[train_rows, 2].astype(int)
  cp = raw[:, 2]
  restecg = raw[:, 6]
  features = np.stack(
      [raw[:, i] for i in (0, 1, 3, 4, 5, 7, 8, 9)]
      + [cp == 2, cp == 3, cp == 4, restecg == 1, restecg == 2],
      axis=1,
  ).astype(np.float64)
  train = features[train_lines - 1]
  expected = (train - train.mean(axis=0)) / (train.std(axis=0, ddof=1) + 1e-9)

  actual = dataset.train.client(0)['x']

  assert raw.shape == (303, 14)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      dataset.train.client(0)['y'], raw[train_lines - 1, 13] > 0
  )


def test_heart_disease_source_files(dataset):
  names = [path.name for path in dataset.source_files]

  assert names == [
      'processed.cleveland.data',
      'processed.hungarian.data',
      'processed.switzerland.data',
      'processed.va.data',
      'flamby_split_derived.csv',
  ]
  for path in dataset.source_files:
    assert path.is_file()


def test_heart_disease_attribution_present():
  assert (heart_disease.data_dir() / 'ATTRIBUTION.md').is_file()


@pytest.mark.parametrize('client', range(4), ids=list(EXPECTED_COUNTS))
def test_stratified_split_heart_counts(dataset, client):
  labels = np.concatenate([
      dataset.train.client(client)['y'], dataset.test.client(client)['y']
  ])
  expected_train, expected_test = EXPECTED_COUNTS[dataset.client_names[client]]

  train, test = tabular.stratified_split(labels, test_fraction=0.34, seed=43)

  assert len(train) == expected_train
  assert len(test) == expected_test


def test_split_table_dropped_rows_checked(tmp_path, monkeypatch):
  """A split table whose dropped rows disagree with the data is rejected."""
  source = heart_disease.data_dir()
  for path in source.iterdir():
    (tmp_path / path.name).write_bytes(path.read_bytes())
  table = tmp_path / heart_disease.SPLIT_TABLE
  lines = table.read_text().splitlines()
  lines[1] = lines[1].replace(',train,', ',dropped,')
  table.write_text('\n'.join(lines) + '\n')
  monkeypatch.setattr(heart_disease, 'data_dir', lambda: tmp_path)

  with pytest.raises(InputError, match="'dropped' cleveland rows") as error:
    heart_disease.load_heart_disease()

  assert heart_disease.SPLIT_TABLE in str(error.value)
