"""Stragglers, FedBuff and compression on a synthetic population.

Usage:
  python experiments/participation_communication.py [--clients 10000]
      [--seeds 0 1 2] [--hours 24] [--compression-rounds 60]
      [--compressors NAME ...] [--parts clock bytes privacy]
      [--markdown PATH] [--json PATH] [--clock-figure PATH]
      [--bytes-figure PATH]

The population has `--clients` clients of 20 to 100 rows (60 features, 10
classes) in two groups. 70% are well-equipped sites and 30% are
under-resourced sites whose data follow another labelling rule: each group
is FedProx's IID synthetic data (`synthetic(iid=True)`) from its own key,
so each group has one linear model and the two models differ. All clients
train one multinomial logistic regression (610 parameters), 10 local SGD
steps of batch 10 at learning rate 0.3, and the tables report the test
accuracy over all clients and over the under-resourced group.

Part 1, accuracy against simulated wall clock. Each client has a lognormal
compute speed with log-std 0.5 and median 0.02 steps per second (a median
well-equipped site needs 500 s for its 10 steps), or 0.005 at the
under-resourced sites (2,000 s). Links are lognormal too (median 2 kB/s up
and 20 kB/s down, log-std 0.5). On top come a per-round speed jitter
(log-std 0.3) and a 5% chance to drop out in a round. A working-day
availability schedule puts each client online with probability 0.8 from
8:00 to 18:00 local time and 0.2 otherwise, with time zones from UTC-6 to
UTC+5. Four
algorithms run until the virtual clock passes `--hours`:

* FedAvg, wait: 100 clients per round, the server waits for the slowest;
* FedAvg, drop: the same with a 900 s deadline, late updates discarded;
* FedNova, partial: the same deadline, each client stops there and its
  finished steps are normalized by FedNova;
* FedBuff: 100 clients in flight, the server steps every 25 updates with
  staleness weight (1 + s) ** -0.5, and 25 new clients start.

Part 2, accuracy against bytes sent up. Synchronous FedAvg, 100 clients per
round, every client online, for `--compression-rounds` rounds, with each
compressor of `fedjax_med.communication.compression`.

Part 3, privacy. FedAvg with the 900 s deadline, clipping at 1 and central
noise of multiplier 1.0 over a fixed denominator, for the first 24
simulated hours. The accounting from the recorded participation
(`privacy.participation_accounting`) is set beside the epsilon a run with
every client always online would claim.

Every finished run is appended to `--json` at once, so a stopped study
keeps what it finished. Lines already in the file are kept. The results
go between the marker lines of the markdown page; the rest of the page is
kept.
"""

import argparse
import datetime
import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from matplotlib import figure as figure_lib
import numpy as np
import optax

from fedjax_med import interrupts
from fedjax_med.client import local_training
from fedjax_med.communication import compression
from fedjax_med.data import federated
from fedjax_med.data import synthetic
from fedjax_med.models import tabular
from fedjax_med.privacy import accounting
from fedjax_med.privacy import mechanisms
from fedjax_med.privacy import participation_accounting
from fedjax_med.report import machine
from fedjax_med.report import results_page
from fedjax_med.report import script_help
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import fedbuff
from fedjax_med.simulation import participation as participation_lib
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MARKDOWN = ROOT / 'experiments' / 'participation_communication.md'
DEFAULT_CLOCK_FIGURE = ROOT / 'docs' / 'figures' / 'participation_clock.png'
DEFAULT_BYTES_FIGURE = ROOT / 'docs' / 'figures' / 'compression_bytes.png'
RESULTS_START = '<!-- participation_communication.py results: start -->'
RESULTS_END = '<!-- participation_communication.py results: end -->'

NUM_FEATURES = 60
NUM_CLASSES = 10
LOCAL_STEPS = 10
BATCH_SIZE = 10
LEARNING_RATE = 0.3
COHORT = 100
SLOW_SHARE = 0.3
FAST_STEPS_PER_SECOND = 0.02
SLOW_STEPS_PER_SECOND = 0.005
DEADLINE_S = 900.0
FEDBUFF_CONCURRENCY = 100
FEDBUFF_BUFFER = 25
CLIP_NORM = 1.0
NOISE_MULTIPLIER = 1.0
DELTA = 1e-5

CLOCK_METHODS = {
    'fedavg_wait': 'FedAvg, wait for all',
    'fedavg_drop': 'FedAvg, drop stragglers',
    'fednova_partial': 'FedNova, partial work',
    'fedbuff': 'FedBuff (K=25 of 100)',
}
COMPRESSORS = {
    'none': compression.CompressionSettings('none'),
    'qsgd_16': compression.CompressionSettings('qsgd', levels=16),
    'qsgd_2': compression.CompressionSettings('qsgd', levels=2),
    'rotated_2': compression.CompressionSettings(
        'rotated', levels=2),
    'top_k_10': compression.CompressionSettings('top_k', fraction=0.1),
    'top_k_1': compression.CompressionSettings('top_k', fraction=0.01),
    'top_k_10_no_feedback': compression.CompressionSettings(
        'top_k', fraction=0.1, error_feedback=False),
}
COMPRESSOR_NAMES = {
    'none': 'none (float32)',
    'qsgd_16': 'QSGD, 16 levels',
    'qsgd_2': 'QSGD, 2 levels',
    'rotated_2': 'rotated quantization, 2 levels',
    'top_k_10': 'top-10% + error feedback',
    'top_k_1': 'top-1% + error feedback',
    'top_k_10_no_feedback': 'top-10%, no error feedback',
}


class Setup:
  """Data, model and the clients' speeds and schedules of one seed."""

  def __init__(self, seed: int, num_clients: int):
    key = jax.random.key(seed)
    keys = jax.random.split(key, 6)
    data_key, slow_data_key, model_key, speed_key, up_key, down_key = keys
    num_slow = int(round(SLOW_SHARE * num_clients))
    groups = [
        synthetic.synthetic(
            key=group_key, num_clients=size, alpha=0.0, beta=0.0, iid=True,
            num_features=NUM_FEATURES, num_classes=NUM_CLASSES,
            min_examples=20, max_examples=100)
        for group_key, size in ((data_key, num_clients - num_slow),
                                (slow_data_key, num_slow))
    ]
    self.train, self.test = (
        federated.FederatedData(
            {name: np.concatenate([np.asarray(getattr(group, split)
                                              .examples[name])
                                   for group in groups])
             for name in ('x', 'y')},
            np.concatenate([np.asarray(getattr(group, split).num_examples)
                            for group in groups]))
        for split in ('train', 'test'))
    self.slow = np.arange(num_clients) >= num_clients - num_slow
    self.num_clients = num_clients
    self.model = tabular.from_flax(
        tabular.LogisticRegression(NUM_CLASSES), NUM_CLASSES)
    self.params = self.model.init(
        model_key, jnp.zeros((1, NUM_FEATURES), jnp.float32))
    self.local_update = local_training.build_local_update(
        self.model, optax.sgd(LEARNING_RATE), num_steps=LOCAL_STEPS,
        batch_size=BATCH_SIZE)
    self.evaluate = evaluate_lib.build_evaluate(self.model, self.test)
    rng = np.random.default_rng(seed)
    offsets = rng.integers(-6, 6, num_clients)
    self.participation = participation_lib.Participation(
        availability=participation_lib.office_hours(
            num_clients, utc_offsets=offsets, open_probability=0.8,
            closed_probability=0.2),
        dropout=0.05,
        steps_per_second=participation_lib.lognormal_speeds(
            speed_key, num_clients, 1.0, 0.5) * np.where(
                self.slow, SLOW_STEPS_PER_SECOND, FAST_STEPS_PER_SECOND),
        upload_bytes_per_second=participation_lib.lognormal_speeds(
            up_key, num_clients, 2_000.0, 0.5),
        download_bytes_per_second=participation_lib.lognormal_speeds(
            down_key, num_clients, 20_000.0, 0.5),
        speed_jitter=0.3,
    )
    self.key = key

  def accuracy(self, params) -> tuple[float, float]:
    """Return the example-weighted test accuracy, overall and slow group."""
    result = self.evaluate(params)
    counts = np.asarray(self.test.num_examples, np.float64)
    correct = np.nan_to_num(np.asarray(result.accuracy, np.float64)) * counts
    overall = np.sum(correct) / np.sum(counts)
    slow = np.sum(correct[self.slow]) / max(np.sum(counts[self.slow]), 1.0)
    return float(overall), float(slow)


def _sync_round(setup: Setup, method: str, **options):
  participation = setup.participation
  if method == 'fedavg_drop':
    participation = participation._replace(
        deadline=DEADLINE_S, straggler_policy='drop')
  elif method == 'fednova_partial':
    participation = participation._replace(
        deadline=DEADLINE_S, straggler_policy='partial')
  return round_lib.build_round(
      setup.train, setup.local_update,
      sampling.uniform_sampler(setup.num_clients, COHORT), optax.sgd(1.0),
      participation=participation, fednova=method == 'fednova_partial',
      **options)


def run_clock(setup: Setup, method: str, hours: float, seed: int,
              evaluate_every_s: float) -> dict[str, Any]:
  """Run `method` until the virtual clock passes `hours`."""
  limit = hours * 3600.0
  run_key = jax.random.fold_in(setup.key, 1000 + list(CLOCK_METHODS).index(
      method))
  state = round_lib.init_server_state(
      setup.params, optax.sgd(1.0), num_clients=setup.num_clients)
  curve = [(0.0, *setup.accuracy(state.params))]
  totals = {'updates': 0, 'stragglers': 0, 'sampled': 0, 'steps': 0}
  next_eval = evaluate_every_s
  if method == 'fedbuff':
    buffered = fedbuff.build_fedbuff(
        setup.train, setup.local_update, optax.sgd(1.0),
        concurrency=FEDBUFF_CONCURRENCY, buffer_size=FEDBUFF_BUFFER,
        participation=setup.participation)
    fb_state, started = buffered.init(state, jax.random.fold_in(run_key, 0))
    totals['sampled'] += int(started['num_dispatched'])
    clock, index = 0.0, 0
    staleness = []
    # A step counts only if it ends within the budget.
    while True:
      stepped, metrics = buffered.step(
          fb_state, jax.random.fold_in(run_key, index + 1))
      if float(metrics['clock']) > limit:
        break
      fb_state, index = stepped, index + 1
      clock = float(metrics['clock'])
      totals['updates'] += int(metrics['num_contributing'])
      totals['sampled'] += int(metrics['num_dispatched'])
      staleness.append(float(metrics['mean_staleness']))
      if clock >= next_eval:
        curve.append((clock, *setup.accuracy(fb_state.server.params)))
        next_eval = clock + evaluate_every_s
    params = fb_state.server.params
    totals['mean_staleness'] = (float(np.mean(staleness)) if staleness
                                else None)
  else:
    round_fn = _sync_round(setup, method)
    clock, index = 0.0, 0
    while True:
      stepped, metrics = round_fn(state, jax.random.fold_in(run_key, index))
      if float(metrics['clock']) > limit:
        break
      state, index = stepped, index + 1
      clock = float(metrics['clock'])
      totals['updates'] += int(metrics['num_contributing'])
      totals['stragglers'] += int(metrics['num_stragglers'])
      totals['sampled'] += int(metrics['num_sampled'])
      if clock >= next_eval:
        curve.append((clock, *setup.accuracy(state.params)))
        next_eval = clock + evaluate_every_s
    params = state.params
  totals['steps'] = index
  if curve[-1][0] < clock:
    curve.append((clock, *setup.accuracy(params)))
  return {
      'part': 'clock', 'method': method, 'seed': seed, 'hours': hours,
      'clients': setup.num_clients, 'curve': curve,
      'final_accuracy': curve[-1][1], 'final_slow_accuracy': curve[-1][2],
      **totals,
  }


def run_compression(setup: Setup, name: str, rounds: int,
                    seed: int) -> dict[str, Any]:
  """Run synchronous FedAvg with every client online and compressor `name`."""
  settings = COMPRESSORS[name]
  round_fn = round_lib.build_round(
      setup.train, setup.local_update,
      sampling.uniform_sampler(setup.num_clients, COHORT), optax.sgd(1.0),
      compression=settings)
  state = round_lib.init_server_state(
      setup.params, optax.sgd(1.0), num_clients=setup.num_clients,
      error_feedback=settings.kind == 'top_k' and settings.error_feedback)
  sizes = round_fn.message_bytes(setup.params)
  run_key = jax.random.fold_in(setup.key, 2000)
  sent = 0
  curve = [(0, *setup.accuracy(state.params))]
  for index in range(rounds):
    state, metrics = round_fn(state, jax.random.fold_in(run_key, index))
    # Exact integer bytes: the count times the exact message size.
    sent += int(metrics['num_reported']) * sizes['up']
    if (index + 1) % max(rounds // 10, 1) == 0 or index + 1 == rounds:
      curve.append((sent, *setup.accuracy(state.params)))
  return {
      'part': 'bytes', 'method': name, 'seed': seed, 'rounds': rounds,
      'clients': setup.num_clients, 'message_bytes': sizes['up'],
      'curve': curve, 'final_accuracy': curve[-1][1], 'bytes_up': sent,
  }


def run_privacy(setup: Setup, hours: float, seed: int) -> dict[str, Any]:
  """Run DP FedAvg under the deadline and account from participation."""
  participation = setup.participation._replace(
      deadline=DEADLINE_S, straggler_policy='drop')
  privacy = mechanisms.PrivacySettings(
      clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER,
      noise_kind='central', denominator=float(COHORT))
  round_fn = round_lib.build_round(
      setup.train, setup.local_update,
      sampling.uniform_sampler(setup.num_clients, COHORT), optax.sgd(1.0),
      aggregator='mean', privacy=privacy, participation=participation)
  state = round_lib.init_server_state(
      setup.params, optax.sgd(1.0), num_clients=setup.num_clients)
  run_key = jax.random.fold_in(setup.key, 3000)
  available, index = [], 0
  # A round counts only if it ends within the budget.
  while True:
    stepped, metrics = round_fn(state, jax.random.fold_in(run_key, index))
    if float(metrics['clock']) > hours * 3600.0:
      break
    state, index = stepped, index + 1
    available.append(int(metrics['num_available']))
  if not available:
    raise ValueError(
        f'No round of the privacy part ends within {hours:g} h; raise '
        '--hours.')
  contributions = np.asarray(state.contributions)
  realized = participation_accounting.contribution_epsilon(
      contributions, noise_multiplier=NOISE_MULTIPLIER, delta=DELTA)
  sampled = participation_accounting.sampled_epsilon(
      sampling='uniform', noise_multiplier=NOISE_MULTIPLIER, delta=DELTA,
      num_available=np.asarray(available), cohort_size=COHORT)
  event, relation = accounting.round_event(
      sampling='uniform', num_clients=setup.num_clients,
      noise_multiplier=NOISE_MULTIPLIER, cohort_size=COHORT)
  naive = accounting.epsilon_for(event, relation, index, DELTA)
  return {
      'part': 'privacy', 'method': 'fedavg_drop_dp', 'seed': seed,
      'clients': setup.num_clients, 'rounds': index,
      'accuracy': setup.accuracy(state.params)[0],
      'mean_available': float(np.mean(available)),
      'min_available': int(np.min(available)),
      'max_contributions': int(contributions.max()),
      'epsilon_contributions': realized.epsilon,
      'epsilon_sampled_available': sampled.epsilon,
      'epsilon_if_all_online': naive,
  }


def _accuracy_at(curve, when, column=1) -> float:
  """Return the accuracy of the last evaluation at or before `when`.

  Column 1 is the accuracy over all clients, column 2 over the
  under-resourced group.
  """
  value = curve[0][column]
  for point in curve:
    if point[0] <= when:
      value = point[column]
  return value


def clock_table(records, hours: float) -> list[str]:
  marks = (hours / 4, hours / 2, hours)
  lines = [
      '| algorithm | ' + ' | '.join(f'accuracy at {mark:g} h'
                                     for mark in marks)
      + f' | under-resourced sites at {hours:g} h'
      + ' | server steps | updates used | stragglers |',
      '|---|' + '---|' * (len(marks) + 4),
  ]
  for method, label in CLOCK_METHODS.items():
    runs = [r for r in records if r['part'] == 'clock'
            and r['method'] == method]
    if not runs:
      continue
    cells = [
        results_page.mean_std(
            [_accuracy_at(r['curve'], mark * 3600.0) for r in runs])
        for mark in marks
    ]
    cells.append(results_page.mean_std(
        [_accuracy_at(r['curve'], hours * 3600.0, 2) for r in runs]))
    steps = np.mean([r['steps'] for r in runs])
    updates = np.mean([r['updates'] for r in runs])
    stragglers = np.mean([r['stragglers'] for r in runs])
    lines.append(f'| {label} | ' + ' | '.join(cells)
                 + f' | {steps:.0f} | {updates:.0f} | {stragglers:.0f} |')
  return lines


def bytes_table(records) -> list[str]:
  lines = [
      '| compressor | bytes per update | ratio to float32 | total MB up '
      '| final accuracy |',
      '|---|---|---|---|---|',
  ]
  plain = None
  for method, label in COMPRESSOR_NAMES.items():
    runs = [r for r in records if r['part'] == 'bytes'
            and r['method'] == method]
    if not runs:
      continue
    size = runs[0]['message_bytes']
    if method == 'none':
      plain = size
    ratio = f'{plain / size:.1f}x' if plain else '-'
    total = np.mean([r['bytes_up'] for r in runs]) / 1e6
    lines.append(
        f'| {label} | {size:,} | {ratio} | {total:.2f} | '
        f"{results_page.mean_std([r['final_accuracy'] for r in runs])} |")
  return lines


def privacy_table(records) -> list[str]:
  runs = [r for r in records if r['part'] == 'privacy']
  if not runs:
    return []
  rows = [
      ('rounds in the time budget', 'rounds', '{:.0f}'),
      ('mean clients available per round', 'mean_available', '{:.0f}'),
      ('most contributions of one client', 'max_contributions', '{:.0f}'),
      ('test accuracy', 'accuracy', '{:.3f}'),
      ('epsilon, no amplification (recorded contributions)',
       'epsilon_contributions', '{:.2f}'),
      ('epsilon, sampling among the recorded available clients',
       'epsilon_sampled_available', '{:.2f}'),
      ('epsilon a run with everyone online would claim',
       'epsilon_if_all_online', '{:.2f}'),
  ]
  lines = ['| quantity | ' + ' | '.join(f"seed {r['seed']}" for r in runs)
           + ' |', '|---|' + '---|' * len(runs)]
  for label, field, pattern in rows:
    lines.append(f'| {label} | ' + ' | '.join(
        pattern.format(r[field]) for r in runs) + ' |')
  return lines


def plot_clock(records, path: pathlib.Path) -> None:
  figure = figure_lib.Figure(figsize=(6.5, 4.0))
  axes = figure.subplots()
  for method, label in CLOCK_METHODS.items():
    runs = [r for r in records if r['part'] == 'clock'
            and r['method'] == method]
    for index, run in enumerate(runs):
      hours, accuracy, _ = zip(*run['curve'])
      axes.plot(np.asarray(hours) / 3600.0, accuracy,
                color=f'C{list(CLOCK_METHODS).index(method)}', alpha=0.8,
                label=label if index == 0 else None)
  axes.set_xlabel('simulated wall clock (hours)')
  axes.set_ylabel('test accuracy')
  axes.legend(loc='lower right')
  axes.grid(alpha=0.3)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120, bbox_inches='tight')


def plot_bytes(records, path: pathlib.Path) -> None:
  figure = figure_lib.Figure(figsize=(6.5, 4.0))
  axes = figure.subplots()
  for position, (method, label) in enumerate(COMPRESSOR_NAMES.items()):
    runs = [r for r in records if r['part'] == 'bytes'
            and r['method'] == method]
    for index, run in enumerate(runs):
      sent, accuracy, _ = zip(*run['curve'])
      axes.plot(np.maximum(np.asarray(sent, np.float64), 1.0) / 1e6,
                accuracy, color=f'C{position}', alpha=0.8,
                label=label if index == 0 else None)
  axes.set_xscale('log')
  axes.set_xlabel('megabytes sent up (log scale)')
  axes.set_ylabel('test accuracy')
  axes.legend(loc='lower right', fontsize='small')
  axes.grid(alpha=0.3)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120, bbox_inches='tight')


def render_results(records, args, *, command: str, elapsed_s: float) -> str:
  """Return the results page, with a section for each part that ran."""
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
  seeds = ', '.join(str(seed) for seed in args.seeds)
  lines = [
      f'Command: `{command}`',
      '',
      f'Date: {date}. Hardware: {machine.hardware_line()}. Wall time: '
      f'{elapsed_s:.0f} s.',
      '',
      f'{args.clients} clients, seeds {seeds}. Cells are the mean ± sample '
      'standard deviation over seeds.',
  ]
  parts = {record['part'] for record in records}
  if 'clock' in parts:
    lines += ['', f'### Accuracy against simulated wall clock ({args.hours:g} '
              'h)', '', *clock_table(records, args.hours)]
  if 'bytes' in parts:
    lines += ['', f'### Accuracy against bytes sent up '
              f'({args.compression_rounds} rounds)', '',
              *bytes_table(records)]
  if 'privacy' in parts:
    lines += ['', '### Privacy accounted from the recorded participation',
              '', *privacy_table(records)]
  return '\n'.join(lines)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--clients', type=int, default=10_000,
                      help='synthetic clients in the population')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                      help='distinct seeds; each draws data, speeds and '
                      'schedules')
  parser.add_argument('--hours', type=script_help.finite_positive_float,
                      default=24.0,
                      help='simulated hours of parts 1 and 3; part 3 needs '
                      f'at least the {DEADLINE_S:g} s deadline of one round')
  parser.add_argument('--evaluate-every',
                      type=script_help.finite_positive_float, default=1800.0,
                      help='simulated seconds between evaluations')
  parser.add_argument('--compression-rounds', type=int, default=60,
                      help='rounds of each compressor in part 2')
  parser.add_argument('--compressors', nargs='+', default=list(COMPRESSORS),
                      choices=list(COMPRESSORS),
                      help='compressors of part 2')
  parser.add_argument('--parts', nargs='+', default=['clock', 'bytes',
                                                     'privacy'],
                      choices=['clock', 'bytes', 'privacy'],
                      help='which parts to run')
  parser.add_argument('--markdown', type=pathlib.Path,
                      default=DEFAULT_MARKDOWN,
                      help='results page; the block between its markers is '
                      'replaced')
  parser.add_argument('--json', type=pathlib.Path, default=None,
                      help='JSON lines file to which each finished run is '
                      'appended (default: the --markdown path with the '
                      'suffix .jsonl)')
  parser.add_argument('--clock-figure', type=pathlib.Path,
                      default=DEFAULT_CLOCK_FIGURE,
                      help='PNG of accuracy against simulated hours (part 1)')
  parser.add_argument('--bytes-figure', type=pathlib.Path,
                      default=DEFAULT_BYTES_FIGURE,
                      help='PNG of accuracy against megabytes sent up (part 2)')
  args = parser.parse_args(argv)
  if args.clients < COHORT:
    parser.error(f'--clients must be at least the cohort of {COHORT}; got '
                 f'{args.clients}.')
  script_help.check_seeds(parser, args.seeds)
  # A privacy round lasts up to the deadline, and only rounds that end
  # within the budget count, so a shorter budget leaves nothing to account.
  if 'privacy' in args.parts and args.hours * 3600.0 < DEADLINE_S:
    parser.error(f'--hours must be at least {DEADLINE_S / 3600.0:g} (the '
                 f'{DEADLINE_S:g} s deadline of one privacy round) when '
                 f'--parts includes privacy; got {args.hours:g}.')
  script_help.check_counts(parser, args, ('compression_rounds',))
  script_help.check_distinct(parser, '--compressors', args.compressors)
  script_help.check_distinct(parser, '--parts', args.parts)
  if args.json is None:
    args.json = args.markdown.with_suffix('.jsonl')
  script_help.check_results_page(parser, args.markdown, start=RESULTS_START,
                                 end=RESULTS_END)
  script_help.check_out_path(parser, args.json, '--json')
  script_help.check_out_path(parser, args.clock_figure, '--clock-figure')
  script_help.check_out_path(parser, args.bytes_figure, '--bytes-figure')
  return args


def main(argv=None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  json_path = args.json
  json_path.parent.mkdir(parents=True, exist_ok=True)
  records = []
  started = time.perf_counter()

  def keep(record):
    records.append(record)
    with json_path.open('a') as stream:
      stream.write(json.dumps(record) + '\n')
    print(f"{record['part']:8s} {record['method']:22s} seed "
          f"{record['seed']}: {time.perf_counter() - started:.0f} s",
          flush=True)
    interrupts.raise_if_requested()

  with script_help.stop_on_ctrl_c('participation_communication.py',
                                  json_path, 'run'):
    for seed in args.seeds:
      setup = Setup(seed, args.clients)
      if 'clock' in args.parts:
        for method in CLOCK_METHODS:
          keep(run_clock(setup, method, args.hours, seed,
                         args.evaluate_every))
      if 'bytes' in args.parts:
        for name in args.compressors:
          keep(run_compression(setup, name, args.compression_rounds, seed))
      if 'privacy' in args.parts:
        keep(run_privacy(setup, args.hours, seed))
  elapsed = time.perf_counter() - started
  command = 'python experiments/participation_communication.py ' + ' '.join(
      sys.argv[1:] if argv is None else argv)
  results_page.replace_results(
      args.markdown, render_results(
          records, args, command=command.strip(), elapsed_s=elapsed),
      start=RESULTS_START, end=RESULTS_END,
      title='Participation and communication')
  if 'clock' in args.parts:
    plot_clock(records, args.clock_figure)
  if 'bytes' in args.parts:
    plot_bytes(records, args.bytes_figure)
  return records


if __name__ == '__main__':
  main()
