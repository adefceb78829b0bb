"""Run studies from Python and get their metrics back as arrays.

The command line and this module run the same study (`fedjax_med.study`);
this module returns the results instead of printing them::

  import fedjax_med as fm

  config = fm.configure(rounds=30, aggregator='median')
  result = fm.run(config)
  result.summary['mean_accuracy']        # final mean per-hospital accuracy
  result.metric('train_loss')            # one value per round
  result.rounds_table()                  # dict of columns, one row per round
  result.plot_accuracy()                 # per-hospital accuracy per round

A survival study (`dataset='tcga_brca'`, `model='cox'`) reports Harrell's
C-index instead of accuracy: `result.summary['mean_c_index']`,
`result.client_c_index()` and `result.plot_c_index()`.

Each run still writes its folder (config, metrics, summary, plot), so a
result can be reloaded later with `load_run`.
"""

import csv
import dataclasses
import json
import pathlib
from typing import Any, Callable

import numpy as np

from fedjax_med import config as config_lib
from fedjax_med.errors import InputError
from fedjax_med.evaluation import clinical
from fedjax_med.report import outputs

ExperimentConfig = config_lib.ExperimentConfig


def configure(
    base: config_lib.ExperimentConfig | str | pathlib.Path | None = None,
    overrides: dict[str, Any] | None = None,
    **settings: Any,
) -> config_lib.ExperimentConfig:
  """Build a study config from a base and settings, checked.

  Args:
    base: the config to start from: an `ExperimentConfig`, the path of a
      TOML file such as `experiments/heart_disease_fedavg.toml`, or None for
      the defaults (FedAvg on the bundled Fed-Heart-Disease data).
    overrides: settings keyed by `section.key`, such as
      `{'privacy.noise': 'central'}`; needed where a bare key is ambiguous.
    **settings: settings keyed by a bare key that names one field, such as
      `rounds=30` or `aggregator='median'`.

  Returns:
    The config, after `fedjax_med.config.validate`.

  Raises:
    InputError: for an unknown key, a value of the wrong type, or a setting
      that fails validation; the message names the key and what is allowed.
  """
  if base is None:
    config = config_lib.ExperimentConfig()
  elif isinstance(base, config_lib.ExperimentConfig):
    config = base
  elif isinstance(base, (str, pathlib.Path)):
    config = config_lib.load_toml(base)
  else:
    raise InputError(
        f'configure() takes an ExperimentConfig, a TOML path or None as its '
        f'base; got {type(base).__name__}.'
    )
  if overrides is None:
    overrides = {}
  if not isinstance(overrides, dict) or not all(
      isinstance(key, str) for key in overrides):
    raise InputError(
        'overrides must be a dict of settings keyed by `section.key`, such '
        "as {'privacy.noise': 'central'}; got "
        f'{type(overrides).__name__} {overrides!r}.'
    )
  both = {config_lib.resolve_key(key) for key in overrides} & {
      config_lib.resolve_key(key) for key in settings}
  if both:
    names = ', '.join(sorted('.'.join(filter(None, key)) for key in both))
    raise InputError(
        f'{names} is set both in overrides and as a keyword argument; set it '
        'once.'
    )
  explicit_keys = config_lib.given_keys([*overrides, *settings])
  if isinstance(base, (str, pathlib.Path)):
    explicit_keys |= config_lib.given_keys(
        config_lib.document_keys(config_lib.read_toml(base)))
  config = config_lib.apply_overrides(config, overrides, strict=True)
  config = config_lib.apply_overrides(config, settings, strict=True)
  config_lib.validate(config, given_keys=explicit_keys)
  return config


@dataclasses.dataclass(frozen=True)
class Result:
  """A finished study: its folder, summary and per-round records.

  Attributes:
    run_dir: the run's output folder.
    config: the config the run used.
    summary: the contents of `summary.json`.
    records: one dict per round from `metrics.jsonl`, in round order.
  """

  run_dir: pathlib.Path
  config: config_lib.ExperimentConfig
  summary: dict[str, Any]
  records: tuple[dict[str, Any], ...]

  @property
  def is_survival(self) -> bool:
    """Whether the run scored a survival model by the C-index."""
    return 'test_c_index' in self.summary

  @property
  def client_names(self) -> list[str]:
    """The clients' names, in the order of the accuracy or C-index columns."""
    field = 'test_c_index' if self.is_survival else 'test_accuracy'
    return list(self.summary.get(field, {}))

  @property
  def rounds(self) -> np.ndarray:
    """The round numbers of `records`, 1-based."""
    return np.array([record['round'] for record in self.records], np.int64)

  def metric(self, name: str) -> np.ndarray:
    """Return one scalar metric per round, NaN in rounds without it.

    Args:
      name: a key of the per-round records, such as `train_loss`,
        `mean_accuracy` (evaluated rounds only) or `epsilon`.

    Raises:
      InputError: if no round has `name`; the message lists the names.
    """
    if not any(name in record for record in self.records):
      raise InputError(
          f'No round of {self.run_dir} has the metric {name!r}. Metrics: '
          f'{", ".join(self.metric_names())}.'
      )
    values = []
    for record in self.records:
      value = record.get(name)
      if isinstance(value, (dict, list, str)):
        method = ('client_c_index()' if self.is_survival
                  else 'client_accuracy()')
        raise InputError(
            f'{name!r} is not a scalar metric; use {method} for the '
            'per-client test scores.'
        )
      values.append(np.nan if value is None else float(value))
    return np.array(values, np.float64)

  def metric_names(self) -> list[str]:
    """Return the names of the scalar metrics found in any round."""
    names = {}
    for record in self.records:
      for name, value in record.items():
        if name != 'round' and not isinstance(value, (dict, list, str)):
          names[name] = True
    return list(names)

  def client_accuracy(self) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-client test accuracy of the evaluated rounds.

    Returns:
      `(rounds, accuracy)`: the evaluated round numbers `[E]`, and
      `accuracy[E, clients]` in the order of `client_names` (NaN for a
      client without test rows).

    Raises:
      InputError: for a population of more than 100 clients, whose
        per-round lines hold only the mean, worst and 10th percentile, or
        for a survival run, which has `client_c_index` instead.
    """
    if self.is_survival:
      raise InputError(
          f'{self.run_dir} is a survival study scored by the C-index, not '
          'accuracy; use client_c_index().'
      )
    return self._per_client_scores('accuracy')

  def client_c_index(self) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-client test C-index of a survival run's evaluated rounds.

    Returns:
      `(rounds, c_index)`: the evaluated round numbers `[E]`, and Harrell's
      C-index `c_index[E, clients]` in the order of `client_names` (NaN for
      a client without a comparable pair of test rows).

    Raises:
      InputError: for a classification run, which has `client_accuracy`
        instead.
    """
    if not self.is_survival:
      raise InputError(
          f'{self.run_dir} is a classification study without a C-index; use '
          'client_accuracy().'
      )
    return self._per_client_scores('c_index')

  def _per_client_scores(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the rounds and `[E, clients]` values of `test_<metric>`."""
    field = f'test_{metric}'
    evaluated = [record for record in self.records if field in record]
    if not evaluated and any(f'mean_{metric}' in record
                             for record in self.records):
      raise InputError(
          f'Per-client {metric} is written to metrics.jsonl only for '
          'populations of up to 100 clients; use '
          f"metric('mean_{metric}'), metric('worst_{metric}') or "
          f"summary['{field}'] instead."
      )
    names = self.client_names
    values = np.array(
        [[np.nan if record[field].get(name) is None
          else record[field][name] for name in names]
         for record in evaluated], np.float64).reshape(len(evaluated),
                                                       len(names))
    return (np.array([record['round'] for record in evaluated], np.int64),
            values)

  def rounds_table(self) -> dict[str, np.ndarray]:
    """Return every scalar metric as a column, one row per round.

    With pandas installed (it is not a dependency),
    `pandas.DataFrame(result.rounds_table())` gives a table indexed by row;
    its `round` column contains the round numbers.
    """
    table = {'round': self.rounds}
    for name in self.metric_names():
      table[name] = self.metric(name)
    return table

  def clients_table(self) -> dict[str, np.ndarray]:
    """Return the per-client accuracy in long form: one row per client and round.

    Columns: `round`, `client`, `accuracy` (`c_index` for a survival run),
    `num_test_examples`.
    """
    metric = 'c_index' if self.is_survival else 'accuracy'
    rounds, values = self._per_client_scores(metric)
    names = self.client_names
    counts = self.summary.get('num_test_examples', {})
    return {
        'round': np.repeat(rounds, len(names)),
        'client': np.tile(np.array(names, dtype=object), len(rounds)),
        metric: values.reshape(-1),
        'num_test_examples': np.tile(
            np.array([counts.get(name, 0) for name in names], np.int64),
            len(rounds)),
    }

  def plot_accuracy(self, ax=None):
    """Plot each client's test accuracy and their mean against the round.

    Args:
      ax: a matplotlib Axes to draw on; None makes a new figure.

    Returns:
      The Axes.

    Raises:
      InputError: for a survival run (see `client_accuracy`).
    """
    rounds, accuracy = self.client_accuracy()
    return self._plot_client_scores(ax, rounds, accuracy, 'test accuracy')

  def plot_c_index(self, ax=None):
    """Plot each client's test C-index and their mean against the round.

    A dashed line marks 0.5, the C-index of a random ranking.

    Args:
      ax: a matplotlib Axes to draw on; None makes a new figure.

    Returns:
      The Axes.

    Raises:
      InputError: for a classification run (see `client_c_index`).
    """
    rounds, c_index = self.client_c_index()
    ax = self._plot_client_scores(ax, rounds, c_index,
                                  "test C-index (Harrell's)")
    ax.axhline(0.5, color='grey', linestyle='--', linewidth=1)
    return ax

  def _plot_client_scores(self, ax, rounds, scores, ylabel: str):
    """Plot `scores [rounds, clients]`, one line per client and the mean."""
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    if ax is None:
      _, ax = plt.subplots(figsize=(6.4, 4.0))
    for column, name in enumerate(self.client_names):
      ax.plot(rounds, scores[:, column], marker='.', linewidth=1,
              label=name)
    ax.plot(rounds, np.nanmean(scores, axis=1), color='black',
            linewidth=2, label='mean')
    ax.set_xlabel('round')
    ax.set_ylabel(ylabel)
    return self._finish_plot(ax)


  def predictions(self) -> dict[str, np.ndarray]:
    """Return each test patient's label and final score, from `predictions.csv`.

    Columns: `client` (names), `label` (0 or 1) and `score`, the final
    model's probability of label 1, which the clinical metrics in
    `summary['clinical']` were computed from.

    Raises:
      InputError: if the run has no `predictions.csv`: its task is not
        binary, or an older version wrote it.
    """
    path = self.run_dir / 'predictions.csv'
    if self.is_survival:
      raise InputError(
          f'{self.run_dir} is a survival run: it has no class predictions. '
          "Its risk_scores.csv contains each test patient's time, event and "
          'final log-risk, and client_c_index() the per-client C-index.')
    if not path.is_file():
      raise InputError(
          f'{self.run_dir} has no predictions.csv. Studies write it for '
          'tasks with two classes only; for a run from an older version, '
          'run the study again.')
    try:
      with path.open(newline='', encoding='utf-8') as handle:
        rows = list(csv.DictReader(handle))
      return {
          'client': np.array(
              [outputs.from_spreadsheet_text(row['client']) for row in rows],
              dtype=object),
          'label': np.array([int(row['label']) for row in rows], np.int64),
          'score': np.array([float(row['score']) for row in rows],
                            np.float64),
      }
    except (KeyError, ValueError, TypeError) as error:
      raise InputError(
          f'{path} is damaged ({type(error).__name__}: {error}); it needs '
          'the columns client, label and score. Run the study again.'
      ) from None

  def plot_calibration(self, ax=None, *, num_bins: int = 10,
                       max_clients: int = 8):
    """Plot a reliability diagram: observed rate against mean score per bin.

    One line pools every test patient. With at most `max_clients` clients,
    each also gets a thin line. Points on the diagonal are calibrated;
    `summary['clinical']` contains each client's calibration slope and
    intercept.

    Args:
      ax: a matplotlib Axes to draw on; None makes a new figure.
      num_bins: equal-width score bins over [0, 1].
      max_clients: the largest number of clients drawn one by one.

    Returns:
      The Axes.

    Raises:
      InputError: as `predictions`.
    """
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    table = self.predictions()
    if ax is None:
      _, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.plot([0, 1], [0, 1], color='grey', linestyle='--', linewidth=1,
            label='calibrated')
    names = list(dict.fromkeys(table['client']))
    if len(names) <= max_clients:
      for name in names:
        rows = table['client'] == name
        mean_score, observed, _ = clinical.calibration_curve(
            table['label'][rows], table['score'][rows], num_bins=num_bins)
        ax.plot(mean_score, observed, marker='.', linewidth=1, alpha=0.7,
                label=name)
    mean_score, observed, _ = clinical.calibration_curve(
        table['label'], table['score'], num_bins=num_bins)
    ax.plot(mean_score, observed, marker='o', color='black', linewidth=2,
            label='all patients')
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('mean predicted probability')
    ax.set_ylabel('observed fraction with label 1')
    return self._finish_plot(ax)

  def _finish_plot(self, ax):
    """Title `ax` with the run's name, add the legend and grid, return it."""
    ax.set_title(self.summary.get('name', self.config.name) or '')
    ax.legend(fontsize='small')
    ax.grid(alpha=0.3)
    return ax


def run(
    config: config_lib.ExperimentConfig | str | pathlib.Path | None = None,
    out_dir: str | pathlib.Path | None = None,
    *,
    progress: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_interval_s: float | None = None,
    tensorboard: bool = False,
    **settings: Any,
) -> Result:
  """Run one study and return its result.

  Args:
    config: as `configure`'s base.
    out_dir: output folder, new or empty; None picks `runs/<name>-<time>`.
    progress: show a progress bar (in a notebook it goes to stderr).
    on_round: called with each round's record as it finishes.
    checkpoint_interval_s: seconds between checkpoints; None keeps the
      default of `fedjax_med.study.run_study`.
    tensorboard: also write TensorBoard scalars (needs tensorboardX).
    **settings: bare-key settings applied on top of `config`, as in
      `configure`.

  Returns:
    The finished study's `Result`.

  Raises:
    InputError, TrainingDiverged, StudyInterrupted: as
      `fedjax_med.study.run_study`.
  """
  from fedjax_med import study  # pylint: disable=g-import-not-at-top

  for name in ('out', 'output', 'out_path', 'run_dir'):
    if name in settings:
      raise InputError(
          f'`run` takes the output folder as `out_dir`, not `{name}`.')
  config = configure(config, **settings)
  options = {}
  if checkpoint_interval_s is not None:
    options['checkpoint_interval_s'] = checkpoint_interval_s
  run_dir, _ = study.run_study(
      config, out_dir, progress=progress, on_round=on_round,
      tensorboard=tensorboard, **options)
  return load_run(run_dir)


def resume(
    run_dir: str | pathlib.Path,
    *,
    progress: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_interval_s: float | None = None,
    tensorboard: bool = False,
) -> Result:
  """Continue a stopped study from its newest checkpoint; see `run`.

  Raises:
    InputError, TrainingDiverged, StudyInterrupted: as
      `fedjax_med.study.resume_study`.
  """
  from fedjax_med import study  # pylint: disable=g-import-not-at-top

  options = {}
  if checkpoint_interval_s is not None:
    options['checkpoint_interval_s'] = checkpoint_interval_s
  run_dir, _ = study.resume_study(
      run_dir, progress=progress, on_round=on_round, tensorboard=tensorboard,
      **options)
  return load_run(run_dir)


def load_run(run_dir: str | pathlib.Path) -> Result:
  """Read a finished run's folder back as a `Result`.

  Raises:
    InputError: if the folder lacks `config.json`, `summary.json` or
      `metrics.jsonl`, or the run did not complete.
  """
  run_dir = outputs.existing_run_dir(run_dir)
  paths = {name: run_dir / name
           for name in ('config.json', 'summary.json', 'metrics.jsonl')}
  missing = [name for name, path in paths.items() if not path.is_file()]
  if missing:
    raise InputError(
        f'{run_dir} lacks {", ".join(missing)}: it is not the folder of a '
        'finished run. A stopped run continues with fedjax_med.resume().'
    )
  summary = outputs.read_json(paths['summary.json'])
  if summary.get('status') != 'completed':
    raise InputError(
        f'The run in {run_dir} did not complete (status '
        f"{summary.get('status')!r}); its metrics.jsonl holds the rounds it "
        'finished.'
    )
  config = config_lib.from_document(outputs.read_json(paths['config.json']))
  lines = paths['metrics.jsonl'].read_text(encoding='utf-8').splitlines()
  try:
    records = tuple(json.loads(line) for line in lines if line.strip())
  except ValueError:
    raise InputError(
        f"{paths['metrics.jsonl']} has a line that is not valid JSON: it was "
        'edited or cut short. Restore it, or run the study again.'
    ) from None
  return Result(run_dir=run_dir, config=config, summary=summary,
                records=records)
