"""Privacy accounting with dp_accounting's RDP and PLD accountants.

Reference epsilons come from dp-accounting 0.6.0 with its default orders
and discretization. Gaussian rounds without sampling are checked against the
closed form of Gaussian DP (Dong, Roth and Su, "Gaussian Differential
Privacy", JRSS-B 2022, https://arxiv.org/abs/1905.02383): `k` rounds with
noise multiplier `z` are mu-GDP with `mu = sqrt(k) * sensitivity / z`, and
mu-GDP gives delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2).
"""

import logging
import math

import dp_accounting
from dp_accounting import pld
from dp_accounting.pld import privacy_loss_distribution
import numpy as np
import pytest
from scipy import optimize
from scipy import special

from fedjax_med import config
from fedjax_med.errors import InputError
from fedjax_med.privacy import accounting

DELTA = 1e-5


def _gdp_epsilon(mu, delta):
  """Solve the mu-GDP delta(eps) curve for eps, in log space for large eps."""

  def delta_gap(epsilon):
    upper = special.ndtr(-epsilon / mu + mu / 2)
    lower = math.exp(epsilon + special.log_ndtr(-epsilon / mu - mu / 2))
    return upper - lower - delta

  return optimize.brentq(delta_gap, 0.0, mu * mu + 20 * mu, xtol=1e-12)


def _poisson(rate=0.01, noise_multiplier=1.0):
  return accounting.round_event(
      sampling='poisson',
      num_clients=1000,
      noise_multiplier=noise_multiplier,
      sampling_rate=rate,
  )


def _all_clients(noise_multiplier=1.0):
  return accounting.round_event(
      sampling='all', num_clients=10, noise_multiplier=noise_multiplier
  )


def test_samplings_match_config():
  assert set(accounting.SAMPLINGS) == set(config.SAMPLINGS)


def test_poisson_event_and_relation():
  event, relation = _poisson()

  assert event == dp_accounting.PoissonSampledDpEvent(
      0.01, dp_accounting.GaussianDpEvent(1.0)
  )
  assert relation == 'add_or_remove'


def test_all_event_is_plain_gaussian():
  event, relation = _all_clients()

  assert event == dp_accounting.GaussianDpEvent(1.0)
  assert relation == 'add_or_remove'


def test_rdp_poisson_reference():
  event, relation = _poisson()

  epsilon = accounting.epsilon_for(event, relation, 1000, DELTA)

  assert epsilon == pytest.approx(2.101, abs=1e-3)


def test_pld_poisson_reference():
  event, relation = _poisson()

  epsilon = accounting.epsilon_for(event, relation, 1000, DELTA, 'pld')

  assert epsilon >= 1.778
  assert epsilon <= 1.829


@pytest.mark.parametrize('relation', ['add_or_remove', 'replace_one'])
@pytest.mark.parametrize('rounds', [1, 3, 50])
def test_pld_poisson_equals_dp_accounting(relation, rounds):
  # The one-round PLD is reused between calls; the epsilon must stay that
  # of dp_accounting's PLDAccountant composing the same rounds.
  event = dp_accounting.PoissonSampledDpEvent(
      0.2, dp_accounting.GaussianDpEvent(1.3))
  reference = pld.PLDAccountant(
      neighboring_relation=accounting._DP_ACCOUNTING_RELATIONS[relation],
      value_discretization_interval=accounting._pld_step(
          event, relation, rounds, DELTA))
  reference.compose(event, rounds)
  privacy_accountant = accounting.PrivacyAccountant(event, relation, 'pld')

  for _ in range(rounds):
    privacy_accountant.step()
    epsilon = privacy_accountant.epsilon(DELTA)

  assert epsilon == reference.get_epsilon(DELTA)


def test_pld_poisson_builds_one_round_once():
  event = dp_accounting.PoissonSampledDpEvent(
      0.01, dp_accounting.GaussianDpEvent(1.1))
  privacy_accountant = accounting.PrivacyAccountant(
      event, 'add_or_remove', 'pld')
  accounting._poisson_gaussian_pld.cache_clear()

  for _ in range(5):
    privacy_accountant.step()
    privacy_accountant.epsilon(DELTA)

  # Every one of these round counts has the default grid step.
  assert accounting._poisson_gaussian_pld.cache_info().misses == 1


def test_rdp_all_600_rounds():
  event, relation = _all_clients()

  epsilon = accounting.epsilon_for(event, relation, 600, DELTA)

  assert epsilon == pytest.approx(414.861, abs=1e-3)
  # RDP bounds the exact epsilon from above.
  assert epsilon >= _gdp_epsilon(math.sqrt(600), DELTA)


def test_pld_ten_rounds_match_gdp():
  event, relation = _all_clients()

  epsilon = accounting.epsilon_for(event, relation, 10, DELTA, 'pld')

  assert epsilon == pytest.approx(17.857, abs=1e-3)
  assert epsilon == pytest.approx(_gdp_epsilon(math.sqrt(10), DELTA), abs=1e-3)


def test_pld_one_round_reference():
  event, relation = _all_clients()

  epsilon = accounting.epsilon_for(event, relation, 1, DELTA, 'pld')

  assert epsilon == pytest.approx(4.377, abs=1e-3)


@pytest.mark.parametrize('noise_multiplier', [0.3, 1e-3])
def test_pld_large_loss_matches_gdp(noise_multiplier):
  # At dp_accounting's default grid step of 1e-4, noise multiplier 0.3
  # took 2.8 GB and 1e-3 asked for 76 GiB. The coarser step keeps epsilon
  # within 1e-4 of the RDP bound above the exact value.
  event, relation = _all_clients(noise_multiplier)
  exact = _gdp_epsilon(math.sqrt(100) / noise_multiplier, DELTA)

  epsilon = accounting.epsilon_for(event, relation, 100, DELTA, 'pld')

  assert epsilon >= exact
  assert epsilon == pytest.approx(exact, rel=1e-5)


def test_pld_rejects_loss_beyond_grid():
  event, relation = _poisson(rate=0.5, noise_multiplier=1e-4)

  with pytest.raises(InputError, match='accountant=rdp'):
    accounting.epsilon_for(event, relation, 100, DELTA, 'pld')


@pytest.mark.parametrize('noise_multiplier, rounds', [
    (1.0, 1), (1.0, 100), (1.0, 1000), (0.3, 30), (1e-4, 100), (20.0, 5)])
def test_pld_gaussian_is_exact(noise_multiplier, rounds):
  # Without sampling the PLD grid spanned the whole privacy loss, so each
  # round's epsilon took time that grew with the rounds: 2.7 s at 100
  # rounds of z = 1, recomputed every round of a run. The composition of
  # Gaussians is one Gaussian, whose epsilon needs no grid.
  event, relation = _all_clients(noise_multiplier)
  exact = _gdp_epsilon(math.sqrt(rounds) / noise_multiplier, DELTA)

  epsilon = accounting.epsilon_for(event, relation, rounds, DELTA, 'pld')

  assert epsilon == pytest.approx(exact, rel=1e-10, abs=1e-10)


def test_pld_gaussian_replace_one_doubles_sensitivity():
  event = dp_accounting.GaussianDpEvent(1.0)
  exact = _gdp_epsilon(2 * math.sqrt(10), DELTA)

  epsilon = accounting.epsilon_for(event, 'replace_one', 10, DELTA, 'pld')

  assert epsilon == pytest.approx(exact, rel=1e-10)


def test_pld_calibration_meets_large_target():
  # The search and the final check use different PLD steps here.
  noise_multiplier = accounting.calibrate_noise_multiplier(
      target_epsilon=400.0, delta=DELTA, rounds=3, sampling='all',
      num_clients=10, accountant='pld',
  )
  event, relation = _all_clients(noise_multiplier)
  less_noise, _ = _all_clients(0.99 * noise_multiplier)

  assert accounting.epsilon_for(event, relation, 3, DELTA, 'pld') <= 400.0
  assert accounting.epsilon_for(less_noise, relation, 3, DELTA, 'pld') > 400.0


def test_pld_not_below_optimistic():
  event, relation = _poisson()
  optimistic = privacy_loss_distribution.from_gaussian_mechanism(
      1.0, sampling_prob=0.01, pessimistic_estimate=False,
      use_connect_dots=False,
  )

  reported = accounting.epsilon_for(event, relation, 100, DELTA, 'pld')
  lower_estimate = optimistic.self_compose(100).get_epsilon_for_delta(DELTA)

  assert reported >= lower_estimate
  # Both estimates bracket the same true epsilon, so they stay close.
  assert reported - lower_estimate < 0.05


@pytest.mark.parametrize('accountant', ['rdp', 'pld'])
def test_incremental_equals_bulk(accountant):
  event, relation = _poisson(rate=0.05)
  one_by_one = accounting.PrivacyAccountant(event, relation, accountant)
  bulk = accounting.PrivacyAccountant(event, relation, accountant)

  for _ in range(3):
    one_by_one.step()
    one_by_one.epsilon(DELTA)
  bulk.step(3)

  assert one_by_one.rounds == 3
  assert one_by_one.epsilon(DELTA) == pytest.approx(
      bulk.epsilon(DELTA), rel=1e-9
  )


@pytest.mark.parametrize(
    'accountant, make_accountant',
    [
        ('rdp', dp_accounting.rdp.RdpAccountant),
        ('pld', dp_accounting.pld.PLDAccountant),
    ],
    ids=['rdp', 'pld'],
)
def test_bulk_equals_per_round_compose(accountant, make_accountant):
  event, relation = _poisson(rate=0.05)
  per_round = make_accountant()
  for _ in range(3):
    per_round.compose(event)

  epsilon = accounting.epsilon_for(event, relation, 3, DELTA, accountant)

  assert epsilon == pytest.approx(per_round.get_epsilon(DELTA), rel=1e-6)


def test_epsilon_grows_with_rounds():
  event, relation = _poisson()
  privacy_accountant = accounting.PrivacyAccountant(event, relation)

  before = privacy_accountant.epsilon(DELTA)
  privacy_accountant.step(10)
  after_ten = privacy_accountant.epsilon(DELTA)
  privacy_accountant.step(10)
  after_twenty = privacy_accountant.epsilon(DELTA)

  assert before == 0.0
  assert after_ten > 0.0
  assert after_twenty > after_ten


def test_accountant_properties():
  event, relation = _poisson()

  privacy_accountant = accounting.PrivacyAccountant(event, relation, 'pld')

  assert privacy_accountant.relation == 'add_or_remove'
  assert privacy_accountant.accountant == 'pld'
  assert privacy_accountant.event == event
  assert privacy_accountant.rounds == 0


def test_uniform_uses_replace_one():
  event, relation = accounting.round_event(
      sampling='uniform', num_clients=100, noise_multiplier=1.0,
      cohort_size=10,
  )

  assert relation == 'replace_one'
  assert isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent)
  assert event.source_dataset_size == 100
  assert event.sample_size == 10
  assert event.event == dp_accounting.GaussianDpEvent(0.5)


def test_uniform_rejects_pld():
  event, relation = accounting.round_event(
      sampling='uniform', num_clients=100, noise_multiplier=1.0,
      cohort_size=10,
  )

  with pytest.raises(InputError, match='accountant=rdp'):
    accounting.PrivacyAccountant(event, relation, 'pld')


def test_uniform_full_cohort_bounds_gdp():
  # With the whole population in the cohort, replacing one client moves the
  # clipped sum by up to 2C, so 10 rounds at noise std C are
  # (2 * sqrt(10))-GDP.
  event, relation = accounting.round_event(
      sampling='uniform', num_clients=50, noise_multiplier=1.0,
      cohort_size=50,
  )
  exact = _gdp_epsilon(2 * math.sqrt(10), DELTA)

  epsilon = accounting.epsilon_for(event, relation, 10, DELTA)

  assert epsilon >= exact
  assert epsilon <= 1.1 * exact


def test_unsupported_relation_raises():
  event, _ = _poisson()

  with pytest.raises(InputError, match='round_event'):
    accounting.PrivacyAccountant(event, 'replace_one')


@pytest.mark.parametrize(
    'sampling, cohort_size, sampling_rate, target_epsilon, rounds',
    [
        ('poisson', None, 0.01, 2.0, 1000),
        ('all', None, None, 8.0, 50),
    ],
    ids=['poisson', 'all'],
)
def test_calibration_is_tight(
    sampling, cohort_size, sampling_rate, target_epsilon, rounds
):
  arguments = dict(
      sampling=sampling,
      num_clients=1000,
      cohort_size=cohort_size,
      sampling_rate=sampling_rate,
  )

  noise_multiplier = accounting.calibrate_noise_multiplier(
      target_epsilon=target_epsilon, delta=DELTA, rounds=rounds, **arguments
  )
  event, relation = accounting.round_event(
      noise_multiplier=noise_multiplier, **arguments
  )
  less_noise, _ = accounting.round_event(
      noise_multiplier=0.99 * noise_multiplier, **arguments
  )

  assert accounting.epsilon_for(event, relation, rounds, DELTA) <= (
      target_epsilon
  )
  assert accounting.epsilon_for(less_noise, relation, rounds, DELTA) > (
      target_epsilon
  )


def test_pld_calibration_is_tight():
  noise_multiplier = accounting.calibrate_noise_multiplier(
      target_epsilon=4.0, delta=DELTA, rounds=1, sampling='all',
      num_clients=10, accountant='pld',
  )
  event, relation = _all_clients(noise_multiplier)
  less_noise, _ = _all_clients(0.99 * noise_multiplier)

  assert accounting.epsilon_for(event, relation, 1, DELTA, 'pld') <= 4.0
  assert accounting.epsilon_for(less_noise, relation, 1, DELTA, 'pld') > 4.0


def test_unreachable_target_raises():
  with pytest.raises(InputError, match='target_epsilon.*unreachable'):
    accounting.calibrate_noise_multiplier(
        target_epsilon=0.01, delta=DELTA, rounds=1000, sampling='all',
        num_clients=10,
    )


def test_loose_target_raises():
  with pytest.raises(InputError, match='target_epsilon.*met even'):
    accounting.calibrate_noise_multiplier(
        target_epsilon=1e4, delta=DELTA, rounds=1, sampling='all',
        num_clients=10,
    )


@pytest.mark.parametrize('target_epsilon', [0.0, -1.0, math.inf])
def test_calibration_rejects_bad_target(target_epsilon):
  with pytest.raises(InputError, match='target_epsilon'):
    accounting.calibrate_noise_multiplier(
        target_epsilon=target_epsilon, delta=DELTA, rounds=10,
        sampling='all', num_clients=10,
    )


def test_calibration_rejects_pld_uniform():
  with pytest.raises(InputError, match='accountant=rdp'):
    accounting.calibrate_noise_multiplier(
        target_epsilon=2.0, delta=DELTA, rounds=10, sampling='uniform',
        num_clients=100, cohort_size=10, accountant='pld',
    )


def test_would_exceed_keeps_accountant():
  event, relation = _poisson()
  privacy_accountant = accounting.PrivacyAccountant(event, relation)
  privacy_accountant.step(10)
  now = privacy_accountant.epsilon(DELTA)
  after_eleven = accounting.epsilon_for(event, relation, 11, DELTA)
  between = (now + after_eleven) / 2

  exceeds_between = accounting.would_exceed(privacy_accountant, between, DELTA)
  exceeds_after = accounting.would_exceed(
      privacy_accountant, after_eleven, DELTA
  )

  assert exceeds_between
  assert not exceeds_after
  assert privacy_accountant.rounds == 10
  assert privacy_accountant.epsilon(DELTA) == now


def test_describe_guarantee_poisson():
  sentence = accounting.describe_guarantee(
      2.101, 1e-5, 'add_or_remove', 'client', sampling='poisson'
  )

  assert sentence == (
      '(2.11, 1e-05)-DP at the client level under add-or-remove-one-client '
      'neighboring datasets, Poisson sampling'
  )


def test_describe_guarantee_exact_decimals():
  sentence = accounting.describe_guarantee(
      2.1, 1e-6, 'replace_one', 'example'
  )

  assert sentence == (
      '(2.10, 1e-06)-DP at the example level under replace-one-example '
      'neighboring datasets'
  )


@pytest.mark.parametrize(
    'arguments, name',
    [
        (dict(epsilon=math.inf), 'epsilon'),
        (dict(delta=1.0), 'delta'),
        (dict(relation='swap'), 'relation'),
        (dict(unit='hospital'), 'unit'),
        (dict(sampling='shuffle'), 'sampling'),
    ],
    ids=['epsilon', 'delta', 'relation', 'unit', 'sampling'],
)
def test_describe_guarantee_rejects(arguments, name):
  valid = dict(
      epsilon=1.0, delta=1e-5, relation='add_or_remove', unit='client'
  )

  with pytest.raises(InputError, match=name):
    accounting.describe_guarantee(**(valid | arguments))


@pytest.mark.parametrize(
    'arguments, name',
    [
        (dict(noise_multiplier=0.0), 'noise_multiplier'),
        (dict(noise_multiplier=-1.0), 'noise_multiplier'),
        (dict(noise_multiplier=math.nan), 'noise_multiplier'),
        (dict(sampling_rate=0.0), 'sampling_rate'),
        (dict(sampling_rate=1.5), 'sampling_rate'),
        (dict(sampling_rate=None), 'sampling_rate'),
        (dict(num_clients=0), 'num_clients'),
        (dict(sampling='shuffle'), 'sampling'),
        (dict(sampling='uniform', cohort_size=None), 'cohort_size'),
        (dict(sampling='uniform', cohort_size=0), 'cohort_size'),
        (dict(sampling='uniform', cohort_size=101), 'cohort_size'),
    ],
    ids=[
        'zero_noise', 'negative_noise', 'nan_noise', 'zero_rate',
        'rate_above_one', 'missing_rate', 'no_clients', 'unknown_sampling',
        'missing_cohort', 'zero_cohort', 'cohort_above_population',
    ],
)
def test_round_event_rejects(arguments, name):
  valid = dict(
      sampling='poisson', num_clients=100, noise_multiplier=1.0,
      sampling_rate=0.1,
  )

  with pytest.raises(InputError, match=name):
    accounting.round_event(**(valid | arguments))


def test_zero_noise_reports_no_guarantee():
  with pytest.raises(InputError, match='no finite'):
    _all_clients(noise_multiplier=0.0)


@pytest.mark.parametrize('delta', [0.0, -1e-5, 1.0, 2.0])
def test_epsilon_rejects_bad_delta(delta):
  event, relation = _poisson()
  privacy_accountant = accounting.PrivacyAccountant(event, relation)
  privacy_accountant.step()

  with pytest.raises(InputError, match=f'`delta`.*{delta}'):
    privacy_accountant.epsilon(delta)


@pytest.mark.parametrize('num_rounds', [-1, 1.5, True])
def test_step_rejects_bad_count(num_rounds):
  event, relation = _poisson()
  privacy_accountant = accounting.PrivacyAccountant(event, relation)

  with pytest.raises(InputError, match='num_rounds'):
    privacy_accountant.step(num_rounds)


@pytest.mark.parametrize(
    'arguments, name',
    [
        (dict(relation='swap'), 'relation'),
        (dict(accountant='moments'), 'accountant'),
    ],
    ids=['relation', 'accountant'],
)
def test_accountant_rejects_choice(arguments, name):
  event, _ = _poisson()
  valid = dict(event=event, relation='add_or_remove')

  with pytest.raises(InputError, match=name):
    accounting.PrivacyAccountant(**(valid | arguments))


def test_rdp_convergence_warning_dropped_from_library_use():
  # dp-accounting logs this through absl when an RDP order does not
  # converge; the accountant still returns a valid bound.
  def record(pathname, message):
    return logging.LogRecord('absl', logging.WARNING, pathname, 1, message,
                             None, None)

  absl_logger = logging.getLogger('absl')
  from_dp_accounting = record('/site-packages/dp_accounting/rdp/rdp_privacy_accountant.py',
                   '_compute_log_a_frac failed to converge')
  from_elsewhere = record('/site-packages/other/module.py', 'failed to converge')

  assert not absl_logger.filter(from_dp_accounting)
  assert absl_logger.filter(from_elsewhere)


def test_numpy_integers_accepted_as_counts():
  # np.int64 passed the integer check, then dp_accounting raised TypeError.
  event = dp_accounting.GaussianDpEvent(1.0)
  expected = accounting.epsilon_for(event, 'add_or_remove', 3, 1e-5)

  assert accounting.epsilon_for(
      event, 'add_or_remove', np.int64(3), 1e-5) == expected
  uniform, _ = accounting.round_event(
      noise_multiplier=1.0, sampling='uniform', num_clients=np.int64(20),
      cohort_size=np.int32(5))
  assert uniform == accounting.round_event(
      noise_multiplier=1.0, sampling='uniform', num_clients=20,
      cohort_size=5)[0]
  with pytest.raises(InputError, match='rounds'):
    accounting.epsilon_for(event, 'add_or_remove', np.bool_(True), 1e-5)
