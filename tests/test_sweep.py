"""Sweeps: parsing, grouping into batched programs, equality with single runs."""

import json
import pathlib
import re
import shutil
import tomllib
import types

import numpy as np

import pytest

from fedjax_med import cli
from fedjax_med import config as config_lib
from fedjax_med import errors
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med import sweep as sweep_lib
from fedjax_med.data import federated
from fedjax_med.report import outputs


def _base(**overrides):
  overrides = {'rounds': 3, 'local_steps': 5, **overrides}
  return config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)


def _single_run(config, path):
  """Return per-client accuracy and the last train loss of `run_study`."""
  _, summary = study.run_study(config, path, progress=False)
  lines = [json.loads(line) for line in
           (path / 'metrics.jsonl').read_text().splitlines()]
  return summary['test_accuracy'], lines[-1]['train_loss']


@pytest.mark.parametrize('section, message', [
    ({'client': {'learning_rte': [0.1]}}, 'learning_rte'),
    ({'client.learning_rate': []}, 'is empty'),
    ({'client.learning_rate': [0.1, 0.1]}, 'repeats'),
    ({'client.learning_rate': ['fast']}, 'learning_rate'),
    ({'client.learning_rate': ['0.1', '0.2']}, 'got the string'),
    ({'seeds': '0,1'}, r'`sweep.seeds` must be a TOML list.*`seeds = \[0, 1\]`'),
    ({'client.learning_rate': '0.1, 0.2'},
     r'`sweep.client.learning_rate` must be a TOML list.*\[0.1, 0.2\]'),
    ({'variants': {'prox': {'client.proximal_mu': '0.1'}}},
     r"In `sweep.variants.prox`: .*got the string '0.1'"),
    ({'seed': [0, 1]}, 'sweep.seeds'),
    ({'seeds': [-1]}, 'seeds are 0'),
    ({'variants': {'prox': 0.1}}, 'variants.prox'),
    # A variant's seed was replaced by sweep.seeds without a message.
    ({'variants': {'a': {'seed': 7}}}, r'variants.a. sets .seed.*sweep.seeds'),
    ({'variants': {'a': {'name': 'x'}}}, r'variants.a. sets .name.'),
    ({'variants': {}}, 'must be a table'),
    # Misspelt sweep keys got `seed` as a suggestion, which a sweep rejects,
    # and an empty misspelt table was ignored.
    ({'seedz': [0, 1]}, r'did you mean `sweep.seeds`\?'),
    ({'variantz': {}}, r'did you mean `sweep.variants`\?'),
    ({'variantz': {'a': {'client.proximal_mu': 0.1}}},
     r'did you mean `sweep.variants`\?'),
    ({'client': {}}, 'is a config section, not a key'),
    ({'client.proximal_mu': [0.0, 0.1],
      'variants': {'prox': {'client.proximal_mu': 0.1}}}, 'also a sweep axis'),
    # The short name of an axis key used to slip through.
    ({'client.proximal_mu': [0.0, 0.1],
      'variants': {'prox': {'proximal_mu': 0.1}}}, 'also a sweep axis'),
])
def test_bad_sweep_rejected(section, message):
  with pytest.raises(errors.InputError, match=message):
    sweep_lib.sweep_from_document(section, _base())


@pytest.mark.parametrize('document, hint', [
    # Each quoted item got the hint of the field's own section, such as
    # `learning_rate = 0.1`, which is no sweep axis.
    ('"client.learning_rate" = ["0.1", 0.3]',
     {'client.learning_rate': [0.1, 0.3]}),
    ('"server.rounds" = ["abc"]', {'server.rounds': [1]}),
    ('seeds = ["1"]', {'seeds': [1]}),
    ('[variants]\nprox = { "client.proximal_mu" = "0.1" }',
     {'prox': {'client.proximal_mu': 0.1}}),
    ('[variants]\n"with space" = { "client.proximal_mu" = "x" }',
     {'with space': {'client.proximal_mu': 1.0}}),
], ids=['axis', 'axis_text', 'seeds', 'variant', 'variant_quoted_name'])
def test_sweep_type_hint_is_toml(document, hint):
  with pytest.raises(errors.InputError) as error:
    sweep_lib.sweep_from_document(tomllib.loads(document), _base())
  written = re.findall('`([^`]*)`', str(error.value))[-1]

  assert tomllib.loads(written) == hint


@pytest.mark.parametrize('section, overrides, shown', [
    # 1 and 1.0 are the same learning rate, and ran as two points.
    ({'client.learning_rate': [0.1, 1, 1.0]}, None, 'written as 1 and 1.0,'),
    ({}, {'sweep.client.learning_rate': '1,1.0'},
     "written as '1' and '1.0',"),
], ids=['toml', 'set'])
def test_sweep_equal_values_rejected(section, overrides, shown):
  with pytest.raises(errors.InputError) as error:
    sweep_lib.sweep_from_document(section, _base(), overrides)
  message = str(error.value)

  assert '`sweep.client.learning_rate` repeats a value: 1.0' in message
  assert shown in message


def test_empty_sweep_table_rejected(tmp_path):
  # An empty [sweep] table ran the base config once, without a word.
  path = tmp_path / 'sweep.toml'
  path.write_text('[server]\nrounds = 2\n\n[sweep]\n')

  with pytest.raises(errors.InputError) as error:
    sweep_lib.load_sweep_toml(path)
  message = str(error.value)

  assert 'The [sweep] table is empty' in message
  assert '`fedjax-med run`' in message


@pytest.mark.parametrize('override, where', [
    ({'learning_rate': '0.5'}, '`sweep.client.learning_rate`'),
    ({'client.learning_rate': '0.5'}, '`sweep.client.learning_rate`'),
    ({'rounds': '4'}, 'every entry of `sweep.variants`'),
])
def test_set_of_a_swept_key_rejected(tmp_path, override, where):
  # Such a --set used to be ignored while sweep.json recorded it.
  path = tmp_path / 'sweep.toml'
  path.write_text(
      '[sweep]\n"client.learning_rate" = [0.01, 0.05]\n'
      '[sweep.variants]\na = { "server.rounds" = 2 }\nb = { rounds = 3 }\n')
  with pytest.raises(errors.InputError, match=f'sets a key that {where}'):
    sweep_lib.load_sweep_toml(path, override)
  # A key that only some variants set still applies to the others.
  path.write_text(
      '[sweep]\n"client.learning_rate" = [0.01, 0.05]\n'
      '[sweep.variants]\na = { "server.rounds" = 2 }\nb = {}\n')
  base, _ = sweep_lib.load_sweep_toml(path, {'rounds': '4'})
  assert base.server.rounds == 4


@pytest.mark.parametrize('setting, message', [
    ('[client]\nlearning_rate = 0.5\n',
     'sets `client.learning_rate = 0.5`, a key that '
     '`sweep.client.learning_rate`'),
    ('seed = 4\n', 'sets `seed = 4`, a key that `sweep.seeds`'),
])
def test_file_value_of_swept_key_rejected(tmp_path, setting, message):
  # The file's base value used to be replaced by the sweep's values without
  # a message.
  path = tmp_path / 'sweep.toml'
  path.write_text(setting + '[sweep]\n"client.learning_rate" = [0.01, 0.05]\n'
                  'seeds = [0, 1]\n')
  with pytest.raises(errors.InputError, match=re.escape(message)):
    sweep_lib.load_sweep_toml(path)
  # A seed equal to the only swept seed changes nothing.
  path.write_text(
      'seed = 3\n[sweep]\nseeds = [3]\n"client.proximal_mu" = [0.0]\n')
  base, sweep = sweep_lib.load_sweep_toml(path)
  assert base.seed == 3
  assert sweep.seeds == (3,)


def test_command_line_axis_values_parsed():
  # --set sweep.data.dirichlet_alpha=0.3,100 stored the strings '0.3' and
  # '100', which plotted as categories; the TOML list stores numbers.
  from_set = sweep_lib.sweep_from_document(
      {}, _base(), {'sweep.data.dirichlet_alpha': '0.3,100',
                    'sweep.client.local_epochs': '1,2'})
  from_toml = sweep_lib.sweep_from_document(
      {'data.dirichlet_alpha': [0.3, 100.0], 'client.local_epochs': [1, 2]},
      _base())

  assert from_set.axes == from_toml.axes
  assert from_set.axes[0][1] == (0.3, 100.0)
  with pytest.raises(errors.InputError, match='repeats a value'):
    sweep_lib.sweep_from_document(
        {}, _base(), {'sweep.data.dirichlet_alpha': '0.3,0.30'})


def test_invalid_point_named_before_training():
  base = _base(dataset='synthetic')
  axes = sweep_lib.sweep_from_document(
      {'client.learning_rate': [0.1, -1.0]}, base)
  with pytest.raises(errors.InputError, match='client.learning_rate=-1.0'):
    sweep_lib.points(base, axes)


def test_points_cross_variants_axes_and_seeds():
  axes = sweep_lib.sweep_from_document(
      {'seeds': [3, 4], 'client': {'learning_rate': [0.01, 0.05]},
       'variants': {'fedavg': {},
                    'fedprox': {'client': {'proximal_mu': 0.1}}}},
      _base(),
  )
  points = sweep_lib.points(_base(), axes)
  assert len(points) == 8
  assert points[5].settings == {
      'variant': 'fedprox', 'client.learning_rate': 0.01, 'seed': 4}
  assert points[5].config.client.proximal_mu == 0.1
  assert points[5].config.seed == 4


def test_plan_batches_array_settings_and_splits_programs():
  base = _base()
  axes = sweep_lib.sweep_from_document(
      {'seeds': [0, 1], 'client.learning_rate': [0.01, 0.05],
       'server.aggregator': ['fedavg', 'median']}, base)
  groups = sweep_lib.plan(sweep_lib.points(base, axes))
  assert [len(group.points) for group in groups] == [4, 4]
  for group in groups:
    aggregators = {p.config.server.aggregator for p in group.points}
    assert len(aggregators) == 1


def test_plan_runs_finetune_points_alone():
  base = _base(finetune_steps=2)
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1]}, base)
  groups = sweep_lib.plan(sweep_lib.points(base, axes))
  assert [len(group.points) for group in groups] == [1, 1]
  assert 'fine-tuning' in sweep_lib.describe_plan(groups)[0]


def test_batched_points_equal_single_runs(tmp_path):
  # Learning rate, mu, server learning rate and seed are batched; SCAFFOLD's
  # controls and FedAdam's state see the traced rates too.
  base = _base()
  axes = sweep_lib.sweep_from_document({
      'seeds': [0, 1],
      'client.learning_rate': [0.01, 0.05],
      'variants': {
          'fedprox': {'client.proximal_mu': 0.5},
          'scaffold': {'client.scaffold': True},
          'fedadam': {'server.server_optimizer': 'fedadam',
                      'server.server_learning_rate': 0.03},
      },
  }, base)
  run_dir, records = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)
  assert all(r['mode'] == 'batched' for r in records)
  assert {r['batched_over'] for r in records} == {'learning_rate'}

  points = sweep_lib.points(base, axes)
  for index in (0, 3, 5, 10):
    accuracy, loss = _single_run(points[index].config,
                                 tmp_path / f'single{index}')
    record = records[index]
    np.testing.assert_allclose(
        list(record['test_accuracy'].values()), list(accuracy.values()),
        atol=1e-6)
    np.testing.assert_allclose(record['train_loss'], loss, rtol=1e-4)
  # Different learning rates give different models.
  assert records[0]['train_loss'] != records[2]['train_loss']

  rows = (run_dir / 'summary.csv').read_text().splitlines()
  assert len(rows) == 1 + 6
  assert (run_dir / 'sweep.png').stat().st_size > 0


def test_batched_noise_multiplier_equals_single_runs(tmp_path):
  base = _base(aggregator='mean', noise='central', clip_norm=0.5,
               rounds=2)
  axes = sweep_lib.sweep_from_document(
      {'privacy.noise_multiplier': [0.3, 3.0]}, base)
  _, records = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)
  assert [r['batched_over'] for r in records] == ['noise_multiplier'] * 2
  for point, record in zip(sweep_lib.points(base, axes), records):
    accuracy, loss = _single_run(point.config, tmp_path / f'p{point.index}')
    np.testing.assert_allclose(
        list(record['test_accuracy'].values()), list(accuracy.values()),
        atol=1e-6)
    np.testing.assert_allclose(record['train_loss'], loss, rtol=1e-4)
  # More noise, less privacy spent.
  assert records[0]['epsilon'] > records[1]['epsilon'] > 0


def test_dirichlet_sweep_pads_clients_and_records_failures(tmp_path):
  # alpha 0.001 cannot give 40 clients two rows each; that point is an
  # error row and the others still run as one batch.
  base = _base(dataset='synthetic_iid', num_clients=40, partition='dirichlet',
               partition_clients=40, sampling='uniform', cohort_size=8)
  axes = sweep_lib.sweep_from_document(
      {'seeds': [0, 1], 'data.dirichlet_alpha': [0.001, 0.5, 100.0]}, base)
  run_dir, records = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)
  statuses = [r['status'] for r in records]
  assert statuses == ['error'] * 2 + ['completed'] * 4
  assert 'dirichlet_alpha' in records[0]['error']
  assert {r['batched_over'] for r in records[2:]} == {'data'}
  # Label skew lowers the weakest clients: the 10th percentile of alpha 0.5
  # is below that of alpha 100 for both seeds. The worst client alone can
  # be 0 at both alphas with 8 test rows per client.
  assert records[2]['p10_accuracy'] < records[4]['p10_accuracy']
  assert records[3]['p10_accuracy'] < records[5]['p10_accuracy']
  rounds = [json.loads(line) for line in
            (run_dir / 'rounds.jsonl').read_text().splitlines()]
  assert len(rounds) == 4 * 3
  assert {line['point'] for line in rounds} == {2, 3, 4, 5}


def test_resumed_sweep_runs_only_missing_points(tmp_path):
  base = _base()
  axes = sweep_lib.sweep_from_document(
      {'seeds': [0, 1], 'client.learning_rate': [0.01, 0.05]}, base)
  run_dir, first = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)
  lines = (run_dir / 'points.jsonl').read_text().splitlines()
  # Keep two finished points and a line cut short by a crash.
  (run_dir / 'points.jsonl').write_text(
      '\n'.join(lines[:2]) + '\n' + lines[2][:20])
  notes = []
  _, resumed = sweep_lib.run_sweep(
      base, axes, run_dir, resume=True, progress=False, log=notes.append)
  assert notes[0].startswith('4 points, 2 to run')
  assert [r['point'] for r in resumed] == [0, 1, 2, 3]
  for before, after in zip(first, resumed):
    assert before['test_accuracy'] == pytest.approx(after['test_accuracy'])
  with pytest.raises(errors.InputError, match='sweep.seeds'):
    changed = sweep_lib.sweep_from_document(
        {'seeds': [0], 'client.learning_rate': [0.01, 0.05]}, base)
    sweep_lib.run_sweep(base, changed, run_dir, resume=True, progress=False)


def test_stop_during_batch_records_whole_batch(tmp_path, monkeypatch):
  # A stop request that arrived while a finished batch's records were
  # built stopped after the first point. The resume then trained the
  # others again and wrote their rounds twice.
  base = _base()
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  original = sweep_lib._point_metrics
  calls = []

  def metrics_then_stop(*args, **kwargs):
    if not calls:
      interrupts.request_stop()
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(sweep_lib, '_point_metrics', metrics_then_stop)
  with pytest.raises(errors.StudyInterrupted) as stopped:
    sweep_lib.run_sweep(base, axes, tmp_path / 'sweep', progress=False)

  assert stopped.value.rounds_done == 3
  run_dir = tmp_path / 'sweep'
  lines = (run_dir / 'rounds.jsonl').read_text().splitlines()
  assert len(lines) == 3 * base.server.rounds


def test_resume_without_batch_checkpoint_writes_rounds_once(tmp_path):
  # batches.json recorded 2 rounds of the batch on disk, but its
  # checkpoint was gone. The batch started again from round 0 while
  # rounds.jsonl kept rounds 1 and 2, so they were written twice.
  base = _base()
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  (run_dir / 'points.jsonl').write_text('')
  progress_path = run_dir / 'checkpoints' / 'batches.json'
  progress_path.parent.mkdir(exist_ok=True)
  progress_path.write_text(json.dumps(
      {'checkpoints/batch-0000': {'points': [0, 1, 2], 'rounds_done': 2}}))

  sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)

  rounds = [json.loads(line) for line in
            (run_dir / 'rounds.jsonl').read_text().splitlines()]
  keys = [(record['point'], record['round']) for record in rounds]
  assert len(keys) == len(set(keys)) == 3 * base.server.rounds


def _csv_data(tmp_path):
  """Return a CSV of two hospitals and the settings that load it."""
  path = tmp_path / 'clients.csv'
  rows = ['site,x1,x2,y']
  for site in ('a', 'b'):
    for index in range(20):
      rows.append(f'{site},{index / 20},{(index % 3) / 3},{index % 2}')
  path.write_text('\n'.join(rows) + '\n')
  return path, {'dataset': 'csv', 'csv_path': str(path),
                'client_column': 'site', 'label_column': 'y',
                'bootstrap_resamples': 100}


@pytest.mark.parametrize('overrides, unfinished', [
    ({}, 'none'), ({'finetune_steps': 1}, 'none'),
    ({'finetune_steps': 1}, 'half')], ids=['batched', 'loop', 'loop-resumed'])
def test_resumed_sweep_rejects_changed_data(tmp_path, overrides, unfinished):
  # A resumed sweep did not check its data files, so the points run after
  # an edit trained on other data than the finished ones. A point whose
  # own run refused the data was recorded as an error, and the sweep went
  # on with the next point.
  path, data = _csv_data(tmp_path)
  base = _base(**data, **overrides)
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  recorded = json.loads((run_dir / 'provenance.json').read_text())
  assert list(recorded['data_files']) == [str(path.resolve())]
  lines = (run_dir / 'points.jsonl').read_text().splitlines()
  (run_dir / 'points.jsonl').write_text(lines[0] + '\n')
  for index in (1, 2):
    point_dir = run_dir / 'runs' / f'point-{index:04d}'
    if unfinished == 'half':
      (point_dir / 'summary.json').unlink()
    elif point_dir.exists():
      shutil.rmtree(point_dir)
  path.write_text(path.read_text().replace('a,0.0,', 'a,0.5,', 1))

  with pytest.raises(errors.DataCheckError, match='changed since the'):
    sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)
  assert len((run_dir / 'points.jsonl').read_text().splitlines()) == 1


def _cut_after_first_point(run_dir):
  lines = (run_dir / 'points.jsonl').read_text().splitlines()
  (run_dir / 'points.jsonl').write_text(lines[0] + '\n')
  shutil.rmtree(run_dir / 'runs', ignore_errors=True)


def test_resume_rejects_repointed_symlink(tmp_path):
  # The check keyed files by their resolved path, so a symlink pointed at
  # another file looked like a new file of the sweep and was accepted.
  path, data = _csv_data(tmp_path)
  other = tmp_path / 'other.csv'
  other.write_text(path.read_text().replace('a,0.0,', 'a,0.5,', 1))
  link = tmp_path / 'link.csv'
  link.symlink_to(path)
  base = _base(**{**data, 'csv_path': str(link)})
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  _cut_after_first_point(run_dir)
  link.unlink()
  link.symlink_to(other)

  with pytest.raises(errors.DataCheckError, match='changed since the sweep'):
    sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)


def test_resume_rejects_relative_axis_path_elsewhere(tmp_path, monkeypatch):
  # sweep.json kept an axis value 'a.csv' as written, so a resume from
  # another folder trained the unfinished points on another a.csv.
  for folder in ('first', 'second'):
    (tmp_path / folder).mkdir()
    path, data = _csv_data(tmp_path / folder)
  monkeypatch.chdir(tmp_path / 'first')
  base = _base(**data)
  axes = sweep_lib.sweep_from_document(
      {'seeds': [0, 1], 'data.csv_path': ['clients.csv']}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  _cut_after_first_point(run_dir)
  monkeypatch.chdir(tmp_path / 'second')

  with pytest.raises(errors.InputError, match='first/clients.csv'):
    sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)


def test_resume_rejects_removed_image_file(tmp_path):
  # A file removed from the image folder was not noticed: the resumed
  # points reported accuracy for fewer hospitals.
  rng = np.random.default_rng(0)
  folder = tmp_path / 'sites'
  folder.mkdir()
  for site in ('s1', 's2', 's3'):
    np.savez(folder / f'{site}.npz',
             x=rng.normal(size=(12, 4, 4, 1)).astype(np.float32),
             y=np.arange(12) % 2)
  base = _base(dataset='image_npz', image_path=str(folder), model='cnn',
               bootstrap_resamples=100)
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  _cut_after_first_point(run_dir)
  (folder / 's3.npz').rename(tmp_path / 's3.npz')

  with pytest.raises(errors.DataCheckError, match='0 added and 1 missing'):
    sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)


@pytest.mark.parametrize('content', ['{"data_files": []}', 'not json'])
def test_resume_rejects_damaged_provenance(tmp_path, content):
  path, data = _csv_data(tmp_path)
  base = _base(**data)
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1]}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  _cut_after_first_point(run_dir)
  (run_dir / 'provenance.json').write_text(content)

  with pytest.raises(errors.DataCheckError, match='missing or unreadable'):
    sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)


def test_synthetic_sweep_resumes_without_provenance(tmp_path):
  # Synthetic data have no files, so a sweep folder from before data
  # files were recorded can still be resumed.
  base = _base(dataset='synthetic', num_clients=6)
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1]}, base)
  run_dir, first = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                       progress=False)
  _cut_after_first_point(run_dir)
  (run_dir / 'provenance.json').unlink()

  _, resumed = sweep_lib.run_sweep(base, axes, run_dir, resume=True,
                                   progress=False)

  assert resumed[1]['test_accuracy'] == first[1]['test_accuracy']


def test_resume_past_damaged_batch_checkpoint(tmp_path, monkeypatch):
  # A batch checkpoint without its state raised a KeyError from orbax.
  # The batch now restarts from the older checkpoint, and the rounds it
  # runs again are written once, with the values of an uninterrupted run.
  base = _base(rounds=4)
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  _, expected = sweep_lib.run_sweep(base, axes, tmp_path / 'whole',
                                    progress=False)
  expected_rounds = (tmp_path / 'whole' / 'rounds.jsonl').read_text()
  original = sweep_lib._Batched._write_round
  written = []

  def write_then_stop(self, *args, **kwargs):
    original(self, *args, **kwargs)
    written.append(1)
    if len(written) == 2:
      interrupts.request_stop()

  monkeypatch.setattr(sweep_lib._Batched, '_write_round', write_then_stop)
  run_dir = tmp_path / 'sweep'
  with pytest.raises(errors.StudyInterrupted):
    sweep_lib.run_sweep(base, axes, run_dir, progress=False,
                        checkpoint_interval_s=0)
  monkeypatch.setattr(sweep_lib._Batched, '_write_round', original)
  shutil.rmtree(run_dir / 'checkpoints' / 'batch-0000' / '2' / 'state')

  _, resumed = sweep_lib.run_sweep(base, axes, run_dir, resume=True,
                                   progress=False)

  assert (run_dir / 'rounds.jsonl').read_text() == expected_rounds
  for before, after in zip(expected, resumed):
    assert after['test_accuracy'] == before['test_accuracy']


@pytest.mark.parametrize('content', [
    '[]', '{"checkpoints/batch-0000": {"points": [0, 1, 2]}}'])
def test_resume_with_malformed_batch_progress(tmp_path, content):
  # Valid JSON of another shape raised AttributeError or KeyError.
  base = _base()
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1, 2]}, base)
  run_dir, first = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                       progress=False)
  (run_dir / 'points.jsonl').write_text('')
  (run_dir / 'checkpoints').mkdir(exist_ok=True)
  (run_dir / 'checkpoints' / 'batches.json').write_text(content)

  _, resumed = sweep_lib.run_sweep(base, axes, run_dir, resume=True,
                                   progress=False)

  assert [r['test_accuracy'] for r in resumed] == [
      r['test_accuracy'] for r in first]


def test_locked_sweep_resume_leaves_files(tmp_path):
  # A second `sweep --resume` rewrote points.jsonl and rounds.jsonl before
  # it found the folder locked by the running sweep.
  base = _base()
  axes = sweep_lib.sweep_from_document({'seeds': [0, 1]}, base)
  run_dir, _ = sweep_lib.run_sweep(base, axes, tmp_path / 'sweep',
                                   progress=False)
  (run_dir / 'points.jsonl').write_text('')
  rounds = (run_dir / 'rounds.jsonl').read_text()

  with outputs.lock_run_dir(run_dir):
    with pytest.raises(errors.InputError, match='Another process'):
      sweep_lib.run_sweep(base, axes, run_dir, resume=True, progress=False)

  assert (run_dir / 'rounds.jsonl').read_text() == rounds


def test_cli_sweep_warns_of_small_denominator(tmp_path, capsys):
  # Only `run` warned; a sweep at weight_cap 1e5 finished silently with
  # its noise 200 times the largest clipped update.
  path = tmp_path / 'sweep.toml'
  path.write_text(
      '[server]\nrounds = 2\nweight_cap = 100000.0\n'
      '[client]\nlocal_steps = 2\n'
      '[privacy]\nnoise = "central"\nnoise_multiplier = 1.0\n'
      '[sweep]\nseeds = [0, 1]\n"privacy.clip_norm" = [1.0, 2.0]\n')
  assert cli.main(['sweep', str(path), '--out', str(tmp_path / 'out'),
                   '--no-progress']) == 0
  captured = capsys.readouterr()

  assert 'warning: points 0, 1, 2, 3 divide' in captured.err
  assert 'Lower `server.weight_cap`' in captured.err
  header, first = (tmp_path / 'out' / 'table.csv').read_text().splitlines()[:2]
  column = header.split(',').index('denominator')
  assert 0 < float(first.split(',')[column]) < 1


def test_cli_sweep_and_run_rejects_sweep(tmp_path, capsys):
  path = tmp_path / 'sweep.toml'
  path.write_text('[server]\nrounds = 2\n[sweep]\nseeds = [0, 1]\n')
  assert cli.main(['sweep', str(path), '--out', str(tmp_path / 'out'),
                   '--no-progress', '--set', 'sweep.seeds=0,1,2']) == 0
  captured = capsys.readouterr()
  assert '3 points to batch' in captured.err
  assert '3 completed' in captured.out
  assert cli.main(['run', str(path)]) == 2
  assert 'fedjax-med sweep' in capsys.readouterr().err
  plain = tmp_path / 'plain.toml'
  plain.write_text('[server]\nrounds = 2\n')
  assert cli.main(['sweep', str(plain)]) == 2
  assert 'no [sweep] table' in capsys.readouterr().err


def _member(index, length):
  data = federated.FederatedData(
      {'x': np.zeros((10, length, 4), np.float32),
       'y': np.zeros((10, length), np.int32)},
      np.full(10, length, np.int32))
  point = sweep_lib.Point(index, {'seed': index}, None)
  return point, types.SimpleNamespace(
      train=data, dataset=types.SimpleNamespace(test=data))


def test_batches_bound_padding_and_memory(monkeypatch):
  members = [_member(0, 100), _member(1, 30), _member(2, 150),
             _member(3, 20), _member(4, 35)]
  batches = sweep_lib._batches(members)
  # Lengths 20, 30, 35 pad to at most 2x 20; 100 and 150 to 2x 100.
  assert [[m[0].index for m in b] for b in batches] == [[1, 3, 4], [0, 2]]
  # Padded to 35 rows, a point takes 14,140 bytes (its 20-row data, 8,080
  # bytes with the counts, times 35 / 20), so two fit and three do not.
  monkeypatch.setattr(sweep_lib, 'MAX_BATCH_BYTES', 2 * 14_140)
  batches = sweep_lib._batches(members[1:2] + members[3:5] + members[:1])
  sizes = [len(b) for b in batches]
  assert sizes == [2, 1, 1]


def test_heterogeneity_experiment_runs_reduced(tmp_path, capsys):
  path = pathlib.Path(__file__).parents[1] / (
      'experiments/heterogeneity_sweep.toml')
  assert cli.main([
      'sweep', str(path), '--out', str(tmp_path / 'hs'), '--no-progress',
      '--set', 'data.num_clients=40', '--set', 'data.partition_clients=40',
      '--set', 'sampling.cohort_size=8', '--set', 'server.rounds=2',
      '--set', 'sweep.seeds=0', '--set', 'sweep.data.dirichlet_alpha=1.0',
  ]) == 0
  assert '4 completed' in capsys.readouterr().out
  rows = (tmp_path / 'hs' / 'summary.csv').read_text().splitlines()
  assert [row.split(',')[0] for row in rows[1:]] == [
      'fedavg', 'fedprox', 'scaffold', 'fedadam']


def test_diverged_point_does_not_stop_its_batch(tmp_path):
  base = _base()
  axes = sweep_lib.sweep_from_document(
      {'client.learning_rate': [0.01, 1e38]}, base)
  run_dir, records = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)
  assert [r['mode'] for r in records] == ['batched', 'batched']
  assert records[0]['status'] == 'completed'
  assert records[1]['status'] == 'diverged'
  assert 1 <= records[1]['diverged_round'] <= 3
  assert 'mean_accuracy' not in records[1]
  summary = (run_dir / 'summary.md').read_text()
  assert '1 failed' in summary


def test_sweep_of_lists_and_ditto_reports(tmp_path):
  base = _base(rounds=2)
  axes = sweep_lib.sweep_from_document({
      'model.model': ['mlp'], 'model.hidden_sizes': [[8], [16, 16]],
      'client.ditto_lambda': [0.0, 90.0]}, base)
  run_dir, records = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)
  assert (run_dir / 'sweep.png').stat().st_size > 0
  for record in records:
    assert 0.0 <= record['ditto_mean_accuracy'] <= 1.0
  header = (run_dir / 'table.csv').read_text().splitlines()[0]
  assert 'ditto_mean_accuracy' in header


def test_sweep_reports_finetuned_accuracy(tmp_path):
  # Points that differed only in evaluation.finetune_steps gave identical
  # rows: the fine-tuned accuracy stayed in each point's summary.json.
  base = _base(rounds=2)
  axes = sweep_lib.sweep_from_document(
      {'evaluation.finetune_steps': [0, 20]}, base)
  run_dir, records = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)

  assert records[0].get('finetuned_mean_accuracy') is None
  point = json.loads((tmp_path / 'sweep' / 'runs' / 'point-0001' /
                      'summary.json').read_text())
  assert records[1]['finetuned_mean_accuracy'] == (
      point['finetuned']['mean_accuracy'])
  assert records[1]['finetuned_worst_accuracy'] == (
      point['finetuned']['worst_accuracy'])
  header = (run_dir / 'summary.csv').read_text().splitlines()[0]
  assert 'finetuned_mean_accuracy' in header
  assert 'finetuned_mean_accuracy' in (run_dir / 'summary.md').read_text()


def test_point_without_valid_guarantee_has_no_epsilon(tmp_path):
  # The summary states no valid guarantee (a failed secure round); the table
  # used to show the accountant's epsilon anyway.
  base = _base(rounds=6, local_steps=2, aggregator='mean', clip_norm=1.0,
               noise='central', noise_multiplier=1.0, dropout_rate=0.5,
               **{'secure_aggregation.enabled': 'true'})
  axes = sweep_lib.sweep_from_document({'client.learning_rate': [0.1]}, base)

  run_dir, [record] = sweep_lib.run_sweep(
      base, axes, tmp_path / 'sweep', progress=False)

  summary = json.loads(
      (run_dir / 'runs' / 'point-0000' / 'summary.json').read_text())
  assert summary['privacy']['guarantee_holds'] is False
  assert summary['secure_aggregation']['failed_rounds'] >= 1
  assert record['epsilon'] is None
