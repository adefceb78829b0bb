"""Audit the central-noise round with a canary client against its epsilon.

Usage:
  python experiments/dp_canary_audit.py [--noise-multipliers 0.5 1 2 4]
      [--num-trials 100000] [--clip-norm 0.5] [--seed 0] [--quick]
      [--out FILE]

The population is the four Fed-Heart-Disease hospitals plus one canary
client. Every hospital returns a zero update, and the canary returns a fixed
update of norm `2 * clip_norm` along a fixed unit direction, so the round
clips it to exactly `clip_norm`. One round of `simulation.build_round` runs
with the settings that a study builds for aggregator mean and central noise
(`study_privacy.privacy_settings`, which fixes the denominator to the five
clients). The canary is in the population in half of the trials and absent
(zero examples, so zero weight) in the other half. The attack scores a
trial by the projection of the server's step on the canary direction, and
`privacy.audit.canary_audit` turns the decisions into a Clopper-Pearson
lower bound on epsilon at 95% confidence.

The bound is compared with the one-round epsilon that the accountant claims
for the same noise multiplier (`accounting.epsilon_for` with sampling
'all'), under both the RDP and the PLD accountant. The bound of the real
mechanism must stay below the claim. As a negative control, the same audit
runs a deliberately broken round whose noise is divided by the denominator
a second time. Its claim stays that of the intended multiplier, so its
bound must rise above the claim.

Zero hospital updates make this the strongest attack that the threat model
allows: the canary's contribution is the only signal beside the noise.
"""

import argparse
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import flatten_util

from fedjax_med import config as config_lib
from fedjax_med import data
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med import study_privacy
from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.privacy import accounting
from fedjax_med.privacy import audit
from fedjax_med.report import script_help
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

CONFIDENCE = 0.95
DELTA = 1e-5
# Folded into key(seed) for the audits, apart from a study's tags.
_AUDIT_TAG = 8000
# The canary's update is this many times the clip bound before clipping.
CANARY_NORM_FACTOR = 2.0
# Trials run side by side in one vmap, which bounds the memory of large
# trial counts.
TRIALS_PER_BATCH = 20_000
FULL = {
    'noise_multipliers': [0.5, 1.0, 2.0, 4.0],
    'negative_control_noise_multipliers': [1.0, 2.0, 4.0],
    'num_trials': 100_000,
}
QUICK = {
    'noise_multipliers': [1.0, 4.0],
    'negative_control_noise_multipliers': [4.0],
    'num_trials': 2_000,
}


class CanaryPopulation(NamedTuple):
  """The hospitals and the canary as round inputs.

  Attributes:
    model: logistic regression for Fed-Heart-Disease.
    params: the server's parameters before the audited round.
    direction: `[features]` unit vector of the canary's update, over the
      flattened parameters.
    updates: `[clients, 1, features]` each client's fixed update, the
      canary last; the round reads it as the client's only example.
    num_clients: hospitals plus the canary.
  """

  model: Any
  params: Any
  direction: jax.Array
  updates: jax.Array
  num_clients: int


def build_population(clip_norm: float) -> CanaryPopulation:
  """Build four hospitals with zero updates and one canary of norm 2C."""
  dataset = data.load_heart_disease()
  model = study.build_model(
      config_lib.ModelConfig(), num_classes=dataset.num_classes
  )
  sample_x = jnp.asarray(dataset.train.examples['x'][0, :1])
  params = model.init(jax.random.key(0), sample_x)
  flat_params, _ = flatten_util.ravel_pytree(params)
  num_features = flat_params.size
  direction = jnp.ones(num_features) / np.sqrt(num_features)
  num_clients = dataset.num_clients + 1
  updates = jnp.zeros((num_clients, 1, num_features))
  updates = updates.at[-1, 0].set(CANARY_NORM_FACTOR * clip_norm * direction)
  return CanaryPopulation(model, params, direction, updates, num_clients)


def _fixed_update_fn(params) -> local_training.LocalUpdate:
  """Return a local update that ignores training and returns its example."""
  _, unravel = flatten_util.ravel_pytree(params)

  def local_update(server_params, examples, num_examples, key):
    del server_params, num_examples, key
    return local_training.LocalResult(
        delta=unravel(examples['update'][0]),
        loss=jnp.float32(0.0),
        num_steps=jnp.int32(1),
        truncated=jnp.bool_(False),
    )

  return local_update


def round_settings(
    noise_multiplier: float, *, clip_norm: float, num_clients: int,
    broken: bool,
) -> round_lib.PrivacySettings:
  """Return the study's central-noise settings, or the broken ones.

  The broken settings divide the noise multiplier by the denominator, so
  the round divides its noise by the denominator twice.
  """
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'server.aggregator': 'mean',
      'server.rounds': 1,
      'privacy.clip_norm': clip_norm,
      'privacy.noise': 'central',
      'privacy.noise_multiplier': noise_multiplier,
      'privacy.delta': DELTA,
  })
  config_lib.validate(config)
  settings = study_privacy.privacy_settings(
      config, np.ones(num_clients), noise_multiplier
  )
  if broken:
    settings = settings._replace(
        noise_multiplier=noise_multiplier / settings.denominator
    )
  return settings


def build_trial(population: CanaryPopulation, settings):
  """Return `(train_fn, score_fn)` of one audited round for `canary_audit`."""
  local_update = _fixed_update_fn(population.params)
  server_optimizer = optax.sgd(1.0)
  start = round_lib.init_server_state(population.params, server_optimizer)
  start_flat, _ = flatten_util.ravel_pytree(population.params)
  num_clients = population.num_clients
  is_canary = jnp.arange(num_clients) == num_clients - 1

  def train_fn(key, include_canary):
    # An absent canary has no example, so the round gives it weight 0.
    num_examples = jnp.where(is_canary & ~include_canary, 0, 1)
    train_data = federated.FederatedData(
        {'update': population.updates}, num_examples.astype(jnp.int32)
    )
    round_fn = round_lib.build_round(
        train_data, local_update,
        sampling.uniform_sampler(num_clients, num_clients),
        server_optimizer, aggregator='mean', privacy=settings,
    )
    state, _ = round_fn(start, key)
    return state.params

  def score_fn(params):
    flat, _ = flatten_util.ravel_pytree(params)
    return jnp.dot(flat - start_flat, population.direction)

  return train_fn, score_fn


def claimed_epsilons(noise_multiplier: float, num_clients: int) -> dict:
  """Return the accountants' one-round epsilon at `DELTA`, keyed by name."""
  event, relation = accounting.round_event(
      sampling='all', num_clients=num_clients,
      noise_multiplier=noise_multiplier,
  )
  return {
      name: accounting.epsilon_for(event, relation, 1, DELTA, name)
      for name in accounting.ACCOUNTANTS
  }


def audit_one(
    population: CanaryPopulation, noise_multiplier: float, *,
    clip_norm: float, num_trials: int, broken: bool, key: jax.Array,
) -> dict[str, Any]:
  """Audit one noise multiplier and return its row of the results."""
  start = time.perf_counter()
  settings = round_settings(
      noise_multiplier, clip_norm=clip_norm,
      num_clients=population.num_clients, broken=broken,
  )
  train_fn, score_fn = build_trial(population, settings)
  result = audit.canary_audit(
      train_fn, score_fn, key=key, num_trials=num_trials, delta=DELTA,
      confidence=CONFIDENCE, batch_size=min(num_trials, TRIALS_PER_BATCH),
  )
  claimed = claimed_epsilons(noise_multiplier, population.num_clients)
  return {
      'mechanism': 'broken (negative control)' if broken else 'central',
      'noise_multiplier': noise_multiplier,
      'applied_noise_multiplier': settings.noise_multiplier,
      'denominator': settings.denominator,
      'clip_norm': clip_norm,
      'num_trials': num_trials,
      'epsilon_lower': result.epsilon_lower,
      'claimed_epsilon_rdp': claimed['rdp'],
      'claimed_epsilon_pld': claimed['pld'],
      'below_claims': result.epsilon_lower < min(claimed.values()),
      'above_claims': result.epsilon_lower > max(claimed.values()),
      'counts': {
          'tp': result.true_positives, 'fn': result.false_negatives,
          'fp': result.false_positives, 'tn': result.true_negatives,
      },
      'elapsed_s': round(time.perf_counter() - start, 1),
  }


def run_audit(
    *, noise_multipliers, negative_control_noise_multipliers,
    num_trials: int, clip_norm: float, seed: int,
) -> list[dict[str, Any]]:
  """Audit the real round at each multiplier, then the broken one."""
  population = build_population(clip_norm)
  # Studies of the same seed fold tags 0 to 4 and 7001 to 7003 into
  # key(seed), and their round r key is fold_in(fold_in(key(seed), 1), r):
  # audit 1's trial keys were those round keys, with their noise.
  key = jax.random.fold_in(jax.random.key(seed), _AUDIT_TAG)
  plan = [(value, False) for value in noise_multipliers]
  plan += [(value, True) for value in negative_control_noise_multipliers]
  rows = []
  for index, (noise_multiplier, broken) in enumerate(plan):
    # A deferred Ctrl-C (`script_help.stop_on_ctrl_c`) stops between audits.
    interrupts.raise_if_requested()
    rows.append(audit_one(
        population, noise_multiplier, clip_norm=clip_norm,
        num_trials=num_trials, broken=broken,
        key=jax.random.fold_in(key, index),
    ))
  # A stop during the last audit is honoured here, before the results.
  interrupts.raise_if_requested()
  return rows


def table(rows: list[dict[str, Any]]) -> str:
  """Format audit rows as a markdown table."""
  header = (
      '| mechanism | noise multiplier (claimed) | noise multiplier '
      '(applied) | trials per group | epsilon lower bound (95%) | '
      'claimed epsilon, RDP | claimed epsilon, PLD | bound vs claims |'
  )
  lines = [header, '|---|---|---|---|---|---|---|---|']
  for row in rows:
    lines.append(
        f"| {row['mechanism']} | {row['noise_multiplier']:g} | "
        f"{row['applied_noise_multiplier']:.3g} | {row['num_trials']} | "
        f"{row['epsilon_lower']:.2f} | {row['claimed_epsilon_rdp']:.2f} | "
        f"{row['claimed_epsilon_pld']:.2f} | {_comparison(row)} |"
    )
  return '\n'.join(lines) + '\n'


def _comparison(row: dict[str, Any]) -> str:
  if row['below_claims']:
    return 'below both'
  if row['above_claims']:
    return 'above both'
  return 'between'


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--noise-multipliers', type=script_help.finite_positive_float,
      nargs='+', default=None,
      help='noise multipliers of the real round (default: '
      f"{_format_values(FULL['noise_multipliers'])}).",
  )
  parser.add_argument(
      '--num-trials', type=int, default=None,
      help=f"rounds with the canary, and as many without (default: "
      f"{FULL['num_trials']}).",
  )
  parser.add_argument(
      '--clip-norm', type=script_help.finite_positive_float, default=0.5,
      help='client update clip bound C (default: 0.5).',
  )
  parser.add_argument(
      '--seed', type=script_help.seed_type(2**32), default=0,
      help='seed of the trial keys (default: 0).',
  )
  parser.add_argument(
      '--quick', action='store_true',
      help=f'use the sizes {script_help.format_sizes(QUICK)}.',
  )
  parser.add_argument(
      '--out', type=pathlib.Path, default=None,
      help='path of the JSON result (default: print only).',
  )
  args = parser.parse_args(argv)

  sizes = QUICK if args.quick else FULL
  if args.noise_multipliers is None:
    args.noise_multipliers = sizes['noise_multipliers']
  if args.num_trials is None:
    args.num_trials = sizes['num_trials']
  args.negative_control = sizes['negative_control_noise_multipliers']

  if args.num_trials < 2:
    parser.error(f'--num-trials must be at least 2; got {args.num_trials}.')
  _check_claims(parser, args.noise_multipliers)
  script_help.check_out_path(parser, args.out)
  return args


def _format_values(values) -> str:
  return ' '.join(f'{value:g}' for value in values)


def _check_claims(parser, noise_multipliers) -> None:
  """Exit unless both accountants can compute the claim of every multiplier.

  The claims take milliseconds, so a multiplier whose claim an accountant
  cannot compute (one too small for a PLD grid) fails here instead of
  after the trials. Under sampling 'all' the claim does not depend on the
  number of clients.
  """
  for noise_multiplier in noise_multipliers:
    try:
      claimed_epsilons(noise_multiplier, num_clients=1)
    except InputError:
      parser.error(
          f'--noise-multipliers: the claimed epsilon of {noise_multiplier:g}, '
          'which the audit is compared with, cannot be computed; pass a '
          'larger noise multiplier.'
      )


def main(argv=None) -> int:
  args = _parse_args(argv)
  try:
    with script_help.stop_on_ctrl_c('dp_canary_audit.py', None):
      rows = run_audit(
          noise_multipliers=args.noise_multipliers,
          negative_control_noise_multipliers=args.negative_control,
          num_trials=args.num_trials, clip_norm=args.clip_norm,
          seed=args.seed,
      )
  except InputError as error:
    print(f'dp_canary_audit.py: error: {error}', file=sys.stderr)
    return 2
  print(table(rows))
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
