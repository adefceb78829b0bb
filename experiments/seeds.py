"""Run one study over several seeds and tabulate per-hospital accuracy.

A survival study (`--set dataset=tcga_brca --set model=cox`, or
`experiments/tcga_brca_fedavg.toml`) is tabulated by its per-client
C-index instead.

Usage:
  python experiments/seeds.py [CONFIG.toml] [--seeds 0 1 2 3 4]
      [--set KEY=VALUE ...] [--out DIR]

Each seed's run folder is written under DIR as it finishes, then
`seeds.json` and `seeds.md` (mean and standard deviation across seeds) are
written to DIR.
"""

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med.errors import InputError
from fedjax_med.report import outputs
from fedjax_med.report import script_help


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('config', nargs='?', default=None,
                      help='study TOML file; the defaults without one')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4],
                      help='distinct seeds; each runs the whole study once')
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE',
                      help='a config setting, as in `fedjax-med run --set`; '
                      'repeat it for more')
  parser.add_argument('--out', default=None,
                      help='empty or new folder of the results; without it, '
                      'a new folder under runs/')
  args = parser.parse_args(argv)
  script_help.check_seeds(parser, args.seeds)
  return args


def _cell(value) -> str:
  """Format a score; None is a client without one (no test rows or pairs)."""
  return 'n/a' if value is None else f'{value:.3f}'


def _table(rows, client_names, metric: str, label: str) -> str:
  """Format the seeds' `test_<metric>` scores and their mean as markdown."""
  header = ['seed', *client_names, 'mean', 'worst']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    cells = [str(row['seed'])]
    cells += [_cell(row[f'test_{metric}'][name]) for name in client_names]
    cells += [_cell(row[f'mean_{metric}']), _cell(row[f'worst_{metric}'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  means = np.array([row[f'mean_{metric}'] for row in rows])
  # One seed has no sample standard deviation.
  spread = (f'standard deviation {means.std(ddof=1):.3f}, '
            if len(rows) > 1 else '')
  lines.append('')
  lines.append(
      f'Mean per-hospital {label} over {len(rows)} seeds: '
      f'{means.mean():.3f} ({spread}min {means.min():.3f}, '
      f'max {means.max():.3f}).'
  )
  return '\n'.join(lines) + '\n'


def _metric(summary) -> tuple[str, str]:
  """Return the summary's score name and its label: accuracy or C-index."""
  if 'test_c_index' in summary:
    return 'c_index', 'C-index'
  return 'accuracy', 'accuracy'


def main(argv=None) -> int:
  args = _parse_args(argv)
  try:
    base = (config_lib.ExperimentConfig() if args.config is None
            else config_lib.load_toml(args.config))
    overrides = dict(config_lib.parse_override(text) for text in args.overrides)
    base = config_lib.apply_overrides(base, overrides)
    out = outputs.make_run_dir(
        None if args.out is None else pathlib.Path(args.out),
        f'{config_lib.run_name(base)}-seeds',
    )
    rows = []
    with script_help.stop_on_ctrl_c('seeds.py', out):
      for seed in args.seeds:
        config = dataclasses.replace(base, seed=seed)
        _, summary = study.run_study(config, out / f'seed_{seed}',
                                     progress=False)
        rows.append(summary)
        metric, label = _metric(summary)
        print(f'seed {seed}: mean {label} '
              f"{_cell(summary[f'mean_{metric}'])}", flush=True)
        # The study checks for a stop only after each round, so a Ctrl-C
        # during its final evaluation is honoured here, before the tables.
        interrupts.raise_if_requested()
  except InputError as error:
    print(f'seeds.py: error: {error}', file=sys.stderr)
    return 2
  metric, label = _metric(rows[0])
  client_names = list(rows[0][f'test_{metric}'])
  outputs.write_json(out / 'seeds.json', rows)
  table = _table(rows, client_names, metric, label)
  (out / 'seeds.md').write_text(table)
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
