"""Poisoning attacks of a study: which clients are malicious and how."""

import functools
from typing import Any

import jax
import numpy as np

from fedjax_med import config as config_lib
from fedjax_med.attacks import data_poisoning
from fedjax_med.attacks import model_poisoning
from fedjax_med.data import federated
from fedjax_med.simulation import round as round_lib

_DEFAULT_STRENGTH = {
    'sign_flip': 1.0,
    'scaling': 10.0,
    'gaussian': 1.0,
    'inner_product': 0.5,
}


def choose_malicious(config, num_clients: int, key) -> jax.Array | None:
  """Return the `[clients]` malicious mask of this run, or None."""
  if config.attack.attack == 'none':
    return None
  return model_poisoning.choose_malicious(
      num_clients, config.attack.malicious_fraction, key=key
  )


def poison_data(
    config, train: federated.FederatedData, malicious, num_classes: int
) -> federated.FederatedData:
  """Apply data poisoning (label flipping) to the malicious clients."""
  if config.attack.attack != 'label_flip':
    return train
  return data_poisoning.flip_labels(train, malicious, num_classes=num_classes)


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
  return {
      'attack': config.attack.attack,
      'malicious_fraction': config.attack.malicious_fraction,
      'num_malicious': int(num_malicious),
      'strength': strength(config, len(mask), num_malicious),
      'malicious_clients': names[:100],
  }
