"""Exceptions that mark invalid user input.

The command line catches `InputError` and exits with status 2 and its message,
with no traceback. Library callers can catch it as a `ValueError`.
"""


class InputError(ValueError):
  """Invalid user input: a config value, a data file or a command-line flag."""


class DataCheckError(InputError):
  """Data files of a resume that changed, or that cannot be checked.

  A sweep stops at this error instead of recording the point as failed,
  because every later point would read the same files.
  """


class TrainingDiverged(RuntimeError):
  """The global model's parameters became NaN or infinite during a study."""


class StudyInterrupted(KeyboardInterrupt):
  """A study stopped by Ctrl-C; its finished rounds are already on disk.

  Attributes:
    run_dir: the run's output folder.
    rounds_done: number of rounds written to `metrics.jsonl`.
  """

  def __init__(self, run_dir, rounds_done: int):
    super().__init__(f'interrupted after {rounds_done} rounds')
    self.run_dir = run_dir
    self.rounds_done = rounds_done
