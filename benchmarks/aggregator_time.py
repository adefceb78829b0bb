"""Milliseconds per call of every aggregator on one large cohort.

Each aggregator in `fedjax_med.aggregation.registry.AGGREGATORS`, and
centered clipping around a zero center, runs jitted on the same client
updates: one leaf shaped `[clients, dim]` of standard normal values from a
fixed key, every client valid and uniform weights. The default dim, 610, is
the logistic regression of the synthetic workload (60 features x 10 classes
plus 10 biases).

Compile time is measured ahead of time (trace, lower and compile, without
running). Then the compiled call is timed until `--repeats` calls are done or
the next call would take the aggregator past `--budget-s`, so at least one
call is always timed, and the median is reported. The ratio divides by the
median of the uniform mean in the same run at the same size.

Bulyan's repeated Krum selection costs O(C^3 log C), so above
`--bulyan-max-clients` it runs at that many clients and its time is scaled
up by that term. Those rows are marked as estimates. An aggregator whose
compiled memory need exceeds the available memory is skipped.

Usage:
  python benchmarks/aggregator_time.py [--clients 10000] [--dims 610 4000]
      [--repeats 5] [--results benchmarks/RESULTS.md]

Progress goes to stderr. The table is printed and, with --results, appended
to that page together with the date, the command, the JAX version and the
device.
"""

import argparse
import dataclasses
import math
import shlex
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_med.aggregation import clipping_aggregators
from fedjax_med.aggregation import registry
from fedjax_med.report import machine
from fedjax_med.report import script_help

CENTERED_CLIPPING = 'centered_clipping'
REFERENCE = 'mean'
GEOMETRIC_MEDIAN_ITERATIONS = 10
CENTERED_CLIPPING_ITERATIONS = 1

# Time cost for C clients and D parameters as each aggregator's docstring
# states it. mean.py states none, so its entries follow from one tensordot.
# The median makes B = 32 counting passes over float32 updates.
COST_CLASSES = {
    'fedavg': 'O(C D)',
    'mean': 'O(C D)',
    'median': 'O(B C D), B = 32',
    'trimmed_mean': 'O(C D log C)',
    'krum': 'O(C^2 D + C^2 log C)',
    'multi_krum': 'O(C^2 D + C^2 log C)',
    'geometric_median': f'O(T C D), T = {GEOMETRIC_MEDIAN_ITERATIONS}',
    'bulyan': 'O(C^2 D + C^3 log C)',
    'norm_bounded': 'O(C D)',
    CENTERED_CLIPPING: f'O(L C D), L = {CENTERED_CLIPPING_ITERATIONS}',
    'qffl': 'O(C D)',
}


def aggregator_names() -> tuple[str, ...]:
  """Return every registry aggregator name and centered clipping."""
  names = tuple(registry.AGGREGATORS)
  if CENTERED_CLIPPING not in names:
    names += (CENTERED_CLIPPING,)
  return names


@dataclasses.dataclass(frozen=True)
class Workload:
  """Client updates, weights and mask shared by every aggregator."""

  updates: jax.Array  # [clients, dim] float32
  weights: jax.Array  # [clients] float32, all ones
  mask: jax.Array  # [clients] bool, all True

  @property
  def num_clients(self) -> int:
    return self.updates.shape[0]

  @property
  def dim(self) -> int:
    return self.updates.shape[1]

  def arguments(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    return self.updates, self.weights, self.mask

  def first_clients(self, count: int) -> 'Workload':
    """Return the workload restricted to its first `count` clients."""
    return Workload(
        self.updates[:count], self.weights[:count], self.mask[:count]
    )


def make_workload(num_clients: int, dim: int, seed: int = 0) -> Workload:
  """Draw standard normal updates with every client valid and weight 1."""
  updates = jax.random.normal(
      jax.random.key(seed), (num_clients, dim), jnp.float32
  )
  weights = jnp.ones((num_clients,), jnp.float32)
  mask = jnp.ones((num_clients,), bool)
  return Workload(*jax.block_until_ready((updates, weights, mask)))


def num_byzantine(name: str, num_clients: int, fraction: float) -> int:
  """Return floor(fraction * clients), lowered to meet the aggregator's bound.

  Krum and multi-Krum need n > 2f + 2, Bulyan needs n >= 4f + 3. Other
  aggregators take no f and get the unlowered count.
  """
  requested = math.floor(fraction * num_clients)
  if name == 'bulyan':
    return max(0, min(requested, (num_clients - 3) // 4))
  if name in ('krum', 'multi_krum'):
    return max(0, min(requested, (num_clients - 3) // 2))
  return requested


def build_aggregator(
    name: str, num_clients: int, dim: int, byzantine_fraction: float
) -> tuple[registry.Aggregate, str]:
  """Return `aggregate(updates, weights, mask)` and its settings as text.

  Norm bounds are sqrt(dim), close to the median L2 norm of a standard
  normal update, so about half of the updates are clipped.
  """
  radius = math.sqrt(dim)
  if name == CENTERED_CLIPPING:
    return _centered_clipping(dim, radius), (
        f'tau={radius:.1f}, L={CENTERED_CLIPPING_ITERATIONS}, zero center'
    )

  if name == 'qffl':
    # q-FFL weighs clients by their loss; a fixed loss of 1 per client times
    # the same arithmetic as any loss would.
    with_losses = registry.build_aggregate('qffl', qffl_q=1.0, lipschitz=1.0)
    losses = jnp.ones((num_clients,), jnp.float32)
    return (lambda updates, weights, mask: with_losses(
        updates, weights, mask, losses)), 'q=1, L=1, losses 1'

  byzantine = num_byzantine(name, num_clients, byzantine_fraction)
  aggregate = registry.build_aggregate(
      name, num_byzantine=byzantine, trim_fraction=0.1, max_norm=radius,
      num_iterations=GEOMETRIC_MEDIAN_ITERATIONS,
  )
  settings = {
      'fedavg': 'uniform weights',
      'mean': 'uniform weights',
      'trimmed_mean': 'trim_fraction=0.1',
      'krum': f'f={byzantine}',
      'multi_krum': f'f={byzantine}, m={num_clients - byzantine}',
      'geometric_median': f'T={GEOMETRIC_MEDIAN_ITERATIONS}',
      'bulyan': f'f={byzantine}',
      'norm_bounded': f'max_norm={radius:.1f}',
  }.get(name, '')
  return aggregate, settings


def _centered_clipping(dim: int, radius: float) -> registry.Aggregate:
  """Return centered clipping around a zero center as a 3-argument aggregate.

  Registries that list centered clipping take the center as a fourth
  argument. Otherwise the function is called directly.
  """
  center = jnp.zeros((dim,), jnp.float32)
  if CENTERED_CLIPPING in registry.AGGREGATORS:
    with_center = registry.build_aggregate(
        CENTERED_CLIPPING, clip_radius=radius,
        num_iterations=CENTERED_CLIPPING_ITERATIONS,
    )
    return lambda updates, weights, mask: with_center(
        updates, weights, mask, center
    )

  def aggregate(updates, weights, mask):
    del weights
    return clipping_aggregators.centered_clipping(
        updates, mask, center=center, clip_radius=radius,
        num_iterations=CENTERED_CLIPPING_ITERATIONS,
    )

  return aggregate


def required_bytes(compiled: jax.stages.Compiled) -> int | None:
  """Return XLA's argument, output and temporary bytes for one call."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return (
      analysis.argument_size_in_bytes + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes
  )


@dataclasses.dataclass
class Measurement:
  """Compile time and steady-state seconds per call of one aggregator."""

  compile_s: float
  seconds_per_call: float | None = None
  calls: int = 0
  skip_reason: str | None = None


def compile_aggregator(
    aggregate: registry.Aggregate, workload: Workload
) -> tuple[jax.stages.Compiled, float]:
  """Trace, lower and compile `aggregate` for `workload` without running it."""
  start = time.perf_counter()
  compiled = jax.jit(aggregate).lower(*workload.arguments()).compile()
  return compiled, time.perf_counter() - start


def check_memory(compiled: jax.stages.Compiled) -> str | None:
  """Return why `compiled` cannot run in the free memory, or None if it can.

  When either figure is unknown the call is allowed to run.
  """
  needed = required_bytes(compiled)
  free = machine.device_available_bytes(jax.devices()[0])
  if needed is None or free is None or needed <= free:
    return None
  return (
      f'needs {needed / 2**30:.2f} GiB, only {free / 2**30:.2f} GiB '
      'available'
  )


def time_calls(
    compiled: jax.stages.Compiled,
    workload: Workload,
    *,
    repeats: int,
    budget_s: float,
) -> tuple[float, int]:
  """Return the median seconds per call and the number of calls timed.

  Calls stop after `repeats`, or earlier when one more call of the median
  length would take the total past `budget_s`. The first call always runs.
  """
  arguments = workload.arguments()
  durations = []
  while len(durations) < repeats:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*arguments))
    durations.append(time.perf_counter() - start)
    if sum(durations) + statistics.median(durations) > budget_s:
      break
  return statistics.median(durations), len(durations)


def measure(
    aggregate: registry.Aggregate,
    workload: Workload,
    *,
    repeats: int,
    budget_s: float,
) -> Measurement:
  """Compile `aggregate` for `workload`, check its memory need and time it."""
  compiled, compile_s = compile_aggregator(aggregate, workload)
  skip_reason = check_memory(compiled)
  if skip_reason:
    return Measurement(compile_s, skip_reason=skip_reason)
  seconds, calls = time_calls(
      compiled, workload, repeats=repeats, budget_s=budget_s
  )
  return Measurement(compile_s, seconds, calls)


def bulyan_scale(from_clients: int, to_clients: int) -> float:
  """Return the growth of C^3 log C from `from_clients` to `to_clients`.

  NOTE: this scales Bulyan's whole time by its selection term. The O(C^2 D)
  distance term grows more slowly, so the estimate runs high when D is not
  small against C log C at `from_clients`. Cache effects are not modelled.
  """
  ratio = to_clients / from_clients
  return ratio**3 * math.log(to_clients) / math.log(from_clients)


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _measure_one(name, workload, options) -> dict:
  """Measure one aggregator on `workload` and return its table row."""
  clients, dim = workload.num_clients, workload.dim
  aggregate, settings = build_aggregator(
      name, clients, dim, options.byzantine_fraction
  )
  row = {
      'clients': clients, 'dim': dim, 'aggregator': name,
      'settings': settings, 'cost': COST_CLASSES.get(name, 'not documented'),
      'estimated_from': None, 'skip_reason': None,
  }
  if name == 'bulyan' and clients > options.bulyan_max_clients:
    # Compile at full size for the compile time and the memory check, then
    # time a smaller cohort and scale the result.
    compiled, compile_s = compile_aggregator(aggregate, workload)
    row.update(compile_s=compile_s, calls=0, seconds_per_call=None)
    row['skip_reason'] = check_memory(compiled)
    if row['skip_reason']:
      return row
    small_clients = options.bulyan_max_clients
    _progress(
        f'  bulyan: timing at {small_clients:,} clients and scaling by '
        'C^3 log C'
    )
    small_aggregate, small_settings = build_aggregator(
        name, small_clients, dim, options.byzantine_fraction
    )
    small = measure(
        small_aggregate, workload.first_clients(small_clients),
        repeats=options.repeats, budget_s=options.budget_s,
    )
    row['skip_reason'] = small.skip_reason
    if small.skip_reason:
      return row
    scale = bulyan_scale(small_clients, clients)
    row.update(
        calls=small.calls,
        seconds_per_call=small.seconds_per_call * scale,
        estimated_from={
            'clients': small_clients, 'settings': small_settings,
            'seconds_per_call': small.seconds_per_call, 'scale': scale,
        },
    )
    return row

  result = measure(
      aggregate, workload, repeats=options.repeats, budget_s=options.budget_s
  )
  row.update(
      compile_s=result.compile_s, seconds_per_call=result.seconds_per_call,
      calls=result.calls, skip_reason=result.skip_reason,
  )
  return row


def run(client_counts, dims, options) -> list[dict]:
  """Return one row per (clients, dim, aggregator) with times and ratios.

  Args:
    client_counts: cohort sizes, each at least 3.
    dims: update dimensions, each at least 1.
    options: the parsed arguments of `main`. Only `aggregators`,
      `repeats`, `budget_s`, `byzantine_fraction` and `bulyan_max_clients`
      are read.
  """
  rows = []
  for clients in client_counts:
    for dim in dims:
      workload = make_workload(clients, dim)
      size_rows = []
      for index, name in enumerate(options.aggregators, start=1):
        _progress(
            f'[{index}/{len(options.aggregators)}] {name}, {clients:,} '
            f'clients, dim {dim}: compiling and timing'
        )
        row = _measure_one(name, workload, options)
        _progress(f'  {_describe(row)}')
        size_rows.append(row)
      _add_ratios(size_rows)
      rows.extend(size_rows)
  return rows


def _describe(row) -> str:
  if row['seconds_per_call'] is None:
    return f"compile {row['compile_s']:.2f} s, skipped: {row['skip_reason']}"
  kind = 'estimated' if row['estimated_from'] else 'measured'
  return (
      f"compile {row['compile_s']:.2f} s, "
      f"{row['seconds_per_call'] * 1e3:,.3f} ms per call ({kind}, "
      f"{row['calls']} calls timed)"
  )


def _add_ratios(size_rows) -> None:
  reference = next(
      row['seconds_per_call'] for row in size_rows
      if row['aggregator'] == REFERENCE
  )
  for row in size_rows:
    seconds = row['seconds_per_call']
    row['ms_per_call'] = None if seconds is None else seconds * 1e3
    row['x_mean'] = (
        None if seconds is None or reference is None else seconds / reference
    )


def _format_ms(milliseconds: float) -> str:
  if milliseconds < 1:
    return f'{milliseconds:.3f}'
  if milliseconds < 100:
    return f'{milliseconds:.2f}'
  return f'{milliseconds:,.0f}'


def _format_ratio(ratio: float) -> str:
  if ratio < 100:
    return f'{ratio:.1f}'
  return f'{ratio:,.0f}'


def _format_duration(seconds: float) -> str:
  if seconds >= 3600:
    return f'{seconds / 3600:,.1f} hours'
  if seconds >= 60:
    return f'{seconds / 60:.1f} minutes'
  return f'{seconds:.3g} s'


def _table(size_rows) -> list[str]:
  lines = [
      '| aggregator | settings | compile s | ms per call | x mean | '
      'calls timed | cost class |',
      '|---|---|---|---|---|---|---|',
  ]
  for row in size_rows:
    mark = '~' if row['estimated_from'] else ''
    if row['ms_per_call'] is None:
      milliseconds = ratio = 'skipped'
    else:
      milliseconds = mark + _format_ms(row['ms_per_call'])
      ratio = (
          '-' if row['x_mean'] is None else mark + _format_ratio(row['x_mean'])
      )
    lines.append(
        f"| {row['aggregator']} | {row['settings'] or '-'} | "
        f"{row['compile_s']:.2f} | {milliseconds} | {ratio} | "
        f"{row['calls']} | {row['cost']} |"
    )
  return lines


def _footnotes(size_rows) -> list[str]:
  notes = []
  for row in size_rows:
    estimate = row['estimated_from']
    if estimate and estimate['seconds_per_call'] is not None:
      notes.append(
          f"~ {row['aggregator']} ran at {estimate['clients']:,} clients "
          f"({estimate['settings']}) in "
          f"{_format_ms(estimate['seconds_per_call'] * 1e3)} ms per call, "
          f"scaled by C^3 log C ({estimate['scale']:,.0f}x) to about "
          f"{_format_duration(row['seconds_per_call'])} per call. This is an "
          'estimate, not a measurement.'
      )
    if row['skip_reason']:
      notes.append(f"{row['aggregator']} skipped: {row['skip_reason']}.")
  return notes


def markdown(rows, command: str, settings: str) -> str:
  """Return the dated results section with one table per cohort size."""
  lines = [
      machine.section_heading('Aggregator time'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}',
      '',
  ]
  sizes = sorted({(row['clients'], row['dim']) for row in rows})
  for clients, dim in sizes:
    size_rows = [
        row for row in rows if (row['clients'], row['dim']) == (clients, dim)
    ]
    lines.append(f'{clients:,} clients, update dimension {dim}:')
    lines.append('')
    lines.extend(_table(size_rows))
    notes = _footnotes(size_rows)
    if notes:
      lines.append('')
      lines.extend(notes)
    lines.append('')
  return '\n'.join(lines) + '\n'


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--clients', type=int, nargs='+', default=[10000],
      help='cohort sizes to time, each at least 3 (default: 10000)',
  )
  parser.add_argument(
      '--dims', type=int, nargs='+', default=[610],
      help='update dimensions to time (default: 610, logistic regression '
      'on 60 features and 10 classes)',
  )
  parser.add_argument(
      '--repeats', type=int, default=5,
      help='maximum timed calls per aggregator after compilation '
      '(default: 5)',
  )
  parser.add_argument(
      '--budget-s', type=float, default=60.0,
      help='seconds of timed calls per aggregator after which no further '
      'call starts; the first call always runs (default: 60)',
  )
  parser.add_argument(
      '--byzantine-fraction', type=float, default=0.1,
      help='f as a fraction of clients for Krum, multi-Krum and Bulyan, '
      'lowered where their bounds require (default: 0.1)',
  )
  parser.add_argument(
      '--bulyan-max-clients', type=int, default=500,
      help='largest cohort on which Bulyan is timed directly; larger cohorts '
      'get an estimate scaled from this size (default: 500)',
  )
  parser.add_argument(
      '--aggregators', nargs='+', choices=aggregator_names(),
      default=list(aggregator_names()),
      help=f'aggregators to time; {REFERENCE} is always timed because the '
      'ratios divide by it (default: all)',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to',
  )
  return parser


def _parse_args(argv):
  parser = _build_parser()
  args = parser.parse_args(argv)
  if min(args.clients) < 3:
    parser.error(
        f'--clients must each be at least 3, got {min(args.clients)}, '
        'because Krum and Bulyan need 3 clients even with f = 0.'
    )
  if min(args.dims) < 1:
    parser.error(f'--dims must each be at least 1, got {min(args.dims)}.')
  if args.repeats < 1:
    parser.error(f'--repeats must be at least 1, got {args.repeats}.')
  if not args.budget_s > 0:
    parser.error(f'--budget-s must be > 0, got {args.budget_s}.')
  if not 0 <= args.byzantine_fraction < 0.5:
    parser.error(
        '--byzantine-fraction must be in [0, 0.5), got '
        f'{args.byzantine_fraction}.'
    )
  if args.bulyan_max_clients < 3:
    parser.error(
        '--bulyan-max-clients must be at least 3, got '
        f'{args.bulyan_max_clients}.'
    )
  script_help.check_out_path(parser, args.results, '--results')
  # Repeated names are timed once. The ratios divide by the mean, so it is
  # always timed.
  args.aggregators = list(dict.fromkeys(args.aggregators))
  if REFERENCE not in args.aggregators:
    args.aggregators.insert(0, REFERENCE)
  return args


def main(argv=None):
  """Run the benchmark from command-line arguments and return its rows."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  rows = run(args.clients, args.dims, args)
  command = shlex.join(['python', 'benchmarks/aggregator_time.py', *argv])
  settings = (
      'Standard normal float32 updates in one leaf, every client valid, '
      'uniform weights. Compile time excludes the first call, and ms per '
      'call is the median of the timed calls.'
  )
  page = markdown(rows, command, settings)
  print(page, end='')
  machine.append_section(args.results, page)
  return rows


if __name__ == '__main__':
  main()
