"""Binary classification metrics with bootstrap confidence intervals.

Each hospital scores its own test patients at the end of a study, so these
functions run on the host in numpy, once per hospital, on at most a few
thousand examples (one example per patient). A label is 1 for a patient with
the condition and 0 otherwise, and a score is the predicted probability of
label 1.

Every metric takes `labels` and `scores` shaped `[examples]` and an optional
`sample_weight`. An integer weight counts a patient that many times, so a
bootstrap resample is a row of `[resamples, examples]` weights: how often
each patient was drawn. Given such rows, a metric returns one value per
resample in a single vectorized call and sorts the scores only once. A
metric is NaN when it is undefined for the data, for example AUROC on
patients of a single class.

References:
  Hanley, McNeil. The meaning and use of the area under a receiver operating
  characteristic (ROC) curve. Radiology 143(1):29-36, 1982.
  https://doi.org/10.1148/radiology.143.1.7063747

  scikit-learn, `sklearn.metrics.average_precision_score`.
  https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score

  Brier. Verification of forecasts expressed in terms of probability.
  Monthly Weather Review 78(1):1-3, 1950.

  Cox. Two further applications of a model for binary regression.
  Biometrika 45(3-4):562-565, 1958.

  Efron, Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993.
"""

import functools
from typing import Any, Callable, Iterator

import numpy as np
import numpy.typing as npt

# Upper bound on resamples * examples per block of bootstrap weights, which
# keeps each `[resamples, examples]` array to about 8 MB in float64.
_MAX_RESAMPLE_ELEMENTS = 2**20

# A metric called as `metric_fn(labels, scores, sample_weight=weights)`.
MetricFn = Callable[..., float | np.ndarray]


def _first_invalid(values: np.ndarray, invalid: np.ndarray) -> str:
  """Describe the first invalid element as '<value> at index <index>'."""
  index = tuple(int(i) for i in np.argwhere(invalid)[0])
  position = str(index[0]) if len(index) == 1 else str(index)
  return f'{values[index].item()!r} at index {position}'


def _validate_labels_and_scores(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
  """Check labels and scores and return them as float64 arrays."""
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  for name, values in (('labels', labels), ('scores', scores)):
    if values.ndim != 1:
      raise ValueError(
          f'`{name}` must be 1-D with shape [examples]; got shape'
          f' {values.shape}.'
      )
    if values.dtype.kind not in 'biuf':
      raise TypeError(f'`{name}` must be numeric; got dtype {values.dtype}.')
  if labels.shape != scores.shape:
    raise ValueError(
        '`labels` and `scores` must have the same length; got'
        f' {labels.shape[0]} and {scores.shape[0]}.'
    )

  invalid_labels = (labels != 0) & (labels != 1)
  if np.any(invalid_labels):
    raise ValueError(
        '`labels` must contain only 0 and 1; got'
        f' {_first_invalid(labels, invalid_labels)}.'
    )
  # Written so that NaN scores fail the range test too.
  invalid_scores = ~((scores >= 0) & (scores <= 1))
  if np.any(invalid_scores):
    raise ValueError(
        '`scores` must be finite probabilities in [0, 1]; got'
        f' {_first_invalid(scores, invalid_scores)}.'
    )

  return labels.astype(np.float64), scores.astype(np.float64)


def _validate_sample_weight(
    sample_weight: npt.ArrayLike | None, num_examples: int
) -> np.ndarray:
  """Check weights and return them as float64, all ones when None."""
  if sample_weight is None:
    return np.ones(num_examples)
  weights = np.asarray(sample_weight)
  if weights.ndim not in (1, 2) or weights.shape[-1] != num_examples:
    raise ValueError(
        '`sample_weight` must have shape [examples] or [resamples, examples]'
        f' with examples = {num_examples}; got shape {weights.shape}.'
    )
  if weights.dtype.kind not in 'biuf':
    raise TypeError(
        f'`sample_weight` must be numeric; got dtype {weights.dtype}.'
    )
  invalid_weights = ~((weights >= 0) & np.isfinite(weights))
  if np.any(invalid_weights):
    raise ValueError(
        '`sample_weight` must be finite and non-negative; got'
        f' {_first_invalid(weights, invalid_weights)}.'
    )
  return weights.astype(np.float64)


def _validate_inputs(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  labels, scores = _validate_labels_and_scores(labels, scores)
  weights = _validate_sample_weight(sample_weight, labels.shape[0])
  return labels, scores, weights


def _validate_threshold(threshold: float) -> None:
  if not np.isfinite(threshold):
    raise ValueError(f'`threshold` must be a finite number; got {threshold!r}.')


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """Divide elementwise, with NaN wherever the denominator is 0."""
  with np.errstate(divide='ignore', invalid='ignore'):
    quotient = np.true_divide(numerator, denominator)
  return np.where(denominator > 0, quotient, np.nan)


def _to_output(values: np.ndarray) -> float | np.ndarray:
  """Return a Python float for one weight vector, else the array."""
  if np.ndim(values) == 0:
    return float(values)
  return values


def _cumulative_weights(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    descending: bool,
) -> tuple[np.ndarray, np.ndarray]:
  """Sum the positive and negative weight up to each distinct score.

  Returns:
    `(positive, negative)`, each `[runs]` or `[resamples, runs]` with one
    entry per distinct score in ascending (or descending) order: the weight
    of the examples whose score is at most (or at least) that score.
  """
  order = np.argsort(-scores if descending else scores)
  sorted_scores = scores[order]
  is_run_end = np.ones(sorted_scores.shape, dtype=bool)
  is_run_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
  run_ends = np.flatnonzero(is_run_end)

  sorted_labels = labels[order]
  sorted_weights = np.take(weights, order, axis=-1)
  positive = np.cumsum(sorted_weights * sorted_labels, axis=-1)
  negative = np.cumsum(sorted_weights * (1 - sorted_labels), axis=-1)
  return positive[..., run_ends], negative[..., run_ends]


def _shift_right(values: np.ndarray) -> np.ndarray:
  """Shift along the last axis by one, filling the first entry with 0."""
  shifted = np.zeros_like(values)
  shifted[..., 1:] = values[..., :-1]
  return shifted


def auroc(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the area under the ROC curve.

  The area is the Mann-Whitney U statistic divided by the number of
  (positive, negative) pairs. It is the fraction of pairs in which the
  positive has the higher score, with tied pairs counted as 1/2, which equals
  the rank-sum form of U with tied scores given their average rank. One sort
  makes it O(examples log examples).

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the positive
    or the negative weight is 0, for example when only one class is present.

  Raises:
    ValueError: if `labels` and `scores` are not 1-D of the same length, a
      label is not 0 or 1, or a score is not a finite number in [0, 1]. Also
      if `sample_weight` has the wrong shape or a negative or non-finite
      value.
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)

  positive, negative = _cumulative_weights(
      scores, labels, weights, descending=False
  )
  # A run's positives beat the negatives of lower runs and tie with those of
  # their own run. Counting ties as 1/2 makes each positive's credit the mean
  # of the negative weight below and through its run.
  positive_in_run = positive - _shift_right(positive)
  negative_credit = (_shift_right(negative) + negative) / 2
  u_statistic = np.sum(positive_in_run * negative_credit, axis=-1)
  num_pairs = np.sum(weights * labels, axis=-1) * np.sum(
      weights * (1 - labels), axis=-1
  )

  return _to_output(_divide(u_statistic, num_pairs))


def auprc(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the average precision, a step-wise area under the PR curve.

  AP = sum_n (R_n - R_{n-1}) * P_n, where P_n and R_n are the precision and
  recall when every example scoring at least the n-th highest distinct score
  is predicted positive, and R_0 = 0. Tied scores form one threshold. This
  is the definition of scikit-learn's `average_precision_score`, with no
  interpolation between thresholds.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the positive
    weight is 0, for example when there are no positives.

  Raises:
    ValueError: if `labels` and `scores` are not 1-D of the same length, a
      label is not 0 or 1, or a score is not a finite number in [0, 1]. Also
      if `sample_weight` has the wrong shape or a negative or non-finite
      value.
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)

  true_positives, false_positives = _cumulative_weights(
      scores, labels, weights, descending=True
  )
  # A threshold whose run carries no positive weight adds no recall. Such a
  # run can also have a precision of 0/0, which must not reach the sum.
  recall_gain = true_positives - _shift_right(true_positives)
  precision = _divide(true_positives, true_positives + false_positives)
  weighted_precision = np.where(recall_gain > 0, recall_gain * precision, 0.0)

  return _to_output(
      _divide(
          np.sum(weighted_precision, axis=-1),
          np.sum(weights * labels, axis=-1),
      )
  )


def sensitivity(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the sensitivity (recall, true positive rate) at a threshold.

  A patient is predicted positive when `score >= threshold`, so a score
  equal to the threshold counts as positive.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    threshold: the decision threshold on `scores`.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the positive
    weight is 0, for example when there are no positives.

  Raises:
    ValueError: if an input is invalid (see `auroc`) or `threshold` is not
      finite.
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)
  _validate_threshold(threshold)

  positive_weights = weights * labels
  true_positives = np.sum(positive_weights * (scores >= threshold), axis=-1)

  return _to_output(
      _divide(true_positives, np.sum(positive_weights, axis=-1))
  )


def specificity(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the specificity (true negative rate) at a threshold.

  A patient is predicted negative when `score < threshold`, so a score
  equal to the threshold counts as positive.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    threshold: the decision threshold on `scores`.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the negative
    weight is 0, for example when there are no negatives.

  Raises:
    ValueError: if an input is invalid (see `auroc`) or `threshold` is not
      finite.
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)
  _validate_threshold(threshold)

  negative_weights = weights * (1 - labels)
  true_negatives = np.sum(negative_weights * (scores < threshold), axis=-1)

  return _to_output(
      _divide(true_negatives, np.sum(negative_weights, axis=-1))
  )


def accuracy(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the fraction of patients classified correctly at a threshold.

  A patient is predicted positive when `score >= threshold`.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    threshold: the decision threshold on `scores`.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the total
    weight is 0, for example when there are no examples.

  Raises:
    ValueError: if an input is invalid (see `auroc`) or `threshold` is not
      finite.
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)
  _validate_threshold(threshold)

  is_correct = (scores >= threshold) == (labels == 1)
  num_correct = np.sum(weights * is_correct, axis=-1)

  return _to_output(_divide(num_correct, np.sum(weights, axis=-1)))


def brier_score(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the Brier score, the mean of (score - label)**2.

  Lower is better: 0 for confident correct predictions, 0.25 for a constant
  score of 0.5 and 1 for confident wrong ones.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the total
    weight is 0, for example when there are no examples.

  Raises:
    ValueError: if an input is invalid (see `auroc`).
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)

  squared_error = np.sum(weights * (scores - labels) ** 2, axis=-1)

  return _to_output(_divide(squared_error, np.sum(weights, axis=-1)))


# Scores are clipped to [eps, 1 - eps] before the logit, so that a score of
# exactly 0 or 1 gives a large finite log-odds.
_LOGIT_EPS = 1e-12
_NEWTON_STEPS = 100
# A Newton step is halved at most this many times in its line search. Scores
# near the 1e-12 clip give curvatures near 1e-12 and first steps near 1e12,
# which need about 40 halvings.
_LINE_SEARCH_HALVINGS = 64
# A fit also counts as converged once the Newton decrement (the predicted
# gain in log-likelihood, g . H^-1 g) is below this fraction of it. Where
# the curvature is tiny, rounding in the gradient keeps the steps large.
_NEWTON_DECREMENT_TOLERANCE = 1e-15
# A fit counts as converged once its last Newton step is below this size.
_NEWTON_TOLERANCE = 1e-8


def _log_odds(scores: np.ndarray) -> np.ndarray:
  clipped = np.clip(scores, _LOGIT_EPS, 1 - _LOGIT_EPS)
  return np.log(clipped) - np.log1p(-clipped)


def _recalibration_likelihood(labels, weights, eta):
  """Return the weighted log-likelihood of each row's linear predictor."""
  return np.sum(weights * (labels * eta - np.logaddexp(0.0, eta)), axis=-1)


def _fit_recalibration(
    labels: np.ndarray, log_odds: np.ndarray, weights: np.ndarray, *,
    fit_slope: bool,
) -> tuple[np.ndarray, np.ndarray]:
  """Fit logit P(label = 1) = a + b * log_odds by weighted maximum likelihood.

  Newton's method with a backtracking line search, on every row of
  `weights` at once, from a = 0, b = 1 (a calibrated model). The
  log-likelihood is concave, and each step is halved until it does not
  lower it, so the fit converges from that start even where a plain Newton
  step overshoots, as for a slope far below 1. With `fit_slope` False, b
  stays 1 and only a is fitted (log_odds is an offset).

  Returns:
    `(a, b)`, each shaped like `weights` without its last axis. NaN where
    the fit has no finite optimum: one class only (or no weight), constant
    scores when fitting the slope, or scores that separate the classes
    perfectly, where the estimates grow without bound.
  """
  batch = weights.shape[:-1]
  intercept = np.zeros(batch)
  slope = np.ones(batch)
  positive = np.sum(weights * labels, axis=-1)
  negative = np.sum(weights * (1 - labels), axis=-1)
  # Rows of one class have no finite optimum, so they are never fitted.
  failed = ~((positive > 0) & (negative > 0))
  if fit_slope:
    # Nor do rows whose scores separate the classes, even with ties at the
    # boundary: the slope then grows without bound. Skipping them saves
    # the full count of Newton steps on many small bootstrap resamples.
    present = weights > 0
    is_positive = labels == 1
    def extreme(reduce, rows, fill):
      return reduce(np.where(rows, log_odds, fill), axis=-1, initial=fill)

    low_positive = extreme(np.min, present & is_positive, np.inf)
    high_positive = extreme(np.max, present & is_positive, -np.inf)
    low_negative = extreme(np.min, present & ~is_positive, np.inf)
    high_negative = extreme(np.max, present & ~is_positive, -np.inf)
    failed |= (high_negative <= low_positive) | (high_positive <= low_negative)
  done = failed.copy()
  with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
    for _ in range(_NEWTON_STEPS):
      if np.all(done):
        break
      eta = intercept[..., None] + slope[..., None] * log_odds
      fitted = 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function
      residual = weights * (labels - fitted)
      curvature = weights * fitted * (1.0 - fitted)
      grad_a = np.sum(residual, axis=-1)
      hess_aa = np.sum(curvature, axis=-1)
      if fit_slope:
        grad_b = np.sum(residual * log_odds, axis=-1)
        hess_ab = np.sum(curvature * log_odds, axis=-1)
        hess_bb = np.sum(curvature * log_odds**2, axis=-1)
        determinant = hess_aa * hess_bb - hess_ab**2
        step_a = (hess_bb * grad_a - hess_ab * grad_b) / determinant
        step_b = (hess_aa * grad_b - hess_ab * grad_a) / determinant
      else:
        step_a = grad_a / hess_aa
        step_b = np.zeros(batch)
      # A singular Hessian (such as constant scores) has no Newton step.
      singular = ~(np.isfinite(step_a) & np.isfinite(step_b)) & ~done
      failed |= singular
      done |= singular
      step_a = np.where(done, 0.0, step_a)
      step_b = np.where(done, 0.0, step_b)
      current = _recalibration_likelihood(labels, weights, eta)
      # Rounding makes the likelihood at the optimum wobble by a few ulps.
      floor = current - 1e-12 * (1.0 + np.abs(current))
      size = np.ones(batch)
      accepted = done.copy()
      for _ in range(_LINE_SEARCH_HALVINGS):
        trial_a = intercept + size * step_a
        trial_b = slope + size * step_b
        trial_eta = trial_a[..., None] + trial_b[..., None] * log_odds
        better = ~accepted & (
            _recalibration_likelihood(labels, weights, trial_eta) >= floor)
        intercept = np.where(better, trial_a, intercept)
        slope = np.where(better, trial_b, slope)
        accepted |= better
        if np.all(accepted):
          break
        size = np.where(accepted, size, 0.5 * size)
      # A small full step or Newton decrement means the fit is at its
      # optimum to float64 precision.
      decrement = step_a * grad_a + (step_b * grad_b if fit_slope else 0.0)
      small = (
          (np.maximum(np.abs(step_a), np.abs(step_b)) < _NEWTON_TOLERANCE)
          | (np.abs(decrement)
             <= _NEWTON_DECREMENT_TOLERANCE * (1.0 + np.abs(current))))
      # No step that keeps the likelihood elsewhere means the search failed.
      failed |= ~accepted & ~small & ~done
      done |= small | ~accepted
  defined = (done & ~failed & np.isfinite(intercept) & np.isfinite(slope))
  return (np.where(defined, intercept, np.nan),
          np.where(defined, slope, np.nan))


def calibration_slope(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute the calibration slope: b in logit P(y = 1) = a + b logit(score).

  1 is ideal. Below 1, predictions are too extreme (the usual sign of
  overfitting); above 1, too modest. Fitted by logistic regression of the
  labels on the log-odds of the scores, the recalibration model of Cox
  (1958). Scores are clipped to [1e-12, 1 - 1e-12] first.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where the fit has
    no finite optimum: patients of one class only, a single distinct score,
    or scores that separate the classes perfectly.

  Raises:
    ValueError: if an input is invalid (see `auroc`).
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)
  _, slope = _fit_recalibration(labels, _log_odds(scores), weights,
                                fit_slope=True)
  return _to_output(slope)


def calibration_intercept(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    sample_weight: npt.ArrayLike | None = None,
) -> float | np.ndarray:
  """Compute calibration-in-the-large: a in logit P(y = 1) = a + logit(score).

  0 is ideal. Above 0, the model underestimates risk on average; below 0,
  it overestimates it. The slope is fixed at 1 (the log-odds enter as an
  offset), so this measures the average error alone. It differs from the
  intercept of the fit with a free slope, which R's `rms::val.prob`
  reports, unless that slope is 1. Scores are clipped to
  [1e-12, 1 - 1e-12] first.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    sample_weight: optional `[examples]` or `[resamples, examples]`
      non-negative weights. A weight of k counts a patient k times.

  Returns:
    A float, or `[resamples]` floats for 2-D weights. NaN where patients of
    one class only have weight, because the optimum is then infinite.

  Raises:
    ValueError: if an input is invalid (see `auroc`).
    TypeError: if an input is not numeric.
  """
  labels, scores, weights = _validate_inputs(labels, scores, sample_weight)
  intercept, _ = _fit_recalibration(labels, _log_odds(scores), weights,
                                    fit_slope=False)
  return _to_output(intercept)


def calibration_curve(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    num_bins: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Compute a reliability diagram: observed rate against mean score per bin.

  The scores are put in `num_bins` equal-width bins over [0, 1]; a score of
  exactly 1 goes in the last bin. A calibrated model's points lie on the
  diagonal.

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    num_bins: the number of bins, at least 1.

  Returns:
    `(mean_score, observed_rate, counts)`, each `[num_bins]`: the mean
    score and the fraction of label 1 of each bin's patients (NaN for an
    empty bin), and the number of patients in the bin.

  Raises:
    ValueError: if an input is invalid (see `auroc`) or `num_bins` is not
      an integer >= 1.
    TypeError: if an input is not numeric.
  """
  labels, scores = _validate_labels_and_scores(labels, scores)
  if (isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer))
      or num_bins < 1):
    raise ValueError(f'`num_bins` must be an integer >= 1; got {num_bins!r}.')
  bins = np.minimum((scores * num_bins).astype(np.int64), num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  score_sums = np.bincount(bins, weights=scores, minlength=num_bins)
  positive_sums = np.bincount(bins, weights=labels, minlength=num_bins)
  return (_divide(score_sums, counts), _divide(positive_sums, counts),
          counts)


def _validate_bootstrap_options(num_resamples: int, confidence: float) -> None:
  if isinstance(num_resamples, bool) or not isinstance(
      num_resamples, (int, np.integer)
  ):
    raise TypeError(
        f'`num_resamples` must be an integer; got {num_resamples!r}.'
    )
  if num_resamples < 1:
    raise ValueError(
        f'`num_resamples` must be at least 1; got {num_resamples}.'
    )
  if not 0 < confidence < 1:
    raise ValueError(
        f'`confidence` must be strictly between 0 and 1; got {confidence!r}.'
    )


def _resample_counts(
    num_examples: int, num_resamples: int, seed: int
) -> Iterator[np.ndarray]:
  """Yield blocks of `[resamples, examples]` bootstrap draw counts.

  Row i of a block counts how often each patient was drawn when resample i
  drew `num_examples` patients uniformly with replacement.
  """
  rng = np.random.default_rng(seed)
  # The block size depends only on the number of examples, so the random
  # stream, and with it every resample, depends only on the arguments.
  block_size = max(1, _MAX_RESAMPLE_ELEMENTS // num_examples)
  for start in range(0, num_resamples, block_size):
    size = min(block_size, num_resamples - start)
    draws = rng.integers(0, num_examples, size=(size, num_examples))
    # Offset each row's draws into its own slice of one flat histogram.
    row_offsets = num_examples * np.arange(size)[:, None]
    counts = np.bincount(
        (draws + row_offsets).ravel(), minlength=size * num_examples
    )
    yield counts.reshape(size, num_examples)


def _percentile_interval(
    values: np.ndarray, confidence: float
) -> tuple[float, float, int]:
  valid_values = values[~np.isnan(values)]
  if valid_values.size == 0:
    return float('nan'), float('nan'), 0
  tail = (1 - confidence) / 2
  low, high = np.quantile(valid_values, [tail, 1 - tail])
  return float(low), float(high), int(valid_values.size)


def _evaluate_on_counts(
    metric_fn: MetricFn,
    labels: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
  """Evaluate `metric_fn` on a block of resamples and check its shape."""
  values = np.asarray(
      metric_fn(labels, scores, sample_weight=counts), dtype=np.float64
  )
  if values.shape != counts.shape[:1]:
    raise ValueError(
        '`metric_fn` must return one value per row of `[resamples,'
        f' examples]` weights; got shape {values.shape} for'
        f' {counts.shape[0]} resamples.'
    )
  return values


def bootstrap_ci(
    metric_fn: MetricFn,
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, int]:
  """Estimate a percentile bootstrap confidence interval for a metric.

  Each resample draws as many patients as the test set has, uniformly with
  replacement, using `np.random.default_rng(seed)`. `metric_fn` receives the
  draws as `sample_weight`, the number of times each patient was drawn,
  which gives the same value as evaluating it on the drawn rows. The
  interval runs from the (1 - confidence) / 2 to the (1 + confidence) / 2
  quantile of the metric over the resamples, with numpy's default linear
  interpolation. Calls with the same number of patients, `num_resamples`
  and `seed` draw the same resamples, even for different metrics.

  Warning:
    Resamples where the metric is NaN, such as a resample that contains a
    single class for AUROC, are left out. With few patients of one class,
    many resamples can be left out and the remaining ones are biased towards
    resamples that contain that class. Check `num_valid` before reporting
    the interval.

  Args:
    metric_fn: a metric called as `metric_fn(labels, scores,
      sample_weight=counts)` with `[resamples, examples]` counts, returning
      `[resamples]` values. Every metric in this module qualifies, as does
      `functools.partial(sensitivity, threshold=0.3)`.
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    num_resamples: the number of bootstrap resamples to draw.
    confidence: the coverage of the interval, strictly between 0 and 1.
    seed: the seed of the numpy random generator.

  Returns:
    `(low, high, num_valid)`: the interval bounds and the number of
    resamples with a defined metric. `(nan, nan, 0)` when there are no
    examples or no resample has a defined metric.

  Raises:
    ValueError: if `labels` or `scores` is invalid (see `auroc`),
      `num_resamples` is below 1, `confidence` is outside (0, 1), or
      `metric_fn` returns the wrong shape.
    TypeError: if `labels` or `scores` is not numeric or `num_resamples` is
      not an integer.
  """
  labels, scores = _validate_labels_and_scores(labels, scores)
  _validate_bootstrap_options(num_resamples, confidence)
  num_examples = labels.shape[0]
  if num_examples == 0:
    return float('nan'), float('nan'), 0

  blocks = [
      _evaluate_on_counts(metric_fn, labels, scores, counts)
      for counts in _resample_counts(num_examples, num_resamples, seed)
  ]

  return _percentile_interval(np.concatenate(blocks), confidence)


def _none_if_nan(value: float) -> float | None:
  return None if np.isnan(value) else float(value)


def clinical_report(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
  """Compute every metric of this module with a bootstrap interval.

  The intervals are those of `bootstrap_ci` with the same arguments, and
  all metrics share the same resamples, drawn once. Values that are
  undefined (NaN) become None, so `json.dumps(report, allow_nan=False)`
  succeeds. A metric undefined on the whole test set gets no interval
  either, because the resamples where it exists are a biased subset. An
  empty test set returns a report with `num_patients` 0 and None for every
  value.

  Example:
    >>> report = clinical_report(
    ...     [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], num_resamples=100
    ... )
    >>> report['auroc']['value']
    0.75
    >>> report['num_positive']
    2

  Args:
    labels: `[examples]` labels, each 0 or 1.
    scores: `[examples]` predicted probabilities of label 1.
    threshold: the decision threshold for accuracy, sensitivity and
      specificity. A score equal to the threshold counts as positive.
    num_resamples: the number of bootstrap resamples to draw.
    confidence: the coverage of each interval, strictly between 0 and 1.
    seed: the seed of the numpy random generator.

  Returns:
    A dict with the int keys `num_patients` and `num_positive`, and for each
    of `accuracy`, `auroc`, `auprc`, `sensitivity`, `specificity`, `brier`,
    `calibration_intercept` and `calibration_slope` a dict with keys `value`, `ci_low`, `ci_high` (float or None)
    and `ci_resamples` (int, the resamples with a defined metric).

  Raises:
    ValueError: if `labels` or `scores` is invalid (see `auroc`),
      `threshold` is not finite, `num_resamples` is below 1 or `confidence`
      is outside (0, 1).
    TypeError: if `labels` or `scores` is not numeric or `num_resamples` is
      not an integer.
  """
  labels, scores = _validate_labels_and_scores(labels, scores)
  _validate_threshold(threshold)
  _validate_bootstrap_options(num_resamples, confidence)
  num_examples = labels.shape[0]

  metrics = {
      'accuracy': functools.partial(accuracy, threshold=threshold),
      'auroc': auroc,
      'auprc': auprc,
      'sensitivity': functools.partial(sensitivity, threshold=threshold),
      'specificity': functools.partial(specificity, threshold=threshold),
      'brier': brier_score,
      'calibration_intercept': calibration_intercept,
      'calibration_slope': calibration_slope,
  }
  resampled = {name: [] for name in metrics}
  if num_examples > 0:
    for counts in _resample_counts(num_examples, num_resamples, seed):
      for name, metric_fn in metrics.items():
        values = _evaluate_on_counts(metric_fn, labels, scores, counts)
        resampled[name].append(values)

  report = {
      'num_patients': int(num_examples),
      'num_positive': int(np.sum(labels)),
  }
  for name, metric_fn in metrics.items():
    low, high, num_valid = _percentile_interval(
        np.concatenate(resampled[name] or [np.empty(0)]), confidence
    )
    value = _none_if_nan(metric_fn(labels, scores))
    if value is None:
      # The resamples where the metric exists are a biased subset then.
      low = high = float('nan')
    report[name] = {
        'value': value,
        'ci_low': _none_if_nan(low),
        'ci_high': _none_if_nan(high),
        'ci_resamples': num_valid,
    }

  return report
