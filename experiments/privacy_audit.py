"""Attack a FedAvg model of Fed-Heart-Disease with membership inference.

Usage:
  python experiments/privacy_audit.py [--setting {federated,pooled}]
      [--rounds 15] [--local-steps 100] [--batch-size 4]
      [--learning-rate 0.01] [--num-shadows 64]
      [--lira-variant {online,offline}] [--seed 0] [--quick] [--out FILE]

Trains logistic regression with FedAvg on the training patients, as the
default study does (all hospitals every round, local SGD, server SGD with
learning rate 1). The `pooled` setting trains the same way on one client
that contains every hospital's training rows. The script then attacks the
trained model, with the training patients as members and the test patients
as non-members, and prints the AUC and the TPR at 1% FPR of:

* the loss attack (score: negative loss of the target on the patient), and
* LiRA, with shadow models trained by the same FedAvg procedure on random
  halves of all 740 patients, vmapped over shadows.

The result is written as JSON to --out. If a training diverges (NaN or
infinite scores), the script exits with status 1 and names --learning-rate.
No DP is applied: `train_fedavg` trains both the target and the shadows,
and `attack_target` takes the trained parameters, so a private variant
changes the former and keeps the latter.
"""

import argparse
import math
import pathlib
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med import client
from fedjax_med import config as config_lib
from fedjax_med import data
from fedjax_med import interrupts
from fedjax_med import models
from fedjax_med import simulation
from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.privacy import lira
from fedjax_med.privacy import membership
from fedjax_med.report import outputs
from fedjax_med.report import script_help

SETTINGS = ('federated', 'pooled')
MAX_FPR = 0.01
# Sizes of `--quick`, small enough for a test.
QUICK = {'rounds': 2, 'local_steps': 5, 'num_shadows': 4}


class TrainingDivergedError(ArithmeticError):
  """Attack scores that are NaN or infinite because a training diverged."""


class CandidatePool(NamedTuple):
  """Every patient, in the client layout that the trainings use.

  Within each client the training rows come first, in file order, so the
  members of the target model are exactly the rows that the loader gives.

  Attributes:
    x: `[candidates, features]` float32 inputs.
    y: `[candidates]` int32 labels.
    is_member: `[candidates]` bool, True for the training patients.
    client_ids: `[candidates]` client of each patient.
    row_ids: `[candidates]` row of each patient within its client.
    layout: `x [clients, rows, features]` and `y [clients, rows]`, every
      patient of each client, padded.
  """

  x: np.ndarray
  y: np.ndarray
  is_member: np.ndarray
  client_ids: np.ndarray
  row_ids: np.ndarray
  layout: dict[str, np.ndarray]


def build_pool(
    dataset: federated.FederatedDataset, setting: str
) -> CandidatePool:
  """Gather the train and test rows of every hospital into one pool."""
  splits = []
  for index in range(dataset.num_clients):
    splits.append((dataset.train.client(index), dataset.test.client(index)))
  if setting == 'pooled':
    merged_train = {
        name: np.concatenate([train[name] for train, _ in splits])
        for name in ('x', 'y')
    }
    merged_test = {
        name: np.concatenate([test[name] for _, test in splits])
        for name in ('x', 'y')
    }
    splits = [(merged_train, merged_test)]

  columns = {name: [] for name in ('x', 'y', 'member', 'client', 'row')}
  clients = []
  for client_id, (train, test) in enumerate(splits):
    rows = {
        name: np.concatenate([train[name], test[name]]) for name in ('x', 'y')
    }
    num_train, num_rows = len(train['y']), len(rows['y'])
    clients.append(rows)
    columns['x'].append(rows['x'])
    columns['y'].append(rows['y'])
    columns['member'].append(np.arange(num_rows) < num_train)
    columns['client'].append(np.full(num_rows, client_id))
    columns['row'].append(np.arange(num_rows))
  stacked = {name: np.concatenate(values) for name, values in columns.items()}
  return CandidatePool(
      x=stacked['x'].astype(np.float32),
      y=stacked['y'].astype(np.int32),
      is_member=stacked['member'],
      client_ids=stacked['client'],
      row_ids=stacked['row'],
      layout=data.stack_clients(clients).examples,
  )


def target_train_data(pool: CandidatePool) -> federated.FederatedData:
  """Return the members of `pool` per client, as the data loader gives them."""
  clients = []
  for client_id in range(pool.layout['y'].shape[0]):
    rows = (pool.client_ids == client_id) & pool.is_member
    clients.append({'x': pool.x[rows], 'y': pool.y[rows]})
  return data.stack_clients(clients)


def train_fedavg(
    model: models.Model,
    train_data: federated.FederatedData,
    local_update: local_training.LocalUpdate,
    *,
    rounds: int,
    key: jax.Array,
):
  """Run FedAvg for `rounds` rounds with every client in every round.

  The keys follow the README's example: `fold_in(key, 0)` initializes the
  model and round `r` uses `fold_in(fold_in(key, 1), r)`. It runs under
  `jax.vmap` too, with `train_data` traced.
  """
  num_clients = train_data.num_clients
  server_optimizer = optax.sgd(1.0)
  round_fn = simulation.build_round(
      train_data, local_update,
      simulation.uniform_sampler(num_clients, num_clients),
      server_optimizer, aggregator='fedavg',
  )
  params = model.init(
      jax.random.fold_in(key, 0), train_data.examples['x'][0, :1]
  )
  state = simulation.init_server_state(params, server_optimizer)
  rounds_key = jax.random.fold_in(key, 1)

  def one_round(state, round_index):
    state, _ = round_fn(state, jax.random.fold_in(rounds_key, round_index))
    return state, None

  state, _ = jax.lax.scan(one_round, state, jnp.arange(rounds))
  return state.params


def build_shadow_train_fn(
    model: models.Model,
    pool: CandidatePool,
    local_update: local_training.LocalUpdate,
    *,
    rounds: int,
) -> lira.ShadowTrainFn:
  """Build `train_fn(key, membership_mask)` that runs FedAvg on the members.

  Each client keeps its members, moved to the front of its rows, and its
  example count becomes its number of members, so local training never
  reads a non-member.
  """
  layout_x = jnp.asarray(pool.layout['x'])
  layout_y = jnp.asarray(pool.layout['y'])
  client_ids = jnp.asarray(pool.client_ids)
  row_ids = jnp.asarray(pool.row_ids)

  def train_fn(key, membership_mask):
    if jnp.shape(membership_mask) != client_ids.shape:
      raise ValueError(
          f'`membership_mask` must have one entry per patient, shape '
          f'{client_ids.shape}; got shape {jnp.shape(membership_mask)}.'
      )
    in_layout = jnp.zeros(layout_y.shape, bool)
    in_layout = in_layout.at[client_ids, row_ids].set(membership_mask)
    order = jnp.argsort(~in_layout, axis=1, stable=True)
    examples = {
        'x': jnp.take_along_axis(layout_x, order[:, :, None], axis=1),
        'y': jnp.take_along_axis(layout_y, order, axis=1),
    }
    num_examples = jnp.sum(in_layout, axis=1, dtype=jnp.int32)
    train_data = federated.FederatedData(examples, num_examples)
    return train_fedavg(model, train_data, local_update, rounds=rounds, key=key)

  return train_fn


def attack_target(
    target_params,
    *,
    model: models.Model,
    pool: CandidatePool,
    shadow_train_fn: lira.ShadowTrainFn,
    num_shadows: int,
    lira_variant: str,
    key: jax.Array,
) -> dict:
  """Run the loss attack and LiRA on trained parameters.

  Returns:
    `{'loss_attack': ..., 'lira': ...}`, each with the AUC and the TPR at 1%
    FPR over members (training patients) and non-members (test patients).
  """
  x, y = jnp.asarray(pool.x), jnp.asarray(pool.y)
  loss_scores = membership.loss_scores(model, target_params, x, y)

  shadows = lira.train_shadow_models(
      shadow_train_fn, key=key, num_shadows=num_shadows,
      num_candidates=len(pool.y),
  )
  shadow_confidence = lira.shadow_confidences(
      model, shadows.params, x, y
  )
  target_confidence = lira.logit_confidence(model, target_params, x, y)
  lira_scores = lira.lira_scores(
      target_confidence, shadow_confidence, shadows.masks,
      variant=lira_variant,
  )

  results = {}
  for name, scores in (('loss_attack', loss_scores), ('lira', lira_scores)):
    scores = np.asarray(scores)
    num_invalid = int(np.sum(~np.isfinite(scores)))
    if num_invalid:
      raise TrainingDivergedError(
          f'{name} scores of {num_invalid} of {scores.size} patients are '
          'NaN or infinite'
      )
    metrics = membership.evaluate_attack(
        pool.is_member, scores, max_fpr=MAX_FPR
    )
    results[name] = {
        'auc': metrics.auc,
        'tpr_at_1pct_fpr': metrics.tpr_at_low_fpr,
    }
  results['lira'].update(variant=lira_variant, num_shadows=num_shadows)
  return results


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--setting', choices=SETTINGS, default='federated',
      help='federated: the four hospitals are the clients. pooled: one '
      'client contains every training row (default: federated).',
  )
  parser.add_argument(
      '--rounds', type=int, default=15, help='FedAvg rounds (default: 15).'
  )
  parser.add_argument(
      '--local-steps', type=int, default=100,
      help='local SGD steps per client and round (default: 100).',
  )
  parser.add_argument(
      '--batch-size', type=int, default=4,
      help='examples per local minibatch (default: 4).',
  )
  parser.add_argument(
      '--learning-rate', type=float, default=0.01,
      help='local SGD learning rate, positive and finite (default: 0.01).',
  )
  parser.add_argument(
      '--num-shadows', type=int, default=64,
      help='LiRA shadow models, at least 4 (default: 64).',
  )
  parser.add_argument(
      '--lira-variant', choices=lira.LIRA_VARIANTS, default='online',
      help='online fits Gaussians to in and out shadows, offline only to '
      'out shadows (default: online).',
  )
  parser.add_argument(
      '--seed', type=script_help.seed_type(config_lib.MAX_SEED + 1),
      default=0,
      help='seed of the target and shadow trainings (default: 0).',
  )
  parser.add_argument(
      '--quick', action='store_true',
      help='override the sizes with '
      f'{script_help.format_sizes(QUICK)}, for a smoke test.',
  )
  parser.add_argument(
      '--out', type=pathlib.Path, default=None,
      help='path of the JSON result (default: print only).',
  )
  args = parser.parse_args(argv)

  if args.quick:
    for name, value in QUICK.items():
      setattr(args, name, value)

  if args.num_shadows < 4:
    parser.error(
        f'--num-shadows must be at least 4, so that every patient has 2 in '
        f'and 2 out shadows; got {args.num_shadows}.'
    )
  script_help.check_counts(parser, args,
                           ('rounds', 'local_steps', 'batch_size'))
  # Written so that NaN fails too.
  if not 0 < args.learning_rate < math.inf:
    parser.error(f'--learning-rate must be positive and finite; got '
                 f'{args.learning_rate}.')
  script_help.check_out_path(parser, args.out)
  return args


def main(argv=None) -> int:
  args = _parse_args(argv)
  start = time.perf_counter()
  dataset = data.load_heart_disease()
  model = models.from_flax(models.LogisticRegression(2), num_classes=2)
  local_update = client.build_local_update(
      model, optax.sgd(args.learning_rate), num_steps=args.local_steps,
      batch_size=args.batch_size,
  )
  pool = build_pool(dataset, args.setting)
  key = jax.random.key(args.seed)

  try:
    # The one result is written at the end, so a stop keeps nothing. The
    # request is honoured between the target's training and the shadows'.
    with script_help.stop_on_ctrl_c('privacy_audit.py', None, 'step'):
      target_params = train_fedavg(
          model, target_train_data(pool), local_update, rounds=args.rounds,
          key=jax.random.fold_in(key, 0),
      )
      accuracy = simulation.build_evaluate(model, dataset.test)(target_params)
      interrupts.raise_if_requested()
      shadow_train_fn = build_shadow_train_fn(
          model, pool, local_update, rounds=args.rounds
      )
      attacks = attack_target(
          target_params, model=model, pool=pool,
          shadow_train_fn=shadow_train_fn, num_shadows=args.num_shadows,
          lira_variant=args.lira_variant, key=jax.random.fold_in(key, 1),
      )
      # A stop during the shadows' training is honoured here, before the
      # result is written.
      interrupts.raise_if_requested()
  except TrainingDivergedError as error:
    print(
        f'error: {error}, so local SGD diverged. Lower --learning-rate (got '
        f'{args.learning_rate}) and run again.',
        file=sys.stderr,
    )
    return 1

  num_nonmembers = int((~pool.is_member).sum())
  result = {
      'setting': args.setting,
      'config': {
          name: getattr(args, name)
          for name in ('rounds', 'local_steps', 'batch_size', 'learning_rate',
                       'num_shadows', 'lira_variant', 'seed', 'quick')
      },
      'num_members': int(pool.is_member.sum()),
      'num_nonmembers': num_nonmembers,
      # The TPR at 1% FPR is read at this many false positives, at most.
      'max_false_positives': int(MAX_FPR * num_nonmembers),
      'mean_test_accuracy': float(np.mean(accuracy.accuracy)),
      **attacks,
      'elapsed_s': round(time.perf_counter() - start, 1),
  }
  for name in ('loss_attack', 'lira'):
    print(
        f"{name}: AUC {result[name]['auc']:.3f}, TPR at 1% FPR "
        f"{result[name]['tpr_at_1pct_fpr']:.3f}"
    )
  print(f"mean per-hospital test accuracy {result['mean_test_accuracy']:.3f}")
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # NaN or infinite values are written as null.
    outputs.write_json(args.out, result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
