"""Accuracy and cost of secure aggregation against cohort size and dropout.

Usage:
  python experiments/secure_aggregation.py [--quick] [--seed 0] [--out DIR]

Every run is one `study.run_study` with FedAvg (example-weighted mean, server
SGD at 1.0) in one of three modes:

* plain: the round without the protocol, with the same clip bound;
* secure: the same round through the simulated secure aggregation of
  `fedjax_med.secure` (Bonawitz et al., 2017; Bell et al., 2020);
* secure + DP: secure aggregation with distributed discrete Gaussian noise
  (`privacy.noise=distributed`), noise multiplier `NOISE_MULTIPLIER`,
  FedAvg weights capped at the largest client's training rows, accounted
  as zCDP (Kairouz, Liu and Steinke, 2021) with no credit for sampling.

Two populations:

* Fed-Heart-Disease: the four hospitals, all of them sampled every round,
  complete graph, dropout rates `heart_dropout_rates`. The default study's
  logistic regression, 15 rounds of 100 local SGD steps (batch 4, learning
  rate 0.01), clip bound 0.5.
* Synthetic: `population` clients of FedProx's IID synthetic data
  (`synthetic_iid`, 60 features, 10 classes, 50 to 100 rows per client)
  with softmax regression (d = 610 parameters), uniform cohorts, harary
  graph, 10 rounds of 10 local SGD steps of batch 10 at learning rate 1.0,
  clip bound 2.0. The cohort sweep runs every mode at each of `cohorts`
  with dropout `cohort_dropout_rate`. The dropout sweep runs every mode at
  cohort `dropout_cohort` with each of `dropout_rates`. One more secure
  run, `failure`, is set up to fail: the protocol's default degree at
  dropout 0.3. Another runs the complete graph at cohort `complete_cohort`.
  The non-IID `synthetic` data (FedProx's Synthetic(1, 1)) gives every
  client its own labeling rule, so a single global model stays near
  chance accuracy and the modes cannot differ.

Harary degree: the smallest even degree, starting from the protocol's
default of about 2 log2(cohort), for which the union bound
`cohort * P(Binomial(k, 1 - dropout) < t)` on a failed round is at most
`MAX_FAILURE_BOUND`. A client's unmasking needs `t` of its `k` neighbours
to survive, and every client, surviving or dropped, needs it.

Distributed noise assumes a minimum number of reporting clients. It is
the whole cohort without dropout. With dropout it is the cohort's expected
survivors minus 4 standard deviations, but never below the threshold `t`,
because a round with fewer than `t` survivors fails and releases nothing.

The cost model: `protocol.cost_of`, the function that produces each
round's cost metrics, evaluated for a cohort without dropout at every size
of `model_cohorts` for both graphs. Its numbers are a model of the bytes a
deployment would send, not a measurement, and are also given where no run
was affordable (the complete graph at 10,000 clients).

Each finished run is appended to `results.jsonl` in the output folder, then
`results.md` (the tables) and `secure_aggregation.png` are written.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import shlex
import sys
import time
from typing import Any

from absl import logging
import jax.numpy as jnp
import matplotlib
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med import interrupts
from fedjax_med import study
from fedjax_med.errors import InputError
from fedjax_med.report import machine
from fedjax_med.report import outputs
from fedjax_med.report import script_help
from fedjax_med.secure import protocol

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

PLAIN = 'plain'
SECURE = 'secure'
SECURE_DP = 'secure_dp'
MODES = (PLAIN, SECURE, SECURE_DP)
MODE_LABELS = {
    PLAIN: 'plain FedAvg',
    SECURE: 'secure',
    SECURE_DP: 'secure + distributed DP',
}
HEART = 'heart_disease'
SYNTHETIC = 'synthetic_iid'
NOISE_MULTIPLIER = 2.0
HEART_CLIP_NORM = 0.5
SYNTHETIC_CLIP_NORM = 2.0
SYNTHETIC_LEARNING_RATE = 1.0
SYNTHETIC_BATCH_SIZE = 10
THRESHOLD_FRACTION = 0.5
# Union bound on the chance that a round fails, for choosing harary degrees.
MAX_FAILURE_BOUND = 0.01
# Standard deviations below the expected survivors for min_reporting_clients.
REPORTING_MARGIN_SD = 4.0
# The parameters of the synthetic softmax regression plus the weight
# coordinate that FedAvg sends without noise: 60 x 10 + 10 + 1.
SYNTHETIC_DIMENSION = 611
RING_BITS = 32
FULL = {
    'heart_rounds': 15,
    'heart_local_steps': 100,
    'heart_dropout_rates': (0.0, 0.1, 0.3),
    'population': 10_000,
    'synthetic_rounds': 10,
    'synthetic_local_steps': 10,
    'cohorts': (100, 1000, 10_000),
    'cohort_dropout_rate': 0.1,
    'dropout_cohort': 1000,
    'dropout_rates': (0.0, 0.1, 0.3),
    'complete_cohort': 100,
    # The protocol's default harary degree at 30% dropout.
    'failure': {'dataset': SYNTHETIC, 'dropout_rate': 0.3,
                'threshold_fraction': THRESHOLD_FRACTION},
    'model_cohorts': (10, 30, 100, 300, 1000, 3000, 10_000),
}
# Sized for the smoke test: 2 short rounds on the hospitals without dropout,
# and the failure run on the hospitals, where the threshold t = 3 of 3
# neighbours fails every round in which a hospital drops. No synthetic run.
QUICK = {
    'heart_rounds': 2,
    'heart_local_steps': 5,
    'heart_dropout_rates': (0.0,),
    'population': 200,
    'synthetic_rounds': 2,
    'synthetic_local_steps': 2,
    'cohorts': (),
    'cohort_dropout_rate': 0.1,
    'dropout_cohort': 50,
    'dropout_rates': (),
    'complete_cohort': None,
    'failure': {'dataset': HEART, 'dropout_rate': 0.5,
                'threshold_fraction': 0.9},
    'model_cohorts': (4, 50, 200),
}
# The summaries' bootstrap intervals are not used here.
BOOTSTRAP_RESAMPLES = config_lib.MIN_BOOTSTRAP_RESAMPLES


@dataclasses.dataclass(frozen=True)
class Setting:
  """One run of the grid.

  Attributes:
    name: folder name of the run.
    dataset: `HEART` or `SYNTHETIC`.
    mode: an entry of `MODES`.
    sweep: 'dropout', 'cohort', 'failure' (a run sized to fail: the
      default harary degree or a high threshold at high dropout) or
      'complete' (the complete graph on synthetic data).
    cohort: clients sampled per round.
    dropout_rate: probability that a sampled client drops after the key
      exchange.
    graph: 'complete' or 'harary', or None in plain mode.
    degree: the harary degree, or None.
    threshold_fraction: the protocol's Shamir threshold fraction.
  """

  name: str
  dataset: str
  mode: str
  sweep: str
  cohort: int
  dropout_rate: float
  graph: str | None = None
  degree: int | None = None
  threshold_fraction: float = THRESHOLD_FRACTION


def binomial_cdf(value: int, trials: int, probability: float) -> float:
  """Return P(Binomial(trials, probability) <= value)."""
  return math.fsum(
      math.comb(trials, count) * probability**count
      * (1.0 - probability)**(trials - count)
      for count in range(0, min(value, trials) + 1)
  )


def _settings(graph: str, degree: int | None,
              threshold_fraction: float = THRESHOLD_FRACTION):
  return protocol.SecureAggregationSettings(
      graph=graph, degree=degree if graph == 'harary' else None,
      threshold_fraction=threshold_fraction,
  )


def failure_bound(
    graph: str, cohort: int, degree: int | None, dropout_rate: float,
    threshold_fraction: float = THRESHOLD_FRACTION,
) -> float:
  """Return the union bound on the chance that a round fails.

  Every participant needs `t` of its `k` neighbours to survive, and each
  neighbour survives independently with probability `1 - dropout_rate`.
  """
  settings = _settings(graph, degree, threshold_fraction)
  k = protocol.graph_degree(settings, cohort)
  t = protocol.threshold(settings, cohort)
  below = binomial_cdf(t - 1, k, 1.0 - dropout_rate)
  return min(1.0, cohort * below)


def harary_degree(cohort: int, dropout_rate: float) -> int:
  """Return the smallest even degree from the default with a small bound.

  When no degree below the cohort meets `MAX_FAILURE_BOUND`, the largest
  even degree is returned and the run reports its larger bound.
  """
  largest = cohort - 1 - (cohort - 1) % 2
  degree = protocol.default_degree(cohort)
  while degree < largest and failure_bound(
      'harary', cohort, degree, dropout_rate) > MAX_FAILURE_BOUND:
    degree += 2
  return degree


def min_reporting_clients(
    cohort: int, dropout_rate: float, threshold: int
) -> int:
  """Return the reporting clients that distributed noise is sized for."""
  if dropout_rate == 0.0:
    return cohort
  mean = cohort * (1.0 - dropout_rate)
  deviation = math.sqrt(cohort * dropout_rate * (1.0 - dropout_rate))
  floor = math.floor(mean - REPORTING_MARGIN_SD * deviation)
  return min(cohort, max(threshold, floor))


def _modes(dataset, sweep, cohort, dropout, graph, degree) -> list[Setting]:
  """Return the plain, secure and secure + DP runs of one grid point."""
  stem = f'{dataset}_{sweep}_c{cohort}_d{dropout:g}'
  return [
      Setting(f'{stem}_{mode}', dataset, mode, sweep, cohort, dropout,
              None if mode == PLAIN else graph,
              None if mode == PLAIN else degree)
      for mode in MODES
  ]


def plan_settings(sizes: dict[str, Any], num_hospitals: int) -> list[Setting]:
  """List the heart runs, the cohort sweep, the dropout sweep and extras."""
  settings = []
  for dropout in sizes['heart_dropout_rates']:
    settings += _modes(HEART, 'dropout', num_hospitals, dropout, 'complete',
                       None)
  for cohort in sizes['cohorts']:
    dropout = sizes['cohort_dropout_rate']
    settings += _modes(SYNTHETIC, 'cohort', cohort, dropout, 'harary',
                       harary_degree(cohort, dropout))
  cohort = sizes['dropout_cohort']
  for dropout in sizes['dropout_rates']:
    if cohort in sizes['cohorts'] and dropout == sizes['cohort_dropout_rate']:
      continue  # The cohort sweep already ran this point.
    settings += _modes(SYNTHETIC, 'dropout', cohort, dropout, 'harary',
                       harary_degree(cohort, dropout))
  settings.append(_failure_setting(sizes, num_hospitals))
  complete = sizes['complete_cohort']
  if complete is not None:
    dropout = sizes['cohort_dropout_rate']
    settings.append(Setting(
        f'{SYNTHETIC}_complete_c{complete}_d{dropout:g}_{SECURE}',
        SYNTHETIC, SECURE, 'complete', complete, dropout, 'complete'))
  return settings


def _failure_setting(sizes: dict[str, Any], num_hospitals: int) -> Setting:
  """Return the secure run of `sizes['failure']`.

  On the hospitals it uses the complete graph; on synthetic data, the
  protocol's default harary degree at cohort `dropout_cohort`.
  """
  failure = sizes['failure']
  dropout = failure['dropout_rate']
  fraction = failure['threshold_fraction']
  if failure['dataset'] == HEART:
    cohort, graph, degree = num_hospitals, 'complete', None
  else:
    cohort = sizes['dropout_cohort']
    graph, degree = 'harary', protocol.default_degree(cohort)
  name = f"{failure['dataset']}_failure_c{cohort}_d{dropout:g}_t{fraction:g}"
  return Setting(name, failure['dataset'], SECURE, 'failure', cohort,
                 dropout, graph, degree, fraction)


def base_overrides(dataset: str, sizes: dict[str, Any]) -> dict[str, Any]:
  """Return the settings every run on `dataset` shares."""
  if dataset == HEART:
    rounds = sizes['heart_rounds']
    overrides = {
        'data.dataset': HEART,
        'client.local_steps': sizes['heart_local_steps'],
        'privacy.clip_norm': HEART_CLIP_NORM,
    }
  else:
    rounds = sizes['synthetic_rounds']
    overrides = {
        'data.dataset': SYNTHETIC,
        'data.num_clients': sizes['population'],
        'client.learning_rate': SYNTHETIC_LEARNING_RATE,
        'client.local_steps': sizes['synthetic_local_steps'],
        'client.batch_size': SYNTHETIC_BATCH_SIZE,
        'sampling.sampling': 'uniform',
        'privacy.clip_norm': SYNTHETIC_CLIP_NORM,
    }
  return {
      **overrides,
      'server.aggregator': 'fedavg',
      'server.rounds': rounds,
      'evaluation.eval_every': rounds,
      'evaluation.bootstrap_resamples': BOOTSTRAP_RESAMPLES,
  }


def setting_overrides(
    setting: Setting, sizes: dict[str, Any], weight_cap: int
) -> dict[str, Any]:
  """Return the config overrides of one run."""
  overrides = {
      **base_overrides(setting.dataset, sizes),
      'name': setting.name,
      'sampling.dropout_rate': setting.dropout_rate,
  }
  if setting.dataset == SYNTHETIC:
    overrides['sampling.cohort_size'] = setting.cohort
  if setting.mode == PLAIN:
    return overrides
  overrides['secure_aggregation.enabled'] = True
  overrides['secure_aggregation.graph'] = setting.graph
  overrides['secure_aggregation.threshold_fraction'] = (
      setting.threshold_fraction)
  if setting.graph == 'harary':
    overrides['secure_aggregation.degree'] = setting.degree
  if setting.mode == SECURE_DP:
    threshold = protocol.threshold(
        _settings(setting.graph, setting.degree, setting.threshold_fraction),
        setting.cohort)
    overrides.update({
        'privacy.noise': 'distributed',
        'privacy.noise_multiplier': NOISE_MULTIPLIER,
        'privacy.min_reporting_clients': min_reporting_clients(
            setting.cohort, setting.dropout_rate, threshold),
        'server.weight_cap': weight_cap,
    })
  return overrides


def _round_records(run_dir: pathlib.Path) -> list[dict[str, Any]]:
  lines = (run_dir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _cost_fields(summary: dict[str, Any]) -> dict[str, Any]:
  """Return the protocol plan and mean costs from a secure summary."""
  section = summary['secure_aggregation']
  if not section['enabled']:
    return {}
  names = ('threshold', 'degree', 'scale', 'noise_sigma',
           'overflow_probability', 'mean_client_bytes_up',
           'mean_client_bytes_down', 'mean_server_bytes',
           'mean_plain_bytes_up', 'mean_client_prg_expansions',
           'mean_server_prg_expansions', 'mean_reconstructions')
  return {name: section.get(name) for name in names}


def run_setting(
    setting: Setting, sizes: dict[str, Any], *, seed: int,
    out_dir: pathlib.Path, weight_cap: int,
) -> dict[str, Any]:
  """Run one setting with `study.run_study` and return its row."""
  start = time.perf_counter()
  overrides = setting_overrides(setting, sizes, weight_cap)
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {**overrides, 'seed': seed})
  config_lib.validate(config)
  run_dir = out_dir / 'runs' / setting.name
  _, summary = study.run_study(config, run_dir, progress=False)

  records = _round_records(run_dir)
  failed = [bool(record.get('secagg_failed')) for record in records]
  below = [bool(record.get('below_min_reporting')) for record in records]
  privacy = summary['privacy']
  return {
      'kind': 'run',
      **dataclasses.asdict(setting),
      'seed': seed,
      'rounds': summary['rounds_run'],
      'mean_accuracy': summary['mean_accuracy'],
      'worst_accuracy': summary['worst_accuracy'],
      'skipped_rounds': summary['skipped_rounds'],
      'failed_rounds': sum(failed),
      'failure_bound': (None if setting.mode == PLAIN else failure_bound(
          setting.graph, setting.cohort, setting.degree,
          setting.dropout_rate, setting.threshold_fraction)),
      'epsilon': privacy.get('epsilon'),
      'delta': privacy.get('delta'),
      'guarantee_holds': privacy.get('guarantee_holds'),
      'min_reporting_clients': overrides.get(
          'privacy.min_reporting_clients'),
      'below_min_rounds': sum(below),
      # Rounds below the minimum that the protocol did not fail, so their
      # noised sum was released with less noise than accounted.
      'below_min_released_rounds': sum(
          is_below and not is_failed
          for is_below, is_failed in zip(below, failed)),
      **_cost_fields(summary),
      'wall_time_s': summary['wall_time_s'],
      'elapsed_s': round(time.perf_counter() - start, 1),
  }


def model_costs(cohorts, dimension: int, bits: int) -> list[dict[str, Any]]:
  """Evaluate `protocol.cost_of` for cohorts without dropout, both graphs."""
  rows = []
  for cohort in cohorts:
    for graph in protocol.GRAPHS:
      settings = protocol.SecureAggregationSettings(
          graph=graph, threshold_fraction=THRESHOLD_FRACTION, bits=bits)
      degree = protocol.graph_degree(settings, cohort)
      # Every client participates and survives, so none drops.
      everyone = jnp.ones((cohort,), bool)
      edges = jnp.ones((cohort, degree), bool)
      cost = protocol.cost_of(
          settings, dimension, edges, edges, everyone, ~everyone, everyone)
      rows.append({
          'kind': 'cost_model',
          'graph': graph,
          'cohort': cohort,
          'dimension': dimension,
          **{name.removeprefix('secagg_'): value.item()
             for name, value in cost.items()},
      })
  return rows


def _append_line(path: pathlib.Path, record: dict[str, Any]) -> None:
  """Append one JSON line and sync it to disk."""
  with open(path, 'a', encoding='utf-8') as stream:
    stream.write(
        json.dumps(outputs.to_json_value(record), allow_nan=False) + '\n'
    )
    stream.flush()
    os.fsync(stream.fileno())


def plain_row(rows, row) -> dict[str, Any] | None:
  """Return the plain run at the dataset, cohort and dropout of `row`."""
  for other in rows:
    if (other['mode'] == PLAIN and other['dataset'] == row['dataset']
        and other['cohort'] == row['cohort']
        and other['dropout_rate'] == row['dropout_rate']):
      return other
  return None


def _kilobytes(value) -> str:
  return '-' if value is None else f'{value / 1000:.1f}'


def _graph_cell(row) -> str:
  if row['graph'] is None:
    return '-'
  return f"{row['graph']} ({row['degree']}, {row['threshold']})"


def _failed_cell(row) -> str:
  if row['mode'] == PLAIN:
    return '-'
  return f"{row['failed_rounds']}/{row['rounds']} ({row['failure_bound']:.2g})"


def _epsilon_cell(row) -> str:
  """Return epsilon, with the rounds that had fewer reporting clients than
  the noise assumes, released or failed. Both void the summary's guarantee:
  a released one carried too little noise, and a failed one is an outcome
  the accountant does not model."""
  if row['epsilon'] is None:
    return '-'
  text = f"{row['epsilon']:.2f}"
  released = row['below_min_released_rounds']
  failed = row['below_min_rounds'] - released
  if released:
    text += f" ({released} released {_rounds(released)} below minimum)"
  if failed:
    text += f" ({failed} failed {_rounds(failed)} below minimum)"
  return text


def _rounds(count: int) -> str:
  return 'round' if count == 1 else 'rounds'


def _gap_cell(rows, row) -> str:
  plain = plain_row(rows, row)
  if row['mode'] == PLAIN or plain is None:
    return '-'
  return f"{row['mean_accuracy'] - plain['mean_accuracy']:+.4f}"


def runs_table(rows: list[dict[str, Any]], selected) -> str:
  """Format the selected runs as a markdown table."""
  lines = [
      '| cohort | dropout | mode | graph (k, t) | mean accuracy | '
      'minus plain | failed rounds (bound) | epsilon | sent KB per client '
      '| received KB per client | PRG expansions per client | server PRG '
      'expansions | run s |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in selected:
    lines.append(
        f"| {row['cohort']:,} | {row['dropout_rate']:g} | "
        f"{MODE_LABELS[row['mode']]} | {_graph_cell(row)} | "
        f"{row['mean_accuracy']:.4f} | {_gap_cell(rows, row)} | "
        f'{_failed_cell(row)} | {_epsilon_cell(row)} | '
        f"{_kilobytes(row.get('mean_client_bytes_up'))} | "
        f"{_kilobytes(row.get('mean_client_bytes_down'))} | "
        f"{_number(row.get('mean_client_prg_expansions'))} | "
        f"{_number(row.get('mean_server_prg_expansions'))} | "
        f"{row['elapsed_s']:.0f} |"
    )
  return '\n'.join(lines) + '\n'


def _number(value) -> str:
  return '-' if value is None else f'{value:,.0f}'


def cost_model_table(model_rows: list[dict[str, Any]]) -> str:
  """Format the cost model rows, complete and harary side by side."""
  lines = [
      '| cohort | complete k | complete sent KB | complete received KB | '
      'harary k | harary sent KB | harary received KB | plain sent KB |',
      '|---|---|---|---|---|---|---|---|',
  ]
  by_cohort = {}
  for row in model_rows:
    by_cohort.setdefault(row['cohort'], {})[row['graph']] = row
  for cohort, graphs in sorted(by_cohort.items()):
    complete, harary = graphs['complete'], graphs['harary']
    lines.append(
        f"| {cohort:,} | {complete['degree']:,} | "
        f"{_kilobytes(complete['client_bytes_up'])} | "
        f"{_kilobytes(complete['client_bytes_down'])} | "
        f"{harary['degree']} | {_kilobytes(harary['client_bytes_up'])} | "
        f"{_kilobytes(harary['client_bytes_down'])} | "
        f"{_kilobytes(complete['plain_bytes_up'])} |"
    )
  return '\n'.join(lines) + '\n'


def _select(rows, dataset, sweeps) -> list[dict[str, Any]]:
  return [row for row in rows
          if row['dataset'] == dataset and row['sweep'] in sweeps]


def dropout_rows(rows, dataset: str, cohort: int) -> list[dict[str, Any]]:
  """Return the dropout sweep on `dataset`, with the cohort sweep's runs at
  the sweep's `cohort`, which the dropout sweep does not repeat."""
  return [row for row in rows if row['dataset'] == dataset and (
      row['sweep'] == 'dropout'
      or row['sweep'] == 'cohort' and row['cohort'] == cohort)]


def _section(title: str, rows, selected) -> list[str]:
  if not selected:
    return []
  return [f'## {title}', '', runs_table(rows, selected)]


def write_markdown(
    path: pathlib.Path, rows, model_rows, *, sizes, seed, command,
    elapsed_s: float, load_before, load_after,
) -> None:
  """Write `results.md`: the run tables and the cost model table."""
  cohort = sizes['dropout_cohort']
  text = [
      '# Secure aggregation: accuracy and cost',
      '',
      f'`{command}`, {datetime.date.today().isoformat()}, seed {seed}, on '
      f'{machine.hardware_line()}.'
      + machine.load_sentence(load_before, load_after)
      + f' Total runtime: {elapsed_s:.0f} s.',
      '',
      'Graph (k, t): neighbours per client and Shamir threshold. Failed '
      'rounds: rounds in which the protocol failed and the model stayed '
      'unchanged, with the union bound on the chance per round in '
      'brackets. Sent and received KB: mean per participating client per '
      'round, from the cost model of `protocol.cost_of`; plain FedAvg sends '
      'the float32 update only. Epsilon at delta 1e-5, zCDP for the '
      f'distributed discrete Gaussian noise, multiplier {NOISE_MULTIPLIER:g}.',
      '',
      *_section(f"Fed-Heart-Disease, {sizes['heart_rounds']} rounds", rows,
                _select(rows, HEART, ('dropout', 'failure'))),
      *_section(
          f"Synthetic, {sizes['population']:,} clients, "
          f"{sizes['synthetic_rounds']} rounds: cohort sweep", rows,
          _select(rows, SYNTHETIC, ('cohort', 'complete'))),
      *_section(
          f'Synthetic: dropout sweep at cohort {cohort:,}', rows,
          dropout_rows(rows, SYNTHETIC, cohort)
          + _select(rows, SYNTHETIC, ('failure',))),
      f'## Cost model, d = {SYNTHETIC_DIMENSION}, no dropout',
      '',
      cost_model_table(model_rows),
  ]
  path.write_text('\n'.join(text))


def _mode_series(rows, key):
  """Group rows into per-mode lists sorted by `key`."""
  series = {}
  for row in sorted(rows, key=lambda row: row[key]):
    series.setdefault(row['mode'], []).append(row)
  return series


_COLORS = {PLAIN: 'gray', SECURE: 'tab:blue', SECURE_DP: 'tab:orange'}
# Plain is drawn wide and pale, so that the secure line on top of it, which
# has the same accuracy, stays visible.
_LINE_STYLES = {
    PLAIN: {'linewidth': 5, 'alpha': 0.4, 'marker': 'o'},
    SECURE: {'linewidth': 1.5, 'marker': 'x'},
    SECURE_DP: {'linewidth': 1.5, 'marker': 'o'},
}
_GRAPH_COLORS = {'complete': 'tab:red', 'harary': 'tab:blue'}
_DATASET_LABELS = {HEART: 'heart', SYNTHETIC: 'synthetic'}


def _plot_modes(axes, series_by_mode, key, *, label_prefix='',
                style='-') -> None:
  for mode, series in series_by_mode.items():
    axes.plot([row[key] for row in series],
              [row['mean_accuracy'] for row in series],
              color=_COLORS[mode], linestyle=style, **_LINE_STYLES[mode],
              label=f'{label_prefix}{MODE_LABELS[mode]}')


def _plot_cohorts(axes, rows) -> None:
  chosen = _select(rows, SYNTHETIC, ('cohort',))
  _plot_modes(axes, _mode_series(chosen, 'cohort'), 'cohort')
  axes.set_xscale('log')
  axes.set_xlabel('cohort size (synthetic)')
  axes.set_ylabel('mean test accuracy')
  axes.set_title('Synthetic: accuracy against cohort size')


def _plot_dropout(axes, rows, cohort: int) -> None:
  for dataset, style in ((HEART, '-'), (SYNTHETIC, ':')):
    chosen = dropout_rows(rows, dataset, cohort)
    _plot_modes(axes, _mode_series(chosen, 'dropout_rate'), 'dropout_rate',
                label_prefix=f'{_DATASET_LABELS[dataset]}, ', style=style)
  for row in [row for row in rows if row['sweep'] == 'failure']:
    axes.plot([row['dropout_rate']], [row['mean_accuracy']], marker='s',
              color='black', linestyle='none',
              label=f"{_DATASET_LABELS[row['dataset']]}, secure, k = "
              f"{row['degree']}, t = {row['threshold']}")
  axes.set_xlabel('dropout rate')
  axes.set_ylabel('mean test accuracy')
  axes.set_title('Accuracy against dropout')


def _plot_bytes(axes, rows, model_rows) -> None:
  for graph in protocol.GRAPHS:
    chosen = [row for row in model_rows if row['graph'] == graph]
    cohorts = [row['cohort'] for row in chosen]
    axes.plot(cohorts, [row['client_bytes_up'] for row in chosen],
              color=_GRAPH_COLORS[graph], label=f'{graph}, sent (model)')
    axes.plot(cohorts, [row['client_bytes_down'] for row in chosen],
              color=_GRAPH_COLORS[graph], linestyle=':',
              label=f'{graph}, received (model)')
    measured = [row for row in rows if row['dataset'] == SYNTHETIC
                and row['graph'] == graph and row['mode'] == SECURE
                and row['sweep'] in ('cohort', 'complete')]
    if measured:
      axes.plot([row['cohort'] for row in measured],
                [row['mean_client_bytes_up'] for row in measured],
                marker='o', linestyle='none', color=_GRAPH_COLORS[graph],
                label=f'{graph}, sent (runs, dropout '
                f"{measured[0]['dropout_rate']:g})")
  plain = model_rows[0]['plain_bytes_up']
  axes.axhline(plain, color='gray', linestyle='--', label='plain, sent')
  axes.set_xscale('log')
  axes.set_yscale('log')
  axes.set_xlabel('cohort size')
  axes.set_ylabel('bytes per client per round')
  axes.set_title(f'Client traffic, d = {SYNTHETIC_DIMENSION}')


def plot_results(path: pathlib.Path, rows, model_rows, *, cohort: int
                 ) -> None:
  """Plot accuracy against cohort and dropout, and traffic against cohort."""
  figure, panels = plt.subplots(1, 3, figsize=(17, 5))
  _plot_cohorts(panels[0], rows)
  _plot_dropout(panels[1], rows, cohort)
  _plot_bytes(panels[2], rows, model_rows)
  for axes in panels:
    axes.grid(alpha=0.3, which='both')
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize='x-small')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def _largest_train_count(dataset: str, sizes, seed: int) -> tuple[int, int]:
  """Return the largest client's training rows and the number of clients."""
  config = config_lib.apply_overrides(
      config_lib.ExperimentConfig(), base_overrides(dataset, sizes))
  data = study.load_dataset(config.data, seed)
  return int(np.max(data.train.num_examples)), data.num_clients


def run(sizes: dict[str, Any], *, seed: int, out_dir: pathlib.Path,
        command: str) -> list[dict[str, Any]]:
  """Run every setting, then write `results.md` and the figure."""
  start = time.perf_counter()
  load_before = machine.load_average()
  results_path = out_dir / 'results.jsonl'
  heart_cap, num_hospitals = _largest_train_count(HEART, sizes, seed)
  settings = plan_settings(sizes, num_hospitals)
  caps = {HEART: heart_cap}
  if any(setting.dataset == SYNTHETIC for setting in settings):
    caps[SYNTHETIC], _ = _largest_train_count(SYNTHETIC, sizes, seed)
  rows = []
  for setting in settings:
    row = run_setting(setting, sizes, seed=seed, out_dir=out_dir,
                      weight_cap=caps[setting.dataset])
    _append_line(results_path, row)
    rows.append(row)
    logging.info(
        '%s: mean accuracy %.4f, %d failed rounds, epsilon %s (%.0f s)',
        setting.name, row['mean_accuracy'], row['failed_rounds'],
        row['epsilon'], row['elapsed_s'],
    )
    # The study checks for a stop only after each round, so a Ctrl-C
    # during its final evaluation is honoured here, before the page.
    interrupts.raise_if_requested()
  model_rows = model_costs(sizes['model_cohorts'], SYNTHETIC_DIMENSION,
                           RING_BITS)
  for model_row in model_rows:
    _append_line(results_path, model_row)
  write_markdown(
      out_dir / 'results.md', rows, model_rows, sizes=sizes, seed=seed,
      command=command, elapsed_s=time.perf_counter() - start,
      load_before=load_before, load_after=machine.load_average(),
  )
  plot_results(out_dir / 'secure_aggregation.png', rows, model_rows,
               cohort=sizes['dropout_cohort'])
  return rows + model_rows


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument(
      '--quick', action='store_true',
      help=f'the reduced sizes {script_help.format_sizes(QUICK)}, for a '
      'smoke test.',
  )
  parser.add_argument(
      '--seed', type=script_help.seed_type(2**32), default=0,
      help='experiment seed of every run (default: 0).',
  )
  parser.add_argument(
      '--out', type=pathlib.Path, default=None,
      help='new or empty output folder (default: a fresh '
      'runs/secure_aggregation-<time>).',
  )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  if argv is None:
    argv = sys.argv[1:]
  args = _parse_args(argv)
  sizes = QUICK if args.quick else FULL
  command = shlex.join(['python', 'experiments/secure_aggregation.py', *argv])
  try:
    out_dir = outputs.make_run_dir(args.out, 'secure_aggregation')
    with script_help.stop_on_ctrl_c('secure_aggregation.py', out_dir):
      run(sizes, seed=args.seed, out_dir=out_dir, command=command)
  except InputError as error:
    print(f'secure_aggregation.py: error: {error}', file=sys.stderr)
    return 2
  print((out_dir / 'results.md').read_text())
  print(f'Results in {out_dir}')
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  sys.exit(main())
