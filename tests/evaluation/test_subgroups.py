"""Tests for fedjax_med.evaluation.subgroups, with hand-computed values."""

import json

import numpy as np
import pytest

from fedjax_med.evaluation import subgroups

GROUP_NAMES = ['g0', 'g1', 'g2']
CLIENT_NAMES = ['north', 'south']

# (group, label, predicted) of each real row. Client north has no row of
# g2, and its g1 rows are all label 0. Client south has no row of g1, and
# its g0 row is label 0.
NORTH_ROWS = [(0, 1, 1), (0, 1, 0), (0, 0, 0), (1, 0, 1), (1, 0, 0)]
SOUTH_ROWS = [(0, 0, 0), (2, 1, 1), (2, 1, 1), (2, 0, 1)]
NUM_EXAMPLES = 6


def _table():
  """Stack the rows into `[clients, examples]` arrays with padding.

  Padding rows hold values that are invalid on a real row, so a test fails
  if the mask lets them through.
  """
  shape = (2, NUM_EXAMPLES)
  groups = np.full(shape, 7)
  labels = np.full(shape, 5)
  predicted = np.full(shape, 9)
  mask = np.zeros(shape, bool)
  for client, rows in enumerate((NORTH_ROWS, SOUTH_ROWS)):
    for index, (group, label, prediction) in enumerate(rows):
      groups[client, index] = group
      labels[client, index] = label
      predicted[client, index] = prediction
      mask[client, index] = True
  return predicted, labels, groups, mask


@pytest.fixture(name='report')
def report_fixture():
  predicted, labels, groups, mask = _table()
  return subgroups.subgroup_report(
      predicted, labels, groups, mask,
      group_names=GROUP_NAMES, client_names=CLIENT_NAMES,
  )


def test_counts_per_client_group(report):
  north = report['clients']['north']['groups']
  south = report['clients']['south']['groups']

  assert north['g0']['count'] == 3
  assert north['g0']['num_positive'] == 2
  assert north['g0']['num_negative'] == 1
  assert north['g1']['count'] == 2
  assert north['g2']['count'] == 0
  assert south['g0']['count'] == 1
  assert south['g1']['count'] == 0
  assert south['g2']['count'] == 3
  assert south['g2']['num_positive'] == 2


def test_rates_hand_computed(report):
  north = report['clients']['north']['groups']
  south = report['clients']['south']['groups']

  # north g0: 2 of 3 correct, 1 of 2 positives found, 0 of 1 negative hit.
  assert north['g0']['accuracy'] == pytest.approx(2 / 3)
  assert north['g0']['true_positive_rate'] == pytest.approx(0.5)
  assert north['g0']['false_positive_rate'] == pytest.approx(0.0)
  # north g1: 1 of 2 correct, 1 of 2 negatives predicted positive.
  assert north['g1']['accuracy'] == pytest.approx(0.5)
  assert north['g1']['false_positive_rate'] == pytest.approx(0.5)
  # south g2: 2 of 3 correct, both positives found, its negative hit.
  assert south['g2']['accuracy'] == pytest.approx(2 / 3)
  assert south['g2']['true_positive_rate'] == pytest.approx(1.0)
  assert south['g2']['false_positive_rate'] == pytest.approx(1.0)


def test_empty_group_is_none_with_reasons(report):
  empty = report['clients']['north']['groups']['g2']

  assert empty['accuracy'] is None
  assert empty['true_positive_rate'] is None
  assert empty['false_positive_rate'] is None
  assert empty['reasons']['accuracy'] == 'the group has no rows'
  assert set(empty['reasons']) == set(subgroups.RATE_METRICS)


def test_group_without_positives(report):
  negatives_only = report['clients']['north']['groups']['g1']

  assert negatives_only['true_positive_rate'] is None
  assert negatives_only['reasons'] == {
      'true_positive_rate': 'the group has no rows with label 1'
  }
  assert negatives_only['accuracy'] is not None


def test_client_gaps_hand_computed(report):
  north = report['clients']['north']['gaps']
  south = report['clients']['south']['gaps']

  assert north['accuracy_gap']['value'] == pytest.approx(2 / 3 - 0.5)
  assert north['accuracy_gap']['max_group'] == 'g0'
  assert north['accuracy_gap']['min_group'] == 'g1'
  assert north['accuracy_gap']['groups_compared'] == ['g0', 'g1']
  assert north['false_positive_rate_gap']['value'] == pytest.approx(0.5)
  assert north['false_positive_rate_gap']['max_group'] == 'g1'
  assert south['accuracy_gap']['value'] == pytest.approx(1 - 2 / 3)
  assert south['false_positive_rate_gap']['value'] == pytest.approx(1.0)


def test_gap_needs_two_groups(report):
  # Only g0 has a label-1 row in north, and only g2 in south.
  for name in CLIENT_NAMES:
    gap = report['clients'][name]['gaps']['equal_opportunity_gap']

    assert gap['value'] is None
    assert gap['max_group'] is None
    assert 'defined for 1 group(s)' in gap['reason']


def test_gap_lists_left_out_groups(report):
  gap = report['clients']['north']['gaps']['accuracy_gap']

  assert gap['left_out'] == {'g2': 'the group has no rows'}
  assert gap['reason'] is None


def test_pooled_hand_computed(report):
  groups = report['pooled']['groups']
  gaps = report['pooled']['gaps']

  # g0: 4 rows (3 north, 1 south), 3 correct, 1 of 2 positives found,
  # 0 of 2 negatives hit.
  assert groups['g0']['count'] == 4
  assert groups['g0']['accuracy'] == pytest.approx(0.75)
  assert groups['g0']['true_positive_rate'] == pytest.approx(0.5)
  assert groups['g0']['false_positive_rate'] == pytest.approx(0.0)
  assert groups['g1']['true_positive_rate'] is None
  assert gaps['accuracy_gap']['value'] == pytest.approx(0.25)
  assert gaps['equal_opportunity_gap']['value'] == pytest.approx(0.5)
  assert gaps['equal_opportunity_gap']['max_group'] == 'g2'
  assert gaps['equal_opportunity_gap']['min_group'] == 'g0'
  assert gaps['equal_opportunity_gap']['left_out'] == {
      'g1': 'the group has no rows with label 1'
  }
  assert gaps['false_positive_rate_gap']['value'] == pytest.approx(1.0)


def test_report_is_strict_json(report):
  text = json.dumps(report, allow_nan=False)

  assert json.loads(text) == report


def test_default_client_names():
  predicted, labels, groups, mask = _table()

  report = subgroups.subgroup_report(
      predicted, labels, groups, mask, group_names=GROUP_NAMES
  )

  assert list(report['clients']) == ['0', '1']


def test_matches_single_group_rates():
  # With one group, a client's rates are its overall rates.
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, size=(3, 50))
  predicted = rng.integers(0, 2, size=(3, 50))
  mask = np.ones((3, 50), bool)

  report = subgroups.subgroup_report(
      predicted, labels, np.zeros((3, 50), int), mask, group_names=['all']
  )

  for client in range(3):
    entry = report['clients'][str(client)]['groups']['all']
    positives = labels[client] == 1
    assert entry['accuracy'] == pytest.approx(
        np.mean(predicted[client] == labels[client]))
    assert entry['true_positive_rate'] == pytest.approx(
        np.mean(predicted[client][positives]))
    assert entry['false_positive_rate'] == pytest.approx(
        np.mean(predicted[client][~positives]))


def test_rejects_invalid_group_id():
  predicted, labels, groups, mask = _table()
  groups[1, 0] = 3

  with pytest.raises(ValueError, match=r'`groups` must be in \[0, 3\)'):
    subgroups.subgroup_report(
        predicted, labels, groups, mask, group_names=GROUP_NAMES
    )


def test_rejects_non_binary_label():
  predicted, labels, groups, mask = _table()
  labels[0, 1] = 2

  with pytest.raises(ValueError, match='`labels` must be 0 or 1'):
    subgroups.subgroup_report(
        predicted, labels, groups, mask, group_names=GROUP_NAMES
    )


def test_rejects_shape_mismatch():
  predicted, labels, groups, mask = _table()

  with pytest.raises(ValueError, match='`groups` must be 2-D'):
    subgroups.subgroup_report(
        predicted, labels, groups[:, :3], mask, group_names=GROUP_NAMES
    )


def test_rejects_non_bool_mask():
  predicted, labels, groups, mask = _table()

  with pytest.raises(TypeError, match='`mask` must be bool'):
    subgroups.subgroup_report(
        predicted, labels, groups, mask.astype(int), group_names=GROUP_NAMES
    )


def test_rejects_wrong_client_names():
  predicted, labels, groups, mask = _table()

  with pytest.raises(ValueError, match='must be 2 unique names'):
    subgroups.subgroup_report(
        predicted, labels, groups, mask,
        group_names=GROUP_NAMES, client_names=['north'],
    )


def test_band_ids_left_closed():
  ids = subgroups.band_ids([29.0, 49.9, 50.0, 59.0, 60.0, 77.0], [50, 60])

  np.testing.assert_array_equal(ids, [0, 0, 1, 1, 2, 2])


def test_band_ids_rejects_unsorted_edges():
  with pytest.raises(ValueError, match='strictly increasing'):
    subgroups.band_ids([1.0], [60, 50])


def test_band_ids_rejects_nan_edges():
  with pytest.raises(ValueError, match='without NaN; got \\[nan\\]'):
    subgroups.band_ids([1.0, 2.0], [np.nan])
  with pytest.raises(ValueError, match='without NaN'):
    subgroups.band_ids([1.0], [50.0, np.nan])


def test_band_ids_rejects_nan_values():
  # A missing age must not count as "60 or more".
  values = np.array([[np.nan, 45.0, 72.0], [50.0, np.nan, 0.0]])

  with pytest.raises(
      ValueError, match=r'2 NaN value\(s\), at indices \[\(0, 0\), \(1, 1\)\]'
  ):
    subgroups.band_ids(values, [50, 60])


def test_band_ids_integer_values_keep_shape():
  ids = subgroups.band_ids(np.array([[49, 50], [60, 0]]), [50, 60])

  assert ids.dtype == np.int64
  np.testing.assert_array_equal(ids, [[0, 1], [2, 0]])


def test_tied_gap_names_two_groups():
  # With equal values, max and min both named the first group, which read
  # as a group compared with itself.
  report = subgroups.subgroup_report(
      [[1, 1, 0, 0]], [[1, 1, 0, 0]], [[0, 1, 0, 1]], [[True] * 4],
      group_names=['x', 'y'])
  gap = report['pooled']['gaps']['accuracy_gap']
  assert gap['value'] == 0.0
  assert gap['min_group'] == 'x'
  assert gap['max_group'] == 'y'
