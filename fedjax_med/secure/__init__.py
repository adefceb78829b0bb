"""Secure aggregation: finite-field encoding, Shamir sharing and the SecAgg protocol."""
