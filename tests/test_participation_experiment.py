"""experiments/participation_communication.py at a tiny size."""

import json

import pytest


def test_participation_experiment_writes_results(load_script, tmp_path):
  experiment = load_script('experiments/participation_communication.py')
  markdown = tmp_path / 'page.md'
  runs = tmp_path / 'runs.jsonl'
  clock_figure = tmp_path / 'clock.png'
  bytes_figure = tmp_path / 'bytes.png'
  earlier = json.dumps({'part': 'clock', 'method': 'earlier run'})
  runs.write_text(earlier + '\n')

  records = experiment.main([
      '--clients', '120', '--seeds', '0', '--hours', '0.5',
      '--evaluate-every', '900', '--compression-rounds', '2',
      '--compressors', 'none', 'qsgd_16',
      '--markdown', str(markdown), '--json', str(runs),
      '--clock-figure', str(clock_figure), '--bytes-figure',
      str(bytes_figure),
  ])

  parts = [(record['part'], record['method']) for record in records]
  expected = ([('clock', method) for method in experiment.CLOCK_METHODS]
              + [('bytes', 'none'), ('bytes', 'qsgd_16')]
              + [('privacy', 'fedavg_drop_dp')])
  assert parts == expected
  # Finished runs are appended after the lines already in the file.
  lines = runs.read_text().splitlines()
  assert lines[0] == earlier
  assert [json.loads(line)['method'] for line in lines[1:]] == [
      method for _, method in expected]
  for record in records:
    if record['part'] == 'clock':
      # Only steps that end within the budget count, and the clock never
      # goes back.
      times = [point[0] for point in record['curve']]
      assert times == sorted(times)
      assert times[-1] <= 1800.0
      assert len(times) >= 1 + min(record['steps'], 1)
      # Each point has the overall and the under-resourced accuracy.
      for _, overall, slow in record['curve']:
        assert 0.0 <= overall <= 1.0
        assert 0.0 <= slow <= 1.0
    if record['part'] == 'bytes':
      # Every client is online and none drops out: 100 uploads a round.
      assert record['bytes_up'] == 2 * 100 * record['message_bytes']
  sizes = {record['method']: record['message_bytes'] for record in records
           if record['part'] == 'bytes'}
  # 610 float32 parameters; QSGD with 16 levels sends 6 bits each.
  assert sizes['none'] == 2440
  assert sizes['qsgd_16'] == 4 + (610 * 6 + 7) // 8
  steps = {record['method']: record['steps'] for record in records
           if record['part'] == 'clock'}
  # The 900 s deadline lets the dropping policies finish rounds in 0.5 h.
  assert steps['fedavg_drop'] >= 1
  privacy = records[-1]
  assert privacy['rounds'] >= 1
  assert privacy['max_contributions'] <= privacy['rounds']
  assert privacy['epsilon_contributions'] > 0
  page = markdown.read_text()
  assert experiment.RESULTS_START in page
  assert '| FedBuff (K=25 of 100) |' in page
  assert '| QSGD, 16 levels |' in page
  assert 'epsilon, no amplification' in page
  assert clock_figure.stat().st_size > 0
  assert bytes_figure.stat().st_size > 0


@pytest.mark.parametrize('flags, message', [
    (['--hours', 'inf'], 'not positive and finite'),
    (['--hours', 'nan'], 'not positive and finite'),
    (['--evaluate-every', '0'], 'not positive and finite'),
    (['--hours', '0.2'], '--hours must be at least 0.25'),
    (['--seeds', '0', '0'], '0 given more than once'),
    (['--seeds', '-1'], '--seeds must be integers'),
])
def test_participation_rejects_flags(load_script, capsys, flags, message):
  experiment = load_script('experiments/participation_communication.py')

  with pytest.raises(SystemExit) as exit_info:
    experiment.parse_args(flags)

  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_participation_short_hours_without_privacy(load_script, tmp_path):
  experiment = load_script('experiments/participation_communication.py')

  args = experiment.parse_args(['--hours', '0.2', '--parts', 'clock',
                                '--markdown', str(tmp_path / 'page.md')])

  assert args.hours == 0.2
  assert args.json == tmp_path / 'page.jsonl'


@pytest.mark.parametrize('flag', ['--json', '--clock-figure',
                                  '--bytes-figure', '--markdown'])
def test_participation_rejects_folder_path(load_script, capsys, tmp_path,
                                           flag):
  experiment = load_script('experiments/participation_communication.py')

  with pytest.raises(SystemExit) as exit_info:
    experiment.parse_args([flag, str(tmp_path)])

  assert exit_info.value.code == 2
  assert f'{flag} must be a file path' in capsys.readouterr().err


def test_participation_page_checked_first(load_script, capsys, tmp_path):
  experiment = load_script('experiments/participation_communication.py')
  page = tmp_path / 'page.md'
  page.write_text('# Notes\n')

  with pytest.raises(SystemExit) as exit_info:
    experiment.main(['--markdown', str(page)])

  assert exit_info.value.code == 2
  assert 'lacks the result markers' in capsys.readouterr().err
  assert not (tmp_path / 'page.jsonl').exists()


def test_page_has_sections_of_parts_run(load_script):
  # --parts clock bytes wrote the privacy heading with nothing under it.
  experiment = load_script('experiments/participation_communication.py')
  args = experiment.parse_args(['--parts', 'bytes', '--seeds', '0'])
  records = [{'part': 'bytes', 'method': method, 'seed': 0,
              'message_bytes': 100, 'bytes_up': 1000,
              'final_accuracy': 0.5}
             for method in experiment.COMPRESSOR_NAMES]

  page = experiment.render_results(records, args, command='python x',
                                   elapsed_s=1.0)

  assert '### Accuracy against bytes sent up' in page
  assert 'simulated wall clock' not in page
  assert 'Privacy accounted' not in page
