"""Tests for CNN clients in the round, and FedBN's client-local leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import dp_sgd
from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.models import cnn
from fedjax_med.models import tabular
from fedjax_med.privacy import mechanisms
from fedjax_med.simulation import evaluate as evaluate_lib
from fedjax_med.simulation import local_leaves
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

SHAPE = (8, 8, 1)
NUM_CLASSES = 3
LENET = tabular.from_flax(cnn.LeNet5(NUM_CLASSES, channels=(4, 8),
                                     hidden_size=16), NUM_CLASSES)
RESNET = cnn.from_flax_stateful(
    cnn.ResNet(NUM_CLASSES, widths=(4, 8)), NUM_CLASSES, SHAPE)


def _population(counts, seed=0):
  """Image clients whose pixel scale differs per client, as scanners do."""
  rng = np.random.default_rng(seed)
  clients = []
  for index, count in enumerate(counts):
    x = rng.random((count,) + SHAPE).astype(np.float32) * (1.0 + index)
    clients.append({'x': x, 'y': rng.integers(0, NUM_CLASSES, count)
                    .astype(np.int32)})
  return jax.device_put(federated.stack_clients(clients))


def _fixed_sampler(ids):
  ids = jnp.asarray(ids, jnp.int32)

  def sample(key):
    del key
    return sampling.Cohort(ids, jnp.ones(ids.shape, bool), jnp.int32(0))

  return sample


def _client_key(round_key, client_id):
  clients_key = jax.random.fold_in(round_key, round_lib._CLIENTS_TAG)
  return jax.random.fold_in(clients_key, client_id)


def _client_examples(data, client_id):
  return jax.tree.map(lambda leaf: leaf[client_id], data.examples)


def _assert_trees_close(got, want, **tolerance):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for left, right in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(left, right, **tolerance)


def test_cnn_round_matches_client_loop(key):
  data = _population([5, 9, 3, 7])
  local_update = local_training.build_local_update(
      LENET, optax.sgd(0.1), num_steps=4, batch_size=3)
  round_fn = round_lib.build_round(
      data, local_update, _fixed_sampler([0, 1, 2, 3]), optax.sgd(1.0))
  params = LENET.init(key, jnp.zeros((1,) + SHAPE))
  state = round_lib.init_server_state(params, optax.sgd(1.0))
  round_key = jax.random.fold_in(key, 3)

  new_state, metrics = round_fn(state, round_key)

  one_client = jax.jit(local_update)
  deltas = [
      one_client(params, _client_examples(data, c), data.num_examples[c],
                 _client_key(round_key, c)).delta
      for c in range(4)
  ]
  weights = np.array([5.0, 9.0, 3.0, 7.0]) / 24.0
  expected = jax.tree.map(
      lambda p, *d: p + sum(w * leaf for w, leaf in zip(weights, d)),
      params, *deltas)
  _assert_trees_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
  assert int(metrics['num_examples']) == 24


def test_refresh_stats_are_exact_client_statistics(key):
  data = _population([6])
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  local_update = local_training.build_local_update(
      RESNET, optax.sgd(0.05), num_steps=3, batch_size=4)
  result = local_update(params, _client_examples(data, 0),
                        data.num_examples[0], jax.random.fold_in(key, 1))
  trained = jax.tree.map(jnp.add, params, result.delta)

  # The stem's statistics are those of its convolution over the 6 real
  # rows at the trained weights; padding rows do not count.
  x = data.examples['x'][0, :6]
  kernel = trained['params']['stem_conv']['kernel']
  features = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  stats = trained['batch_stats']['stem_norm']['norm']
  np.testing.assert_allclose(stats['mean'], features.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['var'], features.var(axis=(0, 1, 2)),
                             rtol=1e-3, atol=1e-5)


def test_norm_mask_marks_norm_leaves(key):
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  mask = cnn.norm_mask(params)
  marked = {jax.tree_util.keystr(path) for path, is_local in
            jax.tree_util.tree_flatten_with_path(mask)[0] if is_local}
  assert "['params']['stem_norm']['norm']['scale']" in marked
  assert "['batch_stats']['stem_norm']['norm']['var']" in marked
  assert "['params']['stem_conv']['kernel']" not in marked
  assert "['params']['logits']['kernel']" not in marked
  # 6 norm layers, each with scale, bias, mean and var.
  assert len(marked) == 24


def _fedbn_setup(key, counts, cohort):
  data = _population(counts)
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  mask = cnn.norm_mask(params)
  local_update = local_training.build_local_update(
      RESNET, optax.sgd(0.05), num_steps=3, batch_size=4)
  round_fn = round_lib.build_round(
      data, local_update, _fixed_sampler(cohort), optax.sgd(1.0),
      local_mask=mask)
  state = round_lib.init_server_state(
      params, optax.sgd(1.0), local_mask=mask, local_clients=len(counts))
  return data, mask, local_update, round_fn, state


def test_fedbn_keeps_norm_leaves_local(key):
  counts = [6, 9, 4, 7, 5]
  cohort = [3, 0, 2]
  data, mask, local_update, round_fn, state = _fedbn_setup(
      key, counts, cohort)
  # Give every client distinct local leaves, as after earlier rounds.
  state = state._replace(local=jax.tree.map(
      lambda leaf: leaf + jnp.arange(5.0).reshape((5,) + (1,) * (leaf.ndim
                                                               - 1)),
      state.local))
  round_key = jax.random.fold_in(key, 7)

  new_state, _ = round_fn(state, round_key)

  # Clients outside the cohort keep their leaves exactly.
  for client in (1, 4):
    _assert_trees_close(
        jax.tree.map(lambda leaf, c=client: leaf[c], new_state.local),
        jax.tree.map(lambda leaf, c=client: leaf[c], state.local),
        rtol=0, atol=0)
  # The server's own copy of the norm leaves is never moved.
  _assert_trees_close(local_leaves.split(new_state.params, mask),
                      local_leaves.split(state.params, mask), rtol=0, atol=0)

  # Each member's new local leaves are what its own training produced,
  # started from the global params with its local leaves put in. The
  # shared leaves move by the example-weighted mean of the shared deltas.
  shared = []
  for client in cohort:
    own = jax.tree.map(lambda leaf, c=client: leaf[c], state.local)
    result = jax.jit(local_update)(
        local_leaves.merge(state.params, own),
        _client_examples(data, client), data.num_examples[client],
        _client_key(round_key, client))
    _assert_trees_close(
        jax.tree.map(lambda leaf, c=client: leaf[c], new_state.local),
        jax.tree.map(jnp.add, own, local_leaves.split(result.delta, mask)),
        rtol=1e-4, atol=1e-5)
    shared.append(local_leaves.zero_local(result.delta, mask))
  weights = np.array([counts[c] for c in cohort], np.float32)
  weights /= weights.sum()
  expected = jax.tree.map(
      lambda p, *d: p + sum(w * leaf for w, leaf in zip(weights, d)),
      state.params, *shared)
  _assert_trees_close(new_state.params, expected, rtol=1e-4, atol=1e-5)


def test_fedavg_averages_batch_stats(key):
  data = _population([6, 9])
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  local_update = local_training.build_local_update(
      RESNET, optax.sgd(0.05), num_steps=3, batch_size=4)
  round_fn = round_lib.build_round(
      data, local_update, _fixed_sampler([0, 1]), optax.sgd(1.0))
  state = round_lib.init_server_state(params, optax.sgd(1.0))
  round_key = jax.random.fold_in(key, 2)

  new_state, _ = round_fn(state, round_key)

  # Without FedBN the statistics are averaged like any other leaf.
  stats = []
  for client in (0, 1):
    result = jax.jit(local_update)(
        params, _client_examples(data, client), data.num_examples[client],
        _client_key(round_key, client))
    stats.append(jax.tree.map(jnp.add, params, result.delta)['batch_stats'])
  expected = jax.tree.map(lambda a, b: (6 * a + 9 * b) / 15, *stats)
  _assert_trees_close(new_state.params['batch_stats'], expected,
                      rtol=1e-4, atol=1e-5)


def test_fedbn_evaluation_uses_local_leaves(key):
  data, _, _, round_fn, state = _fedbn_setup(key, [6, 9, 4], [0, 1, 2])
  state, _ = round_fn(state, jax.random.fold_in(key, 1))
  evaluate = evaluate_lib.build_evaluate(RESNET, data, personalized=True)
  own = evaluate(local_leaves.client_params(state.params, state.local))
  for client in range(3):
    model = local_leaves.merge(
        state.params,
        jax.tree.map(lambda leaf, c=client: leaf[c], state.local))
    logits = RESNET.apply(model, data.examples['x'][client])
    probabilities = jax.nn.softmax(logits)
    np.testing.assert_allclose(own.probabilities[client], probabilities,
                               rtol=1e-4, atol=1e-5)


def test_fedbn_needs_local_state(key):
  _, _, _, round_fn, _ = _fedbn_setup(key, [6, 9], [0, 1])
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  plain = round_lib.init_server_state(params, optax.sgd(1.0))
  with pytest.raises(ValueError, match='local_clients'):
    round_fn(plain, key)


def test_fedbn_mask_without_norm_rejected(key):
  params = LENET.init(key, jnp.zeros((1,) + SHAPE))
  with pytest.raises(ValueError, match='no leaf as local'):
    round_lib.init_server_state(
        params, optax.sgd(1.0), local_mask=cnn.norm_mask(params),
        local_clients=3)


def test_dp_sgd_rejects_batch_norm():
  with pytest.raises(ValueError, match='group normalization'):
    dp_sgd.build_dp_sgd_local_update(
        RESNET, optax.sgd(0.1), num_steps=2, batch_size=2,
        l2_norm_clip=1.0, noise_multiplier=1.0)


def test_group_norm_resnet_has_no_stats(key):
  model = cnn.from_flax_stateful(
      cnn.ResNet(NUM_CLASSES, widths=(4, 8), norm='group'), NUM_CLASSES,
      SHAPE)
  params = model.init(key, jnp.zeros((1,) + SHAPE))
  assert 'batch_stats' not in params
  assert model.refresh_stats is None


def test_pfl_cnn_param_count(key):
  model = tabular.from_flax(cnn.PflCNN(10), 10)
  params = model.init(key, jnp.zeros((1, 32, 32, 3)))
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 1_626_442


@pytest.mark.parametrize('shape', [(1, 4, 4, 1), (1, 5, 32, 3), (32, 32, 3)])
def test_pfl_cnn_rejects_small_images(key, shape):
  # A 4x4 image failed inside flax with a ZeroDivisionError.
  with pytest.raises(InputError, match='at least 6x6 pixels'):
    cnn.PflCNN(3).init(key, jnp.zeros(shape))


def test_pfl_cnn_smallest_image(key):
  params = cnn.PflCNN(3).init(key, jnp.zeros((1, 6, 6, 1)))
  # Two valid convolutions leave 2x2x64, the pool 1x1x64.
  assert params['params']['hidden']['kernel'].shape == (64, 128)


def test_unrolled_round_matches_loops(key):
  data = _population([5, 9, 3, 7, 6])
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  results = []
  for unroll in (False, True):
    # 2 steps in 2 chunks of 3 slots (the second padded) keep the unrolled
    # program small; compile time grows with the copies of the step.
    local_update = local_training.build_local_update(
        RESNET, optax.sgd(0.1), num_steps=2, batch_size=3, unroll=unroll)
    round_fn = round_lib.build_round(
        data, local_update, _fixed_sampler([0, 1, 2, 3, 4]), optax.sgd(1.0),
        chunk_size=3, unroll_chunks=unroll)
    state = round_lib.init_server_state(params, optax.sgd(1.0))
    new_state, _ = round_fn(state, jax.random.fold_in(key, 4))
    results.append(new_state.params)
  # The same arithmetic, compiled as straight-line code instead of loops.
  _assert_trees_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_fedbn_keeps_leaves_after_nonfinite_round(key):
  # A round whose training diverged for client 1 used to store NaN local
  # leaves for it, so its every later update was non-finite and left out.
  # One pixel at float32's largest value makes the convolutions overflow;
  # `build_round` rejects an inf pixel in the input.
  data, _, _, round_fn, state = _fedbn_setup(key, [6, 9, 4], [0, 1, 2])
  x = np.asarray(data.examples['x']).copy()
  x[1, 0, 0, 0, 0] = np.finfo(np.float32).max
  bad = data._replace(examples={**data.examples, 'x': jnp.asarray(x)})

  after_bad, metrics = round_fn(state, jax.random.fold_in(key, 1),
                                train_data=bad)
  after_clean, clean_metrics = round_fn(after_bad, jax.random.fold_in(key, 2))

  assert int(metrics['num_nonfinite']) == 1
  _assert_trees_close(
      jax.tree.map(lambda leaf: leaf[1], after_bad.local),
      jax.tree.map(lambda leaf: leaf[1], state.local), rtol=0, atol=0)
  assert int(clean_metrics['num_nonfinite']) == 0


@pytest.mark.parametrize('server', ['noise', 'weight_decay'])
def test_server_copy_of_local_leaves_never_moves(key, server):
  # Central noise and weight decay moved the server's copy of the norm
  # leaves, so the study listed no client as never trained.
  counts = [6, 9, 4, 7, 5]
  data = _population(counts)
  params = RESNET.init(key, jnp.zeros((1,) + SHAPE))
  mask = cnn.norm_mask(params)
  local_update = local_training.build_local_update(
      RESNET, optax.sgd(0.05), num_steps=2, batch_size=4)
  optimizer = optax.sgd(1.0)
  privacy = mechanisms.PrivacySettings()
  if server == 'noise':
    privacy = mechanisms.PrivacySettings(
        clip_norm=1.0, noise_multiplier=1.0, noise_kind='central',
        denominator=2.0)
  else:
    optimizer = optax.adamw(0.1, weight_decay=0.5)
  round_fn = round_lib.build_round(
      data, local_update, _fixed_sampler([0, 1]), optimizer,
      aggregator='mean', local_mask=mask, privacy=privacy)
  state = round_lib.init_server_state(
      params, optimizer, local_mask=mask, local_clients=len(counts))

  new_state, _ = round_fn(state, jax.random.fold_in(key, 1))

  _assert_trees_close(local_leaves.split(new_state.params, mask),
                      local_leaves.split(state.params, mask), rtol=0, atol=0)
  shared_moved = [
      not np.array_equal(new, old) for new, old in zip(
          jax.tree.leaves(local_leaves.zero_local(new_state.params, mask)),
          jax.tree.leaves(local_leaves.zero_local(state.params, mask)))]
  assert any(shared_moved)
