"""Example-level accounting of client DP-SGD with dp_accounting."""

import math

import dp_accounting
from dp_accounting import pld
from dp_accounting import rdp
import pytest

from fedjax_med.errors import InputError
from fedjax_med.privacy import example_accounting

_SETTINGS = dict(
    num_examples=100,
    batch_size=10,
    noise_multiplier=1.1,
    steps_per_round=5,
    rounds_participated=20,
    delta=1e-5,
)


def _epsilon(**overrides):
  settings = dict(_SETTINGS)
  settings.update(overrides)
  return example_accounting.example_level_epsilon(**settings)


def _direct_epsilon(accountant, sampling_probability, noise_multiplier, count):
  relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  if accountant == 'pld':
    direct = pld.PLDAccountant(neighboring_relation=relation)
  else:
    direct = rdp.RdpAccountant(neighboring_relation=relation)
  event = dp_accounting.PoissonSampledDpEvent(
      sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier)
  )
  direct.compose(event, count)
  return direct.get_epsilon(1e-5)


@pytest.mark.parametrize('accountant', ['rdp', 'pld'])
def test_epsilon_matches_direct_composition(accountant):
  expected = _direct_epsilon(accountant, 0.1, 1.1, 5 * 20)

  epsilon = _epsilon(accountant=accountant)

  assert epsilon == pytest.approx(expected, rel=1e-9)
  assert 0 < epsilon < math.inf


def test_small_client_sampling_probability_capped():
  expected = _direct_epsilon('rdp', 1.0, 1.1, 5 * 20)

  epsilon = _epsilon(num_examples=4)

  assert epsilon == pytest.approx(expected, rel=1e-9)
  assert epsilon == _epsilon(num_examples=10)


def test_epsilon_falls_as_noise_rises():
  epsilons = [
      _epsilon(noise_multiplier=noise_multiplier)
      for noise_multiplier in (0.7, 1.0, 2.0, 4.0)
  ]

  assert epsilons == sorted(epsilons, reverse=True)
  assert len(set(epsilons)) == len(epsilons)


def test_epsilon_falls_as_examples_rise():
  epsilons = [
      _epsilon(num_examples=num_examples)
      for num_examples in (20, 50, 100, 1000)
  ]

  assert epsilons == sorted(epsilons, reverse=True)
  assert len(set(epsilons)) == len(epsilons)


def test_epsilon_rises_with_rounds():
  assert _epsilon(rounds_participated=40) > _epsilon(rounds_participated=20)


@pytest.mark.parametrize(
    'override', [{'steps_per_round': 0}, {'rounds_participated': 0}]
)
def test_no_step_zero_epsilon(override):
  assert _epsilon(**override) == 0.0


def test_worst_client_is_smallest():
  counts = [300, 40, 0, 120, 40]

  worst = example_accounting.worst_client_epsilon(
      counts,
      batch_size=10,
      noise_multiplier=1.1,
      steps_per_round=5,
      rounds_participated=20,
      delta=1e-5,
  )

  assert worst.client_index == 1
  assert worst.num_examples == 40
  assert worst.epsilon == _epsilon(num_examples=40)
  assert worst.epsilon > _epsilon(num_examples=120)


@pytest.mark.parametrize('counts', [[], [0, 0]])
def test_worst_client_without_data_rejected(counts):
  with pytest.raises(InputError, match='num_examples_per_client'):
    example_accounting.worst_client_epsilon(
        counts,
        batch_size=10,
        noise_multiplier=1.1,
        steps_per_round=5,
        rounds_participated=20,
        delta=1e-5,
    )


@pytest.mark.parametrize('count', [-1, 2.5, True])
def test_worst_client_invalid_count(count):
  with pytest.raises(InputError, match=r'num_examples_per_client\[1\]'):
    example_accounting.worst_client_epsilon(
        [10, count],
        batch_size=10,
        noise_multiplier=1.1,
        steps_per_round=5,
        rounds_participated=20,
        delta=1e-5,
    )


@pytest.mark.parametrize(
    'argument, value',
    [
        ('num_examples', 0),
        ('num_examples', -3),
        ('num_examples', 2.5),
        ('batch_size', 0),
        ('noise_multiplier', 0.0),
        ('noise_multiplier', -1.0),
        ('noise_multiplier', math.inf),
        ('steps_per_round', -1),
        ('rounds_participated', -1),
        ('delta', 0.0),
        ('delta', 1.0),
        ('accountant', 'moments'),
    ],
)
def test_invalid_argument(argument, value):
  with pytest.raises(InputError, match=f'`{argument}`'):
    _epsilon(**{argument: value})
