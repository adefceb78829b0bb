"""experiments/imaging_scanner_shift.py at a tiny size."""

import json
import signal
import warnings

import numpy as np
import pytest

from fedjax_med import errors


def test_imaging_experiment_writes_tables_and_figures(load_script, tmp_path,
                                                     monkeypatch):
  experiment = load_script('experiments/imaging_scanner_shift.py')
  # On CPU the local steps of image data compile unrolled, so 2 steps in
  # place of 10 cut most of the compile time.
  monkeypatch.setitem(experiment.BASE, 'client.local_steps', 2)
  markdown = tmp_path / 'page.md'
  runs = tmp_path / 'runs.jsonl'
  figure = tmp_path / 'accuracy.png'
  profiles_figure = tmp_path / 'profiles.png'

  records = experiment.main([
      '--seeds', '0', '--rounds', '2', '--clients', '10',
      '--algorithms', 'fedavg', 'fedbn',
      '--markdown', str(markdown), '--json', str(runs),
      '--figure', str(figure), '--profiles-figure', str(profiles_figure),
  ])

  assert [record['algorithm'] for record in records] == ['fedavg', 'fedbn']
  lines = runs.read_text().splitlines()
  assert [json.loads(line)['algorithm'] for line in lines] == [
      'fedavg', 'fedbn']
  for record in records:
    accuracies = list(record['test_accuracy'].values())
    assert len(accuracies) == 10
    assert record['mean_accuracy'] == np.mean(accuracies)
    assert record['worst_accuracy'] == min(accuracies)
    # Every client name carries its profile, and the per-profile means
    # are the means over those clients.
    for profile, value in record['profile_accuracy'].items():
      members = [accuracy for name, accuracy in record['test_accuracy']
                 .items() if name.endswith('_' + profile)]
      if members:
        assert value == np.mean(members)
      else:
        assert value is None
  page = markdown.read_text()
  assert experiment.RESULTS_START in page
  assert '| FedAvg |' in page
  assert '| FedBN |' in page
  assert '| low_contrast_vendor |' in page
  assert figure.stat().st_size > 0
  assert profiles_figure.stat().st_size > 0


def test_imaging_experiment_rejects_zero_rounds(load_script, capsys):
  experiment = load_script('experiments/imaging_scanner_shift.py')

  with pytest.raises(SystemExit) as exit_info:
    experiment.parse_args(['--rounds', '0'])

  assert exit_info.value.code == 2
  assert 'server.rounds' in capsys.readouterr().err


def test_profile_plot_skips_profiles_without_sites(load_script, tmp_path):
  experiment = load_script('experiments/imaging_scanner_shift.py')
  empty, *others = experiment.PROFILE_NAMES
  records = [{'algorithm': 'fedavg',
              'profile_accuracy': {empty: None,
                                   **{name: 0.5 for name in others}}}]
  path = tmp_path / 'accuracy.png'

  with warnings.catch_warnings():
    warnings.simplefilter('error')  # numpy warns on the mean of nothing
    experiment.plot_profiles_accuracy(records, path)

  assert path.stat().st_size > 0


@pytest.mark.parametrize('flags, message', [
    (['--seeds', '0', '-1'], '--seeds must be integers'),
    (['--seeds', '0', '0'], '0 given more than once'),
])
def test_imaging_experiment_rejects_seeds(load_script, capsys, flags,
                                          message):
  experiment = load_script('experiments/imaging_scanner_shift.py')

  with pytest.raises(SystemExit) as exit_info:
    experiment.parse_args(flags)

  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_imaging_experiment_checks_page_first(load_script, capsys, tmp_path):
  experiment = load_script('experiments/imaging_scanner_shift.py')
  page = tmp_path / 'page.md'
  page.write_text('# Notes\n')

  with pytest.raises(SystemExit) as exit_info:
    experiment.parse_args(['--markdown', str(page)])

  assert exit_info.value.code == 2
  assert 'lacks the result markers' in capsys.readouterr().err


def test_imaging_experiment_page_before_figure(load_script, tmp_path,
                                               monkeypatch):
  experiment = load_script('experiments/imaging_scanner_shift.py')
  markdown = tmp_path / 'page.md'

  def fake_run(algorithm, *, seed, rounds, clients, out_root):
    del out_root
    return {'algorithm': algorithm, 'seed': seed, 'rounds': rounds,
            'clients': clients, 'mean_accuracy': 0.5,
            'worst_accuracy': 0.25, 'p10_accuracy': 0.3,
            'wall_time_s': 1.0,
            'profile_accuracy': {name: 0.5
                                 for name in experiment.PROFILE_NAMES}}

  def failing_plot(records, path):
    del records, path
    raise RuntimeError('no figure')

  monkeypatch.setattr(experiment, 'run_one', fake_run)
  monkeypatch.setattr(experiment, 'plot_profile_examples', lambda path: None)
  monkeypatch.setattr(experiment, 'plot_profiles_accuracy', failing_plot)

  with pytest.raises(RuntimeError, match='no figure'):
    experiment.main(['--seeds', '0', '--rounds', '2', '--clients', '10',
                     '--algorithms', 'fedavg', '--markdown', str(markdown),
                     '--figure', str(tmp_path / 'accuracy.png')])

  assert '| FedAvg |' in markdown.read_text()


def test_ctrl_c_exits_130_and_keeps_page(load_script, tmp_path, monkeypatch,
                                         capsys):
  # A stop inside the second run ended the script with a traceback.
  experiment = load_script('experiments/imaging_scanner_shift.py')
  markdown = tmp_path / 'page.md'
  page = (f'# Page\n{experiment.RESULTS_START}\nold results\n'
          f'{experiment.RESULTS_END}\n')
  markdown.write_text(page)
  runs = tmp_path / 'runs.jsonl'
  calls = []

  def run_one(algorithm, **kwargs):
    calls.append(algorithm)
    if len(calls) == 2:
      raise errors.StudyInterrupted(tmp_path / 'run', 0)
    return {'algorithm': algorithm, 'mean_accuracy': 0.5,
            'worst_accuracy': 0.25, 'wall_time_s': 1.0}

  monkeypatch.setattr(experiment, 'run_one', run_one)
  monkeypatch.setattr(experiment, 'plot_profile_examples', lambda path: None)
  previous = signal.getsignal(signal.SIGINT)

  with pytest.raises(SystemExit) as exit_info:
    experiment.main(['--seeds', '0', '--rounds', '2', '--clients', '10',
                     '--algorithms', 'fedavg', 'fedbn',
                     '--markdown', str(markdown), '--json', str(runs),
                     '--figure', str(tmp_path / 'a.png'),
                     '--profiles-figure', str(tmp_path / 'b.png')])

  assert exit_info.value.code == 130
  assert markdown.read_text() == page
  assert [json.loads(line)['algorithm']
          for line in runs.read_text().splitlines()] == ['fedavg']
  err = capsys.readouterr().err
  assert 'imaging_scanner_shift.py: interrupted;' in err
  assert f'The finished runs are in {runs}.' in err
  assert signal.getsignal(signal.SIGINT) == previous
