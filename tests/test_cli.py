"""Command line: invalid input exits 2 with one line, outputs are written."""

import json
import pathlib
import subprocess
import sys

import pytest

from fedjax_med import cli
from fedjax_med import config as config_lib
from fedjax_med import matrix
from fedjax_med import sweep

FAST = ['--set', 'rounds=2', '--set', 'local_steps=5',
        '--set', 'bootstrap_resamples=100', '--no-progress']


def _run_cli(capsys, *args):
  status = cli.main(['run', *args])
  return status, capsys.readouterr()


@pytest.mark.parametrize('args, expected', [
    (['--set', 'aggregator=teleport'], 'server.aggregator'),
    (['--set', 'clip_norm=-1'], 'privacy.clip_norm'),
    (['--set', 'sampling=uniform', '--set', 'cohort_size=5'], 'cohort_size'),
    (['--set', 'learning_rate=fast'], 'learning_rate'),
    (['--set', 'no_such_key=1'], 'no_such_key'),
    (['--set', 'rounds'], 'key=value'),
    (['missing_config.toml'], 'missing_config.toml'),
    (['--set', 'dataset=csv'], 'csv_path'),
    (['--set', 'learning_rate=nan'], 'learning_rate'),
    # Subnormal float32 bounds flush to zero and clip every update to zero.
    (['--set', 'clip_norm=1e-39', '--set', 'noise=central',
      '--set', 'noise_multiplier=1'], 'privacy.clip_norm'),
    (['--set', 'aggregator=norm_bounded', '--set', 'max_norm=1e-39'],
     'server.max_norm'),
    (['--set', 'learning_rate=1e-40'], 'client.learning_rate'),
    (['--set', 'server_optimizer=fedadam', '--set', 'server_tau=1e-40'],
     'server.server_tau'),
])
def test_invalid_input_exits_2(capsys, tmp_path, args, expected):
  status, captured = _run_cli(capsys, *args, '--out', str(tmp_path / 'r'))

  assert status == 2
  assert expected in captured.err
  assert captured.err.count('\n') == 1
  assert 'Traceback' not in captured.err


def test_cohort_larger_than_population(capsys, tmp_path):
  status, captured = _run_cli(
      capsys, '--set', 'sampling=uniform', '--set', 'cohort_size=5',
      '--out', str(tmp_path / 'r'),
  )

  assert status == 2
  assert 'larger than the population of 4' in captured.err


def test_csv_with_nan_exits_2(capsys, tmp_path):
  data = tmp_path / 'hospitals.csv'
  data.write_text('client,age,label\na,50,1\na,nan,0\nb,40,0\nb,41,1\n')

  status, captured = _run_cli(
      capsys, '--set', 'dataset=csv', '--set', f'csv_path={data}',
      '--out', str(tmp_path / 'r'),
  )

  assert status == 2
  assert 'hospitals.csv' in captured.err
  assert 'age' in captured.err


def test_client_without_training_rows_warns(capsys, tmp_path):
  # Client c's only row goes to its test set.
  rows = [f'{client},{age},{age % 2}' for client in 'ab'
          for age in range(40, 52)]
  data = tmp_path / 'hospitals.csv'
  data.write_text('client,age,label\n' + '\n'.join(rows) + '\nc,50,1\n')

  status, captured = _run_cli(
      capsys, *FAST, '--set', 'dataset=csv', '--set', f'csv_path={data}',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'warning: 1 of 3 clients have no training rows' in captured.err
  assert '(c)' in captured.err
  summary = json.loads((tmp_path / 'r' / 'summary.json').read_text())
  assert summary['num_clients_without_training_rows'] == 1
  assert summary['clients_without_training_rows'] == ['c']


def test_subprocess_error_has_no_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'fedjax_med', 'run', '--set', 'aggregator=teleport',
       '--out', str(tmp_path / 'r')],
      capture_output=True, text=True, check=False,
  )

  assert result.returncode == 2
  assert result.stderr.startswith('fedjax-med: error: Invalid `server.aggregator`')
  assert 'Traceback' not in result.stderr


def test_run_writes_outputs(capsys, tmp_path):
  out = tmp_path / 'run'

  status, captured = _run_cli(capsys, *FAST, '--set', 'aggregator=median',
                              '--out', str(out))

  assert status == 0
  assert str(out) in captured.out
  for name in ('config.json', 'provenance.json', 'metrics.jsonl',
               'summary.json', 'accuracy.png'):
    assert (out / name).is_file(), name
  config = json.loads((out / 'config.json').read_text())
  assert config['server']['aggregator'] == 'median'
  lines = (out / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['round'] for line in lines] == [1, 2]


def test_out_dir_must_be_empty(capsys, tmp_path):
  (tmp_path / 'used').mkdir()
  (tmp_path / 'used' / 'file').write_text('x')

  status, captured = _run_cli(capsys, *FAST, '--out', str(tmp_path / 'used'))

  assert status == 2
  assert 'not empty' in captured.err


def test_config_file_and_override(capsys, tmp_path):
  config_file = tmp_path / 'study.toml'
  config_file.write_text('name = "mine"\n[client]\nbatch_size = 8\n')
  out = tmp_path / 'run'

  status, _ = _run_cli(capsys, str(config_file), *FAST, '--out', str(out))

  config = json.loads((out / 'config.json').read_text())
  assert status == 0
  assert config['name'] == 'mine'
  assert config['client']['batch_size'] == 8
  assert config['server']['rounds'] == 2


def test_experiment_files_load():
  experiments = pathlib.Path(__file__).resolve().parents[1] / 'experiments'
  paths = sorted(experiments.glob('*.toml'))

  for path in paths:
    if path.name.startswith('robustness_matrix'):
      base, _ = matrix.load_matrix_toml(path)
      config_lib.validate(config_lib.reset_unused_settings(base))
    elif path.name.endswith('_sweep.toml'):
      base, axes = sweep.load_sweep_toml(path)
      assert sweep.points(base, axes)
    else:
      config_lib.validate(config_lib.load_toml(path))
  assert len(paths) >= 3


def test_matrix_file_refused_by_run(capsys):
  assert cli.main(['run', 'experiments/robustness_matrix_heart.toml']) == 2
  assert 'fedjax-med matrix experiments/' in capsys.readouterr().err


@pytest.mark.parametrize('args, expected', [
    (['--set', 'seed=-1'], '`seed`'),
    (['--set', 'seed=99999999999999999999'], '`seed`'),
    (['--set', 'learning_rate=inf'], 'client.learning_rate'),
    (['--set', 'clip_norm=inf'], 'privacy.clip_norm'),
    (['--set', 'clip_norm='], '`clip_norm` is empty'),
    (['--set', 'cohort_size=2'], 'sampling.cohort_size=2` has no effect'),
    (['--set', 'noise_multiplier=5'], 'privacy.noise_multiplier=5.0` has no'),
    (['--set', 'csv_path=x.csv'], 'data.csv_path=x.csv` has no effect'),
    (['--set', 'test_fraction=0.5'], 'data.test_fraction=0.5` has no effect'),
    (['--set', 'dataset=synthetic', '--set', 'min_examples=60',
      '--set', 'max_examples=10'], '`data.min_examples` (60) is larger'),
    (['--set', 'local_epochs=2', '--set', 'local_steps=7'],
     '`client.local_steps` has no effect'),
    # Settings given at their default values were accepted and ignored.
    (['--set', 'local_epochs=1', '--set', 'local_steps=100'],
     '`client.local_steps` has no effect'),
    (['--set', 'attack_strength=5'], 'no effect with attack none'),
    (['--set', 'target_quantile=0.5'], 'target_quantile=0.5` has no effect'),
    (['--set', 'bootstrap_resamples=1'], 'evaluation.bootstrap_resamples'),
    # The name became a path: ../escape wrote beside runs/, /tmp/x into /tmp.
    (['--set', 'name=../escape'], "`name='../escape'` is invalid"),
    (['--set', 'name=/tmp/x'], "`name='/tmp/x'` is invalid"),
    (['--set', 'name=a\\b'], 'path separator'),
    (['--set', 'name=..'], 'path separator or be . or ..'),
    # 300 characters gave a raw OSError (file name too long), status 1.
    (['--set', 'name=' + 'x' * 300], '`name` has 300 bytes; use at most 200'),
    # Every round applied central noise divided by a floor of 1e-12, which
    # gave parameters of about 1e12 without a message.
    (['--set', 'dropout_rate=1.0', '--set', 'clip_norm=1.0', '--set',
      'noise=central', '--set', 'noise_multiplier=1.0', '--set',
      'aggregator=mean'], 'leaves no client to report'),
])
def test_more_invalid_input_exits_2(capsys, tmp_path, args, expected):
  status, captured = _run_cli(capsys, *args, '--out', str(tmp_path / 'r'))

  assert status == 2
  assert expected in captured.err
  assert captured.err.count('\n') == 1


def test_out_is_file_exits_2(capsys, tmp_path):
  existing = tmp_path / 'afile'
  existing.write_text('x')

  for out in (existing, existing / 'sub'):
    status, captured = _run_cli(capsys, *FAST, '--out', str(out))

    assert status == 2
    assert 'afile' in captured.err
    assert captured.err.count('\n') == 1


def test_config_folder_exits_2(capsys, tmp_path):
  status, captured = _run_cli(capsys, str(tmp_path))

  assert status == 2
  assert 'is a folder' in captured.err


def test_diverged_run_exits_1(capsys, tmp_path):
  out = tmp_path / 'run'

  status, captured = _run_cli(
      capsys, *FAST, '--set', 'model=mlp', '--set', 'server_learning_rate=1e15',
      '--out', str(out),
  )

  assert status == 1
  assert 'diverged in round' in captured.err
  assert captured.err.count('\n') == 1
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['status'] == 'diverged'
  assert 'mean_accuracy' not in summary
  last = json.loads((out / 'metrics.jsonl').read_text().splitlines()[-1])
  assert last['diverged'] is True
  assert 'mean_accuracy' not in last


def test_all_rounds_skipped_warns(capsys, tmp_path):
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'dropout_rate=1.0', '--out', str(tmp_path / 'r')
  )

  assert status == 0
  assert 'all 2 rounds were skipped' in captured.err
  assert 'Every sampled client dropped out' in captured.err


def test_all_rounds_late_warns_of_deadline(capsys, tmp_path):
  # One local step takes 1 s, so no client reports within 0.5 s.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'steps_per_second=1.0', '--set',
      'deadline_s=0.5', '--set', 'straggler_policy=drop',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'all 2 rounds were skipped' in captured.err
  assert 'missed `participation.deadline_s`' in captured.err


def test_default_name_follows_dataset(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)

  status, _ = _run_cli(capsys, *FAST, '--set', 'aggregator=mean')

  folders = [path.name for path in (tmp_path / 'runs').iterdir()]
  assert status == 0
  assert len(folders) == 1
  assert folders[0].startswith('heart_disease_mean-')


@pytest.mark.parametrize('args, expected', [
    (['--set', 'example_clip_norm=2'], 'client.dp_sgd=true'),
    (['--set', 'delta=1e-6'], 'privacy.delta=1e-06` has no effect'),
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1'], 'server.weight_cap'),
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'aggregator=mean'], 'noise_multiplier'),
    (['--set', 'noise=central', '--set', 'clip_norm=1', '--set', 'delta=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean'],
     'privacy.delta'),
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'aggregator=mean', '--set', 'target_epsilon=1e-9'],
     'target'),
    (['--set', 'target_quantile=0.9'], 'adaptive_clipping=true'),
    # The server noised the count after seeing every indicator.
    (['--set', 'noise=distributed', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'min_reporting_clients=2', '--set', 'adaptive_clipping=true',
      '--set', 'count_noise_stddev=1'],
     'does not support `privacy.noise=distributed`'),
])
def test_privacy_input_exits_2(capsys, tmp_path, args, expected):
  status, captured = _run_cli(capsys, *args, '--out', str(tmp_path / 'r'))

  assert status == 2
  assert expected in captured.err
  assert captured.err.count('\n') == 1


@pytest.mark.parametrize('args, expected', [
    (['--set', 'noise=distributed', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'dropout_rate=0.3'], 'min_reporting_clients'),
    (['--set', 'noise=distributed', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'min_reporting_clients=10'], 'larger than the population'),
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'target_epsilon=1', '--set', 'target_mode=stop'],
     'below the epsilon of a single round'),
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'target_mode=stop'], 'without `privacy.target_epsilon`'),
    # Used to train every round, then fail on the summary's infinite
    # epsilon without writing summary.json.
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1e-300', '--set', 'aggregator=mean'],
     '(1e-300) gives an epsilon of inf after 15 rounds'),
    # Finite (1.65e308) in every round, but the guarantee's rounding
    # overflowed after training.
    (['--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1e-154', '--set', 'aggregator=mean'],
     '(1e-154) gives an epsilon of'),
    (['--set', 'dp_sgd=true', '--set', 'example_noise_multiplier=0'],
     'client.example_noise_multiplier'),
])
def test_dp_setting_conflicts_exit_2(capsys, tmp_path, args, expected):
  status, captured = _run_cli(capsys, *args, '--out', str(tmp_path / 'r'))

  assert status == 2
  assert expected in captured.err
  assert captured.err.count('\n') == 1


@pytest.mark.parametrize('args, expected', [
    (['--set', 'attack=sign_flip'], 'malicious_fraction'),
    (['--set', 'malicious_fraction=0.2'], 'attack.attack=none'),
    (['--set', 'attack=teleport', '--set', 'malicious_fraction=0.2'],
     'attack.attack'),
    (['--set', 'attack=sign_flip', '--set', 'malicious_fraction=1.0'],
     'attack.malicious_fraction'),
])
def test_attack_input_exits_2(capsys, tmp_path, args, expected):
  status, captured = _run_cli(capsys, *args, '--out', str(tmp_path / 'r'))

  assert status == 2
  assert expected in captured.err


@pytest.mark.parametrize('args, expected', [
    (['--set', 'aggregator=krum'], 'Krum needs more than'),
    (['--set', 'aggregator=norm_bounded'], 'server.max_norm'),
    (['--set', 'trim_fraction=0.3'], 'aggregator=fedavg'),
    (['--set', 'aggregator=trimmed_mean', '--set', 'trim_fraction=0.5'],
     'server.trim_fraction'),
    (['--set', 'aggregator=krum', '--set', 'noise=central',
      '--set', 'clip_norm=1', '--set', 'noise_multiplier=1'],
     'does not apply to aggregator krum'),
])
def test_aggregator_input_exits_2(capsys, tmp_path, args, expected):
  status, captured = _run_cli(capsys, *args, '--out', str(tmp_path / 'r'))

  assert status == 2
  assert expected in captured.err
  assert captured.err.count('\n') == 1


def _interrupted_args(command, overrides=()):
  """Return the parsed arguments of an interrupted `command`."""
  if command == 'run':
    return cli._parser().parse_args(['run'])  # pylint: disable=protected-access
  arguments = [command, 'grid.toml']
  for override in overrides:
    arguments += ['--set', override]
  return cli._parser().parse_args(arguments)  # pylint: disable=protected-access


@pytest.mark.parametrize('command, count, expected', [
    ('run', 1, '1 finished round is in'),
    ('run', 3, '3 finished rounds are in'),
    ('sweep', 1, '1 finished point is in'),
    ('matrix', 0, '0 finished runs are in'),
])
def test_interrupt_message_counts(capsys, tmp_path, command, count, expected):
  interrupt = cli.StudyInterrupted(tmp_path, count)

  cli._print_interrupt(_interrupted_args(command), interrupt)  # pylint: disable=protected-access

  assert expected in capsys.readouterr().err


def test_interrupted_sweep_names_its_config(capsys, tmp_path):
  interrupt = cli.StudyInterrupted(tmp_path, 2)

  cli._print_interrupt(_interrupted_args('sweep'), interrupt)  # pylint: disable=protected-access

  assert (f'Continue with fedjax-med sweep grid.toml --out {tmp_path} '
          '--resume.') in capsys.readouterr().err


@pytest.mark.parametrize('command', ['sweep', 'matrix'])
def test_interrupted_resume_repeats_overrides(capsys, tmp_path, command):
  # The printed command left out the --set values, so running it failed:
  # the settings differed from the ones the run started with.
  interrupt = cli.StudyInterrupted(tmp_path, 2)
  args = _interrupted_args(command, ['rounds=2', 'name=two words'])

  cli._print_interrupt(args, interrupt)  # pylint: disable=protected-access

  assert (f"Continue with fedjax-med {command} grid.toml --set rounds=2 "
          f"--set 'name=two words' --out {tmp_path} --resume.") in (
              capsys.readouterr().err)


def test_delta_not_below_one_over_clients_warns(capsys, tmp_path):
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'delta=0.3', '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'delta=0.3 is not below 1 / 4 clients' in captured.err
  summary = json.loads((tmp_path / 'r' / 'summary.json').read_text())
  assert any('not below 1 / 4' in line
             for line in summary['privacy']['assumptions'])


def test_example_delta_not_below_one_over_rows_warns(capsys, tmp_path):
  # Example-level DP-SGD took delta=0.05 without a word, although the
  # smallest hospital, Switzerland, has 30 training rows.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'dp_sgd=true', '--set', 'delta=0.05',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'delta=0.05 is not below 1 / 30 rows' in captured.err
  example = json.loads(
      (tmp_path / 'r' / 'summary.json').read_text())['example_privacy']
  assert any('not below 1 / 30 rows of the smallest client (switzerland)'
             in line for line in example['assumptions'])

  status, captured = _run_cli(
      capsys, *FAST, '--set', 'dp_sgd=true', '--set', 'delta=0.01',
      '--out', str(tmp_path / 'fine'))
  assert status == 0
  assert 'rows of the smallest client' not in captured.err


def test_denominator_below_one_client_warns(capsys, tmp_path):
  # 4 hospitals sampled at rate 0.1 report 0.4 clients a round on average,
  # so every round's noise is divided by 0.4.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'aggregator=mean',
      '--set', 'sampling=poisson', '--set', 'sampling_rate=0.1',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'warning: 0.4 clients are expected to report per round' in (
      captured.err)


def test_large_weight_cap_warns(capsys, tmp_path):
  # Every hospital reports, but a cap of 1e5 examples gives each a weight
  # of at most 0.002; the warning used to blame availability and sampling.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'noise=central', '--set', 'clip_norm=1',
      '--set', 'noise_multiplier=1', '--set', 'weight_cap=100000',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'the 4 clients expected to report per round weigh 0.00' in (
      captured.err)
  assert 'Lower `server.weight_cap`' in captured.err


def test_nonfinite_updates_warned(capsys, tmp_path):
  # 3 of 4 hospitals diverge in every round; the run used to read as a
  # normal completed study.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'model=mlp', '--set', 'learning_rate=1e30',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'client updates were NaN or infinite' in captured.err


def test_nonfinite_attack_updates_name_strength(capsys, tmp_path):
  # Scaling updates of size 1 by 3e38 overflows them. The warning used to
  # blame only the learning rate and the data.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'attack=scaling', '--set',
      'malicious_fraction=0.25', '--set', 'attack_strength=3e38',
      '--set', 'learning_rate=1',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'client updates were NaN or infinite' in captured.err
  assert '`attack.attack=scaling`' in captured.err
  assert '`attack.attack_strength`' in captured.err


def test_fedprox_divergent_mu_rejected(capsys, tmp_path):
  # mu * lr = 10 makes every proximal SGD step grow. Such runs used to
  # finish with NaN updates and a warning after the fact.
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'proximal_mu=1000',
      '--out', str(tmp_path / 'r'))

  assert status == 2
  assert '`client.proximal_mu` 1000 times `client.learning_rate` 0.01 is 10' \
      in captured.err
  assert not (tmp_path / 'r').exists()


def test_config_file_default_value_without_effect(capsys, tmp_path):
  # A config file that sets a value at its default counts as setting it.
  path = tmp_path / 'config.toml'
  path.write_text('[client]\nlocal_epochs = 1\nlocal_steps = 100\n')

  status, captured = _run_cli(capsys, str(path), '--out',
                              str(tmp_path / 'r'))

  assert status == 2
  assert '`client.local_steps` has no effect' in captured.err


def test_secure_failure_names_the_deadline(capsys, tmp_path):
  # Stragglers dropped at a 0.6 s deadline failed every secure round, and
  # the warning suggested only the dropout and threshold settings.
  status, captured = _run_cli(
      capsys, '--set', 'rounds=2', '--set', 'local_steps=5',
      '--set', 'secure_aggregation.enabled=true', '--set', 'clip_norm=1',
      '--set', 'participation.steps_per_second=10',
      '--set', 'participation.speed_spread=1',
      '--set', 'participation.deadline_s=0.6',
      '--set', 'participation.straggler_policy=drop',
      '--no-progress', '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'secure aggregation failed in 2 of 2 rounds' in captured.err
  assert 'missed `participation.deadline_s`' in captured.err


def test_clinical_settings_unused_on_multiclass(capsys, tmp_path):
  # The synthetic task has 10 classes and no clinical metrics, so the
  # threshold was accepted and never read, without a word.
  status, captured = _run_cli(
      capsys, '--set', 'dataset=synthetic', '--set', 'rounds=1',
      '--set', 'threshold=0.3', '--no-progress',
      '--out', str(tmp_path / 'r'))

  assert status == 0
  assert '`evaluation.threshold` had no effect' in captured.err


def test_clinical_settings_used_on_binary(capsys, tmp_path):
  status, captured = _run_cli(
      capsys, *FAST, '--set', 'threshold=0.3', '--out', str(tmp_path / 'r'))

  assert status == 0
  assert 'had no effect' not in captured.err


def test_sweep_with_failed_point_exits_1(capsys, tmp_path):
  # Krum needs more than 4 clients. The sweep wrote the fedavg point,
  # printed "1 completed, 1 error" and exited 0 without the reason.
  path = tmp_path / 'grid.toml'
  path.write_text('[server]\nrounds = 1\n[client]\nlocal_steps = 2\n'
                  '[sweep]\n"server.aggregator" = ["fedavg", "krum"]\n')

  status = cli.main(['sweep', str(path), '--out', str(tmp_path / 'sweep'),
                     '--no-progress'])
  captured = capsys.readouterr()

  assert status == 1
  assert '1 completed, 1 error' in captured.out
  assert 'error: point 1 failed: Krum needs more than' in captured.err
  assert (tmp_path / 'sweep' / 'table.csv').exists()


def test_out_of_memory_named(capsys, monkeypatch, tmp_path):
  # `model.hidden_sizes=100000000` ended in a raw JaxRuntimeError traceback.
  import jax  # pylint: disable=g-import-not-at-top
  from fedjax_med import study  # pylint: disable=g-import-not-at-top

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
        'RESOURCE_EXHAUSTED: Out of memory allocating 70400001136 bytes.')

  monkeypatch.setattr(study, 'run_study', exhausted)
  status, captured = _run_cli(capsys, '--out', str(tmp_path / 'r'))

  assert status == 1
  assert ('ran out of memory (RESOURCE_EXHAUSTED: Out of memory allocating '
          '70400001136 bytes.)') in captured.err
  assert '`client.chunk_size`' in captured.err


def test_host_memory_error_named(capsys, monkeypatch, tmp_path):
  from fedjax_med import study  # pylint: disable=g-import-not-at-top

  def exhausted(*args, **kwargs):
    raise MemoryError()

  monkeypatch.setattr(study, 'run_study', exhausted)
  status, captured = _run_cli(capsys, '--out', str(tmp_path / 'r'))

  assert status == 1
  assert 'ran out of memory (MemoryError)' in captured.err


def test_other_runtime_errors_propagate(monkeypatch, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from fedjax_med import study  # pylint: disable=g-import-not-at-top

  def broken(*args, **kwargs):
    raise jax.errors.JaxRuntimeError('INTERNAL: something else')

  monkeypatch.setattr(study, 'run_study', broken)
  with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):
    cli.main(['run', '--out', str(tmp_path / 'r')])


@pytest.mark.parametrize('args, message', [
    (['run', '--out', ''], 'the folder path is empty'),
    # The --resume message gave advice about --out.
    (['run', '--resume', ' '], 'the run folder is empty'),
    (['sweep', 'experiments/heterogeneity_sweep.toml', '--out', ''],
     'the folder path is empty'),
    (['matrix', 'experiments/robustness_matrix_heart.toml', '--out', ''],
     'the folder path is empty'),
], ids=['run', 'resume', 'sweep', 'matrix'])
def test_empty_folder_option_rejected(capsys, args, message):
  # `--out ''` became '.', reported as "Output folder . already exists".
  with pytest.raises(SystemExit) as exit_info:
    cli.main(args)
  err = capsys.readouterr().err

  assert exit_info.value.code == 2
  assert message in err
  assert 'already exists' not in err
