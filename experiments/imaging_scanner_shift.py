"""FedAvg, FedProx and FedBN on digits split over sites with scanner shift.

Usage:
  python experiments/imaging_scanner_shift.py [--seeds 0 1 2] [--rounds 20]
      [--clients 100] [--markdown PATH] [--figure PATH]
      [--profiles-figure PATH] [--json PATH]

The bundled 8x8 digits (1,797 handwritten digits from the UCI Optical
Recognition of Handwritten Digits set) stand in for a small imaging task.
They are dealt into `--clients` sites, and each site gets one of the five
profiles of `fedjax_med.data.scanner.PROFILES` at random, so its train and
test images pass through that scanner's intensity curve, blur, resolution
loss and noise. All three algorithms train the same ResNet with batch
normalization (`model.model=resnet`, widths 8 and 16), with every site
in every round, 10 local SGD steps of batch 8 at learning rate 0.05:

* FedAvg: every layer is averaged, batch statistics included;
* FedProx with `client.proximal_mu=0.1`, otherwise FedAvg;
* FedBN (`client.fedbn=true`): each site keeps its normalization layers
  (scale, bias, mean and variance) and is evaluated with them.

Each run goes through `study.run_study`, with the keys that `fedjax-med
run` uses, so any row can be rerun on its own from the config in the
JSON file. Every finished run is appended to `--json` at once, so a
stopped study keeps what it finished. The results go between the two
marker lines of the markdown page; the rest of the page is kept.
"""

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import jax
from matplotlib import figure as figure_lib
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med.data import images
from fedjax_med.data import scanner
from fedjax_med.errors import InputError
from fedjax_med.report import image_plots
from fedjax_med.report import machine
from fedjax_med.report import results_page
from fedjax_med.report import script_help

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MARKDOWN = ROOT / 'experiments' / 'imaging_scanner_shift.md'
DEFAULT_FIGURE = ROOT / 'docs' / 'figures' / 'imaging_scanner_shift.png'
DEFAULT_PROFILES_FIGURE = (
    ROOT / 'docs' / 'figures' / 'imaging_scanner_profiles.png')
RESULTS_START = '<!-- imaging_scanner_shift.py results: start -->'
RESULTS_END = '<!-- imaging_scanner_shift.py results: end -->'

PROFILE_NAMES = tuple(scanner.PROFILES)
# Overrides shared by every algorithm.
BASE = {
    'data.dataset': 'digits',
    'data.scanner_profiles': ','.join(PROFILE_NAMES),
    'model.model': 'resnet',
    'model.widths': '8,16',
    'client.optimizer': 'sgd',
    'client.learning_rate': 0.05,
    'client.local_steps': 10,
    'client.batch_size': 8,
    'evaluation.eval_every': 5,
}
ALGORITHMS = {
    'fedavg': {},
    'fedprox': {'client.proximal_mu': 0.1},
    'fedbn': {'client.fedbn': True},
}
LABELS = {'fedavg': 'FedAvg', 'fedprox': 'FedProx (mu 0.1)', 'fedbn': 'FedBN'}


def build_config(algorithm: str, *, seed: int, rounds: int,
                 clients: int) -> config_lib.ExperimentConfig:
  overrides = {**BASE, **ALGORITHMS[algorithm],
               'server.rounds': rounds, 'data.num_clients': clients,
               'seed': seed, 'name': f'imaging_{algorithm}_seed{seed}'}
  config = config_lib.apply_overrides(config_lib.ExperimentConfig(),
                                      overrides)
  config_lib.validate(config)
  return config


def profile_of(client_name: str) -> str:
  """Return the profile that `study` appended to a client's name."""
  for name in PROFILE_NAMES:
    if client_name.endswith('_' + name):
      return name
  raise ValueError(f'Client {client_name!r} names no scanner profile.')


def run_one(algorithm: str, *, seed: int, rounds: int, clients: int,
            out_root: pathlib.Path) -> dict[str, Any]:
  config = build_config(algorithm, seed=seed, rounds=rounds, clients=clients)
  start = time.perf_counter()
  _, summary = study.run_study(
      config, out_root / f'{algorithm}_seed{seed}', progress=False)
  accuracy = summary['test_accuracy']
  by_profile = {}
  for name in PROFILE_NAMES:
    values = [value for client, value in accuracy.items()
              if profile_of(client) == name and value is not None]
    by_profile[name] = float(np.mean(values)) if values else None
  return {
      'algorithm': algorithm, 'seed': seed, 'rounds': rounds,
      'clients': clients,
      'mean_accuracy': summary['mean_accuracy'],
      'worst_accuracy': summary['worst_accuracy'],
      'p10_accuracy': summary['p10_accuracy'],
      'worst_client': summary['worst_client'],
      'profile_accuracy': by_profile,
      'test_accuracy': accuracy,
      'wall_time_s': round(time.perf_counter() - start, 1),
      'config': config_lib.to_dict(config),
  }


def _by_algorithm(records) -> dict[str, list[dict[str, Any]]]:
  grouped = {}
  for record in records:
    grouped.setdefault(record['algorithm'], []).append(record)
  return grouped


def accuracy_table(records) -> list[str]:
  lines = ['| algorithm | mean client accuracy | worst client | '
           '10th percentile | seconds per run |',
           '|---|---|---|---|---|']
  for algorithm, rows in _by_algorithm(records).items():
    lines.append(
        f'| {LABELS[algorithm]} | '
        f"{results_page.mean_std([row['mean_accuracy'] for row in rows])} | "
        f"{results_page.mean_std([row['worst_accuracy'] for row in rows])} | "
        f"{results_page.mean_std([row['p10_accuracy'] for row in rows])} | "
        f"{np.mean([row['wall_time_s'] for row in rows]):.0f} |")
  return lines


def profile_table(records) -> list[str]:
  grouped = _by_algorithm(records)
  lines = ['| scanner profile | ' + ' | '.join(
      LABELS[name] for name in grouped) + ' |',
           '|---' * (len(grouped) + 1) + '|']
  for profile in PROFILE_NAMES:
    cells = [
        results_page.mean_std(
            [row['profile_accuracy'][profile] for row in rows])
        for rows in grouped.values()
    ]
    lines.append(f'| {profile} | ' + ' | '.join(cells) + ' |')
  return lines


def plot_profiles_accuracy(records, path: pathlib.Path) -> None:
  """Draw mean accuracy per scanner profile, one bar per algorithm."""
  grouped = _by_algorithm(records)
  figure = figure_lib.Figure(figsize=(8, 4), layout='constrained')
  axes = figure.add_subplot()
  width = 0.8 / len(grouped)
  positions = np.arange(len(PROFILE_NAMES))
  for index, (algorithm, rows) in enumerate(grouped.items()):
    means = []
    for profile in PROFILE_NAMES:
      values = [row['profile_accuracy'][profile] for row in rows
                if row['profile_accuracy'][profile] is not None]
      # A profile without sites (few clients) gets no bar, as n/a on the page.
      means.append(float(np.mean(values)) if values else np.nan)
    axes.bar(positions + index * width, means, width,
             label=LABELS[algorithm])
  axes.set_xticks(positions + width * (len(grouped) - 1) / 2,
                  PROFILE_NAMES, rotation=15)
  axes.set_ylabel('mean test accuracy of its sites')
  axes.set_ylim(0, 1)
  axes.legend()
  axes.set_title('Digits over scanner profiles: accuracy per profile')
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120)


def plot_profile_examples(path: pathlib.Path) -> None:
  """Save example digits as each scanner profile captures them."""
  pixels, labels = images.load_digits()
  examples = np.stack([pixels[np.flatnonzero(labels == digit)[0]]
                       for digit in range(6)])
  figure = image_plots.plot_profile_examples(
      examples, PROFILE_NAMES, key=jax.random.key(0))
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=100)


def render_results(records, *, command: str, elapsed_s: float) -> str:
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
  seeds = sorted({record['seed'] for record in records})
  first = records[0]
  return '\n'.join([
      f'Command: `{command}`',
      '',
      f'Date: {date}. Hardware: {machine.hardware_line()}. Wall time: '
      f'{elapsed_s:.0f} s.',
      '',
      f"{first['clients']} sites, {first['rounds']} "
      f"round{'' if first['rounds'] == 1 else 's'}, seeds "
      f"{', '.join(str(seed) for seed in seeds)}. Cells are the mean ± "
      'sample standard deviation over seeds of the per-site test accuracy '
      'statistics.',
      '',
      '### Accuracy over sites',
      '',
      *accuracy_table(records),
      '',
      '### Mean accuracy of the sites of each scanner profile',
      '',
      *profile_table(records),
  ])


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                      help='distinct seeds; each runs every algorithm once')
  parser.add_argument('--rounds', type=int, default=20,
                      help='federated rounds per run')
  parser.add_argument('--clients', type=int, default=100,
                      help='sites the 1,797 digits are dealt into')
  parser.add_argument('--algorithms', nargs='+', default=list(ALGORITHMS),
                      choices=list(ALGORITHMS),
                      help='algorithms to run, each on every seed')
  parser.add_argument('--markdown', type=pathlib.Path,
                      default=DEFAULT_MARKDOWN,
                      help='results page; the block between its markers '
                           'is replaced')
  parser.add_argument('--figure', type=pathlib.Path, default=DEFAULT_FIGURE,
                      help='PNG of accuracy per scanner profile')
  parser.add_argument('--profiles-figure', type=pathlib.Path,
                      default=DEFAULT_PROFILES_FIGURE,
                      help='PNG of example digits through each profile')
  parser.add_argument('--json', type=pathlib.Path, default=None,
                      help='JSON-lines file; each finished run is appended')
  args = parser.parse_args(argv)
  script_help.check_seeds(parser, args.seeds)
  for algorithm in args.algorithms:
    try:
      build_config(algorithm, seed=args.seeds[0], rounds=args.rounds,
                   clients=args.clients)
    except InputError as error:
      parser.error(f'--rounds {args.rounds} or --clients {args.clients}: '
                   f'{error}')
  script_help.check_results_page(parser, args.markdown, start=RESULTS_START,
                                 end=RESULTS_END)
  for flag, path in (('--figure', args.figure),
                     ('--profiles-figure', args.profiles_figure),
                     ('--json', args.json)):
    script_help.check_out_path(parser, path, flag)
  return args


def main(argv=None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  start = time.perf_counter()
  plot_profile_examples(args.profiles_figure)
  records = []
  with (script_help.stop_on_ctrl_c('imaging_scanner_shift.py', args.json),
        tempfile.TemporaryDirectory(prefix='imaging_scanner_') as out_root):
    for seed in args.seeds:
      for algorithm in args.algorithms:
        record = run_one(algorithm, seed=seed, rounds=args.rounds,
                         clients=args.clients,
                         out_root=pathlib.Path(out_root))
        records.append(record)
        print(f"{algorithm} seed {seed}: mean {record['mean_accuracy']:.3f}"
              f" worst {record['worst_accuracy']:.3f} "
              f"({record['wall_time_s']:.0f} s)", flush=True)
        if args.json is not None:
          args.json.parent.mkdir(parents=True, exist_ok=True)
          with args.json.open('a') as stream:
            stream.write(json.dumps(record) + '\n')
        # The study checks for a stop only after each round, so a Ctrl-C
        # during its final evaluation is honoured here, before the page.
        interrupts.raise_if_requested()
  command = 'python experiments/imaging_scanner_shift.py ' + ' '.join(
      argv if argv is not None else sys.argv[1:])
  results_page.replace_results(
      args.markdown, render_results(
          records, command=command.strip(),
          elapsed_s=time.perf_counter() - start),
      start=RESULTS_START, end=RESULTS_END, title='Scanner shift on digits')
  plot_profiles_accuracy(records, args.figure)
  return records


if __name__ == '__main__':
  main()
