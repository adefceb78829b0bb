"""Selection without a sort: equality with a sort-based reference."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fedjax_med.aggregation import median
from fedjax_med.aggregation import select


def _reference_median(leaf, mask):
  """Sort each coordinate's valid values with numpy and take the middle.

  Odd counts return the middle value. Even counts return (a + b) / 2 in the
  leaf's dtype, or a / 2 + b / 2 where the sum of two finite values
  overflows. No valid row gives zeros.
  """
  leaf = np.asarray(leaf)
  mask = np.asarray(mask, bool)
  count = int(mask.sum())
  if count == 0:
    return np.zeros(leaf.shape[1:], leaf.dtype)
  ordered = np.sort(leaf[mask], axis=0)
  low = ordered[(count - 1) // 2]
  high = ordered[count // 2]
  if count % 2:
    return low
  with np.errstate(over='ignore', invalid='ignore'):
    middle = (low + high) / leaf.dtype.type(2)
    halves = low / leaf.dtype.type(2) + high / leaf.dtype.type(2)
  overflowed = np.isinf(middle) & np.isfinite(low) & np.isfinite(high)
  return np.where(overflowed, halves, middle).astype(leaf.dtype)


def _reference_kth(values, mask, k):
  """Return sorted valid values at rank k per coordinate, NaN out of range."""
  values = np.asarray(values)
  ordered = np.sort(values[np.asarray(mask, bool)], axis=0)
  count = ordered.shape[0]
  ranks = np.broadcast_to(np.asarray(k), values.shape[1:])
  result = np.full(values.shape[1:], np.nan, values.dtype)
  for index in np.ndindex(*values.shape[1:]):
    rank = int(ranks[index])
    if 0 <= rank < count:
      result[index] = ordered[(rank,) + index]
  return result


def _random_case(seed, clients, columns=7, draw='normal', valid=None):
  """Return float32 values `[clients, columns]` and a random `[clients]` mask.

  `draw='normal'` draws standard normal values, and any other `draw` draws
  integers from -2 to 2, so that many values tie. `valid` fixes the number
  of True entries, and None draws each entry independently. Masked-out rows
  hold NaN or inf, which must never reach the result.
  """
  rng = np.random.default_rng(seed)
  if draw == 'normal':
    values = rng.normal(size=(clients, columns)).astype(np.float32)
  else:
    values = rng.integers(-2, 3, size=(clients, columns)).astype(np.float32)
  if valid is None:
    mask = rng.random(clients) < 0.7
  else:
    mask = np.zeros(clients, bool)
    mask[rng.choice(clients, valid, replace=False)] = True
  junk = rng.choice([np.nan, np.inf, -np.inf], size=(clients, columns))
  values = np.where(mask[:, None], values, junk).astype(np.float32)
  return values, mask


def _assert_median_matches(values, mask):
  result = median.coordinate_median(jnp.asarray(values), jnp.asarray(mask))

  np.testing.assert_array_equal(result, _reference_median(values, mask))


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('clients', [1, 2, 3, 10, 33, 64])
def test_median_matches_sort_random(seed, clients):
  values, mask = _random_case(seed, clients)

  _assert_median_matches(values, mask)


@pytest.mark.parametrize('valid', [1, 2, 5, 8, 13, 20])
def test_median_matches_sort_odd_even(valid):
  values, mask = _random_case(valid, 20, valid=valid)

  _assert_median_matches(values, mask)


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('valid', [4, 7, 30])
def test_median_matches_sort_with_ties(seed, valid):
  values, mask = _random_case(seed, 40, columns=25, draw='few', valid=valid)

  _assert_median_matches(values, mask)


def test_median_signed_zeros_are_equal():
  # Columns, left to right: all -0.0, all +0.0, mixed with -0.0 first,
  # mixed with +0.0 first, and a zero between negative and positive values.
  values = np.array([
      [-0.0, 0.0, -0.0, 0.0, -1.0],
      [-0.0, 0.0, 0.0, -0.0, -0.0],
      [-0.0, 0.0, -0.0, 0.0, 0.0],
      [-0.0, 0.0, 0.0, -0.0, 1.0],
  ], np.float32)
  for valid in (3, 4):
    mask = np.arange(4) < valid

    result = np.asarray(median.coordinate_median(jnp.asarray(values), mask))

    np.testing.assert_array_equal(result, _reference_median(values, mask))
    assert not np.any(np.signbit(result)), (valid, result)


def test_median_infinities_among_valid():
  inf = np.inf
  columns = [
      [-inf, -inf, 1.0, 2.0, 3.0],
      [inf, inf, inf, 0.0, 0.0],
      [-inf, -inf, 1.0, 2.0, 5.0],
      [-inf, -inf, inf, inf, 0.0],
      [inf, 1.0, 2.0, -3.0, 7.0],
  ]
  values = np.array(columns, np.float32).T
  # With the first 4 rows valid, (-inf + 1) / 2 = -inf and
  # (-inf + inf) / 2 = NaN.
  expected = {
      4: [-inf, inf, -inf, np.nan, 1.5],
      5: [1.0, inf, 1.0, 0.0, 2.0],
  }
  for valid, medians in expected.items():
    mask = np.arange(5) < valid

    result = median.coordinate_median(jnp.asarray(values), mask)

    np.testing.assert_array_equal(result, medians)
    np.testing.assert_array_equal(result, _reference_median(values, mask))


def test_median_ignores_nan_masked_rows():
  values = np.array([[np.nan, 1.0], [2.0, 5.0], [np.nan, np.nan],
                     [4.0, 3.0], [np.inf, -np.inf]], np.float32)
  mask = np.array([False, True, False, True, False])

  result = median.coordinate_median(jnp.asarray(values), jnp.asarray(mask))

  np.testing.assert_array_equal(result, [3.0, 4.0])


def test_median_one_valid_client():
  values, _ = _random_case(0, 9)
  mask = np.arange(9) == 4

  result = median.coordinate_median(jnp.asarray(values), jnp.asarray(mask))

  np.testing.assert_array_equal(result, values[4])


def test_median_zero_valid_clients():
  values = np.full((5, 3), np.nan, np.float32)

  result = median.coordinate_median(jnp.asarray(values), np.zeros(5, bool))

  np.testing.assert_array_equal(result, [0.0, 0.0, 0.0])
  assert not np.any(np.signbit(result))


def test_median_no_overflow_at_float_max():
  largest = np.finfo(np.float32).max
  updates = jnp.array([[largest, -largest], [largest, -largest],
                       [largest, -largest]], jnp.float32)

  odd = median.coordinate_median(updates, jnp.ones(3, bool))
  even = median.coordinate_median(updates, jnp.array([True, True, False]))

  np.testing.assert_array_equal(odd, [largest, -largest])
  np.testing.assert_array_equal(even, [largest, -largest])


def _tree_case(seed, clients):
  rng = np.random.default_rng(seed)
  tree = {
      'kernel': rng.normal(size=(clients, 3, 4)).astype(np.float32),
      'bias': rng.integers(-3, 4, size=(clients, 4)).astype(np.float32),
      'scale': rng.normal(size=(clients,)).astype(np.float32),
      'nested': [rng.normal(size=(clients, 2, 1, 3)).astype(np.float32)],
  }
  mask = rng.random(clients) < 0.6
  return tree, mask


def _assert_trees_match(result, tree, mask):
  expected = jax.tree.map(lambda leaf: _reference_median(leaf, mask), tree)
  assert jax.tree.structure(result) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(expected)):
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('seed', range(4))
def test_median_pytree_leaves(seed):
  tree, mask = _tree_case(seed, 11)

  result = median.coordinate_median(tree, jnp.asarray(mask))

  _assert_trees_match(result, tree, mask)


def test_median_under_jit():
  tree, mask = _tree_case(0, 12)

  result = jax.jit(median.coordinate_median)(tree, jnp.asarray(mask))

  _assert_trees_match(result, tree, mask)


def test_median_under_vmap():
  cases = [_tree_case(seed, 10) for seed in range(5)]
  trees = jax.tree.map(lambda *leaves: np.stack(leaves), *[c[0] for c in cases])
  masks = np.stack([c[1] for c in cases])

  results = jax.jit(jax.vmap(median.coordinate_median))(trees, masks)

  for index, (tree, mask) in enumerate(cases):
    result = jax.tree.map(lambda leaf, i=index: leaf[i], results)
    _assert_trees_match(result, tree, mask)


def test_median_mixed_dtype_leaves():
  tree, mask = _tree_case(2, 13)
  tree['bias'] = tree['bias'].astype(np.float16)
  tree['scale'] = tree['scale'].astype(np.float16)

  result = median.coordinate_median(tree, jnp.asarray(mask))

  assert result['bias'].dtype == np.float16
  assert result['kernel'].dtype == np.float32
  _assert_trees_match(result, tree, mask)


def test_median_integer_leaf_becomes_float():
  updates = jnp.array([[1], [4], [2], [10]], jnp.int32)

  result = median.coordinate_median(updates, jnp.ones(4, bool))

  assert result.dtype == jnp.float32
  np.testing.assert_array_equal(result, [3.0])


@pytest.mark.parametrize('seed', range(3))
def test_kth_smallest_every_rank(seed):
  values, mask = _random_case(seed, 15, draw='few')
  kth = jax.jit(select.masked_kth_smallest)

  for k in range(-1, 17):
    result = kth(values, mask, k)

    np.testing.assert_array_equal(
        result, _reference_kth(values, mask, k), err_msg=f'k={k}'
    )


def test_kth_smallest_rank_per_coordinate():
  values, mask = _random_case(3, 20, columns=6)
  ranks = jnp.array([0, 3, 5, 1, 100, -2])

  result = jax.jit(select.masked_kth_smallest)(values, mask, ranks)

  np.testing.assert_array_equal(result, _reference_kth(values, mask, ranks))
  assert np.isnan(result[4])
  assert np.isnan(result[5])


@pytest.mark.parametrize('seed', range(3))
def test_kth_smallest_pair_adjacent_ranks(seed):
  values, mask = _random_case(seed, 18, draw='few')
  pair = jax.jit(select.masked_kth_smallest_pair)

  for k in range(-1, 19):
    kth, following = pair(values, mask, k)

    np.testing.assert_array_equal(kth, _reference_kth(values, mask, k))
    np.testing.assert_array_equal(
        following, _reference_kth(values, mask, k + 1), err_msg=f'k={k}'
    )


def test_kth_smallest_nan_ranks_last():
  values = np.array([[np.nan], [1.0], [-np.inf], [np.inf]], np.float32)
  mask = np.ones(4, bool)

  ranked = [float(select.masked_kth_smallest(values, mask, k)[0])
            for k in range(4)]

  assert ranked[:3] == [-np.inf, 1.0, np.inf]
  assert np.isnan(ranked[3])


@pytest.mark.parametrize('dtype', [np.float16, ml_dtypes.bfloat16])
def test_kth_smallest_half_precision(dtype):
  values, mask = _random_case(1, 21, draw='normal')
  values = values.astype(dtype)
  count = int(mask.sum())

  result = select.masked_kth_smallest(jnp.asarray(values), mask, count // 2)

  assert result.dtype == dtype
  expected = np.sort(values[mask].astype(np.float32), axis=0)[count // 2]
  np.testing.assert_array_equal(np.asarray(result, np.float32), expected)


def test_kth_smallest_under_vmap_traced_rank():
  values = np.stack([_random_case(seed, 9)[0] for seed in range(4)])
  masks = np.stack([_random_case(seed, 9)[1] for seed in range(4)])
  ranks = jnp.array([0, 2, 4, 1])
  batched = jax.jit(jax.vmap(select.masked_kth_smallest))

  results = batched(values, masks, ranks)

  for index in range(4):
    np.testing.assert_array_equal(
        results[index],
        _reference_kth(values[index], masks[index], int(ranks[index])),
    )


def test_kth_smallest_rejects_integer_values():
  with pytest.raises(TypeError, match='floating dtype'):
    select.masked_kth_smallest(jnp.ones((3, 2), jnp.int32), jnp.ones(3, bool), 0)


def test_kth_smallest_rejects_float8():
  values = jnp.ones((3, 2), ml_dtypes.float8_e4m3fn)

  with pytest.raises(TypeError, match='no unsigned key type'):
    select.masked_kth_smallest(values, jnp.ones(3, bool), 0)


def test_kth_smallest_rejects_mask_shape():
  with pytest.raises(ValueError, match='values has 3 rows'):
    select.masked_kth_smallest(jnp.ones((3, 2)), jnp.ones(4, bool), 0)


def test_kth_smallest_rank_from_partial():
  values, mask = _random_case(5, 12)
  lowest = jax.jit(functools.partial(select.masked_kth_smallest, k=0))

  result = lowest(values, mask)

  expected = np.min(np.where(mask[:, None], values, np.inf), axis=0)
  np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize('columns', [7, 12, 13])
def test_kth_smallest_column_blocks(monkeypatch, columns):
  # Blocks of 3 columns, so 7 and 13 columns need a padded last block.
  monkeypatch.setattr(select, '_BLOCK_SIZE', 30)
  monkeypatch.setattr(select, '_MIN_BLOCK_COLUMNS', 3)
  values, mask = _random_case(4, 10, columns=columns, draw='few')
  assert select._block_layout(10, columns)[1] == 3

  kth, following = select.masked_kth_smallest_pair(values, mask, 2)
  batched = jax.vmap(select.masked_kth_smallest, in_axes=(None, None, 0))(
      values, mask, jnp.array([2, 3])
  )

  np.testing.assert_array_equal(kth, _reference_kth(values, mask, 2))
  np.testing.assert_array_equal(following, _reference_kth(values, mask, 3))
  np.testing.assert_array_equal(batched[0], _reference_kth(values, mask, 2))
  np.testing.assert_array_equal(batched[1], _reference_kth(values, mask, 3))


def test_median_matches_sort_large():
  # 600 x 2,100 values exceed one block of 2**20 keys.
  values, mask = _random_case(7, 600, columns=2100)
  assert select._block_layout(600, 2100)[0] > 1

  _assert_median_matches(values, mask)


@pytest.mark.parametrize('mask, expected', [
    ([True] * 5, [0.0, 0.0, 1.0, 0.0, 0.0]),
    # Four valid rows: the midpoint of rows 1 and 3.
    ([True, True, False, True, True], [0.0, 0.5, 0.0, 0.5, 0.0]),
])
def test_median_gradient_reaches_selected_rows(mask, expected):
  # The selection runs on integer keys, so jax.grad through the median
  # was zero for every row.
  values = jnp.asarray([[0.0], [1.0], [2.0], [3.0], [100.0]])

  def first_coordinate(values):
    return median.coordinate_median({'w': values}, jnp.asarray(mask))['w'][0]

  gradient = jax.grad(first_coordinate)(values)[:, 0]

  np.testing.assert_array_equal(gradient, expected)
