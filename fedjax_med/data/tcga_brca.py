"""Fed-TCGA-BRCA: overall survival of breast cancer patients in six regions.

The data is FLamby's preprocessed clinical table of the TCGA-BRCA cohort:
1096 patients with 39 input features, an event indicator (death observed or
censored) and a follow-up time in days. Each patient belongs to the region of
the tissue source site that collected the sample, and each of the six regions
is one client. The train/test membership of every patient is read from
FLamby's fixed split table.

References:
  Liu et al. An Integrated TCGA Pan-Cancer Clinical Data Resource to Drive
  High-Quality Survival Outcome Analytics. Cell 173(2):400-416, 2018.
  https://doi.org/10.1016/j.cell.2018.02.052

  Ogier du Terrail et al. FLamby: Datasets and Benchmarks for Cross-Silo
  Federated Learning in Realistic Healthcare Settings. NeurIPS 2022 Datasets
  and Benchmarks. https://arxiv.org/abs/2210.04620
"""

import csv
import math
import pathlib
from typing import NamedTuple

import numpy as np

from fedjax_med.data import federated
from fedjax_med.errors import InputError

NAME = 'fed_tcga_brca'
# Client k is the region that FLamby's split table calls `train_k`/`test_k`.
CLIENT_NAMES = ('Northeast', 'South', 'West', 'Midwest', 'Europe', 'Canada')
DATA_TABLE = 'brca.csv'
CENTERS_TABLE = 'centers.csv'
SPLIT_TABLE = 'train_test_split.csv'
NUM_FEATURES = 39

# Region of the tissue source sites whose patients FLamby leaves out of every
# client (sites in Nigeria, Pakistan, Brazil and Australia).
_EXCLUDED_REGION = 'Other'
_ID_COLUMN = 'pid'
_EVENT_COLUMN = 'E'
_TIME_COLUMN = 'T'
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CENTERS_COLUMNS = {'TSS Code', 'Region'}
_SPLIT_COLUMNS = {'pid', 'fold', 'fold2'}
_SETS = ('train', 'test')
_CLIENT_INDICES = tuple(str(index) for index in range(len(CLIENT_NAMES)))


class Patient(NamedTuple):
  """One row of the data table.

  Attributes:
    features: `[39]` float64 inputs, in the table's column order.
    event: 1 if the death was observed, 0 if the follow-up was censored.
    time: days from diagnosis to death or to the last follow-up.
  """

  features: np.ndarray
  event: int
  time: float


class ClientPatientIds(NamedTuple):
  """TCGA patient barcodes of every client, in the loader's row order.

  Row `r` of client `c` in `load_tcga_brca().train` is the patient
  `train[c][r]`, and likewise for `test`.

  Attributes:
    train: one tuple of barcodes per client, for the train rows.
    test: one tuple of barcodes per client, for the test rows.
  """

  train: tuple[tuple[str, ...], ...]
  test: tuple[tuple[str, ...], ...]


def data_dir() -> pathlib.Path:
  """Return the folder of the bundled Fed-TCGA-BRCA files."""
  return federated.bundled_folder(NAME)


_corrupt = federated.corrupt_bundled_file


def tissue_source_site(patient_id: str) -> str:
  """Return the TSS code of a TCGA barcode: 'E2' for 'TCGA-E2-A9RU'."""
  fields = patient_id.split('-')
  if len(fields) < 3 or fields[0] != 'TCGA':
    raise InputError(
        f'Patient id {patient_id!r} is not a TCGA barcode such as '
        "'TCGA-E2-A9RU'."
    )
  return fields[1]


def _parse_patient(
    cells: list[str], line_number: int, path: pathlib.Path
) -> Patient:
  """Parse the 41 cells after the patient id of one data row."""
  try:
    values = [float(cell) for cell in cells]
  except ValueError:
    raise _corrupt(
        path, f'line {line_number} has a value that is not a number'
    ) from None
  # The features are stored as float32, where 1e40 would become inf.
  if not all(math.isfinite(value) and abs(value) <= _FLOAT32_MAX
             for value in values):
    raise _corrupt(path, f'line {line_number} has a NaN or infinite value, '
                   'or one beyond the float32 range')

  event, time = values[-2:]
  if event not in (0.0, 1.0):
    raise _corrupt(
        path, f'line {line_number} has event {event}, expected 0 or 1'
    )
  if time < 0:
    raise _corrupt(path, f'line {line_number} has a negative time {time}')
  features = np.asarray(values[:NUM_FEATURES], dtype=np.float64)
  return Patient(features=features, event=int(event), time=time)


def _read_patients(
    path: pathlib.Path,
) -> tuple[tuple[str, ...], dict[str, Patient]]:
  """Read the data table.

  Returns:
    `(feature_names, patients)`, where `patients` maps each barcode to its
    row and keeps the table's row order.
  """
  with path.open(newline='') as file:
    reader = csv.reader(file)
    header = next(reader, None)
    if (
        header is None
        or len(header) != NUM_FEATURES + 3
        or header[0] != _ID_COLUMN
        or header[-2:] != [_EVENT_COLUMN, _TIME_COLUMN]
    ):
      raise _corrupt(
          path,
          f'its header is not {_ID_COLUMN!r}, '
          f'{NUM_FEATURES} feature names, {_EVENT_COLUMN!r} and '
          f'{_TIME_COLUMN!r}',
      )

    patients = {}
    for line_number, row in enumerate(reader, start=2):
      if len(row) != len(header):
        raise _corrupt(
            path,
            f'line {line_number} has {len(row)} values, expected {len(header)}',
        )
      patient_id = row[0]
      if patient_id in patients:
        raise _corrupt(path, f'patient {patient_id} appears twice')
      patients[patient_id] = _parse_patient(row[1:], line_number, path)
  return tuple(header[1 : NUM_FEATURES + 1]), patients


def _read_dict_rows(
    path: pathlib.Path, required_columns: set[str]
) -> list[tuple[int, dict[str, str]]]:
  """Read a CSV file with a header as `(line number, row)` pairs."""
  with path.open(newline='') as file:
    reader = csv.DictReader(file)
    missing = required_columns - set(reader.fieldnames or ())
    if missing:
      raise _corrupt(path, f'it lacks the columns {sorted(missing)}')
    rows = []
    for row in reader:
      # DictReader stores extra cells under the key None and fills missing
      # cells with None.
      if None in row or None in row.values():
        raise _corrupt(
            path,
            f'line {reader.line_num} does not have '
            f'{len(reader.fieldnames)} values',
        )
      rows.append((reader.line_num, row))
  return rows


def _read_regions(path: pathlib.Path) -> dict[str, str]:
  """Map each tissue-source-site code to its region."""
  regions = {}
  for _, row in _read_dict_rows(path, _CENTERS_COLUMNS):
    code, region = row['TSS Code'], row['Region']
    if code in regions:
      raise _corrupt(path, f'site code {code!r} appears twice')
    if region not in CLIENT_NAMES and region != _EXCLUDED_REGION:
      raise _corrupt(
          path, f'site code {code!r} has an unknown region {region!r}'
      )
    regions[code] = region
  return regions


def _read_split(path: pathlib.Path) -> dict[str, tuple[str, int]]:
  """Map each barcode in the split table to its `(set, client index)`.

  The set is 'train' or 'test'. The table's per-client `fold2` column is
  authoritative, and its pooled `fold` column must agree with it.
  """
  split = {}
  for line_number, row in _read_dict_rows(path, _SPLIT_COLUMNS):
    patient_id = row['pid']
    set_name, _, client = row['fold2'].partition('_')
    if set_name not in _SETS or client not in _CLIENT_INDICES:
      raise _corrupt(
          path,
          f"line {line_number} has fold2 {row['fold2']!r}, "
          "expected 'train_<k>' or 'test_<k>' with k in 0..5",
      )
    if row['fold'] != set_name:
      raise _corrupt(
          path,
          f"line {line_number} has fold {row['fold']!r} "
          f"but fold2 {row['fold2']!r}",
      )
    if patient_id in split:
      raise _corrupt(path, f'patient {patient_id} appears twice')
    split[patient_id] = (set_name, int(client))
  return split


def _assign_clients(
    patient_order: list[str],
    regions: dict[str, str],
    split: dict[str, tuple[str, int]],
    folder: pathlib.Path,
) -> ClientPatientIds:
  """Sort the patients into per-client train and test lists.

  Checks that the split table and the site regions agree: every split
  patient's region is its client's name, and every left-out patient comes
  from a site of region 'Other'.
  """
  data_path = folder / DATA_TABLE
  split_path = folder / SPLIT_TABLE
  missing = sorted(set(split) - set(patient_order))
  if missing:
    raise _corrupt(
        split_path,
        f'it names {len(missing)} patients that are '
        f'not in {DATA_TABLE}, such as {missing[0]}',
    )

  members = {name: [[] for _ in CLIENT_NAMES] for name in _SETS}
  for patient_id in patient_order:
    try:
      site = tissue_source_site(patient_id)
    except InputError:
      raise _corrupt(
          data_path, f'patient id {patient_id!r} is not a TCGA barcode'
      ) from None
    if site not in regions:
      raise _corrupt(
          data_path,
          f'patient {patient_id} has site code '
          f'{site!r}, which {CENTERS_TABLE} lacks',
      )
    region = regions[site]
    if patient_id not in split:
      if region != _EXCLUDED_REGION:
        raise _corrupt(
            split_path, f'it lacks patient {patient_id} of region {region}'
        )
      continue

    set_name, client = split[patient_id]
    if region != CLIENT_NAMES[client]:
      raise _corrupt(
          split_path,
          f'it puts patient {patient_id} of region '
          f'{region} in client {client} ({CLIENT_NAMES[client]})',
      )
    members[set_name][client].append(patient_id)

  return ClientPatientIds(
      train=tuple(tuple(ids) for ids in members['train']),
      test=tuple(tuple(ids) for ids in members['test']),
  )


def patient_ids() -> ClientPatientIds:
  """Return the barcodes of every client's train and test patients.

  Raises:
    InputError: if a bundled file is malformed or the files disagree (see
      `load_tcga_brca`).
  """
  folder = data_dir()
  _, patients = _read_patients(folder / DATA_TABLE)
  return _assign_clients(
      list(patients),
      _read_regions(folder / CENTERS_TABLE),
      _read_split(folder / SPLIT_TABLE),
      folder,
  )


def _client_examples(
    ids: tuple[str, ...], patients: dict[str, Patient]
) -> dict[str, np.ndarray]:
  rows = [patients[patient_id] for patient_id in ids]
  features = np.zeros((len(rows), NUM_FEATURES), dtype=np.float32)
  if rows:
    features = np.stack([row.features for row in rows]).astype(np.float32)
  return {
      'x': features,
      'event': np.asarray([row.event for row in rows], dtype=np.int32),
      'time': np.asarray([row.time for row in rows], dtype=np.float32),
  }


def load_tcga_brca() -> federated.FederatedDataset:
  """Load Fed-TCGA-BRCA with FLamby's clients and train/test split.

  A patient's client is the region of the tissue source site in its barcode
  ('TCGA-E2-A9RU' has site E2), looked up in the bundled site table. The
  split table gives each patient's set and client as `train_<k>` or
  `test_<k>`, and the loader checks that client k is the site's region. The
  8 patients from sites of region 'Other' are in no client, as in FLamby, so
  1088 of the 1096 patients are loaded. Train/test counts per client are
  248/63 (Northeast), 156/40 (South), 164/42 (West), 129/33 (Midwest),
  129/33 (Europe) and 40/11 (Canada). Rows keep the data table's order
  within each client.

  The features are not normalized, as in FLamby: `age_at_index` is the age
  in years (26 to 90) and the other 38 columns are 0/1 one-hot indicators.
  Scale the age yourself if an optimizer needs inputs of unit size.

  The task is survival analysis, not classification, so the examples have
  no `y` and code that expects class labels fails with a KeyError.

  Returns:
    A `FederatedDataset` with 6 clients and 39 features whose examples are
    `x` float32 `[clients, examples, 39]`, `event` int32
    `[clients, examples]` (1 = death observed, 0 = censored) and `time`
    float32 `[clients, examples]` (days to death or last follow-up; every
    value is a whole number of days up to 8605, exact in float32).
    `num_classes` is 0 because there are no class labels.

  Raises:
    InputError: if a bundled file is malformed, if the split table names a
      patient that the data table lacks, puts a patient in a client other
      than its site's region, or leaves out a patient whose region is not
      'Other'.
  """
  folder = data_dir()
  data_path = folder / DATA_TABLE
  feature_names, patients = _read_patients(data_path)
  ids = _assign_clients(
      list(patients),
      _read_regions(folder / CENTERS_TABLE),
      _read_split(folder / SPLIT_TABLE),
      folder,
  )

  train = federated.stack_clients(
      [_client_examples(client_ids, patients) for client_ids in ids.train]
  )
  test = federated.stack_clients(
      [_client_examples(client_ids, patients) for client_ids in ids.test]
  )
  return federated.FederatedDataset(
      name=NAME,
      train=train,
      test=test,
      client_names=CLIENT_NAMES,
      feature_names=feature_names,
      num_classes=0,
      source_files=(data_path, folder / CENTERS_TABLE, folder / SPLIT_TABLE),
  )
