"""Type aliases and the axis vocabulary used across fedjax_med.

Axis names used in docstrings and shapes:

* `clients` (C): leading axis of stacked per-client pytrees.
* `examples` (N): examples of one client, padded to the largest client.
* `batch` (B): a minibatch inside local training.
* `steps` (S): local optimizer steps.
* `features` (D): input features of a tabular example.
"""

from typing import Any

import jax

PyTree = Any
Params = PyTree
PRNGKey = jax.Array
