"""`zerorun cluster up | down | status`: the command line over the Python API in lifecycle.py.

    up      install what is missing, write configs under the state folder, start every daemon in its own
            session, register the cluster in accounting, wait until all nodes are idle and `srun` works
    down    cancel the cluster's jobs, stop every daemon by the pid `up` recorded and undo the system edits;
            safe to repeat
    status  daemons (pid, alive), nodes, partitions and queue; exit status 1 when the cluster is not up
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import cluster.localslurm.system as system
from cluster.localslurm.config import ClusterSpec, LocalSlurmError, resolve_state_dir
from cluster.localslurm.lifecycle import default_spec, down, recorded_spec, status, up

_SPEC_FLAGS = {  # flag: (ClusterSpec field, help)
    "--cluster-name": ("cluster_name", "Slurm ClusterName, recorded in the state folder"),
    "--nodes": ("nodes", "number of slurmd nodes, named n1..nN"),
    "--cpus-per-node": ("cpus_per_node", "CPUs each node offers (all nodes share this machine's cores)"),
    "--real-memory": ("real_memory_mb", "MB each node offers: the most a job may ask with --mem"),
    "--slurmctld-port": ("slurmctld_port", "TCP port of slurmctld"),
    "--slurmdbd-port": ("slurmdbd_port", "TCP port of slurmdbd"),
    "--slurmd-base-port": ("slurmd_base_port", "TCP port of n1's slurmd; node i uses this + i - 1"),
    "--max-array-size": ("max_array_size", "Slurm MaxArraySize: job array indices stay below it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerorun cluster", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, text in (("up", "start the cluster (installs packages if needed)"),
                       ("down", "stop every daemon and undo the system edits"),
                       ("status", "daemons, nodes, partitions and queue; exit 1 when not up")):
        sub = verbs.add_parser(verb, help=text, description=text)
        sub.add_argument("--state-dir", help="folder for every config and state file; root must own it and every"
                         " folder above it (default: $ZERORUN_LOCAL_SLURM_DIR, else ~/.zerorun/local-slurm for root"
                         " and /var/lib/zerorun/local-slurm for other users)")
        if verb != "up":
            continue
        defaults = ClusterSpec(Path("."))
        for flag, (field, help_text) in _SPEC_FLAGS.items():
            value = getattr(defaults, field) if field != "cpus_per_node" else "CPUs of this machine"
            # default=None: only flags given explicitly override what the state folder recorded last time.
            sub.add_argument(flag, dest=field, type=type(getattr(defaults, field)), default=None,
                             metavar="PORT" if field.endswith("port") else "NAME" if field == "cluster_name" else "N",
                             help=f"{help_text} (default: {value})")
        sub.add_argument("--os-release", type=Path, default=Path("/etc/os-release"),
                         help="read the distribution from this file (tests point it at a fake)")
        sub.add_argument("--no-smoke-test", dest="smoke_test", action="store_false",
                         help="skip the final `srun -N<all> true`")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb in ("up", "down") and os.geteuid() != 0 and system.sudo_works():
            return _rerun_with_sudo(argv, args)
        if args.verb == "up":
            base = recorded_spec(args.state_dir) or default_spec(args.state_dir)
            overrides = {f: getattr(args, f) for f, _ in _SPEC_FLAGS.values() if getattr(args, f) is not None}
            up(dataclasses.replace(base, **overrides), os_release=args.os_release, smoke_test=args.smoke_test)
            return 0
        if args.verb == "down":
            down(args.state_dir)
            return 0
        return 0 if status(args.state_dir) else 1
    except LocalSlurmError as e:
        print(f"zerorun cluster {args.verb}: error: {e}", file=sys.stderr)
        return 1


def _rerun_with_sudo(argv: list[str], args: argparse.Namespace) -> int:
    # The state folder is resolved here, as the calling user: under sudo, root's default would apply instead.
    state = ["--state-dir", str(resolve_state_dir(args.state_dir))] if args.state_dir is None else []
    cmd = ["sudo", "-n", sys.executable, "-m", "cluster.localslurm", *argv, *state]
    print(f"not root; running `{' '.join(cmd)}`", file=sys.stderr)
    return subprocess.run(cmd).returncode

