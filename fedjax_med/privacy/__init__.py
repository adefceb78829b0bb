"""Differential privacy: clipping, noise, accounting and empirical audits."""

# clipping
from fedjax_med.privacy.clipping import clip_update as clip_update
from fedjax_med.privacy.clipping import ClipResult as ClipResult

# mechanisms
from fedjax_med.privacy.mechanisms import PrivacySettings as PrivacySettings

# noise
from fedjax_med.privacy.noise import add_gaussian_noise as add_gaussian_noise
