"""Local training on one client, vmapped over the cohort."""

# local_training
from fedjax_med.client.local_training import build_local_update as build_local_update
from fedjax_med.client.local_training import LocalResult as LocalResult
from fedjax_med.client.local_training import max_local_steps as max_local_steps
