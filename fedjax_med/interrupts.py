"""Stop requests that take effect between rounds.

Python's default Ctrl-C handler raises KeyboardInterrupt wherever the main
thread is, including inside callbacks from JAX's C++ code, where it can be
ignored or crash the process. The command line installs
`defer_ctrl_c`: the first Ctrl-C only records a request, which the study,
sweep and matrix loops turn into a KeyboardInterrupt between rounds with
`raise_if_requested`. A second Ctrl-C ends the process at once.
"""

from __future__ import annotations

import os
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


def defer_ctrl_c(unit: str = 'round'):
  """Make the first Ctrl-C or SIGTERM a stop request and a second immediate.

  The second signal ends the process with status 130 through `os._exit`,
  even after a loop has turned the first into its KeyboardInterrupt, for
  example while the run writes its last checkpoint. Raising there instead,
  inside orbax's save, aborted the process (status 134) or printed an
  asyncio traceback. Finished rounds are on disk already, the run
  directory's lock is released with the process, and `--resume` skips a
  half-written checkpoint. SIGTERM, which job schedulers send before a
  kill, gets the same treatment. Clears any earlier request. Returns the
  previous SIGINT handler, for `signal.signal` to restore; the SIGTERM
  handler stays installed. `unit` names what finishes before the stop, in
  the message: a round for studies, a run or condition for scripts.
  """
  global _requested
  _requested = False
  pressed = False

  def handle(signum, frame):
    nonlocal pressed
    del frame
    if pressed:
      print('fedjax-med: stopped at once; --resume continues from the last '
            'saved checkpoint.', file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(130)  # pylint: disable=protected-access
    pressed = True
    request_stop()
    if signum == signal.SIGTERM:
      print('fedjax-med: received SIGTERM; stopping after the current '
            f'{unit}.', file=sys.stderr, flush=True)
    else:
      print(f'fedjax-med: stopping after the current {unit}; press Ctrl-C '
            'again to stop at once.', file=sys.stderr, flush=True)

  signal.signal(signal.SIGTERM, handle)
  return signal.signal(signal.SIGINT, handle)
