"""experiments/vertical_heart.py at --quick size."""

import json

import numpy as np
import pytest

from fedjax_med.vertical import data


@pytest.fixture(scope='module')
def script(load_script):
  return load_script('experiments/vertical_heart.py')


@pytest.fixture(scope='module')
def quick_run(script, tmp_path_factory):
  out = tmp_path_factory.mktemp('vertical_heart')
  status = script.main(['--quick', '--out', str(out)])
  lines = (out / 'results.jsonl').read_text().splitlines()
  return status, out, [json.loads(line) for line in lines]


def _model(records, setting, loss):
  for record in records:
    if record.get('setting') == setting and record.get('loss') == loss:
      return record
  raise AssertionError(f'no {setting} {loss} record')


def test_quick_run_writes_outputs(quick_run, markdown_tables):
  status, out, records = quick_run
  page = (out / 'results.md').read_text()
  assert status == 0
  assert (out / 'vertical_heart.png').stat().st_size > 0
  assert page.startswith('# Vertical logistic regression on Fed-Heart-Disease')
  accuracy, timing, costs = markdown_tables(page)
  assert len(accuracy) == 8
  assert accuracy[1]['setting'] == 'primary_care alone (if it had the labels)'
  assert [row['training'] for row in timing][-1] == (
      'vertical, Paillier, taylor loss, 512-bit key')
  assert {row['party'] for row in costs} == {
      'cardiology', 'primary_care', 'ecg', 'dealer', 'arbiter'}
  assert len(records) == 9  # PSI and 8 models


def test_quick_run_psi_finds_intersection(quick_run):
  _, _, records = quick_run
  psi_record = records[0]
  dataset = data.split_heart_disease(seed=0)
  sets = [{i for i in p.ids if i.startswith('va-')} for p in dataset.parties]
  assert psi_record['kind'] == 'psi'
  assert psi_record['set_sizes'] == [len(s) for s in sets]
  assert psi_record['intersection_size'] == len(set.intersection(*sets))
  # Every party hashes and raises each element of every set once.
  for party in ('cardiology', 'primary_care', 'ecg'):
    assert psi_record['cost'][party]['exponentiations'] == sum(map(len, sets))


def test_quick_run_protocols_match_centralized(quick_run):
  _, _, records = quick_run
  for loss in ('exact', 'taylor'):
    secret = _model(records, 'vertical, secret sharing', loss)
    central = _model(records, 'centralized', loss)
    assert secret['max_weight_gap'] < 1e-5
    assert secret['accuracy'] == central['accuracy']
    assert secret['train_loss'] == pytest.approx(central['train_loss'],
                                                 abs=1e-6)
  assert _model(records, 'vertical, Paillier', 'taylor')['max_weight_gap'] < 1e-9


def test_quick_run_costs_per_epoch(quick_run):
  _, _, records = quick_run
  paillier = _model(records, 'vertical, Paillier', 'taylor')['cost']
  secret = _model(records, 'vertical, secret sharing', 'exact')['cost']
  assert paillier['arbiter']['decryptions'] > 0
  assert paillier['primary_care']['encryptions'] > 0
  assert secret['dealer']['bytes_sent'] > 0
  assert secret['ecg']['encryptions'] == 0


def test_restrict_hospitals_keeps_prefix(script):
  dataset = script.restrict_hospitals(data.split_heart_disease(), ('va',))
  for party in dataset.parties:
    assert party.ids
    assert all(i.startswith('va-') for i in party.ids)
  holder = dataset.parties[0]
  assert holder.labels.shape == (len(holder.ids),)
  assert np.isin(holder.labels, (0, 1)).all()
