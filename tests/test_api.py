"""The Python API: configure, run, and the result's arrays and plot."""

import json
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

import fedjax_med as fm
from fedjax_med import api
from fedjax_med import config as config_lib
from fedjax_med import evaluation
from fedjax_med.errors import InputError

matplotlib.use('Agg')


@pytest.fixture(scope='module')
def result(tmp_path_factory):
  out = tmp_path_factory.mktemp('api') / 'run'
  return fm.run(out_dir=out, progress=False, rounds=6, eval_every=2,
                bootstrap_resamples=100)


def test_configure_applies_bare_and_dotted_keys():
  config = fm.configure(rounds=7, overrides={'privacy.clip_norm': 0.5})
  assert config.server.rounds == 7
  assert config.privacy.clip_norm == 0.5
  assert isinstance(config, fm.ExperimentConfig)


def test_configure_reads_a_toml_base_then_overrides():
  config = fm.configure('experiments/heart_disease_median.toml', rounds=3)
  assert config.server.aggregator == 'median'
  assert config.server.rounds == 3


@pytest.mark.parametrize('settings', [
    {'local_epochs': 1, 'local_steps': 100},
    {'overrides': {'privacy.target_quantile': 0.5}},
])
def test_configure_rejects_default_values_without_effect(settings):
  # The value equals the default, but it was given, and it would be ignored.
  with pytest.raises(InputError, match='has no effect'):
    fm.configure(**settings)


def test_configure_rejects_bad_values_with_the_key_named():
  with pytest.raises(InputError, match='server.aggregator'):
    fm.configure(aggregator='nope')
  with pytest.raises(InputError, match='Unknown config key `no_such_key`'):
    fm.configure(no_such_key=1)
  with pytest.raises(InputError, match='ExperimentConfig, a TOML path'):
    fm.configure(42)


@pytest.mark.parametrize('key, message', [
    # A typo listed all 130 keys, and a key of another section listed the
    # keys of the wrong one without pointing at the right one.
    ('roundz', 'did you mean `server.rounds`?'),
    ('data.aggregator', 'did you mean `server.aggregator`?'),
    ('zzzz', r'`zzzz`\. `fedjax-med keys` lists every key'),
])
def test_unknown_key_suggests_close_keys(key, message):
  with pytest.raises(InputError, match=message):
    config_lib.apply_overrides(config_lib.ExperimentConfig(), {key: 1})


def test_run_names_out_dir(tmp_path):
  with pytest.raises(InputError, match='as `out_dir`, not `out`'):
    fm.run(out=str(tmp_path / 'r'))


def test_result_matches_the_run_folder(result):
  lines = (result.run_dir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert result.rounds.tolist() == [1, 2, 3, 4, 5, 6]
  np.testing.assert_array_equal(
      result.metric('train_loss'), [r['train_loss'] for r in records])
  assert result.config.server.rounds == 6
  assert result.client_names == ['cleveland', 'hungarian', 'switzerland',
                                 'va']
  summary = json.loads((result.run_dir / 'summary.json').read_text())
  assert result.summary == summary


def test_metric_is_nan_in_rounds_without_evaluation(result):
  mean = result.metric('mean_accuracy')
  assert np.isnan(mean[[0, 2, 4]]).all()
  assert np.isfinite(mean[[1, 3, 5]]).all()
  assert mean[-1] == pytest.approx(result.summary['mean_accuracy'])


def test_client_accuracy_has_one_row_per_evaluation(result):
  rounds, accuracy = result.client_accuracy()
  assert rounds.tolist() == [2, 4, 6]
  assert accuracy.shape == (3, 4)
  final = [result.summary['test_accuracy'][name]
           for name in result.client_names]
  np.testing.assert_allclose(accuracy[-1], final)
  # The per-round mean is the mean of the clients' accuracies.
  np.testing.assert_allclose(accuracy.mean(axis=1),
                             result.metric('mean_accuracy')[[1, 3, 5]],
                             rtol=1e-6)


def test_tables_are_columns_of_equal_length(result):
  table = result.rounds_table()
  assert set(table) >= {'round', 'train_loss', 'mean_accuracy',
                        'num_contributing'}
  assert {len(column) for column in table.values()} == {6}
  clients = result.clients_table()
  assert {len(column) for column in clients.values()} == {12}
  assert clients['client'][:4].tolist() == result.client_names
  assert clients['round'].tolist() == [2] * 4 + [4] * 4 + [6] * 4
  counts = result.summary['num_test_examples']
  assert clients['num_test_examples'][:4].tolist() == [
      counts[name] for name in result.client_names]


def test_unknown_metric_lists_the_known_ones(result):
  with pytest.raises(InputError, match='Metrics: .*train_loss'):
    result.metric('accuracy')
  with pytest.raises(InputError, match='not a scalar metric'):
    result.metric('test_accuracy')


def test_plot_draws_each_client_and_the_mean(result):
  ax = result.plot_accuracy()
  labels = [line.get_label() for line in ax.get_lines()]
  assert labels == result.client_names + ['mean']
  np.testing.assert_allclose(ax.get_lines()[-1].get_ydata(),
                             result.client_accuracy()[1].mean(axis=1))


def test_predictions_reproduce_the_clinical_metrics(result):
  table = result.predictions()

  for name in result.client_names:
    rows = table['client'] == name
    clinical = result.summary['clinical'][name]
    assert rows.sum() == result.summary['num_test_examples'][name]
    assert table['label'][rows].sum() == clinical['num_positive']
    assert evaluation.auroc(table['label'][rows], table['score'][rows]) == (
        pytest.approx(clinical['auroc']['value'], abs=1e-6))
    assert evaluation.calibration_slope(
        table['label'][rows], table['score'][rows]) == pytest.approx(
            clinical['calibration_slope']['value'], rel=1e-4)


def test_calibration_plot_pools_patients(result):
  ax = result.plot_calibration(num_bins=5)
  table = result.predictions()

  lines = ax.get_lines()
  assert [line.get_label() for line in lines] == (
      ['calibrated'] + result.client_names + ['all patients'])
  mean_score, observed, _ = evaluation.calibration_curve(
      table['label'], table['score'], num_bins=5)
  np.testing.assert_allclose(lines[-1].get_xdata(), mean_score)
  np.testing.assert_allclose(lines[-1].get_ydata(), observed)


@pytest.mark.parametrize('text', ['site,label,score\na,1,0.5\n',
                                  'client,label,score\na,1,\n'])
def test_damaged_predictions_named(tmp_path, text):
  (tmp_path / 'predictions.csv').write_text(text)
  stub = api.Result(run_dir=tmp_path, config=fm.configure(), summary={},
                    records=())
  with pytest.raises(InputError, match='predictions.csv is damaged'):
    stub.predictions()


def test_predictions_missing_for_other_tasks(tmp_path):
  stub = api.Result(run_dir=tmp_path, config=fm.configure(), summary={},
                    records=())
  with pytest.raises(InputError, match='two classes only'):
    stub.predictions()


def test_load_run_reads_the_same_result(result):
  again = fm.load_run(result.run_dir)
  assert again.records == result.records
  assert again.summary == result.summary


def test_load_run_rejects_unfinished_folders(tmp_path):
  with pytest.raises(InputError, match='lacks config.json, summary.json'):
    fm.load_run(tmp_path)
  for name in ('config.json', 'metrics.jsonl'):
    (tmp_path / name).write_text('{}')
  (tmp_path / 'summary.json').write_text('{"status": "diverged"}')
  with pytest.raises(InputError, match="status 'diverged'"):
    fm.load_run(tmp_path)


def test_large_population_points_to_the_summary_metrics(tmp_path):
  stub = api.Result(run_dir=tmp_path, config=fm.configure(), summary={},
                    records=({'round': 1, 'mean_accuracy': 0.5},))
  with pytest.raises(InputError, match='up to 100 clients'):
    stub.client_accuracy()


def test_config_import_leaves_jax_unloaded():
  code = ('import sys, fedjax_med, fedjax_med.config; '
          "assert 'jax' not in sys.modules, 'jax loaded'; "
          "fedjax_med.configure; assert 'jax' not in sys.modules")
  subprocess.run([sys.executable, '-c', code], check=True)


def test_configure_rejects_a_key_set_twice():
  with pytest.raises(InputError, match='server.rounds is set both'):
    fm.configure(overrides={'server.rounds': 7}, rounds=9)
  with pytest.raises(InputError, match='overrides must be a dict'):
    fm.configure(overrides='server.rounds=7')


def test_load_run_names_missing_and_damaged_files(result, tmp_path):
  with pytest.raises(InputError, match='Run folder not found'):
    fm.load_run(tmp_path / 'nothere')
  (tmp_path / 'table.csv').write_text('a\n')
  with pytest.raises(InputError, match='table.csv is a file, not a run '
                     'folder'):
    fm.load_run(tmp_path / 'table.csv')
  with pytest.raises(InputError, match='must be a path; got None'):
    fm.load_run(None)
  with pytest.raises(InputError, match='must be a path; got 5'):
    fm.resume(5)
  copy = tmp_path / 'copy'
  copy.mkdir()
  for name in ('config.json', 'summary.json', 'metrics.jsonl'):
    (copy / name).write_text((result.run_dir / name).read_text())
  (copy / 'metrics.jsonl').write_text('{"round": 1, "tr')
  with pytest.raises(InputError, match='metrics.jsonl has a line that is not'):
    fm.load_run(copy)
  (copy / 'summary.json').write_text('{"status": "compl')
  with pytest.raises(InputError, match='summary.json is not valid JSON'):
    fm.load_run(copy)
