"""The README's Python examples run and match the default study."""

import contextlib
import io
import pathlib
import re

import jax
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def _blocks():
  return re.findall(r'```python\n(.*?)```', README.read_text(), re.DOTALL)


def test_readme_has_the_api_and_the_library_example():
  blocks = _blocks()
  assert len(blocks) == 2
  assert 'fm.run(' in blocks[0]
  assert 'simulation.build_round(' in blocks[1]


def test_readme_api_example_runs(tmp_path, monkeypatch):
  # The example writes its run folder under runs/ in the working folder.
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_blocks()[0], str(README), 'exec'), namespace)  # pylint: disable=exec-used
  result = namespace['result']
  assert result.config.server.aggregator == 'median'
  assert len(result.metric('train_loss')) == 30
  assert namespace['accuracy'].shape == (30, 4)
  assert result.summary['mean_accuracy'] == pytest.approx(
      np.mean(namespace['accuracy'][-1]))
  assert [path.name for path in (tmp_path / 'runs').iterdir()] == [
      result.run_dir.name]


def test_readme_library_example_runs():
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    exec(compile(_blocks()[1], str(README), 'exec'), {})  # pylint: disable=exec-used

  # Seed 0 of the default study: cleveland 0.769, hungarian 0.753,
  # switzerland 0.750, va 0.644 (experiments/seeds.py).
  numbers = [float(x) for x in re.findall(r'\d\.\d+', output.getvalue())]
  assert [round(x, 3) for x in numbers] == [0.769, 0.753, 0.75, 0.644]


def test_readme_client_key_matches_round(key):
  # The README gave fold_in(round key, client id), which is not the key a
  # client trains with.
  from fedjax_med.simulation import round as round_lib  # pylint: disable=g-import-not-at-top
  text = ' '.join(README.read_text().split())
  tag = int(re.search(
      r'`fold_in\(fold_in\(round key, (\d+)\), client id\)`', text).group(1))
  ids = np.array([4, 1], np.int32)
  np.testing.assert_array_equal(
      jax.random.key_data(round_lib.slot_keys(
          jax.random.fold_in(key, round_lib._CLIENTS_TAG), ids)),  # pylint: disable=protected-access
      jax.random.key_data(jax.vmap(
          lambda i: jax.random.fold_in(jax.random.fold_in(key, tag), i))(ids)))
