"""Run outputs: metrics files, provenance and plots."""
