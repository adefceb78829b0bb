"""Empirical lower bounds on epsilon from membership attacks on a canary.

An (epsilon, delta)-DP training procedure bounds what any test can learn
about one canary, which is an example or, for client-level DP, a whole
client. Any test that decides "the canary was in training" satisfies
`TPR <= e^epsilon * FPR + delta` and `TNR <= e^epsilon * FNR + delta`.
Running the training many times with and without the canary and counting
the attack's decisions therefore gives a lower bound on epsilon.
`epsilon_lower_bound` turns the counts into a bound that is valid with a
chosen confidence, from Clopper-Pearson bounds on the two rates.
`canary_audit` runs the trainings (vmapped over trials), picks the attack
threshold on half of them and counts on the other half.

A lower bound far below the epsilon that accounting proves is expected: the
attack may be weak, and accounting covers the worst case. A lower bound
above the proven epsilon means that the implementation or the accounting
is wrong.

References:
  Jagielski, Ullman and Oprea, "Auditing Differentially Private Machine
  Learning: How Private is Private SGD?", NeurIPS 2020,
  https://arxiv.org/abs/2006.07709.

  Nasr, Song, Thakurta, Papernot and Carlini, "Adversary Instantiation:
  Lower Bounds for Differentially Private Machine Learning", IEEE S&P 2021,
  https://arxiv.org/abs/2101.04535.

  Clopper and Pearson, "The Use of Confidence or Fiducial Limits Illustrated
  in the Case of the Binomial", Biometrika 26(4):404-413, 1934.
"""

import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

import numpy as np
import numpy.typing as npt
from scipy import stats

from fedjax_med.privacy import membership
from fedjax_med.typing import PRNGKey, PyTree


class CanaryAuditResult(NamedTuple):
  """Outcome of a canary audit.

  The four counts come from the evaluation half of the trials only, at the
  threshold chosen on the other half.

  Attributes:
    epsilon_lower: lower bound on epsilon, at the audit's confidence.
    threshold: the attack guesses "canary included" when the score is at
      least this value.
    true_positives: trials with the canary that the attack flagged.
    false_negatives: trials with the canary that it did not flag.
    false_positives: trials without the canary that it flagged.
    true_negatives: trials without the canary that it did not flag.
    scores_with_canary: `[num_trials]` scores of every trial with the canary.
    scores_without_canary: `[num_trials]` scores of every trial without it.
  """

  epsilon_lower: float
  threshold: float
  true_positives: int
  false_negatives: int
  false_positives: int
  true_negatives: int
  scores_with_canary: np.ndarray
  scores_without_canary: np.ndarray


def _validate_counts(**counts: npt.ArrayLike) -> dict[str, np.ndarray]:
  """Check that every count is a non-negative integer, return int64 arrays."""
  checked = {}
  for name, value in counts.items():
    array = np.asarray(value)
    # `np.round(inf) == inf`, so infinity needs its own check.
    if array.dtype.kind not in 'iuf' or not np.all(
        np.isfinite(array) & (array >= 0) & (array == np.round(array))
    ):
      raise ValueError(
          f'`{name}` must be non-negative, finite whole counts; got '
          f'{value!r}.'
      )
    checked[name] = array.astype(np.int64)
  return checked


def _validate_confidence(confidence: float) -> None:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f'`confidence` must be in (0, 1); got {confidence}.')


def clopper_pearson_interval(
    successes: npt.ArrayLike,
    trials: npt.ArrayLike,
    *,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
  """Compute the two-sided Clopper-Pearson interval of a binomial rate.

  Each side misses the true rate with probability at most
  `(1 - confidence) / 2`, so either end alone is a one-sided bound at
  confidence `1 - (1 - confidence) / 2`. The lower end is 0 when there is
  no success and the upper end is 1 when every trial succeeds.

  Args:
    successes: success counts, any shape that broadcasts with `trials`.
    trials: trial counts, each at least 1 and at least `successes`.
    confidence: coverage of the two-sided interval, in (0, 1).

  Returns:
    `(lower, upper)` float64 arrays of the broadcast shape.

  Raises:
    ValueError: if a count is negative, infinite or not whole, a trial
      count is 0 or below its success count, or `confidence` is not in
      (0, 1).
  """
  _validate_confidence(confidence)
  counts = _validate_counts(successes=successes, trials=trials)
  successes, trials = np.broadcast_arrays(counts['successes'], counts['trials'])
  if np.any(trials < 1) or np.any(successes > trials):
    raise ValueError(
        'Every `trials` count must be at least 1 and at least its '
        f'`successes`; got successes {successes!r} and trials {trials!r}.'
    )
  tail = (1.0 - confidence) / 2
  failures = trials - successes
  # The Beta shape parameters must be positive, so the cases that the
  # `where` replaces are computed with a placeholder of 1.
  lower = stats.beta.ppf(tail, np.maximum(successes, 1), failures + 1)
  upper = stats.beta.ppf(1.0 - tail, successes + 1, np.maximum(failures, 1))
  lower = np.where(successes == 0, 0.0, lower)
  upper = np.where(failures == 0, 1.0, upper)
  return lower, upper


def epsilon_lower_bound(
    tp: npt.ArrayLike,
    fn: npt.ArrayLike,
    fp: npt.ArrayLike,
    tn: npt.ArrayLike,
    *,
    delta: float,
    confidence: float = 0.95,
) -> float | np.ndarray:
  """Bound epsilon from below, from an attack's decisions over many trials.

  With `TPR_low` a lower Clopper-Pearson bound on `tp / (tp + fn)` and
  `FPR_high` an upper one on `fp / (fp + tn)`, each at one-sided level
  `1 - (1 - confidence) / 2`, the bound is

    max(0, log((TPR_low - delta) / FPR_high),
        log((1 - FPR_high - delta) / (1 - TPR_low))).

  The first term comes from `TPR <= e^eps FPR + delta` and the second from
  `TNR <= e^eps FNR + delta`. Both terms are smallest at a low TPR and a
  high FPR, so both use `TPR_low` and `FPR_high`. By the union bound, the
  two rate bounds are both correct with probability at least `confidence`,
  and then the true epsilon of any (epsilon, delta)-DP training is at least
  the returned value. The trials must be independent, and the attack's
  threshold must be chosen without them.

  Args:
    tp: trials with the canary that the attack flagged.
    fn: trials with the canary that it did not flag.
    fp: trials without the canary that it flagged.
    tn: trials without the canary that it did not flag.
    delta: the delta of the DP guarantee under audit, in [0, 1).
    confidence: probability that the bound holds, in (0, 1).

  Returns:
    The bound, a float for scalar counts, or an array of the broadcast
    shape of the counts. Always finite and non-negative.

  Raises:
    ValueError: if a count is negative, infinite or not whole, `tp + fn` or
      `fp + tn` is 0, `delta` is not in [0, 1), or `confidence` is not in
      (0, 1).
  """
  if not 0.0 <= delta < 1.0:
    raise ValueError(f'`delta` must be in [0, 1); got {delta}.')
  counts = _validate_counts(tp=tp, fn=fn, fp=fp, tn=tn)
  positives = counts['tp'] + counts['fn']
  negatives = counts['fp'] + counts['tn']
  if np.any(positives < 1) or np.any(negatives < 1):
    raise ValueError(
        '`tp + fn` and `fp + tn` must each be at least 1; got '
        f'{positives!r} and {negatives!r}.'
    )
  tpr_low, _ = clopper_pearson_interval(
      counts['tp'], positives, confidence=confidence
  )
  _, fpr_high = clopper_pearson_interval(
      counts['fp'], negatives, confidence=confidence
  )
  # `fpr_high > 0` and `tpr_low < 1`, so only a numerator at or below 0
  # can make a logarithm undefined. Such a term bounds nothing and counts
  # as 0.
  with np.errstate(divide='ignore', invalid='ignore'):
    from_tpr = np.log((tpr_low - delta) / fpr_high)
    from_tnr = np.log((1.0 - fpr_high - delta) / (1.0 - tpr_low))
  bound = np.maximum(0.0, np.fmax(from_tpr, from_tnr))
  bound = np.where(np.isnan(bound), 0.0, bound)
  return float(bound) if bound.ndim == 0 else bound


def _count_flagged(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """Count, per threshold, the scores at or above it."""
  return scores.size - np.searchsorted(np.sort(scores), thresholds, 'left')


def _select_threshold(
    with_canary: np.ndarray,
    without_canary: np.ndarray,
    *,
    delta: float,
    confidence: float,
) -> float:
  """Pick the observed score whose threshold gives the highest bound.

  Ties, including the case where every threshold bounds epsilon by 0, go to
  the largest TPR - FPR.
  """
  thresholds = np.unique(np.concatenate([with_canary, without_canary]))
  tp = _count_flagged(with_canary, thresholds)
  fp = _count_flagged(without_canary, thresholds)
  bounds = epsilon_lower_bound(
      tp, with_canary.size - tp, fp, without_canary.size - fp,
      delta=delta, confidence=confidence,
  )
  youden = tp / with_canary.size - fp / without_canary.size
  # `lexsort` sorts by its last key first.
  best = np.lexsort((youden, bounds))[-1]
  return float(thresholds[best])


def canary_audit(
    train_fn: Callable[[PRNGKey, jax.Array], PyTree],
    score_fn: Callable[[PyTree], jax.Array],
    *,
    key: PRNGKey,
    num_trials: int,
    delta: float,
    confidence: float = 0.95,
    batch_size: int | None = None,
) -> CanaryAuditResult:
  """Audit a training procedure with trials with and without a canary.

  Runs `num_trials` trainings with the canary and `num_trials` without,
  each from its own key, as one jitted computation vmapped over trials.
  `score_fn` scores the canary in each trained model. The threshold is
  chosen on the first half of each group of trials, and the counts on the
  second half give `epsilon_lower_bound`. The two halves come from
  independent keys, so the choice of threshold does not bias the bound.

  For client-level DP the canary is a whole client: `train_fn` runs the
  federated rounds with that client in the population or without it, and
  the bound is on the client-level epsilon.

  Args:
    train_fn: `(key, include_canary) -> output`, jittable; `include_canary`
      is a scalar bool array. The output is usually the final params.
    score_fn: `output -> scalar score`, jittable, higher when the canary
      looks included (for example its negative loss).
    key: PRNG key of all trainings.
    num_trials: trainings per group, at least 2; half of them choose the
      threshold.
    delta: the delta of the DP guarantee under audit.
    confidence: probability that the bound holds.
    batch_size: trials trained side by side; see
      `membership.map_trainings`.

  Returns:
    The `CanaryAuditResult`.

  Raises:
    ValueError: if `num_trials` is below 2, `score_fn` does not return a
      scalar, a score is NaN, or for the reasons of `epsilon_lower_bound`.
  """
  if (isinstance(num_trials, bool) or not isinstance(num_trials, numbers.Integral)
      or num_trials < 2):
    raise ValueError(
        f'`num_trials` must be an integer of at least 2; got {num_trials!r}.')
  if not 0.0 <= delta < 1.0:
    raise ValueError(f'`delta` must be in [0, 1); got {delta}.')
  _validate_confidence(confidence)

  def train_and_score(trial_key, include_canary):
    return score_fn(train_fn(trial_key, include_canary))

  keys = jax.random.split(key, 2 * num_trials)
  include = jnp.arange(2 * num_trials) < num_trials
  # Traced once without running, so a wrong score shape fails before the
  # trainings.
  score_shape = jax.eval_shape(train_and_score, keys[0], include[0])
  if getattr(score_shape, 'shape', None) != ():
    raise ValueError(
        '`score_fn` must return one scalar score per trial; got '
        f'{score_shape}. Reduce the score to shape (), for example take the '
        "canary's entry with `[0]`."
    )
  scores = membership.map_trainings(
      train_and_score, keys, include, batch_size=batch_size
  )
  scores = np.asarray(scores, dtype=np.float64).reshape(2 * num_trials)
  if np.isnan(scores).any():
    raise ValueError(
        f'`score_fn` returned NaN in {int(np.isnan(scores).sum())} of '
        f'{scores.size} trials; check that training does not diverge.'
    )
  with_canary, without_canary = scores[:num_trials], scores[num_trials:]

  split = num_trials // 2
  threshold = _select_threshold(
      with_canary[:split], without_canary[:split],
      delta=delta, confidence=confidence,
  )
  tp = int(np.sum(with_canary[split:] >= threshold))
  fp = int(np.sum(without_canary[split:] >= threshold))
  fn = (num_trials - split) - tp
  tn = (num_trials - split) - fp
  epsilon = epsilon_lower_bound(
      tp, fn, fp, tn, delta=delta, confidence=confidence
  )
  return CanaryAuditResult(
      epsilon_lower=epsilon,
      threshold=threshold,
      true_positives=tp,
      false_negatives=fn,
      false_positives=fp,
      true_negatives=tn,
      scores_with_canary=with_canary,
      scores_without_canary=without_canary,
  )
