"""Accuracy against Dirichlet label skew for four federated algorithms.

Usage:
  python experiments/heterogeneity_sweep.py [--alphas 0.05 0.1 ... 100]
      [--algorithms fedavg fedprox scaffold fedadam] [--seeds 0 1 2]
      [--rounds 30] [--clients 1000] [--out DIR] [--markdown PATH]
      [--figure PATH]

Every point is one `fedjax-med run` study on FedProx's IID synthetic data
(one shared softmax model, 60 features, 10 classes). The script draws
`--clients` synthetic clients of 50 to 100 rows, pools the rows and splits
them again into `--clients` clients by Dirichlet(alpha) label skew
(`data.partition=dirichlet`). Each client keeps 34% of its rows for testing.
A point trains logistic regression with a uniform cohort of 50 clients per
round and 10 local SGD steps of batch 10. It evaluates every client's test
rows after the last round, and the summary gives the mean, 10th-percentile
and worst client accuracy.

The algorithms differ only in the overrides of `ALGORITHMS`. FedAvg uses
the server optimizer 'sgd' with learning rate 1, FedProx adds a proximal
term with `--proximal-mu`, SCAFFOLD adds control variates, and FedAdam uses
the server optimizer 'fedadam'.

Outputs, under `--out`:
  points.csv: one row per (alpha, algorithm, seed), appended as each point
    finishes, so a killed sweep keeps its finished points. A point whose
    partition or training fails gets a row with its status and message.
  runs/: the run folder of every point (config.json, summary.json, ...).
Then the script writes the plot to `--figure` and the results to
`--markdown`, between the two marker lines of that page (the rest of the
page is kept).
"""

import argparse
import csv
import datetime
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Any

import jax
from jax import monitoring
import matplotlib
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med import study
from fedjax_med.errors import InputError
from fedjax_med.errors import TrainingDiverged

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MARKDOWN = ROOT / 'experiments' / 'heterogeneity_sweep.md'
DEFAULT_FIGURE = ROOT / 'docs' / 'figures' / 'heterogeneity_sweep.png'
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.3, 1.0, 10.0, 100.0)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_ROUNDS = 30
DEFAULT_CLIENTS = 1000
DEFAULT_PROXIMAL_MU = 0.1
RESULTS_START = '<!-- heterogeneity_sweep.py results: start -->'
RESULTS_END = '<!-- heterogeneity_sweep.py results: end -->'

# Overrides shared by every point, as `fedjax-med run --set` strings. The
# local learning rate of 0.3 was picked from 0.1, 0.3 and 1.0 at alpha 1 and
# 100 with 25 rounds: 0.1 left FedAvg near 55% mean accuracy.
BASE_OVERRIDES = {
    'data.dataset': 'synthetic_iid',
    'data.min_examples': '50',
    'data.max_examples': '100',
    'data.test_fraction': '0.34',
    'data.partition': 'dirichlet',
    'model.model': 'logistic_regression',
    'sampling.sampling': 'uniform',
    'sampling.cohort_size': '50',
    'client.optimizer': 'sgd',
    'client.learning_rate': '0.3',
    'client.local_steps': '10',
    'client.batch_size': '10',
}
# Overrides of each algorithm on top of BASE_OVERRIDES. FedProx's mu comes
# from --proximal-mu.
ALGORITHMS = {
    'fedavg': {},
    'fedprox': {},
    'scaffold': {'client.scaffold': 'true'},
    'fedadam': {
        'server.server_optimizer': 'fedadam',
        'server.server_learning_rate': '0.03',
        'server.server_tau': '0.001',
    },
}
LABELS = {
    'fedavg': 'FedAvg',
    'fedprox': 'FedProx',
    'scaffold': 'SCAFFOLD',
    'fedadam': 'FedAdam',
}
CSV_COLUMNS = (
    'alpha', 'algorithm', 'seed', 'status', 'mean_accuracy', 'p10_accuracy',
    'worst_accuracy', 'std_accuracy', 'clients_without_test_rows',
    'wall_time_s', 'compilations', 'run_dir', 'command', 'error',
)


class CompilationCounter:
  """Counts XLA backend compilations, through `jax.monitoring` events."""

  # Recorded once per backend compilation in JAX 0.10.2, the version tested.
  EVENT = '/jax/core/compile/backend_compile_duration'

  def __init__(self):
    self.count = 0
    # NOTE: JAX has no public call to remove a listener, so each counter
    # stays registered for the life of the process.
    monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == self.EVENT:
      self.count += 1


def point_overrides(
    alpha: float, algorithm: str, seed: int, args: argparse.Namespace
) -> dict[str, str]:
  """Return every `--set` override of one point, as strings."""
  overrides = dict(BASE_OVERRIDES)
  overrides.update({
      'name': f'alpha{alpha:g}_{algorithm}_seed{seed}',
      'seed': str(seed),
      'data.num_clients': str(args.clients),
      'data.partition_clients': str(args.clients),
      'data.dirichlet_alpha': f'{alpha:g}',
      'server.rounds': str(args.rounds),
      'evaluation.eval_every': str(args.rounds),
  })
  overrides.update(ALGORITHMS[algorithm])
  if algorithm == 'fedprox':
    overrides['client.proximal_mu'] = f'{args.proximal_mu:g}'
  return overrides


def cli_command(overrides: dict[str, str]) -> str:
  """Return the `fedjax-med run` command line that runs the same study."""
  parts = ['fedjax-med', 'run', '--no-progress']
  for key, value in overrides.items():
    parts += ['--set', f'{key}={value}']
  return shlex.join(parts)


# --- Running the points -------------------------------------------------------


def _run_point(overrides, run_dir, counter) -> dict[str, Any]:
  """Run one study and return its CSV fields other than the point's keys."""
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)
  compilations_before = counter.count
  start = time.perf_counter()
  fields: dict[str, Any] = {'command': cli_command(overrides)}
  try:
    _, summary = study.run_study(config, run_dir, progress=False)
  except InputError as error:
    fields.update(status='invalid', error=str(error))
  except TrainingDiverged as error:
    fields.update(status='diverged', error=str(error), run_dir=str(run_dir))
  else:
    test_counts = summary['num_test_examples'].values()
    fields.update(
        status='completed',
        mean_accuracy=summary['mean_accuracy'],
        p10_accuracy=summary['p10_accuracy'],
        worst_accuracy=summary['worst_accuracy'],
        std_accuracy=summary['fairness'].get('std_accuracy'),
        clients_without_test_rows=sum(count == 0 for count in test_counts),
        run_dir=str(run_dir),
    )
  fields['wall_time_s'] = round(time.perf_counter() - start, 2)
  fields['compilations'] = counter.count - compilations_before
  return fields


def run_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Run every point, appending each to `points.csv` as it finishes."""
  args.out.mkdir(parents=True, exist_ok=True)
  csv_path = args.out / 'points.csv'
  if csv_path.exists():
    raise InputError(
        f'{csv_path} already exists. Pass a new or empty folder as --out.'
    )
  counter = CompilationCounter()
  rows = []
  # A partition that fails for one seed fails for every algorithm, because
  # the data depends only on the data settings and the seed.
  failed_partitions: dict[tuple[float, int], str] = {}
  with csv_path.open('w', newline='') as file:
    writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    file.flush()
    for alpha in args.alphas:
      for seed in args.seeds:
        for algorithm in args.algorithms:
          overrides = point_overrides(alpha, algorithm, seed, args)
          row = {'alpha': alpha, 'algorithm': algorithm, 'seed': seed}
          if (alpha, seed) in failed_partitions:
            row.update(status='invalid', command=cli_command(overrides),
                       error=failed_partitions[(alpha, seed)],
                       wall_time_s=0.0, compilations=0)
          else:
            run_dir = args.out / 'runs' / overrides['name']
            row.update(_run_point(overrides, run_dir, counter))
            if row['status'] == 'invalid':
              failed_partitions[(alpha, seed)] = row['error']
          writer.writerow(row)
          file.flush()
          rows.append(row)
          _log_point(row)
  return rows


def _log_point(row: dict[str, Any]) -> None:
  if row['status'] == 'completed':
    outcome = (f"mean {row['mean_accuracy']:.3f} "
               f"p10 {row['p10_accuracy']:.3f} "
               f"worst {row['worst_accuracy']:.3f}")
  else:
    outcome = f"{row['status']}: {row['error']}"
  print(f"alpha={row['alpha']:g} {row['algorithm']} seed={row['seed']}: "
        f"{outcome} ({row['wall_time_s']:.1f} s)", flush=True)


# --- Aggregation, plot and page -----------------------------------------------


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict]:
  """Return seed statistics of each (algorithm, alpha) with completed runs."""
  groups: dict[tuple[str, float], list] = {}
  for row in rows:
    if row['status'] == 'completed':
      groups.setdefault((row['algorithm'], row['alpha']), []).append(row)
  stats = {}
  for key, group in groups.items():
    stats[key] = {'seeds': len(group)}
    for metric in ('mean_accuracy', 'p10_accuracy', 'worst_accuracy'):
      values = np.array([row[metric] for row in group], dtype=float)
      stats[key][metric] = (float(values.mean()), float(values.min()),
                            float(values.max()))
  return stats


def plot(stats, algorithms, alphas, path: pathlib.Path) -> None:
  """Plot mean and 10th-percentile client accuracy against alpha."""
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
  panels = (('mean_accuracy', 'mean client accuracy'),
            ('p10_accuracy', '10th-percentile client accuracy'))
  for axis, (metric, title) in zip(axes, panels):
    for algorithm in algorithms:
      points = [(alpha, stats[(algorithm, alpha)][metric])
                for alpha in sorted(alphas) if (algorithm, alpha) in stats]
      if not points:
        continue
      xs = [alpha for alpha, _ in points]
      means = [value[0] for _, value in points]
      lows = [value[1] for _, value in points]
      highs = [value[2] for _, value in points]
      line, = axis.plot(xs, means, marker='o', label=LABELS[algorithm])
      axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2)
    axis.set_xscale('log')
    axis.set_xlabel('Dirichlet alpha (smaller = more label skew)')
    axis.set_ylabel('test accuracy')
    axis.set_title(title)
    axis.grid(True, which='both', alpha=0.3)
  axes[0].legend()
  figure.suptitle('Seed mean (line) and min to max over seeds (band)')
  figure.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)


def _format_stat(value: tuple[float, float, float] | None) -> str:
  if value is None:
    return 'n/a'
  mean, low, high = value
  return f'{mean:.3f} ({low:.3f}-{high:.3f})'


def results_section(
    rows, stats, args, command, wall_time_s, compilations
) -> str:
  """Return the markdown of the results, without the marker lines."""
  lines = [
      f'Command: `{command}`',
      '',
      f'Date: {datetime.date.today().isoformat()}. Hardware: '
      f'{os.cpu_count()} CPU cores ({platform.machine()}, '
      f'{jax.devices()[0].platform} backend), Python '
      f'{platform.python_version()}, JAX {jax.__version__}. Wall time of '
      f'the whole sweep: {wall_time_s:.0f} s for {len(rows)} points, with '
      f'{compilations} XLA compilations.',
      '',
      f'Settings: {args.clients} clients, {args.rounds} rounds, FedProx mu '
      f'{args.proximal_mu:g}, seeds {" ".join(map(str, args.seeds))}. Each '
      'cell is the mean over seeds, with the min and max in brackets.',
      '',
      '| alpha | algorithm | seeds | mean accuracy | 10th percentile | '
      'worst client |',
      '|---|---|---|---|---|---|',
  ]
  for alpha in args.alphas:
    for algorithm in args.algorithms:
      stat = stats.get((algorithm, alpha))
      if stat is None:
        continue
      lines.append(
          f'| {alpha:g} | {LABELS[algorithm]} | {stat["seeds"]} | '
          f'{_format_stat(stat["mean_accuracy"])} | '
          f'{_format_stat(stat["p10_accuracy"])} | '
          f'{_format_stat(stat["worst_accuracy"])} |'
      )
  # Failures grouped by alpha, status and message, in sweep order.
  failures: dict[tuple[float, str, str], list[int]] = {}
  for row in rows:
    if row['status'] != 'completed':
      key = (row['alpha'], row['status'], row['error'])
      seeds = failures.setdefault(key, [])
      if row['seed'] not in seeds:
        seeds.append(row['seed'])
  if failures:
    lines += ['', 'Points without a result:', '']
    for (alpha, status, error), seeds in failures.items():
      lines.append(f'- alpha {alpha:g}, seeds {" ".join(map(str, seeds))} '
                   f'({status}): {error}')
  return '\n'.join(lines)


def write_markdown(path: pathlib.Path, section: str) -> None:
  """Write `section` between the marker lines of `path`, keeping the rest."""
  block = f'{RESULTS_START}\n{section}\n{RESULTS_END}'
  if not path.exists():
    path.write_text(f'# Heterogeneity sweep\n\n{block}\n')
    return
  page = path.read_text()
  start = page.find(RESULTS_START)
  end = page.find(RESULTS_END)
  if start < 0 or end < start:
    raise InputError(
        f'{path} lacks the marker lines {RESULTS_START!r} and '
        f'{RESULTS_END!r}. Add them where the results belong, or pass a '
        'new file as --markdown.'
    )
  path.write_text(page[:start] + block + page[end + len(RESULTS_END):])


# --- Command line -------------------------------------------------------------


def _parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--alphas', type=float, nargs='+', default=list(DEFAULT_ALPHAS),
      help='Dirichlet concentrations of the label skew (default: '
      f'{" ".join(f"{a:g}" for a in DEFAULT_ALPHAS)}).',
  )
  parser.add_argument(
      '--algorithms', nargs='+', choices=tuple(ALGORITHMS),
      default=list(ALGORITHMS), help='algorithms to run (default: all).',
  )
  parser.add_argument(
      '--seeds', type=int, nargs='+', default=list(DEFAULT_SEEDS),
      help='experiment seeds; each draws its own data, partition and '
      'initial model (default: 0 1 2).',
  )
  parser.add_argument(
      '--rounds', type=int, default=DEFAULT_ROUNDS,
      help=f'federated rounds per point (default: {DEFAULT_ROUNDS}).',
  )
  parser.add_argument(
      '--clients', type=int, default=DEFAULT_CLIENTS,
      help='synthetic clients drawn, and clients after the Dirichlet '
      f'partition; at least 50, the cohort (default: {DEFAULT_CLIENTS}).',
  )
  parser.add_argument(
      '--proximal-mu', type=float, default=DEFAULT_PROXIMAL_MU,
      help=f'FedProx mu (default: {DEFAULT_PROXIMAL_MU:g}).',
  )
  parser.add_argument(
      '--out', type=pathlib.Path, default=None,
      help='output folder for points.csv and the run folders, without a '
      'points.csv yet (default: runs/heterogeneity_sweep-<time>).',
  )
  parser.add_argument(
      '--markdown', type=pathlib.Path, default=DEFAULT_MARKDOWN,
      help='page whose results section is rewritten (default: '
      'experiments/heterogeneity_sweep.md).',
  )
  parser.add_argument(
      '--figure', type=pathlib.Path, default=DEFAULT_FIGURE,
      help='plot path (default: docs/figures/heterogeneity_sweep.png).',
  )
  args = parser.parse_args(argv)
  cohort_size = int(BASE_OVERRIDES['sampling.cohort_size'])
  if args.clients < cohort_size:
    parser.error(f'--clients must be at least the cohort of {cohort_size}; '
                 f'got {args.clients}.')
  if args.rounds < 1:
    parser.error(f'--rounds must be at least 1; got {args.rounds}.')
  if args.out is None:
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    args.out = ROOT / 'runs' / f'heterogeneity_sweep-{stamp}'
  return args


def main(argv=None) -> int:
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  command = shlex.join(
      ['python', 'experiments/heterogeneity_sweep.py', *argv]
  )
  start = time.perf_counter()
  try:
    rows = run_sweep(args)
  except InputError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  wall_time_s = time.perf_counter() - start
  stats = aggregate(rows)
  plot(stats, args.algorithms, args.alphas, args.figure)
  compilations = sum(int(row['compilations']) for row in rows)
  write_markdown(
      args.markdown,
      results_section(rows, stats, args, command, wall_time_s, compilations),
  )
  print(f'Wrote {args.out / "points.csv"}, {args.figure} and {args.markdown}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
