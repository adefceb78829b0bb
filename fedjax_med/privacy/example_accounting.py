"""Example-level privacy accounting of DP-SGD inside each client.

`client.dp_sgd` protects one example (one patient row) of a client. Every
local step releases the sum of per-example gradients clipped to L2 norm `C`
plus Gaussian noise of std `noise_multiplier * C`. `example_level_epsilon`
describes each step as a `dp_accounting.PoissonSampledDpEvent` with
sampling probability `q = min(1, batch_size / num_examples)` around a
`GaussianDpEvent(noise_multiplier)`, composes it once per step the client
took over every round it joined, and reports epsilon under
add-or-remove-one-example neighboring. `worst_client_epsilon` takes the
largest of these over the clients. The guarantee is per client and
protects one row, so a patient with several rows, or with rows at several
clients, spends more than this epsilon. Like `accounting`, this runs on the
host and never inside jit.

NOTE: `client.dp_sgd` draws its batches by shuffling without replacement
within each epoch, not by Poisson subsampling. Treating those batches as
Poisson-sampled is a common approximation in DP-SGD implementations, but no
proven bound supports it, and Chua et al. (2024) show that shuffled batches
can be less private than the Poisson analysis reports. Read the epsilon
here as the value that the Poisson analysis gives, not as a guarantee of
the shuffled training.

References:
  Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, "Deep
  Learning with Differential Privacy", ACM CCS 2016,
  https://arxiv.org/abs/1607.00133.

  Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
  Gaussian Mechanism", 2019, https://arxiv.org/abs/1908.10530.

  Chua, Ghazi, Kamath, Kumar, Manurangsi, Sinha and Zhang, "How Private are
  DP-SGD Implementations?", ICML 2024, https://arxiv.org/abs/2403.17673.
"""

from typing import NamedTuple, Sequence

import dp_accounting

from fedjax_med.errors import InputError
from fedjax_med.privacy import accounting


class WorstClient(NamedTuple):
  """The client that spends the most example-level privacy.

  Attributes:
    epsilon: that client's epsilon at the requested delta.
    client_index: its position in `num_examples_per_client`; the first one
      when several clients tie.
    num_examples: its number of examples.
  """

  epsilon: float
  client_index: int
  num_examples: int


def example_step_event(
    *, num_examples: int, batch_size: int, noise_multiplier: float
) -> dp_accounting.DpEvent:
  """Build the DpEvent of one DP-SGD step of a client, Poisson-sampled.

  Args:
    num_examples: the client's number of examples, at least 1.
    batch_size: the expected batch size, at least 1.
    noise_multiplier: the noise std divided by the clip norm, positive.

  Returns:
    `PoissonSampledDpEvent(min(1, batch_size / num_examples),
    GaussianDpEvent(noise_multiplier))`.

  Raises:
    InputError: if an argument is not in the range above.
  """
  accounting._check_integer('num_examples', num_examples, minimum=1)
  accounting._check_integer('batch_size', batch_size, minimum=1)
  accounting._check_noise_multiplier(noise_multiplier)
  sampling_probability = min(1.0, batch_size / num_examples)
  return dp_accounting.PoissonSampledDpEvent(
      sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier)
  )


def example_level_epsilon(
    *,
    num_examples: int,
    batch_size: int,
    noise_multiplier: float,
    steps_per_round: int,
    rounds_participated: int,
    delta: float,
    accountant: str = 'rdp',
) -> float:
  """Compute the example-level epsilon of one client's DP-SGD training.

  The step event of `example_step_event` is composed
  `steps_per_round * rounds_participated` times by dp_accounting under
  add-or-remove-one-example neighboring. With `num_epochs` set, clients take
  different numbers of steps: pass the client's own count (its `num_steps`
  output), because the scan length over-states the epsilon of a client that
  takes fewer steps.

  Args:
    num_examples: the client's number of examples, at least 1.
    batch_size: the DP-SGD batch size, at least 1.
    noise_multiplier: the noise std divided by the clip norm, positive.
    steps_per_round: local DP-SGD steps in each round, at least 0.
    rounds_participated: rounds in which the client trained, at least 0.
    delta: the target delta, strictly between 0 and 1.
    accountant: 'rdp' or 'pld', as in `accounting.ACCOUNTANTS`.

  Returns:
    The epsilon that the chosen dp_accounting accountant reports, 0.0 when
    the client took no step.

  Raises:
    InputError: if an argument is out of range or `accountant` is unknown.
  """
  event = example_step_event(
      num_examples=num_examples,
      batch_size=batch_size,
      noise_multiplier=noise_multiplier,
  )
  accounting._check_integer('steps_per_round', steps_per_round, minimum=0)
  accounting._check_integer(
      'rounds_participated', rounds_participated, minimum=0
  )
  return accounting.epsilon_for(
      event,
      'add_or_remove',
      steps_per_round * rounds_participated,
      delta,
      accountant,
  )


def worst_client_epsilon(
    num_examples_per_client: Sequence[int],
    *,
    batch_size: int,
    noise_multiplier: float,
    steps_per_round: int,
    rounds_participated: int,
    delta: float,
    accountant: str = 'rdp',
) -> WorstClient:
  """Find the client with the largest example-level epsilon.

  Every client with at least one example is accounted with the same
  `steps_per_round` and `rounds_participated`, so pass upper bounds (the
  scan length and the number of rounds run) to cover every client. The
  smallest client has the largest sampling probability and usually spends
  the most, but each distinct size is computed rather than assumed.
  Clients with zero examples train on nothing and are skipped.

  Args:
    num_examples_per_client: `[clients]` example counts, each at least 0.
    batch_size: the DP-SGD batch size, at least 1.
    noise_multiplier: the noise std divided by the clip norm, positive.
    steps_per_round: local DP-SGD steps in each round, at least 0.
    rounds_participated: rounds in which each client trained, at least 0.
    delta: the target delta, strictly between 0 and 1.
    accountant: 'rdp' or 'pld'.

  Returns:
    The worst client's epsilon, index and example count.

  Raises:
    InputError: if `num_examples_per_client` is empty, has a negative or
      non-integer count or no client with examples, or if another argument
      is invalid as for `example_level_epsilon`.
  """
  counts = list(num_examples_per_client)
  for index, count in enumerate(counts):
    accounting._check_integer(
        f'num_examples_per_client[{index}]', count, minimum=0
    )
  if not any(counts):
    raise InputError(
        '`num_examples_per_client` must contain a client with at least one '
        f'example; got {counts}.'
    )

  epsilon_by_count = {}
  worst = None
  for index, count in enumerate(counts):
    if count == 0:
      continue
    if count not in epsilon_by_count:
      epsilon_by_count[count] = example_level_epsilon(
          num_examples=count,
          batch_size=batch_size,
          noise_multiplier=noise_multiplier,
          steps_per_round=steps_per_round,
          rounds_participated=rounds_participated,
          delta=delta,
          accountant=accountant,
      )
    epsilon = epsilon_by_count[count]
    if worst is None or epsilon > worst.epsilon:
      worst = WorstClient(epsilon, index, int(count))
  return worst
