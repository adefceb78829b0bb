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
import threading
from typing import Callable

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


def defer_ctrl_c(unit: str = 'round',
                 stopped: str = 'fedjax-med: stopped at once; --resume '
                 'continues from the last saved checkpoint.'
                 ) -> Callable[[], None]:
  """Make the first Ctrl-C or SIGTERM a stop request and a second immediate.

  The second signal ends the process with status 130 through `os._exit`,
  even after a loop has turned the first into its KeyboardInterrupt, for
  example while the run writes its last checkpoint. Raising there instead,
  inside orbax's save, aborted the process (status 134) or printed an
  asyncio traceback. Finished rounds are on disk already, the run
  directory's lock is released with the process, and `--resume` skips a
  half-written checkpoint. SIGTERM, which job schedulers send before a
  kill, gets the same treatment. Clears any earlier request.

  Python runs signal handlers in the main thread between bytecodes, so a
  handler waits while the main thread is inside a long compiled XLA call,
  and a second Ctrl-C used to wait for the whole round. The handler only
  records the request, which no loop can read before the call returns
  anyway. A daemon thread reads the signal numbers from
  `signal.set_wakeup_fd`, prints the message at once and ends the process
  at the second signal while the main thread still waits on XLA.

  Args:
    unit: what finishes before the stop, in the message: a round for
      studies, a run or condition for scripts.
    stopped: the line printed when the second signal stops the process.

  Returns:
    A function that restores the previous SIGINT and SIGTERM handlers and
    wakeup fd, and ends the thread. Call it from the main thread.
  """
  global _requested
  _requested = False
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
  # The request is set here, in the main thread, so that it is set once
  # and before the loop's next check. The thread prints and counts.
  previous_int = signal.signal(signal.SIGINT,
                               lambda signum, frame: request_stop())
  previous_term = signal.signal(signal.SIGTERM,
                                lambda signum, frame: request_stop())
  watched = {int(signal.SIGINT), int(signal.SIGTERM)}

  def watch():
    pressed = False
    while True:
      try:
        numbers = os.read(read_end, 64)
      except OSError:
        return
      if not numbers:
        return  # `restore` closed the pipe.
      for signum in numbers:
        if signum not in watched:
          continue
        if pressed:
          print(stopped, file=sys.stderr, flush=True)
          sys.stdout.flush()
          os._exit(130)  # pylint: disable=protected-access
        pressed = True
        if signum == signal.SIGTERM:
          print('fedjax-med: received SIGTERM; stopping after the current '
                f'{unit}.', file=sys.stderr, flush=True)
        else:
          print(f'fedjax-med: stopping after the current {unit}; press '
                'Ctrl-C again to stop at once.', file=sys.stderr, flush=True)

  watcher = threading.Thread(target=watch, name='fedjax-med-signals',
                             daemon=True)
  watcher.start()

  def restore() -> None:
    signal.set_wakeup_fd(previous_fd)
    signal.signal(signal.SIGINT, previous_int)
    signal.signal(signal.SIGTERM, previous_term)
    os.close(write_end)
    watcher.join(timeout=5)
    os.close(read_end)

  return restore
