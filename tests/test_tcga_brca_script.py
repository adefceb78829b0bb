"""The Fed-TCGA-BRCA benchmark script, at reduced size."""

import contextlib
import importlib.util
import io
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_tcga_brca_flamby', ROOT / 'experiments/tcga_brca_flamby.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def reduced_run():
  script = _load_script()
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    status = script.main([
        '--seeds', '0', '--rounds', '2', '--local-steps', '10',
        '--strategies', 'fedavg', 'fedadam',
    ])
  return status, output.getvalue()


def _table_rows(output, label):
  prefix = f'| {label} |'
  return [line for line in output.splitlines() if line.startswith(prefix)]


def test_reduced_run_succeeds(reduced_run):
  status, output = reduced_run

  assert status == 0
  assert 'Command: python' in output
  assert 'rounds: 2' in output


@pytest.mark.parametrize('label', ['FedAvg', 'FedAdam'])
def test_row_per_strategy(reduced_run, label):
  _, output = reduced_run

  rows = _table_rows(output, label)

  # One row in the summary table and one in the per-client table.
  assert len(rows) == 2
  mean_cell = rows[0].split('|')[2].strip()
  mean = float(mean_cell.split('±')[0])
  assert 0.0 <= mean <= 1.0
  assert len(rows[1].split('|')) == 6 + 3


def test_unselected_strategy_absent(reduced_run):
  _, output = reduced_run

  assert _table_rows(output, 'Pooled') == []
  assert _table_rows(output, 'FedProx') == []


def test_invalid_rounds_rejected():
  script = _load_script()

  with pytest.raises(SystemExit):
    script.main(['--rounds', '0'])
