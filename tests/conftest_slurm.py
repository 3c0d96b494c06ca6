"""The real local Slurm cluster for tests: `slurm_cluster` brings it up once per session (or reuses the one
already up) and leaves it running afterwards, for the next session and for people at a shell.

Tests that use it carry `@pytest.mark.slurm`. When the cluster cannot come up the fixture fails with the reason:
Slurm tests are never skipped, because a skipped test cannot tell a broken cluster from a missing one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

import cluster.localslurm as localslurm

__all__ = ["slurm_cluster"]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[localslurm.LocalCluster]:
    """LocalCluster facts (nodes, partitions, slurm_conf); SLURM_CONF is set in os.environ for the session."""
    try:
        cluster = localslurm.current() or localslurm.up(localslurm.recorded_spec() or localslurm.default_spec())
    except localslurm.LocalSlurmError as e:
        pytest.fail(f"the local Slurm cluster could not come up (`zerorun cluster up`): {e}", pytrace=False)
    if len(cluster.nodes) < 2:
        pytest.fail(f"the local cluster in {cluster.state_dir} has {len(cluster.nodes)} node(s); the tests need 2:"
                    " `zerorun cluster down && zerorun cluster up --nodes 2`", pytrace=False)
    env = {**os.environ, **cluster.env()}
    ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=30)
    if ping.returncode != 0:
        pytest.fail(f"slurmctld of the local cluster does not answer: {ping.stdout}{ping.stderr}"
                    f" (logs in {cluster.state_dir}/log)", pytrace=False)

    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env())
    yield cluster
    # The cluster stays up; only the environment of this process is put back.
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
