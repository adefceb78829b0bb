"""One federated round of a million synthetic clients on one accelerator.

Workload: the one of `benchmarks/scaling.py`, whose constants this script
imports. Every client has 64 rows of 32 standard normal float32 features,
labeled 1 where a fixed random linear function of the features is positive.
The model is a 32-64-1 ReLU MLP. Every client is in the cohort and takes 5
local SGD steps of batch 16 at learning rate 0.1, and the server applies the
aggregate with SGD at 1.0. Variants:

* mean: uniform mean, no clipping or noise.
* mean_dp: uniform mean of updates clipped to L2 norm 1.0, plus central
  Gaussian noise with multiplier 1.0 and the population size as denominator.

Differences from `benchmarks/scaling.py`:

* The population is drawn on the default device with `jax.random`, a chunk
  of `--population-chunk` clients at a time, into one preallocated array.
  A million clients take 8.2 GB of features, which therefore never pass
  through host memory. The distribution is scaling.py's, but the draws
  differ from its numpy generator's.
* The cohort trains in chunks (`build_round(..., chunk_size=N)`). By default
  N follows the rule of `fedjax_med.study.chunk_size`: a client's working
  set is its rows plus 6 copies of the params, and a chunk contains as
  many clients as fit in `--chunk-bytes` (1 GiB, as in the library).
  `--chunk-size` sets N directly.
* The variants run one after another in this process, so the peak device
  memory in each line is the peak of the process so far.

This script imports only the round path of fedjax_med (`simulation.round`,
`client.local_training`, `models.tabular`, `data.federated` and
`report.machine`), which needs jax, flax, optax and numpy. It does not
import `fedjax_med.study`, which needs dp-accounting, so no wheels have to
be carried to a machine that lacks dp-accounting, tqdm or matplotlib.

Output: one JSON line per step on stdout, flushed at once, so that a run
stopped by a timeout still leaves its numbers. `--jsonl` appends the same
lines to a file, by default `$OUT/million_clients.jsonl` when the
environment variable OUT is set. Each line has `step` and `elapsed_s`
(seconds since the script started):

* start: clients, variants, chunk size, device, hardware, JAX version.
* population: seconds to build the population (compilation included),
  its size in GiB and the device memory then.
* first_call: one variant's first round, compilation included.
* round: one timed round of a variant.
* variant: compile s (first call minus the median timed round), median s
  per round, client updates/s, matmul GFLOP/s, peak device memory and the
  last round's metrics.
* error: a variant that failed, for example out of device memory. The
  next variant still runs.
* skipped: a variant not started because `--budget-s` had passed.
* done: total seconds and the host's peak RSS.

Usage:
  python benchmarks/million_clients.py [--clients 1000000]
      [--variants mean mean_dp] [--rounds 3] [--chunk-size N]
      [--chunk-bytes 1073741824] [--population-chunk 65536]
      [--budget-s 420] [--jsonl FILE]

On an H200 machine with Python 3.12, JAX 0.11, flax and optax installed,
run it from the repository root within a 600 s limit:

  PYTHONUNBUFFERED=1 PYTHONPATH=. timeout 570 python3 \\
      benchmarks/million_clients.py --clients 1000000 --budget-s 420

NOTE: not yet run on a GPU or under JAX 0.11. The CPU test runs it at a few
hundred clients under JAX 0.10.2.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.report import machine
from fedjax_med.report import script_help
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

# benchmarks/scaling.py, found because Python puts the folder of the script
# it runs first on sys.path.
import scaling

VARIANTS = ('mean', 'mean_dp')
# The rule of `fedjax_med.study.chunk_size`, whose constants these copy,
# because importing `fedjax_med.study` needs dp-accounting. A test checks
# that both modules agree.
AUTO_CHUNK_BYTES = 2**30
TRAINING_COPIES = 6
# Clients drawn per step of the population loop. A chunk of 65,536 clients
# is 0.5 GiB of features, so the random number temporaries stay small.
POPULATION_CHUNK = 65536
# Seeds of the population, the initial params and the round keys.
DATA_SEED = 0
INIT_SEED = 1
ROUNDS_SEED = 2


class Reporter:
  """Writer of JSON lines to stdout and, if a path is given, to a file."""

  def __init__(self, path: str | None):
    self._start = time.perf_counter()
    self._file = None
    if path:
      directory = os.path.dirname(path)
      if directory:
        os.makedirs(directory, exist_ok=True)
      self._file = open(path, 'a', encoding='utf-8')

  def emit(self, step: str, **fields) -> dict:
    """Write one line with `step`, the elapsed seconds and `fields`."""
    line = {
        'step': step,
        'elapsed_s': round(time.perf_counter() - self._start, 3),
        **fields,
    }
    text = json.dumps(line)
    print(text, flush=True)
    if self._file is not None:
      self._file.write(text + '\n')
      self._file.flush()
    return line

  def elapsed(self) -> float:
    return time.perf_counter() - self._start

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def make_population(
    key: jax.Array, num_clients: int, chunk: int
) -> federated.FederatedData:
  """Draw the population on the default device, `chunk` clients per step.

  Each step writes one chunk into the preallocated features array. The last
  chunk starts at `num_clients - chunk`, so it may overwrite the tail of
  the chunk before it, and every client still gets independent rows.
  """
  chunk = min(chunk, num_clients)
  return _population(key, num_clients=num_clients, chunk=chunk)


def _draw_population(key, *, num_clients, chunk):
  rule_key, data_key = jax.random.split(key)
  rule = jax.random.normal(rule_key, (scaling.FEATURES,), jnp.float32)
  shape = (chunk, scaling.EXAMPLES_PER_CLIENT, scaling.FEATURES)

  def fill(index, x):
    start = jnp.minimum(index * chunk, num_clients - chunk)
    block = jax.random.normal(
        jax.random.fold_in(data_key, index), shape, jnp.float32
    )
    return jax.lax.dynamic_update_slice(x, block, (start, 0, 0))

  num_chunks = -(-num_clients // chunk)
  x = jnp.zeros((num_clients,) + shape[1:], jnp.float32)
  x = jax.lax.fori_loop(0, num_chunks, fill, x)
  y = (x @ rule > 0).astype(jnp.int32)
  num_examples = jnp.full(
      (num_clients,), scaling.EXAMPLES_PER_CLIENT, jnp.int32
  )
  return federated.FederatedData({'x': x, 'y': y}, num_examples)


_population = jax.jit(
    _draw_population, static_argnames=('num_clients', 'chunk')
)


def auto_chunk_size(
    num_clients: int, params, budget_bytes: int
) -> int | None:
  """Return the clients per chunk, or None to train the cohort at once.

  The working set of a client is its rows plus `TRAINING_COPIES` copies of
  the params, as `fedjax_med.study.chunk_size` estimates it. The estimate is
  not a measurement.
  """
  row_bytes = scaling.EXAMPLES_PER_CLIENT * (
      scaling.FEATURES * jnp.dtype(jnp.float32).itemsize
      + jnp.dtype(jnp.int32).itemsize
  )
  param_bytes = sum(
      leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params)
  )
  per_client = row_bytes + TRAINING_COPIES * param_bytes
  if num_clients * per_client <= budget_bytes:
    return None
  return max(1, int(budget_bytes // per_client))


def build_model():
  return tabular.from_flax(
      tabular.MLP(scaling.NUM_CLASSES, (scaling.HIDDEN,)),
      scaling.NUM_CLASSES,
  )


def init_params(model):
  return model.init(
      jax.random.key(INIT_SEED), jnp.zeros((1, scaling.FEATURES))
  )


def build_variant(variant: str, train, model, chunk_size: int | None):
  """Return the jitted round and its first server state for `variant`."""
  num_clients = train.num_clients
  # Every client has the same number of rows, so each epoch's shuffle is
  # drawn once, as `fedjax_med.study` arranges from the data.
  local_update = local_training.build_local_update(
      model, optax.sgd(scaling.CLIENT_LEARNING_RATE),
      num_steps=scaling.LOCAL_STEPS, batch_size=scaling.BATCH_SIZE,
      min_client_examples=scaling.EXAMPLES_PER_CLIENT,
  )
  privacy = round_lib.PrivacySettings()
  if variant == 'mean_dp':
    privacy = round_lib.PrivacySettings(
        clip_norm=scaling.CLIP_NORM,
        noise_multiplier=scaling.NOISE_MULTIPLIER,
        noise_kind='central', denominator=num_clients,
    )
  server_optimizer = optax.sgd(scaling.SERVER_LEARNING_RATE)
  round_fn = round_lib.build_round(
      train, local_update, sampling.uniform_sampler(num_clients, num_clients),
      server_optimizer, aggregator='mean', privacy=privacy,
      chunk_size=chunk_size,
  )
  state = round_lib.init_server_state(
      init_params(model), server_optimizer, aggregator='mean'
  )
  return round_fn, state


def device_memory_fields(device) -> dict:
  """Return the device's bytes in use and peak in GiB, None where unknown.

  CPU devices report no statistics. The peak covers the whole process.
  """
  stats = device.memory_stats() or {}
  fields = {}
  for name, key in (('device_in_use_gib', 'bytes_in_use'),
                    ('device_peak_gib', 'peak_bytes_in_use')):
    value = stats.get(key)
    fields[name] = None if value is None else value / 2**30
  return fields


def _round_metrics(metrics) -> dict:
  return {
      'num_contributing': int(metrics['num_contributing']),
      'train_loss': float(metrics['train_loss']),
      'params_finite': bool(metrics['params_finite']),
  }


def _timed_round(round_fn, state, key):
  start = time.perf_counter()
  state, metrics = round_fn(state, key)
  jax.block_until_ready((state, metrics))
  return state, metrics, time.perf_counter() - start


def run_variant(variant, train, model, args, reporter, deadline) -> None:
  """Compile and time `variant`, emitting a line per round and a summary.

  Timed rounds stop once another one could end after `deadline`, a
  `time.perf_counter()` value, but at least one is always timed.
  """
  device = jax.devices()[0]
  round_fn, state = build_variant(variant, train, model, args.chunk_size)
  keys = jax.random.split(jax.random.key(ROUNDS_SEED), args.rounds + 1)

  state, metrics, first_call_s = _timed_round(round_fn, state, keys[0])
  reporter.emit('first_call', variant=variant, seconds=first_call_s,
                **_round_metrics(metrics), **device_memory_fields(device))

  times = []
  while len(times) < args.rounds:
    state, metrics, seconds = _timed_round(
        round_fn, state, keys[len(times) + 1])
    times.append(seconds)
    reporter.emit('round', variant=variant, index=len(times),
                  seconds=seconds, **_round_metrics(metrics))
    if time.perf_counter() + seconds > deadline:
      break

  per_round = statistics.median(times)
  clients = train.num_clients
  reporter.emit(
      'variant', variant=variant, clients=clients,
      chunk_size=args.chunk_size,
      compile_s=max(first_call_s - per_round, 0.0),
      seconds_per_round=per_round, rounds_timed=len(times),
      client_updates_per_s=clients / per_round,
      matmul_gflops_per_s=scaling.matmul_flops(clients) / per_round / 1e9,
      **_round_metrics(metrics), **device_memory_fields(device),
  )


def run(args, reporter: Reporter) -> None:
  """Build the population, then compile and time each variant."""
  deadline = time.perf_counter() + args.budget_s
  device = jax.devices()[0]
  model = build_model()
  if args.chunk_size is None:
    args.chunk_size = auto_chunk_size(
        args.clients, init_params(model), args.chunk_bytes)
  reporter.emit(
      'start', clients=args.clients, variants=args.variants,
      chunk_size=args.chunk_size, rounds=args.rounds,
      platform=device.platform, device_kind=device.device_kind,
      hardware=machine.hardware_line(), jax=jax.__version__,
      device_free_gib=_gib(machine.device_available_bytes(device)),
  )

  start = time.perf_counter()
  train = make_population(
      jax.random.key(DATA_SEED), args.clients, args.population_chunk)
  jax.block_until_ready(train)
  population_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(train))
  reporter.emit(
      'population', seconds=time.perf_counter() - start,
      population_gib=population_bytes / 2**30,
      **device_memory_fields(device),
  )

  for variant in args.variants:
    if time.perf_counter() > deadline:
      reporter.emit('skipped', variant=variant,
                    reason=f'--budget-s {args.budget_s:g} had passed')
      continue
    try:
      run_variant(variant, train, model, args, reporter, deadline)
    except jax.errors.JaxRuntimeError as error:
      # Out of device memory, for example. The next variant may still fit.
      reporter.emit('error', variant=variant,
                    message=str(error).splitlines()[0])


def _gib(value: int | None) -> float | None:
  return None if value is None else value / 2**30


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--clients', type=int, default=1_000_000,
      help='population size; every client is in the cohort '
      '(default: 1000000)',
  )
  parser.add_argument(
      '--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS),
      help='round variants to time, in this order (default: all)',
  )
  parser.add_argument(
      '--rounds', type=int, default=3,
      help='timed rounds per variant after the first call; fewer run when '
      'another could end after --budget-s (default: 3)',
  )
  parser.add_argument(
      '--chunk-size', type=int, default=None,
      help='clients trained at once (default: from --chunk-bytes)',
  )
  parser.add_argument(
      '--chunk-bytes', type=int, default=AUTO_CHUNK_BYTES,
      help='estimated bytes of one chunk\'s rows and training state when '
      f'--chunk-size is unset (default: {AUTO_CHUNK_BYTES}, 1 GiB)',
  )
  parser.add_argument(
      '--population-chunk', type=int, default=POPULATION_CHUNK,
      help='clients drawn per step while building the population '
      f'(default: {POPULATION_CHUNK})',
  )
  parser.add_argument(
      '--budget-s', type=float, default=420.0,
      help='seconds after the start past which no variant starts and no '
      'further round is timed (default: 420)',
  )
  out = os.environ.get('OUT')
  parser.add_argument(
      '--jsonl', default=os.path.join(out, 'million_clients.jsonl')
      if out else None,
      help='file to append the JSON lines to (default: '
      '$OUT/million_clients.jsonl when OUT is set, else none)',
  )
  return parser


def _parse_args(argv) -> argparse.Namespace:
  parser = _build_parser()
  args = parser.parse_args(argv)
  for name in ('clients', 'rounds', 'chunk_bytes', 'population_chunk'):
    if getattr(args, name) < 1:
      parser.error(
          f'--{name.replace("_", "-")} must be at least 1, got '
          f'{getattr(args, name)}.'
      )
  if args.chunk_size is not None and args.chunk_size < 1:
    parser.error(f'--chunk-size must be at least 1, got {args.chunk_size}.')
  if not args.budget_s > 0:
    parser.error(f'--budget-s must be > 0 seconds, got {args.budget_s}.')
  script_help.check_out_path(parser, args.jsonl, '--jsonl')
  # Repeated names run once.
  args.variants = list(dict.fromkeys(args.variants))
  return args


def main(argv=None) -> None:
  """Run the benchmark from command-line arguments."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  reporter = Reporter(args.jsonl)
  try:
    run(args, reporter)
    reporter.emit('done', seconds=reporter.elapsed(),
                  peak_rss_mb=machine.peak_rss_mb())
  finally:
    reporter.close()


if __name__ == '__main__':
  main()
