"""Multi-party Diffie-Hellman PSI: correctness, transcript privacy and costs."""

import collections
import math

import numpy as np
import pytest

from fedjax_med.errors import InputError
from fedjax_med.vertical import psi
from fedjax_med.vertical.cost import CostLedger

P = psi.PRIME
Q = psi.SUBGROUP_ORDER
FIRST_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)

Run = collections.namedtuple('Run', 'id_sets names seed ledger result')


def _is_probable_prime(n: int, bases=FIRST_PRIMES) -> bool:
  """Miller-Rabin with fixed bases. False means n is certainly composite."""
  if n < 2:
    return False
  for base in bases:
    if n % base == 0:
      return n == base
  d, s = n - 1, 0
  while d % 2 == 0:
    d //= 2
    s += 1
  for base in bases:
    x = pow(base, d, n)
    if x in (1, n - 1):
      continue
    for _ in range(s - 1):
      x = x * x % n
      if x == n - 1:
        break
    else:
      return False
  return True


def _legendre(a: int) -> int:
  """Legendre symbol (a / p) by the Jacobi reciprocity algorithm.

  For the safe prime p, 1 means that a is a square, that is, a lies in the
  order-q subgroup. It spares the 2047-bit exponentiation of pow(a, q, p),
  which would make the transcript checks several times slower.
  """
  a, n, result = a % P, P, 1
  while a:
    while a % 2 == 0:
      a //= 2
      if n % 8 in (3, 5):
        result = -result
    a, n = n, a
    if a % 4 == 3 and n % 4 == 3:
      result = -result
    a %= n
  return result if n == 1 else 0


def _random_id_sets(seed, sizes, universe_size):
  """Draw each party's ids from a shared universe, each in a random order."""
  rng = np.random.default_rng(seed)
  universe = [f'patient-{index:04d}' for index in range(universe_size)]
  return [[universe[i] for i in rng.permutation(universe_size)[:size]]
          for size in sizes]


def _run(id_sets, names, seed):
  ledger = CostLedger(tuple(names))
  result = psi.run_psi(id_sets, names, seed, ledger=ledger)
  return Run(id_sets, names, seed, ledger, result)


def _true_intersection(id_sets):
  return sorted(set(id_sets[0]).intersection(*id_sets[1:]))


def _encrypt(identifiers, keys):
  """Return H(x)**(product of keys) for each identifier, in order."""
  exponent = math.prod(keys) % Q
  return [pow(psi.hash_to_group(x), exponent, P) for x in identifiers]


@pytest.fixture(scope='module')
def three_parties():
  id_sets = _random_id_sets(7, (70, 60, 55), 110)
  return _run(id_sets, ['hospital', 'lab', 'registry'], seed=11)


@pytest.fixture(scope='module')
def two_parties():
  id_sets = _random_id_sets(8, (60, 55), 80)
  return _run(id_sets, ['hospital', 'lab'], seed=12)


@pytest.fixture(scope='module')
def four_parties():
  id_sets = _random_id_sets(9, (45, 40, 40, 35), 60)
  return _run(id_sets, ['hospital', 'lab', 'registry', 'insurer'], seed=13)


ALL_RUNS = ('two_parties', 'three_parties', 'four_parties')


def test_modp_group_constants():
  assert P.bit_length() == 2048
  assert P == 2 * Q + 1
  # RFC 3526 primes start and end with 64 one bits.
  assert P >> 1984 == 2**64 - 1
  assert P % 2**64 == 2**64 - 1
  assert _is_probable_prime(P)
  assert _is_probable_prime(Q)


def test_miller_rabin_rejects_composites():
  assert _is_probable_prime(2**127 - 1)
  assert not _is_probable_prime(561)  # a Carmichael number
  assert not _is_probable_prime((2**89 - 1) * (2**107 - 1))
  assert not _is_probable_prime(P + 2 * 3 * 5 * 7)


def test_legendre_matches_euler_criterion():
  for x in range(2, 12):
    value = pow(x, 1000, P) * 3 % P
    assert (_legendre(value) == 1) == (pow(value, Q, P) == 1)


def test_hash_to_group_lands_in_subgroup():
  identifiers = [f'id-{index}' for index in range(200)] + ['', 'é', '0']
  hashed = [psi.hash_to_group(x) for x in identifiers]
  for value in hashed[:10]:
    assert pow(value, Q, P) == 1
  for value in hashed:
    assert 1 < value < P
    assert _legendre(value) == 1
  assert len(set(hashed)) == len(identifiers)
  assert psi.hash_to_group('id-3') == hashed[3]


def test_hash_to_group_rejects_degenerate_values(monkeypatch):
  width = (2048 + 128) // 8
  for value in (0, 1, P - 1, P + 1):
    monkeypatch.setattr(psi, '_expand_identifier',
                        lambda identifier, v=value: v.to_bytes(width, 'big'))
    with pytest.raises(InputError, match="identifier 'odd-id'"):
      psi.hash_to_group('odd-id')


def test_exponentiation_commutes():
  a, b = psi.party_secret_keys(3, 2)
  for identifier in ('alice', 'bob'):
    h = psi.hash_to_group(identifier)
    assert pow(pow(h, a, P), b, P) == pow(pow(h, b, P), a, P)


def test_secret_keys_are_256_bit_and_distinct():
  keys = psi.party_secret_keys(5, 4)
  for key in keys:
    assert 1 <= key < 2**256
    assert key < Q
  assert len(set(keys)) == 4
  # Party i's key does not depend on the number of parties.
  assert psi.party_secret_keys(5, 2) == keys[:2]


def test_three_parties_true_intersection(three_parties):
  id_sets = three_parties.id_sets
  expected = _true_intersection(id_sets)
  pairwise = set(id_sets[0]) & set(id_sets[1])
  # The data make the test meaningful: a pairwise result would differ.
  assert 0 < len(expected) < len(pairwise)
  assert three_parties.result.intersection == tuple(expected)


@pytest.mark.parametrize('run_name', ['two_parties', 'four_parties'])
def test_two_and_four_parties_intersection(run_name, request):
  run = request.getfixturevalue(run_name)
  expected = _true_intersection(run.id_sets)
  assert expected
  assert run.result.intersection == tuple(expected)


def test_disjoint_sets_give_empty_intersection():
  id_sets = [['a1', 'a2', 'shared'], ['b1', 'shared'], ['c1', 'c2']]
  result = psi.run_psi(id_sets, ['a', 'b', 'c'], seed=0)
  assert result.intersection == ()
  for rows in result.row_indices:
    assert rows.shape == (0,)
  assert result.learned['a']['passive_intersection_size'] == 0


def test_identical_sets_give_whole_set():
  ids = [f'p{index}' for index in range(12)]
  id_sets = [ids, ids[::-1], ids[3:] + ids[:3]]
  result = psi.run_psi(id_sets, ['a', 'b', 'c'], seed=0)
  assert result.intersection == tuple(sorted(ids))
  for own_ids, rows in zip(id_sets, result.row_indices):
    assert [own_ids[row] for row in rows] == sorted(ids)


def test_empty_set_gives_empty_intersection():
  result = psi.run_psi([['x', 'y'], [], ['x']], ['a', 'b', 'c'], seed=0)
  assert result.intersection == ()
  assert result.learned['c']['set_sizes'] == {'a': 2, 'b': 0, 'c': 1}


@pytest.mark.parametrize('run_name', ALL_RUNS)
def test_row_indices_map_back_to_ids(run_name, request):
  run = request.getfixturevalue(run_name)
  intersection = list(run.result.intersection)
  assert len(run.result.row_indices) == len(run.id_sets)
  for ids, rows in zip(run.id_sets, run.result.row_indices):
    assert rows.dtype == np.int64
    assert [ids[row] for row in rows] == intersection


@pytest.mark.parametrize('run_name', ALL_RUNS)
def test_transcript_unlinkable_with_own_key(run_name, request):
  run = request.getfixturevalue(run_name)
  universe = sorted(set().union(*run.id_sets))
  hashed = [psi.hash_to_group(x) for x in universe]
  keys = psi.party_secret_keys(run.seed, len(run.names))
  for name, key in zip(run.names, keys):
    dictionary = set(hashed) | {pow(h, key, P) for h in hashed}
    received = [
        value
        for message in run.result.transcript
        if message.receiver == name and message.keys_applied
        for value in message.payload
    ]
    assert received
    assert not dictionary.intersection(received), name
    for value in received:
      assert _legendre(value) == 1


def test_passive_sets_shuffled_at_every_hop(three_parties):
  run = three_parties
  keys = dict(zip(run.names, psi.party_secret_keys(run.seed, 3)))
  ids_of = dict(zip(run.names, run.id_sets))
  passive_messages = [
      message for message in run.result.transcript
      if message.set_owner not in (None, run.names[0])
  ]
  assert len(passive_messages) == 5
  for message in passive_messages:
    owner_ids = ids_of[message.set_owner]
    assert len(owner_ids) >= 50
    in_owner_order = _encrypt(
        owner_ids, [keys[name] for name in message.keys_applied])
    assert set(message.payload) == set(in_owner_order)
    assert list(message.payload) != in_owner_order, message.description


def test_leader_set_keeps_order_around_ring(three_parties):
  run = three_parties
  keys = dict(zip(run.names, psi.party_secret_keys(run.seed, 3)))
  leader = run.names[0]
  ring = [message for message in run.result.transcript
          if message.set_owner == leader]
  assert [(m.sender, m.receiver) for m in ring] == [
      ('hospital', 'lab'), ('lab', 'registry'), ('registry', 'hospital')]
  first = _encrypt(run.id_sets[0], [keys[leader]])
  assert set(ring[0].payload) == set(first)
  # The leader's private permutation hides its row order.
  assert list(ring[0].payload) != first
  for previous, message in zip(ring, ring[1:]):
    key = keys[message.sender]
    assert list(message.payload) == [
        pow(value, key, P) for value in previous.payload]


@pytest.mark.parametrize('run_name', ['three_parties', 'four_parties'])
def test_leader_never_completes_passive_set(run_name, request):
  run = request.getfixturevalue(run_name)
  leader = run.names[0]
  # With all keys applied, a passive set compared with the leader's own set
  # would reveal which of the leader's ids that one passive party has.
  received = [m for m in run.result.transcript
              if m.receiver == leader and m.set_owner not in (None, leader)]
  assert received
  for message in received:
    assert set(message.keys_applied) | {leader} != set(run.names)


def test_collector_sends_passive_intersection(three_parties):
  run = three_parties
  keys = psi.party_secret_keys(run.seed, 3)
  passive_common = sorted(set(run.id_sets[1]) & set(run.id_sets[2]))
  to_leader = [m for m in run.result.transcript
               if m.description == 'passive intersection after all keys']
  assert len(to_leader) == 1
  message = to_leader[0]
  assert (message.sender, message.receiver) == ('registry', 'hospital')
  assert set(message.payload) == set(_encrypt(passive_common, keys))
  assert len(message.payload) == len(passive_common)


def test_learned_sizes(three_parties):
  run = three_parties
  learned = run.result.learned
  passive_common = set(run.id_sets[1]) & set(run.id_sets[2])
  sizes = dict(zip(run.names, map(len, run.id_sets)))
  for name in run.names:
    assert learned[name]['set_sizes'] == sizes
    assert learned[name]['intersection_size'] == len(
        run.result.intersection)
  assert learned['hospital']['passive_intersection_size'] == len(
      passive_common)
  assert learned['registry']['passive_intersection_size'] == len(
      passive_common)
  assert 'passive_intersection_size' not in learned['lab']


@pytest.mark.parametrize('run_name', ALL_RUNS)
def test_every_party_gets_announcement(run_name, request):
  run = request.getfixturevalue(run_name)
  announcements = [m for m in run.result.transcript if not m.keys_applied]
  assert sorted(m.receiver for m in announcements) == sorted(run.names[1:])
  for message in announcements:
    assert message.sender == run.names[0]
    assert message.payload == run.result.intersection


def test_same_seed_same_transcript():
  id_sets = _random_id_sets(1, (10, 9, 8), 14)
  first = psi.run_psi(id_sets, ['a', 'b', 'c'], seed=21)
  second = psi.run_psi(id_sets, ['a', 'b', 'c'], seed=21)
  other = psi.run_psi(id_sets, ['a', 'b', 'c'], seed=22)
  assert first.transcript == second.transcript
  assert other.transcript != first.transcript
  assert other.intersection == first.intersection
  old_keys = psi.party_secret_keys(21, 3)
  new_keys = psi.party_secret_keys(22, 3)
  for old, new in zip(old_keys, new_keys):
    assert old != new


@pytest.mark.parametrize('run_name', ALL_RUNS)
def test_ledger_counts_exponentiations(run_name, request):
  run = request.getfixturevalue(run_name)
  # Every set passes through every party once, which costs that party one
  # exponentiation per identifier.
  expected = sum(len(ids) for ids in run.id_sets)
  counts = run.ledger.as_dict()
  for name in run.names:
    assert counts[name]['exponentiations'] == expected, name


@pytest.mark.parametrize('run_name', ALL_RUNS)
def test_ledger_counts_bytes(run_name, request):
  run = request.getfixturevalue(run_name)
  sent = collections.Counter()
  received = collections.Counter()
  for message in run.result.transcript:
    if message.keys_applied:
      assert message.num_bytes == 256 * len(message.payload)
    else:
      assert message.num_bytes == sum(
          len(x.encode('utf-8')) + 1 for x in message.payload)
    sent[message.sender] += message.num_bytes
    received[message.receiver] += message.num_bytes
  counts = run.ledger.as_dict()
  for name in run.names:
    assert counts[name]['bytes_sent'] == sent[name]
    assert counts[name]['bytes_received'] == received[name]
    assert counts[name]['messages_sent'] == sum(
        m.sender == name for m in run.result.transcript)


def test_announcement_bytes_count_utf8():
  ledger = CostLedger(('a', 'b'))
  result = psi.run_psi([['é1', 'b', 'c'], ['b', 'é1']], ['a', 'b'], seed=0,
                       ledger=ledger)
  announcement = result.transcript[-1]
  assert announcement.payload == ('b', 'é1')
  # 'b' is 1 byte and 'é1' 3 bytes in UTF-8, plus 1 byte per identifier.
  assert announcement.num_bytes == 2 + 4


def test_two_party_message_flow(two_parties):
  flow = [(m.sender, m.receiver, m.description)
          for m in two_parties.result.transcript]
  assert flow == [
      ('lab', 'hospital', 'set of lab after keys of lab'),
      ('hospital', 'lab', 'set of lab after keys of lab, hospital'),
      ('lab', 'hospital', 'passive intersection after all keys'),
      ('hospital', 'lab', 'set of hospital after keys of hospital'),
      ('lab', 'hospital', 'set of hospital after keys of hospital, lab'),
      ('hospital', 'lab', 'intersection identifiers'),
  ]


@pytest.mark.parametrize('id_sets, names, seed, match', [
    ([['a', 'b', 'a'], ['a']], ['x', 'y'], 0,
     "identifier 'a' appears twice in party 'x'"),
    ([['a']], ['x'], 0, 'at least 2 parties, but id_sets has 1'),
    ([['a'], ['b']], ['x'], 0, r"party_names=\['x'\] .* pass 2 names"),
    ([['a'], ['b', 7]], ['x', 'y'], 0,
     "identifier 7 of party 'y' has type int"),
    ([['a'], ['b']], ['x', 'x'], 0, "party name 'x' appears twice"),
    ([['a'], 'ab'], ['x', 'y'], 0, "party 'y' are the single value 'ab'"),
    ([['a'], ['b']], ['x', 'y'], -1, 'must be an integer >= 0.*got -1'),
    ([['a'], ['b']], ['x', 'y'], 1.5, 'must be an integer >= 0.*got 1.5'),
    ([['a'], {'a', 'b'}], ['x', 'y'], 0, "party 'y' are a set"),
    ([['a'], iter(['a'])], ['x', 'y'], 0, "party 'y' are a list_iterator"),
    # None raised a TypeError, and an array was rejected as having no row order.
    ([['a'], ['b']], None, 0, 'party_names=None does not give one name'),
    ([['a'], np.array(['b'])], ['x', 'y'], 0, "'y' are a NumPy array"),
    # A lone surrogate raised UnicodeEncodeError while hashing.
    ([['\ud800', 'a'], ['a']], ['h', 'q'], 0,
     "party 'h' is not valid Unicode text"),
])
def test_run_psi_rejects_invalid_input(id_sets, names, seed, match):
  with pytest.raises(InputError, match=match):
    psi.run_psi(id_sets, names, seed)


def test_run_psi_rejects_incomplete_ledger():
  with pytest.raises(InputError, match=r"parties \['y'\]"):
    psi.run_psi([['a'], ['a']], ['x', 'y'], 0, ledger=CostLedger(('x',)))
