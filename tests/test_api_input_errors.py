"""Invalid arguments to public functions raise errors that name them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.errors import InputError
from fedjax_med.leakage import analytic
from fedjax_med.leakage import imprint
from fedjax_med.privacy import audit
from fedjax_med.privacy import lira
from fedjax_med.vertical import data as vertical_data


@pytest.mark.parametrize('arguments, message', [
    ({'feature_groups': (('age', 'sex'), ('chol',))},
     'feature_groups must be a mapping'),
    ({'coverage': (0.5, 0.9)}, 'coverage must be a mapping'),
])
def test_split_heart_disease_needs_mappings(arguments, message):
  with pytest.raises(InputError, match=message):
    vertical_data.split_heart_disease(**arguments)


def test_split_heart_disease_takes_numpy_fraction():
  dataset = vertical_data.split_heart_disease(
      feature_groups={'a': ('age', 'sex'), 'b': ('chol',)},
      coverage={'b': np.float32(0.5)})
  full = vertical_data.split_heart_disease(
      feature_groups={'a': ('age', 'sex'), 'b': ('chol',)})

  assert len(dataset.parties[1].ids) < len(full.parties[1].ids)


def test_imprint_recovery_checks_shapes():
  with pytest.raises(InputError, match=r'\[features, num_bins\]'):
    imprint.recover_from_imprint(jnp.ones((13, 8)), jnp.ones(5))


def test_analytic_recovery_takes_lists():
  recovered = analytic.recover_inputs([[2.0], [4.0]], [2.0])

  np.testing.assert_allclose(recovered, [1.0, 2.0])


def test_record_error_checks_mask_length():
  with pytest.raises(InputError, match=r'mask shaped \[2\]'):
    analytic.record_error(jnp.ones(3), jnp.ones((2, 3)),
                          mask=jnp.ones(5, bool))


def test_canary_audit_needs_integer_trials():
  with pytest.raises(ValueError, match='integer of at least 2; got 2.5'):
    audit.canary_audit(lambda key, include: {}, lambda params: 0.0,
                       key=jax.random.key(0), num_trials=2.5, delta=1e-5)


def test_shadow_masks_need_a_key():
  with pytest.raises(ValueError, match='PRNG key'):
    lira.sample_shadow_masks(0, num_shadows=4, num_candidates=3)


@pytest.mark.parametrize('flag, value', [('--noise-multipliers', 'nan'),
                                         ('--clip-norm', 'nan'),
                                         ('--clip-norm', 'inf')])
def test_canary_audit_script_rejects_non_finite(load_script, capsys, flag,
                                                value):
  script = load_script('experiments/dp_canary_audit.py')

  with pytest.raises(SystemExit) as error:
    script._parse_args([flag, value])  # pylint: disable=protected-access

  assert error.value.code == 2
  assert 'finite' in capsys.readouterr().err


def test_canary_audit_script_rejects_out_folder(load_script, capsys,
                                                tmp_path):
  script = load_script('experiments/dp_canary_audit.py')

  with pytest.raises(SystemExit) as error:
    script._parse_args(  # pylint: disable=protected-access
        ['--out', str(tmp_path)])

  assert error.value.code == 2
  assert f'{tmp_path} is a folder' in capsys.readouterr().err


def test_canary_audit_script_rejects_out_under_file(load_script, capsys,
                                                    tmp_path):
  script = load_script('experiments/dp_canary_audit.py')
  blocker = tmp_path / 'blocker'
  blocker.write_text('')

  with pytest.raises(SystemExit) as error:
    script._parse_args(  # pylint: disable=protected-access
        ['--out', str(blocker / 'rows.json')])

  assert error.value.code == 2
  assert f'{blocker} is a file' in capsys.readouterr().err


@pytest.mark.parametrize('value', ['99999999999999999999', '-1'])
def test_canary_audit_script_rejects_seed(load_script, capsys, value):
  script = load_script('experiments/dp_canary_audit.py')

  with pytest.raises(SystemExit) as error:
    script._parse_args([f'--seed={value}'])  # pylint: disable=protected-access

  assert error.value.code == 2
  assert 'is not in [0, 4294967296)' in capsys.readouterr().err


def test_canary_audit_script_rejects_claim_error(load_script, capsys,
                                                 monkeypatch):
  script = load_script('experiments/dp_canary_audit.py')

  def failing_epsilon(event, relation, rounds, delta, accountant='rdp'):
    del relation, rounds, delta, accountant
    if event.noise_multiplier < 1e-3:
      raise script.InputError('Use accountant=rdp instead.')
    return 1.0

  monkeypatch.setattr(script.accounting, 'epsilon_for', failing_epsilon)

  with pytest.raises(SystemExit) as error:
    script._parse_args(  # pylint: disable=protected-access
        ['--noise-multipliers', '1', '1e-9'])

  message = capsys.readouterr().err
  assert error.value.code == 2
  assert '--noise-multipliers: the claimed epsilon of 1e-09' in message
  assert 'accountant=rdp' not in message


def test_canary_audit_script_input_error_one_line(load_script, capsys,
                                                  monkeypatch):
  script = load_script('experiments/dp_canary_audit.py')

  def failing_audit(**kwargs):
    del kwargs
    raise script.InputError('the audit failed')

  monkeypatch.setattr(script, 'run_audit', failing_audit)

  status = script.main(['--quick'])

  assert status == 2
  assert capsys.readouterr().err == (
      'dp_canary_audit.py: error: the audit failed\n')
