"""Host-side numpy preprocessing for tabular federated datasets.

The loaders split each client's rows into train and test sets, z-score the
features with statistics of that client's train rows, and stack the clients
into padded arrays. `load_csv` applies the same steps to a user's CSV file
with one client column and one label column.
"""

import csv
import math
import re
import pathlib
from typing import Sequence
import unicodedata

import numpy as np

from fedjax_med.data import federated
from fedjax_med.errors import InputError

# Added to the standard deviation so that constant columns divide by a
# nonzero number, as FLamby's Fed-Heart-Disease loader does.
# A train column whose std is at most this fraction of its largest
# magnitude is taken as constant and scaled by 1, as scikit-learn's
# StandardScaler does. Dividing by a near-zero std sent a test value that
# differs from the constant to about 1e9, and the model's output to 0 or 1.
CONSTANT_COLUMN_RTOL = 1e-9


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Split row indices into train and test sets, stratified on the label.

  The test set has `ceil(test_fraction * n)` rows, the rule of scikit-learn's
  `train_test_split`: 303 rows give 199 train and 104 test rows at 0.34. Each
  class contributes test rows in proportion to its size, rounded by largest
  remainder so that the total is exact. When some class has 2 rows or fewer,
  the split is a plain shuffled split instead, the rule FLamby applies to
  Fed-Heart-Disease, where Switzerland has a single negative row.

  Args:
    labels: `[examples]` class labels of one client.
    test_fraction: fraction of rows in the test set, in (0, 1).
    seed: seed of `np.random.default_rng`. The same seed gives the same split.

  Returns:
    `(train_indices, test_indices)`, two sorted int64 arrays that together
    hold every index in `range(len(labels))` once.

  Raises:
    InputError: if `test_fraction` is not in (0, 1), `seed` is not an
      integer >= 0 or `labels` is not 1-D.
  """
  federated.check_test_fraction(test_fraction, allow_zero=False)
  seed = federated.check_seed(seed)
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise InputError(f'`labels` must be 1-D; got shape {labels.shape}.')
  num_rows = labels.shape[0]
  num_test = math.ceil(test_fraction * num_rows)
  rng = np.random.default_rng(seed)

  classes, class_counts = np.unique(labels, return_counts=True)
  if num_rows == 0 or class_counts.min() <= 2:
    permutation = rng.permutation(num_rows)
    return np.sort(permutation[num_test:]), np.sort(permutation[:num_test])

  # Largest-remainder rounding of the per-class test counts.
  quotas = num_test * class_counts / num_rows
  class_test_counts = np.floor(quotas).astype(np.int64)
  shortfall = num_test - int(class_test_counts.sum())
  by_remainder = np.argsort(-(quotas - class_test_counts), kind='stable')
  class_test_counts[by_remainder[:shortfall]] += 1

  test_parts = []
  for label, class_test_count in zip(classes, class_test_counts):
    class_rows = rng.permutation(np.flatnonzero(labels == label))
    test_parts.append(class_rows[:class_test_count])
  test_indices = np.sort(np.concatenate(test_parts))
  train_indices = np.setdiff1d(np.arange(num_rows), test_indices)
  return train_indices, test_indices


def zscore(
    train_x: np.ndarray, test_x: np.ndarray,
    feature_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Standardize features with the mean and std of the train rows.

  The std uses ddof=1 (`column_scales`). A column that is constant over the
  train rows is only centered: it maps to 0 on those rows, and a test value
  v to v minus the constant. With no train rows the mean is taken as 0, and
  with fewer than 2 train rows the std is taken as 1, because the sample
  statistics are undefined.

  Args:
    train_x: `[examples, features]` train rows of one client.
    test_x: `[examples, features]` test rows of the same client.

  Returns:
    `(train_x, test_x)` standardized, as float32 arrays.
  """
  train_x = np.asarray(train_x, dtype=np.float64)
  test_x = np.asarray(test_x, dtype=np.float64)
  num_features = train_x.shape[1]

  mean = np.zeros(num_features)
  std = np.ones(num_features)
  # Huge finite values overflow the std (zeroing the column) or the
  # float32 cast; both are reported below instead of warned about.
  with np.errstate(over='ignore', invalid='ignore'):
    if train_x.shape[0] >= 1:
      mean = train_x.mean(axis=0)
    if train_x.shape[0] >= 2:
      std = train_x.std(axis=0, ddof=1)
    scale = column_scales(train_x, std)
    train_z = ((train_x - mean) / scale).astype(np.float32)
    test_z = ((test_x - mean) / scale).astype(np.float32)
  finite = (np.isfinite(mean) & np.isfinite(std)
            & np.all(np.isfinite(train_z), axis=0)
            & np.all(np.isfinite(test_z), axis=0))
  if not np.all(finite):
    column = int(np.argmin(finite))
    largest = float(np.max(np.abs(np.concatenate(
        [train_x[:, column], test_x[:, column]]))))
    name = (f'column {column}' if feature_names is None
            else repr(feature_names[column]))
    raise InputError(
        f'Feature {name} has values up to {largest:.3g} in '
        'magnitude, too large to standardize in float32. Rescale that '
        'column, for example by changing its unit.'
    )
  return train_z, test_z


def column_scales(train_x: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Return `std`, with 1 for the columns that are constant in `train_x`.

  A column is constant when its std is at most `CONSTANT_COLUMN_RTOL` times
  its largest magnitude, which also covers the rounding error of the mean
  of equal values.
  """
  largest = np.max(np.abs(train_x), axis=0, initial=0.0)
  constant = std <= CONSTANT_COLUMN_RTOL * largest
  return np.where(constant, 1.0, std)


def split_and_stack(
    client_x: list[np.ndarray],
    client_y: list[np.ndarray],
    client_splits: list[tuple[np.ndarray, np.ndarray]],
    feature_names: Sequence[str] | None = None,
    *,
    standardize: bool = True,
) -> tuple[federated.FederatedData, federated.FederatedData]:
  """Z-score every client from its train rows and stack train and test sets.

  Args:
    client_x: one `[examples, features]` array per client.
    client_y: one `[examples]` integer label array per client.
    client_splits: one `(train_indices, test_indices)` pair per client.
    feature_names: names of the feature columns, for error messages.
    standardize: False keeps the raw features, as float64, for a caller
      that re-splits the rows into new clients and z-scores those.

  Returns:
    `(train, test)` padded `FederatedData`, with float32 `x` (float64 when
    not standardized) and int32 `y`.
  """
  train_clients = []
  test_clients = []
  for x, y, (train_indices, test_indices) in zip(
      client_x, client_y, client_splits
  ):
    if standardize:
      train_x, test_x = zscore(x[train_indices], x[test_indices],
                               feature_names)
    else:
      x = np.asarray(x, np.float64)
      train_x, test_x = x[train_indices], x[test_indices]
    labels = np.asarray(y, dtype=np.int32)
    train_clients.append({'x': train_x, 'y': labels[train_indices]})
    test_clients.append({'x': test_x, 'y': labels[test_indices]})
  return (
      federated.stack_clients(train_clients),
      federated.stack_clients(test_clients),
  )


def _read_header(reader, path: pathlib.Path) -> list[str]:
  """Return the stripped cells of the first non-blank row."""
  for header in reader:
    if any(cell.strip() for cell in header):
      header = [cell.strip() for cell in header]
      break
  else:
    raise InputError(f'CSV file {path} is empty. Write a header row, then one '
                     'row per example.')
  for position, name in enumerate(header, start=1):
    if not name:
      raise InputError(f'CSV file {path}: header cell {position} is empty. '
                       'Give every column a name.')
    if header.count(name) > 1:
      raise InputError(f'CSV file {path}: the header names column {name!r} '
                       'more than once. Give every column a unique name.')
  return header


def _column_index(
    header: list[str], column: str, role: str, path: pathlib.Path
) -> int:
  if column not in header:
    if len(header) == 1 and any(mark in header[0] for mark in ';\t|'):
      raise InputError(
          f'CSV file {path} has one column, {header[0]!r}: its cells seem '
          'separated by another character than a comma. Save it with '
          'commas between the cells.'
      )
    raise InputError(
        f'CSV file {path} has no {role} column {column!r}. The header has '
        f'columns {header}. Pass one of them as `{role}_column`.'
    )
  return header.index(column)


# A decimal number as CSV files write it. Python's float() also takes
# underscores between digits ('1_000') and non-ASCII digits, which this
# rejects.
_DECIMAL = re.compile(r'[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?')


def _check_decimal(text: str, where: str, column: str) -> None:
  """Raise InputError unless `text`, a finite float, is written plainly."""
  if _DECIMAL.fullmatch(text):
    return
  if '_' in text:
    raise InputError(
        f'{where}, column {column!r}: {text!r} contains an underscore, which '
        f'is not part of a CSV number. Write it as {text.replace("_", "")!r}.'
    )
  raise InputError(
      f'{where}, column {column!r}: {text!r} is not a decimal number written '
      'with the digits 0-9. Write it as, for example, 12, -0.5 or 1e-3.'
  )


def _parse_number(cell: str, where: str, column: str) -> float:
  text = cell.strip()
  if not text:
    raise InputError(f'{where}, column {column!r}: the cell is empty. '
                     'Fill in a number or remove the row.')
  try:
    value = float(text)
  except ValueError:
    raise InputError(f'{where}, column {column!r}: {text!r} is not a number. '
                     'Replace it with a number.') from None
  if not math.isfinite(value):
    raise InputError(f'{where}, column {column!r}: {text!r} is not a finite '
                     'number. Replace it or remove the row.')
  _check_decimal(text, where, column)
  return value


def _parse_label(cell: str, where: str, column: str) -> int:
  text = cell.strip()
  try:
    value = float(text)
  except ValueError:
    raise InputError(
        f'{where}, column {column!r}: label {text!r} is not a class number. '
        'Labels are integer class ids 0, 1, ...; encode names such as no/yes '
        'as 0/1.'
    ) from None
  if not math.isfinite(value) or value < 0 or not value.is_integer():
    raise InputError(f'{where}, column {column!r}: label {cell.strip()!r} is '
                     'not a whole number >= 0. Use integer class labels.')
  _check_decimal(text, where, column)
  return int(value)


def _check_distinct_names(path, column: str, names) -> None:
  """Raise if two client ids print alike but differ in their code points.

  `Hospital A` with a no-break space, or `Café` with a combining accent,
  made a second client that printed like the first.
  """
  seen = {}
  for name in names:
    key = ' '.join(unicodedata.normalize('NFKC', name).split())
    if key in seen:
      raise InputError(
          f'CSV file {path}, column {column!r}: the client ids '
          f'{ascii(seen[key])} and {ascii(name)} print alike but differ in '
          'their Unicode code points (for example a no-break space or a '
          'combining accent), so they would be two clients. Write the id '
          'the same way in every row.')
    seen[key] = name


def _check_client_id(client_id: str, where: str, column: str) -> None:
  """Raise InputError if the id contains an invisible character.

  Control characters (such as NUL) and format characters (such as a zero
  width space) would make an id that prints like another client's but
  names a separate client.
  """
  for position, character in enumerate(client_id, start=1):
    if unicodedata.category(character) in ('Cc', 'Cf'):
      raise InputError(
          f'{where}, column {column!r}: the client id {client_id!r} contains '
          f'the invisible character U+{ord(character):04X} at character '
          f'{position}. Remove it, so that rows of one client have the same '
          'id.'
      )


def _read_rows(path: pathlib.Path, client_column: str, label_column: str):
  """Parse the CSV into client ids, features, labels and feature names.

  Also returns a dict from each label value to its text as first written,
  for messages.
  """
  with path.open(newline='', encoding='utf-8-sig') as file:
    reader = csv.reader(file)
    try:
      return _parse_rows(reader, path, client_column, label_column)
    except csv.Error as error:
      raise InputError(
          _csv_error_message(path, reader.line_num, error)) from None


def _csv_error_message(path: pathlib.Path, line: int, error: csv.Error) -> str:
  text = str(error)
  if 'field larger than field limit' in text:
    return (
        f'CSV file {path}, line {line}: a cell is longer than '
        f'{csv.field_size_limit():,} characters ({text}). Cells for this '
        'loader are numbers and client ids, so check for a quote that is '
        'never closed, which makes the rest of the file one cell.'
    )
  return (f'CSV file {path}, line {line}: the row cannot be read as CSV '
          f'({text}). Fix the quoting of that row.')


def _parse_rows(reader, path: pathlib.Path, client_column: str,
                label_column: str):
  header = _read_header(reader, path)
  client_index = _column_index(header, client_column, 'client', path)
  label_index = _column_index(header, label_column, 'label', path)
  feature_indices = [
      i for i in range(len(header)) if i not in (client_index, label_index)
  ]
  if not feature_indices or client_index == label_index:
    raise InputError(
        f'CSV file {path} needs a client column, a different label column '
        f'and at least one feature column. The header has columns {header}.'
    )

  client_ids, features, labels = [], [], []
  label_texts = {}
  for row in reader:
    if not any(cell.strip() for cell in row):
      continue  # Blank lines carry no example.
    where = (f'CSV file {path}, line {reader.line_num} (data row '
             f'{len(labels) + 1}, counting from 1 after the header)')
    if len(row) != len(header):
      raise InputError(f'{where}: the row has {len(row)} cells but the '
                       f'header has {len(header)}. Fix the row.')
    client_id = row[client_index].strip()
    if not client_id:
      raise InputError(f'{where}, column {client_column!r}: the cell is '
                       'empty. Fill in the client id.')
    _check_client_id(client_id, where, client_column)
    client_ids.append(client_id)
    label = _parse_label(row[label_index], where, label_column)
    label_texts.setdefault(label, row[label_index].strip())
    labels.append(label)
    features.append([
        _parse_number(row[i], where, header[i]) for i in feature_indices
    ])

  if not labels:
    raise InputError(f'CSV file {path} has a header but no data rows. Add '
                     'one row per example.')
  feature_names = tuple(header[i] for i in feature_indices)
  return (client_ids, np.asarray(features), np.asarray(labels),
          feature_names, label_texts)


def _check_label_set(
    path: pathlib.Path, label_column: str, label_texts: dict[int, str]
) -> None:
  """Raise unless the labels are exactly the classes 0, 1, ..., K - 1.

  `label_texts` maps each label value to its text in the file, which the
  messages show: a label of 1e300 stays 1e300, not a 301-digit integer.
  """
  found = sorted(label_texts)
  if len(found) < 2:
    raise InputError(
        f'CSV file {path}, column {label_column!r}: every row has label '
        f'{label_texts[found[0]]}. A classifier needs at least two classes.'
    )
  if found != list(range(len(found))):
    shown = ', '.join(label_texts[label] for label in found[:10])
    raise InputError(
        f'CSV file {path}, column {label_column!r}: labels must be the class '
        f'ids 0 to K - 1 with none missing; found {shown}. Renumber the '
        'classes, for example 0/5 as 0/1.'
    )


def load_csv(
    path: str | pathlib.Path,
    *,
    client_column: str,
    label_column: str,
    test_fraction: float = 0.34,
    seed: int = 0,
    standardize: bool = True,
) -> federated.FederatedDataset:
  """Load a federated dataset from a CSV file with one row per example.

  The file has a header row. One column names the client of each row (any
  text, such as a hospital id), one contains integer class labels >= 0, and
  every other column is a numeric feature. Clients are ordered by their first
  row in the file. Each client is split with `stratified_split`, using seed
  `federated.derived_seed('csv_split', seed, client_index)` so that
  clients and base seeds get independent shuffles, and is
  z-scored with `zscore` from its own train rows. Blank lines are skipped.

  Args:
    path: the CSV file, comma-separated, UTF-8.
    client_column: header name of the client id column.
    label_column: header name of the label column.
    test_fraction: fraction of each client's rows in its test set, in (0, 1).
    seed: base seed of the train/test splits.
    standardize: False keeps the raw float64 features, for a caller that
      re-splits the rows into new clients and z-scores those.

  Returns:
    A `FederatedDataset` named after the file stem, with
    `num_classes = max label + 1`.

  Raises:
    InputError: if `test_fraction` is not in (0, 1) or `seed` is not an
      integer >= 0, if the file is missing, empty, not UTF-8 text or not
      readable as CSV (such as a cell over `csv.field_size_limit()`
      characters), if the header lacks either column, or if a row has the
      wrong number of cells, an empty cell, a client id with a control or
      format character, a value that is not a finite decimal number with
      the digits 0-9 (no underscores), or a label that is not a whole
      number >= 0, or if the labels are not exactly 0 to K - 1 for
      some K >= 2 (every class present in the file). Row errors give the 1-based data row, not counting
      the header, and the file line.
  """
  federated.check_test_fraction(test_fraction, allow_zero=False)
  seed = federated.check_seed(seed)
  path = pathlib.Path(path)
  if path.is_dir():
    raise InputError(f'CSV path {path} is a folder. Pass the CSV file.')
  if not path.is_file():
    raise InputError(f'CSV file {path} not found. Check the path.')
  try:
    client_ids, features, labels, feature_names, label_texts = _read_rows(
        path, client_column, label_column
    )
  except UnicodeDecodeError as error:
    raise InputError(
        f'CSV file {path} is not UTF-8 text ({error}). Save it as UTF-8.'
    ) from None

  _check_label_set(path, label_column, label_texts)
  client_numbers = {}
  for client_id in client_ids:
    client_numbers.setdefault(client_id, len(client_numbers))
  client_names = tuple(client_numbers)
  _check_distinct_names(path, client_column, client_names)
  client_of_row = np.asarray([client_numbers[i] for i in client_ids])
  client_x, client_y, client_splits = [], [], []
  for client_index in range(len(client_names)):
    rows = client_of_row == client_index
    client_x.append(features[rows])
    client_y.append(labels[rows])
    client_splits.append(stratified_split(
        labels[rows], test_fraction=test_fraction,
        seed=federated.derived_seed('csv_split', seed, client_index)))

  try:
    train, test = split_and_stack(client_x, client_y, client_splits,
                                  feature_names, standardize=standardize)
  except InputError as error:
    raise InputError(f'{path}: {error}') from None
  return federated.FederatedDataset(
      name=path.stem,
      train=train,
      test=test,
      client_names=client_names,
      feature_names=feature_names,
      num_classes=int(labels.max()) + 1,
      source_files=(path,),
  )
