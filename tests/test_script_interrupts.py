"""A first Ctrl-C stops the experiment scripts after the current unit.

These scripts ran their own loops without checking the deferred request,
so Ctrl-C raised KeyboardInterrupt wherever Python was, often inside XLA's
compiler: a traceback, and twice in four tries a segmentation fault. Each
test sends SIGINT inside the first unit and expects status 130, the one
line that names the finished results, and nothing of the later units.
"""

import json
import os
import signal

import numpy as np
import pytest


def _interrupt():
  os.kill(os.getpid(), signal.SIGINT)


def _stops(main, argv, capsys, script):
  previous = signal.getsignal(signal.SIGINT)
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 130
  assert signal.getsignal(signal.SIGINT) == previous
  err = capsys.readouterr().err
  assert f'{script}: interrupted;' in err
  return err


def test_gradient_leakage(load_script, tmp_path, monkeypatch, capsys):
  script = load_script('experiments/gradient_leakage.py')

  def tabular_conditions(sizes, seed):
    for name in ('first', 'second'):
      if name == 'second':
        raise AssertionError('ran past the stop')
      _interrupt()
      yield {'condition': name, 'recovered_fraction': 0.5}

  monkeypatch.setattr(script, 'tabular_conditions', tabular_conditions)
  err = _stops(script.main, ['--quick', '--out', str(tmp_path)], capsys,
               'gradient_leakage.py')

  results = tmp_path / 'results.jsonl'
  assert [json.loads(line)['condition']
          for line in results.read_text().splitlines()] == ['first']
  assert f'The finished runs are in {results}.' in err
  assert not (tmp_path / 'results.md').exists()
  assert 'current condition' in err


def test_vertical_heart(load_script, tmp_path, monkeypatch, capsys):
  script = load_script('experiments/vertical_heart.py')

  def run_psi(dataset, seed, results):
    _interrupt()
    return {'intersection_size': 3, 'seconds': 0.0}

  def run_models(*args, **kwargs):
    raise AssertionError('ran past the stop')

  monkeypatch.setattr(script, 'run_psi', run_psi)
  monkeypatch.setattr(script, 'run_models', run_models)
  _stops(script.main, ['--quick', '--out', str(tmp_path)], capsys,
         'vertical_heart.py')
  assert not (tmp_path / 'results.md').exists()


def test_participation_communication(load_script, tmp_path, monkeypatch,
                                     capsys):
  script = load_script('experiments/participation_communication.py')
  calls = []

  def run_clock(setup, method, *args):
    calls.append(method)
    _interrupt()
    return {'part': 'clock', 'method': method, 'seed': 0}

  monkeypatch.setattr(script, 'Setup', lambda seed, clients: None)
  monkeypatch.setattr(script, 'run_clock', run_clock)
  markdown = tmp_path / 'page.md'
  markdown.write_text(
      f'# Page\n{script.RESULTS_START}\nold\n{script.RESULTS_END}\n')
  runs = tmp_path / 'runs.jsonl'
  err = _stops(script.main, ['--seeds', '0', '--markdown', str(markdown),
                             '--json', str(runs)], capsys,
               'participation_communication.py')

  assert len(calls) == 1
  assert len(runs.read_text().splitlines()) == 1
  assert 'old' in markdown.read_text()
  assert f'The finished runs are in {runs}.' in err


def test_heart_flamby_benchmark(load_script, monkeypatch, capsys):
  script = load_script('experiments/heart_flamby_benchmark.py')
  calls = []

  def train_fn(params, key):
    calls.append(1)
    _interrupt()
    return params

  monkeypatch.setattr(script, '_row_plans', lambda *args: [
      ('first', None, train_fn), ('second', None, train_fn)])
  _stops(script.main, ['--seeds', '0', '1'], capsys,
         'heart_flamby_benchmark.py')
  assert len(calls) == 1


def test_tcga_brca_flamby(load_script, monkeypatch, capsys):
  script = load_script('experiments/tcga_brca_flamby.py')
  calls = []

  def train(*args, **kwargs):
    def train_fn(params, key):
      calls.append(1)
      _interrupt()
      return params
    return train_fn

  monkeypatch.setattr(script, '_train_federated', train)
  monkeypatch.setattr(script, '_train_pooled', train)
  _stops(script.main, ['--seeds', '0', '1'], capsys, 'tcga_brca_flamby.py')
  assert len(calls) == 1


def test_privacy_audit(load_script, tmp_path, monkeypatch, capsys):
  script = load_script('experiments/privacy_audit.py')

  def train_fedavg(model, train_data, local_update, *, rounds, key):
    _interrupt()
    return model.init(key, np.asarray(train_data.examples['x'][0, :1]))

  def attack_target(*args, **kwargs):
    raise AssertionError('ran past the stop')

  monkeypatch.setattr(script, 'train_fedavg', train_fedavg)
  monkeypatch.setattr(script, 'attack_target', attack_target)
  out = tmp_path / 'audit.json'
  _stops(script.main, ['--quick', '--out', str(out)], capsys,
         'privacy_audit.py')
  assert not out.exists()


@pytest.mark.parametrize('path, flags, message', [
    # 3e9 local steps raised OverflowError; 2**31 - 1 pooled epochs
    # overflowed int32 and 2**31 - 1 local steps asked for about 60 GB.
    ('experiments/heart_flamby_benchmark.py', ['--local-steps', '3000000000'],
     '--local-steps must be in [1, 100000]; got 3000000000.'),
    ('experiments/tcga_brca_flamby.py', ['--pooled-epochs', '2147483647'],
     '--pooled-epochs must be in [1, 100000]'),
    ('experiments/privacy_audit.py', ['--local-steps', '3000000000'],
     '--local-steps must be in [1, 100000]'),
    ('experiments/participation_communication.py',
     ['--compression-rounds', '0'], '--compression-rounds must be in'),
    # A repeat ran the same run twice and printed a spread of 0.
    ('experiments/participation_communication.py',
     ['--compressors', 'none', 'none'],
     '--compressors must be distinct; none given more than once.'),
    ('experiments/heart_flamby_benchmark.py',
     ['--strategies', 'fedavg', 'fedavg'],
     '--strategies must be distinct; fedavg given more than once.'),
    ('experiments/tcga_brca_flamby.py', ['--strategies', 'fedavg', 'fedavg'],
     '--strategies must be distinct'),
])
def test_bad_sizes_rejected(load_script, capsys, path, flags, message):
  script = load_script(path)
  with pytest.raises(SystemExit) as exit_info:
    script.main(flags)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
