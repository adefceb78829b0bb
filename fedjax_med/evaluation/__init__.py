"""Evaluation of trained models on each hospital's held-out test patients."""
