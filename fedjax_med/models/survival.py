"""Cox proportional-hazards model for right-censored survival data.

The Cox model gives patient i the hazard `h0(t) * exp(r_i)`, where `r_i` is
the log-risk (log relative hazard) predicted from the features and `h0` is a
baseline hazard that the partial likelihood leaves unspecified. The model is
fitted by minimizing the negative log partial likelihood, which depends only
on the order of the follow-up times.

References:
  Cox. Regression Models and Life-Tables. Journal of the Royal Statistical
  Society B 34(2):187-220, 1972.

  Breslow. Covariance Analysis of Censored Survival Data. Biometrics
  30(1):89-99, 1974.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


class LinearCox(nn.Module):
  """Linear log-risk `x @ w`: `[batch, features] -> [batch]`.

  The layer has no bias because a constant added to every log-risk cancels
  in the partial likelihood, so a bias would get no gradient. The kernel
  starts at zero by default, which gives every patient the same risk. The
  negative log partial likelihood is convex in `w`, so no random start is
  needed.

  Attributes:
    kernel_init: initializer of the `[features, 1]` kernel.
  """

  kernel_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layer = nn.Dense(1, use_bias=False, kernel_init=self.kernel_init)
    return layer(x)[..., 0]


def _check_rows(name: str, values: jax.Array, num_rows: int) -> None:
  if values.shape != (num_rows,):
    raise ValueError(
        f'`{name}` must have shape [examples] = ({num_rows},) like '
        f'`log_risk`; got shape {values.shape}.'
    )


def cox_partial_likelihood_loss(
    log_risk: jax.typing.ArrayLike,
    time: jax.typing.ArrayLike,
    event: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Compute the negative log partial likelihood of a Cox model per event.

  With Breslow's handling of tied times, the loss over the real rows is

      -(1 / D) * sum over events i of
          [r_i - log(sum over j with time_j >= time_i of exp(r_j))]

  where D is the number of real rows with an event. Patients who die at the
  same time all use the same risk set, which contains each of them. Censored
  rows enter only the risk sets. The log of each risk-set sum is a
  logsumexp, so large log-risks do not overflow.

  The loss is 0, with zero gradient, when no real row has an event. Dividing
  by the number of events makes the loss of a batch comparable across batch
  sizes. FLamby's Fed-TCGA-BRCA loss divides by the number of rows instead
  and gives tied times no special handling.

  Averaging this loss over clients fits a Cox model stratified by client.
  Each risk set contains only patients of one client, so every client has
  its own baseline hazard while all clients share the coefficients. A
  weighted average with client weights w_c scales client c's negative log
  partial likelihood by w_c / D_c, where D_c is its number of events. Its
  optimum therefore differs from that of the usual stratified likelihood,
  which sums the clients' unnormalized terms. A loss computed on a minibatch
  uses risk sets restricted to that batch, which approximates the full
  partial likelihood.

  Cost: the risk sets form an `[examples, examples]` matrix, so time and
  memory grow as O(n^2). That is small for client data sets of a few hundred
  to a few thousand rows (1000 rows take 1e6 entries).

  Args:
    log_risk: `[examples]` predicted log-risk of each row, as returned by
      `LinearCox`.
    time: `[examples]` time to the event or to censoring, in any unit.
    event: `[examples]`, 1 (or True) for an observed event, 0 for a censored
      row. Any nonzero value counts as an event.
    mask: optional `[examples]` bool, True on real rows. Padding rows are in
      no risk set and their events are not counted. None means every row is
      real.

  Returns:
    A float scalar; NaN when a real row's time is NaN.

  Raises:
    ValueError: if `log_risk` is not 1-D or another argument's shape differs
      from it.
  """
  log_risk = jnp.asarray(log_risk)
  time = jnp.asarray(time)
  event = jnp.asarray(event)
  if log_risk.ndim != 1:
    raise ValueError(
        '`log_risk` must be 1-D with shape [examples]; got shape '
        f'{log_risk.shape}. Squeeze a `[examples, 1]` model output first.'
    )
  num_rows = log_risk.shape[0]
  _check_rows('time', time, num_rows)
  _check_rows('event', event, num_rows)
  if mask is None:
    mask = jnp.ones(num_rows, dtype=bool)
  mask = jnp.asarray(mask, dtype=bool)
  _check_rows('mask', mask, num_rows)

  # Padding rows may hold any value, so replace their log-risk by 0 before
  # it reaches the logsumexp or the gradient.
  real_log_risk = jnp.where(mask, log_risk, 0.0)
  # at_risk[i, j] is True when real row j is still at risk at time_i. The
  # diagonal is always set so that every row, padding included, has a
  # nonempty risk set and a finite logsumexp. Padding rows then add a finite
  # term with weight 0, which keeps the gradient free of NaN.
  at_risk = (time[None, :] >= time[:, None]) & mask[None, :]
  at_risk = at_risk | jnp.eye(num_rows, dtype=bool)
  log_risk_set_sum = jax.nn.logsumexp(
      jnp.where(at_risk, real_log_risk[None, :], -jnp.inf), axis=1
  )

  is_event = (event != 0) & mask
  weights = is_event.astype(real_log_risk.dtype)
  total = jnp.sum(weights * (log_risk_set_sum - real_log_risk))
  num_events = jnp.sum(weights)
  # Every comparison with a NaN time is False, so a NaN row left every risk
  # set and the loss came back finite, and wrong.
  nan_time = jnp.any(jnp.isnan(time) & mask)
  return jnp.where(nan_time, jnp.nan, total / jnp.maximum(num_events, 1.0))
