"""The heterogeneity sweep at reduced size: 2 alphas, 2 algorithms, 1 seed."""

import csv
import importlib.util
import pathlib
import shlex

import pytest

from fedjax_med import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGV = [
    '--alphas', '0.3', '10', '--algorithms', 'fedavg', 'scaffold',
    '--seeds', '0', '--rounds', '2', '--clients', '60',
]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'experiments_heterogeneity_sweep',
      ROOT / 'experiments/heterogeneity_sweep.py',
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def small_sweep(tmp_path_factory):
  script = _load_script()
  out = tmp_path_factory.mktemp('heterogeneity_sweep')
  paths = {
      'out': out / 'sweep',
      'markdown': out / 'page.md',
      'figure': out / 'figure.png',
  }
  status = script.main(ARGV + [
      '--out', str(paths['out']),
      '--markdown', str(paths['markdown']),
      '--figure', str(paths['figure']),
  ])
  with (paths['out'] / 'points.csv').open(newline='') as file:
    rows = list(csv.DictReader(file))
  return script, status, paths, rows


def test_small_sweep_writes_csv_rows(small_sweep):
  _, status, _, rows = small_sweep

  points = [(row['alpha'], row['algorithm'], row['seed']) for row in rows]

  assert status == 0
  assert points == [
      ('0.3', 'fedavg', '0'), ('0.3', 'scaffold', '0'),
      ('10.0', 'fedavg', '0'), ('10.0', 'scaffold', '0'),
  ]
  for row in rows:
    assert row['status'] == 'completed', row['error']
    for metric in ('mean_accuracy', 'p10_accuracy', 'worst_accuracy'):
      assert 0.0 <= float(row[metric]) <= 1.0
    assert float(row['worst_accuracy']) <= float(row['p10_accuracy'])
    assert float(row['p10_accuracy']) <= float(row['mean_accuracy'])
    assert (pathlib.Path(row['run_dir']) / 'summary.json').exists()


def test_small_sweep_writes_plot_and_page(small_sweep):
  script, _, paths, _ = small_sweep

  page = paths['markdown'].read_text()

  assert paths['figure'].stat().st_size > 0
  assert script.RESULTS_START in page
  assert script.RESULTS_END in page
  assert '--alphas 0.3 10 --algorithms fedavg scaffold' in page
  assert '| 0.3 | FedAvg | 1 |' in page
  assert '| 10 | SCAFFOLD | 1 |' in page


def test_first_point_counts_compilations(small_sweep):
  _, _, _, rows = small_sweep

  # The first point compiles at least the round and the evaluation.
  assert int(rows[0]['compilations']) >= 2


def test_csv_command_reproduces_config(small_sweep):
  _, _, _, rows = small_sweep

  for row in rows:
    words = shlex.split(row['command'])
    overrides = dict(
        config_lib.parse_override(words[index + 1])
        for index, word in enumerate(words) if word == '--set'
    )
    from_command = config_lib.apply_overrides(
        config_lib.ExperimentConfig(), overrides
    )
    saved = (pathlib.Path(row['run_dir']) / 'config.json').read_text()

    assert words[:3] == ['fedjax-med', 'run', '--no-progress']
    assert from_command.data.partition_clients == 60
    assert from_command.client.scaffold == (row['algorithm'] == 'scaffold')
    assert f'"name": "{from_command.name}"' in saved


def test_existing_csv_is_rejected(small_sweep, capsys):
  script, _, paths, _ = small_sweep

  status = script.main(ARGV + [
      '--out', str(paths['out']),
      '--markdown', str(paths['markdown']),
      '--figure', str(paths['figure']),
  ])

  assert status == 2
  assert 'already exists' in capsys.readouterr().err


def test_markdown_without_markers_is_rejected(tmp_path):
  script = _load_script()
  page = tmp_path / 'page.md'
  page.write_text('# A page without markers\n')

  with pytest.raises(script.InputError, match='marker lines'):
    script.write_markdown(page, 'results')
