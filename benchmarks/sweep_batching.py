"""Wall time of a sweep run batched against the same points run in a loop.

Each workload is a grid of points that differ only in values a batched
sweep takes as arrays (seed, learning rate, data settings), so
`sweep.run_sweep` can run them through `jax.vmap` in one compiled program
per batch. The same
points then run one by one through `study.run_study`, as a Python loop.
Both modes write their usual output folders under a scratch folder, and
both timings include data loading, compilation, training, evaluation and
writing.

Workloads:

* heart: Fed-Heart-Disease (4 hospitals) with the default config, 20 rounds
  of 20 local steps, `client.learning_rate` in {0.003, 0.01, 0.03, 0.1} x
  seeds {0, 1, 2, 3}: 16 points. Each round is cheap, so compilation
  dominates the loop.
* synthetic: `synthetic_iid` with 200 clients re-split by a Dirichlet label
  partition, a uniform cohort of 20 per round, 10 local steps of batch 10
  at learning rate 0.3, 20 rounds, `data.dirichlet_alpha` in {1, 100} x
  seeds {0, 1, 2}: 6 points. The sweep runs them as two batches of 3,
  because the largest clients under alpha 1 are more than
  `sweep.MAX_PADDING` times those under alpha 100.

NOTE: synthetic was meant as the workload where training dominates. On a
2-core x86_64 CPU with JAX 0.10.2, its batched time was 8.3 s at 2 rounds
and 9.3 s and 9.9 s in two runs at 20, so data generation and compilation
dominate there too. More rounds or clients would be needed to measure a training-bound
grid.

JAX caches compiled programs in memory by their content, not only by
function object, so a mode that runs second could reuse the first mode's
compilations. `jax.clear_caches()` therefore runs before each mode, and the
loop runs first on the first workload, the batched sweep first on the next,
and so on alternately. Compilations are counted with a `jax.monitoring`
listener on the backend-compile event.

The batched sweep gives each point its own seed and data, so the two modes
should give the same `mean_accuracy` for every point to float precision.
The `fedjax_med.sweep` docstring allows one exception: a point whose clients
the sweep pads further than its own run does matches it only in
distribution. The synthetic batches pad some points this way. The table
reports the maximum absolute difference.

Usage:
  python benchmarks/sweep_batching.py [--workloads heart synthetic]
      [--rounds 20] [--results benchmarks/RESULTS.md] [--out DIR]

Progress goes to stderr. The results section is printed and, with
--results, appended to that page with the date, the command, the JAX
version and the device.
"""

import argparse
import contextlib
import dataclasses
import pathlib
import shlex
import sys
import tempfile
import time
from typing import Any, Callable

import jax
from jax import monitoring

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med import sweep as sweep_lib
from fedjax_med.errors import TrainingDiverged
from fedjax_med.report import machine
from fedjax_med.report import script_help

# Recorded once per XLA backend compilation (checked with JAX 0.10.2).
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
LOOP = 'loop'
BATCHED = 'batched'


@dataclasses.dataclass(frozen=True)
class Workload:
  """A base study and the sweep axes run over it."""

  name: str
  base_overrides: dict[str, Any]
  axes: dict[str, list[Any]]
  rounds: int

  def build(
      self, rounds: int | None = None
  ) -> tuple[config_lib.ExperimentConfig, sweep_lib.SweepConfig]:
    """Return the base config and sweep, with `rounds` if given."""
    overrides = dict(self.base_overrides)
    overrides['server.rounds'] = self.rounds if rounds is None else rounds
    base = config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)
    return base, sweep_lib.sweep_from_document(dict(self.axes), base)


WORKLOADS = {
    'heart': Workload(
        name='heart',
        base_overrides={'client.local_steps': 20},
        axes={'seeds': [0, 1, 2, 3],
              'client.learning_rate': [0.003, 0.01, 0.03, 0.1]},
        rounds=20,
    ),
    'synthetic': Workload(
        name='synthetic',
        base_overrides={
            'data.dataset': 'synthetic_iid',
            'data.num_clients': 200,
            'data.partition': 'dirichlet',
            'data.partition_clients': 200,
            'sampling.sampling': 'uniform',
            'sampling.cohort_size': 20,
            'client.local_steps': 10,
            'client.batch_size': 10,
            'client.learning_rate': 0.3,
        },
        axes={'seeds': [0, 1, 2], 'data.dirichlet_alpha': [1.0, 100.0]},
        rounds=20,
    ),
}


class CompilationCounter:
  """Number of XLA backend compilations while the counter is active."""

  def __init__(self):
    self.count = 0

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == COMPILE_EVENT:
      self.count += 1

  @contextlib.contextmanager
  def active(self):
    """Count compilations inside the `with` block."""
    monitoring.register_event_duration_secs_listener(self._on_event)
    try:
      yield self
    finally:
      monitoring.unregister_event_duration_listener(self._on_event)


@dataclasses.dataclass
class ModeResult:
  """Wall time, compilations and per-point accuracy of one mode."""

  seconds: float
  compilations: int
  accuracies: list[float | None]  # None for a point that did not complete.
  points_batched: int = 0


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _timed(run: Callable[[], tuple[list[float | None], int]]) -> ModeResult:
  """Run one mode from empty JAX caches and return its measurements."""
  jax.clear_caches()
  counter = CompilationCounter()
  with counter.active():
    start = time.perf_counter()
    accuracies, points_batched = run()
    seconds = time.perf_counter() - start
  return ModeResult(seconds, counter.count, accuracies, points_batched)


def run_loop(
    all_points: list[sweep_lib.Point], out_dir: pathlib.Path
) -> ModeResult:
  """Run each point alone through `study.run_study`."""

  def run():
    accuracies = []
    for point in all_points:
      try:
        _, summary = study.run_study(
            point.config, out_dir / f'point-{point.index:04d}', progress=False
        )
      except TrainingDiverged:
        accuracies.append(None)
        continue
      accuracies.append(summary.get('mean_accuracy'))
    return accuracies, 0

  return _timed(run)


def run_batched(
    base: config_lib.ExperimentConfig,
    sweep: sweep_lib.SweepConfig,
    out_dir: pathlib.Path,
) -> ModeResult:
  """Run every point through `sweep.run_sweep`."""

  def run():
    _, records = sweep_lib.run_sweep(base, sweep, out_dir, progress=False)
    accuracies = [
        record.get('mean_accuracy') if record['status'] == 'completed'
        else None
        for record in records
    ]
    points_batched = sum(record['mode'] == BATCHED for record in records)
    return accuracies, points_batched

  return _timed(run)


def accuracy_difference(
    loop: list[float | None], batched: list[float | None]
) -> tuple[float | None, int]:
  """Return the max |loop - batched| accuracy and the points not compared.

  A point is not compared when either mode has no accuracy for it. The
  maximum is None when no point could be compared.
  """
  differences = []
  uncompared = 0
  for loop_value, batched_value in zip(loop, batched, strict=True):
    if loop_value is None or batched_value is None:
      uncompared += 1
      continue
    differences.append(abs(loop_value - batched_value))
  return (max(differences) if differences else None), uncompared


def run_workload(
    workload: Workload,
    rounds: int | None,
    scratch: pathlib.Path,
    loop_first: bool,
) -> dict[str, Any]:
  """Time both modes on one workload and return its table row."""
  base, sweep = workload.build(rounds)
  all_points = sweep_lib.points(base, sweep)
  order = [LOOP, BATCHED] if loop_first else [BATCHED, LOOP]
  results = {}
  for mode in order:
    _progress(
        f'{workload.name}: {len(all_points)} points, '
        f'{base.server.rounds} rounds, running the {mode} mode'
    )
    folder = scratch / workload.name / mode
    if mode == LOOP:
      results[mode] = run_loop(all_points, folder)
    else:
      results[mode] = run_batched(base, sweep, folder)
    _progress(
        f'  {results[mode].seconds:.1f} s, '
        f'{results[mode].compilations} compilations'
    )
    # Studies and sweeps check for a stop only after each round, so a
    # Ctrl-C during a final evaluation is honoured here, before the page.
    interrupts.raise_if_requested()
  loop, batched = results[LOOP], results[BATCHED]
  difference, uncompared = accuracy_difference(
      loop.accuracies, batched.accuracies
  )
  return {
      'workload': workload.name,
      'points': len(all_points),
      'rounds': base.server.rounds,
      'order': order,
      'loop_s': loop.seconds,
      'batched_s': batched.seconds,
      'ratio': loop.seconds / batched.seconds,
      'compilations_loop': loop.compilations,
      'compilations_batched': batched.compilations,
      'points_batched': batched.points_batched,
      'max_accuracy_difference': difference,
      'points_not_compared': uncompared,
  }


def run(names, rounds, scratch) -> list[dict[str, Any]]:
  """Return one row per workload, alternating which mode runs first."""
  rows = []
  for index, name in enumerate(names):
    rows.append(run_workload(
        WORKLOADS[name], rounds, scratch, loop_first=index % 2 == 0
    ))
  return rows


def _format_difference(row) -> str:
  difference = row['max_accuracy_difference']
  if difference is None:
    return 'n/a'
  return f'{difference:.1e}'


def _row_sentence(row) -> str:
  points = row['points']
  sentence = (
      f"On {row['workload']}, the loop took {row['loop_s']:.1f} s "
      f"({row['loop_s'] / points:.2f} s per point) and the batched sweep "
      f"{row['batched_s']:.1f} s ({row['batched_s'] / points:.2f} s per "
      f"point), {row['ratio']:.1f}x less, with {row['compilations_loop']} "
      f"compilations against {row['compilations_batched']}."
  )
  if row['points_batched'] < row['points']:
    sentence += (
        f" Only {row['points_batched']} of its {row['points']} points ran "
        'batched, and the sweep ran the rest one by one.'
    )
  if row['points_not_compared']:
    sentence += (
        f" {row['points_not_compared']} points did not complete in at least "
        'one mode, so their accuracy was not compared.'
    )
  return sentence


def markdown(rows, command: str, load_average: float | None) -> str:
  """Return the dated results section."""
  orders = '; '.join(
      f"{row['workload']} ran the {row['order'][0]} mode first" for row in rows
  )
  load = machine.load_sentence(load_average)
  lines = [
      machine.section_heading('Sweep batching'),
      '',
      f'`{command}` on {machine.hardware_line()}. Each time covers the whole '
      'grid: data loading, compilation, training, evaluation and output '
      'files. '
      '`jax.clear_caches()` ran before each mode, and the mode run first '
      f'alternates by workload: {orders}.{load}',
      '',
      '| workload | points | rounds | loop s | batched s | loop/batched | '
      'compilations loop | compilations batched | '
      'max \\|accuracy difference\\| |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
        f"| {row['workload']} | {row['points']} | {row['rounds']} | "
        f"{row['loop_s']:.1f} | {row['batched_s']:.1f} | "
        f"{row['ratio']:.1f}x | {row['compilations_loop']} | "
        f"{row['compilations_batched']} | {_format_difference(row)} |"
    )
  lines.append('')
  lines.append(' '.join(_row_sentence(row) for row in rows))
  return '\n'.join(lines) + '\n\n'


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--workloads', nargs='+', choices=list(WORKLOADS),
      default=list(WORKLOADS),
      help='workloads to run, in this order (default: all)',
  )
  parser.add_argument(
      '--rounds', type=int, default=None,
      help='federated rounds of every point, for a shorter run (default: '
      'each workload\'s own, 20)',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to (default: print '
      'only)',
  )
  parser.add_argument(
      '--out', default=None,
      help='folder in which a fresh subfolder receives the output of both '
      'modes and is kept (default: a temporary folder, deleted at the end)',
  )
  return parser


def _parse_args(argv):
  parser = _build_parser()
  args = parser.parse_args(argv)
  if args.rounds is not None and args.rounds < 1:
    parser.error(f'--rounds must be at least 1, got {args.rounds}.')
  script_help.check_out_path(parser, args.results, '--results')
  script_help.check_out_folder(parser, args.out, '--out')
  # Repeated names run once.
  args.workloads = list(dict.fromkeys(args.workloads))
  return args


def main(argv=None):
  """Run the benchmark from command-line arguments and return its rows."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  load_average = machine.load_average()
  with contextlib.ExitStack() as stack:
    stack.enter_context(script_help.stop_on_ctrl_c('sweep_batching.py', None))
    if args.out is None:
      scratch = pathlib.Path(stack.enter_context(
          tempfile.TemporaryDirectory(prefix='sweep_batching_')))
    else:
      out = pathlib.Path(args.out)
      out.mkdir(parents=True, exist_ok=True)
      scratch = pathlib.Path(tempfile.mkdtemp(prefix='sweep_batching_',
                                              dir=out))
      _progress(f'Writing the study outputs to {scratch}')
    rows = run(args.workloads, args.rounds, scratch)
  command = shlex.join(['python', 'benchmarks/sweep_batching.py', *argv])
  page = markdown(rows, command, load_average)
  print(page, end='')
  machine.append_section(args.results, page)
  return rows


if __name__ == '__main__':
  main()
