"""The survival parts of a study: a Cox model scored by Harrell's C-index.

A study of a survival dataset (`config.SURVIVAL_DATASETS`) trains the
linear Cox model of `client.survival_training` with the round of any other
study, because the server receives only parameter updates. This module builds
the model and its local training from the config, evaluates each client's
test rows by the C-index of `simulation.evaluate_survival`, and turns that
evaluation into the fields of `metrics.jsonl` and `summary.json`. Those
fields are named after the C-index (`test_c_index`, `mean_c_index`, ...)
and never after accuracy.
"""

import math
from typing import Any, Callable

import jax
import numpy as np
import optax

from fedjax_med import config as config_lib
from fedjax_med.client import survival_training
from fedjax_med.data import federated
from fedjax_med.data import tcga_brca
from fedjax_med.models import tabular
from fedjax_med.report import outputs
from fedjax_med.simulation import evaluate_survival

# Per-client C-index values in summary.json and metrics.jsonl.
PER_CLIENT_FIELD = 'test_c_index'


def is_survival(config: config_lib.ExperimentConfig) -> bool:
  """Return whether `config` studies a survival dataset."""
  return config.data.dataset in config_lib.SURVIVAL_DATASETS


def load_dataset(data: config_lib.DataConfig) -> federated.FederatedDataset:
  """Load the survival dataset that `data.dataset` names."""
  del data  # `config.validate` allows only 'tcga_brca'.
  return tcga_brca.load_tcga_brca()


def build_cox_model() -> tabular.Model:
  """Return the linear Cox model with FLamby's PyTorch-like start.

  The kernel starts from U(-1/sqrt(features), 1/sqrt(features)), the
  default of PyTorch's `nn.Linear` that FLamby's Fed-TCGA-BRCA baseline
  uses, as in `experiments/tcga_brca_flamby.py`.
  """
  kernel_init = jax.nn.initializers.variance_scaling(
      1.0 / 3.0, 'fan_in', 'uniform'
  )
  return survival_training.cox_model(kernel_init)


def build_local_update(
    client: config_lib.ClientConfig,
    model: tabular.Model,
    optimizer: optax.GradientTransformation,
    *,
    loss_normalization: str,
    num_steps: int,
    proximal_mu,
    report_initial_loss: bool,
    min_client_examples: int,
    unroll: bool,
):
  """Return a client's local Cox training as the config describes it."""
  return survival_training.build_survival_local_update(
      model,
      optimizer,
      num_steps=num_steps,
      batch_size=client.batch_size,
      num_epochs=client.local_epochs,
      proximal_mu=proximal_mu,
      loss_normalization=loss_normalization,
      report_initial_loss=report_initial_loss,
      min_client_examples=min_client_examples,
      unroll=unroll,
  )


def build_evaluate(
    model: tabular.Model,
    test: federated.FederatedData,
    params_of: Callable[[Any], Any],
) -> Callable[[Any], evaluate_survival.SurvivalEvaluation]:
  """Return `evaluate(state) -> SurvivalEvaluation` over `test`.

  `params_of(state)` returns the params to evaluate.
  """
  evaluate = evaluate_survival.build_evaluate_survival(model, test)
  return lambda state: evaluate(params_of(state))


def client_c_index(
    evaluation: evaluate_survival.SurvivalEvaluation,
) -> list[float | None]:
  """Return each client's C-index, None where it is NaN."""
  return [None if math.isnan(value) else float(value)
          for value in evaluation.c_index]


def _nan_to_none(value: float) -> float | None:
  return None if math.isnan(value) else float(value)


def c_index_summary(values: list[float | None]) -> dict[str, Any]:
  """Return the mean, worst and 10th percentile of the per-client C-index.

  Clients whose C-index is None are left out. The mean is FLamby's
  "average of per-client metrics".
  """
  present = [value for value in values if value is not None]
  return {
      'mean_c_index': float(np.mean(present)) if present else None,
      'worst_c_index': float(np.min(present)) if present else None,
      'p10_c_index': float(np.percentile(present, 10)) if present else None,
  }


def round_fields(
    evaluation: evaluate_survival.SurvivalEvaluation,
    client_names: tuple[str, ...],
    *,
    per_client: bool,
) -> dict[str, Any]:
  """Return the C-index fields of one evaluated round's record.

  `per_client` adds each client's C-index under `test_c_index`.
  """
  values = client_c_index(evaluation)
  fields = {}
  if per_client:
    fields[PER_CLIENT_FIELD] = dict(zip(client_names, values))
  fields.update(c_index_summary(values))
  fields['pooled_c_index'] = _nan_to_none(evaluation.pooled_c_index)
  return fields


def summary_fields(
    evaluation: evaluate_survival.SurvivalEvaluation,
    client_names: tuple[str, ...],
) -> dict[str, Any]:
  """Return the C-index fields of `summary.json` for the final model.

  A client's C-index is None when it has no comparable pair of test rows
  (or a non-finite risk); `c_index_reasons` then gives the reason.
  """
  values = client_c_index(evaluation)
  summary = {PER_CLIENT_FIELD: dict(zip(client_names, values))}
  summary.update(c_index_summary(values))
  worst = summary['worst_c_index']
  summary['worst_client'] = next(
      (name for name, value in zip(client_names, values)
       if value is not None and value == worst),
      None,
  )
  summary['pooled_c_index'] = _nan_to_none(evaluation.pooled_c_index)
  summary['c_index_reasons'] = {
      name: reason for name, reason in zip(client_names, evaluation.reasons)
      if reason is not None
  }
  if evaluation.pooled_reason is not None:
    summary['pooled_c_index_reason'] = evaluation.pooled_reason
  summary['num_comparable_pairs'] = dict(zip(
      client_names, [int(count) for count in evaluation.num_comparable]))
  return summary


def write_risk_scores(
    path,
    dataset: federated.FederatedDataset,
    evaluation: evaluate_survival.SurvivalEvaluation,
) -> None:
  """Write each test patient's client, time, event and final log-risk.

  With the risks on disk, other survival metrics (time-dependent AUC,
  Uno's C-index) can be computed later.
  """
  counts = np.asarray(dataset.test.num_examples)
  times = np.asarray(dataset.test.examples['time'])
  events = np.asarray(dataset.test.examples['event'])
  rows = []
  for client, name in enumerate(dataset.client_names):
    for row in range(counts[client]):
      rows.append((
          name, f'{float(times[client, row]):.9g}', int(events[client, row]),
          f'{float(evaluation.log_risk[client, row]):.9g}',
      ))
  outputs.write_csv(path, ('client', 'time', 'event', 'log_risk'), rows)
