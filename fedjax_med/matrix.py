"""Robustness matrix: aggregators x attacks x malicious fractions x seeds.

`run_matrix` trains one model per cell and seed, with the same keys as
`fedjax-med run` would use for that config and seed, and writes to its
folder:

* `matrix.json`: the base study config and the matrix settings.
* `cells.jsonl`: one line per cell and seed, written as each finishes, so an
  interrupted matrix keeps its finished cells and `resume=True` skips them.
* `table.md`, `table.csv`: per cell, the mean and population standard
  deviation (ddof=0) over seeds of the clean accuracy, worst-client
  accuracy and backdoor success.
* `heatmap.png`: the same three metrics as heatmaps, aggregators by cell.

The robust aggregators are given the size of the attack: Krum, multi-Krum and
Bulyan get f = ceil(m * cohort / num_clients) for the m = round(fraction *
num_clients) malicious clients, and the trimmed mean trims
max(`server.trim_fraction`, fraction) at each end. A cell whose aggregator
cannot run with that f is recorded as not applicable with the reason, and
the matrix goes on. A base config that no cell of an aggregator can use,
such as `norm_bounded` without `server.max_norm`, is rejected before any
training.

Metrics count only honest clients: clean accuracy pools their test rows,
worst accuracy is the lowest of them, and backdoor success is the fraction
of their triggered test rows, of a class other than the target, that the
model assigns to the target.
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med import study_attacks
from fedjax_med import study_privacy
from fedjax_med.errors import InputError
from fedjax_med.errors import StudyInterrupted
from fedjax_med.report import outputs
from fedjax_med.report import plots
from fedjax_med.report import provenance
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import round as round_lib

# Aggregators whose `num_byzantine` (f) the matrix sets from the attack size.
_USES_NUM_BYZANTINE = ('krum', 'multi_krum', 'bulyan')
METRICS = ('clean_accuracy', 'worst_accuracy', 'backdoor_success')


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatrixConfig:
  """The axes of the matrix.

  Attributes:
    aggregators: aggregator names, as in `server.aggregator`.
    attacks: attack names, as in `attack.attack`; 'none' is the clean
      baseline, run at fraction 0 only.
    malicious_fractions: fractions of malicious clients, each in [0, 1).
      Attacks run at every fraction above 0.
    seeds: experiment seeds; each cell runs once per seed.
    strengths: attack name to `attack.attack_strength`; attacks left out
      use their default strength.
  """

  aggregators: tuple[str, ...] = (
      'fedavg', 'median', 'trimmed_mean', 'krum', 'geometric_median',
      'bulyan', 'centered_clipping',
  )
  attacks: tuple[str, ...] = (
      'none', 'sign_flip', 'scaling', 'gaussian', 'little_is_enough',
      'inner_product', 'label_flip', 'backdoor',
  )
  malicious_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
  seeds: tuple[int, ...] = (0, 1, 2)
  strengths: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Cell:
  aggregator: str
  attack: str
  fraction: float

  @property
  def label(self) -> str:
    if self.attack == 'none':
      return 'none'
    return f'{self.attack} {self.fraction:g}'


def _as_list(key: str, value: Any) -> list:
  if isinstance(value, str):
    value = config_lib.split_list(value)
  if not isinstance(value, (list, tuple)):
    raise InputError(f'`matrix.{key}` must be a list; got {value!r}.')
  return list(value)


def matrix_from_document(
    section: dict[str, Any], overrides: dict[str, str] | None = None
) -> MatrixConfig:
  """Build a `MatrixConfig` from a TOML `[matrix]` table and `--set` values.

  `overrides` maps `matrix.<key>` to a string such as 'median,krum'.

  Raises:
    InputError: for an unknown key, a name that is not an aggregator or
      attack, a fraction outside [0, 1), a bad seed, or an empty or
      repeated entry.
  """
  values = dict(section)
  # Command-line strings are parsed; TOML values must have the right type.
  typed = set(values)
  for key, value in (overrides or {}).items():
    values[key.removeprefix('matrix.')] = value
    typed.discard(key.removeprefix('matrix.'))
  for key in typed & {'aggregators', 'attacks', 'malicious_fractions',
                      'seeds'}:
    config_lib.reject_comma_string(f'matrix.{key}', values[key])
  # Checked as whole lists, so that a hint is a list: a quoted item checked
  # alone would get the hint `malicious_fractions = 0.5`.
  for key, item_type in (('malicious_fractions', float), ('seeds', int)):
    if key in typed:
      config_lib._check_typed(  # pylint: disable=protected-access
          f'matrix.{key}', values[key], tuple[item_type, ...])
  fields = {field.name for field in dataclasses.fields(MatrixConfig)}
  for key in values:
    if key not in fields:
      raise InputError(
          f'Unknown matrix key `matrix.{key}`; keys are '
          f'{", ".join(sorted(fields))}.'
      )
  built = {}
  for key, allowed in (('aggregators', config_lib.AGGREGATORS),
                       ('attacks', config_lib.ATTACKS)):
    if key in values:
      names = [str(name) for name in _as_list(key, values[key])]
      for name in names:
        if name not in allowed:
          raise InputError(
              f'`matrix.{key}` has {name!r}; choose from {", ".join(allowed)}.'
          )
      built[key] = tuple(names)
  if 'malicious_fractions' in values:
    fractions = []
    for item in _as_list('malicious_fractions', values['malicious_fractions']):
      fraction = config_lib._coerce('matrix.malicious_fractions', item, float,
                                    strict='malicious_fractions' in typed)
      if not 0.0 <= fraction < 1.0:
        raise InputError(
            f'`matrix.malicious_fractions` has {fraction}; each fraction '
            'must be in [0, 1).'
        )
      fractions.append(fraction)
    built['malicious_fractions'] = tuple(fractions)
  if 'seeds' in values:
    seeds = [config_lib._coerce('matrix.seeds', item, int,
                                strict='seeds' in typed)
             for item in _as_list('seeds', values['seeds'])]
    for seed in seeds:
      if not 0 <= seed <= config_lib.MAX_SEED:
        raise InputError(
            f'`matrix.seeds` has {seed}; seeds are 0 to {config_lib.MAX_SEED}.'
        )
    built['seeds'] = tuple(seeds)
  if 'strengths' in values:
    table = values['strengths']
    if isinstance(table, str):
      table = _parse_strengths(table)
    if not isinstance(table, dict):
      raise InputError(
          '`matrix.strengths` must be a table of attack = strength, for '
          f'example {{ sign_flip = 10.0 }}; got {table!r}.'
      )
    pairs = []
    for name, value in table.items():
      name = str(name).strip()
      if name not in config_lib.ATTACKS or name in ('none', 'label_flip'):
        raise InputError(
            f'`matrix.strengths` has attack {name!r}, which takes no strength '
            'or does not exist.'
        )
      if 'strengths' in typed:
        config_lib._check_typed(  # pylint: disable=protected-access
            f'matrix.strengths.{name}', value, float,
            assignment=lambda literal, name=name: (
                f'strengths = {{ {name} = {literal} }}'))
      strength = config_lib._coerce(f'matrix.strengths.{name}', value, float,
                                    strict='strengths' in typed)
      if not math.isfinite(strength):
        raise InputError(
            f'`matrix.strengths.{name}` must be finite; got {strength}.'
        )
      config_lib.require_float32(f'matrix.strengths.{name}', strength)
      pairs.append((name, strength))
    built['strengths'] = tuple(sorted(pairs))
  matrix = MatrixConfig(**built)
  for key in ('aggregators', 'attacks', 'malicious_fractions', 'seeds'):
    items = getattr(matrix, key)
    if not items:
      raise InputError(f'`matrix.{key}` is empty; list at least one entry.')
    if len(set(items)) != len(items):
      raise InputError(f'`matrix.{key}` repeats an entry: {list(items)}.')
  # Strengths of attacks that `attacks` leaves out are kept, unused, so
  # that `--set matrix.attacks=...` can run a subset of a file's attacks.
  return matrix


def load_matrix_toml(
    path: str | pathlib.Path, overrides: dict[str, str] | None = None
) -> tuple[config_lib.ExperimentConfig, MatrixConfig]:
  """Read a matrix config: a study config plus a `[matrix]` table.

  Args:
    path: the TOML file.
    overrides: `--set` values; keys starting with `matrix.` set an axis,
      the others the base study.

  Raises:
    InputError: if the file has no `[matrix]` table or sets a bad value.
  """
  document = config_lib.read_toml(path)
  section = document.pop('matrix', None)
  if not isinstance(section, dict):
    raise InputError(
        f'{path} has no [matrix] table. Add one with aggregators, attacks, '
        'malicious_fractions and seeds, as in '
        'experiments/robustness_matrix_heart.toml.'
    )
  overrides = overrides or {}
  axis_overrides = {key: value for key, value in overrides.items()
                    if key.startswith('matrix.')}
  base = config_lib.apply_overrides(
      config_lib.from_document(document),
      {key: value for key, value in overrides.items()
       if key not in axis_overrides},
  )
  return base, matrix_from_document(section, axis_overrides)


def _parse_strengths(text: str) -> dict[str, str]:
  """Parse `--set matrix.strengths=sign_flip:10,scaling:5`."""
  table = {}
  for item in _as_list('strengths', text):
    if ':' not in item:
      raise InputError(
          f'Invalid `matrix.strengths` entry {item!r}: write attack:strength, '
          'for example sign_flip:10,scaling:5.'
      )
    name, value = (part.strip() for part in item.split(':', 1))
    if name in table:
      raise InputError(f'`matrix.strengths` sets {name} twice.')
    table[name] = value
  return table


def cells(matrix: MatrixConfig) -> list[Cell]:
  """Return the cells: the clean baseline, then each attack at each fraction."""
  result = []
  for aggregator in matrix.aggregators:
    if 'none' in matrix.attacks and 0.0 in matrix.malicious_fractions:
      result.append(Cell(aggregator, 'none', 0.0))
    for attack in matrix.attacks:
      if attack == 'none':
        continue
      for fraction in matrix.malicious_fractions:
        if fraction > 0:
          result.append(Cell(aggregator, attack, fraction))
  if not result:
    raise InputError(
        'The matrix has no cells: attacks need a fraction above 0 and '
        "'none' needs fraction 0 in `matrix.malicious_fractions`."
    )
  return result


def expected_cohort(config: config_lib.ExperimentConfig, num_clients: int):
  sampling = config.sampling
  if sampling.sampling == 'all':
    return num_clients
  if sampling.sampling == 'uniform':
    return sampling.cohort_size
  return max(1, round(sampling.sampling_rate * num_clients))


def cell_config(
    base: config_lib.ExperimentConfig,
    matrix: MatrixConfig,
    cell: Cell,
    seed: int,
    cohort: int,
    num_clients: int,
) -> config_lib.ExperimentConfig:
  """Return the study config of one cell and seed.

  Krum, multi-Krum and Bulyan get f = ceil(m * cohort / num_clients), where
  m = round(fraction * num_clients) is the number of malicious clients.
  """
  server = dataclasses.replace(base.server, aggregator=cell.aggregator)
  if cell.aggregator in _USES_NUM_BYZANTINE:
    num_malicious = round(cell.fraction * num_clients)
    server = dataclasses.replace(
        server, num_byzantine=math.ceil(num_malicious * cohort / num_clients)
    )
  if cell.aggregator == 'trimmed_mean':
    server = dataclasses.replace(
        server, trim_fraction=max(base.server.trim_fraction, cell.fraction)
    )
  attack = dataclasses.replace(
      base.attack, attack=cell.attack, malicious_fraction=cell.fraction,
      attack_strength=dict(matrix.strengths).get(cell.attack),
  )
  config = dataclasses.replace(base, seed=seed, server=server, attack=attack)
  return config_lib.reset_unused_settings(config)


class _Runner:
  """Runs cells, keeping what can be shared between seeds and cells."""

  def __init__(self, base: config_lib.ExperimentConfig):
    self._base = base
    self._datasets = {}
    self._evaluators = {}
    self._rounds = {}

  def dataset(self, seed: int):
    # Only synthetic data depends on the seed.
    key = seed if self._base.data.dataset.startswith('synthetic') else None
    if key not in self._datasets:
      self._datasets[key] = study.load_dataset(self._base.data, seed)
    return key, self._datasets[key]

  def _evaluate(self, data_key, config, model, dataset, triggered):
    key = (data_key, triggered is not None)
    if key not in self._evaluators:
      evaluate = evaluate_lib.build_evaluate(
          model, jax.device_put(dataset.test),
          threshold=config.evaluation.threshold,
      )
      evaluate_triggered = None
      if triggered is not None:
        evaluate_triggered = evaluate_lib.build_evaluate(
            model, jax.device_put(triggered),
            threshold=config.evaluation.threshold,
        )
      self._evaluators[key] = (evaluate, evaluate_triggered)
    return self._evaluators[key]

  def run(self, cell: Cell, config) -> dict[str, Any]:
    """Train one cell and seed; return its record."""
    start = time.perf_counter()
    data_key, dataset = self.dataset(config.seed)
    try:
      config_lib.validate(config)
    except InputError as error:
      # Settings the matrix derived for this cell, such as a trim fraction
      # of 0.5 at a malicious fraction of 0.5.
      return {'status': 'not_applicable', 'reason': str(error)}
    study_attacks.check_against_data(
        config, dataset.train.examples['x'].shape[-1], dataset.num_classes,
        dataset.num_clients,
    )
    model = study.build_model(config.model, dataset.num_classes,
                              dataset.train.examples['x'].shape[2:])
    server_optimizer = study.build_optimizer(
        config.server.server_optimizer, config.server.server_learning_rate,
        tau=config.server.server_tau,
    )
    root_key = jax.random.key(config.seed)
    attack_key = jax.random.fold_in(root_key, study._ATTACK_TAG)
    malicious = study_attacks.choose_malicious(
        config, dataset.num_clients, attack_key
    )
    num_malicious = 0 if malicious is None else int(np.sum(malicious))
    train = study_attacks.poison_data(
        config, jax.device_put(dataset.train), malicious,
        dataset.num_classes, key=attack_key,
    )
    round_fn, privacy = self._round(cell, config, dataset, train, malicious,
                                    num_malicious, server_optimizer, model)
    if round_fn is None:
      return {'status': 'not_applicable', 'reason': privacy}
    triggered = study_attacks.triggered_test_data(config, dataset.test)
    evaluate, evaluate_triggered = self._evaluate(
        data_key, config, model, dataset, triggered
    )
    sample_x = jnp.asarray(dataset.train.examples['x'][0, :1])
    params = model.init(jax.random.fold_in(root_key, study._INIT_TAG),
                        sample_x)
    state = round_lib.init_server_state(
        params, server_optimizer,
        clip_norm=(config.privacy.clip_norm if privacy.adaptive_clipping
                   else None),
        aggregator=config.server.aggregator,
        scaffold_clients=(dataset.num_clients if config.client.scaffold
                          else None),
    )
    rounds_key = jax.random.fold_in(root_key, study._ROUNDS_TAG)
    record = {'num_malicious': num_malicious,
              'num_byzantine': config.server.num_byzantine
              if cell.aggregator in _USES_NUM_BYZANTINE else None}
    for round_index in range(config.server.rounds):
      # A stop request ends the matrix between rounds; `run_matrix` keeps
      # the finished cells and drops this one, which a resume reruns.
      interrupts.raise_if_requested()
      state, metrics = round_fn(
          state, jax.random.fold_in(rounds_key, round_index),
          train_data=train, malicious=malicious,
      )
      if not bool(metrics['params_finite']):
        return {**record, 'status': 'diverged',
                'reason': f'NaN or infinite parameters in round '
                          f'{round_index + 1}',
                'wall_time_s': round(time.perf_counter() - start, 3)}
    evaluation = evaluate(state.params)
    record.update(_honest_metrics(evaluation, dataset, malicious))
    if evaluate_triggered is not None:
      honest = (np.ones(dataset.num_clients, bool) if malicious is None
                else ~np.asarray(malicious))
      record['backdoor_success'] = study_attacks.backdoor_success(
          config, evaluate_triggered(state.params), triggered, honest
      )['backdoor_success']
    record['status'] = 'completed'
    record['wall_time_s'] = round(time.perf_counter() - start, 3)
    return record

  def _round(self, cell, config, dataset, train, malicious, num_malicious,
             server_optimizer, model):
    """Return (round_fn, privacy), reusing the cell's compiled round."""
    noise_multiplier = study_privacy.resolve_noise_multiplier(
        config, dataset.num_clients
    )
    privacy = study_privacy.privacy_settings(
        config, np.asarray(dataset.train.num_examples), noise_multiplier
    )
    key = (cell, tuple(np.shape(leaf) for leaf in jax.tree.leaves(train)))
    if key in self._rounds:
      return self._rounds[key], privacy
    try:
      round_fn = round_lib.build_round(
          train,
          study.build_local_update(
              config.client, model, dataset.train,
              report_initial_loss=config.server.aggregator == 'qffl',
          ),
          study.build_sampler(config.sampling, dataset.num_clients),
          server_optimizer,
          aggregator=config.server.aggregator,
          privacy=privacy,
          dropout_rate=config.sampling.dropout_rate,
          attack=study_attacks.build_attack(
              config, dataset.num_clients, num_malicious
          ),
          malicious=malicious,
          aggregator_options=study.aggregator_options(config),
          scaffold_learning_rate=(config.client.learning_rate
                                  if config.client.scaffold else None),
          fednova=config.server.fednova,
          fednova_proximal=(
              config.client.learning_rate * config.client.proximal_mu
              if config.server.fednova else 0.0),
      )
    except ValueError as error:
      # Client-count conditions, such as Krum's n > 2f + 2. The matrix
      # derives num_byzantine from the cell's fraction, so the fix the
      # message suggests is to lower that fraction instead.
      reason = str(error)
      if cell.aggregator in _USES_NUM_BYZANTINE:
        reason = reason.replace(
            'lower num_byzantine or',
            'lower the malicious fraction (the matrix sets num_byzantine '
            'from it) or')
      return None, reason
    self._rounds = {key: round_fn}  # Keep one cell's round alive at a time.
    return round_fn, privacy


def _honest_metrics(evaluation, dataset, malicious) -> dict[str, Any]:
  accuracy = np.asarray(evaluation.accuracy, np.float64)
  counts = np.asarray(dataset.test.num_examples)
  honest = np.ones(dataset.num_clients, bool)
  if malicious is not None:
    honest &= ~np.asarray(malicious)
  present = honest & (counts > 0)
  if not present.any():
    return {'clean_accuracy': None, 'worst_accuracy': None,
            'p10_accuracy': None, 'worst_client': None}
  worst = int(np.flatnonzero(present)[np.argmin(accuracy[present])])
  return {
      'clean_accuracy': float(
          np.sum(accuracy[present] * counts[present]) / counts[present].sum()
      ),
      'worst_accuracy': float(accuracy[worst]),
      'p10_accuracy': float(np.percentile(accuracy[present], 10)),
      'worst_client': dataset.client_names[worst],
  }


def summarize(records: list[dict[str, Any]], matrix: MatrixConfig):
  """Group per-seed records into one row per cell, in matrix order."""
  rows = []
  for cell in cells(matrix):
    mine = [r for r in records if _cell_of(r) == cell]
    completed = [r for r in mine if r['status'] == 'completed']
    row = {'aggregator': cell.aggregator, 'attack': cell.attack,
           'malicious_fraction': cell.fraction, 'seeds': len(mine),
           'completed': len(completed),
           'diverged': sum(r['status'] == 'diverged' for r in mine)}
    reasons = {r['reason'] for r in mine if r['status'] == 'not_applicable'}
    row['not_applicable'] = '; '.join(sorted(reasons)) or None
    for metric in METRICS:
      values = [r[metric] for r in completed if r.get(metric) is not None]
      row[metric] = float(np.mean(values)) if values else None
      row[f'{metric}_std'] = float(np.std(values)) if values else None
    rows.append(row)
  return rows


def _cell_of(record) -> Cell:
  return Cell(record['aggregator'], record['attack'],
              float(record['malicious_fraction']))


def _format(value, std) -> str:
  if value is None:
    return ''
  return f'{value:.3f} ± {std:.3f}'


def write_tables(run_dir: pathlib.Path, rows, title: str) -> None:
  columns = ['aggregator', 'attack', 'malicious_fraction', 'seeds',
             'completed', 'diverged', *METRICS,
             *(f'{metric}_std' for metric in METRICS), 'not_applicable']
  outputs.write_csv(
      run_dir / 'table.csv', columns,
      [['' if row[key] is None else row[key] for key in columns]
       for row in rows])
  lines = [
      f'# {title}', '',
      'Mean ± population standard deviation (ddof=0) over the completed '
      'seeds. Metrics count '
      'honest clients only. n/a: the aggregator cannot run in that cell.', '',
      '| aggregator | attack | fraction | clean accuracy | worst accuracy '
      '| backdoor success | seeds |',
      '|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    if row['not_applicable'] and not row['completed']:
      metrics = ['n/a', 'n/a', 'n/a']
      seeds = f"n/a: {row['not_applicable']}"
    else:
      metrics = [_format(row[m], row[f'{m}_std']) for m in METRICS]
      seeds = f"{row['completed']}/{row['seeds']}"
      if row['diverged']:
        seeds += f" ({row['diverged']} diverged)"
    lines.append(
        f"| {row['aggregator']} | {row['attack']} | "
        f"{row['malicious_fraction']:g} | {' | '.join(metrics)} | {seeds} |"
    )
  (run_dir / 'table.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')


def run_matrix(
    base: config_lib.ExperimentConfig,
    matrix: MatrixConfig,
    out_dir: pathlib.Path | str | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[pathlib.Path, list[dict[str, Any]]]:
  """Run every cell and seed of the matrix and write the folder.

  Args:
    base: the study every cell starts from; its aggregator and attack are
      replaced per cell.
    matrix: the axes.
    out_dir: output folder; None picks a fresh one under `runs/`. With
      `resume`, an existing matrix folder to continue.
    resume: skip the cells and seeds already in `out_dir/cells.jsonl`; the
      base config and matrix must be the ones that folder was started with.
    progress: show a progress bar on stderr.
    on_record: called with each cell-and-seed record after it is written.

  Returns:
    The folder and the per-cell rows of the table.

  Raises:
    InputError: for an invalid base config, or a resume folder that does
      not match.
    StudyInterrupted: on Ctrl-C, after the finished cells and the table of
      them are on disk.
  """
  base = config_lib.with_absolute_paths(base)
  all_cells = cells(matrix)
  name = f'{config_lib.run_name(base)}_matrix'
  settings = {'base': config_lib.to_dict(base),
              'matrix': outputs.to_json_value(dataclasses.asdict(matrix))}
  settings = json.loads(json.dumps(settings))
  records = []
  # The folder's lock is held from before a resume rewrites cells.jsonl
  # until the last cell, so a second process on the same folder is
  # rejected instead of running the same cells twice.
  stack = contextlib.ExitStack()
  if resume:
    if out_dir is None:
      raise InputError('Resuming needs the matrix folder; pass it with --out.')
    run_dir = pathlib.Path(out_dir)
    try:
      saved = json.loads((run_dir / 'matrix.json').read_text())
    except (OSError, ValueError):
      raise InputError(
          f'{run_dir} is not a matrix folder: it has no readable '
          'matrix.json. Pass the folder of an earlier matrix run.'
      ) from None
    check_same_settings(saved, settings, run_dir)
    stack.enter_context(outputs.lock_run_dir(run_dir))
    records = _read_records(run_dir / 'cells.jsonl')
    # Rewrite the file without a line that a crash cut short.
    with open(run_dir / 'cells.jsonl', 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r, allow_nan=False) + '\n' for r in records)
  else:
    _check_base(base)
  with stack:
    done = {(_cell_of(r), r['seed']) for r in records}
    runner = _Runner(base)
    _, first = runner.dataset(matrix.seeds[0])
    num_clients = first.num_clients
    cohort = expected_cohort(base, num_clients)
    _check_against_data(base, matrix, first, cohort)
    if not resume:
      # Created only after every check, so that a rejected matrix leaves no
      # folder behind that a corrected rerun with the same --out would hit.
      run_dir = outputs.make_run_dir(
          None if out_dir is None else pathlib.Path(out_dir), name
      )
      stack.enter_context(outputs.lock_run_dir(run_dir))
      outputs.write_json(run_dir / 'provenance.json', provenance.collect(()))
      outputs.write_json(run_dir / 'matrix.json', settings)
    # Datasets are loaded once per process, so one check covers the cells
    # and seeds that follow.
    provenance.check_data_files(run_dir, first.source_files, 'matrix',
                                'matrix')
    todo = [(cell, seed) for cell in all_cells for seed in matrix.seeds
            if (cell, seed) not in done]
    bar = tqdm.tqdm(total=len(all_cells) * len(matrix.seeds),
                    initial=len(done), desc=name, unit='run',
                    disable=None if progress else True, dynamic_ncols=True)
    title = f'Robustness matrix: {name}'
    try:
      with bar, outputs.MetricsWriter(run_dir / 'cells.jsonl') as writer:
        for cell, seed in todo:
          config = cell_config(base, matrix, cell, seed, cohort, num_clients)
          record = {'aggregator': cell.aggregator, 'attack': cell.attack,
                    'malicious_fraction': cell.fraction, 'seed': seed,
                    **runner.run(cell, config)}
          writer.write(record)
          records.append(record)
          if on_record is not None:
            on_record(record)
          bar.set_postfix_str(f'{cell.aggregator} / {cell.label}')
          bar.update(1)
    except KeyboardInterrupt:
      _write_results(run_dir, records, matrix, title)
      raise StudyInterrupted(run_dir, len(records)) from None
    rows = _write_results(run_dir, records, matrix, title)
    return run_dir, rows


def _write_results(run_dir, records, matrix, title):
  rows = summarize(records, matrix)
  write_tables(run_dir, rows, title)
  plots.plot_matrix(run_dir / 'heatmap.png', rows, METRICS, title=title)
  return rows


_RECORD_KEYS = ('aggregator', 'attack', 'malicious_fraction', 'seed', 'status')


def _read_records(path: pathlib.Path) -> list[dict[str, Any]]:
  """Return the cell records of `path`, skipping lines that are not one."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      # A line cut short by a crash; that cell and seed run again.
      continue
    if isinstance(record, dict) and all(key in record for key in _RECORD_KEYS):
      records.append(record)
  return records


def _check_base(base: config_lib.ExperimentConfig) -> None:
  """Raise InputError for base settings the matrix would ignore or reject."""
  if base.data.dataset in config_lib.SURVIVAL_DATASETS:
    # NOTE: the matrix evaluates accuracy and backdoor success only.
    raise InputError(
        'The robustness matrix does not run the survival dataset '
        f'`data.dataset={base.data.dataset}`: its cells report accuracy, not '
        'the C-index. Run a model-poisoning attack on it with `fedjax-med '
        'run --set attack=... --set malicious_fraction=...`.'
    )
  attack = base.attack
  if (attack.attack != 'none' or attack.malicious_fraction
      or attack.attack_strength is not None):
    raise InputError(
        'The matrix sets the attack, its fraction and its strength per cell, '
        'so `attack.attack`, `attack.malicious_fraction` and '
        '`attack.attack_strength` must stay unset in the base config. Use '
        '`matrix.attacks`, `matrix.malicious_fractions` and '
        '`matrix.strengths`.'
    )
  default_aggregator = config_lib.ServerConfig().aggregator
  if base.server.aggregator != default_aggregator:
    raise InputError(
        f'The matrix sets the aggregator per cell, so `server.aggregator='
        f'{base.server.aggregator}` in the base config would be ignored. List '
        'it in `matrix.aggregators` instead.'
    )
  if base.seed != config_lib.ExperimentConfig().seed:
    raise InputError(
        f'The matrix runs each cell once per entry of `matrix.seeds`, so '
        f'`seed={base.seed}` in the base config would be ignored. List it in '
        '`matrix.seeds` instead.'
    )
  if base.server.num_byzantine != config_lib.ServerConfig().num_byzantine:
    raise InputError(
        'The matrix sets `server.num_byzantine` per cell from its malicious '
        f'fraction, so `server.num_byzantine={base.server.num_byzantine}` in '
        'the base config would be ignored. Remove it.'
    )
  if base.client.fedbn:
    # NOTE: the matrix builds its own rounds and evaluates the global
    # params only; FedBN's per-client norm layers are not wired in here.
    raise InputError(
        'The robustness matrix does not run `client.fedbn=true`. Compare '
        'FedBN with `fedjax-med run` or a sweep instead.'
    )
  if config_lib.participation_active(base) or (
      base.compression.compressor != 'none'):
    # NOTE: the matrix builds its own rounds, without participation or
    # compression.
    raise InputError(
        'The robustness matrix does not run the `participation` or '
        '`compression` sections. Run them with `fedjax-med run` or a sweep.'
    )
  if base.secure_aggregation.enabled:
    # The matrix builds its rounds without the protocol, so its cells
    # reported plain FedAvg, including rounds that would have failed.
    raise InputError(
        'The robustness matrix does not run `secure_aggregation.enabled=true`'
        ': its robust aggregators need each client\'s update, and its '
        'FedAvg cells would run without the protocol. Run secure '
        'aggregation with `fedjax-med run` or a sweep.'
    )
  config_lib.validate(config_lib.reset_unused_settings(base))


def _check_against_data(base, matrix, dataset, cohort) -> None:
  """Raise InputError, before any training, for axes the data cannot take."""
  num_clients = dataset.num_clients
  for fraction in matrix.malicious_fractions:
    if fraction > 0 and round(fraction * num_clients) == 0:
      raise InputError(
          f'`matrix.malicious_fractions` has {fraction}, which rounds to 0 '
          f'malicious clients among {num_clients}. Use at least '
          f'{1 / num_clients:.3g} for one malicious client.'
      )
  # Settings from the base config that no cell can use, such as a trim
  # fraction of 0.6, would otherwise show up as n/a cells after training.
  for aggregator in matrix.aggregators:
    config = cell_config(base, matrix, Cell(aggregator, 'none', 0.0),
                         matrix.seeds[0], cohort, num_clients)
    try:
      config_lib.validate(config)
    except InputError as error:
      raise InputError(
          f'The base config cannot run `{aggregator}` in any cell: {error}'
      ) from None
  if 'backdoor' in matrix.attacks:
    fraction = max(matrix.malicious_fractions)
    config = cell_config(base, matrix, Cell('fedavg', 'backdoor', fraction),
                         matrix.seeds[0], cohort, num_clients)
    config_lib.validate(config)
    study_attacks.check_against_data(
        config, dataset.train.examples['x'].shape[-1], dataset.num_classes,
        num_clients,
    )


def flatten(document, prefix=''):
  if not isinstance(document, dict):
    return {prefix.removesuffix('.'): document}
  flat = {}
  for key, value in document.items():
    flat.update(flatten(value, f'{prefix}{key}.'))
  return flat


def check_same_settings(saved, settings, run_dir) -> None:
  """Raise InputError naming the settings that differ from the saved ones.

  A key missing from the saved settings counts as equal when the current
  value is that key's default, so a folder started before a new config key
  existed can still be resumed.
  """
  defaults = flatten({'base': config_lib.to_dict(config_lib.ExperimentConfig())})
  defaults = json.loads(json.dumps(defaults))
  old, new = flatten(saved), flatten(settings)
  differing = sorted(
      key for key in old.keys() | new.keys()
      if old.get(key, defaults.get(key)) != new.get(key)
  )
  if differing:
    def written(document, key):
      if key not in document and key not in defaults:
        return 'unset'
      return json.dumps(document.get(key, defaults.get(key)))
    changes = '; '.join(
        f'{key.removeprefix("base.")} was {written(old, key)}, now '
        f'{written(new, key)}' for key in differing)
    raise InputError(
        f'The settings differ from the ones {run_dir} was started with: '
        f'{changes}. Resume with the same config file and --set values, or '
        'start a new folder.'
    )
