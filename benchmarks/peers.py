"""Round time of fedjax_med against peer federated-learning simulators.

Every peer runs the workload of the mean_dp variant in
`benchmarks/scaling.py`. Each client has 64 rows of 32 standard normal
float32 features, labeled 1 where a fixed random linear function of the
features is positive, drawn by a numpy Generator with seed 0 exactly as
scaling.py draws them. The model is a 32-64-1 ReLU MLP with one log-odds
logit and binary cross-entropy, and all peers start from the same parameters,
which fedjax_med's flax `MLP` initializes with key 1. Every client is in the
cohort and takes 5 local SGD steps of batch 16 at learning rate 0.1. Each
epoch visits a fresh permutation of the client's rows, so the fifth step is
the first batch of a second permutation. The server clips each update to L2
norm 1.0, adds Gaussian noise of std 1.0 x 1.0 to the sum, divides by the
number of clients and applies the result with SGD at 1.0.

Peers:

* fedjax_med: `fedjax_med.simulation.round.build_round`, one jitted round
  that vmaps the clients, as scaling.py builds it.
* loop: a Python loop over the clients. Each iteration is one jitted call of
  fedjax_med's own single-client update (`build_local_update`), followed by
  clipping and a running sum, with the same client keys as the vmapped round.
* fedjax: Google's FedJAX, its `for_each_client` training from
  `fedjax.algorithms.fed_avg`, with clipping and noise added around it
  because FedJAX has no DP aggregator. FedJAX 0.0.17 calls `jax.tree_map`,
  which JAX 0.10.2 no longer has, so it runs only from an older environment
  passed with `--python fedjax=PATH`.
* flower: Flower's simulation engine on Ray, limited to 2 CPUs (two actors of
  one CPU each). A `ClientApp` trains in NumPy with a hand-written gradient
  of the same MLP. The server uses `FedAvg` wrapped in Flower's
  `DifferentialPrivacyServerSideFixedClipping`. Flower's logger is set to
  WARNING, because at INFO it writes a line for every reply.
* pfl: Apple's pfl-research with its PyTorch backend: `FederatedAveraging`
  on a `SimulatedBackend` with a `CentrallyAppliedPrivacyMechanism` around a
  `GaussianMechanism`. pfl stops a client after one pass over its dataset,
  so each client's dataset is the 80 rows of its 5 batches, drawn with the
  same two permutations as above. PyTorch runs with one thread.

Each (peer, clients) case runs in its own process with a timeout, so a peer
that is not installed, crashes or hangs becomes a row of the table. Each
case runs one warm-up round and then `--rounds` timed rounds. The warm-up
round is excluded, because it contains JAX compilation or Flower's first
dispatch to freshly started Ray actors. Process start-up, imports, Ray's
start and the creation of its actors happen before or during that round, so
they are excluded too. The JAX peers time each round to `block_until_ready`.
Flower's and pfl's rounds are the intervals between their per-round server
callbacks. After the last round, each peer's model is scored on all rows of
the population, so the table shows that every peer trained.

Environments: pfl 0.6.0 requires dp-accounting<0.6, which conflicts with
fedjax_med, so pfl needs a venv of its own. These commands install the
three environments (tested with Python 3.11):

  python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -e '.[peers,test]'
  python3 -m venv /tmp/pfl && /tmp/pfl/bin/pip install 'pfl[pytorch]==0.6.0'
  python3 -m venv /tmp/fedjax && /tmp/fedjax/bin/pip install fedjax==0.0.17 \\
      'jax[cpu]==0.4.13' jaxlib==0.4.13 dm-haiku==0.0.10 optax==0.1.7 \\
      chex==0.1.82 'numpy<2' 'scipy<1.13' 'ml_dtypes<0.3'

A peer process imports only the standard library and numpy from this file,
so it can run under any of these interpreters.

Usage:
  python benchmarks/peers.py [--clients 100 1000] [--rounds 5]
      [--peers fedjax_med loop fedjax flower pfl] [--timeout 900]
      [--python pfl=/tmp/pfl/bin/python] [--python fedjax=...]
      [--results benchmarks/RESULTS.md]
"""

import argparse
import importlib.metadata
import json
import os
import pathlib
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import numpy as np

EXAMPLES_PER_CLIENT = 64
FEATURES = 32
HIDDEN = 64
LOCAL_STEPS = 5
BATCH_SIZE = 16
CLIENT_LEARNING_RATE = 0.1
SERVER_LEARNING_RATE = 1.0
CLIP_NORM = 1.0
NOISE_MULTIPLIER = 1.0
SEED = 0
INIT_SEED = 1
ROUND_SEED = 2

# Parameter arrays in the order every peer exchanges them: kernels are
# [inputs, outputs] as in flax.
PARAM_NAMES = ('w1', 'b1', 'w2', 'b2')
PARAM_SHAPES = ((FEATURES, HIDDEN), (HIDDEN,), (HIDDEN, 1), (1,))
NUM_PARAMETERS = sum(int(np.prod(shape)) for shape in PARAM_SHAPES)

BASELINE = 'fedjax_med'
PEERS = ('fedjax_med', 'loop', 'fedjax', 'flower', 'pfl')
PEER_DESCRIPTIONS = {
    'fedjax_med': 'fedjax_med round, clients vmapped',
    'loop': 'Python loop, one jitted fedjax_med client update per client',
    'fedjax': 'FedJAX for_each_client',
    'flower': 'Flower simulation engine',
    'pfl': 'pfl-research SimulatedBackend',
}
# The least round time of each peer, as a multiple of fedjax_med's, that the
# project aims for.
TARGET_RATIOS = {'loop': 20.0, 'flower': 500.0, 'pfl': 1.0}


class Workload(NamedTuple):
  """The population and starting parameters that every peer uses.

  Attributes:
    x: features, `[clients, examples, features]` float32.
    y: labels 0 or 1, `[clients, examples]` int32.
    params: the starting arrays in `PARAM_NAMES` order.
  """

  x: np.ndarray
  y: np.ndarray
  params: tuple[np.ndarray, ...]


class PeerUnavailable(Exception):
  """A peer's package is missing or cannot run in this environment."""


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The workload, in numpy so that every peer environment can read it.


def make_population(num_clients: int) -> tuple[np.ndarray, np.ndarray]:
  """Return `x [clients, examples, features]` and `y [clients, examples]`.

  The draws equal those of `make_population` in benchmarks/scaling.py.
  """
  rng = np.random.default_rng(SEED)
  rule = rng.standard_normal(FEATURES).astype(np.float32)
  x = rng.standard_normal(
      (num_clients, EXAMPLES_PER_CLIENT, FEATURES), dtype=np.float32
  )
  y = (x @ rule > 0).astype(np.int32)
  return x, y


def initial_params() -> tuple[np.ndarray, ...]:
  """Return fedjax_med's MLP initialization (key 1) as numpy arrays."""
  import jax
  import jax.numpy as jnp

  model = _fedjax_med_model()
  params = model.init(jax.random.key(INIT_SEED), jnp.zeros((1, FEATURES)))
  return _arrays_from_flax(params)


def write_workload(directory: pathlib.Path, num_clients: int) -> None:
  """Write the population as `.npy` files a peer can memory-map."""
  x, y = make_population(num_clients)
  np.save(directory / 'x.npy', x)
  np.save(directory / 'y.npy', y)
  np.savez(directory / 'params.npz', **dict(zip(PARAM_NAMES, initial_params())))


def load_workload(directory: pathlib.Path) -> Workload:
  params = np.load(directory / 'params.npz')
  return Workload(
      x=np.load(directory / 'x.npy'), y=np.load(directory / 'y.npy'),
      params=tuple(params[name] for name in PARAM_NAMES),
  )


def step_rows(rng: np.random.Generator) -> np.ndarray:
  """Return the `[steps * batch]` rows a client visits, in step order.

  Each epoch is a fresh permutation of the client's rows, as in PyTorch's
  shuffled `DataLoader` and in fedjax_med. 64 rows split into whole batches
  of 16, so no batch spans two epochs.
  """
  needed = LOCAL_STEPS * BATCH_SIZE
  epochs = -(-needed // EXAMPLES_PER_CLIENT)
  order = [rng.permutation(EXAMPLES_PER_CLIENT) for _ in range(epochs)]
  return np.concatenate(order)[:needed]


def _log_sigmoid_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Return the binary cross-entropy of each logit against its 0/1 label."""
  return np.logaddexp(0.0, logits) - labels * logits


def forward(params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Return the MLP's `[rows]` logits and `[rows, hidden]` pre-activations."""
  w1, b1, w2, b2 = params
  pre_activation = x @ w1 + b1
  logits = np.maximum(pre_activation, 0.0) @ w2[:, 0] + b2[0]
  return logits, pre_activation


def numpy_sgd_step(params, x: np.ndarray, y: np.ndarray):
  """Take one SGD step on a batch and return the new params and the loss.

  The gradient of the mean binary cross-entropy is written out by hand.
  """
  w1, b1, w2, b2 = params
  logits, pre_activation = forward(params, x)
  hidden = np.maximum(pre_activation, 0.0)
  loss = float(np.mean(_log_sigmoid_loss(logits, y)))

  logit_grad = (np.exp(-np.logaddexp(0.0, -logits)) - y) / x.shape[0]
  grad_w2 = hidden.T @ logit_grad
  grad_b2 = np.sum(logit_grad, keepdims=True)
  hidden_grad = np.outer(logit_grad, w2[:, 0]) * (pre_activation > 0)
  grads = (x.T @ hidden_grad, hidden_grad.sum(axis=0), grad_w2[:, None],
           grad_b2)
  new_params = tuple(
      (param - CLIENT_LEARNING_RATE * grad).astype(np.float32)
      for param, grad in zip(params, grads)
  )
  return new_params, loss


def numpy_local_training(params, x, y, rng: np.random.Generator):
  """Run a client's local steps and return params, mean loss and steps."""
  rows = step_rows(rng)
  losses = []
  for step in range(LOCAL_STEPS):
    batch = rows[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
    params, loss = numpy_sgd_step(params, x[batch], y[batch])
    losses.append(loss)
  return params, float(np.mean(losses)), len(losses)


def evaluate(params, x: np.ndarray, y: np.ndarray) -> dict:
  """Return the mean loss and accuracy of `params` on every row."""
  rows_x = np.asarray(x, np.float32).reshape(-1, FEATURES)
  rows_y = np.asarray(y, np.float32).reshape(-1)
  logits, _ = forward([np.asarray(p, np.float32) for p in params], rows_x)
  return {
      'final_loss': float(np.mean(_log_sigmoid_loss(logits, rows_y))),
      'final_accuracy': float(np.mean((logits > 0) == (rows_y > 0.5))),
  }


def _final_model(params, workload: Workload) -> dict:
  """Return the final params as lists, with their loss and accuracy."""
  return {
      'final_params': [np.asarray(array).tolist() for array in params],
      **evaluate(params, workload.x, workload.y),
  }


def _median_of(times: list[float]) -> dict:
  return {
      'first_round_s': times[0],
      'round_times': times[1:],
      'seconds_per_round': statistics.median(times[1:]),
      'rounds_timed': len(times) - 1,
  }


def _time_rounds(step: Callable[[int], None], rounds: int) -> list[float]:
  """Return the wall time of a warm-up round and then of `rounds` rounds."""
  times = []
  for index in range(rounds + 1):
    start = time.perf_counter()
    step(index)
    times.append(time.perf_counter() - start)
  return times


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


# ---------------------------------------------------------------------------
# fedjax_med and the per-client loop.


def _fedjax_med_model():
  from fedjax_med.models import tabular

  return tabular.from_flax(tabular.MLP(2, (HIDDEN,)), 2)


def _flax_from_arrays(arrays):
  import jax.numpy as jnp

  w1, b1, w2, b2 = (jnp.asarray(array) for array in arrays)
  return {'params': {
      'Dense_0': {'kernel': w1, 'bias': b1},
      'Dense_1': {'kernel': w2, 'bias': b2},
  }}


def _arrays_from_flax(params) -> tuple[np.ndarray, ...]:
  layers = params['params']
  return tuple(
      np.asarray(layers[layer][name])
      for layer in ('Dense_0', 'Dense_1') for name in ('kernel', 'bias')
  )


def _local_update():
  import optax

  from fedjax_med.client import local_training

  # Every client has EXAMPLES_PER_CLIENT rows, so each epoch's shuffle can be
  # drawn once before the scan, as scaling.py does.
  return local_training.build_local_update(
      _fedjax_med_model(), optax.sgd(CLIENT_LEARNING_RATE),
      num_steps=LOCAL_STEPS, batch_size=BATCH_SIZE,
      min_client_examples=EXAMPLES_PER_CLIENT,
  )


def round_key(index: int):
  """Return the key of round `index`, shared by fedjax_med and the loop."""
  import jax

  return jax.random.fold_in(jax.random.key(ROUND_SEED), index)


class RoundProgram(NamedTuple):
  """A JAX peer's round, as the timing loop and the tests call it.

  Attributes:
    state: the state before round 1.
    round_fn: `round_fn(state, key) -> (state, metrics)`, which blocks
      until the new params are ready. `metrics` contains the round's
      `train_loss`.
    params_of: `params_of(state)` returns the state's flax params.
  """

  state: object
  round_fn: Callable
  params_of: Callable


def build_fedjax_med_round(workload: Workload) -> RoundProgram:
  """Build the vmapped mean_dp round as scaling.py builds it."""
  import jax
  import optax

  from fedjax_med.data import federated
  from fedjax_med.simulation import round as round_lib
  from fedjax_med.simulation import sampling

  num_clients = workload.x.shape[0]
  population = federated.FederatedData(
      {'x': workload.x, 'y': workload.y},
      np.full((num_clients,), EXAMPLES_PER_CLIENT, np.int32),
  )
  privacy = round_lib.PrivacySettings(
      clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER,
      noise_kind='central', denominator=num_clients,
  )
  server_optimizer = optax.sgd(SERVER_LEARNING_RATE)
  round_step = round_lib.build_round(
      population, _local_update(),
      sampling.uniform_sampler(num_clients, num_clients), server_optimizer,
      aggregator='mean', privacy=privacy,
  )

  def round_fn(state, key):
    state, metrics = round_step(state, key)
    return jax.block_until_ready(state), metrics

  state = round_lib.init_server_state(
      _flax_from_arrays(workload.params), server_optimizer, aggregator='mean'
  )
  return RoundProgram(state, round_fn, lambda state: state.params)


def build_loop_round(workload: Workload) -> RoundProgram:
  """Build the per-client Python loop, whose state is the flax params.

  Each client is one call of a jitted function: fedjax_med's local update,
  L2 clipping and a running sum. Client `i` gets the key that the vmapped
  round gives it, `fold_in(clients_key, i)`, and the noise key is the
  round's too, so both produce the same aggregate.
  """
  import jax
  import jax.numpy as jnp

  from fedjax_med.privacy import clipping
  from fedjax_med.privacy import noise
  from fedjax_med.simulation import round as round_lib

  num_clients = workload.x.shape[0]
  local_update = _local_update()
  examples = jax.device_put({'x': workload.x, 'y': workload.y})
  counts = jnp.full((num_clients,), EXAMPLES_PER_CLIENT, jnp.int32)

  @jax.jit
  def add_client(params, total, examples, clients_key, client_id):
    client_examples = jax.tree.map(lambda leaf: leaf[client_id], examples)
    key = jax.random.fold_in(clients_key, client_id)
    result = local_update(params, client_examples, counts[client_id], key)
    clipped = clipping.clip_update(result.delta, CLIP_NORM).update
    return jax.tree.map(jnp.add, total, clipped), result.loss

  @jax.jit
  def finish(params, total, noise_key):
    noised = noise.add_gaussian_noise(
        total, NOISE_MULTIPLIER * CLIP_NORM, key=noise_key
    )
    return jax.tree.map(
        lambda param, summed: param
        + SERVER_LEARNING_RATE * summed / num_clients,
        params, noised,
    )

  def round_fn(params, key):
    # NOTE: these tags are private constants of round.py. The loop uses them
    # to draw the same keys as the vmapped round that it is compared with.
    clients_key = jax.random.fold_in(key, round_lib._CLIENTS_TAG)
    noise_key = jax.random.fold_in(key, round_lib._CENTRAL_NOISE_TAG)
    total = jax.tree.map(jnp.zeros_like, params)
    losses = []
    for client_id in range(num_clients):
      total, loss = add_client(
          params, total, examples, clients_key, np.int32(client_id)
      )
      losses.append(loss)
    params = jax.block_until_ready(finish(params, total, noise_key))
    return params, {'train_loss': jnp.mean(jnp.stack(losses))}

  return RoundProgram(
      _flax_from_arrays(workload.params), round_fn, lambda params: params
  )


def _run_jax_peer(peer: str, workload: Workload, rounds: int) -> dict:
  import jax

  from fedjax_med.report import machine

  if peer == 'fedjax_med':
    program = build_fedjax_med_round(workload)
  else:
    program = build_loop_round(workload)
  state = {'state': program.state}

  def step(index):
    state['state'], state['metrics'] = program.round_fn(
        state['state'], round_key(index)
    )

  times = _time_rounds(step, rounds)
  params = program.params_of(state['state'])
  backend = f'JAX {jax.__version__} on {jax.devices()[0].platform}'
  if peer == 'loop':
    backend += ', jit per client'
  notes = [
      f"last round's local train loss "
      f"{float(state['metrics']['train_loss']):.3f}",
      f'process peak RSS {machine.peak_rss_mb():,.0f} MB',
  ]
  return {
      'version': _version('fedjax_med'),
      'backend': backend,
      'local_steps': LOCAL_STEPS,
      'parameters': sum(leaf.size for leaf in jax.tree.leaves(params)),
      'notes': notes,
      **_median_of(times),
      **_final_model(_arrays_from_flax(params), workload),
  }


# ---------------------------------------------------------------------------
# FedJAX.


def _import_fedjax():
  try:
    import fedjax
    import jax
  except ImportError as error:
    raise PeerUnavailable(
        f'fedjax is not installed ({error}); FedJAX 0.0.17 needs JAX 0.4, '
        'so install it in its own venv and pass --python fedjax=PATH'
    ) from error
  try:
    fedjax.tree_util.tree_zeros_like({'probe': np.zeros(1)})
  except AttributeError as error:
    raise PeerUnavailable(
        f"fedjax {_version('fedjax')} fails under JAX {jax.__version__} "
        f'({error}); install it with JAX 0.4.13 in its own venv and pass '
        '--python fedjax=PATH'
    ) from error
  return fedjax, jax


def _fedjax_model(fedjax, params):
  import jax.numpy as jnp

  def apply(params, batch):
    hidden = jnp.maximum(batch['x'] @ params['w1'] + params['b1'], 0.0)
    return (hidden @ params['w2'] + params['b2'])[:, 0]

  def train_loss(batch, logits):
    labels = batch['y'].astype(jnp.float32)
    return jnp.logaddexp(0.0, logits) - labels * logits

  return fedjax.Model(
      init=lambda key: params, apply_for_train=lambda p, b, key: apply(p, b),
      apply_for_eval=apply, train_loss=train_loss, eval_metrics={},
  )


def _run_fedjax(workload: Workload, rounds: int) -> dict:
  fedjax, jax = _import_fedjax()
  import jax.numpy as jnp
  from fedjax.algorithms import fed_avg

  num_clients = workload.x.shape[0]
  params = {
      name: jnp.asarray(array)
      for name, array in zip(PARAM_NAMES, workload.params)
  }
  model = _fedjax_model(fedjax, params)
  train_for_each_client = fed_avg.create_train_for_each_client(
      fedjax.model_grad(model), fedjax.optimizers.sgd(CLIENT_LEARNING_RATE)
  )
  server_optimizer = fedjax.optimizers.sgd(SERVER_LEARNING_RATE)
  datasets = [
      fedjax.ClientDataset({'x': workload.x[i], 'y': workload.y[i]})
      for i in range(num_clients)
  ]
  # Client keys and round noise from separate roots: PRNGKey(i) made
  # client 2 + index's key the noise key of round `index`.
  client_keys = [jax.random.fold_in(jax.random.PRNGKey(SEED), i)
                 for i in range(num_clients)]

  @jax.jit
  def clip_and_add(total, delta):
    leaves = jax.tree_util.tree_leaves(delta)
    norm = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in leaves))
    scale = jnp.minimum(1.0, CLIP_NORM / jnp.maximum(norm, 1e-30))
    return jax.tree_util.tree_map(lambda t, d: t + scale * d, total, delta)

  @jax.jit
  def add_noise(total, key):
    keys = dict(zip(sorted(total), jax.random.split(key, len(total))))
    return {
        name: (leaf + NOISE_MULTIPLIER * CLIP_NORM
               * jax.random.normal(keys[name], leaf.shape)) / num_clients
        for name, leaf in total.items()
    }

  state = {'params': params, 'opt_state': server_optimizer.init(params)}

  def step(index):
    # FedJAX's client delta is the server params minus the trained ones, so
    # the server optimizer applies it like a gradient.
    batches = [
        (i, datasets[i].shuffle_repeat_batch(
            batch_size=BATCH_SIZE, num_epochs=None, num_steps=LOCAL_STEPS,
            seed=index * num_clients + i), client_keys[i])
        for i in range(num_clients)
    ]
    total = jax.tree_util.tree_map(jnp.zeros_like, state['params'])
    for _, delta in train_for_each_client(state['params'], batches):
      total = clip_and_add(total, delta)
    mean_delta = add_noise(
        total, jax.random.fold_in(jax.random.PRNGKey(ROUND_SEED), index))
    state['opt_state'], state['params'] = server_optimizer.apply(
        mean_delta, state['opt_state'], state['params']
    )
    jax.block_until_ready(state['params'])

  times = _time_rounds(step, rounds)
  final = [np.asarray(state['params'][name]) for name in PARAM_NAMES]
  return {
      'version': _version('fedjax'),
      'backend': f'JAX {jax.__version__}, for_each_client jit backend',
      'local_steps': LOCAL_STEPS,
      'parameters': sum(array.size for array in final),
      'notes': ['clipping and noise written around fed_avg training'],
      **_median_of(times),
      **_final_model(final, workload),
  }


# ---------------------------------------------------------------------------
# Flower.


def _flower_client_app(directory: str):
  from flwr.app import ArrayRecord
  from flwr.app import Message
  from flwr.app import MetricRecord
  from flwr.app import RecordDict
  from flwr.clientapp import ClientApp

  client_app = ClientApp()

  @client_app.train()
  def train(message, context):
    client_id = int(context.node_config['partition-id'])
    server_round = int(message.content['config']['server-round'])
    # Memory-mapped, so a client reads only its own rows.
    x = np.asarray(np.load(f'{directory}/x.npy', mmap_mode='r')[client_id])
    y = np.load(f'{directory}/y.npy', mmap_mode='r')[client_id]
    params = message.content['arrays'].to_numpy_ndarrays()
    rng = np.random.default_rng([SEED, server_round, client_id])
    params, loss, steps = numpy_local_training(
        params, x, y.astype(np.float32), rng
    )
    content = RecordDict({
        'arrays': ArrayRecord(list(params)),
        'metrics': MetricRecord({
            'num-examples': EXAMPLES_PER_CLIENT, 'train-loss': loss,
            'local-steps': steps,
        }),
    })
    return Message(content=content, reply_to=message)

  return client_app


def _run_flower(directory: pathlib.Path, workload: Workload,
                rounds: int) -> dict:
  try:
    import logging

    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp import strategy as flower_strategy
    from flwr.simulation import run_simulation
  except ImportError as error:
    raise PeerUnavailable(
        f"flwr is not installed ({error}); pip install -e '.[peers]'"
    ) from error

  logging.getLogger('flwr').setLevel(logging.WARNING)
  num_clients = workload.x.shape[0]
  stamps, outcome = [], {}
  server_app = ServerApp()

  @server_app.main()
  def main(grid, context):
    del context
    strategy = flower_strategy.DifferentialPrivacyServerSideFixedClipping(
        flower_strategy.FedAvg(
            fraction_train=1.0, fraction_evaluate=0.0,
            min_train_nodes=num_clients, min_available_nodes=num_clients,
        ),
        noise_multiplier=NOISE_MULTIPLIER, clipping_norm=CLIP_NORM,
        num_sampled_clients=num_clients,
    )

    def stamp(server_round, arrays):
      # Called before round 1 and after every round.
      del server_round
      stamps.append(time.perf_counter())
      outcome['params'] = arrays.to_numpy_ndarrays()

    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(list(workload.params)),
        num_rounds=rounds + 1, evaluate_fn=stamp,
    )
    outcome['metrics'] = result.train_metrics_clientapp

  run_simulation(
      server_app=server_app, client_app=_flower_client_app(str(directory)),
      num_supernodes=num_clients,
      backend_config={
          'client_resources': {'num_cpus': 1, 'num_gpus': 0.0},
          'init_args': {'num_cpus': 2, 'num_gpus': 0},
      },
  )
  if len(stamps) != rounds + 2:
    raise RuntimeError(
        f'Flower ran {len(stamps) - 1} of {rounds + 1} rounds; see its log.'
    )
  last_metrics = outcome['metrics'][rounds + 1]
  return {
      'version': _version('flwr'),
      'backend': f"Ray {_version('ray')}, 2 actors x 1 CPU, NumPy clients",
      'local_steps': float(last_metrics['local-steps']),
      'parameters': sum(array.size for array in outcome['params']),
      'notes': [f"last round's local train loss "
                f"{float(last_metrics['train-loss']):.3f}"],
      **_median_of(list(np.diff(stamps))),
      **_final_model(outcome['params'], workload),
  }


# ---------------------------------------------------------------------------
# pfl.


def _pfl_network(torch, params, step_counter: list):
  """Return the MLP as the torch module pfl trains, with `loss` and
  `metrics`, counting loss calls in `step_counter`."""
  from pfl.metrics import Weighted

  class Network(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.hidden = torch.nn.Linear(FEATURES, HIDDEN)
      self.output = torch.nn.Linear(HIDDEN, 1)

    def forward(self, x):
      return self.output(torch.relu(self.hidden(x)))[:, 0]

    def loss(self, x, y):
      step_counter[0] += 1
      return torch.nn.functional.binary_cross_entropy_with_logits(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y):
      total = torch.nn.functional.binary_cross_entropy_with_logits(
          self(x), y, reduction='sum'
      )
      return {'loss': Weighted(total.item(), len(y))}

  network = Network()
  w1, b1, w2, b2 = params
  # torch's Linear keeps its weight as [outputs, inputs].
  with torch.no_grad():
    network.hidden.weight.copy_(torch.from_numpy(w1.T.copy()))
    network.hidden.bias.copy_(torch.from_numpy(b1))
    network.output.weight.copy_(torch.from_numpy(w2.T.copy()))
    network.output.bias.copy_(torch.from_numpy(b2))
  return network


def _pfl_params(network) -> list[np.ndarray]:
  return [
      network.hidden.weight.detach().numpy().T.copy(),
      network.hidden.bias.detach().numpy().copy(),
      network.output.weight.detach().numpy().T.copy(),
      network.output.bias.detach().numpy().copy(),
  ]


def _run_pfl(workload: Workload, rounds: int) -> dict:
  try:
    import torch
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging
    from pfl.algorithm import NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams
    from pfl.hyperparam import NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel
    from pfl.privacy import CentrallyAppliedPrivacyMechanism
    from pfl.privacy import GaussianMechanism
  except ImportError as error:
    raise PeerUnavailable(
        f'pfl is not installed ({error}); pfl 0.6.0 requires '
        "dp-accounting<0.6, so pip install 'pfl[pytorch]' in its own venv "
        'and pass --python pfl=PATH'
    ) from error

  num_clients = workload.x.shape[0]
  torch.manual_seed(SEED)
  # One intra-op thread, because a client's matmuls are too small to split.
  # With two OpenMP threads on a loaded 2-core machine, a 1,000-client
  # round took 33 s instead of 3.3 s in one measurement.
  torch.set_num_threads(1)
  x = torch.from_numpy(workload.x)
  y = torch.from_numpy(workload.y.astype(np.float32))
  # Not default_rng(SEED), which drew the population's data.
  rng = np.random.default_rng([SEED, 1])

  def make_dataset(client_id):
    rows = torch.from_numpy(step_rows(rng))
    return Dataset(raw_data=[x[client_id][rows], y[client_id][rows]],
                   user_id=client_id)

  def federated(sample_type):
    return FederatedDataset(
        make_dataset, get_user_sampler(sample_type, list(range(num_clients)))
    )

  step_counter = [0]
  network = _pfl_network(torch, workload.params, step_counter)
  model = PyTorchModel(
      model=network, local_optimizer_create=torch.optim.SGD,
      central_optimizer=torch.optim.SGD(
          network.parameters(), lr=SERVER_LEARNING_RATE),
  )
  stamps, outcome = [], {}

  class Stamp(TrainingProcessCallback):

    def on_train_begin(self, *, model):
      stamps.append(time.perf_counter())
      return super().on_train_begin(model=model)

    def after_central_iteration(self, aggregate_metrics, model, *,
                                central_iteration):
      stamps.append(time.perf_counter())
      outcome['params'] = _pfl_params(network)
      return super().after_central_iteration(
          aggregate_metrics, model, central_iteration=central_iteration)

  privacy = CentrallyAppliedPrivacyMechanism(GaussianMechanism(
      clipping_bound=CLIP_NORM, relative_noise_stddev=NOISE_MULTIPLIER))
  backend = SimulatedBackend(
      training_data=federated('minimize_reuse'),
      val_data=federated('random'), postprocessors=[privacy],
  )
  FederatedAveraging().run(
      algorithm_params=NNAlgorithmParams(
          central_num_iterations=rounds + 1, evaluation_frequency=10**9,
          train_cohort_size=num_clients, val_cohort_size=0,
      ),
      backend=backend, model=model,
      model_train_params=NNTrainHyperParams(
          local_num_epochs=None, local_num_steps=LOCAL_STEPS,
          local_learning_rate=CLIENT_LEARNING_RATE,
          local_batch_size=BATCH_SIZE,
      ),
      model_eval_params=NNEvalHyperParams(local_batch_size=None),
      callbacks=[Stamp()],
  )
  threads = torch.get_num_threads()
  return {
      'version': _version('pfl'),
      'backend': f'PyTorch {torch.__version__}, {threads} intra-op '
                 f"thread{'' if threads == 1 else 's'}",
      'local_steps': step_counter[0] / (num_clients * (rounds + 1)),
      'parameters': sum(p.numel() for p in network.parameters()),
      'notes': ['each client dataset is its 80 step rows'],
      **_median_of(list(np.diff(stamps))),
      **_final_model(outcome['params'], workload),
  }


def run_peer(peer: str, directory: pathlib.Path, rounds: int) -> dict:
  """Run one peer on the workload in `directory`, in this process."""
  workload = load_workload(directory)
  result = {'peer': peer, 'clients': int(workload.x.shape[0])}
  try:
    if peer in ('fedjax_med', 'loop'):
      measured = _run_jax_peer(peer, workload, rounds)
    elif peer == 'fedjax':
      measured = _run_fedjax(workload, rounds)
    elif peer == 'flower':
      measured = _run_flower(directory, workload, rounds)
    else:
      measured = _run_pfl(workload, rounds)
  except PeerUnavailable as error:
    result['unavailable'] = str(error)
    return result
  result.update(measured, rounds_run=rounds + 1, batch_size=BATCH_SIZE)
  return result


# ---------------------------------------------------------------------------
# The parent process: one child per (peer, clients), then the section.


def _child_environment() -> dict:
  environment = dict(os.environ)
  # Flower and Ray would otherwise send usage reports over the network.
  environment['FLWR_TELEMETRY_ENABLED'] = '0'
  environment['RAY_USAGE_STATS_ENABLED'] = '0'
  return environment


def measure_in_subprocess(
    peer: str, directory: pathlib.Path, num_clients: int, *, rounds: int,
    timeout_s: float, python: str,
) -> dict:
  """Run one peer in a fresh process and return its result.

  A peer that fails, is killed or times out returns a result with an
  `error` message in place of the times.
  """
  output = directory / f'{peer}.json'
  command = [
      python, str(pathlib.Path(__file__).resolve()), '--peer', peer,
      '--workload', str(directory), '--rounds', str(rounds),
      '--output', str(output),
  ]
  result = {'peer': peer, 'clients': num_clients}
  try:
    # A session of its own, so that a timeout also ends the processes that
    # the peer started (Ray's workers).
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=_child_environment(), start_new_session=True,
    )
  except OSError as error:
    result['error'] = f'failed to start {python}: {error}'
    return result
  try:
    _, stderr = child.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    os.killpg(child.pid, signal.SIGKILL)
    child.communicate()
    result['error'] = f'timed out after {timeout_s:g} s'
    return result
  if child.returncode != 0 or not output.exists():
    lines = stderr.strip().splitlines()
    last_line = lines[-1] if lines else 'no output on stderr'
    result['error'] = f'exit code {child.returncode}: {last_line}'
    return result
  return json.loads(output.read_text())


def run(client_counts, peers, *, rounds, timeout_s, pythons) -> list[dict]:
  """Return one result per (clients, peer), each peer in its own process."""
  results = []
  for num_clients in client_counts:
    with tempfile.TemporaryDirectory(prefix='peers-') as name:
      directory = pathlib.Path(name)
      write_workload(directory, num_clients)
      for peer in peers:
        _progress(
            f'{num_clients:,} clients, {peer} ({PEER_DESCRIPTIONS[peer]}): '
            'running'
        )
        result = measure_in_subprocess(
            peer, directory, num_clients, rounds=rounds, timeout_s=timeout_s,
            python=pythons.get(peer, sys.executable),
        )
        _progress(f'  {_describe(result)}')
        results.append(result)
  _add_ratios(results)
  return results


def _describe(result: dict) -> str:
  if 'error' in result:
    return f"failed: {result['error']}"
  if 'unavailable' in result:
    return f"not available: {result['unavailable']}"
  return (
      f"{result['seconds_per_round']:.4g} s per round, accuracy "
      f"{result['final_accuracy']:.3f}"
  )


def _measured(result: dict) -> bool:
  return result.get('seconds_per_round') is not None


def _add_ratios(results: list[dict]) -> None:
  """Set `ratio`: a peer's round time over fedjax_med's at the same size."""
  baseline = {
      result['clients']: result['seconds_per_round']
      for result in results
      if result['peer'] == BASELINE and _measured(result)
  }
  for result in results:
    base = baseline.get(result['clients'])
    if _measured(result) and base:
      result['ratio'] = result['seconds_per_round'] / base


# ---------------------------------------------------------------------------
# The markdown section.


def _format_seconds(seconds: float) -> str:
  return f'{seconds:.3g}' if seconds >= 1e-3 else f'{seconds:.2e}'


def _timing_row(result: dict) -> str:
  head = f"| {result['peer']} |"
  if 'error' in result:
    return (head + f" - | - | {result['clients']:,} | failed | - | - | "
            f"failed: {result['error']} |")
  if 'unavailable' in result:
    return (head + f" - | - | {result['clients']:,} | not available | - | - "
            f"| not available: {result['unavailable']} |")
  ratio = result.get('ratio')
  notes = [f"first round {result['first_round_s']:.3g} s", *result['notes']]
  return (
      head + f" {result['version']} | {result['backend']} |"
      f" {result['clients']:,} |"
      f" {_format_seconds(result['seconds_per_round'])} |"
      f" {result['rounds_timed']} |"
      f" {'-' if ratio is None else f'{ratio:,.1f}'} |"
      f" {'; '.join(notes)} |"
  )


def _work_row(result: dict) -> str:
  return (
      f"| {result['peer']} | {result['clients']:,} | {result['rounds_run']} |"
      f" {result['local_steps']:g} | {result['batch_size']} |"
      f" {result['parameters']:,} | {result['final_loss']:.3f} |"
      f" {result['final_accuracy']:.3f} |"
  )


def _target_sentences(results: list[dict]) -> list[str]:
  sentences = []
  by_case = {(result['clients'], result['peer']): result for result in results}
  for num_clients in dict.fromkeys(result['clients'] for result in results):
    for peer, target in TARGET_RATIOS.items():
      result = by_case.get((num_clients, peer))
      if result is None:
        continue
      if result.get('ratio') is None:
        sentences.append(
            f'At {num_clients:,} clients the target against {peer} could '
            'not be checked, because no ratio was measured.'
        )
        continue
      ratio = result['ratio']
      verdict = 'meets' if ratio >= target else 'misses'
      goal = ('ahead of it' if target == 1.0
              else f'at least {target:g}x faster')
      sentences.append(
          f'At {num_clients:,} clients {peer} takes {ratio:,.1f}x '
          f"fedjax_med's round time, which {verdict} the target of "
          f'fedjax_med being {goal}.'
      )
  return sentences


def markdown(results: list[dict], command: str, *, rounds: int,
             load_before, load_after) -> str:
  """Return the dated results section."""
  from fedjax_med.report import machine

  settings = (
      f'Every peer trains an MLP {FEATURES}-{HIDDEN}-1 on clients with '
      f'{EXAMPLES_PER_CLIENT} synthetic rows each, all clients in every '
      f'round, {LOCAL_STEPS} local SGD steps of batch {BATCH_SIZE} at '
      f'{CLIENT_LEARNING_RATE}, update clipping to L2 norm {CLIP_NORM} and '
      f'central Gaussian noise with multiplier {NOISE_MULTIPLIER}. Each '
      'case ran in its own process: one warm-up round, which is excluded '
      'with all start-up (JAX compilation, Ray start and actor creation), '
      f'then {rounds} timed rounds, of which s per round is the median. '
      'x fedjax_med is a peer\'s s per round over fedjax_med\'s at the same '
      'number of clients. JAX uses all CPU cores, PyTorch one thread, and '
      'Ray is limited to 2 CPUs with one actor per CPU.'
  )
  timed = [result for result in results if _measured(result)]
  lines = [
      machine.section_heading('Peer comparison'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}'
      f'{machine.load_sentence(load_before, load_after)}',
      '',
      '| peer | version | backend | clients | s per round | rounds timed | '
      'x fedjax_med | notes |',
      '|---|---|---|---|---|---|---|---|',
      *[_timing_row(result) for result in results],
      '',
      'Work done, for checking that every peer trained the same model the '
      'same way. Local steps are counted per client for pfl (calls of its '
      'loss) and Flower (its reply metrics), and the JAX peers show the '
      'configured count. Final loss and accuracy are those of the last '
      'model on every row of the population.',
      '',
      '| peer | clients | rounds run | local steps | batch | parameters | '
      'final loss | final accuracy |',
      '|---|---|---|---|---|---|---|---|',
      *[_work_row(result) for result in timed],
      '',
      ' '.join(_target_sentences(results)),
  ]
  return '\n'.join(lines) + '\n\n'


# ---------------------------------------------------------------------------
# Command line.


def _parse_python(value: str) -> tuple[str, str]:
  peer, separator, path = value.partition('=')
  if not separator or peer not in PEERS or not path:
    raise argparse.ArgumentTypeError(
        f'expected PEER=PATH with PEER one of {", ".join(PEERS)}; got '
        f'{value!r}.'
    )
  return peer, path


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

  parser.add_argument(
      '--clients', type=int, nargs='+', default=[100, 1000],
      help='population sizes; every client is in the cohort (default: 100 '
      '1000)',
  )
  parser.add_argument(
      '--peers', nargs='+', choices=PEERS, default=list(PEERS),
      help='peers to time; fedjax_med always runs, because the ratios '
      'divide by its time (default: all)',
  )
  parser.add_argument(
      '--rounds', type=int, default=5,
      help='timed rounds per case, after one warm-up round (default: 5)',
  )
  parser.add_argument(
      '--timeout', type=float, default=900.0,
      help='seconds after which a peer process is killed and recorded as '
      'timed out (default: 900)',
  )

  parser.add_argument(
      '--python', type=_parse_python, action='append', default=[],
      metavar='PEER=PATH',
      help='Python interpreter that runs PEER, for a peer installed in '
      'another venv; repeatable (default: this interpreter)',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to',
  )

  # Internal: run one peer in this process and write its JSON result.
  parser.add_argument('--peer', choices=PEERS, help=argparse.SUPPRESS)
  parser.add_argument('--workload', help=argparse.SUPPRESS)
  parser.add_argument('--output', help=argparse.SUPPRESS)
  return parser


def _parse_args(argv):
  parser = _build_parser()
  args = parser.parse_args(argv)
  if min(args.clients) < 1:
    parser.error(f'--clients must each be at least 1, got {min(args.clients)}.')
  if args.rounds < 1:
    parser.error(f'--rounds must be at least 1, got {args.rounds}.')
  if args.peer is not None and (args.workload is None or args.output is None):
    parser.error('--peer needs --workload and --output.')
  if args.peer is None:
    # Only the parent process reads these, and a peer process may run
    # under an interpreter without fedjax_med.
    from fedjax_med.report import script_help

    script_help.check_finite_positive(parser, '--timeout', args.timeout)
    script_help.check_out_path(parser, args.results, '--results')
  args.clients = list(dict.fromkeys(args.clients))
  args.peers = list(dict.fromkeys([BASELINE, *args.peers]))
  args.python = dict(args.python)
  return args


def main(argv=None) -> list[dict]:
  """Run the comparison from command-line arguments and return its results."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  if args.peer is not None:
    result = run_peer(args.peer, pathlib.Path(args.workload), args.rounds)
    pathlib.Path(args.output).write_text(json.dumps(result))
    return [result]

  from fedjax_med.report import machine

  load_before = machine.load_average()
  results = run(
      args.clients, args.peers, rounds=args.rounds, timeout_s=args.timeout,
      pythons=args.python,
  )
  load_after = machine.load_average()
  command = shlex.join(['python', 'benchmarks/peers.py', *argv])
  page = markdown(results, command, rounds=args.rounds,
                  load_before=load_before, load_after=load_after)
  print(page, end='')
  machine.append_section(args.results, page)
  return results


if __name__ == '__main__':
  main()
