"""The `participation` and `compression` config sections through a study."""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import config as config_lib
from fedjax_med import matrix
from fedjax_med import study
from fedjax_med import study_participation
from fedjax_med import sweep
from fedjax_med.communication import compression
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.privacy import participation_accounting
from fedjax_med.simulation import round as round_lib

# 30 synthetic clients, 10 a round, half online, lognormal speeds, a
# deadline with partial work, and top-k with error feedback.
_SETTINGS = {
    'dataset': 'synthetic', 'num_clients': 30, 'sampling': 'uniform',
    'cohort_size': 10, 'availability': 0.5, 'steps_per_second': 2.0,
    'speed_spread': 1.0, 'upload_bytes_per_second': 1000.0,
    'deadline_s': 4.0, 'straggler_policy': 'partial', 'fednova': True,
    'compressor': 'top_k', 'top_k_fraction': 0.1, 'dropout_rate': 0.2,
    'rounds': 6, 'eval_every': 3, 'bootstrap_resamples': 100,
}


def _config(**changes):
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {**_SETTINGS, **changes})
  config_lib.validate(config)
  return config


def _records(run_dir):
  records = [json.loads(line) for line in
             (run_dir / 'metrics.jsonl').read_text().splitlines()]
  for record in records:
    record.pop('elapsed_s')
  return records


def test_summary_sums_rounds(tmp_path):
  study.run_study(_config(), tmp_path, progress=False)
  records = _records(tmp_path)
  section = json.loads((tmp_path / 'summary.json').read_text())[
      'participation']
  reported = sum(record['num_reported'] for record in records)
  sampled = sum(record['num_sampled'] for record in records)
  assert section['num_reported'] == reported
  assert section['num_sampled'] == sampled
  assert section['bytes_up'] == reported * section['bytes_per_upload']
  assert section['bytes_down'] == sampled * section['bytes_per_download']
  # Logistic regression on 60 features and 10 classes: 610 parameters.
  settings = compression.CompressionSettings('top_k', fraction=0.1)
  assert section['bytes_per_upload'] == compression.encoded_bytes(
      settings, 610)
  assert section['bytes_per_download'] == 4 * 610
  assert section['clock_s'] == pytest.approx(
      sum(record['round_seconds'] for record in records), rel=1e-5)
  for record in records:
    assert record['num_available'] <= 30
    assert record['num_sampled'] <= min(10, record['num_available'])
    assert record['round_seconds'] <= 4.0 + 1e-4
  assert 'privacy' not in section


def test_poisson_claims_share_relation_and_accountant(tmp_path):
  # The contribution claim was replace-one with RDP while the sampled
  # claim was add-or-remove, so "report the smaller" compared epsilons of
  # two relations, and `privacy.accountant=pld` was ignored.
  config = _config(clip_norm=1.0, noise='central', noise_multiplier=1.0,
                   aggregator='mean', compressor='none', top_k_fraction=0.01,
                   fednova=False, straggler_policy='wait', deadline_s=None,
                   sampling='poisson', cohort_size=None, sampling_rate=0.3,
                   accountant='pld')
  study.run_study(config, tmp_path / 'run', progress=False)
  summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
  claims = summary['participation']['privacy']
  max_count = summary['participation']['max_contributions']
  expected = participation_accounting.contribution_epsilon(
      np.asarray([max_count]), noise_multiplier=1.0,
      delta=config.privacy.delta, relation='add_or_remove', accountant='pld')

  assert claims['contributions']['relation'] == 'add_or_remove'
  assert claims['sampled']['relation'] == 'add_or_remove'
  assert claims['contributions']['epsilon'] == pytest.approx(expected.epsilon)


def _one_round_summary(run_dir, params, **changes):
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(),
      {**_SETTINGS, 'compressor': 'none', 'fednova': False, **changes})
  record = {'num_sampled': 3, 'num_reported': 2, 'num_available': 3}
  (run_dir / 'metrics.jsonl').write_text(json.dumps(record) + '\n')
  state = round_lib.init_server_state(params, optax.sgd(1.0), num_clients=3)
  return study_participation.summary(config, run_dir, state, 3)


def test_summary_counts_scaffold_controls(tmp_path):
  # The default logistic model has 610 float32 parameters, and SCAFFOLD
  # sends as many control values each way.
  params = {'w': jnp.zeros(610)}

  section = _one_round_summary(tmp_path, params, scaffold=True)

  assert section['bytes_per_download'] == 2 * 4 * 610
  assert section['bytes_per_upload'] == 2 * 4 * 610
  assert section['bytes_down'] == 3 * 2 * 4 * 610
  assert section['bytes_up'] == 2 * 2 * 4 * 610


def test_summary_leaves_out_fedbn_leaves(tmp_path):
  # The dense layer has 3 * 2 + 2 shared values. The norm layer's 4
  # weights and 4 statistics stay on the clients.
  params = {
      'params': {
          'dense': {'kernel': jnp.zeros((3, 2)), 'bias': jnp.zeros(2)},
          'stem_norm': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)},
      },
      'batch_stats': {
          'stem_norm': {'mean': jnp.zeros(2), 'var': jnp.ones(2)},
      },
  }

  section = _one_round_summary(tmp_path, params, fedbn=True)

  assert section['bytes_per_download'] == 4 * 8
  assert section['bytes_per_upload'] == 4 * 8
  assert section['bytes_down'] == 3 * 4 * 8
  assert section['bytes_up'] == 2 * 4 * 8


def test_central_noise_reports_claims(tmp_path):
  config = _config(clip_norm=1.0, noise='central', noise_multiplier=1.0,
                   aggregator='mean', compressor='none', top_k_fraction=0.01,
                   fednova=False, straggler_policy='wait', deadline_s=None)
  # A one-point sweep runs the study on its own and also lists the point.
  sweep_dir, records = sweep.run_sweep(
      config, sweep.SweepConfig(), tmp_path / 'sweep', progress=False)
  run_dir = sweep_dir / 'runs' / 'point-0000'
  summary = json.loads((run_dir / 'summary.json').read_text())
  section = summary['participation']
  claims = section['privacy']
  available = [record['num_available'] for record in _records(run_dir)]
  expected = participation_accounting.sampled_epsilon(
      sampling='uniform', noise_multiplier=1.0, delta=config.privacy.delta,
      num_available=np.asarray(available), cohort_size=10)
  assert claims['sampled']['epsilon'] == pytest.approx(expected.epsilon)
  max_count = section['max_contributions']
  assert claims['contributions']['rounds'] == max_count
  assert claims['contributions']['epsilon'] > 0
  # The accountant's epsilon assumes every client online, so with half
  # the clients offline it is not an upper bound.
  assert summary['privacy']['guarantee_holds'] is False
  assert summary['privacy']['guarantee'].startswith('No valid guarantee')
  # The sweep's table reports the smaller of the valid claims instead.
  [record] = records
  assert record['epsilon'] == min(claims['sampled']['epsilon'],
                                  claims['contributions']['epsilon'])
  assert record['epsilon'] != summary['privacy']['epsilon']
  assert record['clock_s'] == section['clock_s']
  assert record['bytes_up'] == section['bytes_up']


def test_central_noise_skips_closed_night(tmp_path):
  # Every client offline at night, and rounds of 2 s: the fixed
  # denominator was estimated from night slots as 0, floored at 1e-12, so
  # each round divided its noise by 1e-12 and the parameters reached 1e13.
  config = _config(
      num_clients=10, cohort_size=4, availability=1.0, dropout_rate=0.0,
      schedule='office_hours', off_hours_availability=0.0,
      steps_per_second=1.0, speed_spread=0.0, local_steps=2,
      upload_bytes_per_second=None, deadline_s=None,
      straggler_policy='wait', fednova=False, compressor='none',
      top_k_fraction=0.01, clip_norm=1.0, noise='central',
      noise_multiplier=1.0, aggregator='mean', rounds=4, eval_every=4)
  _, summary = study.run_study(config, tmp_path, progress=False)
  records = _records(tmp_path)

  assert summary['privacy']['denominator'] == pytest.approx(4.0)
  # The first round starts at 8:00, when the office opens.
  assert records[0]['clock'] >= 8 * 3600
  assert [record['num_available'] for record in records] == [10] * 4


def test_interrupt_and_resume_match(tmp_path):
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
  # The clock, the contribution counts and the error-feedback residuals
  # come back from the checkpoint.
  assert _records(resumed) == _records(uninterrupted)
  summaries = [json.loads((path / 'summary.json').read_text())[
      'participation'] for path in (uninterrupted, resumed)]
  assert summaries[0] == summaries[1]


@pytest.mark.parametrize('settings, match', [
    ({'straggler_policy': 'drop', 'deadline_s': None}, 'deadline_s'),
    ({'steps_per_second': None, 'speed_spread': 0.0}, 'steps_per_second'),
    ({'availability': 0.0}, 'participation.availability'),
    ({'availability': 1.5}, 'participation.availability'),
    ({'schedule': 'weekends'}, 'participation.schedule'),
    ({'time_zones': 2}, 'time_zones'),
    ({'steps_per_second': -1.0}, 'participation.steps_per_second'),
    # 100 steps at 1e-37 steps/s overflowed the float32 clock to null.
    ({'steps_per_second': 1e-37}, r'steps_per_second`: 1e-37.*\[1e-05'),
    ({'upload_bytes_per_second': 1e-6}, 'upload_bytes_per_second'),
    ({'compressor': 'zip'}, 'compression.compressor'),
    ({'quantization_levels': 4}, 'quantization_levels'),
    ({'top_k_fraction': 0.0}, 'top_k_fraction'),
    ({'clip_norm': 1.0, 'noise': 'local', 'noise_multiplier': 1.0,
      'fednova': False}, 'compression.compressor'),
    ({'speed_jitter': 30.0}, 'speed_jitter'),
    ({'server_seconds': 1e39}, 'server_seconds'),
    ({'steps_per_second': None, 'straggler_policy': 'wait',
      'deadline_s': None}, 'speed_spread'),
    ({'link_spread': 1.0, 'upload_bytes_per_second': None},
     'link_spread'),
    # Jitter scales step times, so without them it was silently ignored.
    ({'steps_per_second': None, 'speed_spread': 0.0, 'speed_jitter': 1.0,
      'straggler_policy': 'wait', 'deadline_s': None},
     '`participation.speed_jitter` has no effect without'),
    ({'steps_per_second': None, 'speed_spread': 0.0,
      'upload_bytes_per_second': None, 'straggler_policy': 'wait'},
     'deadline_s'),
    ({'clip_norm': 1.0, 'noise': 'central', 'noise_multiplier': 1.0,
      'fednova': False, 'target_epsilon': 5.0}, 'target_epsilon'),
])
def test_invalid_settings_rejected(settings, match):
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {**_SETTINGS, **settings})
  with pytest.raises(InputError, match=match):
    config_lib.validate(config)


def test_unused_boolean_named_as_toml():
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {'error_feedback': False})
  with pytest.raises(InputError, match='`compression.error_feedback=false`'):
    config_lib.validate(config)


def test_schedule_needs_moving_clock():
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(),
      {'schedule': 'office_hours', 'time_zones': 3})
  with pytest.raises(InputError, match='clock'):
    config_lib.validate(config)


def test_matrix_rejects_participation():
  base = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {'availability': 0.5})
  with pytest.raises(InputError, match='participation'):
    matrix._check_base(base)


def test_drop_with_link_speed_only_is_valid():
  config = _config(steps_per_second=None, speed_spread=0.0, fednova=False,
                   straggler_policy='drop')
  assert config.participation.upload_bytes_per_second == 1000.0


def test_distributed_noise_with_offline_clients_has_no_guarantee(tmp_path):
  # Its epsilon credits sampling 10 of all 30 clients, while about 15 were
  # online; the summary used to state the guarantee as valid.
  config = _config(rounds=2, aggregator='mean', clip_norm=1.0,
                   noise='distributed', noise_multiplier=1.0,
                   min_reporting_clients=2, fednova=False,
                   compressor='none', top_k_fraction=0.01)

  _, summary = study.run_study(config, tmp_path / 'run', progress=False)

  assert summary['privacy']['guarantee_holds'] is False
  assert summary['privacy']['guarantee'].startswith(
      'No valid guarantee: privacy.epsilon credits sampling')
