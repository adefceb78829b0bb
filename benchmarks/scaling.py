"""Time and memory of one federated round against the number of clients.

Workload: a synthetic population in which every client has 64 rows of 32
standard normal float32 features, labeled 1 where a fixed random linear
function of the features is positive. A numpy Generator with seed 0 draws
both, which is cheap even for 100,000 clients. The model is
`tabular.MLP(2, (64,))`, a 32-64-1 ReLU network, because a binary task gets
one logit. Every client is in the cohort and takes 5 local SGD steps of
batch 16 at learning rate 0.1. The server applies the aggregate with SGD at
1.0.

Variants:

* mean: uniform mean, no clipping or noise.
* mean_dp: uniform mean of updates clipped to L2 norm 1.0, plus central
  Gaussian noise with multiplier 1.0 and the population size as denominator.
* median: coordinate-wise median, no clipping or noise.

Each (clients, variant) case runs in a fresh process, which this script
starts by calling itself with the hidden `--case` flag and which prints one
JSON line. Peak RSS is therefore per case, and a case that fails, runs out of
memory or passes `--timeout` is recorded while the others still run. A case
first compiles the round ahead of time, reads its FLOP count and memory need
from XLA, and is skipped if that memory need exceeds the memory available.
It then clears JAX's caches, so that the first call compiles again, and
times rounds. Compile time is the first call minus the median of the timed
calls.

NOTE: the first call also touches its temporary buffers for the first time,
which probably makes compile time run high for the largest cases (2.6 GB of
temporaries at 100,000 clients). The Round scaling sections of
`benchmarks/RESULTS.md` give the measured compile times.

Matmul floor: for each client count, one more process times only the MLP's
forward and backward matmuls in one jitted `lax.scan` over the steps. They
have the shapes of the round's (clients x 5 steps x batch 16), and each
client has its own weights. The floor leaves out the activation, the loss, minibatch sampling,
the gather of the batch and everything after local training. The x floor
column divides a round's time by this floor.

Usage:
  python benchmarks/scaling.py [--clients 100 1000 10000 100000]
      [--variants mean mean_dp median] [--repeats 5] [--timeout 600]
      [--results benchmarks/RESULTS.md] [--figure docs/figures/scaling.png]

Progress goes to stderr. The results section is printed and, with
--results, appended to that page together with the date, the command, the
hardware and the slope of log time against log clients.
"""

import argparse
import dataclasses
import json
import pathlib
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.report import machine
from fedjax_med.report import script_help
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

EXAMPLES_PER_CLIENT = 64
FEATURES = 32
HIDDEN = 64
NUM_CLASSES = 2
LOCAL_STEPS = 5
BATCH_SIZE = 16
CLIENT_LEARNING_RATE = 0.1
SERVER_LEARNING_RATE = 1.0
CLIP_NORM = 1.0
NOISE_MULTIPLIER = 1.0
SEED = 0

FLOOR = 'floor'
VARIANTS = ('mean', 'mean_dp', 'median')
VARIANT_DESCRIPTIONS = {
    'mean': 'uniform mean, no DP',
    'mean_dp': (
        f'uniform mean, clip {CLIP_NORM}, central noise multiplier '
        f'{NOISE_MULTIPLIER}'
    ),
    'median': 'coordinate-wise median, no DP',
    FLOOR: 'matmul floor',
}
# Timed rounds stop once another one could end after this fraction of
# `--timeout`, which leaves the rest for process exit and the JSON line.
TIMING_BUDGET_FRACTION = 0.8
# A slope within this distance of 1 is reported as linear growth.
LINEAR_TOLERANCE = 0.1
# The round time that the project aims for, as a multiple of the floor.
FLOOR_TARGET = 1.5


def num_logits() -> int:
  """Return the MLP's output width: one log-odds logit for 2 classes."""
  return 1 if NUM_CLASSES == 2 else NUM_CLASSES


def matmul_flops(num_clients: int) -> int:
  """Return the FLOPs of the MLP's matmuls in one round's local training.

  Per batch row: the forward x @ W1 and h @ W2, and the backward
  dW2 = h^T d, dh = d W2^T and dW1 = x^T dh. The gradient with respect to x
  is not needed. One multiply-add counts as 2 FLOPs.
  """
  outputs = num_logits()
  per_row = 2 * (2 * FEATURES * HIDDEN + 3 * HIDDEN * outputs)
  return num_clients * LOCAL_STEPS * BATCH_SIZE * per_row


def make_population(num_clients: int, seed: int = SEED):
  """Return the synthetic population as a numpy `FederatedData`."""
  rng = np.random.default_rng(seed)
  rule = rng.standard_normal(FEATURES).astype(np.float32)
  x = rng.standard_normal(
      (num_clients, EXAMPLES_PER_CLIENT, FEATURES), dtype=np.float32
  )
  y = (x @ rule > 0).astype(np.int32)
  num_examples = np.full((num_clients,), EXAMPLES_PER_CLIENT, np.int32)
  return federated.FederatedData({'x': x, 'y': y}, num_examples)


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# One case, run inside its own process.


@dataclasses.dataclass
class CaseProgram:
  """A jitted step to time, with what the case reports about its inputs."""

  step: Callable  # step(state, index) -> new state, blocks until ready
  lower: Callable  # lower(state) -> jax.stages.Lowered
  state: object
  input_bytes: int
  check: Callable  # check(state) -> dict of sanity values for the JSON line


def _round_program(
    num_clients: int, variant: str, num_calls: int
) -> CaseProgram:
  population = make_population(num_clients)
  input_bytes = sum(
      leaf.nbytes for leaf in jax.tree.leaves(tuple(population))
  )
  train = jax.device_put(population)
  del population

  model = tabular.from_flax(tabular.MLP(NUM_CLASSES, (HIDDEN,)), NUM_CLASSES)
  # Every client has EXAMPLES_PER_CLIENT rows, so each epoch's shuffle is
  # drawn once, as `fedjax_med.study` arranges from the data.
  local_update = local_training.build_local_update(
      model, optax.sgd(CLIENT_LEARNING_RATE), num_steps=LOCAL_STEPS,
      batch_size=BATCH_SIZE, min_client_examples=EXAMPLES_PER_CLIENT,
  )
  if variant == 'mean_dp':
    privacy = round_lib.PrivacySettings(
        clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER,
        noise_kind='central', denominator=num_clients,
    )
    aggregator = 'mean'
  else:
    privacy = round_lib.PrivacySettings()
    aggregator = variant
  server_optimizer = optax.sgd(SERVER_LEARNING_RATE)
  round_fn = round_lib.build_round(
      train, local_update, sampling.uniform_sampler(num_clients, num_clients),
      server_optimizer, aggregator=aggregator, privacy=privacy,
  )
  params = model.init(jax.random.key(1), jnp.zeros((1, FEATURES)))
  state = round_lib.init_server_state(
      params, server_optimizer, aggregator=aggregator
  )
  # Keys are drawn before any timing starts, one per call.
  round_keys = jax.random.split(jax.random.key(2), num_calls)
  last_metrics = {}

  def step(state, index):
    state, metrics = round_fn(state, round_keys[index])
    jax.block_until_ready((state, metrics))
    last_metrics['value'] = metrics
    return state

  def check(state):
    del state
    metrics = last_metrics['value']
    return {
        'num_contributing': int(metrics['num_contributing']),
        'train_loss': float(metrics['train_loss']),
        'params_finite': bool(metrics['params_finite']),
    }

  return CaseProgram(
      step=step,
      lower=lambda state: round_fn.lower(state, round_keys[0]),
      state=state, input_bytes=input_bytes, check=check,
  )


def _floor_program(num_clients: int) -> CaseProgram:
  rng = np.random.default_rng(SEED)
  outputs = num_logits()
  shape = (LOCAL_STEPS, num_clients, BATCH_SIZE)
  x = rng.standard_normal(shape + (FEATURES,), dtype=np.float32)
  # The output gradient is the logits minus a fixed random target, over the
  # batch size as for a mean loss, so the backward matmuls depend on the
  # forward ones and cannot be hoisted.
  target = rng.standard_normal(shape + (outputs,), dtype=np.float32)
  w1 = 0.1 * rng.standard_normal(
      (num_clients, FEATURES, HIDDEN), dtype=np.float32
  )
  w2 = 0.1 * rng.standard_normal(
      (num_clients, HIDDEN, outputs), dtype=np.float32
  )
  input_bytes = x.nbytes + target.nbytes + w1.nbytes + w2.nbytes
  x, target = jax.device_put((x, target))

  @jax.jit
  def floor(weights, x, target):
    def one_step(weights, batch):
      w1, w2 = weights
      x_step, target_step = batch
      hidden = jnp.einsum('cbf,cfh->cbh', x_step, w1)
      logits = jnp.einsum('cbh,cho->cbo', hidden, w2)
      output_gradient = (logits - target_step) / BATCH_SIZE
      grad_w2 = jnp.einsum('cbh,cbo->cho', hidden, output_gradient)
      grad_hidden = jnp.einsum('cbo,cho->cbh', output_gradient, w2)
      grad_w1 = jnp.einsum('cbf,cbh->cfh', x_step, grad_hidden)
      # The SGD step keeps the steps sequential, as in local training.
      new_weights = (
          w1 - CLIENT_LEARNING_RATE * grad_w1,
          w2 - CLIENT_LEARNING_RATE * grad_w2,
      )
      return new_weights, None

    weights, _ = jax.lax.scan(one_step, weights, (x, target))
    return weights

  start_weights = jax.device_put((w1, w2))

  def step(state, index):
    # Every call starts from the same weights, so each does equal work.
    del state, index
    return jax.block_until_ready(floor(start_weights, x, target))

  def check(state):
    finite = all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in state)
    return {'params_finite': finite}

  return CaseProgram(
      step=step,
      lower=lambda state: floor.lower(start_weights, x, target),
      state=start_weights, input_bytes=input_bytes, check=check,
  )


def _compiled_needs(program: CaseProgram) -> tuple[float | None, int | None]:
  """Return XLA's FLOP count and output plus temporary bytes of one call."""
  compiled = program.lower(program.state).compile()
  flops = None
  cost = compiled.cost_analysis()
  # JAX 0.10.2 returns one dict. A list with one dict per device is read too.
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if cost and cost.get('flops', -1) >= 0:
    flops = float(cost['flops'])
  needed = None
  memory = compiled.memory_analysis()
  if memory is not None:
    needed = memory.output_size_in_bytes + memory.temp_size_in_bytes
  return flops, needed


def run_case(
    variant: str, num_clients: int, *, repeats: int, timeout_s: float,
    memory_limit_mb: float | None,
) -> dict:
  """Build, check and time one case in this process and return its result.

  The result is the JSON line that the parent process reads.
  """
  started = time.perf_counter()
  deadline = started + TIMING_BUDGET_FRACTION * timeout_s
  result = {'variant': variant, 'clients': num_clients, 'repeats': repeats}
  if variant == FLOOR:
    program = _floor_program(num_clients)
  else:
    program = _round_program(num_clients, variant, num_calls=repeats + 1)
  result['input_mb'] = program.input_bytes / 2**20

  flops, needed = _compiled_needs(program)
  result['xla_flops'] = flops
  result['xla_temp_mb'] = None if needed is None else needed / 2**20
  if memory_limit_mb is None:
    free = machine.available_bytes()
  else:
    free = memory_limit_mb * 2**20
  if needed is not None and free is not None and needed > free:
    result['skip_reason'] = (
        f'XLA needs {needed / 2**20:,.0f} MB for outputs and temporaries, '
        f'but only {free / 2**20:,.0f} MB is available'
    )
    result['peak_rss_mb'] = machine.peak_rss_mb()
    return result

  # The ahead-of-time compile above would otherwise serve the first call.
  jax.clear_caches()
  state = program.state
  call_start = time.perf_counter()
  state = program.step(state, 0)
  first_call_s = time.perf_counter() - call_start

  times = []
  while len(times) < repeats:
    call_start = time.perf_counter()
    state = program.step(state, len(times) + 1)
    times.append(time.perf_counter() - call_start)
    if call_start + 2 * times[-1] > deadline:
      break
  seconds = statistics.median(times)
  result.update(
      first_call_s=first_call_s,
      compile_s=max(first_call_s - seconds, 0.0),
      seconds_per_round=seconds,
      rounds_timed=len(times),
      peak_rss_mb=machine.peak_rss_mb(),
      **program.check(state),
  )
  return result


# ---------------------------------------------------------------------------
# The parent process: one child per case, then the table, plot and section.


def measure_in_subprocess(
    variant: str, num_clients: int, *, repeats: int, timeout_s: float,
    memory_limit_mb: float | None,
) -> dict:
  """Run one case in a fresh Python process and return its result.

  A case that fails, is killed or times out returns a result with an
  `error` message in place of the times.
  """
  command = [
      sys.executable, str(pathlib.Path(__file__).resolve()),
      '--case', variant, '--clients', str(num_clients),
      '--repeats', str(repeats), '--timeout', str(timeout_s),
  ]
  if memory_limit_mb is not None:
    command += ['--memory-limit-mb', str(memory_limit_mb)]
  result = {'variant': variant, 'clients': num_clients}
  try:
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )
  except subprocess.TimeoutExpired:
    result['error'] = f'timed out after {timeout_s:g} s'
    return result

  if finished.returncode < 0:
    number = -finished.returncode
    name = signal.Signals(number).name
    reason = f'killed by {name}'
    if number == signal.SIGKILL:
      reason += ', probably by the kernel out-of-memory killer'
    result['error'] = reason
    return result
  stderr_lines = finished.stderr.strip().splitlines()
  if finished.returncode != 0:
    last_line = stderr_lines[-1] if stderr_lines else 'no output on stderr'
    result['error'] = (
        f'failed with exit code {finished.returncode}: {last_line}'
    )
    return result
  stdout_lines = finished.stdout.strip().splitlines()
  if not stdout_lines:
    result['error'] = 'exited without printing its JSON result line'
    return result
  return json.loads(stdout_lines[-1])


def run(client_counts, variants, *, repeats, timeout_s, memory_limit_mb):
  """Return one result per case: the floor and each variant per count."""
  results = []
  kinds = [FLOOR, *variants]
  total = len(client_counts) * len(kinds)
  index = 0
  for num_clients in client_counts:
    for kind in kinds:
      index += 1
      _progress(
          f'[{index}/{total}] {num_clients:,} clients, '
          f'{VARIANT_DESCRIPTIONS[kind]}: building, compiling and timing'
      )
      result = measure_in_subprocess(
          kind, num_clients, repeats=repeats, timeout_s=timeout_s,
          memory_limit_mb=memory_limit_mb,
      )
      _progress(f'  {_describe(result)}')
      results.append(result)
  _add_derived(results)
  return results


def _describe(result) -> str:
  if 'error' in result:
    return f"failed: {result['error']}"
  if 'skip_reason' in result:
    return f"skipped: {result['skip_reason']}"
  return (
      f"compile {result['compile_s']:.2f} s, "
      f"{result['seconds_per_round']:.4g} s per call "
      f"({result['rounds_timed']} timed), peak RSS "
      f"{result['peak_rss_mb']:,.0f} MB"
  )


def _measured(result) -> bool:
  return result.get('seconds_per_round') is not None


def _add_derived(results) -> None:
  """Add rates and the ratio to the floor of the same client count."""
  floors = {
      result['clients']: result['seconds_per_round']
      for result in results if result['variant'] == FLOOR and _measured(result)
  }
  for result in results:
    if not _measured(result):
      continue
    seconds = result['seconds_per_round']
    clients = result['clients']
    result['updates_per_s'] = clients / seconds
    result['matmul_gflops_per_s'] = matmul_flops(clients) / seconds / 1e9
    flops = result.get('xla_flops')
    result['xla_gflops_per_s'] = None if flops is None else flops / seconds / 1e9
    floor = floors.get(clients)
    result['x_floor'] = None if floor is None else seconds / floor


def fit_slope(results, variant: str, fit_from: int) -> tuple[float, int] | None:
  """Return the least-squares slope of log time on log clients and its points.

  Only measured cases of `variant` with at least `fit_from` clients count.
  Returns None when fewer than two distinct client counts remain.
  """
  points = sorted(
      (result['clients'], result['seconds_per_round'])
      for result in results
      if result['variant'] == variant and _measured(result)
      and result['clients'] >= fit_from
  )
  if len({clients for clients, _ in points}) < 2:
    return None
  log_clients = np.log([clients for clients, _ in points])
  log_seconds = np.log([seconds for _, seconds in points])
  slope, _ = np.polyfit(log_clients, log_seconds, 1)
  return float(slope), len(points)


# ---------------------------------------------------------------------------
# Output: markdown section and figure.


def _format_seconds(seconds: float) -> str:
  if seconds < 0.01:
    return f'{seconds:.2e}'
  if seconds < 100:
    return f'{seconds:.3g}'
  return f'{seconds:,.0f}'


def _format_optional(value, pattern: str) -> str:
  return '-' if value is None else pattern.format(value)


def _table(results) -> list[str]:
  lines = [
      '| clients | variant | compile s | s per round | rounds timed | '
      'client updates/s | peak RSS MB | input MB | XLA out+temp MB | '
      'GFLOP/s (XLA count) | GFLOP/s (matmul count) | x floor |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for result in results:
    head = f"| {result['clients']:,} | {result['variant']} |"
    memory = (
        f" {_format_optional(result.get('input_mb'), '{:,.1f}')} |"
        f" {_format_optional(result.get('xla_temp_mb'), '{:,.0f}')} |"
    )
    if 'error' in result:
      lines.append(head + ' failed | - | - | - | - | - | - | - | - | - |')
      continue
    if 'skip_reason' in result:
      lines.append(
          head + ' skipped | - | - | - | '
          f"{result['peak_rss_mb']:,.0f} |" + memory + ' - | - | - |'
      )
      continue
    lines.append(
        head
        + f" {result['compile_s']:.2f} |"
        + f" {_format_seconds(result['seconds_per_round'])} |"
        + f" {result['rounds_timed']} |"
        + f" {result['updates_per_s']:,.0f} |"
        + f" {result['peak_rss_mb']:,.0f} |"
        + memory
        + f" {_format_optional(result['xla_gflops_per_s'], '{:.2f}')} |"
        + f" {result['matmul_gflops_per_s']:.2f} |"
        + f" {_format_optional(result['x_floor'], '{:.2f}')} |"
    )
  return lines


def _slope_sentences(results, variants, fit_from: int) -> list[str]:
  sentences = []
  for variant in [*variants, FLOOR]:
    fit = fit_slope(results, variant, fit_from)
    if fit is None:
      sentences.append(
          f'{variant}: no slope, because fewer than two client counts of at '
          f'least {fit_from:,} were measured.'
      )
      continue
    slope, count = fit
    if abs(slope - 1) <= LINEAR_TOLERANCE:
      shape = 'linearly'
    elif slope > 1:
      shape = 'faster than linearly'
    else:
      shape = 'more slowly than linearly'
    sentences.append(
        f'{variant}: slope {slope:.2f} over {count} client counts from '
        f'{fit_from:,}, so time grows {shape} in the number of clients.'
    )
  return sentences


def _floor_sentences(results) -> list[str]:
  sentences = []
  for result in results:
    if result['variant'] != 'mean_dp' or result.get('x_floor') is None:
      continue
    ratio = result['x_floor']
    verdict = 'meets' if ratio <= FLOOR_TARGET else 'misses'
    sentences.append(
        f"At {result['clients']:,} clients a mean_dp round takes "
        f'{ratio:.2f}x its matmul floor, which {verdict} the target of at '
        f'most {FLOOR_TARGET}x.'
    )
  return sentences


def _notes(results) -> list[str]:
  notes = []
  for result in results:
    label = f"{result['clients']:,} clients, {result['variant']}"
    if 'error' in result:
      notes.append(f"{label}: {result['error']}.")
    elif 'skip_reason' in result:
      notes.append(f"{label}: skipped, {result['skip_reason']}.")
    elif result['rounds_timed'] < result['repeats']:
      notes.append(
          f"{label}: {result['rounds_timed']} of {result['repeats']} timed "
          f'calls ran, because another would have ended after '
          f'{TIMING_BUDGET_FRACTION:.0%} of the timeout.'
      )
  return notes


def markdown(results, variants, command, *, fit_from, load_before,
             load_after) -> str:
  """Return the dated results section."""
  loads = machine.load_sentence(load_before, load_after)
  settings = (
      f'Every client has {EXAMPLES_PER_CLIENT} synthetic rows of {FEATURES} '
      'features and trains in every round: MLP '
      f'{FEATURES}-{HIDDEN}-{num_logits()}, {LOCAL_STEPS} local SGD steps of '
      f'batch {BATCH_SIZE}. Each case ran in its own process. Compile s is '
      'the first call minus the median call, and s per round is the median '
      'of the timed calls. Input MB is the population (for the floor, its '
      'batches and weights), and XLA out+temp MB is what XLA allocates for '
      'one call besides its inputs. The matmul floor times only the forward '
      'and backward matmuls of the same shapes in one jitted scan. '
      'GFLOP/s (matmul count) divides those matmul FLOPs by the time. '
      'GFLOP/s (XLA count) uses `cost_analysis()`, which counts the body of '
      f'the {LOCAL_STEPS}-step scan once, so it undercounts.'
  )
  lines = [
      machine.section_heading('Round scaling'),
      '',
      f'`{command}` on {machine.hardware_line()}. {settings}{loads}',
      '',
      *_table(results),
      '',
  ]
  notes = _notes(results)
  if notes:
    lines.extend([*notes, ''])
  lines.append(
      'Slope of log seconds per round against log clients (1 is linear, '
      f'and within {LINEAR_TOLERANCE} of 1 counts as linear here): '
      + ' '.join(_slope_sentences(results, variants, fit_from))
  )
  floor_sentences = _floor_sentences(results)
  if floor_sentences:
    lines.extend(['', ' '.join(floor_sentences)])
  return '\n'.join(lines) + '\n\n'


def plot(results, variants, path) -> None:
  """Write clients against seconds per round and peak RSS, both log-log."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot

  figure, (time_axis, memory_axis) = pyplot.subplots(1, 2, figsize=(11, 4.5))
  for kind in [*variants, FLOOR]:
    measured = sorted(
        (result['clients'], result['seconds_per_round'], result['peak_rss_mb'])
        for result in results
        if result['variant'] == kind and _measured(result)
    )
    if not measured:
      continue
    clients = [row[0] for row in measured]
    style = dict(linestyle='--', color='black') if kind == FLOOR else {}
    time_axis.plot(clients, [row[1] for row in measured], marker='o',
                   label=VARIANT_DESCRIPTIONS[kind], **style)
    memory_axis.plot(clients, [row[2] for row in measured], marker='o',
                     label=VARIANT_DESCRIPTIONS[kind], **style)
  population = sorted({
      (result['clients'], result['input_mb'])
      for result in results
      if result['variant'] != FLOOR and result.get('input_mb') is not None
  })
  if population:
    memory_axis.plot(
        [row[0] for row in population], [row[1] for row in population],
        linestyle=':', color='grey', label='population arrays',
    )
  time_axis.set(
      xscale='log', yscale='log', xlabel='clients (all in the cohort)',
      ylabel='seconds per round', title='Round time',
  )
  memory_axis.set(
      xscale='log', yscale='log', xlabel='clients (all in the cohort)',
      ylabel='peak RSS (MB)', title='Peak memory of the process',
  )
  for axis in (time_axis, memory_axis):
    axis.grid(True, which='both', alpha=0.3)
    axis.legend(fontsize='small')
  figure.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120)
  pyplot.close(figure)


# ---------------------------------------------------------------------------
# Command line.


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--clients', type=int, nargs='+', default=[100, 1000, 10000, 100000],
      help='population sizes; every client is in the cohort (default: 100 '
      '1000 10000 100000)',
  )
  parser.add_argument(
      '--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS),
      help='round variants to time; the matmul floor is always timed '
      '(default: all)',
  )
  parser.add_argument(
      '--repeats', type=int, default=5,
      # argparse %-formats help text, so the percent sign is doubled.
      help='timed calls per case after the first; fewer run when another '
      f'could end after {TIMING_BUDGET_FRACTION * 100:.0f}%% of --timeout, '
      'and at least one always runs (default: 5)',
  )
  parser.add_argument(
      '--timeout', type=script_help.finite_positive_float, default=600.0,
      help='seconds after which a case process is killed and recorded as '
      'timed out (default: 600)',
  )
  parser.add_argument(
      '--memory-limit-mb', type=float, default=None,
      help='memory in MB that a case may ask XLA for; a case that needs more '
      'is skipped (default: MemAvailable when the case starts)',
  )
  parser.add_argument(
      '--fit-from', type=int, default=1000,
      help='smallest client count in the slope fit (default: 1000)',
  )
  parser.add_argument(
      '--results', default=None,
      help='markdown page to append the results section to',
  )
  parser.add_argument(
      '--figure', default=None,
      help='PNG file for the log-log plot of time and memory against clients',
  )

  # Internal: run one case in this process and print its JSON line.
  parser.add_argument(
      '--case', choices=[*VARIANTS, FLOOR], default=None,
      help=argparse.SUPPRESS,
  )
  return parser


def _parse_args(argv):
  parser = _build_parser()
  args = parser.parse_args(argv)
  if min(args.clients) < 1:
    parser.error(f'--clients must each be at least 1, got {min(args.clients)}.')
  if args.repeats < 1:
    parser.error(f'--repeats must be at least 1, got {args.repeats}.')
  if args.memory_limit_mb is not None and not args.memory_limit_mb > 0:
    parser.error(
        f'--memory-limit-mb must be > 0, got {args.memory_limit_mb}.'
    )
  if args.case is not None and len(args.clients) != 1:
    parser.error('--case runs one client count; pass exactly one --clients.')
  script_help.check_out_path(parser, args.results, '--results')
  script_help.check_out_path(parser, args.figure, '--figure')
  # Repeated values run once, in the order given.
  args.clients = list(dict.fromkeys(args.clients))
  args.variants = list(dict.fromkeys(args.variants))
  return args


def main(argv=None):
  """Run the benchmark from command-line arguments and return its results."""
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  if args.case is not None:
    result = run_case(
        args.case, args.clients[0], repeats=args.repeats,
        timeout_s=args.timeout, memory_limit_mb=args.memory_limit_mb,
    )
    print(json.dumps(result), flush=True)
    return [result]

  load_before = machine.load_average()
  results = run(
      args.clients, args.variants, repeats=args.repeats,
      timeout_s=args.timeout, memory_limit_mb=args.memory_limit_mb,
  )
  load_after = machine.load_average()
  command = shlex.join(['python', 'benchmarks/scaling.py', *argv])
  page = markdown(
      results, args.variants, command, fit_from=args.fit_from,
      load_before=load_before, load_after=load_after,
  )
  print(page, end='')
  # The figure goes last, so that a plotting failure keeps the results.
  machine.append_section(args.results, page)
  if args.figure:
    plot(results, args.variants, args.figure)
  return results


if __name__ == '__main__':
  main()
