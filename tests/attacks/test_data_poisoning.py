"""Data poisoning: label flips and backdoor triggers on malicious clients."""

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.attacks import data_poisoning
from fedjax_med.data import federated


def _data():
  return federated.stack_clients([
      {'x': np.zeros((3, 4), np.float32), 'y': np.array([0, 1, 1])},
      {'x': np.zeros((2, 4), np.float32), 'y': np.array([1, 0])},
  ])


def test_flip_labels_malicious_only():
  data = _data()

  result = data_poisoning.flip_labels(
      data, jnp.array([False, True]), num_classes=2)

  np.testing.assert_array_equal(result.examples['y'][0], [0, 1, 1])
  np.testing.assert_array_equal(result.examples['y'][1, :2], [0, 1])


def test_flip_labels_keeps_padding():
  data = _data()
  padding_label = int(data.examples['y'][1, 2])

  result = data_poisoning.flip_labels(
      data, jnp.array([False, True]), num_classes=3)

  np.testing.assert_array_equal(result.examples['y'][1, :2], [1, 2])
  assert int(result.examples['y'][1, 2]) == padding_label


def test_backdoor_stamps_all_rows(key):
  data = _data()

  result = data_poisoning.add_backdoor(
      data, jnp.array([True, False]), feature_indices=[0, 2],
      trigger_value=5.0, target_label=1, poison_fraction=1.0, key=key)

  np.testing.assert_array_equal(result.examples['x'][0, :, 0], [5.0] * 3)
  np.testing.assert_array_equal(result.examples['x'][0, :, 1], [0.0] * 3)
  np.testing.assert_array_equal(result.examples['y'][0], [1, 1, 1])
  np.testing.assert_array_equal(result.examples['x'][1], np.zeros((3, 4)))


def test_backdoor_leaves_padding(key):
  data = _data()

  result = data_poisoning.add_backdoor(
      data, jnp.array([True, True]), feature_indices=[1],
      trigger_value=9.0, target_label=0, poison_fraction=1.0, key=key)

  # Client 1 has 2 real rows; its third row is padding.
  assert float(result.examples['x'][1, 2, 1]) == 0.0


def test_attack_success_rate_counts_non_target():
  predicted = jnp.array([1, 1, 0, 1])
  true_labels = jnp.array([0, 0, 0, 1])
  mask = jnp.array([True, True, True, True])

  rate = data_poisoning.attack_success_rate(
      predicted, true_labels, mask, target_label=1)

  # Rows 0-2 are not of the target class; 2 of them are predicted 1.
  assert float(rate) == pytest.approx(2 / 3)
