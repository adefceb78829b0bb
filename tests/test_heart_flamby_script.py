"""The Fed-Heart-Disease benchmark script, at reduced size."""

import contextlib
import importlib.util
import io
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_HOSPITALS = 4


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_heart_flamby_benchmark',
      ROOT / 'experiments/heart_flamby_benchmark.py',
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(arguments):
  script = _load_script()
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    status = script.main(arguments)
  return status, output.getvalue()


@pytest.fixture(scope='module')
def reduced_run():
  return _run([
      '--seeds', '0', '--rounds', '2', '--local-steps', '10',
      '--strategies', 'fedavg', 'fedadam',
  ])


def _table_rows(output, label):
  prefix = f'| {label} |'
  return [line for line in output.splitlines() if line.startswith(prefix)]


def _mean_cell(row):
  return float(row.split('|')[2].split('±')[0])


def test_reduced_run_succeeds(reduced_run):
  status, output = reduced_run

  assert status == 0
  assert 'Command: python' in output
  assert 'rounds: 2' in output


@pytest.mark.parametrize('label', ['FedAvg', 'FedAdam'])
def test_row_per_strategy(reduced_run, label):
  _, output = reduced_run

  rows = _table_rows(output, label)

  # One row in the summary table and one in the per-hospital table.
  assert len(rows) == 2
  assert 0.0 <= _mean_cell(rows[0]) <= 1.0
  assert len(rows[1].split('|')) == NUM_HOSPITALS + 3


def test_per_hospital_header(reduced_run):
  _, output = reduced_run

  assert '| Strategy | cleveland | hungarian | switzerland | va |' in output


def test_unselected_strategy_absent(reduced_run):
  _, output = reduced_run

  assert _table_rows(output, 'Pooled') == []
  assert _table_rows(output, 'FedProx') == []
  assert 'Local 0' not in output


def test_local_adds_row_per_hospital():
  status, output = _run([
      '--seeds', '0', '--pooled-epochs', '1', '--strategies', 'local',
  ])

  assert status == 0
  for index, name in enumerate(
      ['cleveland', 'hungarian', 'switzerland', 'va']
  ):
    rows = _table_rows(output, f'Local {index} ({name})')
    assert len(rows) == 2
    assert 0.0 <= _mean_cell(rows[0]) <= 1.0


def test_invalid_rounds_rejected(capsys):
  script = _load_script()

  with pytest.raises(SystemExit):
    script.main(['--rounds', '0'])

  assert '--rounds must be in [1, 100000]; got 0.' in capsys.readouterr().err


@pytest.mark.parametrize('seeds, message', [
    (['0', '0'], '0 given more than once'),
    (['-1'], '--seeds must be integers'),
])
def test_invalid_seeds_rejected(capsys, seeds, message):
  script = _load_script()

  with pytest.raises(SystemExit) as exit_info:
    script.main(['--seeds', *seeds])

  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_single_seed_has_no_spread(reduced_run):
  _, output = reduced_run

  # One seed has no sample standard deviation to print.
  for row in _table_rows(output, 'FedAvg'):
    assert '±' not in row
