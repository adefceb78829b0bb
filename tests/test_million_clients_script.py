"""benchmarks/million_clients.py at a few hundred clients on CPU.

The script run in a subprocess compiles one variant, which makes it the
slowest test here. No test asserts a timing threshold, because times depend
on the machine.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from fedjax_med import study

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks/million_clients.py'


@pytest.fixture(scope='module')
def benchmark():
  # The script imports benchmarks/scaling.py by its module name.
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  try:
    spec = importlib.util.spec_from_file_location(
        'benchmarks_million_clients', SCRIPT
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(ROOT / 'benchmarks'))
  return module


def _run_script(flags, tmp_path, *, timeout=120):
  environment = dict(os.environ)
  environment.pop('OUT', None)
  environment['PYTHONPATH'] = str(ROOT)
  environment['JAX_PLATFORMS'] = 'cpu'
  return subprocess.run(
      [sys.executable, str(SCRIPT), *flags], capture_output=True, text=True,
      timeout=timeout, check=False, cwd=tmp_path, env=environment,
  )


def _lines(stdout):
  return [json.loads(line) for line in stdout.splitlines()]


def test_script_json_lines(tmp_path):
  jsonl = tmp_path / 'out' / 'million_clients.jsonl'

  finished = _run_script([
      '--clients', '300', '--variants', 'mean_dp', '--rounds', '2',
      '--chunk-size', '128', '--population-chunk', '100',
      '--jsonl', str(jsonl),
  ], tmp_path)

  assert finished.returncode == 0, finished.stderr
  lines = _lines(finished.stdout)
  assert [line['step'] for line in lines] == [
      'start', 'population', 'first_call', 'round', 'round', 'variant',
      'done',
  ]
  assert _lines(jsonl.read_text()) == lines
  elapsed = [line['elapsed_s'] for line in lines]
  assert elapsed == sorted(elapsed)

  start, population = lines[0], lines[1]
  assert start['clients'] == 300
  assert start['chunk_size'] == 128
  assert start['platform'] == 'cpu'
  assert start['jax'] in start['hardware']
  # Features, labels and the row count of each client.
  assert population['population_gib'] == pytest.approx(
      300 * (64 * (32 * 4 + 4) + 4) / 2**30
  )

  summary = lines[5]
  assert summary['variant'] == 'mean_dp'
  assert summary['rounds_timed'] == 2
  assert summary['num_contributing'] == 300
  assert summary['params_finite']
  assert summary['seconds_per_round'] > 0
  assert summary['compile_s'] >= 0
  assert summary['client_updates_per_s'] == pytest.approx(
      300 / summary['seconds_per_round']
  )
  # CPU devices report no memory statistics.
  assert 'device_peak_gib' in summary
  assert lines[-1]['peak_rss_mb'] > 0


def test_script_skips_after_budget(benchmark, capsys, monkeypatch):
  monkeypatch.delenv('OUT', raising=False)

  benchmark.main(['--clients', '20', '--budget-s', '0.001'])

  lines = _lines(capsys.readouterr().out)
  assert [line['step'] for line in lines] == [
      'start', 'population', 'skipped', 'skipped', 'done',
  ]
  assert [line['variant'] for line in lines[2:4]] == ['mean', 'mean_dp']
  assert '--budget-s' in lines[2]['reason']


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--clients', '0'], '--clients must be at least 1'),
        (['--chunk-size', '0'], '--chunk-size must be at least 1'),
        (['--budget-s', '0'], '--budget-s must be > 0 seconds'),
        (['--jsonl', '.'], '--jsonl must be a file path'),
    ],
)
def test_invalid_flags(benchmark, capsys, flags, message):
  with pytest.raises(SystemExit):
    benchmark.main(flags)

  assert message in capsys.readouterr().err


def test_jsonl_default_from_out(benchmark, monkeypatch, tmp_path):
  monkeypatch.setenv('OUT', str(tmp_path))
  assert benchmark._build_parser().parse_args([]).jsonl == str(
      tmp_path / 'million_clients.jsonl'
  )

  monkeypatch.delenv('OUT')
  assert benchmark._build_parser().parse_args([]).jsonl is None


def test_chunk_rule_matches_study(benchmark):
  assert benchmark.AUTO_CHUNK_BYTES == study.AUTO_CHUNK_BYTES
  assert benchmark.TRAINING_COPIES == study._TRAINING_COPIES


def test_auto_chunk_size(benchmark):
  params = benchmark.init_params(benchmark.build_model())
  # 64 rows of 32 float32 features and an int32 label, plus 6 copies of
  # the 32-64-1 MLP's 2,177 float32 params.
  per_client = 64 * (32 * 4 + 4) + 6 * 2177 * 4

  assert benchmark.auto_chunk_size(100, params, 100 * per_client) is None
  assert benchmark.auto_chunk_size(1000, params, 100 * per_client) == 100
  assert benchmark.auto_chunk_size(1000, params, 1) == 1
  assert benchmark.auto_chunk_size(
      1_000_000, params, benchmark.AUTO_CHUNK_BYTES
  ) == 2**30 // per_client


def test_population_chunks_cover_clients(benchmark):
  # 7 clients in chunks of 3: the third chunk starts at client 4.
  train = benchmark.make_population(jax.random.key(0), 7, 3)

  x = np.asarray(train.examples['x'])
  y = np.asarray(train.examples['y'])
  assert x.shape == (7, 64, 32)
  assert y.shape == (7, 64)
  assert np.all(np.asarray(train.num_examples) == 64)
  assert np.all(np.any(x != 0, axis=(1, 2)))
  flat = x.reshape(7, -1)
  assert len({row.tobytes() for row in flat}) == 7
  assert set(np.unique(y)) == {0, 1}


def test_population_deterministic(benchmark):
  first = benchmark.make_population(jax.random.key(0), 5, 2)
  second = benchmark.make_population(jax.random.key(0), 5, 2)
  whole = benchmark.make_population(jax.random.key(0), 5, 10)

  np.testing.assert_array_equal(first.examples['x'], second.examples['x'])
  assert whole.examples['x'].shape == (5, 64, 32)
