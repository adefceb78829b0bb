"""The membership inference script on Fed-Heart-Disease, at --quick size."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import optax
import pytest

from fedjax_med import client
from fedjax_med import data
from fedjax_med import models

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_privacy_audit', ROOT / 'experiments/privacy_audit.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_privacy_audit_quick(tmp_path, capsys):
  script = _load_script()
  out = tmp_path / 'audit.json'

  status = script.main(['--quick', '--out', str(out)])

  result = json.loads(out.read_text())
  assert status == 0
  assert result['num_members'] == 486
  assert result['num_nonmembers'] == 254
  assert result['max_false_positives'] == 2
  assert result['lira']['num_shadows'] == 4
  for name in ('loss_attack', 'lira'):
    assert 0.0 <= result[name]['auc'] <= 1.0
    assert 0.0 <= result[name]['tpr_at_1pct_fpr'] <= 1.0
  assert 'TPR at 1% FPR' in capsys.readouterr().out


def test_privacy_audit_rejects_few_shadows(capsys):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main(['--num-shadows', '3'])

  assert error.value.code == 2
  assert '--num-shadows must be at least 4' in capsys.readouterr().err


def test_shadow_trainer_reproduces_target():
  # Trained on the target's members, a shadow is the target model itself.
  script = _load_script()
  dataset = data.load_heart_disease()
  model = models.from_flax(models.LogisticRegression(2), num_classes=2)
  local_update = client.build_local_update(
      model, optax.sgd(0.01), num_steps=3, batch_size=4
  )
  pool = script.build_pool(dataset, 'federated')
  key = jax.random.key(3)

  target = script.train_fedavg(
      model, dataset.train, local_update, rounds=2, key=key
  )
  shadow_train_fn = script.build_shadow_train_fn(
      model, pool, local_update, rounds=2
  )
  shadow = jax.jit(shadow_train_fn)(key, pool.is_member)

  for target_leaf, shadow_leaf in zip(
      jax.tree.leaves(target), jax.tree.leaves(shadow)
  ):
    np.testing.assert_allclose(shadow_leaf, target_leaf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('flag, value', [
    ('--learning-rate', 'nan'),
    ('--learning-rate', 'inf'),
    ('--learning-rate', '-1'),
    ('--learning-rate', '0'),
])
def test_privacy_audit_rejects_flag(capsys, flag, value):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main([f'{flag}={value}'])

  assert error.value.code == 2
  assert f'{flag} must be' in capsys.readouterr().err


@pytest.mark.parametrize('value, message', [
    ('-1', 'is not in [0, 4294967296)'),
    (str(2**32), 'is not in [0, 4294967296)'),
    ('99999999999999999999', 'is not in [0, 4294967296)'),
    ('1.5', "'1.5' is not a seed"),
])
def test_privacy_audit_rejects_seed(capsys, value, message):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main([f'--seed={value}'])

  assert error.value.code == 2
  assert message in capsys.readouterr().err


def test_privacy_audit_rejects_out_folder(tmp_path, capsys):
  script = _load_script()

  with pytest.raises(SystemExit) as error:
    script.main(['--out', str(tmp_path)])

  assert error.value.code == 2
  assert f'{tmp_path} is a folder' in capsys.readouterr().err


def test_privacy_audit_rejects_out_under_file(tmp_path, capsys):
  script = _load_script()
  blocker = tmp_path / 'blocker'
  blocker.write_text('')

  with pytest.raises(SystemExit) as error:
    script.main(['--out', str(blocker / 'audit.json')])

  assert error.value.code == 2
  assert f'{blocker} is a file' in capsys.readouterr().err


def test_privacy_audit_diverged_names_flag(tmp_path, capsys):
  script = _load_script()
  out = tmp_path / 'audit.json'

  status = script.main(['--quick', '--learning-rate', '1e37', '--out',
                        str(out)])

  assert status == 1
  assert 'Lower --learning-rate (got 1e+37)' in capsys.readouterr().err
  assert not out.exists()


def test_privacy_audit_writes_nan_as_null(tmp_path, monkeypatch):
  script = _load_script()
  out = tmp_path / 'audit.json'
  nan_metrics = {'auc': float('nan'), 'tpr_at_1pct_fpr': float('nan')}
  monkeypatch.setattr(
      script, 'attack_target',
      lambda *args, **kwargs: {'loss_attack': dict(nan_metrics),
                               'lira': dict(nan_metrics)},
  )

  status = script.main(['--quick', '--out', str(out)])

  text = out.read_text()
  assert status == 0
  assert 'NaN' not in text
  assert json.loads(text)['lira']['auc'] is None
