"""fedjax_med.interrupts: Ctrl-C as a stop request between rounds."""

import os
import pathlib
import signal
import subprocess
import sys
import time

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


def _stderr_soon(capfd, text):
  """Return stderr once it contains `text`; the signal thread prints it."""
  seen = ''
  for _ in range(200):
    seen += capfd.readouterr().err
    if text in seen:
      break
    time.sleep(0.01)
  return seen


def test_first_signal_requests_stop(capfd):
  # SIGTERM raised KeyboardInterrupt at once, inside JAX or orbax, and runs
  # exited with a segmentation fault (139) instead of status 130.
  previous_term = signal.getsignal(signal.SIGTERM)
  restore = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert 'received SIGTERM' in _stderr_soon(capfd, 'received SIGTERM')
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_requested()
    interrupts.raise_if_requested()  # The request was cleared.
  finally:
    restore()
  assert signal.getsignal(signal.SIGTERM) == previous_term


def test_first_ctrl_c_prints_hint(capfd):
  previous = signal.getsignal(signal.SIGINT)
  restore = interrupts.defer_ctrl_c(unit='condition')
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert 'after the current condition; press Ctrl-C again' in (
        _stderr_soon(capfd, 'press Ctrl-C again'))
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_requested()
  finally:
    restore()
  assert signal.getsignal(signal.SIGINT) == previous


_INSIDE_XLA = """
import os, signal, threading, time
import jax, jax.numpy as jnp
from fedjax_med import interrupts
interrupts.defer_ctrl_c(stopped='stopped at once inside XLA')

def press_twice():
  time.sleep(1)
  os.kill(os.getpid(), signal.{signal})
  time.sleep(1)
  os.kill(os.getpid(), signal.{signal})

threading.Thread(target=press_twice, daemon=True).start()
# float32 stops counting at 2**24, so this loop never ends.
forever = jax.jit(lambda v: jax.lax.while_loop(
    lambda v: v >= 0, lambda v: v + 1.0, v))
forever(jnp.float32(0)).block_until_ready()
print('returned')
"""


@pytest.mark.parametrize('name', ['SIGINT', 'SIGTERM'])
def test_second_signal_stops_inside_xla(name):
  # Python runs handlers between bytecodes, so while the main thread waited
  # on a compiled round, neither signal did anything until it returned: a
  # run of 1e7 local steps kept going after a second Ctrl-C or SIGTERM.
  result = subprocess.run(
      [sys.executable, '-c', _INSIDE_XLA.format(signal=name)],
      capture_output=True, text=True, timeout=120, check=False,
      env={**os.environ, 'PYTHONPATH': str(ROOT)})

  assert result.returncode == 130
  assert 'stopping after the current round' in result.stderr or (
      'received SIGTERM' in result.stderr)
  assert 'stopped at once inside XLA' in result.stderr
  assert 'returned' not in result.stdout
