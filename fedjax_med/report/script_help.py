"""The `--help` text and input checks of the experiment and benchmark scripts.

The checks run before a script's long work, so that a bad value or an
unwritable output path ends the script at once with a usage error (exit
status 2) instead of a traceback after the run.
"""

import argparse
from collections.abc import Iterator, Mapping, Sequence
import contextlib
import math
import os
import pathlib
import sys

from fedjax_med import interrupts
from fedjax_med.errors import StudyInterrupted
from fedjax_med.report import results_page


class DefaultsHelpFormatter(argparse.HelpFormatter):
  """Adds `(default: ...)` to each option's help unless the help gives it.

  A default of None or False is left out. None means the script computes
  the value, as its help explains, and False is a flag left off. A flag
  that takes no value (`store_true`, `store_false`, `store_const`) is off
  unless given, so its default is left out as well: `--no-x` stores False
  into a default of True. Lists print the way they are typed (`0 1 2`) and
  paths relative to the working folder.
  """

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ''
    default = action.default
    if (default is None or default is False or default is argparse.SUPPRESS
        or _is_flag(action) or 'default' in text
        or action.help is argparse.SUPPRESS):
      return text
    if isinstance(default, (list, tuple)):
      if not default:
        return text
      written = ' '.join(str(item) for item in default)
    elif isinstance(default, pathlib.PurePath):
      written = os.path.relpath(default)
    else:
      written = str(default)
    # argparse %-formats the help text, so a literal % must be doubled.
    written = written.replace('%', '%%')
    return f'{text} (default: {written})' if text else f'default: {written}'


def _is_flag(action: argparse.Action) -> bool:
  """Return whether `action` is an option that takes no value.

  `BooleanOptionalAction` takes no value either, but it offers both
  `--x` and `--no-x`, so its default is worth printing.
  """
  return action.nargs == 0 and not isinstance(
      action, argparse.BooleanOptionalAction)


def format_sizes(sizes: Mapping[str, object]) -> str:
  """Format a dict of sizes for help text, as `key=value, key=value`.

  Sequences are written space-separated, as on a command line, an empty
  sequence or None as `none`, floats with `g`, and a nested dict in
  brackets. A literal % is doubled because argparse %-formats help text.
  """
  return ', '.join(
      f'{name}={_format_size(value)}' for name, value in sizes.items()
  ).replace('%', '%%')


def _format_size(value: object) -> str:
  if value is None:
    return 'none'
  if isinstance(value, Mapping):
    return f'({format_sizes(value)})'
  if isinstance(value, Sequence) and not isinstance(value, str):
    return ' '.join(_format_size(item) for item in value) or 'none'
  if isinstance(value, float):
    return f'{value:g}'
  return str(value)


def check_out_path(parser: argparse.ArgumentParser, path,
                   flag: str = '--out') -> None:
  """Reject an output file path that cannot be written, before a run.

  Missing folders are fine, because the scripts create them, so the
  nearest existing folder is checked instead. An existing file is fine
  too, as long as it is writable: the scripts replace or append to it.

  Args:
    parser: the script's parser, whose `error` ends the script.
    path: the file path as given, a string or a path, or None to skip.
    flag: the option that gave `path`, for the message.
  """
  if path is None:
    return
  if isinstance(path, str) and not path.strip():
    parser.error(f'{flag} is empty. Pass a path, or leave {flag} out.')
  path = pathlib.Path(path)
  if path.is_dir():
    parser.error(f'{flag} must be a file path; {path} is a folder.')
  if path.exists():
    if not os.access(path, os.W_OK):
      parser.error(f'{flag}: {path} is not writable. Pick another path.')
    return
  _check_nearest_folder(parser, path.parent, flag)


def check_out_folder(parser: argparse.ArgumentParser, path,
                     flag: str = '--out') -> None:
  """Reject an output folder that cannot be created or written, before a run.

  Args:
    parser: the script's parser, whose `error` ends the script.
    path: the folder as given, a string or a path, or None to skip.
    flag: the option that gave `path`, for the message.
  """
  if path is None:
    return
  if isinstance(path, str) and not path.strip():
    parser.error(f'{flag} is empty. Pass a path, or leave {flag} out.')
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    parser.error(f'{flag} must be a folder; {path} is a file.')
  _check_nearest_folder(parser, path, flag)


def _check_nearest_folder(parser, folder: pathlib.Path, flag: str) -> None:
  """Exit unless `folder`, or its nearest existing parent, is writable."""
  while not folder.exists():
    folder = folder.parent
  if not folder.is_dir():
    parser.error(f'{flag}: {folder} is a file, not a folder. Pick another '
                 'path.')
  if not os.access(folder, os.W_OK | os.X_OK):
    parser.error(f'{flag}: the folder {folder} is not writable. Pick another '
                 'path.')


def check_results_page(parser: argparse.ArgumentParser, path, *, start: str,
                       end: str, flag: str = '--markdown') -> None:
  """Reject a results page that the script could not fill in after its run.

  The page must be a writable file path, and an existing page must have
  the `start` and `end` marker lines in this order
  (`results_page.replace_results` rewrites the block between them).
  """
  check_out_path(parser, path, flag)
  try:
    results_page.check_markers(pathlib.Path(path), start=start, end=end)
  except ValueError as error:
    parser.error(f'{flag}: {error}')


def seed_type(limit: int):
  """Return an argparse `type` that reads a seed in [0, limit).

  A plain `int` type reports only the name of the function for text such
  as `1.5`, so this one names the value and the range.
  """

  def seed(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f'{text!r} is not a seed; pass an integer in [0, {limit})'
      ) from None
    if not 0 <= value < limit:
      raise argparse.ArgumentTypeError(
          f'{value} is not in [0, {limit}); pass a seed in that range')
    return value

  return seed


def check_seeds(parser: argparse.ArgumentParser, seeds: Sequence[int], *,
                limit: int = 2**32, flag: str = '--seeds') -> None:
  """Reject seeds outside [0, limit) and seeds given more than once.

  Each seed names one run, whose outputs and table column it keys, so a
  repeated seed would rerun the same run and show a spread of zero.
  The default limit is `config.MAX_SEED + 1`, so every seed that a study
  accepts passes.
  """
  invalid = [seed for seed in seeds if not 0 <= seed < limit]
  if invalid:
    parser.error(f'{flag} must be integers in [0, {limit}); got '
                 f'{" ".join(str(seed) for seed in invalid)}.')
  check_distinct(parser, flag, seeds)


def check_distinct(parser: argparse.ArgumentParser, flag: str,
                   values: Sequence[object]) -> None:
  """Reject a list flag that names a value twice.

  Each value names a run or a table row, so a repeat would rerun it and,
  for seeds, show a spread of zero.
  """
  values = list(values)
  repeated = sorted({str(value) for value in values
                     if values.count(value) > 1})
  if repeated:
    parser.error(f'{flag} must be distinct; {" ".join(repeated)} given more '
                 'than once.')


# The largest round, step or epoch count the experiment scripts take. Far
# beyond a day's run on a CPU, it keeps the step counters (epochs times
# batches per epoch) within int32 and the pre-drawn batches in memory;
# 3e9 local steps overflowed and 2**31 - 1 asked for 60 GB.
MAX_COUNT = 100_000


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 names: Sequence[str], *, high: int = MAX_COUNT) -> None:
  """Exit through `parser.error` unless each named count is in [1, high].

  `names` are attributes of `args`; the message gives them as flags.
  """
  for name in names:
    value = getattr(args, name)
    if not 1 <= value <= high:
      parser.error(f'--{name.replace("_", "-")} must be in [1, {high}]; got '
                   f'{value}.')


def _is_finite_positive(value: float) -> bool:
  # Written so that NaN fails too.
  return 0 < value < math.inf


def finite_positive_float(text: str) -> float:
  """Read a positive, finite float, as an argparse `type`.

  `float` alone accepts `inf` and `nan`, which make a time limit overflow
  or a loop never end.
  """
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'{text!r} is not a number; pass a positive, finite number'
    ) from None
  if not _is_finite_positive(value):
    raise argparse.ArgumentTypeError(
        f'{text} is not positive and finite; pass a positive, finite number')
  return value


def check_finite_positive(parser: argparse.ArgumentParser, flag: str,
                          value: float) -> None:
  """Exit through `parser.error` unless `value` is positive and finite.

  The check of `finite_positive_float`, for the scripts that build their
  parser without fedjax_med because their worker processes run under
  interpreters that lack it (`benchmarks/peers.py`, `benchmarks/cnn_round.py`).
  """
  if not _is_finite_positive(value):
    parser.error(f'{flag} must be positive and finite; got {value}.')


@contextlib.contextmanager
def stop_on_ctrl_c(script: str, finished: pathlib.Path | None,
                   unit: str = 'round') -> Iterator[None]:
  """Stop a script's loop of runs at Ctrl-C with status 130 and one line.

  Inside the block the first Ctrl-C or SIGTERM is a stop request, which the
  running study honours after its current round (`interrupts.defer_ctrl_c`).
  A second stops at once. The script then exits with status 130 and prints
  where its finished runs are. Its results page stays as it was, because a
  page of some runs would replace the documented results.

  Studies, sweeps and matrices check for the request after each round. A
  script's own loop calls `interrupts.raise_if_requested()` after each
  `unit` it finishes; without such calls it would ignore the first Ctrl-C
  until the next study's round.

  Args:
    script: the script's file name, for the message.
    finished: the file the script appends each finished run to, or None.
      The message names it only if it exists.
    unit: what the loop finishes before it stops, for the message.
  """
  # Written before the run, the line cannot check that the file exists.
  kept_at_once = ('' if finished is None
                  else f' Finished runs, if any, are in {finished}.')
  restore = interrupts.defer_ctrl_c(
      unit, stopped=f'{script}: stopped at once.{kept_at_once}')
  try:
    yield
  except (StudyInterrupted, KeyboardInterrupt):
    kept = ('' if finished is None or not finished.exists()
            else f' The finished runs are in {finished}.')
    print(f'{script}: interrupted; its results page and figures were not '
          f'written.{kept}', file=sys.stderr, flush=True)
    raise SystemExit(130) from None
  finally:
    restore()
