"""The simulated secure aggregation protocol: exact sums, dropouts, failure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_med.secure import protocol

N, D = 40, 23


def _inputs(seed=0, bits=32):
  rng = np.random.default_rng(seed)
  values = rng.integers(0, 2**bits, (N, D), dtype=np.uint64)
  return jnp.asarray(values.astype(np.uint32))


def _survivors(fraction, seed=1):
  survivors = np.ones(N, bool)
  dropped = np.random.default_rng(seed).choice(
      N, int(round(fraction * N)), replace=False)
  survivors[dropped] = False
  return jnp.asarray(survivors)


def _plain_sum(inputs, survivors, bits=32):
  total = np.sum(np.where(np.asarray(survivors)[:, None],
                          np.asarray(inputs, np.uint64), 0), axis=0)
  return total % (2**bits)


def _run(settings, survivors, inputs=None, **kwargs):
  inputs = _inputs() if inputs is None else inputs
  participants = jnp.ones(N, bool)
  return jax.jit(
      lambda k, x, p, s: protocol.secure_sum(k, x, p, s, settings, **kwargs)
  )(jax.random.key(7), inputs, participants, survivors)


@pytest.mark.parametrize('graph', ['complete', 'harary'])
@pytest.mark.parametrize('dropped', [0, 1, 12])
def test_sum_equals_plain_sum_of_survivors(graph, dropped):
  settings = protocol.SecureAggregationSettings(
      graph=graph, degree=16 if graph == 'harary' else None,
      threshold_fraction=0.3)
  survivors = _survivors(dropped / N)
  result = _run(settings, survivors)
  assert bool(result.ok)
  assert bool(result.rebuilt_correct)
  np.testing.assert_array_equal(
      np.asarray(result.total, np.uint64), _plain_sum(_inputs(), survivors))


def test_sum_exact_in_small_ring():
  settings = protocol.SecureAggregationSettings(bits=12)
  inputs = _inputs(bits=12)
  survivors = _survivors(0.25)
  result = _run(settings, survivors, inputs)
  assert bool(result.ok)
  np.testing.assert_array_equal(
      np.asarray(result.total, np.uint64), _plain_sum(inputs, survivors, 12))


def test_dropped_masks_stay_without_recovery():
  settings = protocol.SecureAggregationSettings()
  survivors = _survivors(1 / N)
  plain = _plain_sum(_inputs(), survivors)
  without = _run(settings, survivors, recover_dropped=False)
  assert not np.array_equal(np.asarray(without.total, np.uint64), plain)
  no_drop = _run(settings, jnp.ones(N, bool), recover_dropped=False)
  np.testing.assert_array_equal(
      np.asarray(no_drop.total, np.uint64),
      _plain_sum(_inputs(), jnp.ones(N, bool)))


def test_no_client_has_both_secrets_rebuilt():
  settings = protocol.SecureAggregationSettings()
  result = _run(settings, _survivors(0.3))
  both = result.rebuilt_secret_keys & result.rebuilt_seeds
  assert not bool(jnp.any(both))
  assert int(jnp.sum(result.rebuilt_secret_keys)) == 12
  assert int(jnp.sum(result.rebuilt_seeds)) == N - 12


def test_too_few_survivors_fail():
  settings = protocol.SecureAggregationSettings(threshold_fraction=0.5)
  t = protocol.threshold(settings, N)
  survivors = jnp.arange(N) < t - 1
  result = _run(settings, survivors)
  assert not bool(result.ok)
  assert not bool(jnp.any(result.rebuilt_seeds))


def test_complete_graph_needs_t_plus_one_survivors():
  # No client keeps a share of its own secrets, so each survivor's seed
  # has one responding holder fewer than there are survivors.
  settings = protocol.SecureAggregationSettings(threshold_fraction=0.5)
  t = protocol.threshold(settings, N)

  at_t = _run(settings, jnp.arange(N) < t)
  above_t = _run(settings, jnp.arange(N) < t + 1)

  assert not bool(at_t.ok)
  assert bool(above_t.ok)
  np.testing.assert_array_equal(
      above_t.total, _plain_sum(_inputs(), jnp.arange(N) < t + 1))


def test_failed_round_rebuilds_nothing():
  # The cost used to count 40 reconstructions and 20 + 20 * 20 server
  # expansions for a round that unmasked nothing.
  settings = protocol.SecureAggregationSettings(threshold_fraction=0.5)
  result = _run(settings, jnp.arange(N) < protocol.threshold(settings, N))

  assert not bool(result.ok)
  assert not bool(result.rebuilt_correct)
  assert int(result.cost['secagg_reconstructions']) == 0
  assert int(result.cost['secagg_server_prg_expansions']) == 0


def test_unmask_dropouts_still_exact():
  settings = protocol.SecureAggregationSettings(
      threshold_fraction=0.3, unmask_dropout_rate=0.2)
  survivors = _survivors(0.1)
  result = _run(settings, survivors)
  assert bool(result.ok)
  assert int(jnp.sum(result.responders)) < int(jnp.sum(survivors))
  np.testing.assert_array_equal(
      np.asarray(result.total, np.uint64), _plain_sum(_inputs(), survivors))


def test_unmask_dropouts_below_threshold_fail():
  settings = protocol.SecureAggregationSettings(
      threshold_fraction=0.9, unmask_dropout_rate=0.5)
  result = _run(settings, jnp.ones(N, bool))
  assert not bool(result.ok)


def test_masked_inputs_look_uniform():
  # Inputs that are all zero or all one constant: the masked vectors must
  # still be uniform on the ring, judged on the top 4 bits.
  settings = protocol.SecureAggregationSettings()
  for inputs in [jnp.zeros((N, D), jnp.uint32),
                 jnp.full((N, D), 12345, jnp.uint32)]:
    masked = np.asarray(_run(settings, jnp.ones(N, bool), inputs).masked)
    counts = np.bincount((masked >> 28).ravel(), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_masked_inputs_do_not_depend_on_input():
  settings = protocol.SecureAggregationSettings()
  zeros = np.asarray(
      _run(settings, jnp.ones(N, bool), jnp.zeros((N, D), jnp.uint32)).masked)
  large = np.asarray(_run(
      settings, jnp.ones(N, bool),
      jnp.full((N, D), 2**31, jnp.uint32)).masked)
  # Different inputs under the same key give different masked vectors, yet
  # the two samples are indistinguishable as distributions.
  assert not np.array_equal(zeros, large)
  assert stats.ks_2samp(zeros.ravel(), large.ravel()).pvalue > 1e-3


def test_harary_graph_is_regular_and_symmetric():
  settings = protocol.SecureAggregationSettings(graph='harary', degree=6)
  neighbours = np.asarray(protocol.neighbours(jax.random.key(0), settings, 30))
  assert neighbours.shape == (30, 6)
  edges = {(i, int(j)) for i in range(30) for j in neighbours[i]}
  assert all((j, i) in edges for i, j in edges)
  assert all(len(set(row)) == 6 for row in neighbours)
  assert all(i not in row for i, row in enumerate(neighbours))


def test_cost_of_sparse_graph_is_smaller():
  complete = _run(protocol.SecureAggregationSettings(), jnp.ones(N, bool))
  sparse = _run(protocol.SecureAggregationSettings(graph='harary', degree=8),
                jnp.ones(N, bool))
  assert float(complete.cost['secagg_client_prg_expansions']) == N
  assert float(sparse.cost['secagg_client_prg_expansions']) == 9
  assert (float(sparse.cost['secagg_client_bytes_up'])
          < float(complete.cost['secagg_client_bytes_up']))


def test_server_expansions_count_orphaned_edges():
  survivors = _survivors(2 / N)
  result = _run(protocol.SecureAggregationSettings(), survivors)
  # 38 self masks, plus each of the 2 dropped clients' 38 surviving edges.
  assert int(result.cost['secagg_server_prg_expansions']) == 38 + 2 * 38


@pytest.mark.parametrize('kwargs, match', [
    (dict(graph='ring'), 'graph'),
    (dict(bits=33), 'bits'),
    (dict(graph='harary', degree=5), 'even'),
    (dict(threshold_fraction=1.0), 'threshold_fraction'),
    (dict(scale=-1.0), 'scale'),
    (dict(degree=4), 'only to graph harary'),
    (dict(graph='harary', degree=4.0), 'integer'),
])
def test_invalid_settings_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    protocol.validate(protocol.SecureAggregationSettings(**kwargs), N)


def test_harary_needs_three_clients():
  settings = protocol.SecureAggregationSettings(graph='harary')
  with pytest.raises(ValueError, match='at least 3'):
    protocol.validate(settings, 2)
  protocol.validate(settings, 3)
  assert protocol.default_degree(3) == 2


def test_inputs_must_be_uint32():
  settings = protocol.SecureAggregationSettings()
  with pytest.raises(ValueError, match='uint32'):
    protocol.secure_sum(jax.random.key(0), jnp.zeros((4, 3), jnp.int32),
                        jnp.ones(4, bool), jnp.ones(4, bool), settings)


def test_inputs_beyond_ring_rejected():
  # With an 8-bit ring, 300 is not a ring element; its sum would wrap.
  settings = protocol.SecureAggregationSettings(bits=8)
  everyone = jnp.ones(4, bool)
  with pytest.raises(ValueError, match='below 2\\*\\*bits = 256; got 300'):
    protocol.secure_sum(jax.random.key(0), jnp.full((4, 3), 300, jnp.uint32),
                        everyone, everyone, settings)

  result = protocol.secure_sum(
      jax.random.key(0), jnp.full((4, 3), 30, jnp.uint32), everyone,
      everyone, settings)

  np.testing.assert_array_equal(result.total, [120, 120, 120])


def _participants(count, seed=3):
  chosen = np.random.default_rng(seed).choice(N, count, replace=False)
  participants = np.zeros(N, bool)
  participants[chosen] = True
  return jnp.asarray(participants)


def _run_with(settings, participants, survivors):
  return jax.jit(
      lambda k, x, p, s: protocol.secure_sum(k, x, p, s, settings)
  )(jax.random.key(7), _inputs(), participants, survivors)


@pytest.mark.parametrize('graph, degree, expected_degree', [
    ('complete', None, 14),
    ('harary', None, 8),  # default_degree(15): 2 * ceil(log2 15)
    ('harary', 30, 14),  # capped at the largest even degree below 15
])
def test_partial_cohort_sized_on_participants(graph, degree, expected_degree):
  # 15 of 40 slots took part. Sized on the slots (k = 39, t = 20 at
  # fraction 0.5), no client could have 20 responding holders, and every
  # such round failed.
  settings = protocol.SecureAggregationSettings(
      graph=graph, degree=degree, threshold_fraction=0.5)
  participants = _participants(15)
  # Two participants drop after sharing keys.
  survivors = participants.at[jnp.flatnonzero(participants, size=2)].set(
      False)

  result = _run_with(settings, participants, survivors)

  assert bool(result.ok)
  assert bool(result.rebuilt_correct)
  np.testing.assert_array_equal(
      np.asarray(result.total, np.uint64), _plain_sum(_inputs(), survivors))
  assert int(result.cost['secagg_degree']) == expected_degree
  assert int(result.cost['secagg_threshold']) == expected_degree // 2 + 1
  # Client PRG work: its live pairwise masks and its self mask.
  assert float(result.cost['secagg_client_prg_expansions']) == (
      expected_degree + 1)


def test_harary_ring_of_participants_is_regular():
  settings = protocol.SecureAggregationSettings(graph='harary', degree=10)
  participants = _participants(9)
  ids = np.asarray(protocol.neighbours(
      jax.random.key(0), settings, N, participants))
  degree = protocol.graph_degree(settings, 9)
  used = np.asarray(protocol.used_columns(settings, N, jnp.int32(degree)))
  members = set(np.flatnonzero(np.asarray(participants)).tolist())

  assert degree == 8
  edges = set()
  for i in members:
    row = ids[i][used]
    assert set(row.tolist()) <= members - {i}
    assert len(set(row.tolist())) == degree
    edges |= {(i, int(j)) for j in row}
  assert all((j, i) in edges for i, j in edges)


def test_full_cohort_keeps_its_graph():
  # With every slot taking part the ring is the plain permutation's.
  settings = protocol.SecureAggregationSettings(graph='harary', degree=6)
  key = jax.random.key(5)
  np.testing.assert_array_equal(
      protocol.neighbours(key, settings, 30),
      protocol.neighbours(key, settings, 30, jnp.ones(30, bool)))


@pytest.mark.parametrize('graph, count', [
    ('complete', 1), ('complete', 0), ('harary', 2),
])
def test_too_few_participants_fail(graph, count):
  # One participant's "sum" is its input; a harary ring needs 3.
  settings = protocol.SecureAggregationSettings(graph=graph)
  participants = _participants(count)

  result = _run_with(settings, participants, participants)

  assert not bool(result.ok)
  assert int(result.cost['secagg_degree']) == 0


def test_two_participants_complete_graph():
  settings = protocol.SecureAggregationSettings()
  participants = _participants(2)
  result = _run_with(settings, participants, participants)
  assert bool(result.ok)
  np.testing.assert_array_equal(
      np.asarray(result.total, np.uint64), _plain_sum(_inputs(), participants))


def test_single_participant_fails_outside_jit():
  # Eagerly, the round's threshold of 0 reached Shamir's range check.
  settings = protocol.SecureAggregationSettings()
  participants = jnp.arange(4) == 0
  result = protocol.secure_sum(jax.random.key(0), jnp.ones((4, 3), jnp.uint32),
                               participants, participants, settings)
  assert not bool(result.ok)
