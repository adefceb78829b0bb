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


# The scripts below checked for a stop only inside a study or before each
# unit. A Ctrl-C during the last unit (a study's final evaluation, the last
# audit, the shadows' training) was lost, so the script wrote its page and
# exited 0. Each fake unit sends one SIGINT only, because a second one
# ends the process at once.


def test_seeds_after_last_study(load_script, tmp_path, monkeypatch, capsys):
  script = load_script('experiments/seeds.py')
  calls = []

  def run_study(config, out, progress):
    calls.append(config.seed)
    if len(calls) == 1:
      _interrupt()
    return None, {'seed': config.seed, 'test_accuracy': {'a': 0.5},
                  'mean_accuracy': 0.5, 'worst_accuracy': 0.5}

  monkeypatch.setattr(script.study, 'run_study', run_study)
  out = tmp_path / 'out'
  err = _stops(script.main, ['--seeds', '0', '1', '--out', str(out)],
               capsys, 'seeds.py')

  assert calls == [0]
  assert not (out / 'seeds.md').exists()
  assert not (out / 'seeds.json').exists()
  assert f'The finished runs are in {out}.' in err


def test_imaging_after_last_run(load_script, tmp_path, monkeypatch, capsys):
  script = load_script('experiments/imaging_scanner_shift.py')
  calls = []

  def run_one(algorithm, *, seed, rounds, clients, out_root):
    calls.append(algorithm)
    if len(calls) == 1:
      _interrupt()
    return {'algorithm': algorithm, 'seed': seed, 'rounds': rounds,
            'clients': clients, 'mean_accuracy': 0.5,
            'worst_accuracy': 0.25, 'p10_accuracy': 0.3, 'wall_time_s': 1.0,
            'profile_accuracy': {name: 0.5 for name in script.PROFILE_NAMES}}

  monkeypatch.setattr(script, 'run_one', run_one)
  monkeypatch.setattr(script, 'plot_profile_examples', lambda path: None)
  markdown = tmp_path / 'page.md'
  page = f'# Page\n{script.RESULTS_START}\nold\n{script.RESULTS_END}\n'
  markdown.write_text(page)
  runs = tmp_path / 'runs.jsonl'
  figure = tmp_path / 'accuracy.png'
  err = _stops(script.main, [
      '--seeds', '0', '--rounds', '2', '--clients', '10',
      '--algorithms', 'fedavg', 'fedbn', '--markdown', str(markdown),
      '--json', str(runs), '--figure', str(figure),
      '--profiles-figure', str(tmp_path / 'profiles.png')],
               capsys, 'imaging_scanner_shift.py')

  assert calls == ['fedavg']
  assert markdown.read_text() == page
  assert not figure.exists()
  assert len(runs.read_text().splitlines()) == 1
  assert f'The finished runs are in {runs}.' in err


def test_secure_aggregation_after_setting(load_script, tmp_path, monkeypatch,
                                          capsys):
  script = load_script('experiments/secure_aggregation.py')
  calls = []

  def run_setting(setting, sizes, *, seed, out_dir, weight_cap):
    calls.append(setting.name)
    if len(calls) == 1:
      _interrupt()
    return {'setting': setting.name, 'mean_accuracy': 0.5,
            'failed_rounds': 0, 'epsilon': None, 'elapsed_s': 0.0}

  def write_markdown(*args, **kwargs):
    raise AssertionError('wrote the page after the stop')

  monkeypatch.setattr(script, '_largest_train_count',
                      lambda dataset, sizes, seed: (10, 4))
  monkeypatch.setattr(script, 'run_setting', run_setting)
  monkeypatch.setattr(script, 'write_markdown', write_markdown)
  out = tmp_path / 'out'
  err = _stops(script.main, ['--quick', '--out', str(out)], capsys,
               'secure_aggregation.py')

  assert len(calls) == 1
  assert not (out / 'results.md').exists()
  assert f'The finished runs are in {out}.' in err


def test_canary_audit_after_last_audit(load_script, tmp_path, monkeypatch,
                                       capsys):
  script = load_script('experiments/dp_canary_audit.py')
  calls = []

  def audit_one(*args, **kwargs):
    calls.append(1)
    # The quick plan below is 2 audits: interrupt inside the last one.
    if len(calls) == 2:
      _interrupt()
    return {}

  monkeypatch.setattr(script, 'audit_one', audit_one)
  monkeypatch.setattr(script, 'table', lambda rows: '')
  out = tmp_path / 'audit.json'
  _stops(script.main, ['--quick', '--noise-multipliers', '1.0',
                       '--out', str(out)], capsys, 'dp_canary_audit.py')

  assert len(calls) == 2
  assert not out.exists()


def test_privacy_audit_after_shadows(load_script, tmp_path, monkeypatch,
                                     capsys):
  script = load_script('experiments/privacy_audit.py')

  def train_fedavg(model, train_data, local_update, *, rounds, key):
    return model.init(key, np.asarray(train_data.examples['x'][0, :1]))

  def attack_target(*args, **kwargs):
    _interrupt()
    scores = {'auc': 0.5, 'tpr_at_1pct_fpr': 0.0}
    return {'loss_attack': scores, 'lira': scores}

  monkeypatch.setattr(script, 'train_fedavg', train_fedavg)
  monkeypatch.setattr(script, 'attack_target', attack_target)
  out = tmp_path / 'audit.json'
  _stops(script.main, ['--quick', '--out', str(out)], capsys,
         'privacy_audit.py')

  assert not out.exists()


def test_heart_fairness_after_last_run(load_script, tmp_path, monkeypatch,
                                       capsys):
  script = load_script('experiments/heart_fairness.py')

  def run_leave_one_out(*args):
    _interrupt()
    return []

  monkeypatch.setattr(script, 'run_federated', lambda *args: [
      {'test_accuracy': {'a': 0.5}, 'subgroups': {}}])
  monkeypatch.setattr(script, 'check_reproduction', lambda *args: 0.0)
  monkeypatch.setattr(script, 'run_local', lambda *args: [])
  monkeypatch.setattr(script, 'run_leave_one_out', run_leave_one_out)
  monkeypatch.setattr(script, 'render_results',
                      lambda *args, **kwargs: 'new results')
  monkeypatch.setattr(script, 'plot_results', lambda *args: None)
  page = tmp_path / 'page.md'
  text = f'# Page\n{script.RESULTS_START}\nold\n{script.RESULTS_END}\n'
  page.write_text(text)
  records = tmp_path / 'records.json'
  _stops(script.main, ['--seeds', '0', '--rounds', '1', '--markdown',
                       str(page), '--figure', str(tmp_path / 'figure.png'),
                       '--json', str(records)], capsys, 'heart_fairness.py')

  assert page.read_text() == text
  assert not records.exists()


def test_sweep_batching_after_last_mode(load_script, tmp_path, monkeypatch,
                                        capsys):
  script = load_script('benchmarks/sweep_batching.py')
  modes = []

  def result(count):
    if len(modes) == 2:
      _interrupt()
    return script.ModeResult(seconds=1.0, compilations=1,
                             accuracies=[0.5] * count)

  def run_loop(all_points, out_dir):
    modes.append('loop')
    return result(len(all_points))

  def run_batched(base, sweep, out_dir):
    modes.append('batched')
    return result(len(script.sweep_lib.points(base, sweep)))

  monkeypatch.setattr(script, 'run_loop', run_loop)
  monkeypatch.setattr(script, 'run_batched', run_batched)
  results = tmp_path / 'RESULTS.md'
  _stops(script.main, ['--workloads', 'heart', '--rounds', '1',
                       '--results', str(results)], capsys,
         'sweep_batching.py')

  assert modes == ['loop', 'batched']
  assert not results.exists()
