"""benchmarks/peers.py at a tiny size, without the peer packages.

One run of the script starts a process per peer. Peers whose package is
missing here must appear as 'not available' rows, so the test never runs
Flower, pfl or FedJAX itself. Both JAX peers run two rounds with the same
keys, so their final params must agree. No test asserts a timing threshold,
because times depend on the machine.
"""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models import tabular

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLIENTS = 8
# Module that each optional peer imports first.
PEER_MODULES = {'fedjax': 'fedjax', 'flower': 'flwr', 'pfl': 'pfl'}


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_peers', ROOT / 'benchmarks/peers.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


@pytest.fixture(scope='module')
def benchmark():
  return _load_benchmark()


@pytest.fixture(scope='module')
def workload(benchmark, tmp_path_factory):
  directory = tmp_path_factory.mktemp('workload')
  benchmark.write_workload(directory, NUM_CLIENTS)
  return benchmark.load_workload(directory)


def test_numpy_step_matches_jax_gradient(benchmark, workload):
  x = workload.x[0, :benchmark.BATCH_SIZE]
  y = workload.y[0, :benchmark.BATCH_SIZE]
  model = tabular.from_flax(tabular.MLP(2, (benchmark.HIDDEN,)), 2)
  params = benchmark._flax_from_arrays(workload.params)

  def loss_fn(params):
    logits = model.apply(params, x)
    return jnp.mean(tabular.per_example_loss(logits, y, 2))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  expected = jax.tree.map(
      lambda param, grad: param - benchmark.CLIENT_LEARNING_RATE * grad,
      params, grads,
  )
  new_params, numpy_loss = benchmark.numpy_sgd_step(
      workload.params, x, y.astype(np.float32)
  )

  np.testing.assert_allclose(numpy_loss, float(loss), rtol=1e-5)
  for actual, expected_param in zip(
      new_params, benchmark._arrays_from_flax(expected)
  ):
    np.testing.assert_allclose(actual, expected_param, rtol=1e-5, atol=1e-6)


def test_step_rows_are_two_epochs(benchmark):
  rows = benchmark.step_rows(np.random.default_rng(0))

  assert rows.shape == (benchmark.LOCAL_STEPS * benchmark.BATCH_SIZE,)
  first_epoch = rows[:benchmark.EXAMPLES_PER_CLIENT]
  assert sorted(first_epoch) == list(range(benchmark.EXAMPLES_PER_CLIENT))
  second_epoch = rows[benchmark.EXAMPLES_PER_CLIENT:]
  assert len(set(second_epoch)) == len(second_epoch)


@pytest.fixture(scope='module')
def missing_peers():
  return [
      peer for peer, module in PEER_MODULES.items()
      if importlib.util.find_spec(module) is None
  ]


@pytest.fixture(scope='module')
def script_run(benchmark, missing_peers, tmp_path_factory):
  """Return the results and the appended page of one run of the script."""
  results_page = tmp_path_factory.mktemp('results') / 'RESULTS.md'
  results = benchmark.main([
      '--clients', str(NUM_CLIENTS), '--rounds', '1',
      '--peers', 'fedjax_med', 'loop', *missing_peers,
      '--results', str(results_page),
  ])
  return results, results_page.read_text()


def test_peers_table_and_results_page(script_run, missing_peers):
  _, page = script_run

  assert '### Peer comparison, ' in page
  assert 'python benchmarks/peers.py --clients 8 --rounds 1' in page
  timing = {row['peer']: row for row in _table_rows(page, '| peer | version')}
  assert sorted(timing) == sorted(['fedjax_med', 'loop', *missing_peers])
  for peer in ('fedjax_med', 'loop'):
    row = timing[peer]
    assert row['clients'] == str(NUM_CLIENTS), peer
    assert math.isfinite(float(row['s per round'])), peer
    assert float(row['s per round']) > 0, peer
    assert row['rounds timed'] == '1', peer
  assert float(timing['fedjax_med']['x fedjax_med']) == 1.0
  assert float(timing['loop']['x fedjax_med']) > 0


def test_missing_peers_not_available(script_run, missing_peers):
  _, page = script_run

  timing = {row['peer']: row for row in _table_rows(page, '| peer | version')}
  for peer in missing_peers:
    row = timing[peer]
    assert row['s per round'] == 'not available', peer
    assert row['notes'].startswith('not available: '), peer
    assert 'not installed' in row['notes'], peer


def test_peers_do_same_work(benchmark, script_run):
  results, page = script_run

  by_peer = {result['peer']: result for result in results}
  for peer in ('fedjax_med', 'loop'):
    result = by_peer[peer]
    assert result['local_steps'] == benchmark.LOCAL_STEPS, peer
    assert result['batch_size'] == benchmark.BATCH_SIZE, peer
    assert result['parameters'] == benchmark.NUM_PARAMETERS, peer
    assert result['rounds_run'] == 2, peer
  np.testing.assert_allclose(
      by_peer['loop']['final_loss'], by_peer['fedjax_med']['final_loss'],
      rtol=1e-4,
  )
  work = {
      row['peer']: row
      for row in _table_rows(page, '| peer | clients | rounds run')
  }
  assert sorted(work) == ['fedjax_med', 'loop']


def test_loop_matches_vmapped_params(benchmark, workload, script_run):
  results, _ = script_run

  by_peer = {result['peer']: result for result in results}
  vmapped = by_peer['fedjax_med']['final_params']
  loop = by_peer['loop']['final_params']
  assert len(loop) == len(benchmark.PARAM_NAMES)
  for name, start, expected, actual in zip(
      benchmark.PARAM_NAMES, workload.params, vmapped, loop
  ):
    np.testing.assert_allclose(
        np.asarray(actual) - start, np.asarray(expected) - start,
        rtol=1e-4, atol=1e-6, err_msg=name,
    )
  moved = max(
      float(np.max(np.abs(np.asarray(final) - start)))
      for start, final in zip(workload.params, vmapped)
  )
  assert moved > 1e-3


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--timeout', 'inf'], '--timeout must be positive and finite'),
        (['--timeout', '0'], '--timeout must be positive and finite'),
        (['--results', '.'], '--results must be a file path'),
    ],
)
def test_peers_rejects_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err
