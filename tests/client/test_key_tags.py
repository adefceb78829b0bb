"""Every draw of a client in a round gets its own PRNG key."""

import itertools

import jax
import numpy as np

from fedjax_med.client import key_tags
from fedjax_med.client import local_training
from fedjax_med.secure import aggregate as secure_aggregate
from fedjax_med.simulation import round as round_lib


def _training_keys(key, prefix, epochs=8, steps=8):
  """Return the shuffle and DP-SGD step keys local training derives."""
  keys = {f'{prefix}shuffle {epoch}': jax.random.fold_in(key, epoch)
          for epoch in range(epochs)}
  step_base = jax.random.fold_in(key, local_training._STEP_KEY_TAG)  # pylint: disable=protected-access
  keys.update({f'{prefix}dp-sgd step {step}':
               jax.random.fold_in(step_base, step) for step in range(steps)})
  return keys


def test_client_draws_never_share_a_key():
  client_key = jax.random.fold_in(jax.random.key(0), 17)
  keys = _training_keys(client_key, '')
  personal = jax.random.fold_in(client_key, round_lib._PERSONAL_TAG)  # pylint: disable=protected-access
  keys.update(_training_keys(personal, 'personal '))
  keys['client noise'] = jax.random.fold_in(
      client_key, round_lib._CLIENT_NOISE_TAG)  # pylint: disable=protected-access
  keys['compression'] = jax.random.fold_in(
      client_key, round_lib._COMPRESSION_TAG)  # pylint: disable=protected-access
  secure = jax.random.fold_in(client_key, key_tags.SECURE)
  keys['secure rounding'] = jax.random.fold_in(
      secure, secure_aggregate._ROUNDING_TAG)  # pylint: disable=protected-access
  keys['secure noise'] = jax.random.fold_in(
      secure, secure_aggregate._NOISE_TAG)  # pylint: disable=protected-access

  data = {name: tuple(np.asarray(jax.random.key_data(key)).tolist())
          for name, key in keys.items()}
  for (first, a), (second, b) in itertools.combinations(data.items(), 2):
    assert a != b, f'{first} and {second} share a key'


def test_tags_distinct_and_above_epochs():
  assert len(set(key_tags.ALL)) == len(key_tags.ALL)
  assert min(key_tags.ALL) >= key_tags.EPOCH_LIMIT
