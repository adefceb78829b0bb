"""Poisoning attacks of a study: which clients are malicious and how."""

import functools
from typing import Any

import jax
import numpy as np

from fedjax_med.attacks import data_poisoning
from fedjax_med.attacks import model_poisoning
from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import round as round_lib

_DEFAULT_STRENGTH = {
    'sign_flip': 1.0,
    'scaling': 10.0,
    'gaussian': 1.0,
    'inner_product': 0.5,
    'backdoor': 1.0,
}
# Folded into the attack key for the choice of backdoored rows. Choosing the
# malicious clients permutes with `split(attack key)`, whose second key is
# `fold_in(attack key, 1)` under JAX's partitionable threefry, so tag 1
# tied the poisoned rows to who is malicious.
_BACKDOOR_ROWS_TAG = 2


def choose_malicious(config, num_clients: int, key) -> jax.Array | None:
  """Return the `[clients]` malicious mask of this run, or None."""
  if config.attack.attack == 'none':
    return None
  return model_poisoning.choose_malicious(
      num_clients, config.attack.malicious_fraction, key=key
  )


def check_against_data(
    config, num_features: int, num_classes: int, num_clients: int
) -> None:
  """Raise InputError when the attack settings do not fit the data."""
  attack = config.attack
  if attack.attack != 'none' and round(
      attack.malicious_fraction * num_clients) == 0:
    raise InputError(
        f'`attack.malicious_fraction={attack.malicious_fraction}` of '
        f'{num_clients} clients rounds to 0 malicious clients, so the attack '
        f'would not happen. Use a larger fraction, such as '
        f'{1 / num_clients:.3g} for one malicious client.'
    )
  if attack.attack != 'none' and round(
      attack.malicious_fraction * num_clients) >= num_clients:
    raise InputError(
        f'`attack.malicious_fraction={attack.malicious_fraction}` of '
        f'{num_clients} clients rounds to {num_clients} malicious clients, '
        'so no honest client is left: attacks built from the honest '
        'updates send zeros, and the metrics of honest clients are empty. '
        f'Use a fraction below {(num_clients - 0.5) / num_clients:.3g}.'
    )
  if attack.attack != 'backdoor':
    return
  outside = [f for f in attack.trigger_features if f >= num_features]
  if outside:
    raise InputError(
        f'`attack.trigger_features` has columns {outside}, but the data has '
        f'{num_features} features (columns 0 to {num_features - 1}). Pick '
        'columns inside that range.'
    )
  if attack.target_label >= num_classes:
    raise InputError(
        f'`attack.target_label={attack.target_label}` is not a class of this '
        f'data, which has labels 0 to {num_classes - 1}.'
    )


def poison_data(
    config, train: federated.FederatedData, malicious, num_classes: int,
    key=None,
) -> federated.FederatedData:
  """Apply data poisoning (label flipping or a backdoor) to malicious rows.

  `key` chooses the backdoored rows; it is needed for attack backdoor only.
  """
  attack = config.attack
  if attack.attack == 'label_flip':
    return data_poisoning.flip_labels(
        train, malicious, num_classes=num_classes
    )
  if attack.attack == 'backdoor':
    return data_poisoning.add_backdoor(
        train, malicious,
        feature_indices=attack.trigger_features,
        trigger_value=attack.trigger_value,
        target_label=attack.target_label,
        poison_fraction=attack.poison_fraction,
        key=jax.random.fold_in(key, _BACKDOOR_ROWS_TAG),
    )
  return train


def triggered_test_data(
    config, test: federated.FederatedData
) -> federated.FederatedData | None:
  """Return the test set with the trigger on every row, or None."""
  attack = config.attack
  if attack.attack != 'backdoor':
    return None
  x = data_poisoning.stamp_trigger(
      test.examples['x'], feature_indices=attack.trigger_features,
      trigger_value=attack.trigger_value,
  )
  return test._replace(examples={**test.examples, 'x': x})


def backdoor_success(
    config, evaluation: evaluate_lib.ClientEvaluation,
    test: federated.FederatedData, honest: np.ndarray,
) -> dict[str, Any]:
  """Attack success rate of the backdoor on triggered test rows.

  A row counts when it is real and its true label is not the target; the
  attack succeeds on it when the model predicts the target. Returns the
  rate pooled over the honest clients' rows, and per client (None for a
  client with no counted row).
  """
  target = config.attack.target_label
  predicted = np.asarray(evaluation.predicted)
  labels = np.asarray(test.examples['y'])
  real = np.asarray(test.example_mask())
  counted = real & (labels != target)
  hits = counted & (predicted == target)
  per_client = [
      float(h.sum() / c.sum()) if c.sum() else None
      for h, c in zip(hits, counted)
  ]
  honest_counted = counted[honest].sum()
  pooled = (float(hits[honest].sum() / honest_counted)
            if honest_counted else None)
  return {'backdoor_success': pooled, 'per_client': per_client}


def strength(config, num_clients: int, num_malicious: int) -> float | None:
  attack = config.attack
  if attack.attack_strength is not None:
    return attack.attack_strength
  if attack.attack == 'little_is_enough':
    return model_poisoning.little_is_enough_z(num_clients, num_malicious)
  return _DEFAULT_STRENGTH.get(attack.attack)


def build_attack(
    config, num_clients: int, num_malicious: int
) -> round_lib.Attack | None:
  """Return the round's model-poisoning attack, or None."""
  name = config.attack.attack
  value = strength(config, num_clients, num_malicious)
  if name == 'sign_flip':
    apply = functools.partial(model_poisoning.sign_flip, scale=value)
  elif name == 'scaling':
    apply = functools.partial(model_poisoning.scaling, factor=value)
  elif name == 'little_is_enough':
    return functools.partial(_with_honest, model_poisoning.little_is_enough,
                             z=value)
  elif name == 'inner_product':
    return functools.partial(
        _with_honest, model_poisoning.inner_product_manipulation,
        epsilon=value,
    )
  elif name == 'gaussian':
    return functools.partial(_gaussian, stddev=value)
  elif name == 'backdoor' and value != 1.0:
    apply = functools.partial(model_poisoning.scaling, factor=value)
  else:
    return None
  return functools.partial(_without_honest, apply)


def _without_honest(apply, updates, malicious, honest, key):
  del honest, key
  return apply(updates, malicious)


def _with_honest(apply, updates, malicious, honest, key, **kwargs):
  del key
  return apply(updates, malicious, honest, **kwargs)


def _gaussian(updates, malicious, honest, key, *, stddev):
  del honest
  return model_poisoning.gaussian_noise(
      updates, malicious, stddev=stddev, key=key
  )


def describe(config, malicious, client_names, num_malicious) -> dict[str, Any]:
  if malicious is None:
    return {'attack': 'none'}
  mask = np.asarray(malicious)
  names = [name for name, bad in zip(client_names, mask) if bad]
  described = {
      'attack': config.attack.attack,
      'malicious_fraction': config.attack.malicious_fraction,
      'num_malicious': int(num_malicious),
      'strength': strength(config, len(mask), num_malicious),
      'malicious_clients': names[:100],
  }
  if config.attack.attack == 'label_flip':
    described['strength'] = None
  if config.attack.attack == 'backdoor':
    attack = config.attack
    described['trigger'] = {
        'features': list(attack.trigger_features),
        'value': attack.trigger_value,
        'target_label': attack.target_label,
        'poison_fraction': attack.poison_fraction,
    }
  return described
