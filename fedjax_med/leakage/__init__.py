"""Gradient leakage: reconstructing patients' records from model updates.

An honest-but-curious server sees each client's update (or, under secure
aggregation, their sum). The attacks here recover the records behind such
updates: analytically for models whose first layer is dense with a bias,
by gradient matching for neural networks, and, for a malicious server that
sends a crafted model, by imprint layers that isolate single records in a
large aggregate. Every attack is a pure JAX function, vmapped over victims.
"""
