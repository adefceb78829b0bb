"""Tests for fedjax_med.evaluation.clinical, with hand-computed values."""

import functools
import json
import math

import numpy as np
import pytest
import scipy.optimize

from fedjax_med.evaluation import clinical

# Labels and scores of the scikit-learn `average_precision_score` docstring.
SKLEARN_LABELS = [0, 0, 1, 1]
SKLEARN_SCORES = [0.1, 0.4, 0.35, 0.8]


def _synthetic_patients(
    num_patients: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Return alternating labels and noisy scores that favor label 1."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num_patients) % 2
  noise = rng.normal(0.0, 0.2, size=num_patients)
  scores = np.clip(0.35 + 0.3 * labels + noise, 0.0, 1.0)
  return labels, scores


def test_auroc_hand_case():
  # Pairs (positive, negative): 0.35 > 0.1, 0.35 < 0.4, 0.8 > 0.1 and
  # 0.8 > 0.4, so 3 of 4 pairs are ranked correctly.
  value = clinical.auroc(SKLEARN_LABELS, SKLEARN_SCORES)

  assert value == pytest.approx(0.75, abs=1e-12)


def test_auroc_tie_counts_half():
  # Pairs: 0.4 > 0.1 (1), 0.4 = 0.4 (1/2), 0.8 > 0.1 (1), 0.8 > 0.4 (1),
  # so 3.5 of 4.
  value = clinical.auroc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8])

  assert value == pytest.approx(0.875, abs=1e-12)


def test_auroc_all_tied_is_half():
  # Every one of the 4 pairs is tied and counts 1/2.
  value = clinical.auroc([0, 0, 1, 1], [0.3, 0.3, 0.3, 0.3])

  assert value == pytest.approx(0.5, abs=1e-12)


def test_auroc_perfect_ranking():
  value = clinical.auroc([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9])

  assert value == pytest.approx(1.0, abs=1e-12)


def test_auroc_inverted_ranking():
  value = clinical.auroc([1, 1, 0, 0], [0.1, 0.2, 0.7, 0.9])

  assert value == pytest.approx(0.0, abs=1e-12)


def test_auroc_single_class_nan():
  labels = [1, 1, 1]
  scores = [0.7, 0.2, 0.9]

  assert math.isnan(clinical.auroc(labels, scores))
  # 0.7 and 0.9 reach the 0.5 threshold and 0.2 does not: 2 of 3 correct.
  assert clinical.accuracy(labels, scores) == pytest.approx(2 / 3, abs=1e-12)


def test_auroc_returns_python_float():
  value = clinical.auroc(SKLEARN_LABELS, SKLEARN_SCORES)

  assert type(value) is float


def test_auprc_sklearn_example():
  # Descending thresholds 0.8, 0.4, 0.35, 0.1 give (precision, recall)
  # (1, 1/2), (1/2, 1/2), (2/3, 1), (1/2, 1). Recall rises by 1/2 at 0.8
  # and at 0.35: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
  value = clinical.auprc(SKLEARN_LABELS, SKLEARN_SCORES)

  assert value == pytest.approx(5 / 6, abs=1e-12)


def test_auprc_tied_scores_one_threshold():
  # Threshold 0.9 admits a positive and a negative together: precision 1/2,
  # recall 1/2. Threshold 0.5 adds a positive: precision 2/3, recall 1.
  # AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12. Ranking the tied positive first
  # would give 5/6 instead.
  value = clinical.auprc([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1])

  assert value == pytest.approx(7 / 12, abs=1e-12)


def test_auprc_perfect_ranking():
  value = clinical.auprc([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9])

  assert value == pytest.approx(1.0, abs=1e-12)


def test_auprc_no_positives_nan():
  value = clinical.auprc([0, 0, 0], [0.1, 0.5, 0.9])

  assert math.isnan(value)


def test_threshold_metrics_count():
  # At threshold 0.5 the predictions are 1, 1, 0 for the positives
  # (2 true positives of 3) and 1, 0, 0, 1 for the negatives (2 true
  # negatives of 4), so 4 of 7 patients are classified correctly.
  labels = [1, 1, 1, 0, 0, 0, 0]
  scores = [0.9, 0.5, 0.2, 0.6, 0.4, 0.1, 0.5]

  assert clinical.sensitivity(labels, scores) == pytest.approx(2 / 3)
  assert clinical.specificity(labels, scores) == pytest.approx(2 / 4)
  assert clinical.accuracy(labels, scores) == pytest.approx(4 / 7)


def test_threshold_metrics_custom_threshold():
  # At threshold 0.3 only 0.2 (a positive) and 0.1 (a negative) fall below:
  # 2 of 3 positives, 1 of 4 negatives and 3 of 7 patients are correct.
  labels = [1, 1, 1, 0, 0, 0, 0]
  scores = [0.9, 0.5, 0.2, 0.6, 0.4, 0.1, 0.5]

  sensitivity = clinical.sensitivity(labels, scores, threshold=0.3)
  specificity = clinical.specificity(labels, scores, threshold=0.3)
  accuracy = clinical.accuracy(labels, scores, threshold=0.3)

  assert sensitivity == pytest.approx(2 / 3)
  assert specificity == pytest.approx(1 / 4)
  assert accuracy == pytest.approx(3 / 7)


def test_threshold_equal_score_positive():
  assert clinical.sensitivity([1], [0.5], threshold=0.5) == 1.0
  assert clinical.specificity([0], [0.5], threshold=0.5) == 0.0
  assert clinical.accuracy([1, 0], [0.5, 0.5], threshold=0.5) == 0.5


def test_sensitivity_no_positives_nan():
  assert math.isnan(clinical.sensitivity([0, 0], [0.2, 0.8]))


def test_specificity_no_negatives_nan():
  assert math.isnan(clinical.specificity([1, 1], [0.2, 0.8]))


def test_brier_score_hand_case():
  # Squared errors 0.01, 0.04, 0.16 and 0.25 sum to 0.46, and 0.46 / 4 is
  # 0.115.
  value = clinical.brier_score([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.5])

  assert value == pytest.approx(0.115, abs=1e-12)


def test_brier_score_extremes():
  assert clinical.brier_score([1, 0], [1.0, 0.0]) == 0.0
  assert clinical.brier_score([1, 0], [0.0, 1.0]) == 1.0


def test_empty_metrics_nan():
  for metric_fn in (
      clinical.auroc,
      clinical.auprc,
      clinical.sensitivity,
      clinical.specificity,
      clinical.accuracy,
      clinical.brier_score,
  ):
    assert math.isnan(metric_fn([], [])), metric_fn.__name__


def test_weights_repeat_patients():
  # Weights [1, 2, 1, 0] stand for negatives 0.1, 0.4, 0.4 and the positive
  # 0.35, which beats only 0.1: 1 of 3 pairs.
  weights = [1, 2, 1, 0]
  repeated_labels = [0, 0, 0, 1]
  repeated_scores = [0.1, 0.4, 0.4, 0.35]

  weighted = clinical.auroc(
      SKLEARN_LABELS, SKLEARN_SCORES, sample_weight=weights
  )
  repeated = clinical.auroc(repeated_labels, repeated_scores)

  assert weighted == pytest.approx(1 / 3, abs=1e-12)
  assert repeated == pytest.approx(1 / 3, abs=1e-12)


def test_auprc_weights_skip_zero_runs():
  # Weight 0 removes the 0.8 positive, leaving descending thresholds 0.4
  # (precision 0), 0.35 (precision 1/2, recall 1) and 0.1: AP = 1/2.
  value = clinical.auprc(
      SKLEARN_LABELS, SKLEARN_SCORES, sample_weight=[1, 1, 1, 0]
  )

  assert value == pytest.approx(0.5, abs=1e-12)


def test_weight_rows_give_one_value_each():
  # Row 0 is unweighted (0.75). Row 1 is the case of
  # test_weights_repeat_patients (1/3).
  weights = np.array([[1, 1, 1, 1], [1, 2, 1, 0]])

  values = clinical.auroc(SKLEARN_LABELS, SKLEARN_SCORES, sample_weight=weights)

  assert values.shape == (2,)
  np.testing.assert_allclose(values, [0.75, 1 / 3], atol=1e-12)


def test_bootstrap_contains_estimate():
  labels, scores = _synthetic_patients(400, seed=1)
  estimate = clinical.auroc(labels, scores)

  low, high, num_valid = clinical.bootstrap_ci(clinical.auroc, labels, scores)

  assert low < estimate < high
  assert num_valid == 1000


def test_bootstrap_narrows_with_more_patients():
  small_labels, small_scores = _synthetic_patients(100, seed=2)
  large_labels, large_scores = _synthetic_patients(1600, seed=2)

  small_low, small_high, _ = clinical.bootstrap_ci(
      clinical.auroc, small_labels, small_scores
  )
  large_low, large_high, _ = clinical.bootstrap_ci(
      clinical.auroc, large_labels, large_scores
  )

  # Widths shrink roughly as 1 / sqrt(patients), so 16x the patients gives
  # about a quarter of the width; half is a loose bound.
  assert large_high - large_low < 0.5 * (small_high - small_low)


def test_bootstrap_same_seed_reproducible():
  labels, scores = _synthetic_patients(200, seed=3)

  first = clinical.bootstrap_ci(clinical.auprc, labels, scores, seed=7)
  second = clinical.bootstrap_ci(clinical.auprc, labels, scores, seed=7)

  assert first == second


def test_bootstrap_other_seed_differs():
  labels, scores = _synthetic_patients(200, seed=3)

  first = clinical.bootstrap_ci(clinical.auprc, labels, scores, seed=7)
  second = clinical.bootstrap_ci(clinical.auprc, labels, scores, seed=8)

  assert first[:2] != second[:2]


def test_bootstrap_drops_undefined_resamples():
  # With 1 positive among 5 patients, a resample misses it with probability
  # (4/5)**5, about 0.33, so roughly 330 of 1000 resamples have no AUROC.
  labels = [1, 0, 0, 0, 0]
  scores = [0.9, 0.1, 0.2, 0.3, 0.4]

  low, high, num_valid = clinical.bootstrap_ci(clinical.auroc, labels, scores)

  assert 550 < num_valid < 800
  # The positive outranks every negative, so each valid resample has 1.0.
  assert low == 1.0
  assert high == 1.0


def test_bootstrap_single_class_none_valid():
  result = clinical.bootstrap_ci(clinical.auroc, [0, 0, 0], [0.1, 0.5, 0.9])

  assert math.isnan(result[0])
  assert math.isnan(result[1])
  assert result[2] == 0


def test_bootstrap_empty_none_valid():
  result = clinical.bootstrap_ci(clinical.accuracy, [], [])

  assert math.isnan(result[0])
  assert math.isnan(result[1])
  assert result[2] == 0


def test_bootstrap_partial_threshold():
  # Every resample contains only the two patients below, both correct at
  # threshold 0.3, so every accuracy is 1.
  metric_fn = functools.partial(clinical.accuracy, threshold=0.3)

  low, high, num_valid = clinical.bootstrap_ci(
      metric_fn, [1, 0], [0.4, 0.2], num_resamples=50
  )

  assert (low, high, num_valid) == (1.0, 1.0, 50)


def test_bootstrap_rejects_scalar_metric():
  def scalar_metric(labels, scores, sample_weight):
    del labels, scores, sample_weight
    return 0.5

  with pytest.raises(ValueError, match='`metric_fn`'):
    clinical.bootstrap_ci(scalar_metric, [0, 1], [0.2, 0.8])


def _logistic_fit(labels, scores, weights, *, fit_slope):
  """Return (intercept, slope) by scipy's optimizer, as a reference."""
  log_odds = np.log(scores) - np.log1p(-scores)

  def negative_log_likelihood(parameters):
    slope = parameters[1] if fit_slope else 1.0
    eta = parameters[0] + slope * log_odds
    return np.sum(weights * (np.logaddexp(0.0, eta) - labels * eta))

  start = [0.0, 1.0] if fit_slope else [0.0]
  result = scipy.optimize.minimize(negative_log_likelihood, start,
                                   method='BFGS', options={'gtol': 1e-10})
  return result.x[0], (result.x[1] if fit_slope else 1.0)


@pytest.mark.parametrize('seed, sharpening', [(0, 1.0), (1, 1.0), (2, 1.0),
                                               (3, 3.0), (5, 2.0)])
def test_calibration_matches_scipy_fit(seed, sharpening):
  # Sharpened scores are overconfident, with a slope near 1 / sharpening,
  # where a Newton step from slope 1 without a line search overshoots.
  rng = np.random.default_rng(seed)
  truth = rng.uniform(0.02, 0.98, size=60)
  exponent = 1.5 if sharpening == 1.0 else 1.0
  labels = (rng.uniform(size=60) < truth**exponent).astype(int)
  scores = 1 / (1 + ((1 - truth) / truth)**sharpening)
  weights = rng.integers(0, 3, size=60).astype(float)

  slope = clinical.calibration_slope(labels, scores, sample_weight=weights)
  intercept = clinical.calibration_intercept(labels, scores,
                                             sample_weight=weights)

  _, expected_slope = _logistic_fit(labels, scores, weights, fit_slope=True)
  expected_intercept, _ = _logistic_fit(labels, scores, weights,
                                        fit_slope=False)
  assert slope == pytest.approx(expected_slope, abs=1e-5)
  assert intercept == pytest.approx(expected_intercept, abs=1e-5)


def test_calibration_recovers_known_miscalibration():
  # Outcomes drawn with logit P = -0.5 + 0.6 * logit(score): the scores are
  # too extreme (slope 0.6) and too high on average (intercept < 0).
  rng = np.random.default_rng(3)
  scores = rng.uniform(0.01, 0.99, size=200_000)
  log_odds = np.log(scores / (1 - scores))
  labels = (rng.uniform(size=scores.size)
            < 1 / (1 + np.exp(0.5 - 0.6 * log_odds))).astype(int)

  assert clinical.calibration_slope(labels, scores) == pytest.approx(
      0.6, abs=0.01)
  assert clinical.calibration_intercept(labels, scores) < -0.3


def test_calibrated_scores_give_slope_one_intercept_zero():
  rng = np.random.default_rng(4)
  scores = rng.uniform(0.05, 0.95, size=200_000)
  labels = (rng.uniform(size=scores.size) < scores).astype(int)

  assert clinical.calibration_slope(labels, scores) == pytest.approx(
      1.0, abs=0.02)
  assert clinical.calibration_intercept(labels, scores) == pytest.approx(
      0.0, abs=0.02)


@pytest.mark.parametrize('metric, labels, scores', [
    # One class only: the optimum is at infinity.
    (clinical.calibration_slope, [1, 1, 1], [0.2, 0.5, 0.9]),
    (clinical.calibration_intercept, [0, 0], [0.2, 0.5]),
    # Scores that separate the classes: the slope grows without bound.
    (clinical.calibration_slope, [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),
    # Separation with a tie at the boundary: still no finite slope.
    (clinical.calibration_slope, [0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]),
    # Reversed separation: the slope falls without bound.
    (clinical.calibration_slope, [1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]),
    # A single distinct score: no slope to fit.
    (clinical.calibration_slope, [0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]),
])
def test_calibration_undefined_is_nan(metric, labels, scores):
  assert math.isnan(metric(labels, scores))


def test_calibration_intercept_of_constant_score():
  # Half the patients are positive, so a constant 0.5 is calibrated, and a
  # constant 0.2 needs logit(0.5) - logit(0.2) = log(4) added.
  labels = [0, 1, 0, 1]

  assert clinical.calibration_intercept(labels, [0.5] * 4) == pytest.approx(
      0.0, abs=1e-9)
  assert clinical.calibration_intercept(labels, [0.2] * 4) == pytest.approx(
      math.log(4.0), abs=1e-9)


@pytest.mark.parametrize('score', [1e-11, 0.0, 1.0])
def test_calibration_intercept_of_extreme_constant_score(score):
  # Half the patients are positive, so the intercept is
  # logit(0.5) - logit(score), with the score clipped to [1e-12, 1 - 1e-12].
  # Near the clip the curvature is about 1e-12 and the first Newton step
  # about 1e12, so the line search must halve it about 40 times.
  clipped = min(max(score, 1e-12), 1 - 1e-12)
  expected = math.log((1 - clipped) / clipped)

  intercept = clinical.calibration_intercept([0, 1, 0, 1], [score] * 4)

  assert intercept == pytest.approx(expected, rel=1e-6)


def test_calibration_slope_of_uninformative_extreme_scores():
  # Each score has one patient of each class, so the slope is 0.
  scores = [1e-12, 1e-12, 1e-11, 1e-11, 3e-11, 3e-11, 5e-12, 5e-12]

  slope = clinical.calibration_slope([0, 1, 0, 1, 0, 1, 1, 0], scores)

  assert slope == pytest.approx(0.0, abs=1e-6)


def test_calibration_intercept_of_two_confident_patients():
  # Both are predicted right with probability 1 - 1e-12; the likelihood is
  # symmetric in the intercept, so the optimum is 0.
  assert clinical.calibration_intercept([0, 1], [0.0, 1.0]) == pytest.approx(
      0.0, abs=1e-3)


@pytest.mark.parametrize('metric', [clinical.calibration_slope,
                                    clinical.calibration_intercept])
def test_calibration_resamples_match_single_calls(metric):
  labels, scores = _synthetic_patients(40, seed=6)
  counts = np.random.default_rng(7).integers(0, 3, size=(5, 40))
  counts[2] = 0
  # One patient of each class: their two scores separate the classes, so
  # the slope has no finite optimum, but the intercept alone has one.
  counts[2, :2] = 1

  batched = metric(labels, scores, sample_weight=counts)

  for row, value in zip(counts, batched):
    np.testing.assert_allclose(
        value, metric(labels, scores, sample_weight=row), atol=1e-7)
  assert math.isnan(batched[2]) == (metric is clinical.calibration_slope)


def test_calibration_curve_bins_by_hand():
  # Bins of width 0.25: [0.05, 0.15] in the first, none in the second,
  # 0.5 in the third, and 0.95 and exactly 1.0 in the last.
  mean_score, observed, counts = clinical.calibration_curve(
      [0, 1, 1, 0, 1], [0.05, 0.15, 0.95, 1.0, 0.5], num_bins=4)

  np.testing.assert_allclose(mean_score, [0.1, np.nan, 0.5, 0.975])
  np.testing.assert_allclose(observed, [0.5, np.nan, 1.0, 0.5])
  np.testing.assert_array_equal(counts, [2, 0, 1, 2])


@pytest.mark.parametrize('num_bins', [0, 2.5, True])
def test_calibration_curve_rejects_bins(num_bins):
  with pytest.raises(ValueError, match='num_bins'):
    clinical.calibration_curve([0, 1], [0.2, 0.8], num_bins=num_bins)


def test_report_matches_bootstrap_ci():
  labels, scores = _synthetic_patients(300, seed=4)

  report = clinical.clinical_report(labels, scores, seed=5)
  low, high, num_valid = clinical.bootstrap_ci(
      clinical.auprc, labels, scores, seed=5
  )

  assert report['auprc']['ci_low'] == low
  assert report['auprc']['ci_high'] == high
  assert report['auprc']['ci_resamples'] == num_valid


def test_report_values_and_counts():
  report = clinical.clinical_report(
      SKLEARN_LABELS, SKLEARN_SCORES, num_resamples=200
  )

  assert report['num_patients'] == 4
  assert report['num_positive'] == 2
  assert report['auroc']['value'] == pytest.approx(0.75)
  assert report['auprc']['value'] == pytest.approx(5 / 6)
  # At 0.5 only 0.8 is predicted positive: 3 of 4 correct.
  assert report['accuracy']['value'] == pytest.approx(0.75)
  assert report['sensitivity']['value'] == pytest.approx(0.5)
  assert report['specificity']['value'] == pytest.approx(1.0)
  # The scores rank the classes imperfectly, so the slope is finite.
  assert report['calibration_slope']['value'] == pytest.approx(
      clinical.calibration_slope(SKLEARN_LABELS, SKLEARN_SCORES))
  assert report['calibration_intercept']['value'] == pytest.approx(
      clinical.calibration_intercept(SKLEARN_LABELS, SKLEARN_SCORES))


def test_report_single_class_json():
  report = clinical.clinical_report([1, 1, 1], [0.7, 0.2, 0.9])

  text = json.dumps(report, allow_nan=False)

  assert json.loads(text)['auroc']['value'] is None
  assert report['auroc']['ci_resamples'] == 0
  assert report['specificity']['value'] is None
  assert report['accuracy']['value'] == pytest.approx(2 / 3)


def test_report_empty_test_set():
  report = clinical.clinical_report([], [])

  text = json.dumps(report, allow_nan=False)

  assert report['num_patients'] == 0
  assert report['num_positive'] == 0
  assert json.loads(text)['brier'] == {
      'value': None,
      'ci_low': None,
      'ci_high': None,
      'ci_resamples': 0,
  }


@pytest.mark.parametrize(
    'labels, scores, message',
    [
        pytest.param([0, 2], [0.2, 0.8], '`labels`.*2 at index 1', id='label'),
        pytest.param(
            [0.0, float('nan')], [0.2, 0.8], '`labels`.*nan', id='nan_label'
        ),
        pytest.param([0, 1], [0.2, 1.5], '`scores`.*1.5', id='score_high'),
        pytest.param([0, 1], [-0.1, 0.5], '`scores`.*-0.1', id='score_low'),
        pytest.param(
            [0, 1], [0.2, float('nan')], '`scores`.*nan', id='nan_score'
        ),
        pytest.param(
            [0, 1], [0.2, float('inf')], '`scores`.*inf', id='inf_score'
        ),
        pytest.param([0, 1, 1], [0.2, 0.8], '3 and 2', id='length'),
        pytest.param([[0, 1]], [[0.2, 0.8]], '`labels`.*1-D', id='2d'),
        pytest.param(0, 0.5, '`labels`.*1-D', id='scalar'),
    ],
)
def test_report_rejects_invalid(labels, scores, message):
  with pytest.raises(ValueError, match=message):
    clinical.clinical_report(labels, scores)


def test_metric_rejects_invalid_label():
  with pytest.raises(ValueError, match='`labels`.*-1 at index 0'):
    clinical.auroc([-1, 1], [0.2, 0.8])


def test_report_rejects_text_labels():
  with pytest.raises(TypeError, match='`labels`'):
    clinical.clinical_report(['0', '1'], [0.2, 0.8])


@pytest.mark.parametrize(
    'options, message',
    [
        pytest.param({'threshold': float('nan')}, '`threshold`', id='nan'),
        pytest.param({'num_resamples': 0}, '`num_resamples`.*0', id='zero'),
        pytest.param({'confidence': 1.0}, '`confidence`.*1.0', id='one'),
        pytest.param({'confidence': 0.0}, '`confidence`.*0.0', id='zero_c'),
    ],
)
def test_report_rejects_options(options, message):
  with pytest.raises(ValueError, match=message):
    clinical.clinical_report([0, 1], [0.2, 0.8], **options)


def test_report_rejects_float_resamples():
  with pytest.raises(TypeError, match='`num_resamples`'):
    clinical.clinical_report([0, 1], [0.2, 0.8], num_resamples=10.0)


@pytest.mark.parametrize(
    'weights, message',
    [
        pytest.param([1, -1], '`sample_weight`.*-1', id='negative'),
        pytest.param([1, float('inf')], '`sample_weight`.*inf', id='inf'),
        pytest.param([1, 1, 1], '`sample_weight`.*shape', id='length'),
    ],
)
def test_metric_rejects_weights(weights, message):
  with pytest.raises(ValueError, match=message):
    clinical.auroc([0, 1], [0.2, 0.8], sample_weight=weights)
