"""Aggregation of client updates over the `clients` axis."""

# mean
from fedjax_med.aggregation.mean import weighted_mean as weighted_mean
from fedjax_med.aggregation.mean import weighted_sum as weighted_sum

# median
from fedjax_med.aggregation.median import coordinate_median as coordinate_median
