"""benchmarks/scaling.py at a tiny size.

Each case of the benchmark runs in its own Python process, so the table test
starts two processes (the floor and one variant at one client count), each
of which imports JAX and compiles its program. No test asserts a timing
threshold, because times depend on the machine.
"""

import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_scaling', ROOT / 'benchmarks/scaling.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _table_rows(page):
  """Return the markdown table body as {(clients, variant): {column: cell}}."""
  lines = [line for line in page.splitlines() if line.startswith('|')]
  header = [cell.strip() for cell in lines[0].strip('|').split('|')]
  rows = {}
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip('|').split('|')]
    row = dict(zip(header, cells))
    rows[(row['clients'], row['variant'])] = row
  return rows


@pytest.fixture(scope='module')
def benchmark():
  return _load_benchmark()


def test_scaling_table_and_figure(benchmark, tmp_path):
  results_page = tmp_path / 'RESULTS.md'
  figure = tmp_path / 'figures' / 'scaling.png'

  results = benchmark.main([
      '--clients', '50', '--variants', 'mean', '--repeats', '1',
      '--results', str(results_page), '--figure', str(figure),
  ])

  page = results_page.read_text()
  table = _table_rows(page)
  assert sorted(table) == [('50', 'floor'), ('50', 'mean')]
  for key, cells in table.items():
    seconds = float(cells['s per round'])
    assert math.isfinite(seconds), key
    assert seconds > 0, key
    assert float(cells['compile s'].replace(',', '')) >= 0, key
    assert float(cells['peak RSS MB'].replace(',', '')) > 0, key
    assert cells['rounds timed'] == '1', key
  assert float(table[('50', 'mean')]['x floor']) > 0
  assert float(table[('50', 'mean')]['client updates/s']
               .replace(',', '')) > 0
  for result in results:
    assert result.get('params_finite'), result
  mean_results = [result for result in results if result['variant'] == 'mean']
  assert [result['num_contributing'] for result in mean_results] == [50]
  assert page.startswith('### Round scaling, ')
  assert 'mean: no slope' in page
  assert figure.stat().st_size > 0


def test_scaling_case_skipped_when_memory_short(benchmark):
  result = benchmark.run_case(
      benchmark.FLOOR, 20, repeats=1, timeout_s=60, memory_limit_mb=1e-6
  )

  assert 'MB is available' in result['skip_reason']
  assert 'seconds_per_round' not in result
  assert result['xla_temp_mb'] > 0


def test_scaling_case_timeout_recorded(benchmark):
  result = benchmark.measure_in_subprocess(
      'mean', 50, repeats=1, timeout_s=0.5, memory_limit_mb=None
  )

  assert result['error'] == 'timed out after 0.5 s'
  assert 'seconds_per_round' not in result


def test_scaling_slope_fit(benchmark):
  results = [
      {'variant': 'mean', 'clients': clients, 'seconds_per_round': seconds}
      for clients, seconds in [(100, 5.0), (1000, 1.0), (10000, 10.0),
                               (100000, 100.0)]
  ]
  results.append({'variant': 'mean', 'clients': 1000000, 'error': 'killed'})

  slope, count = benchmark.fit_slope(results, 'mean', fit_from=1000)

  assert slope == pytest.approx(1.0)
  assert count == 3
  assert benchmark.fit_slope(results, 'mean', fit_from=100000) is None


def test_scaling_matmul_flops(benchmark):
  # 16 rows x 5 steps x 2 FLOPs x (2 x 32 x 64 + 3 x 64 x 1) per client.
  assert benchmark.matmul_flops(1) == 16 * 5 * 2 * (2 * 32 * 64 + 3 * 64)
  assert benchmark.matmul_flops(10) == 10 * benchmark.matmul_flops(1)


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--clients', '0'], '--clients must each be at least 1'),
        (['--repeats', '0'], '--repeats must be at least 1'),
        (['--timeout', '0'], 'not positive and finite'),
        (['--timeout', 'inf'], 'not positive and finite'),
        (['--timeout', 'nan'], 'not positive and finite'),
        (['--results', '.'], '--results must be a file path'),
        (['--figure', '.'], '--figure must be a file path'),
    ],
)
def test_scaling_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err


def test_scaling_results_before_figure(benchmark, tmp_path, monkeypatch):
  results = tmp_path / 'RESULTS.md'

  def failing_plot(results, variants, path):
    del results, variants, path
    raise RuntimeError('no figure')

  monkeypatch.setattr(benchmark, 'run', lambda *args, **kwargs: [])
  monkeypatch.setattr(benchmark, 'markdown',
                      lambda *args, **kwargs: '### Round scaling\n')
  monkeypatch.setattr(benchmark, 'plot', failing_plot)

  with pytest.raises(RuntimeError, match='no figure'):
    benchmark.main(['--clients', '1', '--results', str(results),
                    '--figure', str(tmp_path / 'scaling.png')])

  assert results.read_text() == '### Round scaling\n'
