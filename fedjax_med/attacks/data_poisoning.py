"""Data poisoning at malicious clients: label flipping and a backdoor.

Both functions rewrite the padded `[clients, examples, ...]` arrays of a
`FederatedData` on the malicious clients only, before training, so the
poisoned clients then train normally. Padding rows are left as they are.

References:
  Tolpegin, Truex, Gursoy and Liu, "Data Poisoning Attacks Against
  Federated Learning Systems", ESORICS 2020, https://arxiv.org/abs/2007.08432.

  Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020,
  https://arxiv.org/abs/1807.00459.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from fedjax_med.data import federated
from fedjax_med.typing import PRNGKey


def flip_labels(
    data: federated.FederatedData, malicious: jax.Array, *, num_classes: int
) -> federated.FederatedData:
  """Map label `y` to `num_classes - 1 - y` on every malicious client.

  Padding rows keep their labels.
  """
  labels = jnp.asarray(data.examples['y'])
  flip = malicious[:, None] & data.example_mask()
  flipped = jnp.where(flip, num_classes - 1 - labels, labels)
  return data._replace(examples={**data.examples, 'y': flipped})


def add_backdoor(
    data: federated.FederatedData,
    malicious: jax.Array,
    *,
    feature_indices: Sequence[int],
    trigger_value: float,
    target_label: int,
    poison_fraction: float,
    key: PRNGKey,
) -> federated.FederatedData:
  """Stamp a trigger on some rows of malicious clients and relabel them.

  On each malicious client, each real row is poisoned independently with
  probability `poison_fraction`: its features at `feature_indices` are set
  to `trigger_value` and its label to `target_label`.

  Raises:
    ValueError: if `poison_fraction` is not in [0, 1].
  """
  if not 0.0 <= poison_fraction <= 1.0:
    raise ValueError(
        f'`poison_fraction` must be in [0, 1]; got {poison_fraction}.'
    )
  x = jnp.asarray(data.examples['x'])
  y = jnp.asarray(data.examples['y'])
  chosen = jax.random.uniform(key, y.shape) < poison_fraction
  poisoned = chosen & malicious[:, None] & data.example_mask()
  indices = jnp.asarray(feature_indices)
  stamped = x.at[:, :, indices].set(trigger_value)
  x = jnp.where(poisoned[:, :, None], stamped, x)
  y = jnp.where(poisoned, target_label, y)
  return data._replace(examples={**data.examples, 'x': x, 'y': y})


def stamp_trigger(
    x: jax.Array, *, feature_indices: Sequence[int], trigger_value: float
) -> jax.Array:
  """Return `x [..., features]` with the trigger set, for measuring success."""
  return jnp.asarray(x).at[..., jnp.asarray(feature_indices)].set(
      trigger_value
  )


def attack_success_rate(
    predicted: jax.Array, true_labels: jax.Array, mask: jax.Array,
    *, target_label: int,
) -> jax.Array:
  """Return the fraction of triggered rows predicted as `target_label`.

  Only real rows (`mask`) whose true label is not the target count, since a
  row already of the target class shows nothing about the backdoor. Returns
  NaN when no row counts.
  """
  counted = mask & (true_labels != target_label)
  hits = jnp.sum(counted & (predicted == target_label))
  total = jnp.sum(counted)
  return jnp.where(total > 0, hits / jnp.maximum(total, 1), jnp.nan)
