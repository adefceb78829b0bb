"""Shared pytest setup: strict rank promotion, a shared XLA cache, fixtures."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# The suite's processes (the pytest-xdist workers, the command-line and
# script tests run as subprocesses, the notebook kernels) compile many
# identical programs, and every study builds its round anew. A persistent
# compilation cache shared through the environment compiles each program
# once per run. The process that loads this file first (the xdist
# controller, or pytest itself with -n 0) creates the folder and deletes
# it at the end. The workers and subprocesses inherit its path.
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='fedjax_med_tests_xla_')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

# The suite's programs are small and each compiles once, so LLVM's
# optimizations cost more time than they save: level 0 and no expensive
# passes made three compile-bound test files 40% faster on a 2-core CPU.
# XLA's default is level 3. To test the optimized code, set XLA_FLAGS to
# include --xla_backend_optimization_level=3; a level already in XLA_FLAGS
# is left as it is. The workers and subprocesses inherit the flags.
#
# XLA's older fusion code generation (--xla_cpu_use_fusion_emitters=false)
# cut the backend compile time of tests/simulation/test_fedbn.py from 38.8 s
# to 23.3 s with jaxlib 0.10.2, and the whole suite from 824 s to 608 s on
# the same 2-core machine. XLA aborts on a flag it does not know, so that
# flag is kept only if a child process starts with it.
def _xla_accepts(flags: str) -> bool:
  """Return whether a child process runs a JAX program under `flags`."""
  try:
    probe = subprocess.run(
        [sys.executable, '-c', 'import jax.numpy; jax.numpy.zeros(1).sum()'],
        env={**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'},
        capture_output=True, check=False, timeout=120)
  except subprocess.TimeoutExpired:
    return False
  return probe.returncode == 0


if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  _flags = ' '.join([
      os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0',
      '--xla_llvm_disable_expensive_passes=true']).strip()
  _older_emitters = _flags + ' --xla_cpu_use_fusion_emitters=false'
  os.environ['XLA_FLAGS'] = (
      _older_emitters if _xla_accepts(_older_emitters) else _flags)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]

jax.config.update('jax_numpy_rank_promotion', 'raise')
jax.config.update('jax_compilation_cache_dir',
                  os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_sessionfinish(session):
  del session
  if _OWN_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


@pytest.fixture
def key():
  return jax.random.key(0)


def _parse_markdown_tables(page: str) -> list[list[dict[str, str]]]:
  """Return each markdown table of `page` as a list of {column: cell}."""
  tables, lines = [], page.splitlines()
  for index, line in enumerate(lines):
    starts = line.startswith('|') and (
        index == 0 or not lines[index - 1].startswith('|'))
    if not starts:
      continue
    header = [cell.strip() for cell in line.strip('|').split('|')]
    rows = []
    for row_line in lines[index + 2:]:
      if not row_line.startswith('|'):
        break
      cells = [cell.strip() for cell in row_line.strip('|').split('|')]
      rows.append(dict(zip(header, cells)))
    tables.append(rows)
  return tables


@pytest.fixture
def markdown_tables():
  """The parser of a results page's markdown tables, for script tests."""
  return _parse_markdown_tables


def _load_script(relative_path: str):
  """Import a script of the repository, such as an experiment, by path."""
  path = ROOT / relative_path
  name = 'script_' + path.stem
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='session')
def load_script():
  """The importer of repository scripts by path, for script tests."""
  return _load_script
