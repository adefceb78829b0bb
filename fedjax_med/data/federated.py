"""Federated datasets as padded arrays with a leading `clients` axis.

Every client's examples are stacked into one array per field, padded with
zeros up to the largest client, so the whole population is a pytree that
`jax.vmap` maps over. `num_examples` contains each client's real example count;
masks over padding rows are derived from it and padding is never read as data.
"""

import dataclasses
import importlib.resources
import pathlib
from typing import NamedTuple, Sequence
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import tree
from fedjax_med.errors import InputError


class FederatedData(NamedTuple):
  """Examples of every client, padded to a common length.

  Attributes:
    examples: dict of arrays shaped `[clients, examples, ...]`. Tabular data
      uses `x` (`[clients, examples, features]`, float32) and `y`
      (`[clients, examples]`, int32 class labels).
    num_examples: `[clients]` int32, the number of real rows of each client.
      Rows at index `num_examples[c]` and beyond are padding.
  """

  examples: dict[str, jax.Array | np.ndarray]
  num_examples: jax.Array | np.ndarray

  @property
  def num_clients(self) -> int:
    return int(self.num_examples.shape[0])

  @property
  def max_examples(self) -> int:
    return int(jax.tree.leaves(self.examples)[0].shape[1])

  def example_mask(self) -> jax.Array:
    """Return a `[clients, examples]` bool mask, True on real rows."""
    positions = jnp.arange(self.max_examples)
    return positions[None, :] < jnp.asarray(self.num_examples)[:, None]

  def client(self, index: int) -> dict[str, np.ndarray]:
    """Return the real (unpadded) rows of client `index` as numpy arrays."""
    count = int(self.num_examples[index])
    return {
        name: np.asarray(value[index, :count])
        for name, value in self.examples.items()
    }


def stack_clients(
    client_examples: Sequence[dict[str, np.ndarray]],
) -> FederatedData:
  """Pad per-client arrays to the largest client and stack them.

  Args:
    client_examples: one dict per client, each mapping a field name to an
      array shaped `[examples, ...]`. Every client has the same fields, and a
      field has the same trailing shape for every client. A field's dtype is
      the common type of all clients' arrays (numpy's `result_type`), so an
      integer client next to a float one is not truncated. A client may have
      zero rows.

  Returns:
    A `FederatedData` whose arrays are numpy arrays; `jax.device_put` it to
    move it to an accelerator.

  Raises:
    InputError: if there are no clients, or the clients disagree on the
      field names, a field's trailing shape or the lengths of their fields.
  """
  if not client_examples:
    raise InputError('A federated dataset needs at least one client; got 0.')
  names = sorted(client_examples[0])
  counts = []
  for index, examples in enumerate(client_examples):
    if sorted(examples) != names:
      raise InputError(
          f'Client {index} has fields {sorted(examples)}, expected {names}.'
      )
    lengths = {len(examples[name]) for name in names}
    if len(lengths) != 1:
      raise InputError(
          f'Client {index} has fields of different lengths: {lengths}.'
      )
    counts.append(lengths.pop())
  max_examples = max(max(counts), 1)

  stacked = {}
  for name in names:
    arrays = [np.asarray(examples[name]) for examples in client_examples]
    trailing = arrays[0].shape[1:]
    for index, array in enumerate(arrays):
      if array.shape[1:] != trailing:
        raise InputError(
            f'Client {index} has field {name!r} shaped {array.shape}, but '
            f'client 0 has trailing shape {trailing}. Give every client the '
            'same trailing shape.'
        )
    dtype = np.result_type(*arrays)
    padded = np.zeros((len(arrays), max_examples) + trailing, dtype)
    for index, array in enumerate(arrays):
      padded[index, : counts[index]] = array
    stacked[name] = padded
  return FederatedData(stacked, np.asarray(counts, dtype=np.int32))


def check_federated_data(
    data: FederatedData, *, name: str, num_classes: int | None = None,
) -> None:
  """Raise ValueError unless `data` is a valid padded population.

  Training and evaluation run the same checks. The checks that read values
  skip traced data, such as the stacked points of a batched sweep.

  Args:
    data: the population to check.
    name: the argument's name, such as 'train_data', for the messages.
    num_classes: the classifier's number of classes. If given, the examples
      must contain features `x` and labels `y`, and every real row's label
      must be an integer in [0, num_classes).

  Raises:
    ValueError: if `num_examples` is not shaped [clients], a field is not
      shaped [clients, examples, ...] with the same clients and padded
      length as the others, `num_examples` is outside [0, padded length],
      a real row contains NaN or infinity in a floating-point field, or, with
      `num_classes`, if the examples lack `x` or `y`, the labels are not
      integers shaped [clients, examples] or a real row's label is outside
      [0, num_classes).
  """
  _check_layout(data, name)
  _check_counts(data, name)
  _check_finite(data, name)
  if num_classes is not None:
    _check_labels(data, name, num_classes)


def _check_layout(data: FederatedData, name: str) -> None:
  """Check the shapes only, so that traced data is checked too."""
  counts_shape = jnp.shape(data.num_examples)
  if len(counts_shape) != 1:
    raise ValueError(
        f'`{name}.num_examples` must be shaped [clients]; got '
        f'{counts_shape}.')
  fields = jax.tree_util.tree_leaves_with_path(data.examples)
  if not fields:
    raise ValueError(
        f'`{name}.examples` has no arrays; it needs one per field, each '
        'shaped [clients, examples, ...].')
  num_clients = counts_shape[0]
  first_field, padded = None, None
  for path, value in fields:
    field = f'{name}.examples{jax.tree_util.keystr(path)}'
    shape = jnp.shape(value)
    if len(shape) < 2 or shape[0] != num_clients:
      raise ValueError(
          f'`{field}` is shaped {shape}, but every field must be shaped '
          f'[clients, examples, ...] with the {num_clients} clients of '
          f'`{name}.num_examples`. Build the data with '
          '`federated.stack_clients`.'
      )
    dtype = _given_dtype(value)
    # Kinds, not issubdtype: numpy counts timedelta64 as an integer, and
    # float128 is real but has no JAX type.
    if not (dtype.kind in 'biu' or (jnp.issubdtype(dtype, jnp.floating)
                                    and dtype.itemsize <= 8)):
      raise ValueError(
          f'`{field}` has dtype {dtype}, but fields must hold bools, integers '
          'or real floating-point numbers. Convert it, for example with '
          '`np.asarray(values, dtype=np.float32)`, after replacing entries '
          'such as None or strings.'
      )
    if first_field is None:
      first_field, padded = field, shape[1]
    elif shape[1] != padded:
      raise ValueError(
          f'`{field}` is padded to {shape[1]} examples (axis 1), but '
          f'`{first_field}` to {padded}; every field needs the same padded '
          'length. Build the data with `federated.stack_clients`.'
      )


def _check_counts(data: FederatedData, name: str) -> None:
  counts = data.num_examples
  if tree.is_traced(counts):
    return
  counts = np.asarray(counts)
  padded = data.max_examples
  if not np.issubdtype(counts.dtype, np.integer) or (
      counts.min(initial=0) < 0 or counts.max(initial=0) > padded):
    raise ValueError(
        f'`{name}.num_examples` must be integers in [0, padded length '
        f'{padded}]; got values from {counts.min(initial=0)} to '
        f'{counts.max(initial=0)} ({counts.dtype}). Build the data with '
        '`federated.stack_clients`.'
    )


def _first_row(bad: np.ndarray) -> tuple[int, int]:
  """Return `(client, row)` of the first True entry of a `[clients, rows]` mask."""
  client = int(np.flatnonzero(bad.any(axis=1))[0])
  return client, int(np.flatnonzero(bad[client])[0])


def _given_dtype(value) -> np.dtype:
  """Return the dtype of `value` as given, before JAX canonicalizes it."""
  dtype = getattr(value, 'dtype', None)
  return np.dtype(dtype) if dtype is not None else np.asarray(value).dtype


def _check_integer_range(value, real, field: str) -> None:
  """Check that an integer field fits the type JAX reads it as.

  Without x64, JAX reads int64 as int32 and uint64 as uint32, and wraps
  larger values: 2**32 + 5 trained as 5.
  """
  dtype = _given_dtype(value)
  canonical = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
  if dtype.kind not in 'iu' or canonical.itemsize >= dtype.itemsize:
    return
  limits = np.iinfo(canonical)
  rows = np.asarray(value).reshape(value.shape[:2] + (-1,))
  bad = np.asarray(real) & ~np.all(
      (rows >= limits.min) & (rows <= limits.max), axis=-1)
  if bad.any():
    client, row = _first_row(bad)
    cells = rows[client, row]
    found = cells[(cells < limits.min) | (cells > limits.max)][0]
    raise ValueError(
        f'Client {client} has {found} in row {row} of `{field}`, outside '
        f'the {canonical} range that JAX reads {dtype} as without x64 '
        f'([{limits.min}, {limits.max}]). Rescale the value, or convert the '
        'field to float32.'
    )


def _check_finite(data: FederatedData, name: str) -> None:
  """Check that the real rows of every floating-point field are finite.

  A NaN or infinite input made the client's every update non-finite, so
  the round left it out in every round without an error. Padding rows
  may hold anything.
  """
  if tree.is_traced(data.num_examples):
    return
  real = data.example_mask()
  for path, value in jax.tree_util.tree_leaves_with_path(data.examples):
    if tree.is_traced(value):
      continue
    _check_integer_range(
        value, real, f'{name}.examples{jax.tree_util.keystr(path)}')
    if not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
      continue
    # Training reads float64 as float32 (JAX without x64), where 1e39 is
    # infinite. The message shows the value as given.
    given = value.reshape(value.shape[:2] + (-1,))
    with np.errstate(over='ignore'):
      rows = jnp.asarray(given, jnp.result_type(float))
    bad = np.asarray(real & ~jnp.all(jnp.isfinite(rows), axis=-1))
    if not bad.any():
      continue
    client, row = _first_row(bad)
    column = int(jnp.argmax(~jnp.isfinite(rows[client, row])))
    found = given[client, row, column]
    raise ValueError(
        f'Client {client} has {found} in row {row} of '
        f'`{name}.examples{jax.tree_util.keystr(path)}`, which is not a '
        f'finite {rows.dtype} number. Replace the value (for example, impute '
        'a missing feature or rescale it) or remove the row.'
    )


def check_survival_data(data: FederatedData, *, name: str) -> None:
  """Raise ValueError unless `data` contains survival rows a Cox model reads.

  The examples must contain `x`, `time` and `event`. On the real rows of
  concrete data, each time must be finite and at least 0 and each event 0
  or 1. The Cox loss counts any nonzero event as a death, so an event of
  -1 meant as "unknown" trained as one without an error.
  """
  missing = sorted({'x', 'time', 'event'} - set(data.examples))
  if missing:
    raise ValueError(
        f'`{name}.examples` lacks {missing}; a Cox model reads features '
        "from 'x', follow-up times from 'time' and events (1 death, 0 "
        f"censored) from 'event'. Got keys {sorted(data.examples)}."
    )
  times, events = data.examples['time'], data.examples['event']
  if any(tree.is_traced(value)
         for value in (times, events, data.num_examples)):
    return
  real = np.asarray(data.example_mask())
  times, events = np.asarray(times), np.asarray(events)
  for field, values, bad, fix in (
      ('time', times,
       real & ~(np.isfinite(times.astype(np.float64)) & (times >= 0)),
       'Follow-up times are durations of at least 0.'),
      ('event', events, real & (events != 0) & (events != 1),
       'Code a death as 1 and a censored row as 0, and drop rows whose '
       'outcome is unknown.')):
    if bad.any():
      client, row = _first_row(bad)
      raise ValueError(
          f"Client {client} has {field} {values[client, row]} in row {row} "
          f"of `{name}.examples['{field}']`. {fix}"
      )


def _check_labels(data: FederatedData, name: str, num_classes: int) -> None:
  missing = sorted({'x', 'y'} - set(data.examples))
  if missing:
    raise ValueError(
        f'`{name}.examples` lacks {missing}; a classifier reads features '
        f"from 'x' and labels from 'y'. Got keys {sorted(data.examples)}."
    )
  labels = data.examples['y']
  if tree.is_traced(labels) or tree.is_traced(data.num_examples):
    return
  # numpy keeps int64 labels as they are; jnp.asarray would wrap 2**32 to 0
  # without x64.
  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"`{name}.examples['y']` must be integer class labels shaped "
        f'[clients, examples]; got {labels.dtype} {labels.shape}.'
        + (' Convert them with `.astype(np.int32)`.' if labels.ndim == 2
           else '')
    )
  bad = np.asarray(data.example_mask()) & (
      (labels < 0) | (labels >= num_classes))
  if bad.any():
    client, row = _first_row(bad)
    raise ValueError(
        f'Client {client} has label {int(labels[client, row])} in row {row} '
        f'of `{name}`, outside [0, {num_classes}) for '
        f'num_classes={num_classes}. Map the labels to 0 .. num_classes - 1 '
        "or raise the model's num_classes."
    )


@dataclasses.dataclass(frozen=True)
class FederatedDataset:
  """A federated train/test split with its description.

  Attributes:
    name: short dataset name, written to run outputs.
    train: training examples of every client.
    test: test examples of every client, same client order as `train`.
    client_names: one name per client, such as the hospital.
    feature_names: names of the columns of `x`.
    num_classes: number of label classes; 2 means binary.
    source_files: files the data was read from, checksummed in run outputs.
  """

  name: str
  train: FederatedData
  test: FederatedData
  client_names: tuple[str, ...]
  feature_names: tuple[str, ...]
  num_classes: int
  source_files: tuple[pathlib.Path, ...] = ()

  @property
  def num_clients(self) -> int:
    return self.train.num_clients

  @property
  def num_features(self) -> int:
    return int(self.train.examples['x'].shape[-1])


def check_key(key) -> None:
  """Raise InputError unless `key` is one JAX PRNG key, typed or `uint32[2]`."""
  if isinstance(key, jax.Array):
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      if key.shape == ():
        return
    elif key.dtype == jnp.uint32 and key.shape == (2,):
      return
  if isinstance(key, jax.Array):
    found = f'an array of shape {key.shape} and dtype {key.dtype}'
  else:
    found = repr(key)
  raise InputError(
      '`key` must be a single JAX PRNG key such as `jax.random.key(0)`; got '
      f'{found}.'
  )


def check_test_fraction(value: float, *, allow_zero: bool = True) -> float:
  """Return `value` as a float, or raise InputError if it is not a fraction.

  Args:
    value: the share of each client's rows held out for testing.
    allow_zero: accept 0 (no test rows); else the range is (0, 1).
  """
  interval = '[0, 1)' if allow_zero else '(0, 1)'
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, float, np.integer, np.floating))
      or not (0.0 <= value < 1.0 if allow_zero else 0.0 < value < 1.0)):
    raise InputError(
        f'`test_fraction` must be a number in {interval}; got {value!r}.')
  return float(value)


def derived_seed(purpose: str, *entropy: int) -> int:
  """Return a 32-bit seed for `purpose` mixed from `entropy`, e.g. (seed, client).

  A sum such as `seed + client_index` gave client k under seed s + 1 the
  stream of client k + 1 under seed s, and two purposes given the same
  (seed, client) shared a stream. `np.random.SeedSequence` hashes the
  purpose's CRC-32 with the whole tuple, so other tuples or purposes give
  independent streams.
  """
  return int(np.random.SeedSequence(
      [zlib.crc32(purpose.encode('utf-8'))]
      + [int(value) for value in entropy]).generate_state(1)[0])


def check_seed(value: int) -> int:
  """Return `value` as an int, or raise InputError unless it is >= 0."""
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, np.integer)) or value < 0):
    raise InputError(
        f'`seed` must be an integer >= 0, as numpy seeds are; got {value!r}.')
  return int(value)


def check_count(name: str, value, upper: int | None = None, *,
                or_none: bool = False) -> int:
  """Return `value` as an int, or raise ValueError unless a count >= 1.

  Python and numpy integers pass, and 0-d integer arrays of numpy or JAX
  (not traced). Bools and floats are rejected, even a float with an
  integer value such as 3.0.

  Args:
    name: the argument's name, for the message.
    value: the value to check.
    upper: the largest allowed value, or None for no bound.
    or_none: mention in the message that None is also allowed.
  """
  if (not isinstance(value, (int, np.integer))
      and getattr(value, 'shape', None) == ()
      and np.issubdtype(getattr(value, 'dtype', np.float32), np.integer)):
    try:
      value = value.item()  # A concrete 0-d integer array.
    except TypeError:
      pass  # A tracer (ConcretizationTypeError), rejected below.
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, np.integer)) or value < 1
      or (upper is not None and value > upper)):
    allowed = ('of at least 1' if upper is None
               else f'in [1, {upper}]') + (' or None' if or_none else '')
    raise ValueError(f'`{name}` must be an integer {allowed}; got {value!r}.')
  return int(value)


def bundled_folder(name: str) -> pathlib.Path:
  """Return the folder of a dataset bundled under `fedjax_med/data/files/`."""
  resource = importlib.resources.files('fedjax_med.data') / 'files' / name
  if isinstance(resource, pathlib.Path):
    return resource
  # NOTE: a zip import returns a Traversable that is not a path. This fallback
  # then points inside the zip, and reading fails with FileNotFoundError.
  return pathlib.Path(__file__).parent / 'files' / name


def corrupt_bundled_file(path: pathlib.Path, problem: str) -> InputError:
  """Return the error for a bundled data file that fails a check."""
  return InputError(
      f'Bundled file {path} is corrupt because {problem}. Reinstall '
      'fedjax_med to restore the original file.'
  )
