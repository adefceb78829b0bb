"""benchmarks/cnn_round.py at a tiny size, without pfl.

Compiling a round takes seconds per model, so one run of the script covers
lenet_digits only, with a subset of the cohort in the timed loop rounds.
The pfl_cifar10 case is checked by its settings and parameter count,
without training. No test asserts a timing threshold, because times depend
on the machine.
"""

import math

import jax
import jax.numpy as jnp
import pytest

ARGS = [
    '--digits-clients', '3', '--resnet-clients', '--cifar-clients', '0',
    '--repeats', '1', '--loop-max-clients', 'lenet_digits=2',
]
TIME_COLUMNS = (
    's per round', 'client updates/s', 'loop s per round',
    'loop client updates/s', 'loop / vmapped',
)
MEMORY_COLUMNS = (
    'peak RSS MB', 'client floor s', 'vmapped x floor', 'loop x floor',
)


def _table_rows(page, header_start):
  """Return the rows of the table whose header starts with `header_start`."""
  lines = page.splitlines()
  start = next(
      i for i, line in enumerate(lines) if line.startswith(header_start)
  )
  header = [cell.strip() for cell in lines[start].strip('|').split('|')]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    cells = [cell.strip() for cell in line.strip('|').split('|')]
    rows.append(dict(zip(header, cells)))
  return rows


def _number(cell):
  """Return a table cell's value; '~' marks an estimate."""
  return float(cell.replace(',', '').lstrip('~'))


@pytest.fixture(scope='module')
def benchmark(load_script):
  return load_script('benchmarks/cnn_round.py')


@pytest.fixture(scope='module')
def script_run(benchmark, tmp_path_factory):
  results_page = tmp_path_factory.mktemp('cnn_round') / 'RESULTS.md'
  results = benchmark.main([*ARGS, '--results', str(results_page)])
  return results, results_page.read_text()


def test_cnn_round_time_table(script_run):
  _, page = script_run

  rows = _table_rows(page, '| workload | variant | clients | cohort |')
  assert [(row['workload'], row['variant'], row['clients'])
          for row in rows] == [('lenet_digits', 'fedavg', '3')]
  row = rows[0]
  assert row['cohort'] == '3'
  assert row['local steps x batch'] == '3 x 8'
  assert row['rounds timed'] == '1'
  assert row['loop s per round'].startswith('~')
  for column in TIME_COLUMNS:
    value = _number(row[column])
    assert math.isfinite(value), column
    assert value > 0, column
  for column in ('compile s', 'loop compile s', 'params diff'):
    value = _number(row[column])
    assert math.isfinite(value), column
    assert value >= 0, column
  assert page.startswith('### CNN round throughput, ')
  assert '`python benchmarks/cnn_round.py --digits-clients 3 ' in page


def test_cnn_round_memory_table(script_run):
  _, page = script_run

  rows = _table_rows(page, '| workload | variant | clients | XLA')
  assert len(rows) == 1
  for column in MEMORY_COLUMNS:
    value = _number(rows[0][column])
    assert math.isfinite(value), column
    assert value > 0, column


def test_cnn_round_lenet_matches_loop(benchmark, script_run):
  results, page = script_run

  (result,) = results['cases']
  # The round must move the params, or equal params would prove nothing.
  assert result['max_params_change'] > 1e-4
  assert result['params_relative_difference'] <= benchmark.PARAMS_TOLERANCE
  # Both sides run the same float32 steps on 3 clients, so they agree far
  # closer than the tolerance, which allows for a ReLU or max-pool branch
  # taken differently.
  assert result['params_relative_difference'] < 1e-5
  assert result['params_match']
  assert result['params_finite']
  # The timed loop rounds train 2 of the 3 clients and scale to 3.
  assert result['loop_clients_timed'] == 2
  assert result['loop_seconds_per_round'] == pytest.approx(
      1.5 * result['loop_round_times'][0])
  assert 'within the tolerance' in page
  assert 'outside the tolerance' not in page
  assert '~ The lenet_digits loop timed 2 of the 3 cohort members' in page


def test_cnn_round_pfl_row_without_cifar(script_run):
  results, page = script_run

  assert 'was not run' in results['pfl']['skipped']
  rows = _table_rows(page, '| peer |')
  assert len(rows) == 1
  assert rows[0]['s per round'] == 'not measured'


def test_cnn_round_cifar_case_settings(benchmark):
  cases = benchmark.build_cases([], [], benchmark.CIFAR_CLIENTS,
                                benchmark.CIFAR_COHORT)

  (case,) = cases
  assert case.workload == 'pfl_cifar10'
  assert case.aggregator == 'mean'
  assert (case.clients, case.cohort, case.examples) == (1000, 50, 50)
  assert case.local_steps == 5
  assert case.batch == 10
  params = jax.eval_shape(
      benchmark._model(case).init, jax.random.key(0),
      jnp.zeros((1, *case.shape)),
  )
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 1_626_442


def test_cnn_round_pfl_missing_interpreter(benchmark, tmp_path):
  result = benchmark.measure_pfl(
      str(tmp_path / 'missing' / 'python'), 2, 1, rounds=1, threads=1,
      timeout_s=30,
  )

  assert result['error'].startswith('failed to start ')
  assert 'seconds_per_round' not in result


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--digits-clients', '0'], 'client counts must each be at least 1'),
        (['--cifar-cohort', '0'], '--cifar-cohort must be between 1 and'),
        (['--cifar-clients', '10', '--cifar-cohort', '11'],
         '--cifar-cohort must be between 1 and'),
        (['--repeats', '0'], '--repeats must be at least 1'),
        (['--cifar-repeats', '0'], '--cifar-repeats must be at least 1'),
        (['--loop-max-clients', 'lenet_digits=0'], 'expected WORKLOAD=N'),
        (['--loop-max-clients', 'mlp=2'], 'expected WORKLOAD=N'),
        (['--python', 'flower=/usr/bin/python3'], 'expected pfl=PATH'),
        (['--pfl-timeout', 'inf'], '--pfl-timeout must be positive and'),
        (['--pfl-timeout', '0'], '--pfl-timeout must be positive and'),
        (['--digits-clients', '--resnet-clients', '--cifar-clients', '0'],
         'no workload to run'),
        (['--results', '.'], '--results must be a file path'),
    ],
)
def test_cnn_round_rejects_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err
