"""Classification metrics of patient subgroups inside each client.

A hospital's overall accuracy can hide a model that serves one group of its
patients, such as women or older patients, worse than another. This module
splits each client's test rows by a group id. For each group, inside every
client and pooled over all clients, it reports accuracy, true positive rate
(TPR, sensitivity) and false positive rate (FPR, 1 - specificity). It also
reports the gaps between the groups.

The gaps are max minus min over the groups where the metric is defined,
as the R package yardstick computes `equal_opportunity`:

* `accuracy_gap`, of accuracy;
* `equal_opportunity_gap`, of TPR. Equal opportunity (Hardt, Price and
  Srebro, 2016) requires equal TPR across groups;
* `false_positive_rate_gap`, of FPR. Equal TPR and equal FPR together are
  equalized odds.

Like `clinical.py`, this runs on the host in numpy once the predictions
are known. Labels and predictions are binary, with 1 the positive class.
A rate or gap that is undefined for the data is None, and the report
states the cause next to it, so a report passes `json.dumps(report,
allow_nan=False)`.

References:
  Hardt, Price, Srebro. Equality of Opportunity in Supervised Learning.
  NeurIPS 2016. https://arxiv.org/abs/1610.02413

  yardstick, `equal_opportunity`.
  https://rdrr.io/cran/yardstick/man/equal_opportunity.html
"""

from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

RATE_METRICS = ('accuracy', 'true_positive_rate', 'false_positive_rate')
# Each gap and the per-group metric it is taken over.
GAPS = {
    'accuracy_gap': 'accuracy',
    'equal_opportunity_gap': 'true_positive_rate',
    'false_positive_rate_gap': 'false_positive_rate',
}
# The rows each metric divides by, named in the reason when there are none.
_DENOMINATOR_ROWS = {
    'accuracy': 'no rows',
    'true_positive_rate': 'no rows with label 1',
    'false_positive_rate': 'no rows with label 0',
}


def _first_invalid(values: np.ndarray, invalid: np.ndarray) -> str:
  index = tuple(int(i) for i in np.argwhere(invalid)[0])
  return f'{values[index].item()!r} at index {index}'


def _validate(
    predicted: npt.ArrayLike,
    labels: npt.ArrayLike,
    groups: npt.ArrayLike,
    mask: npt.ArrayLike,
    num_groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Check the four `[clients, examples]` arrays and return them as numpy."""
  arrays = {
      'predicted': np.asarray(predicted),
      'labels': np.asarray(labels),
      'groups': np.asarray(groups),
      'mask': np.asarray(mask),
  }
  shape = arrays['predicted'].shape
  for name, values in arrays.items():
    if values.ndim != 2 or values.shape != shape:
      raise ValueError(
          f'`{name}` must be 2-D `[clients, examples]` with the shape of '
          f'`predicted`; got shape {values.shape} and `predicted` shape '
          f'{shape}.'
      )
  if arrays['mask'].dtype != bool:
    raise TypeError(f'`mask` must be bool; got dtype {arrays["mask"].dtype}.')
  for name in ('predicted', 'labels', 'groups'):
    if arrays[name].dtype.kind not in 'biu':
      raise TypeError(
          f'`{name}` must be an integer or bool array; got dtype '
          f'{arrays[name].dtype}.'
      )

  real = arrays['mask']
  for name in ('predicted', 'labels'):
    values = arrays[name]
    invalid = real & (values != 0) & (values != 1)
    if invalid.any():
      raise ValueError(
          f'`{name}` must be 0 or 1 on real rows; got '
          f'{_first_invalid(values, invalid)}.'
      )
  groups = arrays['groups']
  invalid = real & ((groups < 0) | (groups >= num_groups))
  if invalid.any():
    raise ValueError(
        f'`groups` must be in [0, {num_groups}) on real rows, one id per '
        f'entry of `group_names`; got {_first_invalid(groups, invalid)}.'
    )
  return (
      arrays['predicted'].astype(bool),
      arrays['labels'].astype(bool),
      groups.astype(np.int64),
      real,
  )


def _group_counts(predicted, labels, groups, mask, num_groups):
  """Count rows per client and group.

  Returns:
    A dict of `[clients, groups]` int64 counts: `count` (real rows),
    `num_positive` (label 1), `num_negative` (label 0), `num_correct`,
    `true_positives` and `false_positives`.
  """
  # one_hot[c, e, g] is True when row e of client c is real and in group g.
  one_hot = mask[..., None] & (groups[..., None] == np.arange(num_groups))

  def count(rows: np.ndarray) -> np.ndarray:
    return np.sum(one_hot & rows[..., None], axis=1, dtype=np.int64)

  return {
      'count': np.sum(one_hot, axis=1, dtype=np.int64),
      'num_positive': count(labels),
      'num_negative': count(~labels),
      'num_correct': count(predicted == labels),
      'true_positives': count(predicted & labels),
      'false_positives': count(predicted & ~labels),
  }


def _group_entry(counts: dict[str, int]) -> dict[str, Any]:
  """Build one group's metrics from its counts."""
  fractions = {
      'accuracy': (counts['num_correct'], counts['count']),
      'true_positive_rate': (counts['true_positives'], counts['num_positive']),
      'false_positive_rate': (
          counts['false_positives'], counts['num_negative']),
  }
  entry = {
      'count': counts['count'],
      'num_positive': counts['num_positive'],
      'num_negative': counts['num_negative'],
  }
  reasons = {}
  for metric, (numerator, denominator) in fractions.items():
    if denominator == 0:
      entry[metric] = None
      reasons[metric] = f'the group has {_DENOMINATOR_ROWS[metric]}'
    else:
      entry[metric] = numerator / denominator
  entry['reasons'] = reasons
  return entry


def _gap_entry(
    group_entries: dict[str, dict[str, Any]], metric: str
) -> dict[str, Any]:
  """Build max minus min of `metric` over the groups where it is defined."""
  defined = {
      name: entry[metric] for name, entry in group_entries.items()
      if entry[metric] is not None
  }
  left_out = {
      name: entry['reasons'][metric] for name, entry in group_entries.items()
      if entry[metric] is None
  }
  gap = {
      'value': None, 'max_group': None, 'min_group': None,
      'groups_compared': list(defined), 'left_out': left_out, 'reason': None,
  }
  if len(defined) < 2:
    gap['reason'] = (
        f'{metric} is defined for {len(defined)} group(s); a gap needs 2'
    )
    return gap
  # Sorted by value, ties in group order, so that max and min name two
  # different groups even when every value is equal.
  ranked = sorted(defined, key=defined.get)
  min_group, max_group = ranked[0], ranked[-1]
  gap.update(
      value=defined[max_group] - defined[min_group],
      max_group=max_group,
      min_group=min_group,
  )
  return gap


def _report_from_counts(
    counts: dict[str, np.ndarray], group_names: Sequence[str]
) -> dict[str, Any]:
  """Build the groups and gaps of one client (or the pool) from `[groups]`."""
  group_entries = {
      name: _group_entry({key: int(value[g]) for key, value in counts.items()})
      for g, name in enumerate(group_names)
  }
  gaps = {
      gap_name: _gap_entry(group_entries, metric)
      for gap_name, metric in GAPS.items()
  }
  return {'groups': group_entries, 'gaps': gaps}


def subgroup_report(
    predicted: npt.ArrayLike,
    labels: npt.ArrayLike,
    groups: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    group_names: Sequence[str],
    client_names: Sequence[str] | None = None,
) -> dict[str, Any]:
  """Compute per-group metrics and gaps inside every client and pooled.

  Example:
    >>> report = subgroup_report(
    ...     [[1, 0, 1, 1]], [[1, 0, 0, 1]], [[0, 0, 1, 1]],
    ...     [[True, True, True, True]], group_names=['a', 'b'],
    ... )
    >>> report['pooled']['groups']['b']['accuracy']
    0.5
    >>> report['pooled']['gaps']['false_positive_rate_gap']['value']
    1.0

  Args:
    predicted: `[clients, examples]` predicted labels, 0 or 1, such as
      `ClientEvaluation.predicted`.
    labels: `[clients, examples]` true labels, 0 or 1.
    groups: `[clients, examples]` group id of each row, an index into
      `group_names`.
    mask: `[clients, examples]` bool, True on real rows. Padding rows are
      ignored and may hold any value in the other arrays.
    group_names: the name of each group id, in id order.
    client_names: the name of each client; None names them '0', '1', ...

  Returns:
    A dict with `group_names`, `clients` (a dict from client name to that
    client's report) and `pooled` (the report of all clients' real rows
    together). Each report contains:

    * `groups`: a dict from group name to the group's entry. The entry has
      `count`, `num_positive` and `num_negative` (ints), and `accuracy`,
      `true_positive_rate` and `false_positive_rate` (floats). A rate is
      None when the group has no rows, no rows with label 1 or no rows with
      label 0 respectively, and `reasons` maps each None rate to its cause.
    * `gaps`: a dict from `accuracy_gap`, `equal_opportunity_gap` and
      `false_positive_rate_gap` to the gap's entry. Its `value` is max minus
      min over the groups where the rate is defined, or None when fewer
      than 2 are, and then `reason` states why (else `reason` is None).
      `max_group`, `min_group` and `groups_compared` name the groups, and
      `left_out` maps each group without the rate to its cause.

  Raises:
    ValueError: if the arrays are not 2-D of one shape, a real row has a
      label or prediction other than 0 and 1 or a group id outside
      `[0, len(group_names))`, or the names do not match the arrays.
    TypeError: if `mask` is not bool or another array is not integer.
  """
  group_names = [str(name) for name in group_names]
  if not group_names or len(set(group_names)) != len(group_names):
    raise ValueError(
        f'`group_names` must be non-empty and unique; got {group_names}.'
    )
  predicted, labels, groups, mask = _validate(
      predicted, labels, groups, mask, len(group_names)
  )
  num_clients = predicted.shape[0]
  if client_names is None:
    client_names = [str(index) for index in range(num_clients)]
  client_names = [str(name) for name in client_names]
  if len(client_names) != num_clients or len(set(client_names)) != num_clients:
    raise ValueError(
        f'`client_names` must be {num_clients} unique names, one per client; '
        f'got {client_names}.'
    )

  counts = _group_counts(predicted, labels, groups, mask, len(group_names))
  clients = {
      name: _report_from_counts(
          {key: value[index] for key, value in counts.items()}, group_names
      )
      for index, name in enumerate(client_names)
  }
  pooled = _report_from_counts(
      {key: value.sum(axis=0) for key, value in counts.items()}, group_names
  )
  return {'group_names': group_names, 'clients': clients, 'pooled': pooled}


def band_ids(values: npt.ArrayLike, edges: Sequence[float]) -> np.ndarray:
  """Map values to band ids by sorted edges, each band closed on the left.

  With edges `[50, 60]`, a value below 50 is band 0, a value in [50, 60)
  is band 1 and a value of 60 or more is band 2, so there are
  `len(edges) + 1` bands. A NaN value, such as a missing age, is in no
  band, so it raises rather than getting an id that `subgroup_report`
  would count in a real group.

  Args:
    values: array of any shape, such as `[clients, examples]` ages. Padding
      rows need a number too, for example 0.
    edges: strictly increasing band edges, not NaN.

  Returns:
    An int64 array of band ids in `[0, len(edges)]`, shaped like `values`.

  Raises:
    ValueError: if `edges` is not a strictly increasing 1-D sequence without
      NaN, or `values` contains NaN.
  """
  edges = np.asarray(edges, dtype=np.float64)
  # NaN compares False, so the diff check alone lets NaN edges through.
  if edges.ndim != 1 or np.isnan(edges).any() or np.any(np.diff(edges) <= 0):
    raise ValueError(
        '`edges` must be a strictly increasing 1-D sequence without NaN; got '
        f'{edges}.'
    )
  values = np.asarray(values)
  if np.issubdtype(values.dtype, np.floating):
    _check_no_nan(values)
  return np.searchsorted(edges, values, side='right').astype(np.int64)


def _check_no_nan(values: np.ndarray) -> None:
  nan_positions = np.argwhere(np.isnan(values))
  if not len(nan_positions):
    return
  first_positions = [
      tuple(int(i) for i in position) for position in nan_positions[:10]
  ]
  ellipsis = ', ...' if len(nan_positions) > 10 else ''
  raise ValueError(
      f'`values` contains {len(nan_positions)} NaN value(s), at indices '
      f'{first_positions}{ellipsis}. A missing value has no band. Drop or '
      'impute those rows, or mask them out of the report and fill them with '
      'a number.'
  )
