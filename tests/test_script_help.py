"""Help texts of the experiment and benchmark scripts: each option is
described and names its default."""

import argparse
import math
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
    # A flag that takes no value is off unless given, whatever it stores.
    if (default is None or default is False or default == []
        or action.nargs == 0):
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


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_shows_no_python_dict(script, load_script, monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / 'benchmarks'))
  parser = _parser_of(load_script(script))

  text = parser.format_help()

  assert "{'" not in text, text


@pytest.mark.parametrize('action', ['store_true', 'store_false'])
def test_formatter_leaves_flag_default(action):
  parser = argparse.ArgumentParser(
      formatter_class=script_help.DefaultsHelpFormatter)
  parser.add_argument('--no-extra', dest='extra', action=action,
                      help='skip the extra cases')

  text = ' '.join(parser.format_help().split())

  assert 'skip the extra cases' in text
  assert 'default' not in text


def test_format_sizes_reads_as_text():
  sizes = {'rounds': 2, 'rates': (0.5, 1.0), 'cohorts': (),
           'cap': None, 'failure': {'rate': 0.5, 'name': 'heart'},
           'share': '50%'}

  text = script_help.format_sizes(sizes)

  assert text == ('rounds=2, rates=0.5 1, cohorts=none, cap=none, '
                  'failure=(rate=0.5, name=heart), share=50%%')


@pytest.mark.parametrize('seeds, message', [
    ([0, 0], '0 given more than once'),
    ([1, 2, 1, 2], '1 2 given more than once'),
    ([0, -1], 'in [0, 4294967296); got -1'),
    ([2**32], 'got 4294967296'),
])
def test_check_seeds_rejects(seeds, message, capsys):
  parser = argparse.ArgumentParser()

  with pytest.raises(SystemExit) as exit_info:
    script_help.check_seeds(parser, seeds)

  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_check_seeds_accepts_distinct():
  script_help.check_seeds(argparse.ArgumentParser(), [0, 1, 2**32 - 1])


@pytest.mark.parametrize('text', ['inf', '-inf', 'nan', '0', '-1', 'x'])
def test_finite_positive_float_rejects(text):
  with pytest.raises(argparse.ArgumentTypeError, match='positive, finite'):
    script_help.finite_positive_float(text)


def test_finite_positive_float_reads_value():
  assert script_help.finite_positive_float('1e-9') == 1e-9


@pytest.mark.parametrize('value', [math.inf, math.nan, 0.0])
def test_check_finite_positive_rejects(value, capsys):
  with pytest.raises(SystemExit):
    script_help.check_finite_positive(argparse.ArgumentParser(), '--timeout',
                                      value)

  assert '--timeout must be positive and finite' in capsys.readouterr().err


def test_check_out_path_names_flag(tmp_path, capsys):
  with pytest.raises(SystemExit):
    script_help.check_out_path(argparse.ArgumentParser(), str(tmp_path),
                               '--results')

  assert f'--results must be a file path; {tmp_path} is a folder' in (
      capsys.readouterr().err)


def test_check_out_path_under_file(tmp_path, capsys):
  (tmp_path / 'file').write_text('')

  with pytest.raises(SystemExit):
    script_help.check_out_path(argparse.ArgumentParser(),
                               tmp_path / 'file' / 'page.md', '--results')

  assert 'is a file, not a folder' in capsys.readouterr().err


@pytest.mark.parametrize('relative', ['file', 'file/sub'])
def test_check_out_folder_rejects_file(tmp_path, relative, capsys):
  (tmp_path / 'file').write_text('')

  with pytest.raises(SystemExit):
    script_help.check_out_folder(argparse.ArgumentParser(),
                                 tmp_path / relative)

  assert '--out' in capsys.readouterr().err


def test_check_out_folder_accepts_new(tmp_path):
  script_help.check_out_folder(argparse.ArgumentParser(),
                               tmp_path / 'new' / 'folder')


@pytest.mark.parametrize('check', [script_help.check_out_path,
                                   script_help.check_out_folder],
                         ids=['path', 'folder'])
def test_check_out_rejects_empty(check, capsys):
  # pathlib reads '' as '.', the current folder.
  with pytest.raises(SystemExit):
    check(argparse.ArgumentParser(), '', '--json')

  assert '--json is empty. Pass a path, or leave --json out.' in (
      capsys.readouterr().err)


def test_check_results_page_needs_markers(tmp_path, capsys):
  page = tmp_path / 'page.md'
  page.write_text('# Notes\n')

  with pytest.raises(SystemExit):
    script_help.check_results_page(argparse.ArgumentParser(), page,
                                   start='<!-- s -->', end='<!-- e -->')

  assert 'lacks the result markers' in capsys.readouterr().err
  assert page.read_text() == '# Notes\n'
