"""The subgroup-fairness script at reduced size (one seed, two rounds)."""

import importlib.util
import json
import os
import pathlib
import signal

import numpy as np
import pytest

from fedjax_med.data import heart_disease

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_heart_fairness', ROOT / 'experiments/heart_fairness.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
  script = _load_script()
  out = tmp_path_factory.mktemp('heart_fairness')
  paths = {
      'markdown': out / 'page.md',
      'figure': out / 'figure.png',
      'json': out / 'records.json',
  }
  status = script.main([
      '--seeds', '0', '--rounds', '2',
      '--markdown', str(paths['markdown']),
      '--figure', str(paths['figure']),
      '--json', str(paths['json']),
  ])
  records = json.loads(paths['json'].read_text())
  return status, paths, records


def test_small_run_writes_outputs(small_run):
  status, paths, _ = small_run

  page = paths['markdown'].read_text()

  assert status == 0
  assert paths['figure'].stat().st_size > 0
  assert '--seeds 0 --rounds 2' in page
  assert '### Per-hospital test accuracy' in page
  assert '| FedAvg |' in page
  assert '| local only |' in page
  assert '### Leave one hospital out' in page


def test_page_counts_test_rows(small_run):
  _, paths, _ = small_run

  page = paths['markdown'].read_text()

  # Switzerland's 16 test patients are all men, 15 with heart disease.
  assert '| switzerland | 0 (0) | 16 (15) |' in page
  assert '| pooled | 56 (15) | 198 (116) |' in page


def test_records_cover_algorithms(small_run):
  _, _, records = small_run

  algorithms = [row['algorithm'] for row in records
                if row['kind'] == 'algorithm']
  held_out = [row['held_out'] for row in records
              if row['kind'] == 'leave_one_out']

  assert algorithms == ['fedavg', 'mean', 'fedprox', 'local']
  assert held_out == list(heart_disease.CLIENT_NAMES)
  for row in records:
    if row['kind'] == 'leave_one_out':
      assert 0.0 <= row['held_out_accuracy'] <= 1.0
      assert row['held_out'] not in row['training_hospitals_accuracy']


def test_empty_group_reported_as_none(small_run):
  _, _, records = small_run

  switzerland = records[0]['subgroups']['sex']['clients']['switzerland']

  assert switzerland['groups']['female']['accuracy'] is None
  assert switzerland['gaps']['accuracy_gap']['value'] is None


def test_attributes_match_loader():
  script = _load_script()
  dataset = heart_disease.load_heart_disease()

  attributes = script.load_test_attributes(dataset)
  mask = np.asarray(dataset.test.example_mask())

  ages = attributes['age'][mask]
  assert ages.min() >= 28
  assert ages.max() <= 77
  assert set(np.unique(attributes['sex'][mask])) == {0, 1}
  assert attributes['sex'][2, :16].sum() == 16


def test_results_page_keeps_other_text(tmp_path):
  script = _load_script()
  page = tmp_path / 'page.md'
  page.write_text(
      f'# Title\n\nBefore.\n\n{script.RESULTS_START}\nold\n'
      f'{script.RESULTS_END}\n\nAfter.\n'
  )

  script.write_results_page(page, 'new table\n')
  text = page.read_text()

  assert text.startswith('# Title\n\nBefore.\n\n')
  assert text.endswith('\n\nAfter.\n')
  assert 'new table' in text
  assert 'old' not in text


def test_results_page_created_when_missing(tmp_path):
  script = _load_script()
  page = tmp_path / 'sub' / 'page.md'

  script.write_results_page(page, 'table\n')
  text = page.read_text()

  assert text.startswith('# ')
  assert script.RESULTS_START in text
  assert script.RESULTS_END in text


def test_results_page_without_markers_kept(tmp_path):
  script = _load_script()
  page = tmp_path / 'page.md'
  page.write_text('# Notes\nhand-written text\n')

  with pytest.raises(ValueError, match='lacks the result markers'):
    script.write_results_page(page, 'table\n')
  assert page.read_text() == '# Notes\nhand-written text\n'


def test_rejects_zero_rounds(capsys):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main(['--rounds', '0'])

  assert error.value.code == 2
  assert '--rounds must be at least 1' in capsys.readouterr().err


@pytest.mark.parametrize('flag, value, message', [
    ('--figure', 'plot.txt', 'must be a .png'),
    ('--json', '.', 'is a folder'),
    ('--markdown', 'missing_folder/page.md', 'does not exist'),
])
def test_bad_output_path_rejected_before_training(tmp_path, flag, value,
                                                  message, capsys):
  module = _load_script()
  with pytest.raises(SystemExit) as exit_info:
    module._parse_args([flag, str(tmp_path / value)])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_page_without_markers_rejected_first(tmp_path, capsys):
  module = _load_script()
  page = tmp_path / 'page.md'
  page.write_text('# Notes\n')

  with pytest.raises(SystemExit) as exit_info:
    module._parse_args(['--markdown', str(page)])

  assert exit_info.value.code == 2
  assert 'lacks the result markers' in capsys.readouterr().err


def test_ctrl_c_keeps_page(tmp_path, monkeypatch, capsys):
  # The script's own round loop never checked a deferred Ctrl-C, so the
  # first one was ignored until the end or raised inside JAX.
  script = _load_script()
  page = tmp_path / 'page.md'
  text = f'# Page\n{script.RESULTS_START}\nold\n{script.RESULTS_END}\n'
  page.write_text(text)
  calls = []
  build_round = script.round_lib.build_round

  def counting_build_round(*args, **kwargs):
    round_fn = build_round(*args, **kwargs)

    def counted(*round_args, **round_kwargs):
      calls.append(1)
      if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGINT)
      return round_fn(*round_args, **round_kwargs)

    return counted

  monkeypatch.setattr(script.round_lib, 'build_round', counting_build_round)
  previous = signal.getsignal(signal.SIGINT)

  with pytest.raises(SystemExit) as exit_info:
    script.main(['--seeds', '0', '--rounds', '3', '--markdown', str(page),
                 '--figure', str(tmp_path / 'figure.png'),
                 '--json', str(tmp_path / 'records.json')])

  assert exit_info.value.code == 130
  assert len(calls) == 2
  assert page.read_text() == text
  assert not (tmp_path / 'records.json').exists()
  assert 'heart_fairness.py: interrupted;' in capsys.readouterr().err
  assert signal.getsignal(signal.SIGINT) == previous
