"""Survival studies through `fedjax-med run`: Fed-TCGA-BRCA and a Cox model."""

import contextlib
import csv
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_med as fm
from fedjax_med import checkpoint
from fedjax_med import cli
from fedjax_med import config as config_lib
from fedjax_med import study
from fedjax_med import study_survival
from fedjax_med.client import survival_training
from fedjax_med.data import tcga_brca
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.evaluation import concordance
from fedjax_med.report import tensorboard
from fedjax_med.simulation import evaluate_survival
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

CONFIG = 'experiments/tcga_brca_fedavg.toml'
# FLamby's FedAvg settings of the example config, cut to 2 rounds of 10
# local steps.
ROUNDS = 2
LOCAL_STEPS = 10
LEARNING_RATE = 0.1
BATCH_SIZE = 8
SMALL = {'rounds': ROUNDS, 'local_steps': LOCAL_STEPS}


def _small_config(**settings):
  return fm.configure(CONFIG, **{**SMALL, **settings})


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


def _keys(document):
  """Return every key of a JSON document, nested ones included."""
  if isinstance(document, dict):
    return set(document) | set().union(
        *(_keys(value) for value in document.values()))
  if isinstance(document, list):
    return set().union(*(_keys(value) for value in document))
  return set()


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
  """Run the example config, cut short, through the command line."""
  run_dir = tmp_path_factory.mktemp('cli') / 'run'
  args = ['run', CONFIG, '--no-progress', '--out', str(run_dir)]
  for key, value in SMALL.items():
    args += ['--set', f'{key}={value}']
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    status = cli.main(args)
  return run_dir, status, output.getvalue()


@pytest.fixture(scope='module')
def hand_built():
  """Train the config's FedAvg with `round_lib.build_round` directly.

  The study folds its experiment seed into the same keys: tag 0 for the
  initial params, tag 1 for the rounds, then the round index.
  """
  dataset = tcga_brca.load_tcga_brca()
  kernel_init = jax.nn.initializers.variance_scaling(
      1.0 / 3.0, 'fan_in', 'uniform')
  model = survival_training.cox_model(kernel_init)
  local_update = survival_training.build_survival_local_update(
      model, optax.sgd(LEARNING_RATE), num_steps=LOCAL_STEPS,
      batch_size=BATCH_SIZE, loss_normalization='rows')
  server_optimizer = optax.sgd(1.0)
  sampler = sampling.uniform_sampler(dataset.num_clients, dataset.num_clients)
  round_fn = round_lib.build_round(
      dataset.train, local_update, sampler, server_optimizer,
      aggregator='fedavg')
  key = jax.random.key(0)
  params = model.init(jax.random.fold_in(key, 0),
                      jnp.zeros((1, tcga_brca.NUM_FEATURES)))
  state = round_lib.init_server_state(params, server_optimizer)
  losses = []
  for round_index in range(ROUNDS):
    state, metrics = round_fn(
        state, jax.random.fold_in(jax.random.fold_in(key, 1), round_index))
    losses.append(float(metrics['train_loss']))
  evaluate = evaluate_survival.build_evaluate_survival(model, dataset.test)
  return dataset, evaluate(state.params), losses


def test_cli_prints_c_index(cli_run):
  _, status, output = cli_run

  assert status == 0
  assert output.count('test C-index') == 6
  assert 'Northeast: test C-index' in output
  assert 'pooled:' in output
  assert 'accuracy' not in output


def test_cli_writes_survival_outputs(cli_run):
  run_dir, _, _ = cli_run

  assert (run_dir / 'c_index.png').is_file()
  assert (run_dir / 'risk_scores.csv').is_file()
  assert not (run_dir / 'accuracy.png').exists()
  assert not (run_dir / 'predictions.csv').exists()
  summary = _summary(run_dir)
  assert not [key for key in _keys(summary) if 'accuracy' in key]
  assert not [key for key in _keys(_records(run_dir)) if 'accuracy' in key]
  assert summary['fairness']['std_c_index'] >= 0
  assert summary['worst_client'] in tcga_brca.CLIENT_NAMES


def test_summary_matches_hand_built_rounds(cli_run, hand_built):
  run_dir, _, _ = cli_run
  dataset, evaluation, losses = hand_built

  summary = _summary(run_dir)
  records = _records(run_dir)

  expected = dict(zip(dataset.client_names, evaluation.c_index.tolist()))
  assert summary['test_c_index'] == pytest.approx(expected, abs=1e-9)
  assert summary['mean_c_index'] == pytest.approx(evaluation.mean_c_index)
  assert summary['pooled_c_index'] == pytest.approx(
      evaluation.pooled_c_index)
  assert summary['worst_c_index'] == pytest.approx(
      np.min(evaluation.c_index))
  assert [record['train_loss'] for record in records] == pytest.approx(
      losses, rel=1e-5)
  assert records[-1]['test_c_index'] == summary['test_c_index']


def test_risk_scores_give_summary_c_index(cli_run):
  # Recomputes each client's C-index from the written risks alone.
  run_dir, _, _ = cli_run
  with (run_dir / 'risk_scores.csv').open(newline='') as handle:
    rows = list(csv.DictReader(handle))

  summary = _summary(run_dir)

  for name in tcga_brca.CLIENT_NAMES:
    client = [row for row in rows if row['client'] == name]
    result = concordance.concordance_index(
        np.array([float(row['log_risk']) for row in client]),
        np.array([float(row['time']) for row in client]),
        np.array([int(row['event']) for row in client]))
    assert result.c_index == pytest.approx(summary['test_c_index'][name])
    assert len(client) == summary['num_test_examples'][name]


def test_fedavg_round_weights_by_rows():
  # With batches larger than any client, each local step's batch contains
  # every row of the client, so a client's update does not depend on its
  # key.
  config = fm.configure(CONFIG, rounds=1, local_steps=3, batch_size=256)
  run = study._build_run(config)  # pylint: disable=protected-access
  state = run['history']['state']
  train = run['prepared'].train
  local_update = survival_training.build_survival_local_update(
      run['prepared'].model, optax.sgd(LEARNING_RATE), num_steps=3,
      batch_size=256, loss_normalization='rows')
  keys = jax.random.split(jax.random.key(7), train.num_clients)
  results = jax.vmap(local_update, in_axes=(None, 0, 0, 0))(
      state.params, train.examples, train.num_examples, keys)
  weights = np.asarray(train.num_examples, np.float64)

  new_state, _ = run['round_fn'](
      state, jax.random.fold_in(run['rounds_key'], 0))

  delta = np.asarray(results.delta['params']['Dense_0']['kernel'])
  start = np.asarray(state.params['params']['Dense_0']['kernel'])
  trained = np.asarray(new_state.params['params']['Dense_0']['kernel'])
  weighted = start + np.tensordot(weights / weights.sum(), delta, axes=1)
  uniform = start + delta.mean(axis=0)
  np.testing.assert_allclose(trained, weighted, rtol=1e-4, atol=1e-6)
  assert not np.allclose(trained, uniform, rtol=1e-4, atol=1e-6)


def test_resume_matches_uninterrupted(tmp_path):
  config = _small_config(rounds=4, name='tcga_resume')
  uninterrupted = tmp_path / 'uninterrupted'
  study.run_study(config, uninterrupted, progress=False)
  stopped = tmp_path / 'stopped'

  def interrupt_after_round_2(record):
    if record['round'] == 2:
      raise KeyboardInterrupt

  with pytest.raises(StudyInterrupted):
    study.run_study(config, stopped, progress=False,
                    on_round=interrupt_after_round_2,
                    checkpoint_interval_s=3600)
  assert checkpoint.Checkpointer(stopped, 0).latest_step() == 2
  study.resume_study(stopped, progress=False)

  assert _records(stopped) == _records(uninterrupted)
  assert _summary(stopped) == _summary(uninterrupted)
  assert (stopped / 'c_index.png').is_file()


def test_api_result_exposes_c_index(tmp_path):
  result = fm.run(CONFIG, tmp_path / 'run', progress=False,
                  **{**SMALL, 'eval_every': 1})

  rounds, c_index = result.client_c_index()

  assert rounds.tolist() == [1, 2]
  assert c_index.shape == (2, 6)
  assert result.client_names == list(tcga_brca.CLIENT_NAMES)
  assert result.metric('mean_c_index')[-1] == pytest.approx(
      result.summary['mean_c_index'])
  assert result.clients_table()['c_index'].shape == (12,)
  assert result.plot_c_index() is not None
  with pytest.raises(InputError, match='client_c_index'):
    result.client_accuracy()
  # The message asked to run the study again, as for an older version.
  for method in (result.predictions, result.plot_calibration):
    with pytest.raises(InputError, match='is a survival run.*risk_scores'):
      method()


def test_privacy_assumption_names_c_index(tmp_path):
  # The assumption that metrics go unnoised named per-client accuracy.
  result = fm.run(CONFIG, tmp_path / 'run', progress=False,
                  **{**SMALL, 'rounds': 1, 'noise': 'local', 'clip_norm': 1.0,
                     'noise_multiplier': 1.0})

  assumptions = ' '.join(result.summary['privacy']['assumptions'])
  assert 'per-client C-index' in assumptions
  assert 'accuracy' not in assumptions


def test_tensorboard_logs_c_index(tmp_path):
  pytest.importorskip('tensorboardX')
  run_dir, summary = study.run_study(
      _small_config(rounds=1), tmp_path / 'run', progress=False,
      tensorboard=True)

  scalars = tensorboard.read_scalars(run_dir / 'tensorboard')

  assert scalars['mean_c_index'][1] == pytest.approx(summary['mean_c_index'])
  assert scalars['test_c_index/Canada'][1] == pytest.approx(
      summary['test_c_index']['Canada'])
  assert not [tag for tag in scalars if 'accuracy' in tag]


def test_nan_c_index_keeps_reason():
  reason = 'no comparable pair: every row is censored'
  evaluation = evaluate_survival.SurvivalEvaluation(
      c_index=np.array([0.75, math.nan]), reasons=(None, reason),
      num_comparable=np.array([4, 0]), mean_c_index=0.75,
      pooled_c_index=0.7, pooled_reason=None, log_risk=np.zeros((2, 3)),
      num_nonfinite=np.zeros(2, np.int64))

  summary = study_survival.summary_fields(evaluation, ('a', 'b'))

  assert summary['test_c_index'] == {'a': 0.75, 'b': None}
  assert summary['c_index_reasons'] == {'b': reason}
  assert summary['mean_c_index'] == 0.75
  assert summary['worst_client'] == 'a'
  assert summary['num_comparable_pairs'] == {'a': 4, 'b': 0}


@pytest.mark.parametrize('settings, expected', [
    ({'model': 'logistic_regression'}, 'Set `model.model=cox`'),
    ({'attack': 'label_flip', 'malicious_fraction': 0.2},
     'model-poisoning attack'),
    ({'attack': 'backdoor', 'malicious_fraction': 0.2},
     '`attack.attack=backdoor` poisons class labels'),
    ({'dp_sgd': True}, 'no per-example gradient'),
    ({'ditto_lambda': 0.1}, 'Personalization'),
    ({'finetune_steps': 5}, 'Personalization'),
    ({'fedbn': True}, 'Cox model has none'),
    ({'compute_dtype': 'bfloat16'}, 'Set `client.compute_dtype=float32`'),
    ({'partition': 'quantity'}, 'Set `data.partition=none`'),
    ({'threshold': 0.5}, 'scored by the C-index'),
    ({'bootstrap_resamples': 200}, 'scored by the C-index'),
    ({'confidence': 0.9}, 'scored by the C-index'),
    ({'test_fraction': 0.2}, '`data.test_fraction=0.2` has no effect'),
    ({'scanner_profiles': ('bright_vendor',)},
     '`data.scanner_profiles'),
    ({'cox_loss_normalization': 'mean'},
     'Invalid `model.cox_loss_normalization`'),
])
def test_survival_rejects_setting(settings, expected):
  with pytest.raises(InputError) as error:
    fm.configure(CONFIG, **settings)

  assert expected in str(error.value)


def test_cox_rejects_classification_data():
  with pytest.raises(InputError) as error:
    fm.configure(model='cox')

  assert '`model.model=cox` is a survival model' in str(error.value)
  assert 'data.dataset=tcga_brca' in str(error.value)


def test_cox_normalization_needs_cox():
  with pytest.raises(InputError) as error:
    fm.configure(cox_loss_normalization='rows')

  assert 'applies only to model cox' in str(error.value)


def test_sweep_rejects_survival(tmp_path, capsys):
  path = tmp_path / 'sweep.toml'
  path.write_text(
      '[data]\ndataset = "tcga_brca"\n[model]\nmodel = "cox"\n'
      '[sweep]\nlearning_rate = [0.01, 0.1]\n')

  status = cli.main(['sweep', str(path), '--out', str(tmp_path / 'out'),
                     '--no-progress'])

  assert status == 2
  assert 'does not run the survival dataset' in capsys.readouterr().err


def test_matrix_rejects_survival(tmp_path, capsys):
  path = tmp_path / 'matrix.toml'
  path.write_text(
      '[data]\ndataset = "tcga_brca"\n[model]\nmodel = "cox"\n'
      '[matrix]\naggregators = ["fedavg", "median"]\n'
      'attacks = ["sign_flip"]\nmalicious_fractions = [0.2]\n')

  status = cli.main(['matrix', str(path), '--out', str(tmp_path / 'out'),
                     '--no-progress'])

  assert status == 2
  assert 'does not run the survival dataset' in capsys.readouterr().err


def test_default_normalization_is_events():
  config = config_lib.ExperimentConfig()

  assert config.model.cox_loss_normalization == 'events'
  assert config_lib.COX_LOSS_NORMALIZATIONS == (
      survival_training.LOSS_NORMALIZATIONS)
