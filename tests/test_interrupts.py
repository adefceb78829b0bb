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
  previous = interrupts.defer_ctrl_c()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert 'press Ctrl-C again' in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    signal.signal(signal.SIGINT, previous)
  with pytest.raises(KeyboardInterrupt):
    interrupts.raise_if_requested()
