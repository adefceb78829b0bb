"""Round time with clients of unequal sizes against equal sizes.

Workload: the mean_dp round of benchmarks/scaling.py, whose constants this
script imports. Every client is in the cohort and trains the MLP
32-64-1 for 5 local SGD steps of batch 16. The round clips updates to L2
norm 1.0, adds central Gaussian noise with multiplier 1.0 and takes the
uniform mean. Rows are 32 standard normal float32 features, labeled 1
where a fixed random linear function of them is positive.

Cases, all with the same number of clients and the same total rows:

* equal: every client has 64 rows, so the population is padded to 64.
* unequal: client sizes run from 8 to 256 rows (by default) with a mean
  of 64, so the population is padded to the largest. The sizes are a
  deterministic list (see `client_sizes`).

Diagnostic cases, which split the extra time of the unequal case:

* equal, padded: the equal clients stored in arrays padded to the largest
  unequal size. Its extra time over equal is the cost of the padded
  length alone.
* unequal, no shuffle: minibatches take the rows in index order instead
  of the shuffled visit order of `fedjax_med.client.local_training`, so
  the shuffle's cost drops out.
* equal / unequal, initial loss: local training built with
  `report_initial_loss=True`, which q-FFL needs. The mean_dp round leaves
  it off. Its cost grows with the padded length, because the pass covers
  every padded row.

Each case's first call compiles the round. Compile s is that call minus
the median of the timed calls. The timed calls then cycle through the
cases, with the order rotated every repeat, so a change in machine load
hits every case alike. Every case uses the same round keys.

Usage:
  python benchmarks/unequal_sizes.py [--clients 1000] [--repeats 7]
      [--no-diagnostics] [--results benchmarks/RESULTS.md]

Progress goes to stderr. The section is printed and, with --results,
appended to that page.
"""

import argparse
import contextlib
import dataclasses
import shlex
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scaling

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.report import machine
from fedjax_med.report import script_help
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

SMALLEST = 8
LARGEST = 256
# The target: the unequal round costs at most this multiple of the equal
# round at the same total rows.
RATIO_TARGET = 1.2

EQUAL = 'equal'
UNEQUAL = 'unequal'
EQUAL_PADDED = 'equal, padded'
NO_SHUFFLE = 'unequal, no shuffle'
EQUAL_INITIAL_LOSS = 'equal, initial loss'
UNEQUAL_INITIAL_LOSS = 'unequal, initial loss'


@dataclasses.dataclass(frozen=True)
class Case:
  """One round to time."""

  name: str
  unequal: bool
  # Padded length of the population. None pads to the largest client.
  width: int | None = None
  shuffle: bool = True
  report_initial_loss: bool = False
  diagnostic: bool = False


def cases(largest: int, diagnostics: bool) -> list[Case]:
  """Return the cases to time, the two main ones first."""
  main = [Case(EQUAL, unequal=False), Case(UNEQUAL, unequal=True)]
  if not diagnostics:
    return main
  return main + [
      Case(EQUAL_PADDED, unequal=False, width=largest, diagnostic=True),
      Case(NO_SHUFFLE, unequal=True, shuffle=False, diagnostic=True),
      Case(EQUAL_INITIAL_LOSS, unequal=False, report_initial_loss=True,
           diagnostic=True),
      Case(UNEQUAL_INITIAL_LOSS, unequal=True, report_initial_loss=True,
           diagnostic=True),
  ]


def client_sizes(
    num_clients: int, smallest: int, largest: int, mean: int
) -> np.ndarray:
  """Return `[clients]` int32 sizes from `smallest` to `largest` rows.

  Client i of N gets `smallest * (largest / smallest) ** (q ** a)` rows at
  the evenly spaced quantile `q = i / (N - 1)`, so the first client has
  `smallest` rows and the last `largest`. With `a = 1` the sizes are
  log-uniform. `a` is found by bisection so that the sizes sum to
  `mean * N`, and the sizes are rounded by the largest-remainder method,
  which keeps that sum exact.

  Raises:
    ValueError: if no such list exists for these arguments.
  """
  if not 1 <= smallest < mean < largest:
    raise ValueError(
        f'Client sizes need 1 <= smallest < mean < largest; got smallest '
        f'{smallest}, mean {mean}, largest {largest}.'
    )
  total = mean * num_clients
  interior = num_clients - 2
  if interior < 1 or not (
      interior * smallest <= total - smallest - largest <= interior * largest
  ):
    raise ValueError(
        f'{num_clients} clients cannot have sizes from {smallest} to '
        f'{largest} rows with a mean of {mean}; use more clients.'
    )
  quantiles = np.linspace(0.0, 1.0, num_clients)

  def sizes_at(exponent):
    return smallest * (largest / smallest) ** (quantiles ** exponent)

  # The mean falls as the exponent grows, from near `largest` to near
  # `smallest`.
  low, high = 1e-6, 1e6
  for _ in range(200):
    middle = np.sqrt(low * high)
    if sizes_at(middle).sum() > total:
      low = middle
    else:
      high = middle
  exact = sizes_at(high)
  sizes = np.floor(exact).astype(np.int64)
  sizes[0], sizes[-1] = smallest, largest
  shortfall = total - int(sizes.sum())
  if not 0 <= shortfall <= interior:
    raise ValueError(
        f'Rounding the sizes left {shortfall} rows to distribute over '
        f'{interior} clients; try another number of clients.'
    )
  remainders = exact[1:-1] - sizes[1:-1]
  raised = np.argsort(-remainders, kind='stable')[:shortfall]
  sizes[1 + raised] += 1
  return sizes.astype(np.int32)


def make_population(sizes: np.ndarray, width: int) -> federated.FederatedData:
  """Return a numpy population with `sizes[c]` real rows padded to `width`.

  Features and labels follow `scaling.make_population`. Padding rows are
  zero.
  """
  rng = np.random.default_rng(scaling.SEED)
  rule = rng.standard_normal(scaling.FEATURES).astype(np.float32)
  num_clients = len(sizes)
  x = rng.standard_normal(
      (num_clients, width, scaling.FEATURES), dtype=np.float32
  )
  real = np.arange(width)[None, :] < sizes[:, None]
  x = np.where(real[:, :, None], x, np.float32(0.0))
  y = np.where(real, (x @ rule > 0), 0).astype(np.int32)
  return federated.FederatedData(
      {'x': x, 'y': y}, np.asarray(sizes, np.int32)
  )


def _unshuffled_permutation(key, epoch, num_examples, max_examples):
  del key, epoch, num_examples
  # Real rows come first in the padded arrays, so index order visits them
  # in turn and never reaches padding.
  return jnp.arange(max_examples)


def _unshuffled_visit_order(key, num_examples, *, slots, max_epochs, visits):
  del key, slots, max_epochs
  # Position e * n + p of the visit order is row p in every epoch e.
  return jnp.arange(visits) % jnp.maximum(num_examples, 1)


@contextlib.contextmanager
def _shuffle_replaced():
  """Make local training take rows in index order while the block runs.

  Local training draws its batches from `_visit_order`, or from
  `_epoch_permutation` when an epoch count is too large for it, so both
  are replaced.
  """
  originals = (
      local_training._epoch_permutation, local_training._visit_order
  )
  local_training._epoch_permutation = _unshuffled_permutation
  local_training._visit_order = _unshuffled_visit_order
  try:
    yield
  finally:
    (local_training._epoch_permutation,
     local_training._visit_order) = originals


@dataclasses.dataclass
class Program:
  """A built round and its per-case facts."""

  case: Case
  round_fn: Callable
  state: object
  sizes: np.ndarray
  padded_to: int


def build_program(case: Case, sizes: np.ndarray) -> Program:
  """Build the mean_dp round of `case` over the clients of `sizes`."""
  width = case.width or int(sizes.max())
  train = jax.device_put(make_population(sizes, width))
  model = tabular.from_flax(
      tabular.MLP(scaling.NUM_CLASSES, (scaling.HIDDEN,)), scaling.NUM_CLASSES
  )

  # `fedjax_med.study` also passes the fewest rows of any client.
  local_update = local_training.build_local_update(
      model, optax.sgd(scaling.CLIENT_LEARNING_RATE),
      num_steps=scaling.LOCAL_STEPS, batch_size=scaling.BATCH_SIZE,
      min_client_examples=int(sizes.min()),
      report_initial_loss=case.report_initial_loss,
  )

  num_clients = len(sizes)
  privacy = round_lib.PrivacySettings(
      clip_norm=scaling.CLIP_NORM, noise_multiplier=scaling.NOISE_MULTIPLIER,
      noise_kind='central', denominator=num_clients,
  )
  server_optimizer = optax.sgd(scaling.SERVER_LEARNING_RATE)
  round_fn = round_lib.build_round(
      train, local_update, sampling.uniform_sampler(num_clients, num_clients),
      server_optimizer, aggregator='mean', privacy=privacy,
  )

  params = model.init(jax.random.key(1), jnp.zeros((1, scaling.FEATURES)))
  state = round_lib.init_server_state(params, server_optimizer)
  return Program(
      case=case, round_fn=round_fn, state=state, sizes=sizes,
      padded_to=width,
  )


def _call(program: Program, key) -> float:
  """Run one round of `program`, keep its state and return the seconds."""
  context = (
      contextlib.nullcontext() if program.case.shuffle
      else _shuffle_replaced()
  )
  start = time.perf_counter()
  # The patch matters only at the first call, which traces the round.
  with context:
    state, metrics = program.round_fn(program.state, key)
    jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  program.state = state
  return seconds


def run(
    num_clients: int, repeats: int, *, smallest: int = SMALLEST,
    largest: int = LARGEST, diagnostics: bool = True,
) -> list[dict]:
  """Build and time every case and return one result per case."""
  mean = scaling.EXAMPLES_PER_CLIENT
  equal_sizes = np.full((num_clients,), mean, np.int32)
  unequal_sizes = client_sizes(num_clients, smallest, largest, mean)
  programs = []
  for case in cases(largest, diagnostics):
    sizes = unequal_sizes if case.unequal else equal_sizes
    programs.append(build_program(case, sizes))
  round_keys = jax.random.split(jax.random.key(2), repeats + 1)

  first_calls = []
  for program in programs:
    _progress(f'compiling {program.case.name}')
    first_calls.append(_call(program, round_keys[0]))
  times = [[] for _ in programs]
  for repeat in range(repeats):
    _progress(f'timed calls, repeat {repeat + 1} of {repeats}')
    shift = repeat % len(programs)
    for index in [*range(shift, len(programs)), *range(shift)]:
      times[index].append(_call(programs[index], round_keys[repeat + 1]))

  results = []
  for program, first_call, case_times in zip(programs, first_calls, times):
    seconds = statistics.median(case_times)
    results.append({
        'case': program.case.name,
        'diagnostic': program.case.diagnostic,
        'clients': num_clients,
        'total_rows': int(program.sizes.sum()),
        'smallest': int(program.sizes.min()),
        'largest': int(program.sizes.max()),
        'padded_to': program.padded_to,
        'compile_s': max(first_call - seconds, 0.0),
        'seconds_per_round': seconds,
        'spread_s': max(case_times) - min(case_times),
        'repeats': repeats,
    })
  equal_seconds = results[0]['seconds_per_round']
  for result in results:
    result['x_equal'] = result['seconds_per_round'] / equal_seconds
  return results


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _result(results, name: str) -> dict | None:
  for result in results:
    if result['case'] == name:
      return result
  return None


def _sizes_cell(result) -> str:
  if result['smallest'] == result['largest']:
    return str(result['smallest'])
  return f"{result['smallest']}-{result['largest']}"


def _table(results) -> list[str]:
  lines = [
      '| case | diagnostic | clients | total rows | rows per client | '
      'padded to | compile s | s per round | spread ms | x equal |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for result in results:
    diagnostic = 'yes' if result['diagnostic'] else 'no'
    lines.append(
        f"| {result['case']} | {diagnostic} | {result['clients']:,} "
        f"| {result['total_rows']:,} | {_sizes_cell(result)} "
        f"| {result['padded_to']} | {result['compile_s']:.2f} "
        f"| {result['seconds_per_round']:.4f} "
        f"| {1000 * result['spread_s']:.1f} | {result['x_equal']:.2f} |"
    )
  return lines


# (slower case, faster case, what their difference isolates)
_DIFFERENCES = (
    (UNEQUAL, EQUAL, 'all the extra time of unequal sizes'),
    (EQUAL_PADDED, EQUAL, 'the padded length alone'),
    (UNEQUAL, NO_SHUFFLE, 'the shuffle, in the unequal round'),
    (EQUAL_INITIAL_LOSS, EQUAL, 'the initial-loss pass, in the equal round'),
    (UNEQUAL_INITIAL_LOSS, UNEQUAL,
     'the initial-loss pass, in the unequal round'),
)


def _breakdown_table(results) -> list[str]:
  """Return the differences between cases that split the extra time."""
  lines = [
      '| difference | isolates | ms per round |',
      '|---|---|---|',
  ]
  for slower, faster, isolates in _DIFFERENCES:
    slow, fast = _result(results, slower), _result(results, faster)
    if slow is None or fast is None:
      continue
    ms = 1000 * (slow['seconds_per_round'] - fast['seconds_per_round'])
    lines.append(f'| {slower} - {faster} | {isolates} | {ms:+.1f} |')
  return lines


def verdict_sentence(results) -> str:
  """Return the unequal round's multiple of the equal one against the target."""
  unequal = _result(results, UNEQUAL)
  verdict = 'meets' if unequal['x_equal'] <= RATIO_TARGET else 'misses'
  return (
      f"The unequal round takes {unequal['x_equal']:.2f}x the equal one, "
      f'which {verdict} the target of at most {RATIO_TARGET}x.'
  )


def markdown(results, command, *, load_before, load_after) -> str:
  """Return the dated results section."""
  unequal = _result(results, UNEQUAL)
  settings = (
      f"{unequal['clients']:,} clients, all in the cohort, train the MLP "
      f'{scaling.FEATURES}-{scaling.HIDDEN}-{scaling.num_logits()} for '
      f'{scaling.LOCAL_STEPS} local SGD steps of batch {scaling.BATCH_SIZE} '
      f'in the mean_dp round of benchmarks/scaling.py (clip '
      f'{scaling.CLIP_NORM}, central noise multiplier '
      f'{scaling.NOISE_MULTIPLIER}). Every case has the same total rows. '
      f"The unequal sizes run from {unequal['smallest']} to "
      f"{unequal['largest']} rows, log-uniform but skewed towards small "
      f'clients so that the mean is {scaling.EXAMPLES_PER_CLIENT}. Compile s '
      'is the first call minus the median call. S per round is the median '
      f"of {unequal['repeats']} timed calls, which cycle through the cases, "
      'and spread ms is the slowest of them minus the fastest. Diagnostic '
      'cases change one thing to split the extra time and are not product '
      'settings.'
  )
  lines = [
      machine.section_heading('Unequal client sizes'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}'
      + machine.load_sentence(load_before, load_after),
      '',
      *_table(results),
      '',
      verdict_sentence(results) + ' The differences below are of medians, '
      'so one smaller than the spread of the calls is noise.',
      '',
      *_breakdown_table(results),
  ]
  return '\n'.join(lines) + '\n\n'


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--clients', type=int, default=1000,
      help='number of clients, all in the cohort (default: 1000)',
  )
  parser.add_argument(
      '--repeats', type=int, default=7,
      help='timed calls per case after the compiling one (default: 7)',
  )
  parser.add_argument(
      '--smallest', type=int, default=SMALLEST,
      help=f'rows of the smallest unequal client (default: {SMALLEST})',
  )
  parser.add_argument(
      '--largest', type=int, default=LARGEST,
      help=f'rows of the largest unequal client (default: {LARGEST})',
  )
  parser.add_argument(
      '--no-diagnostics', dest='diagnostics', action='store_false',
      help='time only the equal and unequal cases',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to (default: '
      'print only)',
  )
  return parser


def main(argv=None):
  """Run the benchmark from command-line arguments and return its results."""
  if argv is None:
    argv = sys.argv[1:]
  parser = _build_parser()
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error(f'--repeats must be at least 1, got {args.repeats}.')
  try:
    client_sizes(
        args.clients, args.smallest, args.largest, scaling.EXAMPLES_PER_CLIENT
    )
  except ValueError as error:
    parser.error(str(error))
  script_help.check_out_path(parser, args.results, '--results')

  load_before = machine.load_average()
  results = run(
      args.clients, args.repeats, smallest=args.smallest,
      largest=args.largest, diagnostics=args.diagnostics,
  )
  load_after = machine.load_average()
  command = shlex.join(['python', 'benchmarks/unequal_sizes.py', *argv])
  page = markdown(
      results, command, load_before=load_before, load_after=load_after
  )
  print(page, end='')
  machine.append_section(args.results, page)
  return results


if __name__ == '__main__':
  main()
