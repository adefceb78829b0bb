"""Per-round metrics as TensorBoard scalars, written with tensorboardX.

`RoundLogger` writes every numeric field of a round's record under its own
name (`train_loss`, `mean_accuracy`, `epsilon`, ...) and each client's test
accuracy as `test_accuracy/<client>` (a survival study's C-index as
`test_c_index/<client>`), with the round number as the step.
TensorBoard tags allow letters, digits, '-', '_' and '.', so other
characters in a client name become '_' (`client_tags`), and names that
would then clash get the client's index appended.
Open the run with `tensorboard --logdir <run folder>/tensorboard`.

tensorboardX is optional: install it with `pip install 'fedjax_med[tensorboard]'`.
"""

import collections
import pathlib
import re
import struct
from typing import Any

from fedjax_med.errors import InputError

# Record fields that are not metrics.
_NOT_SCALARS = ('round',)


def require() -> None:
  """Raise `InputError` when tensorboardX is not installed."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise InputError(
        'TensorBoard logging needs the tensorboardX package. Install it with '
        "`pip install 'fedjax_med[tensorboard]'`, or run without it."
    ) from None


def client_tags(names, prefix: str = 'test_accuracy') -> dict[str, str]:
  """Return a distinct TensorBoard tag `<prefix>/<name>` for each client name.

  tensorboardX replaces characters outside [-\\w.] with '_' and only logs
  it, so 'St Mary' and 'St_Mary' would share one curve. A name whose
  cleaned form is shared gets '_<index>', its position in `names`.
  """
  cleaned = [re.sub(r'[^-\w.]', '_', str(name)) for name in names]
  counts = collections.Counter(cleaned)
  tags = {}
  used = set()
  for index, (name, tag) in enumerate(zip(names, cleaned)):
    if counts[tag] > 1:
      tag = f'{tag}_{index}'
    while tag in used:
      tag = f'{tag}_{index}'
    used.add(tag)
    tags[name] = f'{prefix}/{tag}'
  return tags


class RoundLogger:
  """Write round records to a TensorBoard event file in `logdir`.

  Args:
    logdir: folder of the event files.
    purge: have TensorBoard drop every event of earlier files in `logdir`.
      A resumed run sets it and writes all its rounds again, so no round
      shows twice and none is lost with a killed process's unflushed events.
  """

  def __init__(self, logdir: pathlib.Path, purge: bool = False):
    require()
    import tensorboardX  # pylint: disable=g-import-not-at-top

    self._writer = tensorboardX.SummaryWriter(
        str(logdir), purge_step=1 if purge else None, flush_secs=10,
    )

  def write(self, record: dict[str, Any],
            per_client: dict[str, float | None] | None = None,
            per_client_tag: str = 'test_accuracy') -> None:
    """Write the numeric fields of one round's `record`.

    Booleans are written as 0 or 1; missing values (None) are skipped.
    `per_client` values go under `<per_client_tag>/<client>`.
    """
    step = record['round']
    for name, value in record.items():
      if name in _NOT_SCALARS or isinstance(value, (dict, list, str)):
        continue
      if value is None:
        continue
      self._writer.add_scalar(name, float(value), step)
    tags = client_tags(list(per_client or {}), per_client_tag)
    for client, value in (per_client or {}).items():
      if value is not None:
        self._writer.add_scalar(tags[client], float(value), step)

  def close(self) -> None:
    self._writer.close()


def read_scalars(logdir: pathlib.Path | str) -> dict[str, dict[int, float]]:
  """Return every scalar in `logdir`'s event files as `{tag: {step: value}}`.

  Files are read in name order (their names start with the time they were
  opened). A purge marker that a resumed run wrote removes the earlier
  values from its step on, as TensorBoard does.

  Raises:
    InputError: when `logdir` contains no event file.
  """
  require()
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  files = sorted(pathlib.Path(logdir).glob('events.out.tfevents.*'))
  if not files:
    raise InputError(
        f'No TensorBoard event file in {logdir}. Run the study with '
        'tensorboard=True (`--tensorboard` on the command line).'
    )
  scalars: dict[str, dict[int, float]] = {}
  for path in files:
    for payload in _records(path.read_bytes()):
      event = event_pb2.Event.FromString(payload)
      if event.HasField('session_log') and (
          event.session_log.status == event.session_log.START):
        for values in scalars.values():
          for step in [step for step in values if step >= event.step]:
            del values[step]
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def _records(data: bytes):
  """Yield the payloads of a TFRecord file; a record cut short ends it."""
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack_from('<Q', data, offset)
    start = offset + 12
    if start + length + 4 > len(data):
      return
    yield data[start:start + length]
    offset = start + length + 4
