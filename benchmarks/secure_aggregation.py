"""Round time with secure aggregation against plain aggregation.

Workload: a population of `--population` clients of FedProx's IID
synthetic data (60 features, 10 classes, 50 to 100 rows per client, 34% of
each held out), softmax regression (d = 610 parameters), FedAvg
(example-weighted mean), clip bound 2.0, 10 local SGD steps of batch 10 at
learning rate 1.0, server SGD at 1.0. Each round samples a uniform cohort,
and each sampled client drops after the key exchange with probability
`--dropout-rate`.

Each case is a graph and a cohort size. Its plain round and its secure
round (`build_round(..., secure_aggregation=...)`, threshold fraction 1/2,
the protocol's default harary degree of about 2 log2(cohort), 32-bit
ring) use the same population, sampler, local training and round keys, so
they differ only in the aggregation. The complete graph needs O(cohort^2 d)
mask expansions per round, so it runs only at small cohorts by default.

Every round's first call compiles it. Compile s is that call minus the
median of the timed calls. The timed calls then alternate between all the
rounds, with the order rotated every repeat, so that a change in machine
load hits every round alike. The protocol's cost counts are the means of
the secure round's metrics over the timed calls. Their bytes come from the
cost model of `fedjax_med.secure.protocol.cost_of`, not measured traffic.

Usage:
  python benchmarks/secure_aggregation.py [--population 10000]
      [--complete 50 200] [--harary 100 1000 10000] [--dropout-rate 0.1]
      [--repeats 5] [--results benchmarks/RESULTS.md]

Progress goes to stderr. The section is printed and, with --results,
appended to that page.
"""

import argparse
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

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.data import synthetic
from fedjax_med.models import tabular
from fedjax_med.report import machine
from fedjax_med.report import script_help
from fedjax_med.secure import protocol
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

NUM_CLASSES = 10
MIN_EXAMPLES = 50
MAX_EXAMPLES = 100
TEST_FRACTION = 0.34
CLIP_NORM = 2.0
LOCAL_STEPS = 10
BATCH_SIZE = 10
CLIENT_LEARNING_RATE = 1.0
SERVER_LEARNING_RATE = 1.0
THRESHOLD_FRACTION = 0.5
SEED = 0
# The round metrics that `protocol.cost_of` fills, averaged over the calls.
COST_METRICS = (
    'secagg_client_bytes_up', 'secagg_client_bytes_down',
    'secagg_server_bytes', 'secagg_plain_bytes_up',
    'secagg_client_prg_expansions', 'secagg_server_prg_expansions',
    'secagg_reconstructions',
)


@dataclasses.dataclass(frozen=True)
class Case:
  """One graph at one cohort size."""

  graph: str
  cohort: int


@dataclasses.dataclass
class Program:
  """A built round, its state and its timings."""

  case: Case
  secure: bool
  round_fn: Callable
  state: object
  first_call_s: float = 0.0
  times: list = dataclasses.field(default_factory=list)
  metrics: list = dataclasses.field(default_factory=list)


def make_population(num_clients: int) -> federated.FederatedData:
  """Return the training clients of the IID synthetic data, on the device."""
  dataset = synthetic.synthetic(
      key=jax.random.key(SEED), num_clients=num_clients, alpha=0.0,
      beta=0.0, iid=True, num_classes=NUM_CLASSES, min_examples=MIN_EXAMPLES,
      max_examples=MAX_EXAMPLES, test_fraction=TEST_FRACTION,
  )
  return jax.device_put(dataset.train)


def build_program(
    case: Case, train: federated.FederatedData, *, secure: bool,
    dropout_rate: float,
) -> Program:
  """Build the plain or secure round of `case` over `train`."""
  model = tabular.from_flax(
      tabular.LogisticRegression(NUM_CLASSES), NUM_CLASSES)
  local_update = local_training.build_local_update(
      model, optax.sgd(CLIENT_LEARNING_RATE), num_steps=LOCAL_STEPS,
      batch_size=BATCH_SIZE,
      min_client_examples=int(np.min(train.num_examples)),
  )
  server_optimizer = optax.sgd(SERVER_LEARNING_RATE)
  settings = None
  if secure:
    settings = protocol.SecureAggregationSettings(
        graph=case.graph, threshold_fraction=THRESHOLD_FRACTION)
  round_fn = round_lib.build_round(
      train, local_update,
      sampling.uniform_sampler(train.num_clients, case.cohort),
      server_optimizer, aggregator='fedavg',
      privacy=round_lib.PrivacySettings(clip_norm=CLIP_NORM),
      dropout_rate=dropout_rate, secure_aggregation=settings,
  )
  sample_x = jnp.zeros((1, train.examples['x'].shape[-1]), jnp.float32)
  params = model.init(jax.random.key(SEED + 1), sample_x)
  state = round_lib.init_server_state(params, server_optimizer)
  return Program(case=case, secure=secure, round_fn=round_fn, state=state)


def _call(program: Program, key) -> float:
  """Run one round of `program`, keep its state and return the seconds."""
  start = time.perf_counter()
  state, metrics = program.round_fn(program.state, key)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  program.state = state
  if program.secure:
    program.metrics.append(
        {name: float(metrics[name]) for name in COST_METRICS}
        | {'failed': bool(metrics['secagg_failed'])})
  return seconds


def time_programs(programs: list[Program], repeats: int) -> None:
  """Compile every program, then time `repeats` calls of each, interleaved."""
  round_keys = jax.random.split(jax.random.key(SEED + 2), repeats + 1)
  for program in programs:
    kind = 'secure' if program.secure else 'plain'
    _progress(f'compiling {kind} {program.case.graph} {program.case.cohort}')
    program.first_call_s = _call(program, round_keys[0])
    program.metrics.clear()
  for repeat in range(repeats):
    _progress(f'timed calls, repeat {repeat + 1} of {repeats}')
    shift = repeat % len(programs)
    for index in [*range(shift, len(programs)), *range(shift)]:
      program = programs[index]
      program.times.append(_call(program, round_keys[repeat + 1]))


def _summary(program: Program) -> dict:
  seconds = statistics.median(program.times)
  return {
      'seconds_per_round': seconds,
      'compile_s': max(program.first_call_s - seconds, 0.0),
      'spread_s': max(program.times) - min(program.times),
  }


def run(
    population: int, cases: list[Case], *, repeats: int, dropout_rate: float,
) -> list[dict]:
  """Build and time the plain and secure round of every case."""
  _progress(f'building {population:,} synthetic clients')
  train = make_population(population)
  programs = []
  for case in cases:
    for secure in (False, True):
      programs.append(build_program(
          case, train, secure=secure, dropout_rate=dropout_rate))
  time_programs(programs, repeats)
  results = []
  for plain, secure in zip(programs[::2], programs[1::2]):
    case = plain.case
    settings = protocol.SecureAggregationSettings(
        graph=case.graph, threshold_fraction=THRESHOLD_FRACTION)
    plain_summary, secure_summary = _summary(plain), _summary(secure)
    costs = {
        name.removeprefix('secagg_'): statistics.fmean(
            record[name] for record in secure.metrics)
        for name in COST_METRICS
    }
    results.append({
        'graph': case.graph,
        'cohort': case.cohort,
        'population': population,
        'degree': protocol.graph_degree(settings, case.cohort),
        'threshold': protocol.threshold(settings, case.cohort),
        'dropout_rate': dropout_rate,
        'repeats': repeats,
        'plain_s': plain_summary['seconds_per_round'],
        'secure_s': secure_summary['seconds_per_round'],
        'plain_spread_s': plain_summary['spread_s'],
        'secure_spread_s': secure_summary['spread_s'],
        'x_plain': (secure_summary['seconds_per_round']
                    / plain_summary['seconds_per_round']),
        'overhead_s': (secure_summary['seconds_per_round']
                       - plain_summary['seconds_per_round']),
        'plain_compile_s': plain_summary['compile_s'],
        'secure_compile_s': secure_summary['compile_s'],
        'failed_rounds': sum(record['failed'] for record in secure.metrics),
        **costs,
    })
  return results


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def timing_table(results) -> list[str]:
  lines = [
      '| graph | cohort | k | t | plain s per round | secure s per round '
      '| x plain | overhead s | plain compile s | secure compile s | '
      'spread ms (plain, secure) |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for result in results:
    lines.append(
        f"| {result['graph']} | {result['cohort']:,} | {result['degree']:,} "
        f"| {result['threshold']:,} | {result['plain_s']:.4f} "
        f"| {result['secure_s']:.4f} | {result['x_plain']:.1f} "
        f"| {result['overhead_s']:.3f} | {result['plain_compile_s']:.1f} "
        f"| {result['secure_compile_s']:.1f} "
        f"| {1000 * result['plain_spread_s']:.0f}, "
        f"{1000 * result['secure_spread_s']:.0f} |"
    )
  return lines


def cost_table(results) -> list[str]:
  lines = [
      '| graph | cohort | sent KB per client | received KB per client | '
      'plain sent KB | server MB | PRG expansions per client | server PRG '
      'expansions | reconstructions | failed rounds |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for result in results:
    lines.append(
        f"| {result['graph']} | {result['cohort']:,} "
        f"| {result['client_bytes_up'] / 1e3:.1f} "
        f"| {result['client_bytes_down'] / 1e3:.1f} "
        f"| {result['plain_bytes_up'] / 1e3:.1f} "
        f"| {result['server_bytes'] / 1e6:.2f} "
        f"| {result['client_prg_expansions']:,.1f} "
        f"| {result['server_prg_expansions']:,.0f} "
        f"| {result['reconstructions']:,.0f} "
        f"| {result['failed_rounds']}/{result['repeats']} |"
    )
  return lines


def markdown(results, command, *, load_before, load_after) -> str:
  """Return the dated results section."""
  first = results[0]
  settings = (
      f"{first['population']:,} clients of IID synthetic data, softmax "
      'regression (d = 610), FedAvg with clip bound '
      f'{CLIP_NORM}, {LOCAL_STEPS} local SGD steps of batch {BATCH_SIZE}, '
      f"dropout rate {first['dropout_rate']:g} after the key exchange, "
      f'threshold fraction {THRESHOLD_FRACTION}, 32-bit ring. Plain and '
      'secure rounds share the data, sampler, training and round keys. '
      'Compile s is the first call minus the median call. S per round is '
      f"the median of {first['repeats']} timed calls, interleaved across "
      'all rounds, and spread ms is the slowest minus the fastest. X plain '
      'is secure over plain; overhead s is secure minus plain.'
  )
  lines = [
      machine.section_heading('Secure aggregation overhead'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}'
      + machine.load_sentence(load_before, load_after),
      '',
      *timing_table(results),
      '',
      'Protocol cost per round, means over the timed calls. Bytes come from '
      'the cost model of `protocol.cost_of` (32-byte keys and shares, '
      'AES-GCM framing), not from measured traffic.',
      '',
      *cost_table(results),
  ]
  return '\n'.join(lines) + '\n\n'


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--population', type=int, default=10_000,
      help='clients in the population (default: 10000)',
  )
  parser.add_argument(
      '--complete', type=int, nargs='*', default=[50, 200],
      help='cohort sizes to run with the complete graph (default: 50 200)',
  )
  parser.add_argument(
      '--harary', type=int, nargs='*', default=[100, 1000, 10_000],
      help='cohort sizes to run with the harary graph (default: 100 1000 '
      '10000)',
  )
  parser.add_argument(
      '--dropout-rate', type=float, default=0.1,
      help='probability that a sampled client drops after the key exchange '
      '(default: 0.1)',
  )
  parser.add_argument(
      '--repeats', type=int, default=5,
      help='timed calls per round after the compiling one (default: 5)',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to (default: '
      'print only)',
  )
  return parser


def _check_args(parser, args) -> list[Case]:
  """Return the cases, or exit with a usage error for invalid arguments."""
  if args.repeats < 1:
    parser.error(f'--repeats must be at least 1; got {args.repeats}.')
  if not 0.0 <= args.dropout_rate < 1.0:
    parser.error(
        f'--dropout-rate must be in [0, 1); got {args.dropout_rate}.')
  cases = ([Case('complete', cohort) for cohort in args.complete]
           + [Case('harary', cohort) for cohort in args.harary])
  if not cases:
    parser.error('Give at least one cohort size with --complete or --harary.')
  script_help.check_out_path(parser, args.results, '--results')
  for case in cases:
    if not 2 <= case.cohort <= args.population:
      parser.error(
          f'Cohort sizes must be between 2 and --population '
          f'({args.population}); got {case.cohort} for {case.graph}.')
  return cases


def main(argv=None):
  """Run the benchmark from command-line arguments and return its results."""
  if argv is None:
    argv = sys.argv[1:]
  parser = _build_parser()
  args = parser.parse_args(argv)
  cases = _check_args(parser, args)
  load_before = machine.load_average()
  results = run(args.population, cases, repeats=args.repeats,
                dropout_rate=args.dropout_rate)
  load_after = machine.load_average()
  command = shlex.join(['python', 'benchmarks/secure_aggregation.py', *argv])
  page = markdown(
      results, command, load_before=load_before, load_after=load_after
  )
  print(page, end='')
  machine.append_section(args.results, page)
  return results


if __name__ == '__main__':
  main()
