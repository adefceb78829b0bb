"""Plots of a run: test accuracy per round, per hospital and their mean."""

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


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
  figure, axes = plt.subplots(figsize=(8.5, 4.5))
  max_lines = 12
  for index, name in enumerate(client_names[:max_lines]):
    values = [row[index] for row in client_accuracy]
    values = [float('nan') if value is None else value for value in values]
    axes.plot(rounds, values, marker='.', linewidth=1, label=name)
  means = []
  for row in client_accuracy:
    present = [value for value in row if value is not None]
    means.append(sum(present) / len(present) if present else float('nan'))
  axes.plot(rounds, means, color='black', linewidth=2.5, label='mean')
  axes.set_xlabel('round')
  axes.set_ylabel('test accuracy')
  axes.set_ylim(0.0, 1.0)
  axes.grid(alpha=0.3)
  if len(client_names) > max_lines:
    title += f' (first {max_lines} of {len(client_names)} clients shown)'
  axes.set_title(title)
  # Outside the axes, so that no line is hidden behind the legend.
  axes.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
