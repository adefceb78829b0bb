"""Federated datasets: containers, bundled data, CSV import and generators."""
