"""Fed-Heart-Disease: the UCI Heart Disease data of four hospitals.

Each hospital is one client: Cleveland, Hungary, Switzerland and Long Beach
VA. The preprocessing follows FLamby's Fed-Heart-Disease loader: 740 patients
with 13 input features and a binary label (heart disease present or not). The
train/test membership of every row is read from a bundled table that
reproduces FLamby's per-hospital split.

References:
  Janosi, Steinbrunn, Pfisterer and Detrano. Heart Disease. UCI Machine
  Learning Repository, 1988. https://doi.org/10.24432/C52P4X

  Ogier du Terrail et al. FLamby: Datasets and Benchmarks for Cross-Silo
  Federated Learning in Realistic Healthcare Settings. NeurIPS 2022 Datasets
  and Benchmarks. https://arxiv.org/abs/2210.04620
"""

import csv
import pathlib

import numpy as np

from fedjax_med.data import federated
from fedjax_med.data import tabular

NAME = 'fed_heart_disease'
CLIENT_NAMES = ('cleveland', 'hungarian', 'switzerland', 'va')
FEATURE_NAMES = (
    'age', 'sex', 'trestbps', 'chol', 'fbs', 'thalach', 'exang', 'oldpeak',
    'cp_2', 'cp_3', 'cp_4', 'restecg_1', 'restecg_2',
)  # fmt: skip
SPLIT_TABLE = 'flamby_split_derived.csv'
_SPLIT_TABLE_COLUMNS = {'center', 'line', 'split', 'label_binary'}

# The 14 comma-separated columns of the processed.*.data files.
_RAW_COLUMNS = (
    'age', 'sex', 'cp', 'trestbps', 'chol', 'fbs', 'restecg', 'thalach',
    'exang', 'oldpeak', 'slope', 'ca', 'thal', 'num',
)  # fmt: skip
# FLamby drops these mostly missing columns before dropping incomplete rows.
_DROPPED_COLUMNS = ('slope', 'ca', 'thal')
_NUMERIC_FEATURES = FEATURE_NAMES[:8]
# Fixed levels of the one-hot features. The first level is the reference and
# gets no column, so every hospital has the same 13 columns even when it lacks
# a level.
_CATEGORICAL_LEVELS = {'cp': (1, 2, 3, 4), 'restecg': (0, 1, 2)}


def data_dir() -> pathlib.Path:
  """Return the folder of the bundled Fed-Heart-Disease files."""
  return federated.bundled_folder(NAME)


_corrupt = federated.corrupt_bundled_file


def _read_raw(path: pathlib.Path) -> np.ndarray:
  """Read a processed.*.data file as `[rows, 14]` float64, NaN for '?'."""
  rows = []
  for line_number, line in enumerate(path.read_text().splitlines(), start=1):
    cells = line.split(',')
    if len(cells) != len(_RAW_COLUMNS):
      raise _corrupt(path, f'line {line_number} has {len(cells)} values, '
                     f'expected {len(_RAW_COLUMNS)}')
    try:
      rows.append([np.nan if cell == '?' else float(cell) for cell in cells])
    except ValueError:
      raise _corrupt(path, f'line {line_number} has a value that is not a '
                     "number or '?'") from None
  return np.asarray(rows, dtype=np.float64).reshape(-1, len(_RAW_COLUMNS))


def _encode_features(raw: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """Build the `[rows, 13]` features, in `FEATURE_NAMES` order."""
  columns = [raw[:, _RAW_COLUMNS.index(name)] for name in _NUMERIC_FEATURES]
  for name, levels in _CATEGORICAL_LEVELS.items():
    values = raw[:, _RAW_COLUMNS.index(name)]
    if not np.isin(values, levels).all():
      raise _corrupt(path, f'column {name} has values outside {levels}')
    columns.extend((values == level).astype(np.float64) for level in levels[1:])
  return np.stack(columns, axis=1)


def _read_split_table(path: pathlib.Path) -> dict[str, list[dict[str, str]]]:
  """Group the rows of the split table by center, in file order."""
  table = {name: [] for name in CLIENT_NAMES}
  with path.open(newline='') as file:
    reader = csv.DictReader(file)
    missing = _SPLIT_TABLE_COLUMNS - set(reader.fieldnames or ())
    if missing:
      raise _corrupt(path, f'it lacks the columns {sorted(missing)}')
    for row in reader:
      center = row['center']
      if center not in table:
        raise _corrupt(path, f'it names an unknown center {center!r}')
      table[center].append(row)
  return table


def _split_indices(
    center: str,
    raw: np.ndarray,
    complete: np.ndarray,
    table_rows: list[dict[str, str]],
    table_path: pathlib.Path,
) -> tuple[np.ndarray, np.ndarray]:
  """Check the split table against one hospital's rows, return its split.

  Args:
    center: the hospital, named in errors.
    raw: `[rows, 14]` values of the hospital's file, NaN where missing.
    complete: `[rows]` bool, True on rows with no missing value after the
      dropped columns are removed.
    table_rows: the hospital's rows of the split table, in file order.
    table_path: the split table, named in errors.

  Returns:
    `(train_indices, test_indices)` into the complete rows, in file order.
  """
  lines = [row['line'] for row in table_rows]
  if lines != [str(line) for line in range(1, raw.shape[0] + 1)]:
    raise _corrupt(table_path, f'its {center} lines do not match the raw file')
  splits = np.asarray([row['split'] for row in table_rows])
  if not np.array_equal(splits == 'dropped', ~complete):
    raise _corrupt(table_path, f"its 'dropped' {center} rows are not the rows "
                   'with a missing value')
  labels = [row['label_binary'] for row in table_rows]
  if labels != [str(int(num > 0)) for num in raw[:, -1]]:
    raise _corrupt(table_path, f'its {center} labels do not match the raw '
                   'file')

  complete_splits = splits[complete]
  if not np.isin(complete_splits, ('train', 'test')).all():
    raise _corrupt(table_path, f"a complete {center} row is neither 'train' "
                   "nor 'test'")
  return (
      np.flatnonzero(complete_splits == 'train'),
      np.flatnonzero(complete_splits == 'test'),
  )


def load_heart_disease(*, standardize: bool = True
                       ) -> federated.FederatedDataset:
  """Load Fed-Heart-Disease with FLamby's preprocessing.

  Each hospital file is read as 14 columns with '?' as missing. The loader
  drops the columns slope, ca and thal, then every row that still has a
  missing value, which keeps 303/261/46/130 rows (740 in total). The label is
  `num > 0`. The features cp and restecg are one-hot encoded without their
  first level. Train/test membership comes from the bundled split table
  (199/104, 172/89, 30/16 and 85/45 rows). Each hospital is z-scored with the
  mean and std (ddof=1) of its train rows, and a column constant over them
  is only centered (`tabular.zscore`). Rows keep their file order within
  each set.

  A cholesterol of 0 means "not measured" in these files, but FLamby keeps it
  as a value, and so does this loader. Switzerland has chol = 0 in every row,
  so its z-scored chol column is 0.

  Args:
    standardize: False keeps the raw float64 features, for a caller that
      re-splits the rows into new clients and z-scores those.

  Returns:
    A `FederatedDataset` with 4 clients, 13 features and 2 classes, `x`
    float32 `[clients, examples, 13]` and `y` int32 in {0, 1}.

  Raises:
    InputError: if a bundled file is malformed or disagrees with the split
      table, in particular if the table's dropped rows are not exactly the
      rows with a missing value.
  """
  folder = data_dir()
  table_path = folder / SPLIT_TABLE
  table = _read_split_table(table_path)
  keep_columns = [
      i for i, name in enumerate(_RAW_COLUMNS) if name not in _DROPPED_COLUMNS
  ]

  raw_paths = []
  client_x, client_y, client_splits = [], [], []
  for name in CLIENT_NAMES:
    raw_path = folder / f'processed.{name}.data'
    raw = _read_raw(raw_path)
    complete = ~np.isnan(raw[:, keep_columns]).any(axis=1)
    client_splits.append(
        _split_indices(name, raw, complete, table[name], table_path)
    )
    client_x.append(_encode_features(raw[complete], raw_path))
    client_y.append((raw[complete, -1] > 0).astype(np.int32))
    raw_paths.append(raw_path)

  train, test = tabular.split_and_stack(client_x, client_y, client_splits,
                                        standardize=standardize)
  return federated.FederatedDataset(
      name=NAME,
      train=train,
      test=test,
      client_names=CLIENT_NAMES,
      feature_names=FEATURE_NAMES,
      num_classes=2,
      source_files=(*raw_paths, table_path),
  )
