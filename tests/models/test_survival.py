"""Tests for the Cox model, its Breslow loss and Harrell's C-index.

Expected values are computed by hand in the comments. The two hand-computed
C-index tables give the same values in `lifelines.utils.concordance_index`
0.30.3 with `predicted_scores = -risk`. Where this module returns NaN,
lifelines raises ZeroDivisionError.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util

from fedjax_med.evaluation import concordance
from fedjax_med.models import survival

# Four patients. Patients 1 and 2 die at the same time 2, and patient 3 is
# censored at time 3. exp(log_risk) is 1, 2, 1, 3.
TABLE_LOG_RISK = np.log([1.0, 2.0, 1.0, 3.0])
TABLE_TIME = np.array([1.0, 2.0, 2.0, 3.0])
TABLE_EVENT = np.array([1, 1, 1, 0])
# Breslow risk-set sums, one per event:
#   patient 0 (time 1): all four at risk, 1 + 2 + 1 + 3 = 7
#   patient 1 (time 2): patients 1, 2, 3 at risk, 2 + 1 + 3 = 6
#   patient 2 (time 2): the same risk set, 6
# Loss = -(1/3) * [(log 1 - log 7) + (log 2 - log 6) + (log 1 - log 6)]
#      = (log 7 + log 3 + log 6) / 3 = log(126) / 3.
TABLE_LOSS = math.log(126.0) / 3.0
# d loss / d r_k = (1/3) * [-event_k + sum over events i with k at risk of
# exp(r_k) / S_i]:
#   k = 0: -1 + 1/7             = -6/7
#   k = 1: -1 + 2/7 + 2/6 + 2/6 = -1/21
#   k = 2: -1 + 1/7 + 1/6 + 1/6 = -11/21
#   k = 3:  0 + 3/7 + 3/6 + 3/6 = 10/7
TABLE_GRADIENT = np.array([-18.0, -1.0, -11.0, 30.0]) / 21.0 / 3.0


def _loss_fn(jit):
  if jit:
    return jax.jit(survival.cox_partial_likelihood_loss)
  return survival.cox_partial_likelihood_loss


def _padded_table():
  """The table plus one padding row that would change the loss if read."""
  log_risk = np.append(TABLE_LOG_RISK, 5.0)
  time = np.append(TABLE_TIME, 0.0)
  event = np.append(TABLE_EVENT, 1)
  mask = np.array([True, True, True, True, False])
  return log_risk, time, event, mask


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_cox_loss_breslow_hand_value(jit):
  loss = _loss_fn(jit)(TABLE_LOG_RISK, TABLE_TIME, TABLE_EVENT)

  assert float(loss) == pytest.approx(TABLE_LOSS, rel=1e-6)


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_cox_loss_ignores_padding(jit):
  log_risk, time, event, mask = _padded_table()

  loss = _loss_fn(jit)(log_risk, time, event, mask)

  assert float(loss) == pytest.approx(TABLE_LOSS, rel=1e-6)


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_cox_loss_nan_time_is_nan(jit):
  # The NaN row left every risk set, and the loss came back as 0.1044.
  loss = _loss_fn(jit)(jnp.array([1.0, 2.0, 0.0]),
                       jnp.array([1.0, jnp.nan, 3.0]), jnp.array([1, 1, 1]))

  assert math.isnan(float(loss))


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_cox_loss_nan_time_in_padding_ignored(jit):
  log_risk, time, event, mask = _padded_table()
  time[-1] = np.nan

  loss = _loss_fn(jit)(log_risk, time, event, mask)

  assert float(loss) == pytest.approx(TABLE_LOSS, rel=1e-6)


def test_cox_loss_gradient_closed_form():
  log_risk, time, event, mask = _padded_table()

  gradient = jax.grad(survival.cox_partial_likelihood_loss)(
      jnp.asarray(log_risk, jnp.float32), time, event, mask
  )

  np.testing.assert_allclose(gradient[:4], TABLE_GRADIENT, atol=1e-6)
  assert float(gradient[4]) == 0.0


def test_cox_loss_gradient_sums_to_zero():
  # Adding a constant to every log-risk leaves the loss unchanged, so the
  # gradient is orthogonal to the all-ones vector.
  gradient = jax.grad(survival.cox_partial_likelihood_loss)(
      jnp.asarray(TABLE_LOG_RISK, jnp.float32), TABLE_TIME, TABLE_EVENT
  )

  assert float(gradient.sum()) == pytest.approx(0.0, abs=1e-6)


def test_cox_loss_gradient_finite_differences():
  rng = np.random.default_rng(0)
  num_rows = 12
  # Integer times from 0 to 4 give many ties.
  time = rng.integers(0, 5, num_rows).astype(np.float32)
  event = rng.integers(0, 2, num_rows)
  mask = np.arange(num_rows) < 10
  log_risk = jnp.asarray(rng.normal(size=num_rows), jnp.float32)

  def loss_of_log_risk(values):
    return survival.cox_partial_likelihood_loss(values, time, event, mask)

  test_util.check_grads(
      loss_of_log_risk, (log_risk,), order=1, modes=['rev'], eps=1e-2
  )


def test_cox_loss_no_events_is_zero():
  event = np.zeros(4, dtype=np.int32)

  loss, gradient = jax.value_and_grad(survival.cox_partial_likelihood_loss)(
      jnp.asarray(TABLE_LOG_RISK, jnp.float32), TABLE_TIME, event
  )

  assert float(loss) == 0.0
  np.testing.assert_array_equal(gradient, np.zeros(4))


def test_cox_loss_events_only_in_padding():
  log_risk, time, _, mask = _padded_table()
  event = np.array([0, 0, 0, 0, 1])

  loss = survival.cox_partial_likelihood_loss(log_risk, time, event, mask)

  assert float(loss) == 0.0


def test_cox_loss_stable_for_large_risk():
  # A shift of 1000 would overflow exp in float32 without the logsumexp.
  shifted = jnp.asarray(TABLE_LOG_RISK + 1000.0, jnp.float32)

  loss, gradient = jax.value_and_grad(survival.cox_partial_likelihood_loss)(
      shifted, TABLE_TIME, TABLE_EVENT
  )

  assert float(loss) == pytest.approx(TABLE_LOSS, rel=1e-3)
  assert np.isfinite(gradient).all()


def test_cox_loss_row_order_invariant():
  order = np.array([3, 1, 0, 2])

  loss = survival.cox_partial_likelihood_loss(
      TABLE_LOG_RISK[order], TABLE_TIME[order], TABLE_EVENT[order]
  )

  assert float(loss) == pytest.approx(TABLE_LOSS, rel=1e-6)


def test_cox_loss_matches_loop_reference():
  rng = np.random.default_rng(1)
  num_rows = 30
  time = rng.integers(0, 6, num_rows).astype(np.float64)
  event = rng.integers(0, 2, num_rows)
  log_risk = rng.normal(size=num_rows)
  terms = []
  for i in range(num_rows):
    if event[i]:
      risk_set = [math.exp(log_risk[j]) for j in range(num_rows)
                  if time[j] >= time[i]]  # fmt: skip
      terms.append(math.log(sum(risk_set)) - log_risk[i])
  expected = sum(terms) / len(terms)

  loss = survival.cox_partial_likelihood_loss(
      jnp.asarray(log_risk, jnp.float32), time, event
  )

  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_cox_loss_rejects_wrong_shape():
  with pytest.raises(ValueError, match='`time` must have shape'):
    survival.cox_partial_likelihood_loss(
        TABLE_LOG_RISK, TABLE_TIME[:3], TABLE_EVENT
    )


def test_cox_loss_rejects_2d_log_risk():
  with pytest.raises(ValueError, match='`log_risk` must be 1-D'):
    survival.cox_partial_likelihood_loss(
        TABLE_LOG_RISK[:, None], TABLE_TIME, TABLE_EVENT
    )


def test_linear_cox_has_no_bias(key):
  x = jnp.ones((5, 39))

  params = survival.LinearCox().init(key, x)

  kernels = jax.tree.leaves(params)
  assert len(kernels) == 1
  assert kernels[0].shape == (39, 1)


def test_linear_cox_output_shape(key):
  x = jax.random.normal(key, (5, 39))
  kernel_init = jax.nn.initializers.normal(1.0)
  model = survival.LinearCox(kernel_init=kernel_init)
  params = model.init(key, x)

  log_risk = model.apply(params, x)

  assert log_risk.shape == (5,)
  kernel = jax.tree.leaves(params)[0]
  np.testing.assert_allclose(log_risk, x @ kernel[:, 0], rtol=1e-5)


def test_linear_cox_zero_start_loss(key):
  # With every log-risk 0 the risk-set sums are the sizes 4, 3 and 3.
  x = jax.random.normal(key, (4, 3))
  model = survival.LinearCox()
  log_risk = model.apply(model.init(key, x), x)

  loss = survival.cox_partial_likelihood_loss(log_risk, TABLE_TIME, TABLE_EVENT)

  expected = (math.log(4.0) + math.log(3.0) + math.log(3.0)) / 3.0
  assert float(loss) == pytest.approx(expected, rel=1e-6)


# Five patients, B and E censored. Comparable pairs (event patient first):
#   A (time 1) with B, C, D, E: risk 0.9 beats 0.5, 0.5, 0.2, 0.5 -> 4
#   C (time 4) with D: 0.5 > 0.2 -> 1; with E: 0.5 == 0.5 -> 1/2
#   D (time 6) with E: 0.2 < 0.5 -> 0
# B is censored at time 3 before C's event, so (B, C) is not comparable.
# C-index = (4 + 1 + 0.5 + 0) / 7 = 11/14.
FIVE_RISK = np.array([0.9, 0.5, 0.5, 0.2, 0.5])
FIVE_TIME = np.array([1.0, 3.0, 4.0, 6.0, 9.0])
FIVE_EVENT = np.array([1, 0, 1, 1, 0])


def test_concordance_hand_value():
  result = concordance.concordance_index(FIVE_RISK, FIVE_TIME, FIVE_EVENT)

  assert result.c_index == pytest.approx(11 / 14, abs=1e-12)
  assert result.num_comparable == 7
  assert result.num_concordant == 5
  assert result.num_tied_risk == 1
  assert result.reason is None


def test_concordance_ignores_padding():
  risk = np.append(FIVE_RISK, [np.nan, 10.0])
  time = np.append(FIVE_TIME, [0.0, 0.0])
  event = np.append(FIVE_EVENT, [1, 7])
  mask = np.array([True] * 5 + [False, False])

  result = concordance.concordance_index(risk, time, event, mask)

  assert result.c_index == pytest.approx(11 / 14, abs=1e-12)
  assert result.num_comparable == 7


def test_concordance_time_tie_convention():
  # All three leave at time 2. Patients 0 and 1 both die, so (0, 1) is not
  # comparable. Patient 2 is censored at the same time, so (0, 2) and
  # (1, 2) are: 0.3 > 0.2 is concordant and 0.1 < 0.2 is not. C = 1/2.
  result = concordance.concordance_index(
      [0.3, 0.1, 0.2], [2.0, 2.0, 2.0], [1, 1, 0]
  )

  assert result.num_comparable == 2
  assert result.num_concordant == 1
  assert result.c_index == pytest.approx(0.5, abs=1e-12)


def test_concordance_perfect_and_reversed():
  time = [1.0, 2.0, 3.0, 4.0]
  event = [1, 1, 1, 1]

  best = concordance.concordance_index([4.0, 3.0, 2.0, 1.0], time, event)
  worst = concordance.concordance_index([1.0, 2.0, 3.0, 4.0], time, event)

  assert best.c_index == 1.0
  assert worst.c_index == 0.0


def test_concordance_no_events_is_nan():
  result = concordance.concordance_index(
      [0.1, 0.2, 0.3], [1.0, 2.0, 3.0], [0, 0, 0]
  )

  assert math.isnan(result.c_index)
  assert result.num_comparable == 0
  assert 'no patient has an observed event' in result.reason


def test_concordance_last_event_only_is_nan():
  # The only death is after both censoring times, so no pair is comparable.
  result = concordance.concordance_index(
      [0.1, 0.2, 0.3], [1.0, 2.0, 3.0], [0, 0, 1]
  )

  assert math.isnan(result.c_index)
  assert 'no pair is comparable' in result.reason


def test_concordance_all_padding_is_nan():
  result = concordance.concordance_index(
      [0.1, 0.2], [1.0, 2.0], [1, 1], mask=np.array([False, False])
  )

  assert math.isnan(result.c_index)
  assert result.reason == 'there are no real rows'


def _loop_concordance(risk, time, event):
  """Pair-by-pair count with the lifelines rules, for comparison."""
  correct = 0.0
  pairs = 0
  for i in range(len(time)):
    for j in range(len(time)):
      comparable = event[i] and (
          time[i] < time[j] or (time[i] == time[j] and not event[j])
      )
      if not comparable:
        continue
      pairs += 1
      if risk[i] > risk[j]:
        correct += 1.0
      elif risk[i] == risk[j]:
        correct += 0.5
  return correct / pairs


@pytest.mark.parametrize('seed', range(5))
def test_concordance_matches_loop(seed):
  rng = np.random.default_rng(seed)
  num_rows = 40
  # Few distinct values give ties in time and in risk.
  time = rng.integers(0, 8, num_rows).astype(np.float64)
  event = rng.integers(0, 2, num_rows)
  risk = rng.integers(0, 5, num_rows).astype(np.float64)

  result = concordance.concordance_index(risk, time, event)

  expected = _loop_concordance(risk, time, event)
  assert result.c_index == pytest.approx(expected, abs=1e-12)


def test_concordance_rejects_bad_event():
  with pytest.raises(ValueError, match='`event` must contain only 0 and 1'):
    concordance.concordance_index([0.1, 0.2], [1.0, 2.0], [1, 2])


def test_concordance_rejects_nan_risk():
  with pytest.raises(ValueError, match='`risk` must be finite'):
    concordance.concordance_index([0.1, np.nan], [1.0, 2.0], [1, 0])


def test_concordance_rejects_length_mismatch():
  with pytest.raises(ValueError, match='`time` must be 1-D'):
    concordance.concordance_index([0.1, 0.2], [1.0], [1, 0])


def test_concordance_rejects_int_mask():
  with pytest.raises(TypeError, match='`mask` must be bool'):
    concordance.concordance_index([0.1, 0.2], [1.0, 2.0], [1, 0], [1, 1])
