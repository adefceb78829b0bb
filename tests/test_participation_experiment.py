"""experiments/participation_communication.py at a tiny size."""

import json


def test_participation_experiment_writes_results(load_script, tmp_path):
  experiment = load_script('experiments/participation_communication.py')
  markdown = tmp_path / 'page.md'
  runs = tmp_path / 'runs.jsonl'
  clock_figure = tmp_path / 'clock.png'
  bytes_figure = tmp_path / 'bytes.png'

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
  lines = runs.read_text().splitlines()
  assert [json.loads(line)['method'] for line in lines] == [
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
