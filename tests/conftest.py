"""Shared pytest setup: strict rank promotion and a PRNG key fixture."""

import jax
import pytest

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
