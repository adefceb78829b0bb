"""Visit order of local training: the batches of one full argsort per epoch.

`local_training._batch_indices` draws a step's batch from a full argsort of
the epoch's sort keys, and serves as the reference here.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.models import tabular


def _row_batches(key, num_examples, max_examples, **settings):
  """Return `batch_indices(step) -> (row indices, valid)` of `_batch_source`.

  The client's examples are the row indices themselves, so the rows that
  a batch reads are its row indices.
  """
  rows, batch_indices = local_training._batch_source(
      {'row': jnp.arange(max_examples)}, key, num_examples, **settings)

  def row_batch(step):
    indices, valid = batch_indices(step)
    return rows['row'][indices], valid

  return row_batch


def _all_batches(batch_indices, num_steps):
  indices, valid = jax.jit(jax.vmap(batch_indices))(jnp.arange(num_steps))
  return np.asarray(indices), np.asarray(valid)


def _reference_batches(key, num_examples, max_examples, batch_size, steps):
  return _all_batches(
      lambda step: local_training._batch_indices(
          key, step, jnp.int32(num_examples), max_examples, batch_size),
      steps,
  )


def _client_steps(num_examples, num_steps, batch_size, num_epochs):
  """Return the steps that a client takes, which the checks cover."""
  if num_examples == 0:
    return 0
  if num_epochs is None:
    return num_steps
  per_epoch = -(-num_examples // batch_size)
  return min(num_steps, num_epochs * per_epoch)


@pytest.mark.parametrize(
    'max_examples,num_steps,batch_size,num_epochs',
    list(itertools.product([7, 257], [1, 5, 12], [1, 16], [None, 2])),
)
def test_visited_batches_match_reference(
    max_examples, num_steps, batch_size, num_epochs
):
  assert local_training._visit_layout(
      max_examples, num_steps, batch_size, num_epochs) is not None

  @jax.jit
  def both(key, num_examples):
    visited = _row_batches(
        key, num_examples, max_examples, num_steps=num_steps,
        batch_size=batch_size, num_epochs=num_epochs, max_epochs=None,
    )
    reference = lambda step: local_training._batch_indices(
        key, step, num_examples, max_examples, batch_size)
    steps = jnp.arange(num_steps)
    return jax.vmap(visited)(steps), jax.vmap(reference)(steps)

  sizes = {0, 1, 2, max_examples // 3, max_examples - 1, max_examples}
  for num_examples in sorted(sizes):
    key = jax.random.key(num_examples + 1000 * max_examples)
    steps = _client_steps(num_examples, num_steps, batch_size, num_epochs)

    (indices, valid), (expected_indices, expected_valid) = both(
        key, jnp.int32(num_examples))

    np.testing.assert_array_equal(
        valid[:steps], expected_valid[:steps], err_msg=f'n={num_examples}')
    np.testing.assert_array_equal(
        indices[:steps], expected_indices[:steps],
        err_msg=f'n={num_examples}')


@pytest.mark.parametrize(
    'max_examples,num_steps,expected_rows',
    [(257, 5, 80), (80, 5, 80), (7, 12, 7)],
)
def test_rows_gathered_when_visits_fit(max_examples, num_steps, expected_rows):
  # 5 steps of 16 visit 80 positions, which fit in 80 or 257 padded rows.
  # A client of 7 rows needs 84 positions for 12 epochs, more than its 7
  # rows, so it keeps them and indexes through the visit order.
  rows, _ = local_training._batch_source(
      {'row': jnp.arange(max_examples)}, jax.random.key(0), jnp.int32(7),
      num_steps=num_steps, batch_size=16, num_epochs=None, max_epochs=None,
  )

  assert rows['row'].shape == (expected_rows,)


def test_visit_order_ignores_padding():
  key = jax.random.key(3)
  batches = []
  for max_examples in (40, 41, 100, 1000):
    batch_indices = _row_batches(
        key, jnp.int32(40), max_examples, num_steps=9, batch_size=16,
        num_epochs=None, max_epochs=None,
    )
    batches.append(_all_batches(batch_indices, 9))

  for indices, valid in batches[1:]:
    np.testing.assert_array_equal(indices, batches[0][0])
    np.testing.assert_array_equal(valid, batches[0][1])


def _first_epoch_sort_keys(key, num_examples):
  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      jax.random.fold_in(key, 0), jnp.arange(num_examples)
  )
  return np.asarray(jax.vmap(jax.random.uniform)(row_keys))


@pytest.mark.parametrize('visits', [4096, 8192])
def test_visit_order_ties_match_stable_argsort(visits):
  # Sort keys have 23 random bits, so 8192 rows usually contain equal keys.
  # The first key whose `visits` smallest sort keys include a tie is used.
  num_examples = 8192
  for seed in range(50):
    key = jax.random.key(seed)
    sort_keys = _first_epoch_sort_keys(key, num_examples)
    smallest = np.sort(sort_keys)[:visits]
    if len(np.unique(smallest)) < visits:
      break
  else:
    pytest.fail('no key among 50 gave tied sort keys')

  visit_order = local_training._visit_order(
      key, jnp.int32(num_examples), slots=num_examples, max_epochs=1,
      visits=visits,
  )
  permutation = local_training._epoch_permutation(
      key, 0, jnp.int32(num_examples), num_examples)

  np.testing.assert_array_equal(
      np.asarray(visit_order), np.asarray(permutation)[:visits])
  np.testing.assert_array_equal(
      np.asarray(permutation), np.argsort(sort_keys, kind='stable'))


def test_layout_beyond_packed_epochs():
  # One-row clients start one epoch per step, so 300 steps need 300 epochs.
  assert local_training._visit_layout(8, 300, 1, None) is None
  assert local_training._visit_layout(8, 300, 1, 253) is not None
  assert local_training._visit_layout(8, 253, 1, None)[1] == 253


def test_layout_slots_cover_every_client():
  max_examples, num_steps, batch_size = 300, 7, 16
  slots, max_epochs = local_training._visit_layout(
      max_examples, num_steps, batch_size, None)
  for num_examples in range(1, max_examples + 1):
    per_epoch = -(-num_examples // batch_size)
    epochs = -(-num_steps // per_epoch)
    assert epochs <= max_epochs, num_examples
    assert num_examples * epochs <= slots, num_examples


def test_fallback_beyond_packed_epochs_matches_reference():
  key = jax.random.key(5)
  num_steps = 300
  batch_indices = _row_batches(
      key, jnp.int32(3), 6, num_steps=num_steps, batch_size=2,
      num_epochs=None, max_epochs=None,
  )

  indices, valid = _all_batches(batch_indices, num_steps)
  expected_indices, expected_valid = _reference_batches(
      key, 3, 6, 2, num_steps)

  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_array_equal(valid, expected_valid)


def test_unequal_clients_update_matches_argsort_path(monkeypatch):
  # Clients of 1 to 256 rows in arrays padded to 256, trained once with the
  # visit order and once with an argsort per step.
  model = tabular.from_flax(tabular.MLP(2, (8,)), 2)
  rng = np.random.default_rng(0)
  sizes = np.array([1, 8, 15, 16, 17, 40, 64, 79, 80, 81, 200, 256])
  x = rng.normal(size=(len(sizes), 256, 5)).astype(np.float32)
  y = (x[..., 0] > 0).astype(np.int32)
  examples = {'x': jnp.asarray(x), 'y': jnp.asarray(y)}
  keys = jax.random.split(jax.random.key(4), len(sizes))
  params = model.init(jax.random.key(0), x[0, :1])

  def train():
    local_update = local_training.build_local_update(
        model, optax.sgd(0.1), num_steps=5, batch_size=16,
        min_client_examples=1,
    )
    return jax.jit(jax.vmap(local_update, (None, 0, 0, 0)))(
        params, examples, jnp.asarray(sizes, jnp.int32), keys)

  visited = train()
  monkeypatch.setattr(local_training, '_MAX_PACKED_EPOCHS', 0)
  argsorted = train()

  for leaf, expected in zip(
      jax.tree.leaves(visited), jax.tree.leaves(argsorted)
  ):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))
