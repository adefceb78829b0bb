"""Client samplers: sizes, distinctness, rates and bad arguments."""

import jax
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


def test_dropout_all_clients(key):
  cohort = sampling.uniform_sampler(8, 8)(key)

  dropped = sampling.apply_dropout(key, cohort, 1.0)

  assert not bool(dropped.mask.any())
