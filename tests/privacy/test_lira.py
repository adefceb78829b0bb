"""LiRA: logit-scaled confidence, shadow training and likelihood ratios."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from fedjax_med import models
from fedjax_med.models import tabular
from fedjax_med.privacy import lira
from fedjax_med.privacy import membership

# A pool that logistic regression memorizes: more features than examples and
# labels that do not depend on the features.
NUM_CANDIDATES = 60
NUM_FEATURES = 120
NUM_SHADOWS = 16


def _identity_model(num_classes):
  """A model whose logits are its inputs, for hand-computed confidences."""
  return tabular.Model(
      init=lambda key, x: {}, apply=lambda params, x: x,
      num_classes=num_classes,
  )


def _logistic_regression():
  return models.from_flax(models.LogisticRegression(2), num_classes=2)


def test_logit_confidence_binary():
  logits = jnp.array([[2.0], [2.0]])

  confidence = lira.logit_confidence(
      _identity_model(2), {}, logits, jnp.array([1, 0])
  )

  np.testing.assert_allclose(confidence, [2.0, -2.0])


@pytest.mark.parametrize('labels', [[1, 0], (1, 0)])
def test_logit_confidence_python_labels(labels):
  # `y == 1` on a list is False, so every row was scored as label 0.
  logits = jnp.array([[2.0], [2.0]])

  confidence = lira.logit_confidence(_identity_model(2), {}, logits, labels)
  shadows = lira.shadow_confidences(
      _identity_model(2), {'stack': jnp.zeros((1,))}, logits, labels)

  np.testing.assert_allclose(confidence, [2.0, -2.0])
  np.testing.assert_allclose(shadows, [[2.0, -2.0]])


def test_logit_confidence_multiclass():
  logits = jnp.array([[1.0, 2.0, 3.0]])

  confidence = lira.logit_confidence(
      _identity_model(3), {}, logits, jnp.array([2])
  )

  probability = np.exp(3.0) / np.exp([1.0, 2.0, 3.0]).sum()
  expected = math.log(probability / (1 - probability))
  np.testing.assert_allclose(confidence, [expected], rtol=1e-6)


def test_logit_confidence_clipped():
  logits = jnp.array([[1e4], [-1e4]])

  confidence = lira.logit_confidence(
      _identity_model(2), {}, logits, jnp.array([1, 1]),
      probability_clip=1e-3,
  )

  bound = math.log(0.999 / 0.001)
  np.testing.assert_allclose(confidence, [bound, -bound], rtol=1e-6)


def test_lira_online_hand_value():
  # In shadows {1, 3}: mean 2, variance 2. Out shadows {-1, 1}: mean 0,
  # variance 2. At c = 2 the log ratio is 0 - (-(2 - 0)^2 / (2 * 2)) = 1.
  shadow_confidence = jnp.array([[1.0], [3.0], [-1.0], [1.0]])
  masks = jnp.array([[True], [True], [False], [False]])

  scores = lira.lira_scores(
      jnp.array([2.0]), shadow_confidence, masks, global_variance=False
  )

  np.testing.assert_allclose(scores, [1.0], rtol=1e-5)


def test_lira_offline_hand_value():
  shadow_confidence = jnp.array([[1.0], [3.0], [-1.0], [1.0]])
  masks = jnp.array([[True], [True], [False], [False]])

  scores = lira.lira_scores(
      jnp.array([2.0]), shadow_confidence, masks, variant='offline'
  )

  expected = stats.norm.logcdf(2.0, loc=0.0, scale=math.sqrt(2.0))
  np.testing.assert_allclose(scores, [expected], rtol=1e-5)


def test_lira_global_variance_pools_candidates():
  # Candidate 0 deviates by +-1 around its means, candidate 1 by +-3, so
  # the pooled variance of each Gaussian is (2 + 18) / 2 = 10.
  shadow_confidence = jnp.array(
      [[1.0, 3.0], [3.0, 9.0], [-1.0, -3.0], [1.0, 3.0]]
  )
  masks = jnp.array([[True, True], [True, True], [False, False],
                     [False, False]])

  scores = lira.lira_scores(
      jnp.array([2.0, 6.0]), shadow_confidence, masks
  )

  expected = [4 / 20, 36 / 20]
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_lira_rejects_too_few_in_shadows():
  masks = jnp.array([[True], [False], [False]])

  with pytest.raises(ValueError, match='at least 2 in shadows'):
    lira.lira_scores(jnp.zeros(1), jnp.zeros((3, 1)), masks)


def test_lira_rejects_unknown_variant():
  with pytest.raises(ValueError, match='variant'):
    lira.lira_scores(
        jnp.zeros(1), jnp.zeros((4, 1)), jnp.ones((4, 1), bool),
        variant='both',
    )


def test_shadow_masks_balanced(key):
  masks = lira.sample_shadow_masks(
      key, num_shadows=8, num_candidates=50
  )

  np.testing.assert_array_equal(np.sum(masks, axis=0), np.full(50, 4))
  assert 0 < int(np.sum(masks[0])) < 50


def test_shadow_trainer_never_reads_nonmembers(key):
  x = jax.random.normal(key, (12, 3))
  y = jnp.arange(12) % 2
  mask = jnp.arange(12) < 7
  # Non-member rows replaced by NaN would poison any step that reads them.
  poisoned_x = jnp.where(mask[:, None], x, jnp.nan)
  model = _logistic_regression()

  @jax.jit
  def train(features):
    train_fn = lira.build_shadow_trainer(
        model, features, y, optax.sgd(0.1), num_steps=5, batch_size=3
    )
    return train_fn(key, mask)

  clean, poisoned = train(x), train(poisoned_x)

  for clean_leaf, poisoned_leaf in zip(
      jax.tree.leaves(clean), jax.tree.leaves(poisoned)
  ):
    np.testing.assert_array_equal(clean_leaf, poisoned_leaf)


@pytest.fixture(scope='module')
def memorized_pool():
  """A target and its shadows, all trained in one vmapped computation."""
  pool_key, target_key, shadow_key = jax.random.split(jax.random.key(1), 3)
  x_key, y_key = jax.random.split(pool_key)
  x = jax.random.normal(x_key, (NUM_CANDIDATES, NUM_FEATURES))
  y = jax.random.bernoulli(y_key, 0.5, (NUM_CANDIDATES,)).astype(jnp.int32)
  model = _logistic_regression()
  train_fn = lira.build_shadow_trainer(
      model, x, y, optax.sgd(1.0), num_steps=100,
      batch_size=NUM_CANDIDATES // 2,
  )
  target_mask = jax.random.bernoulli(target_key, 0.5, (NUM_CANDIDATES,))
  return model, x, y, train_fn, target_mask, shadow_key


def _lira_metrics(model, x, y, train_fn, target_mask, shadow_key):
  """Train the target and the shadows in one call, then attack the target."""
  mask_key, train_key = jax.random.split(shadow_key)
  shadow_masks = lira.sample_shadow_masks(
      mask_key, num_shadows=NUM_SHADOWS, num_candidates=x.shape[0]
  )
  masks = jnp.concatenate([target_mask[None, :], shadow_masks])
  keys = jax.random.split(train_key, NUM_SHADOWS + 1)
  params = membership.map_trainings(train_fn, keys, masks)
  confidences = lira.shadow_confidences(model, params, x, y)
  scores = lira.lira_scores(
      confidences[0], confidences[1:], shadow_masks
  )
  target = jax.tree.map(lambda leaf: leaf[0], params)
  loss_scores = membership.loss_scores(model, target, x, y)
  return (
      membership.evaluate_attack(target_mask, scores),
      membership.evaluate_attack(target_mask, loss_scores),
  )


def test_lira_detects_memorization(memorized_pool):
  lira, loss = _lira_metrics(*memorized_pool)

  assert lira.auc > 0.8
  # With 28 non-members, 1% FPR means no false positive at all.
  assert lira.tpr_at_low_fpr > 0.0
  assert loss.auc > 0.7


def test_lira_chance_without_data_dependence(key):
  # 400 candidates put the AUC's standard deviation under chance near 0.03.
  pool_key, target_key, shadow_key = jax.random.split(key, 3)
  x = jax.random.normal(pool_key, (400, 10))
  y = (x[:, 0] > 0).astype(jnp.int32)
  target_mask = jax.random.bernoulli(target_key, 0.5, (400,))
  model = _logistic_regression()

  def ignore_data(key, membership_mask):
    del membership_mask
    return model.init(key, x[:1])

  lira, loss = _lira_metrics(model, x, y, ignore_data, target_mask, shadow_key)

  assert abs(lira.auc - 0.5) < 0.1
  assert abs(loss.auc - 0.5) < 0.1


def test_train_shadow_models_shapes(key):
  x = jnp.zeros((10, 3))
  model = _logistic_regression()

  def ignore_data(key, membership_mask):
    del membership_mask
    return model.init(key, x[:1])

  shadows = lira.train_shadow_models(
      ignore_data, key=key, num_shadows=6, num_candidates=10
  )

  assert shadows.masks.shape == (6, 10)
  kernel = shadows.params['params']['Dense_0']['kernel']
  assert kernel.shape == (6, 3, 1)
  assert not np.allclose(kernel[0], kernel[1])


@pytest.mark.parametrize('num_classes, labels, message', [
    (3, [0, 5], r'in \[0, 3\).*got \[5\]'),
    (2, [2, 1], r'in \[0, 2\).*got \[2\]'),
    (2, [-1, 1], r'got \[-1\]'),
    (2, [0.5, 1.0], r'got \[0\.5\]'),
])
def test_logit_confidence_rejects_labels(num_classes, labels, message):
  logits = jnp.zeros((2, 1 if num_classes == 2 else num_classes))

  with pytest.raises(ValueError, match=message):
    lira.logit_confidence(
        _identity_model(num_classes), {}, logits, jnp.array(labels)
    )


def test_shadow_confidences_rejects_labels():
  shadow_logits = jnp.zeros((2, 2, 3))
  model = tabular.Model(
      init=lambda key, x: {}, apply=lambda params, x: params['logits'],
      num_classes=3,
  )

  with pytest.raises(ValueError, match=r'got \[3\]'):
    lira.shadow_confidences(
        model, {'logits': shadow_logits}, jnp.zeros((2, 1)), jnp.array([3, 0])
    )


@pytest.mark.parametrize('num_candidates', [9, 11, 12])
def test_train_shadow_models_candidate_mismatch(key, num_candidates):
  train_fn = lira.build_shadow_trainer(
      _logistic_regression(), jnp.zeros((10, 3)), jnp.zeros(10, jnp.int32),
      optax.sgd(0.1), num_steps=1, batch_size=2,
  )

  with pytest.raises(ValueError, match=r'shape \(10,\); got shape'):
    lira.train_shadow_models(
        train_fn, key=key, num_shadows=4, num_candidates=num_candidates
    )


def test_shadow_trainer_rejects_long_mask(key):
  train_fn = lira.build_shadow_trainer(
      _logistic_regression(), jnp.zeros((10, 3)), jnp.zeros(10, jnp.int32),
      optax.sgd(0.1), num_steps=1, batch_size=2,
  )

  with pytest.raises(ValueError, match='num_candidates=10'):
    train_fn(key, jnp.ones(12, bool))


def test_shadow_trainer_rejects_row_mismatch():
  with pytest.raises(ValueError, match='got 10 and 9 rows'):
    lira.build_shadow_trainer(
        _logistic_regression(), jnp.zeros((10, 3)), jnp.zeros(9, jnp.int32),
        optax.sgd(0.1), num_steps=1, batch_size=2,
    )
