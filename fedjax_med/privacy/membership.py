"""Membership inference: attack metrics, the loss attack and batched training.

A membership inference attack gives every candidate example a score, higher
meaning "more likely in the training set". `evaluate_attack` reports the
AUC and the true-positive rate at a low false-positive rate (1% by
default), read off the exact ROC curve. Carlini et al. argue that attacks
should be judged by the second number, because an attack that confidently
identifies a few patients is a real risk even when its AUC is close to 0.5.

The loss attack of Yeom et al. scores an example by the negative loss of
the target model on it, because a model fits its own training examples
better than others. The shadow-model attack LiRA is in `lira.py`.
`map_trainings` runs many trainings as one compiled computation, vmapped
over their keys and inputs. Shadow models and canary audits use it.

References:
  Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", IEEE CSF 2018,
  https://arxiv.org/abs/1709.01604.

  Carlini, Chien, Nasr, Song, Terzis and Tramer, "Membership Inference
  Attacks From First Principles", IEEE S&P 2022,
  https://arxiv.org/abs/2112.03570.
"""

import functools
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from fedjax_med.evaluation import clinical
from fedjax_med.models import tabular
from fedjax_med.typing import Params, PRNGKey


class AttackMetrics(NamedTuple):
  """Separation of members from non-members by an attack's scores.

  Attributes:
    auc: area under the ROC curve; 0.5 is chance.
    tpr_at_low_fpr: the largest true-positive rate among the ROC points with
      false-positive rate at most `max_fpr`, without interpolation.
    max_fpr: the false-positive rate limit of `tpr_at_low_fpr`.
    num_members: candidates that were in the training set.
    num_nonmembers: candidates that were not.
  """

  auc: float
  tpr_at_low_fpr: float
  max_fpr: float
  num_members: int
  num_nonmembers: int


def _validate_attack_inputs(
    is_member: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
  """Check membership labels and scores, return them as bool and float64."""
  is_member = np.asarray(is_member)
  scores = np.asarray(scores, dtype=np.float64)
  if is_member.ndim != 1 or scores.shape != is_member.shape:
    raise ValueError(
        '`is_member` and `scores` must be 1-D with the same length; got '
        f'shapes {is_member.shape} and {scores.shape}.'
    )
  if not np.isin(is_member, (0, 1)).all():
    raise ValueError('`is_member` must contain only booleans, 0 or 1.')
  if np.isnan(scores).any():
    raise ValueError(
        f'`scores` must not be NaN; got {int(np.isnan(scores).sum())} NaN '
        'scores.'
    )
  is_member = is_member.astype(bool)
  if is_member.all() or not is_member.any():
    raise ValueError(
        '`is_member` must mark at least one member and one non-member; got '
        f'{int(is_member.sum())} members of {is_member.size}.'
    )
  return is_member, scores


def roc_curve(
    is_member: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
  """Compute the exact ROC curve of the rule `score >= threshold`.

  Args:
    is_member: `[candidates]` bool, True for training-set members.
    scores: `[candidates]` attack scores, higher meaning member. Infinite
      scores are allowed.

  Returns:
    `(fpr, tpr)`, each `[thresholds + 1]` float64: the point (0, 0), then one
    point per distinct score from the highest to the lowest. Tied scores
    form one point, because no threshold separates them.

  Raises:
    ValueError: if the inputs are not 1-D of equal length, a score is NaN,
      or there is no member or no non-member.
  """
  is_member, scores = _validate_attack_inputs(is_member, scores)
  order = np.argsort(-scores, kind='stable')
  sorted_scores = scores[order]
  true_positives = np.cumsum(is_member[order])
  false_positives = np.cumsum(~is_member[order])
  # Only the last position of a run of tied scores is a reachable threshold.
  is_run_end = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
  tpr = true_positives[is_run_end] / true_positives[-1]
  fpr = false_positives[is_run_end] / false_positives[-1]
  return np.append(0.0, fpr), np.append(0.0, tpr)


def tpr_at_fpr(
    is_member: npt.ArrayLike, scores: npt.ArrayLike, *, max_fpr: float = 0.01
) -> float:
  """Return the largest true-positive rate with false-positive rate <= max_fpr.

  The value is read off the exact ROC curve without interpolation, so with
  fewer than `1 / max_fpr` non-members only the points with no false
  positive count.

  Raises:
    ValueError: if `max_fpr` is not in [0, 1], or for the reasons of
      `roc_curve`.
  """
  if not 0.0 <= max_fpr <= 1.0:
    raise ValueError(f'`max_fpr` must be in [0, 1]; got {max_fpr}.')
  fpr, tpr = roc_curve(is_member, scores)
  return float(np.max(tpr[fpr <= max_fpr]))


def attack_auc(is_member: npt.ArrayLike, scores: npt.ArrayLike) -> float:
  """Return the area under the ROC curve of an attack, ties counted as 1/2.

  Raises:
    ValueError: for the reasons of `roc_curve`.
  """
  is_member, scores = _validate_attack_inputs(is_member, scores)
  # `clinical.auroc` takes probabilities in [0, 1]. The AUC depends only on
  # the order of the scores, so their dense ranks scaled to [0, 1] give the
  # same value, with ties and infinite scores kept.
  _, ranks = np.unique(scores, return_inverse=True)
  scaled_ranks = ranks / max(int(ranks.max()), 1)
  return float(clinical.auroc(is_member.astype(np.int32), scaled_ranks))


def evaluate_attack(
    is_member: npt.ArrayLike, scores: npt.ArrayLike, *, max_fpr: float = 0.01
) -> AttackMetrics:
  """Compute the AUC and the TPR at `max_fpr` of an attack's scores.

  Args:
    is_member: `[candidates]` bool, True for training-set members.
    scores: `[candidates]` attack scores, higher meaning member.
    max_fpr: false-positive rate limit of the reported true-positive rate.

  Returns:
    The attack's `AttackMetrics`.

  Raises:
    ValueError: for the reasons of `tpr_at_fpr`.
  """
  is_member, _ = _validate_attack_inputs(is_member, scores)
  return AttackMetrics(
      auc=attack_auc(is_member, scores),
      tpr_at_low_fpr=tpr_at_fpr(is_member, scores, max_fpr=max_fpr),
      max_fpr=max_fpr,
      num_members=int(is_member.sum()),
      num_nonmembers=int((~is_member).sum()),
  )


def loss_scores(
    model: tabular.Model, params: Params, x: jax.Array, y: jax.Array
) -> jax.Array:
  """Score `[candidates]` examples by the negative loss of the target model.

  Args:
    model: the target model's functions.
    params: the target model's parameters.
    x: `[candidates, features]` inputs.
    y: `[candidates]` integer labels.

  Returns:
    `[candidates]` scores, the negated per-example cross-entropy.

  Raises:
    ValueError: if `y` is not shaped `[candidates]` with one label per row
      of `x`, or a concrete label is not an integer in [0, classes).
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  check_labels(y, model.num_classes, num_rows=x.shape[0])
  return _loss_scores(model, params, x, y)


def check_labels(y: jax.Array, num_classes: int, *,
                 num_rows: int | None = None) -> None:
  """Raise ValueError for labels that are not `[num_rows]` in [0, classes).

  The shape is always checked: `[n, 1]` labels broadcast to an `[n, n]`
  score matrix. The values are checked only when concrete, because traced
  labels, as under `jax.vmap`, cannot be read. A label of 2 on a binary
  model used to get a finite loss score, and a fractional one a score
  between its neighbours'.
  """
  expected = (num_rows,) if num_rows is not None else None
  if jnp.ndim(y) != 1 or (expected is not None and jnp.shape(y) != expected):
    raise ValueError(
        f'`y` must be shaped {expected or "[candidates]"}, one label per '
        f'row of `x`; got shape {jnp.shape(y)}.'
    )
  if isinstance(y, jax.core.Tracer):
    return
  labels = np.asarray(y)
  invalid = (labels < 0) | (labels >= num_classes)
  invalid |= labels != np.round(labels)
  if np.any(invalid):
    raise ValueError(
        f'`y` must contain integer labels in [0, {num_classes}) for a model '
        f'with {num_classes} classes; got {np.unique(labels[invalid])}.'
    )


@functools.partial(jax.jit, static_argnums=0)
def _loss_scores(model, params, x, y):
  logits = model.apply(params, x)
  return -tabular.per_example_loss(logits, y, model.num_classes)


def map_trainings(
    train_fn: Callable[[PRNGKey, jax.Array], Params],
    keys: jax.Array,
    inputs: jax.Array,
    *,
    batch_size: int | None = None,
) -> Params:
  """Run `train_fn(key, input)` over a leading axis as one jitted computation.

  Args:
    train_fn: a jittable training function.
    keys: `[trainings]` PRNG keys.
    inputs: `[trainings, ...]` second arguments, such as membership masks.
    batch_size: trainings run side by side by `jax.vmap`; None runs all of
      them at once. Smaller values bound the memory, and `jax.lax.map` then
      loops over the batches inside the same compiled computation.

  Returns:
    The outputs of `train_fn` stacked along a leading `[trainings]` axis.

  Raises:
    ValueError: if `batch_size` is not None or a positive integer.
  """
  if batch_size is not None and (
      isinstance(batch_size, bool)
      or not isinstance(batch_size, numbers.Integral)
      or batch_size < 1
  ):
    raise ValueError(
        '`batch_size` must be None (all trainings at once) or a positive '
        f'integer; got {batch_size!r}.'
    )

  def train_one(key_and_input):
    return train_fn(*key_and_input)

  def train_batches(keys, inputs):
    return jax.lax.map(train_one, (keys, inputs), batch_size=batch_size)

  if batch_size is None:
    return jax.jit(jax.vmap(train_fn))(keys, inputs)
  return jax.jit(train_batches)(keys, inputs)
