"""fedjax_med: vectorized simulation of federated learning on medical data.

Clients are one batched leading array axis; local training, clipping, noise
and aggregation are pure JAX functions compiled with `jit` and `vmap`.

`fedjax_med.configure`, `fedjax_med.run`, `fedjax_med.resume` and
`fedjax_med.load_run` (from `fedjax_med.api`) run a whole study from Python;
`fedjax_med.simulation.round.build_round` builds one round.
"""

__version__ = '0.1.0'

# Loaded on first use, so that `import fedjax_med.config` (the command line's
# `--help` and config errors) does not import JAX.
_API = ('configure', 'run', 'resume', 'load_run', 'Result',
        'ExperimentConfig')


def __getattr__(name):
  if name in _API:
    from fedjax_med import api  # pylint: disable=g-import-not-at-top

    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_API))
