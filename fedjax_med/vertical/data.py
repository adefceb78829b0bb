"""Vertical datasets: the same patients' features split by column.

A `VerticalDataset` lists what each party holds: its own patient
identifiers, its feature columns for those patients, and, for the label
holder (party 0), the labels. Parties hold only partly overlapping patients.
`align` takes the common identifiers that private set intersection returned
and builds the aligned, standardized training and test blocks.

`split_heart_disease` builds the bundled example from Fed-Heart-Disease: the
740 patients of the four hospitals, with each patient's 13 features split
across three parties by feature group.
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from fedjax_med.data import federated
from fedjax_med.data import heart_disease
from fedjax_med.data import tabular
from fedjax_med.errors import InputError

# The bundled split. A cardiology department holds the exercise-test
# results and the chest-pain type and, because it performs the angiography,
# the label. A primary-care practice holds demographics and risk factors, and
# an ECG service holds the resting ECG findings.
HEART_FEATURE_GROUPS = {
    'cardiology': ('thalach', 'exang', 'oldpeak', 'cp_2', 'cp_3', 'cp_4'),
    'primary_care': ('age', 'sex', 'trestbps', 'chol', 'fbs'),
    'ecg': ('restecg_1', 'restecg_2'),
}
# Fraction of the patients that each party holds a record of, drawn
# independently per party.
HEART_COVERAGE = {'cardiology': 0.95, 'primary_care': 0.9, 'ecg': 0.85}


@dataclasses.dataclass(frozen=True)
class PartyData:
  """The rows and columns of one party.

  Attributes:
    name: the party's name.
    ids: patient identifiers, one per row, unique.
    features: `[rows, columns]` float64.
    feature_names: one name per column.
    labels: `[rows]` int labels in {0, 1} for the label holder, else None.
  """

  name: str
  ids: tuple[str, ...]
  features: np.ndarray
  feature_names: tuple[str, ...]
  labels: np.ndarray | None = None

  def __post_init__(self):
    # Accept lists and other array-likes, and store numpy arrays.
    try:
      features = np.asarray(self.features, np.float64)
      labels = None if self.labels is None else np.asarray(self.labels)
    except (TypeError, ValueError) as error:
      raise InputError(f'party {self.name!r} has features or labels that '
                       f'are not numeric arrays ({error}); pass numbers') from None
    object.__setattr__(self, 'features', features)
    object.__setattr__(self, 'labels', labels)
    for field in ('ids', 'feature_names'):
      # tuple('12') would split a single identifier into its characters.
      if isinstance(getattr(self, field), (str, bytes)):
        raise InputError(f'party {self.name!r} has {field}='
                         f'{getattr(self, field)!r}, a single value; pass '
                         'a list with one entry per row or column')
    object.__setattr__(self, 'ids', tuple(self.ids))
    object.__setattr__(self, 'feature_names', tuple(self.feature_names))


@dataclasses.dataclass(frozen=True)
class VerticalDataset:
  """Parties that hold different columns of overlapping patients.

  Attributes:
    name: the dataset's name.
    parties: party 0 is the label holder.
    test_ids: identifiers of the patients held out for evaluation. The split
      is public: every party may know which aligned rows are test rows.
  """

  name: str
  parties: tuple[PartyData, ...]
  test_ids: frozenset[str]

  def __post_init__(self):
    if len(self.parties) < 2:
      raise InputError(f'a vertical dataset needs at least 2 parties, got '
                       f'{len(self.parties)}')
    names = [party.name for party in self.parties]
    if len(set(names)) != len(names):
      raise InputError(f'party names {names} repeat; give each party a '
                       'distinct name')
    for index, party in enumerate(self.parties):
      _check_party(party, is_label_holder=index == 0)
    # `in` on a str is a substring test, so test_ids='xd' would hold 'd'.
    if isinstance(self.test_ids, (str, bytes)):
      raise InputError(f'test_ids={self.test_ids!r} is a single value; pass '
                       'a set of patient identifiers')
    try:
      test_ids = frozenset(self.test_ids)
    except TypeError:
      raise InputError(f'test_ids={self.test_ids!r} is not a collection; '
                       'pass a set of patient identifiers') from None
    for identifier in test_ids:
      if not isinstance(identifier, str):
        raise InputError(
            f'test identifier {identifier!r} has type '
            f'{type(identifier).__name__}; convert identifiers to str')
    object.__setattr__(self, 'test_ids', test_ids)

  @property
  def party_names(self) -> tuple[str, ...]:
    return tuple(party.name for party in self.parties)


def _check_party(party: PartyData, is_label_holder: bool) -> None:
  """Raise InputError unless `party`'s arrays are consistent and finite."""
  rows = len(party.ids)
  if rows == 0:
    raise InputError(f'party {party.name!r} holds no patients; every party '
                     'needs at least one row')
  if party.features.ndim == 2 and party.features.shape[1] == 0:
    raise InputError(f'party {party.name!r} has no feature columns; give '
                     'every party at least one feature')
  if len(set(party.ids)) != rows:
    seen = set()
    repeated = next(i for i in party.ids if i in seen or seen.add(i))
    raise InputError(f'party {party.name!r} lists the patient identifier '
                     f'{repeated!r} twice; identifiers must be unique within '
                     'a party')
  if party.features.ndim != 2 or party.features.shape[0] != rows:
    raise InputError(f'party {party.name!r} has features of shape '
                     f'{party.features.shape}; expected [{rows}, columns], '
                     'one row per identifier')
  if party.features.shape[1] != len(party.feature_names):
    raise InputError(f'party {party.name!r} has {party.features.shape[1]} '
                     f'columns but {len(party.feature_names)} feature names')
  if not np.isfinite(party.features).all():
    row, column = np.argwhere(~np.isfinite(party.features))[0]
    raise InputError(f'party {party.name!r} has the value '
                     f'{party.features[row, column]} in feature '
                     f'{party.feature_names[column]!r} of patient '
                     f'{party.ids[row]!r}; impute or drop such rows first')
  if is_label_holder:
    if party.labels is None or party.labels.shape != (rows,):
      raise InputError(f'the label holder {party.name!r} needs one label per '
                       'row')
    if not np.isin(party.labels, (0, 1)).all():
      raise InputError(f'the label holder {party.name!r} has labels outside '
                       '{0, 1}')
  elif party.labels is not None:
    raise InputError(f'party {party.name!r} holds labels, but only party 0 '
                     '(the label holder) may')


def split_heart_disease(
    feature_groups: Mapping[str, Sequence[str]] | None = None,
    coverage: Mapping[str, float] | None = None,
    seed: int = 0,
) -> VerticalDataset:
  """Split Fed-Heart-Disease's columns across parties.

  Every patient of the four hospitals gets the identifier
  `<hospital>-<index>`, standing in for a national patient number that all
  parties record. Each party keeps its feature group for a random subset of
  the patients, of size `coverage[party]` times 740.

  Args:
    feature_groups: party name to its feature names (see
      `heart_disease.FEATURE_NAMES`), in party order; the first party holds
      the labels. Defaults to `HEART_FEATURE_GROUPS`.
    coverage: party name to the fraction of patients it holds, in (0, 1].
      A party left out keeps its default: `HEART_COVERAGE` for the default
      groups, 1.0 for groups of your own.
    seed: seed of the draw of which patients each party holds.

  Returns:
    The vertical dataset; FLamby's test rows are its test identifiers.
  """
  for argument, value, example in (
      ('feature_groups', feature_groups,
       "{'cardiology': ('age', 'sex'), 'lab': ('chol',)}"),
      ('coverage', coverage, "{'lab': 0.9}")):
    if value is not None and not isinstance(value, Mapping):
      raise InputError(
          f'{argument} must be a mapping from party name, such as '
          f'{example}; got {type(value).__name__} {value!r}')
  defaults = {name: 1.0 for name in feature_groups or ()}
  if feature_groups is None:
    feature_groups = HEART_FEATURE_GROUPS
    defaults = dict(HEART_COVERAGE)
  coverage = defaults | dict(coverage or {})
  unknown = set(coverage) - set(feature_groups)
  if unknown:
    raise InputError(f'coverage names parties {sorted(unknown)} that have no '
                     f'feature group; parties are {list(feature_groups)}')
  for name, group in feature_groups.items():
    if isinstance(group, str) or not group:
      raise InputError(f'the feature group of party {name!r} is {group!r}; '
                       'give a non-empty list of feature names')
  seed = federated.check_seed(seed)
  listed = [name for group in feature_groups.values() for name in group]
  for name in listed:
    if name not in heart_disease.FEATURE_NAMES:
      raise InputError(f'feature {name!r} is not a Fed-Heart-Disease feature; '
                       f'use names from {heart_disease.FEATURE_NAMES}')
  if len(set(listed)) != len(listed):
    repeated = next(name for name in listed if listed.count(name) > 1)
    raise InputError(f'feature {repeated!r} is assigned to two parties; give '
                     'each feature to one party')
  for name, fraction in coverage.items():
    if not (isinstance(fraction, (int, float, np.integer, np.floating))
            and not isinstance(fraction, (bool, np.bool_))
            and 0 < fraction <= 1):
      raise InputError(f'coverage[{name!r}]={fraction!r} is invalid; use a '
                       'fraction in (0, 1]')

  hospitals = heart_disease.load_heart_disease()
  ids, rows, labels, test_ids = [], [], [], set()
  for client, hospital in enumerate(hospitals.client_names):
    index = 0
    for part in (hospitals.train, hospitals.test):
      data = part.client(client)
      for x, y in zip(data['x'], data['y']):
        patient = f'{hospital}-{index:03d}'
        ids.append(patient)
        rows.append(x)
        labels.append(int(y))
        if part is hospitals.test:
          test_ids.add(patient)
        index += 1
  features = np.asarray(rows, np.float64)
  labels = np.asarray(labels)

  rng = np.random.default_rng(seed)
  parties = []
  for position, (name, group) in enumerate(feature_groups.items()):
    count = round(coverage[name] * len(ids))
    if count == 0:
      raise InputError(f'coverage[{name!r}]={coverage[name]} keeps none of '
                       f'the {len(ids)} patients; raise it')
    kept = np.sort(rng.choice(len(ids), size=count, replace=False))
    columns = [heart_disease.FEATURE_NAMES.index(f) for f in group]
    parties.append(PartyData(
        name=name,
        ids=tuple(ids[i] for i in kept),
        features=features[np.ix_(kept, columns)],
        feature_names=tuple(group),
        labels=labels[kept] if position == 0 else None,
    ))
  return VerticalDataset(
      name='fed_heart_disease_vertical',
      parties=tuple(parties),
      test_ids=frozenset(test_ids),
  )


@dataclasses.dataclass(frozen=True)
class AlignedData:
  """Row-aligned blocks of the common patients, split into train and test.

  Attributes:
    party_names: in party order.
    feature_names: per party.
    train_features, test_features: one `[rows, columns_k]` float64 block per
      party; row i of every block is the same patient.
    train_labels, test_labels: the label holder's labels of those rows.
    train_ids, test_ids: the patients of those rows.
  """

  party_names: tuple[str, ...]
  feature_names: tuple[tuple[str, ...], ...]
  train_features: tuple[np.ndarray, ...]
  test_features: tuple[np.ndarray, ...]
  train_labels: np.ndarray
  test_labels: np.ndarray
  train_ids: tuple[str, ...]
  test_ids: tuple[str, ...]


def align(
    dataset: VerticalDataset,
    common_ids: Sequence[str],
    standardize: bool = True,
) -> AlignedData:
  """Select and order each party's rows by the common identifiers.

  Args:
    dataset: the parties' data.
    common_ids: identifiers that every party holds, as private set
      intersection returns them.
    standardize: if True, each party z-scores its own columns with the mean
      and standard deviation of its aligned training rows, a local step that
      reveals nothing to the others. A column constant over the training
      rows is only centered, so it becomes 0 there.

  Returns:
    The aligned blocks. Rows keep the order of `common_ids`.
  """
  if isinstance(common_ids, (str, bytes)):
    raise InputError(f'common_ids is the single value {common_ids!r}; pass a '
                     'list of identifiers')
  common_ids = list(common_ids)
  for patient in common_ids:
    if not isinstance(patient, str):
      raise InputError(f'common identifier {patient!r} has type '
                       f'{type(patient).__name__}; identifiers are str')
  if len(set(common_ids)) != len(common_ids):
    repeated = next(i for i in common_ids if common_ids.count(i) > 1)
    raise InputError(f'common identifier {repeated!r} appears twice; pass '
                     'each common patient once')
  if not common_ids:
    raise InputError('common_ids is empty: the parties hold no patient in '
                     'common, so there is nothing to train on. Check that '
                     'every party uses the same identifiers')
  is_test = np.asarray([i in dataset.test_ids for i in common_ids], bool)
  if is_test.all() or not is_test.any():
    raise InputError(f'the {len(common_ids)} common patients include '
                     f'{int(is_test.sum())} test patients; both the training '
                     'and the test set need at least one')
  blocks = []
  for party in dataset.parties:
    position = {patient: row for row, patient in enumerate(party.ids)}
    missing = [i for i in common_ids if i not in position]
    if missing:
      raise InputError(f'party {party.name!r} does not hold the common '
                       f'patient {missing[0]!r}; align with the output of '
                       'private set intersection')
    blocks.append(party.features[[position[i] for i in common_ids]])
  holder = dataset.parties[0]
  holder_rows = {patient: row for row, patient in enumerate(holder.ids)}
  labels = holder.labels[[holder_rows[i] for i in common_ids]]

  train_blocks = [x[~is_test] for x in blocks]
  test_blocks = [x[is_test] for x in blocks]
  if standardize:
    for k, x in enumerate(train_blocks):
      mean = x.mean(axis=0)
      # A column constant up to rounding keeps scale 1; its rounded std of
      # about 1e-15 sent a test value 0.1 away to 1e14.
      std = tabular.column_scales(x, x.std(axis=0))
      train_blocks[k] = (x - mean) / std
      test_blocks[k] = (test_blocks[k] - mean) / std
  return AlignedData(
      party_names=dataset.party_names,
      feature_names=tuple(party.feature_names for party in dataset.parties),
      train_features=tuple(train_blocks),
      test_features=tuple(test_blocks),
      train_labels=labels[~is_test],
      test_labels=labels[is_test],
      train_ids=tuple(np.asarray(common_ids)[~is_test]),
      test_ids=tuple(np.asarray(common_ids)[is_test]),
  )
