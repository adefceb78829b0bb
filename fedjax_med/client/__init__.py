"""Local training on one client, vmapped over the cohort."""
