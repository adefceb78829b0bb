"""Evaluation of the global model on every client's test rows, vmapped."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.typing import Params


class ClientEvaluation(NamedTuple):
  """Per-client test results, each shaped `[clients]` unless noted.

  Attributes:
    accuracy: fraction of the client's test rows classified correctly; NaN
      for a client with no test rows.
    loss: mean cross-entropy over the client's test rows; NaN when empty.
    probabilities: `[clients, examples, num_classes]` predicted class
      probabilities, padding rows included (mask them with the counts).
    predicted: `[clients, examples]` predicted labels, padding rows included.
    num_nonfinite: test rows whose probabilities are NaN or infinite, which
      happens only when training has diverged.
  """

  accuracy: jax.Array
  loss: jax.Array
  probabilities: jax.Array
  num_nonfinite: jax.Array
  predicted: jax.Array


def build_evaluate(
    model: tabular.Model,
    test_data: federated.FederatedData,
    *,
    threshold: float = 0.5,
    personalized: bool = False,
) -> Callable[[Params], ClientEvaluation]:
  """Return a jitted `evaluate(params) -> ClientEvaluation` over `test_data`.

  A binary model predicts class 1 when its probability is at least
  `threshold`; a multi-class model predicts its most probable class. With
  `personalized=True`, `params` has a leading `[clients]` axis and each
  client is evaluated with its own model, as after local fine-tuning.

  Raises:
    ValueError: if `test_data` fails `federated.check_federated_data` for
      the model's `num_classes` (the checks that read values skip traced
      data). The returned `evaluate` raises it when first traced if the
      model's logits are not `[batch, num_logits(num_classes)]`.
  """
  federated.check_federated_data(
      test_data, name='test_data', num_classes=model.num_classes)

  def evaluate_client(params, examples, num_examples):
    logits = model.apply(params, examples['x'])
    tabular.check_logits(logits, model.num_classes)
    probabilities = tabular.class_probabilities(logits, model.num_classes)
    losses = tabular.per_example_loss(logits, examples['y'], model.num_classes)
    if model.num_classes == 2:
      predicted = (probabilities[..., 1] >= threshold).astype(jnp.int32)
    else:
      predicted = jnp.argmax(probabilities, axis=-1)
    correct = predicted == examples['y']
    real = jnp.arange(examples['y'].shape[0]) < num_examples
    count = jnp.where(num_examples > 0, num_examples, jnp.nan)
    accuracy = jnp.sum(correct & real) / count
    loss = jnp.sum(jnp.where(real, losses, 0.0)) / count
    finite = jnp.all(jnp.isfinite(probabilities), axis=-1)
    num_nonfinite = jnp.sum(real & ~finite)
    return ClientEvaluation(
        accuracy, loss, probabilities, num_nonfinite, predicted
    )

  evaluate_all = jax.vmap(
      evaluate_client, in_axes=(0 if personalized else None, 0, 0)
  )

  @jax.jit
  def evaluate_step(params, examples, num_examples):
    return evaluate_all(params, examples, num_examples)

  def evaluate(params: Params) -> ClientEvaluation:
    return evaluate_step(params, test_data.examples, test_data.num_examples)

  return evaluate
