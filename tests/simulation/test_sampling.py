"""Client samplers: sizes, distinctness, rates and bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.simulation import sampling


def test_uniform_cohort_distinct(key):
  sampler = sampling.uniform_sampler(50, 10)

  cohort = jax.jit(sampler)(key)

  ids = np.asarray(cohort.client_ids)
  assert ids.shape == (10,)
  assert len(set(ids.tolist())) == 10
  assert ids.min() >= 0
  assert ids.max() < 50
  assert bool(np.all(cohort.mask))


def test_uniform_cohort_covers_population(key):
  sampler = jax.jit(sampling.uniform_sampler(20, 5))
  counts = np.zeros(20)

  for round_index in range(400):
    ids = sampler(jax.random.fold_in(key, round_index)).client_ids
    counts[np.asarray(ids)] += 1

  # Each client is expected in 400 * 5 / 20 = 100 rounds (binomial std 8.7).
  assert counts.min() > 60
  assert counts.max() < 140


def test_uniform_cohort_too_large():
  with pytest.raises(ValueError, match='cohort_size'):
    sampling.uniform_sampler(4, 5)


def test_poisson_rate_matches(key):
  sampler = jax.jit(sampling.poisson_sampler(10_000, 0.05))

  sizes = [int(sampler(jax.random.fold_in(key, r)).mask.sum())
           for r in range(20)]

  # Expected 500 per round, std 21.8; the mean of 20 rounds has std 4.9.
  assert abs(np.mean(sizes) - 500) < 20


def test_poisson_ids_distinct_when_masked(key):
  cohort = sampling.poisson_sampler(1000, 0.1)(key)

  ids = np.asarray(cohort.client_ids)[np.asarray(cohort.mask)]

  assert len(set(ids.tolist())) == len(ids)


def test_poisson_overflow_counted(key):
  cohort = sampling.poisson_sampler(100, 0.9, capacity=10)(key)

  assert int(cohort.mask.sum()) == 10
  assert int(cohort.num_overflow) > 60


def test_poisson_rate_invalid():
  with pytest.raises(ValueError, match='rate'):
    sampling.poisson_sampler(10, 0.0)


@pytest.mark.parametrize('build, match', [
    # A float cohort built a sampler whose first call raised a TypeError.
    (lambda: sampling.uniform_sampler(10, 2.5), '`cohort_size` must be an '
     'integer in \\[1, 10\\]; got 2.5'),
    (lambda: sampling.uniform_sampler(10, 3.0), 'got 3.0'),
    (lambda: sampling.uniform_sampler(10, True), 'got True'),
    (lambda: sampling.uniform_sampler(10.0, 3), '`num_clients`'),
    (lambda: sampling.poisson_sampler(10, 0.3, capacity=2.5), '`capacity`'),
    # True ran at rate 1.
    (lambda: sampling.poisson_sampler(10, True), '`rate` must be a number'),
    (lambda: sampling.poisson_sampler(10, '0.3'), '`rate` must be a number'),
])
def test_sampler_arguments_rejected(build, match):
  with pytest.raises(ValueError, match=match):
    build()


@pytest.mark.parametrize('sampler', [
    sampling.uniform_sampler(4, 2), sampling.poisson_sampler(4, 0.5)])
@pytest.mark.parametrize('available', [
    np.ones(5, bool), np.ones((4, 1), bool), np.ones(4, np.float32)])
def test_available_mask_checked(key, sampler, available):
  with pytest.raises(ValueError, match='`available` must be a \\[4\\] bool'):
    sampler(key, available=available)


@pytest.mark.parametrize('rate', [1.5, -0.1, True, float('nan')])
def test_dropout_rate_invalid(key, rate):
  cohort = sampling.uniform_sampler(8, 8)(key)
  with pytest.raises(ValueError, match='`dropout_rate` must be a number'):
    sampling.apply_dropout(key, cohort, rate)


def test_dropout_all_clients(key):
  cohort = sampling.uniform_sampler(8, 8)(key)

  dropped = sampling.apply_dropout(key, cohort, 1.0)

  assert not bool(dropped.mask.any())


def test_jax_and_numpy_scalars_accepted(key):
  # The argument checks rejected jnp.float32(0.3) as out of range.
  cohort = sampling.poisson_sampler(10, jnp.float32(0.3))(key)
  assert int(cohort.mask.sum()) >= 0
  assert sampling.uniform_sampler(np.int64(10), np.int32(4))(key).mask.shape == (4,)
  full = sampling.uniform_sampler(8, 8)(key)
  kept = sampling.apply_dropout(key, full, jnp.float32(0.0))
  assert bool(kept.mask.all())
  dropped = sampling.apply_dropout(key, full, np.float64(1.0))
  assert not bool(dropped.mask.any())


def test_integer_arrays_accepted_as_counts(key):
  # jnp.int32(3) and np.array(3) were rejected with a message that called
  # them non-integers, while jnp.float32 rates passed.
  assert sampling.uniform_sampler(10, jnp.int32(3))(key).mask.shape == (3,)
  assert sampling.uniform_sampler(jnp.int32(10), np.array(4))(
      key).mask.shape == (4,)
  for bad in (jnp.float32(3.0), jnp.bool_(True), np.array([3])):
    with pytest.raises(ValueError, match='must be an integer'):
      sampling.uniform_sampler(10, bad)


def test_available_list_accepted(key):
  # A list of bools raised TypeError: Cannot determine dtype.
  cohort = sampling.uniform_sampler(5, 5)(
      key, available=[True, False, True, True, False])
  assert sorted(np.asarray(cohort.client_ids)[np.asarray(cohort.mask)]
                ) == [0, 2, 3]
  with pytest.raises(ValueError, match=r'\[5\] bool mask'):
    sampling.poisson_sampler(5, 0.5)(key, available=[1, 0, 1, 1, 0])
  # A None among the bools raised JAX's TypeError about dtype object.
  with pytest.raises(ValueError, match='got object of shape'):
    sampling.uniform_sampler(5, 3)(
        key, available=[True, False, None, True, True])
