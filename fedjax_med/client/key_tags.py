"""Tags folded into a client's round key, one per use of randomness.

A client's key in a round, `k`, is split by `jax.random.fold_in`. Local
training shuffles epoch e with `fold_in(k, e)`, for e below `EPOCH_LIMIT`.
Every other use folds in one of the tags below, which are distinct and at
least `EPOCH_LIMIT`, so no two draws of a client share a key: a client's
noise is never a function of its own minibatch order. A use that needs
several draws folds further tags into its own key.
"""

# Local training's epoch shuffles use the tags below this.
EPOCH_LIMIT = 1 << 30
# Local DP noise added to the client's whole update.
CLIENT_NOISE = EPOCH_LIMIT
# DP-SGD's per-step noise: step s uses fold_in(fold_in(k, DP_SGD_STEPS), s).
DP_SGD_STEPS = EPOCH_LIMIT + 1
# Stochastic quantization or sparsification of the update.
COMPRESSION = EPOCH_LIMIT + 2
# Training of the client's Ditto personal model, with its own shuffles.
PERSONAL = EPOCH_LIMIT + 3
# Secure aggregation's stochastic rounding and distributed noise.
SECURE = EPOCH_LIMIT + 4

ALL = (CLIENT_NOISE, DP_SGD_STEPS, COMPRESSION, PERSONAL, SECURE)
