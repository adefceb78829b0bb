"""Checkpoints and resume: a killed run continues to the uninterrupted result."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fedjax_med import checkpoint
from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.report import outputs

# A synthetic study of 40 short rounds with per-round metrics that change
# every round (loss, update norms) and an evaluation every 4 rounds.
_SETTINGS = {
    'dataset': 'synthetic', 'num_clients': 12, 'rounds': 40,
    'eval_every': 4, 'bootstrap_resamples': 100,
}


def _config():
  return config_lib.apply_overrides(config_lib.ExperimentConfig(), _SETTINGS)


def _records(run_dir):
  lines = (run_dir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  for record in records:
    record.pop('elapsed_s')
  return records


def _summary(run_dir):
  summary = json.loads((run_dir / 'summary.json').read_text())
  summary.pop('wall_time_s')
  return summary


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('uninterrupted') / 'run'
  study.run_study(_config(), run_dir, progress=False)
  return run_dir


def _cli(*args):
  return [sys.executable, '-m', 'fedjax_med', 'run', '--no-progress', *args]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(
    uninterrupted, tmp_path):
  run_dir = tmp_path / 'killed'
  overrides = [arg for key, value in _SETTINGS.items()
               for arg in ('--set', f'{key}={value}')]
  process = subprocess.Popen(
      _cli(*overrides, '--out', str(run_dir), '--checkpoint-every', '0'),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = run_dir / 'metrics.jsonl'
  deadline = time.monotonic() + 300
  # Kill it with SIGKILL, which no handler can catch, after round 13 is written
  # and while later rounds and checkpoints are being written.
  while time.monotonic() < deadline and process.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 13:
      break
    time.sleep(0.01)
  assert process.poll() is None, process.stderr.read().decode()
  process.send_signal(signal.SIGKILL)
  process.wait()
  process.stderr.close()
  assert not (run_dir / 'summary.json').exists()
  killed_at = len(metrics.read_text().splitlines())
  assert 13 <= killed_at < _SETTINGS['rounds']

  resumed = subprocess.run(_cli('--resume', str(run_dir)),
                           capture_output=True, text=True, check=False)
  assert resumed.returncode == 0, resumed.stderr
  # Every round once, in order, with the uninterrupted run's values.
  assert _records(run_dir) == _records(uninterrupted)
  assert _summary(run_dir) == _summary(uninterrupted)


def test_interrupt_saves_a_checkpoint_and_resume_matches(
    uninterrupted, tmp_path):
  run_dir = tmp_path / 'interrupted'

  def interrupt_after_round_9(record):
    if record['round'] == 9:
      raise KeyboardInterrupt

  with pytest.raises(StudyInterrupted) as stopped:
    # A long interval: only the interrupt saves a checkpoint.
    study.run_study(_config(), run_dir, progress=False,
                    on_round=interrupt_after_round_9,
                    checkpoint_interval_s=3600)
  assert stopped.value.rounds_done == 9
  assert checkpoint.Checkpointer(run_dir, 0).latest_step() == 9
  # Round 9's line is on disk; resuming keeps it and writes 10 to 40.
  study.resume_study(run_dir, progress=False)
  assert _records(run_dir) == _records(uninterrupted)
  assert _summary(run_dir) == _summary(uninterrupted)


def test_stop_request_ends_after_the_round(uninterrupted, tmp_path):
  # What the command line's first Ctrl-C does: request a stop, which the
  # loop raises between rounds.
  run_dir = tmp_path / 'stopped'

  def request_in_round_5(record):
    if record['round'] == 5:
      interrupts.request_stop()

  with pytest.raises(StudyInterrupted) as stopped:
    study.run_study(_config(), run_dir, progress=False,
                    on_round=request_in_round_5, checkpoint_interval_s=3600)
  assert stopped.value.rounds_done == 5
  assert checkpoint.Checkpointer(run_dir, 0).latest_step() == 5
  study.resume_study(run_dir, progress=False)
  assert _records(run_dir) == _records(uninterrupted)


def test_resume_without_checkpoint_restarts_and_drops_partial_lines(
    uninterrupted, tmp_path):
  run_dir = tmp_path / 'early'
  run_dir.mkdir()
  for name in ('config.json', 'provenance.json'):
    (run_dir / name).write_text((uninterrupted / name).read_text())
  lines = (uninterrupted / 'metrics.jsonl').read_text().splitlines()
  # Two rounds written before any checkpoint, the second cut short.
  (run_dir / 'metrics.jsonl').write_text(lines[0] + '\n' + lines[1][:25])
  study.resume_study(run_dir, progress=False)
  assert _records(run_dir) == _records(uninterrupted)


def test_truncate_metrics_keeps_rounds_up_to_the_checkpoint(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(json.dumps({'round': r, 'loss': r / 10}) + '\n'
                          for r in range(1, 8)) + '{"round": 8, "lo')
  assert checkpoint.valid_rounds(path) == 7
  kept = checkpoint.truncate_metrics(path, 5)
  assert [record['round'] for record in kept] == [1, 2, 3, 4, 5]
  assert [json.loads(line)['round'] for line in
          path.read_text().splitlines()] == [1, 2, 3, 4, 5]
  with pytest.raises(ValueError, match='5 intact rounds, fewer than 6'):
    checkpoint.truncate_metrics(path, 6)
  assert checkpoint.truncate_metrics(path, 0) == []
  assert path.read_text() == ''


@pytest.mark.parametrize('lines, intact', [
    (['{"round": 1}', '{"round": 3}'], 1),
    (['{"round": 1}', '{"round": "2"}'], 1),
    (['{"round": 1}', '[2]', '{"round": 3}'], 1),
    (['{"round": true}'], 0),
])
def test_valid_rounds_gap_or_bad_line(lines, intact, tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  assert checkpoint.valid_rounds(path) == intact
  assert checkpoint.valid_rounds(tmp_path / 'missing.jsonl') == 0


def test_resume_of_a_finished_run_returns_its_summary(uninterrupted):
  before = (uninterrupted / 'metrics.jsonl').read_text()
  run_dir, summary = study.resume_study(uninterrupted, progress=False)
  assert run_dir == uninterrupted
  assert summary == json.loads((uninterrupted / 'summary.json').read_text())
  assert (uninterrupted / 'metrics.jsonl').read_text() == before


def test_resume_rejects_a_folder_without_config(tmp_path):
  with pytest.raises(InputError, match='no readable config.json'):
    study.resume_study(tmp_path, progress=False)
  with pytest.raises(InputError, match='Run folder not found'):
    study.resume_study(tmp_path / 'missing', progress=False)
  with pytest.raises(InputError, match='must be a path; got None'):
    study.resume_study(None, progress=False)


def test_resume_rejects_a_diverged_run(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'summary.json').write_text(
      json.dumps({'status': 'diverged', 'diverged_round': 3}))
  with pytest.raises(InputError, match='diverged at round 3'):
    study.resume_study(tmp_path, progress=False)


def test_resume_rejects_changed_data(tmp_path):
  csv = tmp_path / 'clients.csv'
  rows = ['site,x1,x2,y']
  for site in ('a', 'b'):
    for index in range(20):
      rows.append(f'{site},{index / 20},{(index % 3) / 3},{index % 2}')
  csv.write_text('\n'.join(rows) + '\n')
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'dataset': 'csv', 'csv_path': str(csv), 'client_column': 'site',
      'label_column': 'y', 'rounds': 3, 'bootstrap_resamples': 100,
  })
  run_dir = tmp_path / 'run'
  study.run_study(config, run_dir, progress=False)
  (run_dir / 'summary.json').unlink()
  csv.write_text(csv.read_text().replace('a,0.0,', 'a,0.5,', 1))
  with pytest.raises(InputError, match='changed since the run'):
    study.resume_study(run_dir, progress=False)


def test_summary_written_after_other_outputs(tmp_path, monkeypatch):
  # summary.json came before the plot, so a kill in between left a run
  # that `--resume` called finished, without accuracy.png.
  def failing_plot(*args, **kwargs):
    raise RuntimeError('plot failed')

  monkeypatch.setattr(study.plots, 'plot_accuracy', failing_plot)
  run_dir = tmp_path / 'run'
  with pytest.raises(RuntimeError, match='plot failed'):
    study.run_study(_config(), run_dir, progress=False)

  assert (run_dir / 'metrics.jsonl').exists()
  assert not (run_dir / 'summary.json').exists()


def test_resume_without_checkpoint_rejects_edited_config(
    uninterrupted, tmp_path):
  # With no checkpoint to compare with, the edited config.json was used
  # and the whole run was redone under the new settings.
  run_dir = tmp_path / 'early'
  run_dir.mkdir()
  (run_dir / 'provenance.json').write_text(
      (uninterrupted / 'provenance.json').read_text())
  config = json.loads((uninterrupted / 'config.json').read_text())
  config['client']['learning_rate'] = 0.5
  (run_dir / 'config.json').write_text(json.dumps(config))

  with pytest.raises(InputError, match='config.json changed'):
    study.resume_study(run_dir, progress=False)


def test_resume_rejects_missing_provenance(uninterrupted, tmp_path):
  # Without provenance.json the data check returned silently, so a run
  # resumed on edited data without notice.
  run_dir = tmp_path / 'early'
  run_dir.mkdir()
  (run_dir / 'config.json').write_text(
      (uninterrupted / 'config.json').read_text())

  with pytest.raises(InputError, match='provenance.json is missing'):
    study.resume_study(run_dir, progress=False)


@pytest.mark.parametrize('interval', [-1, float('nan'), 'often', True])
def test_checkpoint_interval_must_be_seconds(interval, tmp_path):
  with pytest.raises(InputError, match='checkpoint_interval_s'):
    study.run_study(_config(), tmp_path / 'run', progress=False,
                    checkpoint_interval_s=interval)
  assert not (tmp_path / 'run').exists()


def test_cli_resume_refuses_a_new_config(tmp_path, capsys):
  from fedjax_med import cli  # pylint: disable=g-import-not-at-top

  status = cli.main(['run', '--resume', str(tmp_path), '--set', 'rounds=3'])
  assert status == 2
  assert 'drop CONFIG, --set and --out' in capsys.readouterr().err


def test_checkpointer_skips_a_step_already_saved(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  saver = checkpoint.Checkpointer(tmp_path, 0)
  state = {'w': jnp.arange(3.0)}
  saver.save(2, state, {'rounds_done': 2})
  saver.save(2, {'w': jnp.zeros(3)}, {'rounds_done': 2})
  restored = saver.restore({'w': jnp.zeros(3)})
  saver.close()
  assert restored.rounds_done == 2
  assert restored.progress == {'rounds_done': 2}
  assert restored.state['w'].tolist() == [0.0, 1.0, 2.0]
  assert os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR) == ['2']


def test_checkpointer_removes_a_killed_save(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  saver = checkpoint.Checkpointer(tmp_path, 0)
  saver.save(1, {'w': jnp.arange(3.0)}, {'rounds_done': 1})
  saver.close()
  # What a process killed while writing step 2 leaves behind.
  partial = tmp_path / checkpoint.CHECKPOINT_DIR / '2.orbax-checkpoint-tmp-7'
  (partial / 'state').mkdir(parents=True)

  # The resumed run removes it before its first save.
  reopened = checkpoint.Checkpointer(tmp_path, 0)
  assert reopened.all_steps() == [1]
  reopened.save(2, {'w': jnp.zeros(3)}, {'rounds_done': 2})
  reopened.close()
  assert sorted(os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR)) == [
      '1', '2']


def test_checkpointer_without_checkpoints_restores_nothing(tmp_path):
  saver = checkpoint.Checkpointer(pathlib.Path(tmp_path), 0)
  assert saver.latest_step() is None
  assert saver.restore({}) is None
  assert not (tmp_path / checkpoint.CHECKPOINT_DIR).exists()


_SWEEP_TOML = '''
[server]
rounds = 30
[evaluation]
eval_every = 5
bootstrap_resamples = 100
[sweep]
seeds = [0, 1]
"client.learning_rate" = [0.01, 0.05]
'''


def _sweep_files(run_dir):
  points = [json.loads(line) for line in
            (run_dir / 'points.jsonl').read_text().splitlines()]
  for record in points:
    record.pop('wall_time_s')
  rounds = (run_dir / 'rounds.jsonl').read_text().splitlines()
  return points, [json.loads(line) for line in rounds]


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
  config = tmp_path / 'sweep.toml'
  config.write_text(_SWEEP_TOML)
  command = [sys.executable, '-m', 'fedjax_med', 'sweep', str(config),
             '--no-progress']
  subprocess.run([*command, '--out', str(tmp_path / 'whole')], check=True,
                 capture_output=True)
  run_dir = tmp_path / 'killed'
  process = subprocess.Popen(
      [*command, '--out', str(run_dir), '--checkpoint-every', '0'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  rounds = run_dir / 'rounds.jsonl'
  deadline = time.monotonic() + 300
  # The four points run as one batch; kill it after its 11th round.
  while time.monotonic() < deadline and process.poll() is None:
    if rounds.exists() and len(rounds.read_text().splitlines()) >= 44:
      break
    time.sleep(0.01)
  assert process.poll() is None
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (run_dir / 'points.jsonl').read_text()
  progress = json.loads(
      (run_dir / 'checkpoints' / 'batches.json').read_text())
  [saved] = progress.values()
  assert saved['points'] == [0, 1, 2, 3]
  assert saved['rounds_done'] >= 10

  subprocess.run([*command, '--out', str(run_dir), '--resume'], check=True,
                 capture_output=True)
  assert _sweep_files(run_dir) == _sweep_files(tmp_path / 'whole')


@pytest.fixture(scope='module')
def stopped(tmp_path_factory):
  """A run stopped after round 9, with checkpoints of rounds 8 and 9."""
  run_dir = tmp_path_factory.mktemp('stopped') / 'run'

  def interrupt_after_round_9(record):
    if record['round'] == 9:
      raise KeyboardInterrupt

  with pytest.raises(StudyInterrupted):
    study.run_study(_config(), run_dir, progress=False,
                    on_round=interrupt_after_round_9, checkpoint_interval_s=0)
  return run_dir


def _copy(run_dir, tmp_path):
  copy = tmp_path / 'copy'
  shutil.copytree(run_dir, copy)
  return copy


def test_unreadable_newest_checkpoint_falls_back(
    stopped, uninterrupted, tmp_path):
  run_dir = _copy(stopped, tmp_path)
  assert checkpoint.Checkpointer(run_dir, 0).all_steps() == [8, 9]
  for path in (run_dir / 'checkpoints' / '9' / 'progress').iterdir():
    path.write_text('{"cut')
  notes = []
  study.resume_study(run_dir, progress=False, log=notes.append)
  assert 'unreadable checkpoint of round 9' in notes[0]
  assert notes[1].startswith(f'Resuming {run_dir} after round 8 of 40')
  assert _records(run_dir) == _records(uninterrupted)


def test_damaged_metrics_line_reruns_from_an_older_checkpoint(
    stopped, uninterrupted, tmp_path):
  run_dir = _copy(stopped, tmp_path)
  lines = (run_dir / 'metrics.jsonl').read_text().splitlines()
  lines[4] = '{garbage'
  (run_dir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  notes = []
  study.resume_study(run_dir, progress=False, log=notes.append)
  # Rounds 1 to 4 are intact, so neither checkpoint may be used.
  assert 'rounds 1 to 4 intact' in notes[0]
  assert notes[-1].startswith('No usable checkpoint')
  assert _records(run_dir) == _records(uninterrupted)
  assert _summary(run_dir) == _summary(uninterrupted)


def test_resume_rejects_an_edited_config(stopped, tmp_path):
  run_dir = _copy(stopped, tmp_path)
  saved = json.loads((run_dir / 'config.json').read_text())
  saved['server']['rounds'] = 5
  saved['model']['model'] = 'mlp'
  (run_dir / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(InputError,
                     match=r'changed since the run started \(model.model, '
                     r'server.rounds\)'):
    study.resume_study(run_dir, progress=False)


def test_resume_rejects_a_folder_in_use(stopped, tmp_path):
  run_dir = _copy(stopped, tmp_path)
  with outputs.lock_run_dir(run_dir):
    with pytest.raises(InputError, match='Another process is running'):
      study.resume_study(run_dir, progress=False)
  assert len(_records(run_dir)) == 9
