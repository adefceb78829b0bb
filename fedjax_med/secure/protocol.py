"""Secure aggregation, simulated step by step over a batch of clients.

The server learns the sum of the surviving clients' ring vectors and
nothing else. A protocol run follows Bonawitz et al. (2017, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS), with the
neighbour graph of Bell et al. (2020, "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", CCS) as an option:

1. Advertise keys. Each participant draws a secret key `sk_i` and a
   self-mask seed `b_i` and publishes `pk_i = g**sk_i` in GF(2**31 - 1).
2. Share keys. Each participant Shamir-shares `sk_i` and `b_i`, t-of-k,
   among its k neighbours in the graph.
3. Masked input. A survivor sends `y_i = x_i + PRG(b_i) + sum_j s_ij
   PRG(pk_j**sk_i)` modulo `2**bits`, with sign `s_ij = +1` if `i < j`
   and -1 otherwise, over its neighbours j that advertised keys. Both ends
   of an edge derive the same seed `g**(sk_i sk_j)`, so the two pairwise
   masks cancel when both arrive. A participant that sends nothing here has
   dropped out.
4. Unmasking. The clients still online (the responders) send, for each
   neighbour, a share of `sk_j` if `j` dropped in step 3 or a share of
   `b_j` if `j` survived, never both. From `t` shares the server rebuilds
   `sk_j` and adds back what `j`'s masks left in the sum, and rebuilds
   `b_j` and removes the self mask. If any of these secrets has fewer than
   `t` responding holders, or fewer than `t` clients survived, the round
   fails and the server learns nothing.

The simulation draws the keys, runs the key agreement and the Shamir
sharing in a real (if 31-bit) group and field, expands the masks with
JAX's counter-based PRG, and only then sums. Its result is therefore exact
modulo `2**bits`: a mask that the protocol failed to cancel would show up
as a wrong sum, which `tests/secure/test_protocol.py` checks.

The graph and the threshold are sized on the round's participants, the
m clients that advertised keys, not on the cohort's slots. Poisson sampling
pads its cohort with empty slots, and offline clients leave slots empty. A
neighbour that never joins would hold shares it never returns. The server
has the list of advertised keys before it sends the graph, as in both
papers. A round needs m >= 2 participants (3 for 'harary'). With fewer the
server would learn a single client's input, so the round fails.

Graphs: 'complete' links every pair (the 2017 protocol, k = m - 1).
'harary' places the participants on a ring in a random order each round
and links each to the k/2 nearest on either side, a k-regular graph; Bell et
al. show k of order log n suffices, which is what makes 10,000 clients
affordable (PRG work per client k + 1 expansions instead of n).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_med.secure import encoding
from fedjax_med.secure import field
from fedjax_med.secure import shamir

GRAPHS = ('complete', 'harary')

# Sizes charged by the cost model, as a deployment would send them: X25519
# public keys (32 bytes), Shamir shares of 256-bit secrets (32 bytes), and
# AES-GCM's 12-byte nonce and 16-byte tag per encrypted message with two
# 4-byte client ids inside.
PUBLIC_KEY_BYTES = 32
SHARE_BYTES = 32
ENCRYPTED_SHARES_BYTES = 2 * SHARE_BYTES + 8 + 12 + 16

_SECRET_KEY_TAG = 1
_SEED_TAG = 2
_SHARE_KEY_TAG = 3
_SHARE_SEED_TAG = 4
_GRAPH_TAG = 5
_PAIR_MASK_TAG = 6
_SELF_MASK_TAG = 7
_UNMASK_DROPOUT_TAG = 8
# Slot keys come from their own subkey: `fold_in(key, slot)` would equal
# `fold_in(key, tag)` for the slot numbered like a tag.
_CLIENT_KEYS_TAG = 9


class SecureAggregationSettings(NamedTuple):
  """Settings of the simulated protocol.

  Attributes:
    graph: 'complete' (Bonawitz et al., 2017) or 'harary' (a random
      k-regular graph, Bell et al., 2020).
    degree: neighbours per client for 'harary', an even number; None picks
      `default_degree(m)` for a round of m participants. A round with too
      few participants for it uses the largest even degree below m.
    threshold_fraction: the Shamir threshold is `floor(fraction * k) + 1`
      of a client's k neighbours. With a fraction of at least 1/2, a server
      that lies about who dropped cannot collect t shares of both secrets
      of one client from its honest neighbours.
    bits: the ring is Z_(2**bits), at most 32.
    scale: fixed-point scale; None picks the largest that cannot overflow
      without noise (`encoding.max_scale`).
    unmask_dropout_rate: probability that a survivor goes offline before
      sending its shares in the unmasking step.
  """

  graph: str = 'complete'
  degree: int | None = None
  threshold_fraction: float = 0.5
  bits: int = 32
  scale: float | None = None
  unmask_dropout_rate: float = 0.0


def default_degree(num_clients: int) -> int:
  """Return an even degree near `2 * log2(n)`, capped at `n - 1`.

  A harary graph needs `n >= 3`; `validate` rejects smaller cohorts.
  """
  degree = 2 * math.ceil(math.log2(max(num_clients, 2)))
  return max(min(degree, num_clients - 1 - (num_clients - 1) % 2), 2)


def graph_degree(settings: SecureAggregationSettings, num_clients: int) -> int:
  """Return k, the neighbours per client, for `num_clients` participants.

  0 when the graph cannot link that few: fewer than 2 participants, or
  fewer than 3 for 'harary'.
  """
  if settings.graph == 'complete':
    return max(num_clients - 1, 0)
  if num_clients < 3:
    return 0
  largest = num_clients - 1 - (num_clients - 1) % 2
  if settings.degree is None:
    return default_degree(num_clients)
  return min(settings.degree, largest)


def threshold(settings: SecureAggregationSettings, num_clients: int) -> int:
  """Return t, the shares needed to rebuild a client's secret.

  0 when `graph_degree` is 0, a round that fails.
  """
  degree = graph_degree(settings, num_clients)
  return min(max(int(settings.threshold_fraction * degree) + 1, 1), degree)


def _round_sizes(settings, num_slots, num_participants):
  """Return this round's k and t, traced, for `num_participants` of the
  `num_slots`.

  Python's `graph_degree` and `threshold` fill a table over every possible
  count, so a traced round uses the very same integers as the static
  functions (a float32 `floor(fraction * k)` can differ from float64's).
  """
  counts = range(num_slots + 1)
  degrees = jnp.asarray([graph_degree(settings, m) for m in counts],
                        jnp.int32)
  thresholds = jnp.asarray([threshold(settings, m) for m in counts],
                           jnp.int32)
  return degrees[num_participants], thresholds[num_participants]


def validate(settings: SecureAggregationSettings, num_clients: int) -> None:
  """Raise ValueError for settings that cannot run on `num_clients`."""
  if not isinstance(settings, SecureAggregationSettings):
    raise TypeError(
        'Secure aggregation settings must be a SecureAggregationSettings; '
        f'got {settings!r}.'
    )
  if settings.graph not in GRAPHS:
    raise ValueError(
        f'Secure aggregation graph must be one of {GRAPHS}; got '
        f'{settings.graph!r}.'
    )
  encoding.check_bits(settings.bits)
  if num_clients < 2:
    raise ValueError(
        'Secure aggregation needs a cohort of at least 2 clients; got '
        f'{num_clients}.'
    )
  if not 0 <= settings.threshold_fraction < 1:
    raise ValueError(
        'Secure aggregation threshold_fraction must be in [0, 1); got '
        f'{settings.threshold_fraction}.'
    )
  if not 0 <= settings.unmask_dropout_rate <= 1:
    raise ValueError(
        'Secure aggregation unmask_dropout_rate must be in [0, 1]; got '
        f'{settings.unmask_dropout_rate}.'
    )
  if settings.scale is not None and not (
      math.isfinite(settings.scale) and settings.scale > 0):
    raise ValueError(
        f'Secure aggregation scale must be positive and finite; got '
        f'{settings.scale}. Leave it unset to pick the largest safe scale.'
    )
  if settings.graph == 'harary' and num_clients < 3:
    raise ValueError(
        f'A harary graph needs a cohort of at least 3 clients; got '
        f'{num_clients}. Use graph complete for smaller cohorts.'
    )
  if settings.graph == 'complete' and settings.degree is not None:
    raise ValueError(
        'Secure aggregation degree applies only to graph harary; the '
        f'complete graph links every pair. Got degree {settings.degree}.'
    )
  if settings.graph == 'harary' and settings.degree is not None:
    degree = settings.degree
    if not isinstance(degree, int) or isinstance(degree, bool):
      raise ValueError(
          f'Harary graph degree must be an integer; got {degree!r}.')
    if degree < 2 or degree % 2 or degree > num_clients - 1:
      raise ValueError(
          f'Harary graph degree must be even and in [2, {num_clients - 1}] '
          f'for a cohort of {num_clients}; got {degree}. Leave it unset '
          f'for {default_degree(num_clients)}.'
      )


def neighbours(
    key: jax.Array, settings: SecureAggregationSettings, num_clients: int,
    participants: jax.Array | None = None,
) -> jax.Array:
  """Return the `[n, k]` int32 neighbour indices of each cohort slot.

  k is `graph_degree(settings, n)`, the degree of a full cohort. With
  `participants` (`[n]` bool), a 'harary' ring contains only the
  participants, in random order, so a participant's neighbours are other
  participants. A round of m participants uses the first
  `graph_degree(settings, m) / 2` offsets on either side (columns `r` and
  `k / 2 + r`, see `used_columns`). A 'complete' graph lists every other
  slot, and the round uses the edges between participants.
  """
  degree = graph_degree(settings, num_clients)
  slots = jnp.arange(num_clients)
  if settings.graph == 'complete':
    offsets = jnp.arange(1, degree + 1)
    return (slots[:, None] + offsets[None, :]) % num_clients
  order = jax.random.permutation(key, num_clients)  # order[p]: client at p.
  ring_size = num_clients
  if participants is not None:
    # Participants first, each group in the random order; with every slot
    # taking part this is the permutation itself.
    order = order[jnp.argsort(~participants[order], stable=True)]
    ring_size = jnp.maximum(jnp.sum(participants), 1)
  position = jnp.argsort(order)
  half = jnp.arange(1, degree // 2 + 1)
  offsets = jnp.concatenate([half, -half])
  neighbour_positions = (position[:, None] + offsets[None, :]) % ring_size
  return order[neighbour_positions].astype(jnp.int32)


def used_columns(settings: SecureAggregationSettings, num_clients: int,
                 round_degree: jax.Array) -> jax.Array:
  """Return `[k]` bool: the columns of `neighbours` a round of degree
  `round_degree` uses, for a cohort of `num_clients` slots."""
  degree = graph_degree(settings, num_clients)
  if settings.graph == 'complete':
    # Every edge between participants; `edges` drops the others.
    return jnp.ones((degree,), bool)
  half = jnp.arange(1, degree // 2 + 1)
  distance = jnp.concatenate([half, half])
  return distance <= round_degree // 2


def _expand(seed: jax.Array, tag: int, dimension: int, bits: int):
  """Expand a field-element seed into `dimension` ring elements."""
  key = jax.random.fold_in(jax.random.key(seed), tag)
  return jax.random.bits(key, (dimension,), jnp.uint32) & encoding.ring_mask(
      bits)


def _pair_mask(own_index, secret_key, j, public_keys, dimension, bits):
  """Return `s_ij PRG(pk_j ** sk_i)`, client i's mask for its edge to j."""
  shared = field.power(public_keys[j], secret_key)
  low, high = jnp.minimum(own_index, j), jnp.maximum(own_index, j)
  edge_key = jax.random.fold_in(
      jax.random.fold_in(jax.random.key(shared), low), high)
  mask = jax.random.bits(
      jax.random.fold_in(edge_key, _PAIR_MASK_TAG), (dimension,), jnp.uint32
  ) & encoding.ring_mask(bits)
  return jnp.where(own_index < j, mask, jnp.uint32(0) - mask)


def _pair_masks(own_index, secret_key, neighbour_ids, public_keys, use,
                dimension, bits):
  """Return `sum_r use[r] s_(i, j_r) PRG(pk_(j_r) ** sk_i)` for one client."""

  def add_one(r, total):
    mask = _pair_mask(own_index, secret_key, neighbour_ids[r], public_keys,
                      dimension, bits)
    return total + jnp.where(use[r], mask, jnp.uint32(0))

  total = jnp.zeros((dimension,), jnp.uint32)
  return jax.lax.fori_loop(0, neighbour_ids.shape[0], add_one, total)


def _orphaned_masks(dropped, rebuilt_keys, neighbour_ids, public_keys,
                    edges_to_survivors, dimension, bits):
  """Return the sum of the masks that dropped clients left in the sum.

  This is the server's work: for each dropped client j it expands, from the
  rebuilt `sk_j`, the mask of every edge to a survivor. It loops over
  clients and edges with `lax.cond`, so the cost grows with the number of
  such edges, not with the cohort times the degree.
  """
  degree = neighbour_ids.shape[1]

  def per_edge(j, r, total):
    mask = _pair_mask(j, rebuilt_keys[j], neighbour_ids[j, r], public_keys,
                      dimension, bits)
    return jax.lax.cond(edges_to_survivors[j, r], lambda: total + mask,
                        lambda: total)

  def per_client(j, total):
    return jax.lax.cond(
        dropped[j],
        lambda: jax.lax.fori_loop(
            0, degree, lambda r, acc: per_edge(j, r, acc), total),
        lambda: total,
    )

  total = jnp.zeros((dimension,), jnp.uint32)
  return jax.lax.fori_loop(0, dropped.shape[0], per_client, total)


def _first_holders(holders_alive: jax.Array, t: int) -> jax.Array:
  """Return the first `t` slots whose holder responded, `[..., t]`."""
  order = jnp.argsort(~holders_alive, axis=-1, stable=True)
  return order[..., :t]


class SecureSumResult(NamedTuple):
  """Result of one protocol run.

  Attributes:
    total: `[d]` uint32 sum modulo `2**bits` of the survivors' inputs, as the
      server unmasked it; meaningless when `ok` is False.
    ok: False when the round failed: a secret it needs has fewer than t
      responding holders.
    masked: `[n, d]` uint32 masked inputs as the server received them (zero
      for clients that sent none).
    rebuilt_secret_keys: `[n]` bool, clients whose `sk` the server rebuilt.
    rebuilt_seeds: `[n]` bool, clients whose self-mask seed it rebuilt.
    rebuilt_correct: True when the round succeeded and every secret the
      server rebuilt equals the original, a check of the Shamir step that
      only the simulation can make. False on a failed round, which rebuilds
      nothing.
    responders: `[n]` bool, survivors that took part in unmasking.
    cost: scalar counts of the run, see `cost_of`.
  """

  total: jax.Array
  ok: jax.Array
  masked: jax.Array
  rebuilt_secret_keys: jax.Array
  rebuilt_seeds: jax.Array
  rebuilt_correct: jax.Array
  responders: jax.Array
  cost: dict


def secure_sum(
    key: jax.Array,
    inputs: jax.Array,
    participants: jax.Array,
    survivors: jax.Array,
    settings: SecureAggregationSettings,
    *,
    recover_dropped: bool = True,
) -> SecureSumResult:
  """Run the protocol on `[n, d]` uint32 ring vectors.

  Args:
    key: PRNG key of this round's protocol randomness (keys, seeds, Shamir
      polynomials, graph, unmasking dropouts).
    inputs: `[n, d]` uint32 ring elements below `2**settings.bits`, one
      row per cohort slot.
    participants: `[n]` bool, the clients that advertised and shared keys.
    survivors: `[n]` bool, the participants whose masked input arrived.
      A participant that is not a survivor dropped after sharing keys.
    settings: the protocol's settings.
    recover_dropped: False skips the server's removal of the masks that
      dropped clients left behind, to show what that step is for. The sum
      is then wrong whenever a participant dropped.

  Returns:
    A `SecureSumResult`.
  """
  if inputs.ndim != 2 or inputs.dtype != jnp.uint32:
    raise ValueError(
        'Secure aggregation inputs must be a [clients, d] uint32 array of '
        f'ring elements; got {inputs.dtype} of shape {inputs.shape}. Encode '
        'floats with fedjax_med.secure.encoding.encode first.'
    )
  num_clients, dimension = inputs.shape
  validate(settings, num_clients)
  bits = settings.bits
  if not isinstance(inputs, jax.core.Tracer) and bits < 32:
    largest = int(jnp.max(inputs, initial=0))
    if largest >= 2**bits:
      raise ValueError(
          f'Secure aggregation inputs must be ring elements below '
          f'2**bits = {2**bits}; got {largest}. Encode with '
          'fedjax_med.secure.encoding.encode at the same bits.')
  # Shares and holders are laid out for a full cohort (k_max, t_max); the
  # round uses its own k and t, sized on its participants.
  t_max = threshold(settings, num_clients)
  k_max = graph_degree(settings, num_clients)
  survivors = survivors & participants
  num_participants = jnp.sum(participants, dtype=jnp.int32)
  degree, t = _round_sizes(settings, num_clients, num_participants)
  slots = jnp.arange(num_clients)

  # Step 1: keys.
  client_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      jax.random.fold_in(key, _CLIENT_KEYS_TAG), slots)
  secret_keys = jax.vmap(
      lambda k: field.random_elements(
          jax.random.fold_in(k, _SECRET_KEY_TAG), (), nonzero=True)
  )(client_keys)
  seeds = jax.vmap(
      lambda k: field.random_elements(jax.random.fold_in(k, _SEED_TAG), ())
  )(client_keys)
  public_keys = field.power(jnp.uint32(field.GENERATOR), secret_keys)

  # Step 2: the graph and the shares. Holder r of client i is
  # neighbour_ids[i, r]; an edge is used only if both ends advertised keys.
  neighbour_ids = neighbours(
      jax.random.fold_in(key, _GRAPH_TAG), settings, num_clients,
      participants)
  edges = (participants[:, None] & participants[neighbour_ids]
           & used_columns(settings, num_clients, degree)[None, :])
  # A round of degree 0 fails and sends no share; its t of 0 becomes 1.
  key_shares = jax.vmap(
      lambda k, s: shamir.share(
          jax.random.fold_in(k, _SHARE_KEY_TAG), s, k_max, t_max,
          used_threshold=jnp.maximum(t, 1))
  )(client_keys, secret_keys)
  seed_shares = jax.vmap(
      lambda k, s: shamir.share(
          jax.random.fold_in(k, _SHARE_SEED_TAG), s, k_max, t_max,
          used_threshold=jnp.maximum(t, 1))
  )(client_keys, seeds)

  # Step 3: masked inputs from the survivors.
  self_masks = jax.vmap(
      lambda s: _expand(s, _SELF_MASK_TAG, dimension, bits))(seeds)
  pair_masks = jax.vmap(
      _pair_masks, in_axes=(0, 0, 0, None, 0, None, None)
  )(slots, secret_keys, neighbour_ids, public_keys, edges, dimension, bits)
  masked = (inputs + self_masks + pair_masks) & encoding.ring_mask(bits)
  masked = jnp.where(survivors[:, None], masked, jnp.uint32(0))

  # Step 4: unmasking.
  stays = jax.random.uniform(
      jax.random.fold_in(key, _UNMASK_DROPOUT_TAG), (num_clients,)
  ) >= settings.unmask_dropout_rate
  responders = survivors & stays
  holders_alive = edges & responders[neighbour_ids]
  dropped = participants & ~survivors
  live_shares = jnp.sum(holders_alive, axis=1)
  num_survivors = jnp.sum(survivors)
  enough = jnp.where(survivors | dropped, live_shares >= t, True)
  # A round too small for the graph (degree 0) fails, so that the server
  # never receives one client's input alone.
  ok = jnp.all(enough) & (num_survivors >= t) & (degree > 0)

  chosen = _first_holders(holders_alive, t_max)
  xs = (chosen + 1).astype(jnp.uint32)
  # The first t chosen holders responded whenever the round is ok.
  use = jnp.arange(t_max) < t
  rebuilt_keys = shamir.reconstruct(
      xs, jnp.take_along_axis(key_shares, chosen, axis=1), use)
  rebuilt_seeds = shamir.reconstruct(
      xs, jnp.take_along_axis(seed_shares, chosen, axis=1), use)
  # The server requests sk shares of the dropped clients only and seed
  # shares of the survivors only, so no client has both rebuilt.
  rebuilt_correct = ok & jnp.all(
      jnp.where(dropped, rebuilt_keys == secret_keys, True)
      & jnp.where(survivors, rebuilt_seeds == seeds, True)
  )

  total = jnp.sum(masked, axis=0)
  removed_self = jnp.sum(jnp.where(
      survivors[:, None],
      jax.vmap(lambda s: _expand(s, _SELF_MASK_TAG, dimension, bits))(
          rebuilt_seeds),
      jnp.uint32(0),
  ), axis=0)
  # A dropped client's masks with its surviving neighbours stay in the sum.
  # The server adds what the dropped client itself would have added, which
  # cancels them.
  edges_to_survivors = edges & survivors[neighbour_ids]
  if recover_dropped:
    restored = _orphaned_masks(
        dropped, rebuilt_keys, neighbour_ids, public_keys,
        edges_to_survivors, dimension, bits)
  else:
    restored = jnp.zeros((dimension,), jnp.uint32)
  total = (total - removed_self + restored) & encoding.ring_mask(bits)

  cost = cost_of(
      settings, dimension, edges, edges_to_survivors, survivors, dropped,
      responders, ok=ok, round_degree=degree, round_threshold=t,
  )
  return SecureSumResult(
      total=total, ok=ok, masked=masked, rebuilt_secret_keys=dropped & ok,
      rebuilt_seeds=survivors & ok, rebuilt_correct=rebuilt_correct,
      responders=responders, cost=cost,
  )


def cost_of(settings, dimension, edges, edges_to_survivors, survivors,
            dropped, responders, *, ok=True, round_degree=None,
            round_threshold=None) -> dict:
  """Return the run's communication and computation as scalar counts.

  * `client_bytes_up`: mean bytes a participant sends over the 4 steps
    (its 2 public keys, encrypted shares per neighbour, its masked vector
    at `bits` per coordinate, one share per neighbour when unmasking).
  * `client_bytes_down`: mean bytes a participant receives (neighbours'
    keys and encrypted shares, the dropout list as a bitmap).
  * `server_bytes`: all bytes the server receives and sends.
  * `plain_bytes_up`: bytes of the same vector sent as float32 without
    the protocol, for the overhead ratio.
  * `client_prg_expansions`: mean PRG expansions of length d per survivor
    (its pairwise masks and its self mask).
  * `server_prg_expansions`: expansions the server runs to unmask; 0 when
    the round failed (`ok` False), since it then unmasks nothing.
  * `reconstructions`: secrets the server rebuilds, each from t shares; 0
    when the round failed.
  * `threshold` and `degree`: the round's t and k (`round_threshold`,
    `round_degree`), by default those of a full cohort of `edges.shape[0]`
    participants.
  """
  num_clients = edges.shape[0]
  participants = survivors | dropped
  if round_degree is None:
    round_degree = graph_degree(settings, num_clients)
  if round_threshold is None:
    round_threshold = threshold(settings, num_clients)
  active = jnp.sum(edges, axis=1).astype(jnp.float32)
  num_participants = jnp.maximum(jnp.sum(participants), 1)
  vector_bytes = dimension * settings.bits / 8
  up = (2 * PUBLIC_KEY_BYTES + active * ENCRYPTED_SHARES_BYTES
        + jnp.where(survivors, vector_bytes, 0.0)
        + jnp.where(responders, active * SHARE_BYTES, 0.0))
  down = (active * (2 * PUBLIC_KEY_BYTES + ENCRYPTED_SHARES_BYTES)
          + num_participants / 8)
  survivor_edges = jnp.sum(edges, axis=1)
  orphaned_edges = jnp.sum(
      jnp.where(dropped, jnp.sum(edges_to_survivors, axis=1), 0))
  num_survivors = jnp.sum(survivors)

  def mean_over_participants(values):
    return jnp.sum(jnp.where(participants, values, 0.0)) / num_participants

  client_up = mean_over_participants(up)
  client_down = mean_over_participants(down)
  return {
      'secagg_client_bytes_up': client_up,
      'secagg_client_bytes_down': client_down,
      'secagg_server_bytes': (client_up + client_down) * num_participants,
      'secagg_plain_bytes_up': jnp.float32(dimension * 4),
      'secagg_client_prg_expansions': (
          jnp.sum(jnp.where(survivors, survivor_edges + 1, 0))
          / jnp.maximum(num_survivors, 1)),
      'secagg_server_prg_expansions': jnp.where(
          ok, num_survivors + orphaned_edges, 0),
      'secagg_reconstructions': jnp.where(
          ok, num_survivors + jnp.sum(dropped), 0),
      'secagg_threshold': jnp.int32(round_threshold),
      'secagg_degree': jnp.int32(round_degree),
  }
