"""Tests of the secret-sharing vertical logistic regression."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_med.errors import InputError
from fedjax_med.errors import TrainingDiverged
from fedjax_med.vertical import cost
from fedjax_med.vertical import plaintext
from fedjax_med.vertical import secret_sharing


def _problem(rows=120, widths=(3, 4, 2), seed=0):
  """Return party blocks and labels of a logistic problem with signal."""
  rng = np.random.default_rng(seed)
  blocks = tuple(rng.normal(size=(rows, width)) for width in widths)
  joined = np.concatenate(blocks, axis=1)
  truth = rng.normal(size=joined.shape[1])
  labels = (joined @ truth + 0.5 * rng.normal(size=rows) > 0).astype(int)
  return blocks, labels


def _max_difference(first, second):
  return max(np.abs(a - b).max() for a, b in zip(first, second))


def _top_byte_pvalue(values):
  """Return the chi-square p-value of uniform top bytes of uint64 values."""
  top = (np.asarray(values, np.uint64).ravel() >> np.uint64(56)).astype(int)
  counts = np.bincount(top, minlength=256)
  return stats.chisquare(counts).pvalue


@pytest.mark.parametrize('loss', ['exact', 'taylor'])
def test_matches_centralized(loss):
  blocks, labels = _problem()
  settings = plaintext.TrainingSettings(loss=loss, epochs=60)
  central = plaintext.train_centralized(blocks, labels, settings)
  result = secret_sharing.train(blocks, labels, settings)
  assert _max_difference(central.weights, result.model.weights) < 1e-5
  assert abs(central.intercept - result.model.intercept) < 1e-5
  np.testing.assert_allclose(result.model.losses, central.losses, atol=1e-6)
  # The model moved: this is not agreement at the zero initialization.
  assert max(np.abs(w).max() for w in central.weights) > 0.5


def test_taylor_differs_from_exact():
  blocks, labels = _problem()
  exact = plaintext.train_centralized(
      blocks, labels, plaintext.TrainingSettings(epochs=60))
  taylor = secret_sharing.train(
      blocks, labels, plaintext.TrainingSettings(loss='taylor', epochs=60))
  assert _max_difference(exact.weights, taylor.model.weights) > 1e-2


def test_minibatches_match_centralized():
  blocks, labels = _problem(rows=100)
  settings = plaintext.TrainingSettings(epochs=4, batch_size=32, l2=0.01)
  central = plaintext.train_centralized(blocks, labels, settings)
  result = secret_sharing.train(blocks, labels, settings)
  assert _max_difference(central.weights, result.model.weights) < 1e-5
  # 100 rows in batches of 32 is 3 steps per epoch, the last of 36 rows.
  assert len(plaintext.batch_indices(settings, 100)) == 12


@pytest.mark.parametrize('rows, batch_size, sizes', [
    (100, 32, [32, 32, 36]),
    (352, 50, [50] * 6 + [52]),
    (96, 32, [32, 32, 32]),
    (50, 32, [50]),
    (352, 117, [117, 117, 118]),
])
def test_batches_never_shorter_than_batch_size(rows, batch_size, sizes):
  # The remainder used to be a batch of its own: 352 rows in batches of
  # 50 ended every epoch with 2 rows, whose residuals a passive party with
  # 2 or more columns could solve for.
  settings = plaintext.TrainingSettings(epochs=3, batch_size=batch_size)
  steps = plaintext.batch_indices(settings, rows)
  per_epoch = len(sizes)
  assert [len(step) for step in steps] == sizes * 3
  for epoch in range(3):
    visited = np.concatenate(steps[epoch * per_epoch:(epoch + 1) * per_epoch])
    np.testing.assert_array_equal(np.sort(visited), np.arange(rows))


def test_small_batches_warn_of_residuals():
  blocks, labels = _problem(rows=40, widths=(3, 4, 2))
  settings = plaintext.TrainingSettings(epochs=1, batch_size=3)
  with pytest.warns(UserWarning, match="'party1' .4 columns.") as record:
    secret_sharing.train(blocks, labels, settings)
  message = str(record[0].message)
  assert "'party2'" not in message
  assert 'batch_size above 4' in message


def test_party_wider_than_data_warns_without_batch_fix():
  # With 10 rows and 12 columns, no batch size helps; the warning used to
  # suggest full batches, which were in use.
  blocks, labels = _problem(rows=10, widths=(3, 12))
  settings = plaintext.TrainingSettings(epochs=1)
  with pytest.warns(UserWarning, match='no batch size helps with 10 rows'):
    secret_sharing.train(blocks, labels, settings)


def test_batches_wider_than_parties_do_not_warn():
  blocks, labels = _problem(rows=40, widths=(3, 4, 2))
  settings = plaintext.TrainingSettings(epochs=1, batch_size=5)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    secret_sharing.train(blocks, labels, settings)


def test_timed_training_times_each_epoch():
  blocks, labels = _problem(rows=100)
  settings = plaintext.TrainingSettings(epochs=4, batch_size=32, l2=0.01)
  model, seconds = plaintext.train_centralized_timed(blocks, labels, settings)
  central = plaintext.train_centralized(blocks, labels, settings)
  assert len(seconds) == 4
  assert all(value > 0 for value in seconds)
  assert _max_difference(model.weights, central.weights) == 0
  assert model.losses == central.losses


def test_encode_decode_round_trip():
  with jax.enable_x64(True):
    x = jnp.asarray([-3.25, -1e-6, 0.0, 2.5, 1000.125])
    decoded = secret_sharing.decode(secret_sharing.encode(x, 20), 20)
  np.testing.assert_allclose(decoded, x, atol=2.0**-21)


def test_logit_sum_reconstructs_exactly():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    partial = [jnp.asarray(rng.normal(size=500) * 5) for _ in range(3)]
    z, messages = secret_sharing.secure_logit_sum(
        jax.random.key(0), partial, 20)
    expected = secret_sharing.decode(
        sum(secret_sharing.encode(u, 20) for u in partial), 20)
  np.testing.assert_array_equal(z, expected)
  np.testing.assert_allclose(
      z, np.sum([np.asarray(u) for u in partial], axis=0), atol=3 * 2.0**-21)
  # 3 parties: 6 shares between parties and 2 sums to the label holder.
  assert sorted(messages) == sorted([
      'share 0->1', 'share 0->2', 'share 1->0', 'share 1->2', 'share 2->0',
      'share 2->1', 'sum 1->0', 'sum 2->0'])


def test_label_holder_view_is_uniform():
  """The label holder sees uniform shares, not the small encoded logits."""
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    partial = [jnp.asarray(rng.normal(size=4000)) for _ in range(3)]
    _, messages = secret_sharing.secure_logit_sum(
        jax.random.key(3), partial, 20)
    # The encoded logit itself has top byte 0x00 or 0xff only.
    assert _top_byte_pvalue(secret_sharing.encode(partial[1], 20)) < 1e-6
  for name in ('share 1->0', 'share 2->0', 'sum 1->0', 'sum 2->0'):
    assert _top_byte_pvalue(messages[name]) > 1e-4, name


def test_shares_to_passive_parties_ignore_inputs():
  """Shares that go to parties 1 and up are pure randomness of the key."""
  with jax.enable_x64(True):
    first = [jnp.full(50, 1.0), jnp.full(50, 2.0)]
    second = [jnp.full(50, -7.0), jnp.full(50, 2.0)]
    _, a = secret_sharing.secure_logit_sum(jax.random.key(4), first, 20)
    _, b = secret_sharing.secure_logit_sum(jax.random.key(4), second, 20)
  np.testing.assert_array_equal(a['share 0->1'], b['share 0->1'])
  assert not np.array_equal(a['share 1->0'], np.zeros(50, np.uint64))


def test_shared_gradient_matches_product():
  rng = np.random.default_rng(5)
  features = rng.normal(size=(300, 4)) * 3
  residuals = rng.uniform(-1, 1, size=300)
  with jax.enable_x64(True):
    product, messages = secret_sharing.shared_gradient(
        jax.random.key(6), jnp.asarray(features), jnp.asarray(residuals), 20)
    dealer_sum = messages['dealer c party'] + messages['dealer c holder']
    expected_c = messages['dealer A'].T @ messages['dealer b']
  np.testing.assert_array_equal(dealer_sum, expected_c)
  np.testing.assert_allclose(product, features.T @ residuals, atol=1e-3)
  # Neither input travels: E and f are uniform in the ring.
  assert _top_byte_pvalue(messages['E']) > 1e-4
  assert _top_byte_pvalue(messages['f']) > 1e-4


def test_ledger_counts_one_step():
  blocks, labels = _problem(rows=40, widths=(2, 3, 1))
  names = ('holder', 'a', 'b')
  result = secret_sharing.train(
      blocks, labels, plaintext.TrainingSettings(epochs=1), names)
  counts = result.ledger.as_dict()
  rows, logit_sums = 40, 3  # the step and the two monitored losses
  # Per logit sum, each party sends a share to 2 others; a and b also send
  # their sum to the holder. Per passive party, the holder sends f and its
  # share of the gradient.
  assert counts['holder']['messages_sent'] == logit_sums * 2 + 2 * 2
  assert counts['a']['messages_sent'] == logit_sums * 3 + 1
  assert counts['a']['bytes_sent'] == (
      logit_sums * 3 * rows * 8 + rows * 3 * 8)  # plus E: [40, 3]
  assert counts['b']['bytes_received'] == (
      logit_sums * 2 * rows * 8 + (rows + 1) * 8 + (rows * 1 + 1) * 8)
  # The dealer sends A and a share of C to each passive party, and b and a
  # share of C to the holder, once per passive party.
  assert counts['dealer']['messages_sent'] == 4 * 2
  assert counts['dealer']['bytes_sent'] == 8 * (
      (rows * 3 + 3) + (rows * 1 + 1) + 2 * rows + 3 + 1)


def test_epochs_ledger_scales_with_epochs():
  # Dividing the whole ledger by the epochs counted the loss evaluation
  # after the last epoch as well, so one epoch seemed to cost more in a
  # short run than in a long one.
  blocks, labels = _problem(rows=40)
  costs = []
  for epochs in (1, 3):
    result = secret_sharing.train(
        blocks, labels, plaintext.TrainingSettings(epochs=epochs))
    costs.append(result.epochs_ledger.as_dict(per=epochs))
    assert result.ledger.as_dict() != result.epochs_ledger.as_dict()
  assert costs[0] == costs[1]


def test_same_seed_same_model():
  blocks, labels = _problem(rows=50)
  settings = plaintext.TrainingSettings(epochs=3, batch_size=16, seed=7)
  first = secret_sharing.train(blocks, labels, settings)
  second = secret_sharing.train(blocks, labels, settings)
  for a, b in zip(first.model.weights, second.model.weights):
    np.testing.assert_array_equal(a, b)


def test_ring_overflow_raises():
  blocks, labels = _problem(rows=64)
  huge = (blocks[0], blocks[1] * 1e7, blocks[2])
  with pytest.raises(InputError, match='past the ring limit'):
    secret_sharing.train(huge, labels,
                         plaintext.TrainingSettings(epochs=1), fraction_bits=24)


@pytest.mark.parametrize('change, message', [
    (lambda b, y: (b[:1], y), 'at least 2 parties'),
    (lambda b, y: ((b[0], b[1][:-1], b[2]), y), 'feature block 1'),
    (lambda b, y: ((b[0], np.where(b[1] > 1, np.nan, b[1]), b[2]), y),
     'NaN'),
    (lambda b, y: (b, y * 2), 'labels contain 2'),
    (lambda b, y: ((b[0], b[1][:, :0], b[2]), y), 'block 1 has no columns'),
    (lambda b, y: (tuple(x[:0] for x in b), y[:0]), 'at least one row'),
    # The imaginary part was dropped with only a ComplexWarning.
    (lambda b, y: ((b[0] + 5j * b[0], b[1], b[2]), y),
     'feature block 0 has dtype complex128'),
    (lambda b, y: (b, y.astype(complex)), 'labels have dtype complex128'),
])
def test_invalid_inputs_raise(change, message):
  blocks, labels = _problem(rows=30)
  blocks, labels = change(blocks, labels)
  with pytest.raises(InputError, match=message):
    secret_sharing.train(blocks, labels, plaintext.TrainingSettings(epochs=1))


def test_logit_overflow_raises():
  blocks, labels = _problem(rows=64)
  settings = plaintext.TrainingSettings(epochs=3, learning_rate=1e13)
  with pytest.raises(InputError, match='partial logits. reached'):
    secret_sharing.train(blocks, labels, settings)


# One patient: the residual warning is expected.
@pytest.mark.filterwarnings('ignore:a step covers only')
def test_logit_sum_of_three_parties_checked():
  # Each party's logit passed the per-party check while the sum of three
  # wrapped around the ring: the model came back with weights of -3.9e6
  # instead of -1.3e6, and no error.
  blocks = [np.array([[2.6e6]])] * 3
  labels = np.array([0])
  settings = plaintext.TrainingSettings(loss='exact', learning_rate=1.0,
                                        epochs=2)
  expected = plaintext.train_centralized(blocks, labels, settings)
  assert expected.weights[0][0] == pytest.approx(-1.3e6)
  with pytest.raises(InputError, match='partial logits. reached'):
    secret_sharing.train(blocks, labels, settings)


# One patient: the residual warning is expected.
@pytest.mark.filterwarnings('ignore:a step covers only')
def test_final_loss_checked_against_ring():
  # The loss after the last epoch was never checked, so it came back as
  # 1.59e12 instead of 0 while the weights were right.
  blocks = [np.array([[4e6]])] * 2
  settings = plaintext.TrainingSettings(learning_rate=1.0, epochs=1)
  with pytest.raises(InputError, match='in epoch 1'):
    secret_sharing.train(blocks, np.array([0]), settings)


def test_predict_logits_checks_sum_of_parties():
  # Three blocks whose logits each fit the ring decoded to -6.1e12
  # instead of +1.15e13.
  value = 2.0 ** 41.8
  model = plaintext.LogisticModel(weights=(np.ones(1),) * 3, intercept=0.0,
                                  losses=())
  with pytest.raises(InputError, match='sum of .partial logits'):
    secret_sharing.predict_logits(model, [np.array([[value]])] * 3,
                                  jax.random.key(0))


def test_infinite_weights_raise():
  blocks, labels = _problem(rows=32)
  huge = (blocks[0] * 1e200, blocks[1], blocks[2])
  settings = plaintext.TrainingSettings(epochs=2, learning_rate=1e200)
  with np.errstate(over='ignore', invalid='ignore'):
    with pytest.raises(TrainingDiverged, match='epoch 1'):
      plaintext.train_centralized(huge, labels, settings)
  with pytest.raises((TrainingDiverged, InputError)):
    secret_sharing.train(huge, labels, settings)


@pytest.mark.parametrize('names, message', [
    (('a', 'a', 'b'), 'distinct name'),
    (('a', 'dealer', 'b'), 'distinct name'),
    # Names that are not strings, or empty, went into the ledger, and a
    # string was split into one name per character.
    ((1, 'b', 'c'), 'nonempty strings'),
    (('', 'b', 'c'), 'nonempty strings'),
    ('abc', 'single value'),
])
def test_invalid_party_names_raise(names, message):
  blocks, labels = _problem(rows=30)
  with pytest.raises(InputError, match=message):
    secret_sharing.train(blocks, labels, plaintext.TrainingSettings(epochs=1),
                         names)


def test_invalid_fraction_bits_raises():
  blocks, labels = _problem(rows=30)
  with pytest.raises(InputError, match='fraction_bits=30'):
    secret_sharing.train(blocks, labels, plaintext.TrainingSettings(epochs=1),
                         fraction_bits=30)


@pytest.mark.parametrize('changes, message', [
    ({'loss': 'hinge'}, "loss='hinge'"),
    ({'batch_size': 0}, 'batch_size=0'),
    ({'learning_rate': float('inf')}, 'learning_rate=inf'),
    ({'learning_rate': '0.5'}, "learning_rate='0.5'"),
    ({'l2': float('inf')}, 'l2=inf'),
    ({'epochs': True}, 'epochs=True'),
    ({'seed': -1}, 'seed=-1'),
    ({'seed': 2**32}, 'seed=4294967296'),
    ({'seed': 1.5}, 'seed=1.5'),
])
def test_invalid_settings_raise(changes, message):
  with pytest.raises(InputError, match=message):
    plaintext.TrainingSettings(**changes)


def test_predict_logits_match_plain_logits():
  blocks, labels = _problem(rows=40)
  settings = plaintext.TrainingSettings(loss='exact', epochs=3)
  model = secret_sharing.train(blocks, labels, settings).model

  logits = secret_sharing.predict_logits(model, blocks, jax.random.key(1))

  plain = sum(x @ w for x, w in zip(blocks, model.weights)) + model.intercept
  np.testing.assert_allclose(logits, plain, atol=1e-4)


def test_predict_logits_of_no_rows_and_numpy_bits():
  blocks, labels = _problem(rows=40)
  settings = plaintext.TrainingSettings(loss='exact', epochs=1)
  model = secret_sharing.train(blocks, labels, settings,
                               fraction_bits=np.int64(16)).model

  empty = secret_sharing.predict_logits(
      model, [x[:0] for x in blocks], jax.random.key(1))
  some = secret_sharing.predict_logits(
      model, blocks, jax.random.key(1), fraction_bits=np.int64(16))

  assert empty.shape == (0,)
  assert some.shape == (40,)


def test_predict_logits_ledger_without_names():
  # With a ledger but no party names, recording the messages raised a
  # TypeError on None.
  blocks, labels = _problem(rows=20)
  settings = plaintext.TrainingSettings(loss='exact', epochs=1)
  model = secret_sharing.train(blocks, labels, settings).model
  ledger = cost.CostLedger(('party0', 'party1', 'party2'))

  secret_sharing.predict_logits(model, blocks, jax.random.key(1),
                                ledger=ledger)

  assert ledger.counts['party1']['messages_sent'] > 0
  with pytest.raises(InputError, match='the ledger has parties'):
    secret_sharing.predict_logits(model, blocks, jax.random.key(1),
                                  ledger=cost.CostLedger(('a', 'b')))


def _rows_with_nan(block):
  changed = block.copy()
  changed[3, 0] = np.nan
  return changed


@pytest.mark.parametrize('change, message', [
    (lambda blocks: blocks[:2], '2 feature blocks for a model of 3 parties'),
    (lambda blocks: (blocks[1], blocks[0], blocks[2]),
     'feature block 0 has 4 columns; the model has 3'),
    (lambda blocks: (blocks[0], blocks[1][:10], blocks[2]),
     'feature block 1 has shape'),
    (lambda blocks: (_rows_with_nan(blocks[0]),) + tuple(blocks[1:]),
     'NaN or infinite'),
    (lambda blocks: (blocks[0], blocks[1] * 1e15, blocks[2]),
     'past the ring limit'),
])
def test_predict_logits_invalid_inputs_raise(change, message):
  blocks, labels = _problem(rows=40)
  settings = plaintext.TrainingSettings(loss='exact', epochs=1)
  model = secret_sharing.train(blocks, labels, settings).model

  with pytest.raises(InputError, match=message):
    secret_sharing.predict_logits(model, change(blocks), jax.random.key(1))
  with pytest.raises(InputError, match='PRNG key'):
    secret_sharing.predict_logits(model, blocks, 1)
