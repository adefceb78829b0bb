"""experiments/secure_aggregation.py at --quick size, and its helpers."""

import importlib.util
import json
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_secure_aggregation',
      ROOT / 'experiments/secure_aggregation.py',
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def script():
  return _load_script()


@pytest.fixture(scope='module')
def quick_run(script, tmp_path_factory):
  out = tmp_path_factory.mktemp('secure_aggregation')
  status = script.main(['--quick', '--out', str(out)])
  lines = (out / 'results.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  return status, out, records


def _runs(records):
  return [record for record in records if record['kind'] == 'run']


def _run(records, mode, sweep='dropout', dropout_rate=0.0):
  for record in _runs(records):
    if (record['mode'] == mode and record['sweep'] == sweep
        and record['dropout_rate'] == dropout_rate):
      return record
  raise AssertionError(f'no {mode} run in sweep {sweep}')


def test_quick_run_writes_outputs(quick_run):
  status, out, _ = quick_run

  page = (out / 'results.md').read_text()

  assert status == 0
  assert (out / 'secure_aggregation.png').stat().st_size > 0
  assert page.startswith('# Secure aggregation: accuracy and cost')
  assert '## Fed-Heart-Disease, 2 rounds' in page
  assert '## Cost model, d = 611, no dropout' in page
  assert '| 4 | 0 | secure | complete (3, 2) |' in page
  summary = out / 'runs' / 'heart_disease_dropout_c4_d0_secure'
  assert (summary / 'summary.json').is_file()


def test_quick_run_modes_in_order(quick_run):
  _, _, records = quick_run

  runs = _runs(records)

  assert [run['mode'] for run in runs] == [
      'plain', 'secure', 'secure_dp', 'secure']
  assert [run['sweep'] for run in runs] == [
      'dropout', 'dropout', 'dropout', 'failure']


def test_secure_accuracy_equals_plain(quick_run):
  _, _, records = quick_run

  plain = _run(records, 'plain')
  secure = _run(records, 'secure')

  assert secure['failed_rounds'] == 0
  assert secure['mean_accuracy'] == pytest.approx(
      plain['mean_accuracy'], abs=1e-6)
  assert secure['worst_accuracy'] == pytest.approx(
      plain['worst_accuracy'], abs=1e-6)


def test_secure_costs_reported(quick_run):
  _, _, records = quick_run

  secure = _run(records, 'secure')

  assert secure['degree'] == 3
  assert secure['threshold'] == 2
  assert secure['mean_client_bytes_up'] > secure['mean_plain_bytes_up']
  assert secure['mean_client_prg_expansions'] == 4
  assert secure['mean_reconstructions'] == 4
  assert secure['noise_sigma'] == 0


def test_distributed_dp_epsilon_and_noise(quick_run):
  _, _, records = quick_run

  private = _run(records, 'secure_dp')
  plain = _run(records, 'plain')

  assert math.isfinite(private['epsilon'])
  assert private['epsilon'] > 0
  assert private['noise_sigma'] > 0
  assert private['min_reporting_clients'] == 4
  assert private['below_min_released_rounds'] == 0
  assert private['mean_accuracy'] != plain['mean_accuracy']


def test_high_threshold_failures_reported(quick_run):
  _, _, records = quick_run

  failure = _run(records, 'secure', sweep='failure', dropout_rate=0.5)

  assert failure['threshold'] == failure['degree'] == 3
  assert failure['failed_rounds'] >= 1
  assert failure['skipped_rounds'] >= failure['failed_rounds']
  assert failure['failure_bound'] > 0.5


def test_complete_bytes_exceed_harary(quick_run):
  _, _, records = quick_run

  model = [record for record in records if record['kind'] == 'cost_model']
  by_key = {(row['graph'], row['cohort']): row for row in model}

  assert {row['cohort'] for row in model} == {4, 50, 200}
  for cohort in (4, 50, 200):
    complete = by_key['complete', cohort]
    harary = by_key['harary', cohort]
    assert complete['degree'] > harary['degree'], cohort
    assert complete['client_bytes_up'] > harary['client_bytes_up'], cohort
    assert complete['client_bytes_down'] > harary['client_bytes_down'], cohort


def test_harary_degree_meets_failure_bound(script):
  degree = script.harary_degree(1000, 0.3)

  assert degree % 2 == 0
  assert degree > script.protocol.default_degree(1000)
  assert script.failure_bound('harary', 1000, degree, 0.3) <= 0.01
  assert script.failure_bound('harary', 1000, degree - 2, 0.3) > 0.01


def test_harary_degree_default_without_dropout(script):
  assert script.harary_degree(1000, 0.0) == script.protocol.default_degree(
      1000)


def test_harary_degree_capped_at_cohort(script):
  assert script.harary_degree(10, 0.5) == 8


def test_min_reporting_clients_rule(script):
  assert script.min_reporting_clients(100, 0.0, 8) == 100
  # 90 expected survivors minus 4 standard deviations of 3.
  assert script.min_reporting_clients(100, 0.1, 8) == 78
  # The threshold is the floor: fewer survivors fail the round.
  assert script.min_reporting_clients(4, 0.3, 2) == 2


def test_binomial_cdf_matches_sum(script):
  assert script.binomial_cdf(0, 3, 0.5) == pytest.approx(0.125)
  assert script.binomial_cdf(3, 3, 0.5) == pytest.approx(1.0)
  assert script.binomial_cdf(1, 4, 0.3) == pytest.approx(
      0.7**4 + 4 * 0.3 * 0.7**3)


@pytest.mark.parametrize('value', ['-1', str(2**32), '1.5'])
def test_rejects_invalid_seed(script, capsys, value):
  with pytest.raises(SystemExit) as exit_info:
    script._parse_args([f'--seed={value}'])  # pylint: disable=protected-access

  assert exit_info.value.code == 2
  assert 'argument --seed' in capsys.readouterr().err
