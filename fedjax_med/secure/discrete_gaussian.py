"""Distributed discrete Gaussian noise for secure aggregation, and its
privacy accounting.

Under secure aggregation each client encodes its update as integers, so
the noise it adds must be integer too. Each of `n` clients adds
independent discrete Gaussian noise N_Z(0, sigma**2) (P(x) proportional to
exp(-x**2 / (2 sigma**2)) on the integers) to each coordinate, and the
server receives only the sum. The sum of discrete Gaussians is not exactly
discrete Gaussian, so the accounting follows Kairouz, Liu and Steinke
(2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", ICML, Proposition 14). With integer
sensitivities `D2` (L2) and `D1` (L1), dimension `d`,
`a2 = D2 / (sqrt(n) sigma)`, `a1 = D1 / (sqrt(n) sigma)` and
`tau = 10 sum_{k=1}^{n-1} exp(-2 pi**2 sigma**2 k / (k + 1))`, one release
satisfies Renyi DP of order `alpha` with

  eps(alpha) = min(alpha/2 a2**2 + tau d,
                   alpha/2 (a2**2 + 2 a1 tau + tau**2 d),
                   alpha/2 (a2 + sqrt(d) tau)**2).

As sigma grows, tau vanishes and eps(alpha) tends to alpha a2**2 / 2, the
continuous Gaussian's curve at noise multiplier sqrt(n) sigma / D2.

The accounting counts `n` = the guaranteed minimum number of surviving
clients: if fewer survive, the sum carries less noise than planned and the
stated epsilon no longer holds. No amplification by sampling is claimed.

The sampler is Canonne, Kamath and Steinke's (2020, "The Discrete Gaussian
for Differential Privacy", NeurIPS, Algorithm 3): draw a discrete Laplace
value with scale `t = floor(sigma) + 1` and accept it with probability
exp(-(abs(y) - sigma**2 / t)**2 / (2 sigma**2)). It runs in float32 on the
accelerator, so the acceptance test is rounded there; the paper's exact
version uses rational arithmetic.
"""

import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import jax
import jax.numpy as jnp
import numpy as np

# Renyi orders searched when converting to (epsilon, delta).
ORDERS = tuple(range(2, 129)) + (256, 512)

# Above this sigma, float32 draws can no longer resolve every integer.
MAX_SIGMA = 2.0**22


def sample(key: jax.Array, shape, sigma: float) -> jax.Array:
  """Draw int32 discrete Gaussian noise N_Z(0, sigma**2) of `shape`."""
  if not 0 < sigma <= MAX_SIGMA:
    raise ValueError(
        f'Discrete Gaussian sigma must be in (0, {MAX_SIGMA:g}] integer '
        f'units; got {sigma}. Lower the fixed-point scale or the noise.'
    )
  t = math.floor(sigma) + 1
  # A difference of two geometric counts with success probability
  # 1 - exp(-1/t) is discrete Laplace with P(y) ~ exp(-|y| / t).
  success = -math.expm1(-1.0 / t)

  def draw(key):
    first, second, accept = jax.random.split(key, 3)
    laplace = (jax.random.geometric(first, success, shape, jnp.int32)
               - jax.random.geometric(second, success, shape, jnp.int32))
    distance = jnp.abs(laplace).astype(jnp.float32) - sigma**2 / t
    keep = jax.random.uniform(accept, shape) < jnp.exp(
        -(distance**2) / (2 * sigma**2))
    return laplace, keep

  def still_rejected(carry):
    _, _, done, _ = carry
    return ~jnp.all(done)

  def retry(carry):
    key, values, done, attempt = carry
    candidates, keep = draw(jax.random.fold_in(key, attempt))
    values = jnp.where(done, values, candidates)
    return key, values, done | keep, attempt + 1

  values, keep = draw(jax.random.fold_in(key, 0))
  _, values, _, _ = jax.lax.while_loop(
      still_rejected, retry, (key, values, keep, jnp.int32(1)))
  return values


def _tau(sigma: float, num_clients: int) -> float:
  """Return how far a sum of n discrete Gaussians is from one, as tau."""
  return 10 * sum(
      math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1))
      for k in range(1, num_clients)
  )


def rdp_curve(
    sigma: float, num_clients: int, l2_sensitivity: float,
    l1_sensitivity: float, dimension: int, orders=ORDERS,
) -> np.ndarray:
  """Return one release's RDP epsilon at each order (Proposition 14)."""
  if not sigma > 0 or num_clients < 1:
    raise ValueError(
        f'Need sigma > 0 and at least 1 client; got sigma={sigma}, '
        f'num_clients={num_clients}.'
    )
  tau = _tau(sigma, num_clients)
  a2 = l2_sensitivity / (math.sqrt(num_clients) * sigma)
  a1 = l1_sensitivity / (math.sqrt(num_clients) * sigma)
  curve = []
  for alpha in orders:
    curve.append(min(
        alpha / 2 * a2**2 + tau * dimension,
        alpha / 2 * (a2**2 + 2 * a1 * tau + tau**2 * dimension),
        alpha / 2 * (a2 + math.sqrt(dimension) * tau) ** 2,
    ))
  return np.asarray(curve)


def zcdp_rho(
    sigma: float, num_clients: int, l2_sensitivity: float,
    l1_sensitivity: float, dimension: int,
) -> float:
  """Return rho of one release as rho-zCDP, for dp_accounting's ZCDpEvent.

  The second and third terms of Proposition 14 are linear in the order,
  so each is a zCDP bound and the smaller one holds. The first term adds a
  constant and is not zCDP; `epsilon` uses all three.
  """
  tau = _tau(sigma, num_clients)
  a2 = l2_sensitivity / (math.sqrt(num_clients) * sigma)
  a1 = l1_sensitivity / (math.sqrt(num_clients) * sigma)
  return min(
      (a2**2 + 2 * a1 * tau + tau**2 * dimension) / 2,
      (a2 + math.sqrt(dimension) * tau) ** 2 / 2,
  )


def integer_sensitivities(
    clip_norm: float, scale: float, dimension: int
) -> tuple[float, float]:
  """Return (L2, L1) bounds of one client's encoded update.

  A clipped update has L2 norm at most `clip_norm`, and scaling multiplies
  that by `scale`. Stochastic rounding moves each coordinate by less than
  1, so the L2 norm is below `clip_norm * scale + sqrt(d)`. The L1
  norm is at most sqrt(d) times the L2 norm.
  """
  l2 = clip_norm * scale + math.sqrt(dimension)
  return l2, math.sqrt(dimension) * l2


def epsilon(
    *, sigma: float, num_clients: int, clip_norm: float, scale: float,
    dimension: int, rounds: int, delta: float,
) -> float:
  """Return the epsilon of `rounds` releases at `delta`."""
  l2, l1 = integer_sensitivities(clip_norm, scale, dimension)
  curve = rdp_curve(sigma, num_clients, l2, l1, dimension)
  value, _ = rdp_privacy_accountant.compute_epsilon(
      ORDERS, rounds * curve, delta)
  return float(value)


def gaussian_epsilon(noise_multiplier: float, rounds: int,
                     delta: float) -> float:
  """Return the continuous Gaussian's epsilon, for comparison."""
  accountant = dp_accounting.rdp.RdpAccountant(list(ORDERS))
  accountant.compose(
      dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
  return float(accountant.get_epsilon(delta))
