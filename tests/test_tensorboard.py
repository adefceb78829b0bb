"""TensorBoard scalars of a study's rounds."""

import json
import sys
import time

import pytest

from fedjax_med import config as config_lib
from fedjax_med import study
from fedjax_med.errors import InputError
from fedjax_med.report import tensorboard


def test_study_writes_every_round_and_client(tmp_path):
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'rounds': 4, 'eval_every': 2, 'bootstrap_resamples': 100})
  run_dir, _ = study.run_study(config, tmp_path / 'run', progress=False,
                               tensorboard=True)
  scalars = tensorboard.read_scalars(run_dir / 'tensorboard')
  records = [json.loads(line) for line in
             (run_dir / 'metrics.jsonl').read_text().splitlines()]
  assert scalars['train_loss'] == pytest.approx(
      {r['round']: r['train_loss'] for r in records})
  assert scalars['mean_accuracy'] == pytest.approx(
      {r['round']: r['mean_accuracy'] for r in records if r['round'] % 2 == 0})
  for name in ('cleveland', 'hungarian', 'switzerland', 'va'):
    assert scalars[f'test_accuracy/{name}'] == pytest.approx(
        {r['round']: r['test_accuracy'][name] for r in records
         if 'test_accuracy' in r})
  # Booleans become 0 or 1; the round number is the step, not a scalar.
  assert scalars['skipped'] == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
  assert 'round' not in scalars


def test_logger_purge_replaces_earlier_files(tmp_path):
  first = tensorboard.RoundLogger(tmp_path)
  for step in range(1, 6):
    first.write({'round': step, 'loss': float(step), 'old_only': 1.0})
  first.close()
  # Event file names carry the time in seconds; keep the second one later.
  time.sleep(1.1)
  second = tensorboard.RoundLogger(tmp_path, purge=True)
  for step in range(1, 5):
    second.write({'round': step, 'loss': 10.0 * step},
                 per_client={'a': 0.5, 'b': None})
  second.close()
  scalars = tensorboard.read_scalars(tmp_path)
  assert scalars['loss'] == {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0}
  assert scalars['old_only'] == {}
  assert scalars['test_accuracy/a'] == {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
  assert 'test_accuracy/b' not in scalars


def test_clashing_client_names_get_own_tags(tmp_path):
  # 'St Mary' and 'St_Mary' both became the tag test_accuracy/St_Mary, so
  # one client's curve overwrote the other's.
  logger = tensorboard.RoundLogger(tmp_path)
  per_client = {'St Mary': 0.25, 'St_Mary': 0.75, 'a/b': 0.5, 'x': 1.0}
  for step in (1, 2):
    logger.write({'round': step}, per_client=per_client)
  logger.close()

  scalars = tensorboard.read_scalars(tmp_path)
  assert scalars['test_accuracy/St_Mary_0'] == {1: 0.25, 2: 0.25}
  assert scalars['test_accuracy/St_Mary_1'] == {1: 0.75, 2: 0.75}
  assert scalars['test_accuracy/a_b'] == {1: 0.5, 2: 0.5}
  assert scalars['test_accuracy/x'] == {1: 1.0, 2: 1.0}


def test_client_tags_are_distinct():
  names = ['a b', 'a_b', 'a_b_1', 'a.b', 'a+b']
  tags = tensorboard.client_tags(names)
  assert len(set(tags.values())) == len(names)
  assert tags['a.b'] == 'test_accuracy/a.b'


def test_resumed_study_logs_every_round_once(tmp_path):
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'rounds': 6, 'eval_every': 2, 'bootstrap_resamples': 100})

  def interrupt_after_round_4(record):
    if record['round'] == 4:
      raise KeyboardInterrupt

  run_dir = tmp_path / 'run'
  with pytest.raises(KeyboardInterrupt):
    study.run_study(config, run_dir, progress=False, tensorboard=True,
                    on_round=interrupt_after_round_4)
  # A killed process may lose the events it had not flushed.
  [events] = (run_dir / 'tensorboard').glob('events.out.tfevents.*')
  events.write_bytes(events.read_bytes()[:len(events.read_bytes()) // 3])
  time.sleep(1.1)
  study.resume_study(run_dir, progress=False, tensorboard=True)
  scalars = tensorboard.read_scalars(run_dir / 'tensorboard')
  records = [json.loads(line) for line in
             (run_dir / 'metrics.jsonl').read_text().splitlines()]
  assert scalars['train_loss'] == pytest.approx(
      {r['round']: r['train_loss'] for r in records})
  assert sorted(scalars['test_accuracy/va']) == [2, 4, 6]


def test_reader_stops_at_a_record_cut_short(tmp_path):
  logger = tensorboard.RoundLogger(tmp_path)
  logger.write({'round': 1, 'loss': 1.0})
  logger.write({'round': 2, 'loss': 2.0})
  logger.close()
  [path] = tmp_path.glob('events.out.tfevents.*')
  path.write_bytes(path.read_bytes()[:-6])
  assert tensorboard.read_scalars(tmp_path)['loss'] == {1: 1.0}


def test_missing_event_files_are_named(tmp_path):
  with pytest.raises(InputError, match='No TensorBoard event file'):
    tensorboard.read_scalars(tmp_path)


def test_missing_tensorboardx_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'tensorboardX', None)
  with pytest.raises(InputError, match=r"pip install 'fedjax_med\[tensorboard"):
    study.run_study(config_lib.ExperimentConfig(), tmp_path / 'run',
                    progress=False, tensorboard=True)
  assert not (tmp_path / 'run').exists()
