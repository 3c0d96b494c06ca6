"""A sweep with cluster=local: its members run here, `parallelism` at a time, each in its own process
(`python -m jobs.sweeps.local MEMBER_RUN_DIR`: the local backend supervises its ranks and owns its signals, and
resumes from the member's latest checkpoint when it has one). Output goes to each member's logs/local.out; the
record is saved (under the sweep's lock, held by the caller) as each member starts and ends.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from jobs.sweeps import record as sweep_record
from jobs.sweeps.record import SweepRecord
from jobs.sweeps.refresh import read_member
from jobs.verbs import member_outcome

LOCAL_LOG = "logs/local.out"
POLL_S = 0.5
MODULE = "jobs.sweeps.local"


def local_problems(built: Any) -> list[str]:
    """What stops a built sweep (members.BuiltSweep) from running here: its size and throttle, a secret in what
    it writes, and the preflight of each distinct plan."""
    from cluster import preflight, sweep_plan
    from cluster.plan import make_plan
    from cluster.slurm import ClusterLimits
    from jobs.dryrun import refuse_secrets
    from jobs.sweeps.members import ConfigView
    from jobs.sweeps.plan import texts

    unlimited = ClusterLimits(sys.maxsize, sys.maxsize, "cluster=local")
    problems = sweep_plan.sweep_problems(len(built.members), built.parallelism, unlimited)
    problems += refuse_secrets(texts(built))
    for c in built.plan_configs:
        problems += [p for p in preflight.plan_problems(make_plan(ConfigView(c))) if p not in problems]
        if ConfigView(c).cluster.get("after") and not any("cluster.after" in p for p in problems):
            problems.append("cluster.after is not supported for a sweep on cluster=local; run the sweep once "
                            "the job has ended, or submit it with cluster=slurm (its arrays then wait in the queue)")
    return problems


def run_member(run_dir: str) -> int:
    """One member, in this process: its saved config, on the local backend."""
    from cluster.backends import get_backend
    from cluster.plan import make_plan, read_setup_file
    from jobs.host import run_in_foreground
    from jobs.runs import load_config

    cfg = load_config(run_dir)
    plan = make_plan(cfg, setup_file_lines=read_setup_file(cfg.cluster.setup_file))
    # as a run of its own: the watchdog beside the ranks, a hung attempt started again, the outcome recorded
    return run_in_foreground(cfg, plan, get_backend(plan.backend), run_dir, sys.stdout, sys.stderr)


def run_local(record: SweepRecord, nums: Sequence[int], out: TextIO, err: TextIO) -> int:
    """Run these members here, `parallelism` at a time. Returns 0, 1 when any failed, 130 when interrupted."""
    by_num = {m.num: m for m in record.members}
    waiting = list(nums)
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    failed = 0
    out.write(f"zerorun: running {len(nums)} sweep member(s) here, {record.parallelism} at a time; sweep folder "
              f"{record.sweep_dir}\n")
    try:
        while waiting or running:
            while waiting and len(running) < max(1, record.parallelism):
                m = by_num[waiting.pop(0)]
                log = Path(m.run_dir) / LOCAL_LOG
                log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                f = open(log, "ab")
                proc = subprocess.Popen([record.python or sys.executable, "-m", MODULE, m.run_dir], stdout=f,
                                        stderr=subprocess.STDOUT, cwd=record.workdir or None)
                running[m.num] = (proc, f)
                m.state, m.detail = "RUNNING", f"pid {proc.pid}"
                sweep_record.save(record)
            time.sleep(POLL_S)
            for num, (proc, f) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                f.close()
                del running[num]
                m = by_num[num]
                m.state = "COMPLETED" if code == 0 else ("CANCELLED" if code in (130, -2) else "FAILED")
                m.detail = "" if code == 0 else "; ".join(
                    x for x in (member_outcome(m.run_dir), f"exit {code}", f"log {Path(m.run_dir) / LOCAL_LOG}") if x)
                failed += code != 0
                read_member(m)
                sweep_record.save(record)
                out.write(f"zerorun: member {num} ({' '.join(m.overrides)}): {m.state}\n")
    except KeyboardInterrupt:
        for proc, f in running.values():
            proc.wait()
            f.close()
        for num in running:
            by_num[num].state = "CANCELLED"
        sweep_record.save(record)
        return 130
    out.write(f"zerorun: {len(nums) - failed} of {len(nums)} member(s) completed; zerorun status {record.sweep_dir}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(f"usage: python -m {MODULE} MEMBER_RUN_DIR (one member of a cluster=local sweep)", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_member(sys.argv[1]))
