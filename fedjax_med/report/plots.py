"""Plots of a run: test accuracy (or a survival study's C-index) per round,
per hospital and their mean."""

import pathlib
from typing import Sequence

import matplotlib
from matplotlib import figure as figure_lib
import numpy as np

# Figures are drawn on `Figure` objects and saved without pyplot, so that
# writing a run's plots neither needs a display nor changes the backend of
# the caller's session (a notebook's inline plots keep working).


def plot_accuracy(
    path: pathlib.Path,
    rounds: Sequence[int],
    client_accuracy: Sequence[Sequence[float | None]],
    client_names: Sequence[str],
    title: str,
) -> None:
  """Save a line plot of test accuracy per round for each client and the mean.

  Args:
    path: PNG file to write.
    rounds: 1-based round numbers at which the model was evaluated.
    client_accuracy: `[evaluations][clients]` accuracies; None for a client
      with no test rows.
    client_names: one label per client.
    title: plot title.
  """
  _plot_per_client(path, rounds, client_accuracy, client_names, title,
                   ylabel='test accuracy')


def plot_c_index(
    path: pathlib.Path,
    rounds: Sequence[int],
    client_c_index: Sequence[Sequence[float | None]],
    client_names: Sequence[str],
    title: str,
) -> None:
  """Save a line plot of each client's test C-index per round and the mean.

  A dashed line marks 0.5, the C-index of a random ranking of risks.

  Args:
    path: PNG file to write.
    rounds: 1-based round numbers at which the model was evaluated.
    client_c_index: `[evaluations][clients]` Harrell's C-index; None for a
      client without a comparable pair of test rows.
    client_names: one label per client.
    title: plot title.
  """
  _plot_per_client(path, rounds, client_c_index, client_names, title,
                   ylabel="test C-index (Harrell's)", reference=0.5)


def _plot_per_client(path, rounds, client_values, client_names, title, *,
                     ylabel: str, reference: float | None = None) -> None:
  """Plot values in [0, 1] per round for each client and their mean."""
  figure = figure_lib.Figure(figsize=(8.5, 4.5))
  axes = figure.subplots()
  max_lines = 12
  for index, name in enumerate(client_names[:max_lines]):
    values = [row[index] for row in client_values]
    values = [float('nan') if value is None else value for value in values]
    axes.plot(rounds, values, marker='.', linewidth=1, label=name)
  means = []
  for row in client_values:
    present = [value for value in row if value is not None]
    means.append(sum(present) / len(present) if present else float('nan'))
  axes.plot(rounds, means, color='black', linewidth=2.5, label='mean')
  if reference is not None:
    axes.axhline(reference, color='grey', linestyle='--', linewidth=1)
  axes.set_xlabel('round')
  axes.set_ylabel(ylabel)
  axes.set_ylim(0.0, 1.0)
  axes.grid(alpha=0.3)
  if len(client_names) > max_lines:
    title += f' (first {max_lines} of {len(client_names)} clients shown)'
  axes.set_title(title)
  # Outside the axes, so that no line is hidden behind the legend.
  axes.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=120)


_METRIC_TITLES = {
    'clean_accuracy': 'clean accuracy (honest clients, pooled)',
    'worst_accuracy': 'worst honest client accuracy',
    'backdoor_success': 'backdoor success (lower is better)',
}


def plot_matrix(
    path: pathlib.Path,
    rows: Sequence[dict],
    metrics: Sequence[str],
    title: str,
) -> None:
  """Save one heatmap per metric: aggregators down, attack cells across.

  Args:
    path: PNG file to write.
    rows: per-cell rows from `fedjax_med.matrix.summarize`, with keys
      'aggregator', 'attack', 'malicious_fraction', 'completed', 'diverged',
      'not_applicable' and each metric.
    metrics: metric keys, one panel each. A metric with no value in any
      cell, such as backdoor success without a backdoor attack, is left out.
    title: figure title.

  Cells with no completed seed show n/a (the aggregator cannot run there)
  or div (every seed diverged).
  """
  aggregators = list(dict.fromkeys(row['aggregator'] for row in rows))
  panels = []
  for metric in metrics:
    columns = list(dict.fromkeys(
        (row['attack'], row['malicious_fraction']) for row in rows
        if metric != 'backdoor_success' or row['attack'] == 'backdoor'
    ))
    if any(row.get(metric) is not None for row in rows) and columns:
      panels.append((metric, columns))
  if not panels:
    return
  width = max(6.0, 0.55 * max(len(columns) for _, columns in panels) + 3.0)
  height = sum(0.45 * len(aggregators) + 1.6 for _ in panels)
  figure = figure_lib.Figure(figsize=(width, height))
  axes_list = figure.subplots(len(panels), 1, squeeze=False)
  lookup = {(row['aggregator'], row['attack'], row['malicious_fraction']): row
            for row in rows}
  colormap = matplotlib.colormaps['viridis'].with_extremes(bad='lightgray')
  for axes, (metric, columns) in zip(axes_list[:, 0], panels):
    values = np.full((len(aggregators), len(columns)), np.nan)
    labels = [[''] * len(columns) for _ in aggregators]
    for i, aggregator in enumerate(aggregators):
      for j, (attack, fraction) in enumerate(columns):
        row = lookup.get((aggregator, attack, fraction))
        if row is None:
          continue
        if row.get(metric) is not None:
          values[i, j] = row[metric]
          labels[i][j] = f'{row[metric]:.2f}'
        elif not row['completed']:
          labels[i][j] = 'div' if row['diverged'] else 'n/a'
    shown = colormap.reversed() if metric == 'backdoor_success' else colormap
    image = axes.imshow(np.ma.masked_invalid(values), cmap=shown,
                        vmin=0.0, vmax=1.0, aspect='auto')
    for i in range(len(aggregators)):
      for j in range(len(columns)):
        if labels[i][j]:
          light = np.isnan(values[i, j]) or values[i, j] > 0.55
          if metric == 'backdoor_success' and not np.isnan(values[i, j]):
            light = values[i, j] < 0.45
          axes.text(j, i, labels[i][j], ha='center', va='center', fontsize=7,
                    color='black' if light else 'white')
    axes.set_yticks(range(len(aggregators)), aggregators)
    axes.set_xticks(
        range(len(columns)),
        [attack if attack == 'none' else f'{attack}\n{fraction:g}'
         for attack, fraction in columns],
        rotation=90, fontsize=7,
    )
    axes.set_title(_METRIC_TITLES.get(metric, metric), fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.02, pad=0.01)
  figure.suptitle(title)
  # Leave room at the top so the title does not cover the first panel's.
  figure.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.4 / height))
  figure.savefig(path, dpi=120)


def plot_sweep(
    path: pathlib.Path,
    rows: Sequence[dict],
    settings: Sequence[str],
    title: str,
) -> None:
  """Save mean and worst-client accuracy against the first swept value.

  Args:
    path: PNG file to write.
    rows: per-setting rows from `fedjax_med.sweep.summarize`, with each
      setting, 'mean_accuracy', 'worst_accuracy' and their '_std'.
    settings: the setting keys; the first one other than 'variant' is the
      x axis, and each combination of the others is one line.
    title: figure title.

  Error bars are the standard deviation over seeds. A numeric x axis whose
  positive values span more than a factor of 20 is drawn on a log scale.
  """
  x_key = next((key for key in settings if key != 'variant'), None)
  if x_key is None:
    return
  line_keys = [key for key in settings if key != x_key]
  # Values may be lists (such as hidden sizes), so they are keyed by text.
  x_values = list({repr(row[x_key]): row[x_key] for row in rows}.values())
  numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool)
                for value in x_values)
  positions = {repr(value): (value if numeric else index)
               for index, value in enumerate(x_values)}
  lines: dict[str, list] = {}
  for row in rows:
    label = ', '.join(f'{row[key]}' if key == 'variant' else
                      f'{key.split(".")[-1]}={row[key]}' for key in line_keys)
    lines.setdefault(label, []).append(row)
  figure = figure_lib.Figure(figsize=(11.0, 4.2))
  axes_list = figure.subplots(1, 2, squeeze=False)
  for axes, metric, name in zip(
      axes_list[0], ('mean_accuracy', 'worst_accuracy'),
      ('mean client accuracy', 'worst client accuracy')):
    for label, members in lines.items():
      members = sorted((m for m in members if m[metric] is not None),
                       key=lambda m: positions[repr(m[x_key])])
      if not members:
        continue
      axes.errorbar(
          [positions[repr(m[x_key])] for m in members],
          [m[metric] for m in members],
          yerr=[m[f'{metric}_std'] for m in members],
          marker='o', capsize=3, label=label or None,
      )
    if numeric:
      positive = [value for value in x_values if value > 0]
      if len(positive) == len(x_values) and max(positive) > 20 * min(positive):
        axes.set_xscale('log')
    else:
      axes.set_xticks(range(len(x_values)), [str(v) for v in x_values])
    axes.set_xlabel(x_key)
    axes.set_ylabel(name)
    axes.set_ylim(0.0, 1.0)
    axes.grid(alpha=0.3)
  if any(lines):
    axes_list[0][1].legend(fontsize=7, loc='best')
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
