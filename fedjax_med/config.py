"""Experiment configuration: frozen dataclasses, TOML files and overrides.

An `ExperimentConfig` groups one dataclass per concept. A TOML file sets
fields by section (`[client]`, `learning_rate = 0.01`), and an override
`key=value` names a field either by its section (`client.learning_rate`) or by
its bare name when that name is unique (`learning_rate`). The defaults are the
default study: FedAvg of logistic regression on Fed-Heart-Disease with
FLamby's benchmark settings (15 rounds of 100 local SGD steps, batch 4)
except the local learning rate, 0.01 instead of FLamby's 1e-3. At 1e-3 the
model is still far from converged after 15 rounds and its accuracy swings
with the seed; `experiments/heart_disease_flamby.toml` keeps 1e-3.
"""

import dataclasses
import difflib
import json
import math
import numbers
import os
import pathlib
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import numpy as np

from fedjax_med.errors import InputError

DATASETS = ('heart_disease', 'csv', 'synthetic', 'synthetic_iid', 'digits',
            'synthetic_images', 'image_folder', 'image_npz', 'tcga_brca')
IMAGE_DATASETS = ('digits', 'synthetic_images', 'image_folder', 'image_npz')
# Datasets of right-censored survival times (examples `x`, `time`, `event`,
# no class labels), trained with a Cox model and scored by the C-index.
SURVIVAL_DATASETS = ('tcga_brca',)
MODELS = ('logistic_regression', 'mlp', 'cnn', 'resnet', 'pfl_cnn', 'cox')
# Divisors of a minibatch's summed Cox event terms, as in
# `fedjax_med.client.survival_training.LOSS_NORMALIZATIONS`.
COX_LOSS_NORMALIZATIONS = ('events', 'rows')
# Models of `[height, width, channels]` images; the others take feature rows.
IMAGE_MODELS = ('cnn', 'resnet', 'pfl_cnn')
NORMS = ('batch', 'group', 'none')
CLIENT_OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adagrad', 'rmsprop')
COMPUTE_DTYPES = ('float32', 'bfloat16')
SERVER_OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adagrad', 'yogi',
                     'fedadam', 'fedyogi', 'fedadagrad')
SAMPLINGS = ('all', 'uniform', 'poisson')
AGGREGATORS = ('fedavg', 'mean', 'median', 'trimmed_mean', 'krum',
               'multi_krum', 'geometric_median', 'bulyan', 'norm_bounded',
               'centered_clipping', 'qffl')
NOISE_KINDS = ('none', 'central', 'distributed', 'local')
CLIPPINGS = ('flat', 'per_layer')
ATTACKS = ('none', 'sign_flip', 'scaling', 'gaussian', 'little_is_enough',
           'inner_product', 'label_flip', 'backdoor')
ACCOUNTANTS = ('rdp', 'pld')
PARTITIONS = ('none', 'dirichlet', 'pathological', 'quantity')
TARGET_MODES = ('calibrate', 'stop')
SECURE_GRAPHS = ('complete', 'harary')
# numpy and JAX seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
# Fewer resamples give percentile intervals too coarse to read.
MIN_BOOTSTRAP_RESAMPLES = 100
# 100,000 resamples of the 4 heart hospitals take about 40 s on 2 CPU cores;
# 2**40 ran for hours in the final evaluation.
MAX_BOOTSTRAP_RESAMPLES = 100_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Dataset choice and its loading options.

  Attributes:
    dataset: 'heart_disease' (bundled), 'csv' (your file), 'synthetic'
      (FedProx's Synthetic(alpha, beta)) or 'synthetic_iid' (FedProx's IID
      variant: one shared model and feature distribution). Images:
      'digits' (the bundled 8x8 handwritten digits dealt into
      `num_clients` clients), 'synthetic_images' (classes drawn from
      smooth random prototypes, `fedjax_med.data.images`),
      'image_folder' (`image_path/<site>/<class>/<files>`) or 'image_npz'
      (one .npz per site in `image_path`). Survival: 'tcga_brca' (the
      bundled Fed-TCGA-BRCA data of FLamby: six regions, 1,088 breast
      cancer patients, 39 features, FLamby's fixed train/test split),
      trained with `model.model='cox'` and scored by Harrell's C-index.
    csv_path: CSV file for `dataset='csv'`.
    client_column: CSV column holding the client (hospital) id.
    label_column: CSV column holding the integer class label.
    test_fraction: fraction of each client's rows held out for testing.
    split_seed: seed of the per-client train/test split of a CSV file.
    num_clients: number of clients of the synthetic dataset.
    alpha: synthetic model heterogeneity (FedProx Synthetic(alpha, beta)).
    beta: synthetic feature heterogeneity.
    min_examples: smallest synthetic client, in rows before the split.
    max_examples: largest synthetic client, in rows before the split.
    partition: 'none' keeps the dataset's clients. 'dirichlet',
      'pathological' or 'quantity' pools every row, train and test, and
      splits it into `partition_clients` new clients: Dirichlet label skew,
      `classes_per_client` labels per client, or log-normal client sizes.
      Each new client's rows are then split into train and test by
      `test_fraction`. For heart_disease and csv, the raw rows are pooled
      and each new client is z-scored from its own train rows.
    partition_clients: number of clients after the partition; None keeps
      the dataset's count.
    dirichlet_alpha: concentration of the Dirichlet label skew; small
      values give each client few labels.
    classes_per_client: labels per client of the pathological partition.
    size_sigma: standard deviation of the log client size of the quantity
      partition.
    image_path: the folder of 'image_folder' or 'image_npz' (for
      'image_npz' also a single .npz file).
    image_size: `(height, width)` that 'image_folder' resizes every image
      to; None requires one size for all.
    grayscale: 'image_folder' converts color images to one channel.
    image_shape: `(height, width, channels)` of 'synthetic_images'.
    separation: class separation of 'synthetic_images': 0 makes the
      classes indistinguishable, larger values make them easier.
    scanner_profiles: names from `fedjax_med.data.scanner.PROFILES`; each
      client of an image dataset gets one of them at random (equal odds),
      and its train and test images pass through that scanner's intensity
      curve, blur, resolution loss and noise. The profile's name is
      appended to each client's name, such as `site_007_bright_vendor`.
      Empty leaves images as loaded.
  """

  dataset: str = 'heart_disease'
  csv_path: str | None = None
  client_column: str = 'client'
  label_column: str = 'label'
  test_fraction: float = 0.34
  split_seed: int = 0
  num_clients: int = 100
  alpha: float = 1.0
  beta: float = 1.0
  min_examples: int = 50
  max_examples: int = 100
  partition: str = 'none'
  partition_clients: int | None = None
  dirichlet_alpha: float = 0.5
  classes_per_client: int = 2
  size_sigma: float = 1.0
  image_path: str | None = None
  image_size: tuple[int, ...] | None = None
  grayscale: bool = False
  image_shape: tuple[int, ...] = (32, 32, 3)
  separation: float = 1.0
  scanner_profiles: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Model architecture.

  Attributes:
    model: 'logistic_regression' or 'mlp' for feature rows; for images
      'cnn' (LeNet-5 style), 'resnet' (a small ResNet with normalization
      layers) or 'pfl_cnn' (pfl-research's CIFAR-10 CNN), all from
      `fedjax_med.models.cnn`; 'cox' (a linear Cox proportional-hazards
      model without bias, `fedjax_med.models.survival.LinearCox`) for the
      survival dataset 'tcga_brca', the only model that dataset takes.
      Its kernel starts from U(-1/sqrt(features), 1/sqrt(features)), the
      start of PyTorch's `nn.Linear` that FLamby uses, drawn from the seed.
    hidden_sizes: widths of the MLP's hidden layers.
    widths: channels of each ResNet stage; each stage after the first
      halves the resolution.
    norm: the ResNet's normalization: 'batch' (BatchNorm, whose statistics
      each client recomputes after local training), 'group' or 'none'.
    cox_loss_normalization: the divisor of a minibatch's summed Cox event
      terms (Breslow ties, risk sets within the batch): 'events' (the
      default) divides by the batch's events, the mean negative log
      partial likelihood per event, so the step size does not depend on
      the censoring rate; 'rows' divides by the batch's rows, as FLamby's
      Fed-TCGA-BRCA `BaselineLoss` does. A batch without an event has a
      zero loss either way. With SGD, 'rows' takes steps smaller by the
      batch's share of events.
  """

  model: str = 'logistic_regression'
  hidden_sizes: tuple[int, ...] = (32,)
  widths: tuple[int, ...] = (16, 32)
  norm: str = 'batch'
  cox_loss_normalization: str = 'events'


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientConfig:
  """Local training on each client.

  Attributes:
    optimizer: optax optimizer name, fresh state every round.
    learning_rate: local learning rate.
    local_steps: optimizer steps per round; ignored if `local_epochs` is set.
    local_epochs: passes over each client's rows per round, or None.
    batch_size: examples per minibatch.
    dp_sgd: train with example-level DP-SGD: clip each example's gradient
      and add Gaussian noise at every local step.
    example_clip_norm: L2 bound of each example's gradient under DP-SGD.
    example_noise_multiplier: DP-SGD noise std divided by
      `example_clip_norm`.
    proximal_mu: FedProx's mu: each local step adds the gradient of
      (mu / 2) ||w - w_round_start||^2. 0 is FedAvg. With optimizer 'sgd',
      learning_rate * mu must stay below 2 (3.8 with 'momentum'), or the
      steps overshoot and diverge; the same bound holds for ditto_lambda.
    scaffold: train with SCAFFOLD's control variates (option II), which
      correct each client's drift; needs optimizer 'sgd' and no DP.
    ditto_lambda: turns on Ditto's personal models with this lambda: each
      round, a cohort member also trains its own model v_k, with the same
      optimizer and steps, on its loss plus (lambda / 2) ||v_k - w||^2
      towards the round's global model w. The summary then reports the
      personal models' accuracy. 0 trains them purely locally; large
      values keep them near the global model. None (default) is off.
    chunk_size: train the cohort this many clients at a time, to bound
      memory; None picks it from the data size (the whole cohort at once
      when its rows and training state need at most
      `fedjax_med.study.AUTO_CHUNK_BYTES`, 1 GiB).
    shard_over_devices: shard the cohort over every device JAX sees (all
      local GPUs or TPU cores, and every host under `jax.distributed`).
    compute_dtype: 'float32', or 'bfloat16' to run the model's forward and
      backward passes in bfloat16 while params, optimizer and aggregation
      stay float32.
    fedbn: FedBN (Li et al., 2021): the weights and statistics of the
      model's normalization layers stay on each client and only the other
      layers are averaged. Each client is then evaluated with its own
      normalization layers. Needs `model.model=resnet` with a norm.
    unroll_loops: compile the local steps, and the chunks of a chunked
      cohort, as straight-line code instead of loops. XLA's CPU backend
      runs convolutions inside loops far slower than outside them, so
      None (automatic) unrolls for image data on CPU when at most
      `fedjax_med.study.MAX_AUTO_UNROLLED_STEPS` (64) step copies result.
      True always unrolls (compile time grows with the steps); False never.
  """

  optimizer: str = 'sgd'
  learning_rate: float = 0.01
  local_steps: int = 100
  local_epochs: int | None = None
  batch_size: int = 4
  dp_sgd: bool = False
  example_clip_norm: float = 1.0
  example_noise_multiplier: float = 1.0
  proximal_mu: float = 0.0
  scaffold: bool = False
  ditto_lambda: float | None = None
  chunk_size: int | None = None
  shard_over_devices: bool = False
  compute_dtype: str = 'float32'
  fedbn: bool = False
  unroll_loops: bool | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """Client sampling and dropout in each round.

  Attributes:
    sampling: 'all' clients, a 'uniform' cohort of `cohort_size` drawn
      without replacement, or 'poisson' with rate `sampling_rate`.
    cohort_size: clients per round for uniform sampling.
    sampling_rate: inclusion probability for Poisson sampling.
    dropout_rate: probability that a sampled client fails to report.
  """

  sampling: str = 'all'
  cohort_size: int | None = None
  sampling_rate: float = 0.1
  dropout_rate: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
  """Client-level differential privacy: clipping, noise and accounting.

  Attributes:
    clip_norm: L2 bound `C` of each client update, or None for no clip.
    clipping: 'flat' (the whole update) or 'per_layer' (each leaf to
      `C / sqrt(num_leaves)`, so the sensitivity is still `C`).
    noise: 'none'; 'central' (std `z * C` added once to the clipped sum);
      'distributed' (each client adds `z * C / sqrt(min_reporting_clients)`);
      or 'local' (each client adds `z * C` to its own update).
    noise_multiplier: `z`, the noise std divided by `clip_norm`.
    min_reporting_clients: clients guaranteed to report, for distributed
      noise; None means the cohort size, which is allowed only without
      dropout and without Poisson sampling.
    delta: the delta of the reported (epsilon, delta) guarantee.
    accountant: 'rdp' or 'pld' (dp-accounting's accountants).
    target_epsilon: an epsilon the run must not exceed, or None.
    target_mode: 'calibrate' (choose `noise_multiplier` up front so that the
      planned rounds end at the target) or 'stop' (keep `noise_multiplier`
      and stop before the round that would exceed the target).
    adaptive_clipping: move `clip_norm` each round toward `target_quantile`
      of the update norms (Andrew et al., 2021); `clip_norm` is the start.
    target_quantile: the norm quantile that adaptive clipping tracks.
    clip_learning_rate: step size of the geometric clip update.
    count_noise_stddev: std of the noise on the unclipped-client count;
      None means the expected number of reporting clients / 20.
  """

  clip_norm: float | None = None
  clipping: str = 'flat'
  noise: str = 'none'
  noise_multiplier: float = 0.0
  min_reporting_clients: int | None = None
  delta: float = 1e-5
  accountant: str = 'rdp'
  target_epsilon: float | None = None
  target_mode: str = 'calibrate'
  adaptive_clipping: bool = False
  target_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  count_noise_stddev: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecureAggregationConfig:
  """Simulated secure aggregation of the client updates.

  Attributes:
    enabled: run every round's aggregation through the protocol of
      `fedjax_med.secure.protocol`. Needs `privacy.clip_norm` and
      aggregator fedavg or mean.
    graph: 'complete' (every pair of clients shares masks, Bonawitz et al.,
      2017) or 'harary' (a random k-regular graph, Bell et al., 2020).
    degree: neighbours per client for the harary graph, even; None picks
      about 2 log2(m) for a round of m participants. The graph and the
      threshold are sized on each round's participants, so Poisson
      sampling and offline clients work.
    threshold_fraction: the Shamir threshold is floor(fraction * k) + 1 of
      a client's k neighbours. Below 0.5, a server that lies about which
      clients dropped out can unmask a client's update. Such a value
      therefore models an honest server only, and the command line warns.
    ring_bits: updates are encoded in the ring of integers modulo
      2**ring_bits, at most 32.
    fixed_point_scale: multiplier before rounding to integers; None picks
      the largest one that cannot overflow without noise.
    unmask_dropout_rate: probability that a client whose masked update
      arrived goes offline before the unmasking step.
  """

  enabled: bool = False
  graph: str = 'complete'
  degree: int | None = None
  threshold_fraction: float = 0.5
  ring_bits: int = 32
  fixed_point_scale: float | None = None
  unmask_dropout_rate: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
  """Aggregation and the server optimizer.

  Attributes:
    aggregator: 'fedavg' (example-weighted), 'mean' (uniform), or a robust
      aggregator: 'median', 'trimmed_mean', 'krum', 'multi_krum',
      'geometric_median', 'bulyan', 'norm_bounded' or 'centered_clipping';
      or 'qffl' (q-FFL, Li et al. 2020), which weighs clients by their loss
      at the global model to even out accuracy across clients.
    num_byzantine: `f`, the malicious clients Krum, multi-Krum and Bulyan
      tolerate; Krum needs a cohort above 2f + 2, Bulyan at least 4f + 3.
    trim_fraction: fraction trimmed at each end by trimmed_mean.
    num_selected: updates multi-Krum averages; None means n - f for the
      n clients that report in the round.
    max_norm: L2 bound of each update for norm_bounded.
    num_iterations: Weiszfeld steps of geometric_median, or clipping
      iterations of centered_clipping.
    clip_radius: tau of centered_clipping: each client's difference from the
      previous round's aggregate is clipped to this L2 norm.
    qffl_q: q of qffl: 0 is the uniform mean, larger values favour the
      clients with the highest loss. L is 1 / `client.learning_rate`.
    fednova: FedNova's normalized averaging: divide each update by the
      client's number of local steps and scale the mean by the weighted
      mean step count. It matters when clients take different numbers of
      steps, as with `client.local_epochs`; needs plain SGD and fedavg or
      mean. With `client.proximal_mu` (FedProx) the step count becomes
      (1 - (1 - lr mu)**steps) / (lr mu), as in Wang et al. (2020). Not
      with `client.scaffold`.
    weight_cap: caps FedAvg weights at `min(num_examples / weight_cap, 1)`;
      required for fedavg with central or distributed noise.
    server_optimizer: optimizer applied to the negative aggregate: 'sgd'
      (with learning rate 1.0, FedAvg), 'momentum' (FedAvgM, momentum 0.9),
      optax's 'adam', 'adagrad' or 'yogi', or the FedOpt rules of Reddi et
      al. without bias correction: 'fedadam', 'fedyogi', 'fedadagrad'.
    server_learning_rate: its learning rate.
    server_tau: the adaptivity tau of 'fedadam', 'fedyogi' and
      'fedadagrad', added to the square root of the second moment.
    rounds: number of federated rounds.
  """

  aggregator: str = 'fedavg'
  weight_cap: float | None = None
  num_byzantine: int = 1
  trim_fraction: float = 0.1
  num_selected: int | None = None
  max_norm: float | None = None
  num_iterations: int = 10
  clip_radius: float | None = None
  qffl_q: float = 1.0
  fednova: bool = False
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0
  server_tau: float = 1e-3
  rounds: int = 15


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig:
  """Poisoning by malicious clients.

  Attributes:
    attack: 'none'; a model-poisoning attack on the updates ('sign_flip',
      'scaling', 'gaussian', 'little_is_enough', 'inner_product'); or data
      poisoning of the malicious clients' training rows: 'label_flip', or
      'backdoor', which stamps a trigger on some rows and relabels them.
    malicious_fraction: fraction of the population that is malicious,
      chosen per run from the seed.
    attack_strength: the attack's parameter, or None for its default:
      sign_flip scale (1), scaling factor (10), gaussian std (1),
      little_is_enough z (Baruch et al.'s z_max), inner_product epsilon
      (0.5), backdoor boost (1): malicious clients multiply their update
      by it, the model replacement of Bagdasaryan et al.
    trigger_features: backdoor: feature columns the trigger sets.
    trigger_value: backdoor: the value written into those columns. The
      bundled tabular data is standardized, so 4 is 4 standard deviations.
    target_label: backdoor: the label given to triggered rows.
    poison_fraction: backdoor: probability that each training row of a
      malicious client gets the trigger.
  """

  attack: str = 'none'
  malicious_fraction: float = 0.0
  attack_strength: float | None = None
  trigger_features: tuple[int, ...] = (0, 1, 2)
  trigger_value: float = 4.0
  target_label: int = 0
  poison_fraction: float = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParticipationConfig:
  """Client availability, speeds and a round deadline on a virtual clock.

  Per-client values are drawn once from the seed. See
  `fedjax_med.simulation.participation`; `sampling.dropout_rate` still sets
  the chance that a sampled client drops out in the middle of a round.

  Attributes:
    availability: probability that a client is online in a round; under
      `schedule=office_hours`, its probability during working hours.
    schedule: 'none', or 'office_hours': online with `availability` from
      8:00 to 18:00 local time and `off_hours_availability` otherwise.
      Clients are spread over `time_zones` whole-hour zones, from UTC
      westward.
    off_hours_availability: the probability outside working hours.
    time_zones: number of time zones the clients are spread over.
    steps_per_second: median local steps per second; None makes training
      take no time.
    speed_spread: standard deviation of the log of the speeds over
      clients (lognormal speeds).
    upload_bytes_per_second: median uplink speed; None means instant.
    download_bytes_per_second: median downlink speed; None means instant.
    link_spread: standard deviation of the log of link speeds over clients.
    speed_jitter: standard deviation of the log of a per-round factor on
      each client's step time.
    deadline_s: seconds a round may last, or None for no deadline.
    straggler_policy: 'wait' for the slowest client, 'drop' late updates,
      or 'partial': stop each client at the deadline and use its finished
      steps (combine with `server.fednova=true`).
    server_seconds: seconds each round adds to the clock on the server.
  """

  availability: float = 1.0
  schedule: str = 'none'
  off_hours_availability: float = 0.1
  time_zones: int = 1
  steps_per_second: float | None = None
  speed_spread: float = 0.0
  upload_bytes_per_second: float | None = None
  download_bytes_per_second: float | None = None
  link_spread: float = 0.0
  speed_jitter: float = 0.0
  deadline_s: float | None = None
  straggler_policy: str = 'wait'
  server_seconds: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionConfig:
  """Compression of each client's upload (`fedjax_med.communication`).

  Attributes:
    compressor: 'none', 'qsgd', 'rotated' or 'top_k'.
    quantization_levels: levels s of qsgd and of rotated quantization.
    top_k_fraction: share of the coordinates top-k sends.
    error_feedback: top-k keeps what it did not send and adds it to the
      client's next update.
  """

  compressor: str = 'none'
  quantization_levels: int = 16
  top_k_fraction: float = 0.01
  error_feedback: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
  """Test-set evaluation.

  Attributes:
    eval_every: evaluate every this many rounds (the last round always).
    threshold: probability at or above which a patient is called positive.
    bootstrap_resamples: resamples for the confidence intervals, 100 to
      100,000.
    confidence: confidence level of the intervals.
    finetune_steps: after the last round, each client also trains the
      global model on its own rows for this many local steps (FedAvg-FT)
      and `summary.json` reports those personalized models' accuracy; 0
      turns this off. The fine-tuned models stay on their clients, so they
      train without DP-SGD.
  """

  eval_every: int = 1
  threshold: float = 0.5
  bootstrap_resamples: int = 1000
  confidence: float = 0.95
  finetune_steps: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
  """A whole study: one section per concept plus its name and seed.

  Attributes:
    name: names the output folder and plot; None means
      `<dataset>_<aggregator>`, such as `heart_disease_fedavg`.
    seed: experiment seed for initialization, sampling, minibatches, noise
      and the bootstrap; 0 to 2**32 - 1.
  """

  name: str | None = None
  seed: int = 0
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  client: ClientConfig = ClientConfig()
  sampling: SamplingConfig = SamplingConfig()
  privacy: PrivacyConfig = PrivacyConfig()
  secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
  server: ServerConfig = ServerConfig()
  attack: AttackConfig = AttackConfig()
  participation: ParticipationConfig = ParticipationConfig()
  compression: CompressionConfig = CompressionConfig()
  evaluation: EvaluationConfig = EvaluationConfig()


_SECTIONS = tuple(
    field.name
    for field in dataclasses.fields(ExperimentConfig)
    if dataclasses.is_dataclass(field.type)
)


def with_absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
  """Return `config` with its data paths made absolute.

  A run saves its config so that `--resume` can rebuild it. A relative
  `csv_path` saved as written would then depend on the folder that the
  resume starts from.
  """
  data = config.data
  absolute = {
      name: os.path.abspath(os.path.expanduser(getattr(data, name)))
      for name in ('csv_path', 'image_path')
      if getattr(data, name) is not None
  }
  if not absolute:
    return config
  return dataclasses.replace(
      config, data=dataclasses.replace(data, **absolute))


def run_name(config: ExperimentConfig) -> str:
  """Return `config.name`, or `<dataset>_<aggregator>` when it is None."""
  if config.name:
    return config.name
  return f'{config.data.dataset}_{config.server.aggregator}'


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
  """Return the config as nested plain dicts, ready for JSON."""
  return dataclasses.asdict(config)


def _field_types(section_class) -> dict[str, Any]:
  hints = typing.get_type_hints(section_class)
  return {field.name: hints[field.name] for field in dataclasses.fields(section_class)}


_KINDS = {int: 'an integer', float: 'a number', bool: 'true or false',
          str: 'a string'}


def split_list(text: str) -> list[str]:
  """Split a command-line list such as `32,16` or `[a, b]` into its items."""
  return [item.strip() for item in text.strip('()[] ').split(',')
          if item.strip()]


# Values for a hint when the quoted text is not of the field's type.
_EXAMPLES = {int: '1', float: '1.0', bool: 'true'}


def _toml_literal(text: str, annotation: Any) -> str | None:
  """Return `text` as a valid TOML literal of `annotation`, or None.

  A float is written with `repr`, which TOML reads: '.5' becomes 0.5.
  """
  text = text.strip()
  try:
    if annotation is int:
      return str(int(text))
    if annotation is float:
      return repr(float(text))
  except ValueError:
    return None
  if annotation is bool and text.lower() in ('true', 'false'):
    return text.lower()
  return None


def _check_typed(key: str, value: Any, annotation: Any,
                 assignment: Callable[[str], str] | None = None) -> None:
  """Raise unless a typed value (TOML, JSON or Python) fits `annotation`.

  Strings are text only where the field is text: TOML's `rounds = "2"` is
  a mistake that parsing would hide, and so is `csv_path = 5`.

  Args:
    key: the config key, for messages.
    value: the value as the file gives it.
    annotation: the type that `value` must have.
    assignment: turns a TOML literal of `value`'s corrected form into the
      TOML line of the hint. The default is `<field> = <literal>`. A caller
      that checks one item of a list or table passes its own, so that the
      hint has the file's shape, such as `strengths = {sign_flip = 10.0}`.
  """
  name = key.rsplit('.', 1)[-1]
  if assignment is None:
    assignment = lambda literal: f'{name} = {literal}'
  if annotation is str:
    if isinstance(value, (str, os.PathLike)):
      return
    raise InputError(f'`{key}` must be a string; got {_written(value)}.')
  if typing.get_origin(annotation) is tuple and isinstance(
      value, (list, tuple)):
    item_type = typing.get_args(annotation)[0]
    quoted = [item for item in value if isinstance(item, str)]
    if item_type is not str and quoted:
      raise InputError(_quoted_list_message(key, value, item_type,
                                            assignment))
    return
  if annotation is int and isinstance(value, (float, np.floating)):
    # A float is rejected even when whole: `rounds = 1e20` would run
    # forever, and `--set rounds=3.0` is rejected too.
    whole = float(value).is_integer() and abs(value) < 1e6
    example = f': `{assignment(str(int(value)))}`' if whole else ''
    raise InputError(
        f'`{key}` must be an integer; got the float {value!r}. Write it '
        f'without a decimal point or exponent{example}.'
    )
  if isinstance(value, str):
    if typing.get_origin(annotation) is tuple:
      raise InputError(_quoted_list_message(
          key, split_list(value), typing.get_args(annotation)[0],
          assignment, whole=value))
    kind = _KINDS.get(annotation)
    literal = _toml_literal(value, annotation)
    if literal is None:
      raise InputError(
          f'`{key}` must be {kind}; got the string {value!r}. Write '
          f'{kind} without quotes, for example '
          f'`{assignment(_EXAMPLES.get(annotation, value))}`.'
      )
    raise InputError(
        f'`{key}` must be {kind}; got the string {value!r}. Write it without '
        f'quotes: `{assignment(literal)}`.'
    )


def _quoted_list_message(key: str, items: Sequence[Any], item_type: Any,
                         assignment: Callable[[str], str],
                         whole: str | None = None) -> str:
  """Return the error for quoted items in a list, with a TOML list hint.

  `whole` is the one string given in place of the list, if it was one.
  """
  literals = []
  for item in items:
    if item_type is str:
      literals.append(json.dumps(str(item)))
    elif isinstance(item, str):
      literals.append(_toml_literal(item, item_type))
    else:
      literals.append(_toml_text(item))
  plural = {int: 'integers', float: 'numbers', bool: 'booleans',
            str: 'strings'}.get(item_type, 'values')
  got = (f'the string {whole!r}' if whole is not None else
         f'the string {next(i for i in items if isinstance(i, str))!r} in '
         f'{list(items)}')
  if None in literals:
    bad = items[literals.index(None)]
    example = [literal if literal is not None else _EXAMPLES[item_type]
               for literal in literals]
    return (f'`{key}` must be a list of {plural}; got {got}, and {bad!r} is '
            f'not one. Write {plural} without quotes, for example '
            f'`{assignment("[" + ", ".join(example) + "]")}`.')
  kind = 'a list' if whole is not None else f'a list of {plural}'
  return (f'`{key}` must be {kind}; got {got}. Write it without quotes: '
          f'`{assignment("[" + ", ".join(literals) + "]")}`.')


def _coerce(
    key: str, value: Any, annotation: Any, *, strict: bool = False
) -> Any:
  """Convert `value` to the field's type.

  Args:
    key: the config key, for messages.
    value: a TOML, JSON or Python value, or a command-line string.
    annotation: the field's type.
    strict: reject text for a number, flag or list field, and anything
      but text for a text field. Set for values that carry their own type
      (TOML, JSON, Python); leave unset for `--set` strings.
  """
  if isinstance(value, str) and not value.strip():
    raise InputError(
        f'`{key}` is empty. Give a value, or `none` where the key allows it.'
    )
  args = typing.get_args(annotation)
  optional = type(None) in args and isinstance(annotation, types.UnionType)
  if optional:
    if value is None or (
        isinstance(value, str) and value.lower() in ('none', 'null')
    ):
      return None
    annotation = next(arg for arg in args if arg is not type(None))
  if strict:
    _check_typed(key, value, annotation)
  if typing.get_origin(annotation) is tuple:
    items = value
    if isinstance(value, str):
      items = split_list(value)
    item_type = typing.get_args(annotation)[0]
    if not isinstance(items, (list, tuple)):
      kind = 'names' if item_type is str else 'integers'
      raise InputError(f'`{key}` must be a list of {kind}; got {value!r}.')
    if item_type is str:
      items = [item.strip() if isinstance(item, str) else item
               for item in items]
    return tuple(_coerce(key, item, item_type, strict=strict)
                 for item in items)
  try:
    if annotation is bool:
      if isinstance(value, str):
        if value.lower() not in ('true', 'false'):
          raise ValueError(value)
        return value.lower() == 'true'
      if not isinstance(value, (bool, np.bool_)):
        raise ValueError(value)
      return bool(value)
    if annotation is int:
      if isinstance(value, (bool, np.bool_)):
        raise ValueError(value)
      if (isinstance(value, numbers.Real)
          and not isinstance(value, numbers.Integral)
          and not float(value).is_integer()):
        raise ValueError(value)
      return int(value)
    if annotation is float:
      if isinstance(value, bool):
        raise ValueError(value)
      number = float(value)
      if (isinstance(value, str) and math.isinf(number)
          and 'inf' not in value.lower()):
        # `--set` text such as 1 followed by 400 zeros.
        text = value.strip()
        shown = text if len(text) <= 20 else (
            f'{text[:10]}... ({len(text)} characters)')
        raise InputError(
            f'`{key}` is {shown}, beyond the float range (about 1.8e308). '
            'Use a smaller value.')
      return number
    if annotation is str:
      if isinstance(value, bool):
        raise ValueError(value)
      return str(value)
  except InputError:
    raise
  except OverflowError:
    # An integer beyond float range, such as 10**400 in a TOML file.
    raise InputError(
        f'`{key}` is {_written(value)}, beyond the float range (about '
        '1.8e308). Use a smaller value.'
    ) from None
  except (ValueError, TypeError):
    # TypeError: a TOML list or table where a single value belongs.
    raise InputError(
        f'`{key}` must be {_KINDS.get(annotation, annotation)}; got '
        f'{_written(value)}.'
    ) from None
  raise TypeError(f'Unsupported config type {annotation} for `{key}`.')


def resolve_key(key: str) -> tuple[str | None, str]:
  """Map `section.field` or a unique bare `field` to (section, field).

  Raises:
    InputError: for an unknown or ambiguous key.
  """
  if '.' in key:
    section, name = key.split('.', 1)
    if section not in _SECTIONS:
      raise InputError(
          f'Unknown config section {section!r} in `{key}`; sections are '
          f'{", ".join(_SECTIONS)}.'
      )
    section_class = type(getattr(ExperimentConfig(), section))
    if name not in _field_types(section_class):
      raise InputError(
          f'Unknown config key `{key}`{_suggestion(name)} `{section}` has '
          f'{", ".join(_field_types(section_class))}.'
      )
    return section, name
  if key in ('name', 'seed'):
    return None, key
  owners = [
      section
      for section in _SECTIONS
      if key in _field_types(type(getattr(ExperimentConfig(), section)))
  ]
  if not owners:
    if key in _SECTIONS:
      raise InputError(
          f'`{key}` is a config section, not a key: write it as a table '
          f'`[{key}]` in TOML, or set `{key}.<key>=value`.'
      )
    raise InputError(
        f'Unknown config key `{key}`{_suggestion(key)} `fedjax-med keys` '
        'lists every key.'
    )
  if len(owners) > 1:
    raise InputError(
        f'Config key `{key}` is ambiguous; write one of '
        f'{", ".join(f"{owner}.{key}" for owner in owners)}.'
    )
  return owners[0], key


def _suggestion(name: str) -> str:
  """Return '; did you mean `a` or `b`?' for keys close to `name`, or '.'.

  A key of another section (`data.aggregator`) is suggested by its own
  section, and typos (`roundz`) by their closest keys.
  """
  keys = all_keys()
  fields = {key.rsplit('.', 1)[-1]: key for key in keys}
  matches = [key for key in keys if key.rsplit('.', 1)[-1] == name]
  if not matches:
    matches = [fields[close] for close in
               difflib.get_close_matches(name, list(fields), n=3)]
  if not matches:
    return '.'
  return '; did you mean ' + ' or '.join(f'`{key}`' for key in matches) + '?'


def all_keys() -> list[str]:
  """Return every settable key as `section.field`, plus name and seed."""
  keys = ['name', 'seed']
  for section in _SECTIONS:
    section_class = type(getattr(ExperimentConfig(), section))
    keys.extend(f'{section}.{name}' for name in _field_types(section_class))
  return keys


def apply_overrides(
    config: ExperimentConfig, overrides: dict[str, Any], *,
    strict: bool = False,
) -> ExperimentConfig:
  """Return `config` with fields replaced, keyed by `section.field` or `field`.

  Set `strict` when the values carry their own types (TOML, JSON, Python):
  then `"2"` is not an integer and `5` is not a path. Command-line strings
  are parsed, so leave it unset for them.
  """
  for key, value in overrides.items():
    section, name = resolve_key(key)
    if section is None:
      annotation = _field_types(ExperimentConfig)[name]
      config = dataclasses.replace(
          config, **{name: _coerce(key, value, annotation, strict=strict)})
      continue
    current = getattr(config, section)
    annotation = _field_types(type(current))[name]
    updated = dataclasses.replace(
        current, **{name: _coerce(key, value, annotation, strict=strict)})
    config = dataclasses.replace(config, **{section: updated})
  return config


def field_annotation(key: str) -> Any:
  """Return the type of config key `key`, without its `| None`."""
  section, name = resolve_key(key)
  owner = ExperimentConfig if section is None else type(
      getattr(ExperimentConfig(), section))
  annotation = _field_types(owner)[name]
  if isinstance(annotation, types.UnionType):
    annotation = next(arg for arg in typing.get_args(annotation)
                      if arg is not type(None))
  return annotation


def parse_override(text: str) -> tuple[str, str]:
  """Split a command-line override `key=value`."""
  if '=' not in text:
    raise InputError(
        f'Invalid override {text!r}: write `key=value`, for example '
        '`aggregator=median`.'
    )
  key, value = text.split('=', 1)
  return key.strip(), value.strip()


def reject_comma_string(key: str, value: Any) -> None:
  """Raise for a TOML string such as "0,1" where a list belongs.

  `--set sweep.seeds=0,1` is split on commas, but in TOML a list is written
  as one, and a quoted string hides the types of its items.
  """
  if isinstance(value, str) and ',' in value:
    items = []
    for item in (part.strip() for part in value.split(',')):
      try:
        float(item)
        items.append(item)
      except ValueError:
        items.append(f'"{item}"')
    raise InputError(
        f'`{key}` must be a TOML list; got the string {value!r}. Write '
        f'`{key.rsplit(".", 1)[-1]} = [{", ".join(items)}]`.')


def load_toml(path: str | pathlib.Path) -> ExperimentConfig:
  """Read a TOML config file onto the defaults.

  Raises:
    InputError: if the file is missing, is not valid TOML or sets an
      unknown key or a value of the wrong type.
  """
  document = read_toml(path)
  if 'sweep' in document:
    raise InputError(
        f'{path} has a [sweep] table, so it describes a sweep. Run it with '
        f'`fedjax-med sweep {path}`.'
    )
  if 'matrix' in document:
    raise InputError(
        f'{path} has a [matrix] table, so it describes a robustness matrix. '
        f'Run it with `fedjax-med matrix {path}`.'
    )
  return from_document(document)


def read_toml(path: str | pathlib.Path) -> dict[str, Any]:
  """Return the parsed TOML document at `path`.

  Raises:
    InputError: if the file is missing or is not valid TOML.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    raise InputError(
        f'Config path {path} is a folder. Pass a .toml file, such as one '
        'from experiments/.'
    )
  if not path.is_file():
    raise InputError(
        f'Config file not found: {path}. Pass an existing .toml file, such as '
        'one from experiments/.'
    )
  try:
    # TOML files are UTF-8; 'utf-8-sig' also drops a byte-order mark,
    # which some editors write and which is invisible in them.
    text = path.read_text(encoding='utf-8-sig')
  except UnicodeDecodeError as error:
    raise InputError(
        f'Config file {path} is not UTF-8 text ({error.reason} at byte '
        f'{error.start}). Save it as UTF-8.'
    ) from None
  try:
    document = tomllib.loads(text)
  except tomllib.TOMLDecodeError as error:
    raise InputError(f'Invalid TOML in {path}: {error}.') from None
  return document


def from_document(document: dict[str, Any]) -> ExperimentConfig:
  """Apply a parsed TOML document, one table per section, to the defaults.

  Raises:
    InputError: for an unknown key or a value of the wrong type.
  """
  return apply_overrides(ExperimentConfig(), _flatten_document(document),
                         strict=True)


def _flatten_document(document: dict[str, Any]) -> dict[str, Any]:
  """Return a TOML document's values keyed by `section.field` or `field`."""
  flat = {}
  for key, value in document.items():
    if isinstance(value, dict):
      for name, inner in value.items():
        flat[f'{key}.{name}'] = inner
    else:
      flat[key] = value
  return flat


# Clip bounds, learning rates and tau below the smallest normal float32,
# 1.18e-38, are subnormal, and the CPU flushes them to zero. Every update
# is then clipped to zeros, and SCAFFOLD's control update, q-FFL's 1 / lr
# and FedAdam's m / (sqrt(v) + tau) divide 0 by 0. The limit is that value
# rounded up.
_SMALLEST_NORMAL = 1.2e-38
# Every numeric setting enters float32 arrays, where a larger magnitude
# becomes inf: an attack strength of 1e39 made every attacker's update
# infinite, so the robust aggregators dropped them and no attack ran.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _require_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise InputError(
        f'Invalid `{key}`: {value!r}. Allowed: {", ".join(allowed)}.'
    )


# The client momentum optimizer uses heavy-ball momentum 0.9 (`study.
# build_optimizer`), whose steps on a quadratic stay stable while
# learning_rate * curvature < 2 (1 + momentum).
_STABLE_PROXIMAL_STEP = {'sgd': 2.0, 'momentum': 2.0 * (1.0 + 0.9)}


def _check_proximal_step(client: ClientConfig) -> None:
  """Reject a proximal pull that plain or momentum SGD overshoots.

  The term (mu / 2) ||w - w_0||^2 has curvature mu. Once learning_rate *
  mu reaches the bound of `_STABLE_PROXIMAL_STEP`, each step multiplies the
  distance to w_0 by a factor of size at least 1, so FedProx's client
  models and Ditto's personal models oscillate and diverge. The loss adds
  curvature of its own, so staying under the bound does not guarantee
  stability. Adaptive optimizers scale their steps and are not checked.
  """
  bound = _STABLE_PROXIMAL_STEP.get(client.optimizer)
  if bound is None:
    return
  for key, value in (('client.proximal_mu', client.proximal_mu),
                     ('client.ditto_lambda', client.ditto_lambda)):
    if value is None or client.learning_rate * value < bound:
      continue
    raise InputError(
        f'`{key}` {value:g} times `client.learning_rate` '
        f'{client.learning_rate:g} is {client.learning_rate * value:g}, '
        f'at least {bound:g}: with `client.optimizer={client.optimizer}` '
        'each local step overshoots the pull towards the global model, so '
        f'the models diverge. Use `{key}` below '
        f'{bound / client.learning_rate:g}, a smaller '
        '`client.learning_rate`, or `client.optimizer=adam`.'
    )


def _shown(value: float) -> str | float:
  """Return `value` for a message, a very long int cut to its digit count."""
  digits = str(abs(value)) if isinstance(value, int) else ''
  if len(digits) > 20:
    return f'{str(value)[:10]}... ({len(digits)} digits)'
  return value


def require_float32(key: str, value: float) -> None:
  """Raise unless the finite `value` fits in float32."""
  if abs(value) > _FLOAT32_MAX:
    raise InputError(
        f'Invalid `{key}`: {_shown(value)}. Its magnitude is above {_FLOAT32_MAX:.4g}'
        ', the largest float32, so it would become infinite in the '
        'computation. Use a smaller value.'
    )


def _require_float32_std(
    multiplier_key: str, multiplier: float, norm_key: str, norm: float
) -> None:
  """Raise unless the noise std `multiplier * norm` fits in float32.

  Each factor can fit while the product does not; the noise then was
  infinite, and the run stopped as diverged, blaming the learning rate.
  """
  if multiplier * norm > _FLOAT32_MAX:
    raise InputError(
        f'The noise std `{multiplier_key}` * `{norm_key}` = {multiplier:g} * '
        f'{norm:g} = {multiplier * norm:.4g} is above {_FLOAT32_MAX:.4g}, the '
        'largest float32, so the noise would be infinite. Lower one of them.'
    )


def _require_range(
    key: str, value: float | None, low: float, high: float = math.inf,
    *, low_open: bool = False, high_open: bool = False,
) -> None:
  """Raise unless `value` is finite and inside the interval (None passes)."""
  if value is None:
    return
  # math.isfinite raises OverflowError on ints above 1.8e308, which Python
  # ints can exceed; an int is always finite.
  finite = isinstance(value, int) or math.isfinite(value)
  too_low = value <= low if low_open else value < low
  too_high = value >= high if high_open else value > high
  if finite and not too_low and not too_high:
    require_float32(key, value)
  if not finite or too_low or too_high:
    shown = _shown(value)
    if low == -math.inf and high == math.inf:
      raise InputError(
          f'Invalid `{key}`: {shown}. It must be a finite number.'
      )
    low_bracket = '(' if low_open else '['
    high_bracket = ')' if high_open or high == math.inf else ']'
    raise InputError(
        f'Invalid `{key}`: {shown}. It must be a finite number in '
        f'{low_bracket}{low}, {high}{high_bracket}.'
    )


_NOISY = ('central', 'distributed', 'local')
# Step counts go into int32 scan indices: the most local steps a round
# counts.
MAX_LOCAL_STEPS = _MAX_STEPS = 2**31 - 1
_SYNTHETIC = ('synthetic', 'synthetic_iid')
_GENERATED = _SYNTHETIC + ('synthetic_images',)

# Settings that only some choices read, as (section, field, the choice
# field, the choices that read it). Setting one away from its default while
# another choice is active is an error, so that nothing is silently ignored.
_SETTINGS_USED_BY = (
    ('data', 'csv_path', 'dataset', ('csv',)),
    ('data', 'client_column', 'dataset', ('csv',)),
    ('data', 'label_column', 'dataset', ('csv',)),
    ('data', 'split_seed', 'dataset', ('csv',)),
    ('data', 'test_fraction', 'dataset',
     ('csv',) + _SYNTHETIC + IMAGE_DATASETS),
    ('data', 'num_clients', 'dataset', _GENERATED + ('digits',)),
    ('data', 'alpha', 'dataset', ('synthetic',)),
    ('data', 'beta', 'dataset', ('synthetic',)),
    ('data', 'min_examples', 'dataset', _GENERATED),
    ('data', 'max_examples', 'dataset', _GENERATED),
    ('data', 'image_path', 'dataset', ('image_folder', 'image_npz')),
    ('data', 'image_size', 'dataset', ('image_folder',)),
    ('data', 'grayscale', 'dataset', ('image_folder',)),
    ('data', 'image_shape', 'dataset', ('synthetic_images',)),
    ('data', 'separation', 'dataset', ('synthetic_images',)),
    ('data', 'scanner_profiles', 'dataset', IMAGE_DATASETS),
    ('data', 'partition_clients', 'partition',
     ('dirichlet', 'pathological', 'quantity')),
    ('data', 'dirichlet_alpha', 'partition', ('dirichlet',)),
    ('data', 'classes_per_client', 'partition', ('pathological',)),
    ('data', 'size_sigma', 'partition', ('quantity',)),
    ('model', 'hidden_sizes', 'model', ('mlp',)),
    ('model', 'widths', 'model', ('resnet',)),
    ('model', 'norm', 'model', ('resnet',)),
    ('model', 'cox_loss_normalization', 'model', ('cox',)),
    ('sampling', 'cohort_size', 'sampling', ('uniform',)),
    ('sampling', 'sampling_rate', 'sampling', ('poisson',)),
    ('privacy', 'noise_multiplier', 'noise', _NOISY),
    ('privacy', 'min_reporting_clients', 'noise', ('distributed',)),
    ('privacy', 'target_epsilon', 'noise', _NOISY),
    ('privacy', 'target_mode', 'noise', _NOISY),
    ('server', 'weight_cap', 'aggregator', ('fedavg',)),
    ('server', 'num_byzantine', 'aggregator', ('krum', 'multi_krum', 'bulyan')),
    ('server', 'trim_fraction', 'aggregator', ('trimmed_mean',)),
    ('server', 'num_selected', 'aggregator', ('multi_krum',)),
    ('server', 'max_norm', 'aggregator', ('norm_bounded',)),
    ('server', 'num_iterations', 'aggregator',
     ('geometric_median', 'centered_clipping')),
    ('server', 'clip_radius', 'aggregator', ('centered_clipping',)),
    ('server', 'qffl_q', 'aggregator', ('qffl',)),
    ('server', 'server_tau', 'server_optimizer',
     ('fedadam', 'fedyogi', 'fedadagrad')),
    ('attack', 'trigger_features', 'attack', ('backdoor',)),
    ('attack', 'trigger_value', 'attack', ('backdoor',)),
    ('attack', 'target_label', 'attack', ('backdoor',)),
    ('attack', 'poison_fraction', 'attack', ('backdoor',)),
    ('participation', 'off_hours_availability', 'schedule',
     ('office_hours',)),
    ('participation', 'time_zones', 'schedule', ('office_hours',)),
    ('compression', 'quantization_levels', 'compressor',
     ('qsgd', 'rotated')),
    ('compression', 'top_k_fraction', 'compressor', ('top_k',)),
    ('compression', 'error_feedback', 'compressor', ('top_k',)),
)
# Evaluation settings of the clinical metrics of binary classification.
_CLINICAL_SETTINGS = ('threshold', 'bootstrap_resamples', 'confidence')
# Settings read only when adaptive clipping is on.
_ADAPTIVE_SETTINGS = ('target_quantile', 'clip_learning_rate',
                      'count_noise_stddev')


def reset_unused_settings(config: ExperimentConfig) -> ExperimentConfig:
  """Return `config` with settings its choices do not read set to default.

  A sweep that changes one choice, such as the aggregator, calls this so that
  the settings of the other choices do not fail `validate`.
  """
  defaults = ExperimentConfig()
  for section, name, choice_name, users in _SETTINGS_USED_BY:
    current = getattr(config, section)
    if getattr(current, choice_name) not in users:
      default = getattr(getattr(defaults, section), name)
      config = dataclasses.replace(
          config, **{section: dataclasses.replace(current, **{name: default})}
      )
  return config


def _written(value: Any) -> str:
  """Return a wrong-typed value for a message, a bool both ways.

  Configs come from TOML and from Python, so a bool is written as both.
  """
  if isinstance(value, bool):
    return f'the bool {_toml_text(value)} ({value})'
  if isinstance(value, int):
    return str(_shown(value))
  return repr(value)


def _toml_text(value: Any) -> str:
  """Return `value` as it would be written in a config file or `--set`."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  return str(value)


def given_keys(overrides: Iterable[str]) -> frozenset[str]:
  """Return the `section.field` names of the keys in `overrides`.

  `overrides` are keys as `apply_overrides` takes them, `section.field` or
  a unique bare `field`. Pass the result to `validate`.
  """
  keys = set()
  for key in overrides:
    section, name = resolve_key(key)
    keys.add(name if section is None else f'{section}.{name}')
  return frozenset(keys)


def document_keys(document: dict[str, Any]) -> list[str]:
  """Return the `section.field` keys that a parsed TOML document sets."""
  return list(_flatten_document(document))


def _check_unused_settings(config: ExperimentConfig,
                           explicit_keys: frozenset[str]) -> None:
  defaults = ExperimentConfig()

  def is_set(section: str, name: str) -> bool:
    value = getattr(getattr(config, section), name)
    return (f'{section}.{name}' in explicit_keys
            or value != getattr(getattr(defaults, section), name))

  for section, name, choice_name, users in _SETTINGS_USED_BY:
    current = getattr(config, section)
    choice = getattr(current, choice_name)
    value = getattr(current, name)
    if (section, name) == ('data', 'test_fraction') and (
        config.data.partition != 'none'):
      continue  # A partition splits every new client by test_fraction.
    if choice not in users and is_set(section, name):
      raise InputError(
          f'`{section}.{name}={_toml_text(value)}` has no effect with '
          f'`{section}.{choice_name}={choice}`; it applies only to '
          f'{choice_name} {" or ".join(users)}. Remove it or change '
          f'`{section}.{choice_name}`.'
      )
  client = config.client
  if not client.dp_sgd:
    for name in ('example_clip_norm', 'example_noise_multiplier'):
      value = getattr(client, name)
      if is_set('client', name):
        raise InputError(
            f'`client.{name}={_toml_text(value)}` has no effect unless '
            '`client.dp_sgd=true`.'
        )
  for name in ('delta', 'accountant'):
    value = getattr(config.privacy, name)
    if (is_set('privacy', name)
        and config.privacy.noise == 'none' and not client.dp_sgd):
      raise InputError(
          f'`privacy.{name}={_toml_text(value)}` has no effect without '
          'client-level noise (`privacy.noise`) or `client.dp_sgd=true`.'
      )
  if (config.privacy.target_epsilon is None
      and is_set('privacy', 'target_mode')):
    raise InputError(
        f'`privacy.target_mode={config.privacy.target_mode}` has no effect '
        'without `privacy.target_epsilon`.'
    )
  if not config.privacy.adaptive_clipping:
    for name in _ADAPTIVE_SETTINGS:
      value = getattr(config.privacy, name)
      if is_set('privacy', name):
        raise InputError(
            f'`privacy.{name}={_toml_text(value)}` has no effect unless '
            '`privacy.adaptive_clipping=true`.'
        )
  if config.data.dataset in SURVIVAL_DATASETS:
    for name in _CLINICAL_SETTINGS:
      if is_set('evaluation', name):
        value = getattr(config.evaluation, name)
        raise InputError(
            f'`evaluation.{name}={_toml_text(value)}` has no effect with '
            f'`data.dataset={config.data.dataset}`: it sets the clinical '
            'metrics of binary classification, and a survival model is '
            'scored by the C-index. Remove it.'
        )
  client = config.client
  if client.local_epochs is not None and is_set('client', 'local_steps'):
    raise InputError(
        '`client.local_steps` has no effect when `client.local_epochs` is '
        'set. Set only one of them.'
    )


def _validate_data(data: DataConfig) -> None:
  _require_choice('data.dataset', data.dataset, DATASETS)
  _require_choice('data.partition', data.partition, PARTITIONS)
  _require_range('data.partition_clients', data.partition_clients, 1)
  # At 1e308 numpy's Dirichlet sampler returned zeros (numpy 2.4); 1e6 is
  # already indistinguishable from an IID split.
  _require_range('data.dirichlet_alpha', data.dirichlet_alpha, 0.0, 1e6,
                 low_open=True)
  _require_range('data.classes_per_client', data.classes_per_client, 1)
  # exp(sigma * normal) overflows float64 long before sigma reaches 1e300;
  # sigma = 100 already gives one client almost every row.
  _require_range('data.size_sigma', data.size_sigma, 0.0, 100.0)
  # Imported here because the scanner module imports JAX and the data
  # package, which config need not load otherwise.
  from fedjax_med.data import scanner  # pylint: disable=g-import-not-at-top
  unknown = [name for name in data.scanner_profiles
             if name not in scanner.PROFILES]
  if unknown:
    raise InputError(
        f'Unknown `data.scanner_profiles` {unknown}. Known profiles: '
        f'{", ".join(scanner.PROFILES)}.'
    )
  repeated = sorted({name for name in data.scanner_profiles
                     if data.scanner_profiles.count(name) > 1})
  if repeated:
    raise InputError(
        f'`data.scanner_profiles` lists {", ".join(repeated)} more than once. '
        'Each client draws a profile uniformly from the list, so list each '
        'profile once.'
    )
  if data.dataset in ('image_folder', 'image_npz') and not data.image_path:
    raise InputError(
        f'`data.dataset={data.dataset}` needs `data.image_path`, for example '
        '`--set image_path=scans/`.'
    )
  if data.image_size is not None:
    if len(data.image_size) != 2:
      raise InputError(
          f'Invalid `data.image_size`: {list(data.image_size)}. Give '
          '[height, width], for example `--set image_size=64,64`.'
      )
    for size in data.image_size:
      _require_range('data.image_size', size, 1)
  if len(data.image_shape) != 3:
    raise InputError(
        f'Invalid `data.image_shape`: {list(data.image_shape)}. Give '
        '[height, width, channels], for example `--set image_shape=32,32,3`.'
    )
  for size in data.image_shape:
    _require_range('data.image_shape', size, 1)
  _require_range('data.separation', data.separation, 0.0)
  if data.dataset == 'csv' and not data.csv_path:
    raise InputError(
        '`data.dataset=csv` needs `data.csv_path`, for example '
        '`--set csv_path=hospitals.csv`.'
    )
  _require_range(
      'data.test_fraction', data.test_fraction, 0.0, 1.0,
      low_open=True, high_open=True,
  )
  _require_range('data.split_seed', data.split_seed, 0, MAX_SEED)
  _require_range('data.num_clients', data.num_clients, 1)
  _require_range('data.alpha', data.alpha, 0.0)
  _require_range('data.beta', data.beta, 0.0)
  _require_range('data.min_examples', data.min_examples, 1)
  _require_range('data.max_examples', data.max_examples, 1)
  if data.min_examples > data.max_examples:
    raise InputError(
        f'`data.min_examples` ({data.min_examples}) is larger than '
        f'`data.max_examples` ({data.max_examples}). Lower min_examples or '
        'raise max_examples.'
    )


def _validate_survival(config: ExperimentConfig) -> None:
  """Reject the model and the settings that a survival dataset cannot run.

  A survival dataset has no class labels, and its Cox loss couples the rows
  of a minibatch through their risk sets, so no per-example loss exists.
  """
  data, model, client = config.data, config.model, config.client
  survival = data.dataset in SURVIVAL_DATASETS
  if not survival:
    if model.model == 'cox':
      raise InputError(
          '`model.model=cox` is a survival model, but '
          f'`data.dataset={data.dataset}` has class labels. Use '
          '`data.dataset=tcga_brca`, or a classifier: `model.model` '
          'logistic_regression or mlp for feature rows, cnn, resnet or '
          'pfl_cnn for images.'
      )
    return
  if model.model != 'cox':
    raise InputError(
        f'`model.model={model.model}` is a classifier, but '
        f'`data.dataset={data.dataset}` has survival times and no class '
        'labels. Set `model.model=cox`.'
    )
  if data.partition != 'none':
    # NOTE: a quantity-skew partition needs no labels, but `_repartition`
    # pools `x` and `y` only; survival rows are not wired in.
    raise InputError(
        f'`data.partition={data.partition}` does not apply to '
        f'`data.dataset={data.dataset}`, which keeps the regions and the '
        'train/test split of FLamby. Set `data.partition=none`.'
    )
  if client.dp_sgd:
    raise InputError(
        '`client.dp_sgd=true` does not apply to the Cox model: its loss '
        'couples the rows of a minibatch through their risk sets, so no '
        'per-example gradient exists to clip. Use client-level DP '
        '(`privacy.clip_norm` with `privacy.noise`) instead.'
    )
  if client.compute_dtype != 'float32':
    raise InputError(
        f'`client.compute_dtype={client.compute_dtype}` is not supported '
        'for the Cox model, whose local training runs in float32. Set '
        '`client.compute_dtype=float32`.'
    )
  if client.ditto_lambda is not None or config.evaluation.finetune_steps:
    raise InputError(
        'Personalization (`client.ditto_lambda`, '
        '`evaluation.finetune_steps`) does not apply to '
        f'`data.dataset={data.dataset}`: personal models are scored by '
        'accuracy only. Remove those settings.'
    )
  if client.fedbn:
    raise InputError(
        '`client.fedbn=true` keeps normalization layers local, and the Cox '
        'model has none. Set `client.fedbn=false`.'
    )
  if config.attack.attack in ('label_flip', 'backdoor'):
    raise InputError(
        f'`attack.attack={config.attack.attack}` poisons class labels, '
        f'which `data.dataset={data.dataset}` does not have. Use a '
        'model-poisoning attack: sign_flip, scaling, gaussian, '
        'little_is_enough or inner_product.'
    )


def _validate_fedbn(config: ExperimentConfig) -> None:
  """Reject the settings that FedBN or batch normalization cannot run with."""
  client, model = config.client, config.model
  batch_norm = model.model == 'resnet' and model.norm == 'batch'
  if batch_norm and client.dp_sgd:
    raise InputError(
        '`client.dp_sgd=true` cannot train `model.norm=batch`: batch '
        'statistics mix the examples of a batch, so no per-example gradient '
        'exists. Set `model.norm=group` or `model.norm=none`.'
    )
  if (batch_norm and not client.fedbn
      and config.privacy.noise != 'none'):
    raise InputError(
        '`model.norm=batch` sends each client\'s batch statistics in its '
        f'update, so `privacy.noise={config.privacy.noise}` would clip and '
        'noise them with the weights, and they would take most of the clip '
        'budget. Set `client.fedbn=true` (the statistics stay local) or '
        '`model.norm=group`.'
    )
  if (config.attack.attack == 'backdoor'
      and config.data.dataset in IMAGE_DATASETS):
    # NOTE: the backdoor trigger sets feature columns of tabular rows; no
    # image trigger (a pixel patch) exists yet.
    raise InputError(
        '`attack.attack=backdoor` stamps its trigger on feature columns and '
        f'does not support image data (`data.dataset={config.data.dataset}`).'
        ' Use label_flip or a model-poisoning attack with images.'
    )
  if not client.fedbn:
    return
  if model.model != 'resnet' or model.norm == 'none':
    raise InputError(
        '`client.fedbn=true` keeps normalization layers local, but '
        f'`model.model={model.model}`'
        + (' with `model.norm=none`' if model.model == 'resnet' else '')
        + ' has none. Use `model.model=resnet` with `model.norm` batch or '
        'group.'
    )
  if client.scaffold or client.ditto_lambda is not None:
    raise InputError(
        '`client.fedbn=true` cannot run with `client.scaffold` or '
        '`client.ditto_lambda`, whose per-client state covers every layer. '
        'Turn those off.'
    )


def _validate_training(config: ExperimentConfig) -> None:
  _require_choice('model.model', config.model.model, MODELS)
  for size in config.model.hidden_sizes:
    _require_range('model.hidden_sizes', size, 1)
  if not config.model.widths:
    raise InputError(
        '`model.widths` is empty; give the ResNet at least one stage, for '
        'example `--set widths=16,32`.'
    )
  for size in config.model.widths:
    _require_range('model.widths', size, 1)
  _require_choice('model.norm', config.model.norm, NORMS)
  _require_choice('model.cox_loss_normalization',
                  config.model.cox_loss_normalization,
                  COX_LOSS_NORMALIZATIONS)
  client = config.client
  _validate_fedbn(config)
  _require_choice('client.optimizer', client.optimizer, CLIENT_OPTIMIZERS)
  _require_choice('client.compute_dtype', client.compute_dtype,
                  COMPUTE_DTYPES)
  if client.compute_dtype != 'float32' and client.dp_sgd:
    raise InputError(
        f'`client.compute_dtype={client.compute_dtype}` is not supported with '
        '`client.dp_sgd=true`, whose per-example gradients run in float32. '
        'Set `client.compute_dtype=float32`.'
    )
  _require_range('client.learning_rate', client.learning_rate,
                 _SMALLEST_NORMAL)
  _require_range('client.local_steps', client.local_steps, 1, _MAX_STEPS)
  _require_range('client.local_epochs', client.local_epochs, 1, _MAX_STEPS)
  _require_range('client.batch_size', client.batch_size, 1)
  _require_range('client.example_clip_norm', client.example_clip_norm,
                 _SMALLEST_NORMAL)
  _require_range(
      'client.example_noise_multiplier', client.example_noise_multiplier, 0.0,
      low_open=True,
  )
  if client.dp_sgd:
    _require_float32_std(
        'client.example_noise_multiplier', client.example_noise_multiplier,
        'client.example_clip_norm', client.example_clip_norm)
  _require_range('client.proximal_mu', client.proximal_mu, 0.0)
  _require_range('client.ditto_lambda', client.ditto_lambda, 0.0)
  _check_proximal_step(client)
  _require_range('client.chunk_size', client.chunk_size, 1, _MAX_STEPS)
  if client.scaffold and client.optimizer != 'sgd':
    raise InputError(
        f'`client.scaffold=true` needs `client.optimizer=sgd`; got '
        f'{client.optimizer}. Its control update divides by the SGD step '
        'size.'
    )
  if client.scaffold and config.server.aggregator not in ('fedavg', 'mean'):
    raise InputError(
        '`client.scaffold=true` needs `server.aggregator` fedavg or mean; '
        f'got {config.server.aggregator}. SCAFFOLD averages the control '
        'variates, so a robust aggregator would not protect them.'
    )
  if client.scaffold and (client.dp_sgd or config.privacy.noise != 'none'):
    raise InputError(
        '`client.scaffold=true` cannot run with DP: each client sends its '
        'control variate unclipped and unnoised. Turn off `client.dp_sgd` '
        'and `privacy.noise`, or use FedAvg or FedProx.'
    )

  server = config.server
  _require_choice('server.aggregator', server.aggregator, AGGREGATORS)
  _require_choice(
      'server.server_optimizer', server.server_optimizer, SERVER_OPTIMIZERS
  )
  _require_range('server.server_learning_rate',
                 server.server_learning_rate, _SMALLEST_NORMAL)
  # The round counter is int32.
  _require_range('server.rounds', server.rounds, 1, 2**31 - 1)
  # tau^2 overflows a float above about 1e154; useful values are below 1.
  _require_range('server.server_tau', server.server_tau, _SMALLEST_NORMAL,
                 1e6)
  _require_range('server.num_byzantine', server.num_byzantine, 0)
  _require_range('server.trim_fraction', server.trim_fraction, 0.0, 0.5,
                 high_open=True)
  _require_range('server.num_selected', server.num_selected, 1)
  _require_range('server.max_norm', server.max_norm, _SMALLEST_NORMAL)
  _require_range('server.num_iterations', server.num_iterations, 1)
  _require_range('server.clip_radius', server.clip_radius, _SMALLEST_NORMAL)
  _require_range('server.qffl_q', server.qffl_q, 0.0, 100.0)
  if server.fednova and (
      server.aggregator not in ('fedavg', 'mean')
      or config.client.optimizer != 'sgd' or config.client.dp_sgd
      or config.privacy.noise != 'none'):
    raise InputError(
        '`server.fednova=true` needs `server.aggregator` fedavg or mean, '
        '`client.optimizer=sgd` without `client.dp_sgd`, and no '
        '`privacy.noise`: it rescales plain SGD updates before averaging.'
    )
  if server.fednova and config.client.scaffold:
    # The rescaled update would replace the raw one in SCAFFOLD's control
    # update (option II), off by tau_eff / tau_i per client.
    raise InputError(
        '`server.fednova=true` does not combine with `client.scaffold=true`: '
        'SCAFFOLD corrects client drift with control variates built from '
        'each raw update, and FedNova rescales those updates. Use one of '
        'them.'
    )
  if server.aggregator == 'qffl' and (
      config.client.optimizer != 'sgd' or config.client.dp_sgd):
    raise InputError(
        '`server.aggregator=qffl` needs `client.optimizer=sgd` without '
        '`client.dp_sgd`: it takes L = 1 / `client.learning_rate`, which '
        'only holds for plain SGD steps.'
    )
  if server.aggregator == 'centered_clipping' and server.clip_radius is None:
    raise InputError(
        '`server.aggregator=centered_clipping` needs `server.clip_radius`, '
        'the L2 radius around the previous aggregate.'
    )
  if server.aggregator == 'norm_bounded' and server.max_norm is None:
    raise InputError(
        '`server.aggregator=norm_bounded` needs `server.max_norm`, the L2 '
        'bound of each update.'
    )


def _validate_sampling_and_privacy(config: ExperimentConfig) -> None:
  sampling = config.sampling
  _require_choice('sampling.sampling', sampling.sampling, SAMPLINGS)
  if sampling.sampling == 'uniform' and sampling.cohort_size is None:
    raise InputError(
        '`sampling.sampling=uniform` needs `sampling.cohort_size`, the number '
        'of clients per round.'
    )
  _require_range('sampling.cohort_size', sampling.cohort_size, 1)
  _require_range(
      'sampling.sampling_rate', sampling.sampling_rate, 0.0, 1.0, low_open=True
  )
  _require_range('sampling.dropout_rate', sampling.dropout_rate, 0.0, 1.0)
  if sampling.dropout_rate == 1.0 and config.privacy.noise in (
      'central', 'distributed'):
    # The fixed denominator is the expected reporting weight, 0 here, so
    # every round would add its noise divided by a floor of 1e-12.
    raise InputError(
        f'`sampling.dropout_rate=1.0` with `privacy.noise='
        f'{config.privacy.noise}` leaves no client to report, so every round '
        'would apply noise alone, scaled by an expected reporting weight of '
        '0. Use a dropout rate below 1.'
    )

  _validate_privacy(config)
  _validate_secure_aggregation(config)
  _validate_participation(config)


SCHEDULES = ('none', 'office_hours')
STRAGGLER_POLICIES = ('wait', 'drop', 'partial')
COMPRESSORS = ('none', 'qsgd', 'rotated', 'top_k')


def participation_active(config: ExperimentConfig) -> bool:
  """Return whether the participation section differs from its defaults."""
  return config.participation != ParticipationConfig()


def _validate_participation(config: ExperimentConfig) -> None:
  part = config.participation
  _require_range('participation.availability', part.availability, 0.0, 1.0,
                 low_open=True)
  _require_choice('participation.schedule', part.schedule, SCHEDULES)

  _require_range('participation.off_hours_availability',
                 part.off_hours_availability, 0.0, 1.0)
  _require_range('participation.time_zones', part.time_zones, 1, 24)
  # Beyond these, lognormal draws and the float32 clock overflow.
  for name in ('speed_spread', 'link_spread', 'speed_jitter'):
    _require_range(f'participation.{name}', getattr(part, name), 0.0, 5.0)
  _require_range('participation.server_seconds', part.server_seconds, 0.0,
                 1e9)
  # Below about one step or byte a day (1e-5 per second), rounds grow
  # towards float32's range.
  for name in ('steps_per_second', 'upload_bytes_per_second',
               'download_bytes_per_second'):
    _require_range(f'participation.{name}', getattr(part, name), 1e-5, 1e12)
  _require_range('participation.deadline_s', part.deadline_s, 0.0, 1e12,
                 low_open=True)
  for name in ('speed_spread', 'speed_jitter'):
    if getattr(part, name) and part.steps_per_second is None:
      raise InputError(
          f'`participation.{name}` has no effect without '
          '`participation.steps_per_second`; set both or neither.'
      )
  if part.link_spread and (part.upload_bytes_per_second is None
                           and part.download_bytes_per_second is None):
    raise InputError(
        '`participation.link_spread` has no effect without '
        '`participation.upload_bytes_per_second` or '
        '`download_bytes_per_second`; set a link speed or remove it.'
    )
  if part.deadline_s is not None and (
      part.steps_per_second is None and part.upload_bytes_per_second is None
      and part.download_bytes_per_second is None):
    raise InputError(
        '`participation.deadline_s` has no effect while clients take no '
        'time; set `participation.steps_per_second` or a link speed.'
    )

  _require_choice('participation.straggler_policy', part.straggler_policy,
                  STRAGGLER_POLICIES)
  if part.straggler_policy != 'wait' and part.deadline_s is None:
    raise InputError(
        f'`participation.straggler_policy={part.straggler_policy}` needs '
        '`participation.deadline_s`; set it or use `straggler_policy=wait`.'
    )
  if part.straggler_policy == 'partial' and part.steps_per_second is None:
    raise InputError(
        '`participation.straggler_policy=partial` cuts local steps at the '
        'deadline, so it needs `participation.steps_per_second`; set it.'
    )
  if (part.schedule != 'none' and part.steps_per_second is None
      and part.server_seconds == 0):
    raise InputError(
        '`participation.schedule` follows the virtual clock, which does not '
        'advance without `participation.steps_per_second` or '
        '`participation.server_seconds`; set one.'
    )

  if config.privacy.target_epsilon is not None and (
      participation_active(config) or config.compression.compressor != 'none'):
    raise InputError(
        '`privacy.target_epsilon` calibrates and stops by the accountant '
        'that assumes every sampled client online and uncompressed, which '
        'the `participation` and `compression` sections change. Set '
        '`privacy.noise_multiplier` instead and read the claims in '
        "summary.json's `participation.privacy`."
    )
  compression = config.compression
  _require_choice('compression.compressor', compression.compressor,
                  COMPRESSORS)
  _require_range('compression.quantization_levels',
                 compression.quantization_levels, 1, 2**24)
  _require_range('compression.top_k_fraction', compression.top_k_fraction,
                 0.0, 1.0, low_open=True)
  if compression.compressor != 'none' and (
      config.privacy.noise in ('local', 'distributed')
      or config.secure_aggregation.enabled
      or config.client.scaffold or config.client.fedbn):
    raise InputError(
        '`compression.compressor` runs before the server clips and noises '
        'each decoded update, so it cannot be combined with '
        '`privacy.noise=local` or `distributed`, secure aggregation, '
        '`client.scaffold` or `client.fedbn`. Turn those off or set '
        '`compression.compressor=none`.'
    )


def _validate_secure_aggregation(config: ExperimentConfig) -> None:
  secure = config.secure_aggregation
  _require_choice('secure_aggregation.graph', secure.graph, SECURE_GRAPHS)
  _require_range('secure_aggregation.degree', secure.degree, 2)
  _require_range('secure_aggregation.threshold_fraction',
                 secure.threshold_fraction, 0.0, 1.0, high_open=True)
  _require_range('secure_aggregation.ring_bits', secure.ring_bits, 2, 32)
  _require_range('secure_aggregation.fixed_point_scale',
                 secure.fixed_point_scale, 0.0, low_open=True)
  _require_range('secure_aggregation.unmask_dropout_rate',
                 secure.unmask_dropout_rate, 0.0, 1.0)
  if not secure.enabled:
    defaults = SecureAggregationConfig()
    for field in dataclasses.fields(SecureAggregationConfig):
      value = getattr(secure, field.name)
      if field.name != 'enabled' and value != getattr(defaults, field.name):
        raise InputError(
            f'`secure_aggregation.{field.name}={_toml_text(value)}` has no '
            'effect unless `secure_aggregation.enabled=true`.'
        )
    return
  if secure.degree is not None and secure.graph != 'harary':
    raise InputError(
        '`secure_aggregation.degree` applies only to graph harary; the '
        'complete graph links every pair.'
    )
  if secure.degree is not None and secure.degree % 2:
    raise InputError(
        f'Invalid `secure_aggregation.degree`: {secure.degree}. A harary '
        'graph needs an even degree.'
    )
  aggregator = config.server.aggregator
  if aggregator not in ('fedavg', 'mean'):
    raise InputError(
        f'Aggregator {aggregator} needs each client\'s update, but under '
        'secure aggregation the server sees only their sum. Use '
        '`server.aggregator=fedavg` or `mean` (clients bound their own '
        'update with `privacy.clip_norm`), or set '
        '`secure_aggregation.enabled=false`.'
    )
  if config.privacy.clip_norm is None:
    raise InputError(
        '`secure_aggregation.enabled=true` needs `privacy.clip_norm`: '
        'updates are encoded as bounded fixed-point integers.'
    )
  if config.privacy.noise == 'local':
    raise InputError(
        '`secure_aggregation.enabled=true` does not support '
        '`privacy.noise=local`. Use distributed noise, which secure '
        'aggregation exists for, or central noise.'
    )
  if config.privacy.adaptive_clipping:
    raise InputError(
        '`secure_aggregation.enabled=true` does not support '
        '`privacy.adaptive_clipping=true`: its unclipped count is not '
        'securely summed.'
    )
  privacy = config.privacy
  if (privacy.noise == 'distributed' and privacy.target_epsilon is not None
      and privacy.target_mode == 'calibrate'):
    raise InputError(
        '`privacy.target_mode=calibrate` calibrates a continuous Gaussian, '
        'but under secure aggregation distributed noise is discrete '
        'Gaussian with its own accounting. Set `privacy.noise_multiplier` '
        'and use `privacy.target_mode=stop` to stop at the target.'
    )
  if config.client.scaffold or config.server.fednova:
    raise InputError(
        '`secure_aggregation.enabled=true` does not support SCAFFOLD or '
        'FedNova, which send per-client values the protocol does not '
        'protect.'
    )


def _validate_privacy(config: ExperimentConfig) -> None:
  privacy = config.privacy
  _require_range('privacy.clip_norm', privacy.clip_norm, _SMALLEST_NORMAL)
  _require_choice('privacy.clipping', privacy.clipping, CLIPPINGS)
  _require_choice('privacy.noise', privacy.noise, NOISE_KINDS)
  _require_range('privacy.noise_multiplier', privacy.noise_multiplier, 0.0)
  _require_range(
      'privacy.min_reporting_clients', privacy.min_reporting_clients, 1
  )
  _require_range(
      'privacy.delta', privacy.delta, 0.0, 1.0, low_open=True, high_open=True
  )
  _require_choice('privacy.accountant', privacy.accountant, ACCOUNTANTS)
  _require_range(
      'privacy.target_epsilon', privacy.target_epsilon, 0.0, low_open=True
  )
  _require_choice('privacy.target_mode', privacy.target_mode, TARGET_MODES)
  _require_range('server.weight_cap', config.server.weight_cap, 0.0,
                 low_open=True)
  _require_range('privacy.target_quantile', privacy.target_quantile, 0.0, 1.0)
  _require_range(
      'privacy.clip_learning_rate', privacy.clip_learning_rate, 0.0,
      low_open=True,
  )
  _require_range(
      'privacy.count_noise_stddev', privacy.count_noise_stddev, 0.0,
      low_open=True,
  )
  if privacy.adaptive_clipping and privacy.clip_norm is None:
    raise InputError(
        '`privacy.adaptive_clipping=true` needs `privacy.clip_norm`, the '
        'starting clip bound.'
    )
  if privacy.adaptive_clipping and privacy.noise in ('local', 'distributed'):
    raise InputError(
        '`privacy.adaptive_clipping=true` does not support `privacy.noise='
        f'{privacy.noise}`: the server adds the count\'s noise itself, so it '
        'sees each client\'s unclipped indicator first, which local and '
        'distributed noise are meant to prevent. Use central noise, or a '
        'fixed `privacy.clip_norm`.'
    )
  if privacy.noise == 'none':
    return
  if privacy.clip_norm is None:
    raise InputError(
        f'`privacy.noise={privacy.noise}` needs `privacy.clip_norm`, because '
        'the noise std is noise_multiplier * clip_norm.'
    )
  calibrating = (privacy.target_epsilon is not None
                 and privacy.target_mode == 'calibrate')
  if calibrating and privacy.noise_multiplier > 0:
    raise InputError(
        '`privacy.noise_multiplier` and `privacy.target_epsilon` with '
        'target_mode=calibrate both set the noise. Set only one of them, or '
        'use target_mode=stop.'
    )
  if not calibrating and privacy.noise_multiplier <= 0:
    raise InputError(
        f'`privacy.noise={privacy.noise}` needs `privacy.noise_multiplier` '
        '> 0, or a `privacy.target_epsilon` to calibrate it.'
    )
  _require_float32_std('privacy.noise_multiplier', privacy.noise_multiplier,
                       'privacy.clip_norm', privacy.clip_norm)
  aggregator = config.server.aggregator
  if aggregator == 'qffl':
    # Before the central and distributed message, which suggests local
    # noise: that would protect the update but not the loss.
    raise InputError(
        f'`privacy.noise={privacy.noise}` does not apply to aggregator qffl: '
        'each client also sends its training loss, which q-FFL weighs by '
        'and no noise covers, so a privacy claim would leave it out. Use '
        '`server.aggregator=mean` or `fedavg` with DP, or qffl without '
        '`privacy.noise`.'
    )
  if privacy.noise in ('central', 'distributed'):
    if aggregator not in ('fedavg', 'mean'):
      raise InputError(
          f'`privacy.noise={privacy.noise}` is calibrated to a sum of clipped '
          f'updates and does not apply to aggregator {aggregator}. Use mean, '
          'fedavg with `server.weight_cap`, or local noise.'
      )
    if aggregator == 'fedavg' and config.server.weight_cap is None:
      raise InputError(
          f'`privacy.noise={privacy.noise}` with aggregator fedavg needs '
          '`server.weight_cap`: example-count weights make the sensitivity '
          'unbounded. Set a cap (weights become min(num_examples / cap, 1)) '
          'or use `aggregator=mean`.'
      )
  if privacy.noise == 'distributed':
    _validate_distributed(config)


def _validate_distributed(config: ExperimentConfig) -> None:
  privacy, sampling = config.privacy, config.sampling
  if privacy.min_reporting_clients is None and sampling.sampling == 'poisson':
    raise InputError(
        '`privacy.noise=distributed` with Poisson sampling needs '
        '`privacy.min_reporting_clients`: a Poisson cohort has no guaranteed '
        'size.'
    )
  if privacy.min_reporting_clients is None and sampling.dropout_rate > 0:
    raise InputError(
        '`privacy.noise=distributed` with `sampling.dropout_rate` > 0 needs '
        '`privacy.min_reporting_clients`, the number of clients guaranteed '
        'to report after dropout; the cohort size would not be reached.'
    )
  if (sampling.sampling == 'uniform' and privacy.min_reporting_clients
      and sampling.cohort_size
      and privacy.min_reporting_clients > sampling.cohort_size):
    raise InputError(
        f'`privacy.min_reporting_clients` ({privacy.min_reporting_clients}) '
        f'is larger than `sampling.cohort_size` ({sampling.cohort_size}), so '
        'no round could reach it.'
    )


MAX_NAME_BYTES = 200


def _validate_name(name) -> None:
  """Raise InputError unless `name` can prefix one folder under `runs/`."""
  if name is None:
    return
  if not isinstance(name, str) or not name.strip():
    raise InputError(f'`name={name!r}` is invalid; use a nonempty name such '
                     'as heart_fedavg.')
  # A folder name has at most 255 bytes, and the run adds `-<time>`, a
  # sweep `_sweep` and its points `-<index>`.
  if len(name.encode('utf-8')) > MAX_NAME_BYTES:
    raise InputError(
        f'`name` has {len(name.encode("utf-8"))} bytes; use at most '
        f'{MAX_NAME_BYTES}, because the run folder is runs/<name>-<time>.')
  if ('/' in name or '\\' in name or '\0' in name or name in ('.', '..')
      or os.path.isabs(name)):
    raise InputError(
        f'`name={name!r}` is invalid: the run folder is runs/<name>-<time>, '
        'so the name cannot contain a path separator or be . or ..; use '
        '--out to choose another folder.')


def validate(config: ExperimentConfig, *,
             given_keys: Collection[str] = ()) -> None:
  """Check every value that does not depend on the data.

  Args:
    config: the config to check.
    given_keys: the `section.field` keys that the user set explicitly, as
      `given_keys` returns them. A setting that the chosen options ignore
      is rejected when it differs from its default or is one of these, so
      `local_steps=100` beside `local_epochs` is caught though 100 is the
      default.

  Raises:
    InputError: naming the first invalid key, its value and what is allowed.
  """
  # A config built in Python (dataclasses.replace) skips the type checks of
  # loading: `dp_sgd='false'` trained with DP-SGD, since the string is true.
  from_document(to_dict(config))
  _require_range('seed', config.seed, 0, MAX_SEED)
  _validate_name(config.name)
  _validate_data(config.data)
  _require_choice('model.model', config.model.model, MODELS)
  _validate_survival(config)
  _validate_training(config)
  _validate_sampling_and_privacy(config)
  evaluation = config.evaluation
  _require_range('evaluation.eval_every', evaluation.eval_every, 1)
  _require_range('evaluation.threshold', evaluation.threshold, 0.0, 1.0)
  _require_range('evaluation.finetune_steps', evaluation.finetune_steps, 0,
                 _MAX_STEPS)
  _require_range(
      'evaluation.bootstrap_resamples', evaluation.bootstrap_resamples,
      MIN_BOOTSTRAP_RESAMPLES, MAX_BOOTSTRAP_RESAMPLES,
  )
  _require_range(
      'evaluation.confidence', evaluation.confidence, 0.0, 1.0,
      low_open=True, high_open=True,
  )
  attack = config.attack
  _require_choice('attack.attack', attack.attack, ATTACKS)
  _require_range(
      'attack.malicious_fraction', attack.malicious_fraction, 0.0, 1.0,
      high_open=True,
  )
  _require_range('attack.attack_strength', attack.attack_strength,
                 -math.inf)
  if (attack.attack == 'none') != (attack.malicious_fraction == 0.0):
    raise InputError(
        f'`attack.attack={attack.attack}` with `attack.malicious_fraction='
        f'{attack.malicious_fraction}` has no effect. Set both an attack and '
        'a fraction above 0, or neither.'
    )
  if attack.attack_strength is not None and attack.attack in (
      'label_flip', 'none'):
    raise InputError(
        '`attack.attack_strength` has no effect with attack '
        f'{attack.attack}.'
    )
  _require_range('attack.poison_fraction', attack.poison_fraction, 0.0, 1.0,
                 low_open=True)
  _require_range('attack.target_label', attack.target_label, 0)
  _require_range('attack.trigger_value', attack.trigger_value, -math.inf)
  if not attack.trigger_features:
    raise InputError(
        '`attack.trigger_features` is empty. List at least one feature '
        'column for the backdoor trigger.'
    )
  for column in attack.trigger_features:
    _require_range('attack.trigger_features', column, 0)
  _check_unused_settings(config, frozenset(given_keys))
