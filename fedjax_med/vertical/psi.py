"""Private set intersection (PSI) of patient identifiers, Diffie-Hellman style.

Before vertical training, the parties find the patients they all hold without
revealing their other patients. Each party i has a secret exponent k_i. An
identifier x is hashed to H(x) in a prime-order group, and exponentiation
commutes: (H(x)**a)**b == (H(x)**b)**a. So a value that carries every key,
H(x)**(k_0 k_1 ... k_m), is the same whichever party's identifier it came
from, while a party that lacks one of the keys cannot test which identifier
a value hides (the decisional Diffie-Hellman assumption).

The group is the order-q subgroup of the integers modulo the 2048-bit safe
prime p = 2q + 1 of RFC 3526, section 3 (MODP group 14). Squaring maps the
integers modulo p onto that subgroup, so `hash_to_group` squares a wide hash.

Parties 0, ..., m, with m >= 1. Party 0 is the active party (the leader and
label holder). Parties 1, ..., m are passive, and party m is the
collector. The protocol:

  1. Each party hashes its identifiers into the group and raises them to its
     key.
  2. Each passive set visits every party: its owner, then the parties
     0, 1, ..., m - 1 other than the owner, then the collector m. Every
     visited party raises the values to its key and shuffles them with its
     own generator before it passes them on. So the collector ends with
     every passive set carrying all keys, in an order that no single party
     can link to the owner's rows. For the collector's own set, party m - 1
     applies the last key and forwards the result to the collector.
  3. The collector intersects the fully encrypted passive sets and sends the
     result, shuffled, to the leader.
  4. The leader shuffles its own set once with a permutation that it keeps,
     raises it to its key and sends it around the ring 1, ..., m and back to
     itself. The passive parties apply their keys and keep the order, so the
     leader maps each returning value to its own identifier.
  5. The leader intersects its fully encrypted set with the collector's
     result, which gives the identifiers that all parties hold, and sends
     them (sorted) to every passive party.

What each party learns:

  * Every party learns every party's set size, because every set passes
    through every party, and the final sorted intersection.
  * The leader also learns the size of the intersection of the passive sets.
  * The collector also learns the size of the intersection of the passive
    sets. It has every passive set and the leader's set with all keys, so
    it can also count the common values of any sub-collection of the sets
    (for example the size of the intersection of the leader's set and one
    passive set). It cannot link these values to identifiers, and the
    leader's private permutation hides the leader's rows from it.
  * Party m - 1 (when m >= 2) has the collector's set with all keys but no
    other fully encrypted set, so it has nothing to compare it with.
  * With two parties the leader applies the last key to the passive set and
    so learns its intersection with the passive set directly, which is the
    output anyway.

No party receives a group element that it can match with a dictionary of
identifiers using only its own key (tests/vertical/test_psi.py checks this).
The protocol assumes semi-honest (honest-but-curious) parties and does not
defend against a party that deviates from it.

Exponents and shuffles come from numpy generators seeded from the caller's
seed, so the same seed gives the same transcript. A deployment draws them
from the operating system's CSPRNG (Python's `secrets` module) instead.
"""

import dataclasses
import hashlib
from collections.abc import Sequence

import gmpy2
import numpy as np

from fedjax_med.data import federated
from fedjax_med.errors import InputError
from fedjax_med.vertical.cost import CostLedger

# RFC 3526, section 3: the 2048-bit MODP group (group 14). The RFC gives it as
# p = 2**2048 - 2**1984 - 1 + 2**64 * (floor(2**1918 * pi) + 124476).
_MODP_2048_HEX = """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
    E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
    DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
    15728E5A 8AACAA68 FFFFFFFF FFFFFFFF
"""
PRIME = int(''.join(_MODP_2048_HEX.split()), 16)
# p is a safe prime, so the squares modulo p form a subgroup of prime order q.
SUBGROUP_ORDER = (PRIME - 1) // 2
ELEMENT_BYTES = 256  # a group element on the wire: 2048 bits

# RFC 3526 lists exponent sizes of 220 to 320 bits for this group. Every
# exponent in [1, 2**256) is below q (about 2**2047) and so invertible modulo
# the prime q. So x -> x**k permutes the subgroup, and distinct hashes stay
# distinct after every key.
EXPONENT_BITS = 256

_HASH_DOMAIN = b'fedjax_med.vertical.psi hash-to-group v1\x00'
# 2048 + 128 bits, so the hash reduced modulo p is within 2**-128 (in
# statistical distance) of uniform.
_HASH_BYTES = (2048 + 128) // 8

LEADER = 0


@dataclasses.dataclass(frozen=True)
class Message:
  """One message of the PSI transcript.

  Attributes:
    sender: name of the sending party.
    receiver: name of the receiving party.
    description: what the payload is, for example 'set of b after keys of b,
      a'.
    payload: group elements (ints) in the order sent, or the intersection
      identifiers (strs) of the final announcement.
    num_bytes: the size recorded in the ledger: 256 bytes per group element,
      or the UTF-8 length plus 1 per identifier.
    set_owner: the party whose identifiers the group elements hide. None for
      the passive intersection and the announcement.
    keys_applied: names of the parties whose keys the group elements carry,
      in the order applied. Empty for the announcement.
  """

  sender: str
  receiver: str
  description: str
  payload: tuple[int, ...] | tuple[str, ...]
  num_bytes: int
  set_owner: str | None
  keys_applied: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class PsiResult:
  """Output of `run_psi`.

  Attributes:
    intersection: the identifiers in every party's set, sorted.
    row_indices: per party, the int64 index into that party's input list of
      each identifier of `intersection`, in the order of `intersection`.
    transcript: every message, in the order sent.
    learned: per party name, what that party learns: 'set_sizes' (every
      party's set size), 'intersection_size' and, for the leader and the
      collector, 'passive_intersection_size'.
  """

  intersection: tuple[str, ...]
  row_indices: tuple[np.ndarray, ...]
  transcript: tuple[Message, ...]
  learned: dict[str, dict]


def hash_to_group(identifier: str) -> int:
  """Hash an identifier to an element of the order-q subgroup.

  SHAKE-256 expands a domain tag and the UTF-8 identifier to 2176 bits. The
  result is reduced modulo p and squared, which puts it in the subgroup.

  Raises:
    InputError: if the element is 0 or 1 (the identity), which happens with
      probability about 2**-2046.
  """
  value = int.from_bytes(_expand_identifier(identifier), 'big') % PRIME
  element = value * value % PRIME
  if element in (0, 1):
    raise InputError(f'identifier {identifier!r} hashes to the degenerate '
                     f'group element {element}; rename this identifier')
  return element


def _expand_identifier(identifier: str) -> bytes:
  """Return `_HASH_BYTES` bytes of SHAKE-256 of the tagged identifier."""
  data = _HASH_DOMAIN + identifier.encode('utf-8')
  return hashlib.shake_256(data).digest(_HASH_BYTES)


def party_generators(seed: int, num_parties: int) -> list[np.random.Generator]:
  """Return each party's independent generator, derived from `seed`.

  Party i's generator is seeded with `SeedSequence(seed, spawn_key=(i,))`,
  which is the i-th child of `SeedSequence(seed).spawn`. `run_psi` draws each
  party's key first, then its permutations.
  """
  return [
      np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(party,)))
      for party in range(num_parties)
  ]


def draw_secret_key(generator: np.random.Generator) -> int:
  """Draw a uniform exponent in [1, 2**256), a subset of [1, q - 1]."""
  while True:
    key = int.from_bytes(generator.bytes(EXPONENT_BITS // 8), 'big')
    if key != 0:
      return key


def party_secret_keys(seed: int, num_parties: int) -> tuple[int, ...]:
  """Return the keys that `run_psi` draws for `seed`, for tests and audits."""
  return tuple(
      draw_secret_key(generator)
      for generator in party_generators(seed, num_parties))


def run_psi(
    id_sets: Sequence[Sequence[str]],
    party_names: Sequence[str],
    seed: int,
    ledger: CostLedger | None = None,
) -> PsiResult:
  """Run the multi-party PSI of the module docstring on identifier lists.

  Every party raises every identifier of every set to its key once, so each
  party performs sum(len(ids) for ids in id_sets) 2048-bit modular
  exponentiations, one after another in Python.

  Args:
    id_sets: per party, its patient identifiers in row order. Party 0 is the
      leader and the last party is the collector. A set may be empty, which
      makes the intersection empty.
    party_names: one distinct name per party, used in the transcript, the
      ledger and `learned`.
    seed: non-negative integer from which every party's key and
      permutations derive.
    ledger: if given, receives every message (`send`) and every modular
      exponentiation (`add(party, 'exponentiations', count)`). It must list
      every party name.

  Returns:
    The sorted intersection, each party's rows of it, the transcript and
    what each party learns.

  Raises:
    InputError: on fewer than 2 parties, a length mismatch between `id_sets`
      and `party_names`, a duplicate party name, a non-str identifier, a
      duplicate identifier within one party, an invalid seed or a ledger
      that lacks a party.
  """
  _validate_inputs(id_sets, party_names, seed, ledger)
  names = tuple(party_names)
  id_lists = [[str(x) for x in ids] for ids in id_sets]
  if ledger is None:
    ledger = CostLedger(names)
  protocol = _Protocol(names, int(seed), ledger)
  hashed = [[hash_to_group(x) for x in ids] for ids in id_lists]

  fully_encrypted_passive = [
      protocol.encrypt_passive_set(owner, hashed[owner])
      for owner in range(1, len(names))
  ]
  passive_intersection = protocol.intersect_at_collector(
      fully_encrypted_passive)

  leader_order = protocol.generators[LEADER].permutation(len(hashed[LEADER]))
  leader_values = protocol.encrypt_leader_set(
      [hashed[LEADER][row] for row in leader_order])
  common = set(passive_intersection)
  intersection = tuple(sorted(
      id_lists[LEADER][row]
      for row, value in zip(leader_order, leader_values)
      if value in common))

  for receiver in range(1, len(names)):
    protocol.send(LEADER, receiver, 'intersection identifiers',
                  intersection, set_owner=None, keys_applied=())

  row_indices = []
  for ids in id_lists:
    row_of = {identifier: row for row, identifier in enumerate(ids)}
    row_indices.append(
        np.array([row_of[x] for x in intersection], dtype=np.int64))

  set_sizes = {name: len(ids) for name, ids in zip(names, id_lists)}
  learned = {
      name: {'set_sizes': dict(set_sizes),
             'intersection_size': len(intersection)}
      for name in names
  }
  for party in (LEADER, protocol.collector):
    learned[names[party]]['passive_intersection_size'] = len(
        passive_intersection)
  return PsiResult(
      intersection=intersection,
      row_indices=tuple(row_indices),
      transcript=tuple(protocol.transcript),
      learned=learned,
  )


class _Protocol:
  """Keys, generators and transcript of one simulated PSI run."""

  def __init__(self, names: tuple[str, ...], seed: int, ledger: CostLedger):
    self.names = names
    self.ledger = ledger
    self.collector = len(names) - 1
    self.generators = party_generators(seed, len(names))
    self.keys = [draw_secret_key(generator) for generator in self.generators]
    self.transcript = []

  def send(self, sender: int, receiver: int, description: str,
           payload: Sequence, set_owner: str | None,
           keys_applied: Sequence[int]) -> None:
    """Append a message to the transcript and record it in the ledger."""
    if payload and isinstance(payload[0], str):
      num_bytes = sum(len(x.encode('utf-8')) + 1 for x in payload)
    else:
      num_bytes = ELEMENT_BYTES * len(payload)
    self.transcript.append(Message(
        sender=self.names[sender],
        receiver=self.names[receiver],
        description=description,
        payload=tuple(payload),
        num_bytes=num_bytes,
        set_owner=set_owner,
        keys_applied=tuple(self.names[party] for party in keys_applied),
    ))
    self.ledger.send(self.names[sender], self.names[receiver], num_bytes)

  def exponentiate(self, party: int, values: list[int]) -> list[int]:
    """Raise every value to `party`'s key and count the exponentiations."""
    self.ledger.add(self.names[party], 'exponentiations', len(values))
    key = gmpy2.mpz(self.keys[party])
    # GMP's powmod is about 5x faster than Python's pow at this size, and
    # both return the same integer.
    return [int(gmpy2.powmod(value, key, PRIME)) for value in values]

  def shuffle(self, party: int, values: list[int]) -> list[int]:
    """Permute `values` with `party`'s generator."""
    order = self.generators[party].permutation(len(values))
    return [values[index] for index in order]

  def describe(self, owner: int, keys_applied: Sequence[int]) -> str:
    applied = ', '.join(self.names[party] for party in keys_applied)
    return f'set of {self.names[owner]} after keys of {applied}'

  def encrypt_passive_set(self, owner: int, hashed: list[int]) -> list[int]:
    """Pass a passive set through every party and return it at the collector.

    The route is the owner, then parties 0, ..., m - 1 other than the owner,
    then the collector m, each applying its key and shuffling. The
    collector's own set ends at party m - 1, which forwards it.
    """
    route = [owner] + [
        party for party in range(self.collector) if party != owner]
    if owner != self.collector:
      route.append(self.collector)
    values, applied = hashed, []
    for step, party in enumerate(route):
      values = self.shuffle(party, self.exponentiate(party, values))
      applied.append(party)
      if step + 1 < len(route):
        receiver = route[step + 1]
      else:
        receiver = self.collector
      if receiver != party:
        self.send(party, receiver, self.describe(owner, applied), values,
                  set_owner=self.names[owner], keys_applied=applied)
    return values

  def intersect_at_collector(
      self, fully_encrypted: list[list[int]]) -> list[int]:
    """Intersect the passive sets and send the result, shuffled, to 0."""
    common = set(fully_encrypted[0]).intersection(*fully_encrypted[1:])
    values = self.shuffle(self.collector, sorted(common))
    self.send(self.collector, LEADER, 'passive intersection after all keys',
              values, set_owner=None, keys_applied=range(len(self.names)))
    return values

  def encrypt_leader_set(self, hashed: list[int]) -> list[int]:
    """Pass the leader's set around the ring 0, 1, ..., m, 0 in order."""
    values, applied = hashed, []
    for party in range(len(self.names)):
      values = self.exponentiate(party, values)
      applied.append(party)
      receiver = (party + 1) % len(self.names)
      self.send(party, receiver, self.describe(LEADER, applied), values,
                set_owner=self.names[LEADER], keys_applied=applied)
    return values


def _validate_inputs(id_sets, party_names, seed, ledger) -> None:
  """Raise InputError on any input that `run_psi` rejects."""
  if isinstance(id_sets, str) or len(id_sets) < 2:
    count = 1 if isinstance(id_sets, str) else len(id_sets)
    raise InputError(f'PSI needs at least 2 parties, but id_sets has {count}; '
                     'pass one list of identifiers per party')
  if (isinstance(party_names, str) or not isinstance(party_names, Sequence)
      or len(party_names) != len(id_sets)):
    raise InputError(f'party_names={party_names!r} does not give one name '
                     f'per party; pass {len(id_sets)} names')
  for name in party_names:
    if not isinstance(name, str):
      raise InputError(f'party name {name!r} is invalid; use a str')
  seen_names = set()
  for name in party_names:
    if name in seen_names:
      raise InputError(f'party name {name!r} appears twice in party_names; '
                       'give every party a distinct name')
    seen_names.add(name)
  seed = federated.check_seed(seed)
  for name, ids in zip(party_names, id_sets):
    _validate_identifiers(name, ids)
  if ledger is not None:
    missing = [name for name in party_names if name not in ledger.counts]
    if missing:
      raise InputError(f'the ledger has no counters for parties {missing}; '
                       'create it with CostLedger(tuple(party_names))')


def _validate_identifiers(name: str, ids) -> None:
  """Raise InputError unless `ids` is a list of distinct strs."""
  if isinstance(ids, (str, bytes)):
    raise InputError(f'the identifiers of party {name!r} are the single '
                     f'value {ids!r}; pass a list of identifiers')
  if isinstance(ids, np.ndarray):
    raise InputError(
        f'the identifiers of party {name!r} are a NumPy array; pass '
        '`ids.tolist()`, a list of str in row order')
  if not isinstance(ids, Sequence):
    raise InputError(
        f'the identifiers of party {name!r} are a {type(ids).__name__}, '
        'which has no row order; pass a list or tuple in row order, so that '
        'row_indices index it')
  seen = set()
  for identifier in ids:
    if not isinstance(identifier, str):
      raise InputError(
          f'identifier {identifier!r} of party {name!r} has type '
          f'{type(identifier).__name__}; convert identifiers to str')
    try:
      identifier.encode('utf-8')
    except UnicodeEncodeError as error:
      raise InputError(
          f'identifier {identifier!r} of party {name!r} is not valid '
          f'Unicode text ({error.reason}); decode identifiers from their '
          'source file as UTF-8') from None
    if identifier in seen:
      raise InputError(f'identifier {identifier!r} appears twice in party '
                       f'{name!r}; remove duplicate rows before PSI')
    seen.add(identifier)
