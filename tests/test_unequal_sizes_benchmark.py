"""benchmarks/unequal_sizes.py at a tiny size.

No test asserts a timing threshold, because times depend on the machine.
"""

import importlib.util
import math
import pathlib

import numpy as np
import pytest

from fedjax_med.client import local_training

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_CLIENTS = 16
TINY = ['--clients', str(TINY_CLIENTS), '--repeats', '1']
CASES = [
    'equal', 'unequal', 'equal, padded', 'unequal, no shuffle',
    'equal, initial loss', 'unequal, initial loss',
]


@pytest.fixture(scope='module')
def benchmark():
  # The script imports its workload from benchmarks/scaling.py as
  # `scaling`, which works when Python runs it from that folder.
  with pytest.MonkeyPatch.context() as patch:
    patch.syspath_prepend(str(ROOT / 'benchmarks'))
    spec = importlib.util.spec_from_file_location(
        'benchmarks_unequal_sizes', ROOT / 'benchmarks/unequal_sizes.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


@pytest.fixture(scope='module')
def run(benchmark, tmp_path_factory):
  """Run the tiny benchmark once and return its results and page."""
  path = tmp_path_factory.mktemp('unequal') / 'RESULTS.md'
  results = benchmark.main([*TINY, '--results', str(path)])
  return results, path.read_text()


def test_page_heading_and_verdict(run, markdown_tables):
  _, page = run

  assert page.startswith('### Unequal client sizes, ')
  assert 'the target of at most 1.2x' in page
  assert len(markdown_tables(page)) == 2


def test_cases_table_structure(run, markdown_tables):
  _, page = run
  cases = markdown_tables(page)[0]

  assert [row['case'] for row in cases] == CASES
  assert [row['diagnostic'] for row in cases] == ['no'] * 2 + ['yes'] * 4
  for row in cases:
    assert row['clients'] == str(TINY_CLIENTS), row['case']
    assert float(row['compile s']) >= 0, row['case']
    assert math.isfinite(float(row['s per round'])), row['case']
    assert float(row['s per round']) > 0, row['case']
    assert float(row['spread ms']) >= 0, row['case']
  assert cases[0]['x equal'] == '1.00'


def test_cases_train_same_total_rows(run, markdown_tables):
  results, page = run
  cases = {row['case']: row for row in markdown_tables(page)[0]}
  total = TINY_CLIENTS * 64

  for result in results:
    assert result['total_rows'] == total, result['case']
  for name, row in cases.items():
    assert row['total rows'] == f'{total:,}', name
  assert cases['equal']['rows per client'] == '64'
  assert cases['equal']['padded to'] == '64'
  assert cases['unequal']['rows per client'] == '8-256'
  assert cases['unequal']['padded to'] == '256'
  assert cases['equal, padded']['padded to'] == '256'


def test_breakdown_table_structure(run, markdown_tables):
  _, page = run
  breakdown = markdown_tables(page)[1]

  assert [row['difference'] for row in breakdown] == [
      'unequal - equal',
      'equal, padded - equal',
      'unequal - unequal, no shuffle',
      'equal, initial loss - equal',
      'unequal, initial loss - unequal',
  ]
  for row in breakdown:
    assert math.isfinite(float(row['ms per round'])), row['difference']


def test_shuffle_restored_after_run(run):
  del run
  # The no-shuffle case replaces these only while its round compiles.
  assert local_training._visit_order.__module__ == local_training.__name__
  assert (local_training._epoch_permutation.__module__
          == local_training.__name__)


@pytest.mark.parametrize('num_clients', [16, 100, 1000])
def test_client_sizes_sum_and_range(benchmark, num_clients):
  sizes = benchmark.client_sizes(num_clients, 8, 256, 64)

  assert sizes.shape == (num_clients,)
  assert int(sizes.sum()) == 64 * num_clients
  assert int(sizes.min()) == 8
  assert int(sizes.max()) == 256


def test_client_sizes_too_few_clients(benchmark):
  with pytest.raises(ValueError, match='use more clients'):
    benchmark.client_sizes(2, 8, 256, 64)


def test_population_padding_is_zero(benchmark):
  sizes = np.array([3, 1, 5], np.int32)

  population = benchmark.make_population(sizes, 6)

  assert population.examples['x'].shape == (3, 6, 32)
  np.testing.assert_array_equal(population.num_examples, sizes)
  for client, size in enumerate(sizes):
    assert not np.any(population.examples['x'][client, size:])
    assert np.all(population.examples['x'][client, :size] != 0)


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--repeats', '0'], '--repeats must be at least 1'),
        (['--clients', '2'], 'use more clients'),
        (['--smallest', '100'], 'smallest < mean < largest'),
        (['--results', '.'], '--results must be a file path'),
    ],
)
def test_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err
