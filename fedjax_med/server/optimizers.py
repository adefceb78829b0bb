"""Server optimizers for FedOpt: FedAdagrad, FedYogi, FedAdam and FedAvgM.

Each round the server combines the client updates (new minus old weights)
into Delta_t, their mean under FedAvg aggregation, and hands the
pseudo-gradient g_t = -Delta_t to an optax `GradientTransformation`. The
adaptive optimizers of Reddi et al. keep a first moment m and a second
moment v per coordinate, written here in terms of Delta_t:

  m_t = b1 * m_{t-1} + (1 - b1) * Delta_t
  FedAdagrad: v_t = v_{t-1} + Delta_t^2
  FedYogi:    v_t = v_{t-1} - (1 - b2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)
  FedAdam:    v_t = b2 * v_{t-1} + (1 - b2) * Delta_t^2
  x_{t+1} = x_t + learning_rate * m_t / (sqrt(v_t) + tau)

with m_{-1} = 0 and v_{-1} = tau^2 unless `initial_accumulator` sets
another value. The algorithm requires v_{-1} >= tau^2. The default tau^2 is
the smallest allowed value, so v_{-1} adds at most tau to the first
round's denominator and damps that round no more than tau itself does. The
second moment squares Delta_t, not m_t, as in the original Yogi and Adam.
One of the authors confirmed this reading of the algorithm in
https://github.com/google-research/federated/issues/41.

NOTE: these rules, the v_{-1} >= tau^2 condition and the tau search range
quoted below come from secondary descriptions of Algorithm 2 of Reddi et al.
They were not checked against the text of the paper itself.

The optax optimizers with the same names compute something else, so neither
`optax.adam`, `optax.yogi` nor `optax.adagrad` reproduces these rules (optax
0.2.8, checked by reading its source and by the tests of this module):

* Bias correction. `optax.adam` and `optax.yogi` divide m_t by 1 - b1^t and
  v_t by 1 - b2^t. The FedOpt rules have no bias correction, so the first
  FedAdam step moves by (1 - b1) * Delta_0 / (sqrt(v_0) + tau) and not by
  about sign(Delta_0).
* Initial state. `optax.adam` starts v at 0. `optax.yogi` starts both m and
  v at `initial_accumulator_value` (default 1e-6), so its first moment is not
  zero at the start. `optax.adagrad` starts v at `initial_accumulator_value`
  (default 0.1). Here m starts at 0 and v at tau^2.
* Placement of the constant. `optax.adam` adds eps (default 1e-8) outside
  the square root, as tau is added here, but tau is meant to be tuned
  (Reddi et al. search 1e-1 to 1e-5, default 1e-3 here) and is far larger.
  `optax.adagrad` adds eps (default 1e-7) inside the square root and returns
  a zero update where the accumulator is 0.
* Momentum. `optax.adagrad` has none. FedAdagrad keeps the m_t line with
  its own b1, and b1 = 0 (the default here) makes m_t = Delta_t.
* Defaults. `optax.adam` and `optax.yogi` default to b2 = 0.999. The
  FedAdam and FedYogi constructors here default to b2 = 0.99.

FedAvgM (Hsu et al.) keeps a server momentum buffer m_t = momentum * m_{t-1}
+ Delta_t and moves x_{t+1} = x_t + learning_rate * m_t. Applied to
g_t = -Delta_t, this is exactly `optax.sgd(learning_rate, momentum=momentum)`,
whose trace is -m_t, so `fed_avg_m` validates its arguments and returns that
optimizer. Plain FedAvg is `optax.sgd(1.0)`.

References:
  Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar and McMahan,
  "Adaptive Federated Optimization", ICLR 2021,
  https://arxiv.org/abs/2003.00295.

  Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", 2019,
  https://arxiv.org/abs/1909.06335.
"""

from collections.abc import Callable
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# A rule that maps (v_{t-1}, Delta_t^2) of one leaf to v_t.
_SecondMomentRule = Callable[[jax.Array, jax.Array], jax.Array]


class FedAdaptiveState(NamedTuple):
  """State of `scale_by_fed_adagrad`, `scale_by_fed_yogi`, `scale_by_fed_adam`.

  Both fields have the structure and leaf shapes of the parameters. The first
  moment is stored for the pseudo-gradient g = -Delta, so `mu` equals -m_t.
  `nu` equals v_t because the sign cancels in the square.
  """

  mu: optax.Updates
  """First moment of the pseudo-gradient, zeros before the first round."""
  nu: optax.Updates
  """Second moment v_t, `initial_accumulator` before the first round."""


def _check_real(name: str, value) -> float:
  """Return `value` as a float, or raise if it is not a finite Python number."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(
        f'`{name}` must be a Python number, got {value!r} of type '
        f'{type(value).__name__}. Pass a Python float or int.'
    )
  if not math.isfinite(value):
    raise ValueError(f'`{name}` must be finite, got {value}.')
  return float(value)


def _check_positive(name: str, value) -> float:
  value = _check_real(name, value)
  if value <= 0:
    raise ValueError(f'`{name}` must be > 0, got {value}.')
  return value


def _check_decay(name: str, value) -> float:
  value = _check_real(name, value)
  if not 0 <= value < 1:
    raise ValueError(f'`{name}` must be in [0, 1), got {value}.')
  return value


def _check_learning_rate(learning_rate):
  """Check a constant learning rate and pass a schedule through unchecked."""
  if callable(learning_rate):
    return learning_rate
  return _check_positive('learning_rate', learning_rate)


def _resolve_initial_accumulator(tau: float, initial_accumulator) -> float:
  """Return v_{-1}: tau^2 by default, else a value of at least tau^2."""
  if initial_accumulator is None:
    return tau**2
  initial_accumulator = _check_real('initial_accumulator', initial_accumulator)
  if initial_accumulator < tau**2:
    raise ValueError(
        f'`initial_accumulator` must be >= tau**2 = {tau**2}, got '
        f'{initial_accumulator}. Pass None to use tau**2.'
    )
  return initial_accumulator


def _scale_by_fed_adaptive(
    second_moment_rule: _SecondMomentRule,
    b1: float,
    tau: float,
    initial_accumulator: float,
) -> optax.GradientTransformation:
  """Scale g by m / (sqrt(v) + tau), with v updated by `second_moment_rule`."""

  def init_fn(params):
    return FedAdaptiveState(
        mu=jax.tree.map(jnp.zeros_like, params),
        nu=jax.tree.map(
            lambda leaf: jnp.full_like(leaf, initial_accumulator), params
        ),
    )

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
    nu = jax.tree.map(
        lambda g, v: second_moment_rule(v, jnp.square(g)), updates, state.nu
    )
    # No bias correction: m_t and v_t are used as they are.
    scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), mu, nu)
    return scaled, FedAdaptiveState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_fed_adagrad(
    b1: float = 0.0,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Scale the pseudo-gradient with the FedAdagrad moments.

  Args:
    b1: decay of the first moment, in [0, 1). 0 gives m_t = Delta_t.
    tau: adaptivity, > 0, added to sqrt(v_t) in the denominator.
    initial_accumulator: v_{-1}, at least tau**2. None means tau**2.

  Returns:
    A transformation that maps g = -Delta_t to -m_t / (sqrt(v_t) + tau) with
    v_t = v_{t-1} + Delta_t^2. Chain it with a negative scale, as
    `fed_adagrad` does, to get a step along +Delta.

  Raises:
    ValueError: if `b1` is not in [0, 1), `tau` is not > 0, or
      `initial_accumulator` is below tau**2.
  """
  b1 = _check_decay('b1', b1)
  tau = _check_positive('tau', tau)
  initial_accumulator = _resolve_initial_accumulator(tau, initial_accumulator)

  def accumulate(v, delta_squared):
    return v + delta_squared

  return _scale_by_fed_adaptive(accumulate, b1, tau, initial_accumulator)


def scale_by_fed_yogi(
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Scale the pseudo-gradient with the FedYogi moments.

  v_t moves toward Delta_t^2 by (1 - b2) * Delta_t^2 per round: it grows
  where v_{t-1} < Delta_t^2, shrinks where v_{t-1} > Delta_t^2 and stays
  where they are equal. A shrinking v_t stays above b2 * v_{t-1}, so it
  remains positive.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: step size of the second moment, in [0, 1).
    tau: adaptivity, > 0, added to sqrt(v_t) in the denominator.
    initial_accumulator: v_{-1}, at least tau**2. None means tau**2.

  Returns:
    A transformation that maps g = -Delta_t to -m_t / (sqrt(v_t) + tau).

  Raises:
    ValueError: if `b1` or `b2` is not in [0, 1), `tau` is not > 0, or
      `initial_accumulator` is below tau**2.
  """
  b1 = _check_decay('b1', b1)
  b2 = _check_decay('b2', b2)
  tau = _check_positive('tau', tau)
  initial_accumulator = _resolve_initial_accumulator(tau, initial_accumulator)

  def yogi_step(v, delta_squared):
    return v - (1 - b2) * delta_squared * jnp.sign(v - delta_squared)

  return _scale_by_fed_adaptive(yogi_step, b1, tau, initial_accumulator)


def scale_by_fed_adam(
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Scale the pseudo-gradient with the FedAdam moments.

  Unlike `optax.scale_by_adam`, this applies no bias correction.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    tau: adaptivity, > 0, added to sqrt(v_t) in the denominator.
    initial_accumulator: v_{-1}, at least tau**2. None means tau**2.

  Returns:
    A transformation that maps g = -Delta_t to -m_t / (sqrt(v_t) + tau) with
    v_t = b2 * v_{t-1} + (1 - b2) * Delta_t^2.

  Raises:
    ValueError: if `b1` or `b2` is not in [0, 1), `tau` is not > 0, or
      `initial_accumulator` is below tau**2.
  """
  b1 = _check_decay('b1', b1)
  b2 = _check_decay('b2', b2)
  tau = _check_positive('tau', tau)
  initial_accumulator = _resolve_initial_accumulator(tau, initial_accumulator)

  def moving_average(v, delta_squared):
    return b2 * v + (1 - b2) * delta_squared

  return _scale_by_fed_adaptive(moving_average, b1, tau, initial_accumulator)


def fed_adagrad(
    learning_rate: float | optax.Schedule,
    b1: float = 0.0,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Build the FedAdagrad server optimizer of Reddi et al.

  The update is learning_rate * m_t / (sqrt(v_t) + tau) with
  v_t = v_{t-1} + Delta_t^2. The FedOpt algorithm keeps the first-moment
  line for FedAdagrad too. The default b1 = 0 turns it off, so the step is
  plain Adagrad on Delta_t, and b1 > 0 adds server momentum.

  Args:
    learning_rate: server learning rate eta, > 0, or an optax schedule of
      the number of server updates applied so far, which a skipped round
      does not advance (a schedule is not checked).
    b1: decay of the first moment, in [0, 1).
    tau: adaptivity, > 0. Reddi et al. tune it over 1e-1 to 1e-5.
    initial_accumulator: v_{-1}, at least tau**2. None means tau**2.

  Returns:
    An optax optimizer that takes the pseudo-gradient g = -Delta_t and
    returns the parameter update (to add with `optax.apply_updates`).

  Raises:
    ValueError: if `learning_rate` or `tau` is not > 0, `b1` is not in
      [0, 1), or `initial_accumulator` is below tau**2.

  Example:
    >>> import jax.numpy as jnp
    >>> optimizer = fed_adagrad(learning_rate=0.1, tau=1e-3)
    >>> params = jnp.zeros(2)
    >>> delta = jnp.array([1.0, -2.0])  # aggregate client update
    >>> updates, _ = optimizer.update(-delta, optimizer.init(params))
    >>> expected = 0.1 * delta / (jnp.sqrt(1e-3**2 + delta**2) + 1e-3)
    >>> bool(jnp.allclose(updates, expected))
    True
  """
  learning_rate = _check_learning_rate(learning_rate)
  return optax.chain(
      scale_by_fed_adagrad(b1, tau, initial_accumulator),
      optax.scale_by_learning_rate(learning_rate),
  )


def fed_yogi(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Build the FedYogi server optimizer of Reddi et al.

  The update is learning_rate * m_t / (sqrt(v_t) + tau) with
  v_t = v_{t-1} - (1 - b2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2).

  Args:
    learning_rate: server learning rate eta, > 0, or an optax schedule of
      the number of server updates applied so far, which a skipped round
      does not advance (a schedule is not checked).
    b1: decay of the first moment, in [0, 1).
    b2: step size of the second moment, in [0, 1).
    tau: adaptivity, > 0. Reddi et al. tune it over 1e-1 to 1e-5.
    initial_accumulator: v_{-1}, at least tau**2. None means tau**2.

  Returns:
    An optax optimizer that takes the pseudo-gradient g = -Delta_t and
    returns the parameter update.

  Raises:
    ValueError: if `learning_rate` or `tau` is not > 0, `b1` or `b2` is not
      in [0, 1), or `initial_accumulator` is below tau**2.
  """
  learning_rate = _check_learning_rate(learning_rate)
  return optax.chain(
      scale_by_fed_yogi(b1, b2, tau, initial_accumulator),
      optax.scale_by_learning_rate(learning_rate),
  )


def fed_adam(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Build the FedAdam server optimizer of Reddi et al.

  The update is learning_rate * m_t / (sqrt(v_t) + tau) with
  v_t = b2 * v_{t-1} + (1 - b2) * Delta_t^2 and no bias correction, so the
  first step is learning_rate * (1 - b1) * Delta_0
  / (sqrt(b2 * tau^2 + (1 - b2) * Delta_0^2) + tau) with the default
  v_{-1} = tau^2.

  Args:
    learning_rate: server learning rate eta, > 0, or an optax schedule of
      the number of server updates applied so far, which a skipped round
      does not advance (a schedule is not checked).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    tau: adaptivity, > 0. Reddi et al. tune it over 1e-1 to 1e-5.
    initial_accumulator: v_{-1}, at least tau**2. None means tau**2.

  Returns:
    An optax optimizer that takes the pseudo-gradient g = -Delta_t and
    returns the parameter update.

  Raises:
    ValueError: if `learning_rate` or `tau` is not > 0, `b1` or `b2` is not
      in [0, 1), or `initial_accumulator` is below tau**2.
  """
  learning_rate = _check_learning_rate(learning_rate)
  return optax.chain(
      scale_by_fed_adam(b1, b2, tau, initial_accumulator),
      optax.scale_by_learning_rate(learning_rate),
  )


def fed_avg_m(
    learning_rate: float | optax.Schedule, momentum: float = 0.9
) -> optax.GradientTransformation:
  """Build the FedAvgM server optimizer of Hsu et al.

  The buffer m_t = momentum * m_{t-1} + Delta_t starts at zero and the
  update is learning_rate * m_t. On g = -Delta_t this is exactly
  `optax.sgd(learning_rate, momentum=momentum)`, which this returns.

  Args:
    learning_rate: server learning rate eta, > 0, or an optax schedule of
      the number of server updates applied so far, which a skipped round
      does not advance (a schedule is not checked).
    momentum: server momentum, in [0, 1). 0 gives FedAvg with a server
      learning rate.

  Returns:
    An optax optimizer that takes the pseudo-gradient g = -Delta_t and
    returns the parameter update.

  Raises:
    ValueError: if `learning_rate` is not > 0 or `momentum` is not in
      [0, 1).
  """
  learning_rate = _check_learning_rate(learning_rate)
  momentum = _check_decay('momentum', momentum)
  return optax.sgd(learning_rate, momentum=momentum)
