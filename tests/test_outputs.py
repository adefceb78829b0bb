"""Run folders and provenance."""

import csv
import pathlib
import shutil
import subprocess

import pytest

from fedjax_med.errors import InputError
from fedjax_med.report import outputs
from fedjax_med.report import provenance


def test_run_dirs_same_second_differ(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)

  folders = {outputs.make_run_dir(None, 'study') for _ in range(5)}

  assert len(folders) == 5
  for folder in folders:
    assert folder.is_dir()


def test_git_commit_ignores_foreign_repo(tmp_path):
  package = pathlib.Path(provenance.__file__).resolve().parents[1]
  repo = tmp_path / 'other'
  shutil.copytree(package, repo / 'site-packages' / 'fedjax_med')
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)

  commit = provenance.git_commit(repo / 'site-packages' / 'fedjax_med')

  assert commit is None


def test_json_values_drop_nan():
  record = {'a': float('nan'), 'b': [1.0, float('inf')], 'c': 2}

  converted = outputs.to_json_value(record)

  assert converted == {'a': None, 'b': [1.0, None], 'c': 2}


def test_csv_number_text_not_quoted(tmp_path):
  # Log-risks formatted as text, such as '-0.197931439', were written with
  # a leading quote, so float() and numpy could not read the column.
  numbers = ['-0.197931439', '+1', '-2', '-1e-05', '.5', '-3.E+2']
  path = tmp_path / 'scores.csv'

  outputs.write_csv(path, ['score'], [[n] for n in numbers])

  with path.open(newline='', encoding='utf-8') as handle:
    cells = [row[0] for row in list(csv.reader(handle))[1:]]
  assert cells == numbers
  assert [float(cell) for cell in cells] == [float(n) for n in numbers]


def test_csv_formula_text_quoted(tmp_path):
  names = ['=HYPERLINK("x")', '+1+A1', '-2+3', '@SUM(A1)', '\tx', "'a",
           'plain', '\uff1dSUM(A1)', '-inf', '-\u0661\u0662']
  path = tmp_path / 'table.csv'

  outputs.write_csv(path, ['name', 'value'], [[n, -1.5] for n in names])

  with path.open(newline='', encoding='utf-8') as handle:
    rows = list(csv.reader(handle))[1:]
  assert [row[0] for row in rows] == [
      '\'=HYPERLINK("x")', "'+1+A1", "'-2+3", "'@SUM(A1)", "'\tx", "''a",
      'plain', "'\uff1dSUM(A1)", "'-inf", "'-\u0661\u0662"]
  # Numbers stay numbers, negative or not.
  assert {row[1] for row in rows} == {'-1.5'}
  assert [outputs.from_spreadsheet_text(row[0]) for row in rows] == names


def test_run_dir_empty_string_rejected(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'existing').touch()

  with pytest.raises(InputError) as error:
    outputs.make_run_dir('', 'study')
  message = str(error.value)

  assert 'The output folder is empty' in message
  assert 'already exists' not in message
