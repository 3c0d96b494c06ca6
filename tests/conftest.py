"""Shared fixtures. The real local Slurm cluster fixture lives in conftest_slurm.py."""
from conftest_slurm import *  # noqa: F401,F403  (session fixtures for the real local Slurm cluster)
