"""Server optimizers from the config: FedOpt rules and their tau."""

import re
import tomllib

import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_med as fm
from fedjax_med import config as config_lib
from fedjax_med import errors
from fedjax_med import study


def _validate(**overrides):
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)
  config_lib.validate(config)
  return config


def test_server_tau_needs_fedopt():
  with pytest.raises(errors.InputError, match='server_tau=0.01` has no'):
    _validate(server_optimizer='adam', server_tau=0.01)


@pytest.mark.parametrize('tau', ['0', '-1', 'nan'])
def test_bad_server_tau(tau):
  with pytest.raises(errors.InputError, match='server_tau'):
    _validate(server_optimizer='fedadam', server_tau=tau)


def test_fedadam_first_step_from_config():
  optimizer = study.build_optimizer('fedadam', 0.5, tau=0.1)
  delta = jnp.array([0.2, -0.4])
  params = jnp.zeros(2)

  updates, _ = optimizer.update(-delta, optimizer.init(params), params)

  # m_0 = 0.1 * delta, v_0 = 0.99 * tau^2 + 0.01 * delta^2, no bias
  # correction: the step is 0.5 * m_0 / (sqrt(v_0) + tau).
  expected = 0.5 * 0.1 * delta / (
      np.sqrt(0.99 * 0.01 + 0.01 * delta ** 2) + 0.1)
  np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_fedyogi_study_runs(tmp_path):
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'rounds': 3, 'local_steps': 20, 'server_optimizer': 'fedyogi',
      'server_learning_rate': 0.03, 'server_tau': 0.01,
  })
  _, summary = study.run_study(config, tmp_path / 'run', progress=False)
  assert summary['mean_accuracy'] > 0.5


def test_scaffold_needs_sgd():
  with pytest.raises(errors.InputError, match='needs `client.optimizer=sgd`'):
    _validate(scaffold=True, optimizer='adam')


def test_scaffold_rejects_dp():
  with pytest.raises(errors.InputError, match='cannot run with DP'):
    _validate(scaffold=True, dp_sgd=True)


def test_scaffold_needs_mean_aggregator():
  with pytest.raises(errors.InputError, match='fedavg or mean; got median'):
    _validate(scaffold=True, aggregator='median')


@pytest.mark.parametrize('overrides, key', [
    ({'server_optimizer': 'fedadam', 'server_tau': 1e300}, 'server_tau'),
    ({'finetune_steps': 10**11}, 'finetune_steps'),
    ({'local_steps': 2**31}, 'local_steps'),
    ({'partition': 'dirichlet', 'dirichlet_alpha': 1e7}, 'dirichlet_alpha'),
    ({'partition': 'quantity', 'size_sigma': 1e300}, 'size_sigma'),
    # 2**40 resamples ran for hours; 2**31 epochs overflowed int32.
    ({'bootstrap_resamples': 2**40}, 'bootstrap_resamples'),
    ({'bootstrap_resamples': 100_001}, 'bootstrap_resamples'),
    ({'local_epochs': 2**31}, 'local_epochs'),
])
def test_huge_values_rejected(overrides, key):
  with pytest.raises(errors.InputError, match=key):
    _validate(**overrides)


@pytest.mark.parametrize('value', ['2', '0.5', '[0]', '{}'])
def test_toml_bool_must_be_bool(tmp_path, value):
  path = tmp_path / 'bad.toml'
  path.write_text(f'[client]\nscaffold = {value}\n')
  with pytest.raises(errors.InputError, match='true or false'):
    config_lib.load_toml(path)


def test_toml_with_byte_order_mark_read(tmp_path):
  path = tmp_path / 'bom.toml'
  path.write_bytes(b'\xef\xbb\xbf[server]\nrounds = 2\n')
  assert config_lib.load_toml(path).server.rounds == 2


@pytest.mark.parametrize('content', [
    b'\xff\xfe[server]\n', '[server]\nrounds = 2\n'.encode('utf-16')])
def test_toml_not_utf8_rejected(tmp_path, content):
  path = tmp_path / 'other.toml'
  path.write_bytes(content)
  with pytest.raises(errors.InputError, match='not UTF-8 text'):
    config_lib.load_toml(path)


def test_qffl_needs_sgd():
  with pytest.raises(errors.InputError, match='qffl` needs `client.optimizer'):
    _validate(aggregator='qffl', optimizer='adam')


def test_qffl_zero_q_matches_uniform_mean(tmp_path):
  summaries = {}
  for name, extra in (('qffl', {'qffl_q': 0.0}), ('mean', {})):
    config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
        'rounds': 2, 'local_steps': 10, 'aggregator': name,
        'bootstrap_resamples': 100, **extra})
    summaries[name] = study.run_study(config, tmp_path / name,
                                      progress=False)[1]
  for hospital, accuracy in summaries['mean']['test_accuracy'].items():
    assert summaries['qffl']['test_accuracy'][hospital] == pytest.approx(
        accuracy, abs=1e-6)


def test_fednova_needs_plain_sgd():
  with pytest.raises(errors.InputError, match='fednova=true` needs'):
    _validate(fednova=True, optimizer='adam')


def test_fednova_rejects_scaffold():
  # FedNova's rescaled updates fed SCAFFOLD's control update, whose
  # variates came out off by tau_eff / tau_i.
  with pytest.raises(errors.InputError, match='does not combine with'):
    _validate(fednova=True, scaffold=True)


@pytest.mark.parametrize('noise', ['local', 'central', 'distributed'])
def test_qffl_rejects_noise(noise):
  # Local noise was accepted, and the summary claimed local DP while each
  # client's loss reached the server in the clear.
  with pytest.raises(errors.InputError, match='training loss'):
    _validate(aggregator='qffl', noise=noise, clip_norm=1.0,
              noise_multiplier=1.0)


def test_fednova_with_fedprox_normalizes_by_proximal_steps(monkeypatch):
  # The study passes eta * mu, so FedProx clients are normalized by
  # ||a_i||_1 rather than by their step counts.
  config = _validate(fednova=True, proximal_mu=0.5, learning_rate=0.1,
                     rounds=1, local_steps=2)
  captured = {}
  build_round = study.round_lib.build_round

  def capture(*args, **kwargs):
    captured.update(kwargs)
    return build_round(*args, **kwargs)

  monkeypatch.setattr(study.round_lib, 'build_round', capture)
  study.build_round_fn(config, study.prepare(config))
  assert captured['fednova_proximal'] == pytest.approx(0.05)


@pytest.mark.parametrize('document, message', [
    # Booleans are shown as written in TOML and in Python.
    ('[server]\nrounds = true\n',
     '`server.rounds` must be an integer; got the bool true (True).'),
    ('[participation]\ndeadline_s = false\n',
     '`participation.deadline_s` must be a number; got the bool false '
     '(False).'),
    ('[participation]\nstraggler_policy = true\n',
     '`participation.straggler_policy` must be a string; got the bool true '
     '(True).'),
    ('[server]\nrounds = "2"\n',
     "`server.rounds` must be an integer; got the string '2'. Write it "
     'without quotes: `rounds = 2`.'),
    ('[client]\nlearning_rate = "0.1"\n',
     "`client.learning_rate` must be a number; got the string '0.1'. Write "
     'it without quotes: `learning_rate = 0.1`.'),
    ('[client]\ndp_sgd = "true"\n',
     "`client.dp_sgd` must be true or false; got the string 'true'. Write "
     'it without quotes: `dp_sgd = true`.'),
    ('[model]\nhidden_sizes = "32,16"\n',
     "`model.hidden_sizes` must be a list; got the string '32,16'. Write it "
     'without quotes: `hidden_sizes = [32, 16]`.'),
    ('[data]\ncsv_path = 5\n', '`data.csv_path` must be a string; got 5.'),
    ('[data]\nimage_shape = [32, "32", 3]\n',
     "`data.image_shape` must be a list of integers; got the string '32' in "
     "[32, '32', 3]. Write it without quotes: `image_shape = [32, 32, 3]`."),
])
def test_toml_value_of_wrong_type_rejected(tmp_path, document, message):
  # The same text on the command line is parsed (`--set rounds=2`), but a
  # TOML value carries its type, and a quoted number there is a mistake.
  path = tmp_path / 'bad.toml'
  path.write_text(document)
  with pytest.raises(errors.InputError) as error:
    config_lib.load_toml(path)
  assert str(error.value) == message


@pytest.mark.parametrize('document, hint', [
    # These hints wrote the text unquoted, as in `rounds = abc`.
    ('[server]\nrounds = "abc"\n', {'rounds': 1}),
    ('[client]\nlearning_rate = "x"\n', {'learning_rate': 1.0}),
    ('[client]\ndp_sgd = "yes"\n', {'dp_sgd': True}),
    ('[model]\nhidden_sizes = ["32", "x"]\n', {'hidden_sizes': [32, 1]}),
    # TOML has no float `.5`.
    ('[client]\nlearning_rate = ".5"\n', {'learning_rate': 0.5}),
], ids=['int_text', 'float_text', 'bool_text', 'list_text', 'bare_point'])
def test_type_hint_is_toml(tmp_path, document, hint):
  path = tmp_path / 'bad.toml'
  path.write_text(document)

  with pytest.raises(errors.InputError) as error:
    config_lib.load_toml(path)
  written = re.findall('`([^`]*)`', str(error.value))[-1]

  assert tomllib.loads(written) == hint


def test_typed_values_keep_optional_none_and_numpy_numbers():
  config = fm.configure(rounds=np.int64(4), clip_norm='none',
                        learning_rate=np.float32(0.5))
  assert (config.server.rounds, config.privacy.clip_norm) == (4, None)
  assert config.client.learning_rate == 0.5
  with pytest.raises(errors.InputError, match="got the string '4'"):
    fm.configure(rounds='4')
  with pytest.raises(errors.InputError, match='must be an integer; got'):
    fm.configure(rounds=np.float32(2.5))
  assert fm.configure(dp_sgd=np.bool_(True)).client.dp_sgd is True
  # Command-line values are strings and stay parsed.
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(),
                                      {'rounds': '4'})
  assert config.server.rounds == 4
  # Integers only, in every form: `rounds = 1e20` ran 290,000 rounds
  # before a break tester stopped it.
  for value in (4.0, 1e20, np.float64(4.0)):
    with pytest.raises(errors.InputError, match='must be an integer; got '
                       'the float'):
      fm.configure(rounds=value)
  with pytest.raises(errors.InputError, match="got '4.0'"):
    config_lib.apply_overrides(config_lib.ExperimentConfig(),
                               {'rounds': '4.0'})
  with pytest.raises(errors.InputError, match='server.rounds'):
    fm.configure(rounds=10**20)


def test_section_given_a_value_rejected(tmp_path):
  path = tmp_path / 'bad.toml'
  path.write_text('server = 3\n')
  with pytest.raises(errors.InputError, match=r'table `\[server\]`'):
    config_lib.load_toml(path)


@pytest.mark.parametrize('overrides, key, limit', [
    ({'ditto_lambda': 1000.0}, 'client.ditto_lambda', 'below 200'),
    ({'ditto_lambda': 200.0}, 'client.ditto_lambda', 'below 200'),
    ({'proximal_mu': 250.0}, 'client.proximal_mu', 'below 200'),
    ({'optimizer': 'momentum', 'ditto_lambda': 380.0},
     'client.ditto_lambda', 'below 380'),
])
def test_proximal_pull_sgd_overshoots(overrides, key, limit):
  # The default client is SGD at learning rate 0.01. A proximal term of
  # curvature mu scales the distance to the global model by 1 - 0.01 mu
  # per step, which has size at least 1 from mu = 200.
  with pytest.raises(errors.InputError) as error:
    _validate(**overrides)
  assert f'`{key}`' in str(error.value)
  assert limit in str(error.value)


@pytest.mark.parametrize('overrides', [
    {'ditto_lambda': 199.0},
    {'proximal_mu': 199.0},
    {'optimizer': 'momentum', 'ditto_lambda': 379.0},
    {'optimizer': 'adam', 'ditto_lambda': 1000.0},
])
def test_proximal_pull_below_bound_accepted(overrides):
  _validate(**overrides)
