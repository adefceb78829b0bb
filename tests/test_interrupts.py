"""fedjax_med.interrupts: Ctrl-C as a stop request between rounds."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from fedjax_med import interrupts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_request_raises_once():
  interrupts.request_stop()

  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()
  interrupts.raise_if_requested()  # The request was cleared.


_SECOND_SIGNAL = """
import os, signal, sys, time
from fedjax_med import interrupts
interrupts.defer_ctrl_c()
os.kill(os.getpid(), signal.{first})
try:
  interrupts.raise_if_requested()
except KeyboardInterrupt:
  pass  # The loop turned the first signal into its interrupt.
os.kill(os.getpid(), signal.{second})
time.sleep(30)
print('still running')
"""


@pytest.mark.parametrize('first, second', [
    ('SIGINT', 'SIGINT'), ('SIGTERM', 'SIGTERM'), ('SIGTERM', 'SIGINT')])
def test_second_signal_exits_at_once(first, second):
  # The second signal raised KeyboardInterrupt wherever the main thread
  # was; inside orbax's checkpoint save that aborted with status 134.
  result = subprocess.run(
      [sys.executable, '-c', _SECOND_SIGNAL.format(first=first,
                                                   second=second)],
      capture_output=True, text=True, timeout=120, check=False,
      env={**os.environ, 'PYTHONPATH': str(ROOT)})

  assert result.returncode == 130
  assert 'stopped at once' in result.stderr
  assert 'Traceback' not in result.stderr
  assert 'still running' not in result.stdout


def test_first_signal_requests_stop(capsys):
  # SIGTERM raised KeyboardInterrupt at once, inside JAX or orbax, and runs
  # exited with a segmentation fault (139) instead of status 130.
  previous_term = signal.getsignal(signal.SIGTERM)
  previous = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert 'received SIGTERM' in capsys.readouterr().err
    interrupts.request_stop()
  finally:
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGTERM, previous_term)
  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()
  interrupts.raise_if_requested()  # The request was cleared.


def test_first_ctrl_c_prints_hint(capsys):
  previous_term = signal.getsignal(signal.SIGTERM)
  previous = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert 'press Ctrl-C again' in capsys.readouterr().err
  finally:
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGTERM, previous_term)
  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()
