"""Clipping and Gaussian noise of client updates."""
