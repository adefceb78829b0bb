"""Empirical epsilon lower bounds: Clopper-Pearson and the canary audit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize
from scipy import special
from scipy import stats

from fedjax_med import models
from fedjax_med.privacy import audit
from fedjax_med.privacy import lira
from fedjax_med.privacy import membership

DELTA = 1e-5


def _gaussian_mechanism_epsilon(sigma, delta):
  """Solve for the exact epsilon of N(0, sigma^2) noise at sensitivity 1.

  That mechanism is (eps, delta)-DP exactly when delta is at least
  Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma).
  """

  def delta_gap(epsilon):
    upper = special.ndtr(1 / (2 * sigma) - epsilon * sigma)
    lower = math.exp(epsilon) * special.ndtr(-1 / (2 * sigma) - epsilon * sigma)
    return upper - lower - delta

  return optimize.brentq(delta_gap, 0.0, 100.0)


def _randomized_response_counts(epsilon, num_trials, rng, size=None):
  """Counts of guessing the canary bit from epsilon-DP randomized response.

  The mechanism reports the bit with probability e^eps / (1 + e^eps) and
  flips it otherwise; the attack guesses the reported bit.
  """
  keep = math.exp(epsilon) / (1 + math.exp(epsilon))
  tp = rng.binomial(num_trials, keep, size=size)
  fp = rng.binomial(num_trials, 1 - keep, size=size)
  return tp, num_trials - tp, fp, num_trials - fp


def test_clopper_pearson_matches_scipy():
  lower, upper = audit.clopper_pearson_interval(7, 20, confidence=0.9)

  assert lower == pytest.approx(stats.beta.ppf(0.05, 7, 14))
  assert upper == pytest.approx(stats.beta.ppf(0.95, 8, 13))


def test_clopper_pearson_extreme_counts():
  lower, upper = audit.clopper_pearson_interval([0, 10], [10, 10])

  np.testing.assert_allclose(lower, [0.0, 0.025 ** (1 / 10)])
  np.testing.assert_allclose(upper, [1 - 0.025 ** (1 / 10), 1.0])


def test_bound_zero_without_signal():
  bound = audit.epsilon_lower_bound(50, 50, 50, 50, delta=DELTA)

  assert bound == 0.0


def test_bound_matches_direct_scipy():
  tp, fn, fp, tn = 90, 10, 5, 95
  # Each rate bound is one-sided at level 1 - 0.05 / 2.
  tpr_low = stats.beta.ppf(0.025, tp, fn + 1)
  fpr_high = stats.beta.ppf(0.975, fp + 1, tn)
  expected = max(
      math.log((tpr_low - DELTA) / fpr_high),
      math.log((1 - fpr_high - DELTA) / (1 - tpr_low)),
  )

  bound = audit.epsilon_lower_bound(tp, fn, fp, tn, delta=DELTA)

  assert bound == pytest.approx(expected, rel=1e-9)
  assert bound == pytest.approx(1.98796, abs=1e-5)


def test_bound_perfect_separation_grows():
  bounds = [
      audit.epsilon_lower_bound(n, 0, 0, n, delta=DELTA)
      for n in (10, 100, 1000, 10000)
  ]

  assert all(math.isfinite(bound) for bound in bounds)
  assert bounds == sorted(bounds)
  assert bounds[0] < bounds[-1]
  # With no error, TPR_low = r = 0.025^(1/n) and FPR_high = 1 - r.
  r = 0.025 ** (1 / 10)
  assert bounds[0] == pytest.approx(math.log((r - DELTA) / (1 - r)))


def test_bound_vectorized():
  bounds = audit.epsilon_lower_bound(
      np.array([50, 90]), np.array([50, 10]), 5, 95, delta=DELTA
  )

  assert bounds.shape == (2,)
  assert bounds[1] == pytest.approx(
      audit.epsilon_lower_bound(90, 10, 5, 95, delta=DELTA)
  )


def test_bound_below_randomized_response_epsilon():
  rng = np.random.default_rng(0)

  bound = audit.epsilon_lower_bound(
      *_randomized_response_counts(1.0, 5000, rng), delta=0.0
  )

  assert bound <= 1.0
  assert bound > 0.8


def test_bound_coverage_randomized_response():
  # The bound may exceed the true epsilon in at most 5% of audits.
  rng = np.random.default_rng(1)

  bounds = audit.epsilon_lower_bound(
      *_randomized_response_counts(1.0, 200, rng, size=2000), delta=0.0
  )

  assert np.mean(bounds > 1.0) <= 0.05
  assert np.mean(bounds > 0.0) > 0.5


@pytest.mark.parametrize(
    'counts, delta, confidence, message',
    [
        ((-1, 5, 5, 5), DELTA, 0.95, '`tp`'),
        ((1.5, 5, 5, 5), DELTA, 0.95, '`tp`'),
        ((np.inf, 0, 0, 5), 0.0, 0.95, 'finite whole counts; got inf'),
        ((5, 5, np.nan, 5), DELTA, 0.95, '`fp`'),
        ((0, 0, 5, 5), DELTA, 0.95, '`tp \\+ fn`'),
        ((5, 5, 5, 5), 1.0, 0.95, '`delta`'),
        ((5, 5, 5, 5), DELTA, 1.0, '`confidence`'),
    ],
)
def test_bound_rejects_invalid(counts, delta, confidence, message):
  with pytest.raises(ValueError, match=message):
    audit.epsilon_lower_bound(*counts, delta=delta, confidence=confidence)


def _gaussian_train_fn(sigma):
  """A Gaussian mechanism: the canary adds 1 to a noisy scalar output."""

  def train_fn(key, include_canary):
    return include_canary.astype(jnp.float32) + sigma * jax.random.normal(key)

  return train_fn


def test_canary_audit_gaussian_mechanism(key):
  sigma = 1.0
  true_epsilon = _gaussian_mechanism_epsilon(sigma, DELTA)

  result = audit.canary_audit(
      _gaussian_train_fn(sigma), lambda output: output, key=key,
      num_trials=2000, delta=DELTA,
  )

  assert result.epsilon_lower <= true_epsilon
  assert result.epsilon_lower > 0.5
  assert result.true_positives + result.false_negatives == 1000
  assert result.false_positives + result.true_negatives == 1000
  assert result.scores_with_canary.shape == (2000,)


def test_canary_audit_batches_match(key):
  all_at_once = audit.canary_audit(
      _gaussian_train_fn(1.0), lambda output: output, key=key,
      num_trials=20, delta=DELTA,
  )
  in_batches = audit.canary_audit(
      _gaussian_train_fn(1.0), lambda output: output, key=key,
      num_trials=20, delta=DELTA, batch_size=7,
  )

  np.testing.assert_allclose(
      in_batches.scores_with_canary, all_at_once.scores_with_canary, rtol=1e-6
  )
  assert in_batches.epsilon_lower == all_at_once.epsilon_lower


def test_canary_audit_zero_without_canary_effect(key):
  def ignore_canary(key, include_canary):
    del include_canary
    return jax.random.normal(key)

  result = audit.canary_audit(
      ignore_canary, lambda output: output, key=key, num_trials=400,
      delta=DELTA,
  )

  assert result.epsilon_lower == 0.0


def test_canary_audit_memorized_example(key):
  # Without DP, a mislabeled outlier is fitted only when it is included.
  data_key, noise_key = jax.random.split(key)
  x = jax.random.normal(data_key, (16, 4))
  y = (x[:, 0] > 0).astype(jnp.int32)
  canary_x = jnp.array([[-6.0, 0.0, 0.0, 6.0]])
  x = jnp.concatenate([x, canary_x])
  y = jnp.concatenate([y, jnp.array([1], jnp.int32)])
  model = models.from_flax(models.LogisticRegression(2), num_classes=2)
  train_rows = lira.build_shadow_trainer(
      model, x, y, optax.sgd(0.5), num_steps=60, batch_size=17
  )

  def train_fn(key, include_canary):
    mask = jnp.arange(17) < 16
    return train_rows(key, mask.at[16].set(include_canary))

  def score_fn(params):
    return membership.loss_scores(model, params, canary_x, y[16:])[0]

  result = audit.canary_audit(
      train_fn, score_fn, key=noise_key, num_trials=100, delta=DELTA
  )

  assert result.false_positives == 0
  assert result.true_positives == 50
  assert result.epsilon_lower > 2.0


def test_canary_audit_rejects_one_trial(key):
  with pytest.raises(ValueError, match='num_trials'):
    audit.canary_audit(
        _gaussian_train_fn(1.0), lambda output: output, key=key,
        num_trials=1, delta=DELTA,
    )


def test_canary_audit_rejects_nan_score(key):
  def diverged(key, include_canary):
    del key, include_canary
    return jnp.float32(jnp.nan)

  with pytest.raises(ValueError, match='NaN'):
    audit.canary_audit(
        diverged, lambda output: output, key=key, num_trials=4, delta=DELTA
    )


def test_canary_audit_rejects_vector_score(key):
  with pytest.raises(ValueError, match='one scalar score per trial'):
    audit.canary_audit(
        _gaussian_train_fn(1.0), lambda output: jnp.stack([output, output]),
        key=key, num_trials=4, delta=DELTA,
    )
