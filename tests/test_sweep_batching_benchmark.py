"""benchmarks/sweep_batching.py at a tiny size.

The grids are cut to 2 heart points and 2 synthetic points (40 clients) of
2 rounds, because the loop mode compiles its programs again for every point. No test
asserts a timing threshold, because times depend on the machine.
"""

import dataclasses
import importlib.util
import math
import pathlib

import jax
import pytest

from fedjax_med import errors

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_sweep_batching', ROOT / 'benchmarks/sweep_batching.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _table_rows(page):
  """Return the markdown table body as {workload: {column: cell}}."""
  lines = [line for line in page.splitlines() if line.startswith('|')]
  header = [cell.strip().replace('\\|', '|')
            for cell in lines[0].strip('|').split(' | ')]
  rows = {}
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip('|').split(' | ')]
    rows[cells[0]] = dict(zip(header, cells))
  return rows


@pytest.fixture(scope='module')
def benchmark():
  return _load_benchmark()


@pytest.fixture
def without_compilation_cache():
  # A cache hit skips the backend compile that the benchmark counts.
  jax.config.update('jax_enable_compilation_cache', False)
  yield
  jax.config.update('jax_enable_compilation_cache', True)


def test_sweep_batching_section(benchmark, tmp_path, monkeypatch,
                                without_compilation_cache):
  del without_compilation_cache
  heart = benchmark.WORKLOADS['heart']
  synthetic = benchmark.WORKLOADS['synthetic']
  # Each learning rate is a constant of its loop point's program, so the
  # loop compiles once per point and the batched grid once.
  monkeypatch.setitem(benchmark.WORKLOADS, 'heart', dataclasses.replace(
      heart, axes={'seeds': [0], 'client.learning_rate': [0.01, 0.1]}))
  # Dirichlet alphas 1 and 100 give largest clients more than
  # sweep.MAX_PADDING apart, so the sweep would run those two points one by
  # one. Alphas 30 and 100 stay batched.
  small_synthetic = {
      **synthetic.base_overrides, 'data.num_clients': 40,
      'data.partition_clients': 40, 'sampling.cohort_size': 4,
  }
  monkeypatch.setitem(benchmark.WORKLOADS, 'synthetic', dataclasses.replace(
      synthetic, base_overrides=small_synthetic,
      axes={'seeds': [0], 'data.dirichlet_alpha': [30.0, 100.0]}))
  results = tmp_path / 'RESULTS.md'

  rows = benchmark.main([
      '--workloads', 'heart', 'synthetic', '--rounds', '2',
      '--results', str(results), '--out', str(tmp_path / 'scratch'),
  ])

  page = results.read_text()
  table = _table_rows(page)
  assert page.startswith('### Sweep batching, ')
  assert 'heart ran the loop mode first' in page
  assert 'synthetic ran the batched mode first' in page
  assert sorted(table) == ['heart', 'synthetic']
  assert table['heart']['points'] == '2'
  assert table['synthetic']['points'] == '2'
  for name, cells in table.items():
    assert cells['rounds'] == '2', name
    assert float(cells['loop s']) > 0, name
    assert float(cells['batched s']) > 0, name
    assert math.isfinite(float(cells['loop/batched'].removesuffix('x'))), name
    assert int(cells['compilations loop']) > 0, name
    assert int(cells['compilations batched']) > 0, name
    assert float(cells['max |accuracy difference|']) < 1e-6, name
  for row in rows:
    assert row['points_batched'] == row['points'], row['workload']
    assert row['points_not_compared'] == 0, row['workload']
  # Every loop point compiles its own programs, but the batched grid shares
  # one set.
  heart_row = rows[0]
  assert heart_row['compilations_loop'] > heart_row['compilations_batched']


def test_sweep_batching_rejects_zero_rounds(benchmark, capsys):
  with pytest.raises(SystemExit):
    benchmark.main(['--rounds', '0'])

  assert '--rounds must be at least 1' in capsys.readouterr().err


@pytest.mark.parametrize('relative, message', [
    ('file', '--out must be a folder'),
    ('file/sub', 'is a file, not a folder'),
])
def test_sweep_batching_rejects_out(benchmark, capsys, tmp_path, relative,
                                    message):
  (tmp_path / 'file').write_text('')

  with pytest.raises(SystemExit):
    benchmark.main(['--out', str(tmp_path / relative)])

  assert message in capsys.readouterr().err


def test_sweep_batching_rejects_results_folder(benchmark, capsys):
  with pytest.raises(SystemExit):
    benchmark.main(['--results', '.'])

  assert '--results must be a file path' in capsys.readouterr().err


def test_sweep_batching_ctrl_c_exits_130(benchmark, capsys, tmp_path,
                                         monkeypatch):
  # A stop inside a sweep ended the benchmark with a traceback.
  def interrupted(*args):
    del args
    raise errors.StudyInterrupted(tmp_path, 0)

  monkeypatch.setattr(benchmark, 'run', interrupted)
  results = tmp_path / 'RESULTS.md'

  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(['--results', str(results)])

  assert exit_info.value.code == 130
  assert not results.exists()
  assert 'sweep_batching.py: interrupted;' in capsys.readouterr().err
