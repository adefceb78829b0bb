"""Per-party communication and computation counts of a vertical protocol.

Every protocol in this package records what each party sends and computes
into a `CostLedger` as it runs, so the counts are those of the simulated
transcript, not a formula beside it.
"""

import collections
import dataclasses
import numbers

COUNTERS = (
    'messages_sent',
    'bytes_sent',
    'messages_received',
    'bytes_received',
    'exponentiations',  # modular exponentiations in the PSI group
    'encryptions',  # Paillier encryptions
    'decryptions',  # Paillier decryptions
    'ciphertext_additions',  # Paillier ciphertext + ciphertext or plaintext
    'ciphertext_scalings',  # Paillier ciphertext * plaintext
)


@dataclasses.dataclass
class CostLedger:
  """Counters per party, filled while a protocol runs.

  Attributes:
    parties: party names, in party order.
    counts: `counts[party][counter]`, every counter of `COUNTERS` starting
      at 0.
  """

  parties: tuple[str, ...]
  counts: dict[str, collections.Counter] = dataclasses.field(init=False)

  def __post_init__(self):
    self.counts = {
        party: collections.Counter({name: 0 for name in COUNTERS})
        for party in self.parties
    }

  def _check_party(self, party: str) -> None:
    if party not in self.counts:
      raise KeyError(f'unknown party {party!r}; the ledger has {self.parties}')

  def send(self, sender: str, receiver: str, num_bytes: int) -> None:
    """Record one message of `num_bytes` bytes from `sender` to `receiver`."""
    self._check_party(sender)
    self._check_party(receiver)
    num_bytes = _count(num_bytes, 'num_bytes')
    self.counts[sender]['messages_sent'] += 1
    self.counts[sender]['bytes_sent'] += num_bytes
    self.counts[receiver]['messages_received'] += 1
    self.counts[receiver]['bytes_received'] += num_bytes

  def add(self, party: str, counter: str, amount: int = 1) -> None:
    """Add `amount` to one computation counter of `party`."""
    if counter not in COUNTERS:
      raise KeyError(f'unknown counter {counter!r}; use one of {COUNTERS}')
    self._check_party(party)
    self.counts[party][counter] += _count(amount, 'amount')

  def copy(self) -> 'CostLedger':
    """Return a ledger with the same counts, which later records leave alone."""
    copied = CostLedger(self.parties)
    for party, counter in self.counts.items():
      copied.counts[party].update(counter)
    return copied

  def since(self, earlier: 'CostLedger') -> 'CostLedger':
    """Return the counts added after `earlier`, a `copy` of this ledger."""
    if tuple(earlier.parties) != tuple(self.parties):
      raise ValueError(f'the ledgers have different parties: '
                       f'{earlier.parties} and {self.parties}')
    added = CostLedger(self.parties)
    for party, counter in self.counts.items():
      for name in COUNTERS:
        added.counts[party][name] = counter[name] - earlier.counts[party][name]
    return added

  def as_dict(self, per: int = 1) -> dict[str, dict[str, float]]:
    """Return the counts as plain dicts, each divided by `per` (epochs)."""
    if isinstance(per, bool) or not isinstance(per, numbers.Integral) or (
        per < 1):
      raise ValueError(f'per={per!r} is invalid; pass a positive integer '
                       'count, such as the number of epochs')
    return {
        party: {name: counter[name] / per for name in COUNTERS}
        for party, counter in self.counts.items()
    }


def _count(value, name: str) -> int:
  """Return `value` as an int, or raise ValueError for a non-count."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
      value < 0):
    raise ValueError(f'{name}={value!r} is invalid; pass a whole number of '
                     'bytes or operations, 0 or more')
  return int(value)
