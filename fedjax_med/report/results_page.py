"""Helpers for the markdown results pages of the experiments.

An experiment's page keeps hand-written text around a block of results
that the script rewrites between two marker lines.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float | None]) -> str:
  """Format the mean ± sample standard deviation over seeds.

  None marks a seed where the metric is undefined. Such seeds are left out,
  and the cell gives the count of remaining seeds, or 'n/a' when none
  remains.
  """
  present = [value for value in values if value is not None]
  if not present:
    return 'n/a'
  text = f'{np.mean(present):.3f}'
  if len(present) > 1:
    text += f' ± {np.std(present, ddof=1):.3f}'
  if len(present) < len(values):
    text += f' ({len(present)}/{len(values)} seeds)'
  return text


def replace_results(path: pathlib.Path, block: str, *, start: str, end: str,
                    title: str) -> None:
  """Write `block` between the `start` and `end` lines of the page at `path`.

  The rest of the page is kept. A missing page is created with `title` as
  its heading.

  Raises:
    ValueError: if the page exists without both markers, or with the end
      marker before the start marker.
  """
  text = path.read_text() if path.exists() else (
      f'# {title}\n\n{start}\n{end}\n')
  _check_text_markers(path, text, start=start, end=end)
  before, rest = text.split(start, 1)
  _, after = rest.split(end, 1)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f'{before}{start}\n{block}\n{end}{after}')


def check_markers(path: pathlib.Path, *, start: str, end: str) -> None:
  """Check that `replace_results` can fill in the page at `path`.

  Scripts call this before their run, so that a page without markers
  ends the script before the work rather than after it. A missing page
  passes, because `replace_results` creates it.

  Raises:
    ValueError: if the page exists without both markers, or with the end
      marker before the start marker.
  """
  if path.exists():
    _check_text_markers(path, path.read_text(), start=start, end=end)


def _check_text_markers(path: pathlib.Path, text: str, *, start: str,
                        end: str) -> None:
  if start not in text or end not in text.split(start, 1)[1]:
    raise ValueError(
        f'{path} lacks the result markers {start!r} and then {end!r}; add '
        'both lines, in this order, where the results belong.')
