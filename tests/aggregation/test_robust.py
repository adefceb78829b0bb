"""Robust aggregators: hand-computed values, masks, order and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.aggregation import _flat
from fedjax_med.aggregation import bulyan
from fedjax_med.aggregation import clipping_aggregators
from fedjax_med.aggregation import geometric_median
from fedjax_med.aggregation import krum
from fedjax_med.aggregation import mean
from fedjax_med.aggregation import trimmed_mean


def _with_weights(aggregate):
  """Adapt a weights-based aggregator to the (updates, mask) signature."""

  def aggregate_masked(client_updates, mask):
    return aggregate(client_updates, mask.astype(jnp.float32))

  return aggregate_masked


def _centered_clipping(client_updates, mask):
  center = jax.tree.map(lambda leaf: jnp.zeros_like(leaf[0]), client_updates)
  return clipping_aggregators.centered_clipping(
      client_updates, mask, center=center, clip_radius=1.0, num_iterations=5
  )


# Every aggregator as a function of (client_updates, mask); f = 1 throughout.
AGGREGATORS = {
    'trimmed_mean': functools.partial(
        trimmed_mean.trimmed_mean, trim_fraction=0.2
    ),
    'krum': functools.partial(krum.krum, num_byzantine=1),
    'multi_krum': functools.partial(
        krum.multi_krum, num_byzantine=1, num_selected=3
    ),
    'geometric_median': _with_weights(
        functools.partial(geometric_median.geometric_median, num_iterations=50)
    ),
    'norm_bounded_mean': _with_weights(
        functools.partial(
            clipping_aggregators.norm_bounded_mean, max_norm=100.0
        )
    ),
    'centered_clipping': _centered_clipping,
    'bulyan': functools.partial(bulyan.bulyan, num_byzantine=1),
}
NAMES = sorted(AGGREGATORS)


def _line_updates():
  """Five 1-D updates 0, 1, 2, 3, 100 as a pytree."""
  return {'w': jnp.array([[0.0], [1.0], [2.0], [3.0], [100.0]])}


def _random_updates(clients=9, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'dense': jnp.asarray(rng.normal(size=(clients, 3, 2)), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=(clients, 2)), jnp.float32),
  }


def _assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def test_krum_scores_by_hand():
  # n = 5, f = 1, so each score sums the n - f - 2 = 2 nearest others:
  #   0:   to 1 and 2    -> 1 + 4       = 5
  #   1:   to 0 and 2    -> 1 + 1       = 2
  #   2:   to 1 and 3    -> 1 + 1       = 2
  #   3:   to 2 and 1    -> 1 + 4       = 5
  #   100: to 3 and 2    -> 97^2 + 98^2 = 19013
  matrix, _ = _flat.flatten_clients(_line_updates())
  mask = jnp.ones(5, bool)

  distances = krum.pairwise_squared_distances(matrix)
  scores = krum.krum_scores(distances, mask, num_byzantine=1)

  np.testing.assert_array_equal(scores, [5.0, 2.0, 2.0, 5.0, 19013.0])


def test_krum_tie_picks_lowest_index():
  aggregate = jax.jit(functools.partial(krum.krum, num_byzantine=1))

  result = aggregate(_line_updates(), jnp.ones(5, bool))

  # Updates 1 and 2 tie at score 2, so the lower index wins.
  np.testing.assert_array_equal(result['w'], [1.0])


def test_multi_krum_averages_best():
  aggregate = jax.jit(
      functools.partial(krum.multi_krum, num_byzantine=1, num_selected=3)
  )

  result = aggregate(_line_updates(), jnp.ones(5, bool))

  # Ranks by score: 1, 2 (score 2), then 0 before 3 (score 5, lower index).
  np.testing.assert_allclose(result['w'], [1.0])


def test_multi_krum_default_counts_valid_rows():
  # 4 valid rows, one of them an outlier, and 2 masked slots: the default
  # selects 4 - 1 = 3 rows, not 6 - 1 = 5, so the outlier stays out.
  updates = {'w': jnp.array([[1.0], [2.0], [3.0], [100.0], [0.0], [0.0]])}
  mask = jnp.array([True, True, True, True, False, False])

  result = jax.jit(functools.partial(krum.multi_krum, num_byzantine=1))(
      updates, mask)

  np.testing.assert_allclose(result['w'], [2.0])


def test_trimmed_mean_textbook():
  aggregate = jax.jit(
      functools.partial(trimmed_mean.trimmed_mean, trim_fraction=0.2)
  )

  result = aggregate(_line_updates(), jnp.ones(5, bool))

  # floor(0.2 * 5) = 1 value is dropped per side: mean(1, 2, 3) = 2.
  np.testing.assert_allclose(result['w'], [2.0])


def test_trimmed_mean_no_clients_is_zero():
  mask = jnp.zeros(5, bool)

  result = trimmed_mean.trimmed_mean(_line_updates(), mask, trim_fraction=0.4)

  np.testing.assert_array_equal(result['w'], [0.0])


def test_trimmed_mean_untrimmed_nan_gives_nan():
  # With no trim the mean of 1, NaN and 3 is NaN. Invalid rows used to sort
  # as +inf before the NaN, so the result was inf.
  updates = {'w': jnp.array([[1.0], [jnp.nan], [3.0], [100.0]])}
  mask = jnp.array([True, True, True, False])

  result = trimmed_mean.trimmed_mean(updates, mask, trim_fraction=0.0)

  assert np.isnan(result['w'][0])


def test_trimmed_mean_trims_nan_as_largest():
  # floor(0.34 * 3) = 1 per side: NaN ranks above 3 and is trimmed with
  # the 1, leaving 3. An inf instead of NaN is trimmed the same way.
  mask = jnp.array([True, True, True, False])
  for bad in [jnp.nan, jnp.inf]:
    updates = {'w': jnp.array([[1.0], [bad], [3.0], [100.0]])}

    result = trimmed_mean.trimmed_mean(updates, mask, trim_fraction=0.34)

    np.testing.assert_array_equal(result['w'], [3.0])


def test_trimmed_mean_integer_leaf():
  updates = {'w': jnp.array([[1], [2], [4], [100]])}
  mask = jnp.array([True, True, True, False])

  result = trimmed_mean.trimmed_mean(updates, mask, trim_fraction=0.0)

  np.testing.assert_allclose(result['w'], [7 / 3], rtol=1e-6)


def test_bulyan_by_hand():
  # n = 7, f = 1, so theta = 5 and beta = 3. Krum picks, by value, with
  # ties broken by the sum of squared distances to all remaining updates:
  #   7 left, 4 neighbors: 2 and 3 tie at 10; 3 is nearer the rest -> 3
  #   6 left, 3 neighbors: 2 scores 1 + 4 + 4 = 9                    -> 2
  #   5 left, 2 neighbors: 1 and 4 tie at 10; 4 is nearer the rest   -> 4
  #   4 left, 1 neighbor:  0 and 1 tie at 1; 1 is nearer the rest    -> 1
  #   3 left, 1 neighbor:  0 and 5 tie at 25; 5 is nearer the rest   -> 5
  # The median of {1, 2, 3, 4, 5} is 3 and its 3 closest values average 3.
  values = [0.0, 1.0, 2.0, 3.0, 100.0, 4.0, 5.0]
  updates = {'w': jnp.array(values)[:, None]}
  aggregate = jax.jit(functools.partial(bulyan.bulyan, num_byzantine=1))

  result = aggregate(updates, jnp.ones(7, bool))

  np.testing.assert_allclose(result['w'], [3.0])


@pytest.mark.parametrize('name', NAMES)
def test_masked_nan_rows_ignored(name):
  aggregate = jax.jit(AGGREGATORS[name])
  clean = _random_updates(clients=9)
  poisoned = jax.tree.map(
      lambda leaf: jnp.concatenate([leaf, jnp.full_like(leaf[:2], jnp.nan)]),
      clean,
  )
  mask = jnp.concatenate([jnp.ones(9, bool), jnp.zeros(2, bool)])

  result = aggregate(poisoned, mask)
  expected = aggregate(clean, jnp.ones(9, bool))

  for leaf in jax.tree.leaves(result):
    assert np.all(np.isfinite(leaf))
  _assert_trees_close(result, expected)


@pytest.mark.parametrize(
    'name', [name for name in NAMES if name != 'trimmed_mean'])
def test_valid_non_finite_rows_left_out(name):
  # Aggregators of whole updates have no norm or distance for a NaN or inf
  # row, so they leave it out. The trimmed mean ranks NaN per coordinate.
  aggregate = jax.jit(AGGREGATORS[name])
  clean = _random_updates(clients=9)
  poisoned = jax.tree.map(
      lambda leaf: jnp.concatenate(
          [leaf[:3], jnp.full_like(leaf[:1], jnp.nan), leaf[3:],
           jnp.full_like(leaf[:1], jnp.inf)]),
      clean,
  )

  result = aggregate(poisoned, jnp.ones(11, bool))

  _assert_trees_close(result, aggregate(clean, jnp.ones(9, bool)))


@pytest.mark.parametrize('name', ['krum', 'multi_krum', 'bulyan'])
def test_overflowing_distances_keep_honest_choice(name):
  # In float32 two updates 1e20 apart have squared distance inf. Slot 0
  # contains one of them, where an argmin over all-inf values would land.
  aggregate = jax.jit(AGGREGATORS[name])
  honest = _random_updates(clients=9)

  def with_attackers(value):
    return jax.tree.map(
        lambda leaf: jnp.concatenate(
            [jnp.full_like(leaf[:1], value), leaf[:4],
             jnp.full_like(leaf[:1], value), leaf[4:]]),
        honest,
    )

  result = aggregate(with_attackers(1e20), jnp.ones(11, bool))
  finite = aggregate(with_attackers(1e15), jnp.ones(11, bool))

  _assert_trees_close(result, finite)
  for leaf in jax.tree.leaves(result):
    assert np.all(np.abs(leaf) < 10.0)


@pytest.mark.parametrize('name', ['krum', 'multi_krum', 'bulyan'])
def test_huge_honest_updates_scale_exactly(name):
  # At 2^62 (4.6e18) the float32 squared distances between the honest
  # updates overflow too. All scores were inf, and Krum returned slot 0,
  # the attacker at -5 on every coordinate.
  aggregate = jax.jit(AGGREGATORS[name])
  rng = np.random.default_rng(3)
  honest = 1.0 + 0.3 * rng.normal(size=(8, 1000))
  updates = jnp.asarray(
      np.concatenate([np.full((1, 1000), -5.0), honest]), jnp.float32)
  mask = jnp.ones(9, bool)

  unit = aggregate(updates, mask)
  huge = aggregate(jnp.ldexp(updates, 62), mask)

  # A power-of-two scale is exact, so the choice and the result scale too.
  np.testing.assert_array_equal(huge, jnp.ldexp(unit, 62))
  assert float(jnp.mean(unit)) > 0.5


def test_krum_shared_huge_coordinate_keeps_choice():
  # A coordinate of 1e20 in every update set the distance scale, and the
  # differences of about 0.1 in the others squared to 0 and tied.
  rng = np.random.default_rng(0)
  updates = np.concatenate(
      [np.full((2, 5), -5.0), 1.0 + 0.1 * rng.normal(size=(6, 5))])
  updates[:, 0] = 1e20
  updates = jnp.asarray(updates, jnp.float32)

  result = krum.krum(updates, jnp.ones(8, bool), num_byzantine=2)

  exact = np.asarray(updates, np.float64)
  distances = np.sum((exact[:, None] - exact[None]) ** 2, axis=-1)
  scores = [np.sort(np.delete(row, i))[:4].sum()
            for i, row in enumerate(distances)]
  np.testing.assert_array_equal(result, updates[int(np.argmin(scores))])


def test_bulyan_never_picks_masked_slot():
  # The masked slot 0 contains -7. With a far update among the valid ones,
  # Bulyan used to return slot 0's zeroed row.
  values = jnp.array([[-7.0], [0.1], [0.2], [1e20], [0.15], [0.25], [0.05],
                      [0.12]])
  mask = jnp.array([False] + [True] * 7)

  result = bulyan.bulyan(values, mask, num_byzantine=1)
  without_slot = bulyan.bulyan(values[1:], mask[1:], num_byzantine=1)

  np.testing.assert_allclose(result, without_slot)
  assert 0.05 <= float(result[0]) <= 0.25


@pytest.mark.parametrize('name', NAMES)
def test_client_order_invariant(name):
  aggregate = jax.jit(AGGREGATORS[name])
  updates = _random_updates(clients=10)
  mask = jnp.array([True] * 8 + [False] * 2)
  permutation = np.random.default_rng(1).permutation(10)

  result = aggregate(updates, mask)
  permuted = aggregate(
      jax.tree.map(lambda leaf: leaf[permutation], updates), mask[permutation]
  )

  _assert_trees_close(permuted, result)


@pytest.mark.parametrize('name', NAMES)
def test_agreeing_clients_give_common_value(name):
  aggregate = jax.jit(AGGREGATORS[name])
  common = {'dense': jnp.array([[0.1, -0.2]]), 'bias': jnp.array([0.3])}
  updates = jax.tree.map(
      lambda leaf: jnp.repeat(leaf[None], 8, axis=0), common
  )
  mask = jnp.array([True] * 7 + [False])

  result = aggregate(updates, mask)

  _assert_trees_close(result, common)


@pytest.mark.parametrize('name', NAMES)
def test_vmap_matches_loop(name):
  aggregate = AGGREGATORS[name]
  cohorts = [_random_updates(clients=9, seed=seed) for seed in range(3)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *cohorts)
  masks = jnp.ones((3, 9), bool).at[1, 4].set(False)

  batched = jax.jit(jax.vmap(aggregate))(stacked, masks)

  single = jax.jit(aggregate)
  for index, cohort in enumerate(cohorts):
    expected = single(cohort, masks[index])
    row = jax.tree.map(lambda leaf: leaf[index], batched)
    _assert_trees_close(row, expected)


@pytest.mark.parametrize('exponent', [-30, -70, 60])
def test_geometric_median_scales_with_updates(exponent):
  # With a distance floor fixed at 1e-6, updates of about 1e-7 all sat
  # within it, every Weiszfeld weight was equal, and the result was the
  # mean that the two attackers at -5 pull down.
  rng = np.random.default_rng(4)
  honest = 1.0 + 0.1 * rng.normal(size=(6, 4))
  updates = jnp.asarray(
      np.concatenate([np.full((2, 4), -5.0), honest]), jnp.float32)
  weights = jnp.ones(8)

  unit = geometric_median.geometric_median(
      updates, weights, num_iterations=50)
  scaled = geometric_median.geometric_median(
      jnp.ldexp(updates, exponent), weights, num_iterations=50)

  assert float(jnp.min(unit)) > 0.5
  np.testing.assert_allclose(jnp.ldexp(scaled, -exponent), unit, rtol=1e-5)


def test_geometric_median_on_line():
  # Collinear points reduce to the 1-D median, here the middle point 2.
  direction = jnp.array([0.6, 0.8])
  positions = jnp.array([0.0, 1.0, 2.0, 10.0, 20.0])
  updates = {'w': positions[:, None] * direction[None, :]}
  aggregate = jax.jit(
      functools.partial(
          geometric_median.geometric_median, num_iterations=200
      )
  )

  result = aggregate(updates, jnp.ones(5))

  np.testing.assert_allclose(result['w'], 2.0 * direction, atol=1e-4)


def test_geometric_median_weighted_on_line():
  # Weight 3 of the total 5 sits on the point 10, so it is the median.
  updates = {'w': jnp.array([[0.0], [1.0], [10.0]])}

  result = geometric_median.geometric_median(
      updates, jnp.array([1.0, 1.0, 3.0]), num_iterations=200
  )

  np.testing.assert_allclose(result['w'], [10.0], atol=1e-4)


def test_geometric_median_symmetric_triangle():
  # The Fermat point of an equilateral triangle is its centroid.
  angles = jnp.array([0.0, 2.0, 4.0]) * jnp.pi / 3
  vertices = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
  far_start = {'w': vertices + jnp.array([[5.0, 0.0]])}

  result = geometric_median.geometric_median(
      far_start, jnp.array([1.0, 1.0, 1.0]), num_iterations=100
  )

  np.testing.assert_allclose(result['w'], [5.0, 0.0], atol=1e-5)


def test_norm_bounded_mean_clips():
  # [3, 4] has norm 5 and is scaled to [0.6, 0.8]; [0, 0.5] is kept.
  updates = {'w': jnp.array([[3.0, 4.0], [0.0, 0.5]])}
  aggregate = jax.jit(
      functools.partial(clipping_aggregators.norm_bounded_mean, max_norm=1.0)
  )

  result = aggregate(updates, jnp.array([1.0, 1.0]))

  np.testing.assert_allclose(result['w'], [0.3, 0.65], rtol=1e-6)


@pytest.mark.parametrize('compiled', [False, True])
def test_norm_bounded_mean_clips_near_float32_max(compiled):
  # The row norm divided by the largest entry through its subnormal
  # reciprocal, so [1.2e38, 1.6e38] had norm 0 and passed unclipped. A
  # factor max_norm / norm of 5e-39 would also be flushed to zero.
  updates = {'w': jnp.array([[1.2e38, 1.6e38], [0.0, 0.5]])}
  aggregate = functools.partial(
      clipping_aggregators.norm_bounded_mean, max_norm=1.0)
  if compiled:
    aggregate = jax.jit(aggregate)

  result = aggregate(updates, jnp.array([1.0, 1.0]))

  np.testing.assert_allclose(result['w'], [0.3, 0.65], rtol=1e-6)


def test_norm_bounded_mean_clips_norm_above_float32_max():
  # Norm 4.2e38 is inf in float32, and max_norm / inf = 0 zeroed the row
  # instead of clipping it.
  updates = {'w': jnp.array([[3e38, 3e38], [0.0, 0.5]])}

  result = clipping_aggregators.norm_bounded_mean(
      updates, jnp.array([1.0, 1.0]), max_norm=1.0)

  np.testing.assert_allclose(
      result['w'], [0.70710677 / 2, (0.70710677 + 0.5) / 2], rtol=1e-6)


def test_geometric_median_scale_equivariant_near_float32_max():
  # The distances are above 8.5e37, so the Weiszfeld weights w_i / d_i
  # went through subnormal reciprocals and were flushed to zero for every
  # client. The median of this right-angled triangle is its Fermat point
  # (0, 1.5 / sqrt(3)), not the mean (0, 0.5).
  points = jnp.array([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5]])
  median = functools.partial(
      geometric_median.geometric_median, num_iterations=200)

  small = median({'w': points}, jnp.ones(3))
  large = median({'w': points * 1e38}, jnp.ones(3))

  np.testing.assert_allclose(small['w'], [0.0, 1.5 / np.sqrt(3)], atol=1e-4)
  np.testing.assert_allclose(large['w'], small['w'] * 1e38, rtol=1e-5,
                             atol=1e33)


def test_norm_bounded_mean_uses_weights():
  updates = {'w': jnp.array([[3.0, 4.0], [0.0, 0.5]])}

  result = clipping_aggregators.norm_bounded_mean(
      updates, jnp.array([1.0, 3.0]), max_norm=1.0
  )

  np.testing.assert_allclose(result['w'], [0.15, 0.575], rtol=1e-6)


def test_centered_clipping_one_step():
  # From center 0 with radius 1: mean of [0.6, 0.8] and [0, 0.5].
  updates = {'w': jnp.array([[3.0, 4.0], [0.0, 0.5]])}
  aggregate = jax.jit(
      functools.partial(
          clipping_aggregators.centered_clipping,
          center={'w': jnp.zeros(2)},
          clip_radius=1.0,
      )
  )

  result = aggregate(updates, jnp.array([True, True]))

  np.testing.assert_allclose(result['w'], [0.3, 0.65], rtol=1e-6)


def test_centered_clipping_large_radius_is_mean():
  updates = {'w': jnp.array([[3.0, 4.0], [0.0, 0.5]])}

  result = clipping_aggregators.centered_clipping(
      updates,
      jnp.array([True, True]),
      center={'w': jnp.zeros(2)},
      clip_radius=100.0,
  )

  np.testing.assert_allclose(result['w'], [1.5, 2.25], rtol=1e-6)


def test_trim_half_raises():
  with pytest.raises(ValueError, match='trim_fraction'):
    trimmed_mean.trimmed_mean(
        _line_updates(), jnp.ones(5, bool), trim_fraction=0.5
    )


def test_trim_negative_raises():
  with pytest.raises(ValueError, match='trim_fraction'):
    trimmed_mean.trimmed_mean(
        _line_updates(), jnp.ones(5, bool), trim_fraction=-0.1
    )


def test_krum_too_few_clients_raises():
  # 4 rows <= 2 * 1 + 2.
  updates = {'w': jnp.zeros((4, 1))}
  with pytest.raises(ValueError, match='num_byzantine'):
    krum.krum(updates, jnp.ones(4, bool), num_byzantine=1)


def test_multi_krum_too_many_selected_raises():
  with pytest.raises(ValueError, match='server.num_selected.*cohort of 5'):
    krum.multi_krum(
        _line_updates(), jnp.ones(5, bool), num_byzantine=1, num_selected=6
    )


def test_multi_krum_zero_selected_raises():
  with pytest.raises(ValueError, match='num_selected'):
    krum.multi_krum(
        _line_updates(), jnp.ones(5, bool), num_byzantine=1, num_selected=0
    )


def test_bulyan_too_few_clients_raises():
  # 6 rows < 4 * 1 + 3.
  updates = {'w': jnp.zeros((6, 1))}
  with pytest.raises(ValueError, match='num_byzantine'):
    bulyan.bulyan(updates, jnp.ones(6, bool), num_byzantine=1)


def test_mask_shape_mismatch_raises():
  with pytest.raises(ValueError, match='mask'):
    krum.krum(_line_updates(), jnp.ones(4, bool), num_byzantine=1)


def test_geometric_median_zero_iterations_raises():
  with pytest.raises(ValueError, match='num_iterations'):
    geometric_median.geometric_median(
        _line_updates(), jnp.ones(5), num_iterations=0
    )


def test_norm_bounded_zero_norm_raises():
  with pytest.raises(ValueError, match='max_norm'):
    clipping_aggregators.norm_bounded_mean(
        _line_updates(), jnp.ones(5), max_norm=0.0
    )


def test_centered_clipping_center_shape_raises():
  with pytest.raises(ValueError, match='center'):
    clipping_aggregators.centered_clipping(
        _line_updates(),
        jnp.ones(5, bool),
        center={'w': jnp.zeros(2)},
        clip_radius=1.0,
    )


def _weiszfeld_reference(points, steps=5000):
  """Plain float64 Weiszfeld iterations from the coordinate median."""
  estimate = np.median(points, axis=0)
  for _ in range(steps):
    distances = np.maximum(np.linalg.norm(points - estimate, axis=1), 1e-12)
    estimate = (points / distances[:, None]).sum(0) / (1 / distances).sum()
  return estimate


@pytest.mark.parametrize('size', [1e10, 1e30, 3e38])
def test_geometric_median_ignores_outlier_size(size):
  # Started from the weighted mean, 10 steps left the result near
  # 0.1 * size: 3.2e19 for an update of 1e30.
  honest = np.random.default_rng(0).normal(size=(10, 3))
  points = honest.copy()
  points[0] = [size, 0.0, 0.0]
  expected = _weiszfeld_reference(
      np.concatenate([honest[1:], [[1e12, 0.0, 0.0]]]))

  result = geometric_median.geometric_median(
      {'w': jnp.asarray(points, jnp.float32)}, jnp.ones(10),
      num_iterations=10)

  np.testing.assert_allclose(result['w'], expected, atol=2e-3)


def _old_weighted_mean(updates, weights):
  """The sum-then-divide formula, to check that normal inputs keep it."""
  return (weights @ updates) / jnp.sum(weights)


@pytest.mark.parametrize('name', ['weighted_mean', 'trimmed_mean',
                                  'norm_bounded_mean'])
def test_finite_updates_never_overflow_to_inf(name):
  # Sums of finite float32 updates overflowed: trimmed mean of three rows
  # of 2e38 gave inf, the weighted mean of one 1e37 update at weight 100
  # gave inf, and so did norm bounding with max_norm near 3e38.
  mask = jnp.ones(4, bool)
  if name == 'weighted_mean':
    updates = jnp.asarray([[1e37], [0.0], [0.0], [0.0]], jnp.float32)
    weights = jnp.asarray([100.0, 1.0, 1.0, 1.0])
    result = mean.weighted_mean({'w': updates}, weights)['w']
    expected = 1e37 * 100 / 103
  elif name == 'trimmed_mean':
    updates = jnp.asarray([[2e38], [2e38], [2e38], [2e38]], jnp.float32)
    result = trimmed_mean.trimmed_mean({'w': updates}, mask,
                                       trim_fraction=0.25)['w']
    expected = 2e38
  else:
    updates = jnp.asarray([[3e38], [3e38], [3e38], [3e38]], jnp.float32)
    result = clipping_aggregators.norm_bounded_mean(
        {'w': updates}, jnp.ones(4), max_norm=3e38)['w']
    expected = 3e38
  assert float(result[0]) == pytest.approx(expected, rel=1e-6)


def test_weighted_mean_keeps_rounding_of_normal_inputs(key):
  updates = jax.random.normal(key, (50, 30))
  weights = jax.random.uniform(jax.random.fold_in(key, 1), (50,)) * 100

  result = mean.weighted_mean({'w': updates}, weights)['w']

  np.testing.assert_array_equal(result, _old_weighted_mean(updates, weights))


def test_weighted_mean_keeps_infinite_input():
  updates = jnp.asarray([[jnp.inf], [1.0]], jnp.float32)

  result = mean.weighted_mean({'w': updates}, jnp.ones(2))['w']

  assert np.isposinf(float(result[0]))


def test_bfloat16_means_keep_example_counts():
  # Counts above 256 were rounded to bfloat16: weights 1001 and 1000 became
  # equal, and the mean of +1 and -1 came out 0 instead of 1/2001.
  updates = {'w': jnp.asarray([[1.0], [-1.0]], jnp.bfloat16)}
  weights = jnp.asarray([1001.0, 1000.0])

  result = mean.weighted_mean(updates, weights)['w']

  assert result.dtype == jnp.bfloat16
  assert float(result[0]) == pytest.approx(1 / 2001, rel=1e-2)
