"""Evaluation of the global model on each client's test rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.simulation import evaluate as evaluate_lib

_X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)


def _test_data(labels, num_examples=None):
  data = federated.stack_clients([{'x': _X, 'y': np.asarray(labels)}])
  if num_examples is not None:
    data = data._replace(num_examples=np.array(num_examples, np.int32))
  return data


def _model(num_logit_classes, num_classes):
  return tabular.from_flax(
      tabular.LogisticRegression(num_logit_classes), num_classes)


def test_evaluate_matches_numpy(key):
  model = _model(3, 3)
  params = model.init(key, _X[:1])
  labels = np.array([0, 2, 1, 2])

  result = evaluate_lib.build_evaluate(model, _test_data(labels))(params)

  logits = np.asarray(model.apply(params, _X))
  log_probabilities = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(
      result.loss, [-log_probabilities[np.arange(4), labels].mean()],
      rtol=1e-5)
  np.testing.assert_allclose(
      result.accuracy, [np.mean(logits.argmax(1) == labels)])


@pytest.mark.parametrize('num_classes, labels, message', [
    # A binary model scored labels of 2 with a loss of 0.69.
    (2, [2, 2, 2, 2], 'Client 0 has label 2 in row 0 of `test_data`'),
    # Labels of 5 for a 3-class model gave a NaN loss.
    (3, [0, 1, 5, 1], 'Client 0 has label 5 in row 2 of `test_data`'),
    (2, [-1, 0, 1, 0], 'Client 0 has label -1 in row 0'),
    # Labels of 0.5 gave an accuracy of 0.
    (2, [0.5, 0.5, 0.5, 0.5], r"`test_data.examples\['y'\]` must be integer"),
], ids=['binary', 'multiclass', 'negative', 'float'])
def test_invalid_test_labels_rejected(num_classes, labels, message):
  model = _model(num_classes, num_classes)

  with pytest.raises(ValueError, match=message):
    evaluate_lib.build_evaluate(model, _test_data(labels))


def test_nonfinite_test_feature_rejected():
  # A NaN feature gave NaN probabilities, reported as if training had
  # diverged.
  x = _X.copy()
  x[3, 1] = np.nan
  data = federated.stack_clients([{'x': x, 'y': np.array([0, 1, 0, 1])}])

  with pytest.raises(ValueError, match='Client 0 has nan in row 3'):
    evaluate_lib.build_evaluate(_model(2, 2), data)


def test_label_in_padding_ignored(key):
  model = _model(2, 2)
  data = _test_data([0, 1, 0, 7], num_examples=[3])

  result = evaluate_lib.build_evaluate(model, data)(
      model.init(key, _X[:1]))

  assert np.isfinite(result.loss[0])


@pytest.mark.parametrize('num_examples', [[5], [-1]])
def test_count_outside_padding_rejected(num_examples):
  data = _test_data([0, 1, 0, 1], num_examples=num_examples)

  with pytest.raises(ValueError, match=r'`test_data.num_examples` must be'):
    evaluate_lib.build_evaluate(_model(2, 2), data)


def test_logit_width_mismatch_rejected(key):
  # Three logits declared binary gave an accuracy of 0.75 from logit 0.
  wide = _model(3, 2)
  evaluate = evaluate_lib.build_evaluate(wide, _test_data([0, 1, 0, 1]))

  with pytest.raises(ValueError, match=r'logits shaped \(3,\).*needs \(1,\)'):
    evaluate(wide.init(key, _X[:1]))


def test_traced_test_data_not_read(key):
  model = _model(2, 2)
  params = model.init(key, _X[:1])
  data = _test_data([0, 1, 0, 1])

  @jax.jit
  def evaluate(examples, num_examples):
    traced = federated.FederatedData(examples, num_examples)
    return evaluate_lib.build_evaluate(model, traced)(params).accuracy

  accuracy = evaluate(data.examples, jnp.asarray(data.num_examples))

  expected = evaluate_lib.build_evaluate(model, data)(params).accuracy
  np.testing.assert_array_equal(accuracy, expected)
