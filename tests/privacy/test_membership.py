"""Membership inference metrics, the loss attack and batched training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models import tabular
from fedjax_med.privacy import membership


def _identity_model(num_classes):
  """A model whose logits are its inputs, for hand-computed confidences."""
  return tabular.Model(
      init=lambda key, x: {}, apply=lambda params, x: x,
      num_classes=num_classes,
  )


def test_roc_hand_built_scores():
  is_member = [1, 1, 1, 0, 0, 0]
  scores = [0.9, 0.8, 0.3, 0.5, 0.2, 0.1]

  fpr, tpr = membership.roc_curve(is_member, scores)

  np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
  np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])


def test_auc_hand_built_scores():
  # 8 of the 9 (member, non-member) pairs rank the member higher.
  auc = membership.attack_auc(
      [1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.5, 0.2, 0.1]
  )

  assert auc == pytest.approx(8 / 9)


def test_tpr_at_fpr_hand_built_scores():
  tpr = membership.tpr_at_fpr(
      [1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.5, 0.2, 0.1]
  )

  assert tpr == pytest.approx(2 / 3)


def test_tpr_at_fpr_counts_tie_as_one_point():
  # The member at 0.5 cannot be flagged without the non-member at 0.5.
  is_member = [1, 1, 0, 0]
  scores = [0.7, 0.5, 0.5, 0.1]

  assert membership.tpr_at_fpr(is_member, scores) == pytest.approx(0.5)
  assert membership.attack_auc(is_member, scores) == pytest.approx(3.5 / 4)


def test_tpr_at_fpr_includes_exact_limit():
  # 200 non-members allow 2 false positives at 1%: thresholds in (197, 198]
  # flag the non-members 198 and 199, and the members 300, 198.5 and 197.5.
  nonmember_scores = np.arange(200.0)
  member_scores = np.array([300.0, 198.5, 197.5, 150.0])
  is_member = np.concatenate([np.ones(4), np.zeros(200)])
  scores = np.concatenate([member_scores, nonmember_scores])

  assert membership.tpr_at_fpr(is_member, scores) == pytest.approx(0.75)
  assert membership.tpr_at_fpr(
      is_member, scores, max_fpr=0.0
  ) == pytest.approx(0.25)


def test_auc_infinite_scores():
  # Three of the four pairs rank the member higher: only 1 < 2 does not.
  auc = membership.attack_auc([1, 1, 0, 0], [np.inf, 1.0, -np.inf, 2.0])

  assert auc == pytest.approx(0.75)


def test_evaluate_attack_counts():
  metrics = membership.evaluate_attack(
      [True, True, True, False, False, False], [0.9, 0.8, 0.3, 0.5, 0.2, 0.1]
  )

  assert metrics.auc == pytest.approx(8 / 9)
  assert metrics.tpr_at_low_fpr == pytest.approx(2 / 3)
  assert metrics.num_members == 3
  assert metrics.num_nonmembers == 3


def test_attack_rejects_one_class():
  with pytest.raises(ValueError, match='one non-member'):
    membership.evaluate_attack([1, 1], [0.1, 0.2])


@pytest.mark.parametrize('is_member', [[2, 1, 0, 0], [0.5, 1, 0, 0],
                                       [np.nan, 1, 0, 0]])
def test_evaluate_attack_rejects_non_boolean_members(is_member):
  # Casting to bool first read 2, 0.5 and NaN as members.
  with pytest.raises(ValueError, match='only booleans, 0 or 1'):
    membership.evaluate_attack(is_member, [0.9, 0.8, 0.1, 0.2])


def test_attack_rejects_nan_score():
  with pytest.raises(ValueError, match='NaN'):
    membership.attack_auc([1, 0], [np.nan, 0.2])


def test_attack_rejects_length_mismatch():
  with pytest.raises(ValueError, match='same length'):
    membership.roc_curve([1, 0, 1], [0.1, 0.2])


def test_loss_scores_binary():
  logits = jnp.array([[2.0], [2.0], [-1.0]])
  labels = jnp.array([1, 0, 0])

  scores = membership.loss_scores(_identity_model(2), {}, logits, labels)

  # -log(sigmoid(z)) for label 1 and -log(1 - sigmoid(z)) for label 0.
  expected = [-math.log1p(math.exp(-2)), -math.log1p(math.exp(2)),
              -math.log1p(math.exp(-1))]
  np.testing.assert_allclose(scores, expected, rtol=1e-6)


@pytest.mark.parametrize('classes, labels, bad', [
    (2, [0, 1, 2], r'\[2\]'),
    (2, [0.0, 1.0, 0.5], r'\[0.5\]'),
    (3, [0, 1, 5], r'\[5\]'),
    (3, [-1, 1, 2], r'\[-1\]'),
])
def test_loss_scores_rejects_invalid_labels(classes, labels, bad):
  logits = jnp.zeros((3, 1 if classes == 2 else classes))

  with pytest.raises(ValueError, match=f'in \\[0, {classes}\\).*{bad}'):
    membership.loss_scores(_identity_model(classes), {}, logits,
                           jnp.array(labels))


@pytest.mark.parametrize('labels', [[[0], [1], [0]], 1, [0, 1]])
def test_loss_scores_rejects_label_shape(labels):
  # [3, 1] labels gave a [3, 3] score matrix, and a scalar label was
  # broadcast to every row.
  with pytest.raises(ValueError, match=r'shaped \(3,\), one label per row'):
    membership.loss_scores(_identity_model(2), {}, jnp.zeros((3, 1)),
                           jnp.asarray(labels))


def test_loss_scores_takes_lists():
  scores = membership.loss_scores(
      _identity_model(3), {}, [[2.0, 0.0, 0.0]], [0])

  # -log softmax([2, 0, 0])[0] = -(2 - log(e^2 + 2)).
  np.testing.assert_allclose(scores, [2 - math.log(math.exp(2) + 2)],
                             rtol=1e-6)


def test_map_trainings_batches_match_vmap(key):
  def train_fn(key, mask):
    return jnp.sum(mask) + jax.random.normal(key)

  keys = jax.random.split(key, 5)
  masks = jnp.arange(5 * 3).reshape(5, 3) % 2 == 0

  all_at_once = membership.map_trainings(train_fn, keys, masks)
  in_batches = membership.map_trainings(train_fn, keys, masks, batch_size=2)

  np.testing.assert_allclose(in_batches, all_at_once, rtol=1e-6)


@pytest.mark.parametrize('batch_size', [-1, 0, 2.0, True])
def test_map_trainings_rejects_batch_size(key, batch_size):
  keys = jax.random.split(key, 4)
  masks = jnp.ones((4, 3), bool)

  with pytest.raises(ValueError, match=f'got {batch_size!r}'):
    membership.map_trainings(
        lambda key, mask: jnp.sum(mask), keys, masks, batch_size=batch_size
    )
