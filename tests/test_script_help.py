"""Help texts of the experiment and benchmark scripts: each option is
described and names its default."""

import argparse
import pathlib
import sys

import pytest

from fedjax_med.report import script_help

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    str(path.relative_to(ROOT))
    for folder in ('experiments', 'benchmarks')
    for path in (ROOT / folder).glob('*.py')
    if 'ArgumentParser(' in path.read_text(encoding='utf-8'))


class _Parsed(Exception):
  """Raised in place of parsing, carrying the script's parser."""


def _parser_of(module) -> argparse.ArgumentParser:
  original = argparse.ArgumentParser.parse_args

  def capture(self, *args, **kwargs):
    raise _Parsed(self)

  argparse.ArgumentParser.parse_args = capture
  try:
    module.main([])
  except _Parsed as parsed:
    return parsed.args[0]
  finally:
    argparse.ArgumentParser.parse_args = original
  raise AssertionError('main() returned without parsing arguments')


def test_scripts_found():
  assert len(SCRIPTS) >= 20, SCRIPTS


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_names_every_default(script, load_script, monkeypatch):
  # Some benchmarks import their neighbours by module name.
  monkeypatch.syspath_prepend(str(ROOT / 'benchmarks'))
  parser = _parser_of(load_script(script))
  formatter = parser._get_formatter()  # pylint: disable=protected-access
  missing = []
  for action in parser._actions:  # pylint: disable=protected-access
    if not action.help:
      missing.append(f'{"/".join(action.option_strings) or action.dest}'
                     ' (no help text)')
      continue
    default = action.default
    if (default is None or default is False or default == []
        or isinstance(action, argparse._HelpAction)):  # pylint: disable=protected-access
      continue
    text = formatter._get_help_string(action) or ''  # pylint: disable=protected-access
    if 'default' not in text:
      missing.append(f'{"/".join(action.option_strings) or action.dest}'
                     f' (default {default!r})')
  assert not missing, f'{script} --help lacks: {", ".join(missing)}'


@pytest.mark.parametrize('default, shown', [
    (20, '(default: 20)'),
    (0, '(default: 0)'),
    ([0, 1, 2], '(default: 0 1 2)'),
    (pathlib.Path('experiments/page.md'), '(default: experiments/page.md)'),
    ('50%', '(default: 50%)'),
])
def test_formatter_appends_default(default, shown):
  parser = argparse.ArgumentParser(
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--value', default=default, help='the value')
  assert f'the value {shown}' in ' '.join(parser.format_help().split())


def test_formatter_leaves_unset_and_written_defaults():
  parser = argparse.ArgumentParser(
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--flag', action='store_true', help='a flag')
  parser.add_argument('--auto', default=None, help='worked out')
  parser.add_argument('--given', default=3, help='three (default: 3)')
  text = ' '.join(parser.format_help().split())
  assert 'a flag --auto' in text
  assert 'worked out --given' in text
  assert text.count('default') == 1
