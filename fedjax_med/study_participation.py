"""A study's participation, compression and their summary.

Turns the `participation` and `compression` config sections into the
settings `build_round` takes, and after the run sums the round metrics
into `summary.json`'s `participation` section: exact bytes, the virtual
clock, contribution counts and, under central noise, the privacy claims
of `fedjax_med.privacy.participation_accounting`.
"""

import json
import pathlib
from typing import Any

import jax
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med.communication import compression as compression_lib
from fedjax_med.models import cnn
from fedjax_med.privacy import participation_accounting
from fedjax_med.simulation import participation as participation_lib

# Tags folded into the seed's key for the per-client draws.
_SPEED_TAG = 7001
_UPLOAD_TAG = 7002
_DOWNLOAD_TAG = 7003
# Working hours of `schedule=office_hours`, local time.
_OPENING_HOUR = 8
_CLOSING_HOUR = 18


def tracks(config: config_lib.ExperimentConfig) -> bool:
  """Return whether the study runs with participation or compression."""
  return (config_lib.participation_active(config)
          or config.compression.compressor != 'none')


def clients_offline(config: config_lib.ExperimentConfig) -> bool:
  """Return whether clients can be offline when the cohort is drawn."""
  part = config.participation
  return part.availability < 1.0 or part.schedule != 'none'


def error_feedback(config: config_lib.ExperimentConfig) -> bool:
  """Return whether the clients keep top-k error-feedback residuals."""
  return (config.compression.compressor == 'top_k'
          and config.compression.error_feedback)


def participation_settings(
    config: config_lib.ExperimentConfig, num_clients: int,
) -> participation_lib.Participation | None:
  """Return the round's `Participation`, drawn from the seed, or None."""
  if not config_lib.participation_active(config):
    return None
  part = config.participation
  key = jax.random.key(config.seed)
  if part.schedule == 'office_hours':
    # Client i is i mod time_zones hours west of the clock's zone.
    offsets = -(np.arange(num_clients) % part.time_zones)
    availability = participation_lib.office_hours(
        num_clients, utc_offsets=offsets, opening_hour=_OPENING_HOUR,
        closing_hour=_CLOSING_HOUR, open_probability=part.availability,
        closed_probability=part.off_hours_availability)
  elif part.availability < 1.0:
    availability = np.full(num_clients, part.availability, np.float32)
  else:
    availability = None

  def spread(median, sigma, tag):
    if median is None:
      return None
    return participation_lib.lognormal_speeds(
        jax.random.fold_in(key, tag), num_clients, median, sigma)

  return participation_lib.Participation(
      availability=availability,
      steps_per_second=spread(part.steps_per_second, part.speed_spread,
                              _SPEED_TAG),
      upload_bytes_per_second=spread(part.upload_bytes_per_second,
                                     part.link_spread, _UPLOAD_TAG),
      download_bytes_per_second=spread(part.download_bytes_per_second,
                                       part.link_spread, _DOWNLOAD_TAG),
      speed_jitter=part.speed_jitter,
      deadline=part.deadline_s,
      straggler_policy=part.straggler_policy,
      server_seconds=part.server_seconds,
  )


def compression_settings(
    config: config_lib.ExperimentConfig,
) -> compression_lib.CompressionSettings | None:
  """Return the round's `CompressionSettings`, or None without compression."""
  section = config.compression
  if section.compressor == 'none':
    return None
  return compression_lib.CompressionSettings(
      kind=section.compressor, levels=section.quantization_levels,
      fraction=section.top_k_fraction, error_feedback=section.error_feedback)


def summary(
    config: config_lib.ExperimentConfig, run_dir: pathlib.Path, state: Any,
    num_clients: int,
) -> dict[str, Any]:
  """Return `summary.json`'s `participation` section of a finished run.

  Sums `metrics.jsonl`, so a resumed run counts every round once.
  """
  records = []
  with (run_dir / 'metrics.jsonl').open() as stream:
    for line in stream:
      if line.strip():
        records.append(json.loads(line))
  local_mask = cnn.norm_mask(state.params) if config.client.fedbn else None
  sizes = participation_lib.message_bytes(
      state.params, compression_settings(config),
      scaffold=config.client.scaffold, local_mask=local_mask)
  down, up = sizes['down'], sizes['up']

  def total(name):
    return int(sum(int(record.get(name, 0)) for record in records))

  contributions = np.asarray(state.contributions)
  section = {
      'rounds': len(records),
      'clock_s': float(state.clock),
      'num_sampled': total('num_sampled'),
      'num_reported': total('num_reported'),
      'num_dropped': total('num_dropped'),
      'num_stragglers': total('num_stragglers'),
      'mean_available': (float(np.mean([r['num_available'] for r in records]))
                         if records else None),
      'bytes_per_download': down,
      'bytes_per_upload': up,
      'bytes_down': total('num_sampled') * down,
      'bytes_up': total('num_reported') * up,
      'max_contributions': int(contributions.max()),
      'clients_never_contributed': int(np.sum(contributions == 0)),
  }
  if config.privacy.noise == 'central' and records:
    section['privacy'] = _privacy(config, records, contributions,
                                  num_clients)
  return section


def _privacy(config, records, contributions, num_clients):
  """Return the claims built from the recorded participation."""
  privacy = config.privacy
  part = config.participation
  max_availability = part.availability
  if part.schedule == 'office_hours':
    max_availability = max(part.availability, part.off_hours_availability)
  sampling = config.sampling
  # Poisson inclusion is independent per client, so both claims can use
  # add-or-remove neighbors, the relation of the sampled claim. Otherwise
  # both are replace-one, so the smaller of the two is a valid report.
  relation = ('add_or_remove' if sampling.sampling == 'poisson'
              else 'replace_one')
  claims = {
      'contributions': participation_accounting.contribution_epsilon(
          contributions, noise_multiplier=privacy.noise_multiplier,
          delta=privacy.delta, relation=relation,
          accountant=privacy.accountant)._asdict(),
  }
  available = np.asarray([record['num_available'] for record in records])
  if sampling.sampling == 'poisson':
    claims['sampled'] = participation_accounting.sampled_epsilon(
        sampling='poisson', noise_multiplier=privacy.noise_multiplier,
        delta=privacy.delta, num_available=available,
        sampling_rate=sampling.sampling_rate,
        max_availability=max_availability,
        accountant=privacy.accountant)._asdict()
  elif privacy.accountant == 'rdp':
    cohort = (num_clients if sampling.sampling == 'all'
              else sampling.cohort_size)
    claims['sampled'] = participation_accounting.sampled_epsilon(
        sampling='uniform', noise_multiplier=privacy.noise_multiplier,
        delta=privacy.delta, num_available=available,
        cohort_size=cohort)._asdict()
  claims['note'] = (
      'Each claim is an upper bound under the assumptions in '
      'fedjax_med.privacy.participation_accounting; report the smaller. '
      'privacy.epsilon assumes every client is online in every round, '
      'which is not an upper bound when clients are offline.')
  return claims
