"""Scale: chunked cohorts and a cohort sharded over devices match one vmap."""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import config as config_lib
from fedjax_med import errors
from fedjax_med import study
from fedjax_med.aggregation import mean as mean_lib
from fedjax_med.client import local_training
from fedjax_med.data import synthetic
from fedjax_med.models import tabular
from fedjax_med.simulation import round as round_lib
from fedjax_med.simulation import sampling

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _setup(num_clients=13, **round_options):
  data = synthetic.synthetic(
      key=jax.random.key(0), num_clients=num_clients, alpha=0.5, beta=0.5,
      min_examples=5, max_examples=30, test_fraction=0.2)
  model = tabular.from_flax(tabular.LogisticRegression(10), 10)
  update = lambda mu=0.0: local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=4, batch_size=5, proximal_mu=mu)
  scaffold = round_options.pop('scaffold', False)
  ditto = round_options.pop('ditto', False)
  round_fn = round_lib.build_round(
      data.train, update(), sampling.uniform_sampler(num_clients, 10),
      optax.sgd(1.0), scaffold_learning_rate=0.1 if scaffold else None,
      personal_update=update(0.5) if ditto else None, **round_options)
  params = model.init(jax.random.key(1), jnp.zeros((1, 60)))
  state = round_lib.init_server_state(
      params, optax.sgd(1.0),
      scaffold_clients=num_clients if scaffold else None,
      personal_clients=num_clients if ditto else None)
  return round_fn, state


def _run(rounds=3, **options):
  round_fn, state = _setup(**options)
  for index in range(rounds):
    state, metrics = round_fn(state, jax.random.key(index))
  return state, metrics


@functools.cache
def _unchunked_run(option_items):
  """Run `_run` without chunks once per options in each test process."""
  return _run(**dict(option_items))


@pytest.mark.parametrize('options', [{}, {'scaffold': True}, {'ditto': True}])
@pytest.mark.parametrize('chunk_size', [1, 3, 10])
def test_chunked_cohort_equals_one_vmap(options, chunk_size):
  whole, whole_metrics = _unchunked_run(tuple(sorted(options.items())))
  chunked, chunked_metrics = _run(chunk_size=chunk_size, **options)
  # Chunks of 3 leave a remainder of 1 in a cohort of 10.
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_allclose(whole_metrics['train_loss'],
                             chunked_metrics['train_loss'], rtol=1e-5)


def test_bad_chunk_size_and_mesh_rejected():
  with pytest.raises(ValueError, match='chunk_size'):
    _setup(chunk_size=0)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('hosts',))
  with pytest.raises(ValueError, match="axis named 'clients'"):
    _setup(mesh=mesh)


_SHARDED_SCRIPT = '''
import os, sys
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') +
    ' --xla_force_host_platform_device_count=4')
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
sys.path.insert(0, sys.argv[2])
import test_scale
assert jax.device_count() == 4, jax.devices()
mesh = jax.sharding.Mesh(np.array(jax.devices()), ('clients',))
for options in ({}, {'chunk_size': 4}):
  single, _ = test_scale._run(**options)
  sharded, _ = test_scale._run(mesh=mesh, **options)
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)
round_fn, state = test_scale._setup(mesh=mesh)
text = round_fn.lower(state, jax.random.key(0)).compile().as_text()
assert 'num_partitions=4' in text, text[:300]
print('sharded ok')
'''


def test_sharded_cohort_equals_one_device(tmp_path):
  script = tmp_path / 'sharded.py'
  script.write_text(_SHARDED_SCRIPT)
  result = subprocess.run(
      [sys.executable, str(script), str(ROOT), str(pathlib.Path(__file__).parent)],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'sharded ok' in result.stdout


def _study_config(**overrides):
  return config_lib.apply_overrides(
      config_lib.ExperimentConfig(), {'rounds': 2, 'local_steps': 5,
                                      **overrides})


def test_auto_chunk_size_follows_memory_budget(monkeypatch):
  config = _study_config()
  prepared = study.prepare(config)
  assert study.chunk_size(config, prepared) is None
  # Heart: 4 clients, padded to the largest hospital's rows, and a logistic
  # regression of 13 * 2 + 2 parameters.
  train = prepared.train
  per_client = (sum(leaf.nbytes for leaf in jax.tree.leaves(train.examples))
                / 4 + 6 * 28 * 4)
  monkeypatch.setattr(study, 'AUTO_CHUNK_BYTES', int(2.5 * per_client))
  assert study.chunk_size(config, prepared) == 2
  forced = _study_config(chunk_size=3)
  assert study.chunk_size(forced, prepared) == 3
  assert study.chunk_size(_study_config(chunk_size=9), prepared) is None


def test_chunked_study_equals_unchunked(tmp_path):
  _, whole = study.run_study(_study_config(), tmp_path / 'a', progress=False)
  _, chunked = study.run_study(_study_config(chunk_size=3), tmp_path / 'b',
                               progress=False)
  np.testing.assert_allclose(list(whole['test_accuracy'].values()),
                             list(chunked['test_accuracy'].values()))


def test_scanned_rounds_equal_a_loop():
  round_fn, state = _setup()
  rounds_key = jax.random.key(7)
  looped = state
  losses = []
  for index in range(2, 6):
    looped, metrics = round_fn(looped, jax.random.fold_in(rounds_key, index))
    losses.append(float(metrics['train_loss']))
  run = round_lib.scan_rounds(round_fn, 4)
  scanned, stacked = run(state, rounds_key, 2)
  assert stacked['train_loss'].shape == (4,)
  np.testing.assert_allclose(stacked['train_loss'], losses, rtol=1e-5)
  np.testing.assert_array_equal(stacked['round'], [1, 2, 3, 4])
  for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(scanned)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)
  with pytest.raises(ValueError, match='num_rounds'):
    round_lib.scan_rounds(round_fn, 0)
  # 2.5 ran 3 rounds.
  with pytest.raises(ValueError, match='`num_rounds` must be an integer'):
    round_lib.scan_rounds(round_fn, 2.5)
  with pytest.raises(ValueError, match='`num_rounds` must be an integer'):
    round_lib.scan_rounds(round_fn, True)


def _mlp_update(compute_dtype):
  model = tabular.from_flax(tabular.MLP(2, (64,)), 2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32)))
  x = jax.random.normal(jax.random.key(1), (64, 32))
  examples = {'x': x, 'y': (x[:, 0] > 0).astype(jnp.int32)}
  update = local_training.build_local_update(
      model, optax.sgd(0.1), num_steps=50, batch_size=16,
      compute_dtype=compute_dtype)
  return jax.jit(update)(params, examples, jnp.int32(64), jax.random.key(2))


def test_bfloat16_training_keeps_float32_updates():
  full = _mlp_update('float32')
  mixed = _mlp_update('bfloat16')
  for leaf in jax.tree.leaves(mixed.delta):
    assert leaf.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: the losses agree to about 1%, and
  # the updates point the same way.
  np.testing.assert_allclose(float(mixed.loss), float(full.loss), rtol=0.02)
  a = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(full.delta)])
  b = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(mixed.delta)])
  assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
  with pytest.raises(ValueError, match='compute_dtype'):
    _mlp_update('float16')


def test_float32_mean_of_many_updates_is_accurate():
  # 10,000 bfloat16-valued updates of one sign averaged in float32: the
  # mean agrees with a float64 mean to 1e-6 relative.
  values = np.random.default_rng(0).uniform(1e-3, 2e-3, (10_000, 100))
  updates = jnp.asarray(values, jnp.bfloat16).astype(jnp.float32)
  weights = jnp.ones(10_000)
  mean = mean_lib.weighted_mean({'w': updates}, weights)['w']
  exact = np.mean(np.asarray(updates, np.float64), axis=0)
  np.testing.assert_allclose(np.asarray(mean), exact, rtol=1e-6)


def test_bfloat16_study_config_checked(tmp_path):
  with pytest.raises(errors.InputError, match='compute_dtype'):
    config_lib.validate(_study_config(compute_dtype='float16'))
  with pytest.raises(errors.InputError, match='dp_sgd'):
    config_lib.validate(_study_config(compute_dtype='bfloat16', dp_sgd=True))
  _, mixed = study.run_study(_study_config(compute_dtype='bfloat16'),
                             tmp_path / 'mixed', progress=False)
  _, full = study.run_study(_study_config(), tmp_path / 'full',
                            progress=False)
  assert abs(mixed['mean_accuracy'] - full['mean_accuracy']) < 0.03
