"""The DP trade-off and canary audit scripts, at --quick size."""

import importlib.util
import json
import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from fedjax_med import config as config_lib
from fedjax_med import data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_dp_tradeoff', ROOT / 'experiments/dp_tradeoff.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  script = _load_script()
  out = tmp_path_factory.mktemp('dp_tradeoff')
  status = script.main(['--quick', '--out', str(out)])
  lines = (out / 'results.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  return status, out, records


def _rows(records, kind):
  return [record for record in records if record['kind'] == kind]


def test_quick_run_writes_outputs(quick_run):
  status, out, _ = quick_run

  page = (out / 'results.md').read_text()

  assert status == 0
  assert (out / 'accuracy_vs_epsilon.png').stat().st_size > 0
  assert '| no DP | no_dp |' in page
  assert '## Client-level canary audit' in page
  assert (out / 'runs' / 'central_eps5' / 'seed_0' / 'summary.json').is_file()


def test_quick_run_covers_mechanisms(quick_run):
  _, _, records = quick_run

  mechanisms = [row['mechanism'] for row in _rows(records, 'tradeoff')]

  assert mechanisms == ['none', 'central', 'dp_sgd']


def test_central_epsilon_within_target(quick_run):
  _, _, records = quick_run

  central = [
      row for row in _rows(records, 'tradeoff') if row['mechanism'] == 'central'
  ]

  assert central
  for row in central:
    assert row['epsilon'] <= row['target_epsilon']
    assert row['meets_target']


def test_dp_sgd_epsilon_is_example_level(quick_run):
  _, _, records = quick_run

  dp_sgd = [
      row for row in _rows(records, 'tradeoff') if row['mechanism'] == 'dp_sgd'
  ]

  assert dp_sgd
  for row in dp_sgd:
    assert row['unit'] == 'example'
    assert row['epsilon'] > 0


def test_attacks_target_the_study_model(quick_run):
  _, _, records = quick_run

  for row in _rows(records, 'tradeoff'):
    attacks = row['attacks']
    assert attacks['retrained_mean_accuracy'] == pytest.approx(
        row['mean_accuracy']['per_seed'][0], abs=1e-6
    )
    for name in ('loss_attack', 'lira'):
      assert 0.0 <= attacks[name]['auc'] <= 1.0


def test_audit_bound_below_claim(quick_run):
  _, _, records = quick_run

  real = [
      row for row in _rows(records, 'canary_audit')
      if row['mechanism'] == 'central'
  ]

  assert real
  for row in real:
    assert row['epsilon_lower'] < row['claimed_epsilon_pld']
    assert row['epsilon_lower'] < row['claimed_epsilon_rdp']


def test_audit_catches_broken_noise(quick_run):
  _, _, records = quick_run

  broken = [
      row for row in _rows(records, 'canary_audit')
      if row['mechanism'] != 'central'
  ]

  assert broken
  for row in broken:
    assert row['epsilon_lower'] > row['claimed_epsilon_rdp']
    assert row['epsilon_lower'] > row['claimed_epsilon_pld']


def test_shadow_layout_reproduces_target():
  # Trained on the target's members, a DP shadow is the target model.
  script = _load_script()
  dataset = data.load_heart_disease()
  pool = script.privacy_audit.build_pool(dataset, 'federated')
  config = config_lib.apply_overrides(
      script.base_config({'rounds': 2, 'local_steps': 3}),
      script._central_overrides(5.0),
  )
  _, train = script.build_trainer(config, dataset)
  key = jax.random.key(4)

  target = jax.jit(train)(key, dataset.train)
  shadow = jax.jit(
      lambda key, mask: train(key, script._member_data(pool, mask))
  )(key, pool.is_member)

  for target_leaf, shadow_leaf in zip(
      jax.tree.leaves(target), jax.tree.leaves(shadow)
  ):
    np.testing.assert_allclose(shadow_leaf, target_leaf, rtol=1e-5, atol=1e-6)


def test_broken_settings_divide_noise_twice():
  script = _load_script()

  real = script.dp_canary_audit.round_settings(
      2.0, clip_norm=0.5, num_clients=5, broken=False
  )
  broken = script.dp_canary_audit.round_settings(
      2.0, clip_norm=0.5, num_clients=5, broken=True
  )

  assert real.denominator == 5.0
  assert real.noise_multiplier == 2.0
  assert broken.noise_multiplier == pytest.approx(2.0 / 5.0)


def test_rejects_few_shadows(capsys):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main(['--num-shadows', '3'])

  assert error.value.code == 2
  assert '--num-shadows must be at least 4' in capsys.readouterr().err


def test_rejects_repeated_seeds(capsys):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main(['--seeds', '0', '1', '0'])

  assert error.value.code == 2
  assert '0 given more than once' in capsys.readouterr().err


def test_single_seed_spread_omitted():
  script = _load_script()

  # pylint: disable=protected-access
  spread = script._spread([0.75])
  text = script._format_spread(spread)

  assert spread['std'] is None
  assert text == '0.750'


def test_quick_run_page_has_no_spread(quick_run):
  _, out, records = quick_run

  page = (out / 'results.md').read_text()
  table = page.split('## Client-level canary audit')[0]
  lines = [line for line in table.splitlines() if line.startswith('| ')]

  for row in _rows(records, 'tradeoff'):
    assert row['worst_accuracy']['std'] is None
  assert len(lines) > 1
  for line in lines:
    assert '±' not in line


def _fake_row(name):
  return {'kind': 'tradeoff', 'setting': name, 'epsilon': 1.0,
          'mean_accuracy': {'mean': 0.5}, 'elapsed_s': 0.0,
          'attacks': {'lira': {'auc': 0.5}}}


def test_ctrl_c_stops_between_settings(tmp_path, monkeypatch, capsys):
  # dp_tradeoff's loop over settings never checked a deferred Ctrl-C.
  script = _load_script()
  calls = []

  def run_setting(setting, base, **kwargs):
    calls.append(setting.name)
    os.kill(os.getpid(), signal.SIGINT)
    return _fake_row(setting.name)

  monkeypatch.setattr(script, 'run_setting', run_setting)
  previous = signal.getsignal(signal.SIGINT)

  with pytest.raises(SystemExit) as exit_info:
    script.main(['--quick', '--out', str(tmp_path)])

  assert exit_info.value.code == 130
  assert len(calls) == 1
  results = tmp_path / 'results.jsonl'
  assert [json.loads(line)['setting']
          for line in results.read_text().splitlines()] == calls
  assert not (tmp_path / 'results.md').exists()
  err = capsys.readouterr().err
  assert f'dp_tradeoff.py: interrupted; its results page and figures were ' \
         f'not written. The finished runs are in {results}.' in err
  assert signal.getsignal(signal.SIGINT) == previous


def test_canary_audit_ctrl_c_stops_between_audits(monkeypatch, capsys):
  script = _load_script()
  audit = script.dp_canary_audit
  calls = []

  def audit_one(*args, **kwargs):
    calls.append(1)
    os.kill(os.getpid(), signal.SIGINT)
    return {}

  monkeypatch.setattr(audit, 'audit_one', audit_one)

  with pytest.raises(SystemExit) as exit_info:
    audit.main(['--num-trials', '10'])

  assert exit_info.value.code == 130
  assert len(calls) == 1
  assert 'dp_canary_audit.py: interrupted;' in capsys.readouterr().err


def test_canary_audit_keys_differ_from_study_keys(monkeypatch):
  # Audit i used fold_in(key(seed), i), the key of the same seed's study
  # tag i: audit 1's trials drew the studies' round keys and their noise.
  audit = _load_script().dp_canary_audit
  keys = []

  def audit_one(*args, key, **kwargs):
    keys.append(key)
    return {}

  monkeypatch.setattr(audit, 'audit_one', audit_one)
  audit.run_audit(noise_multipliers=[1.0, 2.0, 4.0],
                  negative_control_noise_multipliers=[1.0],
                  num_trials=10, clip_norm=0.5, seed=0)

  root = jax.random.key(0)
  study_keys = {
      np.asarray(jax.random.key_data(key)).tobytes()
      for tag in range(5)
      for key in [jax.random.fold_in(root, tag)]
      + [jax.random.fold_in(jax.random.fold_in(root, 1), r) for r in range(20)]
  }
  for key in keys:
    trial_keys = jax.random.split(key, 20)
    for trial_key in [key, *trial_keys]:
      assert np.asarray(jax.random.key_data(trial_key)).tobytes() \
          not in study_keys
