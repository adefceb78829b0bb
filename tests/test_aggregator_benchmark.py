"""benchmarks/aggregator_time.py at a tiny size.

No test asserts a timing threshold, because times depend on the machine.
"""

import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--clients', '50', '--dims', '8', '--repeats', '1']


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_aggregator_time', ROOT / 'benchmarks/aggregator_time.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _table_rows(page):
  """Return the markdown table body as {aggregator: {column: cell}}."""
  lines = [line for line in page.splitlines() if line.startswith('|')]
  header = [cell.strip() for cell in lines[0].strip('|').split('|')]
  rows = {}
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip('|').split('|')]
    rows[cells[0]] = dict(zip(header, cells))
  return rows


@pytest.fixture(scope='module')
def benchmark():
  return _load_benchmark()


def test_aggregator_time_table(benchmark, tmp_path):
  results = tmp_path / 'RESULTS.md'

  rows = benchmark.main([*TINY, '--results', str(results)])

  names = benchmark.aggregator_names()
  table = _table_rows(results.read_text())
  assert [row['aggregator'] for row in rows] == list(names)
  assert sorted(table) == sorted(names)
  assert 'centered_clipping' in table
  for name, cells in table.items():
    compile_s = float(cells['compile s'])
    milliseconds = float(cells['ms per call'])
    ratio = float(cells['x mean'])
    assert math.isfinite(compile_s), name
    assert compile_s > 0, name
    assert math.isfinite(milliseconds), name
    assert milliseconds > 0, name
    assert math.isfinite(ratio), name
    assert ratio > 0, name
    assert cells['calls timed'] == '1', name
  assert table['mean']['x mean'] == '1.0'


def test_aggregator_time_rows(benchmark):
  rows = benchmark.main([*TINY, '--aggregators', 'krum', 'bulyan', 'krum'])

  by_name = {row['aggregator']: row for row in rows}
  assert [row['aggregator'] for row in rows] == ['mean', 'krum', 'bulyan']
  assert by_name['mean']['x_mean'] == 1.0
  for row in rows:
    assert row['seconds_per_call'] > 0
    assert row['estimated_from'] is None
    assert row['skip_reason'] is None
  assert by_name['krum']['settings'] == 'f=5'
  assert by_name['bulyan']['settings'] == 'f=5'


def test_aggregator_time_bulyan_estimate(benchmark, tmp_path):
  results = tmp_path / 'RESULTS.md'

  rows = benchmark.main([
      *TINY, '--aggregators', 'bulyan', '--bulyan-max-clients', '20',
      '--results', str(results),
  ])

  bulyan = next(row for row in rows if row['aggregator'] == 'bulyan')
  estimate = bulyan['estimated_from']
  page = results.read_text()
  assert estimate['clients'] == 20
  assert estimate['settings'] == 'f=2'
  assert estimate['scale'] == pytest.approx(
      (50 / 20)**3 * math.log(50) / math.log(20)
  )
  assert bulyan['seconds_per_call'] == pytest.approx(
      estimate['seconds_per_call'] * estimate['scale']
  )
  assert _table_rows(page)['bulyan']['ms per call'].startswith('~')
  assert 'This is an estimate, not a measurement.' in page


def test_aggregator_time_skips_oversized(benchmark, tmp_path, monkeypatch):
  monkeypatch.setattr(
      benchmark.machine, 'device_available_bytes', lambda device: 1
  )
  results = tmp_path / 'RESULTS.md'

  rows = benchmark.main([
      *TINY, '--aggregators', 'krum', '--results', str(results),
  ])

  table = _table_rows(results.read_text())
  assert [row['seconds_per_call'] for row in rows] == [None, None]
  assert all('GiB available' in row['skip_reason'] for row in rows)
  assert table['krum']['ms per call'] == 'skipped'
  assert table['mean']['x mean'] == 'skipped'


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--clients', '2'], '--clients must each be at least 3'),
        (['--repeats', '0'], '--repeats must be at least 1'),
        (['--byzantine-fraction', '0.5'], '--byzantine-fraction must be'),
        (['--results', '.'], '--results must be a file path'),
    ],
)
def test_aggregator_time_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err


def test_num_byzantine_respects_bounds(benchmark):
  assert benchmark.num_byzantine('krum', 10000, 0.1) == 1000
  assert benchmark.num_byzantine('bulyan', 10000, 0.1) == 1000
  assert benchmark.num_byzantine('krum', 10, 0.45) == 3  # n > 2f + 2
  assert benchmark.num_byzantine('bulyan', 10, 0.45) == 1  # n >= 4f + 3
  assert benchmark.num_byzantine('bulyan', 3, 0.1) == 0
