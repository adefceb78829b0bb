"""Aggregation of client updates over the `clients` axis.

Modules whose name equals their main function (`bulyan`, `krum`,
`geometric_median`, `trimmed_mean`) are imported as modules, for example
`from fedjax_med.aggregation import krum` and then `krum.krum(...)`.
"""

# clipping_aggregators
from fedjax_med.aggregation.clipping_aggregators import centered_clipping as centered_clipping
from fedjax_med.aggregation.clipping_aggregators import norm_bounded_mean as norm_bounded_mean

# mean
from fedjax_med.aggregation.mean import weighted_mean as weighted_mean
from fedjax_med.aggregation.mean import weighted_sum as weighted_sum

# median
from fedjax_med.aggregation.median import coordinate_median as coordinate_median
