"""benchmarks/secure_aggregation.py at a tiny size.

No test asserts a timing threshold, because times depend on the machine.
"""

import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_POPULATION = 60
TINY_COHORT = 20
TINY = [
    '--population', str(TINY_POPULATION), '--complete', str(TINY_COHORT),
    '--harary', str(TINY_COHORT), '--repeats', '1',
]


@pytest.fixture(scope='module')
def benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_secure_aggregation',
      ROOT / 'benchmarks/secure_aggregation.py',
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def run(benchmark, tmp_path_factory):
  """Run the tiny benchmark once and return its results and page."""
  path = tmp_path_factory.mktemp('secure') / 'RESULTS.md'
  results = benchmark.main([*TINY, '--results', str(path)])
  return results, path.read_text()


def test_page_heading_and_tables(run, markdown_tables):
  _, page = run

  assert page.startswith('### Secure aggregation overhead, ')
  assert 'benchmarks/secure_aggregation.py --population 60' in page
  assert len(markdown_tables(page)) == 2


def test_timing_table_structure(run, markdown_tables):
  _, page = run
  timing = markdown_tables(page)[0]

  assert [row['graph'] for row in timing] == ['complete', 'harary']
  for row in timing:
    assert row['cohort'] == str(TINY_COHORT), row['graph']
    for column in ('plain s per round', 'secure s per round', 'x plain'):
      assert math.isfinite(float(row[column])), (row['graph'], column)
      assert float(row[column]) > 0, (row['graph'], column)
    assert float(row['plain compile s']) >= 0, row['graph']
    assert float(row['secure compile s']) >= 0, row['graph']


def test_ratio_is_secure_over_plain(run):
  results, _ = run

  for result in results:
    assert result['x_plain'] == pytest.approx(
        result['secure_s'] / result['plain_s'])
    assert result['overhead_s'] == pytest.approx(
        result['secure_s'] - result['plain_s'])


def test_graph_degrees_and_thresholds(run):
  results, _ = run
  complete, harary = results

  assert complete['degree'] == TINY_COHORT - 1
  assert complete['threshold'] == TINY_COHORT // 2
  # About 2 log2(20), rounded up to an even number.
  assert harary['degree'] == 10
  assert harary['threshold'] == 6


def test_complete_bytes_exceed_harary(run):
  results, _ = run
  complete, harary = results

  assert complete['client_bytes_up'] > harary['client_bytes_up']
  assert complete['client_bytes_down'] > harary['client_bytes_down']
  assert complete['server_bytes'] > harary['server_bytes']
  assert (complete['client_prg_expansions']
          > harary['client_prg_expansions'])


def test_costs_cover_the_cohort(run):
  results, _ = run

  for result in results:
    # d = 610 parameters plus the weight coordinate, as float32.
    assert result['plain_bytes_up'] == 611 * 4, result['graph']
    assert result['client_bytes_up'] > result['plain_bytes_up']
    assert 0 < result['reconstructions'] <= TINY_COHORT, result['graph']
    assert result['failed_rounds'] == 0, result['graph']


def test_invalid_cohort_rejected(benchmark):
  with pytest.raises(SystemExit):
    benchmark.main(['--population', '10', '--harary', '20'])


def test_no_cases_rejected(benchmark):
  with pytest.raises(SystemExit):
    benchmark.main(['--complete', '--harary'])


def test_results_folder_rejected(benchmark, capsys):
  with pytest.raises(SystemExit):
    benchmark.main(['--results', '.'])

  assert '--results must be a file path' in capsys.readouterr().err
