"""Server optimizers: closed forms, hand examples, optax differences, checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.models import tabular
from fedjax_med.server import optimizers
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

# Tolerances for float32 updates compared with float64 references.
RTOL = 1e-6
ATOL = 1e-7


def _step(optimizer, delta, state):
  """Apply one round with aggregate update `delta` and return the output."""
  pseudo_gradient = jax.tree.map(jnp.negative, delta)
  return optimizer.update(pseudo_gradient, state)


def _run(optimizer, deltas, params):
  """Apply the rounds in `deltas` and return the update of every round."""
  state = optimizer.init(params)
  all_updates = []
  for delta in deltas:
    updates, state = _step(optimizer, delta, state)
    all_updates.append(updates)
  return all_updates


def _adagrad_rule(v, delta_squared, b2):
  del b2
  return v + delta_squared


def _yogi_rule(v, delta_squared, b2):
  return v - (1 - b2) * delta_squared * np.sign(v - delta_squared)


def _adam_rule(v, delta_squared, b2):
  return b2 * v + (1 - b2) * delta_squared


def _reference_fed_opt(rule, deltas, *, learning_rate, b1, b2, tau):
  """Return the float64 updates of the FedOpt recursion for array `deltas`."""
  m = np.zeros_like(deltas[0], np.float64)
  v = np.full_like(deltas[0], tau**2, np.float64)
  all_updates = []
  for delta in deltas:
    delta = np.asarray(delta, np.float64)
    m = b1 * m + (1 - b1) * delta
    v = rule(v, delta**2, b2)
    all_updates.append(learning_rate * m / (np.sqrt(v) + tau))
  return all_updates


# name: (constructor with learning rate 0.1, second-moment rule, b1, b2).
ADAPTIVE = {
    'fed_adagrad': (
        functools.partial(optimizers.fed_adagrad, 0.1, b1=0.5),
        _adagrad_rule,
        0.5,
        None,
    ),
    'fed_yogi': (
        functools.partial(optimizers.fed_yogi, 0.1, b1=0.9, b2=0.99),
        _yogi_rule,
        0.9,
        0.99,
    ),
    'fed_adam': (
        functools.partial(optimizers.fed_adam, 0.1, b1=0.9, b2=0.99),
        _adam_rule,
        0.9,
        0.99,
    ),
}

ALL_OPTIMIZERS = {
    **{name: entry[0] for name, entry in ADAPTIVE.items()},
    'fed_avg_m': functools.partial(optimizers.fed_avg_m, 0.1, momentum=0.9),
}


def _two_leaf_params():
  return {'kernel': jnp.zeros((2, 3)), 'bias': jnp.zeros(3)}


def _two_leaf_deltas(num_rounds):
  rng = np.random.default_rng(0)
  return [
      {
          'kernel': jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
          'bias': jnp.asarray(rng.normal(size=3), jnp.float32),
      }
      for _ in range(num_rounds)
  ]


# FedAdam


def test_fed_adam_first_step_closed_form():
  learning_rate, b1, b2, tau = 0.3, 0.9, 0.99, 1e-3
  delta = np.array([1.0, -0.5, 1e-4, 0.0], np.float32)
  optimizer = optimizers.fed_adam(learning_rate, b1=b1, b2=b2, tau=tau)

  (updates,) = _run(optimizer, [jnp.asarray(delta)], jnp.zeros(4))

  delta64 = delta.astype(np.float64)
  expected = (
      learning_rate
      * (1 - b1)
      * delta64
      / (np.sqrt(b2 * tau**2 + (1 - b2) * delta64**2) + tau)
  )
  np.testing.assert_allclose(updates, expected, rtol=RTOL, atol=ATOL)


def test_fed_adam_first_step_uses_first_moment():
  delta = jnp.array([2.0])
  optimizer = optimizers.fed_adam(1.0, b1=0.9, b2=0.99, tau=1e-3)

  (updates,) = _run(optimizer, [delta], jnp.zeros(1))

  # With m_0 = Delta the step would be about 2 / (sqrt(0.01 * 4) + 1e-3),
  # ten times larger than with m_0 = (1 - b1) * Delta.
  assert float(updates[0]) == pytest.approx(
      0.1 * 2.0 / (np.sqrt(0.99e-6 + 0.04) + 1e-3), rel=RTOL
  )
  assert float(updates[0]) < 1.0


def test_fed_adam_state_after_two_steps():
  b1, b2, tau = 0.9, 0.99, 0.1
  deltas = [jnp.array([1.0]), jnp.array([-3.0])]
  optimizer = optimizers.fed_adam(1.0, b1=b1, b2=b2, tau=tau)
  state = optimizer.init(jnp.zeros(1))

  for delta in deltas:
    _, state = _step(optimizer, delta, state)

  adaptive_state = state[0]
  m_0 = (1 - b1) * 1.0
  v_0 = b2 * tau**2 + (1 - b2) * 1.0
  # The state contains the first moment of g = -Delta, so it is -m_t.
  np.testing.assert_allclose(
      adaptive_state.mu, [-(b1 * m_0 + (1 - b1) * -3.0)], rtol=RTOL
  )
  np.testing.assert_allclose(
      adaptive_state.nu, [b2 * v_0 + (1 - b2) * 9.0], rtol=RTOL
  )


# FedYogi


def test_fed_yogi_v_moves_toward_square():
  # tau = 0.5 so that v_{-1} = 0.25 and every square below is exact in
  # float32, which makes the tie v_{-1} == Delta^2 exact as well.
  b2, tau = 0.99, 0.5
  delta = jnp.array([2.0, 0.25, 0.5])
  optimizer = optimizers.fed_yogi(1.0, b1=0.0, b2=b2, tau=tau)

  updates, state = _step(optimizer, delta, optimizer.init(jnp.zeros(3)))

  v_0 = np.asarray(state[0].nu)
  # Delta^2 = 4 > v: v grows by (1 - b2) * 4.
  assert v_0[0] == pytest.approx(0.25 + 0.01 * 4.0, rel=RTOL)
  # Delta^2 = 0.0625 < v: v shrinks by (1 - b2) * 0.0625.
  assert v_0[1] == pytest.approx(0.25 - 0.01 * 0.0625, rel=RTOL)
  # Delta^2 = 0.25 == v: sign is 0 and v stays.
  assert v_0[2] == 0.25
  expected_updates = np.array([2.0, 0.25, 0.5]) / (np.sqrt(v_0) + tau)
  np.testing.assert_allclose(updates, expected_updates, rtol=RTOL)


def test_fed_yogi_differs_from_fed_adam_rule():
  delta = jnp.array([2.0])
  yogi = optimizers.fed_yogi(1.0, b1=0.0, b2=0.99, tau=0.5)
  adam = optimizers.fed_adam(1.0, b1=0.0, b2=0.99, tau=0.5)

  _, yogi_state = _step(yogi, delta, yogi.init(jnp.zeros(1)))
  _, adam_state = _step(adam, delta, adam.init(jnp.zeros(1)))

  # Yogi adds (1 - b2) * Delta^2 to v_{-1}. Adam also decays v_{-1} by b2.
  assert float(yogi_state[0].nu[0]) == pytest.approx(0.29, rel=RTOL)
  assert float(adam_state[0].nu[0]) == pytest.approx(0.2875, rel=RTOL)


def test_fed_yogi_shrinking_v_stays_positive():
  b2 = 0.5
  optimizer = optimizers.fed_yogi(1.0, b2=b2, tau=1.0)
  state = optimizer.init(jnp.zeros(1))

  for _ in range(20):
    previous_v = float(state[0].nu[0])
    # Delta^2 just below v_{t-1} gives the largest possible decrease.
    delta = jnp.array([0.999 * np.sqrt(previous_v)], jnp.float32)
    _, state = _step(optimizer, delta, state)

    v = float(state[0].nu[0])
    assert v < previous_v
    assert v > b2 * previous_v
    assert v > 0.0


# FedAdagrad


def test_fed_adagrad_accumulates_squares():
  tau = 1e-2
  delta = jnp.array([1.0, -2.0])
  optimizer = optimizers.fed_adagrad(0.5, tau=tau)
  state = optimizer.init(jnp.zeros(2))

  for round_index in range(3):
    updates, state = _step(optimizer, delta, state)

    num_rounds = round_index + 1
    expected_v = tau**2 + num_rounds * np.array([1.0, 4.0])
    np.testing.assert_allclose(state[0].nu, expected_v, rtol=RTOL)
    # The default b1 = 0 makes m_t = Delta_t.
    expected_updates = 0.5 * np.array([1.0, -2.0]) / (
        np.sqrt(expected_v) + tau
    )
    np.testing.assert_allclose(updates, expected_updates, rtol=RTOL)


def test_fed_adagrad_step_shrinks_each_round():
  optimizer = optimizers.fed_adagrad(1.0)

  all_updates = _run(optimizer, [jnp.array([1.0])] * 4, jnp.zeros(1))

  sizes = [float(updates[0]) for updates in all_updates]
  assert sizes == sorted(sizes, reverse=True)
  assert sizes[-1] < sizes[0]


# FedAvgM


def test_fed_avg_m_matches_hand_momentum():
  learning_rate, momentum = 0.5, 0.9
  deltas = [
      jnp.array([1.0, 0.0]),
      jnp.array([0.0, 2.0]),
      jnp.array([-1.0, 1.0]),
  ]
  optimizer = optimizers.fed_avg_m(learning_rate, momentum=momentum)
  params = jnp.zeros(2)
  state = optimizer.init(params)
  expected_params = np.zeros(2)
  buffer = np.zeros(2)

  for delta in deltas:
    updates, state = _step(optimizer, delta, state)
    params = optax.apply_updates(params, updates)
    buffer = momentum * buffer + np.asarray(delta)
    expected_params = expected_params + learning_rate * buffer

    np.testing.assert_allclose(params, expected_params, rtol=RTOL)


def test_fed_avg_m_zero_momentum_is_fed_avg():
  delta = jnp.array([0.25, -1.0])
  fed_avg_m = optimizers.fed_avg_m(1.0, momentum=0.0)
  fed_avg = optax.sgd(1.0)

  all_updates = _run(fed_avg_m, [delta, delta], jnp.zeros(2))
  reference_updates = _run(fed_avg, [delta, delta], jnp.zeros(2))

  for updates, reference in zip(all_updates, reference_updates):
    np.testing.assert_array_equal(updates, reference)
    np.testing.assert_array_equal(updates, delta)


# All optimizers


@pytest.mark.parametrize('name', sorted(ADAPTIVE))
def test_adaptive_matches_reference(name):
  make_optimizer, rule, b1, b2 = ADAPTIVE[name]
  rng = np.random.default_rng(1)
  deltas = [rng.normal(size=5).astype(np.float32) for _ in range(6)]

  all_updates = _run(make_optimizer(), map(jnp.asarray, deltas), jnp.zeros(5))

  expected = _reference_fed_opt(
      rule, deltas, learning_rate=0.1, b1=b1, b2=b2, tau=1e-3
  )
  for updates, reference in zip(all_updates, expected, strict=True):
    np.testing.assert_allclose(updates, reference, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize('name', sorted(ALL_OPTIMIZERS))
def test_jit_matches_eager_on_pytree(name):
  optimizer = ALL_OPTIMIZERS[name]()
  deltas = _two_leaf_deltas(num_rounds=3)
  params = _two_leaf_params()
  eager_state = jit_state = optimizer.init(params)
  jit_step = jax.jit(functools.partial(_step, optimizer))

  for delta in deltas:
    eager_updates, eager_state = _step(optimizer, delta, eager_state)
    jit_updates, jit_state = jit_step(delta, jit_state)

    assert jax.tree.structure(jit_updates) == jax.tree.structure(params)
    for leaf_name in params:
      assert jit_updates[leaf_name].shape == params[leaf_name].shape
      np.testing.assert_allclose(
          jit_updates[leaf_name], eager_updates[leaf_name], rtol=1e-6
      )


@pytest.mark.parametrize('name', sorted(ADAPTIVE))
def test_adaptive_leaves_independent(name):
  make_optimizer, rule, b1, b2 = ADAPTIVE[name]
  deltas = _two_leaf_deltas(num_rounds=3)

  all_updates = _run(make_optimizer(), deltas, _two_leaf_params())

  for leaf_name in ('kernel', 'bias'):
    expected = _reference_fed_opt(
        rule,
        [np.asarray(delta[leaf_name]) for delta in deltas],
        learning_rate=0.1,
        b1=b1,
        b2=b2,
        tau=1e-3,
    )
    for updates, reference in zip(all_updates, expected, strict=True):
      np.testing.assert_allclose(
          updates[leaf_name], reference, rtol=1e-5, atol=ATOL
      )


@pytest.mark.parametrize('name', sorted(ALL_OPTIMIZERS))
def test_jit_does_not_retrace(name):
  optimizer = ALL_OPTIMIZERS[name]()
  num_traces = 0

  def step(delta, state):
    nonlocal num_traces
    num_traces += 1
    return _step(optimizer, delta, state)

  jit_step = jax.jit(step)
  state = optimizer.init(_two_leaf_params())
  for delta in _two_leaf_deltas(num_rounds=3):
    _, state = jit_step(delta, state)

  assert num_traces == 1


@pytest.mark.parametrize('name', sorted(ALL_OPTIMIZERS))
def test_update_moves_params_along_delta(name):
  optimizer = ALL_OPTIMIZERS[name]()
  delta = jnp.array([1.0, -1.0])

  (updates,) = _run(optimizer, [delta], jnp.zeros(2))

  assert float(updates[0]) > 0
  assert float(updates[1]) < 0


@pytest.mark.parametrize('name', sorted(ADAPTIVE))
def test_adaptive_initial_state(name):
  optimizer = ADAPTIVE[name][0](tau=0.1)

  adaptive_state = optimizer.init(_two_leaf_params())[0]

  for leaf in jax.tree.leaves(adaptive_state.mu):
    np.testing.assert_array_equal(leaf, 0.0)
  for leaf in jax.tree.leaves(adaptive_state.nu):
    np.testing.assert_allclose(leaf, 0.01, rtol=RTOL)


def test_initial_accumulator_sets_v():
  optimizer = optimizers.fed_adam(
      1.0, b1=0.0, b2=0.5, tau=0.1, initial_accumulator=1.0
  )
  state = optimizer.init(jnp.zeros(1))

  updates, state = _step(optimizer, jnp.array([1.0]), state)

  # v_0 = 0.5 * 1.0 + 0.5 * 1.0^2 = 1.0, so the step is 1 / (1 + 0.1).
  assert float(state[0].nu[0]) == pytest.approx(1.0, rel=RTOL)
  assert float(updates[0]) == pytest.approx(1.0 / 1.1, rel=RTOL)


def test_schedule_sets_rate_per_round():
  def schedule(count):
    return 0.1 * 0.5**count

  delta = jnp.array([1.0])
  scheduled = optimizers.fed_adam(schedule, b1=0.0, b2=0.0, tau=1e-3)
  constant = optimizers.fed_adam(1.0, b1=0.0, b2=0.0, tau=1e-3)

  scheduled_updates = _run(scheduled, [delta, delta], jnp.zeros(1))
  constant_updates = _run(constant, [delta, delta], jnp.zeros(1))

  np.testing.assert_allclose(
      scheduled_updates[0], 0.1 * constant_updates[0], rtol=RTOL
  )
  np.testing.assert_allclose(
      scheduled_updates[1], 0.05 * constant_updates[1], rtol=RTOL
  )


# Differences from the optax optimizers of the same name.


def test_optax_adam_bias_corrects():
  delta = jnp.array([0.01])
  learning_rate = 1.0

  (ours,) = _run(optimizers.fed_adam(learning_rate), [delta], jnp.zeros(1))
  (theirs,) = _run(optax.adam(learning_rate), [delta], jnp.zeros(1))

  # optax.adam: bias correction gives m_hat = Delta and v_hat = Delta^2, so
  # the first step is about learning_rate * sign(Delta). The tolerance covers
  # the float32 rounding of 1 - b2**t inside optax.
  assert float(theirs[0]) == pytest.approx(0.01 / (0.01 + 1e-8), rel=1e-5)
  expected = 0.1 * 0.01 / (np.sqrt(0.99e-6 + 0.01 * 1e-4) + 1e-3)
  assert float(ours[0]) == pytest.approx(expected, rel=RTOL)
  assert abs(float(theirs[0]) - float(ours[0])) > 0.5


def test_optax_yogi_initial_state():
  ours = optimizers.fed_yogi(1.0).init(jnp.zeros(2))[0]
  theirs = optax.yogi(1.0).init(jnp.zeros(2))[0]

  # optax.yogi starts the first moment at 1e-6 and FedYogi at 0. Both start
  # the second moment at 1e-6, but only because tau^2 = 1e-6 by default.
  np.testing.assert_array_equal(ours.mu, 0.0)
  np.testing.assert_allclose(theirs.mu, 1e-6)


def test_optax_yogi_first_step():
  delta = jnp.array([0.01])

  (ours,) = _run(optimizers.fed_yogi(1.0), [delta], jnp.zeros(1))
  (theirs,) = _run(optax.yogi(1.0, b2=0.99, eps=1e-3), [delta], jnp.zeros(1))

  expected = 0.1 * 0.01 / (np.sqrt(1e-6 + 0.01 * 1e-4) + 1e-3)
  assert float(ours[0]) == pytest.approx(expected, rel=RTOL)
  # optax.yogi: m starts at 1e-6 and v at 1e-6, and both are divided by the
  # bias corrections 1 - b1 = 0.1 and 1 - b2 = 0.01.
  optax_m_hat = (0.1 * 0.01 - 0.9e-6) / 0.1
  optax_v_hat = (1e-6 + 0.01 * 1e-4) / 0.01
  optax_expected = optax_m_hat / (np.sqrt(optax_v_hat) + 1e-3)
  assert float(theirs[0]) == pytest.approx(optax_expected, rel=1e-5)
  assert abs(float(theirs[0]) - float(ours[0])) > 0.2


def test_optax_adagrad_eps_in_root():
  delta = jnp.array([0.01])

  (ours,) = _run(optimizers.fed_adagrad(1.0), [delta], jnp.zeros(1))
  (theirs,) = _run(optax.adagrad(1.0), [delta], jnp.zeros(1))

  # optax.adagrad: v starts at 0.1 and eps = 1e-7 sits inside the root.
  optax_expected = 0.01 / np.sqrt(0.1 + 1e-4 + 1e-7)
  assert float(theirs[0]) == pytest.approx(optax_expected, rel=RTOL)
  ours_expected = 0.01 / (np.sqrt(1e-6 + 1e-4) + 1e-3)
  assert float(ours[0]) == pytest.approx(ours_expected, rel=RTOL)


# Argument checks


@pytest.mark.parametrize('name', sorted(ALL_OPTIMIZERS))
@pytest.mark.parametrize('learning_rate', [0.0, -0.1, float('nan')])
def test_invalid_learning_rate_raises(name, learning_rate):
  constructor = getattr(optimizers, name)

  with pytest.raises(ValueError, match='`learning_rate`'):
    constructor(learning_rate)


@pytest.mark.parametrize('name', sorted(ADAPTIVE))
@pytest.mark.parametrize('tau', [0.0, -1e-3, float('inf')])
def test_invalid_tau_raises(name, tau):
  constructor = getattr(optimizers, name)

  with pytest.raises(ValueError, match=f'`tau`.*{tau}'):
    constructor(0.1, tau=tau)


@pytest.mark.parametrize('name', sorted(ADAPTIVE))
@pytest.mark.parametrize('b1', [-0.1, 1.0, 1.5])
def test_invalid_b1_raises(name, b1):
  constructor = getattr(optimizers, name)

  with pytest.raises(ValueError, match=rf'`b1` must be in \[0, 1\), got {b1}'):
    constructor(0.1, b1=b1)


@pytest.mark.parametrize('name', ['fed_adam', 'fed_yogi'])
@pytest.mark.parametrize('b2', [-0.1, 1.0])
def test_invalid_b2_raises(name, b2):
  constructor = getattr(optimizers, name)

  with pytest.raises(ValueError, match=rf'`b2` must be in \[0, 1\), got {b2}'):
    constructor(0.1, b2=b2)


@pytest.mark.parametrize('momentum', [-0.5, 1.0])
def test_invalid_momentum_raises(momentum):
  with pytest.raises(ValueError, match=f'`momentum`.*{momentum}'):
    optimizers.fed_avg_m(0.1, momentum=momentum)


@pytest.mark.parametrize('name', sorted(ADAPTIVE))
def test_small_initial_accumulator_raises(name):
  constructor = getattr(optimizers, name)

  with pytest.raises(ValueError, match='`initial_accumulator` must be >= tau'):
    constructor(0.1, tau=0.1, initial_accumulator=0.005)


@pytest.mark.parametrize('value', [True, '0.1', jnp.array(0.1), None])
def test_non_number_tau_raises(value):
  with pytest.raises(ValueError, match='`tau` must be a Python number'):
    optimizers.fed_adam(0.1, tau=value)


# Inside a federated round


def _round_setup(key):
  """Return (data, local update, sampler, initial params) for three clients."""
  model = tabular.from_flax(tabular.LogisticRegression(2), 2)
  rng = np.random.default_rng(0)
  clients = [
      {
          'x': rng.normal(size=(count, 3)).astype(np.float32),
          'y': (rng.random(count) > 0.5).astype(np.int32),
      }
      for count in (4, 6, 5)
  ]
  data = jax.device_put(federated.stack_clients(clients))
  local_update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=3, batch_size=2
  )
  sampler = sampling.uniform_sampler(3, 3)
  params = model.init(key, jnp.zeros((1, 3)))
  return data, local_update, sampler, params


def test_round_applies_fed_adam(key):
  data, local_update, sampler, params = _round_setup(key)
  server_optimizer = optimizers.fed_adam(0.5, tau=1e-2)
  round_key = jax.random.fold_in(key, 1)
  fed_avg_round = round_lib.build_round(
      data, local_update, sampler, optax.sgd(1.0)
  )
  fed_adam_round = round_lib.build_round(
      data, local_update, sampler, server_optimizer
  )

  fed_avg_state, _ = fed_avg_round(
      round_lib.init_server_state(params, optax.sgd(1.0)), round_key
  )
  fed_adam_state, metrics = jax.jit(fed_adam_round)(
      round_lib.init_server_state(params, server_optimizer), round_key
  )

  # FedAvg with server rate 1 moves the params by exactly Delta, so the
  # FedAdam round must move them by fed_adam applied to that Delta.
  delta = jax.tree.map(jnp.subtract, fed_avg_state.params, params)
  updates, _ = _step(server_optimizer, delta, server_optimizer.init(params))
  expected = optax.apply_updates(params, updates)
  for got, want in zip(
      jax.tree.leaves(fed_adam_state.params), jax.tree.leaves(expected)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert bool(metrics['params_finite'])
  assert not bool(metrics['skipped'])
