"""Paillier vertical logistic regression: agreement, privacy of messages, costs.

Every run uses a 512-bit key, which is insecure and serves only to keep the
tests fast.
"""

import collections

import numpy as np
import pytest
from phe import paillier as phe_paillier

from fedjax_med.errors import InputError
from fedjax_med.errors import TrainingDiverged
from fedjax_med.vertical import cost
from fedjax_med.vertical import paillier
from fedjax_med.vertical import plaintext

KEY_BITS = 512  # insecure, for speed only
NUM_ROWS = 37
WIDTHS = (2, 3, 2)


def _data(widths=WIDTHS, num_rows=NUM_ROWS, seed=0):
  """Return aligned blocks and labels in which hosts 1 and 2 correlate.

  The correlation makes the host-host cross term of z**2 large, so a loss
  that dropped it would be visibly wrong.
  """
  rng = np.random.default_rng(seed)
  blocks = [rng.normal(size=(num_rows, width)) for width in widths]
  if len(widths) > 2:
    shared = min(widths[1], widths[2])
    blocks[2][:, :shared] += 2.0 * blocks[1][:, :shared]
  logits = sum(x[:, 0] for x in blocks) + 0.5 * rng.normal(size=num_rows)
  return tuple(blocks), (logits > 0).astype(np.int64)


def _settings(**overrides):
  values = dict(loss='taylor', learning_rate=0.3, epochs=4, l2=0.01)
  values.update(overrides)
  return plaintext.TrainingSettings(**values)


@pytest.fixture(scope='module', params=[None, 16], ids=['full', 'mini'])
def run(request):
  """A 3-party run, full-batch or with batches of 16, 16 and 5 rows."""
  features, labels = _data()
  settings = _settings(batch_size=request.param)
  result = paillier.train(features, labels, settings, key_bits=KEY_BITS,
                          record_messages=True)
  return features, labels, settings, result


def test_train_matches_centralized(run):
  features, labels, settings, result = run
  reference = plaintext.train_centralized(features, labels, settings)
  for got, expected in zip(result.model.weights, reference.weights,
                           strict=True):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
  assert result.model.intercept == pytest.approx(reference.intercept,
                                                 rel=0, abs=1e-9)
  np.testing.assert_allclose(result.model.losses, reference.losses, rtol=0,
                             atol=1e-9)


def test_train_learns(run):
  _, _, settings, result = run
  assert len(result.model.losses) == settings.epochs + 1
  assert result.model.losses[-1] < result.model.losses[0] - 0.1
  assert len(result.epoch_seconds) == settings.epochs
  assert len(result.loss_seconds) == settings.epochs + 1
  assert result.key_bits == KEY_BITS


def test_loss_needs_host_cross_term(run):
  features, labels, _, result = run
  model = result.model
  expected = plaintext.loss_value('taylor', model.logits(features), labels)
  assert model.losses[-1] == pytest.approx(expected, rel=0, abs=1e-9)
  # The loss's share of 2 u_1 u_2 in z**2 / 8, which only hosts 1 and 2
  # can compute together.
  u1 = features[1] @ model.weights[1]
  u2 = features[2] @ model.weights[2]
  cross_term = np.sum(u1 * u2) / (4 * len(labels))
  assert abs(model.losses[-1] - cross_term - expected) > 1e-2


@pytest.mark.parametrize('widths', [(2, 3), (1, 2, 2, 3)],
                         ids=['2 parties', '4 parties'])
def test_two_and_four_parties_match_centralized(widths):
  features, labels = _data(widths, num_rows=20, seed=1)
  settings = _settings(epochs=2)
  result = paillier.train(features, labels, settings, key_bits=KEY_BITS)
  reference = plaintext.train_centralized(features, labels, settings)
  for got, expected in zip(result.model.weights, reference.weights,
                           strict=True):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
  np.testing.assert_allclose(result.model.losses, reference.losses, rtol=0,
                             atol=1e-9)


def test_parties_receive_only_ciphertexts(run):
  *_, result = run
  plaintext_contents = {'public_key', 'masked_gradient', 'loss'}
  for message in result.messages:
    assert message.sender != message.receiver
    if message.sender == paillier.ARBITER:
      assert message.content in plaintext_contents
      if message.content == 'loss':
        assert message.receiver == 'party0'
      continue
    assert message.payload
    for item in message.payload:
      assert isinstance(item, phe_paillier.EncryptedNumber), message.content


def test_arbiter_sees_masked_gradients_only(run):
  features, labels, settings, result = run
  (public_key,) = result.messages[0].payload
  n = public_key.n
  masked = [m for m in result.messages if m.content == 'masked_gradient']
  steps = plaintext.batch_indices(settings, len(labels))
  assert len(masked) == len(steps) * len(features)

  # With zero weights the first step's residuals are 1/2 - y, so its true
  # gradient sums are known here.
  rows = steps[0]
  residuals = 0.5 - labels[rows]
  for k, message in enumerate(masked[:len(features)]):
    assert message.receiver == f'party{k}'
    true_sums = list(features[k][rows].T @ residuals)
    exponents = [3 * paillier.EXPONENT] * len(true_sums)
    if k == 0:
      true_sums.append(np.sum(residuals))
      exponents.append(2 * paillier.EXPONENT)
    assert len(message.payload) == len(true_sums)
    for value, true_sum, exponent in zip(message.payload, true_sums,
                                         exponents):
      assert value != round(true_sum * 16**-exponent) % n

  # A uniform mask mod n leaves no decrypted value near a gradient sum, whose
  # magnitude here is below 1e3.
  for message in masked:
    for value in message.payload:
      signed = value if value < n // 2 else value - n
      assert abs(signed) / 16**(-3 * paillier.EXPONENT) > 1e6


def _strip_own_logits(residual, own_logit, n):
  """Return [[d]] / [[u]]**(1/4 encoding): the host's attack on [[d]].

  With two parties d = (u_0 + u_1) / 4 + 1/2 - y, so unless the guest
  re-randomized [[d]], the result is (1 + n)**m mod n**2 for the guest's
  plaintext m = u_0 / 4 + 1/2 - y, and the host reads m = (result - 1) / n.
  """
  quarter = 2**62  # 1/4 at exponent -16
  nsquare = n * n
  inverse = pow(own_logit.ciphertext(be_secure=False), -quarter, nsquare)
  return residual.ciphertext(be_secure=False) * inverse % nsquare


def test_hosts_cannot_strip_own_logits():
  features, labels = _data((1, 2), num_rows=8)
  result = paillier.train(features, labels, _settings(epochs=1),
                          key_bits=KEY_BITS, record_messages=True)
  (public_key,) = result.messages[0].payload
  n = public_key.n
  own_logits = next(m for m in result.messages
                    if m.content == 'encrypted_partial_logits').payload
  residuals = next(m for m in result.messages
                   if m.content == 'encrypted_residuals').payload
  for residual, own_logit in zip(residuals, own_logits, strict=True):
    assert (_strip_own_logits(residual, own_logit, n) - 1) % n != 0

  # The same attack reads a residual that was not re-randomized.
  exposed = own_logit * phe_paillier.EncodedNumber(public_key, 2**62, -16)
  exposed += phe_paillier.EncodedNumber(public_key, 12345, -32)
  assert (_strip_own_logits(exposed, own_logit, n) - 1) // n == 12345


def _expected_counts(num_rows, widths, steps, epochs, key_bits,
                     final_loss=True, key_distribution=True):
  """Derive every party's ledger counts from the protocol's message flow."""
  hosts = len(widths) - 1
  names = [f'party{k}' for k in range(len(widths))]
  guest, arbiter = names[0], paillier.ARBITER
  counts = {name: collections.Counter() for name in names + [arbiter]}
  ciphertext_bytes = 2 * key_bits // 8
  mod_n_bytes = key_bits // 8

  def send(sender, receiver, num_bytes):
    counts[sender]['messages_sent'] += 1
    counts[sender]['bytes_sent'] += num_bytes
    counts[receiver]['messages_received'] += 1
    counts[receiver]['bytes_received'] += num_bytes

  for name in names if key_distribution else ():
    send(arbiter, name, mod_n_bytes)  # the public key

  n = num_rows
  for _ in range(epochs + final_loss):  # loss evaluations
    for host in names[1:]:
      counts[host]['encryptions'] += n + 1  # [[u_h]] and its square sum
      send(host, guest, n * ciphertext_bytes)
      send(host, guest, ciphertext_bytes)
    for j in range(1, hosts + 1):
      for k in range(j + 1, hosts + 1):
        send(names[j], names[k], n * ciphertext_bytes)
        counts[names[k]]['ciphertext_scalings'] += n
        counts[names[k]]['ciphertext_additions'] += n - 1
        counts[names[k]]['encryptions'] += 1  # re-randomization
        send(names[k], guest, ciphertext_bytes)
    pairs = hosts * (hosts - 1) // 2
    counts[guest]['ciphertext_additions'] += (
        n * (hosts - 1) + (n - 1) + hosts + pairs + 1)
    counts[guest]['ciphertext_scalings'] += n
    counts[guest]['encryptions'] += 1
    send(guest, arbiter, ciphertext_bytes)
    counts[arbiter]['decryptions'] += 1
    send(arbiter, guest, 8)

  steps_per_epoch = len(steps) // epochs
  for step, rows in enumerate(steps):
    b = len(rows)
    if step % steps_per_epoch:  # the first step reuses the loss's [[u_h]]
      for host in names[1:]:
        counts[host]['encryptions'] += b
        send(host, guest, b * ciphertext_bytes)
    counts[guest]['ciphertext_additions'] += b * hosts + b
    counts[guest]['ciphertext_scalings'] += b
    counts[guest]['encryptions'] += b
    for host in names[1:]:
      send(guest, host, b * ciphertext_bytes)
    for k, name in enumerate(names):
      sums = widths[k] + (k == 0)
      counts[name]['ciphertext_scalings'] += widths[k] * b
      counts[name]['ciphertext_additions'] += sums * b
      counts[name]['encryptions'] += sums
      send(name, arbiter, sums * ciphertext_bytes)
      counts[arbiter]['decryptions'] += sums
      send(arbiter, name, sums * mod_n_bytes)
  return counts


@pytest.mark.parametrize('field, whole_run', [
    ('ledger', True), ('epochs_ledger', False)])
def test_ledger_counts_match_formulas(run, field, whole_run):
  # The per-epoch cost divided the whole ledger, with the key distribution
  # and the loss evaluation after the last epoch, by the epochs: 20% too
  # high at 5 epochs.
  features, labels, settings, result = run
  steps = plaintext.batch_indices(settings, len(labels))
  expected = _expected_counts(len(labels), WIDTHS, steps, settings.epochs,
                              KEY_BITS, final_loss=whole_run,
                              key_distribution=whole_run)
  got = getattr(result, field).as_dict()
  assert set(got) == set(expected)
  for party, counters in got.items():
    for counter, value in counters.items():
      assert value == expected[party][counter], (party, counter)


def test_epochs_ledger_leaves_out_earlier_counts():
  # A given ledger's earlier counts (1000 encryptions) were part of the
  # per-epoch cost.
  features, labels = _data((1, 1), num_rows=6)
  names = ('hospital', 'lab')
  ledger = cost.CostLedger(names + (paillier.ARBITER,))
  ledger.add('hospital', 'encryptions', 1000)
  alone = paillier.train(features, labels, _settings(epochs=1),
                         party_names=names, key_bits=KEY_BITS)

  with_earlier = paillier.train(
      features, labels, _settings(epochs=1), party_names=names,
      key_bits=KEY_BITS, ledger=ledger)

  assert (with_earlier.epochs_ledger.as_dict()
          == alone.epochs_ledger.as_dict())


def test_ledger_fills_given_ledger():
  features, labels = _data((1, 1), num_rows=6)
  names = ('hospital', 'lab')
  ledger = cost.CostLedger(names + (paillier.ARBITER,))
  result = paillier.train(features, labels, _settings(epochs=1),
                          party_names=names, key_bits=KEY_BITS, ledger=ledger)
  assert result.ledger is ledger
  assert ledger.counts['lab']['encryptions'] > 0
  assert ledger.counts[paillier.ARBITER]['decryptions'] > 0


def test_same_seed_gives_same_model():
  features, labels = _data((2, 2), num_rows=10)
  settings = _settings(epochs=2)
  first = paillier.train(features, labels, settings, key_bits=KEY_BITS)
  second = paillier.train(features, labels, settings, key_bits=KEY_BITS)
  for a, b in zip(first.model.weights, second.model.weights, strict=True):
    np.testing.assert_array_equal(a, b)
  assert first.model.losses == second.model.losses


def test_exact_loss_raises():
  features, labels = _data((1, 1), num_rows=6)
  with pytest.raises(InputError, match="loss='exact'.*use loss='taylor'"):
    paillier.train(features, labels, _settings(loss='exact'),
                   key_bits=KEY_BITS)


def _invalid_cases():
  features, labels = _data((2, 2), num_rows=8)
  short = features[1][:-1]
  nan = features[1].copy()
  nan[3, 1] = np.nan
  return {
      'one party': ((features[0],), labels, {}, 'at least 2 parties'),
      'short block': ((features[0], short), labels, {}, r'shape \(7, 2\)'),
      '1-D block': ((features[0], features[1][:, 0]), labels, {},
                    'feature block 1'),
      'NaN feature': ((features[0], nan), labels, {}, 'NaN'),
      'label 2': (features, np.where(labels == 1, 2, 0), {}, 'contain 2'),
      '2-D labels': (features, labels[:, None], {}, 'labels have shape'),
      'key too small': (features, labels, {'key_bits': 256}, 'key_bits=256'),
      'key not bytes': (features, labels, {'key_bits': 1020},
                        'key_bits=1020'),
      'key float': (features, labels, {'key_bits': 512.0}, 'key_bits=512.0'),
      # Scaled by 2**64 to encode, such values overflowed to inf and raised
      # a bare OverflowError; 1e200 raised TrainingDiverged.
      'huge feature': ((features[0], features[1] * 1e300), labels, {},
                       'feature block 1 has a value of magnitude .* too '
                       'large to encode for a 512-bit key'),
      'large feature': ((features[0] * 1e200, features[1]), labels, {},
                        'feature block 0'),
      'negative seed': (features, labels, {'seed': -1}, 'integer >= 0.*got -1'),
      'names count': (features, labels, {'party_names': ('a',)},
                      '1 names for 2'),
      'names repeat': (features, labels, {'party_names': ('a', 'a')},
                       'distinct'),
      'name arbiter': (features, labels, {'party_names': ('a', 'arbiter')},
                       'distinct'),
      'ledger parties': (features, labels,
                         {'ledger': cost.CostLedger(('party0', 'party1'))},
                         'ledger has parties'),
  }


@pytest.mark.parametrize('kind', [np.int64, np.uint16])
def test_numpy_key_bits_accepted(kind):
  # np.int64(1024) was rejected as not a multiple of 8 >= 512, and
  # np.uint16 overflowed in the feature check.
  features, labels = _data((1, 1), num_rows=6)
  result = paillier.train(features, labels, _settings(epochs=1),
                          key_bits=kind(KEY_BITS))
  assert result.key_bits == KEY_BITS
  assert type(result.key_bits) is int


@pytest.mark.parametrize('key_bits', [1024, 2048, 4096])
def test_feature_check_at_large_keys(key_bits):
  # The limit 2**(key_bits - 67) overflowed a float at 2048 bits.
  features, labels = _data((1, 1), num_rows=6)
  paillier._check_inputs(features, labels, _settings(), key_bits, 0)
  huge = (features[0] * 1e300, features[1])
  with pytest.raises(InputError, match=f'encode for a {key_bits}-bit key'):
    paillier._check_inputs(huge, labels, _settings(), key_bits, 0)


def test_huge_learning_rate_diverges_cleanly():
  # The first step's weights overflowed to inf when scaled for encoding,
  # which raised a bare OverflowError.
  features, labels = _data((1, 1), num_rows=6)
  with pytest.raises(TrainingDiverged, match='does not fit the 512-bit key'):
    paillier.train(features, labels, _settings(epochs=2, learning_rate=1e300),
                   key_bits=KEY_BITS)


@pytest.mark.parametrize('case', list(_invalid_cases()))
def test_invalid_input_raises(case):
  features, labels, kwargs, message = _invalid_cases()[case]
  kwargs = {'key_bits': KEY_BITS, **kwargs}
  with pytest.raises(InputError, match=message):
    paillier.train(features, labels, _settings(epochs=1), **kwargs)

