"""Rounds per second: one vmapped round against a per-client Python loop.

Both sides run the same jitted local update (logistic regression, SGD) on the
same synthetic FedProx Synthetic(1, 1) clients with every client in the
cohort. The vmapped side is `simulation.round.build_round`; the loop side
calls the jitted local update once per client from Python and then takes the
example-weighted mean. Compilation is excluded from both timings.

Usage:
  python benchmarks/round_throughput.py [--clients 100 1000 10000]
      [--local-steps 10] [--batch-size 10] [--max-examples 20]
      [--results benchmarks/RESULTS.md]

The section, with the date, the command, the JAX version and the device, is
printed and, with --results, appended to that page.
"""

import argparse
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.aggregation import mean
from fedjax_med.client import local_training
from fedjax_med.data import synthetic
from fedjax_med.models import tabular
from fedjax_med.report import machine
from fedjax_med.report import script_help
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling


# Minimum rows of a synthetic client, train and test together.
MIN_EXAMPLES = 2


def _setup(num_clients, *, local_steps, batch_size, max_examples):
  dataset = synthetic.synthetic(
      key=jax.random.key(0), num_clients=num_clients, alpha=1.0, beta=1.0,
      min_examples=MIN_EXAMPLES, max_examples=max_examples,
      test_fraction=0.2,
  )
  model = tabular.from_flax(tabular.LogisticRegression(10), 10)
  local_update = local_training.build_local_update(
      model, optax.sgd(0.01), num_steps=local_steps, batch_size=batch_size
  )
  train = jax.device_put(dataset.train)
  params = model.init(jax.random.key(1), train.examples['x'][0, :1])
  return train, local_update, params


def _time_vmapped(train, local_update, params, repeats):
  server_optimizer = optax.sgd(1.0)
  round_fn = round_lib.build_round(
      train, local_update,
      sampling.uniform_sampler(train.num_clients, train.num_clients),
      server_optimizer,
  )
  state = round_lib.init_server_state(params, server_optimizer)
  state, _ = round_fn(state, jax.random.key(2))  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  # Round keys from a root of their own: key(round_index) reused the data,
  # init and compile keys above.
  for round_index in range(repeats):
    state, _ = round_fn(state, jax.random.fold_in(jax.random.key(4),
                                                  round_index))
  jax.block_until_ready(state)
  return repeats / (time.perf_counter() - start)


def _time_loop(train, local_update, params, repeats):
  jitted = jax.jit(local_update)
  weighted = jax.jit(mean.weighted_mean)
  examples = [jax.tree.map(lambda a, c=c: a[c], train.examples)
              for c in range(train.num_clients)]
  keys = jax.random.split(jax.random.key(3), train.num_clients)
  jax.block_until_ready(jitted(params, examples[0], train.num_examples[0], keys[0]))

  def one_round(params):
    deltas = [
        jitted(params, examples[c], train.num_examples[c], keys[c]).delta
        for c in range(train.num_clients)
    ]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *deltas)
    aggregate = weighted(stacked, train.num_examples.astype(jnp.float32))
    return jax.tree.map(jnp.add, params, aggregate)

  jax.block_until_ready(one_round(params))  # compile the stack and mean
  start = time.perf_counter()
  for _ in range(repeats):
    params = one_round(params)
  jax.block_until_ready(params)
  return repeats / (time.perf_counter() - start)


def run(client_counts, *, local_steps=10, batch_size=10, max_examples=20):
  """Return one row per population size with both rates and their ratio."""
  rows = []
  for num_clients in client_counts:
    train, local_update, params = _setup(
        num_clients, local_steps=local_steps, batch_size=batch_size,
        max_examples=max_examples,
    )
    vmapped = _time_vmapped(train, local_update, params, repeats=5)
    loop_repeats = 3 if num_clients <= 1000 else 1
    loop = _time_loop(train, local_update, params, repeats=loop_repeats)
    rows.append({
        'clients': num_clients, 'vmapped_rounds_per_s': vmapped,
        'loop_rounds_per_s': loop, 'speedup': vmapped / loop,
    })
    print(f'{num_clients:>7} clients: vmapped {vmapped:9.3f} rounds/s, '
          f'loop {loop:9.4f} rounds/s, ratio {vmapped / loop:8.1f}x',
          flush=True)
  return rows


def _markdown(rows, command, settings) -> str:
  lines = [
      machine.section_heading('Round throughput'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}',
      '',
      '| clients | vmapped rounds/s | Python-loop rounds/s | ratio |',
      '|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
        f"| {row['clients']:,} | {row['vmapped_rounds_per_s']:.3f} | "
        f"{row['loop_rounds_per_s']:.4f} | {row['speedup']:.1f}x |"
    )
  return '\n'.join(lines) + '\n\n'


def _parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--clients', type=int, nargs='+',
                      default=[100, 1000, 10000],
                      help='cohort sizes to time; every client is in the '
                      'cohort')
  parser.add_argument('--local-steps', type=int, default=10,
                      help='SGD steps of each client per round')
  parser.add_argument('--batch-size', type=int, default=10,
                      help='examples per local step')
  parser.add_argument('--max-examples', type=int, default=20,
                      help='maximum rows of a synthetic client, at least '
                      f'{MIN_EXAMPLES}')
  parser.add_argument('--results', default=None,
                      help='markdown page to append the section to')
  args = parser.parse_args(argv)
  if min(args.clients) < 1:
    parser.error(
        f'--clients must each be at least 1, got {min(args.clients)}.')
  for name in ('local_steps', 'batch_size'):
    if getattr(args, name) < 1:
      parser.error(f'--{name.replace("_", "-")} must be at least 1, got '
                   f'{getattr(args, name)}.')
  if args.max_examples < MIN_EXAMPLES:
    parser.error(f'--max-examples must be at least {MIN_EXAMPLES}, the '
                 f'minimum rows of a client, got {args.max_examples}.')
  script_help.check_out_path(parser, args.results, '--results')
  return args


def main(argv=None):
  """Run the benchmark from command-line arguments and return its rows."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  rows = run(args.clients, local_steps=args.local_steps,
             batch_size=args.batch_size, max_examples=args.max_examples)
  command = shlex.join(['python', 'benchmarks/round_throughput.py', *argv])
  settings = (
      f'Every client trains each round: {args.local_steps} local SGD steps of '
      f'batch {args.batch_size}, at most {args.max_examples} rows per client, '
      '60 features, 10 classes.'
  )
  page = _markdown(rows, command, settings)
  print(page, end='')
  machine.append_section(args.results, page)
  return rows


if __name__ == '__main__':
  main()
