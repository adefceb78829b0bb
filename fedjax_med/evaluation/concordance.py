"""Harrell's concordance index (C-index) for right-censored survival data.

The C-index is the fraction of comparable patient pairs that a risk score
orders correctly: the patient who died first should have the higher risk.
Like the metrics in `clinical.py`, it runs on the host in numpy, once per
client test set.

Pairs follow the convention of `lifelines.utils.concordance_index`
(lifelines 0.30), which FLamby uses to score Fed-TCGA-BRCA. A pair (i, j) is
comparable when patient i has an observed event and either

* time_i < time_j, whatever the status of j, or
* time_i == time_j and j is censored (j was still alive at time_i).

Two events at the same time, and pairs whose earlier time is censored, are
not comparable. A comparable pair is concordant when risk_i > risk_j and
counts 0.5 when risk_i == risk_j (exact equality, as in lifelines).
lifelines takes predicted survival times, where a larger value means a
longer life, so its result equals this function's for `scores = -risk`.

References:
  Harrell, Lee, Mark. Multivariable prognostic models: issues in developing
  models, evaluating assumptions and adequacy, and measuring and reducing
  errors. Statistics in Medicine 15(4):361-387, 1996.
"""

from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Concordance(NamedTuple):
  """Harrell's C-index of one set of patients, with its pair counts.

  Attributes:
    c_index: `(num_concordant + 0.5 * num_tied_risk) / num_comparable`, in
      [0, 1], or NaN when no pair is comparable.
    num_comparable: number of comparable pairs.
    num_concordant: comparable pairs in which the patient with the earlier
      event has the strictly higher risk.
    num_tied_risk: comparable pairs whose two risks are equal.
    reason: why `c_index` is NaN, or None when it is a number.
  """

  c_index: float
  num_comparable: int
  num_concordant: int
  num_tied_risk: int
  reason: str | None


def _first_invalid(values: np.ndarray, invalid: np.ndarray) -> str:
  index = int(np.flatnonzero(invalid)[0])
  return f'{values[index].item()!r} at index {index}'


def _validate(
    risk: npt.ArrayLike,
    time: npt.ArrayLike,
    event: npt.ArrayLike,
    mask: npt.ArrayLike | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Check the inputs and return the real rows of risk, time and event."""
  arrays = {
      'risk': np.asarray(risk),
      'time': np.asarray(time),
      'event': np.asarray(event),
  }
  if mask is not None:
    arrays['mask'] = np.asarray(mask)
  num_rows = arrays['risk'].shape[0] if arrays['risk'].ndim == 1 else None
  for name, values in arrays.items():
    if values.ndim != 1 or values.shape[0] != num_rows:
      raise ValueError(
          f'`{name}` must be 1-D with the same length as a 1-D `risk`; got '
          f'shape {values.shape} and `risk` shape {arrays["risk"].shape}.'
      )
    if values.dtype.kind not in 'biuf':
      raise TypeError(f'`{name}` must be numeric; got dtype {values.dtype}.')

  real = np.ones(num_rows, dtype=bool)
  if mask is not None:
    if arrays['mask'].dtype != bool:
      raise TypeError(f'`mask` must be bool; got dtype {arrays["mask"].dtype}.')
    real = arrays['mask']
  risk, time, event = (arrays[name][real] for name in ('risk', 'time', 'event'))

  for name, values in (('risk', risk), ('time', time)):
    invalid = ~np.isfinite(values.astype(np.float64))
    if invalid.any():
      raise ValueError(
          f'`{name}` must be finite on real rows; got '
          f'{_first_invalid(values, invalid)} of the real rows.'
      )
  invalid = (event != 0) & (event != 1)
  if invalid.any():
    raise ValueError(
        '`event` must contain only 0 and 1 on real rows; got '
        f'{_first_invalid(event, invalid)} of the real rows.'
    )
  return risk, time, event.astype(bool)


def concordance_index(
    risk: npt.ArrayLike,
    time: npt.ArrayLike,
    event: npt.ArrayLike,
    mask: npt.ArrayLike | None = None,
) -> Concordance:
  """Compute Harrell's C-index of a risk score on right-censored data.

  See the module docstring for which pairs are comparable. The pairs form
  `[examples, examples]` boolean matrices, so time and memory grow as
  O(n^2). That suits per-client test sets of up to a few thousand patients.

  Args:
    risk: `[examples]` predicted risk, higher meaning an earlier expected
      event, such as the log-risk of `LinearCox`. For a model that predicts
      survival times, pass their negatives.
    time: `[examples]` time to the event or to censoring.
    event: `[examples]`, 1 for an observed event and 0 for a censored row.
    mask: optional `[examples]` bool, True on real rows. Padding rows are
      ignored and may hold any value. None means every row is real.

  Returns:
    A `Concordance`. Its `c_index` is NaN, with the cause in `reason`, when
    there are no real rows, no observed events, or no comparable pair.

  Raises:
    ValueError: if the arrays are not 1-D of one length, or if a real row
      has a NaN or infinite risk or time, or an event other than 0 or 1.
    TypeError: if an array is not numeric or `mask` is not bool.
  """
  risk, time, event = _validate(risk, time, event, mask)

  # Row i is the patient with the event, column j the other patient.
  earlier = time[:, None] < time[None, :]
  same_time_censored = (time[:, None] == time[None, :]) & ~event[None, :]
  comparable = event[:, None] & (earlier | same_time_censored)
  concordant = comparable & (risk[:, None] > risk[None, :])
  tied_risk = comparable & (risk[:, None] == risk[None, :])

  num_comparable = int(comparable.sum())
  num_concordant = int(concordant.sum())
  num_tied_risk = int(tied_risk.sum())
  if num_comparable == 0:
    if risk.shape[0] == 0:
      reason = 'there are no real rows'
    elif not event.any():
      reason = 'no patient has an observed event, so no pair is comparable'
    else:
      reason = (
          'no pair is comparable: no observed event is earlier than another '
          "patient's time, or at the same time as a censored patient's"
      )
    return Concordance(float('nan'), 0, 0, 0, reason)

  c_index = (num_concordant + 0.5 * num_tied_risk) / num_comparable
  return Concordance(
      c_index, num_comparable, num_concordant, num_tied_risk, reason=None
  )
