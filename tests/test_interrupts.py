"""fedjax_med.interrupts: Ctrl-C as a stop request between rounds."""

import os
import signal

import pytest

from fedjax_med import interrupts


def test_request_raises_once():
  interrupts.request_stop()

  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()
  interrupts.raise_if_requested()  # The request was cleared.


def test_first_ctrl_c_requests_second_raises(capsys):
  previous_term = signal.getsignal(signal.SIGTERM)
  previous = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert 'press Ctrl-C again' in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGTERM, previous_term)
  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()


def test_second_ctrl_c_raises_after_request_consumed(capsys):
  # The loop had already turned the first Ctrl-C into its interrupt, and
  # the second one only printed the first message again.
  previous_term = signal.getsignal(signal.SIGTERM)
  previous = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_requested()
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
    assert 'press Ctrl-C again' not in capsys.readouterr().err
  finally:
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGTERM, previous_term)


def test_sigterm_requests_stop_then_raises(capsys):
  # SIGTERM raised KeyboardInterrupt at once, inside JAX or orbax, and runs
  # exited with a segmentation fault (139) instead of status 130.
  previous_term = signal.getsignal(signal.SIGTERM)
  previous = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert 'received SIGTERM' in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGTERM)
  finally:
    signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGTERM, previous_term)
  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()
