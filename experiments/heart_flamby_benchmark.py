"""Reproduce FLamby's Fed-Heart-Disease benchmark with logistic regression.

Usage:
  python experiments/heart_flamby_benchmark.py [--seeds 0 1 2 3 4]
      [--rounds 15] [--local-steps 100] [--pooled-epochs 50]
      [--strategies pooled local fedavg fedprox scaffold fedadam fedyogi
                    fedadagrad fedavg-lr0.01]

Each strategy trains a logistic regression (13 inputs, one logit, weights
and bias drawn from U(-1/sqrt(13), 1/sqrt(13)) like PyTorch's `nn.Linear`)
on the four hospitals of `data.heart_disease.load_heart_disease()`
(Cleveland, Hungary, Switzerland, Long Beach VA). It is then scored by
accuracy at threshold 0.5 on each hospital's test rows. The metric is the
mean of the four per-hospital accuracies, FLamby's "average of per-client
metrics".

Settings, from the FLamby repository (owkin/FLamby):
`flamby/datasets/fed_heart_disease/common.py` (batch size 4, 50 pooled
epochs, learning rate 0.001, Adam for pooled training, rounds =
(486 // 4 // 4) * 50 // local_steps), `flamby/benchmarks/fed_benchmark.py`
(100 local steps per round, local baselines trained like the pooled one)
and `flamby/config_heart_disease.json` (the version at commit 88fbe60,
whose values FLamby's results files record):

* pooled: all 486 training rows as one data set, Adam (lr 0.001), 50 epochs
  of batches of 4;
* local i: hospital i's training rows alone, Adam (lr 0.001), 50 epochs,
  scored on every hospital's test rows;
* FedAvg: client SGD (lr 0.001), 15 rounds of 100 local steps, the server
  averages the updates weighted by the clients' training rows;
* FedProx: FedAvg with mu = 0.01;
* SCAFFOLD: client SGD (lr 0.001), server learning rate 1.0, control
  variates with the option II update;
* FedAdam: client SGD (lr 0.01), server learning rate 0.01, beta1 0.9,
  beta2 0.999, tau 1e-8;
* FedYogi: client SGD (lr 0.003162), server learning rate 0.01, beta1 0.9,
  beta2 0.999, tau 1e-8;
* FedAdagrad: client SGD (lr 0.003162), server learning rate 0.316228,
  beta1 0.9, tau 1e-8.

The extra row `fedavg-lr0.01` is not a FLamby setting: FedAvg with client
SGD at lr 0.01, the default of `fedjax-med run`, and everything else as in
FLamby's FedAvg.

All strategies of one seed start from the same initial model, as in FLamby.
The script prints a markdown table of the mean and standard deviation over
seeds and a table of each hospital's mean accuracy.
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
from fedjax_med.data import federated
from fedjax_med.data import heart_disease
from fedjax_med.models import tabular
from fedjax_med.report import results_page
from fedjax_med.report import script_help
from fedjax_med.server import optimizers
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

BATCH_SIZE = 4
POOLED_LEARNING_RATE = 0.001
POOLED_EPOCHS = 50
LOCAL_STEPS = 100
# FLamby's `get_nb_max_rounds(100)`: (486 // 4 // 4) * 50 // 100.
ROUNDS = 15
SEEDS = (0, 1, 2, 3, 4)
# Tags for `fold_in` on a seed's key.
_INIT_TAG = 0
_TRAIN_TAG = 1


class Strategy(NamedTuple):
  """One federated row of the benchmark.

  Attributes:
    label: name in the table.
    flamby_paper: accuracy quoted to this project as the FLamby paper's,
      which equals the mean over FLamby's results files `heart_seed42.csv`
      to `heart_seed46.csv`. None marks a row that is not a FLamby setting.
    client_learning_rate: learning rate of client SGD.
    proximal_mu: FedProx's mu, 0 for the others.
    server_optimizer: builds the server optimizer.
    scaffold: correct local steps with SCAFFOLD's control variates.
  """

  label: str
  flamby_paper: float | None
  client_learning_rate: float
  proximal_mu: float
  server_optimizer: Callable[[], optax.GradientTransformation]
  scaffold: bool = False


STRATEGIES = {
    'fedavg': Strategy('FedAvg', 0.685, 0.001, 0.0, lambda: optax.sgd(1.0)),
    'fedprox': Strategy('FedProx', 0.685, 0.001, 0.01, lambda: optax.sgd(1.0)),
    'scaffold': Strategy(
        'SCAFFOLD', 0.684, 0.001, 0.0, lambda: optax.sgd(1.0), scaffold=True,
    ),
    'fedadam': Strategy(
        'FedAdam', 0.726, 0.01, 0.0,
        lambda: optimizers.fed_adam(0.01, b1=0.9, b2=0.999, tau=1e-8),
    ),
    'fedyogi': Strategy(
        'FedYogi', 0.731, 0.003162, 0.0,
        lambda: optimizers.fed_yogi(0.01, b1=0.9, b2=0.999, tau=1e-8),
    ),
    'fedadagrad': Strategy(
        'FedAdagrad', 0.731, 0.003162, 0.0,
        lambda: optimizers.fed_adagrad(0.316228, b1=0.9, tau=1e-8),
    ),
    'fedavg-lr0.01': Strategy(
        "FedAvg, client lr 0.01 (not FLamby's setting)", None, 0.01, 0.0,
        lambda: optax.sgd(1.0),
    ),
}
POOLED = 'pooled'
POOLED_FLAMBY_PAPER = 0.735
LOCAL = 'local'
ALL_STRATEGIES = (POOLED, LOCAL) + tuple(STRATEGIES)


class Row(NamedTuple):
  """Results of one table row over all seeds.

  Attributes:
    label: name in the table.
    flamby_paper: the quoted FLamby paper accuracy, or None for a row that
      is not a FLamby setting.
    means: `[seeds]` mean of the per-hospital test accuracies.
    per_client: `[seeds, clients]` test accuracy of each hospital.
    pooled: `[seeds]` accuracy over all test rows of all hospitals.
  """

  label: str
  flamby_paper: float | None
  means: np.ndarray
  per_client: np.ndarray
  pooled: np.ndarray


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--seeds', type=int, nargs='+', default=list(SEEDS),
      help='distinct seeds of the initial model and of the batch shuffles',
  )
  parser.add_argument(
      '--rounds', type=int, default=ROUNDS,
      help='federated rounds of every federated strategy (FLamby: 15)',
  )
  parser.add_argument(
      '--local-steps', type=int, default=LOCAL_STEPS,
      help='client SGD steps per round (FLamby: 100)',
  )
  parser.add_argument(
      '--pooled-epochs', type=int, default=POOLED_EPOCHS,
      help='epochs of pooled training and of each local baseline '
      '(FLamby: 50)',
  )
  parser.add_argument(
      '--strategies', nargs='+', default=list(ALL_STRATEGIES),
      choices=ALL_STRATEGIES,
      help="rows of the table, in this order. 'local' adds one row per "
      'hospital',
  )
  args = parser.parse_args(argv)
  script_help.check_seeds(parser, args.seeds)
  script_help.check_counts(parser, args,
                           ('rounds', 'local_steps', 'pooled_epochs'))
  script_help.check_distinct(parser, '--strategies', args.strategies)
  return args


def _pool(train: federated.FederatedData) -> federated.FederatedData:
  """Return every client's real rows as the single client of a dataset."""
  clients = [train.client(index) for index in range(train.num_clients)]
  pooled = {
      name: np.concatenate([client[name] for client in clients])
      for name in clients[0]
  }
  return federated.stack_clients([pooled])


def _build_centralized(model, max_rows, epochs):
  """Build a jitted `fit(params, examples, num_rows, key) -> params`.

  `fit` runs FLamby's centralized training: Adam (lr 0.001) for `epochs`
  shuffled epochs in batches of 4, on `examples` padded to `max_rows`.
  """
  local_update = local_training.build_local_update(
      model,
      optax.adam(POOLED_LEARNING_RATE),
      num_steps=local_training.max_local_steps(max_rows, BATCH_SIZE, epochs),
      batch_size=BATCH_SIZE,
      num_epochs=epochs,
  )

  @jax.jit
  def fit(params, examples, num_rows, key):
    result = local_update(params, examples, num_rows, key)
    return optax.apply_updates(params, result.delta)

  return fit


def _train_pooled(model, train, epochs):
  """Return `train_fn(init_params, key) -> params` for pooled training."""
  pooled = _pool(train)
  num_rows = int(pooled.num_examples[0])
  fit = _build_centralized(model, num_rows, epochs)
  examples = jax.tree.map(lambda leaf: jnp.asarray(leaf[0]), pooled.examples)

  def train_fn(params, key):
    return fit(params, examples, jnp.int32(num_rows), key)

  return train_fn


def _train_local(model, train, client_index, epochs):
  """Return `train_fn(init_params, key) -> params` for one hospital alone."""
  fit = _build_centralized(model, train.max_examples, epochs)
  examples = jax.tree.map(
      lambda leaf: jnp.asarray(leaf[client_index]), train.examples
  )
  num_rows = jnp.int32(train.num_examples[client_index])

  def train_fn(params, key):
    return fit(params, examples, num_rows, key)

  return train_fn


def _train_federated(model, train, strategy, rounds, local_steps):
  """Return `train_fn(init_params, key) -> params` for a federated strategy."""
  local_update = local_training.build_local_update(
      model,
      optax.sgd(strategy.client_learning_rate),
      num_steps=local_steps,
      batch_size=BATCH_SIZE,
      proximal_mu=strategy.proximal_mu,
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


def _row_plans(args, model, dataset):
  """Return `(label, flamby_paper, train_fn)` for each requested row."""
  plans = []
  for name in args.strategies:
    if name == POOLED:
      train_fn = _train_pooled(model, dataset.train, args.pooled_epochs)
      plans.append(('Pooled', POOLED_FLAMBY_PAPER, train_fn))
    elif name == LOCAL:
      for index, client_name in enumerate(dataset.client_names):
        train_fn = _train_local(
            model, dataset.train, index, args.pooled_epochs
        )
        plans.append((f'Local {index} ({client_name})', None, train_fn))
    else:
      strategy = STRATEGIES[name]
      train_fn = _train_federated(
          model, dataset.train, strategy, args.rounds, args.local_steps
      )
      plans.append((strategy.label, strategy.flamby_paper, train_fn))
  return plans


def _run_row(label, paper, train_fn, model, evaluate, seeds, sample_x,
             test_counts) -> Row:
  """Train and score one row for every seed."""
  means, per_client, pooled = [], [], []
  for seed in seeds:
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, _INIT_TAG), sample_x)
    params = train_fn(params, jax.random.fold_in(key, _TRAIN_TAG))
    scores = evaluate(params)
    if int(jnp.sum(scores.num_nonfinite)) > 0:
      print(f'{label}, seed {seed}: non-finite predictions, training diverged')
    accuracy = np.asarray(scores.accuracy, dtype=np.float64)
    means.append(float(np.mean(accuracy)))
    per_client.append(accuracy)
    # Accuracy over all test rows: each hospital weighted by its test rows.
    pooled.append(float(np.sum(accuracy * test_counts) / np.sum(test_counts)))
    interrupts.raise_if_requested()
  return Row(
      label, paper, np.asarray(means), np.asarray(per_client),
      np.asarray(pooled),
  )


def _format_tables(rows: list[Row], client_names) -> str:
  """Format the summary and per-hospital tables as markdown."""
  lines = [
      '| Strategy | Mean client accuracy (mean ± std over seeds) '
      '| FLamby paper | Pooled-test accuracy | Mean client accuracy per seed |',
      '|---|---|---|---|---|',
  ]
  for row in rows:
    paper = 'n/a' if row.flamby_paper is None else f'{row.flamby_paper:.3f}'
    per_seed = ', '.join(f'{value:.3f}' for value in row.means)
    lines.append(
        f'| {row.label} | {results_page.mean_std(row.means)} | {paper} | '
        f'{results_page.mean_std(row.pooled)} | {per_seed} |'
    )
  lines += [
      '',
      '| Strategy | ' + ' | '.join(client_names) + ' |',
      '|---|' + '---|' * len(client_names),
  ]
  for row in rows:
    cells = ' | '.join(
        results_page.mean_std(row.per_client[:, index])
        for index in range(row.per_client.shape[1])
    )
    lines.append(f'| {row.label} | {cells} |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(argv)
  started = time.monotonic()
  dataset = heart_disease.load_heart_disease()
  model = tabular.from_flax(
      tabular.LogisticRegression(num_classes=dataset.num_classes),
      dataset.num_classes,
  )
  evaluate = evaluate_lib.build_evaluate(model, dataset.test)
  sample_x = jnp.zeros((1, dataset.num_features), jnp.float32)
  test_counts = np.asarray(dataset.test.num_examples, dtype=np.float64)

  # Results print only at the end, so a stop keeps nothing.
  with script_help.stop_on_ctrl_c('heart_flamby_benchmark.py', None,
                                  'seed'):
    rows = [
        _run_row(label, paper, train_fn, model, evaluate, args.seeds,
                 sample_x, test_counts)
        for label, paper, train_fn in _row_plans(args, model, dataset)
    ]

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
  print(_format_tables(rows, dataset.client_names))
  return 0


if __name__ == '__main__':
  sys.exit(main())
