"""FedAvg through simulated secure aggregation, for the round.

Each contributing client flattens its clipped update and multiplies it by
its aggregation weight divided by a public bound on the weights, so every
weighted coordinate stays within the clip bound. It appends that relative
weight as one more coordinate and encodes the vector into the ring. The protocol
(`fedjax_med.secure.protocol`) returns the sum over the survivors, and the
server divides the weighted sum by the summed weight. That is the weighted
FedAvg mean, up to quantization error.

With central or distributed DP the weights are already capped at 1 and the
server divides by the fixed denominator of `PrivacySettings`, so no weight
coordinate is sent. Under distributed noise each survivor adds discrete
Gaussian noise in ring units before masking (see `discrete_gaussian`), and
under central noise the server adds continuous Gaussian noise to the
decoded sum.
"""

import math
from typing import Callable, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp

from fedjax_med.privacy import mechanisms
from fedjax_med.privacy import noise
from fedjax_med.secure import discrete_gaussian
from fedjax_med.secure import encoding
from fedjax_med.secure import protocol

# Overflow probability that the automatic scale allows under noise.
NOISE_OVERFLOW_TARGET = 1e-9

_ROUNDING_TAG = 1
_NOISE_TAG = 2
_PROTOCOL_TAG = 3

SUPPORTED_AGGREGATORS = ('fedavg', 'mean')


class SecurePlan(NamedTuple):
  """Static facts of a secure round, fixed when the round is built.

  Attributes:
    scale: fixed-point scale of the encoding.
    bits: ring bits.
    dimension: ring coordinates per client (parameters, plus one for the
      weight when the server divides by the summed weight).
    coordinate_bound: bound on each encoded coordinate before scaling.
    threshold: Shamir threshold t of a full cohort; each round sizes its
      own on its participants (`protocol.secure_sum`).
    degree: neighbours per client in a full cohort.
    noise_sigma: discrete Gaussian sigma per client in ring units, or 0.
    overflow_probability: bound on the chance that the noised sum wraps
      around in one round; 0 without noise.
  """

  scale: float
  bits: int
  dimension: int
  coordinate_bound: float
  threshold: int
  degree: int
  noise_sigma: float
  overflow_probability: float


def check_settings(
    settings: protocol.SecureAggregationSettings,
    privacy: mechanisms.PrivacySettings,
    aggregator: str,
) -> None:
  """Raise ValueError for rounds that secure aggregation cannot run."""
  if aggregator not in SUPPORTED_AGGREGATORS:
    raise ValueError(
        f'Aggregator {aggregator} needs each client\'s update, but under '
        'secure aggregation the server sees only the sum. Use aggregator '
        f'{" or ".join(SUPPORTED_AGGREGATORS)} (clients can bound their own '
        'update norm with privacy.clip_norm), or turn secure aggregation '
        'off.'
    )
  if privacy.clip_norm is None or not privacy.clip_norm > 0:
    raise ValueError(
        'Secure aggregation encodes updates as fixed-point integers and '
        'needs a positive privacy.clip_norm to bound them; got '
        f'{privacy.clip_norm}.'
    )
  if privacy.noise_kind == 'local':
    raise ValueError(
        'Secure aggregation with local noise is not supported: local noise '
        'is unbounded, so the ring would overflow, and it already protects '
        'each update. Use distributed noise, which secure aggregation is '
        'for, or central noise.'
    )
  if privacy.adaptive_clipping:
    raise ValueError(
        'Adaptive clipping releases a count of unclipped clients, which '
        'this secure aggregation does not sum. Turn adaptive clipping off.'
    )


def _choose_scale(settings, privacy, bound, num_clients, client_stddev,
                  dimension) -> float:
  """Return the configured scale after checking it, or the largest safe one.

  Raises:
    ValueError: if the scale can overflow the ring, exceeds the discrete
      Gaussian sampler's sigma limit, or rounds a whole update to zero.
  """
  if client_stddev == 0.0:
    largest = encoding.max_scale(settings.bits, bound, num_clients)
  else:
    largest = _largest_noisy_scale(
        settings.bits, bound, num_clients, client_stddev, dimension)
  if settings.scale is None:
    scale = largest
    if client_stddev * scale > discrete_gaussian.MAX_SIGMA:
      scale = discrete_gaussian.MAX_SIGMA / client_stddev
  else:
    scale = float(settings.scale)
    if client_stddev == 0.0:
      encoding.check_no_overflow(settings.bits, scale, bound, num_clients)
    elif scale > largest:
      raise ValueError(
          f'Fixed-point scale {scale:g} can overflow a {settings.bits}-bit '
          f'ring under distributed noise: the sum of {num_clients} noised '
          f'updates would leave the ring with probability above '
          f'{NOISE_OVERFLOW_TARGET:g}. Use scale <= {largest:g}, or leave '
          'it unset.'
      )
    if client_stddev * scale > discrete_gaussian.MAX_SIGMA:
      raise ValueError(
          f'Fixed-point scale {scale:g} makes the discrete Gaussian sigma '
          f'{client_stddev * scale:g} ring units, above the sampler\'s '
          f'{discrete_gaussian.MAX_SIGMA:g}. Use scale <= '
          f'{discrete_gaussian.MAX_SIGMA / client_stddev:g}.'
      )
  if privacy.clip_norm * scale < 1:
    raise ValueError(
        f'Fixed-point scale {scale:g} rounds an update of norm clip_norm '
        f'({privacy.clip_norm:g}) to less than one ring unit, so every '
        'update would be lost. Use more ring bits, a larger scale or a '
        'smaller cohort.'
    )
  return scale


def plan(
    settings: protocol.SecureAggregationSettings,
    privacy: mechanisms.PrivacySettings,
    num_clients: int,
    num_parameters: int,
) -> SecurePlan:
  """Choose the scale and check it for a cohort of `num_clients`."""
  protocol.validate(settings, num_clients)
  weight_coordinate = not privacy.sums_noise
  dimension = num_parameters + int(weight_coordinate)
  # The weight coordinate is at most 1 and every weighted update coordinate
  # at most clip_norm.
  bound = max(privacy.clip_norm, 1.0) if weight_coordinate else (
      privacy.clip_norm)

  client_stddev = 0.0
  if privacy.noise_kind == 'distributed':
    client_stddev = float(mechanisms.client_noise_stddev(privacy))
  scale = _choose_scale(settings, privacy, bound, num_clients,
                        client_stddev, dimension)

  sigma = client_stddev * scale
  overflow = encoding.overflow_probability(
      settings.bits, scale, bound, num_clients,
      math.sqrt(num_clients) * sigma, dimension,
  ) if sigma > 0 else 0.0
  return SecurePlan(
      scale=scale, bits=settings.bits, dimension=dimension,
      coordinate_bound=bound,
      threshold=protocol.threshold(settings, num_clients),
      degree=protocol.graph_degree(settings, num_clients),
      noise_sigma=sigma, overflow_probability=overflow,
  )


def _largest_noisy_scale(bits, bound, num_clients, client_stddev,
                         dimension) -> float:
  """Return the largest scale whose overflow bound under noise is at most
  NOISE_OVERFLOW_TARGET.

  It leaves room for the data sum plus `c` standard deviations of the
  summed noise, where `c` makes the union bound of
  `encoding.overflow_probability` equal the target.
  """
  c = math.sqrt(2 * math.log(2 * dimension / NOISE_OVERFLOW_TARGET))
  room = 2 ** (bits - 1) - 1 - num_clients
  if room <= 0:
    raise ValueError(
        f'{num_clients} clients do not fit a {bits}-bit ring. Use more bits '
        'or a smaller cohort.'
    )
  scale = room / (num_clients * bound
                  + c * math.sqrt(num_clients) * client_stddev)
  # The same float32 margin and cap as `encoding.max_scale`.
  return min(scale * (1 - 2.0**-22), encoding.MAX_SCALED / bound)


def build_secure_aggregate(
    settings: protocol.SecureAggregationSettings,
    privacy: mechanisms.PrivacySettings,
    aggregator: str,
    num_clients: int,
    params_template,
    weight_bound: float,
) -> tuple[Callable, SecurePlan]:
  """Return `aggregate(updates, weights, contributes, participants,
  client_keys, key) -> (mean, failed, metrics)` and its plan.

  `weight_bound` is a public upper bound on the aggregation weights, such
  as the population's largest client for FedAvg without a cap.
  `participants` are the cohort slots that took part in the key exchange.
  `client_keys` are used for the clients' rounding and noise only; the
  round passes `fold_in(client_key, key_tags.SECURE)`, so that they are
  apart from the keys of local training.
  """
  check_settings(settings, privacy, aggregator)
  _, unravel = ravel_pytree(params_template)
  num_parameters = sum(
      leaf.size for leaf in jax.tree.leaves(params_template))
  secure_plan = plan(settings, privacy, num_clients, num_parameters)
  scale, bits = secure_plan.scale, secure_plan.bits
  weight_coordinate = not privacy.sums_noise
  if not weight_bound > 0:
    raise ValueError(f'`weight_bound` must be positive; got {weight_bound}.')

  def encode_client(update, weight, key):
    flat, _ = ravel_pytree(update)
    relative = weight / weight_bound
    vector = flat * relative
    if weight_coordinate:
      vector = jnp.concatenate([vector, relative[None]])
    ring = encoding.encode(
        jax.random.fold_in(key, _ROUNDING_TAG), vector, scale, bits)
    if secure_plan.noise_sigma > 0:
      noise_values = discrete_gaussian.sample(
          jax.random.fold_in(key, _NOISE_TAG), vector.shape,
          secure_plan.noise_sigma)
      ring = (ring + jax.lax.bitcast_convert_type(noise_values, jnp.uint32)
              ) & encoding.ring_mask(bits)
    return ring

  def aggregate(updates, weights, contributes, participants, client_keys,
                key):
    inputs = jax.vmap(encode_client)(updates, weights, client_keys)
    result = protocol.secure_sum(
        jax.random.fold_in(key, _PROTOCOL_TAG), inputs, participants,
        contributes, settings)
    total = encoding.decode(result.total, scale, bits)
    # Stochastic rounding adds variance p (1 - p), 1/6 on average, per
    # client and ring coordinate, so the decoded sum carries rounding noise
    # of norm about sqrt(n D / 6) / scale, before the mean rescales it.
    contributors = jnp.sum(contributes).astype(jnp.float32)
    sum_noise_norm = jnp.sqrt(
        contributors * num_parameters / 6) / jnp.float32(scale)
    if weight_coordinate:
      summed_weight = total[-1]
      safe_weight = jnp.where(summed_weight > 0, summed_weight, 1.0)
      mean_flat = total[:-1] / safe_weight
      # A cohort whose weights are small next to weight_bound encodes its
      # updates in few ring units, and the division amplifies the noise.
      # The decoded weight's own rounding error, about sqrt(n / 6) / scale,
      # moves the mean by its norm times that error, relative to the weight.
      weight_noise = jnp.sqrt(contributors / 6) / jnp.float32(scale)
      # hypot, not sqrt of squares, which overflow float32 at a huge scale.
      mean_noise_norm = jnp.hypot(
          sum_noise_norm, jnp.linalg.norm(mean_flat) * weight_noise
      ) / safe_weight
    else:
      # Undo the division by weight_bound, then use the fixed denominator.
      summed = total * weight_bound
      mean_noise_norm = sum_noise_norm * weight_bound / privacy.denominator
      if privacy.noise_kind == 'central':
        summed = noise.add_gaussian_noise(
            summed, privacy.noise_multiplier * privacy.clip_norm,
            key=jax.random.fold_in(key, _NOISE_TAG))
      mean_flat = summed / privacy.denominator
    failed = ~result.ok
    metrics = {
        'secagg_failed': failed,
        'secagg_rebuilt_correct': result.rebuilt_correct,
        'secagg_responders': jnp.sum(result.responders),
        'secagg_quantization_norm': mean_noise_norm,
        **result.cost,
    }
    return unravel(mean_flat), failed, metrics

  return aggregate, secure_plan
