"""benchmarks/median_round.py at a tiny size.

No test asserts a timing threshold, because times depend on the machine.
"""

import importlib.util
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.aggregation import median

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    '--clients', '12', '--examples', '8', '--features', '4',
    '--hidden-sizes', '3', '--local-steps', '2', '--batch-size', '4',
    '--repeats', '1',
]


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_median_round', ROOT / 'benchmarks/median_round.py'
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
    row = dict(zip(header, cells))
    rows[row['aggregator']] = row
  return rows


@pytest.fixture(scope='module')
def benchmark():
  return _load_benchmark()


def test_median_round_section(benchmark, tmp_path):
  results = tmp_path / 'RESULTS.md'
  library_median = median.coordinate_median

  rows = benchmark.main([*TINY, '--results', str(results)])

  page = results.read_text()
  table = _table_rows(page)
  assert [row['aggregator'] for row in rows] == list(benchmark.AGGREGATORS)
  assert sorted(table) == sorted(benchmark.AGGREGATORS)
  # 4 x 3 + 3 hidden parameters, 3 x 1 + 1 output parameters.
  assert all(cells['parameters'] == '19' for cells in table.values())
  for name, cells in table.items():
    assert cells['clients'] == '12', name
    assert float(cells['first call s']) > 0, name
    assert math.isfinite(float(cells['ms per round'])), name
    assert float(cells['ms per round']) > 0, name
    assert cells['calls timed'] == '1', name
  assert table['mean']['x mean'] == '1.00'
  assert page.startswith('### Median round time, ')
  assert 'differ by at most 0.0e+00' in page
  # The sort-median round swaps the library function only while it compiles.
  assert median.coordinate_median is library_median


def test_sort_median_baseline_matches_library(benchmark):
  rng = np.random.default_rng(0)
  updates = {'a': jnp.asarray(rng.normal(size=(9, 3, 2)), jnp.float32),
             'b': jnp.asarray(rng.normal(size=(9,)), jnp.float32)}
  mask = jnp.asarray(rng.random(9) < 0.6)

  baseline = benchmark.sort_median(updates, mask)
  library = median.coordinate_median(updates, mask)

  for name in ('a', 'b'):
    np.testing.assert_array_equal(baseline[name], library[name])


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--clients', '0'], '--clients must each be at least 1'),
        (['--repeats', '0'], '--repeats must be at least 1'),
        (['--batch-size', '0'], '--batch-size must be at least 1'),
        (['--learning-rate', 'nan'], 'not positive and finite'),
        (['--learning-rate', 'inf'], 'not positive and finite'),
        (['--results', '.'], '--results must be a file path'),
    ],
)
def test_median_round_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err
