"""Grids of studies, batched into one compiled program where the shapes allow.

A sweep config is a study config plus a `[sweep]` table:

    [sweep]
    seeds = [0, 1, 2]
    "client.learning_rate" = [0.03, 0.1, 0.3]
    "data.dirichlet_alpha" = [0.3, 1.0, 100.0]

    [sweep.variants]
    fedavg = {}
    fedprox = { "client.proximal_mu" = 0.1 }
    fedadam = { "server.server_optimizer" = "fedadam", "server.server_learning_rate" = 0.03 }

Every other key of `[sweep]` is a config key with a list of values. The
points are every variant x every combination of the listed values x every
seed. A point is the study `fedjax-med run` would run with those settings,
with the same keys.

Points whose configs differ only in values that enter the round as arrays
form one group. The group runs as a batched axis of one compiled program
(`jax.vmap` over experiments). Those values are the seed, every data
setting, `client.learning_rate`, `server.server_learning_rate`,
`client.proximal_mu` and the privacy noise multiplier (set or calibrated to
`privacy.target_epsilon`). Each point's clients are padded to the batch's
largest client. The minibatch draws do not depend on padding, so a batched
point gives the numbers of its own run to float precision.

A point whose config changes the program, such as another aggregator,
model or number of clients, starts another group, compiled on its own.
Groups of one point, and points that stop at a target epsilon, use a
backdoor attack, fine-tune or train Ditto models, run one by one through
`fedjax_med.study.run_study`. The plan printed first says which and why.

The output folder gets:

* `sweep.json`: the base config and the sweep settings; `provenance.json`:
  versions and the SHA-256 of every data file the points read.
* `points.jsonl`: one line per point, written when its group finishes, so
  an interrupted sweep keeps its finished groups and `resume=True` skips
  them.
* `rounds.jsonl`: the round metrics of the batched points, one line per
  point and round (`runs/` holds the folders of the points run one by one).
* `table.csv`: one row per point; `summary.csv` and `summary.md`: mean and
  population standard deviation (ddof=0) over seeds for each setting.
* `sweep.png`: mean and worst-client accuracy against the first swept
  value, when the sweep has axes besides seeds.
"""

import dataclasses
import difflib
import itertools
import json
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fedjax_med import checkpoint as checkpoint_lib
from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import matrix as matrix_lib
from fedjax_med import study
from fedjax_med.data import federated
from fedjax_med.errors import DataCheckError
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.errors import TrainingDiverged
from fedjax_med.report import outputs
from fedjax_med.report import plots
from fedjax_med.report import provenance
from fedjax_med.simulation import evaluate as evaluate_lib

# Config values a batched group may vary; each enters the round as an array.
BATCHED_KEYS = (
    'seed', 'data.*', 'client.learning_rate', 'server.server_learning_rate',
    'client.proximal_mu', 'privacy.noise_multiplier', 'privacy.target_epsilon',
)
# A batch pads its points' clients to at most this many times the largest
# client of its smallest point, and its data take at most this many bytes.
MAX_PADDING = 2.0
MAX_BATCH_BYTES = 2 * 2**30
# Columns of table.csv after the settings.
METRICS = (
    'mean_accuracy', 'worst_accuracy', 'p10_accuracy', 'std_accuracy',
    'best_worst_gap', 'smallest_clients_accuracy', 'largest_clients_accuracy',
    'train_loss', 'epsilon', 'denominator', 'ditto_mean_accuracy',
    'ditto_worst_accuracy',
    'finetuned_mean_accuracy', 'finetuned_worst_accuracy', 'clock_s',
    'bytes_up',
)
# The personalized models' mean accuracy joins summary.md and summary.csv
# when some point has it.
_PERSONAL_METRICS = ('ditto_mean_accuracy', 'finetuned_mean_accuracy')
_SUMMARY_METRICS = ('mean_accuracy', 'worst_accuracy', 'p10_accuracy',
                    'best_worst_gap')


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """The axes of a sweep.

  Attributes:
    axes: `(config key, values)` pairs, in file order.
    variants: `(name, overrides)` pairs; one unnamed variant without
      overrides when the config has none.
    seeds: the seeds of every setting.
  """

  axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
  variants: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (('', ()),)
  seeds: tuple[int, ...] = (0,)


@dataclasses.dataclass(frozen=True)
class Point:
  """One study of the sweep.

  Attributes:
    index: position in the sweep, from 0.
    settings: the variant name, the axis values and the seed, as written to
      the table.
    config: the full, checked study config.
  """

  index: int
  settings: dict[str, Any]
  config: config_lib.ExperimentConfig


def _flat_items(table: dict[str, Any], prefix: str = ''):
  """Yield `(dotted key, value)`, so TOML's `client.learning_rate = [...]`
  and `"client.learning_rate" = [...]` read the same."""
  for key, value in table.items():
    if isinstance(value, dict) and value:
      yield from _flat_items(value, f'{prefix}{key}.')
    else:
      # An empty table is yielded as a value, so that a misspelt one is
      # rejected as an unknown key instead of being ignored.
      yield f'{prefix}{key}', value


def _as_values(key: str, value: Any) -> tuple[Any, ...]:
  if isinstance(value, str) and ',' in value:
    value = [item.strip() for item in value.split(',')]
  if not isinstance(value, (list, tuple)):
    value = [value]
  if not value:
    raise InputError(f'`sweep.{key}` is empty; list at least one value.')
  if len({json.dumps(item) for item in value}) != len(value):
    raise InputError(f'`sweep.{key}` repeats a value: {list(value)}.')
  return tuple(value)


def _toml_key(name: str) -> str:
  """Return `name` as a TOML key: bare if TOML allows, else quoted."""
  if re.fullmatch(r'[A-Za-z0-9_-]+', name):
    return name
  return json.dumps(name)


def _check_typed_axis(key: str, value: Any) -> None:
  """Raise InputError for a quoted number or flag in a TOML sweep axis.

  Checked as a whole list, so that the hint is the axis line of the
  `[sweep]` table, such as `"client.learning_rate" = [0.1]`, not the line
  of the field's own section.
  """
  _check_sweep_key(key)
  annotation = config_lib.field_annotation(key)
  if annotation not in (int, float, bool):
    return  # Text and list fields: apply_overrides checks each value.
  items = list(value) if isinstance(value, (list, tuple)) else [value]
  config_lib._check_typed(  # pylint: disable=protected-access
      f'sweep.{key}', items, tuple[annotation, ...],
      assignment=lambda literal: f'"{key}" = {literal}')


def _check_sweep_key(key: str) -> None:
  """Raise InputError for a key that is neither a config key nor the sweep's.

  A misspelt `seeds` or `variants` would otherwise get config keys such as
  `seed` as suggestions, which a sweep then rejects.
  """
  try:
    config_lib.resolve_key(key)
  except InputError:
    close = difflib.get_close_matches(key.split('.')[0],
                                      ('seeds', 'variants'), n=1)
    if close:
      raise InputError(
          f'Unknown sweep key `sweep.{key}`; did you mean `sweep.{close[0]}`?'
      ) from None
    raise


def sweep_from_document(
    section: dict[str, Any],
    base: config_lib.ExperimentConfig,
    overrides: dict[str, str] | None = None,
) -> SweepConfig:
  """Build a `SweepConfig` from a `[sweep]` table and `--set sweep.*` values.

  `overrides` maps `sweep.<key>` to a comma-separated string, for example
  `sweep.seeds=0,1,2`.

  Raises:
    InputError: for an unknown config key, a value of the wrong type, an
      empty or repeated list, or a key swept twice.
  """
  section = dict(section)
  variants_table = section.pop('variants', None)
  values = dict(_flat_items(section))
  # Command-line strings are parsed; TOML values must have the right type.
  typed = set(values)
  for key, value in (overrides or {}).items():
    values[key.removeprefix('sweep.')] = value
    typed.discard(key.removeprefix('sweep.'))
  for key in typed:
    config_lib.reject_comma_string(f'sweep.{key}', values[key])
  if not values and variants_table is None:
    # An empty table used to run the base config once, as a sweep of one.
    raise InputError(
        'The [sweep] table is empty. List the values to sweep, such as '
        '`seeds = [0, 1, 2]` or `"client.learning_rate" = [0.01, 0.1]`, or '
        'run the config once with `fedjax-med run`.'
    )
  seeds = (base.seed,)
  if 'seeds' in typed:
    config_lib._check_typed(  # pylint: disable=protected-access
        'sweep.seeds', values['seeds'], tuple[int, ...])
  if 'seeds' in values:
    seeds = tuple(
        config_lib._coerce(  # pylint: disable=protected-access
            'sweep.seeds', item, int, strict='seeds' in typed)
        for item in _as_values('seeds', values.pop('seeds'))
    )
    for seed in seeds:
      if not 0 <= seed <= config_lib.MAX_SEED:
        raise InputError(
            f'`sweep.seeds` has {seed}; seeds are 0 to {config_lib.MAX_SEED}.'
        )
  axes = []
  for key, value in values.items():
    _check_sweep_key(key)
    if key in ('seed', 'name'):
      raise InputError(
          f'`sweep.{key}` cannot be swept' + (
              '; list the seeds as `sweep.seeds`.' if key == 'seed' else '.')
      )
    if key in typed:
      _check_typed_axis(key, value)
    items = _as_values(key, value)
    # Checks the key and each value's type now, before any training. A
    # command-line value is stored parsed, as its TOML form would be, so
    # that 0.3 and 100 sort and plot as numbers, not strings.
    parsed = []
    # The values as the config stores them: `[1, 1.0]` for a float field is
    # 1.0 twice, which would run the same point twice.
    stored = {}
    for item in items:
      config = config_lib.apply_overrides(base, {key: item},
                                          strict=key in typed)
      value = _value_of(config, key)
      parsed.append(item if key in typed else value)
      written = json.dumps(value)
      if written in stored:
        raise InputError(
            f'`sweep.{key}` repeats a value: {value!r}, written as '
            f'{stored[written]!r} and {item!r}, so two points would be the '
            'same run. Remove one of them.'
        )
      stored[written] = item
    axes.append((key, tuple(parsed)))
  variants = (('', ()),)
  if variants_table is not None:
    if not isinstance(variants_table, dict) or not variants_table:
      raise InputError(
          '`sweep.variants` must be a table of name = { key = value, ... }, '
          'for example fedprox = { "client.proximal_mu" = 0.1 }.'
      )
    variants = []
    for name, table in variants_table.items():
      if not isinstance(table, dict):
        raise InputError(
            f'`sweep.variants.{name}` must be a table of config values, such '
            f'as {{ "client.proximal_mu" = 0.1 }}; got {table!r}.'
        )
      pairs = tuple(_flat_items(table))
      for key, item in pairs:
        if key in ('seed', 'name'):
          # Every point gets its seed from `sweep.seeds` and its name from
          # its index, so the variant's value would be ignored.
          raise InputError(
              f'`sweep.variants.{name}` sets `{key}`, which the sweep sets '
              'for every point' + (
                  '. List the seeds in `sweep.seeds` instead.'
                  if key == 'seed' else '.')
          )
        if any(config_lib.resolve_key(key) == config_lib.resolve_key(axis)
               for axis, _ in axes):
          raise InputError(
              f'`sweep.variants.{name}` sets `{key}`, which is also a sweep '
              'axis. Sweep it in one place only.'
          )
        try:
          config_lib._check_typed(  # pylint: disable=protected-access
              key, item, config_lib.field_annotation(key),
              assignment=lambda literal, name=name, key=key: (
                  f'{_toml_key(str(name))} = {{ "{key}" = {literal} }}'))
          config_lib.apply_overrides(base, {key: item}, strict=True)
        except InputError as error:
          raise InputError(f'In `sweep.variants.{name}`: {error}') from None
      variants.append((str(name), pairs))
    variants = tuple(variants)
  return SweepConfig(axes=tuple(axes), variants=variants, seeds=seeds)


def _value_of(config: config_lib.ExperimentConfig, key: str) -> Any:
  """Return the value of `key` in `config`, lists as lists."""
  section, name = config_lib.resolve_key(key)
  value = getattr(config if section is None else getattr(config, section),
                  name)
  return list(value) if isinstance(value, tuple) else value


def load_sweep_toml(
    path: str | pathlib.Path, overrides: dict[str, str] | None = None
) -> tuple[config_lib.ExperimentConfig, SweepConfig]:
  """Read a sweep config: a study config plus a `[sweep]` table.

  Args:
    path: the TOML file.
    overrides: `--set` values; keys starting with `sweep.` set an axis, the
      others the base study.

  Raises:
    InputError: if the file has no `[sweep]` table or sets a bad value.
  """
  document = config_lib.read_toml(path)
  section = document.pop('sweep', None)
  if not isinstance(section, dict):
    raise InputError(
        f'{path} has no [sweep] table. Add one with the config keys to sweep '
        'and their values, as in experiments/heterogeneity_sweep.toml.'
    )
  overrides = overrides or {}
  axis_overrides = {key: value for key, value in overrides.items()
                    if key.startswith('sweep.')}
  base_overrides = {key: value for key, value in overrides.items()
                    if key not in axis_overrides}
  base = config_lib.apply_overrides(
      config_lib.from_document(document), base_overrides)
  sweep = sweep_from_document(section, base, axis_overrides)
  swept = {config_lib.resolve_key(key): f'`sweep.{key}`'
           for key, _ in sweep.axes}
  # A key that every variant sets is also set for every point.
  per_variant = [{config_lib.resolve_key(key) for key, _ in pairs}
                 for _, pairs in sweep.variants]
  for key in set.intersection(*per_variant):
    swept.setdefault(key, 'every entry of `sweep.variants`')
  if len(sweep.seeds) != 1 or sweep.seeds[0] != base.seed:
    swept.setdefault((None, 'seed'), '`sweep.seeds`')
  for key, value in base_overrides.items():
    where = swept.get(config_lib.resolve_key(key))
    if where is not None:
      raise InputError(
          f'`--set {key}={value}` sets a key that {where} sets for every '
          'point, so it would be ignored. Change the sweep in the file, or '
          'set the axis with `--set sweep.<key>=...`.'
      )
  for key, value in _flat_items(document):
    where = swept.get(config_lib.resolve_key(key))
    if where is not None:
      raise InputError(
          f'{path} sets `{key} = {value!r}`, a key that {where} sets for '
          'every point, so it would be ignored. Remove it from the file, '
          'or change the sweep.'
      )
  return base, sweep


def points(base: config_lib.ExperimentConfig, sweep: SweepConfig) -> list[Point]:
  """Return every point of the sweep, each config checked.

  Raises:
    InputError: naming the point, for a combination of settings that is
      not a valid study.
  """
  result = []
  axis_keys = [key for key, _ in sweep.axes]
  combos = itertools.product(*(values for _, values in sweep.axes))
  for (name, pairs), combo, seed in itertools.product(
      sweep.variants, list(combos), sweep.seeds):
    config = config_lib.apply_overrides(base, dict(pairs))
    config = config_lib.apply_overrides(config, dict(zip(axis_keys, combo)))
    config = dataclasses.replace(config, seed=seed)
    settings = {}
    if name:
      settings['variant'] = name
    settings.update(zip(axis_keys, combo))
    settings['seed'] = seed
    config = dataclasses.replace(
        config, name=f'{config_lib.run_name(base)}-{len(result)}'
    )
    if config.data.dataset in config_lib.SURVIVAL_DATASETS:
      # NOTE: the sweep's batched program and tables score accuracy only.
      raise InputError(
          f'`fedjax-med sweep` does not run the survival dataset '
          f'`data.dataset={config.data.dataset}`: its tables report '
          'accuracy, not the C-index. Run each setting with `fedjax-med run`, '
          'and several seeds with `python experiments/seeds.py`.'
      )
    try:
      config_lib.validate(config)
    except InputError as error:
      described = ', '.join(
          f'{key}={value}' for key, value in settings.items())
      raise InputError(f'Sweep point {described}: {error}') from None
    result.append(Point(len(result), settings, config))
  return result


def _loop_reason(config: config_lib.ExperimentConfig) -> str | None:
  """Return why `config` cannot join a batched group, or None."""
  if config.privacy.target_epsilon is not None and (
      config.privacy.target_mode == 'stop'):
    return 'it stops at a target epsilon, so its number of rounds varies'
  if config.attack.attack == 'backdoor':
    return 'the backdoor attack is evaluated on triggered test rows'
  if config.evaluation.finetune_steps:
    return 'fine-tuning runs after the rounds'
  if config.client.ditto_lambda is not None:
    return 'its Ditto personal models are evaluated after the rounds'
  if config.client.fedbn:
    return 'FedBN evaluates every client with its own normalization layers'
  if config.secure_aggregation.enabled:
    if config.privacy.noise != 'none':
      return ('secure aggregation fixes its encoding scale from the noise '
              'multiplier when the round is built')
    return ('the batched programs do not run the secure aggregation '
            'protocol, so the point runs as a single study')
  if config.privacy.noise == 'distributed':
    return ('distributed noise voids the guarantee in a round with fewer '
            'reporting clients than it assumes, which a single run checks')
  if config_lib.participation_active(config) or (
      config.compression.compressor != 'none'):
    return ('participation and compression keep a clock and per-client '
            'counts in the server state')
  return None


def _program_key(config: config_lib.ExperimentConfig) -> str:
  """Return the config with the batched values blanked, as a string."""
  document = config_lib.to_dict(config)
  document.pop('seed', None)
  document.pop('name', None)
  document.pop('data', None)
  document['client'].pop('learning_rate', None)
  document['client'].pop('proximal_mu', None)
  document['server'].pop('server_learning_rate', None)
  document['privacy'].pop('noise_multiplier', None)
  if config.privacy.target_mode == 'calibrate':
    document['privacy'].pop('target_epsilon', None)
  return json.dumps(document, sort_keys=True, default=str)


def _signature(prepared: study.Prepared) -> tuple:
  """Return what a batch needs equal besides the config: shapes, settings."""
  train = prepared.dataset.train
  return (
      prepared.dataset.num_clients,
      prepared.dataset.num_classes,
      tuple(train.examples['x'].shape[2:]),
      prepared.privacy._replace(noise_multiplier=0.0),
      prepared.num_malicious,
      prepared.malicious is None,
  )


@dataclasses.dataclass
class _Group:
  points: list[Point]
  # The reason these points run one by one, or None if they may batch.
  reason: str | None = None
  prepared: list[study.Prepared] | None = None


def plan(all_points: list[Point]) -> list[_Group]:
  """Group the points by compiled program; loading data is left to `run`."""
  groups: dict[str, list[Point]] = {}
  singles = []
  for point in all_points:
    reason = _loop_reason(point.config)
    if reason is not None:
      singles.append(_Group([point], reason))
      continue
    groups.setdefault(_program_key(point.config), []).append(point)
  result = [_Group(members) for members in groups.values()]
  return result + singles


def _pad(data: federated.FederatedData, length: int) -> federated.FederatedData:
  def pad(leaf):
    leaf = np.asarray(leaf)
    widths = [(0, 0)] * leaf.ndim
    widths[1] = (0, length - leaf.shape[1])
    return np.pad(leaf, widths)
  return federated.FederatedData(
      jax.tree.map(pad, data.examples), np.asarray(data.num_examples)
  )


def _stack(datasets: list[federated.FederatedData]):
  """Return the datasets padded and stacked, and their `vmap` axis.

  Identical datasets, such as one real dataset under several seeds, are
  passed once (axis None) instead of copied per point.
  """
  first = datasets[0]
  same = all(
      all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
          jax.tree.leaves(first), jax.tree.leaves(other)))
      and jax.tree.structure(first) == jax.tree.structure(other)
      for other in datasets[1:]
  )
  if same:
    return jax.device_put(first), None
  length = max(data.max_examples for data in datasets)
  padded = [_pad(data, length) for data in datasets]
  stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *padded)
  return jax.device_put(stacked), 0


def _varying(values: list[float]):
  """Return the values as a `[points]` array if they differ, else None."""
  if len(set(values)) == 1:
    return None
  return jnp.asarray(values, jnp.float32)


class _Batched:
  """One compiled program over a group of points."""

  def __init__(self, group_points, prepared_list):
    self.points = group_points
    self.prepared = prepared_list
    template = group_points[0].config
    self.template = template
    self.template_prepared = prepared_list[0]
    configs = [point.config for point in group_points]
    hyper = {
        'learning_rate': _varying([c.client.learning_rate for c in configs]),
        'server_learning_rate': _varying(
            [c.server.server_learning_rate for c in configs]),
        'proximal_mu': _varying([c.client.proximal_mu for c in configs]),
    }
    if template.privacy.noise != 'none':
      hyper['noise_multiplier'] = _varying(
          [p.noise_multiplier for p in prepared_list])
    self.hyper = {key: value for key, value in hyper.items()
                  if value is not None}
    self.varied = sorted(self.hyper)
    self.train, train_axis = _stack([p.train for p in prepared_list])
    self.test, test_axis = _stack([p.dataset.test for p in prepared_list])
    self.max_client_examples = max(
        int(np.max(p.dataset.train.num_examples)) for p in prepared_list
    )
    self.min_client_examples = min(
        study._fewest_rows(p.dataset.train) for p in prepared_list)  # pylint: disable=protected-access
    if any(p.malicious is not None for p in prepared_list):
      self.malicious = jnp.stack([jnp.asarray(p.malicious)
                                  for p in prepared_list])
      malicious_axis = 0
    else:
      self.malicious, malicious_axis = None, None
    self.root_keys = jnp.stack([jax.random.key(c.seed) for c in configs])
    if train_axis is not None:
      self.varied.append('data')

    def build(hyper, train):
      return study.build_round_fn(
          template, self.template_prepared, train=train,
          max_client_examples=self.max_client_examples,
          min_client_examples=self.min_client_examples, **hyper,
      )

    def init(hyper, train, root_key):
      _, server_optimizer = build(hyper, train)
      return study.initial_state(
          template, self.template_prepared, server_optimizer, root_key
      )

    def step(hyper, train, malicious, state, root_key, round_index):
      round_fn, _ = build(hyper, train)
      rounds_key = jax.random.fold_in(root_key, study._ROUNDS_TAG)
      return round_fn(
          state, jax.random.fold_in(rounds_key, round_index),
          malicious=malicious,
      )

    model = self.template_prepared.model
    threshold = template.evaluation.threshold

    def evaluate(params, test):
      return evaluate_lib.build_evaluate(model, test, threshold=threshold)(
          params)

    self.init = jax.jit(jax.vmap(init, in_axes=(0, train_axis, 0)))
    self.step = jax.jit(jax.vmap(
        step, in_axes=(0, train_axis, malicious_axis, 0, 0, None)))
    self.evaluate = jax.jit(jax.vmap(evaluate, in_axes=(0, test_axis)))

  def run(self, rounds_writer, bar, run_dir, interval_s):
    """Run every round of every point; return one record per point.

    The batch's state is checkpointed every `interval_s` seconds and on
    Ctrl-C under `run_dir/checkpoints/batch-<first point>`; a resumed sweep
    continues the batch from there.
    """
    config = self.template
    num_points = len(self.points)
    start = time.perf_counter()
    state = self.init(self.hyper, self.train, self.root_keys)
    diverged_round = np.zeros(num_points, int)
    skipped = np.zeros(num_points, int)
    last_loss = np.full(num_points, np.nan)
    num_rounds = config.server.rounds
    indices = [point.index for point in self.points]
    name = _batch_checkpoint_name(indices)
    checkpointer = checkpoint_lib.Checkpointer(run_dir, interval_s, name=name)
    first_round = 0
    # Rounds up to `on_disk` are in rounds.jsonl (see `_prune_rounds`). A
    # damaged checkpoint makes the batch restart from an older one, and the
    # rounds it runs again are not written twice.
    on_disk = 0
    saved = _read_batch_progress(run_dir).get(name)
    if saved is not None and saved['points'] == indices:
      steps = checkpointer.all_steps()
      if saved['rounds_done'] in steps:
        on_disk = saved['rounds_done']
      restored = _restore_batch(checkpointer, state, steps, on_disk)
      if restored is not None:
        state = restored.state
        first_round = restored.rounds_done
        diverged_round = np.array(restored.progress['diverged_round'], int)
        skipped = np.array(restored.progress['skipped'], int)
        last_loss = np.array([np.nan if value is None else value
                              for value in restored.progress['last_loss']])
        bar.update(first_round * num_points)
    snapshot = (first_round, state, diverged_round, skipped, last_loss)
    evaluated = None
    try:
      for round_index in range(first_round, num_rounds):
        state, metrics = self.step(
            self.hyper, self.train, self.malicious, state, self.root_keys,
            round_index,
        )
        metrics = {key: np.asarray(value) for key, value in metrics.items()}
        finite = metrics.pop('params_finite')
        diverged_round = np.where(~finite & (diverged_round == 0),
                                  round_index + 1, diverged_round)
        skipped = skipped + metrics['skipped'].astype(int)
        last_loss = np.where(metrics['skipped'], last_loss,
                             metrics['train_loss'])

        is_last = round_index + 1 == num_rounds
        evaluated = None
        if is_last or (round_index + 1) % config.evaluation.eval_every == 0:
          evaluated = self.evaluate(state.params, self.test)
        if round_index + 1 > on_disk:
          self._write_round(rounds_writer, round_index, metrics, evaluated,
                            diverged_round)
        # One assignment, so that an interrupt reads one round's values.
        snapshot = (round_index + 1, state, diverged_round, skipped,
                    last_loss)
        if checkpointer.due():
          _save_batch(checkpointer, run_dir, name, indices, snapshot)
        bar.update(num_points)
        interrupts.raise_if_requested()
    except KeyboardInterrupt:
      if snapshot[0] > first_round:
        _save_batch(checkpointer, run_dir, name, indices, snapshot)
      raise
    finally:
      checkpointer.close()
    if evaluated is None:
      # Restored from a checkpoint of the last round.
      evaluated = self.evaluate(state.params, self.test)

    seconds_per_point = (time.perf_counter() - start) / num_points
    records = []
    for slot in range(num_points):
      prepared = self.prepared[slot]
      record = {'status': 'completed', 'mode': 'batched'}
      nonfinite = int(np.sum(np.asarray(evaluated.num_nonfinite)[slot]))
      if diverged_round[slot] or nonfinite:
        record['status'] = 'diverged'
        record['diverged_round'] = int(diverged_round[slot] or num_rounds)
      else:
        record.update(_point_metrics(
            _accuracies(evaluated, slot), prepared, last_loss[slot]))
      record['epsilon'] = _epsilon(config, prepared, num_rounds)
      if prepared.accountant is not None and prepared.privacy.sums_noise:
        record['denominator'] = prepared.privacy.denominator
        record['expected_reporting_clients'] = (
            prepared.privacy.expected_clients)
      record['skipped_rounds'] = int(skipped[slot])
      record['wall_time_s'] = round(seconds_per_point, 4)
      records.append(record)
    return records

  def _write_round(self, writer, round_index, metrics, evaluated,
                   diverged_round):
    """Write one line per point with its metrics of this round."""
    for slot, point in enumerate(self.points):
      record = {'point': point.index, 'round': round_index + 1}
      record.update({key: value[slot].item()
                     for key, value in metrics.items()})
      if diverged_round[slot]:
        record['diverged'] = True
      elif evaluated is not None:
        record.update(study._accuracy_summary(  # pylint: disable=protected-access
            _accuracies(evaluated, slot)))
      writer.write(record)


def _restore_batch(checkpointer, template, steps, newest):
  """Restore the newest readable checkpoint up to step `newest`, or None."""
  for step in reversed(steps):
    if step > newest:
      continue
    try:
      return checkpointer.restore(template, step=step)
    # Orbax and tensorstore raise many kinds of error for a damaged
    # checkpoint (KeyError, ValueError, OSError, JSON errors).
    except Exception:  # pylint: disable=broad-exception-caught
      continue
  return None


def _batch_checkpoint_name(indices: list[int]) -> str:
  return f'{checkpoint_lib.CHECKPOINT_DIR}/batch-{indices[0]:04d}'


def _batch_progress_path(run_dir: pathlib.Path) -> pathlib.Path:
  return run_dir / checkpoint_lib.CHECKPOINT_DIR / 'batches.json'


def _read_batch_progress(run_dir: pathlib.Path) -> dict[str, Any]:
  """Return `{checkpoint name: {'points', 'rounds_done'}}` of saved batches.

  This file is written after each batch checkpoint completes, so the
  rounds it names are on disk in `rounds.jsonl` and in the checkpoint.
  """
  try:
    progress = json.loads(_batch_progress_path(run_dir).read_text())
  except (OSError, ValueError):
    return {}
  # An edited file of another shape counts as no progress: the batches
  # then run from their start.
  if not isinstance(progress, dict):
    return {}
  return {name: saved for name, saved in progress.items()
          if isinstance(saved, dict)
          and isinstance(saved.get('points'), list)
          and type(saved.get('rounds_done')) is int}  # pylint: disable=unidiomatic-typecheck


def _save_batch(checkpointer, run_dir, name, indices, snapshot) -> None:
  rounds_done, state, diverged_round, skipped, last_loss = snapshot
  checkpointer.save(rounds_done, state, {
      'points': indices, 'diverged_round': diverged_round,
      'skipped': skipped, 'last_loss': last_loss,
  })
  progress = _read_batch_progress(run_dir)
  progress[name] = {'points': indices, 'rounds_done': rounds_done}
  outputs.write_json(_batch_progress_path(run_dir), progress)


def _prune_rounds(run_dir: pathlib.Path, finished: set[int]) -> None:
  """Keep the `rounds.jsonl` lines that a resumed sweep will not write again.

  Those are the lines of finished points and of rounds up to a batch's
  checkpoint; the other rounds run again.
  """
  path = run_dir / 'rounds.jsonl'
  if not path.exists():
    return
  kept_up_to = {}
  for name, saved in _read_batch_progress(run_dir).items():
    # A batch whose checkpoint is gone starts again from round 0, so its
    # rounds must go too, or they would be written twice.
    checkpointer = checkpoint_lib.Checkpointer(run_dir, 0, name=name)
    try:
      present = saved['rounds_done'] in checkpointer.all_steps()
    finally:
      checkpointer.close()
    for index in saved['points']:
      kept_up_to[index] = saved['rounds_done'] if present else 0
  kept = []
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
      point, round_number = record['point'], record['round']
    except (ValueError, TypeError, KeyError):
      continue
    if point in finished or round_number <= kept_up_to.get(point, 0):
      kept.append(line + '\n')
  temporary = path.with_name(path.name + '.tmp')
  temporary.write_text(''.join(kept), encoding='utf-8')
  outputs.replace_synced(temporary, path)


def _accuracies(evaluation, slot) -> list:
  return [None if np.isnan(value) else float(value)
          for value in np.asarray(evaluation.accuracy)[slot]]


def _point_metrics(accuracies, prepared, last_loss):
  """Return the accuracy, fairness and loss columns of a finished point."""
  dataset = prepared.dataset
  fairness = study.fairness_summary(
      accuracies, np.asarray(dataset.train.num_examples))
  metrics = {
      **study._accuracy_summary(accuracies),  # pylint: disable=protected-access
      **{key: fairness.get(key) for key in (
          'std_accuracy', 'best_worst_gap', 'smallest_clients_accuracy',
          'largest_clients_accuracy')},
      'train_loss': None if np.isnan(last_loss) else float(last_loss),
  }
  if dataset.num_clients <= study.MAX_CLIENTS_PER_ROUND_LINE:
    metrics['test_accuracy'] = dict(zip(dataset.client_names, accuracies))
  return metrics


def _epsilon(config, prepared, num_rounds) -> float | None:
  accountant = prepared.accountant
  if accountant is None:
    return None
  for _ in range(num_rounds):
    accountant.step()
  return float(accountant.epsilon(config.privacy.delta))


def _valid_epsilon(summary: dict[str, Any]) -> float | None:
  """Return the run's epsilon, the smaller claim from participation, or None.

  When clients can be offline, the accountant's epsilon is not an upper
  bound, because it assumes every client online. The claims built from the
  recorded participation are upper bounds. A run whose summary states no
  valid guarantee for another reason gets None, an empty table cell.
  """
  claims = (summary.get('participation') or {}).get('privacy')
  if summary['privacy'].get('guarantee_holds') is False:
    if claims is None:
      # For example a failed secure round, or too few reporting clients
      # for distributed noise: the summary states no valid guarantee.
      return None
    return min(claims[name]['epsilon'] for name in ('contributions', 'sampled')
               if name in claims)
  return summary['privacy'].get('epsilon')


def _run_single(point: Point, run_dir: pathlib.Path,
                interval_s: float) -> dict[str, Any]:
  """Run one point through `run_study`; return its record.

  A folder left by an interrupted run of this point continues from its
  checkpoint.
  """
  out = run_dir / 'runs' / f'point-{point.index:04d}'
  if out.exists() and not (out / 'config.json').exists():
    shutil.rmtree(out)
  try:
    if out.exists():
      _, summary = study.resume_study(out, progress=False,
                                      checkpoint_interval_s=interval_s)
    else:
      _, summary = study.run_study(
          point.config, out, progress=False, checkpoint_interval_s=interval_s,
          data_check=lambda files: _check_data(run_dir, files, point.config))
  except TrainingDiverged:
    summary = json.loads((out / 'summary.json').read_text())
    return {'status': 'diverged', 'mode': 'loop',
            'diverged_round': summary.get('diverged_round'),
            'run_dir': str(out)}
  fairness = summary.get('fairness') or {}
  record = {
      'status': 'completed', 'mode': 'loop',
      **{key: summary.get(key) for key in (
          'mean_accuracy', 'worst_accuracy', 'p10_accuracy')},
      **{key: fairness.get(key) for key in (
          'std_accuracy', 'best_worst_gap', 'smallest_clients_accuracy',
          'largest_clients_accuracy')},
      'epsilon': _valid_epsilon(summary),
      'skipped_rounds': summary['skipped_rounds'],
      'wall_time_s': summary['wall_time_s'],
      'run_dir': str(out),
  }
  metrics = [json.loads(line) for line in
             (out / 'metrics.jsonl').read_text().splitlines()]
  losses = [m['train_loss'] for m in metrics
            if m.get('train_loss') is not None and not m['skipped']]
  record['train_loss'] = losses[-1] if losses else None
  participation = summary.get('participation')
  if participation is not None:
    record['clock_s'] = participation['clock_s']
    record['bytes_up'] = participation['bytes_up']
  for key in ('denominator', 'expected_reporting_clients'):
    if key in summary['privacy']:
      record[key] = summary['privacy'][key]
  ditto = summary.get('ditto')
  if ditto is not None:
    record['ditto_mean_accuracy'] = ditto['mean_accuracy']
    record['ditto_worst_accuracy'] = ditto['worst_accuracy']
  finetuned = summary.get('finetuned')
  if finetuned is not None:
    record['finetuned_mean_accuracy'] = finetuned['mean_accuracy']
    record['finetuned_worst_accuracy'] = finetuned['worst_accuracy']
  if len(summary['test_accuracy']) <= study.MAX_CLIENTS_PER_ROUND_LINE:
    record['test_accuracy'] = summary['test_accuracy']
  return record


def describe_plan(groups: list[_Group]) -> list[str]:
  """Return one line per group: how its points run and why."""
  lines = []
  for number, group in enumerate(groups, 1):
    count = len(group.points)
    if group.reason is not None:
      lines.append(f'group {number}: 1 point run on its own, because '
                   f'{group.reason}')
    elif count == 1:
      lines.append(f'group {number}: 1 point run on its own (no other point '
                   'shares its program)')
    else:
      lines.append(f'group {number}: {count} points to batch; once their '
                   'data are loaded, points of another shape or much larger '
                   'clients split into further batches')
  return lines


def run_sweep(
    base: config_lib.ExperimentConfig,
    sweep: SweepConfig,
    out_dir: pathlib.Path | str | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    checkpoint_interval_s: float = checkpoint_lib.DEFAULT_INTERVAL_S,
) -> tuple[pathlib.Path, list[dict[str, Any]]]:
  """Run every point of the sweep and write the folder.

  Args:
    base: the study every point starts from.
    sweep: the axes, variants and seeds.
    out_dir: output folder; None picks a fresh one under `runs/`. With
      `resume`, an earlier sweep folder to continue.
    resume: skip the points already in `out_dir/points.jsonl` and continue
      unfinished ones from their checkpoints; the base config and sweep
      must be the ones the folder was started with.
    progress: show a progress bar on stderr, counted in point-rounds.
    log: receives the plan and notes, one line each; None prints nothing.
    checkpoint_interval_s: seconds between checkpoints of a running batch
      or point, which also checkpoints on Ctrl-C; 0 saves after every round.

  Returns:
    The folder and one record per point, in point order.

  Raises:
    InputError: for an invalid point or a resume folder that does not match.
    StudyInterrupted: on Ctrl-C, after the finished groups are on disk.
  """
  log = log or (lambda line: None)
  study.check_checkpoint_interval(checkpoint_interval_s)
  base = config_lib.with_absolute_paths(base)
  sweep = _with_absolute_paths(sweep)
  all_points = points(base, sweep)
  name = f'{config_lib.run_name(base)}_sweep'
  settings = json.loads(json.dumps({
      'base': config_lib.to_dict(base),
      'sweep': outputs.to_json_value(dataclasses.asdict(sweep)),
  }))
  if resume:
    if out_dir is None:
      raise InputError('Resuming needs the sweep folder; pass it with --out.')
    run_dir = pathlib.Path(out_dir)
    try:
      saved = json.loads((run_dir / 'sweep.json').read_text())
    except (OSError, ValueError):
      raise InputError(
          f'{run_dir} is not a sweep folder: it has no readable sweep.json. '
          'Pass the folder of an earlier sweep.'
      ) from None
    matrix_lib.check_same_settings(saved, settings, run_dir)
  else:
    run_dir = outputs.make_run_dir(
        None if out_dir is None else pathlib.Path(out_dir), name
    )
  # The lock is taken before a resume rewrites points.jsonl and
  # rounds.jsonl, so a rejected second process cannot wipe the files of
  # the sweep that is running.
  with outputs.lock_run_dir(run_dir):
    return _run_locked(
        run_dir, resume, settings, all_points, sweep, name, progress, log,
        checkpoint_interval_s)


def _with_absolute_paths(sweep: SweepConfig) -> SweepConfig:
  """Return `sweep` with the data paths of its axes and variants absolute.

  `sweep.json` keeps the values, and a resume compares them: a relative
  path would resolve to another file when the resume starts elsewhere.
  """

  def absolute(key, value):
    try:
      section, name = config_lib.resolve_key(key)
    except InputError:
      return value
    if (section == 'data' and name in ('csv_path', 'image_path')
        and isinstance(value, str)):
      return os.path.abspath(os.path.expanduser(value))
    return value

  axes = tuple((key, tuple(absolute(key, value) for value in values))
               for key, values in sweep.axes)
  variants = tuple(
      (name, tuple((key, absolute(key, value)) for key, value in pairs))
      for name, pairs in sweep.variants)
  return dataclasses.replace(sweep, axes=axes, variants=variants)


def _run_locked(run_dir, resume, settings, all_points, sweep, name, progress,
                log, checkpoint_interval_s):
  """Run the points of `run_sweep` while it holds the folder's lock."""
  records: dict[int, dict[str, Any]] = {}
  if resume:
    records = _read_records(run_dir / 'points.jsonl', len(all_points))
    with open(run_dir / 'points.jsonl', 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r, allow_nan=False) + '\n'
                   for r in records.values())
    _prune_rounds(run_dir, set(records))
  else:
    # The data files are added as the points load them, and checked
    # against the record when a resumed sweep loads them again.
    outputs.write_json(run_dir / 'provenance.json', provenance.collect(()))
    outputs.write_json(run_dir / 'sweep.json', settings)
  todo = [point for point in all_points if point.index not in records]
  groups = plan(todo)
  plural = '' if len(all_points) == 1 else 's'
  log(f'{len(all_points)} point{plural}, {len(todo)} to run, in '
      f'{len(groups)} group{"" if len(groups) == 1 else "s"}:')
  for line in describe_plan(groups):
    log(f'  {line}')
  total = sum(p.config.server.rounds for p in all_points)
  done = sum(p.config.server.rounds for p in all_points
             if p.index in records)
  bar = tqdm.tqdm(total=total, initial=done, desc=name, unit='point-round',
                  disable=None if progress else True, dynamic_ncols=True)
  try:
    with bar, \
        outputs.MetricsWriter(run_dir / 'points.jsonl') as writer, \
        outputs.MetricsWriter(run_dir / 'rounds.jsonl') as rounds_writer:
      for group in groups:
        for point, record in _run_group(group, run_dir, rounds_writer, bar,
                                        log, checkpoint_interval_s):
          record = {'point': point.index, **point.settings, **record}
          writer.write(record)
          records[point.index] = record
  except KeyboardInterrupt:
    _write_results(run_dir, records, sweep)
    raise StudyInterrupted(run_dir, len(records)) from None
  ordered = _write_results(run_dir, records, sweep)
  return run_dir, ordered


def _run_group(group, run_dir, rounds_writer, bar, log, interval_s):
  """Yield `(point, record)` for each point of the group."""
  if group.reason is not None or len(group.points) == 1:
    point = group.points[0]
    yield point, _run_single_recorded(point, run_dir, interval_s)
    bar.update(point.config.server.rounds)
    interrupts.raise_if_requested()
    return
  # Points whose data fails (such as a partition that cannot give every
  # client a row) are recorded as errors; the rest split by shape.
  by_signature: dict[tuple, list] = {}
  for point in group.points:
    try:
      prepared = study.prepare(point.config)
    except InputError as error:
      bar.update(point.config.server.rounds)
      yield point, {'status': 'error', 'mode': 'not run', 'error': str(error)}
      continue
    _check_data(run_dir, prepared.dataset.source_files, point.config)
    by_signature.setdefault(_signature(prepared), []).append(
        (point, prepared))
  if len(by_signature) > 1:
    log(f'  {len(group.points)} points split into {len(by_signature)} '
        'programs: their data differ in shape or privacy settings')
  for members in by_signature.values():
    batches = _batches(members)
    if len(batches) > 1:
      log(f'  {len(members)} points run as {len(batches)} batches of '
          f'{", ".join(str(len(b)) for b in batches)}, to bound padding and '
          'memory')
    for batch in batches:
      yield from _run_batch(batch, run_dir, rounds_writer, bar, interval_s)
      # A stop request is honoured only once the caller has recorded every
      # point of the batch: stopping between them recorded part of a batch,
      # and the resume trained the rest again and repeated their rounds.
      interrupts.raise_if_requested()


def _point_bytes(prepared: study.Prepared) -> int:
  return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(
      (prepared.train, prepared.dataset.test)))


def _batches(members):
  """Split `(point, prepared)` pairs into batches run one after another.

  Padding every point to the largest client of the group can cost far more
  than the points themselves, because label skew makes some clients much
  larger than others. So a batch only contains points whose largest client
  is within `MAX_PADDING` times that of the smallest in the batch, and at
  most `MAX_BATCH_BYTES` of training and test data. Batches of equal shape reuse
  one compiled program.
  """
  ordered = sorted(members, key=lambda m: m[1].train.max_examples)
  buckets = []
  for member in ordered:
    length = member[1].train.max_examples
    if buckets and length <= MAX_PADDING * buckets[-1][0][1].train.max_examples:
      buckets[-1].append(member)
    else:
      buckets.append([member])
  batches = []
  for bucket in buckets:
    length = max(m[1].train.max_examples for m in bucket)
    test_length = max(m[1].dataset.test.max_examples for m in bucket)
    per_point = max(
        _point_bytes(m[1]) * max(length / m[1].train.max_examples,
                                 test_length / m[1].dataset.test.max_examples)
        for m in bucket)
    size = max(1, int(MAX_BATCH_BYTES // max(per_point, 1)))
    count = -(-len(bucket) // size)
    # Equal sizes, so that the batches share one compiled program.
    size = -(-len(bucket) // count)
    ordered_bucket = sorted(bucket, key=lambda m: m[0].index)
    batches += [ordered_bucket[i:i + size]
                for i in range(0, len(bucket), size)]
  return batches


def _run_batch(members, run_dir, rounds_writer, bar, interval_s):
  """Yield `(point, record)` for a batch, run together or alone."""
  if len(members) == 1:
    point = members[0][0]
    yield point, _run_single_recorded(point, run_dir, interval_s)
    bar.update(point.config.server.rounds)
    return
  batched = _Batched([m[0] for m in members], [m[1] for m in members])
  records = batched.run(rounds_writer, bar, run_dir, interval_s)
  for (point, _), record in zip(members, records):
    record['batched_over'] = ', '.join(batched.varied) or 'seed'
    yield point, record


def _check_data(run_dir, data_files, config) -> None:
  source = json.dumps(config_lib.to_dict(config)['data'], sort_keys=True)
  provenance.check_data_files(run_dir, data_files, 'sweep', source)


def _run_single_recorded(point, run_dir, interval_s):
  try:
    return _run_single(point, run_dir, interval_s)
  except DataCheckError:
    raise
  except InputError as error:
    return {'status': 'error', 'mode': 'loop', 'error': str(error)}


def _read_records(path: pathlib.Path, num_points: int) -> dict[int, dict]:
  if not path.exists():
    return {}
  records = {}
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if (isinstance(record, dict) and isinstance(record.get('point'), int)
        and 0 <= record['point'] < num_points and 'status' in record):
      records[record['point']] = record
  return records


def _setting_columns(sweep: SweepConfig) -> list[str]:
  columns = ['variant'] if sweep.variants[0][0] else []
  return columns + [key for key, _ in sweep.axes]


def _write_results(run_dir, records, sweep) -> list[dict[str, Any]]:
  ordered = [records[index] for index in sorted(records)]
  settings = _setting_columns(sweep)
  columns = (['point', *settings, 'seed', 'status', 'mode', *METRICS,
              'wall_time_s', 'error'])
  outputs.write_csv(
      run_dir / 'table.csv', columns,
      [['' if record.get(c) is None else record.get(c) for c in columns]
       for record in ordered])
  metrics = list(_SUMMARY_METRICS) + [
      metric for metric in _PERSONAL_METRICS
      if any(record.get(metric) is not None for record in ordered)]
  rows = summarize(ordered, settings, metrics)
  header = [*settings, 'seeds', 'failed']
  for metric in metrics:
    header += [metric, f'{metric}_std']
  summary_rows = []
  for row in rows:
    line = [row[c] for c in settings] + [row['seeds'], row['failed']]
    for metric in metrics:
      line += ['' if row[metric] is None else row[metric],
               '' if row[f'{metric}_std'] is None else row[f'{metric}_std']]
    summary_rows.append(line)
  outputs.write_csv(run_dir / 'summary.csv', header, summary_rows)
  lines = ['| ' + ' | '.join([*settings, 'seeds', *metrics]) + ' |',
           '|' + '---|' * (len(settings) + 1 + len(metrics))]
  for row in rows:
    cells = [str(row[c]) for c in settings] + [
        f"{row['seeds']}" + (f" ({row['failed']} failed)" if row['failed']
                             else '')]
    for metric in metrics:
      value, std = row[metric], row[f'{metric}_std']
      cells.append('n/a' if value is None else f'{value:.3f} ± {std:.3f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', 'Cells: mean ± population standard deviation (ddof=0) over '
            'the completed seeds.']
  (run_dir / 'summary.md').write_text('\n'.join(lines) + '\n',
                                      encoding='utf-8')
  if rows and sweep.axes:
    plots.plot_sweep(run_dir / 'sweep.png', rows, settings,
                     title=f'Sweep: {run_dir.name}')
  return ordered


def summarize(records: list[dict[str, Any]], settings: list[str],
              metrics: Sequence[str] = _SUMMARY_METRICS):
  """Return one row per setting: mean and std over its completed seeds."""
  grouped: dict[tuple, list] = {}
  for record in records:
    key = tuple(json.dumps(record.get(c)) for c in settings)
    grouped.setdefault(key, []).append(record)
  rows = []
  for key, members in grouped.items():
    row = {c: json.loads(k) for c, k in zip(settings, key)}
    done = [m for m in members if m['status'] == 'completed']
    row['seeds'] = len(members)
    row['failed'] = len(members) - len(done)
    for metric in metrics:
      values = [m[metric] for m in done if m.get(metric) is not None]
      row[metric] = float(np.mean(values)) if values else None
      row[f'{metric}_std'] = float(np.std(values)) if values else None
    rows.append(row)
  return rows
