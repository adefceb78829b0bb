"""Aggregation of client updates over the `clients` axis."""
