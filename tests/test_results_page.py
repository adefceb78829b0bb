"""fedjax_med.report.results_page: table cells and the results block."""

import pytest

from fedjax_med.report import results_page


@pytest.mark.parametrize('values, expected', [
    ([0.5], '0.500'),
    ([0.5, 0.7], '0.600 ± 0.141'),
    ([0.5, None, 0.7], '0.600 ± 0.141 (2/3 seeds)'),
    ([0.4, None], '0.400 (1/2 seeds)'),
    ([None, None], 'n/a'),
])
def test_mean_std_cells(values, expected):
  assert results_page.mean_std(values) == expected


def test_replace_results_keeps_text(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('# Title\n\nIntro.\n<!-- s -->\nold\n<!-- e -->\nOutro.\n')

  results_page.replace_results(page, 'new', start='<!-- s -->',
                               end='<!-- e -->', title='unused')

  assert page.read_text() == (
      '# Title\n\nIntro.\n<!-- s -->\nnew\n<!-- e -->\nOutro.\n')


def test_replace_results_creates_page(tmp_path):
  page = tmp_path / 'new' / 'page.md'

  results_page.replace_results(page, 'rows', start='<!-- s -->',
                               end='<!-- e -->', title='Results')

  assert page.read_text() == '# Results\n\n<!-- s -->\nrows\n<!-- e -->\n'


@pytest.mark.parametrize('text, message', [
    ('# Title\n<!-- s -->\n', '<!-- e -->'),
    ('# Title\n<!-- e -->\nnotes\n<!-- s -->\n', 'in this order'),
], ids=['end_missing', 'reversed'])
def test_replace_results_rejects_markers(tmp_path, text, message):
  page = tmp_path / 'page.md'
  page.write_text(text)

  with pytest.raises(ValueError, match=message):
    results_page.replace_results(page, 'rows', start='<!-- s -->',
                                 end='<!-- e -->', title='Results')
  assert page.read_text() == text


def test_check_markers_passes_missing_page(tmp_path):
  results_page.check_markers(tmp_path / 'page.md', start='<!-- s -->',
                             end='<!-- e -->')


def test_check_markers_rejects_reversed(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('<!-- e -->\n<!-- s -->\n')

  with pytest.raises(ValueError, match='in this order'):
    results_page.check_markers(page, start='<!-- s -->', end='<!-- e -->')
