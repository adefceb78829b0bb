"""Exceptions that mark invalid user input.

The command line catches `InputError` and exits with status 2 and its message,
with no traceback. Library callers can catch it as a `ValueError`.
"""


class InputError(ValueError):
  """Invalid user input: a config value, a data file or a command-line flag."""
