"""Local training on one client, vmapped over the cohort."""

# dp_sgd
from fedjax_med.client.dp_sgd import build_dp_sgd_local_update as build_dp_sgd_local_update

# local_training
from fedjax_med.client.local_training import build_local_update as build_local_update
from fedjax_med.client.local_training import LocalResult as LocalResult
from fedjax_med.client.local_training import max_local_steps as max_local_steps
