"""Flax models and their per-example losses."""

# tabular
from fedjax_med.models.tabular import class_probabilities as class_probabilities
from fedjax_med.models.tabular import from_flax as from_flax
from fedjax_med.models.tabular import from_nnx as from_nnx
from fedjax_med.models.tabular import LogisticRegression as LogisticRegression
from fedjax_med.models.tabular import MLP as MLP
from fedjax_med.models.tabular import Model as Model
from fedjax_med.models.tabular import per_example_loss as per_example_loss
