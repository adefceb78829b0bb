"""fedjax_med: vectorized simulation of federated learning on medical data.

Clients are one batched leading array axis; local training, clipping, noise
and aggregation are pure JAX functions compiled with `jit` and `vmap`. See
`fedjax_med.study.run_study` for a whole study and
`fedjax_med.simulation.round.build_round` for one round.
"""

__version__ = '0.1.0'
