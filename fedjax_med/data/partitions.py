"""Partitions of a pooled dataset into federated clients.

A partition maps every row of a pooled dataset (`x` `[examples, ...]`, integer
labels `y` `[examples]`) to exactly one of C clients. Each scheme returns C
sorted int64 arrays of row indices into the pool, and `build_dataset` turns
such a list into a `FederatedDataset`. The schemes:

* `partition_dirichlet`: label skew with Dirichlet(alpha) class shares.
* `partition_pathological`: exactly k classes per client (McMahan's shards).
* `partition_quantity_skew`: log-normal or power-law client sizes.
* `partition_by_group`: one client per value of a column, such as a hospital.

`shift_dataset` (or `draw_feature_shift` plus `apply_feature_shift`) then
applies a per-client affine shift plus noise to the features of any
partition, the way a different scanner or lab calibration moves measurements.

Randomness: every random function takes a JAX key and draws all its numbers
from one `numpy.random.Generator` seeded with 128 bits of
`jax.random.bits(key)`. Partitioning is a one-off bookkeeping step on the host,
so it runs in numpy, and the same key and arguments give the same partition on
every backend.

Empty clients: `partition_dirichlet` and `partition_quantity_skew` take
`min_examples` (default 1), because a request for C clients usually means
C clients with data. The Dirichlet scheme redraws a partition that
leaves a client with fewer rows, up to `max_draws` times, and raises
`InputError` if no draw fits. Quantity skew gives every client
`min_examples` rows by construction. Pass `min_examples=0` to keep empty
clients. `FederatedData` stores them with `num_examples` 0, so they train for
no steps and get aggregation weight 0, but a client sampler may still pick
them and so shrink a round's cohort. `partition_pathological` and
`partition_by_group` never leave a client empty.

References:
  McMahan, Moore, Ramage, Hampson and Aguera y Arcas. Communication-Efficient
  Learning of Deep Networks from Decentralized Data. AISTATS 2017.
  https://arxiv.org/abs/1602.05629

  Yurochkin, Agarwal, Ghosh, Greenewald, Hoang and Khazaeni. Bayesian
  Nonparametric Federated Learning of Neural Networks. ICML 2019.
  https://arxiv.org/abs/1905.12022

  Hsu, Qi and Brown. Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification. NeurIPS 2019 Workshop on Federated
  Learning. https://arxiv.org/abs/1909.06335

  Li, Diao, Chen and He. Federated Learning on Non-IID Data Silos: An
  Experimental Study (NIID-Bench). ICDE 2022. https://arxiv.org/abs/2102.02079
"""

import dataclasses
import heapq
import math
from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.data import federated
from fedjax_med.data import tabular
from fedjax_med.errors import InputError
from fedjax_med.typing import PRNGKey


# Validation and shared helpers.


def _host_rng(key: PRNGKey) -> np.random.Generator:
  """Return a numpy Generator seeded with 128 bits drawn from `key`."""
  federated.check_key(key)
  bits = jax.random.bits(key, (4,), jnp.uint32)
  return np.random.default_rng([int(word) for word in np.asarray(bits)])


def _check_count(name: str, value: int, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise InputError(f'`{name}` must be an integer; got {value!r}.')
  if value < minimum:
    raise InputError(f'`{name}` must be >= {minimum}; got {value}.')


def _check_real(name: str, value: float, *, positive: bool) -> None:
  """Raise unless `value` is a finite real number, > 0 or >= 0."""
  requirement = '> 0' if positive else '>= 0'
  if (
      isinstance(value, bool)
      or not isinstance(value, (int, float, np.integer, np.floating))
      or not math.isfinite(value)
      or value < 0
      or (positive and value == 0)
  ):
    raise InputError(
        f'`{name}` must be a finite number {requirement}; got {value!r}.'
    )


def _check_labels(
    labels: np.ndarray, num_classes: int | None, argument: str = 'labels'
) -> tuple[np.ndarray, int]:
  """Return the labels as int64 and the number of classes, or raise."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise InputError(f'`{argument}` must be 1-D; got shape {labels.shape}.')
  if labels.size == 0:
    raise InputError(f'`{argument}` is empty; it needs at least one row.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise InputError(
        f'`{argument}` must have an integer dtype; got {labels.dtype}. Cast '
        f'whole-number labels with `{argument}.astype(int)`.'
    )
  smallest = int(labels.min())
  largest = int(labels.max())
  if smallest < 0:
    raise InputError(f'`{argument}` must be >= 0; found label {smallest}.')
  if largest > np.iinfo(np.int32).max:
    # The clients store int32 labels: 2**32 became class 0.
    raise InputError(
        f'`{argument}` has label {largest}, above the int32 maximum '
        f'{np.iinfo(np.int32).max} of class labels. Map the labels to 0 .. '
        'num_classes - 1.'
    )
  if num_classes is None:
    num_classes = largest + 1
  _check_count('num_classes', num_classes, 1)
  if largest >= num_classes:
    raise InputError(
        f'Label {largest} is out of range for num_classes={num_classes}. '
        'Labels must be in [0, num_classes). Raise `num_classes` or fix the '
        'labels.'
    )
  return labels.astype(np.int64), int(num_classes)


def _indices_from_owner(
    owner: np.ndarray, num_clients: int
) -> list[np.ndarray]:
  """Turn `owner` `[examples]` (client of each row) into sorted index lists."""
  order = np.argsort(owner, kind='stable')
  sizes = np.bincount(owner, minlength=num_clients)
  return np.split(order.astype(np.int64), np.cumsum(sizes)[:-1])


def _apportion(total: int, log_weights: np.ndarray) -> np.ndarray:
  """Split `total` into integers proportional to exp(log_weights).

  Uses largest-remainder rounding, so the parts sum to `total` exactly and
  each part is within 1 of its exact share.
  """
  shares = np.exp(log_weights - log_weights.max())
  quotas = total * shares / shares.sum()
  parts = np.floor(quotas).astype(np.int64)
  shortfall = total - int(parts.sum())
  by_remainder = np.argsort(-(quotas - parts), kind='stable')
  parts[by_remainder[:shortfall]] += 1
  return parts


# Dirichlet label skew.


# `_draw_dirichlet_shares` replaces numpy's draw by the limit of the
# distribution for alpha below _ONE_HOT_ALPHA or C * alpha above
# _EQUAL_SHARES_TOTAL_ALPHA.
_ONE_HOT_ALPHA = 1e-300
_EQUAL_SHARES_TOTAL_ALPHA = 1e300


def _draw_dirichlet_shares(
    num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
  """Draw `[clients]` shares from Dirichlet(alpha * 1_C).

  numpy 2.4 fails at both ends of the alpha range, so the extremes use the
  limit of the distribution, which equals it to float64 precision there:

  * For alpha below about 1e-321 (subnormal), numpy's draw gives the whole
    class to the last clients more often than to the first. A share is
    Beta(alpha, (C - 1) * alpha). For small alpha it lies in
    [2^-53, 1 - 2^-53] with probability about 2 * alpha * ln(2^53), that
    is 74 * alpha (an estimate). So for alpha < 1e-300 the shares are
    one-hot at a uniform random client, except with probability below
    100 * C * alpha.
  * numpy divides Gamma(alpha) draws by their sum, which overflows to inf
    once C * alpha passes about 1.8e308, and every share becomes 0. A share
    has std below 1 / (C * sqrt(C * alpha)), so for C * alpha > 1e300 the
    shares are 1 / C to float64 precision.
  """
  if alpha < _ONE_HOT_ALPHA:
    shares = np.zeros(num_clients)
    shares[rng.integers(num_clients)] = 1.0
    return shares
  if alpha > _EQUAL_SHARES_TOTAL_ALPHA / num_clients:
    return np.full(num_clients, 1.0 / num_clients)
  return rng.dirichlet(np.full(num_clients, alpha))


def _draw_dirichlet_owner(
    class_rows: list[np.ndarray],
    num_examples: int,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
  """Draw one Dirichlet partition and return the client of every row."""
  owner = np.empty(num_examples, np.int64)
  for rows in class_rows:
    shares = _draw_dirichlet_shares(num_clients, alpha, rng)
    # The clients are cut in a fresh random order for each class. In client
    # order, shares near 1/C round at the same points in every class and
    # every seed, so at alpha 1e6 clients 2 and 7 of 100 always got 10 rows
    # where the others got 20.
    order = rng.permutation(num_clients)
    # Rounded cumulative shares are nondecreasing split points, so each row
    # of the class goes to exactly one client.
    bounds = np.round(np.cumsum(shares[order])[:-1] * len(rows)).astype(
        np.int64)
    bounds = np.clip(bounds, 0, len(rows))
    counts = np.diff(np.concatenate([[0], bounds, [len(rows)]]))
    owner[rng.permutation(rows)] = np.repeat(order, counts)
  return owner


def partition_dirichlet(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    key: PRNGKey,
    num_classes: int | None = None,
    min_examples: int = 1,
    max_draws: int = 100,
) -> list[np.ndarray]:
  """Partition rows by label, with Dirichlet(alpha) class shares per client.

  For every class k, the shares p_k ~ Dir(alpha * 1_C) give the fraction of
  the class that each of the C clients receives. The rows of class k are
  shuffled and cut at `round(n_k * cumsum(p_k))`, so client c gets n_k * p_kc
  rows to within 1. This is the per-class scheme of Yurochkin et al. (2019)
  and NIID-Bench (Li et al., 2022). Hsu et al. (2019) instead draw each
  client's class mixture. A large alpha (1000) gives every client nearly the
  global label distribution. A small alpha (0.01) gives nearly all of each
  class to one client, so each client has few classes and many may be empty.

  When a client gets fewer than `min_examples` rows, every share is drawn
  again, up to `max_draws` draws in all. The result is then a draw conditioned
  on every client having at least `min_examples` rows, as in NIID-Bench, which
  redraws until each client has 10. Unlike NIID-Bench's code, this function
  does not zero the shares of clients that already have N / C rows, so client
  sizes vary more.

  Args:
    labels: `[examples]` integer class labels in [0, num_classes).
    num_clients: number of clients C, >= 1.
    alpha: Dirichlet concentration, finite and > 0. Below 1e-300 each class
      goes whole to one uniform random client, and above 1e300 / C each
      client gets 1 / C of every class to within a row. These are the
      limits of the distribution.
    key: JAX PRNG key. The same key and arguments give the same partition.
    num_classes: number of classes, by default `max(labels) + 1`.
    min_examples: minimum number of rows per client, >= 0.
    max_draws: maximum number of partitions drawn before raising, >= 1.

  Returns:
    A list of C sorted int64 arrays of row indices into `labels`. Every row
    appears in exactly one array.

  Raises:
    InputError: if an argument is out of range, the labels are not 1-D
      non-negative integers below `num_classes`, `num_clients * min_examples`
      exceeds the number of rows, or no draw in `max_draws` gives every client
      `min_examples` rows.
  """
  labels, num_classes = _check_labels(labels, num_classes)
  _check_count('num_clients', num_clients, 1)
  _check_count('min_examples', min_examples, 0)
  _check_count('max_draws', max_draws, 1)
  _check_real('alpha', alpha, positive=True)
  _check_enough_rows(len(labels), num_clients, min_examples)
  rng = _host_rng(key)

  class_rows = [np.flatnonzero(labels == k) for k in range(num_classes)]
  class_rows = [rows for rows in class_rows if len(rows)]
  smallest = 0
  for _ in range(max_draws):
    owner = _draw_dirichlet_owner(
        class_rows, len(labels), num_clients, alpha, rng
    )
    smallest = int(np.bincount(owner, minlength=num_clients).min())
    if smallest >= min_examples:
      return _indices_from_owner(owner, num_clients)

  raise InputError(
      f'No Dirichlet draw in max_draws={max_draws} gave every one of the '
      f'{num_clients} clients at least min_examples={min_examples} rows (the '
      f'last draw had a client with {smallest}). Raise `alpha`, lower '
      '`num_clients` or `min_examples`, raise `max_draws`, or pass '
      'min_examples=0 to keep small and empty clients.'
  )


def _check_enough_rows(
    num_examples: int, num_clients: int, min_examples: int
) -> None:
  if num_clients * min_examples > num_examples:
    raise InputError(
        f'{num_clients} clients with min_examples={min_examples} need '
        f'{num_clients * min_examples} rows, but the pool has {num_examples}. '
        'Lower `num_clients` or `min_examples`.'
    )


# Pathological k classes per client.


def _class_quotas(
    class_sizes: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
) -> np.ndarray:
  """Return how many clients share each class.

  Every class gets at least 1 client and at most min(C, n_k), so that no
  client gets a class twice and every client gets at least one row of each
  of its classes. The C * k slots go one at a time to the class with the most
  rows per client so far, which makes the pieces nearly equal in size, like
  McMahan's equal shards. Ties go to a random class.
  """
  quotas = np.ones(len(class_sizes), np.int64)
  caps = np.minimum(class_sizes, num_clients)
  tie_breaks = rng.permutation(len(class_sizes))
  heap = [(-size, tie_breaks[k], k) for k, size in enumerate(class_sizes)]
  heapq.heapify(heap)
  for _ in range(num_clients * classes_per_client - len(class_sizes)):
    # The caller checked that the caps sum to at least C * k, so the heap
    # never runs out.
    while quotas[heap[0][2]] >= caps[heap[0][2]]:
      heapq.heappop(heap)
    _, tie_break, k = heapq.heappop(heap)
    quotas[k] += 1
    heapq.heappush(heap, (-class_sizes[k] / quotas[k], tie_break, k))
  return quotas


def _assign_classes(
    quotas: np.ndarray, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
  """Give every client k distinct classes, using class j `quotas[j]` times.

  A remaining set of quotas with sum k * r over r clients fits r clients of
  k distinct classes exactly when no quota exceeds r (the Gale-Ryser
  condition with equal row sums). Each client therefore takes every class
  whose quota equals the clients left, then fills up with other classes drawn
  in proportion to their remaining quotas. The returned list has one array
  of class positions per client, in a random client order.
  """
  num_clients = int(quotas.sum()) // classes_per_client
  remaining = quotas.copy()
  chosen = []
  for clients_left in range(num_clients, 0, -1):
    forced = np.flatnonzero(remaining == clients_left)
    optional = np.flatnonzero((remaining > 0) & (remaining < clients_left))
    num_optional = classes_per_client - len(forced)
    extra = np.zeros(0, np.int64)
    if num_optional:
      weights = remaining[optional] / remaining[optional].sum()
      extra = rng.choice(optional, num_optional, replace=False, p=weights)
    classes = np.concatenate([forced, extra])
    remaining[classes] -= 1
    chosen.append(classes)
  return [chosen[c] for c in rng.permutation(num_clients)]


def partition_pathological(
    labels: np.ndarray,
    *,
    num_clients: int,
    classes_per_client: int,
    key: PRNGKey,
    num_classes: int | None = None,
) -> list[np.ndarray]:
  """Partition rows so that every client has rows of exactly k classes.

  McMahan et al. (2017) sort the rows by label, cut them into C * k equal
  shards and give each client k shards, so a client may get fewer than k
  classes, or more when a shard crosses a class boundary. This function keeps
  the idea but guarantees exactly k = `classes_per_client` distinct labels per
  client. Each class present in `labels` is shared by between 1 and
  min(C, n_k) clients. The C * k client slots are spread over the classes in
  proportion to their sizes (see `_class_quotas`), and the clients of a class
  get near-equal random pieces of its rows. With balanced classes and C * k
  a multiple of the number of classes, every client gets about N / C rows,
  as with equal shards. Otherwise classes get different numbers of clients
  and sizes vary: 7 clients of 2 labels over 10 classes of 100 rows get 100
  to 200 rows, against N / C = 143.

  Only the classes present in `labels` count, because a class without rows
  cannot give a client any examples. No client is ever empty.

  Args:
    labels: `[examples]` integer class labels in [0, num_classes).
    num_clients: number of clients C, >= 1.
    classes_per_client: distinct classes k per client, >= 1.
    key: JAX PRNG key. The same key and arguments give the same partition.
    num_classes: number of classes, by default `max(labels) + 1`.

  Returns:
    A list of C sorted int64 arrays of row indices into `labels`. Every row
    appears in exactly one array, and every array has rows of exactly k
    labels.

  Raises:
    InputError: if the labels or arguments are invalid, or if no such
      partition exists: k exceeds the classes present (K), C * k < K so some
      class would have no client, or the rows are too few, that is
      sum over classes of min(C, n_k) < C * k.
  """
  labels, num_classes = _check_labels(labels, num_classes)
  _check_count('num_clients', num_clients, 1)
  _check_count('classes_per_client', classes_per_client, 1)
  all_class_sizes = np.bincount(labels, minlength=num_classes)
  present = np.flatnonzero(all_class_sizes)
  class_sizes = all_class_sizes[present]
  _check_pathological_feasible(
      class_sizes, num_clients, classes_per_client, num_classes
  )
  rng = _host_rng(key)

  quotas = _class_quotas(class_sizes, num_clients, classes_per_client, rng)
  client_classes = _assign_classes(quotas, classes_per_client, rng)
  holders = [[] for _ in present]
  for client, classes in enumerate(client_classes):
    for position in classes:
      holders[position].append(client)

  owner = np.empty(len(labels), np.int64)
  for position, label in enumerate(present):
    rows = rng.permutation(np.flatnonzero(labels == label))
    for client, piece in zip(
        holders[position], np.array_split(rows, len(holders[position]))
    ):
      owner[piece] = client
  return _indices_from_owner(owner, num_clients)


def _check_pathological_feasible(
    class_sizes: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    num_classes: int,
) -> None:
  num_present = len(class_sizes)
  if classes_per_client > num_present:
    raise InputError(
        f'classes_per_client={classes_per_client} exceeds the {num_present} '
        f'classes present in `labels` (num_classes={num_classes}). Lower '
        '`classes_per_client`.'
    )
  slots = num_clients * classes_per_client
  if slots < num_present:
    raise InputError(
        f'{num_clients} clients with {classes_per_client} classes each cover '
        f'at most {slots} classes, but {num_present} classes are present, so '
        'some rows would have no client. Raise `num_clients` or '
        '`classes_per_client`, or drop rows of some classes.'
    )
  capacity = int(np.minimum(class_sizes, num_clients).sum())
  if capacity < slots:
    raise InputError(
        f'Too few rows for {num_clients} clients with {classes_per_client} '
        'classes each: a class of n rows can be shared by at most min(n, '
        f'num_clients) clients, which allows {capacity} client-class pairs '
        f'of the {slots} needed. Lower `num_clients` or '
        '`classes_per_client`.'
    )


# Quantity skew.


def partition_quantity_skew(
    num_examples: int,
    *,
    num_clients: int,
    key: PRNGKey,
    distribution: Literal['lognormal', 'power_law'] = 'lognormal',
    sigma: float | None = None,
    tail_index: float | None = None,
    min_examples: int = 1,
) -> list[np.ndarray]:
  """Partition N rows at random into clients of skewed sizes.

  Client c draws a weight w_c, log-normal with log-std `sigma` (default 1.0)
  or Pareto with P(w > t) = t^(-tail_index) for t >= 1 (default tail index
  1.5, and a smaller index gives heavier tails). Client c gets
  `min_examples` rows plus a share of the other N - C * min_examples rows
  proportional to w_c, rounded by largest remainder so the sizes sum to N.
  The rows themselves are assigned uniformly at random, so every client has
  the pooled label distribution in expectation.

  Args:
    num_examples: number of rows N in the pool, >= 1.
    num_clients: number of clients C, >= 1.
    key: JAX PRNG key. The same key and arguments give the same partition.
    distribution: 'lognormal' or 'power_law'.
    sigma: std of log(w) for 'lognormal', finite and >= 0. 0 gives equal
      sizes. Only valid with 'lognormal'.
    tail_index: Pareto tail index for 'power_law', finite and > 0. Only valid
      with 'power_law'.
    min_examples: minimum number of rows per client, >= 0.

  Returns:
    A list of C sorted int64 arrays of row indices in [0, N). Every row
    appears in exactly one array.

  Raises:
    InputError: if an argument is out of range, a parameter is passed for the
      other distribution, or `num_clients * min_examples` exceeds N.
  """
  _check_count('num_examples', num_examples, 1)
  _check_count('num_clients', num_clients, 1)
  _check_count('min_examples', min_examples, 0)
  _check_enough_rows(num_examples, num_clients, min_examples)
  sigma, tail_index = _check_size_distribution(distribution, sigma, tail_index)
  rng = _host_rng(key)

  log_weights = _draw_log_weights(
      num_clients, rng, distribution, sigma, tail_index
  )
  extra = _apportion(num_examples - num_clients * min_examples, log_weights)
  sizes = min_examples + extra

  owner = np.empty(num_examples, np.int64)
  owner[rng.permutation(num_examples)] = np.repeat(
      np.arange(num_clients), sizes
  )
  return _indices_from_owner(owner, num_clients)


def _draw_log_weights(
    num_clients: int,
    rng: np.random.Generator,
    distribution: str,
    sigma: float,
    tail_index: float,
) -> np.ndarray:
  """Draw `[clients]` log client weights, shifted so that the max is 0.

  numpy's `pareto(a)` is expm1(E / a) with E ~ Exp(1) (numpy 2.4), so
  log(1 + pareto(a)) is E / a, and drawing E directly takes the same
  numbers from `rng`. The shift comes before the scaling, so a huge `sigma`
  or a tiny `tail_index` sends small weights to -inf (weight 0) instead of
  sending the largest to inf, where inf - inf would be NaN.
  """
  with np.errstate(over='ignore'):
    if distribution == 'lognormal':
      normal = rng.standard_normal(num_clients)
      return sigma * (normal - normal.max())
    exponential = rng.standard_exponential(num_clients)
    return (exponential - exponential.max()) / tail_index


def _check_size_distribution(
    distribution: str, sigma: float | None, tail_index: float | None
) -> tuple[float, float]:
  """Return (sigma, tail_index) with defaults filled in, or raise."""
  if distribution == 'lognormal':
    if tail_index is not None:
      raise InputError(
          "`tail_index` applies only to distribution='power_law'; got "
          f"tail_index={tail_index} with distribution='lognormal'. Pass "
          '`sigma` instead.'
      )
    sigma = 1.0 if sigma is None else sigma
    _check_real('sigma', sigma, positive=False)
    return sigma, 0.0
  if distribution == 'power_law':
    if sigma is not None:
      raise InputError(
          "`sigma` applies only to distribution='lognormal'; got "
          f"sigma={sigma} with distribution='power_law'. Pass `tail_index` "
          'instead.'
      )
    tail_index = 1.5 if tail_index is None else tail_index
    _check_real('tail_index', tail_index, positive=True)
    return 0.0, tail_index
  raise InputError(
      "`distribution` must be 'lognormal' or 'power_law'; got "
      f'{distribution!r}.'
  )


# Natural split by a column.


def partition_by_group(
    groups: np.ndarray | Sequence[object],
) -> tuple[list[np.ndarray], tuple[str, ...]]:
  """Partition rows into one client per distinct group id.

  Use this for a natural split, such as the hospital or region of each row.
  Clients are ordered by the first row of their group, as `load_csv` orders
  them.

  Args:
    groups: `[examples]` group id of each row: strings or integers.

  Returns:
    `(client_indices, client_names)`: one sorted int64 array of the rows of
    each group, and `str()` of each group id, in the same order.

  Raises:
    InputError: if `groups` is empty, not 1-D, or contains NaN or None.
  """
  groups = np.asarray(groups)
  if groups.ndim != 1 or groups.size == 0:
    raise InputError(
        f'`groups` must be a non-empty 1-D array; got shape {groups.shape}.'
    )
  if groups.dtype == object and any(group is None for group in groups):
    raise InputError('`groups` contains None. Give every row a group id.')
  if np.issubdtype(groups.dtype, np.floating) and np.isnan(groups).any():
    raise InputError('`groups` contains NaN. Give every row a group id.')

  try:
    values, first_rows, inverse = np.unique(
        groups, return_index=True, return_inverse=True
    )
  except TypeError:
    raise InputError(
        '`groups` mixes ids of types that cannot be compared, such as '
        'strings and numbers. Convert every id to one type, for example '
        'with `np.asarray(groups, dtype=str)`.'
    ) from None
  order = np.argsort(first_rows)
  client_of_value = np.empty(len(values), np.int64)
  client_of_value[order] = np.arange(len(values))
  owner = client_of_value[inverse.reshape(-1)]
  names = tuple(str(values[v]) for v in order)
  return _indices_from_owner(owner, len(values)), names


# FederatedData and FederatedDataset from index lists.


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_float32(x: np.ndarray, noun: str = 'row') -> tuple[np.ndarray,
                                                          str | None]:
  """Cast `x` to float32 and describe its first non-finite entry along axis 0.

  A float64 value beyond float32's range, such as 1e300, passes
  `np.isfinite` before the cast but is infinite after it, so the check runs
  on the float32 values.

  Returns:
    The float32 array, and None or a problem such as 'NaN or infinite
    values, first in row 3', where `noun` names the entries of axis 0.
  """
  with np.errstate(over='ignore'):
    converted = np.asarray(x).astype(np.float32)
  if np.isfinite(converted).all():
    return converted, None
  finite = np.isfinite(converted).reshape(len(converted), -1).all(axis=1)
  index = int(np.flatnonzero(~finite)[0])
  original = np.asarray(x[index], dtype=np.float64)
  if not np.isfinite(original).all():
    return converted, f'NaN or infinite values, first in {noun} {index}'
  largest = float(np.max(np.abs(original)))
  return converted, (
      f'values beyond the float32 range (magnitude {_FLOAT32_MAX:.4g}), '
      f'which become infinite in float32, first in {noun} {index} (largest '
      f'magnitude {largest:.4g})'
  )


def _check_examples(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Return `x` as float32 and `y` as int32, or raise."""
  x = np.asarray(x)
  y, _ = _check_labels(y, None, 'y')
  if x.ndim < 2 or x.shape[0] != y.shape[0]:
    raise InputError(
        f'`x` must be shaped [examples, ...features] with as many rows as '
        f'`y` ({y.shape[0]}); got shape {x.shape}.'
    )
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise InputError(f'`x` must be real numbers; got dtype {x.dtype}.')
  converted, problem = to_float32(x)
  if problem is not None:
    raise InputError(
        f'`x` contains {problem}. Impute, rescale or drop those rows before '
        'partitioning.'
    )
  return converted, y.astype(np.int32)


def _check_client_indices(
    client_indices: Sequence[np.ndarray], num_examples: int
) -> list[np.ndarray]:
  checked = []
  for client, indices in enumerate(client_indices):
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (
        indices.size == 0 or np.issubdtype(indices.dtype, np.integer)
    ):
      raise InputError(
          f'Client {client} indices must be a 1-D integer array; got shape '
          f'{indices.shape} and dtype {indices.dtype}.'
      )
    if indices.size and (indices.min() < 0 or indices.max() >= num_examples):
      raise InputError(
          f'Client {client} has row indices outside [0, {num_examples}): '
          f'min {indices.min()}, max {indices.max()}.'
      )
    checked.append(indices.astype(np.int64))
  if not checked:
    raise InputError('`client_indices` is empty; pass one array per client.')
  return checked


def gather_clients(
    x: np.ndarray, y: np.ndarray, client_indices: Sequence[np.ndarray]
) -> federated.FederatedData:
  """Gather each client's rows of a pooled dataset into `FederatedData`.

  The rows keep their order within each client. Indices are not checked for
  overlap, so a row listed for two clients appears in both.

  Args:
    x: `[examples, ...features]` pooled features, finite real numbers.
    y: `[examples]` integer labels >= 0.
    client_indices: one 1-D integer array of row indices per client, such as
      a `partition_*` result. An empty array gives a client with 0 rows.

  Returns:
    `FederatedData` with numpy `x` `[clients, max_examples, ...features]`
    float32 and `y` `[clients, max_examples]` int32, zero-padded.

  Raises:
    InputError: if the shapes disagree, `x` has NaN or infinite values,
      `y` is not non-negative integers, or an index is out of range.
  """
  x, y = _check_examples(x, y)
  client_indices = _check_client_indices(client_indices, len(y))
  return federated.stack_clients(
      [{'x': x[rows], 'y': y[rows]} for rows in client_indices]
  )


def build_dataset(
    x: np.ndarray,
    y: np.ndarray,
    client_indices: Sequence[np.ndarray],
    *,
    key: PRNGKey,
    test_fraction: float = 0.2,
    name: str = 'partitioned',
    num_classes: int | None = None,
    client_names: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    standardize: bool = False,
) -> federated.FederatedDataset:
  """Build a `FederatedDataset`, splitting each client's rows into train/test.

  Each client's rows are split with `tabular.stratified_split`, so its test
  set has `ceil(test_fraction * n)` of its n rows and, per class, about the
  same label mix as its train set. A client with 2 rows or fewer of some
  class gets a plain shuffled split instead, so a rare class can fall in
  its test set only. Per-client test sets measure each client
  on its own distribution, which a label or feature skew changes. A dataset
  that ships a separate test set can be concatenated with its train set
  before partitioning. That discards the official split, but a shared global
  test set has no per-client distribution to evaluate against.

  With `standardize`, each client's features are z-scored with the mean and
  std of its own train rows (`tabular.zscore`); otherwise they are kept as
  given. Standardize raw rows here, after the split: rows z-scored before
  pooling would carry statistics of rows that become test rows. A client
  with 1 row has it in the test
  set and trains on nothing, so raise `min_examples` in the partition to
  avoid that. A client with 0 test rows gets NaN test metrics from
  `simulation.evaluate`.

  Args:
    x: `[examples, ...features]` pooled features, finite real numbers.
    y: `[examples]` integer labels in [0, num_classes).
    client_indices: one 1-D integer array of row indices per client. No row
      may appear twice, because it could land in one client's train set and
      another's test set. Rows that no client lists are left out.
    key: JAX PRNG key that seeds the train/test splits.
    test_fraction: fraction of each client's rows in its test set, in [0, 1).
      0 gives empty test sets.
    name: dataset name written to run outputs.
    num_classes: number of classes, by default `max(y) + 1`.
    client_names: one name per client, by default 'client_0', 'client_1', ...
    feature_names: one name per entry of the last axis of `x`, by default
      'x0', 'x1', ...
    standardize: z-score each client from its train rows; needs `x` shaped
      `[examples, features]`.

  Returns:
    A `FederatedDataset` with numpy arrays: `x` float32 and `y` int32.

  Raises:
    InputError: for the conditions of `gather_clients`, a row listed twice,
      `test_fraction` outside [0, 1), a label >= `num_classes`, or names of
      the wrong length.
  """
  x, y = _check_examples(x, y)
  _, num_classes = _check_labels(y, num_classes, 'y')
  client_indices = _check_client_indices(client_indices, len(y))
  _check_no_overlap(client_indices, len(y))
  federated.check_test_fraction(test_fraction)
  num_clients = len(client_indices)
  client_names = _names_or_default(client_names, num_clients, 'client_names',
                                   'client_')
  feature_names = _names_or_default(feature_names, x.shape[-1],
                                    'feature_names', 'x')
  rng = _host_rng(key)

  seeds = rng.integers(0, 2**63 - 1, size=num_clients)
  train_indices, test_indices = [], []
  for rows, seed in zip(client_indices, seeds):
    if test_fraction == 0.0:
      train_rows, test_rows = np.arange(len(rows)), np.arange(0)
    else:
      train_rows, test_rows = tabular.stratified_split(
          y[rows], test_fraction=test_fraction, seed=int(seed)
      )
    train_indices.append(rows[train_rows])
    test_indices.append(rows[test_rows])
  if standardize:
    # Every row belongs to at most one client, so the z-scored rows can be
    # written back into one pooled array.
    standardized = np.zeros(x.shape, np.float32)
    for train_rows, test_rows in zip(train_indices, test_indices):
      standardized[train_rows], standardized[test_rows] = tabular.zscore(
          x[train_rows], x[test_rows], feature_names)
    x = standardized

  return federated.FederatedDataset(
      name=name,
      train=gather_clients(x, y, train_indices),
      test=gather_clients(x, y, test_indices),
      client_names=client_names,
      feature_names=feature_names,
      num_classes=num_classes,
  )


def _check_no_overlap(
    client_indices: list[np.ndarray], num_examples: int
) -> None:
  counts = np.bincount(
      np.concatenate(client_indices), minlength=num_examples
  )
  if counts.max(initial=0) > 1:
    row = int(np.argmax(counts))
    raise InputError(
        f'Row {row} is listed {counts[row]} times in `client_indices`. Give '
        'every row to at most one client.'
    )


def _names_or_default(
    names: Sequence[str] | None, count: int, argument: str, prefix: str
) -> tuple[str, ...]:
  if names is None:
    return tuple(f'{prefix}{i}' for i in range(count))
  names = tuple(names)
  if len(names) != count:
    raise InputError(
        f'`{argument}` has {len(names)} names, expected {count}.'
    )
  return names


# Feature shift.


class FeatureShift(NamedTuple):
  """Per-client affine shift plus noise: x' = scales * x + offsets + noise.

  Attributes:
    scales: `[clients, channels]` gain a_c per entry of the last axis of `x`
      (a feature of tabular data, a channel of images).
    offsets: `[clients, channels]` offset b_c per entry of the last axis.
    noise_stds: `[clients]` std of the Gaussian noise added to every value.
  """

  scales: np.ndarray
  offsets: np.ndarray
  noise_stds: np.ndarray


def draw_feature_shift(
    *,
    key: PRNGKey,
    num_clients: int,
    num_channels: int,
    scale_std: float,
    offset_std: float,
    max_noise_std: float,
) -> FeatureShift:
  """Draw a random `FeatureShift` for every client.

  Every gain is log-normal, log(a) ~ N(0, scale_std^2), so gains stay
  positive with median 1. Every offset is b ~ N(0, offset_std^2), and each
  client's noise std is uniform in [0, max_noise_std]. All zeros leave the
  features unchanged.

  Args:
    key: JAX PRNG key. The same key and arguments give the same shift.
    num_clients: number of clients C, >= 1.
    num_channels: size of the last axis of `x`, >= 1.
    scale_std: std of log(a), finite and >= 0.
    offset_std: std of b, finite and >= 0.
    max_noise_std: maximum per-client noise std, finite and >= 0.

  Returns:
    A `FeatureShift` of float32 numpy arrays.

  Raises:
    InputError: if an argument is out of range.
  """
  _check_count('num_clients', num_clients, 1)
  _check_count('num_channels', num_channels, 1)
  _check_real('scale_std', scale_std, positive=False)
  _check_real('offset_std', offset_std, positive=False)
  _check_real('max_noise_std', max_noise_std, positive=False)
  rng = _host_rng(key)

  shape = (num_clients, num_channels)
  with np.errstate(over='ignore'):
    scales = np.exp(scale_std * rng.standard_normal(shape)).astype(np.float32)
    offsets = (offset_std * rng.standard_normal(shape)).astype(np.float32)
    noise_stds = rng.uniform(0.0, max_noise_std, num_clients).astype(
        np.float32)
  for name, spread, values in (('scale_std', scale_std, scales),
                               ('offset_std', offset_std, offsets),
                               ('max_noise_std', max_noise_std, noise_stds)):
    if not np.isfinite(values).all():
      raise InputError(
          f'`{name}` {spread:g} draws values beyond the float32 range; use a '
          f'smaller `{name}`.'
      )
  return FeatureShift(scales=scales, offsets=offsets, noise_stds=noise_stds)


def apply_feature_shift(
    data: federated.FederatedData, shift: FeatureShift, *, key: PRNGKey
) -> federated.FederatedData:
  """Apply `shift` to the features `x` of every client.

  Each real row of client c becomes a_c * x + b_c + e, where the noise
  e ~ N(0, noise_stds[c]^2) is drawn independently for every value. The mean
  of a feature therefore moves from m to a_c * m + b_c, and its variance from
  v to a_c^2 * v + noise_stds[c]^2. Padding rows stay 0 and other fields are
  unchanged.

  Args:
    data: `FederatedData` with `x` `[clients, examples, ...features]`.
    shift: `FeatureShift` with `[clients, channels]` scales and offsets,
      where channels is the size of the last axis of `x`.
    key: JAX PRNG key for the noise.

  Returns:
    `FederatedData` with a float32 numpy `x`.

  Raises:
    InputError: if the shapes of `shift` do not match `data`, a scale,
      offset or noise std is not finite, a noise std is negative, or a
      shifted value overflows float32.
  """
  if 'x' not in data.examples:
    raise InputError(
        f'`data` has fields {sorted(data.examples)}; a feature shift needs '
        'the field `x`.'
    )
  x = np.asarray(data.examples['x'], np.float32)
  if x.ndim < 3:
    raise InputError(
        '`x` must be shaped [clients, examples, ...features]; got shape '
        f'{x.shape}.'
    )
  num_clients, num_channels = x.shape[0], x.shape[-1]
  _check_shift_shapes(shift, num_clients, num_channels)
  rng = _host_rng(key)

  broadcast = (num_clients,) + (1,) * (x.ndim - 2) + (num_channels,)
  scales = np.asarray(shift.scales, np.float32).reshape(broadcast)
  offsets = np.asarray(shift.offsets, np.float32).reshape(broadcast)
  noise_stds = np.asarray(shift.noise_stds, np.float32).reshape(
      (num_clients,) + (1,) * (x.ndim - 1)
  )
  noise = rng.standard_normal(x.shape, dtype=np.float32)
  with np.errstate(over='ignore', invalid='ignore'):
    shifted = scales * x + offsets + noise_stds * noise

  real = np.arange(x.shape[1])[None, :] < np.asarray(data.num_examples)[:, None]
  real = real.reshape(real.shape + (1,) * (x.ndim - 2))
  overflow = ~np.isfinite(shifted) & real
  if overflow.any():
    client = int(np.argwhere(overflow)[0, 0])
    raise InputError(
        f'The shifted features of client {client} overflow float32: its '
        f'scales reach {np.max(np.abs(shift.scales[client])):g} and its '
        f'offsets {np.max(np.abs(shift.offsets[client])):g}, on features up '
        f'to {np.max(np.abs(x[client])):g}. Use smaller scales and offsets, '
        'or standardize the features first.'
    )
  examples = dict(data.examples)
  examples['x'] = np.where(real, shifted, np.float32(0.0))
  return federated.FederatedData(examples, data.num_examples)


def _check_shift_shapes(
    shift: FeatureShift, num_clients: int, num_channels: int
) -> None:
  expected = (num_clients, num_channels)
  for field in ('scales', 'offsets'):
    values = np.asarray(getattr(shift, field))
    if values.shape != expected:
      raise InputError(
          f'`shift.{field}` is shaped {values.shape}; the data needs '
          f'{expected} ([clients, channels], channels = size of the last '
          'axis of x).'
      )
    if not np.isfinite(values).all():
      raise InputError(
          f'`shift.{field}` must be finite; got {values}.'
      )
  noise_stds = np.asarray(shift.noise_stds)
  if noise_stds.shape != (num_clients,):
    raise InputError(
        f'`shift.noise_stds` is shaped {noise_stds.shape}; the data needs '
        f'({num_clients},).'
    )
  if not (np.isfinite(noise_stds).all() and (noise_stds >= 0).all()):
    raise InputError(
        f'`shift.noise_stds` must be finite and >= 0; got {noise_stds}.'
    )


def shift_dataset(
    dataset: federated.FederatedDataset,
    *,
    key: PRNGKey,
    scale_std: float,
    offset_std: float,
    max_noise_std: float,
) -> tuple[federated.FederatedDataset, FeatureShift]:
  """Draw one `FeatureShift` and apply it to both train and test sets.

  A client's train and test rows share its gain, offset and noise std, as
  rows from one scanner would. The noise values themselves are independent.

  Args:
    dataset: any `FederatedDataset`, such as one from `build_dataset`.
    key: JAX PRNG key. The same key and arguments give the same result.
    scale_std: std of log(a), see `draw_feature_shift`.
    offset_std: std of b.
    max_noise_std: maximum per-client noise std.

  Returns:
    `(shifted_dataset, shift)`. Report `shift` with the results so that the
    simulated calibration differences can be checked.

  Raises:
    InputError: if an argument is out of range.
  """
  federated.check_key(key)
  shift_key, train_key, test_key = jax.random.split(key, 3)
  shift = draw_feature_shift(
      key=shift_key,
      num_clients=dataset.num_clients,
      num_channels=dataset.num_features,
      scale_std=scale_std,
      offset_std=offset_std,
      max_noise_std=max_noise_std,
  )
  shifted = dataclasses.replace(
      dataset,
      train=apply_feature_shift(dataset.train, shift, key=train_key),
      test=apply_feature_shift(dataset.test, shift, key=test_key),
  )
  return shifted, shift
