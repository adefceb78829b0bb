"""Shared pytest setup: strict rank promotion and a PRNG key fixture."""

import importlib.util
import pathlib

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

jax.config.update('jax_numpy_rank_promotion', 'raise')


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
