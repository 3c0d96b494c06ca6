"""A real Slurm cluster (munge, MariaDB, slurmdbd, slurmctld, N slurmd) on this machine, for tests and for trying
the submission layer without a real cluster: `zerorun cluster up | down | status`.

Python API (used by the test fixture and the submission layer): `up(spec)`, `down(state_dir)`,
`current(state_dir)`, `recorded_spec(state_dir)`, `default_spec(state_dir)` and the `LocalCluster` they return.

    lifecycle.py  up, down, status, current and the manifest that ties them together
    config.py     the pure half: spec, file layout, rendered configs, daemon argv
    procs.py      daemons: start in their own session, know whether alive, stop by pid
    system.py     the few edits outside the state folder (packages, /etc/hosts, /etc/slurm/slurm.conf)
    probe.py      questions to the running cluster through Slurm's own clients
    cli.py        the command line
"""

from __future__ import annotations

from cluster.localslurm.cli import main
from cluster.localslurm.config import ClusterSpec, LocalSlurmError
from cluster.localslurm.lifecycle import LocalCluster, current, default_spec, down, recorded_spec, status, up

__all__ = ["ClusterSpec", "LocalCluster", "LocalSlurmError", "current", "default_spec", "down", "main",
           "recorded_spec", "status", "up"]
