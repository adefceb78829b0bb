"""Update envelopes and what the server learns with and without secure sums."""

import dataclasses
import ipaddress

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.errors import InputError
from fedjax_med.leakage import envelope

CLIENT_IDS = tuple(f'hospital-{i}' for i in range(10))
PAYLOAD = 56


def _round(round_index, cohort, seed=0, start_time=1000.0):
  key = jax.random.fold_in(jax.random.key(seed), round_index)
  return envelope.round_envelopes(
      key, round_index, cohort, CLIENT_IDS, start_time, PAYLOAD)


def test_every_participant_has_one_envelope():
  cohort = [7, 2, 5]

  envelopes = _round(0, cohort)

  assert [e.client_id for e in envelopes] == [CLIENT_IDS[i] for i in cohort]
  assert all(e.round == 0 for e in envelopes)
  assert all(e.payload_bytes == PAYLOAD for e in envelopes)
  assert all(e.sent_at >= 1000.0 for e in envelopes)


def test_address_is_stable_across_rounds():
  first = {e.client_id: e.address for e in _round(0, [1, 2, 3])}
  later = {e.client_id: e.address for e in _round(5, [3, 2, 8], seed=9)}

  assert first['hospital-2'] == later['hospital-2']
  assert first['hospital-3'] == later['hospital-3']
  assert len(set(first.values())) == 3


def test_address_is_private_placeholder():
  address = envelope.client_address('hospital-0')

  assert ipaddress.ip_address(address) in ipaddress.ip_network('10.0.0.0/8')
  assert address == envelope.client_address('hospital-0')
  assert address != envelope.client_address('hospital-1')


def test_timing_is_reproducible_from_key():
  first = [e.sent_at for e in _round(3, [4, 6, 9])]
  second = [e.sent_at for e in _round(3, [4, 6, 9])]
  other_key = [e.sent_at for e in _round(3, [4, 6, 9], seed=1)]

  assert first == second
  assert first != other_key


def test_timing_ignores_cohort_order():
  forward = {e.client_id: e.sent_at for e in _round(1, [0, 1, 2])}
  backward = {e.client_id: e.sent_at for e in _round(1, [2, 1, 0])}
  smaller = {e.client_id: e.sent_at for e in _round(1, [1])}

  assert forward == backward
  assert smaller['hospital-1'] == forward['hospital-1']


def test_delays_have_requested_mean():
  envelopes = envelope.round_envelopes(
      jax.random.key(0), 0, np.arange(1000), [str(i) for i in range(1000)],
      0.0, PAYLOAD, mean_delay_s=30.0)
  delays = np.asarray([e.sent_at for e in envelopes])

  assert np.all(delays >= 0)
  # The standard error of the mean of 1000 exponential draws is 30/sqrt(1000)
  # = 0.95 s, so 4 s is over 4 standard errors.
  assert abs(delays.mean() - 30.0) < 4.0


def test_plain_view_contains_every_update():
  envelopes = _round(0, [1, 2]) + _round(1, [2, 3])

  view = envelope.server_view(envelopes, secure_aggregation=False)

  expected = {(0, 'hospital-1'), (0, 'hospital-2'), (1, 'hospital-2'),
              (1, 'hospital-3')}
  assert set(view.participants) == expected
  assert set(view.individual_updates) == expected
  assert view.aggregates == {}


def test_secure_view_has_no_individual_update():
  envelopes = _round(0, [1, 2]) + _round(1, [2, 3])

  view = envelope.server_view(envelopes, secure_aggregation=True)

  assert view.individual_updates == ()
  assert sorted(view.aggregates[0]) == ['hospital-1', 'hospital-2']
  assert sorted(view.aggregates[1]) == ['hospital-2', 'hospital-3']


def test_secure_view_still_shows_metadata():
  envelopes = _round(0, [1, 2]) + _round(1, [2, 3])

  view = envelope.server_view(envelopes, secure_aggregation=True)

  assert len(view.participants) == 4
  for e in envelopes:
    assert view.addresses[e.client_id] == e.address
    assert view.sent_at[(e.round, e.client_id)] == e.sent_at
    assert view.payload_bytes[(e.round, e.client_id)] == e.payload_bytes
  times = [view.sent_at[p] for p in view.participants]
  assert times == sorted(times)


def test_envelope_is_frozen():
  sent = _round(0, [1])[0]

  with pytest.raises(dataclasses.FrozenInstanceError):
    sent.address = '10.0.0.1'


def test_payload_nbytes_counts_every_leaf():
  update = {'kernel': jnp.zeros((13, 1)), 'bias': jnp.zeros((1,))}

  assert envelope.payload_nbytes(update) == 14 * 4


def test_per_client_payload_sizes():
  envelopes = envelope.round_envelopes(
      jax.random.key(0), 0, [0, 1], CLIENT_IDS, 0.0, [10, 20])

  assert [e.payload_bytes for e in envelopes] == [10, 20]


@pytest.mark.parametrize('cohort, sizes, message', [
    ([10], PAYLOAD, 'Cohort index 10 is out of range'),
    ([1, 1], PAYLOAD, 'repeats a client'),
    ([1, 2], [5], 'Expected one payload size or 2'),
    ([1], [-1], 'non-negative'),
    ([1], 100.0, 'payload_bytes must be a whole number of bytes'),
    ([1, 2], [1.7, 2.2], r'got \[1\.7, 2\.2\]'),
    ([1], True, 'got True'),
    ([1], [[5]], 'payload_bytes must be'),
])
def test_rejects_invalid_round(cohort, sizes, message):
  with pytest.raises(InputError, match=message):
    envelope.round_envelopes(
        jax.random.key(0), 0, cohort, CLIENT_IDS, 0.0, sizes)


def test_repeated_client_ids_raise():
  with pytest.raises(InputError, match="'a' appears twice"):
    envelope.round_envelopes(jax.random.key(0), 0, [0, 1], ['a', 'a', 'c'],
                             0.0, 100)


@pytest.mark.parametrize('start_time', [float('nan'), float('inf'), 'noon'])
def test_rejects_non_finite_start_time(start_time):
  with pytest.raises(InputError, match='start_time must be a finite number'):
    envelope.round_envelopes(
        jax.random.key(0), 0, [1], CLIENT_IDS, start_time, PAYLOAD)


@pytest.mark.parametrize('mean_delay_s', [float('nan'), float('inf'), -1.0])
def test_rejects_invalid_mean_delay(mean_delay_s):
  with pytest.raises(InputError, match='mean_delay_s must be'):
    envelope.round_envelopes(
        jax.random.key(0), 0, [1], CLIENT_IDS, 0.0, PAYLOAD,
        mean_delay_s=mean_delay_s)


def test_numpy_payload_sizes_accepted():
  envelopes = envelope.round_envelopes(
      jax.random.key(0), 0, [0, 1], CLIENT_IDS, np.float32(5.0),
      np.array([10, 20]))

  assert [e.payload_bytes for e in envelopes] == [10, 20]
  assert all(e.sent_at >= 5.0 for e in envelopes)
