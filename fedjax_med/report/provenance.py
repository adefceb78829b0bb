"""Provenance of a run: software versions, device, git commit, data checksums."""

import hashlib
import json
import os
import importlib.metadata
import pathlib
import platform
import subprocess
import sys
from typing import Any, Iterable

import jax

import fedjax_med
from fedjax_med.errors import DataCheckError
from fedjax_med.report import outputs


def sha256_file(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as stream:
    for block in iter(lambda: stream.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


# Checksums by (path, size, modification time), so that a sweep whose
# points read the same files hashes each file once.
_HASHES: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: pathlib.Path) -> str:
  stat = path.stat()
  key = (str(path), stat.st_size, stat.st_mtime_ns)
  if key not in _HASHES:
    _HASHES[key] = sha256_file(path)
  return _HASHES[key]


def check_data_files(run_dir: pathlib.Path, data_files: Iterable[pathlib.Path],
                     kind: str, source: str) -> None:
  """Check a sweep's or matrix's data files against `provenance.json`.

  Each data setting (`source`, such as the point's `[data]` table) records
  the set of files it read, and each file its checksum. A later load of the
  same setting must read the same files with the same checksums. A file
  added to or removed from an image folder, a symlink pointed at another
  file, or an edited file raises DataCheckError. Paths are kept as given,
  not resolved, so that a repointed symlink is a changed file.

  Args:
    run_dir: the sweep or matrix folder, with the `provenance.json` that
      `collect` wrote when it started.
    data_files: the files a point or cell is about to read.
    kind: 'sweep' or 'matrix', for the message.
    source: a key of the data setting that read `data_files`.
  """
  paths = sorted({os.path.abspath(path) for path in data_files})
  if not paths:
    return  # Synthetic data, nothing to compare.
  units = 'cells' if kind == 'matrix' else 'points'
  path = run_dir / 'provenance.json'
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    record = None
  if not isinstance(record, dict) or not isinstance(
      record.get('data_files', {}), dict) or not isinstance(
          record.get('data_sources', {}), dict):
    raise DataCheckError(
        f'{path} is missing or unreadable, so the {kind} cannot check that '
        f'its data files are unchanged ({kind}s started before fedjax_med '
        f'recorded their data files have none). Start a new {kind}.'
    )
  recorded = record.setdefault('data_files', {})
  sources = record.setdefault('data_sources', {})
  changed = False
  if source in sources and sources[source] != paths:
    added = sorted(set(paths) - set(sources[source]))
    missing = sorted(set(sources[source]) - set(paths))
    listed = ', '.join((added + missing)[:3])
    raise DataCheckError(
        f'The data files differ from those the {kind} in {run_dir} read '
        f'with the same settings: {len(added)} added and {len(missing)} '
        f'missing ({listed}), so the remaining {units} would train on '
        f'other data than the finished ones. Restore the files, or start a '
        f'new {kind}.'
    )
  if source not in sources:
    sources[source] = paths
    changed = True
  for key in paths:
    digest = _cached_sha256(pathlib.Path(key))
    if key not in recorded:
      recorded[key] = digest
      changed = True
    elif recorded[key] != digest:
      raise DataCheckError(
          f'Data file {key} changed since the {kind} in {run_dir} started, '
          f'so the remaining {units} would train on other data than the '
          f'finished ones. Restore the file, or start a new {kind}.'
      )
  if changed:
    outputs.write_json(path, record)


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def git_commit(package_dir: pathlib.Path) -> str | None:
  """Return the commit of the checkout whose source tree is `package_dir`.

  An installed copy inside some other repository (a virtualenv in a
  project folder, say) is not that repository's code, so only a checkout
  whose top level is the parent of `package_dir` counts. A commit with
  uncommitted changes to tracked files gets a `-dirty` suffix.
  """

  def git(*args):
    return subprocess.run(
        ['git', *args], cwd=package_dir, capture_output=True, text=True,
        timeout=10, check=False,
    )

  try:
    top_level = git('rev-parse', '--show-toplevel')
    if top_level.returncode != 0:
      return None
    if pathlib.Path(top_level.stdout.strip()).resolve() != package_dir.parent:
      return None
    commit = git('rev-parse', 'HEAD')
    if commit.returncode != 0:
      return None
    dirty = git('status', '--porcelain', '--untracked-files=no')
  except (OSError, subprocess.TimeoutExpired):
    return None
  suffix = '-dirty' if dirty.stdout.strip() else ''
  return commit.stdout.strip() + suffix


def collect(data_files: Iterable[pathlib.Path]) -> dict[str, Any]:
  """Return a JSON-ready record of what produced a run."""
  device = jax.devices()[0]
  package_dir = pathlib.Path(__file__).resolve().parents[1]
  return {
      'fedjax_med': fedjax_med.__version__,
      'jax': jax.__version__,
      'jaxlib': _version('jaxlib'),
      'optax': _version('optax'),
      'flax': _version('flax'),
      'numpy': _version('numpy'),
      'python': sys.version.split()[0],
      'platform': platform.platform(),
      'device': {
          'platform': device.platform,
          'kind': device.device_kind,
          'count': jax.device_count(),
      },
      'git_commit': git_commit(package_dir),
      'data_files': {
          str(pathlib.Path(path).resolve()): sha256_file(pathlib.Path(path))
          for path in data_files
      },
  }
