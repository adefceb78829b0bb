"""Poisoning attacks on client updates, batched over the cohort axis."""
