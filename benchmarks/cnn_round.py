"""Round time of convolutional clients: vmapped round, Python loop and pfl.

Workloads, all on synthetic images drawn with `jax.random.uniform` and
labels drawn with `jax.random.randint` (10 classes), because the values do
not change the speed:

* lenet_digits: `models.cnn.LeNet5(10)` on 8x8x1 images, 18 rows per
  client as in the bundled digits split over 100 clients, 100 and 1,000
  clients, every client in the cohort. Each client takes ceil(18 / 8) = 3
  local SGD steps of batch 8 (one epoch) at learning rate 0.1, and the
  server applies the example-weighted mean (FedAvg) with SGD at 1.0.
* resnet_digits: the same clients (100) with `models.cnn.ResNet(10,
  widths=(16, 32))` and batch normalization, once with FedAvg over every
  leaf and once with FedBN, whose normalization leaves stay on the clients
  (`local_mask=cnn.norm_mask(params)`). The two rows show FedBN's cost.
* pfl_cifar10: the CIFAR-10 benchmark that pfl-research publishes, with
  `models.cnn.PflCNN(10)` (pfl's `simple_cnn` without its two dropout
  layers) on 32x32x3 images. Its settings come from apple/pfl-research:
  - benchmarks/image_classification/configs/baseline.yaml (commit
    2c77da1b): dataset cifar10_iid, model simple_cnn, algorithm fedavg,
    mean_datapoints_per_user 50 with a constant distribution,
    cohort_size 50, local_num_epochs 1, local_batch_size 10,
    local_learning_rate 0.1, learning_rate 1.0, weight_by_samples false,
    central_num_iterations 1500, evaluation_frequency 10.
  - benchmarks/image_classification/pytorch/train.py (commit 2c77da1b):
    the local optimizer is `torch.optim.SGD`, the central optimizer is
    `torch.optim.SGD` at `learning_rate`, and weight_by_samples false
    selects `WeightByUser`, a uniform mean of the client updates.
  - benchmarks/dataset/cifar10/numpy.py (commit 22e88081): cifar10_iid
    cuts the 50,000 training images into users of 50 rows, so 1,000
    users, sampled with the 'random' user sampler.
  - benchmarks/model/pytorch/cnn.py (commit 06651ed8): simple_cnn is two
    valid 3x3 convolutions (32, 64) with ReLU, a 2x2 max pool, dropout
    0.25, a dense layer of 128, dropout 0.5 and the output layer.
  So each round samples 50 of 1,000 clients of 50 rows uniformly, each
  takes 5 local SGD steps of batch 10 at 0.1, and the server applies the
  uniform mean with SGD at 1.0. This script times rounds only: pfl's run
  also evaluates on the test set every 10 rounds.

Sides, measured in the same process on the same state and round keys:

* vmapped: `simulation.round.build_round`, one jitted round that vmaps
  the cohort. Compile s is the ahead-of-time `lower(...).compile()` of
  that round, and XLA out+temp MB is what the compiled round allocates
  besides its inputs (`memory_analysis()`).
* loop: a Python loop over the cohort that makes one call per client of a
  jitted function around the same `local_update`. That function takes the
  client's rows, its key `fold_in(clients_key, client_id)` and, under
  FedBN, its own norm leaves. One jitted weighted mean and server step
  follow the loop. Its compile s is the ahead-of-time compile of the
  per-client function.
* pfl (optional): pfl-research's `FederatedAveraging` on a
  `SimulatedBackend` with its PyTorch backend, on the pfl_cifar10 workload
  with the same architecture, run by the interpreter given as
  `--python pfl=PATH`. pfl 0.6.0 requires dp-accounting<0.6, which
  conflicts with fedjax_med, so it needs a venv of its own:

    python3 -m venv /tmp/pfl && /tmp/pfl/bin/pip install torch==2.13.0 \\
        && /tmp/pfl/bin/pip install 'pfl[pytorch]==0.6.0'

  That process imports only the standard library, numpy, torch and pfl
  from this file. pfl's rounds are the intervals between its per-round
  callbacks, after one warm-up round.

Round 0 of each case is a warm-up for both JAX sides, which start it from
the same state with the same key. The script then compares their params
(and FedBN's client-local leaves): it reports the largest absolute
difference over the largest absolute change that the vmapped round made.
The timed rounds cycle through the cases of a workload (the two population
sizes of lenet_digits, FedAvg and FedBN of resnet_digits) and alternate
between the two sides, so a change in machine load hits all alike, and s
per round is their median.

The client floor is one client's local SGD steps unrolled in one jitted
function, without the `lax.scan`, shuffle and masks of local training. A
side's time per client over the floor shows what those and the vmapping
add to the steps themselves.

Usage:
  python benchmarks/cnn_round.py [--digits-clients 100 1000]
      [--resnet-clients 100] [--cifar-clients 1000] [--cifar-cohort 50]
      [--repeats 5] [--cifar-repeats 1] [--loop-max-clients WORKLOAD=N]
      [--python pfl=/tmp/pfl/bin/python] [--torch-threads 1]
      [--results benchmarks/RESULTS.md]

Progress goes to stderr. The section is printed and, with --results,
appended to that page.
"""

import argparse
import importlib.metadata
import json
import math
import os
import pathlib
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import numpy as np

NUM_CLASSES = 10
SEED = 0

DIGITS_SHAPE = (8, 8, 1)
DIGITS_EXAMPLES = 18
DIGITS_BATCH = 8
DIGITS_LOCAL_LEARNING_RATE = 0.1
RESNET_WIDTHS = (16, 32)

# pfl-research's CIFAR-10 benchmark; the module docstring gives the sources.
CIFAR_SHAPE = (32, 32, 3)
CIFAR_CLIENTS = 1000
CIFAR_EXAMPLES = 50
CIFAR_COHORT = 50
CIFAR_BATCH = 10
CIFAR_LOCAL_LEARNING_RATE = 0.1
CIFAR_CENTRAL_ITERATIONS = 1500
SERVER_LEARNING_RATE = 1.0

# The loop passes the equality check when the L2 norm of its params minus
# the vmapped round's is at most this fraction of the L2 norm of the change
# that the round made. Both sides run float32 arithmetic whose sums XLA may
# order differently. Where a value lands within rounding of a ReLU kink or a
# max-pool tie, one side can take the other branch. That client's later
# steps then differ in a few entries, which a relative L2 bound tolerates.
# One client trained with the wrong rows, key or weight would instead move
# the mean of 50 uncorrelated updates of equal norm by sqrt(2 / 50) = 0.2
# of its norm. The bound sits between: pfl_cifar10 in benchmarks/RESULTS.md
# (2026-12-05) measured 7.1e-4 with the largest entry 5.3e-5 apart.
PARAMS_TOLERANCE = 1e-2

WORKLOADS = ('lenet_digits', 'resnet_digits', 'pfl_cifar10')
# Client-floor calls timed after each case's pair of timed rounds.
FLOOR_CALLS = 3


class Case(NamedTuple):
  """One workload at one population size.

  Attributes:
    workload: one of `WORKLOADS`.
    variant: 'fedavg', 'mean' (uniform mean) or 'fedbn'.
    clients: population size.
    cohort: clients sampled each round (uniformly, without replacement).
    examples: rows of every client.
    shape: `(height, width, channels)` of an image.
    batch: local batch size.
    learning_rate: local SGD step size.
    unroll: compile the local steps as straight-line code instead of a
      `lax.scan` (`build_local_update(..., unroll=True)`).
  """

  workload: str
  variant: str
  clients: int
  cohort: int
  examples: int
  shape: tuple[int, int, int]
  batch: int
  learning_rate: float
  unroll: bool = False

  @property
  def local_steps(self) -> int:
    """Steps of one local epoch: ceil(examples / batch)."""
    return -(-self.examples // self.batch)

  @property
  def aggregator(self) -> str:
    """The round's aggregator: the uniform 'mean' or 'fedavg'."""
    return 'mean' if self.variant == 'mean' else 'fedavg'


def build_cases(digits_clients, resnet_clients, cifar_clients, cifar_cohort,
                unroll=False):
  """Return the cases in the order they run."""
  cases = []
  for clients in digits_clients:
    cases.append(Case('lenet_digits', 'fedavg', clients, clients,
                      DIGITS_EXAMPLES, DIGITS_SHAPE, DIGITS_BATCH,
                      DIGITS_LOCAL_LEARNING_RATE))
  for clients in resnet_clients:
    for variant in ('fedavg', 'fedbn'):
      cases.append(Case('resnet_digits', variant, clients, clients,
                        DIGITS_EXAMPLES, DIGITS_SHAPE, DIGITS_BATCH,
                        DIGITS_LOCAL_LEARNING_RATE))
  if cifar_clients:
    cases.append(Case('pfl_cifar10', 'mean', cifar_clients, cifar_cohort,
                      CIFAR_EXAMPLES, CIFAR_SHAPE, CIFAR_BATCH,
                      CIFAR_LOCAL_LEARNING_RATE))
  return [case._replace(unroll=unroll) for case in cases]


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


# ---------------------------------------------------------------------------
# The JAX sides. JAX and fedjax_med are imported inside the functions, so
# that the pfl process, whose venv has neither, can import this file.


class Program(NamedTuple):
  """A side's round and its starting state.

  Attributes:
    state: the state before round 0.
    round_fn: `round_fn(state, key) -> state`, which blocks until the new
      state is ready. The loop's also takes `max_clients`.
    compared: `compared(state) -> pytree`, the params (and FedBN's
      client-local leaves) that the equality check compares.
  """

  state: object
  round_fn: Callable
  compared: Callable


def _model(case: Case):
  from fedjax_med.models import cnn
  from fedjax_med.models import tabular

  if case.workload == 'lenet_digits':
    return tabular.from_flax(cnn.LeNet5(NUM_CLASSES), NUM_CLASSES)
  if case.workload == 'resnet_digits':
    module = cnn.ResNet(NUM_CLASSES, widths=RESNET_WIDTHS, norm='batch')
    return cnn.from_flax_stateful(module, NUM_CLASSES, case.shape)
  return tabular.from_flax(cnn.PflCNN(NUM_CLASSES), NUM_CLASSES)


def make_population(case: Case):
  """Return the case's synthetic clients as device-resident FederatedData."""
  import jax
  import jax.numpy as jnp

  from fedjax_med.data import federated

  image_key, label_key = jax.random.split(jax.random.key(SEED))
  shape = (case.clients, case.examples)
  x = jax.random.uniform(image_key, shape + case.shape, jnp.float32)
  y = jax.random.randint(label_key, shape, 0, NUM_CLASSES, jnp.int32)
  counts = jnp.full((case.clients,), case.examples, jnp.int32)
  return federated.FederatedData({'x': x, 'y': y}, counts)


def initial_params(case: Case, model):
  import jax
  import jax.numpy as jnp

  sample = jnp.zeros((1, *case.shape), jnp.float32)
  return model.init(jax.random.key(SEED + 1), sample)


def _local_update(case: Case, model):
  import optax

  from fedjax_med.client import local_training

  return local_training.build_local_update(
      model, optax.sgd(case.learning_rate), num_steps=case.local_steps,
      batch_size=case.batch, min_client_examples=case.examples,
      unroll=case.unroll,
  )


def _local_mask(case: Case, params):
  from fedjax_med.models import cnn

  return cnn.norm_mask(params) if case.variant == 'fedbn' else None


def build_vmapped(case: Case, population, params):
  """Build the jitted round and compile it ahead of time.

  Returns the program, the compile seconds and XLA's output plus
  temporary bytes of one round (None where XLA reports no analysis).
  """
  import jax
  import optax

  from fedjax_med.simulation import round as round_lib
  from fedjax_med.simulation import sampling

  model = _model(case)
  mask = _local_mask(case, params)
  server_optimizer = optax.sgd(SERVER_LEARNING_RATE)
  round_step = round_lib.build_round(
      population, _local_update(case, model),
      sampling.uniform_sampler(case.clients, case.cohort), server_optimizer,
      aggregator=case.aggregator, local_mask=mask,
  )
  state = round_lib.init_server_state(
      params, server_optimizer, aggregator=case.aggregator, local_mask=mask,
      local_clients=None if mask is None else case.clients,
  )
  start = time.perf_counter()
  compiled = round_step.lower(state, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  needed = None
  if memory is not None:
    needed = memory.output_size_in_bytes + memory.temp_size_in_bytes

  def round_fn(state, key):
    state, _ = round_step(state, key)
    return jax.block_until_ready(state)

  def compared(state):
    return {'params': state.params, 'local': state.local}

  return Program(state, round_fn, compared), compile_s, needed


class LoopState(NamedTuple):
  """The loop's state: global params and FedBN's `[clients, ...]` leaves."""

  params: object
  local: object


def build_loop(case: Case, population, params):
  """Build the per-client Python loop over the same local update.

  Its `round_fn(state, key, max_clients=None)` trains only the first
  `max_clients` members of the cohort when that is given. Returns the
  program and the seconds of the ahead-of-time compile of the per-client
  function.
  """
  import jax
  import jax.numpy as jnp

  from fedjax_med.aggregation import mean
  from fedjax_med.simulation import local_leaves
  from fedjax_med.simulation import round as round_lib
  from fedjax_med.simulation import sampling

  model = _model(case)
  local_update = _local_update(case, model)
  mask = _local_mask(case, params)
  examples = population.examples
  counts = population.num_examples
  host_counts = np.asarray(counts)
  sample = jax.jit(sampling.uniform_sampler(case.clients, case.cohort))

  @jax.jit
  def train_client(params, local, examples, counts, clients_key, client_id):
    client_examples = jax.tree.map(lambda leaf: leaf[client_id], examples)
    key = jax.random.fold_in(clients_key, client_id)
    if local is not None:
      own = jax.tree.map(lambda leaf: leaf[client_id], local)
      params = local_leaves.merge(params, own)
    result = local_update(params, client_examples, counts[client_id], key)
    if local is None:
      return result.delta, None
    return (local_leaves.zero_local(result.delta, mask),
            local_leaves.split(result.delta, mask))

  @jax.jit
  def finish(state, deltas, own_deltas, client_ids, weights):
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *deltas)
    aggregate = mean.weighted_mean(stacked, weights)
    # SGD on the negative aggregate adds the aggregate times the rate.
    params = jax.tree.map(
        lambda param, step: param + SERVER_LEARNING_RATE * step,
        state.params, aggregate,
    )
    local = state.local
    if own_deltas is not None:
      own_stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                                 *own_deltas)
      local = jax.tree.map(
          lambda stored, delta: stored.at[client_ids].add(delta),
          local, own_stacked,
      )
    return LoopState(params, local)

  def round_fn(state, key, max_clients=None):
    # NOTE: these tags are private constants of round.py. The loop uses them
    # to draw the cohort and client keys of the vmapped round.
    cohort = sample(jax.random.fold_in(key, round_lib._SAMPLE_TAG))
    clients_key = jax.random.fold_in(key, round_lib._CLIENTS_TAG)
    ids = np.asarray(cohort.client_ids)[np.asarray(cohort.mask)]
    if max_clients is not None:
      ids = ids[:max_clients]
    deltas, own_deltas = [], []
    for client_id in ids:
      delta, own_delta = train_client(
          state.params, state.local, examples, counts, clients_key,
          np.int32(client_id),
      )
      deltas.append(delta)
      own_deltas.append(own_delta)
    if case.aggregator == 'fedavg':
      weights = host_counts[ids].astype(np.float32)
    else:
      weights = np.ones(len(ids), np.float32)
    state = finish(state, deltas, None if mask is None else own_deltas,
                   ids.astype(np.int32), weights)
    return jax.block_until_ready(state)

  local = None
  if mask is not None:
    local = local_leaves.init_local(params, mask, case.clients)
  start = time.perf_counter()
  train_client.lower(params, local, examples, counts, jax.random.key(0),
                     np.int32(0)).compile()
  compile_s = time.perf_counter() - start

  def compared(state):
    return {'params': state.params, 'local': state.local}

  return Program(LoopState(params, local), round_fn, compared), compile_s


class ParamsDifference(NamedTuple):
  """The loop's params against the vmapped round's, after the same round.

  Attributes:
    relative: ||loop - vmapped|| / ||vmapped - start||, L2 over all leaves.
    max_abs: the largest |loop - vmapped| of any entry.
    change_max_abs: the largest |vmapped - start| of any entry.
  """

  relative: float
  max_abs: float
  change_max_abs: float


def params_difference(loop_tree, vmapped_tree, start_tree) -> ParamsDifference:
  """Compare the loop's and the vmapped round's params, in float64."""
  import jax

  def leaf_differences(left_tree, right_tree):
    return [
        np.asarray(left, np.float64) - np.asarray(right, np.float64)
        for left, right in zip(jax.tree.leaves(left_tree),
                               jax.tree.leaves(right_tree))
    ]

  difference = leaf_differences(loop_tree, vmapped_tree)
  change = leaf_differences(vmapped_tree, start_tree)
  change_norm = math.sqrt(sum(float(np.sum(leaf**2)) for leaf in change))
  difference_norm = math.sqrt(
      sum(float(np.sum(leaf**2)) for leaf in difference))
  return ParamsDifference(
      relative=difference_norm / change_norm if change_norm else math.inf,
      max_abs=max(float(np.max(np.abs(leaf))) for leaf in difference),
      change_max_abs=max(float(np.max(np.abs(leaf))) for leaf in change),
  )


def build_floor(case: Case, population, params) -> Callable[[], float]:
  """Compile the client floor and return a function that times one call.

  The floor unrolls the case's local SGD steps over the first client's rows
  in one jitted function: the same model, batch shapes and optimizer as
  local training, without its `lax.scan`, shuffle, padding masks or
  batch-statistics refresh.
  """
  import jax
  import jax.numpy as jnp

  from fedjax_med.models import tabular

  model = _model(case)
  x = population.examples['x'][0]
  y = population.examples['y'][0]

  def loss(params, x, y):
    if model.apply_train is None:
      logits = model.apply(params, x)
    else:
      logits = model.apply_train(params, x, jnp.ones(x.shape[0], bool))
    return jnp.mean(tabular.per_example_loss(logits, y, NUM_CLASSES))

  @jax.jit
  def floor(params, x, y):
    for step in range(case.local_steps):
      rows = slice(step * case.batch, (step + 1) * case.batch)
      grads = jax.grad(loss)(params, x[rows], y[rows])
      params = jax.tree.map(
          lambda param, grad: param - case.learning_rate * grad, params, grads)
    return params

  jax.block_until_ready(floor(params, x, y))

  def time_call() -> float:
    start = time.perf_counter()
    jax.block_until_ready(floor(params, x, y))
    return time.perf_counter() - start

  return time_call


def _timed(round_fn, state, key, **kwargs):
  start = time.perf_counter()
  state = round_fn(state, key, **kwargs)
  return state, time.perf_counter() - start


class _Sides(NamedTuple):
  """Both JAX sides of one case, compiled, with their states after round 0."""

  case: Case
  population: object
  params: object
  vmapped: Program
  loop: Program
  time_floor: Callable[[], float]
  vmapped_state: object
  loop_state: object
  compile_s: float
  loop_compile_s: float
  xla_bytes: int | None
  loop_clients: int
  difference: ParamsDifference


def _prepare(case: Case, base_key, *, loop_max_clients) -> _Sides:
  """Compile both sides, run round 0 on each and compare their params."""
  import jax

  population = jax.device_put(make_population(case))
  params = initial_params(case, _model(case))
  vmapped, compile_s, xla_bytes = build_vmapped(case, population, params)
  loop, loop_compile_s = build_loop(case, population, params)
  time_floor = build_floor(case, population, params)

  # Round 0: the warm-up of both sides, from the same state and key.
  key = jax.random.fold_in(base_key, 0)
  vmapped_state = vmapped.round_fn(vmapped.state, key)
  loop_state = loop.round_fn(loop.state, key)
  difference = params_difference(
      loop.compared(loop_state), vmapped.compared(vmapped_state),
      vmapped.compared(vmapped.state),
  )

  loop_clients = case.cohort
  if loop_max_clients is not None and loop_max_clients < case.cohort:
    loop_clients = loop_max_clients
    # The weighted mean compiles again for the shorter list of updates.
    loop_state = loop.round_fn(loop_state, key, max_clients=loop_clients)
  return _Sides(
      case, population, params, vmapped, loop, time_floor, vmapped_state,
      loop_state,
      compile_s, loop_compile_s, xla_bytes, loop_clients, difference,
  )


def run_workload(cases: list[Case], *, repeats: int,
                 loop_max_clients=None) -> list[dict]:
  """Compile, check and time the cases of one workload; return their results.

  The timed rounds cycle through the cases, vmapped round, loop round and
  `FLOOR_CALLS` floor calls for each, so a change in machine load hits
  every case and side alike. With
  `loop_max_clients` below a cohort, the timed loop rounds train only that
  many cohort members and their time is scaled to the cohort.
  """
  import jax

  from fedjax_med.report import machine

  base_key = jax.random.key(SEED + 2)
  prepared = [_prepare(case, base_key, loop_max_clients=loop_max_clients)
              for case in cases]
  vmapped_states = [sides.vmapped_state for sides in prepared]
  loop_states = [sides.loop_state for sides in prepared]
  vmapped_times = [[] for _ in prepared]
  loop_times = [[] for _ in prepared]
  floor_times = [[] for _ in prepared]
  for index in range(1, repeats + 1):
    key = jax.random.fold_in(base_key, index)
    for position, sides in enumerate(prepared):
      vmapped_states[position], seconds = _timed(
          sides.vmapped.round_fn, vmapped_states[position], key)
      vmapped_times[position].append(seconds)
      subset = None
      if sides.loop_clients < sides.case.cohort:
        subset = sides.loop_clients
      loop_states[position], seconds = _timed(
          sides.loop.round_fn, loop_states[position], key, max_clients=subset)
      loop_times[position].append(seconds)
      floor_times[position] += [sides.time_floor()
                                for _ in range(FLOOR_CALLS)]

  results = []
  for position, sides in enumerate(prepared):
    floor_s = statistics.median(floor_times[position])
    finite = all(
        bool(np.all(np.isfinite(np.asarray(leaf))))
        for leaf in jax.tree.leaves(
            sides.vmapped.compared(vmapped_states[position]))
    )
    results.append(_result(sides, vmapped_times[position],
                           loop_times[position], floor_s, finite,
                           machine.peak_rss_mb()))
  return results


def _result(sides: _Sides, vmapped_times, loop_times, floor_s, finite,
            peak_rss_mb) -> dict:
  import jax

  case = sides.case
  seconds = statistics.median(vmapped_times)
  loop_seconds = (statistics.median(loop_times) * case.cohort
                  / sides.loop_clients)
  trainable = sides.params.get('params', sides.params)
  examples_bytes = sum(
      leaf.nbytes for leaf in jax.tree.leaves(sides.population.examples))
  difference = sides.difference
  return {
      **case._asdict(),
      'local_steps': case.local_steps,
      'parameters': sum(int(np.size(leaf))
                        for leaf in jax.tree.leaves(trainable)),
      'compile_s': sides.compile_s,
      'seconds_per_round': seconds,
      'round_times': vmapped_times,
      'rounds_timed': len(vmapped_times),
      'client_updates_per_s': case.cohort / seconds,
      'xla_mb': None if sides.xla_bytes is None else sides.xla_bytes / 2**20,
      'data_mb': examples_bytes / 2**20,
      'peak_rss_mb': peak_rss_mb,
      'loop_compile_s': sides.loop_compile_s,
      'loop_seconds_per_round': loop_seconds,
      'loop_round_times': loop_times,
      'loop_clients_timed': sides.loop_clients,
      'loop_client_updates_per_s': case.cohort / loop_seconds,
      'loop_ratio': loop_seconds / seconds,
      'floor_s': floor_s,
      'vmapped_x_floor': seconds / case.cohort / floor_s,
      'loop_x_floor': loop_seconds / case.cohort / floor_s,
      'params_relative_difference': difference.relative,
      'max_params_difference': difference.max_abs,
      'max_params_change': difference.change_max_abs,
      'params_match': difference.relative <= PARAMS_TOLERANCE,
      'params_finite': finite,
  }


# ---------------------------------------------------------------------------
# pfl-research, run in its own interpreter.


def _pfl_network(torch, step_counter: list):
  """Build PflCNN as a torch module with the `loss` and `metrics` pfl calls.

  `step_counter[0]` counts calls of `loss`, one per local step.
  """
  from pfl.metrics import Weighted

  height, width, channels = CIFAR_SHAPE
  pooled = (height - 4) // 2

  class Network(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.conv_0 = torch.nn.Conv2d(channels, 32, 3)
      self.conv_1 = torch.nn.Conv2d(32, 64, 3)
      self.hidden = torch.nn.Linear(pooled * pooled * 64, 128)
      self.logits = torch.nn.Linear(128, NUM_CLASSES)
      for layer in (self.conv_0, self.conv_1, self.hidden, self.logits):
        torch.nn.init.xavier_uniform_(layer.weight)

    def forward(self, x):
      # Images arrive as [batch, height, width, channels], as in pfl's
      # benchmark, whose first layer transposes them the same way.
      x = x.permute(0, 3, 1, 2)
      x = torch.relu(self.conv_0(x))
      x = torch.nn.functional.max_pool2d(torch.relu(self.conv_1(x)), 2)
      x = torch.relu(self.hidden(torch.flatten(x, 1)))
      return self.logits(x)

    def loss(self, x, y, eval=False):
      del eval
      step_counter[0] += 1
      return torch.nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=True):
      del eval
      total = torch.nn.functional.cross_entropy(self(x), y, reduction='sum')
      return {'loss': Weighted(total.item(), len(y))}

  return Network()


def run_pfl(clients: int, cohort: int, rounds: int, threads: int) -> dict:
  """Run pfl on the pfl_cifar10 workload in this process and time it."""
  import torch
  from pfl.aggregate.simulate import SimulatedBackend
  from pfl.aggregate.weighting import WeightByUser
  from pfl.algorithm import FederatedAveraging
  from pfl.algorithm import NNAlgorithmParams
  from pfl.callback.base import TrainingProcessCallback
  from pfl.data.federated_dataset import FederatedDataset
  from pfl.data.sampling import get_user_sampler
  from pfl.hyperparam import NNEvalHyperParams
  from pfl.hyperparam import NNTrainHyperParams
  from pfl.model.pytorch import PyTorchModel

  torch.manual_seed(SEED)
  np.random.seed(SEED)
  torch.set_num_threads(threads)
  generator = torch.Generator().manual_seed(SEED)
  x = torch.rand((clients, CIFAR_EXAMPLES, *CIFAR_SHAPE), generator=generator)
  y = torch.randint(0, NUM_CLASSES, (clients, CIFAR_EXAMPLES),
                    generator=generator)
  # As in pfl's cifar10_iid: a dict of user id to that user's rows.
  users = {user: [x[user], y[user]] for user in range(clients)}

  def federated():
    return FederatedDataset.from_slices(
        users, get_user_sampler('random', list(range(clients))))

  step_counter = [0]
  network = _pfl_network(torch, step_counter)
  model = PyTorchModel(
      model=network, local_optimizer_create=torch.optim.SGD,
      central_optimizer=torch.optim.SGD(network.parameters(),
                                        lr=SERVER_LEARNING_RATE),
  )
  stamps = []

  class Stamp(TrainingProcessCallback):

    def on_train_begin(self, *, model):
      stamps.append(time.perf_counter())
      return super().on_train_begin(model=model)

    def after_central_iteration(self, aggregate_metrics, model, *,
                                central_iteration):
      stamps.append(time.perf_counter())
      return super().after_central_iteration(
          aggregate_metrics, model, central_iteration=central_iteration)

  backend = SimulatedBackend(
      training_data=federated(), val_data=federated(),
      postprocessors=[WeightByUser()],
  )
  FederatedAveraging().run(
      algorithm_params=NNAlgorithmParams(
          central_num_iterations=rounds + 1, evaluation_frequency=10**9,
          train_cohort_size=cohort, val_cohort_size=0,
      ),
      backend=backend, model=model,
      model_train_params=NNTrainHyperParams(
          local_num_epochs=1, local_learning_rate=CIFAR_LOCAL_LEARNING_RATE,
          local_batch_size=CIFAR_BATCH,
      ),
      model_eval_params=NNEvalHyperParams(local_batch_size=None),
      callbacks=[Stamp()],
  )
  times = list(np.diff(stamps))
  finite = all(bool(torch.all(torch.isfinite(p))) for p in network.parameters())
  threads = torch.get_num_threads()
  return {
      'version': _version('pfl'),
      'backend': f'PyTorch {torch.__version__}, {threads} intra-op '
                 f"thread{'' if threads == 1 else 's'}",
      'first_round_s': times[0],
      'round_times': times[1:],
      'seconds_per_round': statistics.median(times[1:]),
      'rounds_timed': len(times) - 1,
      'local_steps_per_round': step_counter[0] / (rounds + 1),
      'parameters': sum(p.numel() for p in network.parameters()),
      'params_finite': finite,
      'peak_rss_mb': _own_peak_rss_mb(),
  }


def _own_peak_rss_mb() -> float:
  """Return this process's peak resident memory in MB since its exec.

  Linux keeps `ru_maxrss` across exec, so a child started from the JAX
  process would report the parent's peak. VmHWM in /proc/self/status
  belongs to the new image alone.
  """
  try:
    with open('/proc/self/status', encoding='ascii') as status:
      for line in status:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_pfl(python: str, clients: int, cohort: int, *, rounds: int,
                threads: int, timeout_s: float) -> dict:
  """Run `run_pfl` under the interpreter `python` and return its result.

  A run that cannot start, fails or times out returns a result with an
  `error` message in place of the times.
  """
  with tempfile.TemporaryDirectory(prefix='cnn-round-pfl-') as directory:
    output = pathlib.Path(directory) / 'pfl.json'
    command = [
        python, str(pathlib.Path(__file__).resolve()), '--pfl-worker',
        '--cifar-clients', str(clients), '--cifar-cohort', str(cohort),
        '--repeats', str(rounds), '--torch-threads', str(threads),
        '--output', str(output),
    ]
    try:
      # A session of its own, so that a timeout also ends its children.
      child = subprocess.Popen(
          command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
          text=True, start_new_session=True,
      )
    except OSError as error:
      return {'error': f'failed to start {python}: {error}'}
    try:
      _, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(child.pid, signal.SIGKILL)
      child.communicate()
      return {'error': f'timed out after {timeout_s:g} s'}
    if child.returncode != 0 or not output.exists():
      lines = stderr.strip().splitlines()
      last_line = lines[-1] if lines else 'no output on stderr'
      return {'error': f'exit code {child.returncode}: {last_line}'}
    return json.loads(output.read_text())


# ---------------------------------------------------------------------------
# The markdown section.


def _seconds(value: float) -> str:
  return f'{value:.3g}' if value >= 1e-3 else f'{value:.2e}'


def _ratio(value: float) -> str:
  return f'{value:,.1f}' if value >= 10 else f'{value:.2g}'


def _rate(value: float) -> str:
  return f'{value:,.0f}' if value >= 100 else f'{value:.3g}'


def _case_label(result: dict) -> str:
  return (f"| {result['workload']} | {result['variant']} |"
          f" {result['clients']:,} |")


def _time_row(result: dict) -> str:
  # '~' marks a loop time scaled from a subset of the cohort.
  scaled = '~' if result['loop_clients_timed'] < result['cohort'] else ''
  return (
      _case_label(result)
      + f" {result['cohort']:,} | {result['local_steps']} x {result['batch']} |"
      f" {result['parameters']:,} | {result['compile_s']:.2f} |"
      f" {_seconds(result['seconds_per_round'])} | {result['rounds_timed']} |"
      f" {_rate(result['client_updates_per_s'])} |"
      f" {result['loop_compile_s']:.2f} |"
      f" {scaled}{_seconds(result['loop_seconds_per_round'])} |"
      f" {scaled}{_rate(result['loop_client_updates_per_s'])} |"
      f" {scaled}{result['loop_ratio']:.2f} |"
      f" {result['params_relative_difference']:.1e} |"
  )


def _memory_row(result: dict) -> str:
  scaled = '~' if result['loop_clients_timed'] < result['cohort'] else ''
  xla = result['xla_mb']
  return (
      _case_label(result)
      + f" {'-' if xla is None else f'{xla:,.0f}'} |"
      f" {result['data_mb']:,.1f} | {result['peak_rss_mb']:,.0f} |"
      f" {_seconds(result['floor_s'])} | {result['vmapped_x_floor']:.1f} |"
      f" {scaled}{result['loop_x_floor']:.1f} |"
  )


def _fedbn_sentences(results: list[dict]) -> list[str]:
  by_case = {(r['workload'], r['variant'], r['clients']): r for r in results}
  sentences = []
  for (workload, variant, clients), result in by_case.items():
    if variant != 'fedbn':
      continue
    plain = by_case.get((workload, 'fedavg', clients))
    if plain is None:
      continue
    ratio = result['seconds_per_round'] / plain['seconds_per_round']
    sentences.append(
        f'At {clients:,} clients a {workload} FedBN round takes {ratio:.2f}x '
        'the FedAvg round, which averages every leaf.'
    )
  return sentences


def _pfl_lines(pfl: dict, cifar: dict | None) -> list[str]:
  lines = [
      'pfl-research on the pfl_cifar10 workload, in its own process '
      '(one warm-up round, then the median of the timed rounds):',
      '',
      '| peer | version | backend | clients | cohort | s per round | '
      'rounds timed | x fedjax_med vmapped | notes |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  if cifar is None:
    clients = cohort = '-'
  else:
    clients, cohort = f"{cifar['clients']:,}", f"{cifar['cohort']:,}"
  if 'skipped' in pfl or 'error' in pfl:
    reason = pfl.get('skipped') or f"failed: {pfl['error']}"
    lines.append(f'| pfl | - | - | {clients} | {cohort} | not measured | - '
                 f'| - | {reason} |')
    return lines
  ratio = '-'
  if cifar is not None:
    ratio = _ratio(pfl['seconds_per_round'] / cifar['seconds_per_round'])
  notes = [
      f"first round {pfl['first_round_s']:.3g} s",
      f"{pfl['local_steps_per_round']:g} local steps per round",
      f"{pfl['parameters']:,} parameters",
      f"process peak RSS {pfl['peak_rss_mb']:,.0f} MB",
      "'random' user sampler, which draws each cohort member independently",
  ]
  lines.append(
      f"| pfl | {pfl['version']} | {pfl['backend']} | {clients} | {cohort} |"
      f" {_seconds(pfl['seconds_per_round'])} | {pfl['rounds_timed']} |"
      f" {ratio} | {'; '.join(notes)} |"
  )
  if cifar is not None:
    lines += [
        '',
        f"fedjax_med's vmapped round takes "
        f"{_ratio(cifar['seconds_per_round'] / pfl['seconds_per_round'])}x "
        "pfl's round time on this workload, and the loop "
        f"{_ratio(cifar['loop_seconds_per_round'] / pfl['seconds_per_round'])}"
        'x.',
    ]
  return lines


def _settings(unroll: bool = False) -> str:
  loop_form = (
      'Both sides unroll the local steps into straight-line code (--unroll). '
      if unroll else
      'Both sides run the local steps in a lax.scan (without --unroll). ')
  return loop_form + (
      'Synthetic uniform images and random labels, 10 classes. '
      'lenet_digits and resnet_digits: 8x8x1 images, 18 rows per client, '
      'every client in the cohort, one epoch of local SGD (3 steps of '
      f'batch 8) at {DIGITS_LOCAL_LEARNING_RATE}, FedAvg, server SGD at '
      f'{SERVER_LEARNING_RATE}. ResNet has widths {RESNET_WIDTHS} and batch '
      'normalization, and FedBN keeps the normalization leaves on the '
      'clients. pfl_cifar10 has the shape of pfl-research\'s CIFAR-10 '
      'benchmark (apple/pfl-research, benchmarks/image_classification/'
      'configs/baseline.yaml): PflCNN on 32x32x3 images, 50 rows per '
      'client, a uniform cohort per round, one epoch of local SGD (5 steps '
      f'of batch 10) at {CIFAR_LOCAL_LEARNING_RATE}, uniform mean, server '
      f'SGD at {SERVER_LEARNING_RATE}. The loop makes one jitted call of the '
      'same local update per client, then one jitted weighted mean. Compile '
      's is the ahead-of-time compile of the vmapped round, and loop '
      'compile s that of the loop\'s per-client function. S per round is '
      'the median of the timed rounds, which cycle through the cases of a '
      'workload and alternate between the two sides, after one warm-up '
      'round of each. Loop / vmapped is the '
      'loop\'s s per round over the vmapped round\'s. Params diff is '
      '||loop - vmapped|| / ||vmapped - start|| (L2 over all leaves, '
      'FedBN\'s client-local leaves included) after the warm-up round, '
      'which both sides start from the same state and key.'
  )


def _memory_settings() -> str:
  return (
      'XLA out+temp MB is what the compiled vmapped round allocates besides '
      'its inputs, and data MB is the population. Peak RSS MB is the '
      'process peak after the case\'s workload, so it includes the cases '
      'before it. '
      'The client floor is one client\'s local SGD steps on the same batch '
      'shapes, unrolled in one jitted function without the scan, shuffle, '
      'padding masks and batch-statistics refresh of local training, '
      f'timed {FLOOR_CALLS} times after each pair of timed rounds of its '
      'case. X floor divides a side\'s seconds per client (s per round '
      'over the cohort) by the median of those calls.'
  )


def _check_sentence(results: list[dict]) -> str:
  checks = []
  for result in results:
    verdict = 'within' if result['params_match'] else 'outside'
    checks.append(
        f"{result['workload']} {result['variant']} at "
        f"{result['clients']:,} clients: "
        f"relative L2 difference "
        f"{result['params_relative_difference']:.1e}, {verdict} the "
        f'tolerance of {PARAMS_TOLERANCE:g}; largest entry difference '
        f"{result['max_params_difference']:.1e}, largest entry change "
        f"{result['max_params_change']:.1e}."
    )
  return ('Loop against vmapped params after the warm-up round: '
          + ' '.join(checks))


def markdown(results: list[dict], pfl: dict, command: str, *,
             load_before, load_after, unroll: bool = False) -> str:
  """Return the dated results section."""
  from fedjax_med.report import machine

  lines = [
      machine.section_heading('CNN round throughput'),
      '',
      f'`{command}` on {machine.hardware_line()}. {_settings(unroll)}'
      f'{machine.load_sentence(load_before, load_after)}',
      '',
      '| workload | variant | clients | cohort | local steps x batch | '
      'parameters | compile s | s per round | rounds timed | '
      'client updates/s | loop compile s | loop s per round | '
      'loop client updates/s | loop / vmapped | params diff |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
      *[_time_row(result) for result in results],
  ]
  for result in results:
    if result['loop_clients_timed'] < result['cohort']:
      lines += [
          '',
          f"~ The {result['workload']} loop timed "
          f"{result['loop_clients_timed']:,} of the {result['cohort']:,} "
          'cohort members per round, scaled to the whole cohort: an '
          'estimate.',
      ]
  lines += ['', _check_sentence(results)]
  fedbn = _fedbn_sentences(results)
  if fedbn:
    lines += ['', ' '.join(fedbn)]
  lines += [
      '',
      f'Memory and the client floor. {_memory_settings()}',
      '',
      '| workload | variant | clients | XLA out+temp MB | data MB | '
      'peak RSS MB | client floor s | vmapped x floor | loop x floor |',
      '|---|---|---|---|---|---|---|---|---|',
      *[_memory_row(result) for result in results],
  ]
  cifar = next((r for r in results if r['workload'] == 'pfl_cifar10'), None)
  if cifar is not None:
    total_hours = (CIFAR_CENTRAL_ITERATIONS * cifar['seconds_per_round']
                   / 3600)
    lines += [
        '',
        f'At {_seconds(cifar["seconds_per_round"])} s per round, the '
        f'{CIFAR_CENTRAL_ITERATIONS:,} central iterations of pfl\'s '
        f'configuration would take about {total_hours:,.1f} hours of '
        'vmapped rounds on this machine, an estimate without evaluation.',
    ]
  lines += ['', *_pfl_lines(pfl, cifar)]
  return '\n'.join(lines) + '\n\n'


# ---------------------------------------------------------------------------
# Command line.


def _parse_python(value: str) -> tuple[str, str]:
  peer, separator, path = value.partition('=')
  if not separator or peer != 'pfl' or not path:
    raise argparse.ArgumentTypeError(
        f'expected pfl=PATH, the interpreter of a venv with pfl; got '
        f'{value!r}.'
    )
  return peer, path


def _parse_loop_max_clients(value: str) -> tuple[str, int]:
  workload, separator, count = value.partition('=')
  if not separator or workload not in WORKLOADS or not count.isdigit() or (
      int(count) < 1):
    raise argparse.ArgumentTypeError(
        f'expected WORKLOAD=N with WORKLOAD one of {", ".join(WORKLOADS)} and '
        f'N at least 1; got {value!r}.'
    )
  return workload, int(count)


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--digits-clients', type=int, nargs='*', default=[100, 1000],
      help='population sizes of lenet_digits, all in the cohort; none skips '
      'it (default: 100 1000)',
  )
  parser.add_argument(
      '--resnet-clients', type=int, nargs='*', default=[100],
      help='population sizes of resnet_digits, with and without FedBN; none '
      'skips it (default: 100)',
  )
  parser.add_argument(
      '--cifar-clients', type=int, default=CIFAR_CLIENTS,
      help='population size of pfl_cifar10; 0 skips it (default: '
      f'{CIFAR_CLIENTS})',
  )
  parser.add_argument(
      '--cifar-cohort', type=int, default=CIFAR_COHORT,
      help=f'clients sampled per pfl_cifar10 round (default: {CIFAR_COHORT})',
  )

  parser.add_argument(
      '--repeats', type=int, default=5,
      help='timed rounds per side after one warm-up round, for the digits '
      'workloads and for pfl (default: 5)',
  )
  parser.add_argument(
      '--cifar-repeats', type=int, default=1,
      help='timed rounds per JAX side of pfl_cifar10 after one warm-up round '
      '(default: 1)',
  )
  parser.add_argument(
      '--loop-max-clients', type=_parse_loop_max_clients, action='append',
      default=[], metavar='WORKLOAD=N',
      help='cohort members that each timed loop round of WORKLOAD trains, '
      'its time then scaled to the whole cohort; repeatable (default: the '
      'whole cohort)',
  )

  parser.add_argument(
      '--python', type=_parse_python, action='append', default=[],
      metavar='pfl=PATH',
      help='Python interpreter of a venv with pfl-research, which then runs '
      'on the pfl_cifar10 workload (default: pfl is not measured)',
  )
  parser.add_argument(
      '--torch-threads', type=int, default=1,
      help='PyTorch intra-op threads of the pfl process (default: 1)',
  )
  parser.add_argument(
      '--pfl-timeout', type=float, default=900.0,
      help='seconds after which the pfl process is killed (default: 900)',
  )

  parser.add_argument(
      '--unroll', action='store_true',
      help='unroll the local steps instead of scanning them, as '
      '`client.unroll_loops` does for image data on CPU',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to',
  )

  # Internal: run pfl in this process and write its JSON result.
  parser.add_argument('--pfl-worker', action='store_true',
                      help=argparse.SUPPRESS)
  parser.add_argument('--output', help=argparse.SUPPRESS)
  return parser


def _parse_args(argv):
  parser = _build_parser()
  args = parser.parse_args(argv)
  sizes = [*args.digits_clients, *args.resnet_clients]
  if sizes and min(sizes) < 1:
    parser.error(f'client counts must each be at least 1, got {min(sizes)}.')
  if args.cifar_clients < 0:
    parser.error(
        f'--cifar-clients must be 0 or more, got {args.cifar_clients}.')
  if args.cifar_clients and not 1 <= args.cifar_cohort <= args.cifar_clients:
    parser.error(
        f'--cifar-cohort must be between 1 and --cifar-clients '
        f'({args.cifar_clients}), got {args.cifar_cohort}.'
    )
  if args.repeats < 1:
    parser.error(f'--repeats must be at least 1, got {args.repeats}.')
  if args.cifar_repeats < 1:
    parser.error(
        f'--cifar-repeats must be at least 1, got {args.cifar_repeats}.')
  if args.torch_threads < 1:
    parser.error(
        f'--torch-threads must be at least 1, got {args.torch_threads}.')
  if args.pfl_worker and args.output is None:
    parser.error('--pfl-worker needs --output.')
  if not args.pfl_worker:
    _check_parent_args(parser, args)
  args.python = dict(args.python)
  args.loop_max_clients = dict(args.loop_max_clients)
  return args


def _check_parent_args(parser, args) -> None:
  """Check the flags that only the parent process reads.

  The pfl worker runs under an interpreter without fedjax_med, so
  `script_help` is imported here and not at the top of the file.
  """
  from fedjax_med.report import script_help

  if not (args.digits_clients or args.resnet_clients or args.cifar_clients):
    parser.error(
        'no workload to run: give population sizes with --digits-clients '
        'or --resnet-clients, or a --cifar-clients above 0.'
    )
  script_help.check_finite_positive(parser, '--pfl-timeout', args.pfl_timeout)
  script_help.check_out_path(parser, args.results, '--results')


def _measure_pfl_peer(args) -> dict:
  python = args.python.get('pfl')
  if not args.cifar_clients:
    return {'skipped': 'pfl_cifar10 was not run (--cifar-clients 0)'}
  if python is None:
    return {'skipped': 'not measured: no --python pfl=PATH was given'}
  _progress(f'pfl_cifar10, pfl ({python}): running')
  result = measure_pfl(
      python, args.cifar_clients, args.cifar_cohort, rounds=args.repeats,
      threads=args.torch_threads, timeout_s=args.pfl_timeout,
  )
  if 'error' in result:
    _progress(f"  failed: {result['error']}")
  else:
    _progress(f"  {result['seconds_per_round']:.4g} s per round")
  return result


def main(argv=None) -> dict:
  """Run the benchmark from command-line arguments and return its results.

  Returns `{'cases': [...], 'pfl': {...}}`, one dict per case and the pfl
  result, which has `skipped` or `error` when pfl was not measured.
  """
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  if args.pfl_worker:
    result = run_pfl(args.cifar_clients, args.cifar_cohort, args.repeats,
                     args.torch_threads)
    pathlib.Path(args.output).write_text(json.dumps(result))
    return {'cases': [], 'pfl': result}

  from fedjax_med.report import machine

  cases = build_cases(args.digits_clients, args.resnet_clients,
                      args.cifar_clients, args.cifar_cohort,
                      unroll=args.unroll)
  load_before = machine.load_average()
  results = []
  for workload in WORKLOADS:
    workload_cases = [case for case in cases if case.workload == workload]
    if not workload_cases:
      continue
    _progress(f'{workload}, {len(workload_cases)} case(s): running')
    repeats = args.repeats
    if workload == 'pfl_cifar10':
      repeats = args.cifar_repeats
    workload_results = run_workload(
        workload_cases, repeats=repeats,
        loop_max_clients=args.loop_max_clients.get(workload),
    )
    for result in workload_results:
      _progress(
          f"  {result['variant']}, {result['clients']:,} clients: vmapped "
          f"{result['seconds_per_round']:.4g} s per round, loop "
          f"{result['loop_seconds_per_round']:.4g} s, params diff "
          f"{result['params_relative_difference']:.1e}"
      )
    results.extend(workload_results)
  pfl = _measure_pfl_peer(args)
  load_after = machine.load_average()
  command = shlex.join(['python', 'benchmarks/cnn_round.py', *argv])
  page = markdown(results, pfl, command, load_before=load_before,
                  load_after=load_after, unroll=args.unroll)
  print(page, end='')
  machine.append_section(args.results, page)
  return {'cases': results, 'pfl': pfl}


if __name__ == '__main__':
  main()
