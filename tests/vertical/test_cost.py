"""The per-party cost ledger of the vertical protocols."""

import numpy as np
import pytest

from fedjax_med.vertical import cost


def test_copy_keeps_counts_apart():
  ledger = cost.CostLedger(('a', 'b'))
  ledger.send('a', 'b', 10)
  copied = ledger.copy()
  ledger.add('a', 'encryptions', 3)
  assert copied.counts['a']['bytes_sent'] == 10
  assert copied.counts['a']['encryptions'] == 0
  assert ledger.counts['a']['encryptions'] == 3


def test_unknown_party_counts_nothing():
  # `send` counted the sender's message before it failed on the receiver.
  ledger = cost.CostLedger(('a', 'b'))
  with pytest.raises(KeyError, match="unknown party 'zz'"):
    ledger.send('a', 'zz', 10)
  with pytest.raises(KeyError, match="unknown party 'zz'"):
    ledger.add('zz', 'encryptions')
  assert ledger.counts['a']['messages_sent'] == 0


@pytest.mark.parametrize('value', [-1, 2.7, True, '3'])
def test_counts_must_be_whole(value):
  # 2.7 was truncated to 2 and -1 lowered the byte count.
  ledger = cost.CostLedger(('a', 'b'))
  with pytest.raises(ValueError, match='is invalid'):
    ledger.send('a', 'b', value)
  with pytest.raises(ValueError, match='is invalid'):
    ledger.add('a', 'encryptions', value)


def test_numpy_counts_accepted():
  ledger = cost.CostLedger(('a', 'b'))
  ledger.send('a', 'b', np.int64(8))
  assert ledger.as_dict(per=np.int64(2))['b']['bytes_received'] == 4.0


@pytest.mark.parametrize('per', [0, -2, 1.5])
def test_invalid_per_raises(per):
  with pytest.raises(ValueError, match=f'per={per!r} is invalid'):
    cost.CostLedger(('a',)).as_dict(per=per)


def test_since_counts_what_was_added():
  ledger = cost.CostLedger(('a', 'b'))
  ledger.send('a', 'b', 10)
  earlier = ledger.copy()
  ledger.send('a', 'b', 5)
  ledger.add('b', 'decryptions', 2)

  added = ledger.since(earlier).as_dict()

  assert added['a']['bytes_sent'] == 5
  assert added['a']['messages_sent'] == 1
  assert added['b']['decryptions'] == 2
  with pytest.raises(ValueError, match='different parties'):
    ledger.since(cost.CostLedger(('a',)))
