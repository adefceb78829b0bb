"""Differential privacy accounting of federated rounds with dp_accounting.

Each round with central noise releases the sum of client updates clipped to
L2 norm `C`, plus Gaussian noise of std `noise_multiplier * C`, computed on
the cohort that the round's sampler drew. `round_event` describes one such
round as a `dp_accounting.DpEvent` together with the neighboring relation
under which dp_accounting can account for it. `PrivacyAccountant` composes
that event once per round and reports epsilon with dp_accounting's Renyi DP
(RDP) or privacy loss distribution (PLD) accountant, and
`calibrate_noise_multiplier` searches for the smallest noise multiplier that
meets a target epsilon. Everything here runs on the host and never inside
jit, because dp_accounting accountants are stateful Python objects.

Warning:
  The events cover a round only when its release is the noisy clipped sum,
  or that sum scaled by a factor that does not depend on the data. Dividing
  the sum by the number of clients that actually contributed makes the
  factor depend on the data under add-or-remove neighboring, and DP-FedAvg
  (McMahan et al., 2018) divides by the expected cohort size for that
  reason. The Poisson event also assumes that every sampled client is kept,
  so a sampler that caps the cohort and drops clients departs from it.

References:
  Mironov, "Renyi Differential Privacy", IEEE CSF 2017,
  https://arxiv.org/abs/1702.07476.

  Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
  Gaussian Mechanism", 2019, https://arxiv.org/abs/1908.10530.

  Wang, Balle and Kasiviswanathan, "Subsampled Renyi Differential Privacy
  and Analytical Moments Accountant", AISTATS 2019,
  https://arxiv.org/abs/1808.00087.

  Doroshenko, Ghazi, Kamath, Kumar and Manurangsi, "Connect the Dots: Tighter
  Discrete Approximations of Privacy Loss Distributions", PETS 2022,
  https://arxiv.org/abs/2207.04380.

  McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private
  Recurrent Language Models", ICLR 2018, https://arxiv.org/abs/1710.06963.
"""

import copy
import functools
import logging
import math
import numbers

import dp_accounting
import numpy as np
from dp_accounting import pld
from dp_accounting import rdp
from dp_accounting.pld import privacy_loss_mechanism
from scipy import optimize

from fedjax_med.errors import InputError

NEIGHBORING_RELATIONS = ('add_or_remove', 'replace_one')
ACCOUNTANTS = ('rdp', 'pld')
SAMPLINGS = ('all', 'poisson', 'uniform')
UNITS = ('client', 'example')



class _RdpConvergenceFilter(logging.Filter):
  """Drops dp-accounting's warning about RDP orders it could not compute.

  The RDP accountant leaves those orders out and still returns a valid
  upper bound from the others. A study with Poisson sampling logged the
  warning several times per round.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not ('dp_accounting' in record.pathname
                and 'failed to converge' in record.getMessage())


def _quiet_rdp_convergence_warnings() -> None:
  absl_logger = logging.getLogger('absl')
  if not any(isinstance(item, _RdpConvergenceFilter)
             for item in absl_logger.filters):
    absl_logger.addFilter(_RdpConvergenceFilter())


_quiet_rdp_convergence_warnings()

_DP_ACCOUNTING_RELATIONS = {
    'add_or_remove': dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    'replace_one': dp_accounting.NeighboringRelation.REPLACE_ONE,
}
_NEIGHBORING_PHRASES = {
    'add_or_remove': 'add-or-remove-one-{unit}',
    'replace_one': 'replace-one-{unit}',
    # The unit still takes part but sends a zero update. Distributed noise
    # needs it: a client that is removed also removes its share of the
    # noise, which add-or-remove accounting does not model.
    'zero_out': 'zero-out-one-{unit}',
}
# The relations a guarantee can be stated under.
DESCRIBED_RELATIONS = tuple(_NEIGHBORING_PHRASES)
_SAMPLING_PHRASES = {
    'all': 'all clients in every round',
    'poisson': 'Poisson sampling',
    'uniform': 'fixed-size sampling without replacement',
}
# Search range of `calibrate_noise_multiplier`, and its relative tolerance.
_MIN_NOISE_MULTIPLIER = 2.0**-4
_MAX_NOISE_MULTIPLIER = 1e3
_CALIBRATION_RTOL = 1e-3
# The PLD accountant's grid step (dp_accounting's default is 1e-4). The
# grid spans the privacy loss of one round, so at the default step a round
# with a large loss takes gigabytes. Noise multiplier 0.3 without sampling
# over 100 rounds took 20 s and 2.8 GB, and 1e-3 asked for 76 GiB. The step
# grows to _PLD_STEP_PER_EPSILON times the RDP epsilon per round, which
# keeps the grid near 1e4 points per unit of that loss. The pessimistic
# rounding adds at most rounds * step to epsilon, so at most 1e-4 of the
# RDP epsilon. A round whose step would pass _PLD_MAX_STEP (its exp
# overflows float64 above 709) is rejected.
_PLD_DEFAULT_STEP = 1e-4
_PLD_STEP_PER_EPSILON = 1e-4
_PLD_MAX_STEP = 100.0


def round_event(
    *,
    sampling: str,
    num_clients: int,
    noise_multiplier: float,
    cohort_size: int | None = None,
    sampling_rate: float | None = None,
) -> tuple[dp_accounting.DpEvent, str]:
  """Build the DpEvent of one round and its neighboring relation.

  'all' and 'poisson' are accounted under add-or-remove-one-client
  neighboring. 'all' is the plain Gaussian mechanism in every round, which
  equals Poisson sampling with rate 1. 'uniform' draws a fixed-size cohort
  without replacement, whose amplification bound in dp_accounting holds
  only under replace-one-client neighboring. Its Gaussian event carries
  `noise_multiplier / 2`, the noise std over the replace-one sensitivity
  `2 * C` of the clipped sum.

  Args:
    sampling: the round's sampler: 'all', 'poisson' or 'uniform'.
    num_clients: the number of clients in the population.
    noise_multiplier: the noise std divided by the clip norm `C`.
    cohort_size: clients per round, read only for 'uniform'.
    sampling_rate: inclusion probability, read only for 'poisson'.

  Returns:
    The event of one round and its relation, an entry of
    `NEIGHBORING_RELATIONS`.

  Raises:
    InputError: if `sampling` is unknown, `num_clients` is not a positive
      integer, `noise_multiplier` is not positive and finite, or the
      argument that `sampling` reads is missing or out of range.
  """
  _check_choice('sampling', sampling, SAMPLINGS)
  num_clients = _check_integer('num_clients', num_clients, minimum=1)
  _check_noise_multiplier(noise_multiplier)
  gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
  if sampling == 'all':
    return gaussian, 'add_or_remove'
  if sampling == 'poisson':
    _check_sampling_rate(sampling_rate)
    return (
        dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian),
        'add_or_remove',
    )

  cohort_size = _check_cohort_size(cohort_size, num_clients)
  # Replacing one client moves the clipped sum by up to 2C, while the RDP
  # accountant of dp_accounting 0.6.0 reads the noise multiplier of a
  # SampledWithoutReplacementDpEvent as noise std over that L2 sensitivity.
  # Halving it describes the simulator's std `noise_multiplier * C`.
  # TODO: drop the halving once dp_accounting scales the replace-one
  # sensitivity itself, as requested in
  # https://github.com/google/differential-privacy/issues/378.
  halved = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
  event = dp_accounting.SampledWithoutReplacementDpEvent(
      num_clients, cohort_size, halved
  )
  return event, 'replace_one'


class PrivacyAccountant:
  """Privacy spent by a run that repeats one round event.

  `step` records rounds, and `epsilon` composes the round event `rounds`
  times in a single call to a fresh dp_accounting accountant. One call
  composes the same rounds as one call per round, and it is much faster.
  Each dp_accounting `compose` call recomputes the round's RDP at every
  order, and the PLD accountant composes a repeated event in one step
  rather than convolving one PLD per round. The composed accountant is kept
  until the next `step`.
  """

  def __init__(
      self,
      event: dp_accounting.DpEvent,
      relation: str,
      accountant: str = 'rdp',
  ):
    """Check that dp_accounting can account for `event` under `relation`.

    Args:
      event: the DpEvent of one round, as `round_event` returns it.
      relation: the neighboring relation, an entry of
        `NEIGHBORING_RELATIONS`.
      accountant: 'rdp' or 'pld'.

    Raises:
      InputError: if `relation` or `accountant` is unknown, or if the chosen
        accountant does not support `event` under `relation`.
    """
    _check_choice('relation', relation, NEIGHBORING_RELATIONS)
    _check_choice('accountant', accountant, ACCOUNTANTS)
    if not _new_accountant(accountant, relation).supports(event):
      raise InputError(_unsupported_event_message(event, relation, accountant))
    self._event = event
    self._relation = relation
    self._accountant = accountant
    self._rounds = 0
    self._composed = None
    self._composed_state = None

  @property
  def event(self) -> dp_accounting.DpEvent:
    """The DpEvent of one round."""
    return self._event

  @property
  def relation(self) -> str:
    """The neighboring relation, an entry of `NEIGHBORING_RELATIONS`."""
    return self._relation

  @property
  def accountant(self) -> str:
    """The dp_accounting accountant in use: 'rdp' or 'pld'."""
    return self._accountant

  @property
  def rounds(self) -> int:
    """The number of rounds recorded so far."""
    return self._rounds

  def step(self, num_rounds: int = 1) -> None:
    """Record `num_rounds` more rounds of the round event.

    Raises:
      InputError: if `num_rounds` is not a non-negative integer.
    """
    self._rounds += _check_integer('num_rounds', num_rounds, minimum=0)

  def epsilon(self, delta: float) -> float:
    """Return the epsilon of all recorded rounds at `delta`.

    Args:
      delta: the target delta, strictly between 0 and 1.

    Returns:
      The epsilon that the chosen dp_accounting accountant reports, 0.0 when
      no round is recorded.

    Raises:
      InputError: if `delta` is not strictly between 0 and 1.
    """
    _check_delta(delta)
    if (self._accountant == 'pld' and self._rounds
        and type(self._event) is dp_accounting.GaussianDpEvent):
      return _gaussian_epsilon(self._event.noise_multiplier, self._relation,
                               self._rounds, delta)
    if (self._accountant == 'pld' and self._rounds
        and _is_poisson_gaussian(self._event)):
      return _poisson_gaussian_epsilon(self._event, self._relation,
                                       self._rounds, delta)
    # The PLD grid step depends on rounds and delta (see `_pld_step`).
    state = (self._rounds, delta if self._accountant == 'pld' else None)
    if self._composed_state != state:
      step = None
      if self._accountant == 'pld' and self._rounds:
        step = _pld_step(self._event, self._relation, self._rounds, delta)
      self._composed = _new_accountant(self._accountant, self._relation, step)
      # dp_accounting rejects a count of 0, and a fresh accountant reports 0.
      if self._rounds:
        self._composed.compose(self._event, self._rounds)
      self._composed_state = state
    return float(self._composed.get_epsilon(delta))


def _is_poisson_gaussian(event: dp_accounting.DpEvent) -> bool:
  """Return whether `event` is a Poisson-sampled Gaussian with noise."""
  return (type(event) is dp_accounting.PoissonSampledDpEvent
          and type(event.event) is dp_accounting.GaussianDpEvent
          and event.sampling_probability > 0
          and event.event.noise_multiplier > 0)


@functools.lru_cache(maxsize=8)
def _poisson_gaussian_pld(sampling_probability: float, noise_multiplier: float,
                          relation: str, step: float):
  """Return the PLD of one Poisson-sampled Gaussian round on a grid of `step`.

  Building it takes most of a PLD epsilon (0.7 s of 1 s at q = 0.01), and
  the grid step of most round counts is the same, so a run that requests
  the epsilon after every round builds it about once.
  """
  return pld.privacy_loss_distribution.from_gaussian_mechanism(
      standard_deviation=noise_multiplier,
      value_discretization_interval=step,
      sampling_prob=sampling_probability,
      neighboring_relation=_DP_ACCOUNTING_RELATIONS[relation])


def _poisson_gaussian_epsilon(event, relation: str, rounds: int,
                              delta: float) -> float:
  """Return the PLD epsilon of `rounds` Poisson-sampled Gaussian rounds.

  This composes exactly as dp_accounting's PLDAccountant does for
  `compose(event, rounds)`, identity first, so the value is the same; only
  the one-round PLD is reused between calls.
  """
  step = _pld_step(event, relation, rounds, delta)
  single = _poisson_gaussian_pld(
      float(event.sampling_probability), float(event.event.noise_multiplier),
      relation, step)
  composed = pld.privacy_loss_distribution.identity(
      value_discretization_interval=step).compose(single.self_compose(rounds))
  return float(composed.get_epsilon_for_delta(delta))


def _gaussian_epsilon(noise_multiplier: float, relation: str, rounds: int,
                      delta: float) -> float:
  """Return the exact epsilon of `rounds` Gaussian mechanisms at `delta`.

  The privacy loss of k Gaussian mechanisms of std `z` is that of one with
  std `z / sqrt(k)`, so no grid is needed: dp_accounting's
  `GaussianPrivacyLoss` gives delta(epsilon) in closed form, and a root
  search inverts it. The PLD accountant converges to the same value as its
  grid step shrinks, at a cost that grows with the epsilon.
  """
  # Replacing one client moves the sum by up to 2C, as in the PLD accountant.
  sensitivity = 2.0 if relation == 'replace_one' else 1.0
  loss = privacy_loss_mechanism.GaussianPrivacyLoss(
      noise_multiplier / math.sqrt(rounds), sensitivity=sensitivity)

  def excess(epsilon):
    return float(loss.get_delta_for_epsilon(epsilon)) - delta

  if excess(0.0) <= 0:
    return 0.0
  high = 1.0
  while excess(high) > 0:
    high *= 2
  return float(optimize.brentq(excess, 0.0, high, xtol=1e-12))


def epsilon_for(
    event: dp_accounting.DpEvent,
    relation: str,
    rounds: int,
    delta: float,
    accountant: str = 'rdp',
) -> float:
  """Return the epsilon of `rounds` repetitions of `event` at `delta`.

  Raises:
    InputError: as `PrivacyAccountant` and its `step` and `epsilon` do.
  """
  privacy_accountant = PrivacyAccountant(event, relation, accountant)
  privacy_accountant.step(rounds)
  return privacy_accountant.epsilon(delta)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling: str,
    num_clients: int,
    cohort_size: int | None = None,
    sampling_rate: float | None = None,
    accountant: str = 'rdp',
) -> float:
  """Find the smallest noise multiplier whose epsilon meets a target.

  A walk by factors of 2 from 1.0 brackets the result inside
  [1/16, 1000], then `dp_accounting.calibrate_dp_mechanism` searches the
  logarithm of the noise multiplier. The result is within a relative 1e-3
  of the smallest noise multiplier that meets the target, and its own
  epsilon after `rounds` rounds is at most `target_epsilon`.

  Args:
    target_epsilon: the epsilon to meet, positive.
    delta: the target delta, strictly between 0 and 1.
    rounds: the number of rounds of the run, at least 1.
    sampling: the round's sampler, as for `round_event`.
    num_clients: the number of clients in the population.
    cohort_size: clients per round, read only for 'uniform'.
    sampling_rate: inclusion probability, read only for 'poisson'.
    accountant: 'rdp' or 'pld'.

  Returns:
    The noise multiplier, the noise std divided by the clip norm.

  Raises:
    InputError: if an argument is invalid, if even a noise multiplier of
      1000 exceeds `target_epsilon`, or if one of 1/16 already meets it.
  """
  _check_target_epsilon(target_epsilon)
  _check_delta(delta)
  rounds = _check_integer('rounds', rounds, minimum=1)
  make_round_event = functools.partial(
      round_event,
      sampling=sampling,
      num_clients=num_clients,
      cohort_size=cohort_size,
      sampling_rate=sampling_rate,
  )
  probe_event, relation = make_round_event(noise_multiplier=1.0)
  # Raises InputError before the search if `accountant` cannot take the event.
  PrivacyAccountant(probe_event, relation, accountant)

  def make_run_event(noise_multiplier):
    event, _ = make_round_event(noise_multiplier=noise_multiplier)
    return dp_accounting.SelfComposedDpEvent(event, rounds)

  def make_accountant(noise_multiplier):
    step = None
    if accountant == 'pld':
      event, _ = make_round_event(noise_multiplier=noise_multiplier)
      step = _pld_step(event, relation, rounds, delta)
    return _new_accountant(accountant, relation, step)

  def epsilon_at(noise_multiplier):
    # As `PrivacyAccountant.epsilon` reports it, exact for a plain Gaussian.
    event, _ = make_round_event(noise_multiplier=noise_multiplier)
    return epsilon_for(event, relation, rounds, delta, accountant)

  low, high = _bracket_noise_multiplier(epsilon_at, target_epsilon, rounds)
  # The search uses the PLD step of `low`, the coarsest in the bracket, and
  # the check below uses each result's own step, as `PrivacyAccountant`
  # does.
  log_noise_multiplier = dp_accounting.calibrate_dp_mechanism(
      make_fresh_accountant=functools.partial(make_accountant, low),
      make_event_from_param=lambda log_z: make_run_event(math.exp(log_z)),
      target_epsilon=target_epsilon,
      target_delta=delta,
      bracket_interval=dp_accounting.ExplicitBracketInterval(
          math.log(low), math.log(high)
      ),
      tol=math.log1p(_CALIBRATION_RTOL),
  )
  noise_multiplier = math.exp(log_noise_multiplier)
  if accountant == 'pld':
    for _ in range(100):
      if epsilon_at(noise_multiplier) <= target_epsilon:
        break
      noise_multiplier *= 1 + _CALIBRATION_RTOL / 4
  return noise_multiplier


def would_exceed(
    accountant: PrivacyAccountant, target_epsilon: float, delta: float
) -> bool:
  """Tell whether one more round would take epsilon above `target_epsilon`.

  The check steps a deep copy, so `accountant` itself is left unchanged.

  Raises:
    InputError: if `target_epsilon` is not positive and finite, or `delta`
      is not strictly between 0 and 1.
  """
  _check_target_epsilon(target_epsilon)
  next_round = copy.deepcopy(accountant)
  next_round.step()
  return next_round.epsilon(delta) > target_epsilon


def describe_guarantee(
    epsilon: float,
    delta: float,
    relation: str,
    unit: str,
    *,
    sampling: str | None = None,
) -> str:
  """Write the (epsilon, delta) guarantee as one sentence.

  Epsilon is rounded up to two decimals, so the sentence never states a
  smaller epsilon than the one given. For example, epsilon 2.1014 at delta
  1e-5 under add-or-remove with Poisson sampling reads "(2.11, 1e-05)-DP at
  the client level under add-or-remove-one-client neighboring datasets,
  Poisson sampling".

  Args:
    epsilon: the epsilon, non-negative and finite.
    delta: the delta, strictly between 0 and 1.
    relation: an entry of `DESCRIBED_RELATIONS`: `NEIGHBORING_RELATIONS`
      or 'zero_out' (the unit takes part with a zero update).
    unit: the protected unit, 'client' or 'example'.
    sampling: the round's sampler, appended when given.

  Returns:
    The sentence, without a final period.

  Raises:
    InputError: if an argument is out of range or not a known choice.
  """
  if not (math.isfinite(epsilon) and epsilon >= 0):
    raise InputError(
        f'`epsilon` must be non-negative and finite; got {epsilon}.'
    )
  _check_delta(delta)
  _check_choice('relation', relation, DESCRIBED_RELATIONS)
  _check_choice('unit', unit, UNITS)
  # The inner round() drops float noise such as 2.1 * 100 = 210.00000000000003
  # before ceil() rounds up.
  shown_epsilon = math.ceil(round(epsilon * 100, 9)) / 100
  neighbors = _NEIGHBORING_PHRASES[relation].format(unit=unit)
  sentence = (
      f'({shown_epsilon:.2f}, {delta:g})-DP at the {unit} level under '
      f'{neighbors} neighboring datasets'
  )
  if sampling is not None:
    _check_choice('sampling', sampling, SAMPLINGS)
    sentence += f', {_SAMPLING_PHRASES[sampling]}'
  return sentence


def _new_accountant(
    accountant: str, relation: str, pld_step: float | None = None
) -> dp_accounting.PrivacyAccountant:
  neighboring_relation = _DP_ACCOUNTING_RELATIONS[relation]
  if accountant == 'pld':
    return pld.PLDAccountant(
        neighboring_relation=neighboring_relation,
        value_discretization_interval=pld_step or _PLD_DEFAULT_STEP)
  return rdp.RdpAccountant(neighboring_relation=neighboring_relation)


def _pld_step(
    event: dp_accounting.DpEvent, relation: str, rounds: int, delta: float
) -> float:
  """Return the PLD grid step for `rounds` rounds of `event`.

  The step is the larger of dp_accounting's default and
  `_PLD_STEP_PER_EPSILON` times the RDP epsilon per round (see
  `_PLD_STEP_PER_EPSILON`). An event that the RDP accountant does not
  support gets the default.

  Raises:
    InputError: if the round's privacy loss is too large for the PLD grid.
  """
  bound = _new_accountant('rdp', relation)
  if not bound.supports(event):
    return _PLD_DEFAULT_STEP
  bound.compose(event, rounds)
  rdp_epsilon = bound.get_epsilon(delta)
  step = max(_PLD_DEFAULT_STEP, _PLD_STEP_PER_EPSILON * rdp_epsilon / rounds)
  if not step <= _PLD_MAX_STEP:
    raise InputError(
        f'The PLD accountant cannot represent {event}: its RDP epsilon is '
        f'{rdp_epsilon:.4g} after {rounds} rounds, above '
        f'{_PLD_MAX_STEP / _PLD_STEP_PER_EPSILON:g} per round, so the '
        'privacy loss grid would not fit in memory. Use accountant=rdp, '
        'whose epsilon is that upper bound, or a larger noise multiplier.'
    )
  return step


def _unsupported_event_message(event, relation, accountant) -> str:
  if accountant == 'pld' and isinstance(
      event, dp_accounting.SampledWithoutReplacementDpEvent
  ):
    return (
        'The PLD accountant of dp_accounting does not support sampling '
        'without replacement (`sampling=uniform`). Use `accountant=rdp`.'
    )
  return (
      f'The {accountant.upper()} accountant of dp_accounting does not '
      f'support {event} under `relation={relation}`. Build the event with '
      '`round_event`, which returns the relation to use.'
  )


def _bracket_noise_multiplier(epsilon_at, target_epsilon, rounds):
  """Return (low, high) with epsilon_at(low) > target >= epsilon_at(high)."""
  highest_epsilon = epsilon_at(_MAX_NOISE_MULTIPLIER)
  if highest_epsilon > target_epsilon:
    raise InputError(
        f'`target_epsilon`={target_epsilon} is unreachable: even '
        f'noise_multiplier={_MAX_NOISE_MULTIPLIER:g} gives epsilon '
        f'{highest_epsilon:.4g} after {rounds} rounds. Raise target_epsilon '
        'or delta, run fewer rounds, or sample fewer clients per round.'
    )
  noise_multiplier = 1.0
  if epsilon_at(noise_multiplier) > target_epsilon:
    while True:
      higher = min(2 * noise_multiplier, _MAX_NOISE_MULTIPLIER)
      if epsilon_at(higher) <= target_epsilon:
        return noise_multiplier, higher
      noise_multiplier = higher

  while noise_multiplier > _MIN_NOISE_MULTIPLIER:
    lower = noise_multiplier / 2
    if epsilon_at(lower) > target_epsilon:
      return lower, noise_multiplier
    noise_multiplier = lower
  raise InputError(
      f'`target_epsilon`={target_epsilon} is met even by noise_multiplier='
      f'{_MIN_NOISE_MULTIPLIER:g}, the smallest that the calibration '
      'searches. Lower target_epsilon, or set noise_multiplier directly.'
  )


def _check_choice(name, value, choices) -> None:
  if value not in choices:
    raise InputError(f'`{name}` must be one of {choices}; got {value!r}.')


def _check_integer(name, value, *, minimum) -> int:
  """Return `value` as a Python int; numpy integers become ints."""
  is_integer = isinstance(value, numbers.Integral) and not isinstance(
      value, (bool, np.bool_)
  )
  if not is_integer or value < minimum:
    raise InputError(
        f'`{name}` must be an integer of at least {minimum}; got {value!r}.'
    )
  return int(value)


def _check_noise_multiplier(noise_multiplier) -> None:
  if noise_multiplier == 0:
    raise InputError(
        '`noise_multiplier` is 0, and without noise no finite (epsilon, '
        'delta) guarantee exists. Set a positive noise_multiplier.'
    )
  if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
    raise InputError(
        '`noise_multiplier` must be positive and finite; got '
        f'{noise_multiplier}.'
    )


def _check_sampling_rate(sampling_rate) -> None:
  if sampling_rate is None or not 0.0 < sampling_rate <= 1.0:
    raise InputError(
        f'`sampling_rate` must be in (0, 1] for `sampling=poisson`; got '
        f'{sampling_rate}.'
    )


def _check_cohort_size(cohort_size, num_clients) -> int:
  if cohort_size is None:
    raise InputError(
        '`cohort_size` is missing. Set it to the number of clients per round '
        'for `sampling=uniform`.'
    )
  cohort_size = _check_integer('cohort_size', cohort_size, minimum=1)
  if cohort_size > num_clients:
    raise InputError(
        f'`cohort_size` must be at most `num_clients` ({num_clients}); got '
        f'{cohort_size}.'
    )
  return cohort_size


def _check_delta(delta) -> None:
  if not 0.0 < delta < 1.0:
    raise InputError(
        f'`delta` must be strictly between 0 and 1; got {delta}.'
    )


def _check_target_epsilon(target_epsilon) -> None:
  if not (math.isfinite(target_epsilon) and target_epsilon > 0):
    raise InputError(
        f'`target_epsilon` must be positive and finite; got {target_epsilon}.'
    )
