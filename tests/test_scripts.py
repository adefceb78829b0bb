"""The benchmark and experiment scripts, each once at a reduced size."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(relative_path):
  spec = importlib.util.spec_from_file_location(
      relative_path.replace('/', '_')[:-3], ROOT / relative_path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_round_throughput_small(tmp_path, capsys):
  benchmark = _load('benchmarks/round_throughput.py')
  results = tmp_path / 'RESULTS.md'

  rows = benchmark.main([
      '--clients', '4', '8', '--local-steps', '2', '--max-examples', '6',
      '--results', str(results),
  ])

  assert [row['clients'] for row in rows] == [4, 8]
  for row in rows:
    assert row['vmapped_rounds_per_s'] > 0
    assert row['loop_rounds_per_s'] > 0
  page = results.read_text()
  assert '| 4 |' in page
  assert '| 8 |' in page
  # The section records the flags that ran and is printed too.
  assert (f'`python benchmarks/round_throughput.py --clients 4 8 '
          f'--local-steps 2 --max-examples 6 --results {results}`') in page
  assert '| 8 |' in capsys.readouterr().out


@pytest.mark.parametrize('flags, message', [
    (['--clients', '4', '0'], '--clients must each be at least 1'),
    (['--local-steps', '0'], '--local-steps must be at least 1'),
    (['--batch-size', '0'], '--batch-size must be at least 1'),
    (['--max-examples', '1'], '--max-examples must be at least 2'),
])
def test_round_throughput_rejects_flags(capsys, flags, message):
  benchmark = _load('benchmarks/round_throughput.py')

  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(flags)

  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_round_throughput_rejects_results_folder(tmp_path, capsys):
  benchmark = _load('benchmarks/round_throughput.py')

  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(['--results', str(tmp_path)])

  assert exit_info.value.code == 2
  assert '--results must be a file path' in capsys.readouterr().err


def test_seeds_script_small(tmp_path, capsys):
  seeds = _load('experiments/seeds.py')
  out = tmp_path / 'seeds'

  status = seeds.main([
      '--seeds', '0', '1', '--set', 'rounds=2', '--set', 'local_steps=5',
      '--set', 'bootstrap_resamples=100', '--out', str(out),
  ])

  rows = json.loads((out / 'seeds.json').read_text())
  assert status == 0
  assert [row['seed'] for row in rows] == [0, 1]
  assert (out / 'seed_1' / 'summary.json').is_file()
  assert 'over 2 seeds' in (out / 'seeds.md').read_text()


def test_seeds_script_invalid_key(tmp_path, capsys):
  seeds = _load('experiments/seeds.py')

  status = seeds.main(['--set', 'aggregator=teleport', '--out', str(tmp_path / 's')])

  assert status == 2
  assert 'server.aggregator' in capsys.readouterr().err


def test_seeds_script_rejects_repeats(tmp_path, capsys):
  seeds = _load('experiments/seeds.py')
  out = tmp_path / 's'

  with pytest.raises(SystemExit) as exit_info:
    seeds.main(['--seeds', '0', '0', '--out', str(out)])

  assert exit_info.value.code == 2
  assert '0 given more than once' in capsys.readouterr().err
  assert not out.exists()
