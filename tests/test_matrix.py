"""The robustness matrix: axes, cell settings, n/a cells, resume, outputs."""

import dataclasses
import json
import re
import tomllib

import numpy as np
import pytest

from fedjax_med import cli
from fedjax_med import config as config_lib
from fedjax_med import errors
from fedjax_med import matrix as matrix_lib
from fedjax_med import study
from fedjax_med.report import outputs


def _base(**overrides):
  overrides = {'rounds': 2, 'local_steps': 5, **overrides}
  return config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)


@pytest.mark.parametrize('section, message', [
    ({'aggregator': ['median']}, 'Unknown matrix key'),
    ({'aggregators': ['median', 'mode']}, "'mode'"),
    ({'attacks': ['sign_flip', 'poison']}, "'poison'"),
    ({'malicious_fractions': [0.0, 1.0]}, r'\[0, 1\)'),
    ({'malicious_fractions': [0.1, 0.1]}, 'repeats'),
    ({'seeds': []}, 'is empty'),
    ({'seeds': [-1]}, 'seeds are 0'),
    ({'strengths': {'label_flip': 2.0}}, 'takes no strength'),
    ({'strengths': {'sign_flip': float('inf')}}, 'finite'),
    # 1e39 was accepted, and every cell then read "n/a".
    ({'strengths': {'sign_flip': 1e39}}, 'sign_flip`: 1e\\+39.*float32'),
    ({'strengths': 'sign_flip'}, 'attack:strength'),
    ({'strengths': 'sign_flip:1,sign_flip:2'}, 'twice'),
    ({'seeds': [[0]]}, 'integer'),
    ({'seeds': '0,1'}, r'`matrix.seeds` must be a TOML list.*\[0, 1\]'),
    ({'aggregators': 'median,krum'},
     r'`aggregators = \["median", "krum"\]`'),
    ({'malicious_fractions': ['0.1']}, 'got the string'),
    ({'malicious_fractions': [[0.1]]}, 'number'),
])
def test_bad_matrix_rejected(section, message):
  with pytest.raises(errors.InputError, match=message):
    matrix_lib.matrix_from_document(section)


@pytest.mark.parametrize('document, hint', [
    # A quoted list item got the scalar hint `malicious_fractions = 0.5`.
    ('malicious_fractions = ["0.5", 0.2]',
     {'malicious_fractions': [0.5, 0.2]}),
    ('seeds = ["1"]', {'seeds': [1]}),
    ('malicious_fractions = "0.5"', {'malicious_fractions': [0.5]}),
    # A non-number got the hint `sign_flip = x`, which is not TOML.
    ('strengths = { sign_flip = "x" }', {'strengths': {'sign_flip': 1.0}}),
    ('strengths = { sign_flip = "10" }', {'strengths': {'sign_flip': 10.0}}),
], ids=['fractions', 'seeds', 'fractions_string', 'strength_text',
        'strength_number'])
def test_matrix_type_hint_is_toml(document, hint):
  with pytest.raises(errors.InputError) as error:
    matrix_lib.matrix_from_document(tomllib.loads(document))
  written = re.findall('`([^`]*)`', str(error.value))[-1]

  assert tomllib.loads(written) == hint


def test_base_aggregator_rejected(tmp_path):
  # `--set aggregator=median` used to run the matrix's aggregators only.
  matrix = matrix_lib.matrix_from_document({'seeds': [0]})
  with pytest.raises(errors.InputError, match='server.aggregator=median'):
    matrix_lib.run_matrix(_base(aggregator='median'), matrix,
                          tmp_path / 'm', progress=False)


@pytest.mark.parametrize('overrides, message', [
    ({'seed': 7}, '`seed=7`'),
    ({'num_byzantine': 3}, '`server.num_byzantine=3`'),
])
def test_base_value_set_per_cell_rejected(tmp_path, overrides, message):
  # Both used to be replaced per cell without a message.
  matrix = matrix_lib.matrix_from_document({'seeds': [0]})
  with pytest.raises(errors.InputError, match=message):
    matrix_lib.run_matrix(_base(**overrides), matrix, tmp_path / 'm',
                          progress=False)


def test_overrides_replace_axes():
  matrix = matrix_lib.matrix_from_document(
      {'seeds': [0, 1, 2]},
      {'matrix.seeds': '4,5', 'matrix.strengths': 'sign_flip:3'},
  )
  assert matrix.seeds == (4, 5)
  assert matrix.strengths == (('sign_flip', 3.0),)


def test_cells_run_attacks_above_zero_only():
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg', 'krum'), attacks=('none', 'sign_flip'),
      malicious_fractions=(0.0, 0.1, 0.3), seeds=(0,),
  )
  labels = [(c.aggregator, c.attack, c.fraction)
            for c in matrix_lib.cells(matrix)]
  assert labels == [
      ('fedavg', 'none', 0.0), ('fedavg', 'sign_flip', 0.1),
      ('fedavg', 'sign_flip', 0.3), ('krum', 'none', 0.0),
      ('krum', 'sign_flip', 0.1), ('krum', 'sign_flip', 0.3),
  ]


def test_cell_config_tells_aggregator_the_attack_size():
  base = _base(max_norm=2.0, trim_fraction=0.15)
  matrix = matrix_lib.MatrixConfig(strengths=(('sign_flip', 7.0),))
  krum = matrix_lib.cell_config(
      base, matrix, matrix_lib.Cell('krum', 'sign_flip', 0.1), 3, cohort=50,
      num_clients=1000)
  odd = matrix_lib.cell_config(
      base, matrix, matrix_lib.Cell('krum', 'sign_flip', 0.3), 3, cohort=10,
      num_clients=7)
  trimmed = matrix_lib.cell_config(
      base, matrix, matrix_lib.Cell('trimmed_mean', 'scaling', 0.3), 3, 50,
      1000)
  low = matrix_lib.cell_config(
      base, matrix, matrix_lib.Cell('trimmed_mean', 'scaling', 0.1), 3, 50,
      1000)

  # f = ceil(100 malicious * 50 / 1000) = 5; settings of other aggregators
  # are reset so the cell validates.
  assert krum.server.num_byzantine == 5
  # round(0.3 * 7) = 2 malicious, so f = ceil(2 * 10 / 7) = 3.
  assert odd.server.num_byzantine == 3
  assert krum.server.max_norm is None
  assert krum.attack.attack_strength == 7.0
  assert krum.seed == 3
  assert trimmed.server.trim_fraction == 0.3
  assert trimmed.attack.attack_strength is None
  assert low.server.trim_fraction == 0.15
  config_lib.validate(krum)
  config_lib.validate(trimmed)


def _records(run_dir):
  return [json.loads(line)
          for line in (run_dir / 'cells.jsonl').read_text().splitlines()]


def test_matrix_marks_krum_not_applicable(tmp_path):
  matrix = matrix_lib.MatrixConfig(
      aggregators=('median', 'krum'), attacks=('none', 'sign_flip'),
      malicious_fractions=(0.0, 0.25), seeds=(0,),
  )
  run_dir, rows = matrix_lib.run_matrix(
      _base(), matrix, tmp_path / 'm', progress=False)

  by_cell = {(row['aggregator'], row['attack']): row for row in rows}
  # Four hospitals, one attacker: Krum needs n > 2 * 1 + 2.
  assert 'more than 2 * num_byzantine + 2 = 4' in (
      by_cell['krum', 'sign_flip']['not_applicable'])
  assert by_cell['krum', 'sign_flip']['clean_accuracy'] is None
  # Without attackers f = 0 and Krum runs.
  assert by_cell['krum', 'none']['completed'] == 1
  assert by_cell['median', 'sign_flip']['completed'] == 1
  assert len(_records(run_dir)) == 4
  table = (run_dir / 'table.md').read_text()
  assert '| krum | sign_flip | 0.25 | n/a | n/a | n/a | n/a: Krum' in table
  assert (run_dir / 'heatmap.png').stat().st_size > 0
  assert (run_dir / 'table.csv').read_text().count('\n') == 5


def test_cell_matches_a_study_run(tmp_path):
  # Seed 1 reuses the round compiled for seed 0 with its own poisoned data
  # and malicious mask; it must give what `fedjax-med run` gives.
  base = _base(rounds=3, local_steps=20)
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('label_flip',),
      malicious_fractions=(0.25,), seeds=(0, 1),
  )
  run_dir, _ = matrix_lib.run_matrix(base, matrix, tmp_path / 'm',
                                     progress=False)
  record = _records(run_dir)[1]
  config = dataclasses.replace(
      base, seed=1, attack=config_lib.AttackConfig(
          attack='label_flip', malicious_fraction=0.25))
  _, summary = study.run_study(config, tmp_path / 'study', progress=False)

  malicious = summary['attack']['malicious_clients']
  honest = {name: value for name, value in summary['test_accuracy'].items()
            if name not in malicious}
  counts = summary['num_test_examples']
  pooled = (sum(honest[n] * counts[n] for n in honest)
            / sum(counts[n] for n in honest))
  assert record['seed'] == 1
  assert record['worst_accuracy'] == pytest.approx(min(honest.values()))
  assert record['clean_accuracy'] == pytest.approx(pooled)


def test_interrupted_matrix_resumes(tmp_path):
  base = _base(rounds=1)
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg', 'median'), attacks=('none', 'gaussian'),
      malicious_fractions=(0.0, 0.25), seeds=(0, 1),
  )
  seen = []

  def stop_after_three(record):
    seen.append(record)
    if len(seen) == 3:
      raise KeyboardInterrupt

  with pytest.raises(errors.StudyInterrupted):
    matrix_lib.run_matrix(base, matrix, tmp_path / 'm', progress=False,
                          on_record=stop_after_three)
  first = _records(tmp_path / 'm')
  assert len(first) == 3
  assert (tmp_path / 'm' / 'table.md').exists()

  with pytest.raises(errors.InputError, match='differ'):
    matrix_lib.run_matrix(
        base, dataclasses.replace(matrix, seeds=(0,)), tmp_path / 'm',
        resume=True, progress=False)
  _, rows = matrix_lib.run_matrix(base, matrix, tmp_path / 'm', resume=True,
                                  progress=False)

  records = _records(tmp_path / 'm')
  keys = [(r['aggregator'], r['attack'], r['seed']) for r in records]
  assert len(keys) == len(set(keys)) == 8
  assert records[:3] == first
  assert all(row['completed'] == 2 for row in rows)


def test_stop_request_ends_cell_between_rounds(tmp_path, monkeypatch):
  # A stop request was checked only after each cell, so Ctrl-C waited for
  # every round of the cell to finish.
  calls = []

  def stop_on_second_call():
    calls.append(None)
    if len(calls) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(matrix_lib.interrupts, 'raise_if_requested',
                      stop_on_second_call)
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg', 'median'), attacks=('none',),
      malicious_fractions=(0.0,), seeds=(0,))

  with pytest.raises(errors.StudyInterrupted) as interrupted:
    matrix_lib.run_matrix(_base(rounds=3), matrix, tmp_path / 'm',
                          progress=False)

  assert interrupted.value.rounds_done == 0
  assert _records(tmp_path / 'm') == []
  assert len(calls) == 2


def test_backdoor_cell_reports_success(tmp_path):
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('backdoor',),
      malicious_fractions=(0.25,), seeds=(0,),
      strengths=(('backdoor', 4.0),),
  )
  _, rows = matrix_lib.run_matrix(_base(rounds=5, local_steps=100), matrix,
                                  tmp_path / 'm', progress=False)
  # Seed 0 makes Switzerland the attacker; `fedjax-med run` with the same
  # settings and 15 rounds measured 0.55.
  assert rows[0]['backdoor_success'] > 0.2
  assert np.isfinite(rows[0]['clean_accuracy'])


def test_cli_needs_matrix_table(tmp_path, capsys):
  path = tmp_path / 'plain.toml'
  path.write_text('[server]\nrounds = 2\n')
  assert cli.main(['matrix', str(path), '--no-progress']) == 2
  assert 'no [matrix] table' in capsys.readouterr().err


@pytest.mark.parametrize('name, aggregators, attacks', [
    ('robustness_matrix_heart', 'median,bulyan,centered_clipping',
     'none,little_is_enough,backdoor'),
    ('robustness_matrix_synthetic', 'centered_clipping,bulyan',
     'none,backdoor'),
])
def test_experiment_runs_reduced(tmp_path, name, aggregators, attacks,
                                 capsys):
  code = cli.main([
      'matrix', f'experiments/{name}.toml', '--out', str(tmp_path / name),
      '--no-progress', '--set', 'rounds=1', '--set', 'local_steps=2',
      '--set', 'num_clients=60' if 'synthetic' in name else 'seed=0',
      '--set', 'matrix.seeds=0',
      '--set', f'matrix.aggregators={aggregators}',
      '--set', f'matrix.attacks={attacks}',
      '--set', 'matrix.malicious_fractions=0,0.25',
  ])
  assert code == 0, capsys.readouterr().err
  records = _records(tmp_path / name)
  statuses = {(r['aggregator'], r['attack']): r['status'] for r in records}
  assert len(records) == len(aggregators.split(',')) * len(attacks.split(','))
  assert statuses['centered_clipping', 'backdoor'] == 'completed'
  # Bulyan needs a cohort of 4f + 3: 7 with one hospital of four, 55 with
  # f = ceil(0.25 * 50) = 13 of a cohort of 50.
  assert statuses['bulyan', 'backdoor'] == 'not_applicable'
  reasons = {(r['aggregator'], r['attack']): r.get('reason') for r in records}
  # The matrix sets num_byzantine itself, so the fix is the fraction.
  assert 'lower the malicious fraction' in reasons['bulyan', 'backdoor']
  assert 'lower num_byzantine' not in reasons['bulyan', 'backdoor']
  assert statuses['bulyan', 'none'] == 'completed'


@pytest.mark.parametrize('overrides, message', [
    ({'attack': 'sign_flip', 'malicious_fraction': 0.25},
     'matrix.attacks'),
    ({'trigger_features': '0,99'}, r'columns \[99\]'),
    ({'target_label': 5}, 'target_label=5'),
    # The cells ran plain FedAvg, without the protocol, and raised no error.
    ({'secure_aggregation.enabled': True, 'clip_norm': 10.0},
     'does not run `secure_aggregation.enabled=true`'),
])
def test_matrix_checks_base_before_training(tmp_path, overrides, message):
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('none', 'backdoor'),
      malicious_fractions=(0.0, 0.25), seeds=(0,),
  )
  seen = []
  with pytest.raises(errors.InputError, match=message):
    matrix_lib.run_matrix(_base(**overrides), matrix, tmp_path / 'm',
                          progress=False, on_record=seen.append)
  assert not seen


def test_base_setting_no_cell_can_use_rejected(tmp_path):
  # A trim fraction of 0.6 used to run every cell and mark the trimmed
  # mean's cells n/a afterwards.
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg', 'trimmed_mean'), attacks=('none',),
      malicious_fractions=(0.0,), seeds=(0,),
  )
  seen = []
  with pytest.raises(errors.InputError,
                     match='cannot run `trimmed_mean`.*trim_fraction'):
    matrix_lib.run_matrix(_base(trim_fraction=0.6), matrix, tmp_path / 'm',
                          progress=False, on_record=seen.append)
  assert not seen
  # No folder is left behind for a corrected rerun to run into.
  assert not (tmp_path / 'm').exists()


def test_fraction_with_no_attacker_rejected(tmp_path):
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('sign_flip',),
      malicious_fractions=(0.1,), seeds=(0,),
  )
  # round(0.1 * 4 hospitals) = 0.
  with pytest.raises(errors.InputError, match='rounds to 0 malicious'):
    matrix_lib.run_matrix(_base(), matrix, tmp_path / 'm', progress=False)
  with pytest.raises(errors.InputError, match='rounds to 0 malicious'):
    study.run_study(_base(attack='sign_flip', malicious_fraction=0.1),
                    tmp_path / 'run', progress=False)


def test_fraction_with_no_honest_client_rejected(tmp_path):
  # round(0.9 * 4) = 4 made every hospital an attacker: the run finished
  # with zero updates and blank honest metrics.
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('little_is_enough',),
      malicious_fractions=(0.9,), seeds=(0,),
  )
  with pytest.raises(errors.InputError, match='no honest client is left'):
    matrix_lib.run_matrix(_base(), matrix, tmp_path / 'm', progress=False)
  with pytest.raises(errors.InputError,
                     match='rounds to 4 malicious clients'):
    study.run_study(_base(attack='inner_product', malicious_fraction=0.9),
                    tmp_path / 'run', progress=False)


def test_resume_names_changed_setting(tmp_path):
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('none',),
      malicious_fractions=(0.0,), seeds=(0,),
  )
  run_dir, _ = matrix_lib.run_matrix(_base(rounds=1), matrix, tmp_path / 'm',
                                     progress=False)
  with open(run_dir / 'cells.jsonl', 'a', encoding='utf-8') as f:
    f.write('42\n{}\n')

  with pytest.raises(errors.InputError, match='server.rounds'):
    matrix_lib.run_matrix(_base(rounds=2), matrix, run_dir, resume=True,
                          progress=False)
  _, rows = matrix_lib.run_matrix(_base(rounds=1), matrix, run_dir,
                                  resume=True, progress=False)

  assert rows[0]['completed'] == 1
  assert len(_records(run_dir)) == 1


def test_resumed_matrix_rejects_changed_data(tmp_path):
  # The cells run after an edit of the data file trained on other data
  # than the finished ones, without a message.
  path = tmp_path / 'clients.csv'
  rows = ['site,x1,x2,y']
  for site in ('a', 'b', 'c', 'd'):
    for index in range(20):
      rows.append(f'{site},{index / 20},{(index % 3) / 3},{index % 2}')
  path.write_text('\n'.join(rows) + '\n')
  base = _base(rounds=1, dataset='csv', csv_path=str(path),
               client_column='site', label_column='y')
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('none',),
      malicious_fractions=(0.0,), seeds=(0, 1),
  )
  run_dir, _ = matrix_lib.run_matrix(base, matrix, tmp_path / 'm',
                                     progress=False)
  lines = (run_dir / 'cells.jsonl').read_text().splitlines()
  (run_dir / 'cells.jsonl').write_text(lines[0] + '\n')
  path.write_text(path.read_text().replace('a,0.0,', 'a,0.5,', 1))

  with pytest.raises(errors.DataCheckError, match='changed since the matrix'):
    matrix_lib.run_matrix(base, matrix, run_dir, resume=True, progress=False)
  (run_dir / 'provenance.json').unlink()
  with pytest.raises(errors.DataCheckError, match='provenance.json is missing'):
    matrix_lib.run_matrix(base, matrix, run_dir, resume=True, progress=False)


def test_resume_rejection_names_every_changed_setting():
  base = config_lib.to_dict(config_lib.ExperimentConfig())
  saved = json.loads(json.dumps({'base': base, 'matrix': {'seeds': [0, 1]}}))
  changed = json.loads(json.dumps(saved))
  keys = ('rounds', 'learning_rate', 'local_steps', 'batch_size',
          'aggregator', 'trim_fraction')
  for key in keys:
    section, name = config_lib.resolve_key(key)
    changed['base'][section][name] = 'changed'
  changed['matrix']['seeds'] = [0]
  with pytest.raises(errors.InputError) as error:
    matrix_lib.check_same_settings(saved, changed, 'runs/m')
  message = str(error.value)
  for key in keys:
    assert f'.{key} was ' in message
  assert 'server.rounds was 15, now "changed"' in message
  assert 'matrix.seeds was [0, 1], now [0]' in message


def test_locked_matrix_resume_rejected(tmp_path):
  # A second `matrix --resume` on a running matrix's folder ran the same
  # cells again and counted their seeds twice.
  matrix = matrix_lib.MatrixConfig(
      aggregators=('fedavg',), attacks=('none',),
      malicious_fractions=(0.0,), seeds=(0,),
  )
  run_dir, _ = matrix_lib.run_matrix(_base(), matrix, tmp_path / 'm',
                                     progress=False)
  cells = (run_dir / 'cells.jsonl').read_text()

  with outputs.lock_run_dir(run_dir):
    with pytest.raises(errors.InputError, match='Another process'):
      matrix_lib.run_matrix(_base(), matrix, run_dir, resume=True,
                            progress=False)

  assert (run_dir / 'cells.jsonl').read_text() == cells
