"""build_aggregate: every aggregator leaves out clients outside the mask."""

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.aggregation import registry

_SETTINGS = {'norm_bounded': {'max_norm': 1000.0},
             'centered_clipping': {'clip_radius': 1000.0},
             'qffl': {'lipschitz': 1.0}}


@pytest.mark.parametrize('masked_row', [[100.0, -50.0], [100.0, jnp.nan]])
@pytest.mark.parametrize('name', registry.AGGREGATORS)
def test_masked_client_left_out(name, masked_row):
  # Slot 3 is outside the mask but has weight 1 and a far update, or one
  # with NaN; the result must equal the call without it.
  aggregate = registry.build_aggregate(name, num_byzantine=0,
                                       **_SETTINGS.get(name, {}))
  updates = {'w': jnp.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0],
                             masked_row])}
  extra = ()
  if name in registry.NEEDS_CENTER:
    extra = ({'w': jnp.zeros(2)},)
  elif name in registry.NEEDS_LOSSES:
    extra = (jnp.array([0.5, 0.7, 0.9, 1.1]),)

  result = aggregate(updates, jnp.ones(4), jnp.array([True, True, True, False]),
                     *extra)
  extra_without_slot = (
      [extra[0][:3]] if name in registry.NEEDS_LOSSES else list(extra))
  expected = aggregate({'w': updates['w'][:3]}, jnp.ones(3),
                       jnp.ones(3, bool), *extra_without_slot)

  np.testing.assert_allclose(result['w'], expected['w'], rtol=1e-5)
