"""LiRA, the likelihood ratio membership inference attack with shadow models.

Shadow models are trained on random halves of a candidate pool, each
candidate in exactly half of them, by one `jax.vmap` over keys and
membership masks, so K shadows are a single compiled computation. Per
candidate, one Gaussian is fitted to the logit-scaled confidence of the
shadows that trained on it (in) and one to those that did not (out). The
online variant scores the target model's confidence by the log-likelihood
ratio of the two Gaussians. The offline variant tests it against the out
Gaussian alone, so the shadows never need the candidates under attack.

References:
  Carlini, Chien, Nasr, Song, Terzis and Tramer, "Membership Inference
  Attacks From First Principles", IEEE S&P 2022,
  https://arxiv.org/abs/2112.03570.
"""

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.privacy import membership
from fedjax_med.typing import Params, PRNGKey

LIRA_VARIANTS = ('online', 'offline')

# A shadow model's training: `(key, membership_mask [candidates]) -> params`.
ShadowTrainFn = Callable[[PRNGKey, jax.Array], Params]

# Floor on a fitted standard deviation, so that shadows whose confidences
# all coincide (all clipped, or a model that ignores its data) give a finite
# score rather than a division by zero.
_MIN_STD = 1e-6


def logit_confidence(
    model: tabular.Model,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    *,
    probability_clip: float = 1e-10,
) -> jax.Array:
  """Compute the logit-scaled confidence `log(p / (1 - p))` of the true label.

  `p` is the probability that the model gives the true label. The value is
  computed from the logits in log space, so it does not saturate where `p`
  rounds to 1 in float32, and is then clipped to the values of `p` in
  `[probability_clip, 1 - probability_clip]`.

  Args:
    model: the model's functions.
    params: the model's parameters.
    x: `[candidates, features]` inputs.
    y: `[candidates]` integer labels in `[0, model.num_classes)`.
    probability_clip: how far `p` is kept from 0 and 1, in (0, 0.5).

  Returns:
    `[candidates]` confidences.

  Raises:
    ValueError: if `probability_clip` is not in (0, 0.5), or a label is
      outside `[0, model.num_classes)` or not whole. The labels are checked
      only when `y` is concrete. Under `jax.jit` or `jax.vmap` a binary
      model scores every label other than 1 as label 0, and a multiclass
      model scores an out-of-range label as if its logit were 0.
  """
  _validate_probability_clip(probability_clip)
  # A Python list of labels compared `y == 1` as a whole list, so every
  # row was scored as label 0.
  x, y = jnp.asarray(x), jnp.asarray(y)
  membership.check_labels(y, model.num_classes, num_rows=x.shape[0])
  return _logit_confidence(model, params, x, y, probability_clip)


def _validate_probability_clip(probability_clip: float) -> None:
  if not 0.0 < probability_clip < 0.5:
    raise ValueError(
        f'`probability_clip` must be in (0, 0.5); got {probability_clip}.'
    )


@functools.partial(jax.jit, static_argnums=(0, 4))
def _logit_confidence(model, params, x, y, probability_clip):
  return _confidence_from_logits(
      model.apply(params, x), y, model.num_classes, probability_clip
  )


def _confidence_from_logits(logits, y, num_classes, probability_clip):
  if num_classes == 2:
    # The single logit is log(p1 / p0), so label 0 negates it.
    confidence = jnp.where(y == 1, logits[:, 0], -logits[:, 0])
  else:
    is_label = jax.nn.one_hot(y, num_classes, dtype=bool)
    true_logit = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
    other_logits = jnp.where(is_label, -jnp.inf, logits)
    confidence = true_logit - jax.nn.logsumexp(other_logits, axis=-1)
  bound = math.log((1.0 - probability_clip) / probability_clip)
  return jnp.clip(confidence, -bound, bound)


class ShadowModels(NamedTuple):
  """Shadow models and the candidates each was trained on.

  Attributes:
    params: the shadows' parameters, each leaf `[shadows, *param_shape]`.
    masks: `[shadows, candidates]` bool, True where a shadow trained on the
      candidate.
  """

  params: Params
  masks: jax.Array


def sample_shadow_masks(
    key: PRNGKey, *, num_shadows: int, num_candidates: int
) -> jax.Array:
  """Draw `[shadows, candidates]` masks, each candidate in half the shadows.

  Each candidate is in exactly `num_shadows // 2` shadows, chosen uniformly
  at random and independently of the other candidates, so every shadow
  trains on about half of the pool.

  Raises:
    ValueError: if `key` is not a PRNG key, `num_shadows` is below 2 or
      `num_candidates` below 1.
  """
  federated.check_key(key)
  if num_shadows < 2:
    raise ValueError(f'`num_shadows` must be at least 2; got {num_shadows}.')
  if num_candidates < 1:
    raise ValueError(
        f'`num_candidates` must be at least 1; got {num_candidates}.'
    )
  noise = jax.random.uniform(key, (num_shadows, num_candidates))
  ranks = jnp.argsort(jnp.argsort(noise, axis=0), axis=0)
  return ranks < num_shadows // 2


def train_shadow_models(
    train_fn: ShadowTrainFn,
    *,
    key: PRNGKey,
    num_shadows: int,
    num_candidates: int,
    batch_size: int | None = None,
) -> ShadowModels:
  """Train shadow models on random halves of the candidate pool.

  Args:
    train_fn: `(key, membership_mask [candidates]) -> params`, jittable.
      It must train only on the candidates where the mask is True, with the
      same procedure as the target model.
    key: PRNG key of the masks and of every shadow's training.
    num_shadows: number of shadow models, at least 2.
    num_candidates: size of the candidate pool.
    batch_size: shadows trained side by side; see
      `membership.map_trainings`.

  Returns:
    The shadows' `ShadowModels`.

  Raises:
    ValueError: for the reasons of `sample_shadow_masks`, or from
      `train_fn` when `num_candidates` does not match its pool, as the
      trainers of `build_shadow_trainer` check.
  """
  mask_key, train_key = jax.random.split(key)
  masks = sample_shadow_masks(
      mask_key, num_shadows=num_shadows, num_candidates=num_candidates
  )
  keys = jax.random.split(train_key, num_shadows)
  params = membership.map_trainings(
      train_fn, keys, masks, batch_size=batch_size
  )
  return ShadowModels(params, masks)


def build_shadow_trainer(
    model: tabular.Model,
    x: jax.Array,
    y: jax.Array,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
) -> ShadowTrainFn:
  """Build a trainer of one model on the pooled rows that a mask selects.

  The returned function initializes the model from its key and runs
  `client.build_local_update` on the masked rows, as if one client
  contained them all. It takes `num_steps` optax steps on minibatches of
  `batch_size`, drawn only from the rows whose mask is True.

  Args:
    model: the model to train, such as `LogisticRegression` or `MLP`.
    x: `[candidates, features]` inputs of the candidate pool.
    y: `[candidates]` integer labels.
    optimizer: optax optimizer of every step.
    num_steps: optimizer steps of each training.
    batch_size: examples per minibatch.

  Returns:
    `train_fn(key, membership_mask [candidates]) -> params`. With no member
    it returns the initial parameters. It raises ValueError, also when
    traced, if the mask's shape is not `[candidates]`.

  Raises:
    ValueError: if `x` and `y` have different numbers of rows, or
      `num_steps` or `batch_size` is below 1.
  """
  local_update = local_training.build_local_update(
      model, optimizer, num_steps=num_steps, batch_size=batch_size
  )
  x = jnp.asarray(x)
  y = jnp.asarray(y)

  num_candidates = y.shape[0]
  if x.shape[0] != num_candidates:
    raise ValueError(
        f'`x` and `y` must have one row per candidate; got {x.shape[0]} and '
        f'{num_candidates} rows.'
    )

  def train_fn(key: PRNGKey, membership_mask: jax.Array) -> Params:
    # Indexing clamps out-of-range rows, so a longer mask would train on
    # the last row again instead of failing.
    if jnp.shape(membership_mask) != (num_candidates,):
      raise ValueError(
          f'`membership_mask` must have one entry per candidate, shape '
          f'({num_candidates},); got shape {jnp.shape(membership_mask)}. '
          f'Pass num_candidates={num_candidates} to train_shadow_models.'
      )
    init_key, train_key = jax.random.split(key)
    params = model.init(init_key, x[:1])
    # Members first: local training never reads past `num_examples` rows.
    order = jnp.argsort(~membership_mask, stable=True)
    examples = {'x': x[order], 'y': y[order]}
    num_members = jnp.sum(membership_mask, dtype=jnp.int32)
    result = local_update(params, examples, num_members, train_key)
    return optax.apply_updates(params, result.delta)

  return train_fn


def shadow_confidences(
    model: tabular.Model,
    shadow_params: Params,
    x: jax.Array,
    y: jax.Array,
    *,
    probability_clip: float = 1e-10,
) -> jax.Array:
  """Compute `[shadows, candidates]` logit-scaled confidences, vmapped.

  The arguments and errors are those of `logit_confidence`, with every
  leaf of `shadow_params` stacked along a leading `[shadows]` axis.
  """
  _validate_probability_clip(probability_clip)
  x, y = jnp.asarray(x), jnp.asarray(y)
  membership.check_labels(y, model.num_classes, num_rows=x.shape[0])
  return _shadow_confidences(model, shadow_params, x, y, probability_clip)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _shadow_confidences(model, shadow_params, x, y, probability_clip):
  def confidence(params):
    logits = model.apply(params, x)
    return _confidence_from_logits(
        logits, y, model.num_classes, probability_clip
    )

  return jax.vmap(confidence)(shadow_params)


def _gaussian_fit(
    confidences: jax.Array, mask: jax.Array, *, global_variance: bool
) -> tuple[jax.Array, jax.Array]:
  """Fit `[candidates]` means and stds to the masked `[shadows, candidates]`.

  Variances are unbiased (ddof 1). The global variance pools the squared
  deviations of every candidate from its own mean.
  """
  count = jnp.sum(mask, axis=0)
  mean = jnp.sum(jnp.where(mask, confidences, 0.0), axis=0) / count
  squares = jnp.where(mask, jnp.square(confidences - mean[None, :]), 0.0)
  if global_variance:
    variance = jnp.sum(squares) / jnp.sum(count - 1)
    variance = jnp.full(mean.shape, variance)
  else:
    variance = jnp.sum(squares, axis=0) / (count - 1)
  return mean, jnp.maximum(jnp.sqrt(variance), _MIN_STD)


def lira_scores(
    target_confidence: npt.ArrayLike,
    shadow_confidence: npt.ArrayLike,
    shadow_masks: npt.ArrayLike,
    *,
    variant: str = 'online',
    global_variance: bool = True,
) -> jax.Array:
  """Score candidates by the likelihood ratio of the target's confidence.

  The online score is `log N(c; mu_in, sd_in) - log N(c; mu_out, sd_out)`
  for the target's confidence `c`. The offline score is `log Phi((c -
  mu_out) / sd_out)`, a one-sided test against the out Gaussian alone, so
  only shadows that did not train on a candidate are needed.

  Each Gaussian has the sample mean and the unbiased sample variance of
  its shadows' confidences. The pooled variance averages every candidate's
  squared deviations from its own mean, so differences between candidates
  do not widen it. Standard deviations are floored at 1e-6.

  Args:
    target_confidence: `[candidates]` logit-scaled confidences of the target
      model, from `logit_confidence`.
    shadow_confidence: `[shadows, candidates]` confidences of the shadows.
    shadow_masks: `[shadows, candidates]` bool, True where a shadow trained
      on the candidate.
    variant: 'online' or 'offline'.
    global_variance: if True, each Gaussian uses one variance pooled over
      all candidates. A per-candidate variance from a handful of shadows is
      noisy, so the pooled one suits small numbers of shadows.

  Returns:
    `[candidates]` scores, higher meaning member.

  Raises:
    ValueError: if the shapes disagree, `variant` is unknown, or a candidate
      has fewer than 2 out shadows, or (online) fewer than 2 in shadows.
  """
  if variant not in LIRA_VARIANTS:
    raise ValueError(
        f'`variant` must be one of {LIRA_VARIANTS}; got {variant!r}.'
    )
  target_confidence = jnp.asarray(target_confidence)
  shadow_confidence = jnp.asarray(shadow_confidence)
  masks = np.asarray(shadow_masks, dtype=bool)
  if (
      target_confidence.ndim != 1
      or shadow_confidence.shape != masks.shape
      or shadow_confidence.shape[1:] != target_confidence.shape
  ):
    raise ValueError(
        '`shadow_confidence` and `shadow_masks` must be [shadows, candidates]'
        ' and `target_confidence` [candidates]; got shapes'
        f' {shadow_confidence.shape}, {masks.shape} and'
        f' {target_confidence.shape}.'
    )
  needed = [(~masks, 'out')]
  if variant == 'online':
    needed.append((masks, 'in'))
  for mask, name in needed:
    fewest = int(mask.sum(axis=0).min())
    if fewest < 2:
      raise ValueError(
          f'Every candidate needs at least 2 {name} shadows to fit a '
          f'Gaussian, but one candidate has {fewest}. Train more shadows.'
      )

  return _likelihood_ratio(
      target_confidence, shadow_confidence, jnp.asarray(masks),
      variant=variant, global_variance=global_variance,
  )


@functools.partial(jax.jit, static_argnames=('variant', 'global_variance'))
def _likelihood_ratio(
    target_confidence, shadow_confidence, masks, *, variant, global_variance
):
  mean_out, std_out = _gaussian_fit(
      shadow_confidence, ~masks, global_variance=global_variance
  )
  if variant == 'offline':
    return jax.scipy.stats.norm.logcdf(target_confidence, mean_out, std_out)
  mean_in, std_in = _gaussian_fit(
      shadow_confidence, masks, global_variance=global_variance
  )
  log_in = jax.scipy.stats.norm.logpdf(target_confidence, mean_in, std_in)
  log_out = jax.scipy.stats.norm.logpdf(target_confidence, mean_out, std_out)
  return log_in - log_out
