"""Vertical logistic regression with additive secret sharing in Z_(2^64).

Party 0 holds the labels and the intercept; every party k holds a block of
columns X_k and its weights w_k. One gradient step on rows R runs:

1. Secure sum of the logits. Each party encodes its partial logits
   u_k = X_k[R] w_k (plus the intercept at party 0) in fixed point and
   splits them into one uniformly random additive share per party. Each
   party adds up the shares it received and sends that sum to the label
   holder, who reconstructs z = sum_k u_k and nothing else: any subset of
   shares short of all of them is uniformly distributed.
2. The label holder computes the residual r = dloss/dz from z and its
   labels, exactly (sigmoid) or with the Taylor loss.
3. Gradient of each passive party k, X_k^T r, without either side seeing
   the other's input. A dealer (an offline party that generates correlated
   randomness and sees no data) hands party k a uniform matrix A and the
   label holder a uniform vector b, plus additive shares of C = A^T b.
   Party k sends E = X_k - A, the label holder sends f = r - b; both are
   uniformly distributed. Then X_k^T r = E^T f + A^T f + E^T b + C, where
   party k computes the first two terms plus its share of C, the label
   holder the third plus its share, and the label holder sends its sum to
   party k, which alone learns its own gradient.
4. Every party steps its own weights; the label holder uses X_0^T r and
   mean(r) in the clear.

All ring arithmetic is uint64 with wraparound, under `jax.enable_x64`, and
vectorized over rows. Values are fixed point with `fraction_bits` bits, so
a product of two encoded values carries 2 * fraction_bits. Every random
share comes from the run's PRNG key, split per step and per party.
"""

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.vertical import cost
from fedjax_med.vertical import plaintext

RING_BYTES = 8
DEALER = 'dealer'


def encode(x: jax.Array, fraction_bits: int) -> jax.Array:
  """Return `round(x * 2**fraction_bits)` as uint64 in two's complement.

  Values whose encoding does not fit int64 saturate and NaN encodes to 0, so
  callers check the range first, as `train` and `predict_logits` do.
  """
  scaled = jnp.round(jnp.asarray(x, jnp.float64) * 2.0**fraction_bits)
  return jax.lax.bitcast_convert_type(scaled.astype(jnp.int64), jnp.uint64)


def decode(v: jax.Array, fraction_bits: int) -> jax.Array:
  """Return the float64 value of the signed fixed-point ring element `v`."""
  signed = jax.lax.bitcast_convert_type(v, jnp.int64)
  return signed.astype(jnp.float64) / 2.0**fraction_bits


def share(key: jax.Array, values: jax.Array, num_parties: int) -> jax.Array:
  """Split uint64 `values` into `num_parties` additive shares.

  Returns:
    `[num_parties, *values.shape]` uint64 whose sum mod 2**64 is `values`.
    Shares 1 and up are uniform; share 0 completes the sum.
  """
  random = jax.random.bits(key, (num_parties - 1, *values.shape), jnp.uint64)
  return jnp.concatenate([(values - random.sum(axis=0))[None], random])


def secure_logit_sum(
    key: jax.Array, partial_logits: Sequence[jax.Array], fraction_bits: int
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Run step 1: the label holder learns `sum(partial_logits)` only.

  Args:
    key: PRNG key of this sum.
    partial_logits: one float64 `[rows]` vector per party.
    fraction_bits: fixed-point precision.

  Returns:
    `(z, messages)`: the label holder's reconstructed float64 logits and the
    messages sent, keyed `'share k->j'` and `'sum j->0'`.
  """
  num_parties = len(partial_logits)
  keys = jax.random.split(key, num_parties)
  # shares[k][j] is the share of party k's logits that party j receives.
  shares = [
      share(keys[k], encode(u, fraction_bits), num_parties)
      for k, u in enumerate(partial_logits)
  ]
  messages = {}
  for k in range(num_parties):
    for j in range(num_parties):
      if j != k:
        messages[f'share {k}->{j}'] = shares[k][j]
  held = [sum(shares[k][j] for k in range(num_parties))
          for j in range(num_parties)]
  for j in range(1, num_parties):
    messages[f'sum {j}->0'] = held[j]
  return decode(sum(held), fraction_bits), messages


def shared_gradient(
    key: jax.Array,
    features: jax.Array,
    residuals: jax.Array,
    fraction_bits: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Run step 3: return `features.T @ residuals` to the features' owner.

  Args:
    key: PRNG key of the dealer's randomness for this product.
    features: the passive party's `[rows, columns]` block.
    residuals: the label holder's `[rows]` residuals.
    fraction_bits: fixed-point precision of each input.

  Returns:
    `(product, messages)`: the float64 `[columns]` product as the passive
    party reconstructs it, and the online messages (`'E'`, `'f'`,
    `'holder share'`) and dealer messages (`'dealer A'`, `'dealer b'`,
    `'dealer c party'`, `'dealer c holder'`).
  """
  rows, columns = features.shape
  key_a, key_b, key_c = jax.random.split(key, 3)
  a = jax.random.bits(key_a, (rows, columns), jnp.uint64)
  b = jax.random.bits(key_b, (rows,), jnp.uint64)
  c_party, c_holder = share(key_c, a.T @ b, 2)

  e = encode(features, fraction_bits) - a  # party -> holder
  f = encode(residuals, fraction_bits) - b  # holder -> party
  party_share = e.T @ f + a.T @ f + c_party
  holder_share = e.T @ b + c_holder  # holder -> party
  product = decode(party_share + holder_share, 2 * fraction_bits)
  messages = {
      'E': e, 'f': f, 'holder share': holder_share,
      'dealer A': a, 'dealer b': b,
      'dealer c party': c_party, 'dealer c holder': c_holder,
  }
  return product, messages


@functools.partial(jax.jit, static_argnames=('loss', 'fraction_bits'))
def _step(key, weights, intercept, features, labels, learning_rate, l2, *,
          loss, fraction_bits):
  """Run one protocol step on the given rows; return new parameters."""
  num_parties = len(features)
  rows = labels.shape[0]
  keys = jax.random.split(key, num_parties)
  partial = [x @ w for x, w in zip(features, weights)]
  partial[0] = partial[0] + intercept
  z, messages = secure_logit_sum(keys[0], partial, fraction_bits)
  if loss == 'exact':
    r = jax.nn.sigmoid(z) - labels
  else:
    r = 0.5 + z / 4 - labels

  gradients = [features[0].T @ r / rows]
  largest_logit = _largest_logit_sum(partial)
  largest_product = jnp.zeros(())
  for k in range(1, num_parties):
    product, product_messages = shared_gradient(
        keys[k], features[k], r, fraction_bits)
    gradients.append(product / rows)
    messages |= {f'{name} {k}': v for name, v in product_messages.items()}
    largest_product = jnp.maximum(
        largest_product,
        jnp.abs(features[k]).sum(axis=0).max() * jnp.abs(r).max())
  new_weights = tuple(
      w - learning_rate * (g + l2 * w) for w, g in zip(weights, gradients))
  new_intercept = intercept - learning_rate * r.mean()
  return new_weights, new_intercept, messages, (largest_logit,
                                                largest_product)


def _largest_logit_sum(partial):
  """Return the largest sum of |partial logits| over the parties, per row.

  The label holder decodes the sum of every party's encoded logits, so it
  is this sum, not each party's part, that must fit the ring.
  """
  return jnp.max(sum(jnp.abs(u) for u in partial), initial=0.0)


@functools.partial(jax.jit, static_argnames=('fraction_bits',))
def _logits(key, weights, intercept, features, *, fraction_bits):
  """Return the label holder's logits of `features`, by secure sum.

  Returns:
    `(z, messages, largest)`: as `secure_logit_sum`, and the largest sum of
    |partial logits| of a row, which the caller checks against the ring.
  """
  partial = [x @ w for x, w in zip(features, weights)]
  partial[0] = partial[0] + intercept
  z, messages = secure_logit_sum(key, partial, fraction_bits)
  return z, messages, _largest_logit_sum(partial)


def _record(ledger: cost.CostLedger, names: Sequence[str],
            messages: dict[str, jax.Array]) -> None:
  """Record each message of a step in `ledger` from its name and size."""
  for label, value in messages.items():
    num_bytes = value.size * RING_BYTES
    kind, _, route = label.rpartition(' ')
    if '->' in route:
      sender, receiver = (names[int(i)] for i in route.split('->'))
    else:
      k = names[int(route)]
      sender, receiver = {
          'E': (k, names[0]),
          'f': (names[0], k),
          'holder share': (names[0], k),
          'dealer A': (DEALER, k),
          'dealer b': (DEALER, names[0]),
          'dealer c party': (DEALER, k),
          'dealer c holder': (DEALER, names[0]),
      }[kind]
    ledger.send(sender, receiver, num_bytes)


@dataclasses.dataclass(frozen=True)
class SecretSharingResult:
  """A model trained by the secret-sharing protocol, with its costs.

  Attributes:
    model: the trained weights; `losses` were computed by the label holder
      from securely summed logits.
    ledger: messages and bytes of the whole run, the dealer included.
    epochs_ledger: the same counts without the loss evaluation after the
      last epoch, so each epoch counts only the evaluation at its start.
      Divided by the epochs, they are the cost of one epoch.
    epoch_seconds: wall time of each epoch's gradient steps, without the
      loss evaluation before it. The first epoch also compiles the step, so
      summarize the times with their median.
    fraction_bits: fixed-point precision used.
  """

  model: plaintext.LogisticModel
  ledger: cost.CostLedger
  epochs_ledger: cost.CostLedger
  epoch_seconds: tuple[float, ...]
  fraction_bits: int


def predict_logits(
    model: plaintext.LogisticModel,
    features: Sequence[np.ndarray],
    key: jax.Array,
    fraction_bits: int = 20,
    ledger: cost.CostLedger | None = None,
    party_names: Sequence[str] | None = None,
) -> np.ndarray:
  """Return the label holder's logits of new rows, by secure sum.

  Args:
    model: a trained model, one weight vector per party.
    features: one `[rows, columns_k]` block per party, in the order of
      `model.weights`, with the same rows in every block.
    key: JAX PRNG key of the shares.
    fraction_bits: fixed-point precision, in [8, 24].
    ledger: where to record the messages, if given.
    party_names: the parties' names in the ledger.

  Raises:
    InputError: for a block count or column count that differs from the
      model, blocks with different row counts, non-finite features, a
      key that is not a PRNG key, or a partial logit too large for the ring.
  """
  federated.check_key(key)
  features = [np.asarray(x, np.float64) for x in features]
  if len(features) != len(model.weights):
    raise InputError(
        f'{len(features)} feature blocks for a model of '
        f'{len(model.weights)} parties; pass one block per party, in the '
        'order the model was trained with')
  if not features or features[0].ndim != 2:
    raise InputError('feature block 0 must be [rows, columns]; got shape '
                     f'{features[0].shape if features else None}')
  for k, x in enumerate(features[1:], start=1):
    if x.ndim != 2 or x.shape[0] != features[0].shape[0]:
      raise InputError(
          f'feature block {k} has shape {x.shape}; block 0 has '
          f'{features[0].shape[0]} rows, and every party passes the same '
          'aligned rows')
  for k, (x, w) in enumerate(zip(features, model.weights)):
    if x.shape[1] != np.shape(w)[0]:
      raise InputError(
          f'feature block {k} has {x.shape[1]} columns; the model has '
          f'{np.shape(w)[0]} weights for party {k}. Pass the blocks in the '
          'order the model was trained with')
    if not np.isfinite(x).all():
      raise InputError(f'feature block {k} has a NaN or infinite value; '
                       'impute or drop those rows first')
  fraction_bits = _check_fraction_bits(fraction_bits)
  names = plaintext.party_names(party_names, len(features), DEALER)
  if ledger is not None and not set(names) <= set(ledger.parties):
    raise InputError(f'the ledger has parties {ledger.parties}; it needs '
                     f'{names}, the names of the parties')
  partial = [np.abs(x @ np.asarray(w, np.float64))
             for x, w in zip(features, model.weights)]
  partial[0] = partial[0] + abs(model.intercept)
  largest = float(np.max(sum(partial), initial=0.0))
  limit = 2.0 ** (62 - fraction_bits)
  if not largest < limit:
    raise InputError(
        f'a row\'s sum of |partial logits| over the parties reaches '
        f'{largest:.3g}, past the ring limit {limit:.3g} at '
        f'fraction_bits={fraction_bits}; lower fraction_bits or standardize '
        'the features as in training')
  with jax.enable_x64(True):
    z, messages, _ = _logits(
        key, tuple(jnp.asarray(w) for w in model.weights),
        jnp.asarray(model.intercept, jnp.float64),
        tuple(jnp.asarray(x) for x in features),
        fraction_bits=fraction_bits)
    if ledger is not None:
      _record(ledger, names, messages)
    return np.asarray(z)


def train(
    features: Sequence[np.ndarray],
    labels: np.ndarray,
    settings: plaintext.TrainingSettings,
    party_names: Sequence[str] | None = None,
    fraction_bits: int = 20,
) -> SecretSharingResult:
  """Train the vertical logistic regression by secret sharing.

  Args:
    features: one aligned `[rows, columns_k]` block per party, party 0 (the
      label holder) first.
    labels: `[rows]` labels in {0, 1}, held by party 0.
    settings: gradient descent settings, as `plaintext.train_centralized`
      takes them; `settings.seed` also seeds the shares and the dealer.
    party_names: names for the ledger; defaults to `party0`, `party1`, ...
    fraction_bits: fixed-point precision, in [8, 24]. A product of two
      encoded values needs 2 * fraction_bits bits plus the magnitude of the
      sum, inside 63 bits.

  Returns:
    The model, the ledger and the epoch times.

  Raises:
    InputError: for mismatched shapes, empty blocks, non-finite features,
      labels outside {0, 1}, or a logit or gradient that would overflow the
      ring.
    TrainingDiverged: if the weights become NaN or infinite.
  """
  features = plaintext.as_float_blocks(features)
  labels = np.asarray(labels)
  _check_inputs(features, labels, fraction_bits)
  fraction_bits = int(fraction_bits)
  names = plaintext.party_names(party_names, len(features), DEALER)
  ledger = cost.CostLedger(names + (DEALER,))
  steps = plaintext.batch_indices(settings, labels.shape[0])
  plaintext.warn_if_gradients_reveal_residuals(steps, features, names)
  steps_per_epoch = len(steps) // settings.epochs
  # Overflow is ruled out while every row's sum of |encoded partial
  # logits| over the parties stays below 2**62, and every column sum of
  # |x| * |r| of a gradient product, which carries 2 * fraction_bits, does too.
  limits = (2.0 ** (62 - fraction_bits), 2.0 ** (62 - 2 * fraction_bits))

  with jax.enable_x64(True):
    key = jax.random.key(settings.seed)
    step_key, loss_key = jax.random.split(key)
    weights = tuple(jnp.zeros(x.shape[1], jnp.float64) for x in features)
    intercept = jnp.zeros((), jnp.float64)
    train_x = tuple(jnp.asarray(x) for x in features)
    y = jnp.asarray(labels, jnp.float64)

    def monitored_loss(epoch):
      plaintext.check_finite('secret-sharing', weights, intercept, epoch)
      z, messages, largest = _logits(
          jax.random.fold_in(loss_key, epoch), weights, intercept, train_x,
          fraction_bits=fraction_bits)
      # The loss after the last epoch uses weights that no step checked.
      _check_ring_limits([largest], limits[:1], epoch, fraction_bits)
      _record(ledger, names, messages)
      return plaintext.loss_value(settings.loss, np.asarray(z), labels)

    losses, epoch_seconds = [], []
    for epoch in range(settings.epochs):
      losses.append(monitored_loss(epoch))
      start = time.perf_counter()
      largest = []
      for i in range(steps_per_epoch):
        step = epoch * steps_per_epoch + i
        rows = jnp.asarray(steps[step])
        weights, intercept, messages, magnitudes = _step(
            jax.random.fold_in(step_key, step), weights, intercept,
            tuple(x[rows] for x in train_x), y[rows],
            settings.learning_rate, settings.l2,
            loss=settings.loss, fraction_bits=fraction_bits)
        _record(ledger, names, messages)
        largest.append(jnp.stack(magnitudes))
      jax.block_until_ready(weights)
      epoch_seconds.append(time.perf_counter() - start)
      # One check per epoch keeps the steps asynchronous.
      _check_ring_limits(np.max(np.asarray(largest), axis=0), limits, epoch,
                         fraction_bits)
      plaintext.check_finite('secret-sharing', weights, intercept, epoch)
    epochs_ledger = ledger.copy()
    losses.append(monitored_loss(settings.epochs))
    model = plaintext.LogisticModel(
        weights=tuple(np.asarray(w) for w in weights),
        intercept=float(intercept),
        losses=tuple(losses),
    )
  return SecretSharingResult(model, ledger, epochs_ledger,
                             tuple(epoch_seconds),
                             fraction_bits)


def _check_ring_limits(reached, limits, epoch, fraction_bits):
  """Raise unless the epoch's largest logit and gradient sum fit the ring."""
  for value, limit, what in zip(reached, limits,
                                ('sum of |partial logits|', 'gradient sum')):
    if not value < limit:  # also true for NaN
      raise InputError(
          f'a {what} reached {value:.3g} in epoch {epoch}, past the ring '
          f'limit {limit:.3g} at fraction_bits={fraction_bits}; lower the '
          'learning rate or fraction_bits, use smaller batches or '
          'standardize the features')


def _check_inputs(features, labels, fraction_bits):
  """Raise InputError for inputs the protocol cannot train on."""
  if len(features) < 2:
    raise InputError(f'vertical training needs at least 2 parties, got '
                     f'{len(features)} feature blocks')
  plaintext.check_blocks(features, labels)
  _check_fraction_bits(fraction_bits)


def _check_fraction_bits(fraction_bits) -> int:
  """Return `fraction_bits` as an int, or raise InputError."""
  if (isinstance(fraction_bits, (bool, np.bool_))
      or not isinstance(fraction_bits, (int, np.integer))
      or not 8 <= fraction_bits <= 24):
    raise InputError(f'fraction_bits={fraction_bits!r} is invalid; use an '
                     'integer in [8, 24]')
  return int(fraction_bits)
