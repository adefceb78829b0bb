"""Image datasets, CNN models, scanner profiles and FedBN through the study."""

import json

import jax
import numpy as np
import pytest

from fedjax_med import config as config_lib
from fedjax_med import study
from fedjax_med.data import scanner
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.simulation import local_leaves

# Ten digit sites, two scanner profiles, a small batch-normalized ResNet.
_FEDBN = {
    'dataset': 'digits', 'num_clients': 10,
    'scanner_profiles': 'reference,low_contrast_vendor',
    'model': 'resnet', 'widths': '4,8', 'fedbn': True,
    'local_steps': 3, 'batch_size': 8, 'learning_rate': 0.05,
    'rounds': 6, 'eval_every': 2, 'bootstrap_resamples': 100,
}


def _config(**changes):
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {**_FEDBN, **changes})
  config_lib.validate(config)
  return config


def _records(run_dir):
  records = [json.loads(line) for line in
             (run_dir / 'metrics.jsonl').read_text().splitlines()]
  for record in records:
    record.pop('elapsed_s')
  return records


def test_scanner_profiles_name_each_client():
  dataset = study.load_dataset(_config().data, seed=0)
  assert dataset.num_clients == 10
  assert dataset.train.examples['x'].shape[2:] == (8, 8, 1)
  profiles = [name.split('_', 2)[2] for name in dataset.client_names]
  assert set(profiles) <= {'reference', 'low_contrast_vendor'}
  # The low-contrast profile compresses intensities (gain 0.7), so its
  # sites' images spread less than the reference sites'.
  spread = {}
  for index, profile in enumerate(profiles):
    count = int(dataset.train.num_examples[index])
    pixels = np.asarray(dataset.train.examples['x'][index, :count])
    spread.setdefault(profile, []).append(pixels.std())
  assert np.mean(spread['low_contrast_vendor']) < np.mean(
      spread['reference'])


def test_scanner_profiles_same_seed_same_data():
  first = study.load_dataset(_config().data, seed=3)
  again = study.load_dataset(_config().data, seed=3)
  other = study.load_dataset(_config().data, seed=4)
  np.testing.assert_array_equal(first.train.examples['x'],
                                again.train.examples['x'])
  assert first.client_names == again.client_names
  assert not np.array_equal(np.asarray(first.train.examples['x']),
                            np.asarray(other.train.examples['x']))


def test_fedbn_study_evaluates_each_client_with_its_norms(tmp_path):
  config = _config(rounds=2)
  run = study._build_run(config)
  state = run['history']['state']
  for round_index in range(2):
    state, _ = run['round_fn'](
        state, jax.random.fold_in(run['rounds_key'], round_index))
  assert state.local is not None
  evaluation = run['evaluate'](state)
  # By hand: each site's model is the global params with its own norm
  # layers, which differ between the sites after training.
  model = run['prepared'].model
  test = run['prepared'].dataset.test
  for client in (0, 7):
    own = jax.tree.map(lambda leaf, c=client: leaf[c], state.local)
    params = local_leaves.merge(state.params, own)
    logits = model.apply(params, test.examples['x'][client])
    count = int(test.num_examples[client])
    predicted = np.argmax(np.asarray(logits), axis=-1)[:count]
    labels = np.asarray(test.examples['y'][client, :count])
    assert float(evaluation.accuracy[client]) == pytest.approx(
        np.mean(predicted == labels))
  stem_means = np.asarray(
      state.local['batch_stats']['stem_norm']['norm']['mean'])
  assert not np.allclose(stem_means[0], stem_means[7])
  del tmp_path


def test_fedbn_interrupt_and_resume_match(tmp_path):
  uninterrupted = tmp_path / 'uninterrupted'
  study.run_study(_config(), uninterrupted, progress=False)

  def interrupt_after_round_3(record):
    if record['round'] == 3:
      raise KeyboardInterrupt

  resumed = tmp_path / 'resumed'
  with pytest.raises(StudyInterrupted):
    study.run_study(_config(), resumed, progress=False,
                    on_round=interrupt_after_round_3,
                    checkpoint_interval_s=3600)
  study.resume_study(resumed, progress=False)
  # The clients' local norm layers come back from the checkpoint: without
  # them, rounds 4 to 6 would start every site from the server's norms.
  assert _records(resumed) == _records(uninterrupted)


@pytest.mark.parametrize('model', ['cnn', 'pfl_cnn'])
def test_image_models_run_on_synthetic_images(model, tmp_path):
  settings = {
      'dataset': 'synthetic_images', 'num_clients': 4, 'min_examples': 6,
      'max_examples': 10, 'image_shape': '12,12,3', 'model': model,
      'local_steps': 2, 'batch_size': 4, 'rounds': 2,
      'bootstrap_resamples': 100,
  }
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), settings)
  config_lib.validate(config)
  _, summary = study.run_study(config, tmp_path / model, progress=False)
  assert summary['status'] == 'completed'
  assert len(summary['test_accuracy']) == 4
  for value in summary['test_accuracy'].values():
    assert 0.0 <= value <= 1.0


@pytest.mark.parametrize('settings, match', [
    ({'fedbn': True, 'model': 'cnn'}, 'has none'),
    ({'fedbn': True, 'norm': 'none'}, 'model.norm=none'),
    ({'fedbn': True, 'ditto_lambda': 0.1}, 'ditto_lambda'),
    ({'fedbn': False, 'dp_sgd': True}, 'model.norm=group'),
    ({'widths': ''}, 'widths'),
    ({'norm': 'layer'}, 'model.norm'),
    ({'image_shape': '8,8'}, 'image_shape'),
    # Accepted, then failed in the scanner module naming `names` and
    # `weights`, which the config does not have.
    ({'scanner_profiles': 'reference,reference,bright_vendor'},
     '`data.scanner_profiles` lists reference more than once'),
])
def test_invalid_image_settings_rejected(settings, match):
  with pytest.raises(InputError, match=match):
    _config(**settings)


def test_scanner_profiles_need_an_image_dataset():
  with pytest.raises(InputError, match='scanner_profiles'):
    config_lib.validate(config_lib.apply_overrides(
        config_lib.ExperimentConfig(), {'scanner_profiles': 'reference'}))


def test_unknown_scanner_profile_lists_known_ones():
  # The check runs in `validate`, so `api.configure` rejects the name too,
  # not only a run that loads the data.
  with pytest.raises(InputError, match='vendor_x') as error:
    _config(scanner_profiles='reference,vendor_x')
  for name in scanner.PROFILES:
    assert name in str(error.value)


def test_image_model_on_tabular_data_rejected():
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {'model': 'cnn'})
  config_lib.validate(config)
  with pytest.raises(InputError, match='height, width'):
    study.prepare(config)


def test_tabular_model_on_images_rejected():
  settings = {key: value for key, value in _FEDBN.items()
              if key not in ('widths', 'fedbn')}
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {**settings, 'model': 'mlp'})
  config_lib.validate(config)
  with pytest.raises(InputError, match='rows of features'):
    study.prepare(config)


def test_image_folder_needs_a_path():
  with pytest.raises(InputError, match='image_path'):
    config_lib.validate(config_lib.apply_overrides(
        config_lib.ExperimentConfig(),
        {'dataset': 'image_folder', 'model': 'cnn'}))


@pytest.mark.parametrize('settings, match', [
    ({'attack': 'backdoor', 'malicious_fraction': 0.2,
      'trigger_features': '0'}, 'does not support image data'),
    ({'fedbn': False, 'noise': 'central', 'clip_norm': 1.0,
      'noise_multiplier': 1.0, 'aggregator': 'mean'}, 'clip budget'),
])
def test_unsupported_image_combinations_rejected(settings, match):
  with pytest.raises(InputError, match=match):
    _config(**settings)


def test_group_norm_with_twelve_channels(key):
  config = _config(fedbn=False, norm='group', widths='12')
  model = study.build_model(config.model, 10, (8, 8, 1))
  params = model.init(key, np.zeros((1, 8, 8, 1), np.float32))
  assert model.apply(params, np.ones((2, 8, 8, 1), np.float32)).shape == (
      2, 10)


def test_pfl_cnn_needs_six_pixels():
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {'model': 'pfl_cnn'})
  with pytest.raises(InputError, match='at least 6x6'):
    study.build_model(config.model, 10, (4, 4, 3))


def test_negative_stored_variance_stays_finite(key):
  config = _config()
  model = study.build_model(config.model, 10, (8, 8, 1))
  params = model.init(key, np.zeros((1, 8, 8, 1), np.float32))
  # As after DP noise or a poisoned average pushed a variance below 0.
  params['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf - 2.0 if path[-1].key == 'var' else leaf,
      params['batch_stats'])
  logits = model.apply(params, np.ones((3, 8, 8, 1), np.float32))
  assert np.all(np.isfinite(np.asarray(logits)))


def test_one_class_npz_rejected(tmp_path):
  for site in ('a', 'b'):
    np.savez(tmp_path / f'{site}.npz',
             images=np.random.default_rng(0).random((6, 8, 8)),
             labels=np.zeros(6, np.int64))
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'dataset': 'image_npz', 'image_path': str(tmp_path), 'model': 'cnn'})
  config_lib.validate(config)
  with pytest.raises(InputError, match='at least two'):
    study.load_dataset(config.data, seed=0)


def test_resume_rejects_added_data_file(tmp_path):
  config = _config(rounds=1)
  dataset = study.load_dataset(config.data, seed=0)
  recorded = {str(path.resolve()): 'x' for path in dataset.source_files}
  recorded[str(tmp_path / 'gone.png')] = 'y'
  (tmp_path / 'provenance.json').write_text(
      json.dumps({'data_files': recorded}))
  with pytest.raises(InputError, match='1 missing'):
    study._check_same_data(tmp_path, dataset)


def test_fedbn_summary_lists_untrained_clients(tmp_path):
  config = _config(rounds=1, sampling='uniform', cohort_size=2,
                   eval_every=1)
  _, summary = study.run_study(config, tmp_path / 'run', progress=False)
  never = summary['fedbn']['clients_never_trained']
  assert summary['fedbn']['num_clients_never_trained'] == 8
  assert len(never) == 8
  assert set(never) < set(summary['test_accuracy'])
