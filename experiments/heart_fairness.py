"""Subgroup fairness and leave-one-hospital-out on Fed-Heart-Disease.

Usage:
  python experiments/heart_fairness.py [--seeds 0 1 2 3 4] [--rounds 15]
      [--markdown PATH] [--figure PATH] [--json PATH]

Every algorithm trains logistic regression with the default study settings
(all four hospitals every round, 100 local SGD steps of batch 4 per round,
local learning rate 0.01), once per seed:

* FedAvg, the default study: updates weighted by training examples;
* uniform mean (`server.aggregator=mean`): every hospital weighs the same;
* FedProx with `client.proximal_mu=0.1`, otherwise FedAvg;
* local only: each hospital trains alone on its own rows, for as many
  rounds of as many local steps as in the federation. It is a one-client
  federation, so each round continues from the previous round's model.

Each model predicts every test row of its hospital, and
`fedjax_med.evaluation.subgroups` splits the rows by sex and by age band
(<50, 50-59, >=60 years at the visit) inside each hospital and pooled.
The loader only returns z-scored features, so raw age and sex are re-read
from the bundled files in the loader's row order. The script checks that
they z-score to the loader's columns before it uses them.

Leave-one-hospital-out trains FedAvg on three hospitals and tests it on
the fourth hospital's test rows, which the loader z-scores with that
hospital's own training rows, as a new hospital would. The reference is
that hospital's accuracy under FedAvg with all four hospitals.

Models are trained with the library API and the keys of `study.run_study`.
For the first seed, FedAvg is also run through `run_study`, and the
per-hospital accuracies must match. The results go into the markdown page
between its two marker lines (the rest of the page is kept), the plot into
`--figure`, and every per-seed value into `--json` when given.
"""

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import matplotlib
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med.data import federated
from fedjax_med.data import heart_disease
from fedjax_med.data import tabular
from fedjax_med.evaluation import subgroups
from fedjax_med.report import machine
from fedjax_med.report import results_page
from fedjax_med.report import script_help
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import round as round_lib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MARKDOWN = ROOT / 'experiments' / 'heart_fairness.md'
DEFAULT_FIGURE = ROOT / 'docs' / 'figures' / 'heart_fairness.png'
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
RESULTS_START = '<!-- heart_fairness.py results: start -->'
RESULTS_END = '<!-- heart_fairness.py results: end -->'

# Overrides of each federated algorithm on top of the default study.
ALGORITHMS = {
    'fedavg': {},
    'mean': {'server.aggregator': 'mean'},
    'fedprox': {'client.proximal_mu': 0.1},
}
LOCAL = 'local'
LABELS = {
    'fedavg': 'FedAvg',
    'mean': 'uniform mean',
    'fedprox': 'FedProx (mu 0.1)',
    LOCAL: 'local only',
}
# Raw `sex` in the UCI files is 1 for male and 0 for female
# (heart-disease.names, attribute 4).
SEX_GROUPS = ('female', 'male')
AGE_EDGES = (50, 60)
AGE_GROUPS = ('<50', '50-59', '>=60')
GROUPINGS = {'sex': SEX_GROUPS, 'age': AGE_GROUPS}
# Column indices in the processed.*.data files and in the loader's features.
_RAW_AGE, _RAW_SEX = 0, 1
# FLamby drops the columns slope, ca and thal before it drops incomplete rows.
_RAW_DROPPED = (10, 11, 12)
_FEATURE_AGE = heart_disease.FEATURE_NAMES.index('age')
_FEATURE_SEX = heart_disease.FEATURE_NAMES.index('sex')
# The loader's features are float32, so re-derived z-scores match to about
# 1e-6 relative. A different row order misses by whole units.
_ZSCORE_TOLERANCE = 1e-4
# Per-hospital accuracy of the retrained model and of `run_study` must agree
# this closely, because both evaluate the same params on the same rows.
_REPRODUCTION_TOLERANCE = 1e-6
# `run_study` folds these into the seed's key for the initial model and the
# round keys.
_INIT_TAG = 0
_ROUNDS_TAG = 1


# --- Raw age and sex of every test row ---------------------------------------


def _read_raw_rows(path: pathlib.Path) -> np.ndarray:
  """Read a processed.*.data file as `[rows, 14]` float64, NaN for '?'."""
  rows = [
      [np.nan if cell == '?' else float(cell) for cell in line.split(',')]
      for line in path.read_text().splitlines()
  ]
  return np.asarray(rows, dtype=np.float64)


def _read_splits(path: pathlib.Path) -> dict[str, list[str]]:
  """Return each center's `split` column of the split table, in file order."""
  splits = {name: [] for name in heart_disease.CLIENT_NAMES}
  for line_number, line in enumerate(path.read_text().splitlines()):
    cells = line.split(',')
    if line_number == 0:
      header = cells
      continue
    row = dict(zip(header, cells))
    splits[row['center']].append(row['split'])
  return splits


def _check_zscore(name, raw_train, raw_values, loader_values, column):
  """Raise if `raw_values` z-scored as the loader does differ from it."""
  mean = raw_train.mean()
  std = raw_train.std(ddof=1) if raw_train.size >= 2 else 1.0
  scale = tabular.column_scales(raw_train[:, None], np.asarray([std]))[0]
  expected = (raw_values - mean) / scale
  if not np.allclose(expected, loader_values, atol=_ZSCORE_TOLERANCE):
    raise RuntimeError(
        f'Re-read raw {column} of {name} does not match the loader\'s '
        'z-scored column, so the row order differs from '
        '`load_heart_disease`. Update this script to the loader\'s order.'
    )


def load_test_attributes(
    dataset: federated.FederatedDataset,
) -> dict[str, np.ndarray]:
  """Re-read raw age and sex for the loader's test rows, checking the order.

  The rows follow `load_heart_disease`: complete rows (no missing value
  outside slope, ca and thal) in file order, then the split table's train
  and test rows. The re-read values of train and test rows must z-score,
  with the train rows' mean and std, to the loader's `age` and `sex`
  columns.

  Returns:
    `age` (float64 years) and `sex` (int64, 1 male and 0 female), shaped
    `[clients, examples]` like `dataset.test`, with 0 on padding rows.

  Raises:
    RuntimeError: if the re-read values do not match the loader's columns.
  """
  folder = heart_disease.data_dir()
  splits = _read_splits(folder / heart_disease.SPLIT_TABLE)
  shape = dataset.test.examples['y'].shape
  age = np.zeros(shape)
  sex = np.zeros(shape, np.int64)
  for index, name in enumerate(dataset.client_names):
    raw = _read_raw_rows(folder / f'processed.{name}.data')
    kept = np.delete(raw, _RAW_DROPPED, axis=1)
    complete = ~np.isnan(kept).any(axis=1)
    center_splits = np.asarray(splits[name])[complete]
    rows = raw[complete]
    train_rows = rows[center_splits == 'train']
    test_rows = rows[center_splits == 'test']
    num_test = int(dataset.test.num_examples[index])
    num_train = int(dataset.train.num_examples[index])
    if test_rows.shape[0] != num_test or train_rows.shape[0] != num_train:
      raise RuntimeError(
          f'Re-read {name} has {train_rows.shape[0]}/{test_rows.shape[0]} '
          f'train/test rows, but the loader has {num_train}/{num_test}.'
      )
    loader = {
        'train': np.asarray(dataset.train.examples['x'][index, :num_train]),
        'test': np.asarray(dataset.test.examples['x'][index, :num_test]),
    }
    for raw_column, feature, column in (
        (_RAW_AGE, _FEATURE_AGE, 'age'), (_RAW_SEX, _FEATURE_SEX, 'sex')):
      for split, split_rows in (('train', train_rows), ('test', test_rows)):
        _check_zscore(
            name, train_rows[:, raw_column], split_rows[:, raw_column],
            loader[split][:, feature], column,
        )
    age[index, :num_test] = test_rows[:, _RAW_AGE]
    sex[index, :num_test] = test_rows[:, _RAW_SEX].astype(np.int64)
  return {'age': age, 'sex': sex}


def group_ids(attributes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Return `[clients, examples]` group ids of each grouping in GROUPINGS."""
  return {
      'sex': attributes['sex'],
      'age': subgroups.band_ids(attributes['age'], AGE_EDGES),
  }


# --- Training with the library and run_study's keys --------------------------


def algorithm_config(
    name: str, rounds: int
) -> config_lib.ExperimentConfig:
  """Return the default study with `name`'s overrides and `rounds` rounds."""
  overrides = {**ALGORITHMS.get(name, {}), 'server.rounds': rounds}
  return config_lib.apply_overrides(config_lib.ExperimentConfig(), overrides)


def take_clients(
    data: federated.FederatedData, indices: list[int]
) -> federated.FederatedData:
  """Return the clients at `indices`, keeping the padded length."""
  return federated.FederatedData(
      {key: np.asarray(value)[indices] for key, value in data.examples.items()},
      np.asarray(data.num_examples)[indices],
  )


def build_trainer(
    config: config_lib.ExperimentConfig, model, train: federated.FederatedData
) -> Callable[..., Any]:
  """Build `train_fn(seed, train_data=None) -> params` as `run_study` trains.

  The round compiles once, and `train_data` may replace `train` with
  another population of the same shape.
  """
  local_update = study.build_local_update(config.client, model, train)
  server_optimizer = study.build_optimizer(
      config.server.server_optimizer, config.server.server_learning_rate,
      tau=config.server.server_tau,
  )
  round_fn = round_lib.build_round(
      train,
      local_update,
      study.build_sampler(config.sampling, train.num_clients),
      server_optimizer,
      aggregator=config.server.aggregator,
      aggregator_options=study.aggregator_options(config),
  )
  sample_x = np.asarray(train.examples['x'][0, :1])

  def train_fn(seed: int, train_data: federated.FederatedData | None = None):
    root_key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(root_key, _INIT_TAG), sample_x)
    state = round_lib.init_server_state(
        params, server_optimizer, aggregator=config.server.aggregator
    )
    rounds_key = jax.random.fold_in(root_key, _ROUNDS_TAG)
    for round_index in range(config.server.rounds):
      # The script's Ctrl-C is a request (`script_help.stop_on_ctrl_c`),
      # honoured here between rounds.
      interrupts.raise_if_requested()
      state, metrics = round_fn(
          state, jax.random.fold_in(rounds_key, round_index),
          train_data=train_data,
      )
    if not bool(metrics['params_finite']):
      raise RuntimeError(
          f'Training diverged (seed {seed}): the parameters are NaN or '
          'infinite after the last round.'
      )
    return state.params

  return train_fn


class Evaluated(NamedTuple):
  """One model's results on every hospital's test rows.

  Attributes:
    accuracy: `[clients]` test accuracy.
    predicted: `[clients, examples]` predicted labels, padding included.
  """

  accuracy: np.ndarray
  predicted: np.ndarray


def _evaluated(evaluation: evaluate_lib.ClientEvaluation) -> Evaluated:
  return Evaluated(
      np.asarray(evaluation.accuracy, np.float64),
      np.asarray(evaluation.predicted),
  )


def check_reproduction(
    dataset, seed: int, rounds: int, accuracy: np.ndarray
) -> float:
  """Run FedAvg through `run_study` and compare per-hospital accuracy.

  Returns:
    The largest absolute difference from `accuracy`.

  Raises:
    RuntimeError: if it exceeds `_REPRODUCTION_TOLERANCE`.
  """
  config = config_lib.apply_overrides(
      algorithm_config('fedavg', rounds),
      {'seed': seed,
       'evaluation.bootstrap_resamples': config_lib.MIN_BOOTSTRAP_RESAMPLES},
  )
  with tempfile.TemporaryDirectory() as folder:
    _, summary = study.run_study(config, pathlib.Path(folder) / 'run',
                                 progress=False)
  expected = np.array(
      [summary['test_accuracy'][name] for name in dataset.client_names]
  )
  difference = float(np.max(np.abs(expected - accuracy)))
  if difference > _REPRODUCTION_TOLERANCE:
    raise RuntimeError(
        f'Retrained FedAvg (seed {seed}) differs from run_study by '
        f'{difference:.2g} in per-hospital accuracy; the keys or settings '
        'of this script no longer match run_study.'
    )
  return difference


# --- Running every algorithm -------------------------------------------------


def _subgroup_reports(dataset, groups, predicted) -> dict[str, Any]:
  labels = np.asarray(dataset.test.examples['y'])
  mask = np.asarray(dataset.test.example_mask())
  return {
      grouping: subgroups.subgroup_report(
          predicted, labels, groups[grouping], mask,
          group_names=names, client_names=dataset.client_names,
      )
      for grouping, names in GROUPINGS.items()
  }


def _client_rates(dataset, predicted) -> dict[str, dict[str, Any]]:
  """Return each hospital's TPR and FPR over all its test rows."""
  labels = np.asarray(dataset.test.examples['y'])
  report = subgroups.subgroup_report(
      predicted, labels, np.zeros_like(labels),
      np.asarray(dataset.test.example_mask()),
      group_names=['all'], client_names=dataset.client_names,
  )
  return {
      name: {metric: client['groups']['all'][metric]
             for metric in ('true_positive_rate', 'false_positive_rate')}
      for name, client in report['clients'].items()
  }


def _record(algorithm, seed, dataset, groups, evaluated) -> dict[str, Any]:
  return {
      'kind': 'algorithm',
      'algorithm': algorithm,
      'seed': seed,
      'test_accuracy': dict(
          zip(dataset.client_names, evaluated.accuracy.tolist())),
      'rates': _client_rates(dataset, evaluated.predicted),
      'subgroups': _subgroup_reports(dataset, groups, evaluated.predicted),
  }


def run_federated(dataset, model, evaluate, groups, seeds, rounds):
  """Train each federated algorithm for every seed."""
  records = []
  for algorithm in ALGORITHMS:
    config = algorithm_config(algorithm, rounds)
    train_fn = build_trainer(config, model, dataset.train)
    for seed in seeds:
      evaluated = _evaluated(evaluate(train_fn(seed)))
      records.append(_record(algorithm, seed, dataset, groups, evaluated))
    logging.info('%s: %d seed(s) done', algorithm, len(seeds))
  return records


def run_local(dataset, model, evaluate, groups, seeds, rounds):
  """Train each hospital alone and score it on its own test rows."""
  config = algorithm_config('fedavg', rounds)
  num_clients = dataset.num_clients
  train_fn = build_trainer(config, model, take_clients(dataset.train, [0]))
  records = []
  for seed in seeds:
    accuracy = np.zeros(num_clients)
    predicted = np.zeros(dataset.test.examples['y'].shape, np.int64)
    for index in range(num_clients):
      own_rows = take_clients(dataset.train, [index])
      evaluated = _evaluated(evaluate(train_fn(seed, own_rows)))
      accuracy[index] = evaluated.accuracy[index]
      predicted[index] = evaluated.predicted[index]
    records.append(_record(
        LOCAL, seed, dataset, groups, Evaluated(accuracy, predicted)))
  logging.info('%s: %d seed(s) done', LOCAL, len(seeds))
  return records


def run_leave_one_out(dataset, model, evaluate, seeds, rounds):
  """Train FedAvg without each hospital and score the held-out hospital."""
  config = algorithm_config('fedavg', rounds)
  num_clients = dataset.num_clients
  others = [[i for i in range(num_clients) if i != held_out]
            for held_out in range(num_clients)]
  train_fn = build_trainer(
      config, model, take_clients(dataset.train, others[0])
  )
  records = []
  for seed in seeds:
    for held_out, name in enumerate(dataset.client_names):
      params = train_fn(seed, take_clients(dataset.train, others[held_out]))
      accuracy = _evaluated(evaluate(params)).accuracy
      records.append({
          'kind': 'leave_one_out',
          'held_out': name,
          'seed': seed,
          'held_out_accuracy': float(accuracy[held_out]),
          'training_hospitals_accuracy': {
              dataset.client_names[i]: float(accuracy[i])
              for i in others[held_out]
          },
      })
  logging.info('leave-one-hospital-out: %d seed(s) done', len(seeds))
  return records


# --- Tables ------------------------------------------------------------------


def _by_algorithm(records) -> dict[str, list[dict[str, Any]]]:
  grouped = {}
  for record in records:
    if record['kind'] == 'algorithm':
      grouped.setdefault(record['algorithm'], []).append(record)
  return grouped


def accuracy_table(records, client_names, majority) -> list[str]:
  """Per-hospital test accuracy of each algorithm, mean ± std over seeds.

  The first row is the accuracy of predicting each hospital's most common
  test label, the floor that a useful model should beat.
  """
  majority_values = [majority[name] for name in client_names]
  lines = [
      '| algorithm | ' + ' | '.join(client_names) + ' | mean | worst |',
      '|---' * (len(client_names) + 3) + '|',
      '| most common label | '
      + ' | '.join(f'{value:.3f}' for value in majority_values)
      + f' | {np.mean(majority_values):.3f} | {np.min(majority_values):.3f} |',
  ]
  for algorithm, rows in _by_algorithm(records).items():
    per_client = [
        results_page.mean_std([row['test_accuracy'][name] for row in rows])
        for name in client_names
    ]
    values = [list(row['test_accuracy'].values()) for row in rows]
    mean = results_page.mean_std([float(np.mean(v)) for v in values])
    worst = results_page.mean_std([float(np.min(v)) for v in values])
    lines.append(
        f'| {LABELS[algorithm]} | ' + ' | '.join(per_client)
        + f' | {mean} | {worst} |'
    )
  return lines


def majority_accuracy(dataset) -> dict[str, float]:
  """Accuracy of predicting each hospital's most common test label."""
  accuracy = {}
  for index, name in enumerate(dataset.client_names):
    labels = dataset.test.client(index)['y']
    accuracy[name] = float(max(labels.mean(), 1 - labels.mean()))
  return accuracy


def rates_table(records, client_names) -> list[str]:
  """Per-hospital true and false positive rates of each algorithm."""
  lines = [
      '| algorithm | ' + ' | '.join(client_names) + ' |',
      '|---' * (len(client_names) + 1) + '|',
  ]
  for algorithm, rows in _by_algorithm(records).items():
    cells = []
    for name in client_names:
      true_rate = results_page.mean_std(
          [row['rates'][name]['true_positive_rate'] for row in rows])
      false_rate = results_page.mean_std(
          [row['rates'][name]['false_positive_rate'] for row in rows])
      cells.append(f'{true_rate} / {false_rate}')
    lines.append(f'| {LABELS[algorithm]} | ' + ' | '.join(cells) + ' |')
  return lines


def counts_table(report_by_grouping, client_names) -> list[str]:
  """Test rows (label-1 rows) of each hospital and group."""
  columns = [
      (grouping, group) for grouping, names in GROUPINGS.items()
      for group in names
  ]
  lines = [
      '| hospital | ' + ' | '.join(group for _, group in columns) + ' |',
      '|---' * (len(columns) + 1) + '|',
  ]
  for name in [*client_names, 'pooled']:
    cells = []
    for grouping, group in columns:
      report = report_by_grouping[grouping]
      scope = report['pooled'] if name == 'pooled' else report['clients'][name]
      entry = scope['groups'][group]
      cells.append(f"{entry['count']} ({entry['num_positive']})")
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return lines


def pooled_subgroup_table(records, grouping) -> list[str]:
  """Pooled per-group accuracy and gaps of each algorithm."""
  names = GROUPINGS[grouping]
  lines = [
      '| algorithm | ' + ' | '.join(f'accuracy {name}' for name in names)
      + ' | accuracy gap | equal-opportunity gap (TPR) | FPR gap |',
      '|---' * (len(names) + 4) + '|',
  ]
  for algorithm, rows in _by_algorithm(records).items():
    pooled = [row['subgroups'][grouping]['pooled'] for row in rows]
    cells = [
        results_page.mean_std(
            [report['groups'][name]['accuracy'] for report in pooled])
        for name in names
    ]
    cells += [
        results_page.mean_std(
            [report['gaps'][gap]['value'] for report in pooled])
        for gap in subgroups.GAPS
    ]
    lines.append(f'| {LABELS[algorithm]} | ' + ' | '.join(cells) + ' |')
  return lines


def hospital_gap_table(records, grouping, client_names) -> list[str]:
  """Accuracy gap and equal-opportunity gap inside each hospital."""
  grouped = _by_algorithm(records)
  lines = [
      '| hospital | ' + ' | '.join(LABELS[name] for name in grouped) + ' |',
      '|---' * (len(grouped) + 1) + '|',
  ]
  for client in client_names:
    cells = []
    for rows in grouped.values():
      gaps = [row['subgroups'][grouping]['clients'][client]['gaps']
              for row in rows]
      accuracy_gap = results_page.mean_std(
          [gap['accuracy_gap']['value'] for gap in gaps])
      opportunity_gap = results_page.mean_std(
          [gap['equal_opportunity_gap']['value'] for gap in gaps])
      cells.append(f'{accuracy_gap} / {opportunity_gap}')
    lines.append(f'| {client} | ' + ' | '.join(cells) + ' |')
  return lines


def leave_one_out_table(records, client_names) -> list[str]:
  """Held-out accuracy against in-federation and local-only accuracy."""
  held_out = [record for record in records
              if record['kind'] == 'leave_one_out']
  grouped = _by_algorithm(records)
  lines = [
      '| hospital | held out of FedAvg | in FedAvg of all 4 | local only | '
      'held out - in federation |',
      '|---|---|---|---|---|',
  ]
  for client in client_names:
    rows = sorted(
        (row for row in held_out if row['held_out'] == client),
        key=lambda row: row['seed'],
    )
    outside = {row['seed']: row['held_out_accuracy'] for row in rows}
    inside = {row['seed']: row['test_accuracy'][client]
              for row in grouped.get('fedavg', [])}
    local = [row['test_accuracy'][client] for row in grouped.get(LOCAL, [])]
    differences = [outside[seed] - inside[seed]
                   for seed in outside if seed in inside]
    lines.append(
        f'| {client} | {results_page.mean_std(list(outside.values()))} | '
        f'{results_page.mean_std(list(inside.values()))} | '
        f'{results_page.mean_std(local)} | '
        f'{results_page.mean_std(differences)} |'
    )
  return lines


def render_results(records, dataset, groups_report, *, command, seeds,
                   rounds, elapsed_s, reproduction_difference) -> str:
  """Render the results block of the markdown page."""
  names = list(dataset.client_names)
  if reproduction_difference == 0:
    reproduction = 'exactly in per-hospital accuracy'
  else:
    reproduction = (f'to within {reproduction_difference:.1g} in '
                    'per-hospital accuracy')
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
  sections = [
      f'Command: `{command}`',
      '',
      f'Date: {date}. Hardware: {machine.hardware_line()}. Wall time: '
      f'{elapsed_s:.0f} s.',
      '',
      f'Seeds {", ".join(str(seed) for seed in seeds)}, each with {rounds} '
      f'round{"" if rounds == 1 else "s"} of 100 local SGD steps. Cells '
      'are the mean ± sample standard deviation over seeds, or n/a where a '
      'metric is undefined in every '
      f'seed. The retrained FedAvg of seed {seeds[0]} matched `run_study` '
      f'{reproduction}.',
      '',
      '### Test rows per group (label-1 rows in brackets)',
      '',
      *counts_table(groups_report, names),
      '',
      '### Per-hospital test accuracy',
      '',
      *accuracy_table(records, names, majority_accuracy(dataset)),
      '',
      '### Per-hospital true positive rate / false positive rate',
      '',
      *rates_table(records, names),
  ]
  for grouping in GROUPINGS:
    sections += [
        '',
        f'### By {grouping}, pooled over the four hospitals',
        '',
        *pooled_subgroup_table(records, grouping),
        '',
        f'### By {grouping}, inside each hospital: accuracy gap / '
        'equal-opportunity gap',
        '',
        *hospital_gap_table(records, grouping, names),
    ]
  sections += [
      '',
      '### Leave one hospital out (FedAvg on the other three)',
      '',
      *leave_one_out_table(records, names),
  ]
  return '\n'.join(sections) + '\n'


def write_results_page(path: pathlib.Path, results: str) -> None:
  """Put `results` between the page's markers, keeping the rest of it.

  A missing page is created with a title and the markers.

  Raises:
    ValueError: if the page exists without both markers in order.
  """
  results_page.replace_results(
      path, '\n' + results.rstrip('\n'), start=RESULTS_START,
      end=RESULTS_END, title='Subgroup fairness on Fed-Heart-Disease')


# --- Figure ------------------------------------------------------------------


def _sample_std(values: np.ndarray) -> np.ndarray:
  """Return the sample std over seeds (axis 0), 0 for a single seed."""
  if len(values) < 2:
    return np.zeros(np.shape(values)[1:])
  return np.std(values, axis=0, ddof=1)


def plot_results(
    path: pathlib.Path, records, client_names, majority: dict[str, float]
) -> None:
  """Plot per-hospital accuracy per algorithm, and held out vs in federation.

  A dashed black line marks the accuracy of predicting the most common
  label.
  """
  grouped = _by_algorithm(records)
  figure, (left, right) = plt.subplots(
      1, 2, figsize=(12, 4.5), gridspec_kw={'width_ratios': [3, 2]}
  )
  positions = np.arange(len(client_names))
  width = 0.8 / len(grouped)
  for offset, (algorithm, rows) in enumerate(grouped.items()):
    values = np.array([[row['test_accuracy'][name] for name in client_names]
                       for row in rows])
    left.bar(
        positions + (offset - (len(grouped) - 1) / 2) * width,
        values.mean(axis=0), width, yerr=_sample_std(values),
        label=LABELS[algorithm], capsize=2,
    )
  left.hlines([majority[name] for name in client_names], positions - 0.4,
              positions + 0.4, colors='black', linestyles='dashed',
              zorder=3, label='most common label')
  left.set_xticks(positions, client_names)
  left.set_ylabel('test accuracy')
  left.set_ylim(0, 1)
  left.set_title('Per-hospital accuracy (mean and std over seeds)')
  left.legend(loc='lower left', fontsize='small')

  held_out = {name: [] for name in client_names}
  for record in records:
    if record['kind'] == 'leave_one_out':
      held_out[record['held_out']].append(record['held_out_accuracy'])
  inside = np.array([[row['test_accuracy'][name] for name in client_names]
                     for row in grouped['fedavg']])
  outside = [np.array(held_out[name]) for name in client_names]
  right.bar(positions - 0.2, inside.mean(axis=0), 0.4,
            yerr=_sample_std(inside), label='in FedAvg of all 4', capsize=2)
  right.bar(positions + 0.2, [values.mean() for values in outside], 0.4,
            yerr=[_sample_std(values) for values in outside],
            label='held out of FedAvg', capsize=2)
  right.set_xticks(positions, client_names)
  right.set_ylim(0, 1)
  right.set_title('Leave one hospital out')
  right.legend(loc='lower left', fontsize='small')
  figure.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)


# --- Command line ------------------------------------------------------------


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)

  parser.add_argument(
      '--seeds', type=int, nargs='+', default=list(DEFAULT_SEEDS),
      help='experiment seeds of every algorithm (default: 0 1 2 3 4).',
  )
  parser.add_argument(
      '--rounds', type=int, default=config_lib.ServerConfig().rounds,
      help='federated rounds of 100 local steps each (default: the default '
      'study\'s %(default)s).',
  )
  parser.add_argument(
      '--markdown', type=pathlib.Path, default=DEFAULT_MARKDOWN,
      help='page whose results block is replaced (default: %(default)s).',
  )
  parser.add_argument(
      '--figure', type=pathlib.Path, default=DEFAULT_FIGURE,
      help='PNG plot to write (default: %(default)s).',
  )
  parser.add_argument(
      '--json', type=pathlib.Path, default=None,
      help='also write every per-seed record to this JSON file.',
  )
  args = parser.parse_args(argv)

  if args.rounds < 1:
    parser.error(f'--rounds must be at least 1; got {args.rounds}.')
  script_help.check_seeds(parser, args.seeds, limit=config_lib.MAX_SEED + 1)
  # Checked before training, so a bad path does not cost a whole run.
  if args.figure.suffix.lower() != '.png':
    parser.error(f'--figure must be a .png file; got {args.figure}.')
  for name in ('markdown', 'figure', 'json'):
    path = getattr(args, name)
    if path is not None and path.is_dir():
      parser.error(f'--{name} must be a file path; {path} is a folder.')
    if path is not None and not path.parent.is_dir():
      parser.error(
          f'--{name}: the folder {path.parent} does not exist. Create it or '
          'pick another path.'
      )
  script_help.check_results_page(parser, args.markdown, start=RESULTS_START,
                                 end=RESULTS_END)
  return args


def run(args, command: str) -> str:
  """Train every model and write the JSON, the page and the figure.

  Returns:
    The results block of the page, as markdown.
  """
  start = time.perf_counter()
  dataset = heart_disease.load_heart_disease()
  groups = group_ids(load_test_attributes(dataset))
  model = study.build_model(
      config_lib.ExperimentConfig().model, dataset.num_classes
  )
  evaluate = evaluate_lib.build_evaluate(model, jax.device_put(dataset.test))

  records = run_federated(
      dataset, model, evaluate, groups, args.seeds, args.rounds)
  first_fedavg = records[0]
  difference = check_reproduction(
      dataset, args.seeds[0], args.rounds,
      np.array(list(first_fedavg['test_accuracy'].values())),
  )
  records += run_local(dataset, model, evaluate, groups, args.seeds,
                       args.rounds)
  records += run_leave_one_out(
      dataset, model, evaluate, args.seeds, args.rounds)
  # The round loops check for a stop before each round only, so a Ctrl-C
  # during the last round is honoured here, before anything is written.
  interrupts.raise_if_requested()

  results = render_results(
      records, dataset, first_fedavg['subgroups'], command=command,
      seeds=args.seeds, rounds=args.rounds,
      elapsed_s=time.perf_counter() - start,
      reproduction_difference=difference,
  )
  # The figure goes last, so that a plotting failure keeps the results.
  if args.json is not None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=1, allow_nan=False))
  write_results_page(args.markdown, results)
  plot_results(args.figure, records, list(dataset.client_names),
               majority_accuracy(dataset))
  return results


def main(argv=None) -> int:
  args = _parse_args(argv)
  arguments = sys.argv[1:] if argv is None else list(argv)
  command = ' '.join(['python experiments/heart_fairness.py', *arguments])
  with script_help.stop_on_ctrl_c('heart_fairness.py', None):
    results = run(args, command)
  print(results)
  print(f'Results in {args.markdown} and {args.figure}')
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  sys.exit(main())
