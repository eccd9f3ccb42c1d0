"""Helpers shared by the tests: synthetic WSI formats, dataset layouts, a local SLURM cluster, repository paths."""
