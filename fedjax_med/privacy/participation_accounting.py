"""Privacy accounting from the participation a simulation produced.

`accounting.round_event` assumes that every round samples from the whole
population with a fixed rate or cohort size. Availability, dropouts,
stragglers and asynchronous aggregation change who takes part, so this
module builds the accounting from what the run recorded instead. It gives
two claims, each valid under the assumptions listed with it.

Both claims assume central noise: each contribution is clipped to L2 norm
`C` after decoding (so compression cannot raise the sensitivity), each
server step adds Gaussian noise of std `noise_multiplier * C` to the sum,
and the sum is divided by a fixed denominator. They also assume that who
is available, who drops out and how long a client takes do not depend on
any client's training data. Fixed `num_steps` keeps the virtual clock
independent of the data, but `num_epochs` makes a client's time depend on
its number of examples.

1. `contribution_epsilon`, no amplification: a client that contributed k
   times has taken part in k Gaussian mechanisms, whoever chose it and
   however. This holds for any data-independent participation, FedBuff
   included. Under replace-one-client neighboring (the participation
   pattern stays the same and one client's data changes) the sum moves by
   up to 2C. dp_accounting's PLD accountant (0.6.0) accounts for that
   sensitivity itself under replace-one, and its RDP accountant does not,
   so the RDP event carries multiplier `noise_multiplier / 2`. Under
   add-or-remove-one-client neighboring the
   multiplier is `noise_multiplier`, which is valid only when removing a
   client does not change who else takes part: independent (Poisson)
   inclusion, not a fixed-size cohort.
2. `sampled_epsilon`, amplification by sampling, which also needs the
   cohort to stay secret from whoever sees the released models.

   * Poisson sampling at rate q with availability: a client is included
     in a round only if it is available (an independent coin with
     probability at most `max_availability`) and drawn, so its inclusion
     probability is at most `q * max_availability`. Dropouts and dropped
     stragglers only remove contributions, which cannot raise epsilon.
     Add-or-remove neighboring.
     NOTE: under `schedule=office_hours` who is online depends on the
     clock, and the clock on the speeds of earlier cohorts, so the
     availability coins are not independent of earlier rounds' sampling.
     The bound treats them as independent, which is unproven there.
   * Fixed-size sampling among the available clients: conditioned on the
     set of available clients (independent of the data), round t draws
     `cohort_size` of `num_available[t]` clients without replacement. The
     rounds are composed with their recorded `num_available`. Replace-one
     neighboring, with the same halving as `accounting.round_event`.

   FedBuff gets no amplified claim here: whether a client is picked
   depends on which clients are still in flight.

With distributed noise, a round in which fewer than
`min_reporting_clients` clients report adds less noise than planned, and
neither claim holds for it; the round metric `below_min_reporting` flags
such rounds.
"""

import collections
from typing import NamedTuple

import dp_accounting
import numpy as np

from fedjax_med.errors import InputError
from fedjax_med.privacy import accounting


class Guarantee(NamedTuple):
  """One privacy claim about a run.

  Attributes:
    epsilon: the epsilon at `delta`.
    delta: the target delta.
    relation: 'add_or_remove' or 'replace_one'.
    claim: 'contributions' (no amplification) or 'poisson' or 'uniform'
      (amplified by sampling).
    rounds: the rounds or server steps accounted for.
    max_contributions: the maximum number of contributions of one client,
      for the 'contributions' claim; None otherwise.
  """

  epsilon: float
  delta: float
  relation: str
  claim: str
  rounds: int
  max_contributions: int | None = None


def contribution_epsilon(
    contributions: np.ndarray,
    *,
    noise_multiplier: float,
    delta: float,
    relation: str = 'replace_one',
    accountant: str = 'rdp',
) -> Guarantee:
  """Return the no-amplification epsilon of the most active client.

  Args:
    contributions: `[clients]` count of the rounds in which each client's
      update entered the aggregate, as in `ServerState.contributions`.
    noise_multiplier: noise std on the sum divided by the clip norm.
    delta: the target delta.
    relation: 'replace_one' (any data-independent participation) or
      'add_or_remove' (only for independent inclusion of each client).
    accountant: 'rdp' or 'pld'.

  Raises:
    InputError: for counts that are not non-negative integers, or an
      invalid multiplier, delta, relation or accountant.
  """
  counts = np.asarray(contributions)
  if counts.ndim != 1 or counts.size == 0 or not (
      np.issubdtype(counts.dtype, np.integer) and np.all(counts >= 0)):
    raise InputError(
        '`contributions` must be a non-empty [clients] array of '
        f'non-negative integers; got dtype {counts.dtype}, shape '
        f'{counts.shape}.'
    )
  accounting._check_choice('relation', relation,
                           accounting.NEIGHBORING_RELATIONS)
  accounting._check_noise_multiplier(noise_multiplier)
  max_count = int(counts.max())
  accounting._check_choice('accountant', accountant, accounting.ACCOUNTANTS)
  # Replace-one moves the sum by up to 2C. The PLD accountant of
  # dp_accounting 0.6.0 scales the Gaussian event by that sensitivity
  # itself, and its RDP accountant does not.
  halve = relation == 'replace_one' and accountant == 'rdp'
  multiplier = noise_multiplier / 2 if halve else noise_multiplier
  event = dp_accounting.GaussianDpEvent(multiplier)
  epsilon = accounting.epsilon_for(event, relation, max_count, delta,
                                   accountant)
  return Guarantee(epsilon, delta, relation, 'contributions', max_count,
                   max_count)


def sampled_epsilon(
    *,
    sampling: str,
    noise_multiplier: float,
    delta: float,
    num_available: np.ndarray,
    sampling_rate: float | None = None,
    max_availability: float = 1.0,
    cohort_size: int | None = None,
    accountant: str = 'rdp',
) -> Guarantee:
  """Return the epsilon amplified by sampling for the recorded rounds.

  Args:
    sampling: 'poisson' or 'uniform' (fixed-size among the available).
    noise_multiplier: noise std on the sum divided by the clip norm.
    delta: the target delta.
    num_available: `[rounds]` clients available in each round, the round
      metric `num_available`; its length is the number of rounds.
    sampling_rate: q of Poisson sampling.
    max_availability: the largest availability probability of any client
      in any slot (1.0 without availability), for 'poisson'.
    cohort_size: the cohort of 'uniform'.
    accountant: 'rdp' or 'pld' ('uniform' needs 'rdp').

  Raises:
    InputError: for an unknown `sampling`, a missing or out-of-range
      argument, or an accountant that cannot handle the events.
  """
  available = np.asarray(num_available)
  if available.ndim != 1 or not np.all(available >= 0) or not np.all(
      available == np.round(available)):
    raise InputError(
        '`num_available` must be a [rounds] array of non-negative whole '
        f'counts; got shape {available.shape} and values {available[:5]}.'
    )
  accounting._check_delta(delta)
  accounting._check_noise_multiplier(noise_multiplier)
  accounting._check_choice('accountant', accountant, accounting.ACCOUNTANTS)
  rounds = int(available.size)
  if sampling == 'poisson':
    accounting._check_sampling_rate(sampling_rate)
    if not 0.0 < max_availability <= 1.0:
      raise InputError(
          f'`max_availability` must be in (0, 1]; got {max_availability}.'
      )
    rate = sampling_rate * max_availability
    event = dp_accounting.PoissonSampledDpEvent(
        rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    epsilon = accounting.epsilon_for(event, 'add_or_remove', rounds, delta,
                                     accountant)
    return Guarantee(epsilon, delta, 'add_or_remove', 'poisson', rounds)
  if sampling != 'uniform':
    raise InputError(
        f"`sampling` must be 'poisson' or 'uniform'; got {sampling!r}."
    )
  if not (isinstance(cohort_size, (int, np.integer)) and cohort_size >= 1):
    raise InputError(
        f'`cohort_size` must be a positive integer; got {cohort_size!r}.'
    )
  if accountant != 'rdp':
    raise InputError(
        'The PLD accountant of dp_accounting does not support sampling '
        'without replacement; use accountant="rdp".'
    )
  halved = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
  events = []
  for population, count in sorted(collections.Counter(
      int(value) for value in available).items()):
    if population == 0:
      continue
    drawn = min(cohort_size, population)
    if drawn == population:
      # Everyone available takes part: no amplification in this round.
      round_event = halved
    else:
      round_event = dp_accounting.SampledWithoutReplacementDpEvent(
          population, drawn, halved)
    events.append(dp_accounting.SelfComposedDpEvent(round_event, count))
  if not events:
    epsilon = 0.0
  else:
    composed = accounting._new_accountant('rdp', 'replace_one')
    composed.compose(dp_accounting.ComposedDpEvent(events))
    epsilon = float(composed.get_epsilon(delta))
  return Guarantee(epsilon, delta, 'replace_one', 'uniform', rounds)
