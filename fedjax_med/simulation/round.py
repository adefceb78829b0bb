"""One federated round as a pure, jittable function.

`build_round` returns `round_fn(server_state, round_key) -> (server_state,
metrics)`. A round samples a cohort, trains every member with `jax.vmap` over
the cohort axis, drops updates that are not finite, clips, adds noise,
aggregates with the participation mask and applies the aggregate through an
optax optimizer on the server.

Keys: a client's key is `fold_in(clients_key, client_id)`, where
`clients_key` comes from the round key. A client's randomness therefore
depends only on the round and its id, not on its slot in the cohort.
"""

import inspect
from typing import Callable, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from fedjax_med import tree
from fedjax_med.aggregation import registry
from fedjax_med.communication import compression as compression_lib
from fedjax_med.client import key_tags
from fedjax_med.client import local_training
from fedjax_med.data import federated
from fedjax_med.privacy import mechanisms
from fedjax_med.secure import aggregate as secure_aggregate_lib
from fedjax_med.secure import protocol as secure_protocol
from fedjax_med.simulation import local_leaves
from fedjax_med.simulation import participation as participation_lib
from fedjax_med.simulation import sampling
from fedjax_med.typing import Params, PRNGKey

AGGREGATORS = registry.AGGREGATORS
# `attack(updates, malicious [cohort], honest [cohort], key) -> updates`.
Attack = Callable[[Params, jax.Array, jax.Array, PRNGKey], Params]
NOISE_KINDS = mechanisms.NOISE_KINDS
PrivacySettings = mechanisms.PrivacySettings
validate_privacy = mechanisms.validate_privacy

# Tags for `fold_in`, one per use of the round key.
_SAMPLE_TAG = 0
_DROPOUT_TAG = 1
_CLIENTS_TAG = 2
_CENTRAL_NOISE_TAG = 3
_COUNT_NOISE_TAG = 4
_ATTACK_TAG = 5
_SECURE_TAG = 6
_AVAILABILITY_TAG = 7
_LEAVE_TAG = 8
_SPEED_TAG = 9
# Folded into a client's key; `key_tags` lists every use of that key.
_COMPRESSION_TAG = key_tags.COMPRESSION
_CLIENT_NOISE_TAG = key_tags.CLIENT_NOISE
_PERSONAL_TAG = key_tags.PERSONAL


class ServerState(NamedTuple):
  """State carried between rounds.

  Attributes:
    params: global model parameters.
    opt_state: state of the server optimizer.
    round: number of rounds run so far, skipped rounds included.
    clip_norm: the current clip bound under adaptive clipping, else None.
    center: the previous round's aggregate, shaped like `params`, for an
      aggregator that starts from it (centered clipping), else None.
    control: SCAFFOLD's server control variate c, shaped like `params`.
    client_controls: SCAFFOLD's client control variates c_i, one per client
      of the population, each leaf shaped `[clients, *param_shape]`.
    personal: Ditto's personal models v_k, one per client of the population,
      each leaf shaped `[clients, *param_shape]`; they never leave their
      clients, so nothing in the round aggregates them.
    local: FedBN's client-local leaves (`simulation.local_leaves`): a
      nested dict of only the leaves that `local_mask` marks, each shaped
      `[clients, *leaf_shape]`. They never leave their clients either.
    clock: virtual seconds since the first round, under `participation`.
    contributions: `[clients]` int32 count of the rounds in which each
      client's update entered the aggregate, under `participation` or
      `compression`; the privacy accounting of realized participation
      reads it.
    residual: `[clients, num_params]` top-k error feedback, what each
      client has computed but not yet sent.
  """

  params: Params
  opt_state: optax.OptState
  round: jax.Array
  clip_norm: jax.Array | None = None
  center: Params | None = None
  control: Params | None = None
  client_controls: Params | None = None
  personal: Params | None = None
  local: Params | None = None
  clock: jax.Array | None = None
  contributions: jax.Array | None = None
  residual: jax.Array | None = None


def init_server_state(
    params: Params,
    server_optimizer: optax.GradientTransformation,
    clip_norm: float | None = None,
    *,
    aggregator: str = 'fedavg',
    scaffold_clients: int | None = None,
    personal_clients: int | None = None,
    local_mask: Params | None = None,
    local_clients: int | None = None,
    num_clients: int | None = None,
    error_feedback: bool = False,
) -> ServerState:
  """Return the state before round 1.

  Pass the starting `clip_norm` when the round uses adaptive clipping, the
  round's `aggregator`, so that centered clipping gets a zero center, and
  for SCAFFOLD the population size as `scaffold_clients`, so that every
  control variate starts at zero. For Ditto, pass the population size as
  `personal_clients`: every personal model starts at `params`. For FedBN,
  pass the round's `local_mask` and the population size as
  `local_clients`: every client's local leaves start at those of `params`.
  Under `participation` or `compression`, pass the population size as
  `num_clients`: the clock starts at 0 and every contribution count at 0.
  With top-k error feedback, also pass `error_feedback=True`: every
  residual starts at zero.
  """
  if clip_norm is not None:
    clip_norm = jnp.float32(clip_norm)
  center = None
  if aggregator in registry.NEEDS_CENTER:
    center = jax.tree.map(jnp.zeros_like, params)
  control = client_controls = None
  if scaffold_clients is not None:
    control = jax.tree.map(jnp.zeros_like, params)
    client_controls = jax.tree.map(
        lambda leaf: jnp.zeros((scaffold_clients,) + leaf.shape, leaf.dtype),
        params,
    )
  personal = None
  if personal_clients is not None:
    personal = jax.tree.map(
        lambda leaf: jnp.broadcast_to(leaf, (personal_clients,) + leaf.shape),
        params,
    )
  local = None
  if (local_mask is None) != (local_clients is None):
    raise ValueError(
        'FedBN needs both `local_mask` and `local_clients` (the population '
        'size); pass both or neither.'
    )
  if local_mask is not None:
    local_leaves.check_mask(params, local_mask)
    local = local_leaves.init_local(params, local_mask, local_clients)
  clock = contributions = residual = None
  if error_feedback and num_clients is None:
    raise ValueError(
        'Error feedback keeps one residual per client: pass the population '
        'size as `num_clients` too.'
    )
  if num_clients is not None:
    clock = jnp.float32(0.0)
    contributions = jnp.zeros((num_clients,), jnp.int32)
  if error_feedback:
    size = sum(leaf.size for leaf in jax.tree.leaves(params))
    residual = jnp.zeros((num_clients, size), jnp.float32)
  return ServerState(
      params, server_optimizer.init(params), jnp.int32(0), clip_norm, center,
      control, client_controls, personal, local, clock, contributions,
      residual,
  )


def build_round(
    train_data: federated.FederatedData,
    local_update: local_training.LocalUpdate,
    sampler: sampling.Sampler,
    server_optimizer: optax.GradientTransformation,
    *,
    aggregator: str = 'fedavg',
    privacy: PrivacySettings = PrivacySettings(),
    dropout_rate: float = 0.0,
    attack: Attack | None = None,
    malicious: jax.Array | None = None,
    aggregator_options: dict | None = None,
    scaffold_learning_rate: float | None = None,
    fednova: bool = False,
    fednova_proximal: float = 0.0,
    personal_update: local_training.LocalUpdate | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    secure_aggregation: secure_protocol.SecureAggregationSettings | None = None,
    local_mask: Params | None = None,
    unroll_chunks: bool = False,
    participation: participation_lib.Participation | None = None,
    compression: compression_lib.CompressionSettings | None = None,
) -> Callable[[ServerState, PRNGKey], tuple[ServerState, dict]]:
  """Build one jitted federated round over `train_data`.

  Args:
    train_data: the whole population, `[clients, examples, ...]`. Its
      real rows must hold finite values (see `check_population`), so that
      a non-finite update, which the round screens out, comes from
      training rather than from the input.
    local_update: a client's training, from `build_local_update`.
    sampler: chooses the cohort from a key.
    server_optimizer: applied to the negative aggregate, so `optax.sgd(1.0)`
      is plain FedAvg.
    aggregator: 'fedavg' (example-weighted mean), 'mean' (uniform mean) or
      a robust aggregator from `fedjax_med.aggregation.registry.ROBUST`.
      'centered_clipping' starts from the previous round's aggregate, kept
      in `ServerState.center`. 'qffl' weighs clients by
      `LocalResult.initial_loss`, so its `local_update` must be built with
      `report_initial_loss=True`.
    privacy: clipping and noise settings.
    dropout_rate: probability that a sampled client fails to report.
    attack: model poisoning applied to the cohort's updates after local
      training, as `attack(updates, malicious, honest, key) -> updates`
      with `[cohort]` bool masks; see `fedjax_med.attacks.model_poisoning`.
    malicious: `[clients]` bool mask of the population's malicious clients;
      required with `attack`.
    aggregator_options: settings of a robust aggregator, passed to
      `fedjax_med.aggregation.registry.build_aggregate` (`num_byzantine`,
      `trim_fraction`, `num_selected`, `max_norm`, `num_iterations`,
      `clip_radius`). Distributed noise assumes secure aggregation, so it
      allows only the aggregators that work from a sum.
    scaffold_learning_rate: turns on SCAFFOLD (Karimireddy et al., 2020,
      "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
      ICML) with this client SGD step size eta_l. Each step's gradient gets
      c - c_i added. After K local steps a client's control becomes
      c_i+ = c_i - c - delta / (K eta_l) (the paper's option II), and the
      server adds sum_i p_i (c_i+ - c_i) to c, where p_i is client i's
      aggregation weight over the whole population: 1 / clients as in the
      paper for a uniform aggregator, the example share for fedavg, so that
      c stays the weighted mean of the c_i. `local_update` must use
      plain SGD with this step size and accept a `correction` argument, as
      `build_local_update` does. Start from
      `init_server_state(..., scaffold_clients=train_data.num_clients)`.
    fednova: FedNova's normalized averaging (Wang et al., 2020, "Tackling
      the Objective Inconsistency Problem in Heterogeneous Federated
      Optimization", NeurIPS) for plain local SGD: client i's update is
      divided by its number of local steps tau_i and the weighted mean is
      multiplied by tau_eff = sum_i p_i tau_i, with p_i the aggregation
      weights. Clients that take more steps, such as larger ones under
      `num_epochs`, then no longer pull the model further. With equal
      steps it equals plain averaging.
    fednova_proximal: with `fednova`, the product eta * mu of the clients'
      step size and FedProx's `proximal_mu`, 0 for plain SGD. Each FedProx
      step shrinks the earlier progress by (1 - eta mu), so tau_i becomes
      ||a_i||_1 = (1 - (1 - eta mu)**tau_i) / (eta mu), as in Wang et al.
      (2020). May be traced.
    personal_update: turns on Ditto (Li et al., 2021, "Ditto: Fair and
      Robust Federated Learning Through Personalization", ICML): the local
      training of each client's personal model v_k, built with
      `proximal_mu` set to Ditto's lambda. In a round, every cohort member
      that reports and has rows trains v_k from its current value, pulled
      towards the round's global params w^t, on its own minibatches (a key
      apart from those of its global update). The global model is trained
      and aggregated as without Ditto. Start from
      `init_server_state(..., personal_clients=train_data.num_clients)`.
    chunk_size: train the cohort `chunk_size` clients at a time (a
      `lax.map` over chunks, each chunk a `vmap`), so that only one chunk's
      rows and training state are live at once. None trains the whole
      cohort in one `vmap`. The result equals the unchunked one up to float
      rounding (see `tests/simulation/test_scale.py`).
    mesh: a `jax.sharding.Mesh` with an axis named 'clients'; each chunk
      (or the whole cohort) is sharded over that axis, so the clients train
      on all the mesh's devices, and the population data are replicated.
      The aggregate is then summed across devices in another order, so the
      result equals the one-device result up to float rounding. Under
      `jax.distributed`, a mesh over `jax.devices()` spans every host.
    secure_aggregation: run the aggregation through the simulated secure
      aggregation protocol (`fedjax_med.secure`) with these settings. Only
      fedavg and mean are allowed, `privacy.clip_norm` bounds the encoding,
      and distributed noise becomes discrete Gaussian noise in ring units.
      The sampled clients take part in the key exchange; those that then
      drop out (`dropout_rate`), have no rows or send a non-finite update
      send no masked input, and the server removes their masks. A round in
      which the protocol fails leaves the model unchanged, with `skipped`
      and `secagg_failed` set. `round_fn.secure_plan(params)` returns the
      scale and other static choices.
    local_mask: turns on FedBN (`simulation.local_leaves`): a bool per
      params leaf, True for a leaf that stays on its client, such as
      `models.cnn.norm_mask(params)`. A cohort member trains from the
      global params with its own local leaves put in and stores its
      trained local leaves (if it reports and has rows); its update has
      zeros there, so clipping, noise, attacks and aggregation see only
      the shared leaves. Start from `init_server_state(...,
      local_mask=..., local_clients=train_data.num_clients)`. Not
      combined with SCAFFOLD or Ditto.
    unroll_chunks: with `chunk_size`, train the chunks one after another in
      straight-line code instead of a `lax.map` loop, for convolutional
      models on CPU (see `local_training.build_scan`). Compile time grows
      with the number of chunks.
    participation: availability, per-client dropouts, speeds, a deadline
      and a straggler policy (`simulation.participation`). The sampler
      then draws only from the clients available at the virtual clock
      (the built-in samplers take `available=`). Under 'partial', each
      client's `local_update` gets a `step_limit` keyword, as
      `build_scan`'s does. Start from `init_server_state(...,
      num_clients=...)`, which starts the clock.
    compression: how each client encodes its update
      (`fedjax_med.communication.compression`). A client compresses its
      update after local training (and after a poisoning attack); the
      server decodes it and then screens, clips, weighs and noises the
      decoded update as without compression. Clipping after decoding keeps
      the sensitivity of central noise at `clip_norm` whatever the
      compressor does. Local and distributed noise, secure aggregation,
      SCAFFOLD and FedBN are rejected with it. Top-k with error feedback
      keeps each client's residual in `ServerState.residual`: start from
      `init_server_state(..., num_clients=..., error_feedback=True)`.

  Returns:
    `round_fn(server_state, round_key, *, train_data=None, malicious=None)
    -> (server_state, metrics)`. Derive each round's key from one experiment
    key, for example `jax.random.fold_in(key, round_index)`. The keyword
    arguments replace the population and malicious mask given here for one
    call; they must keep the shapes, and the compiled round is then reused,
    so a study of many seeds compiles once. `round_fn.lower(server_state,
    round_key)` returns the lowered round over the bound data, to inspect
    its cost or sharding. A concrete (not traced) `train_data` gets the
    checks of `check_population`, as the bound population does. The
    metrics are scalars:

    * `round`: 1-based number of this round (`server_state.round` after it).
    * `num_sampled`: clients the sampler drew; `num_dropped`: of those, the
      clients that dropped out.
    * `num_contributing`: clients whose update entered the aggregate: not
      dropped, with at least one example and a finite update.
    * `num_examples`: training examples of the contributing clients.
    * `num_nonfinite`: updates excluded for a NaN or infinite entry.
    * `num_clipped`: contributing updates scaled down by `clip_norm`.
    * `num_truncated`: clients whose `num_epochs` did not fit in the scan.
    * `num_overflow`: Poisson draws left out because the cohort was full.
    * `mean_update_norm`: mean L2 norm of contributing updates, before
      clipping.
    * `train_loss`: example-weighted mean local loss of contributing
      clients; NaN in a skipped round.
    * `skipped`: True when no client contributed, without central noise;
      the params and optimizer state are then unchanged. Under central
      noise an empty round applies its noise (the accounted release), so
      it is not skipped; `num_contributing` is then 0.
    * `params_finite`: False once the server step has produced a NaN or
      infinite parameter (for example from a far too large learning rate).

    Under `participation` or `compression`, also:

    * `num_available`: clients online when the cohort was drawn.
    * `num_reported`: sampled clients whose update reached the server: not
      dropped out and not dropped as late.
    * `num_stragglers`: clients that would not finish their local steps by
      the deadline (dropped under 'drop', cut short under 'partial', waited
      for under 'wait').
    * `round_seconds` and `clock`: the round's virtual length and the
      clock after it. A round due in a slot where the schedule has every
      client offline starts at the next slot with a client that can be
      online, and `round_seconds` leaves out the closed slots it skipped.
    * `bytes_down`, `bytes_up`: float32 totals of the round. Every sampled
      client downloads `round_fn.message_bytes(params)['down']` bytes and
      every reporting client uploads `round_fn.message_bytes(params)['up']`
      bytes. These sizes are exact Python ints, to multiply by the counts
      where float32 rounds. They include SCAFFOLD's control variates and
      leave out FedBN's local leaves (`participation.message_bytes`).
  """
  options = dict(aggregator_options or {})
  # The round sets the name and the secure flag itself.
  settable = set(inspect.signature(registry.build_aggregate).parameters) - {
      'name', 'secure_aggregation'}
  unknown = sorted(set(options) - settable)
  if unknown:
    raise ValueError(
        f'`aggregator_options` has unknown settings {unknown}; the settings '
        f'are {sorted(settable)}.')
  aggregate_fn = registry.build_aggregate(
      aggregator, **options,
      secure_aggregation=privacy.noise_kind == 'distributed',
  )
  needs_center = aggregator in registry.NEEDS_CENTER
  needs_losses = aggregator in registry.NEEDS_LOSSES
  cohort_size = _check_cohort_shape(
      jax.eval_shape(sampler, jax.random.key(0)))
  registry.check_cohort(aggregate_fn, cohort_size, needs_center=needs_center,
                        needs_losses=needs_losses)
  validate_privacy(privacy, aggregator)
  if (privacy.noise_kind == 'distributed'
      and privacy.min_reporting_clients > cohort_size):
    # Each client adds std z C / sqrt(m), so fewer than m reports, which is
    # every round here, carry less noise than planned.
    raise ValueError(
        f'`min_reporting_clients={privacy.min_reporting_clients}` is larger '
        f'than the cohort of {cohort_size}, so every round would carry less '
        'distributed noise than planned. Use at most the cohort size.')
  if attack is not None and malicious is None:
    raise ValueError('`attack` needs a `malicious` mask over the clients.')
  check_population(train_data, local_update, sampler)
  _check_malicious(malicious, train_data.num_clients)
  if not 0.0 <= dropout_rate <= 1.0:
    raise ValueError(f'`dropout_rate` must be in [0, 1]; got {dropout_rate}.')
  scaffold = scaffold_learning_rate is not None
  if (scaffold and not tree.is_traced(scaffold_learning_rate)
      and not scaffold_learning_rate > 0):
    raise ValueError(
        '`scaffold_learning_rate` must be the positive client step size; '
        f'got {scaffold_learning_rate}.'
    )
  if scaffold and aggregator not in ('fedavg', 'mean'):
    raise ValueError(
        f'SCAFFOLD averages the control variates, so aggregator {aggregator} '
        'would not protect them and one poisoned client could steer every '
        'correction. Use aggregator fedavg or mean with SCAFFOLD.'
    )
  if fednova and scaffold:
    raise ValueError(
        'FedNova does not combine with SCAFFOLD: the control variates are '
        'built from each raw update, which FedNova rescales. Use one of '
        'them.'
    )
  if (not tree.is_traced(fednova_proximal)
      and not 0 <= fednova_proximal < 2):
    raise ValueError(
        '`fednova_proximal` is the client step size times FedProx\'s mu, in '
        f'[0, 2) for stable SGD steps; got {fednova_proximal}.'
    )
  if fednova and (aggregator not in ('fedavg', 'mean')
                  or privacy.noise_kind != 'none'):
    raise ValueError(
        'FedNova rescales the weighted mean of the updates, so it needs '
        f'aggregator fedavg or mean and no DP noise; got aggregator '
        f'{aggregator} and noise {privacy.noise_kind}.'
    )
  if local_mask is not None and (scaffold or personal_update is not None):
    raise ValueError(
        'FedBN keeps some leaves on the clients, which SCAFFOLD\'s control '
        'variates and Ditto\'s personal models do not account for. Turn '
        'SCAFFOLD and Ditto off with FedBN.'
    )
  if scaffold and privacy.noise_kind != 'none':
    raise ValueError(
        'SCAFFOLD sends each client\'s control variate unclipped and '
        'unnoised, so it cannot run with DP noise. Turn the noise off or '
        'use FedAvg or FedProx.'
    )

  if secure_aggregation is not None:
    secure_aggregate_lib.check_settings(secure_aggregation, privacy,
                                        aggregator)
    secure_protocol.validate(secure_aggregation, cohort_size)
    if scaffold or fednova:
      raise ValueError(
          'SCAFFOLD and FedNova send per-client values (control variates, '
          'step counts) that this secure aggregation does not protect. Turn '
          'them off under secure aggregation.'
      )
    if aggregator == 'fedavg' and privacy.weight_cap is None:
      # The padded length bounds every client's count, also for the
      # populations that `round_fn(train_data=...)` swaps in.
      weight_bound = float(max(train_data.max_examples, 1))
    else:
      weight_bound = 1.0

    def build_secure(params):
      return secure_aggregate_lib.build_secure_aggregate(
          secure_aggregation, update_privacy, aggregator, cohort_size,
          params, weight_bound,
      )

  compress = compression is not None and compression.kind != 'none'
  if compression is not None:
    compression_lib.validate(compression)
    if (privacy.noise_kind in ('local', 'distributed')
        or secure_aggregation is not None or scaffold
        or local_mask is not None):
      raise ValueError(
          'Compression runs before the server clips and noises each decoded '
          'update, so it cannot follow local or distributed noise or secure '
          'aggregation, and SCAFFOLD\'s controls and FedBN\'s local leaves '
          'would not be compressed. Use central or no noise, and turn '
          'SCAFFOLD, FedBN and secure aggregation off with compression.'
      )
  error_feedback = compress and compression.kind == 'top_k' and (
      compression.error_feedback)
  partial = False
  if participation is not None:
    participation_lib.validate(participation, train_data.num_clients)
    partial = participation.straggler_policy == 'partial'
    if participation.availability is not None and (
        'available' not in inspect.signature(sampler).parameters):
      raise ValueError(
          'Availability needs a sampler that takes `available=` (a [clients] '
          'bool mask), as `sampling.uniform_sampler` and '
          '`sampling.poisson_sampler` do.'
      )
    if secure_aggregation is not None and partial:
      raise ValueError(
          'Partial work sends step counts that secure aggregation does not '
          'protect; use straggler_policy "wait" or "drop" with it.'
      )
  tracks = participation is not None or compression is not None
  if mesh is not None and 'clients' not in mesh.axis_names:
    raise ValueError(
        "`mesh` needs an axis named 'clients'; got axes "
        f'{mesh.axis_names}. Build it as Mesh(devices, ("clients",)).'
    )
  map_cohort = _cohort_mapper(chunk_size, mesh, unroll=unroll_chunks)
  if personal_update is not None:
    train_personal = jax.vmap(
        lambda params, examples, count, key, start: personal_update(
            params, examples, count, key, start=start),
        in_axes=(None, 0, 0, 0, 0),
    )
  def limited(*args, limit=None, **kwargs):
    # Only a 'partial' round passes `step_limit`, so that a hand-written
    # `local_update` without that keyword still works elsewhere.
    if partial:
      kwargs['step_limit'] = limit
    return local_update(*args, **kwargs)

  if local_mask is not None:
    train_own = jax.vmap(
        lambda params, own, examples, count, key, limit: limited(
            local_leaves.merge(params, own), examples, count, key,
            limit=limit),
        in_axes=(None, 0, 0, 0, 0, 0),
    )
  if scaffold:
    train_local = jax.vmap(
        lambda params, examples, count, key, correction, limit: limited(
            params, examples, count, key, correction, limit=limit),
        in_axes=(None, 0, 0, 0, 0, 0),
    )
  else:
    train_local = jax.vmap(
        lambda params, examples, count, key, limit: limited(
            params, examples, count, key, limit=limit),
        in_axes=(None, 0, 0, 0, 0),
    )
  # Moved once here, so numpy input is not copied to the device every round.
  if mesh is None:
    train_data = jax.device_put(train_data)
  else:
    train_data = jax.device_put(train_data, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))

  if privacy.adaptive_clipping and privacy.noise_kind != 'none':
    # The accountant keeps the user's multiplier; the update noise is raised
    # so that the count release fits in the same budget.
    update_privacy = privacy._replace(
        noise_multiplier=mechanisms.adaptive_noise_multiplier(
            privacy.noise_multiplier, privacy.count_noise_stddev
        )
    )
  else:
    update_privacy = privacy

  def _privatize_and_aggregate(
      updates, weights, contributes, client_keys, privacy, key, center,
      losses,
  ):
    client_stddev = mechanisms.client_noise_stddev(privacy)
    noise_keys = jax.vmap(jax.random.fold_in, (0, None))(
        client_keys, _CLIENT_NOISE_TAG
    )
    if privacy.noise_kind == 'local':
      updates = mechanisms.add_client_noise(updates, noise_keys, client_stddev)
    if needs_center:
      return aggregate_fn(updates, weights, contributes, center)
    if needs_losses:
      return aggregate_fn(updates, weights, contributes, losses)
    if aggregator not in ('fedavg', 'mean'):
      return aggregate_fn(updates, weights, contributes)
    if privacy.noise_kind == 'distributed':
      # Each reporting client noises its own weighted update; the server
      # then only sums.
      weighted = jax.tree.map(
          lambda leaf: leaf * _expand(weights, leaf), updates
      )
      noised = mechanisms.add_client_noise(weighted, noise_keys, client_stddev)
      updates = tree.tree_zero_rows(noised, contributes)
      weights = contributes.astype(jnp.float32)
    return mechanisms.noised_mean(updates, weights, privacy, key=key)

  def message_bytes(params):
    """Return the bytes each client downloads and uploads in a round."""
    return participation_lib.message_bytes(
        params, compression, scaffold=scaffold, local_mask=local_mask)

  def _control_weights(num_examples):
    # From the data of this call, so that `round_fn(train_data=...)` with
    # other client sizes keeps c the weighted mean of the c_i. Clients
    # without rows never train, so their c_i = 0 would pull c towards 0.
    population_weights = mechanisms.client_weights(
        aggregator, num_examples > 0, num_examples, privacy.weight_cap,
    )
    total = jnp.sum(population_weights)
    return population_weights / jnp.where(total > 0, total, 1.0)

  @jax.jit
  def round_step(state, round_key, examples, num_examples, malicious):
    sample_key = jax.random.fold_in(round_key, _SAMPLE_TAG)
    if participation is not None:
      # No round starts in a slot where the schedule has every client
      # offline; under central noise it would release noise alone.
      state = state._replace(clock=participation_lib.open_slot_start(
          participation, state.clock))
    if participation is not None and participation.availability is not None:
      available = participation_lib.available_clients(
          participation, jax.random.fold_in(round_key, _AVAILABILITY_TAG),
          state.clock, num_examples.shape[0],
      )
      sampled = sampler(sample_key, available=available)
      num_available = jnp.sum(available)
    else:
      sampled = sampler(sample_key)
      num_available = jnp.int32(num_examples.shape[0])
    # A custom sampler's ids outside the population would read a clamped
    # client twice; such slots are left out.
    sampled = sampled._replace(mask=sampled.mask & (
        (sampled.client_ids >= 0)
        & (sampled.client_ids < num_examples.shape[0])))
    num_sampled = jnp.sum(sampled.mask)
    cohort = sampling.apply_dropout(
        jax.random.fold_in(round_key, _DROPOUT_TAG), sampled, dropout_rate
    )
    sizes = message_bytes(state.params)
    if participation is not None:
      cohort = cohort._replace(mask=cohort.mask & participation_lib.stays(
          participation, jax.random.fold_in(round_key, _LEAVE_TAG),
          cohort.client_ids,
      ))
      # Sampled clients that dropped out (either kind of dropout).
      left = sampled.mask & ~cohort.mask
      times = participation_lib.timing(
          participation, jax.random.fold_in(round_key, _SPEED_TAG),
          cohort.client_ids, model_bytes=sizes['down'],
          upload_bytes=sizes['up'],
      )
      limits = times.step_limit
    else:
      limits = jnp.full(cohort.client_ids.shape, participation_lib.NO_STEP_LIMIT, jnp.int32)
    num_left = jnp.sum(cohort.mask)
    counts = num_examples[cohort.client_ids]
    client_keys = slot_keys(
        jax.random.fold_in(round_key, _CLIENTS_TAG), cohort.client_ids)

    if scaffold:
      cohort_controls = jax.tree.map(
          lambda leaf: leaf[cohort.client_ids], state.client_controls
      )
      corrections = jax.tree.map(
          lambda c, c_i: c[None] - c_i, state.control, cohort_controls
      )
      local = map_cohort(
          lambda ids, keys, corrections, limits: train_local(
              state.params, _gather(examples, ids), num_examples[ids], keys,
              corrections, limits),
          cohort.client_ids, client_keys, corrections, limits,
      )
    elif local_mask is not None:
      local = map_cohort(
          lambda ids, keys, own, limits: train_own(
              state.params, own, _gather(examples, ids), num_examples[ids],
              keys, limits),
          cohort.client_ids, client_keys,
          jax.tree.map(lambda leaf: leaf[cohort.client_ids], state.local),
          limits,
      )
      own_deltas = local_leaves.split(local.delta, local_mask)
      local = local._replace(
          delta=local_leaves.zero_local(local.delta, local_mask))
    else:
      local = map_cohort(
          lambda ids, keys, limits: train_local(
              state.params, _gather(examples, ids), num_examples[ids], keys,
              limits),
          cohort.client_ids, client_keys, limits,
      )
    num_stragglers = jnp.int32(0)
    if participation is not None:
      finish = participation_lib.finish_times(times, local.num_steps)
      late, stragglers = _stragglers(
          participation, local, finish, limits, cohort.mask & (counts > 0))
      num_stragglers = jnp.sum(stragglers)
      cohort = cohort._replace(mask=cohort.mask & ~late)
    if attack is not None:
      cohort_malicious = malicious[cohort.client_ids] & cohort.mask
      honest = cohort.mask & ~cohort_malicious & (counts > 0)
      local = local._replace(delta=attack(
          local.delta, cohort_malicious, honest,
          jax.random.fold_in(round_key, _ATTACK_TAG),
      ))
    if compress:
      local, new_residuals = _compress_updates(
          compression, local, client_keys,
          None if not error_feedback else state.residual[cohort.client_ids],
      )
    if fednova:
      local = local._replace(delta=_normalize_steps(
          local, cohort.mask, counts, aggregator, privacy.weight_cap,
          fednova_proximal,
      ))
    round_privacy = update_privacy
    if privacy.adaptive_clipping:
      round_privacy = update_privacy._replace(clip_norm=state.clip_norm)
    updates, norms, contributes, diagnostics = _screen_and_clip(
        local.delta, cohort.mask, counts, round_privacy
    )
    weights = mechanisms.client_weights(
        aggregator, contributes, counts, privacy.weight_cap
    )
    secure_failed = False
    if secure_aggregation is None:
      aggregate = _privatize_and_aggregate(
          updates, weights, contributes, client_keys, round_privacy,
          key=jax.random.fold_in(round_key, _CENTRAL_NOISE_TAG),
          center=state.center,
          losses=local.initial_loss,
      )
    else:
      secure_aggregate, _ = build_secure(state.params)
      secure_keys = jax.vmap(jax.random.fold_in, (0, None))(
          client_keys, key_tags.SECURE)
      aggregate, secure_failed, secure_metrics = secure_aggregate(
          updates, weights, contributes, sampled.mask, secure_keys,
          jax.random.fold_in(round_key, _SECURE_TAG),
      )
      diagnostics.update(secure_metrics)
    if privacy.noise_kind == 'distributed':
      # A failed secure round releases nothing, so it cannot fall short of
      # the planned noise.
      diagnostics['below_min_reporting'] = (
          (jnp.sum(contributes) < privacy.min_reporting_clients)
          & jnp.logical_not(secure_failed)
      )

    # Under central noise a round with no contributing client still
    # applies its noise: unchanged params would tell everyone that the
    # round was empty, an outcome the accountant does not model, and that
    # changes with one client's presence under Poisson sampling.
    empty = jnp.sum(weights) <= 0
    if privacy.noise_kind == 'central':
      empty = False
    skipped = empty | secure_failed
    new_state = _server_update(state, aggregate, skipped, server_optimizer)
    if local_mask is not None:
      # The server's copy of the local leaves stays the initial one: central
      # noise or weight decay would otherwise move it, and clients that
      # never trained would no longer match it.
      new_state = new_state._replace(params=jax.tree.map(
          lambda local, old, new: jnp.where(local, old, new),
          local_mask, state.params, new_state.params))
    if scaffold:
      # The controls come from the unclipped updates, zeroed where a client
      # does not contribute: clipping is for the aggregate, not the drift.
      screened = tree.tree_zero_rows(local.delta, contributes)
      new_state = _update_controls(
          new_state, state, cohort.client_ids, screened, contributes,
          local.num_steps, scaffold_learning_rate,
          _control_weights(num_examples)[cohort.client_ids],
      )
    if needs_center:
      new_state = new_state._replace(
          center=tree.tree_where(skipped, state.center, aggregate)
      )
    if local_mask is not None:
      # As for Ditto's personal models, changes are added at the members'
      # ids, so a cohort's padding slots cannot overwrite a member. A
      # member whose local leaves turned NaN or infinite keeps its old
      # ones, as SCAFFOLD keeps its old control, so that one bad round
      # does not leave the member's every later update non-finite.
      trains = (cohort.mask & (counts > 0)
                & jax.vmap(tree.tree_is_finite)(own_deltas))
      new_state = new_state._replace(local=jax.tree.map(
          lambda stored, delta: stored.at[cohort.client_ids].add(
              jnp.where(_expand(trains, delta), delta, 0.0)),
          state.local, own_deltas,
      ))
    if personal_update is not None:
      new_state = new_state._replace(personal=_update_personal(
          state, train_personal, map_cohort, cohort, examples, num_examples,
          counts, client_keys,
      ))
    if privacy.adaptive_clipping:
      next_clip = mechanisms.adapt_clip_norm(
          state.clip_norm, norms, contributes, privacy,
          key=jax.random.fold_in(round_key, _COUNT_NOISE_TAG),
      )
      new_state = new_state._replace(
          clip_norm=jnp.where(skipped, state.clip_norm, next_clip)
      )
      diagnostics['clip_norm'] = state.clip_norm
    if tracks:
      reported = cohort.mask
      if participation is not None:
        clock = participation_lib.advance_clock(
            participation, state.clock,
            participation_lib.round_seconds(
                participation, finish, reported, late,
                noticed=jnp.where(left, times.download, 0.0)),
            num_available)
      else:
        clock = state.clock
      seconds = clock - state.clock
      new_state = new_state._replace(
          clock=clock,
          contributions=state.contributions.at[cohort.client_ids].add(
              contributes.astype(jnp.int32)),
      )
      if error_feedback:
        # A client whose update did not arrive keeps its old residual.
        kept = jnp.where(contributes[:, None],
                         new_residuals - state.residual[cohort.client_ids],
                         0.0)
        new_state = new_state._replace(
            residual=state.residual.at[cohort.client_ids].add(kept))
      diagnostics.update({
          'num_available': num_available,
          'num_reported': jnp.sum(reported),
          'num_stragglers': num_stragglers,
          'round_seconds': seconds,
          'clock': new_state.clock,
          'bytes_down': num_sampled.astype(jnp.float32) * sizes['down'],
          'bytes_up': jnp.sum(reported).astype(jnp.float32) * sizes['up'],
      })
    metrics = _round_metrics(
        state, num_sampled, cohort, counts, contributes, local, diagnostics,
        skipped,
    )
    metrics['num_dropped'] = num_sampled - num_left
    metrics['params_finite'] = tree.tree_is_finite(new_state.params)
    return new_state, metrics

  bound_data, bound_malicious = train_data, malicious
  # The device arrays of the last population that passed
  # `check_population`. JAX arrays are immutable, so the same arrays need
  # no second check, while numpy input becomes new arrays at every call.
  checked_leaves = [jax.tree.leaves(bound_data)]

  def check_swapped_population(data):
    leaves = jax.tree.leaves(data)
    if all(new is old for new, old in zip(leaves, checked_leaves[0])):
      return
    # Traced data (a vmapped sweep, LiRA's shadow models) passes the
    # shape checks here and skips the checks that read values.
    check_population(data, local_update, sampler)
    if not any(tree.is_traced(leaf) for leaf in leaves):
      checked_leaves[0] = leaves

  opt_structures = {}

  def check_opt_state(state):
    # Once per params structure: the state must come from this optimizer.
    params_structure = jax.tree.structure(state.params)
    if params_structure not in opt_structures:
      opt_structures[params_structure] = jax.tree.structure(
          jax.eval_shape(server_optimizer.init, state.params))
    if jax.tree.structure(state.opt_state) != opt_structures[
        params_structure]:
      raise ValueError(
          "The server state's `opt_state` does not match "
          '`server_optimizer`; build the state with '
          '`init_server_state(params, server_optimizer)` using the '
          'optimizer the round was built with.'
      )

  def round_fn(
      state: ServerState,
      round_key: PRNGKey,
      *,
      train_data: federated.FederatedData | None = None,
      malicious: jax.Array | None = None,
  ):
    _check_round_key(round_key)
    check_opt_state(state)
    if privacy.adaptive_clipping and state.clip_norm is None:
      raise ValueError(
          'Adaptive clipping needs the starting bound in the server state: '
          'call `init_server_state(params, optimizer, clip_norm=...)`.'
      )
    if scaffold and state.client_controls is None:
      raise ValueError(
          'SCAFFOLD needs control variates in the server state: call '
          '`init_server_state(params, optimizer, '
          'scaffold_clients=num_clients)`.'
      )
    if personal_update is not None and state.personal is None:
      raise ValueError(
          'Ditto needs personal models in the server state: call '
          '`init_server_state(params, optimizer, '
          'personal_clients=num_clients)`.'
      )
    if local_mask is not None and state.local is None:
      raise ValueError(
          'FedBN needs the clients\' local leaves in the server state: call '
          '`init_server_state(params, optimizer, local_mask=local_mask, '
          'local_clients=num_clients)`.'
      )
    if tracks and state.clock is None:
      raise ValueError(
          'Participation and compression need the clock and contribution '
          'counts in the server state: call `init_server_state(params, '
          'optimizer, num_clients=num_clients)`.'
      )
    if tracks and state.contributions.shape != (bound_data.num_clients,):
      raise ValueError(
          'The server state counts contributions for '
          f'{state.contributions.shape[0]} clients, but the round was built '
          f'for {bound_data.num_clients}; call `init_server_state(..., '
          f'num_clients={bound_data.num_clients})`.'
      )
    if error_feedback and state.residual is None:
      raise ValueError(
          'Top-k error feedback needs the residuals in the server state: '
          'call `init_server_state(params, optimizer, '
          'num_clients=num_clients, error_feedback=True)`.'
      )
    if needs_center and state.center is None:
      raise ValueError(
          f'Aggregator {aggregator} needs a center in the server state: call '
          f"`init_server_state(params, optimizer, aggregator='{aggregator}')`."
      )
    data = bound_data
    if train_data is not None:
      data = _same_layout(train_data, bound_data)
      check_swapped_population(data)
    if malicious is None:
      malicious = bound_malicious
    else:
      _check_malicious(malicious, bound_data.num_clients)
    return round_step(
        state, round_key, data.examples, data.num_examples, malicious
    )

  def lower(state: ServerState, round_key: PRNGKey):
    """Return the lowered round over the bound data, to inspect (sharding,
    cost) without running it."""
    return round_step.lower(
        state, round_key, bound_data.examples, bound_data.num_examples,
        bound_malicious,
    )

  def secure_plan(params):
    """Return the `SecurePlan` of a round over `params`, or None."""
    if secure_aggregation is None:
      return None
    return build_secure(params)[1]

  round_fn.lower = lower
  round_fn.secure_plan = secure_plan
  round_fn.message_bytes = message_bytes
  return round_fn


def scan_rounds(
    round_fn: Callable[..., tuple[ServerState, dict]], num_rounds: int
) -> Callable[[ServerState, PRNGKey, jax.Array], tuple[ServerState, dict]]:
  """Return a jitted `run(state, rounds_key, first_round)` of many rounds.

  `run` applies `round_fn` `num_rounds` times inside one `lax.scan`, with
  round i's key `fold_in(rounds_key, first_round + i)`, the keys a loop
  over `jax.random.fold_in(rounds_key, round_index)` would use. It returns
  the last state and each metric stacked over the rounds (`[num_rounds]`).
  One call replaces `num_rounds` Python calls, which pays off when a round
  takes less time than the call overhead (small models, few clients).
  """
  num_rounds = federated.check_count('num_rounds', num_rounds)

  @jax.jit
  def run(state, rounds_key, first_round):
    def body(state, index):
      return round_fn(state, jax.random.fold_in(rounds_key, index))

    indices = first_round + jnp.arange(num_rounds)
    return jax.lax.scan(body, state, indices)

  return run


def _stragglers(participation, local, finish, limits, active):
  """Return `(late, stragglers)`, `[cohort]` bools.

  `late` marks the updates the server discards as too late ('drop', and
  under 'partial' the clients that could not take one step in time).
  `stragglers` marks the clients the deadline affects: late under 'wait'
  and 'drop', cut short under 'partial'.
  """
  deadline = participation.deadline
  none = jnp.zeros_like(active)
  if deadline is None:
    return none, none
  policy = participation.straggler_policy
  if policy == 'partial':
    planned = local.planned_steps
    if planned is None:
      cut = local.num_steps >= limits
    else:
      cut = local.num_steps < planned
    return active & (local.num_steps == 0), active & cut
  stragglers = active & (finish > deadline)
  if policy == 'drop':
    return stragglers, stragglers
  return none, stragglers


def _compress_updates(settings, local, client_keys, residuals):
  """Return the cohort's decoded updates and new error-feedback residuals."""
  flat = jax.vmap(lambda delta: jax.flatten_util.ravel_pytree(delta)[0])(
      local.delta)
  _, unravel = jax.flatten_util.ravel_pytree(
      jax.tree.map(lambda leaf: leaf[0], local.delta))
  keys = jax.vmap(jax.random.fold_in, (0, None))(client_keys, _COMPRESSION_TAG)
  decoded, new_residuals = jax.vmap(
      lambda vector, key, residual: compression_lib.compress(
          settings, vector, key, residual),
  )(flat.astype(jnp.float32), keys, residuals)
  delta = jax.vmap(unravel)(decoded)
  return local._replace(delta=delta), new_residuals


def _normalize_steps(local, mask, counts, aggregator, weight_cap,
                     proximal=0.0):
  """Return FedNova's rescaled updates tau_eff / ||a_i||_1 * delta_i.

  ||a_i||_1 is the step count tau_i for plain SGD, and
  (1 - (1 - proximal)**tau_i) / proximal for FedProx, with `proximal` the
  step size times mu.
  """
  finite = jax.vmap(tree.tree_is_finite)(local.delta)
  valid = mask & (counts > 0) & finite & (local.num_steps > 0)
  weights = mechanisms.client_weights(aggregator, valid, counts, weight_cap)
  steps = local.num_steps.astype(jnp.float32)
  proximal = jnp.asarray(proximal, jnp.float32)
  # The sum of (1 - proximal)**k over k < tau_i. expm1 and log1p keep it
  # accurate for a small eta mu, where it tends to tau_i; from eta mu = 1
  # on, the ratio is at most 0 and alternates in sign.
  below_one = (proximal > 0) & (proximal < 1)
  small = jnp.where(below_one, proximal, 0.5)
  geometric = -jnp.expm1(steps * jnp.log1p(-small)) / small
  ratio = 1 - proximal
  odd = jnp.mod(steps, 2) == 1
  power = jnp.where(odd & (ratio < 0), -1.0, 1.0) * jnp.abs(ratio) ** steps
  alternating = (1 - power) / jnp.where(proximal >= 1, proximal, 1.0)
  steps = jnp.where(proximal <= 0, steps,
                    jnp.where(below_one, geometric, alternating))
  effective = jnp.sum(weights * steps) / jnp.maximum(jnp.sum(weights), 1e-30)
  # ||a_i||_1 lies between 1/2 and 1 when eta mu is above 1.
  scale = jnp.where(valid, effective / jnp.where(steps > 0, steps, 1.0),
                    1.0)
  # NaN rows stay NaN here and are screened out afterwards.
  return jax.tree.map(
      lambda leaf: leaf * _expand(scale, leaf).astype(leaf.dtype),
      local.delta,
  )


def _update_controls(
    new_state, state, client_ids, deltas, contributes, num_steps,
    learning_rate, control_weights,
):
  """Apply SCAFFOLD's option II control update for the contributing clients.

  `deltas` are the screened updates (zero for clients that do not
  contribute), so an excluded client keeps its control variate.
  """
  steps = jnp.maximum(num_steps, 1).astype(jnp.float32) * learning_rate

  def control_change(delta, c):
    scale = _expand(steps, delta)
    change = -c[None] - delta / scale
    return jnp.where(_expand(contributes, delta), change, 0.0)

  changes = jax.tree.map(control_change, deltas, state.control)
  control = jax.tree.map(
      lambda c, change: c + jnp.tensordot(control_weights, change, axes=1),
      state.control, changes,
  )
  # Duplicate ids in a cohort (none with the built-in samplers) would add
  # their changes together.
  client_controls = jax.tree.map(
      lambda controls, change: controls.at[client_ids].add(change),
      state.client_controls, changes,
  )
  return new_state._replace(control=control, client_controls=client_controls)


def _update_personal(
    state, train_personal, map_cohort, cohort, examples, num_examples, counts,
    client_keys,
):
  """Return the personal models after Ditto's step for the cohort.

  Members that dropped out or have no rows keep their model. The changes
  are added at the members' ids, so padding slots of a cohort, which carry
  a zero change, cannot overwrite a real member's model.
  """
  starts = jax.tree.map(lambda leaf: leaf[cohort.client_ids], state.personal)
  keys = jax.vmap(jax.random.fold_in, (0, None))(client_keys, _PERSONAL_TAG)
  result = map_cohort(
      lambda ids, keys, starts: train_personal(
          state.params, _gather(examples, ids), num_examples[ids], keys,
          starts),
      cohort.client_ids, keys, starts,
  )
  trains = cohort.mask & (counts > 0)
  return jax.tree.map(
      lambda models, delta: models.at[cohort.client_ids].add(
          jnp.where(_expand(trains, delta), delta, 0.0)),
      state.personal, result.delta,
  )


def _gather(examples, client_ids):
  return jax.tree.map(lambda leaf: leaf[client_ids], examples)


def slot_keys(clients_key: jax.Array, client_ids: jax.Array) -> jax.Array:
  """Return one PRNG key per cohort slot, distinct for repeated clients.

  The first slot of a client gets `fold_in(clients_key, id)`; its k-th
  repeat, from a custom sampler that draws with replacement, gets that key
  folded with k. Repeats used to share the key, so they trained and noised
  identically. Cohorts without repeats keep the keys of `fold_in` alone.
  """
  keys = jax.vmap(jax.random.fold_in, (None, 0))(clients_key, client_ids)
  order = jnp.argsort(client_ids, stable=True)
  sorted_ids = client_ids[order]
  first = jnp.searchsorted(sorted_ids, sorted_ids, side='left')
  repeat = jnp.zeros_like(client_ids).at[order].set(
      jnp.arange(client_ids.shape[0], dtype=client_ids.dtype)
      - first.astype(client_ids.dtype))
  folded = jax.vmap(jax.random.fold_in)(keys, repeat)
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return jnp.where((repeat > 0)[:, None], folded, keys)  # Raw uint32 keys.
  data = jnp.where((repeat > 0)[:, None], jax.random.key_data(folded),
                   jax.random.key_data(keys))
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))


def _check_cohort_shape(cohort) -> int:
  """Return the cohort size of a sampler's output shape, or raise ValueError.

  A custom sampler that breaks the `sampling.Cohort` contract otherwise
  fails deep inside the round with a JAX error that does not name it.
  """
  problem = None
  if not isinstance(cohort, sampling.Cohort):
    problem = f'it returned a {type(cohort).__name__}'
  elif cohort.client_ids.ndim != 1 or not jnp.issubdtype(
      cohort.client_ids.dtype, jnp.integer):
    problem = (f'its client_ids are {cohort.client_ids.dtype} shaped '
               f'{cohort.client_ids.shape}, not a 1-D integer array')
  elif cohort.mask.shape != cohort.client_ids.shape or (
      cohort.mask.dtype != jnp.bool_):
    problem = (f'its mask is {cohort.mask.dtype} shaped {cohort.mask.shape}, '
               f'not bool shaped {cohort.client_ids.shape}')
  elif jnp.shape(cohort.num_overflow) != ():
    problem = 'its num_overflow is not a scalar'
  if problem is not None:
    raise ValueError(
        f'The sampler must return simulation.Cohort(client_ids [cohort] '
        f'int32, mask [cohort] bool, num_overflow scalar), but {problem}.')
  return cohort.client_ids.shape[0]


def _cohort_mapper(chunk_size: int | None, mesh, *, unroll: bool = False):
  """Return `map_cohort(fn, *per_client)` that applies `fn` to the cohort.

  `fn` takes arrays with a leading cohort axis (ids, keys, ...) and returns
  a pytree with the same leading axis. With `chunk_size`, the cohort is
  padded to whole chunks by repeating its first member, `fn` runs on one
  chunk at a time in a `lax.map` (or, with `unroll`, in a Python loop
  traced into one program), and the padding rows are dropped. With
  `mesh`, the per-client inputs of each call are sharded over 'clients'.

  Raises:
    ValueError: if `chunk_size` is not None or an integer of at least 1.
  """
  if chunk_size is not None:
    federated.check_count('chunk_size', chunk_size)
  def constrain(tree):
    if mesh is None:
      return tree
    sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('clients'))
    return jax.lax.with_sharding_constraint(tree, sharding)

  def map_cohort(fn, *per_client):
    size = jax.tree.leaves(per_client)[0].shape[0]
    if chunk_size is None or chunk_size >= size:
      return fn(*constrain(per_client))
    num_chunks = -(-size // chunk_size)
    padded = num_chunks * chunk_size

    def to_chunks(leaf):
      filler = jnp.broadcast_to(leaf[:1], (padded - size,) + leaf.shape[1:])
      leaf = jnp.concatenate([leaf, filler])
      return leaf.reshape((num_chunks, chunk_size) + leaf.shape[1:])

    chunks = jax.tree.map(to_chunks, per_client)
    if unroll:
      outputs = [
          fn(*constrain(jax.tree.map(lambda leaf, i=index: leaf[i], chunks)))
          for index in range(num_chunks)
      ]
      results = jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)
    else:
      results = jax.lax.map(lambda args: fn(*constrain(args)), chunks)
    return jax.tree.map(
        lambda leaf: leaf.reshape((padded,) + leaf.shape[2:])[:size], results)

  return map_cohort


def check_population(
    train_data: federated.FederatedData,
    local_update: local_training.LocalUpdate,
    sampler: sampling.Sampler | None,
) -> None:
  """Check the population against the sampler and the local update.

  The data checks are `federated.check_federated_data`, with the labels
  checked for a local update that sets `num_classes` (as
  `build_local_update` and `build_dp_sgd_local_update` do). The checks
  that read values skip traced data, such as the stacked points of a
  batched sweep.

  Raises:
    ValueError: if a built-in sampler was built for another population
      size, if the fields' leading axes disagree with `num_examples` or
      their padded lengths with each other, if `num_examples` is outside
      [0, padded length], if a real row contains NaN or infinity, for
      a classifier, if the examples lack `x` or `y` or a real row's label
      is not an integer in [0, num_classes), or, for a survival update
      (`build_survival_local_update`), if a real row's time is negative or
      its event not 0 or 1.
  """
  federated.check_federated_data(
      train_data, name='train_data',
      num_classes=getattr(local_update, 'num_classes', None))
  if getattr(local_update, 'survival', False):
    federated.check_survival_data(train_data, name='train_data')
  num_clients = train_data.num_clients
  population = getattr(sampler, 'num_clients', None)
  if population is not None and population != num_clients:
    raise ValueError(
        f'The sampler draws from {population} clients, but `train_data` has '
        f'{num_clients}; build the sampler with num_clients={num_clients}.'
    )


def _check_round_key(round_key) -> None:
  """Raise unless `round_key` is one typed or raw (uint32 [2]) PRNG key."""
  dtype = getattr(round_key, 'dtype', None)
  typed = dtype is not None and jax.dtypes.issubdtype(
      dtype, jax.dtypes.prng_key)
  if typed and jnp.ndim(round_key) == 0:
    return
  if not typed and dtype == jnp.uint32 and jnp.shape(round_key) == (2,):
    return
  raise ValueError(
      '`round_key` must be one PRNG key, such as '
      '`jax.random.fold_in(jax.random.key(seed), round_number)`; got '
      f'{type(round_key).__name__} with dtype {dtype} and shape '
      f'{jnp.shape(round_key)}. For several rounds, call the round once '
      'per key or use `scan_rounds`.'
  )


def _check_malicious(malicious, num_clients: int) -> None:
  if malicious is not None and malicious.shape != (num_clients,):
    raise ValueError(
        f'`malicious` must be shaped ({num_clients},); got {malicious.shape}.'
    )


def _same_layout(data, bound):
  """Return `data` on the device, checking it matches the bound population."""
  shapes = jax.tree.map(jnp.shape, (data.examples, data.num_examples))
  expected = jax.tree.map(jnp.shape, (bound.examples, bound.num_examples))
  if shapes != expected:
    raise ValueError(
        f'`train_data` must have the array shapes of the population the '
        f'round was built for, {expected}; got {shapes}. Build a new round '
        'for a different population.'
    )
  return jax.device_put(data)


def _expand(values: jax.Array, leaf: jax.Array) -> jax.Array:
  """Reshape `[clients]` values to broadcast against a `[clients, ...]` leaf."""
  return values.reshape((-1,) + (1,) * (leaf.ndim - 1))


def _screen_and_clip(deltas, mask, counts, privacy):
  """Zero out non-finite updates and clip the rest, per client."""
  finite = jax.vmap(tree.tree_is_finite)(deltas)
  has_data = mask & (counts > 0)
  contributes = has_data & finite
  deltas = tree.tree_zero_rows(deltas, contributes)
  clipped = jax.vmap(mechanisms.clip_client_update, (0, None))(deltas, privacy)
  diagnostics = {
      'num_nonfinite': jnp.sum(has_data & ~finite),
      'num_clipped': jnp.sum(contributes & clipped.clipped),
      'mean_update_norm': jnp.sum(jnp.where(contributes, clipped.norm, 0.0))
      / jnp.maximum(jnp.sum(contributes), 1),
  }
  return clipped.update, clipped.norm, contributes, diagnostics


def _server_update(state, aggregate, skipped, server_optimizer):
  """Apply `-aggregate` as the server's gradient, unless the round skipped."""
  pseudo_gradient = jax.tree.map(jnp.negative, aggregate)
  updates, opt_state = server_optimizer.update(
      pseudo_gradient, state.opt_state, state.params
  )
  params = optax.apply_updates(state.params, updates)
  return state._replace(
      params=tree.tree_where(skipped, state.params, params),
      opt_state=tree.tree_where(skipped, state.opt_state, opt_state),
      round=state.round + 1,
  )


def _round_metrics(
    state, num_sampled, cohort, counts, contributes, local, diagnostics,
    skipped,
):
  example_weights = jnp.where(contributes, counts, 0).astype(jnp.float32)
  # `where` rather than a product, so that the NaN loss of an excluded
  # client cannot leak in through 0 * NaN.
  weighted_losses = jnp.where(contributes, example_weights * local.loss, 0.0)
  train_loss = jnp.sum(weighted_losses) / jnp.maximum(
      jnp.sum(example_weights), 1.0
  )
  return {
      'round': state.round + 1,
      'num_sampled': num_sampled,
      'num_dropped': num_sampled - jnp.sum(cohort.mask),
      'num_truncated': jnp.sum(cohort.mask & local.truncated),
      'num_contributing': jnp.sum(contributes),
      # Summed as integers: a float32 sum is inexact past 2**24 rows.
      'num_examples': jnp.sum(jnp.where(contributes, counts, 0),
                              dtype=jnp.int32),
      'num_overflow': cohort.num_overflow,
      'skipped': skipped,
      'train_loss': jnp.where(
          skipped | ~jnp.any(contributes), jnp.nan, train_loss),
      **diagnostics,
  }
