"""Tests of vertical datasets and their alignment."""

import numpy as np
import pytest

from fedjax_med.data import heart_disease
from fedjax_med.errors import InputError
from fedjax_med.vertical import data


def _id_features(ids, columns):
  """Return features that encode each row's patient number, per column."""
  numbers = np.asarray([int(i.split('-')[1]) for i in ids], np.float64)
  return numbers[:, None] * 10.0 + np.arange(columns)[None, :]


def _toy_dataset():
  holder_ids = [f'p-{i}' for i in (5, 1, 2, 3, 9, 7)]
  other_ids = [f'p-{i}' for i in (3, 2, 8, 5, 1, 7)]
  holder = data.PartyData(
      name='holder',
      ids=tuple(holder_ids),
      features=_id_features(holder_ids, 2),
      feature_names=('a', 'b'),
      labels=np.asarray([1, 0, 1, 0, 1, 0]),
  )
  other = data.PartyData(
      name='other',
      ids=tuple(other_ids),
      features=_id_features(other_ids, 1),
      feature_names=('c',),
  )
  return data.VerticalDataset('toy', (holder, other), frozenset({'p-3'}))


def test_heart_split_defaults():
  dataset = data.split_heart_disease()
  assert dataset.party_names == ('cardiology', 'primary_care', 'ecg')
  assert [len(p.ids) for p in dataset.parties] == [703, 666, 629]
  columns = [name for p in dataset.parties for name in p.feature_names]
  assert sorted(columns) == sorted(heart_disease.FEATURE_NAMES)
  assert dataset.parties[0].labels is not None
  assert dataset.parties[1].labels is None
  # FLamby's test set: 104 + 89 + 16 + 45 patients.
  assert len(dataset.test_ids) == 254


def test_heart_split_keeps_each_patients_values():
  full = data.split_heart_disease(
      {'one': heart_disease.FEATURE_NAMES[:7],
       'two': heart_disease.FEATURE_NAMES[7:]})
  split = data.split_heart_disease(seed=3)
  full_rows = dict(zip(full.parties[0].ids, full.parties[0].features))
  ecg = split.parties[2]
  columns = [heart_disease.FEATURE_NAMES.index(n) for n in ecg.feature_names]
  for patient, row in zip(ecg.ids, ecg.features):
    full_row = np.concatenate(
        [full_rows[patient], dict(zip(full.parties[1].ids,
                                      full.parties[1].features))[patient]])
    np.testing.assert_array_equal(row, full_row[columns])


def test_heart_split_partial_coverage_keeps_defaults():
  dataset = data.split_heart_disease(coverage={'ecg': 0.5})
  assert [len(p.ids) for p in dataset.parties] == [703, 666, 370]


def test_heart_split_negative_seed_raises():
  with pytest.raises(InputError, match='must be an integer >= 0.*got -1'):
    data.split_heart_disease(seed=-1)


def test_heart_split_seed_changes_patients():
  first = data.split_heart_disease(seed=0)
  second = data.split_heart_disease(seed=1)
  assert first.parties[1].ids != second.parties[1].ids


@pytest.mark.parametrize('groups, coverage, message', [
    ({'a': ('age', 'sexx'), 'b': ('chol',)}, None, "'sexx'"),
    ({'a': ('age',), 'b': ('age',)}, None, "feature 'age' is assigned to two"),
    ({'a': ('age',), 'b': ('chol',)}, {'a': 1.5}, r"coverage\['a'\]=1.5"),
    ({'a': ('age',), 'b': ('chol',)}, {'c': 0.5}, "'c'"),
    ({'a': ('age',)}, None, 'at least 2 parties'),
    ({'a': ('age',), 'b': ()}, None, "party 'b' is ()"),
    ({'a': 'age', 'b': ('chol',)}, None, "party 'a' is 'age'"),
    ({'a': ('age',), 'b': ('chol',)}, {'b': '0.5'}, r"coverage\['b'\]='0.5'"),
    ({'a': ('age',), 'b': ('chol',)}, {'b': 1e-4}, 'keeps none'),
])
def test_heart_split_invalid_raises(groups, coverage, message):
  with pytest.raises(InputError, match=message):
    data.split_heart_disease(groups, coverage)


def test_align_orders_rows_by_identifier():
  dataset = _toy_dataset()
  common = ['p-1', 'p-2', 'p-3', 'p-5', 'p-7']
  aligned = data.align(dataset, common, standardize=False)
  assert aligned.train_ids == ('p-1', 'p-2', 'p-5', 'p-7')
  assert aligned.test_ids == ('p-3',)
  np.testing.assert_array_equal(aligned.train_features[0][:, 0],
                                [10, 20, 50, 70])
  np.testing.assert_array_equal(aligned.train_features[1][:, 0],
                                [10, 20, 50, 70])
  np.testing.assert_array_equal(aligned.train_labels, [0, 1, 1, 0])
  np.testing.assert_array_equal(aligned.test_labels, [0])


def test_align_standardizes_with_training_rows():
  aligned = data.align(_toy_dataset(), ['p-1', 'p-2', 'p-3', 'p-5'])
  train = aligned.train_features[1][:, 0]
  np.testing.assert_allclose(train.mean(), 0.0, atol=1e-12)
  np.testing.assert_allclose(train.std(), 1.0)
  # p-3 (30) against training rows 10, 20, 50: mean 80/3.
  expected = (30 - 80 / 3) / np.std([10, 20, 50])
  np.testing.assert_allclose(aligned.test_features[1][0, 0], expected)


def test_align_constant_column_only_centered():
  # The std of nine copies of 7.7 rounds to 8.9e-16, not 0, and the test
  # value 7.8 became 1.1e14.
  ids = [f'p{i}' for i in range(10)]
  hospital = data.PartyData('hospital', ids, np.arange(10.0)[:, None],
                            ('age',), labels=np.array([0, 1] * 5))
  lab = data.PartyData('lab', ids, np.r_[np.full(9, 7.7), 7.8][:, None],
                       ('x',))
  dataset = data.VerticalDataset('t', (hospital, lab), frozenset({'p9'}))

  aligned = data.align(dataset, ids)

  np.testing.assert_allclose(aligned.train_features[1][:, 0], 0.0,
                             atol=1e-12)
  np.testing.assert_allclose(aligned.test_features[1][:, 0], [0.1],
                             rtol=1e-9)


def test_align_missing_identifier_raises():
  with pytest.raises(InputError, match="'p-9'"):
    data.align(_toy_dataset(), ['p-1', 'p-3', 'p-9'])


@pytest.mark.parametrize('common, message', [
    (['p-1', 'p-1', 'p-3'], "'p-1' appears twice"),
    (['p-1', 3], 'has type int'),
    ('p-1', 'single value'),
    # An empty intersection was reported as 0 patients of which 0 test.
    ([], 'common_ids is empty'),
])
def test_align_invalid_common_ids_raise(common, message):
  with pytest.raises(InputError, match=message):
    data.align(_toy_dataset(), common)


def test_align_without_test_rows_raises():
  with pytest.raises(InputError, match='0 test patients'):
    data.align(_toy_dataset(), ['p-1', 'p-2'])


def test_dataset_checks_parties():
  good = _toy_dataset()
  holder, other = good.parties
  twice = data.PartyData('other', other.ids[:2] * 2,
                         np.zeros((4, 1)), ('c',))
  with pytest.raises(InputError, match=f'identifier {other.ids[0]!r} twice'):
    data.VerticalDataset('toy', (holder, twice), frozenset())
  with_labels = data.PartyData('other', other.ids, other.features, ('c',),
                               labels=np.zeros(6, int))
  with pytest.raises(InputError, match='only party 0'):
    data.VerticalDataset('toy', (holder, with_labels), frozenset())
  nan = data.PartyData('other', other.ids, other.features * np.nan, ('c',))
  with pytest.raises(InputError, match=f"value nan in feature 'c' of "
                     f'patient {other.ids[0]!r}'):
    data.VerticalDataset('toy', (holder, nan), frozenset())
  with pytest.raises(InputError, match='distinct name'):
    data.VerticalDataset('toy', (holder, holder), frozenset())
  with pytest.raises(InputError, match='no feature columns'):
    data.VerticalDataset('toy', (holder, data.PartyData(
        'other', other.ids, np.zeros((6, 0)), ())), frozenset())
  with pytest.raises(InputError, match='not numeric'):
    data.PartyData('other', other.ids, [['a']] * 6, ('c',))
  # ids='12' became the identifiers '1' and '2'.
  with pytest.raises(InputError, match="ids='12', a single value"):
    data.PartyData('other', '12', np.zeros((2, 1)), ('c',))
  with pytest.raises(InputError, match="feature_names='c', a single value"):
    data.PartyData('other', other.ids, other.features, 'c')


def test_party_data_accepts_lists():
  party = data.PartyData('p', ['x', 'y'], [[1.0], [2.0]], ['c'], [0, 1])
  assert party.features.dtype == np.float64
  assert party.features.shape == (2, 1)
  assert party.ids == ('x', 'y')
  np.testing.assert_array_equal(party.labels, [0, 1])


def test_dataset_checks_test_ids():
  holder, other = _toy_dataset().parties
  # A str made `in` a substring test: test_ids='p-3p-1' held 'p-3' and '3'.
  with pytest.raises(InputError, match="test_ids='p-3' is a single value"):
    data.VerticalDataset('toy', (holder, other), 'p-3')
  with pytest.raises(InputError, match='test identifier 3 has type int'):
    data.VerticalDataset('toy', (holder, other), frozenset({3}))
  for value in (None, 5):
    with pytest.raises(InputError, match='is not a collection'):
      data.VerticalDataset('toy', (holder, other), value)
  dataset = data.VerticalDataset('toy', (holder, other), ['p-3', 'p-1'])
  assert dataset.test_ids == frozenset({'p-3', 'p-1'})
