"""Command line of fedjax-med.

* `fedjax-med run [CONFIG] [--set KEY=VALUE ...] [--out DIR]`: one study;
  `fedjax-med run --resume DIR` continues a stopped one from its checkpoint.
* `fedjax-med matrix CONFIG [--set KEY=VALUE ...] [--out DIR] [--resume]`:
  aggregators x attacks x malicious fractions x seeds, from the config's
  `[matrix]` table.
* `fedjax-med sweep CONFIG [--set KEY=VALUE ...] [--out DIR] [--resume]`:
  settings x seeds from the config's `[sweep]` table, batched into one
  compiled program where only array values differ.
* `fedjax-med keys`: every config key and its default.

Exit status: 0 on success; 2 for invalid input, with a one-line message on
stderr; 1 when training diverged; 130 after Ctrl-C or SIGTERM, once the
finished rounds and a checkpoint are on disk.
"""

import argparse
import json
import logging
import pathlib
import shlex
import sys

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.errors import TrainingDiverged

# Larger populations get summary statistics instead of a line per client.
_MAX_CLIENTS_PRINTED = 20


def _folder_path(text: str) -> str:
  """Reject an empty --out, which pathlib would read as '.'."""
  if not text.strip():
    raise argparse.ArgumentTypeError(
        'the folder path is empty. Pass a folder path, or leave the option '
        'out: --out then makes a new folder under runs/.')
  return text


def _run_folder(text: str) -> str:
  """Reject an empty --resume, which pathlib would read as '.'."""
  if not text.strip():
    raise argparse.ArgumentTypeError(
        'the run folder is empty. Pass the folder of the stopped run, the '
        'one its interrupt message names.')
  return text


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
          'metrics.jsonl, summary.json, accuracy.png and, for two classes, '
          'predictions.csv to its folder. A survival study '
          '(data.dataset=tcga_brca) writes c_index.png and risk_scores.csv '
          'instead of the last two.'
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
      '--out', default=None, type=_folder_path,
      help='output folder, new or empty (default: runs/<name>-<time>)',
  )
  run.add_argument(
      '--resume', default=None, metavar='RUN_DIR', type=_run_folder,
      help='continue the stopped run in RUN_DIR from its newest checkpoint, '
      'with the config it started with (no CONFIG, --set or --out)',
  )
  _add_checkpoint_option(run, 'save a checkpoint')
  run.add_argument(
      '--tensorboard', action='store_true',
      help='also write the per-round metrics as TensorBoard scalars to '
      '<run folder>/tensorboard (needs tensorboardX)',
  )
  run.add_argument(
      '--no-progress', action='store_true', help='hide the progress bar'
  )
  matrix = commands.add_parser(
      'matrix',
      help='run aggregators x attacks x malicious fractions x seeds',
      description=(
          'Run the robustness matrix of a config with a [matrix] table, '
          'such as experiments/robustness_matrix_heart.toml, and write '
          'cells.jsonl, table.md, table.csv and heatmap.png.'
      ),
  )
  matrix.add_argument('config', help='TOML config file with a [matrix] table')
  matrix.add_argument(
      '--set', dest='overrides', action='append', default=[],
      metavar='KEY=VALUE',
      help='override a config value, or a matrix axis such as '
      '--set matrix.seeds=0,1; repeatable',
  )
  matrix.add_argument(
      '--out', default=None, type=_folder_path,
      help='output folder, new or empty (default: runs/<name>_matrix-<time>)',
  )
  matrix.add_argument(
      '--resume', action='store_true',
      help='continue the matrix in --out, skipping the cells it finished',
  )
  matrix.add_argument(
      '--no-progress', action='store_true', help='hide the progress bar'
  )
  sweep = commands.add_parser(
      'sweep',
      help='run a grid of settings x seeds, batched where shapes allow',
      description=(
          'Run the grid of a config with a [sweep] table, such as '
          'experiments/heterogeneity_sweep.toml. Points that differ only in '
          'seeds, data settings, learning rates, proximal mu or the noise '
          'multiplier run as one compiled, vmapped program. Writes '
          'sweep.json, provenance.json, points.jsonl, rounds.jsonl, '
          'table.csv, summary.csv, summary.md, runs/ (the points run one by '
          'one) and, when the sweep has axes besides seeds, sweep.png. Exits '
          'with status 1 when some point failed, after writing the others.'
      ),
  )
  sweep.add_argument('config', help='TOML config file with a [sweep] table')
  sweep.add_argument(
      '--set', dest='overrides', action='append', default=[],
      metavar='KEY=VALUE',
      help='override a config value, or a sweep axis such as '
      '--set sweep.seeds=0,1; repeatable',
  )
  sweep.add_argument(
      '--out', default=None, type=_folder_path,
      help='output folder, new or empty (default: runs/<name>_sweep-<time>)',
  )
  sweep.add_argument(
      '--resume', action='store_true',
      help='continue the sweep in --out, skipping the points it finished',
  )
  _add_checkpoint_option(sweep, 'checkpoint a running batch or point')
  sweep.add_argument(
      '--no-progress', action='store_true', help='hide the progress bar'
  )
  commands.add_parser('keys', help='list every config key and its default')
  return parser


def _add_checkpoint_option(parser, action: str) -> None:
  parser.add_argument(
      '--checkpoint-every', dest='checkpoint_every', type=float,
      default=None, metavar='SECONDS',
      help=f'{action} every SECONDS and on Ctrl-C (default 30; 0 saves after '
      'every round)',
  )


def _checkpoint_options(args) -> dict[str, float]:
  """Return the `checkpoint_interval_s` keyword, when the flag was given."""
  if args.checkpoint_every is None:
    return {}
  return {'checkpoint_interval_s': args.checkpoint_every}


def _run_matrix(args) -> int:
  from fedjax_med import matrix  # pylint: disable=g-import-not-at-top

  overrides = dict(config_lib.parse_override(text) for text in args.overrides)
  base, axes = matrix.load_matrix_toml(args.config, overrides)
  _warn_low_threshold(base)
  run_dir, rows = matrix.run_matrix(
      base, axes, args.out, resume=args.resume,
      progress=not args.no_progress,
  )
  print(f'Results in {run_dir}: table.md, table.csv, heatmap.png')
  not_applicable = sum(1 for row in rows
                       if row['not_applicable'] and not row['completed'])
  diverged = sum(row['diverged'] for row in rows)
  print(f'  {len(rows)} cell{"" if len(rows) == 1 else "s"}, '
        f'{not_applicable} not applicable, '
        f'{diverged} diverged runs')
  return 0


# Failed sweep points whose reasons the summary prints.
_MAX_FAILED_POINTS_SHOWN = 10


def _run_sweep(args) -> int:
  from fedjax_med import sweep  # pylint: disable=g-import-not-at-top

  overrides = dict(config_lib.parse_override(text) for text in args.overrides)
  base, axes = sweep.load_sweep_toml(args.config, overrides)
  _warn_low_threshold(base)
  options = _checkpoint_options(args)
  run_dir, records = sweep.run_sweep(
      base, axes, args.out, resume=args.resume,
      progress=not args.no_progress,
      log=lambda line: print(line, file=sys.stderr), **options,
  )
  written = [name for name in ('table.csv', 'summary.md', 'sweep.png')
             if (run_dir / name).exists()]
  print(f'Results in {run_dir}: {", ".join(written)}')
  counts = {}
  for record in records:
    counts[record['status']] = counts.get(record['status'], 0) + 1
  print('  ' + ', '.join(f'{count} {status}'
                         for status, count in sorted(counts.items())))
  small = [record for record in records
           if record.get('denominator') is not None
           and record['denominator'] < 1]
  if small:
    points = ', '.join(str(record['point']) for record in small[:10])
    more = ', ...' if len(small) > 10 else ''
    print(f'warning: points {points}{more} divide each round\'s noise by an '
          'expected reporting weight under one client, so their noise '
          'swamps the updates (`denominator` in table.csv). '
          f'{_small_denominator_fix(small[0])}', file=sys.stderr)
  failed = [record for record in records if record['status'] == 'error']
  for record in failed[:_MAX_FAILED_POINTS_SHOWN]:
    reason = str(record.get('error', '')).splitlines()[0][:300]
    print(f'error: point {record["point"]} failed: {reason}',
          file=sys.stderr)
  if len(failed) > _MAX_FAILED_POINTS_SHOWN:
    print(f'error: {len(failed) - _MAX_FAILED_POINTS_SHOWN} more points '
          'failed; table.csv gives every reason.', file=sys.stderr)
  # The finished points are written. Status 1 signals to a script that some
  # points have no result.
  return 1 if failed else 0


def _load_config(args) -> tuple[config_lib.ExperimentConfig, frozenset[str]]:
  """Return the config of `args` and the keys it sets explicitly."""
  explicit_keys = frozenset()
  if args.config is None:
    config = config_lib.ExperimentConfig()
  else:
    config = config_lib.load_toml(args.config)
    explicit_keys = config_lib.given_keys(
        config_lib.document_keys(config_lib.read_toml(args.config)))
  overrides = dict(config_lib.parse_override(text) for text in args.overrides)
  config = config_lib.apply_overrides(config, overrides)
  return config, explicit_keys | config_lib.given_keys(overrides)


def _warn_low_threshold(config: config_lib.ExperimentConfig) -> None:
  """Warn when secure aggregation protects only against an honest server."""
  secure = config.secure_aggregation
  if secure.enabled and secure.threshold_fraction < 0.5:
    print(
        'warning: secure_aggregation.threshold_fraction='
        f'{secure.threshold_fraction:g} is below 0.5, so a server that lies '
        'about which clients dropped out can collect both secrets of a '
        'client from its neighbours and unmask its update. This setting '
        'models an honest server only.',
        file=sys.stderr,
    )


def _print_scores(summary: dict, metric: str, label: str) -> None:
  """Print the per-client, mean, worst and spread lines of `metric`.

  `metric` names the summary keys (`accuracy` for `test_accuracy`,
  `mean_accuracy`, ...) and `label` the per-client lines.
  """
  scores = summary[f'test_{metric}']
  if len(scores) <= _MAX_CLIENTS_PRINTED:
    for name, score in scores.items():
      shown = 'n/a' if score is None else f'{score:.3f}'
      print(f'  {name:>16}: {label} {shown}')
  mean = summary[f'mean_{metric}']
  if mean is not None:
    print(f'  {"mean":>16}: {mean:.3f}   worst: '
          f'{summary[f"worst_{metric}"]:.3f} ({summary["worst_client"]})   '
          f'10th percentile: {summary[f"p10_{metric}"]:.3f}')
  fairness = summary.get('fairness')
  if fairness:
    print(f'  {"spread":>16}: std {fairness[f"std_{metric}"]:.3f}   '
          f'best - worst {fairness["best_worst_gap"]:.3f}   smallest '
          f'quarter {fairness[f"smallest_clients_{metric}"]:.3f}, largest '
          f'quarter {fairness[f"largest_clients_{metric}"]:.3f}')


def _print_c_index_notes(summary: dict) -> None:
  """Print the pooled C-index and why a client's C-index is missing."""
  pooled = summary.get('pooled_c_index')
  if pooled is not None:
    print(f'  {"pooled":>16}: {pooled:.3f} (all test rows, pairs across '
          'clients included)')
  for name, reason in summary.get('c_index_reasons', {}).items():
    print(f'  {name:>16}: no C-index: {reason}')


def _print_summary(run_dir: pathlib.Path, summary: dict) -> None:
  print(f'Results in {run_dir}')
  if 'test_c_index' in summary:
    _print_scores(summary, 'c_index', 'test C-index')
    _print_c_index_notes(summary)
    client_scores = summary['test_c_index']
  else:
    _print_scores(summary, 'accuracy', 'test accuracy')
    client_scores = summary['test_accuracy']
  finetuned = summary.get('finetuned')
  if finetuned and finetuned['mean_accuracy'] is not None:
    print(f'  {"fine-tuned":>16}: mean {finetuned["mean_accuracy"]:.3f}   '
          f'worst {finetuned["worst_accuracy"]:.3f} after '
          f'{finetuned["finetune_steps"]} local steps per client')
  ditto = summary.get('ditto')
  if ditto and ditto['mean_accuracy'] is not None:
    print(f'  {"Ditto personal":>16}: mean {ditto["mean_accuracy"]:.3f}   '
          f'worst {ditto["worst_accuracy"]:.3f} (lambda '
          f'{ditto["ditto_lambda"]:g})')
  if ditto and ditto['diverged_clients']:
    print(
        f'warning: the Ditto personal models of '
        f'{len(ditto["diverged_clients"])} clients diverged (NaN or infinite '
        'params) and are left out of the Ditto accuracy. Lower '
        '`client.ditto_lambda` or `client.learning_rate`; with SGD, their '
        'product must stay below 2.', file=sys.stderr,
    )
  untrained = summary.get('num_clients_without_training_rows', 0)
  if untrained:
    names = summary['clients_without_training_rows']
    more = ', ...' if untrained > len(names) else ''
    print(
        f'warning: {untrained} of {len(client_scores)} clients have no '
        f'training rows after the test split ({", ".join(names)}{more}). They '
        'never train, and their test accuracy, which counts in the mean and '
        'worst accuracy, measures only the global model. Give them more '
        'rows, lower `data.test_fraction` or remove them.', file=sys.stderr,
    )
  privacy = summary['privacy']
  if privacy['private']:
    print(f"  privacy: {privacy['guarantee']} (noise multiplier "
          f"{privacy['noise_multiplier']:.4g}, {privacy['rounds_accounted']} "
          'rounds)')
    if privacy['delta'] * len(client_scores) >= 1:
      print(f"warning: delta={privacy['delta']:g} is not below 1 / "
            f'{len(client_scores)} clients, so the guarantee allows publishing '
            "one client's data outright with probability delta. Use a delta "
            'well below 1 / clients.', file=sys.stderr)
    _warn_small_denominator(privacy)
  claims = summary.get('participation', {}).get('privacy')
  if claims is not None:
    sampled = claims.get('sampled', {}).get('epsilon')
    sampled_text = '' if sampled is None else (
        f', {sampled:.4g} with sampling among the online clients')
    relation = claims['contributions']['relation'].replace('_', '-')
    print('  privacy from the recorded participation: epsilon '
          f"{claims['contributions']['epsilon']:.4g} without amplification"
          f'{sampled_text} ({relation} neighbors); report the smaller')
  example_privacy = summary['example_privacy']
  if example_privacy['private']:
    print(f"  example-level privacy: {example_privacy['guarantee']}")
    if example_privacy.get('delta_too_large'):
      print(f"warning: delta={example_privacy['delta']:g} is not below 1 / "
            f"{example_privacy['smallest_client_examples']} rows of the "
            'smallest client, so the example-level guarantee allows '
            'publishing one row outright with probability delta. Use a '
            'delta well below 1 / rows.', file=sys.stderr)
  if summary['stopped_at_target_epsilon']:
    print(f"  stopped after {summary['rounds_run']} of {summary['rounds']} "
          'rounds: one more would exceed the target epsilon')
  secure = summary.get('secure_aggregation', {'enabled': False})
  failed = secure.get('failed_rounds', 0)
  if secure['enabled']:
    degree, threshold = secure['degree'], secure['threshold']
    sizes = f'{degree} neighbours, threshold {threshold}'
    round_degree = secure.get('mean_round_degree', degree)
    round_threshold = secure.get('mean_round_threshold', threshold)
    if (round_degree, round_threshold) != (degree, threshold):
      # Rounds with fewer participants than slots use smaller graphs.
      sizes = (f'{round_degree:.3g} neighbours and threshold '
               f'{round_threshold:.3g} per round on average ({degree} and '
               f'{threshold} for a full cohort)')
    print(f"  secure aggregation: {sizes}, {failed} of "
          f"{summary['rounds_run']} rounds failed, "
          f"{secure.get('mean_client_bytes_up', 0):,.0f} bytes up per client "
          f"(plain: {secure.get('mean_plain_bytes_up', 0):,.0f})")
  if secure.get('updates_below_quantization'):
    print(
        'warning: the client updates are smaller than the fixed-point '
        f"quantization noise (norm about {secure['quantization_noise_norm']:.3g}"
        ') in most rounds, so secure aggregation mostly erased them. Lower '
        '`privacy.clip_norm` towards the update norms (mean_update_norm in '
        'metrics.jsonl), or use more `ring_bits` or a larger '
        '`fixed_point_scale`. Cohorts of clients much smaller than the '
        'largest one amplify this noise (secagg_quantization_norm).',
        file=sys.stderr,
    )
  if failed:
    stragglers = _round_totals(run_dir).get('num_stragglers', 0)
    # Dropped stragglers are protocol dropouts too; the other settings
    # cannot help while they are the cause.
    deadline = (
        f' {stragglers} updates missed `participation.deadline_s`; raise it '
        'or use `participation.straggler_policy=wait`.' if stragglers else '')
    too_small = secure.get('too_small_rounds', 0)
    # Rounds whose sampled clients were too few for the graph fail
    # whatever the dropout settings.
    sampled = (
        f' {too_small} of them sampled too few clients for the graph (2, or '
        '3 for harary): raise `sampling.sampling_rate` or '
        '`sampling.cohort_size`, or the clients\' availability.'
        if too_small else '')
    print(
        f'warning: secure aggregation failed in {failed} of '
        f'{summary["rounds_run"]} rounds: too few clients survived, or too '
        'few responded to rebuild a secret. The model did not change in '
        f'those rounds.{sampled}'
        f'{deadline} Lower `sampling.dropout_rate`, '
        '`secure_aggregation.unmask_dropout_rate` or '
        '`secure_aggregation.threshold_fraction` (below 0.5 it holds only '
        'against an honest server), or use a larger degree.',
        file=sys.stderr,
    )
  if summary['skipped_rounds'] == summary['rounds_run'] and (
      failed < summary['rounds_run']):
    print(
        f'warning: all {summary["rounds_run"]} rounds were skipped because no '
        'client contributed, so these are the test scores of the untrained '
        f'model.{_no_contribution_cause(run_dir, summary)}', file=sys.stderr,
    )
  else:
    nonfinite = _round_totals(run_dir).get('num_nonfinite', 0)
    if nonfinite:
      print(
          f'warning: {nonfinite} client updates were NaN or infinite and were '
          'left out of their rounds, so the model learned from fewer clients '
          f'than sampled (`num_nonfinite` in metrics.jsonl). '
          f'{_nonfinite_fix(summary)}',
          file=sys.stderr,
      )


def _warn_small_denominator(privacy: dict) -> None:
  """Warn when the fixed denominator makes the noise swamp the updates.

  Each round's noised sum is divided by the expected reporting weight. Below
  one client's weight of 1, the noise is larger than any clipped update.
  """
  denominator = privacy.get('denominator')
  if denominator is None or denominator >= 1:
    return
  clients = privacy['expected_reporting_clients']
  if clients < 1:
    print(f'warning: {clients:.3g} clients are expected to report per '
          'round, and each round divides its noise by their weight, so the '
          f'noise swamps the updates. {_small_denominator_fix(privacy)}',
          file=sys.stderr)
    return
  print(f'warning: the {clients:.3g} clients expected to report per round '
        f'weigh {denominator:.3g} in all under `server.weight_cap`, because '
        'each weighs min(examples / weight_cap, 1). Each round divides its '
        'noise by that weight, so the noise swamps the updates. '
        f'{_small_denominator_fix(privacy)}', file=sys.stderr)


def _small_denominator_fix(privacy: dict) -> str:
  """Return what raises a denominator below one client's weight."""
  if privacy['expected_reporting_clients'] < 1:
    return ('Raise `participation.availability` or its off-hours '
            'probability, the cohort or sampling rate, or lower '
            '`sampling.dropout_rate`. Off-hours probability 0 closes those '
            'hours, and the rounds skip them.')
  return ('Lower `server.weight_cap` towards the clients\' example '
          'counts.')


def _nonfinite_fix(summary: dict) -> str:
  """Return what to change when client updates were NaN or infinite."""
  attack = summary.get('attack', {}).get('attack', 'none')
  fix = 'Lower `client.learning_rate` or check the data for extreme values.'
  if attack in ('none', 'label_flip'):
    return fix
  return (f'{fix} With `attack.attack={attack}`, the attackers\' crafted '
          'updates may be the infinite ones: lower the magnitude of '
          '`attack.attack_strength`.')


_CLINICAL_SETTINGS = ('threshold', 'confidence', 'bootstrap_resamples')


def _warn_unused_clinical_settings(config, explicit_keys, summary) -> None:
  """Warn about clinical settings that a multi-class task never read.

  Only binary tasks get clinical metrics, and the class count is known only
  once the data is loaded, so the config check cannot reject these.
  """
  if summary.get('clinical'):
    return
  defaults = config_lib.EvaluationConfig()
  unused = [f'`evaluation.{name}`' for name in _CLINICAL_SETTINGS
            if f'evaluation.{name}' in explicit_keys
            or getattr(config.evaluation, name) != getattr(defaults, name)]
  if unused:
    print(f'warning: {", ".join(unused)} had no effect: clinical metrics '
          'are computed only for binary tasks.', file=sys.stderr)


def _round_totals(run_dir: pathlib.Path) -> dict[str, int]:
  """Sum the integer client counts of every round in `metrics.jsonl`."""
  totals = {}
  path = run_dir / 'metrics.jsonl'
  if not path.exists():
    return totals
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    for name, value in record.items():
      if name.startswith('num_') and isinstance(value, (int, float)):
        totals[name] = totals.get(name, 0) + int(value)
  return totals


def _no_contribution_cause(run_dir: pathlib.Path, summary: dict) -> str:
  """Return a sentence on why no client contributed, from the round counts."""
  totals = _round_totals(run_dir)
  if summary.get('participation') is not None and totals.get(
      'num_sampled', 0) == 0:
    return (' No client was online when sampled; raise '
            '`participation.availability`.')
  if totals.get('num_sampled', 0) and totals.get(
      'num_dropped') == totals['num_sampled']:
    return ' Every sampled client dropped out; lower `sampling.dropout_rate`.'
  if totals.get('num_stragglers', 0) and not totals.get('num_reported', 0):
    return (f' {totals["num_stragglers"]} updates missed '
            '`participation.deadline_s` and were discarded; raise the '
            'deadline, lower `client.local_steps` or use '
            '`participation.straggler_policy=wait`.')
  if totals.get('num_nonfinite', 0):
    return (f' {totals["num_nonfinite"]} updates were NaN or infinite and '
            f'were left out. {_nonfinite_fix(summary)}')
  if totals.get('num_sampled', 0) and not totals.get('num_examples', 0):
    return ' The sampled clients have no training rows.'
  return ''


def _print_interrupt(args: argparse.Namespace,
                     interrupt: StudyInterrupted) -> None:
  """Print where an interrupted command left its results and how to resume.

  A sweep's or matrix's resume command repeats its config file and its
  `--set` overrides, because resuming checks that the settings are the
  ones the run started with.
  """
  if args.command == 'run':
    unit, records = 'round', 'metrics.jsonl'
    resume = shlex.join(['fedjax-med', 'run', '--resume',
                         str(interrupt.run_dir)])
  else:
    unit, records = {'sweep': ('point', 'points.jsonl'),
                     'matrix': ('run', 'cells.jsonl')}[args.command]
    overrides = [part for override in args.overrides
                 for part in ('--set', override)]
    resume = shlex.join(['fedjax-med', args.command, args.config, *overrides,
                         '--out', str(interrupt.run_dir), '--resume'])
  count = interrupt.rounds_done
  noun = unit if count == 1 else unit + 's'
  verb = 'is' if count == 1 else 'are'
  print(
      f'fedjax-med: interrupted; {count} finished {noun} {verb} in '
      f'{interrupt.run_dir / records}. Continue with {resume}.',
      file=sys.stderr,
  )


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  restore = interrupts.defer_ctrl_c()
  try:
    return _main(args)
  except KeyboardInterrupt:
    # Ctrl-C before a run folder existed, for example while JAX loads.
    print('fedjax-med: interrupted before any result was written.',
          file=sys.stderr)
    return 130
  finally:
    restore()


def _main(args) -> int:
  try:
    if args.command == 'keys':
      print(json.dumps(config_lib.to_dict(config_lib.ExperimentConfig()),
                       indent=2))
      return 0
    if args.command == 'matrix':
      return _run_matrix(args)
    if args.command == 'sweep':
      return _run_sweep(args)
    options = {'progress': not args.no_progress,
               'tensorboard': args.tensorboard, **_checkpoint_options(args)}
    if args.resume is not None:
      if args.config is not None or args.overrides or args.out is not None:
        raise InputError(
            '--resume continues a run with the config it started with; '
            'drop CONFIG, --set and --out, or start a new run without '
            '--resume.'
        )
      from fedjax_med import study  # pylint: disable=g-import-not-at-top

      run_dir, summary = study.resume_study(
          args.resume, log=lambda line: print(line, file=sys.stderr),
          **options)
    else:
      config, explicit_keys = _load_config(args)
      config_lib.validate(config, given_keys=explicit_keys)
      _warn_low_threshold(config)
      # Imported here so that `--help` and config errors return without
      # loading JAX.
      from fedjax_med import study  # pylint: disable=g-import-not-at-top

      run_dir, summary = study.run_study(config, args.out, **options)
      _warn_unused_clinical_settings(config, explicit_keys, summary)
  except InputError as error:
    print(f'fedjax-med: error: {error}', file=sys.stderr)
    return 2
  except TrainingDiverged as error:
    print(f'fedjax-med: error: {error}', file=sys.stderr)
    return 1
  except StudyInterrupted as interrupt:
    _print_interrupt(args, interrupt)
    return 130
  except Exception as error:  # pylint: disable=broad-exception-caught
    if not (_out_of_memory(error) or isinstance(error, MemoryError)):
      raise
    reason = (str(error).splitlines() or [type(error).__name__])[0][:300]
    print(_OUT_OF_MEMORY_MESSAGE.format(reason=reason), file=sys.stderr)
    return 1
  _print_summary(run_dir, summary)
  return 0


_OUT_OF_MEMORY_MESSAGE = (
    'fedjax-med: error: the accelerator or host ran out of memory ({reason}). '
    'Lower what one round holds at once: `client.chunk_size` (clients '
    'trained together), `client.batch_size`, `sampling.cohort_size`, the '
    'model size (`model.hidden_sizes`, `model.widths`) or the data size. '
    'Rounds that finished before are kept in the output folder.'
)


def _out_of_memory(error: Exception) -> bool:
  """Return whether `error` is XLA's RESOURCE_EXHAUSTED allocation failure."""
  module = type(error).__module__ or ''
  return (module.startswith(('jax', 'jaxlib'))
          and 'RESOURCE_EXHAUSTED' in str(error))


if __name__ == '__main__':
  sys.exit(main())
