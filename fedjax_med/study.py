"""A whole federated study from an `ExperimentConfig`, written to a folder.

`run_study` loads the data and builds the model, local update, sampler and
round. It runs the rounds with a progress bar and evaluates on every client's
test rows. The run folder gets `config.json`, `provenance.json`,
`metrics.jsonl` (one line per finished round), `summary.json`,
`accuracy.png` and, for binary tasks, `predictions.csv`. A survival study
(`study_survival`) reports Harrell's C-index instead of accuracy and writes
`c_index.png` and `risk_scores.csv` in place of the last two.
"""

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from fedjax_med import checkpoint as checkpoint_lib
from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study_attacks
from fedjax_med import study_privacy
from fedjax_med import study_participation
from fedjax_med import study_survival
from fedjax_med import tree
from fedjax_med.client import dp_sgd
from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.data import heart_disease
from fedjax_med.data import images
from fedjax_med.data import partitions
from fedjax_med.data import scanner
from fedjax_med.data import synthetic
from fedjax_med.data import tabular as tabular_data
from fedjax_med.errors import DataCheckError
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.errors import TrainingDiverged
from fedjax_med.evaluation import clinical
from fedjax_med.models import cnn
from fedjax_med.models import tabular
from fedjax_med.report import outputs
from fedjax_med.report import plots
from fedjax_med.report import provenance
from fedjax_med.report import tensorboard as tensorboard_lib
from fedjax_med.server import optimizers as server_optimizers
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import evaluate_survival
from fedjax_med.simulation import local_leaves
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

# Tags folded into the experiment seed, one per purpose.
_INIT_TAG = 0
_ROUNDS_TAG = 1
_DATA_TAG = 2
_ATTACK_TAG = 3
_FINETUNE_TAG = 4
# Datasets whose loaders z-score each client; a partition pools their raw
# rows and z-scores each new client from its own train rows.
_TABULAR = ('heart_disease', 'csv')
# Loaders split the data key into at most 3 keys, which equal
# `fold_in(data key, 0 .. 2)` under JAX's partitionable threefry, so the
# tags below start at 3. Tag 1 gave a partition of synthetic data the
# generator's own key.
# Folded into the data key for a partition of the pooled rows.
_PARTITION_TAG = 5
# Folded into the data key for the clients' scanner profiles.
_SCANNER_TAG = 3
# Folded into the data key for the sizes of synthetic image clients.
_SIZES_TAG = 4

#: Automatic unrolling (`client.unroll_loops` None) stops at this many
#: copies of the local step in one program, to bound compile time.
MAX_AUTO_UNROLLED_STEPS = 64

#: A cohort whose rows and training state would take more than this trains
#: in chunks of clients, unless `client.chunk_size` is set.
AUTO_CHUNK_BYTES = 2**30
# Working copies of the params a client keeps while it trains: the params,
# gradients, optimizer state (two moments at most), the start and the delta.
_TRAINING_COPIES = 6

# Populations up to this size get per-client test accuracy in every line of
# metrics.jsonl; larger ones get the mean, worst and 10th percentile only.
MAX_CLIENTS_PER_ROUND_LINE = 100


def load_dataset(
    data: config_lib.DataConfig, seed: int
) -> federated.FederatedDataset:
  """Load the dataset that `data` names, then apply its `partition` and
  scanner profiles."""
  dataset = _load_clients(data, seed)
  data_key = jax.random.fold_in(jax.random.key(seed), _DATA_TAG)
  if data.partition != 'none':
    dataset = _repartition(
        dataset, data, jax.random.fold_in(data_key, _PARTITION_TAG))
  if data.scanner_profiles:
    dataset = _apply_scanners(
        dataset, data, jax.random.fold_in(data_key, _SCANNER_TAG))
  return dataset


def _apply_scanners(dataset, data, key) -> federated.FederatedDataset:
  """Give each client a random profile of `data.scanner_profiles`."""
  # `config.validate` has checked the names against `scanner.PROFILES`.
  names = tuple(data.scanner_profiles)
  assign_key, shift_key = jax.random.split(key)
  assignment = scanner.assign_profiles(
      dataset.num_clients, key=assign_key, names=names)
  profiles = scanner.stack_profiles(names, assignment)
  shifted = scanner.shift_dataset_scanners(dataset, profiles, key=shift_key)
  return dataclasses.replace(
      shifted, client_names=tuple(
          f'{client}_{names[index]}'
          for client, index in zip(dataset.client_names, assignment)))


def _pooled_rows(dataset: federated.FederatedDataset):
  """Return every real row of every client, train then test, as numpy."""
  xs, ys = [], []
  for split in (dataset.train, dataset.test):
    x = np.asarray(split.examples['x'])
    y = np.asarray(split.examples['y'])
    for client, count in enumerate(np.asarray(split.num_examples)):
      xs.append(x[client, :count])
      ys.append(y[client, :count])
  return np.concatenate(xs), np.concatenate(ys)


def _repartition(dataset, data, key) -> federated.FederatedDataset:
  """Pool `dataset` and split it into new clients by `data.partition`."""
  x, y = _pooled_rows(dataset)
  num_clients = data.partition_clients or dataset.num_clients
  partition_key, split_key = jax.random.split(key)
  # The minimum rows n with n - ceil(test_fraction * n) >= 1, so that every
  # client keeps a training row after its train/test split.
  min_rows = 1
  while min_rows - math.ceil(data.test_fraction * min_rows) < 1:
    min_rows += 1
  where = (f'{len(y)} rows into `data.partition_clients={num_clients}` '
           'clients')
  if num_clients * min_rows > len(y):
    # No alpha or sigma can fix this, so it is stated in config terms first.
    raise InputError(
        f'`data.partition={data.partition}` cannot split {where}: each '
        f'client needs {min_rows} rows to keep a training row after '
        f'`data.test_fraction={data.test_fraction}`, {num_clients * min_rows} '
        f'in all. Use at most {len(y) // min_rows} clients, or lower '
        '`data.test_fraction`.'
    )
  try:
    if data.partition == 'dirichlet':
      indices = partitions.partition_dirichlet(
          y, num_clients=num_clients, alpha=data.dirichlet_alpha,
          key=partition_key, num_classes=dataset.num_classes,
          min_examples=min_rows,
      )
    elif data.partition == 'pathological':
      indices = partitions.partition_pathological(
          y, num_clients=num_clients,
          classes_per_client=data.classes_per_client, key=partition_key,
          num_classes=dataset.num_classes,
      )
    else:
      indices = partitions.partition_quantity_skew(
          len(y), num_clients=num_clients, key=partition_key,
          distribution='lognormal', sigma=data.size_sigma,
          min_examples=min_rows,
      )
  except InputError as error:
    # The partition function's message states the cause in its own argument
    # names, so the hint maps them to config keys. Only the Dirichlet and
    # quantity schemes take `min_examples`.
    min_examples_note = (
        f'`min_examples={min_rows}` leaves every client a training row after '
        f'`data.test_fraction={data.test_fraction}`'
    )
    hints = {
        'dirichlet': (
            '`num_clients` is `data.partition_clients`, `alpha` is '
            f'`data.dirichlet_alpha`, and {min_examples_note}. To fix this, '
            'raise `data.dirichlet_alpha` or lower `data.partition_clients`.'
        ),
        'pathological': (
            '`num_clients` is `data.partition_clients` and '
            '`classes_per_client` is `data.classes_per_client`.'
        ),
        'quantity': (
            '`num_clients` is `data.partition_clients`, `sigma` is '
            f'`data.size_sigma`, and {min_examples_note}. To fix this, lower '
            '`data.partition_clients`.'
        ),
    }
    raise InputError(
        f'`data.partition={data.partition}` cannot split {where}: {error} '
        f'In the config, {hints[data.partition]}'
    ) from error
  sizes = [len(rows) for rows in indices]
  if min(sizes) < min_rows:
    short = sum(size < min_rows for size in sizes)
    raise InputError(
        f'`data.partition=pathological` split {where}, but {short} of them '
        f'have fewer than {min_rows} rows and so no training row. Lower '
        '`data.partition_clients` or `data.test_fraction`.'
    )
  partitioned = partitions.build_dataset(
      x, y, indices, key=split_key, test_fraction=data.test_fraction,
      name=f'{dataset.name}_{data.partition}',
      num_classes=dataset.num_classes, feature_names=dataset.feature_names,
      standardize=data.dataset in _TABULAR,
  )
  return dataclasses.replace(partitioned, source_files=dataset.source_files)


def _load_clients(
    data: config_lib.DataConfig, seed: int
) -> federated.FederatedDataset:
  if data.dataset in config_lib.SURVIVAL_DATASETS:
    return study_survival.load_dataset(data)
  # A partition z-scores its new clients itself, from raw rows.
  standardize = data.partition == 'none'
  if data.dataset == 'heart_disease':
    return heart_disease.load_heart_disease(standardize=standardize)
  if data.dataset == 'csv':
    return tabular_data.load_csv(
        data.csv_path,
        client_column=data.client_column,
        label_column=data.label_column,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
        standardize=standardize,
    )
  key = jax.random.fold_in(jax.random.key(seed), _DATA_TAG)
  if data.dataset in config_lib.IMAGE_DATASETS:
    return _load_images(data, key)
  iid = data.dataset == 'synthetic_iid'
  dataset = synthetic.synthetic(
      key=key,
      num_clients=data.num_clients,
      alpha=0.0 if iid else data.alpha,
      beta=0.0 if iid else data.beta,
      iid=iid,
      min_examples=data.min_examples,
      max_examples=data.max_examples,
      test_fraction=data.test_fraction,
  )
  return dataclasses.replace(dataset, name=data.dataset)


def _load_images(data: config_lib.DataConfig, key) -> federated.FederatedDataset:
  """Load or generate the image dataset that `data.dataset` names."""
  if data.dataset == 'digits':
    return images.digits_dataset(
        data.num_clients, key=key, test_fraction=data.test_fraction)
  if data.dataset in ('image_folder', 'image_npz'):
    if data.dataset == 'image_folder':
      dataset = images.load_image_folder(
          data.image_path, key=key, image_size=data.image_size,
          grayscale=data.grayscale, test_fraction=data.test_fraction)
    else:
      dataset = images.load_npz_sites(
          data.image_path, key=key, test_fraction=data.test_fraction)
    _check_two_classes(dataset, data.image_path)
    return dataset
  # synthetic_images: client sizes uniform in [min_examples, max_examples]
  # before the split, as for the other synthetic datasets.
  rng = np.random.default_rng(np.asarray(jax.random.key_data(
      jax.random.fold_in(key, _SIZES_TAG))).ravel())
  sizes = rng.integers(data.min_examples, data.max_examples + 1,
                       size=data.num_clients)
  test_sizes = np.ceil(data.test_fraction * sizes).astype(np.int64)
  dataset = images.synthetic_image_clients(
      key, num_clients=data.num_clients,
      examples_per_client=sizes - test_sizes,
      test_examples_per_client=test_sizes,
      image_shape=tuple(data.image_shape), separation=data.separation,
  )
  return dataclasses.replace(dataset, name=data.dataset)


def _check_two_classes(dataset, path) -> None:
  """Reject image data whose labels hold fewer than two classes."""
  labels = set()
  for split in (dataset.train, dataset.test):
    y = np.asarray(split.examples['y'])
    for client, count in enumerate(np.asarray(split.num_examples)):
      labels.update(np.unique(y[client, :count]).tolist())
  if len(labels) < 2:
    raise InputError(
        f'The images in {path} have {len(labels)} class(es) with images '
        f'({sorted(labels)}); a classifier needs at least two. Add the '
        'other class folders or labels.'
    )


def build_model(
    model: config_lib.ModelConfig,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
) -> tabular.Model:
  """Return the configured model.

  `input_shape` is the shape of one example, `x.shape[2:]` of the data. An
  image model needs `(height, width, channels)`; a model of feature rows
  needs `(features,)` (or None, which skips the check).

  Raises:
    InputError: if the model does not fit the shape of the examples.
  """
  is_image_model = model.model in config_lib.IMAGE_MODELS
  if input_shape is not None or is_image_model:
    rank = None if input_shape is None else len(input_shape)
    if is_image_model and rank != 3:
      raise InputError(
          f'`model.model={model.model}` needs images shaped [height, width, '
          f'channels], but the examples have shape {input_shape}. Use an '
          'image dataset (digits, synthetic_images, image_folder, '
          'image_npz) or `model.model` logistic_regression or mlp.'
      )
    if not is_image_model and rank != 1:
      raise InputError(
          f'`model.model={model.model}` needs rows of features, but the '
          f'examples have shape {input_shape}. Use `model.model` cnn, '
          'resnet or pfl_cnn for images.'
      )
  if model.model == 'pfl_cnn' and min(input_shape[:2]) < 6:
    raise InputError(
        f'`model.model=pfl_cnn` needs images of at least 6x6 pixels (two '
        'valid 3x3 convolutions, then a 2x2 pool); the examples are '
        f'{input_shape[0]}x{input_shape[1]}. Use larger images or '
        '`model.model=cnn`.'
    )
  if model.model == 'cox':
    return study_survival.build_cox_model()
  if model.model == 'resnet':
    module = cnn.ResNet(num_classes, widths=tuple(model.widths),
                        norm=model.norm)
    return cnn.from_flax_stateful(module, num_classes, input_shape)
  if model.model == 'cnn':
    module = cnn.LeNet5(num_classes)
  elif model.model == 'pfl_cnn':
    module = cnn.PflCNN(num_classes)
  elif model.model == 'mlp':
    module = tabular.MLP(num_classes, tuple(model.hidden_sizes))
  else:
    module = tabular.LogisticRegression(num_classes)
  return tabular.from_flax(module, num_classes)


def build_optimizer(name: str, learning_rate: float, *, tau: float = 1e-3):
  """Return the optimizer `name` with `learning_rate`.

  `tau` is the adaptivity of the FedOpt optimizers 'fedadam', 'fedyogi' and
  'fedadagrad'; the others ignore it.
  """
  if name == 'momentum':
    return server_optimizers.fed_avg_m(learning_rate, momentum=0.9)
  if name == 'fedadam':
    return server_optimizers.fed_adam(learning_rate, tau=tau)
  if name == 'fedyogi':
    return server_optimizers.fed_yogi(learning_rate, tau=tau)
  if name == 'fedadagrad':
    return server_optimizers.fed_adagrad(learning_rate, tau=tau)
  return getattr(optax, name)(learning_rate)


def build_sampler(
    sampling_config: config_lib.SamplingConfig, num_clients: int
) -> sampling.Sampler:
  """Return the configured sampler, checking the cohort against the data."""
  if sampling_config.sampling == 'all':
    return sampling.uniform_sampler(num_clients, num_clients)
  if sampling_config.sampling == 'poisson':
    return sampling.poisson_sampler(num_clients, sampling_config.sampling_rate)
  if sampling_config.cohort_size > num_clients:
    raise InputError(
        f'Invalid `sampling.cohort_size`: {sampling_config.cohort_size} is '
        f'larger than the population of {num_clients} clients. Use a cohort '
        f'of at most {num_clients}, or `sampling=all`.'
    )
  return sampling.uniform_sampler(num_clients, sampling_config.cohort_size)


def build_local_update(
    client: config_lib.ClientConfig,
    model: tabular.Model,
    train: federated.FederatedData,
    *,
    report_initial_loss: bool = False,
    learning_rate=None,
    proximal_mu=None,
    max_client_examples: int | None = None,
    min_client_examples: int | None = None,
    cox_loss_normalization: str | None = None,
) -> local_training.LocalUpdate:
  """Return a client's local training as the config describes it.

  `learning_rate` (a number, array or schedule) and `proximal_mu` (a number
  or array) replace the config's values when given. A
  `cox_loss_normalization` ('events' or 'rows') trains the Cox model of a
  survival study with that loss instead of a classifier. With `local_epochs`,
  the scan covers the largest client of `train`, or `max_client_examples`
  rows when given. The smallest client with rows, or
  `min_client_examples`, bounds the epochs a client reaches, so each
  epoch's shuffle is drawn once.
  """
  if learning_rate is None:
    learning_rate = client.learning_rate
  if proximal_mu is None:
    proximal_mu = client.proximal_mu
  optimizer = build_optimizer(client.optimizer, learning_rate)
  num_steps = _num_local_steps(client, train, max_client_examples)
  unroll = _unroll(client, train, num_steps)
  padded = max(train.max_examples, 1)
  if min_client_examples is None:
    min_client_examples = _fewest_rows(train)
  if cox_loss_normalization is not None:
    # The Cox loss also averages over a batch's real rows or events, so a
    # batch larger than every client is the full batch.
    return study_survival.build_local_update(
        dataclasses.replace(client,
                            batch_size=min(client.batch_size, padded)),
        model, optimizer, loss_normalization=cox_loss_normalization,
        num_steps=num_steps, proximal_mu=proximal_mu,
        report_initial_loss=report_initial_loss,
        min_client_examples=min_client_examples, unroll=unroll,
    )
  if client.dp_sgd:
    if client.batch_size > padded:
      # DP-SGD divides by the batch size, so a larger batch is not the full
      # batch; and a batch of 1e9 rows ran out of memory.
      raise InputError(
          f'`client.batch_size={client.batch_size}` is larger than the '
          f'largest client ({padded} rows). DP-SGD divides each noisy sum by '
          f'the batch size, so use at most {padded}.'
      )
    return dp_sgd.build_dp_sgd_local_update(
        model,
        optimizer,
        num_steps=num_steps,
        batch_size=client.batch_size,
        l2_norm_clip=client.example_clip_norm,
        noise_multiplier=client.example_noise_multiplier,
        num_epochs=client.local_epochs,
        proximal_mu=proximal_mu,
        unroll=unroll,
    )
  # Plain training averages over the real rows of a batch, so a batch
  # larger than every client is the full batch, however large.
  return local_training.build_local_update(
      model,
      optimizer,
      num_steps=num_steps,
      batch_size=min(client.batch_size, padded),
      num_epochs=client.local_epochs,
      proximal_mu=proximal_mu,
      report_initial_loss=report_initial_loss,
      compute_dtype=client.compute_dtype,
      min_client_examples=min_client_examples,
      unroll=unroll,
  )


def _num_local_steps(client, train, max_client_examples=None) -> int:
  """Return the length of a client's scan of local steps."""
  if client.local_epochs is None:
    return client.local_steps
  if max_client_examples is None:
    max_client_examples = int(np.max(train.num_examples))
  steps = local_training.max_local_steps(
      max_client_examples, client.batch_size, client.local_epochs
  )
  # A Python int here; as the scan's length it overflowed int32
  # (`local_epochs=100000000` raised OverflowError from JAX).
  limit = config_lib.MAX_LOCAL_STEPS
  if steps > limit:
    per_epoch = steps // client.local_epochs
    raise InputError(
        f'`client.local_epochs` {client.local_epochs} takes {steps:,} steps '
        f'for the largest client ({max_client_examples} rows in batches of '
        f'{client.batch_size}), beyond the {limit:,} a round can count. Use '
        f'at most {limit // per_epoch:,} epochs, or a larger '
        '`client.batch_size`.'
    )
  return steps


def _unroll(client, train, step_copies: int) -> bool:
  """Return whether to unroll loops holding `step_copies` local steps.

  Automatic unrolling is for image data (convolutions) on a CPU backend,
  where XLA runs a convolution inside a loop body far slower than outside.
  """
  if client.unroll_loops is not None:
    return client.unroll_loops
  is_image = np.ndim(train.examples['x']) == 5
  return (is_image and jax.default_backend() == 'cpu'
          and step_copies <= MAX_AUTO_UNROLLED_STEPS)


def _fewest_rows(train: federated.FederatedData) -> int:
  """Return the fewest rows of a client with rows (1 if none has any)."""
  counts = np.asarray(train.num_examples)
  counts = counts[counts > 0]
  return int(np.min(counts)) if counts.size else 1


def aggregator_options(config) -> dict[str, Any]:
  """Return the robust-aggregator settings for `build_round`."""
  server = config.server
  return {
      'num_byzantine': server.num_byzantine,
      'trim_fraction': server.trim_fraction,
      'num_selected': server.num_selected,
      'max_norm': server.max_norm,
      'num_iterations': server.num_iterations,
      'clip_radius': server.clip_radius,
      'qffl_q': server.qffl_q,
      'lipschitz': 1.0 / config.client.learning_rate,
  }


def _diverged(round_number: int, what: str) -> TrainingDiverged:
  return TrainingDiverged(
      f'Training diverged in round {round_number}: {what}. Lower '
      '`client.learning_rate` or `server.server_learning_rate`, or set '
      '`privacy.clip_norm`.'
  )


def _checked_evaluation(evaluate, state, round_number):
  """Evaluate `state`'s model, raising TrainingDiverged on NaN or inf outputs."""
  evaluation = evaluate(state)
  num_nonfinite = int(np.sum(np.asarray(evaluation.num_nonfinite)))
  if num_nonfinite:
    survival = isinstance(evaluation, evaluate_survival.SurvivalEvaluation)
    outputs_name = 'log-risks' if survival else 'probabilities'
    raise _diverged(
        round_number,
        f'the global model outputs NaN or infinite {outputs_name} for '
        f'{num_nonfinite} test rows',
    )
  return evaluation


def _client_accuracy(evaluation: evaluate_lib.ClientEvaluation) -> list:
  return [None if np.isnan(value) else float(value)
          for value in np.asarray(evaluation.accuracy)]


def _accuracy_summary(accuracies: list) -> dict[str, Any]:
  present = [value for value in accuracies if value is not None]
  return {
      'mean_accuracy': float(np.mean(present)) if present else None,
      'worst_accuracy': float(np.min(present)) if present else None,
      'p10_accuracy': float(np.percentile(present, 10)) if present else None,
  }


# Names of clients without training rows listed in summary.json at most.
_MAX_UNTRAINED_NAMES = 20


def _untrained_clients(dataset) -> dict[str, Any]:
  """Return the count and first names of clients with no training rows.

  Such a client never trains; its test accuracy measures the global model.
  """
  counts = np.asarray(dataset.train.num_examples)
  names = [name for name, count in zip(dataset.client_names, counts)
           if count == 0]
  return {
      'num_clients_without_training_rows': len(names),
      'clients_without_training_rows': names[:_MAX_UNTRAINED_NAMES],
  }


def fairness_summary(
    accuracies: list, train_counts: np.ndarray, *, metric: str = 'accuracy'
) -> dict[str, Any]:
  """Summarize how evenly accuracy (or `metric`) is spread over the clients.

  Args:
    accuracies: per-client test accuracy, or the per-client values of
      `metric`; None for a client without a value, which is left out.
    train_counts: `[clients]` training examples, to rank clients by size.
    metric: the name in the keys, such as 'c_index' for `std_c_index`.

  Returns:
    The standard deviation, best and worst value and their gap, and the
    mean value of the smallest and the largest quarter of the clients by
    training examples (at least one client each; ties keep client order).
  """
  present = [i for i, value in enumerate(accuracies) if value is not None]
  if not present:
    return {}
  values = np.array([accuracies[i] for i in present])
  by_size = sorted(present, key=lambda i: train_counts[i])
  quarter = max(1, len(by_size) // 4)
  return {
      f'std_{metric}': float(np.std(values)),
      f'best_{metric}': float(np.max(values)),
      f'worst_{metric}': float(np.min(values)),
      'best_worst_gap': float(np.max(values) - np.min(values)),
      f'smallest_clients_{metric}': float(
          np.mean([accuracies[i] for i in by_size[:quarter]])),
      f'largest_clients_{metric}': float(
          np.mean([accuracies[i] for i in by_size[-quarter:]])),
      'clients_per_quarter': quarter,
  }


def _binary_test_scores(dataset, evaluation):
  """Return `(name, labels, scores)` per client for a binary task, else [].

  The scores are the final model's probabilities of label 1 on the client's
  real test rows, the input of the clinical metrics.
  """
  if dataset.num_classes != 2:
    return []
  labels = np.asarray(dataset.test.examples['y'])
  scores = np.asarray(evaluation.probabilities)[..., 1]
  counts = np.asarray(dataset.test.num_examples)
  return [(name, labels[index, :counts[index]], scores[index, :counts[index]])
          for index, name in enumerate(dataset.client_names)]


def _write_predictions(path: pathlib.Path, per_client) -> None:
  """Write each test patient's client, label and score, if there are any.

  With the scores on disk, any other metric or plot can be computed later.
  """
  if not per_client:
    return
  rows = [(name, int(label), f'{float(score):.9g}')
          for name, labels, scores in per_client
          for label, score in zip(labels, scores)]
  outputs.write_csv(path, ('client', 'label', 'score'), rows)


def _clinical_reports(config, per_client) -> dict[str, Any]:
  """Per-client clinical metrics with bootstrap intervals (binary tasks)."""
  return {
      name: clinical.clinical_report(
          labels, scores,
          threshold=config.evaluation.threshold,
          num_resamples=config.evaluation.bootstrap_resamples,
          confidence=config.evaluation.confidence,
          seed=federated.derived_seed('clinical_bootstrap', config.seed,
                                      index),
      )
      for index, (name, labels, scores) in enumerate(per_client)
  }


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What a study builds from its config before the first round.

  Attributes:
    dataset: the clients' data, repartitioned if the config sets a partition.
    sampler: the cohort sampler.
    model: the classifier.
    noise_multiplier: the configured or calibrated DP noise multiplier.
    privacy: the round's clipping and noise settings.
    accountant: the privacy accountant, or None without DP.
    malicious: `[clients]` mask of the attackers, or None.
    num_malicious: number of attackers.
    train: the training data after any data poisoning.
  """

  dataset: federated.FederatedDataset
  sampler: sampling.Sampler
  model: tabular.Model
  noise_multiplier: float
  privacy: round_lib.PrivacySettings
  accountant: Any
  malicious: jax.Array | None
  num_malicious: int
  train: federated.FederatedData


def prepare(config: config_lib.ExperimentConfig) -> Prepared:
  """Load the data and build everything the rounds need but the round.

  `config` must have passed `config_lib.validate`.

  Raises:
    InputError: for settings that do not fit the data.
  """
  dataset = load_dataset(config.data, config.seed)
  sampler = build_sampler(config.sampling, dataset.num_clients)
  model = build_model(config.model, dataset.num_classes,
                      dataset.train.examples['x'].shape[2:])
  noise_multiplier = study_privacy.resolve_noise_multiplier(
      config, dataset.num_clients
  )
  privacy = study_privacy.privacy_settings(
      config, np.asarray(dataset.train.num_examples), noise_multiplier
  )
  accountant = study_privacy.build_accountant(
      config, dataset.num_clients, noise_multiplier
  )
  if config.secure_aggregation.enabled:
    # Planning the encoding here turns an unusable scale or ring into an
    # input error before any output is written.
    secure_plan = study_privacy.secure_plan(
        config, privacy, _cohort_size(sampler),
        _num_parameters(model, dataset.train))
    if config.privacy.noise == 'distributed':
      accountant = study_privacy.build_secure_accountant(
          config, privacy, secure_plan)
  study_privacy.check_against_data(config, dataset.num_clients, accountant)
  study_attacks.check_against_data(
      config, dataset.train.examples['x'].shape[-1], dataset.num_classes,
      dataset.num_clients,
  )
  attack_key = jax.random.fold_in(jax.random.key(config.seed), _ATTACK_TAG)
  malicious = study_attacks.choose_malicious(
      config, dataset.num_clients, attack_key
  )
  num_malicious = 0 if malicious is None else int(np.sum(malicious))
  train = study_attacks.poison_data(
      config, jax.device_put(dataset.train), malicious, dataset.num_classes,
      key=attack_key,
  )
  return Prepared(
      dataset=dataset, sampler=sampler, model=model,
      noise_multiplier=noise_multiplier, privacy=privacy,
      accountant=accountant, malicious=malicious,
      num_malicious=num_malicious, train=train,
  )


def _cohort_size(sampler) -> int:
  return jax.eval_shape(sampler, jax.random.key(0)).client_ids.shape[0]


def _num_parameters(model, train) -> int:
  sample_x = jnp.asarray(train.examples['x'][0, :1])
  shapes = jax.eval_shape(model.init, jax.random.key(0), sample_x)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def build_round_fn(
    config: config_lib.ExperimentConfig,
    prepared: Prepared,
    *,
    train: federated.FederatedData | None = None,
    learning_rate=None,
    server_learning_rate=None,
    proximal_mu=None,
    noise_multiplier=None,
    max_client_examples: int | None = None,
    min_client_examples: int | None = None,
):
  """Build the study's round, optionally with some values replaced.

  The keyword values replace the config's `client.learning_rate`,
  `server.server_learning_rate`, `client.proximal_mu`, the noise
  multiplier and the training data (`max_client_examples` and
  `min_client_examples` describe the clients of every replacement, as in
  `build_local_update`). They may be traced
  arrays, so that
  `fedjax_med.sweep` can map one compiled round over many experiments; the
  config's values are checked, the replacements are not.

  Returns:
    `(round_fn, server_optimizer)`.
  """
  traced_rates = learning_rate is not None or server_learning_rate is not None
  if learning_rate is None:
    learning_rate = config.client.learning_rate
  if server_learning_rate is None:
    server_learning_rate = config.server.server_learning_rate
  if traced_rates:
    # The FedOpt optimizers accept a schedule where they would reject an
    # array; a constant schedule gives the same steps.
    learning_rate = _constant_schedule(learning_rate)
    server_learning_rate = _constant_schedule(server_learning_rate)
  client = config.client
  local_update = build_local_update(
      client, prepared.model, prepared.dataset.train,
      report_initial_loss=config.server.aggregator == 'qffl',
      learning_rate=learning_rate, proximal_mu=proximal_mu,
      max_client_examples=max_client_examples,
      min_client_examples=min_client_examples,
      cox_loss_normalization=(
          config.model.cox_loss_normalization
          if study_survival.is_survival(config) else None),
  )
  server_optimizer = build_optimizer(
      config.server.server_optimizer, server_learning_rate,
      tau=config.server.server_tau,
  )
  privacy = prepared.privacy
  if noise_multiplier is not None:
    privacy = privacy._replace(noise_multiplier=noise_multiplier)
  step_size = (config.client.learning_rate if not traced_rates
               else learning_rate(0))
  options = aggregator_options(config)
  options['lipschitz'] = 1.0 / step_size
  try:
    round_fn = round_lib.build_round(
        prepared.train if train is None else train,
        local_update,
        prepared.sampler,
        server_optimizer,
        aggregator=config.server.aggregator,
        privacy=privacy,
        dropout_rate=config.sampling.dropout_rate,
        attack=study_attacks.build_attack(
            config, prepared.dataset.num_clients, prepared.num_malicious
        ),
        malicious=prepared.malicious,
        aggregator_options=options,
        scaffold_learning_rate=step_size if client.scaffold else None,
        fednova=config.server.fednova,
        fednova_proximal=(step_size * (client.proximal_mu
                                       if proximal_mu is None
                                       else proximal_mu)
                          if config.server.fednova else 0.0),
        personal_update=_personal_update(
            config, prepared, learning_rate, max_client_examples,
            min_client_examples),
        chunk_size=chunk_size(config, prepared),
        mesh=client_mesh() if config.client.shard_over_devices else None,
        secure_aggregation=study_privacy.secure_settings(config),
        local_mask=_local_mask(config, prepared),
        unroll_chunks=_unroll_chunks(config, prepared, max_client_examples),
        participation=study_participation.participation_settings(
            config, prepared.dataset.num_clients),
        compression=study_participation.compression_settings(config),
    )
  except ValueError as error:
    # Settings that only fail against the data, such as a noise multiplier
    # too large for the count noise of adaptive clipping.
    raise InputError(str(error)) from None
  return round_fn, server_optimizer


def initial_state(
    config: config_lib.ExperimentConfig,
    prepared: Prepared,
    server_optimizer: optax.GradientTransformation,
    root_key: jax.Array,
) -> round_lib.ServerState:
  """Return the server state before round 1, params drawn from `root_key`."""
  sample_x = jnp.asarray(prepared.dataset.train.examples['x'][0, :1])
  params = prepared.model.init(
      jax.random.fold_in(root_key, _INIT_TAG), sample_x
  )
  return round_lib.init_server_state(
      params, server_optimizer,
      clip_norm=(config.privacy.clip_norm
                 if prepared.privacy.adaptive_clipping else None),
      aggregator=config.server.aggregator,
      scaffold_clients=(prepared.dataset.num_clients
                        if config.client.scaffold else None),
      personal_clients=(prepared.dataset.num_clients
                        if config.client.ditto_lambda is not None else None),
      local_mask=_local_mask(config, prepared),
      local_clients=(prepared.dataset.num_clients if config.client.fedbn
                     else None),
      num_clients=(prepared.dataset.num_clients
                   if study_participation.tracks(config) else None),
      error_feedback=study_participation.error_feedback(config),
  )


def _unroll_chunks(config, prepared, max_client_examples) -> bool:
  """Return whether the cohort's chunks run unrolled (see `_unroll`)."""
  size = chunk_size(config, prepared)
  if size is None:
    return False
  cohort = _cohort_size(prepared.sampler)
  num_steps = _num_local_steps(config.client, prepared.train,
                               max_client_examples)
  return _unroll(config.client, prepared.train,
                 -(-cohort // size) * num_steps)


def _local_mask(config, prepared):
  """Return FedBN's mask of client-local leaves, or None when it is off."""
  if not config.client.fedbn:
    return None
  sample_x = jnp.asarray(prepared.dataset.train.examples['x'][0, :1])
  shapes = jax.eval_shape(prepared.model.init, jax.random.key(0), sample_x)
  return cnn.norm_mask(shapes)


def evaluated_params(state: round_lib.ServerState):
  """Return the params to evaluate: per client under FedBN, else global."""
  if state.local is None:
    return state.params
  return local_leaves.client_params(state.params, state.local)


def build_study_evaluate(config, model, test):
  """Return `evaluate(state) -> ClientEvaluation` over `test`.

  Under FedBN each client is evaluated with the global params and its own
  normalization layers. A survival study gets a `SurvivalEvaluation`
  (Harrell's C-index) instead.
  """
  if study_survival.is_survival(config):
    return study_survival.build_evaluate(model, test, evaluated_params)
  evaluate = evaluate_lib.build_evaluate(
      model, jax.device_put(test), threshold=config.evaluation.threshold,
      personalized=config.client.fedbn,
  )
  return lambda state: evaluate(evaluated_params(state))


def chunk_size(
    config: config_lib.ExperimentConfig, prepared: Prepared
) -> int | None:
  """Return how many clients train at once, or None for the whole cohort.

  `client.chunk_size` when set. Otherwise the whole cohort if its rows and
  training state fit in `AUTO_CHUNK_BYTES`, else as many clients as fit.
  The size per client is an estimate: its padded rows plus
  `_TRAINING_COPIES` copies of the params. Under `client.shard_over_devices` the chunk is rounded up to
  a multiple of the device count, so every device gets equal work.
  """
  cohort = jax.eval_shape(
      prepared.sampler, jax.random.key(0)).client_ids.shape[0]
  size = config.client.chunk_size
  if size is None:
    train = prepared.train
    row_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(train.examples))
    sample_x = jnp.zeros((1,) + train.examples['x'].shape[2:], jnp.float32)
    params = jax.eval_shape(prepared.model.init, jax.random.key(0), sample_x)
    param_bytes = sum(leaf.size * leaf.dtype.itemsize
                      for leaf in jax.tree.leaves(params))
    per_client = (row_bytes / train.num_clients
                  + _TRAINING_COPIES * param_bytes)
    if cohort * per_client <= AUTO_CHUNK_BYTES:
      return None
    size = max(1, int(AUTO_CHUNK_BYTES // per_client))
  if config.client.shard_over_devices:
    devices = jax.device_count()
    size = -(-size // devices) * devices
  return None if size >= cohort else size


def client_mesh() -> jax.sharding.Mesh:
  """Return a mesh of every device in `jax.devices()`, with one axis 'clients'."""
  return jax.sharding.Mesh(np.array(jax.devices()), ('clients',))


def _personal_update(config, prepared, learning_rate, max_client_examples,
                     min_client_examples):
  """Return Ditto's personal training, or None when Ditto is off.

  The personal model never leaves its client, so it trains without DP-SGD
  even when the global update uses it.
  """
  client = config.client
  if client.ditto_lambda is None:
    return None
  personal = dataclasses.replace(
      client, proximal_mu=client.ditto_lambda, scaffold=False, dp_sgd=False)
  return build_local_update(
      personal, prepared.model, prepared.dataset.train,
      learning_rate=learning_rate, max_client_examples=max_client_examples,
      min_client_examples=min_client_examples,
  )


def _constant_schedule(value):
  if callable(value):
    return value
  return lambda count: value


def _build_run(config: config_lib.ExperimentConfig) -> dict[str, Any]:
  """Build everything a run needs before its first round: data, round, evaluation."""
  prepared = prepare(config)
  dataset, model = prepared.dataset, prepared.model
  round_fn, server_optimizer = build_round_fn(config, prepared)
  evaluate = build_study_evaluate(config, model, dataset.test)
  triggered = study_attacks.triggered_test_data(config, dataset.test)
  evaluate_triggered = None
  if triggered is not None:
    evaluate_triggered = build_study_evaluate(config, model, triggered)
  root_key = jax.random.key(config.seed)
  state = initial_state(config, prepared, server_optimizer, root_key)
  # The per-client score of every evaluated round, under its own name.
  scores_key = ('client_c_index' if study_survival.is_survival(config)
                else 'client_accuracy')
  history = {'rounds': [], scores_key: [], 'scores_key': scores_key,
             'skipped': 0, 'local_model': model,
             'state': state, 'start': time.perf_counter(), 'done': 0,
             'accountant': prepared.accountant, 'privacy': prepared.privacy,
             'secure_plan': round_fn.secure_plan(state.params),
             'secure_rounds': [],
             'below_min_reporting': 0, 'stopped_at_target': False,
             'attack': study_attacks.describe(
                 config, prepared.malicious, dataset.client_names,
                 prepared.num_malicious,
             ),
             'backdoor': None if evaluate_triggered is None else (
                 evaluate_triggered, triggered,
                 ~np.asarray(prepared.malicious, bool),
             )}
  history['snapshot'] = _snapshot(history, 0, state)
  history['config'] = json.loads(json.dumps(
      outputs.to_json_value(config_lib.to_dict(config))))
  return {
      'prepared': prepared, 'round_fn': round_fn, 'evaluate': evaluate,
      'rounds_key': jax.random.fold_in(root_key, _ROUNDS_TAG),
      'history': history,
  }


def _snapshot(history, done, state):
  """Return the contents of a checkpoint after `done` rounds, as one value.

  It is replaced with one assignment at the end of each round, so an
  interrupt never reads the state of one round with the counters of another.
  """
  return (done, state, {
      'skipped': history['skipped'],
      'below_min_reporting': history['below_min_reporting'],
      'stopped_at_target': history['stopped_at_target'],
      'num_evaluated': len(history['rounds']),
      'num_secure_rounds': len(history['secure_rounds']),
      'elapsed_s': time.perf_counter() - history['start'],
  })


def _save_snapshot(checkpointer, history) -> None:
  done, state, counters = history['snapshot']
  evaluated = counters['num_evaluated']
  progress = {
      'config': history['config'],
      'rounds_done': done,
      'skipped': counters['skipped'],
      'below_min_reporting': counters['below_min_reporting'],
      'stopped_at_target': counters['stopped_at_target'],
      'elapsed_s': counters['elapsed_s'],
      'evaluated_rounds': history['rounds'][:evaluated],
      history['scores_key']: history[history['scores_key']][:evaluated],
      'secure_rounds': history['secure_rounds'][
          :counters['num_secure_rounds']],
  }
  checkpointer.save(done, state, progress)


def run_study(
    config: config_lib.ExperimentConfig,
    out_dir: pathlib.Path | str | None = None,
    *,
    progress: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_interval_s: float = checkpoint_lib.DEFAULT_INTERVAL_S,
    tensorboard: bool = False,
    data_check: Callable[[tuple[pathlib.Path, ...]], None] | None = None,
) -> tuple[pathlib.Path, dict[str, Any]]:
  """Run a study and write its output folder.

  Args:
    config: the study; checked with `config.validate` first.
    out_dir: output folder, created if missing and required to be empty;
      None picks a fresh folder under `runs/`.
    progress: show a progress bar on stderr.
    on_round: called with each round's record after it is written.
    checkpoint_interval_s: save a checkpoint of the server state every
      this many seconds, and on Ctrl-C; 0 saves after every round.
      `resume_study` continues from the newest one.
    tensorboard: also write each round's metrics as TensorBoard scalars to
      `tensorboard/` in the run folder (needs the `tensorboardX` package).
    data_check: called with the data files once they are loaded, before the
      output folder is created; it raises to refuse them. A sweep uses it
      to keep its points on the files it started with.

  Returns:
    The output folder and the summary written to `summary.json`.

  Raises:
    InputError: for an invalid config value or data file.
    TrainingDiverged: when the global model's parameters become NaN or
      infinite; `summary.json` then has `status: diverged` and no accuracy.
    StudyInterrupted: on Ctrl-C, after the finished rounds and a checkpoint
      of the last one are on disk.
  """
  config_lib.validate(config)
  check_checkpoint_interval(checkpoint_interval_s)
  if tensorboard:
    tensorboard_lib.require()
  config = dataclasses.replace(
      config_lib.with_absolute_paths(config),
      name=config_lib.run_name(config))
  run = _build_run(config)
  dataset = run['prepared'].dataset
  if data_check is not None:
    data_check(dataset.source_files)
  run_dir = outputs.make_run_dir(
      None if out_dir is None else pathlib.Path(out_dir), config.name
  )
  outputs.write_json(run_dir / 'config.json', config_lib.to_dict(config))
  record = provenance.collect(dataset.source_files)
  # A resume compares it, so that an edited config.json is rejected also
  # when no checkpoint contains the config to compare with.
  record['config_sha256'] = provenance.sha256_file(run_dir / 'config.json')
  outputs.write_json(run_dir / 'provenance.json', record)
  with outputs.lock_run_dir(run_dir):
    return _continue(config, run, run_dir, progress=progress,
                     on_round=on_round,
                     checkpoint_interval_s=checkpoint_interval_s,
                     tensorboard=tensorboard, kept_records=[])


def resume_study(
    run_dir: pathlib.Path | str,
    *,
    progress: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_interval_s: float = checkpoint_lib.DEFAULT_INTERVAL_S,
    tensorboard: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[pathlib.Path, dict[str, Any]]:
  """Continue a stopped study from its newest checkpoint.

  The config comes from the folder's `config.json`. Lines of
  `metrics.jsonl` after the checkpoint are removed and those rounds run
  again, so each round appears once, with the values an uninterrupted run
  gives. The newest checkpoint that is readable and not past the intact
  rounds of `metrics.jsonl` is used; without one, the run starts again
  from round 1. A folder whose study already finished is left as it is and
  its summary returned.

  Args:
    run_dir: the folder of a run started by `run_study`.
    progress, on_round, checkpoint_interval_s, tensorboard: as in
      `run_study`.
    log: receives one line on where the run continues from and on each
      checkpoint passed over; None prints nothing.

  Returns:
    The output folder and the summary written to `summary.json`.

  Raises:
    InputError: if `run_dir` is not a run folder, its data files or
      `config.json` changed since the run started, the run diverged, or
      another process is running it.
    TrainingDiverged, StudyInterrupted: as `run_study`.
  """
  check_checkpoint_interval(checkpoint_interval_s)
  if tensorboard:
    tensorboard_lib.require()
  log = log or (lambda line: None)
  run_dir = outputs.existing_run_dir(run_dir)
  try:
    saved = json.loads((run_dir / 'config.json').read_text())
  except (OSError, ValueError):
    raise InputError(
        f'{run_dir} is not a run folder: it has no readable config.json. '
        'Pass the folder of a run started with `fedjax-med run`.'
    ) from None
  summary_path = run_dir / 'summary.json'
  if summary_path.exists():
    summary = outputs.read_json(summary_path)
    if summary.get('status') == 'diverged':
      raise InputError(
          f'The run in {run_dir} diverged at round '
          f"{summary.get('diverged_round')}; resuming would diverge again. "
          'Start a new run with a smaller learning rate or clip norm.'
      )
    log(f'{run_dir} already finished; nothing to resume.')
    return run_dir, summary
  if not isinstance(saved, dict):
    raise InputError(
        f'{run_dir}/config.json is not a config (a JSON object). Restore '
        'it, or start a new run.')
  config = config_lib.from_document(saved)
  config_lib.validate(config)
  with outputs.lock_run_dir(run_dir):
    run = _build_run(config)
    recorded = _check_same_data(run_dir, run['prepared'].dataset)
    history = run['history']
    restored = _restore_newest(run_dir, history, log)
    if restored is None:
      # A checkpoint's config is compared key by key in `_restore_newest`;
      # without one, only the hash recorded at the start can tell.
      _check_config_hash(run_dir, recorded)
    done = 0 if restored is None else restored.rounds_done
    kept = checkpoint_lib.truncate_metrics(run_dir / 'metrics.jsonl', done)
    if restored is None:
      log(f'No usable checkpoint in {run_dir}: running all '
          f'{config.server.rounds} rounds from round 1 (same seed, same '
          'result).')
    else:
      log(f'Resuming {run_dir} after round {done} of '
          f'{config.server.rounds}.')
      saved_progress = restored.progress
      history.update(
          state=restored.state, done=done,
          skipped=saved_progress['skipped'],
          below_min_reporting=saved_progress['below_min_reporting'],
          stopped_at_target=saved_progress['stopped_at_target'],
          rounds=list(saved_progress['evaluated_rounds']),
          **{history['scores_key']: [
              list(row) for row in saved_progress[history['scores_key']]]},
          secure_rounds=list(saved_progress['secure_rounds']),
          start=time.perf_counter() - saved_progress['elapsed_s'],
      )
      if history['accountant'] is not None:
        history['accountant'].step(done)
      history['snapshot'] = _snapshot(history, done, restored.state)
    return _continue(config, run, run_dir, progress=progress,
                     on_round=on_round,
                     checkpoint_interval_s=checkpoint_interval_s,
                     tensorboard=tensorboard, kept_records=kept)


def _flat(document, prefix=''):
  items = {}
  for key, value in document.items():
    if isinstance(value, dict):
      items.update(_flat(value, f'{prefix}{key}.'))
    else:
      items[f'{prefix}{key}'] = value
  return items


def _restore_newest(run_dir, history, log):
  """Restore the newest usable checkpoint of `run_dir`, or return None.

  A checkpoint is usable when it is readable and no later than the intact
  rounds of `metrics.jsonl`, so that no round goes missing from the file.

  Raises:
    InputError: if a checkpoint was saved with another config than
      `config.json` now holds.
  """
  intact = checkpoint_lib.valid_rounds(run_dir / 'metrics.jsonl')
  checkpointer = checkpoint_lib.Checkpointer(run_dir, 0)
  try:
    for step in reversed(checkpointer.all_steps()):
      if step > intact:
        log(f'Passing over the checkpoint of round {step}: metrics.jsonl '
            f'holds rounds 1 to {intact} intact, so an older checkpoint is '
            'used and the rounds after it run again.')
        continue
      try:
        saved = checkpointer.restore_progress(step)
      # Orbax and tensorstore raise many kinds of error for a damaged
      # checkpoint (KeyError, ValueError, OSError, JSON errors).
      except Exception as error:  # pylint: disable=broad-exception-caught
        log(f'Passing over the unreadable checkpoint of round {step} '
            f'({type(error).__name__}).')
        continue
      if saved.get('config') not in (None, history['config']):
        before, now = _flat(saved['config']), _flat(history['config'])
        changed = sorted(key for key in before.keys() | now.keys()
                         if before.get(key) != now.get(key))
        raise InputError(
            f'{run_dir}/config.json changed since the run started '
            f'({", ".join(changed)}), so its checkpoints do not fit it. '
            'Restore config.json, or start a new run with the new settings.'
        )
      try:
        return checkpointer.restore(history['state'], step)
      except Exception as error:  # pylint: disable=broad-exception-caught
        log(f'Passing over the unreadable checkpoint of round {step} '
            f'({type(error).__name__}).')
    return None
  finally:
    checkpointer.close()


def check_checkpoint_interval(interval_s) -> None:
  """Raise `InputError` unless `interval_s` is a finite number, 0 or more."""
  if (isinstance(interval_s, bool)
      or not isinstance(interval_s, (int, float))
      or not math.isfinite(interval_s) or interval_s < 0):
    raise InputError(
        f'Invalid checkpoint interval {interval_s!r} (--checkpoint-every, '
        'checkpoint_interval_s): give a finite number of seconds, 0 or more. '
        '0 saves after every round.'
    )


def _check_same_data(run_dir: pathlib.Path, dataset) -> dict[str, Any]:
  """Refuse to resume when a data file changed since the run started.

  `provenance.json` is written right after `config.json` when a run
  starts, so without it the check cannot run, and a resume could train on
  other data without notice. Returns the provenance record.
  """
  try:
    record = json.loads((run_dir / 'provenance.json').read_text())
    recorded = record['data_files']
  except (OSError, ValueError, KeyError, TypeError):
    raise DataCheckError(
        f'{run_dir}/provenance.json is missing or unreadable, so the resume '
        'cannot check that the data files are unchanged. Restore it, or '
        'start a new run.'
    ) from None
  current = {str(pathlib.Path(path).resolve()) for path in
             dataset.source_files}
  added = sorted(current - set(recorded))
  removed = sorted(set(recorded) - current)
  if added or removed:
    listed = ', '.join((added + removed)[:3])
    raise DataCheckError(
        f'The data files differ from those of the run in {run_dir}: '
        f'{len(added)} added and {len(removed)} missing ({listed}). A '
        'relative data path may resolve to another folder from here. '
        'Restore the files, resume from the original folder, or start a '
        'new run.'
    )
  for path in dataset.source_files:
    key = str(pathlib.Path(path).resolve())
    if recorded[key] != provenance.sha256_file(pathlib.Path(path)):
      raise DataCheckError(
          f'Data file {key} changed since the run in {run_dir} started, so '
          'the resumed rounds would train on other data. Restore the file, '
          'or start a new run.'
      )
  return record


def _check_config_hash(run_dir: pathlib.Path, record: dict) -> None:
  """Refuse to resume when `config.json` differs from the one at the start.

  Runs started before the hash was recorded have no `config_sha256`.
  """
  config_hash = record.get('config_sha256')
  if config_hash is not None and config_hash != provenance.sha256_file(
      run_dir / 'config.json'):
    raise InputError(
        f'{run_dir}/config.json changed since the run started, so the '
        'resumed rounds would follow other settings. Restore it, or start a '
        'new run with the new settings.'
    )


def _continue(config, run, run_dir, *, progress, on_round,
              checkpoint_interval_s, tensorboard, kept_records):
  """Run the remaining rounds and the summary, checkpointing as it goes.

  `kept_records` are the rounds already in `metrics.jsonl`. A resumed run
  writes them to TensorBoard again, because the events of a killed process
  may not have reached its file.
  """
  dataset = run['prepared'].dataset
  history = run['history']
  checkpointer = checkpoint_lib.Checkpointer(run_dir, checkpoint_interval_s)
  logger = None
  if tensorboard:
    logdir = run_dir / 'tensorboard'
    logger = tensorboard_lib.RoundLogger(logdir, purge=logdir.exists())
    for record in kept_records:
      _log_round(logger, record)
  try:
    try:
      _run_rounds(
          config, dataset, run['round_fn'], run['evaluate'],
          run['rounds_key'], run_dir, history,
          progress=progress, on_round=on_round, checkpointer=checkpointer,
          logger=logger,
      )
    except KeyboardInterrupt:
      if history['snapshot'][0] > 0:
        _save_snapshot(checkpointer, history)
      raise
    # summary.json marks the run as finished for `resume_study`, so every
    # other output is complete before it is written: the TensorBoard
    # events here, and the plot in `_write_summary`.
    if logger is not None:
      logger.close()
      logger = None
    summary = _write_summary(config, dataset, run['evaluate'], run_dir,
                             history)
  except KeyboardInterrupt:
    raise StudyInterrupted(run_dir, history['snapshot'][0]) from None
  except TrainingDiverged:
    outputs.write_json(run_dir / 'summary.json', {
        'name': config.name, 'dataset': dataset.name, 'seed': config.seed,
        'status': 'diverged', 'diverged_round': history['done'],
        'rounds': config.server.rounds,
    })
    raise
  finally:
    checkpointer.close()
    if logger is not None:
      logger.close()
  return run_dir, summary


def _run_rounds(
    config, dataset, round_fn, evaluate, rounds_key, run_dir, history,
    *, progress, on_round, checkpointer, logger,
):
  """Run the rounds after `history['done']`, writing each one as it finishes.

  `history` is updated in place, so the caller sees how far a run got when
  it stops early.
  """
  num_rounds = config.server.rounds
  state = history['state']
  # `disable=None` hides the bar when stderr is not a terminal.
  bar = tqdm.tqdm(
      total=num_rounds, initial=history['done'], desc=config.name,
      unit='round', disable=None if progress else True, dynamic_ncols=True,
  )
  with bar, outputs.MetricsWriter(run_dir / 'metrics.jsonl') as writer:
    for round_index in range(history['done'], num_rounds):
      accountant = history['accountant']
      if study_privacy.stop_before_round(accountant, config):
        history['stopped_at_target'] = True
        history['snapshot'] = _snapshot(history, history['done'], state)
        break
      round_key = jax.random.fold_in(rounds_key, round_index)
      state, metrics = round_fn(state, round_key)
      record = {key: np.asarray(value).item() for key, value in metrics.items()}
      record['round'] = round_index + 1
      history['skipped'] += int(record['skipped'])
      history['below_min_reporting'] += int(
          record.get('below_min_reporting', False)
      )
      if history['secure_plan'] is not None:
        history['secure_rounds'].append(
            {key: value for key, value in record.items()
             if key.startswith('secagg_')
             or key in ('mean_update_norm', 'clip_norm', 'num_sampled')})
      if accountant is not None:
        # Every round spends privacy, skipped ones included.
        accountant.step()
        record['epsilon'] = accountant.epsilon(config.privacy.delta)
      is_last = round_index + 1 == num_rounds
      evaluate_now = (
          is_last or (round_index + 1) % config.evaluation.eval_every == 0
      )
      try:
        if not record.pop('params_finite'):
          raise _diverged(
              round_index + 1, 'the global model has NaN or infinite parameters'
          )
        if evaluate_now:
          evaluation = _checked_evaluation(
              evaluate, state, round_index + 1
          )
      except TrainingDiverged:
        record['diverged'] = True
        writer.write(record)
        history['done'] = round_index + 1
        raise
      if evaluate_now:
        _record_evaluation(config, dataset, history, record, evaluation,
                           state, bar)
      record['elapsed_s'] = round(time.perf_counter() - history['start'], 3)
      writer.write(record)
      history['done'] = round_index + 1
      history['state'] = state
      history['snapshot'] = _snapshot(history, round_index + 1, state)
      if logger is not None:
        _log_round(logger, record)
      if checkpointer.due():
        _save_snapshot(checkpointer, history)
      if on_round is not None:
        on_round(record)
      bar.update(1)
      interrupts.raise_if_requested()


def _record_evaluation(config, dataset, history, record, evaluation, state,
                       bar) -> None:
  """Add an evaluated round's scores to its `record` and to `history`."""
  per_client = dataset.num_clients <= MAX_CLIENTS_PER_ROUND_LINE
  if study_survival.is_survival(config):
    scores = study_survival.client_c_index(evaluation)
    record.update(study_survival.round_fields(
        evaluation, dataset.client_names, per_client=per_client))
    bar.set_postfix(mean_c_index=f"{record['mean_c_index'] or 0:.3f}")
  else:
    scores = _client_accuracy(evaluation)
    if per_client:
      record['test_accuracy'] = dict(zip(dataset.client_names, scores))
    record.update(_accuracy_summary(scores))
    if history['backdoor'] is not None:
      record['backdoor_success'] = _backdoor_success(
          config, history['backdoor'], state
      )['backdoor_success']
    bar.set_postfix(mean_acc=f"{record['mean_accuracy'] or 0:.3f}")
  history['rounds'].append(record['round'])
  history[history['scores_key']].append(scores)


def _log_round(logger, record) -> None:
  """Write `record` to TensorBoard, with its per-client scores if any."""
  for field in ('test_accuracy', study_survival.PER_CLIENT_FIELD):
    if field in record:
      logger.write(record, per_client=record[field], per_client_tag=field)
      return
  logger.write(record)


def _backdoor_success(config, backdoor, state) -> dict[str, Any]:
  evaluate_triggered, triggered, honest = backdoor
  return study_attacks.backdoor_success(
      config, evaluate_triggered(state), triggered, honest
  )


def _finetuned_summary(config, dataset, params, model, local=None
                       ) -> dict[str, Any]:
  """Fine-tune the final model on each client's rows and evaluate it there.

  Each client runs `finetune_steps` steps of its local optimizer from the
  global params (FLamby's FedAvg-FT), or under FedBN from the global params
  with its own normalization layers. Clients without training rows keep
  the model they start from. The fine-tuned model never leaves its client,
  so, like Ditto's personal model, it trains without DP-SGD.
  """
  finetune = dataclasses.replace(
      config.client, local_steps=config.evaluation.finetune_steps,
      local_epochs=None, proximal_mu=0.0, scaffold=False, dp_sgd=False,
  )
  local_update = build_local_update(finetune, model, dataset.train)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(
      jax.random.fold_in(jax.random.key(config.seed), _FINETUNE_TAG),
      jnp.arange(dataset.num_clients),
  )
  train = jax.device_put(dataset.train)
  # Under FedBN each client fine-tunes its own model.
  per_client = local is not None
  if per_client:
    params = local_leaves.client_params(params, local)
  results = jax.jit(jax.vmap(
      local_update, in_axes=(0 if per_client else None, 0, 0, 0)))(
          params, train.examples, train.num_examples, keys
      )
  personal = jax.tree.map(
      lambda p, d: (p if per_client else p[None]) + d, params, results.delta)
  evaluate = evaluate_lib.build_evaluate(
      model, jax.device_put(dataset.test),
      threshold=config.evaluation.threshold, personalized=True,
  )
  accuracies = _client_accuracy(evaluate(personal))
  return {
      'finetune_steps': config.evaluation.finetune_steps,
      'test_accuracy': dict(zip(dataset.client_names, accuracies)),
      **_accuracy_summary(accuracies),
  }


def _fedbn_summary(dataset, state) -> dict[str, Any]:
  """List the clients whose local norm layers never trained.

  A client outside every cohort keeps the initial normalization layers, so
  its accuracy measures an untrained part of the model.
  """
  server_copy = local_leaves.split(state.params, jax.tree.map(
      lambda _: True, state.local))
  unchanged = jnp.ones(dataset.num_clients, bool)
  for stored, initial in zip(jax.tree.leaves(state.local),
                             jax.tree.leaves(server_copy)):
    same = jnp.all(stored == initial[None],
                   axis=tuple(range(1, stored.ndim)))
    unchanged = unchanged & same
  names = [name for name, never in zip(dataset.client_names,
                                       np.asarray(unchanged)) if never]
  return {'clients_never_trained': names,
          'num_clients_never_trained': len(names)}


def _personal_summary(config, dataset, personal, model) -> dict[str, Any]:
  """Evaluate each client's Ditto personal model on its own test rows."""
  evaluate = evaluate_lib.build_evaluate(
      model, jax.device_put(dataset.test),
      threshold=config.evaluation.threshold, personalized=True,
  )
  accuracies = _client_accuracy(evaluate(personal))
  # A personal model can diverge on its own, for example at a learning rate
  # too large for its client's data. Its accuracy is then left out.
  finite = np.asarray(jax.vmap(tree.tree_is_finite)(personal))
  accuracies = [value if ok else None for value, ok in zip(accuracies, finite)]
  return {
      'ditto_lambda': config.client.ditto_lambda,
      'test_accuracy': dict(zip(dataset.client_names, accuracies)),
      'diverged_clients': [name for name, ok in zip(dataset.client_names,
                                                    finite) if not ok],
      **_accuracy_summary(accuracies),
  }


def _secure_summary(history, clip_norm) -> dict[str, Any]:
  """Return the protocol's static plan and its mean cost per round."""
  plan = history['secure_plan']
  if plan is None:
    return {'enabled': False}
  records = history['secure_rounds']
  section = {'enabled': True, **plan._asdict()}
  section['failed_rounds'] = sum(
      bool(record.get('secagg_failed')) for record in records)
  # `secagg_quantization_norm` is the rounding noise in the round's mean,
  # which grows as the cohort's weights shrink next to the weight bound.
  # Updates smaller than it are mostly lost.
  completed = [record for record in records
               if record.get('secagg_failed') is False
               and 'secagg_quantization_norm' in record]
  noise_norms = [record['secagg_quantization_norm'] for record in completed]
  if noise_norms:
    section['quantization_noise_norm'] = float(np.median(noise_norms))
  # `mean_update_norm` is measured before clipping, and the protocol sums
  # the clipped updates, whose norms are at most the round's clip norm
  # (recorded per round under adaptive clipping).
  erased = [min(record['mean_update_norm'],
                record.get('clip_norm', clip_norm))
            < record['secagg_quantization_norm'] for record in completed]
  section['updates_below_quantization'] = bool(
      erased and sum(erased) > len(erased) / 2)
  # A Poisson round can sample no client at all; its per-client costs are
  # 0 and would pull the per-client means below the plain upload.
  with_clients = [record for record in records
                  if record.get('num_sampled', 1) > 0]
  section['empty_rounds'] = len(records) - len(with_clients)
  section['too_small_rounds'] = sum(
      bool(record.get('secagg_failed')) and record.get('secagg_degree') == 0
      for record in records)
  # The plan's degree and threshold are those of a full cohort; each round
  # sizes them on its participants.
  for name in ('degree', 'threshold'):
    values = [record['secagg_' + name] for record in with_clients
              if 'secagg_' + name in record]
    if values:
      section[f'mean_round_{name}'] = float(np.mean(values))
  per_client = ('secagg_client_bytes_up', 'secagg_client_bytes_down',
                'secagg_client_prg_expansions')
  for name in ('secagg_client_bytes_up', 'secagg_client_bytes_down',
               'secagg_server_bytes', 'secagg_plain_bytes_up',
               'secagg_client_prg_expansions',
               'secagg_server_prg_expansions', 'secagg_reconstructions'):
    rounds = with_clients if name in per_client else records
    values = [record[name] for record in rounds if name in record]
    if values:
      section['mean_' + name.removeprefix('secagg_')] = float(np.mean(values))
  return section


def _unaccounted_event(config, summary) -> str | None:
  """Return why the run's privacy guarantee does not hold, or None.

  Each case is an event that depends on one client's presence or on
  availability, which the accountant's epsilon does not model.
  """
  offline = (study_participation.tracks(config)
             and study_participation.clients_offline(config))
  if offline and 'privacy' in summary.get('participation', {}):
    # The accountant's epsilon assumes every client is always online.
    return (
        'No valid guarantee from privacy.epsilon: it assumes every client '
        'is online in every round, and clients were offline. '
        'participation.privacy gives upper bounds that use the recorded '
        'availability; report the smaller')
  amplified = (config.sampling.sampling != 'all'
               and not config.secure_aggregation.enabled)
  if offline and config.privacy.noise == 'distributed' and amplified:
    # The sampling amplification assumes the whole population online.
    return (
        'No valid guarantee: privacy.epsilon credits sampling from the '
        'whole population, and clients were offline, so each online '
        'client was more likely to be drawn. Use sampling=all, or central '
        'noise, whose summary accounts for the recorded availability')
  failed_secure = summary['secure_aggregation'].get('failed_rounds', 0)
  if failed_secure:
    # A failed round releases nothing. Whether it fails depends on how many
    # clients took part, so one client's presence changes the chance of
    # that outcome.
    return (
        f'No valid guarantee: {failed_secure} secure aggregation rounds '
        'failed and released nothing. Whether a round fails depends on how '
        'many clients take part, which the accountant does not model; '
        'raise the cohort or lower the dropout so that no round fails')
  return None


def _write_classification_outputs(config, dataset, run_dir, history, summary,
                                  per_client) -> None:
  """Add the worst client to `summary`; write the predictions and plot."""
  worst = summary['worst_accuracy']
  summary['worst_client'] = next(
      (name for name, value in summary['test_accuracy'].items()
       if value is not None and value == worst),
      None,
  )
  _write_predictions(run_dir / 'predictions.csv', per_client)
  plots.plot_accuracy(
      run_dir / 'accuracy.png',
      history['rounds'],
      history['client_accuracy'],
      dataset.client_names,
      title=f'{config.name}: test accuracy',
  )


def _write_summary(config, dataset, evaluate, run_dir, history):
  """Evaluate the final model, then write `summary.json` and the plot."""
  evaluation = _checked_evaluation(
      evaluate, history['state'], history['done']
  )
  survival = study_survival.is_survival(config)
  counts = np.asarray(dataset.test.num_examples)
  train_counts = np.asarray(dataset.train.num_examples)
  if survival:
    c_index = study_survival.client_c_index(evaluation)
    scores = {
        **study_survival.summary_fields(evaluation, dataset.client_names),
        'fairness': fairness_summary(c_index, train_counts, metric='c_index'),
    }
    per_client = []
  else:
    accuracies = _client_accuracy(evaluation)
    per_client = _binary_test_scores(dataset, evaluation)
    scores = {
        'test_accuracy': dict(zip(dataset.client_names, accuracies)),
        **_accuracy_summary(accuracies),
        'fairness': fairness_summary(accuracies, train_counts),
        'clinical': _clinical_reports(config, per_client),
    }
  summary = {
      'name': config.name,
      'dataset': dataset.name,
      'seed': config.seed,
      'status': 'completed',
      'rounds': config.server.rounds,
      'rounds_run': history['done'],
      'stopped_at_target_epsilon': history['stopped_at_target'],
      'skipped_rounds': history['skipped'],
      'wall_time_s': round(time.perf_counter() - history['start'], 3),
      **scores,
      'num_test_examples': dict(
          zip(dataset.client_names, [int(count) for count in counts])
      ),
      **_untrained_clients(dataset),
      'privacy': study_privacy.describe(
          config, history['privacy'], history['accountant'],
          history['below_min_reporting'],
      ),
      'attack': history['attack'],
      'secure_aggregation': _secure_summary(
          history, config.privacy.clip_norm),
      'example_privacy': study_privacy.describe_example_level(
          config, np.asarray(dataset.train.num_examples), history['done'],
          dataset.client_names,
      ),
  }
  if summary['privacy']['private'] and (
      config.privacy.delta >= 1 / dataset.num_clients):
    summary['privacy']['assumptions'].append(
        f'delta = {config.privacy.delta:g} is not below 1 / '
        f'{dataset.num_clients} clients: a mechanism that publishes one '
        'client\'s data outright with probability delta meets such a '
        'guarantee. Use delta well below 1 / clients.')
  if history['backdoor'] is not None:
    success = _backdoor_success(
        config, history['backdoor'], history['state']
    )
    summary['attack']['backdoor_success'] = success['backdoor_success']
    summary['attack']['backdoor_success_per_client'] = dict(
        zip(dataset.client_names, success['per_client'])
    )
  if history['state'].local is not None:
    summary['fedbn'] = _fedbn_summary(dataset, history['state'])
  if study_participation.tracks(config):
    summary['participation'] = study_participation.summary(
        config, run_dir, history['state'], dataset.num_clients)
  void_reason = _unaccounted_event(config, summary)
  if summary['privacy']['private'] and void_reason is not None:
    summary['privacy']['guarantee_holds'] = False
    summary['privacy']['guarantee'] = void_reason
  if config.client.ditto_lambda is not None:
    summary['ditto'] = _personal_summary(
        config, dataset, history['state'].personal, history['local_model'])
  if config.evaluation.finetune_steps:
    summary['finetuned'] = _finetuned_summary(
        config, dataset, history['state'].params, history['local_model'],
        history['state'].local
    )
  if survival:
    study_survival.write_risk_scores(
        run_dir / 'risk_scores.csv', dataset, evaluation)
    plots.plot_c_index(
        run_dir / 'c_index.png',
        history['rounds'],
        history['client_c_index'],
        dataset.client_names,
        title=f'{config.name}: test C-index',
    )
  else:
    _write_classification_outputs(config, dataset, run_dir, history,
                                  summary, per_client)
  # Last: a run with summary.json counts as finished.
  outputs.write_json(run_dir / 'summary.json', summary)
  return summary
