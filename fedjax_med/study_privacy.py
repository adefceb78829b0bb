"""Client-level DP of a study: settings, noise calibration and accounting.

This module turns the `privacy` section of an `ExperimentConfig` into the
round's `PrivacySettings` and a dp-accounting accountant built from the
sampler that the run actually uses, so there is no separate sampling rate
for a user to get wrong. Every round is counted, skipped ones included.

What the guarantee covers: the sequence of noised aggregates, at the client
level (one hospital's whole data set added or removed, or replaced under
fixed-size sampling). What it does not cover: the per-round metrics and the
summary (per-hospital accuracy, counts of skipped rounds, excluded or
clipped updates, the train loss), which are computed without noise.
"""

import copy
import math
from typing import Any

import dp_accounting
import numpy as np
from scipy import stats

from fedjax_med import config as config_lib
from fedjax_med import study_participation
from fedjax_med.errors import InputError
from fedjax_med.privacy import accounting
from fedjax_med.privacy import example_accounting
from fedjax_med.privacy import mechanisms
from fedjax_med.secure import aggregate as secure_aggregate
from fedjax_med.secure import discrete_gaussian
from fedjax_med.secure import protocol as secure_protocol

def not_covered(config: config_lib.ExperimentConfig) -> str:
  """Return the assumption that the run's metrics are released unnoised."""
  score = ('C-index' if config.data.dataset in config_lib.SURVIVAL_DATASETS
           else 'accuracy')
  return (
      f'Per-round metrics and the summary (per-client {score}, skipped '
      'rounds, excluded, clipped or truncated updates, train loss) are '
      'computed without noise and are not covered by the guarantee.'
  )


# With closed schedule slots, the slots that the rounds visit are followed
# one round at a time for at most this many rounds.
_MAX_TRACED_ROUNDS = 100_000


def is_private(config: config_lib.ExperimentConfig) -> bool:
  return config.privacy.noise != 'none'


def _sampling_args(config, num_clients: int) -> dict[str, Any]:
  sampling = config.sampling
  return {
      'sampling': sampling.sampling,
      'num_clients': num_clients,
      'cohort_size': sampling.cohort_size,
      'sampling_rate': sampling.sampling_rate,
  }


def expected_fraction(config, num_clients: int) -> float:
  """Return the expected fraction of the population sampled in a round."""
  sampling = config.sampling
  if sampling.sampling == 'uniform':
    return sampling.cohort_size / num_clients
  if sampling.sampling == 'poisson':
    return sampling.sampling_rate
  return 1.0


def expected_reporting_clients(config, train_counts: np.ndarray) -> float:
  """Return the expected number of sampled, online clients that report.

  Clients offline under `participation.availability` or its schedule
  cannot be sampled, and `sampling.dropout_rate` removes a share of the
  rest. Stragglers dropped at a deadline are not counted out, because their
  share depends on the speeds drawn.

  Args:
    config: the study.
    train_counts: `[clients]` training rows, for the length of a round
      under `client.local_epochs`.
  """
  sampling = config.sampling
  num_clients = len(train_counts)
  settings = study_participation.participation_settings(config, num_clients)
  online = None if settings is None else settings.availability
  if online is None:
    expected = expected_fraction(config, num_clients) * num_clients
  else:
    online = np.asarray(online, np.float64).reshape(num_clients, -1)
    rounds = np.ones(1)
    if online.shape[1] > 1:
      slots, rounds = _visited_slots(config, train_counts, online,
                                     settings.seconds_per_slot)
      online = online[:, slots]
    # NOTE: under a fixed cohort the clients online in a round count as
    # binomial at their mean probability.
    per_round = online.mean(axis=0)
    if sampling.sampling == 'uniform':
      counts = np.arange(num_clients + 1)
      expected = float(np.average([
          np.sum(np.minimum(counts, sampling.cohort_size)
                 * stats.binom.pmf(counts, num_clients, p))
          for p in per_round], weights=rounds))
    else:
      rate = sampling.sampling_rate if sampling.sampling == 'poisson' else 1.0
      expected = (rate * float(np.average(per_round, weights=rounds))
                  * num_clients)
  return expected * (1.0 - sampling.dropout_rate)


def _visited_slots(config, train_counts, availability, seconds_per_slot):
  """Return the schedule slots the rounds visit and the rounds in each.

  A round lasts `server_seconds` plus the local steps at the median speed,
  cut at a deadline that drops late clients. A round due in a slot where
  every client's probability is 0 starts at the next slot with one above
  0, as `participation.open_slot_start` moves the clock. A round that finds
  no client online, which happens with probability e = prod_i (1 - p_i)
  in a slot, moves the clock to the next slot
  (`participation.advance_clock`). So a slot entered with room for L
  rounds holds on average (1 - (1 - e)**L) / e of them, and the walk goes
  on from the slot's end when more likely than not some round was empty.
  NOTE: link times and the spread of speeds are left out, so this is an
  estimate of the slots the clock visits.

  Returns:
    `(slots, rounds)`: the slot index of each visit and the expected number
    of rounds it holds, as float64 weights that sum to `server.rounds`.
  """
  part, client = config.participation, config.client
  num_slots = availability.shape[1]
  seconds = part.server_seconds
  if part.steps_per_second is not None:
    steps = client.local_steps
    if client.local_epochs is not None:
      rows = float(np.median(train_counts))
      steps = client.local_epochs * math.ceil(rows / client.batch_size)
    compute = steps / part.steps_per_second
    if part.deadline_s is not None and part.straggler_policy != 'wait':
      compute = min(compute, part.deadline_s)
    seconds += compute
  rounds = config.server.rounds
  is_open = np.max(availability, axis=0) > 0
  empty = np.prod(1.0 - availability.astype(np.float64), axis=0)
  if is_open.all() and not empty.any():
    visited = (np.floor(np.arange(rounds) * seconds / seconds_per_slot)
               .astype(int) % num_slots)
    return visited, np.ones(rounds)
  # The clock's path has no closed form here, so it is followed one slot
  # visit at a time. The first _MAX_TRACED_ROUNDS visits stand for the
  # rest, in proportion.
  clock, left, slots, counts = 0.0, float(rounds), [], []
  while left > 0 and len(slots) < _MAX_TRACED_ROUNDS:
    index = math.floor(clock / seconds_per_slot)
    while not is_open[index % num_slots]:
      index += 1
      clock = index * seconds_per_slot
    slot_end = (index + 1) * seconds_per_slot
    room = left if seconds <= 0 else min(
        max(math.ceil((slot_end - clock) / seconds), 1), left)
    e = float(empty[index % num_slots])
    # expm1 and log1p, as 1 - (1 - e)**L is 0 in float64 for e below 1e-16.
    expected_rounds = room if e == 0 else (
        1.0 if e >= 1 else -math.expm1(room * math.log1p(-e)) / e)
    slots.append(index % num_slots)
    counts.append(expected_rounds)
    left -= expected_rounds
    if (1 - e)**room >= 0.5:
      clock += room * seconds
    else:
      clock = slot_end
  counts = np.asarray(counts)
  return np.asarray(slots, int), counts * (rounds / counts.sum())


def resolve_noise_multiplier(config, num_clients: int) -> float:
  """Return the configured noise multiplier, or calibrate it to the target."""
  privacy = config.privacy
  if privacy.target_epsilon is None or privacy.target_mode != 'calibrate':
    return privacy.noise_multiplier
  sampling_args = _sampling_args(config, num_clients)
  if privacy.noise == 'local':
    # The local release is a Gaussian of multiplier z / 2 in every round.
    sampling_args['sampling'] = 'all'
  noise_multiplier = accounting.calibrate_noise_multiplier(
      target_epsilon=privacy.target_epsilon,
      delta=privacy.delta,
      rounds=config.server.rounds,
      accountant=privacy.accountant,
      **sampling_args,
  )
  return 2 * noise_multiplier if privacy.noise == 'local' else noise_multiplier


def privacy_settings(
    config, train_counts: np.ndarray, noise_multiplier: float
) -> mechanisms.PrivacySettings:
  """Build the round's settings, with its fixed denominator.

  The denominator is the expected total weight of the clients that report:
  the expected fraction of clients that are online, sampled and do not
  drop out (`expected_reporting_clients`), times the population's total
  weight (one per client for the uniform mean, or `sum min(n / weight_cap,
  1)` for capped FedAvg).
  """
  privacy, server = config.privacy, config.server
  num_clients = len(train_counts)
  if server.aggregator == 'fedavg' and server.weight_cap is not None:
    total_weight = float(np.sum(np.minimum(train_counts / server.weight_cap, 1)))
  else:
    total_weight = float(num_clients)
  reporting = expected_reporting_clients(config, train_counts) / num_clients
  denominator = max(reporting * total_weight, 1e-12)
  min_reporting = privacy.min_reporting_clients
  if privacy.noise == 'distributed' and min_reporting is None:
    min_reporting = config.sampling.cohort_size or num_clients
  expected_clients = max(reporting * num_clients, 1e-12)
  count_noise_stddev = privacy.count_noise_stddev
  if count_noise_stddev is None:
    # Andrew et al. (2021) suggest the expected number of clients / 20.
    count_noise_stddev = expected_clients / 20
  if not is_private(config):
    count_noise_stddev = 0.0
  return mechanisms.PrivacySettings(
      clip_norm=privacy.clip_norm,
      noise_multiplier=noise_multiplier if is_private(config) else 0.0,
      noise_kind=privacy.noise,
      clipping=privacy.clipping,
      weight_cap=server.weight_cap if server.aggregator == 'fedavg' else None,
      denominator=denominator,
      min_reporting_clients=min_reporting,
      adaptive_clipping=privacy.adaptive_clipping,
      target_quantile=privacy.target_quantile,
      clip_learning_rate=privacy.clip_learning_rate,
      count_noise_stddev=count_noise_stddev,
      expected_clients=expected_clients,
  )


def build_accountant(
    config, num_clients: int, noise_multiplier: float
) -> accounting.PrivacyAccountant | None:
  """Return an accountant for one round of this run, or None without DP."""
  if not is_private(config):
    return None
  if config.privacy.noise == 'local':
    # Each client's own release, every round it is sampled, with no credit
    # for sampling: replacing the client's data moves its clipped update by
    # up to 2C, so the Gaussian has multiplier z / 2 for unit sensitivity.
    return accounting.PrivacyAccountant(
        dp_accounting.GaussianDpEvent(noise_multiplier / 2), 'add_or_remove',
        config.privacy.accountant,
    )
  event, relation = accounting.round_event(
      noise_multiplier=noise_multiplier, **_sampling_args(config, num_clients)
  )
  return accounting.PrivacyAccountant(
      event, relation, config.privacy.accountant
  )


def _assumptions(config, settings, rounds_below_min: int) -> list[str]:
  privacy = config.privacy
  assumptions = [not_covered(config)]
  if privacy.noise == 'local':
    assumptions.append(
        "Local noise: the guarantee is local DP of each client's own noisy "
        'update in every round, with no credit for sampling, against a '
        'change of that client\'s whole data set (sensitivity 2 * clip_norm).'
    )
  if privacy.noise == 'distributed' and config.secure_aggregation.enabled:
    assumptions.append(
        'Under secure aggregation each client adds discrete Gaussian noise '
        'to its integer-encoded update. The accounting is the zCDP bound of '
        'Kairouz, Liu and Steinke (2021, Proposition 14) for the sum of the '
        'guaranteed survivors, with no credit for sampling.'
    )
  if privacy.noise == 'distributed':
    assumptions.append(
        f'Distributed noise assumes at least {settings.min_reporting_clients} '
        f'clients report in every round; {rounds_below_min} rounds had fewer.'
    )
  if config.sampling.sampling == 'poisson':
    assumptions.append(
        'The Poisson event assumes no sampled client is cut; rounds with '
        '`num_overflow` > 0 in metrics.jsonl depart from it.'
    )
  return assumptions


def _guarantee(config, settings, accountant, epsilon, rounds_below_min):
  privacy = config.privacy
  if rounds_below_min:
    return (
        f'No valid guarantee: {rounds_below_min} rounds had fewer than '
        f'{settings.min_reporting_clients} reporting clients, so their '
        'distributed noise was below the accounted level'
    )
  if privacy.noise == 'local':
    return accounting.describe_guarantee(
        epsilon, privacy.delta, 'replace_one', 'client'
    ) + ', local DP of each client\'s own release'
  if privacy.noise == 'distributed' and config.secure_aggregation.enabled:
    # The discrete Gaussian's zCDP bound takes no credit for sampling, and
    # naming the sampler would read as amplification.
    return accounting.describe_guarantee(
        epsilon, privacy.delta, _stated_relation(config, accountant),
        'client') + ', no amplification by sampling'
  return accounting.describe_guarantee(
      epsilon, privacy.delta, _stated_relation(config, accountant), 'client',
      sampling=config.sampling.sampling,
  )


def _stated_relation(config, accountant) -> str:
  """Return the neighboring relation that the client-level epsilon covers.

  Distributed noise is accounted as one Gaussian of the planned std. A
  client that is removed also takes its share of the noise away, so the
  two neighbors' noise differs and add-or-remove accounting is not an
  upper bound. It is under zero-out neighbors, where the client still
  takes part (and adds its noise) with a zero update.
  """
  if config.privacy.noise == 'local':
    return 'replace_one'
  if (config.privacy.noise == 'distributed'
      and accountant.relation == 'add_or_remove'):
    return 'zero_out'
  return accountant.relation


def describe(
    config, settings: mechanisms.PrivacySettings,
    accountant: accounting.PrivacyAccountant | None, rounds_below_min: int,
) -> dict[str, Any]:
  """Return the summary's privacy section: the guarantee and its limits."""
  if accountant is None:
    return {'private': False}
  privacy = config.privacy
  epsilon = accountant.epsilon(privacy.delta) if accountant.rounds else 0.0
  relation = _stated_relation(config, accountant)
  section = {
      'private': True,
      'unit': 'client',
      'guarantee_holds': rounds_below_min == 0,
      'epsilon': epsilon,
      'delta': privacy.delta,
      'rounds_accounted': accountant.rounds,
      'noise_multiplier': settings.noise_multiplier,
      'noise': privacy.noise,
      'clip_norm': privacy.clip_norm,
      'clipping': privacy.clipping,
      'adaptive_clipping': privacy.adaptive_clipping,
      'accountant': privacy.accountant,
      'neighboring_relation': relation,
      'guarantee': _guarantee(
          config, settings, accountant, epsilon, rounds_below_min
      ),
      'assumptions': _assumptions(config, settings, rounds_below_min),
  }
  if relation == 'zero_out':
    section['assumptions'].append(
        'The guarantee is for zero-out neighbors: the protected client '
        'takes part with a zero update and still adds its share of the '
        'noise. If it is absent instead, the sum also loses that noise, '
        'and the epsilon is not an upper bound under add-or-remove.'
    )
  if settings.sums_noise:
    section['denominator'] = settings.denominator
    section['expected_reporting_clients'] = settings.expected_clients
  if privacy.adaptive_clipping:
    section['count_noise_stddev'] = settings.count_noise_stddev
    section['update_noise_multiplier'] = _update_noise_multiplier(settings)
  return section


def describe_example_level(
    config, train_counts: np.ndarray, rounds_run: int, client_names,
) -> dict[str, Any]:
  """Return the summary's example-level (DP-SGD) section.

  Every client is charged `rounds_run` rounds, a bound that is valid whatever
  the sampler, and `steps_per_round` equal to the scan length, which
  overstates epsilon for clients that take fewer steps in epochs mode.
  """
  client = config.client
  if not client.dp_sgd:
    return {'private': False}
  if client.local_epochs is None:
    steps = client.local_steps
  else:
    steps = client.local_epochs * -(-int(train_counts.max()) // client.batch_size)
  worst = example_accounting.worst_client_epsilon(
      train_counts.tolist(),
      batch_size=client.batch_size,
      noise_multiplier=client.example_noise_multiplier,
      steps_per_round=steps,
      rounds_participated=rounds_run,
      delta=config.privacy.delta,
      accountant=config.privacy.accountant,
  )
  assumptions = [
      not_covered(config),
      'Local batches are drawn by shuffling within epochs but accounted '
      'as Poisson subsampling with rate batch_size / num_examples, a '
      'common approximation that can understate epsilon.',
      f'Each client is charged all {rounds_run} rounds.',
  ]
  # Each client's rows are its own dataset here, so delta is judged
  # against the smallest one, as the client-level delta against clients.
  with_rows = [(int(count), name) for count, name in
               zip(train_counts, client_names) if count > 0]
  fewest, smallest = min(with_rows) if with_rows else (0, None)
  delta_too_large = fewest > 0 and config.privacy.delta * fewest >= 1
  if delta_too_large:
    assumptions.append(
        f'delta = {config.privacy.delta:g} is not below 1 / {fewest} rows '
        f'of the smallest client ({smallest}): a mechanism that publishes '
        'one row outright with probability delta meets such a guarantee. '
        'Use delta well below 1 / rows.')
  return {
      'private': True,
      'unit': 'example',
      'epsilon': worst.epsilon,
      'delta': config.privacy.delta,
      'worst_client': client_names[worst.client_index],
      'worst_client_examples': worst.num_examples,
      'noise_multiplier': client.example_noise_multiplier,
      'clip_norm': client.example_clip_norm,
      'guarantee': accounting.describe_guarantee(
          worst.epsilon, config.privacy.delta, 'add_or_remove', 'example'
      ) + f' (worst client: {client_names[worst.client_index]})',
      'smallest_client_examples': fewest,
      'delta_too_large': delta_too_large,
      'assumptions': assumptions,
  }


def _update_noise_multiplier(settings: mechanisms.PrivacySettings) -> float:
  """Return the multiplier of the update noise; larger under adaptive clipping."""
  if settings.adaptive_clipping:
    return mechanisms.adaptive_noise_multiplier(
        settings.noise_multiplier, settings.count_noise_stddev
    )
  return settings.noise_multiplier


# An epsilon beyond this is meaningless. Above about 1.8e306, the
# 100 * epsilon in the guarantee's rounding also overflows a float.
_LARGEST_EPSILON = 1e300


def check_against_data(config, num_clients: int, accountant) -> None:
  """Raise InputError for privacy settings that cannot work on this data."""
  privacy = config.privacy
  if (privacy.noise == 'distributed' and privacy.min_reporting_clients
      and privacy.min_reporting_clients > num_clients):
    raise InputError(
        f'`privacy.min_reporting_clients` ({privacy.min_reporting_clients}) '
        f'is larger than the population of {num_clients} clients.'
    )
  if accountant is not None and accountant.rounds == 0:
    # A run that stops at a target epsilon may end after one round.
    stops = privacy.target_epsilon is not None and privacy.target_mode == 'stop'
    planned = 1 if stops else config.server.rounds
    whole_run = copy.deepcopy(accountant)
    whole_run.step(planned)
    # dp_accounting divides by the multiplier squared, which underflows.
    with np.errstate(divide='ignore', over='ignore'):
      epsilon = whole_run.epsilon(privacy.delta)
    if not math.isfinite(epsilon) or epsilon > _LARGEST_EPSILON:
      raise InputError(
          f'`privacy.noise_multiplier` ({privacy.noise_multiplier}) '
          f'gives an epsilon of {epsilon:.3g} after {planned} rounds, so no '
          'meaningful guarantee could be reported. Raise '
          '`privacy.noise_multiplier` (1 or more is usual), or set '
          '`privacy.noise = "none"` for a run without DP.'
      )
  if stop_before_round(accountant, config):
    one_round = copy.deepcopy(accountant)
    one_round.step()
    raise InputError(
        f'`privacy.target_epsilon` ({privacy.target_epsilon}) is below the '
        f'epsilon of a single round ({one_round.epsilon(privacy.delta):.4g}). '
        'Raise the target or `privacy.noise_multiplier`.'
    )


def stop_before_round(accountant, config) -> bool:
  """Tell whether the next round would pass a `stop` mode target epsilon."""
  privacy = config.privacy
  if accountant is None or privacy.target_epsilon is None:
    return False
  if privacy.target_mode != 'stop':
    return False
  return accounting.would_exceed(
      accountant, privacy.target_epsilon, privacy.delta
  )



def secure_settings(
    config: config_lib.ExperimentConfig,
) -> secure_protocol.SecureAggregationSettings | None:
  """Return the protocol settings, or None when secure aggregation is off."""
  secure = config.secure_aggregation
  if not secure.enabled:
    return None
  return secure_protocol.SecureAggregationSettings(
      graph=secure.graph, degree=secure.degree,
      threshold_fraction=secure.threshold_fraction, bits=secure.ring_bits,
      scale=secure.fixed_point_scale,
      unmask_dropout_rate=secure.unmask_dropout_rate,
  )


def secure_plan(
    config: config_lib.ExperimentConfig,
    privacy: mechanisms.PrivacySettings,
    cohort_size: int,
    num_parameters: int,
) -> secure_aggregate.SecurePlan:
  """Return the round's encoding plan; InputError if it cannot work."""
  try:
    return secure_aggregate.plan(
        secure_settings(config), privacy, cohort_size, num_parameters)
  except ValueError as error:
    raise InputError(str(error)) from None


def build_secure_accountant(
    config: config_lib.ExperimentConfig,
    privacy: mechanisms.PrivacySettings,
    plan: secure_aggregate.SecurePlan,
) -> accounting.PrivacyAccountant:
  """Return the accountant of distributed discrete Gaussian noise.

  One round is a ZCDpEvent with the rho of Kairouz, Liu and Steinke (2021)
  for `min_reporting_clients` survivors, at the ring scale and dimension
  that the round will use. No amplification by sampling is claimed.
  """
  if config.privacy.accountant != 'rdp':
    raise InputError(
        'Distributed discrete Gaussian noise under secure aggregation is '
        'accounted as zCDP, which only the RDP accountant composes. Set '
        '`privacy.accountant=rdp`.'
    )
  l2, l1 = discrete_gaussian.integer_sensitivities(
      privacy.clip_norm, plan.scale, plan.dimension)
  rho = discrete_gaussian.zcdp_rho(
      plan.noise_sigma, privacy.min_reporting_clients, l2, l1,
      plan.dimension)
  return accounting.PrivacyAccountant(
      dp_accounting.ZCDpEvent(rho), 'add_or_remove', 'rdp')
