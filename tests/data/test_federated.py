"""Stacking per-client arrays into padded federated arrays."""

import re

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


def _fields(x_shape, y_shape):
  return {'x': np.zeros(x_shape, np.float32), 'y': np.zeros(y_shape, np.int32)}


@pytest.mark.parametrize('examples, num_examples, message', [
    # A JAX broadcasting TypeError named neither field.
    (_fields((2, 5, 4), (2, 3)), [3, 2],
     r"`data.examples\['y'\]` is padded to 3 examples \(axis 1\), but "
     r"`data.examples\['x'\]` to 5"),
    (_fields((2, 5, 4), (2, 5)), [3, 2, 1],
     r"`data.examples\['x'\]` is shaped \(2, 5, 4\), but .* the 3 clients"),
    # The third client of `x` was silently ignored.
    (_fields((3, 5, 4), (2, 5)), [3, 2],
     r"`data.examples\['x'\]` is shaped \(3, 5, 4\), but .* the 2 clients"),
    (_fields((2, 5, 4), (2,)), [3, 2],
     r"`data.examples\['y'\]` is shaped \(2,\)"),
    (_fields((2, 5, 4), (2, 5)), 3,
     r'`data.num_examples` must be shaped \[clients\]; got \(\)'),
    ({}, [3, 2], '`data.examples` has no arrays'),
], ids=['padded_length', 'more_counts', 'more_clients', 'flat_field',
        'scalar_count', 'no_fields'])
def test_check_rejects_mismatched_axes(examples, num_examples, message):
  data = federated.FederatedData(
      examples, np.asarray(num_examples, np.int32))

  with pytest.raises(ValueError, match=message):
    federated.check_federated_data(data, name='data')


def test_check_accepts_stacked_clients():
  data = federated.stack_clients([
      {'x': np.ones((2, 3)), 'y': np.array([0, 1])},
      {'x': np.ones((0, 3)), 'y': np.zeros((0,), int)},
  ])

  federated.check_federated_data(data, name='data', num_classes=2)


@pytest.mark.parametrize('field', ['x', 'time'])
def test_check_rejects_nonfinite_real_row(field):
  data = federated.stack_clients([
      {'x': np.ones((2, 3)), 'time': np.ones(2)},
      {'x': np.ones((3, 3)), 'time': np.ones(3)},
  ])
  data.examples[field][1, 2] = np.nan

  with pytest.raises(ValueError, match=(
      f"Client 1 has nan in row 2 of `data.examples\\['{field}'\\]`")):
    federated.check_federated_data(data, name='data')


def test_check_shows_float64_overflow_as_given():
  # 1e39 is finite in float64 but infinite in the float32 that training
  # reads; the message used to show inf.
  data = federated.stack_clients([{'x': np.ones((2, 3)), 'y': np.array([0, 1])}])
  data.examples['x'][0, 1, 2] = 1e39

  with pytest.raises(ValueError, match=(
      r"Client 0 has 1e\+39 in row 1 of `data.examples\['x'\]`, which is "
      'not a finite float32 number')):
    federated.check_federated_data(data, name='data', num_classes=2)


def test_check_rejects_int64_labels_beyond_int32():
  # Cast to int32, 2**32 wrapped to 0 and trained as class 0.
  data = federated.stack_clients([
      {'x': np.ones((3, 3)), 'y': np.array([0, 2**32, 1], np.int64)}])

  with pytest.raises(ValueError,
                     match=('Client 0 has 4294967296 in row 1 of '
                            "`data.examples\\['y'\\]`, outside the int32")):
    federated.check_federated_data(data, name='data', num_classes=2)


@pytest.mark.parametrize('labels', [
    np.array([True, False, True]),
    np.array([1 + 5j, 0, 0], np.complex64),
    np.array([0.0, 1.0, 1.0]),
], ids=['bool', 'complex', 'float'])
def test_check_rejects_non_integer_labels(labels):
  data = federated.stack_clients([{'x': np.ones((3, 3)), 'y': labels}])

  with pytest.raises(ValueError, match=(
      f"`data.examples\\['y'\\]`.*{labels.dtype}")):
    federated.check_federated_data(data, name='data', num_classes=3)


@pytest.mark.parametrize('field', ['x', 'y'])
def test_check_rejects_object_fields(field):
  # Object arrays passed every check and failed inside JAX, printing the
  # whole array.
  client = {'x': np.ones((3, 2)), 'y': np.array([0, 1, 1])}
  client[field] = np.array(client[field].tolist(), dtype=object)
  data = federated.stack_clients([client])

  with pytest.raises(ValueError, match=(
      f"`data.examples\\['{field}'\\]` has dtype object")):
    federated.check_federated_data(data, name='data', num_classes=2)


def test_derived_seed_mixes_every_entry():
  seeds = {federated.derived_seed('split', seed, index)
           for seed in range(3) for index in range(1001)}

  # seed * 1000 + index gave (0, 1000) the seed of (1, 0).
  assert len(seeds) == 3 * 1001
  assert (federated.derived_seed('split', 2, 5)
          == federated.derived_seed('split', 2, 5))
  # A CSV split and a bootstrap of the same (seed, client) shared a stream.
  assert (federated.derived_seed('split', 0, 0)
          != federated.derived_seed('bootstrap', 0, 0))


def test_check_ignores_nonfinite_padding():
  data = federated.stack_clients([
      {'x': np.ones((2, 3)), 'y': np.array([0, 1])},
      {'x': np.ones((3, 3)), 'y': np.array([1, 0, 1])},
  ])
  data.examples['x'][0, 2] = np.inf  # Client 0 has 2 rows.

  federated.check_federated_data(data, name='data', num_classes=2)


@pytest.mark.parametrize('dtype, value, bound', [
    (np.int64, 2**32 + 5, 'int32'),
    (np.uint64, 2**63, 'uint32'),
])
def test_check_rejects_integers_beyond_jax_type(dtype, value, bound):
  # Without x64 JAX wraps int64 to int32: 2**32 + 5 trained as 5.
  x = np.ones((3, 2), dtype)
  x[1, 0] = value
  data = federated.stack_clients([{'x': x, 'y': np.array([0, 1, 1])}])

  with pytest.raises(ValueError, match=(
      f"Client 0 has {value} in row 1 of `data.examples\\['x'\\]`, outside "
      f'the {bound} range')):
    federated.check_federated_data(data, name='data', num_classes=2)


@pytest.mark.parametrize('dtype', ['timedelta64[s]', np.longdouble])
def test_check_rejects_types_jax_lacks(dtype):
  # numpy counts timedelta64 as an integer; float128 has no JAX type. Both
  # passed the dtype check and failed inside JAX.
  data = federated.stack_clients([
      {'x': np.ones((3, 2), dtype), 'y': np.array([0, 1, 1])}])

  with pytest.raises(ValueError, match=(
      f"`data.examples\\['x'\\]` has dtype {re.escape(str(np.dtype(dtype)))}")):
    federated.check_federated_data(data, name='data', num_classes=2)
