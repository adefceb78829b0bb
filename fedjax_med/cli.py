"""Command line: `fedjax-med run [CONFIG] [--set KEY=VALUE ...] [--out DIR]`.

Invalid input exits with status 2 and a one-line message on stderr.
"""

import argparse
import json
import pathlib
import sys

from fedjax_med import config as config_lib
from fedjax_med.errors import InputError


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='fedjax-med',
      description='Simulate federated learning on medical data with JAX.',
  )
  commands = parser.add_subparsers(dest='command', required=True)
  run = commands.add_parser(
      'run',
      help='run a federated study (default: FedAvg on Fed-Heart-Disease)',
      description=(
          'Run a federated study and write config.json, provenance.json, '
          'metrics.jsonl, summary.json and accuracy.png to its folder.'
      ),
  )
  run.add_argument(
      'config', nargs='?', default=None,
      help='TOML config file, such as experiments/heart_disease_fedavg.toml '
      '(default: the built-in default study)',
  )
  run.add_argument(
      '--set', dest='overrides', action='append', default=[],
      metavar='KEY=VALUE',
      help='override one config value, by `section.key` or a unique bare '
      'key, for example --set aggregator=median; repeatable',
  )
  run.add_argument(
      '--out', default=None,
      help='output folder, new or empty (default: runs/<name>-<time>)',
  )
  run.add_argument(
      '--no-progress', action='store_true', help='hide the progress bar'
  )
  commands.add_parser('keys', help='list every config key and its default')
  return parser


def _load_config(args) -> config_lib.ExperimentConfig:
  if args.config is None:
    config = config_lib.ExperimentConfig()
  else:
    config = config_lib.load_toml(args.config)
  overrides = dict(config_lib.parse_override(text) for text in args.overrides)
  return config_lib.apply_overrides(config, overrides)


def _print_summary(run_dir: pathlib.Path, summary: dict) -> None:
  print(f'Results in {run_dir}')
  for name, accuracy in summary['test_accuracy'].items():
    shown = 'n/a' if accuracy is None else f'{accuracy:.3f}'
    print(f'  {name:>16}: test accuracy {shown}')
  mean = summary['mean_accuracy']
  worst = summary['worst_accuracy']
  if mean is not None:
    print(f'  {"mean":>16}: {mean:.3f}   worst: {worst:.3f} '
          f'({summary["worst_client"]})')


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    if args.command == 'keys':
      print(json.dumps(config_lib.to_dict(config_lib.ExperimentConfig()),
                       indent=2))
      return 0
    config = _load_config(args)
    config_lib.validate(config)
    # Imported here so that `--help` and config errors return without
    # loading JAX.
    from fedjax_med import study  # pylint: disable=g-import-not-at-top

    run_dir, summary = study.run_study(
        config, args.out, progress=not args.no_progress
    )
  except InputError as error:
    print(f'fedjax-med: error: {error}', file=sys.stderr)
    return 2
  _print_summary(run_dir, summary)
  return 0


if __name__ == '__main__':
  sys.exit(main())
