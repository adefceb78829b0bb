"""The fixed denominator that a study derives from its sampling settings."""

import math

import numpy as np
import pytest

from fedjax_med import config as config_lib
from fedjax_med import study_privacy

_PRIVATE = {'dataset': 'synthetic', 'num_clients': 20, 'clip_norm': 1.0,
            'noise': 'central', 'noise_multiplier': 1.0, 'aggregator': 'mean'}


def _settings(**changes):
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(),
                                      {**_PRIVATE, **changes})
  config_lib.validate(config)
  return study_privacy.privacy_settings(config, np.full(20, 10), 1.0)


def _binomial_expected_cohort(num_clients, online, cohort):
  """Return E[min(cohort, X)] for X ~ Binomial(num_clients, online)."""
  return sum(
      min(cohort, k) * math.comb(num_clients, k) * online**k
      * (1 - online)**(num_clients - k) for k in range(num_clients + 1))


def test_all_clients_without_availability():
  settings = _settings(dropout_rate=0.25)
  assert settings.denominator == pytest.approx(15.0)
  assert settings.expected_clients == pytest.approx(15.0)


@pytest.mark.parametrize('availability', [1.0, 0.5, 0.2])
def test_availability_lowers_denominator(availability):
  # The denominator stayed at 20 clients whatever the availability, so
  # the update shrank by it, and adaptive clipping read the share of
  # unclipped updates as 0.55 when it was 1.
  settings = _settings(availability=availability)
  assert settings.denominator == pytest.approx(20 * availability)
  assert settings.expected_clients == pytest.approx(20 * availability)


def test_poisson_rate_times_availability():
  settings = _settings(sampling='poisson', sampling_rate=0.3,
                       availability=0.5, dropout_rate=0.1)
  assert settings.denominator == pytest.approx(20 * 0.3 * 0.5 * 0.9)


def test_fixed_cohort_among_online_clients():
  settings = _settings(sampling='uniform', cohort_size=5, availability=0.2)
  expected = _binomial_expected_cohort(20, 0.2, 5)
  assert expected < 4.0
  # The schedule is float32, so 0.2 is 0.2 to 1e-8.
  assert settings.denominator == pytest.approx(expected, rel=1e-6)


def test_fixed_cohort_without_availability_unchanged():
  settings = _settings(sampling='uniform', cohort_size=5)
  assert settings.denominator == pytest.approx(5.0)


def test_office_hours_uses_slots_the_clock_visits():
  # The schedule was averaged over all 24 hours, but 15 rounds of 60 s all
  # fall in hour 0, outside office hours: 2 clients online, not 8.67.
  settings = _settings(schedule='office_hours', availability=0.9,
                       off_hours_availability=0.1, server_seconds=60.0)
  assert settings.denominator == pytest.approx(20 * 0.1, rel=1e-6)


def test_office_hours_over_a_whole_day():
  settings = _settings(schedule='office_hours', availability=0.9,
                       off_hours_availability=0.1, server_seconds=3600.0,
                       rounds=24)
  online = (10 * 0.9 + 14 * 0.1) / 24
  assert settings.denominator == pytest.approx(20 * online, rel=1e-6)


def test_office_hours_round_length_from_speed():
  # 100 local steps at 0.01 steps per second: 10,000 s a round, so rounds
  # 0 to 2 start in hours 0, 2 and 5, all outside office hours, and round
  # 3 in hour 8, inside them.
  settings = _settings(schedule='office_hours', availability=0.9,
                       off_hours_availability=0.1, steps_per_second=0.01,
                       rounds=4)
  online = (3 * 0.1 + 0.9) / 4
  assert settings.denominator == pytest.approx(20 * online, rel=1e-6)


def test_rarely_open_slots_hold_one_round():
  # With 1e-6 of the clients online at night, a round there finds no one
  # and the clock jumps to the next hour. The estimate assumed 1,800 rounds
  # of 2 s in hour 0 and gave 2e-5 clients, which divided the noise of
  # every round by 2e-5. Now hours 0 to 7 hold one empty round each, and
  # the last 4 rounds fall at 8:00 with 18 of 20 clients online.
  settings = _settings(schedule='office_hours', availability=0.9,
                       off_hours_availability=1e-6, steps_per_second=1.0,
                       local_steps=2, rounds=12)
  assert settings.denominator == pytest.approx(
      (8 * 20 * 1e-6 + 4 * 18) / 12, rel=1e-4)
