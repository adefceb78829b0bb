"""Stacking per-client arrays into padded federated arrays."""

import numpy as np
import pytest

from fedjax_med.data import federated
from fedjax_med.errors import InputError


def test_stack_pads_and_counts():
  data = federated.stack_clients([
      {'x': np.ones((2, 3)), 'y': np.array([0, 1])},
      {'x': np.ones((0, 3)), 'y': np.zeros((0,), int)},
      {'x': np.full((4, 3), 2.0), 'y': np.array([1, 1, 0, 0])},
  ])

  assert data.examples['x'].shape == (3, 4, 3)
  np.testing.assert_array_equal(data.num_examples, [2, 0, 4])
  np.testing.assert_array_equal(data.examples['x'][0, 2:], 0.0)
  np.testing.assert_array_equal(
      np.asarray(data.example_mask()),
      [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
  )


def test_stack_promotes_dtype():
  data = federated.stack_clients([
      {'x': np.array([[0, 1]])},
      {'x': np.array([[0.5, 1.7]])},
  ])

  np.testing.assert_allclose(data.examples['x'][1, 0], [0.5, 1.7])


def test_stack_rejects_trailing_shape():
  with pytest.raises(InputError, match='Client 1'):
    federated.stack_clients([
        {'x': np.ones((2, 5))},
        {'x': np.ones((3, 1))},
    ])
