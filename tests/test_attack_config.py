"""Config checks of the backdoor, centered clipping and synthetic_iid."""

import pytest

from fedjax_med import config as config_lib
from fedjax_med import errors


def _validate(**overrides):
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)
  config_lib.validate(config)
  return config


def test_backdoor_settings_need_backdoor():
  with pytest.raises(errors.InputError, match='trigger_value=2.0` has no'):
    _validate(attack='sign_flip', malicious_fraction=0.25, trigger_value=2.0)


def test_backdoor_settings_accepted():
  config = _validate(attack='backdoor', malicious_fraction=0.25,
                     trigger_features='1,5', trigger_value=3.0,
                     target_label=1, poison_fraction=1.0)
  assert config.attack.trigger_features == (1, 5)


@pytest.mark.parametrize('overrides, message', [
    ({'poison_fraction': 0.0}, 'poison_fraction'),
    ({'poison_fraction': 1.5}, 'poison_fraction'),
    ({'trigger_features': '[]'}, 'is empty'),
    ({'trigger_features': '-1'}, 'trigger_features'),
    ({'target_label': -1}, 'target_label'),
    ({'trigger_value': 'nan'}, 'trigger_value'),
])
def test_bad_backdoor_settings(overrides, message):
  with pytest.raises(errors.InputError, match=message):
    _validate(attack='backdoor', malicious_fraction=0.25, **overrides)


def test_centered_clipping_needs_radius():
  with pytest.raises(errors.InputError, match='clip_radius'):
    _validate(aggregator='centered_clipping')


def test_clip_radius_only_for_centered_clipping():
  with pytest.raises(errors.InputError, match='clip_radius=1.0` has no'):
    _validate(aggregator='median', clip_radius=1.0)


def test_synthetic_iid_has_no_alpha():
  with pytest.raises(errors.InputError, match='alpha=0.5` has no effect'):
    _validate(dataset='synthetic_iid', alpha=0.5)


def test_toml_list_for_number_rejected(tmp_path):
  path = tmp_path / 'bad.toml'
  path.write_text('[server]\nclip_radius = [1]\n')
  with pytest.raises(errors.InputError, match='clip_radius'):
    config_lib.load_toml(path)


def test_nan_strength_message():
  with pytest.raises(errors.InputError, match='must be a finite number.$'):
    _validate(attack='sign_flip', malicious_fraction=0.25,
              attack_strength='nan')


@pytest.mark.parametrize('key, value', [
    # 1e39 made every attacker's update infinite, so the aggregators left
    # them out and no attack ran.
    ('attack_strength', '1e39'),
    ('attack_strength', '-1e39'),
    ('clip_norm', '1e39'),
    ('noise_multiplier', '3.5e38'),
    ('proximal_mu', '1e300'),
])
def test_values_beyond_float32_rejected(key, value):
  overrides = {'attack': 'scaling', 'malicious_fraction': 0.25}
  if key in ('clip_norm', 'noise_multiplier'):
    overrides = {'noise': 'central', 'clip_norm': 1.0,
                 'noise_multiplier': 1.0}
  with pytest.raises(errors.InputError,
                     match=f'{key}`: .*above 3.403e\\+38, the largest float32'):
    _validate(**{**overrides, key: value})


@pytest.mark.parametrize('key', ['learning_rate', 'clip_norm',
                                 'attack_strength'])
def test_huge_integer_for_float_rejected(tmp_path, key):
  # float(10**400) raised OverflowError out of the config loader.
  section, name = config_lib.resolve_key(key)
  path = tmp_path / 'big.toml'
  path.write_text(f'[{section}]\n{name} = {10**400}\n')

  with pytest.raises(errors.InputError, match=(
      f'`{section}.{name}` is 1000000000\\.\\.\\. \\(401 digits\\), '
      'beyond the float range')):
    config_lib.load_toml(path)


@pytest.mark.parametrize('overrides, keys', [
    ({'privacy.noise': 'central', 'aggregator': 'mean', 'clip_norm': 1e20,
      'noise_multiplier': 1e20, 'min_reporting_clients': 2},
     '`privacy.noise_multiplier` \\* `privacy.clip_norm`'),
    ({'dp_sgd': True, 'example_clip_norm': 1e20,
      'example_noise_multiplier': 1e20},
     '`client.example_noise_multiplier` \\* `client.example_clip_norm`'),
], ids=['client_level', 'dp_sgd'])
def test_noise_std_beyond_float32_rejected(overrides, keys):
  # Each factor fits float32 but the std 1e40 does not: the run stopped as
  # diverged and blamed the learning rate.
  with pytest.raises(errors.InputError,
                     match=f'The noise std {keys} = 1e\\+20 \\* 1e\\+20'):
    _validate(**overrides)


def test_float32_maximum_accepted():
  _validate(attack='scaling', malicious_fraction=0.25,
            attack_strength='3.4e38')


@pytest.mark.parametrize('key', ['rounds', 'seed', 'local_steps'])
def test_huge_integer_rejected(key):
  # An int above 1.8e308 raised OverflowError in math.isfinite.
  with pytest.raises(errors.InputError,
                     match=f'`: 1000000000... \\(401 digits\\)'):
    _validate(**{key: 10**400})


@pytest.mark.parametrize('text, shown', [
    ('1' + '0' * 400, r'1000000000\.\.\. \(401 characters\)'),
    ('1e400', '1e400'),
])
def test_set_text_beyond_float_range(text, shown):
  # The text parsed to inf, reported as "Invalid `client.learning_rate`:
  # inf", unlike the same value in a TOML file.
  with pytest.raises(errors.InputError, match=(
      f'`client.learning_rate` is {shown}, beyond the float range')):
    config_lib.apply_overrides(config_lib.ExperimentConfig(),
                               {'client.learning_rate': text})
