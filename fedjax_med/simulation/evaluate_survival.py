"""Evaluation of a Cox model by Harrell's C-index on every client's test rows.

The log-risk of every test row is computed on the device in one jitted,
vmapped call. The C-index of each client, and of all test rows pooled, is
then computed on the host with `evaluation.concordance.concordance_index`,
which works in numpy.
"""

from typing import Callable, NamedTuple

import jax
import numpy as np

from fedjax_med.client import survival_training
from fedjax_med.data import federated
from fedjax_med.evaluation import concordance
from fedjax_med.models import tabular
from fedjax_med.typing import Params


class SurvivalEvaluation(NamedTuple):
  """Test C-index of a Cox model, per client and pooled.

  Attributes:
    c_index: `[clients]` float64 C-index of each client's test rows. It is
      NaN for a client without a comparable pair or with a non-finite risk.
    reasons: one entry per client, the reason its C-index is NaN, else None.
    num_comparable: `[clients]` int64 comparable pairs of each client.
    mean_c_index: mean of the per-client C-indices that are numbers (the
      "average of per-client metrics" that FLamby reports), or NaN when no
      client has one.
    pooled_c_index: C-index of all clients' test rows together, so a pair
      may span two clients.
    pooled_reason: the reason `pooled_c_index` is NaN, else None.
    log_risk: `[clients, examples]` predicted log-risk, padding rows
      included (mask them with `test_data.num_examples`).
    num_nonfinite: `[clients]` int64 real test rows whose log-risk is NaN
      or infinite, which happens only when training has diverged.
  """

  c_index: np.ndarray
  reasons: tuple[str | None, ...]
  num_comparable: np.ndarray
  mean_c_index: float
  pooled_c_index: float
  pooled_reason: str | None
  log_risk: np.ndarray
  num_nonfinite: np.ndarray


def _score(risk: np.ndarray, time: np.ndarray, event: np.ndarray):
  """Return the `Concordance` of real rows, or NaN for non-finite risks."""
  num_nonfinite = int(np.sum(~np.isfinite(risk)))
  if num_nonfinite:
    reason = (
        f'the model predicted a NaN or infinite risk for {num_nonfinite} of '
        f'{risk.shape[0]} rows, so training has probably diverged'
    )
    return concordance.Concordance(float('nan'), 0, 0, 0, reason)
  return concordance.concordance_index(risk, time, event)


def _real_rows(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Concatenate the real rows of `[clients, examples]` values."""
  return np.concatenate(
      [values[client, :count] for client, count in enumerate(counts)]
  )


def build_evaluate_survival(
    model: tabular.Model,
    test_data: federated.FederatedData,
) -> Callable[[Params], SurvivalEvaluation]:
  """Build `evaluate(params) -> SurvivalEvaluation` over `test_data`.

  Args:
    model: Cox model whose `apply` maps `x [batch, features]` to the
      log-risk `[batch]` or `[batch, 1]`, such as
      `client.survival_training.cox_model()`.
    test_data: test rows of every client, with `x [clients, examples,
      features]`, `time [clients, examples]` and `event [clients, examples]`
      (0 or 1).

  Returns:
    A function of the model parameters. Its C-indices follow the pair rules
    of `concordance_index` (those of lifelines), with the log-risk as the
    risk score.

  Raises:
    ValueError: if `test_data` lacks `x`, `time` or `event`, or a real test
      row has a value that is not a finite float32 number
      (`federated.check_federated_data`), a negative or non-finite time or
      an event other than 0 or 1 (`federated.check_survival_data`).
  """
  # The shared checks read values as training does: 1e39 in float64 is
  # infinite in float32, and object or string fields fail inside numpy.
  # A NaN feature gave a NaN risk, reported as diverged training.
  federated.check_federated_data(test_data, name='test_data')
  federated.check_survival_data(test_data, name='test_data')
  counts = np.asarray(test_data.num_examples)
  times = np.asarray(test_data.examples['time'])
  events = np.asarray(test_data.examples['event'])
  test_x = jax.device_put(test_data.examples['x'])

  def client_log_risk(params, x):
    return survival_training.log_risk(model, params, x)

  log_risk_all = jax.jit(jax.vmap(client_log_risk, in_axes=(None, 0)))

  def evaluate(params: Params) -> SurvivalEvaluation:
    risk = np.asarray(log_risk_all(params, test_x))
    results = [
        _score(risk[c, :count], times[c, :count], events[c, :count])
        for c, count in enumerate(counts)
    ]
    pooled = _score(
        _real_rows(risk, counts),
        _real_rows(times, counts),
        _real_rows(events, counts),
    )

    c_index = np.asarray([result.c_index for result in results], np.float64)
    numbers = c_index[~np.isnan(c_index)]
    mean_c_index = float(np.mean(numbers)) if numbers.size else float('nan')
    return SurvivalEvaluation(
        c_index=c_index,
        reasons=tuple(result.reason for result in results),
        num_comparable=np.asarray(
            [result.num_comparable for result in results], np.int64
        ),
        mean_c_index=mean_c_index,
        pooled_c_index=pooled.c_index,
        pooled_reason=pooled.reason,
        log_risk=risk,
        num_nonfinite=np.asarray(
            [np.sum(~np.isfinite(risk[c, :count]))
             for c, count in enumerate(counts)], np.int64
        ),
    )

  return evaluate
