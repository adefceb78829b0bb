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
