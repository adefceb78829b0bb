"""Vertical logistic regression under Paillier encryption, with an arbiter.

The protocol is the coordinated (arbiter-based) hetero logistic regression of
FATE. Party 0, the guest, has the labels and the intercept. Parties 1..m,
the hosts, have only feature columns. The arbiter generates the Paillier key
pair, sends the public key to every party and is the only party that
decrypts. Paillier ciphertexts support addition and multiplication by a
plaintext but not the sigmoid, so the parties train the Taylor loss of
`plaintext` (`loss='taylor'`), whose residual z/4 + 1/2 - y is linear in the
logit z. [[v]] below is the encryption of v.

One gradient step on the rows of a batch:

  1. Each host h encrypts its partial logits u_h = X_h w_h and sends [[u_h]]
     to the guest.
  2. The guest adds its own u_0 = X_0 w_0 + b to get [[z]], forms the
     residuals [[d]] = [[z]] / 4 + (1/2 - y), re-randomizes them and sends
     them to every host.
  3. Each party k computes its gradient sums [[X_k^T d]] homomorphically (the
     guest also [[sum d]] for its intercept), adds a mask drawn uniformly
     from Z_n, re-randomizes and sends the result to the arbiter.
  4. The arbiter decrypts the masked sums and returns them. Each party
     subtracts its mask mod n, divides by the batch size, adds l2 * w_k and
     steps w_k -= learning_rate * g_k.

Because each mask is uniform mod n, every value the arbiter decrypts from a
gradient is uniform and independent of the gradient.

Before each epoch and after the last, the parties evaluate the mean Taylor
loss log 2 - s z / 2 + z**2 / 8 (s = 2y - 1) on all rows. The guest cannot
multiply two ciphertexts, so the parties expand z**2 = (sum_k u_k)**2:

  * each host h sends the guest [[u_h]] and [[sum_i u_h,i**2 / (8n)]];
  * for every pair of hosts j < k, host j sends [[u_j]] to host k, which
    returns the cross term [[sum_i u_j,i u_k,i / (4n)]] to the guest;
  * the guest adds its own terms, which pair u_0 and s with [[u_h]], and the
    plaintext terms of u_0 alone, then sends [[loss]] to the arbiter, which
    decrypts it and returns it.

The first step of each epoch reuses the [[u_h]] of that loss evaluation,
which used the same weights, so the hosts encrypt nothing new for it.

Every ciphertext that a party sends after computing on it is re-randomized
(multiplied by r**n for a fresh random r). Otherwise a host could divide the
residuals by its own [[u_h]] and read the guest's plaintext additions, and
the arbiter, which can recover the randomness of any ciphertext with the
private key, would learn prod_i r_i**x_i, a value that depends on the
sender's features. `CostLedger` counts each re-randomization as an encryption
because it costs the same modular exponentiation.

Encoding: each plaintext is an integer multiple of 2**-64 (phe exponent -16
in its base 16). Partial logits, features and other plaintext factors are
rounded to that grid once. Products carry 128 or 192 fractional bits
exactly, so decrypted results differ from float64 arithmetic by rounding
only. The tests check agreement with `plaintext.train_centralized` to 1e-9.
"""

import dataclasses
import math
import time
from typing import Sequence

import numpy as np
from phe import paillier

from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.errors import TrainingDiverged
from fedjax_med.vertical import cost
from fedjax_med.vertical import plaintext

ARBITER = 'arbiter'
# The smallest key accepted. An encrypted gradient carries 192 fractional
# bits and must stay below n/3, so 512 bits leaves about 317 bits for its
# integer part. Keys under 2048 bits are insecure and serve only for tests.
MIN_KEY_BITS = 512
# phe exponent (base 16) of one encoding level: plaintexts are multiples of
# 16**-16 = 2**-64, and a product of two of them has exponent -32.
EXPONENT = -16


@dataclasses.dataclass(frozen=True)
class Message:
  """One message of the protocol, as the receiver gets it.

  Attributes:
    sender: party name, or 'arbiter'.
    receiver: party name, or 'arbiter'.
    content: what the payload is, e.g. 'encrypted_residuals'.
    payload: `phe.paillier.EncryptedNumber` objects, except in the arbiter's
      messages, which carry the public key, masked gradient sums (ints mod n)
      or the loss (float).
  """

  sender: str
  receiver: str
  content: str
  payload: tuple


@dataclasses.dataclass(frozen=True)
class PaillierResult:
  """A model trained by the Paillier protocol, with its costs.

  Attributes:
    model: the trained weights and the losses that the arbiter decrypted.
    ledger: messages, bytes and Paillier operations of the whole run, key
      distribution included.
    epochs_ledger: the counts of the epochs alone: without the key
      distribution, the loss evaluation after the last epoch and anything
      a given `ledger` held before. Each epoch counts the evaluation at its
      start; divided by the epochs, they are the cost of one epoch.
    epoch_seconds: wall time of each epoch's gradient steps.
    loss_seconds: wall time of each loss evaluation, `epochs + 1` values.
    key_bits: bit length of the Paillier modulus n.
    messages: every message in order if `record_messages` was set, else None.
  """

  model: plaintext.LogisticModel
  ledger: cost.CostLedger
  epochs_ledger: cost.CostLedger
  epoch_seconds: tuple[float, ...]
  loss_seconds: tuple[float, ...]
  key_bits: int
  messages: tuple[Message, ...] | None


class _Session:
  """The public key, ledger and message log of one training run.

  Every Paillier operation and message goes through this class so that the
  ledger counts exactly what the protocol computes and sends.
  """

  def __init__(self, public_key, key_bits: int, names: tuple[str, ...],
               ledger: cost.CostLedger, messages: list[Message] | None):
    self.public_key = public_key
    self.key_bits = key_bits
    self.guest = names[0]
    self.hosts = names[1:]
    self.ledger = ledger
    self.messages = messages

  def encode(self, values: np.ndarray,
             exponent: int) -> list[paillier.EncodedNumber]:
    """Round `values` to multiples of 16**exponent and encode them mod n."""
    values = np.asarray(values, np.float64).reshape(-1)
    if not np.isfinite(values).all():
      raise TrainingDiverged('a weight or logit became NaN or infinite; '
                             'lower learning_rate or standardize the features')
    with np.errstate(over='ignore'):
      scaled = np.rint(values * 2.0**(-4 * exponent))
    n = self.public_key.n
    encoded = []
    for value, mantissa in zip(values, scaled):
      # A finite value can overflow to inf when scaled.
      if not np.isfinite(mantissa):
        raise TrainingDiverged(
            f'a value of magnitude {abs(value):.3g} does not fit the '
            f'{self.key_bits}-bit key; lower learning_rate or standardize '
            'the features')
      mantissa = int(mantissa)
      if abs(mantissa) > self.public_key.max_int:
        raise TrainingDiverged(
            f'a value of magnitude {abs(mantissa) * 16.0**exponent:.3g} does '
            f'not fit the {self.key_bits}-bit key; lower learning_rate or '
            'standardize the features')
      encoded.append(paillier.EncodedNumber(self.public_key, mantissa % n,
                                            exponent))
    return encoded

  def encrypt(self, party: str, values: np.ndarray,
              exponent: int = EXPONENT) -> list[paillier.EncryptedNumber]:
    """Encrypt `values` with fresh randomness, as `party`."""
    encoded = self.encode(values, exponent)
    self.ledger.add(party, 'encryptions', len(encoded))
    return [self.public_key.encrypt(e) for e in encoded]

  def rerandomize(self, party: str,
                  ciphertexts: list[paillier.EncryptedNumber]) -> None:
    """Multiply each ciphertext in place by r**n for a fresh random r."""
    for ciphertext in ciphertexts:
      ciphertext.obfuscate()
    self.ledger.add(party, 'encryptions', len(ciphertexts))

  def add_plaintexts(
      self, party: str, ciphertexts: list[paillier.EncryptedNumber],
      values: np.ndarray) -> list[paillier.EncryptedNumber]:
    """Return [[c_i + v_i]], `values` encoded at each ciphertext's exponent."""
    sums = []
    for ciphertext, value in zip(ciphertexts, np.reshape(values, -1),
                                 strict=True):
      (encoded,) = self.encode(value, ciphertext.exponent)
      sums.append(ciphertext + encoded)
    self.ledger.add(party, 'ciphertext_additions', len(sums))
    return sums

  def add_ciphertexts(
      self, party: str, first: list[paillier.EncryptedNumber],
      second: list[paillier.EncryptedNumber]
  ) -> list[paillier.EncryptedNumber]:
    """Return the elementwise sums of two equally long ciphertext lists."""
    sums = []
    for a, b in zip(first, second, strict=True):
      _check_exponents(a, b)
      sums.append(a + b)
    self.ledger.add(party, 'ciphertext_additions', len(sums))
    return sums

  def scale(self, party: str, ciphertexts: list[paillier.EncryptedNumber],
            values: np.ndarray) -> list[paillier.EncryptedNumber]:
    """Return [[c_i * v_i]], each `v_i` encoded at exponent `EXPONENT`."""
    encoded = self.encode(values, EXPONENT)
    products = [c * e for c, e in zip(ciphertexts, encoded, strict=True)]
    self.ledger.add(party, 'ciphertext_scalings', len(products))
    return products

  def total(self, party: str, ciphertexts: list[paillier.EncryptedNumber]
            ) -> paillier.EncryptedNumber:
    """Return the sum of a nonempty list of ciphertexts."""
    result = ciphertexts[0]
    for ciphertext in ciphertexts[1:]:
      _check_exponents(result, ciphertext)
      result = result + ciphertext
    self.ledger.add(party, 'ciphertext_additions', len(ciphertexts) - 1)
    return result

  def dot(self, party: str, ciphertexts: list[paillier.EncryptedNumber],
          values: np.ndarray) -> paillier.EncryptedNumber:
    """Return [[sum_i c_i * v_i]]."""
    return self.total(party, self.scale(party, ciphertexts, values))

  def send(self, sender: str, receiver: str, content: str,
           payload: Sequence) -> list:
    """Record one message in the ledger and log, and return its payload.

    A ciphertext takes 2 * key_bits / 8 bytes (it lives mod n**2), the public
    key and a plaintext int mod n take key_bits / 8, and a float takes 8.
    """
    num_bytes = 0
    for item in payload:
      if isinstance(item, paillier.EncryptedNumber):
        num_bytes += 2 * math.ceil(self.key_bits / 8)
      elif isinstance(item, (int, paillier.PaillierPublicKey)):
        num_bytes += math.ceil(self.key_bits / 8)
      elif isinstance(item, float):
        num_bytes += 8
      else:
        raise TypeError(f'cannot size a payload item of type {type(item)}')
    self.ledger.send(sender, receiver, num_bytes)
    if self.messages is not None:
      self.messages.append(Message(sender, receiver, content, tuple(payload)))
    return list(payload)


def _check_exponents(a: paillier.EncryptedNumber,
                     b: paillier.EncryptedNumber) -> None:
  """Raise unless `a + b` needs no exponent alignment, which is uncounted."""
  if a.exponent != b.exponent:
    raise AssertionError(f'ciphertext exponents {a.exponent} and {b.exponent}'
                         ' differ; phe would align them with an uncounted '
                         'scaling')


def _decode(public_key, encoding: int, exponent: int) -> float:
  """Return the signed value of an encoding mod n at `exponent`.

  Raises:
    TrainingDiverged: if the encoding is in the overflow band between n/3 and
      2n/3.
  """
  if encoding <= public_key.max_int:
    mantissa = encoding
  elif encoding >= public_key.n - public_key.max_int:
    mantissa = encoding - public_key.n
  else:
    # NOTE: a value beyond n in magnitude wraps around without this error.
    raise TrainingDiverged('a decrypted value overflowed the plaintext range '
                           'of the key; lower learning_rate or standardize '
                           'the features')
  return mantissa / 16**(-exponent)


class _Arbiter:
  """The only holder of the private key."""

  def __init__(self, session: _Session, private_key):
    self.session = session
    self.private_key = private_key

  def decrypt_masked(self, party: str,
                     ciphertexts: list[paillier.EncryptedNumber]) -> list[int]:
    """Decrypt masked sums to ints mod n and send them back to `party`."""
    values = [self.private_key.decrypt_encoded(c).encoding for c in ciphertexts]
    self.session.ledger.add(ARBITER, 'decryptions', len(values))
    return self.session.send(ARBITER, party, 'masked_gradient', values)

  def decrypt_loss(self, ciphertext: paillier.EncryptedNumber) -> float:
    """Decrypt the encrypted loss and send it to the guest."""
    encoding = self.private_key.decrypt_encoded(ciphertext).encoding
    self.session.ledger.add(ARBITER, 'decryptions', 1)
    loss = _decode(self.private_key.public_key, encoding, ciphertext.exponent)
    (loss,) = self.session.send(ARBITER, self.session.guest, 'loss', [loss])
    return loss


def _evaluate_loss(session: _Session, arbiter: _Arbiter,
                   blocks: list[np.ndarray], labels: np.ndarray,
                   weights: list[np.ndarray], intercept: float
                   ) -> tuple[float, dict[str, list]]:
  """Run the loss evaluation on all rows.

  Returns:
    The decrypted mean Taylor loss, and the [[u_h]] that each host sent the
    guest, by host name.
  """
  guest, hosts = session.guest, session.hosts
  n = labels.shape[0]
  host_logits = {}
  received = {}  # host -> [[u_h]] as the guest received it
  terms = []  # ciphertexts at exponent 2 * EXPONENT that the guest adds up
  for k, host in enumerate(hosts, start=1):
    u = blocks[k] @ weights[k]
    host_logits[host] = u
    encrypted = session.encrypt(host, u)
    square_sum = session.encrypt(host, np.sum(u**2) / (8 * n), 2 * EXPONENT)
    received[host] = session.send(host, guest, 'encrypted_partial_logits',
                                  encrypted)
    terms += session.send(host, guest, 'encrypted_square_sum', square_sum)

  # Cross terms 2 u_j u_k of z**2 between hosts j < k: host k multiplies the
  # [[u_j]] it receives by its own plaintext u_k.
  for j, first in enumerate(hosts):
    for second in hosts[j + 1:]:
      forwarded = session.send(first, second, 'encrypted_partial_logits',
                               received[first])
      cross = session.dot(second, forwarded, host_logits[second] / (4 * n))
      session.rerandomize(second, [cross])
      terms += session.send(second, guest, 'encrypted_cross_term', [cross])

  # The guest's terms: u_0 pairs with every [[u_h]] through the sum over
  # hosts, and the terms of u_0 and s alone are plaintext.
  u0 = blocks[0] @ weights[0] + intercept
  sign = 2.0 * labels - 1.0
  host_sum = received[hosts[0]]
  for host in hosts[1:]:
    host_sum = session.add_ciphertexts(guest, host_sum, received[host])
  linear = session.dot(guest, host_sum, (u0 / 4 - sign / 2) / n)
  loss = session.total(guest, [linear] + terms)
  own = math.log(2.0) - np.sum(sign * u0) / (2 * n) + np.sum(u0**2) / (8 * n)
  (loss,) = session.add_plaintexts(guest, [loss], own)
  session.rerandomize(guest, [loss])
  (loss,) = session.send(guest, ARBITER, 'encrypted_loss', [loss])
  return arbiter.decrypt_loss(loss), received


def _send_partial_logits(session: _Session, blocks: list[np.ndarray],
                         weights: list[np.ndarray],
                         rows: np.ndarray) -> dict[str, list]:
  """Run step 1: every host sends [[u_h]] of `rows` to the guest."""
  received = {}
  for k, host in enumerate(session.hosts, start=1):
    encrypted = session.encrypt(host, blocks[k][rows] @ weights[k])
    received[host] = session.send(host, session.guest,
                                  'encrypted_partial_logits', encrypted)
  return received


def _send_residuals(
    session: _Session, blocks: list[np.ndarray], labels: np.ndarray,
    weights: list[np.ndarray], intercept: float, rows: np.ndarray,
    host_logits: dict[str, list],
) -> dict[str, list]:
  """Run step 2: the guest forms [[d]] of `rows` and sends it to every host.

  Returns:
    [[d]] as each party received it, the guest's own copy included, by party
    name.
  """
  guest, hosts = session.guest, session.hosts
  u0 = blocks[0][rows] @ weights[0] + intercept
  logits = session.add_plaintexts(guest, host_logits[hosts[0]], u0)
  for host in hosts[1:]:
    logits = session.add_ciphertexts(guest, logits, host_logits[host])
  quarter = session.scale(guest, logits, np.full(len(rows), 0.25))
  residuals = session.add_plaintexts(guest, quarter, 0.5 - labels[rows])
  session.rerandomize(guest, residuals)
  received = {guest: residuals}
  for host in hosts:
    received[host] = session.send(guest, host, 'encrypted_residuals',
                                  residuals)
  return received


def _masked_gradient_sums(
    session: _Session, arbiter: _Arbiter, name: str, rng: np.random.Generator,
    x: np.ndarray, residuals: list, with_intercept: bool,
) -> np.ndarray:
  """Run steps 3 and 4 for one party: its gradient sums through the arbiter.

  Returns:
    X^T d over the batch, followed by sum(d) if `with_intercept`.
  """
  sums = [session.dot(name, residuals, x[:, j]) for j in range(x.shape[1])]
  if with_intercept:
    sums.append(session.total(name, residuals))
  # Each mask is uniform mod n (to a statistical distance below 2**-128), so
  # the arbiter's decryption g + R mod n is uniform whatever g is.
  n = session.public_key.n
  mask_bytes = math.ceil(session.key_bits / 8) + 16
  masks = [int.from_bytes(rng.bytes(mask_bytes), 'little') % n for _ in sums]
  masked = [
      c + paillier.EncodedNumber(session.public_key, mask, c.exponent)
      for c, mask in zip(sums, masks)
  ]
  session.ledger.add(name, 'ciphertext_additions', len(masked))
  session.rerandomize(name, masked)
  masked = session.send(name, ARBITER, 'encrypted_masked_gradient', masked)
  decrypted = arbiter.decrypt_masked(name, masked)
  return np.array([
      _decode(session.public_key, (value - mask) % n, c.exponent)
      for value, mask, c in zip(decrypted, masks, sums)
  ])


def _gradient_step(
    session: _Session, arbiter: _Arbiter, rngs: list[np.random.Generator],
    blocks: list[np.ndarray], labels: np.ndarray, weights: list[np.ndarray],
    intercept: float, rows: np.ndarray, host_logits: dict[str, list],
    settings: plaintext.TrainingSettings,
) -> tuple[list[np.ndarray], float]:
  """Run steps 2 to 4 on `rows`, given the guest's [[u_h]] of those rows.

  Returns:
    The new weights of every party and the new intercept.
  """
  residuals = _send_residuals(session, blocks, labels, weights, intercept,
                              rows, host_logits)
  new_weights = []
  for k, name in enumerate((session.guest,) + session.hosts):
    sums = _masked_gradient_sums(session, arbiter, name, rngs[k],
                                 blocks[k][rows], residuals[name],
                                 with_intercept=k == 0)
    gradient = sums / len(rows)
    if k == 0:
      intercept -= settings.learning_rate * float(gradient[-1])
      gradient = gradient[:-1]
    gradient = gradient + settings.l2 * weights[k]
    new_weights.append(weights[k] - settings.learning_rate * gradient)
  return new_weights, intercept


def train(
    features: Sequence[np.ndarray],
    labels: np.ndarray,
    settings: plaintext.TrainingSettings,
    party_names: Sequence[str] | None = None,
    key_bits: int = 2048,
    seed: int = 0,
    ledger: cost.CostLedger | None = None,
    record_messages: bool = False,
) -> PaillierResult:
  """Train the vertical logistic regression under Paillier encryption.

  Steps visit the rows of `plaintext.batch_indices(settings, num_rows)`, so the
  result equals `plaintext.train_centralized` on the same settings up to the
  2**-64 encoding grid and float64 rounding.

  The key pair and the Paillier randomness of encryption and
  re-randomization come from the operating system through phe, and none of
  them changes a decrypted result. The masks come from one numpy Generator
  per party, seeded from `seed`. So for fixed inputs, settings and seed the
  model is the same in every run, though the ciphertexts differ.

  Args:
    features: one aligned `[rows, columns_k]` float block per party, party 0
      (the guest, which has the labels and the intercept) first.
    labels: `[rows]` labels in {0, 1}, held by party 0.
    settings: gradient descent settings with `loss='taylor'`.
    party_names: one name per block for the ledger and the message log;
      defaults to `party0`, `party1`, ...
    key_bits: bit length of the Paillier modulus, a multiple of 8 and at
      least `MIN_KEY_BITS`. Use 2048 or more outside tests.
    seed: seed of the parties' gradient masks.
    ledger: ledger to record into, with parties `party_names + ('arbiter',)`;
      a new one by default.
    record_messages: whether to keep every message in the result.

  Returns:
    The model, the ledger, the times and, if requested, the messages.

  Raises:
    InputError: for a loss other than 'taylor', mismatched shapes, non-finite
      features, labels outside {0, 1}, an invalid key size, seed, party name
      or ledger.
    TrainingDiverged: when a weight or a decrypted value leaves the range
      that the key can encode.
  """
  blocks = plaintext.as_float_blocks(features)
  labels = np.asarray(labels)
  _check_inputs(blocks, labels, settings, key_bits, seed)
  key_bits = int(key_bits)
  names = plaintext.party_names(party_names, len(blocks), ARBITER)
  if ledger is None:
    ledger = cost.CostLedger(names + (ARBITER,))
  elif tuple(ledger.parties) != names + (ARBITER,):
    raise InputError(f'ledger has parties {ledger.parties}; expected '
                     f'{names + (ARBITER,)}, the party names and the arbiter')
  y = labels.astype(np.float64)

  public_key, private_key = paillier.generate_paillier_keypair(
      n_length=key_bits)
  session = _Session(public_key, key_bits, names, ledger,
                     [] if record_messages else None)
  arbiter = _Arbiter(session, private_key)
  for name in names:
    session.send(ARBITER, name, 'public_key', [public_key])
  # `psi.party_generators` spawns SeedSequence(seed) for the parties' PSI
  # keys, so the masks take a sequence of their own.
  rngs = [
      np.random.default_rng(child)
      for child in np.random.SeedSequence(
          federated.derived_seed('paillier_masks', seed)).spawn(len(names))
  ]

  weights = [np.zeros(x.shape[1]) for x in blocks]
  intercept = 0.0
  steps = plaintext.batch_indices(settings, y.shape[0])
  plaintext.warn_if_gradients_reveal_residuals(steps, blocks, names)
  steps_per_epoch = len(steps) // settings.epochs
  losses, epoch_seconds, loss_seconds = [], [], []
  before_epochs = ledger.copy()
  for epoch in range(settings.epochs):
    start = time.perf_counter()
    loss, all_rows_logits = _evaluate_loss(session, arbiter, blocks, y,
                                           weights, intercept)
    losses.append(loss)
    loss_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    for step in range(steps_per_epoch):
      rows = steps[epoch * steps_per_epoch + step]
      if step == 0:
        # The loss evaluation sent [[u_h]] of all rows under these weights.
        host_logits = {host: [c[i] for i in rows]
                       for host, c in all_rows_logits.items()}
      else:
        host_logits = _send_partial_logits(session, blocks, weights, rows)
      weights, intercept = _gradient_step(session, arbiter, rngs, blocks, y,
                                          weights, intercept, rows,
                                          host_logits, settings)
    epoch_seconds.append(time.perf_counter() - start)
  epochs_ledger = ledger.copy().since(before_epochs)
  start = time.perf_counter()
  loss, _ = _evaluate_loss(session, arbiter, blocks, y, weights, intercept)
  losses.append(loss)
  loss_seconds.append(time.perf_counter() - start)

  model = plaintext.LogisticModel(weights=tuple(weights), intercept=intercept,
                                  losses=tuple(losses))
  messages = None if session.messages is None else tuple(session.messages)
  return PaillierResult(model, ledger, epochs_ledger, tuple(epoch_seconds),
                        tuple(loss_seconds), key_bits, messages)


def _check_inputs(blocks, labels, settings, key_bits, seed):
  """Raise InputError for inputs the protocol cannot train on."""
  if settings.loss != 'taylor':
    raise InputError(
        f'loss={settings.loss!r} is invalid for Paillier training because '
        'Paillier cannot evaluate the sigmoid on ciphertexts; use '
        "loss='taylor'")
  if len(blocks) < 2:
    raise InputError(f'vertical training needs at least 2 parties, got '
                     f'{len(blocks)} feature blocks')
  plaintext.check_blocks(blocks, labels)
  if (isinstance(key_bits, (bool, np.bool_))
      or not isinstance(key_bits, (int, np.integer))
      or key_bits < MIN_KEY_BITS or key_bits % 8):
    raise InputError(f'key_bits={key_bits!r} is invalid; use a multiple of 8 '
                     f'>= {MIN_KEY_BITS} (2048 or more outside tests)')
  # Features are encoded as plaintexts with 64 fractional bits, and the
  # encoding must stay below n / 3, about 2**(key_bits - 2).
  # The encoding is computed in float64 first, which ends at 2**1024.
  exponent = min(int(key_bits) - 3, 1023) + 4 * EXPONENT
  for k, x in enumerate(blocks):
    largest = float(np.max(np.abs(x)))
    if not largest < 2.0**exponent:
      raise InputError(
          f'feature block {k} has a value of magnitude {largest:.3g}, too '
          f'large to encode for a {key_bits}-bit key (limit 2**{exponent}); '
          'standardize the features')
  federated.check_seed(seed)
