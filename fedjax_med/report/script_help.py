"""The `--help` text of the experiment and benchmark scripts."""

import argparse
import os
import pathlib


class DefaultsHelpFormatter(argparse.HelpFormatter):
  """Adds `(default: ...)` to each option's help unless the help gives it.

  A default of None or False is left out. None means the script computes
  the value, as its help explains, and False is a flag left off. Lists print
  the way they are typed (`0 1 2`) and paths relative to the working folder.
  """

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ''
    default = action.default
    if (default is None or default is False or default is argparse.SUPPRESS
        or 'default' in text or action.help is argparse.SUPPRESS):
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


def check_out_path(parser: argparse.ArgumentParser, path) -> None:
  """Reject an `--out` file path that cannot be written, before a run.

  Missing folders are fine, because the scripts create them, so the
  nearest existing folder is checked instead.
  """
  if path is None:
    return
  if path.is_dir():
    parser.error(f'--out must be a file path; {path} is a folder.')
  if path.exists():
    if not os.access(path, os.W_OK):
      parser.error(f'--out: {path} is not writable. Pick another path.')
    return
  folder = path.parent
  while not folder.exists():
    folder = folder.parent
  if not folder.is_dir():
    parser.error(f'--out: {folder} is a file, not a folder. Pick another '
                 'path.')
  if not os.access(folder, os.W_OK | os.X_OK):
    parser.error(f'--out: the folder {folder} is not writable. Pick another '
                 'path.')


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
