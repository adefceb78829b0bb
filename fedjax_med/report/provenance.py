"""Provenance of a run: software versions, device, git commit, data checksums."""

import hashlib
import importlib.metadata
import pathlib
import platform
import subprocess
import sys
from typing import Any, Iterable

import jax


def sha256_file(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as stream:
    for block in iter(lambda: stream.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def git_commit(directory: pathlib.Path) -> str | None:
  """Return the commit of the git checkout holding `directory`, if any."""
  try:
    result = subprocess.run(
        ['git', 'rev-parse', 'HEAD'],
        cwd=directory, capture_output=True, text=True, timeout=10, check=False,
    )
  except (OSError, subprocess.TimeoutExpired):
    return None
  if result.returncode != 0:
    return None
  commit = result.stdout.strip()
  dirty = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      cwd=directory, capture_output=True, text=True, timeout=10, check=False,
  )
  return commit + ('-dirty' if dirty.stdout.strip() else '')


def collect(data_files: Iterable[pathlib.Path]) -> dict[str, Any]:
  """Return a JSON-ready record of what produced a run."""
  device = jax.devices()[0]
  package_dir = pathlib.Path(__file__).resolve().parents[1]
  return {
      'fedjax_med': _version('fedjax_med'),
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
          str(path): sha256_file(pathlib.Path(path)) for path in data_files
      },
  }
