"""Tests for the Fed-TCGA-BRCA loader, checked against the raw CSV files.

The expected numbers come from two sources. Some are recomputed here from
the bundled CSV files with the csv module alone, and the constants below
were counted from the same files with awk.
"""

import collections
import csv
import shutil

import numpy as np
import pytest

from fedjax_med.data import tcga_brca
from fedjax_med.errors import InputError

CLIENT_NAMES = ('Northeast', 'South', 'West', 'Midwest', 'Europe', 'Canada')
# (train, test) patients of each client.
EXPECTED_COUNTS = {
    'Northeast': (248, 63),
    'South': (156, 40),
    'West': (164, 42),
    'Midwest': (129, 33),
    'Europe': (129, 33),
    'Canada': (40, 11),
}
# Observed deaths among each client's (train, test) patients.
EXPECTED_EVENTS = {
    'Northeast': (45, 14),
    'South': (35, 4),
    'West': (14, 8),
    'Midwest': (16, 3),
    'Europe': (7, 2),
    'Canada': (2, 1),
}


@pytest.fixture(scope='module')
def dataset():
  return tcga_brca.load_tcga_brca()


@pytest.fixture(scope='module')
def ids():
  return tcga_brca.patient_ids()


def _read_csv(name):
  with (tcga_brca.data_dir() / name).open(newline='') as file:
    return list(csv.DictReader(file))


@pytest.fixture(scope='module')
def raw_rows():
  """The rows of brca.csv keyed by patient barcode."""
  return {row['pid']: row for row in _read_csv('brca.csv')}


def _raw_region_split_counts():
  """Count (region, fold2) pairs by joining the three CSV files."""
  region_of_site = {
      row['TSS Code']: row['Region'] for row in _read_csv('centers.csv')
  }
  fold2 = {
      row['pid']: row['fold2'] for row in _read_csv('train_test_split.csv')
  }
  counts = collections.Counter()
  for row in _read_csv('brca.csv'):
    site = row['pid'].split('-')[1]
    counts[region_of_site[site], fold2.get(row['pid'])] += 1
  return counts


def test_tcga_brca_client_names(dataset):
  assert dataset.client_names == CLIENT_NAMES
  assert dataset.num_clients == 6
  assert dataset.name == 'fed_tcga_brca'
  assert dataset.num_classes == 0


@pytest.mark.parametrize('client', range(6), ids=CLIENT_NAMES)
def test_tcga_brca_split_counts(dataset, client):
  expected_train, expected_test = EXPECTED_COUNTS[CLIENT_NAMES[client]]

  assert int(dataset.train.num_examples[client]) == expected_train
  assert int(dataset.test.num_examples[client]) == expected_test


@pytest.mark.parametrize('client', range(6), ids=CLIENT_NAMES)
def test_tcga_brca_counts_match_raw_join(dataset, client):
  counts = _raw_region_split_counts()
  region = CLIENT_NAMES[client]

  assert (
      int(dataset.train.num_examples[client])
      == counts[region, f'train_{client}']
  )
  assert (
      int(dataset.test.num_examples[client]) == counts[region, f'test_{client}']
  )


def test_raw_join_other_region_unsplit():
  counts = _raw_region_split_counts()
  other = {key: count for key, count in counts.items() if key[0] == 'Other'}

  # The 8 patients of 'Other' sites are in no fold, and every other patient
  # is in the fold of its own region.
  assert other == {('Other', None): 8}
  assert sum(counts.values()) == 1096
  for (region, fold), count in counts.items():
    if region != 'Other':
      assert fold is not None, f'{count} {region} patients have no fold'
      assert fold.split('_')[1] == str(CLIENT_NAMES.index(region))


def test_tcga_brca_pooled_totals(dataset):
  assert int(dataset.train.num_examples.sum()) == 866
  assert int(dataset.test.num_examples.sum()) == 222


def test_raw_table_has_151_events(raw_rows):
  events = [float(row['E']) for row in raw_rows.values()]

  assert len(events) == 1096
  assert sum(events) == 151


def test_tcga_brca_events_all_loaded(dataset):
  # No patient of an 'Other' site died, so all 151 deaths are loaded.
  train_events = int(dataset.train.examples['event'].sum())
  test_events = int(dataset.test.examples['event'].sum())

  assert train_events + test_events == 151


@pytest.mark.parametrize('client', range(6), ids=CLIENT_NAMES)
def test_tcga_brca_client_events(dataset, client):
  expected_train, expected_test = EXPECTED_EVENTS[CLIENT_NAMES[client]]

  assert int(dataset.train.client(client)['event'].sum()) == expected_train
  assert int(dataset.test.client(client)['event'].sum()) == expected_test


def test_tcga_brca_shapes_and_dtypes(dataset):
  assert dataset.num_features == 39
  assert len(dataset.feature_names) == 39
  assert dataset.feature_names[0] == 'age_at_index'
  assert dataset.train.examples['x'].shape == (6, 248, 39)
  assert dataset.test.examples['x'].shape == (6, 63, 39)
  assert dataset.train.examples['event'].shape == (6, 248)
  assert dataset.train.examples['time'].shape == (6, 248)
  assert dataset.train.examples['x'].dtype == np.float32
  assert dataset.train.examples['event'].dtype == np.int32
  assert dataset.train.examples['time'].dtype == np.float32
  assert 'y' not in dataset.train.examples


def test_tcga_brca_no_nan(dataset):
  for data in (dataset.train, dataset.test):
    for name, values in data.examples.items():
      assert np.isfinite(values).all(), f'{name} has NaN or infinite values'


def test_tcga_brca_labels_valid(dataset):
  for data in (dataset.train, dataset.test):
    for client in range(data.num_clients):
      rows = data.client(client)
      assert set(np.unique(rows['event'])) <= {0, 1}
      assert (rows['time'] >= 0).all()
      assert (rows['time'] == np.round(rows['time'])).all()
      assert rows['time'].max() <= 8605


def test_tcga_brca_features_not_normalized(dataset):
  x = np.concatenate(
      [dataset.train.client(c)['x'] for c in range(dataset.num_clients)]
  )
  age = x[:, 0]
  indicators = x[:, 1:]

  assert age.min() >= 26
  assert age.max() <= 90
  assert set(np.unique(indicators)) == {0.0, 1.0}


def test_patient_ids_train_test_disjoint(ids):
  train = [pid for client in ids.train for pid in client]
  test = [pid for client in ids.test for pid in client]

  assert len(set(train)) == len(train)
  assert len(set(test)) == len(test)
  assert not set(train) & set(test)
  assert len(train) + len(test) == 1088


def test_patient_ids_match_counts(dataset, ids):
  for client in range(6):
    assert len(ids.train[client]) == int(dataset.train.num_examples[client])
    assert len(ids.test[client]) == int(dataset.test.num_examples[client])


def test_patient_ids_match_split_file(ids):
  fold2 = {
      row['pid']: row['fold2'] for row in _read_csv('train_test_split.csv')
  }

  for set_name, clients in (('train', ids.train), ('test', ids.test)):
    for client, client_ids in enumerate(clients):
      for pid in client_ids:
        assert fold2[pid] == f'{set_name}_{client}', pid


@pytest.mark.parametrize('set_name', ['train', 'test'])
def test_tcga_brca_rows_match_raw(dataset, ids, raw_rows, set_name):
  data = getattr(dataset, set_name)
  feature_names = list(dataset.feature_names)

  for client, client_ids in enumerate(getattr(ids, set_name)):
    rows = data.client(client)
    for row_index, pid in enumerate(client_ids):
      raw = raw_rows[pid]
      expected_x = [float(raw[name]) for name in feature_names]
      np.testing.assert_array_equal(rows['x'][row_index], expected_x)
      assert rows['event'][row_index] == int(float(raw['E'])), pid
      assert rows['time'][row_index] == float(raw['T']), pid


def test_patient_ids_keep_file_order(ids, raw_rows):
  position = {pid: index for index, pid in enumerate(raw_rows)}

  for client_ids in ids.train + ids.test:
    positions = [position[pid] for pid in client_ids]
    assert positions == sorted(positions)


def test_tcga_brca_source_files_exist(dataset):
  names = [path.name for path in dataset.source_files]

  assert names == ['brca.csv', 'centers.csv', 'train_test_split.csv']
  for path in dataset.source_files:
    assert path.is_file()


def test_tissue_source_site_parses_barcode():
  assert tcga_brca.tissue_source_site('TCGA-E2-A9RU') == 'E2'


def test_tissue_source_site_rejects_non_barcode():
  with pytest.raises(InputError, match='not a TCGA barcode'):
    tcga_brca.tissue_source_site('E2-A9RU')


@pytest.fixture
def copied_files(tmp_path, monkeypatch):
  """Copy the bundled files to a temporary folder that the loader reads."""
  for name in ('brca.csv', 'centers.csv', 'train_test_split.csv'):
    shutil.copy(tcga_brca.data_dir() / name, tmp_path / name)
  monkeypatch.setattr(tcga_brca, 'data_dir', lambda: tmp_path)
  return tmp_path


def _replace_in_file(path, old, new):
  text = path.read_text()
  assert text.count(old) == 1
  path.write_text(text.replace(old, new))


def test_load_rejects_wrong_client(copied_files):
  # TCGA-AO-A1KO comes from a Northeast site (AO) but is moved to client 1.
  _replace_in_file(
      copied_files / 'train_test_split.csv',
      'TCGA-AO-A1KO,train,train_0',
      'TCGA-AO-A1KO,train,train_1',
  )

  with pytest.raises(InputError, match='puts patient TCGA-AO-A1KO'):
    tcga_brca.load_tcga_brca()


def test_load_rejects_unknown_patient(copied_files):
  _replace_in_file(
      copied_files / 'train_test_split.csv',
      'TCGA-AO-A1KO,train,train_0',
      'TCGA-AO-ZZZZ,train,train_0',
  )

  with pytest.raises(InputError, match='not in brca.csv'):
    tcga_brca.load_tcga_brca()


def test_load_rejects_mismatched_folds(copied_files):
  _replace_in_file(
      copied_files / 'train_test_split.csv',
      'TCGA-AO-A1KO,train,train_0',
      'TCGA-AO-A1KO,test,train_0',
  )

  with pytest.raises(InputError, match="fold 'test' but fold2 'train_0'"):
    tcga_brca.load_tcga_brca()


@pytest.mark.parametrize('value', ['nan', '1e40'])
def test_load_rejects_nan_value(copied_files, value):
  # 1e40 passed the float64 check and became inf in the float32 features.
  _replace_in_file(
      copied_files / 'brca.csv',
      'TCGA-E2-A9RU,90,',
      f'TCGA-E2-A9RU,{value},',
  )

  with pytest.raises(InputError, match='line 2 has a NaN'):
    tcga_brca.load_tcga_brca()


def test_load_rejects_missing_patient(copied_files):
  # Dropping a Northeast patient from the split table leaves it in no client.
  _replace_in_file(
      copied_files / 'train_test_split.csv', 'TCGA-AO-A1KO,train,train_0\n', ''
  )

  with pytest.raises(InputError, match='lacks patient TCGA-AO-A1KO'):
    tcga_brca.load_tcga_brca()
