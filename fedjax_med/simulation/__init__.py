"""Federated rounds: sampling, local training, privatizing, aggregating."""
