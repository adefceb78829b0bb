"""Reproduce FLamby's Fed-TCGA-BRCA benchmark: a linear Cox model, six regions.

Usage:
  python experiments/tcga_brca_flamby.py [--seeds 0 1 2 3 4] [--rounds 5]
      [--local-steps 100] [--pooled-epochs 30]
      [--strategies pooled fedavg fedprox fedadam fedyogi fedadagrad scaffold]

Each strategy trains a linear Cox model (39 inputs, no bias, kernel drawn
from U(-1/sqrt(39), 1/sqrt(39)) like PyTorch's `nn.Linear`) on the six
regional clients of `data.tcga_brca.load_tcga_brca()`. It is then scored by
Harrell's C-index on each client's test rows. The metric is the mean of the
six per-client C-indices, FLamby's "average of per-client metrics".

Settings, from the FLamby repository (owkin/FLamby):
`flamby/datasets/fed_tcga_brca/common.py` (batch size 8, 30 pooled epochs,
learning rate 0.1, Adam for pooled training, rounds =
(866 // 6 // 8) * 30 // local_steps), `flamby/benchmarks/fed_benchmark.py`
(100 local steps per round) and `flamby/config_tcga_brca.json`:

* pooled: all 866 training rows as one data set, Adam (lr 0.1), 30 epochs
  of batches of 8;
* FedAvg: client SGD (lr 0.1), 5 rounds of 100 local steps, the server
  averages the updates weighted by the clients' training rows;
* FedProx: FedAvg with mu = 0.1;
* FedAdam, FedYogi: client SGD (lr 0.01), server learning rate 0.1,
  beta1 0.9, beta2 0.999, tau 1e-8;
* FedAdagrad: client SGD (lr 0.01), server learning rate 1.0, beta1 0.9,
  tau 1e-8;
* SCAFFOLD: client SGD (lr 0.01), server learning rate 1.0, control
  variates with the option II update.

The Cox loss of a batch divides its summed event terms by the number of
rows (`loss_normalization='rows'`), as FLamby's `BaselineLoss` does, so that
SGD takes steps of FLamby's size.

All strategies of one seed start from the same initial model, as in FLamby.
The script prints a markdown table of the mean and standard deviation over
seeds and a table of each client's mean C-index.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med import interrupts
from fedjax_med.client import local_training
from fedjax_med.client import survival_training
from fedjax_med.data import federated
from fedjax_med.data import tcga_brca
from fedjax_med.models import tabular
from fedjax_med.report import results_page
from fedjax_med.report import script_help
from fedjax_med.server import optimizers
from fedjax_med.simulation import evaluate_survival
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

BATCH_SIZE = 8
POOLED_LEARNING_RATE = 0.1
POOLED_EPOCHS = 30
LOCAL_STEPS = 100
# FLamby's `get_nb_max_rounds(100)`: (866 // 6 // 8) * 30 // 100.
ROUNDS = 5
SEEDS = (0, 1, 2, 3, 4)
# Tags for `fold_in` on a seed's key.
_INIT_TAG = 0
_TRAIN_TAG = 1


class Strategy(NamedTuple):
  """One row of the benchmark.

  Attributes:
    label: name in the table.
    flamby_paper: C-index that the FLamby paper reports, as quoted to this
      project and not checked against the paper.
    client_learning_rate: learning rate of client SGD.
    proximal_mu: FedProx's mu, 0 for the others.
    server_optimizer: builds the server optimizer.
    scaffold: correct local steps with SCAFFOLD's control variates.
  """

  label: str
  flamby_paper: float
  client_learning_rate: float
  proximal_mu: float
  server_optimizer: Callable[[], optax.GradientTransformation]
  scaffold: bool = False


STRATEGIES = {
    'fedavg': Strategy('FedAvg', 0.732, 0.1, 0.0, lambda: optax.sgd(1.0)),
    'fedprox': Strategy('FedProx', 0.729, 0.1, 0.1, lambda: optax.sgd(1.0)),
    'fedadam': Strategy(
        'FedAdam', 0.815, 0.01, 0.0,
        lambda: optimizers.fed_adam(0.1, b1=0.9, b2=0.999, tau=1e-8),
    ),
    'fedyogi': Strategy(
        'FedYogi', 0.815, 0.01, 0.0,
        lambda: optimizers.fed_yogi(0.1, b1=0.9, b2=0.999, tau=1e-8),
    ),
    'fedadagrad': Strategy(
        'FedAdagrad', 0.813, 0.01, 0.0,
        lambda: optimizers.fed_adagrad(1.0, b1=0.9, tau=1e-8),
    ),
    'scaffold': Strategy(
        'SCAFFOLD', 0.687, 0.01, 0.0, lambda: optax.sgd(1.0), scaffold=True,
    ),
}
POOLED = 'pooled'
POOLED_FLAMBY_PAPER = 0.676
ALL_STRATEGIES = (POOLED,) + tuple(STRATEGIES)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--seeds', type=int, nargs='+', default=list(SEEDS),
      help='seeds of the initial model and of the batch shuffles',
  )
  parser.add_argument(
      '--rounds', type=int, default=ROUNDS,
      help='federated rounds of every federated strategy (FLamby: 5)',
  )
  parser.add_argument(
      '--local-steps', type=int, default=LOCAL_STEPS,
      help='client SGD steps per round (FLamby: 100)',
  )
  parser.add_argument(
      '--pooled-epochs', type=int, default=POOLED_EPOCHS,
      help='epochs of pooled training (FLamby: 30)',
  )
  parser.add_argument(
      '--strategies', nargs='+', default=list(ALL_STRATEGIES),
      choices=ALL_STRATEGIES, help='rows of the table, in this order',
  )
  args = parser.parse_args(argv)
  script_help.check_counts(parser, args,
                           ('rounds', 'local_steps', 'pooled_epochs'))
  script_help.check_seeds(parser, args.seeds)
  script_help.check_distinct(parser, '--strategies', args.strategies)
  return args


def _model() -> tabular.Model:
  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the start of PyTorch's nn.Linear.
  kernel_init = jax.nn.initializers.variance_scaling(
      1.0 / 3.0, 'fan_in', 'uniform'
  )
  return survival_training.cox_model(kernel_init)


def _pool(train: federated.FederatedData) -> federated.FederatedData:
  """Return every client's real rows as the single client of a dataset."""
  clients = [train.client(index) for index in range(train.num_clients)]
  pooled = {
      name: np.concatenate([client[name] for client in clients])
      for name in clients[0]
  }
  return federated.stack_clients([pooled])


def _train_pooled(model, train, pooled_epochs):
  """Return `train_fn(init_params, key) -> params` for pooled training."""
  pooled = _pool(train)
  num_rows = int(pooled.num_examples[0])
  local_update = survival_training.build_survival_local_update(
      model,
      optax.adam(POOLED_LEARNING_RATE),
      num_steps=local_training.max_local_steps(
          num_rows, BATCH_SIZE, pooled_epochs
      ),
      batch_size=BATCH_SIZE,
      num_epochs=pooled_epochs,
      loss_normalization='rows',
  )
  examples = jax.tree.map(lambda leaf: jnp.asarray(leaf[0]), pooled.examples)

  @jax.jit
  def train_fn(params, key):
    result = local_update(params, examples, jnp.int32(num_rows), key)
    return optax.apply_updates(params, result.delta)

  return train_fn


def _train_federated(model, train, strategy, rounds, local_steps):
  """Return `train_fn(init_params, key) -> params` for a federated strategy."""
  local_update = survival_training.build_survival_local_update(
      model,
      optax.sgd(strategy.client_learning_rate),
      num_steps=local_steps,
      batch_size=BATCH_SIZE,
      proximal_mu=strategy.proximal_mu,
      loss_normalization='rows',
  )
  server_optimizer = strategy.server_optimizer()
  # Every client takes part in every round, as in FLamby.
  sampler = sampling.uniform_sampler(train.num_clients, train.num_clients)
  round_fn = round_lib.build_round(
      train, local_update, sampler, server_optimizer, aggregator='fedavg',
      scaffold_learning_rate=(strategy.client_learning_rate
                              if strategy.scaffold else None),
  )

  def train_fn(params, key):
    state = round_lib.init_server_state(
        params, server_optimizer,
        scaffold_clients=train.num_clients if strategy.scaffold else None,
    )
    for round_index in range(rounds):
      state, _ = round_fn(state, jax.random.fold_in(key, round_index))
    return state.params

  return train_fn


def _format_tables(labels, flamby, results, client_names) -> str:
  """Format the summary and per-client tables as markdown."""
  lines = [
      '| Strategy | Mean client C-index (mean ± std over seeds) '
      '| FLamby paper | Pooled-test C-index | Mean client C-index per seed |',
      '|---|---|---|---|---|',
  ]
  for label, paper, (means, _, pooled) in zip(labels, flamby, results):
    per_seed = ', '.join(f'{value:.3f}' for value in means)
    lines.append(
        f'| {label} | {results_page.mean_std(means)} | {paper:.3f} | '
        f'{results_page.mean_std(pooled)} | {per_seed} |'
    )
  lines += [
      '',
      '| Strategy | ' + ' | '.join(client_names) + ' |',
      '|---|' + '---|' * len(client_names),
  ]
  for label, (_, per_client, _) in zip(labels, results):
    cells = ' | '.join(f'{value:.3f}' for value in np.mean(per_client, axis=0))
    lines.append(f'| {label} | {cells} |')
  return '\n'.join(lines)


def _run_strategies(args, dataset, model, evaluate, sample_x):
  """Train and score every strategy for every seed.

  Returns:
    `(labels, flamby, results)`: row labels, the FLamby paper values and
    per row the per-seed means, per-client and pooled C-indexes.
  """
  labels, flamby, results = [], [], []
  for name in args.strategies:
    if name == POOLED:
      label, paper = 'Pooled', POOLED_FLAMBY_PAPER
      train_fn = _train_pooled(model, dataset.train, args.pooled_epochs)
    else:
      strategy = STRATEGIES[name]
      label, paper = strategy.label, strategy.flamby_paper
      train_fn = _train_federated(
          model, dataset.train, strategy, args.rounds, args.local_steps
      )

    means, per_client, pooled = [], [], []
    for seed in args.seeds:
      key = jax.random.key(seed)
      params = model.init(jax.random.fold_in(key, _INIT_TAG), sample_x)
      params = train_fn(params, jax.random.fold_in(key, _TRAIN_TAG))
      scores = evaluate(params)
      for client_name, reason in zip(dataset.client_names, scores.reasons):
        if reason is not None:
          print(f'{label}, seed {seed}, {client_name}: C-index NaN: {reason}')
      means.append(scores.mean_c_index)
      per_client.append(scores.c_index)
      pooled.append(scores.pooled_c_index)
      interrupts.raise_if_requested()
    labels.append(label)
    flamby.append(paper)
    results.append(
        (np.asarray(means), np.asarray(per_client), np.asarray(pooled))
    )
  return labels, flamby, results


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(argv)
  started = time.monotonic()
  dataset = tcga_brca.load_tcga_brca()
  model = _model()
  evaluate = evaluate_survival.build_evaluate_survival(model, dataset.test)
  sample_x = jnp.zeros((1, dataset.num_features), jnp.float32)

  # Results print only at the end, so a stop keeps nothing.
  with script_help.stop_on_ctrl_c('tcga_brca_flamby.py', None, 'seed'):
    labels, flamby, results = _run_strategies(
        args, dataset, model, evaluate, sample_x)

  elapsed = time.monotonic() - started
  command = 'python ' + ' '.join(
      [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv)
  )
  print(f'Command: {command}')
  print(f'Date: {datetime.date.today().isoformat()}')
  print(
      f'Hardware: {platform.machine()}, {os.cpu_count()} CPU cores, '
      f'JAX {jax.__version__} on {jax.default_backend()}'
  )
  print(
      f'Seeds: {args.seeds}; rounds: {args.rounds}; local steps: '
      f'{args.local_steps}; pooled epochs: {args.pooled_epochs}; '
      f'wall time: {elapsed:.0f} s'
  )
  print()
  print(_format_tables(labels, flamby, results, dataset.client_names))
  return 0


if __name__ == '__main__':
  sys.exit(main())
