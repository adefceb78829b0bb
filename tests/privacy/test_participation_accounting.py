"""Privacy claims built from the participation a run recorded."""

import dp_accounting
import numpy as np
import pytest

from fedjax_med.errors import InputError
from fedjax_med.privacy import accounting
from fedjax_med.privacy import participation_accounting as lib

DELTA = 1e-5


def test_contributions_use_most_active_client():
  guarantee = lib.contribution_epsilon(
      np.array([0, 3, 5, 1]), noise_multiplier=2.0, delta=DELTA)
  expected = accounting.epsilon_for(
      dp_accounting.GaussianDpEvent(1.0), 'replace_one', 5, DELTA)
  assert guarantee.epsilon == pytest.approx(expected, rel=1e-12)
  assert guarantee.max_contributions == 5
  assert guarantee.relation == 'replace_one'


def test_contributions_compose_like_one_gaussian():
  # k Gaussian mechanisms of multiplier z compose to one of z / sqrt(k).
  guarantee = lib.contribution_epsilon(
      np.array([4]), noise_multiplier=3.0, delta=DELTA,
      relation='add_or_remove')
  single = accounting.epsilon_for(
      dp_accounting.GaussianDpEvent(1.5), 'add_or_remove', 1, DELTA)
  assert guarantee.epsilon == pytest.approx(single, rel=1e-6)


def test_replace_one_costs_more_than_add_or_remove():
  counts = np.array([2, 6])
  replace = lib.contribution_epsilon(counts, noise_multiplier=2.0,
                                     delta=DELTA)
  add_remove = lib.contribution_epsilon(
      counts, noise_multiplier=2.0, delta=DELTA, relation='add_or_remove')
  assert replace.epsilon > add_remove.epsilon


def test_pld_replace_one_not_halved_twice():
  # dp_accounting's PLD accountant doubles the sensitivity under
  # replace-one itself: multiplier z there is z / 2 under add-or-remove.
  replace = lib.contribution_epsilon(
      np.array([3]), noise_multiplier=1.0, delta=DELTA, accountant='pld')
  add_remove = lib.contribution_epsilon(
      np.array([3]), noise_multiplier=0.5, delta=DELTA,
      relation='add_or_remove', accountant='pld')
  assert replace.epsilon == pytest.approx(add_remove.epsilon, rel=1e-6)


def test_no_contributions_spend_nothing():
  guarantee = lib.contribution_epsilon(
      np.zeros(3, np.int32), noise_multiplier=1.0, delta=DELTA)
  assert guarantee.epsilon == 0.0


def test_poisson_rate_scaled_by_availability():
  guarantee = lib.sampled_epsilon(
      sampling='poisson', noise_multiplier=1.2, delta=DELTA,
      num_available=np.full(50, 300), sampling_rate=0.2,
      max_availability=0.5)
  event, relation = accounting.round_event(
      sampling='poisson', num_clients=1000, noise_multiplier=1.2,
      sampling_rate=0.1)
  expected = accounting.epsilon_for(event, relation, 50, DELTA)
  assert guarantee.epsilon == pytest.approx(expected, rel=1e-12)
  full = lib.sampled_epsilon(
      sampling='poisson', noise_multiplier=1.2, delta=DELTA,
      num_available=np.full(50, 300), sampling_rate=0.2)
  assert full.epsilon > guarantee.epsilon


def test_uniform_full_population_matches_round_event():
  guarantee = lib.sampled_epsilon(
      sampling='uniform', noise_multiplier=1.0, delta=DELTA,
      num_available=np.full(30, 1000), cohort_size=50)
  event, relation = accounting.round_event(
      sampling='uniform', num_clients=1000, noise_multiplier=1.0,
      cohort_size=50)
  expected = accounting.epsilon_for(event, relation, 30, DELTA)
  assert guarantee.epsilon == pytest.approx(expected, rel=1e-9)


def test_uniform_fewer_available_costs_more():
  everyone = lib.sampled_epsilon(
      sampling='uniform', noise_multiplier=1.0, delta=DELTA,
      num_available=np.full(30, 1000), cohort_size=50)
  mixed = lib.sampled_epsilon(
      sampling='uniform', noise_multiplier=1.0, delta=DELTA,
      num_available=np.array([1000, 200] * 15), cohort_size=50)
  assert mixed.epsilon > everyone.epsilon
  assert mixed.rounds == 30


def test_uniform_cohort_covering_available_has_no_amplification():
  guarantee = lib.sampled_epsilon(
      sampling='uniform', noise_multiplier=2.0, delta=DELTA,
      num_available=np.array([10, 4, 0, 7]), cohort_size=10)
  # Rounds with 10, 4 and 7 available each include every available client.
  expected = accounting.epsilon_for(
      dp_accounting.GaussianDpEvent(1.0), 'replace_one', 3, DELTA)
  assert guarantee.epsilon == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('call, message', [
    (lambda: lib.contribution_epsilon(
        np.array([1.5]), noise_multiplier=1.0, delta=DELTA),
     'contributions'),
    (lambda: lib.contribution_epsilon(
        np.array([-1]), noise_multiplier=1.0, delta=DELTA),
     'contributions'),
    (lambda: lib.contribution_epsilon(
        np.array([1]), noise_multiplier=0.0, delta=DELTA),
     'noise_multiplier'),
    (lambda: lib.contribution_epsilon(
        np.array([1]), noise_multiplier=1.0, delta=DELTA, relation='x'),
     'relation'),
    (lambda: lib.sampled_epsilon(
        sampling='poisson', noise_multiplier=1.0, delta=DELTA,
        num_available=np.ones(3), sampling_rate=0.1, max_availability=0.0),
     'max_availability'),
    (lambda: lib.sampled_epsilon(
        sampling='uniform', noise_multiplier=1.0, delta=DELTA,
        num_available=np.ones(3)), 'cohort_size'),
    (lambda: lib.sampled_epsilon(
        sampling='uniform', noise_multiplier=1.0, delta=DELTA,
        num_available=np.ones(3), cohort_size=1, accountant='pld'),
     'PLD'),
    (lambda: lib.sampled_epsilon(
        sampling='fedbuff', noise_multiplier=1.0, delta=DELTA,
        num_available=np.ones(3)), 'sampling'),
    (lambda: lib.sampled_epsilon(
        sampling='uniform', noise_multiplier=1.0, delta=7.0,
        num_available=np.zeros(3), cohort_size=1), 'delta'),
    (lambda: lib.sampled_epsilon(
        sampling='uniform', noise_multiplier=1.0, delta=DELTA,
        num_available=np.array([2.5]), cohort_size=1), 'num_available'),
])
def test_rejects_bad_input(call, message):
  with pytest.raises(InputError, match=message):
    call()
