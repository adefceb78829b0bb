"""Clipping and Gaussian noise of client updates."""

# clipping
from fedjax_med.privacy.clipping import clip_update as clip_update
from fedjax_med.privacy.clipping import ClipResult as ClipResult

# noise
from fedjax_med.privacy.noise import add_gaussian_noise as add_gaussian_noise
