"""Tests for the split, z-score and CSV import helpers."""

import csv

import numpy as np
import pytest

from fedjax_med.data import tabular
from fedjax_med.errors import InputError


@pytest.mark.parametrize(
    'num_rows, expected_train, expected_test',
    [(303, 199, 104), (261, 172, 89), (46, 30, 16), (130, 85, 45)],
)
def test_split_sklearn_counts(num_rows, expected_train, expected_test):
  labels = np.arange(num_rows) % 2

  train, test = tabular.stratified_split(labels, test_fraction=0.34, seed=0)

  assert len(train) == expected_train
  assert len(test) == expected_test


def test_split_partitions_indices():
  labels = np.arange(50) % 3

  train, test = tabular.stratified_split(labels, test_fraction=0.3, seed=1)

  np.testing.assert_array_equal(
      np.sort(np.concatenate([train, test])), np.arange(50)
  )
  np.testing.assert_array_equal(train, np.sort(train))
  np.testing.assert_array_equal(test, np.sort(test))


def test_split_keeps_class_proportions():
  # Classes of 60, 30 and 10 rows give 40 test rows, split 24, 12 and 4.
  labels = np.repeat([0, 1, 2], [60, 30, 10])

  _, test = tabular.stratified_split(labels, test_fraction=0.4, seed=3)
  test_counts = np.bincount(labels[test], minlength=3)

  np.testing.assert_array_equal(test_counts, [24, 12, 4])


def test_split_largest_remainder():
  # 13 test rows: quotas 7.8, 3.9, 1.3 round to 8, 4, 1.
  labels = np.repeat([0, 1, 2], [18, 9, 3])

  _, test = tabular.stratified_split(labels, test_fraction=0.43, seed=0)
  test_counts = np.bincount(labels[test], minlength=3)

  assert len(test) == 13
  np.testing.assert_array_equal(test_counts, [8, 4, 1])


def test_split_same_seed_same_split():
  labels = np.arange(40) % 2

  first = tabular.stratified_split(labels, test_fraction=0.25, seed=7)
  second = tabular.stratified_split(labels, test_fraction=0.25, seed=7)
  other = tabular.stratified_split(labels, test_fraction=0.25, seed=8)

  np.testing.assert_array_equal(first[1], second[1])
  assert not np.array_equal(first[1], other[1])


def test_split_unstratified_when_class_tiny():
  # A single negative row, as in the Switzerland hospital. A stratified split
  # would never put it in the test set, because its quota 16/46 = 0.35 loses
  # the largest-remainder rounding. A plain shuffle does for some seeds.
  labels = np.ones(46, dtype=int)
  labels[0] = 0
  negative_in_test = []

  for seed in range(20):
    train, test = tabular.stratified_split(
        labels, test_fraction=0.34, seed=seed
    )
    assert len(train) == 30
    assert len(test) == 16
    negative_in_test.append(0 in test)

  assert any(negative_in_test)
  assert not all(negative_in_test)


def test_split_small_client():
  train, test = tabular.stratified_split(
      np.array([1]), test_fraction=0.34, seed=0
  )

  assert len(train) == 0
  np.testing.assert_array_equal(test, [0])


@pytest.mark.parametrize('test_fraction', [0.0, 1.0, -0.1, 1.5, '0.3', True])
def test_split_invalid_fraction(test_fraction):
  with pytest.raises(InputError, match='test_fraction'):
    tabular.stratified_split(
        np.zeros(10), test_fraction=test_fraction, seed=0
    )


@pytest.mark.parametrize('arguments, message', [
    ({'seed': -1}, r"`seed` must be an integer >= 0.*got -1\."),
    ({'seed': 1.5}, '`seed` must be an integer'),
    ({'seed': '0'}, '`seed` must be an integer'),
    ({'test_fraction': '0.3'}, r"`test_fraction` must be a number in \(0, 1\)"),
])
def test_csv_bad_split_arguments_named_before_reading(arguments, message):
  # The path does not exist: the arguments are checked first.
  with pytest.raises(InputError, match=message):
    tabular.load_csv('missing.csv', client_column='site', label_column='y',
                     **arguments)


def test_zscore_train_stats():
  train_x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
  test_x = np.array([[4.0, 5.0]])

  train_z, test_z = tabular.zscore(train_x, test_x)

  np.testing.assert_allclose(train_z[:, 0], [-1.0, 0.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(test_z[:, 0], [2.0], rtol=1e-6)
  np.testing.assert_array_equal(train_z[:, 1], 0.0)
  np.testing.assert_array_equal(test_z[:, 1], 0.0)
  assert train_z.dtype == np.float32
  assert test_z.dtype == np.float32


@pytest.mark.parametrize('constant', [0.0, 0.1, -250.0])
def test_zscore_constant_column_only_centered(constant):
  # A site whose train rows all had sex 0 sent a test patient with sex 1
  # to 1e9, and the model's probability to exactly 1.
  train_x = np.array([[1.0, constant], [2.0, constant], [4.0, constant]])
  test_x = np.array([[2.0, constant + 1.0], [2.0, constant]])

  train_z, test_z = tabular.zscore(train_x, test_x)

  np.testing.assert_allclose(train_z[:, 1], 0.0, atol=1e-12)
  np.testing.assert_allclose(test_z[:, 1], [1.0, 0.0], atol=1e-6)


def test_zscore_small_varying_column_scaled():
  # A column of tiny values that vary is not constant.
  train_x = np.array([[1e-12], [2e-12], [3e-12]])

  train_z, _ = tabular.zscore(train_x, np.array([[4e-12]]))

  np.testing.assert_allclose(train_z[:, 0], [-1.0, 0.0, 1.0], rtol=1e-5)


def test_zscore_one_train_row():
  train_z, test_z = tabular.zscore(
      np.array([[3.0, 1.0]]), np.array([[5.0, 0.0]])
  )

  np.testing.assert_allclose(train_z, [[0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(test_z, [[2.0, -1.0]], rtol=1e-6)


def test_zscore_no_train_rows():
  train_z, test_z = tabular.zscore(np.zeros((0, 2)), np.array([[5.0, -1.0]]))

  assert train_z.shape == (0, 2)
  np.testing.assert_allclose(test_z, [[5.0, -1.0]], rtol=1e-6)


def _write(tmp_path, text, name='cohort.csv'):
  path = tmp_path / name
  path.write_text(text)
  return path


def _good_csv(tmp_path):
  rows = ['site,age,bmi,outcome']
  for i in range(12):
    rows.append(f'A,{40 + i},{20 + i % 5},{i % 2}')
  for i in range(9):
    rows.append(f'B,{60 + i},{25 + i % 3},{i % 3}')
  return _write(tmp_path, '\n'.join(rows) + '\n')


def test_csv_round_trip(tmp_path):
  path = _good_csv(tmp_path)

  dataset = tabular.load_csv(path, client_column='site', label_column='outcome')

  assert dataset.name == 'cohort'
  assert dataset.client_names == ('A', 'B')
  assert dataset.feature_names == ('age', 'bmi')
  assert dataset.num_classes == 3
  assert dataset.source_files == (path,)
  np.testing.assert_array_equal(dataset.train.num_examples, [7, 5])
  np.testing.assert_array_equal(dataset.test.num_examples, [5, 4])


@pytest.mark.parametrize('value', ['1e308', '-1e200'])
def test_csv_values_too_large_rejected(tmp_path, value):
  # 1e308 overflows the std, which would zero the column; -1e200 overflows
  # the std's square or, in a test row, the float32 cast.
  path = _good_csv(tmp_path)
  lines = path.read_text().splitlines()
  lines[3] = f'A,{value},22,0'
  path.write_text('\n'.join(lines) + '\n')

  with pytest.raises(InputError, match="Feature 'age' has values up to"):
    tabular.load_csv(path, client_column='site', label_column='outcome')


def test_csv_large_values_standardized(tmp_path):
  # Values far beyond float32 are fine while their z-scores are finite.
  path = _good_csv(tmp_path)
  text = path.read_text().replace('A,40,', 'A,4e45,')
  path.write_text(text)

  dataset = tabular.load_csv(path, client_column='site', label_column='outcome')

  assert np.all(np.isfinite(dataset.train.examples['x']))
  assert np.all(np.isfinite(dataset.test.examples['x']))


def test_csv_semicolons_named(tmp_path):
  path = _write(tmp_path, 'site;age;outcome\nA;40;0\nA;41;1\n')

  with pytest.raises(InputError, match='commas between the cells'):
    tabular.load_csv(path, client_column='site', label_column='outcome')


def test_csv_path_folder_named(tmp_path):
  with pytest.raises(InputError, match='is a folder'):
    tabular.load_csv(tmp_path, client_column='site', label_column='outcome')


def test_csv_labels_preserved(tmp_path):
  path = _good_csv(tmp_path)

  dataset = tabular.load_csv(path, client_column='site', label_column='outcome')
  labels_b = np.concatenate(
      [dataset.train.client(1)['y'], dataset.test.client(1)['y']]
  )

  np.testing.assert_array_equal(np.bincount(labels_b), [3, 3, 3])
  assert dataset.train.examples['y'].dtype == np.int32


def test_csv_train_zscored(tmp_path):
  path = _good_csv(tmp_path)

  dataset = tabular.load_csv(path, client_column='site', label_column='outcome')
  train_x = dataset.train.client(0)['x'].astype(np.float64)

  np.testing.assert_allclose(train_x.mean(axis=0), 0.0, atol=1e-6)
  np.testing.assert_allclose(train_x.std(axis=0, ddof=1), 1.0, atol=1e-6)


def test_csv_clients_first_appearance(tmp_path):
  path = _write(
      tmp_path, 'hospital,x,y\n7,1,0\n3,2,1\n7,3,1\n3,4,0\n7,5,0\n3,6,1\n'
  )

  dataset = tabular.load_csv(path, client_column='hospital', label_column='y')

  assert dataset.client_names == ('7', '3')
  assert dataset.num_classes == 2


def test_csv_seed_differs_per_client(tmp_path):
  # Two clients with identical rows get different splits.
  rows = ['site,x,y']
  for site in ('P', 'Q'):
    rows.extend(f'{site},{i},{i % 2}' for i in range(20))
  path = _write(tmp_path, '\n'.join(rows) + '\n')

  dataset = tabular.load_csv(path, client_column='site', label_column='y')

  assert not np.array_equal(
      dataset.test.client(0)['x'], dataset.test.client(1)['x']
  )


def test_csv_split_seeds_independent_of_client_index(tmp_path):
  # Seeded with split_seed + client index, client P under split_seed 1 got
  # exactly the split that client Q had under split_seed 0.
  rows = ['site,x,y']
  for site in ('P', 'Q'):
    rows.extend(f'{site},{i},{i % 2}' for i in range(20))
  path = _write(tmp_path, '\n'.join(rows) + '\n')

  first = tabular.load_csv(path, client_column='site', label_column='y',
                           seed=0, standardize=False)
  second = tabular.load_csv(path, client_column='site', label_column='y',
                            seed=1, standardize=False)

  assert not np.array_equal(
      np.sort(second.test.client(0)['x'][:, 0]),
      np.sort(first.test.client(1)['x'][:, 0]))


@pytest.mark.parametrize('other', ['Hospital\u00a0A', 'Hospital  A'])
def test_csv_lookalike_client_ids_rejected(tmp_path, other):
  # A no-break space made a second client that printed as 'Hospital A'.
  rows = ['site,x,y']
  rows += [f'Hospital A,{i},{i % 2}' for i in range(6)]
  rows += [f'{other},{i},{i % 2}' for i in range(6)]
  path = _write(tmp_path, '\n'.join(rows) + '\n')

  with pytest.raises(InputError, match='print alike but differ'):
    tabular.load_csv(path, client_column='site', label_column='y')


def test_csv_accent_forms_rejected(tmp_path):
  rows = ['site,x,y']
  rows += [f'Caf\u00e9,{i},{i % 2}' for i in range(6)]
  rows += [f'Cafe\u0301,{i},{i % 2}' for i in range(6)]
  path = _write(tmp_path, '\n'.join(rows) + '\n')

  with pytest.raises(InputError, match="'Caf\\\\xe9' and 'Cafe\\\\u0301'"):
    tabular.load_csv(path, client_column='site', label_column='y')


def test_csv_missing_file(tmp_path):
  path = tmp_path / 'absent.csv'

  with pytest.raises(InputError, match='not found') as error:
    tabular.load_csv(path, client_column='site', label_column='y')

  assert 'absent.csv' in str(error.value)


def test_csv_empty_file(tmp_path):
  path = _write(tmp_path, '')

  with pytest.raises(InputError, match='empty') as error:
    tabular.load_csv(path, client_column='site', label_column='y')

  assert 'cohort.csv' in str(error.value)


def test_csv_header_only(tmp_path):
  path = _write(tmp_path, 'site,x,y\n')

  with pytest.raises(InputError, match='no data rows'):
    tabular.load_csv(path, client_column='site', label_column='y')


@pytest.mark.parametrize(
    'client_column, label_column, missing',
    [('center', 'y', 'center'), ('site', 'label', 'label')],
)
def test_csv_missing_column(tmp_path, client_column, label_column, missing):
  path = _write(tmp_path, 'site,x,y\nA,1,0\n')

  with pytest.raises(InputError) as error:
    tabular.load_csv(
        path, client_column=client_column, label_column=label_column
    )
  message = str(error.value)

  assert 'cohort.csv' in message
  assert repr(missing) in message
  assert "['site', 'x', 'y']" in message


def test_csv_same_client_label_column(tmp_path):
  path = _write(tmp_path, 'site,x,y\nA,1,0\n')

  with pytest.raises(InputError, match='different label column'):
    tabular.load_csv(path, client_column='site', label_column='site')


def test_csv_duplicate_header(tmp_path):
  path = _write(tmp_path, 'site,x,x,y\nA,1,2,0\n')

  with pytest.raises(InputError, match="'x' more than once"):
    tabular.load_csv(path, client_column='site', label_column='y')


# Each case puts one bad row at data row 3 (file line 4) of a valid file.
BAD_ROWS = {
    'non_numeric': ('A,abc,0', 'x', 'not a number'),
    'empty_cell': ('A,,0', 'x', 'empty'),
    'nan': ('A,nan,0', 'x', 'not a finite number'),
    'inf': ('A,-inf,0', 'x', 'not a finite number'),
    'fractional_label': ('A,1,0.5', 'y', 'not a whole number'),
    'negative_label': ('A,1,-1', 'y', 'not a whole number'),
    'text_label': ('A,1,yes', 'y', 'not a class number'),
    'empty_client': (',1,0', 'site', 'empty'),
    'too_few_cells': ('A,1', None, 'has 2 cells but the header has 3'),
    'too_many_cells': ('A,1,0,9', None, 'has 4 cells but the header has 3'),
    # Python's float() reads these as 1000, 10 and 12.
    'underscore': ('A,1_000,0', 'x', "contains an underscore, which is not "
                   "part of a CSV number. Write it as '1000'."),
    'underscore_label': ('A,1,1_0', 'y', "Write it as '10'."),
    'arabic_digits': ('A,\u0661\u0662,0', 'x', 'with the digits 0-9'),
    # A NUL or zero width space made an extra client that prints as 'A'.
    'nul_in_client': ('A\x00,1,0', 'site',
                      'invisible character U+0000 at character 2'),
    'zero_width_in_client': ('\u200bA,1,0', 'site',
                             'invisible character U+200B at character 1'),
}


@pytest.mark.parametrize('case', list(BAD_ROWS))
def test_csv_bad_row(tmp_path, case):
  bad_row, column, problem = BAD_ROWS[case]
  path = _write(tmp_path, f'site,x,y\nA,1,0\nA,2,1\n{bad_row}\nA,4,1\n')

  with pytest.raises(InputError) as error:
    tabular.load_csv(path, client_column='site', label_column='y')
  message = str(error.value)

  assert 'cohort.csv' in message
  assert 'data row 3' in message
  assert 'line 4' in message
  assert problem in message
  if column is not None:
    assert f'column {column!r}' in message


def test_csv_long_cell_rejected(tmp_path):
  # csv's field limit raised a raw _csv.Error.
  limit = csv.field_size_limit()
  path = _write(tmp_path, f'site,x,y\nA,1,0\nA,"{"1" * (limit + 1)}",1\n')

  with pytest.raises(InputError) as error:
    tabular.load_csv(path, client_column='site', label_column='y')
  message = str(error.value)

  assert 'cohort.csv, line 3' in message
  assert f'longer than {limit:,} characters' in message
  assert 'quote that is never closed' in message


def test_csv_whole_float_label_accepted(tmp_path):
  path = _write(tmp_path, 'site,x,y\nA,1,0.0\nA,2,1.0\nA,3,1\n')

  dataset = tabular.load_csv(path, client_column='site', label_column='y')

  assert dataset.num_classes == 2


def test_csv_blank_lines_skipped(tmp_path):
  path = _write(tmp_path, 'site,x,y\nA,1,0\n\nA,2,1\nA,3,1\n\n')

  dataset = tabular.load_csv(path, client_column='site', label_column='y')

  assert int(dataset.train.num_examples[0] + dataset.test.num_examples[0]) == 3


def test_csv_not_utf8(tmp_path):
  path = tmp_path / 'latin.csv'
  path.write_bytes('site,x,y\nZürich,1,0\n'.encode('latin-1'))

  with pytest.raises(InputError, match='not UTF-8') as error:
    tabular.load_csv(path, client_column='site', label_column='y')

  assert 'latin.csv' in str(error.value)


def test_csv_label_gap_rejected(tmp_path):
  path = _write(tmp_path, 'site,x,y\nA,1,0\nA,2,5\nB,3,0\nB,4,5\n')

  with pytest.raises(InputError) as error:
    tabular.load_csv(path, client_column='site', label_column='y')

  assert 'found 0, 5' in str(error.value)
  assert 'cohort.csv' in str(error.value)


def test_csv_huge_label_shown_as_written(tmp_path):
  # The message printed 1e300 as a 301-digit integer.
  path = _write(tmp_path, 'site,x,y\nA,1,0\nA,2,1e300\nB,3,0\nB,4,1\n')

  with pytest.raises(InputError) as error:
    tabular.load_csv(path, client_column='site', label_column='y')
  message = str(error.value)

  assert 'found 0, 1, 1e300.' in message
  assert '0000000000' not in message


def test_csv_single_class_rejected(tmp_path):
  path = _write(tmp_path, 'site,x,y\nA,1,1\nA,2,1\nB,3,1\n')

  with pytest.raises(InputError, match='at least two classes'):
    tabular.load_csv(path, client_column='site', label_column='y')
