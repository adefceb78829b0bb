"""Stop requests that take effect between rounds.

Python's default Ctrl-C handler raises KeyboardInterrupt wherever the main
thread is, including inside callbacks from JAX's C++ code, where it can be
ignored or crash the process. The command line installs
`defer_ctrl_c`: the first Ctrl-C only records a request, which the study,
sweep and matrix loops turn into a KeyboardInterrupt between rounds with
`raise_if_requested`. A second Ctrl-C raises at once.
"""

from __future__ import annotations

import signal
import sys

_requested = False


def request_stop() -> None:
  """Ask the running loop to stop after its current round."""
  global _requested
  _requested = True


def raise_if_requested() -> None:
  """Raise KeyboardInterrupt once if a stop was requested, and clear it."""
  global _requested
  if _requested:
    _requested = False
    raise KeyboardInterrupt


def defer_ctrl_c():
  """Make the first Ctrl-C a stop request and a second one immediate.

  The second Ctrl-C raises at once even after a loop has turned the first
  into its KeyboardInterrupt, for example while the run writes its last
  checkpoint. Clears any earlier request. Returns the previous SIGINT
  handler, for `signal.signal` to restore.
  """
  global _requested
  _requested = False
  pressed = False

  def handle(signum, frame):
    nonlocal pressed
    del signum, frame
    if pressed:
      raise KeyboardInterrupt
    pressed = True
    request_stop()
    print('fedjax-med: stopping after the current round; press Ctrl-C '
          'again to stop at once.', file=sys.stderr, flush=True)

  return signal.signal(signal.SIGINT, handle)
