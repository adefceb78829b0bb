"""The output folder of a run, written as results arrive.

`metrics.jsonl` gets one line per round, flushed and synced as soon as the
round finishes, so a run that is killed keeps every round it completed.
"""

import contextlib
import csv
import datetime
import json
import math
import os
import pathlib
import re
from typing import Any

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Windows: runs are not locked.
  fcntl = None

from fedjax_med.errors import InputError


def to_json_value(value: Any) -> Any:
  """Convert numpy/JAX scalars to Python, and NaN or infinity to None."""
  if isinstance(value, dict):
    return {key: to_json_value(inner) for key, inner in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_value(inner) for inner in value]
  if hasattr(value, 'tolist'):
    value = value.tolist()
    if isinstance(value, list):
      return to_json_value(value)
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: pathlib.Path, document: Any) -> None:
  """Write `document` as indented JSON, atomically (temporary file + rename)."""
  temporary = path.with_name(path.name + '.tmp')
  temporary.write_text(
      json.dumps(to_json_value(document), indent=2, allow_nan=False) + '\n'
  )
  os.replace(temporary, path)


# A spreadsheet runs a cell that starts with one of these as a formula.
# The fullwidth forms (U+FF1D, U+FF0B, U+FF0D, U+FF20) are included,
# because spreadsheets with East Asian input settings may read them as the
# ASCII ones. Quoting them costs nothing when they do not.
_FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r',
                   '\uff1d', '\uff0b', '\uff0d', '\uff20')
# A signed decimal number in ASCII, which spreadsheets read as a number.
_PLAIN_NUMBER = re.compile(r'[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?')


def spreadsheet_text(value: Any) -> Any:
  """Return `value`, with text that a spreadsheet would run kept as text.

  A client or variant name such as `=HYPERLINK(...)` comes from the user's
  data or config, and Excel or LibreOffice would run it when the CSV is
  opened. Text starting with `=`, `+`, `-`, `@` (or their fullwidth
  forms), a tab, a carriage return or `'` gets one leading `'`, so
  spreadsheets show it as text.
  `from_spreadsheet_text` removes it. Numbers are left alone, and so is
  text that is a plain decimal number such as `-0.25` or `-1e-05`, which a
  spreadsheet reads as a number.
  """
  if (isinstance(value, str) and value.startswith(_FORMULA_STARTS + ("'",))
      and not _PLAIN_NUMBER.fullmatch(value)):
    return "'" + value
  return value


def from_spreadsheet_text(text: str) -> str:
  """Invert `spreadsheet_text` on a cell read back from a CSV file."""
  return text[1:] if text.startswith("'") else text


def write_csv(path: pathlib.Path, header, rows) -> None:
  """Write a CSV file with a header row, atomically (temporary file + rename).

  Text cells pass through `spreadsheet_text`.
  """
  temporary = path.with_name(path.name + '.tmp')
  with temporary.open('w', newline='', encoding='utf-8') as handle:
    writer = csv.writer(handle)
    writer.writerow([spreadsheet_text(cell) for cell in header])
    writer.writerows([spreadsheet_text(cell) for cell in row] for row in rows)
  os.replace(temporary, path)


def read_json(path: pathlib.Path) -> Any:
  """Read a JSON file that a run wrote.

  Raises:
    InputError: if the file is missing or is not valid JSON.
  """
  try:
    return json.loads(pathlib.Path(path).read_text(encoding='utf-8'))
  except OSError as error:
    raise InputError(f'Cannot read {path}: {error.strerror}.') from None
  except ValueError:
    raise InputError(
        f'{path} is not valid JSON: it was cut short or edited. Restore it, '
        'or run the study again.'
    ) from None


@contextlib.contextmanager
def lock_run_dir(run_dir: pathlib.Path):
  """Hold an exclusive lock on `run_dir` while a run writes to it.

  Raises:
    InputError: if another process holds the lock.
  """
  path = pathlib.Path(run_dir) / '.lock'
  with open(path, 'a', encoding='utf-8') as stream:
    if fcntl is not None:
      try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise InputError(
            f'Another process is running the study in {run_dir}. Wait for '
            'it to finish or stop it, then resume.'
        ) from None
    try:
      yield
    finally:
      if fcntl is not None:
        fcntl.flock(stream.fileno(), fcntl.LOCK_UN)


def existing_run_dir(run_dir: Any) -> pathlib.Path:
  """Return `run_dir` as a path after checking that it is a folder.

  Raises:
    InputError: if `run_dir` is not a path or the folder does not exist.
  """
  if not isinstance(run_dir, (str, pathlib.PurePath)) or not str(run_dir):
    raise InputError(
        f'A run folder must be a path; got {run_dir!r}. Pass the folder of a '
        'run started with `fedjax-med run` or `fedjax_med.run`.')
  run_dir = pathlib.Path(run_dir)
  if run_dir.is_file():
    raise InputError(
        f'{run_dir} is a file, not a run folder. Pass the folder that contains '
        'its config.json and summary.json.')
  if not run_dir.is_dir():
    raise InputError(
        f'Run folder not found: {run_dir}. Pass the folder of a run started '
        'with `fedjax-med run` or `fedjax_med.run`.')
  return run_dir


def replace_synced(source: pathlib.Path, target: pathlib.Path) -> None:
  """Sync `source` to disk, then rename it over `target` in one step."""
  with open(source, 'rb') as stream:
    os.fsync(stream.fileno())
  os.replace(source, target)


def make_run_dir(base: pathlib.Path | None, name: str) -> pathlib.Path:
  """Create the run's folder: `base` itself, or a new `runs/<name>-<time>`.

  Without `base`, the folder is created with `mkdir(exist_ok=False)` and a
  numeric suffix is added on a clash, so runs started in the same second,
  even from separate processes, never share a folder. An explicit `base` may
  already exist only as an empty folder.

  Raises:
    InputError: if `base` is an empty string, a file, a non-empty folder,
      or cannot be created.
  """
  if base is None:
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    stem = pathlib.Path('runs') / f'{name}-{stamp}'
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in range(1, 10_000):
      candidate = stem if suffix == 1 else stem.with_name(f'{stem.name}-{suffix}')
      try:
        candidate.mkdir()
      except FileExistsError:
        continue
      return candidate
    raise InputError(f'Could not create a new run folder next to {stem}.')

  if isinstance(base, str) and not base.strip():
    # pathlib.Path('') is '.', which the checks below would report as an
    # existing folder.
    raise InputError(
        'The output folder is empty (--out, or out_dir in Python). Pass a '
        'folder path, or leave it unset for a fresh one under runs/.'
    )
  base = pathlib.Path(base)
  if base.exists() and not base.is_dir():
    raise InputError(
        f'Output path {base} is an existing file. Pass a new or empty folder '
        'with --out.'
    )
  if base.is_dir() and any(base.iterdir()):
    raise InputError(
        f'Output folder {base} already exists and is not empty. Pass a new '
        'folder (--out, or out_dir in Python), or leave it unset for a fresh '
        'one under runs/.'
    )
  try:
    base.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise InputError(
        f'Cannot create output folder {base}: {error.strerror}. Pass a '
        'writable folder path with --out.'
    ) from None
  return base


class MetricsWriter:
  """Append one JSON line per round to `metrics.jsonl`, synced to disk."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._stream = open(path, 'a', encoding='utf-8')

  def write(self, record: dict[str, Any]) -> None:
    line = json.dumps(to_json_value(record), allow_nan=False)
    self._stream.write(line + '\n')
    self._stream.flush()
    os.fsync(self._stream.fileno())

  def close(self) -> None:
    self._stream.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
