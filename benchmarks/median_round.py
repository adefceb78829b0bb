"""Milliseconds per federated round with the mean and the median aggregator.

Each cohort size builds one population of synthetic FedProx Synthetic(1, 1)
clients with 32 features, 2 classes and the same number of training rows
each. An MLP with one hidden ReLU layer of 64 units (one output logit, as
`fedjax_med.models.tabular` gives binary tasks) trains with local SGD, and
every client is in the cohort. `simulation.round.build_round` then runs the
whole round with aggregator 'mean', with 'median' (the selection in
`fedjax_med.aggregation.select`) and with 'sort_median', the earlier
implementation that sorts every coordinate over the clients. The earlier
implementation is kept here only, as the baseline.

The first call of each round compiles it and is reported apart. The timed
calls then alternate between the aggregators, so that a change in machine
load hits all of them alike, and ms per round is the median of the timed
calls. Each round starts from the same state with the same key, so the
median and sort-median rounds must return the same params. The largest
absolute difference is printed as a check.

Usage:
  python benchmarks/median_round.py [--clients 1000 10000] [--repeats 5]
      [--results benchmarks/RESULTS.md]

Progress goes to stderr. The section is printed and, with --results,
appended to that page together with the date, the command, the JAX version,
the device and the load average before the run.
"""

import argparse
import contextlib
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.aggregation import median
from fedjax_med.client import local_training
from fedjax_med.data import synthetic
from fedjax_med.models import tabular
from fedjax_med.report import machine
from fedjax_med.report import script_help
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

REFERENCE = 'mean'
SORT_MEDIAN = 'sort_median'
AGGREGATORS = (REFERENCE, 'median', SORT_MEDIAN)
NUM_CLASSES = 2


def sort_median(client_updates, mask):
  """Return the coordinate-wise median by sorting every coordinate.

  This is the implementation that `fedjax_med.aggregation.median` used
  before the selection, kept as the baseline. Invalid rows become +inf, so
  they sort after the valid ones.
  """
  count = jnp.sum(mask)
  low_index = jnp.maximum(count - 1, 0) // 2
  high_index = jnp.where(count > 0, count // 2, 0)

  def leaf_median(leaf):
    row_mask = mask.reshape((-1,) + (1,) * (leaf.ndim - 1))
    ordered = jnp.sort(jnp.where(row_mask, leaf, jnp.inf), axis=0)
    middle = (ordered[low_index] + ordered[high_index]) / 2
    return jnp.where(count > 0, middle, jnp.zeros_like(middle))

  return jax.tree.map(leaf_median, client_updates)


@contextlib.contextmanager
def _median_replaced_by(function):
  """Make the registry's 'median' call `function` while the block runs.

  The registry looks up `median.coordinate_median` when the round is
  traced, so the round must be compiled inside the block.
  """
  original = median.coordinate_median
  median.coordinate_median = function
  try:
    yield
  finally:
    median.coordinate_median = original


def build_population(num_clients: int, options):
  """Return the training data, the local update and the initial params."""
  dataset = synthetic.synthetic(
      key=jax.random.key(0), num_clients=num_clients, alpha=1.0, beta=1.0,
      num_features=options.features, num_classes=NUM_CLASSES,
      min_examples=options.examples, max_examples=options.examples,
      test_fraction=0.0,
  )
  model = tabular.from_flax(
      tabular.MLP(NUM_CLASSES, tuple(options.hidden_sizes)), NUM_CLASSES
  )
  local_update = local_training.build_local_update(
      model, optax.sgd(options.learning_rate), num_steps=options.local_steps,
      batch_size=options.batch_size,
  )
  train = jax.device_put(dataset.train)
  params = model.init(jax.random.key(1), train.examples['x'][0, :1])
  return train, local_update, params


def build_rounds(train, local_update, params):
  """Compile one round per aggregator and return them with their first call.

  Returns:
    `(calls, first_call_s, final_params)`, three dicts keyed by aggregator.
    `calls` is a zero-argument function that runs one round from the
    initial state, `first_call_s` the seconds of the first call
    (compilation and one round), and `final_params` the params after it.
  """
  server_optimizer = optax.sgd(1.0)
  sampler = sampling.uniform_sampler(train.num_clients, train.num_clients)
  state = round_lib.init_server_state(params, server_optimizer)
  round_key = jax.random.key(2)
  calls, first_call_s, final_params = {}, {}, {}
  for name in AGGREGATORS:
    _progress(f'  {name}: compiling')
    replacement = (
        _median_replaced_by(sort_median) if name == SORT_MEDIAN
        else contextlib.nullcontext()
    )
    with replacement:
      round_fn = round_lib.build_round(
          train, local_update, sampler, server_optimizer,
          aggregator='median' if name == SORT_MEDIAN else name,
      )
      start = time.perf_counter()
      new_state, _ = jax.block_until_ready(round_fn(state, round_key))
      first_call_s[name] = time.perf_counter() - start
    final_params[name] = new_state.params
    calls[name] = (
        lambda round_fn=round_fn: round_fn(state, round_key)
    )
  return calls, first_call_s, final_params


def time_rounds(calls, repeats: int) -> dict[str, float]:
  """Return the median seconds per round of each call, interleaved."""
  durations = {name: [] for name in calls}
  for repeat in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      durations[name].append(time.perf_counter() - start)
    _progress(f'  timed {repeat + 1}/{repeats}')
  return {name: statistics.median(times) for name, times in durations.items()}


def max_difference(first, second) -> float:
  """Return the largest absolute difference between two params pytrees."""
  gaps = jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
      first, second,
  )
  return max(jax.tree.leaves(gaps))


def run(options) -> list[dict]:
  """Return one row per (cohort size, aggregator) with times and ratios."""
  rows = []
  for num_clients in options.clients:
    _progress(f'{num_clients:,} clients: building the population')
    train, local_update, params = build_population(num_clients, options)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    calls, first_call_s, final_params = build_rounds(
        train, local_update, params
    )
    seconds = time_rounds(calls, options.repeats)
    difference = max_difference(
        final_params['median'], final_params[SORT_MEDIAN]
    )
    for name in AGGREGATORS:
      rows.append({
          'clients': num_clients, 'parameters': num_params,
          'aggregator': name, 'first_call_s': first_call_s[name],
          'ms_per_round': seconds[name] * 1e3,
          'x_mean': seconds[name] / seconds[REFERENCE],
          'calls': options.repeats, 'median_vs_sort': difference,
      })
      _progress(
          f'  {name}: {seconds[name] * 1e3:,.1f} ms per round, '
          f'{seconds[name] / seconds[REFERENCE]:.2f}x mean'
      )
  return rows


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def markdown(rows, command: str, settings: str) -> str:
  """Return the dated results section with one table row per aggregator."""
  lines = [
      machine.section_heading('Median round time'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}',
      '',
      '| clients | parameters | aggregator | first call s | ms per round | '
      'x mean | calls timed |',
      '|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
        f"| {row['clients']:,} | {row['parameters']:,} | {row['aggregator']} "
        f"| {row['first_call_s']:.2f} | {row['ms_per_round']:,.1f} | "
        f"{row['x_mean']:.2f} | {row['calls']} |"
    )
  lines.append('')
  for clients in dict.fromkeys(row['clients'] for row in rows):
    difference = next(
        row['median_vs_sort'] for row in rows if row['clients'] == clients
    )
    lines.append(
        f'At {clients:,} clients the params after the median and the '
        f'sort-median round differ by at most {difference:.1e}.'
    )
  return '\n'.join(lines) + '\n\n'


def _parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--clients', type=int, nargs='+', default=[1000, 10000],
      help='numbers of clients, each both the population and the cohort '
      'size (default: 1000 10000)',
  )
  parser.add_argument(
      '--examples', type=int, default=64,
      help='training rows of every client (default: 64)',
  )
  parser.add_argument(
      '--features', type=int, default=32,
      help='input features per row (default: 32)',
  )
  parser.add_argument(
      '--hidden-sizes', type=int, nargs='+', default=[64],
      help='widths of the MLP hidden layers (default: 64)',
  )
  parser.add_argument(
      '--local-steps', type=int, default=5,
      help='local SGD steps per client and round (default: 5)',
  )
  parser.add_argument(
      '--batch-size', type=int, default=16,
      help='rows per local step (default: 16)',
  )
  parser.add_argument(
      '--learning-rate', type=script_help.finite_positive_float,
      default=0.1,
      help='client SGD step size (default: 0.1)',
  )
  parser.add_argument(
      '--repeats', type=int, default=5,
      help='timed rounds per aggregator after the first call (default: 5)',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the section to',
  )
  args = parser.parse_args(argv)
  _check_args(parser, args)
  return args


def _check_args(parser, args) -> None:
  """Exit through `parser.error` on a size or count below 1 or a bad path."""
  for name in ('clients', 'hidden_sizes'):
    if min(getattr(args, name)) < 1:
      parser.error(
          f'--{name.replace("_", "-")} must each be at least 1, got '
          f'{getattr(args, name)}.'
      )
  for name in ('examples', 'features', 'local_steps', 'batch_size',
               'repeats'):
    if getattr(args, name) < 1:
      parser.error(
          f'--{name.replace("_", "-")} must be at least 1, got '
          f'{getattr(args, name)}.'
      )
  script_help.check_out_path(parser, args.results, '--results')


def main(argv=None):
  """Run the benchmark from command-line arguments and return its rows."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  load_average = machine.load_average()
  rows = run(args)
  command = shlex.join(['python', 'benchmarks/median_round.py', *argv])
  hidden = ', '.join(str(size) for size in args.hidden_sizes)
  settings = (
      f'Synthetic(1, 1) data with {args.features} features and '
      f'{NUM_CLASSES} classes, {args.examples} training rows per client, '
      f'every client in the cohort. MLP with hidden layers ({hidden}), '
      f'{args.local_steps} local SGD steps of batch {args.batch_size}. '
      'First call s is compilation plus one round. ms per round is the '
      'median of the timed calls, which alternate between the aggregators.'
      + machine.load_sentence(load_average)
  )
  page = markdown(rows, command, settings)
  print(page, end='')
  machine.append_section(args.results, page)
  return rows


if __name__ == '__main__':
  main()
