"""Trade accuracy for differential privacy on Fed-Heart-Disease.

Usage:
  python experiments/dp_tradeoff.py [--seeds 0 1 2] [--num-shadows 16]
      [--quick] [--out DIR]

Every setting trains logistic regression on the four hospitals (all of them
every round, 15 rounds of 100 local SGD steps, batch 4, local learning rate
0.01) with `study.run_study`, once per seed, and uniform-mean aggregation:

* no DP, the baseline;
* client-level DP with central noise, update clip bound 0.5 and the noise
  multiplier calibrated so that the run ends at each target epsilon;
* client-level DP with local noise at the same clip bound. Each client adds
  the central multiplier of a target divided by sqrt(4), so the noise on the
  sum of four updates has the central std and the accuracy should match.
  The epsilon reported is the study's local guarantee of each client's
  own noisy update (sensitivity 2C in every round, no credit for sampling),
  which is valid against the server too. It is not comparable with the
  central epsilon;
* example-level DP-SGD inside each client (`client.dp_sgd`), with the
  example-level epsilon of the worst hospital.

For each setting the script records the mean and the worst per-hospital
test accuracy (mean and standard deviation over seeds) and epsilon. It then
retrains the model of the first seed with the library API and the keys of
`run_study`, and checks that the accuracy matches. The loss attack and LiRA
of `experiments/privacy_audit.py` attack that model, with the training
patients as members and the test patients as non-members. LiRA's shadows
train with the same DP procedure as the target.

Each finished setting is appended to `results.jsonl` in the output folder,
so a run that is killed keeps them. The client-level canary audit of
`experiments/dp_canary_audit.py` runs last. Then `results.md` (both tables)
and `accuracy_vs_epsilon.png` are written, in this order.

Clip bound 0.5, as in `experiments/heart_disease_dp_central.toml`: central
noise at epsilon 1, 5 and 50 (seeds 0-2) with clip bounds 0.1, 0.25, 0.5 and
1.0 showed no bound better than 0.5 by more than one standard deviation over
seeds (table in `experiments/dp_tradeoff.md`).
"""

import argparse
import importlib.util
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med import data
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med import study_privacy
from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.report import outputs
from fedjax_med.report import results_page
from fedjax_med.report import script_help
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import round as round_lib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

CLIP_NORM = 0.5
LIRA_VARIANT = 'online'
MECHANISMS = ('none', 'central', 'local', 'dp_sgd')
MECHANISM_LABELS = {
    'none': 'no DP',
    'central': 'client-level, central noise',
    'local': 'client-level, local noise',
    'dp_sgd': 'example-level DP-SGD',
}
# The protected unit of each mechanism's epsilon, as the table shows it.
UNITS = {
    'none': 'client',
    'central': 'client',
    'local': 'client, local DP',
    'dp_sgd': 'example',
}
FULL = {
    'mechanisms': MECHANISMS,
    'rounds': 15,
    'local_steps': 100,
    'target_epsilons': [1.0, 2.0, 5.0, 10.0, 50.0],
    'example_noise_multipliers': [1.0, 2.0, 5.0, 10.0, 20.0],
}
# Local noise is left out to keep the smoke test short.
QUICK = {
    'mechanisms': ('none', 'central', 'dp_sgd'),
    'rounds': 2,
    'local_steps': 5,
    'target_epsilons': [5.0],
    'example_noise_multipliers': [5.0],
    'num_shadows': 4,
}
# The summaries' bootstrap intervals are not used here, so the fewest allowed
# resamples keep each run short.
BOOTSTRAP_RESAMPLES = config_lib.MIN_BOOTSTRAP_RESAMPLES
# `run_study` folds these into the seed's key to initialize the model and
# to derive the round keys.
_INIT_TAG = 0
_ROUNDS_TAG = 1
# Folded into the seed's key for LiRA's shadow masks and trainings.
_SHADOW_TAG = 3
# A retrained model whose mean accuracy differs from run_study's by more
# than this did not reproduce the run.
_REPRODUCTION_TOLERANCE = 1e-6


def _load_experiment(name: str):
  """Import a sibling script of experiments/, which is not a package."""
  path = pathlib.Path(__file__).resolve().parent / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'experiments_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


privacy_audit = _load_experiment('privacy_audit')
dp_canary_audit = _load_experiment('dp_canary_audit')


class Setting(NamedTuple):
  """One row of the trade-off: a mechanism and its noise.

  Attributes:
    name: folder name of its runs, such as `central_eps5`.
    mechanism: an entry of `MECHANISMS`.
    overrides: config overrides on top of the common ones.
    target_epsilon: the calibration target of central noise, or for local
      noise the target whose central multiplier it matches; else None.
  """

  name: str
  mechanism: str
  overrides: dict[str, Any]
  target_epsilon: float | None = None


def base_config(sizes: dict[str, Any]) -> config_lib.ExperimentConfig:
  """Return the settings that every row shares."""
  return config_lib.apply_overrides(config_lib.ExperimentConfig(), {
      'server.aggregator': 'mean',
      'server.rounds': sizes['rounds'],
      'client.local_steps': sizes['local_steps'],
      'evaluation.bootstrap_resamples': BOOTSTRAP_RESAMPLES,
  })


def _central_overrides(target_epsilon: float) -> dict[str, Any]:
  return {
      'privacy.clip_norm': CLIP_NORM,
      'privacy.noise': 'central',
      'privacy.target_epsilon': target_epsilon,
  }


def _local_setting(base, target_epsilon: float, num_clients: int) -> Setting:
  """Return local noise with the central noise std on the sum of updates."""
  central_config = config_lib.apply_overrides(
      base, _central_overrides(target_epsilon)
  )
  central_multiplier = study_privacy.resolve_noise_multiplier(
      central_config, num_clients
  )
  overrides = {
      'privacy.clip_norm': CLIP_NORM,
      'privacy.noise': 'local',
      'privacy.noise_multiplier': central_multiplier / math.sqrt(num_clients),
  }
  return Setting(
      f'local_as_central_eps{target_epsilon:g}', 'local', overrides,
      target_epsilon,
  )


def plan_settings(
    base: config_lib.ExperimentConfig, sizes: dict[str, Any],
    num_clients: int,
) -> list[Setting]:
  """List the baseline, then the central, local and DP-SGD settings."""
  mechanisms = sizes['mechanisms']
  settings = [Setting('no_dp', 'none', {})] if 'none' in mechanisms else []
  if 'central' in mechanisms:
    settings += [
        Setting(f'central_eps{target:g}', 'central',
                _central_overrides(target), target)
        for target in sizes['target_epsilons']
    ]
  if 'local' in mechanisms:
    settings += [
        _local_setting(base, target, num_clients)
        for target in sizes['target_epsilons']
    ]
  if 'dp_sgd' in mechanisms:
    settings += [
        Setting(f'dp_sgd_z{multiplier:g}', 'dp_sgd', {
            'client.dp_sgd': True,
            'client.example_noise_multiplier': multiplier,
        })
        for multiplier in sizes['example_noise_multipliers']
    ]
  return settings


def build_trainer(config: config_lib.ExperimentConfig, dataset):
  """Return `(model, train)`, where `train(key, train_data)` returns params.

  `train` builds the pieces as `run_study` does and uses its keys, so
  `train(jax.random.key(seed), dataset.train)` gives the model of that seed.
  It also runs under `jax.vmap` with traced `train_data`, for LiRA's
  shadows.
  """
  model = study.build_model(config.model, dataset.num_classes)
  local_update = study.build_local_update(config.client, model, dataset.train)
  sampler = study.build_sampler(config.sampling, dataset.num_clients)
  server_optimizer = study.build_optimizer(
      config.server.server_optimizer, config.server.server_learning_rate
  )
  noise_multiplier = study_privacy.resolve_noise_multiplier(
      config, dataset.num_clients
  )
  privacy = study_privacy.privacy_settings(
      config, np.asarray(dataset.train.num_examples), noise_multiplier
  )

  def train(key, train_data):
    round_fn = round_lib.build_round(
        train_data, local_update, sampler, server_optimizer,
        aggregator=config.server.aggregator, privacy=privacy,
        dropout_rate=config.sampling.dropout_rate,
    )
    sample_x = train_data.examples['x'][0, :1]
    params = model.init(jax.random.fold_in(key, _INIT_TAG), sample_x)
    state = round_lib.init_server_state(params, server_optimizer)
    rounds_key = jax.random.fold_in(key, _ROUNDS_TAG)

    def one_round(state, round_index):
      state, _ = round_fn(state, jax.random.fold_in(rounds_key, round_index))
      return state, None

    rounds = jnp.arange(config.server.rounds)
    state, _ = jax.lax.scan(one_round, state, rounds)
    return state.params

  return model, train


def _member_data(pool, membership_mask) -> federated.FederatedData:
  """Return the pool's members per client, moved to the front of its rows.

  `privacy_audit.build_shadow_train_fn` lays out a shadow's data the same
  way, but it trains only non-private FedAvg, so it cannot train these
  shadows.
  """
  layout_y = jnp.asarray(pool.layout['y'])
  in_layout = jnp.zeros(layout_y.shape, bool)
  in_layout = in_layout.at[pool.client_ids, pool.row_ids].set(membership_mask)
  order = jnp.argsort(~in_layout, axis=1, stable=True)
  examples = {
      'x': jnp.take_along_axis(
          jnp.asarray(pool.layout['x']), order[:, :, None], axis=1
      ),
      'y': jnp.take_along_axis(layout_y, order, axis=1),
  }
  num_examples = jnp.sum(in_layout, axis=1, dtype=jnp.int32)
  return federated.FederatedData(examples, num_examples)


def attack_first_seed(
    config: config_lib.ExperimentConfig, dataset, pool, summary,
    *, num_shadows: int,
) -> dict[str, Any]:
  """Retrain the run of `config.seed` and attack it; return the results."""
  model, train = build_trainer(config, dataset)
  key = jax.random.key(config.seed)
  target_params = jax.jit(train)(key, dataset.train)
  evaluation = evaluate_lib.build_evaluate(model, dataset.test)(target_params)
  retrained_accuracy = float(np.mean(np.asarray(evaluation.accuracy)))
  if abs(retrained_accuracy - summary['mean_accuracy']) > (
      _REPRODUCTION_TOLERANCE
  ):
    logging.warning(
        'The retrained model of seed %d has mean accuracy %.6f, run_study '
        'reported %.6f; the attacks target a different model.',
        config.seed, retrained_accuracy, summary['mean_accuracy'],
    )

  def shadow_train_fn(shadow_key, membership_mask):
    return train(shadow_key, _member_data(pool, membership_mask))

  attacks = privacy_audit.attack_target(
      target_params, model=model, pool=pool,
      shadow_train_fn=shadow_train_fn, num_shadows=num_shadows,
      lira_variant=LIRA_VARIANT, key=jax.random.fold_in(key, _SHADOW_TAG),
  )
  attacks['seed'] = config.seed
  attacks['retrained_mean_accuracy'] = retrained_accuracy
  return attacks


def _epsilon(setting: Setting, summary: dict[str, Any]) -> float | None:
  """Return the epsilon of a summary: example level for DP-SGD, else client."""
  if setting.mechanism == 'dp_sgd':
    return summary['example_privacy']['epsilon']
  if setting.mechanism == 'none':
    return None
  return summary['privacy']['epsilon']


def _spread(values: list[float]) -> dict[str, Any]:
  """Return the mean, the sample std (None for one value) and the values."""
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return {'mean': float(np.mean(values)), 'std': std, 'per_seed': values}


def run_setting(
    setting: Setting, base: config_lib.ExperimentConfig, *, seeds, out_dir,
    dataset, pool, num_shadows: int,
) -> dict[str, Any]:
  """Run one setting over `seeds`, attack its first seed, return its row."""
  start = time.perf_counter()
  configs = [
      config_lib.apply_overrides(
          base, {**setting.overrides, 'seed': seed, 'name': setting.name}
      )
      for seed in seeds
  ]
  summaries = []
  for config in configs:
    _, summary = study.run_study(
        config, out_dir / 'runs' / setting.name / f'seed_{config.seed}',
        progress=False,
    )
    summaries.append(summary)

  first_config = configs[0]
  epsilons = [_epsilon(setting, summary) for summary in summaries]
  first = summaries[0]
  targets = _targets(setting, epsilons[0])
  row = {
      'kind': 'tradeoff',
      'setting': setting.name,
      'mechanism': setting.mechanism,
      'unit': UNITS[setting.mechanism],
      'epsilon': epsilons[0],
      'epsilon_per_seed': epsilons,
      **targets,
      'delta': first_config.privacy.delta,
      'noise_multiplier': _noise_multiplier(setting, first),
      'clip_norm': _clip_norm(setting, first_config),
      'seeds': list(seeds),
      'mean_accuracy': _spread([s['mean_accuracy'] for s in summaries]),
      'worst_accuracy': _spread([s['worst_accuracy'] for s in summaries]),
      'worst_clients': [s['worst_client'] for s in summaries],
  }
  row['attacks'] = attack_first_seed(
      first_config, dataset, pool, first, num_shadows=num_shadows
  )
  row['elapsed_s'] = round(time.perf_counter() - start, 1)
  return row


def _targets(setting: Setting, epsilon: float | None) -> dict[str, Any]:
  """Return the target fields of a row; only central noise has a target."""
  if setting.mechanism == 'central':
    return {
        'target_epsilon': setting.target_epsilon,
        'meets_target': epsilon <= setting.target_epsilon,
    }
  if setting.mechanism == 'local':
    return {'matched_central_target_epsilon': setting.target_epsilon}
  return {}


def _noise_multiplier(setting: Setting, summary: dict[str, Any]):
  if setting.mechanism == 'dp_sgd':
    return summary['example_privacy']['noise_multiplier']
  if setting.mechanism == 'none':
    return None
  return summary['privacy']['noise_multiplier']


def _clip_norm(setting: Setting, config: config_lib.ExperimentConfig):
  if setting.mechanism == 'dp_sgd':
    return config.client.example_clip_norm
  return config.privacy.clip_norm


def _append_line(path: pathlib.Path, record: dict[str, Any]) -> None:
  """Append one JSON line and sync it to disk."""
  with open(path, 'a', encoding='utf-8') as stream:
    stream.write(
        json.dumps(outputs.to_json_value(record), allow_nan=False) + '\n'
    )
    stream.flush()
    os.fsync(stream.fileno())


def _format_spread(spread: dict[str, Any]) -> str:
  return results_page.mean_std(spread['per_seed'])


def tradeoff_table(rows: list[dict[str, Any]]) -> str:
  """Format the trade-off rows as a markdown table."""
  lines = [
      '| mechanism | setting | noise multiplier | epsilon (unit) | mean '
      'accuracy | worst-hospital accuracy | loss attack AUC | LiRA AUC |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    multiplier = row['noise_multiplier']
    epsilon = row['epsilon']
    epsilon_text = '∞' if epsilon is None else f"{epsilon:.3g} ({row['unit']})"
    attacks = row['attacks']
    lines.append(
        f"| {MECHANISM_LABELS[row['mechanism']]} | {row['setting']} | "
        f"{'-' if multiplier is None else f'{multiplier:.3g}'} | "
        f'{epsilon_text} | {_format_spread(row["mean_accuracy"])} | '
        f'{_format_spread(row["worst_accuracy"])} | '
        f"{attacks['loss_attack']['auc']:.3f} | {attacks['lira']['auc']:.3f} |"
    )
  return '\n'.join(lines) + '\n'


def write_markdown(
    path: pathlib.Path, rows, audit_rows, *, seeds, sizes, num_shadows,
    elapsed_s: float,
) -> None:
  """Write `results.md`: the trade-off table and the canary audit table."""
  text = [
      '# Accuracy and privacy on Fed-Heart-Disease',
      '',
      f"Logistic regression, {sizes['rounds']} rounds of "
      f"{sizes['local_steps']} local SGD steps (batch 4, learning rate "
      '0.01), all four hospitals every round, uniform-mean aggregation. '
      f'Accuracy: mean ± sample standard deviation over seeds {seeds}. '
      f'Attacks on the model of seed {seeds[0]}, training patients against '
      f'test patients; LiRA {LIRA_VARIANT} with {num_shadows} shadows. '
      'Delta 1e-5, RDP accountant.',
      '',
      tradeoff_table(rows),
      '## Client-level canary audit of the central-noise round',
      '',
      'One round, four hospitals with zero updates plus a canary client '
      'whose update is clipped to the bound; Clopper-Pearson lower bound at '
      f'{dp_canary_audit.CONFIDENCE:.0%} confidence, delta '
      f'{dp_canary_audit.DELTA:g}. The broken round divides its noise by '
      'the denominator twice but claims the intended multiplier.',
      '',
      dp_canary_audit.table(audit_rows),
      f'Total runtime: {elapsed_s:.0f} s.',
      '',
  ]
  path.write_text('\n'.join(text))


def _format_tick(value, position) -> str:
  del position
  return f'{value:g}'


def plot_tradeoff(
    path: pathlib.Path, rows: list[dict[str, Any]], *, seeds
) -> None:
  """Plot mean and worst-hospital accuracy against epsilon, log-x."""
  figure, axes = plt.subplots(figsize=(8.5, 5))
  colors = {'central': 'tab:blue', 'local': 'tab:orange',
            'dp_sgd': 'tab:green', 'none': 'gray'}
  for mechanism in ('central', 'local', 'dp_sgd'):
    chosen = sorted(
        (row for row in rows if row['mechanism'] == mechanism),
        key=lambda row: row['epsilon'],
    )
    if not chosen:
      continue
    epsilons = [row['epsilon'] for row in chosen]

    for statistic, style, marker in (('mean_accuracy', '-', 'o'),
                                     ('worst_accuracy', '--', 's')):
      # One seed has no spread to draw.
      axes.errorbar(
          epsilons, [row[statistic]['mean'] for row in chosen],
          yerr=[row[statistic]['std'] or 0.0 for row in chosen],
          color=colors[mechanism], linestyle=style, marker=marker,
          fillstyle='full' if marker == 'o' else 'none', capsize=3,
          label=f"{MECHANISM_LABELS[mechanism]}, "
          f"{'mean' if statistic == 'mean_accuracy' else 'worst hospital'}",
      )

  for row in rows:
    if row['mechanism'] == 'none':
      axes.axhline(row['mean_accuracy']['mean'], color='gray',
                   linestyle='-', label='no DP, mean')
      axes.axhline(row['worst_accuracy']['mean'], color='gray',
                   linestyle='--', label='no DP, worst hospital')

  axes.set_xscale('log')
  axes.xaxis.set_major_formatter(ticker.FuncFormatter(_format_tick))
  axes.xaxis.set_minor_formatter(ticker.NullFormatter())
  axes.set_xlabel(
      'epsilon at delta 1e-5 (client level; local DP for local noise; '
      'example level, worst hospital, for DP-SGD)', fontsize='small',
  )
  axes.set_ylabel('test accuracy')
  axes.set_title(
      f'Fed-Heart-Disease: accuracy against epsilon, seeds {seeds}'
  )
  axes.grid(alpha=0.3, which='both')
  axes.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--seeds', type=int, nargs='+', default=None,
      help='distinct experiment seeds of every setting; the first one is '
      'attacked (default: 0 1 2, or 0 with --quick).',
  )
  parser.add_argument(
      '--num-shadows', type=int, default=None,
      help='LiRA shadow models per setting, at least 4 (default: 16, or '
      f"{QUICK['num_shadows']} with --quick).",
  )
  parser.add_argument(
      '--quick', action='store_true',
      help='one seed and the reduced sizes '
      f'{script_help.format_sizes(QUICK)}, for a smoke test.',
  )
  parser.add_argument(
      '--out', type=pathlib.Path, default=None,
      help='new or empty output folder (default: a fresh runs/dp_tradeoff-'
      '<time>).',
  )
  args = parser.parse_args(argv)
  if args.seeds is None:
    args.seeds = [0] if args.quick else [0, 1, 2]
  script_help.check_seeds(parser, args.seeds)
  if args.num_shadows is None:
    args.num_shadows = QUICK['num_shadows'] if args.quick else 16
  if args.num_shadows < 4:
    parser.error(
        '--num-shadows must be at least 4, so that every patient has 2 in '
        f'and 2 out shadows; got {args.num_shadows}.'
    )
  return args


def run(args, out_dir: pathlib.Path) -> None:
  """Run every setting and the canary audit, and write `out_dir`."""
  start = time.perf_counter()
  sizes = QUICK if args.quick else FULL
  results_path = out_dir / 'results.jsonl'
  dataset = data.load_heart_disease()
  pool = privacy_audit.build_pool(dataset, 'federated')
  base = base_config(sizes)
  rows = []
  for setting in plan_settings(base, sizes, dataset.num_clients):
    interrupts.raise_if_requested()
    row = run_setting(
        setting, base, seeds=args.seeds, out_dir=out_dir, dataset=dataset,
        pool=pool, num_shadows=args.num_shadows,
    )
    _append_line(results_path, row)
    rows.append(row)
    logging.info(
        '%s: mean accuracy %.3f, epsilon %s, LiRA AUC %.3f (%.0f s)',
        setting.name, row['mean_accuracy']['mean'], row['epsilon'],
        row['attacks']['lira']['auc'], row['elapsed_s'],
    )

  audit_sizes = dp_canary_audit.QUICK if args.quick else dp_canary_audit.FULL
  audit_rows = dp_canary_audit.run_audit(
      **audit_sizes, clip_norm=CLIP_NORM, seed=args.seeds[0]
  )
  for audit_row in audit_rows:
    _append_line(results_path, {'kind': 'canary_audit', **audit_row})

  write_markdown(
      out_dir / 'results.md', rows, audit_rows, seeds=args.seeds,
      sizes=sizes, num_shadows=args.num_shadows,
      elapsed_s=time.perf_counter() - start,
  )
  plot_tradeoff(out_dir / 'accuracy_vs_epsilon.png', rows, seeds=args.seeds)


def main(argv=None) -> int:
  args = _parse_args(argv)
  try:
    out_dir = outputs.make_run_dir(args.out, 'dp_tradeoff')
    with script_help.stop_on_ctrl_c('dp_tradeoff.py',
                                    out_dir / 'results.jsonl'):
      run(args, out_dir)
  except InputError as error:
    print(f'dp_tradeoff.py: error: {error}', file=sys.stderr)
    return 2
  print((out_dir / 'results.md').read_text())
  print(f'Results in {out_dir}')
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  sys.exit(main())
