"""What zerorun's Hydra sweeper and launcher do; hydra_plugins/zerorun_launcher holds the thin classes Hydra
instantiates and calls these.

`zerorun -m optimizer.lr=1e-4,3e-4 seed=1,2,3 cluster=slurm`:

1. `sweep()`: expand the grid and give the sweep its id (expansion.py), then hand every member to the launcher
   in one batch.
2. `launch()`: build the members from one composed config (members.py), then dry-run, submit or run them
   (submit.py).

Returns as soon as the arrays are queued: Hydra's JobReturn of each member carries its array task
("ARRAYJOB_TASK"), not a result; `zerorun status SWEEP_DIR` follows them.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn, Sequence

from jobs.sweeps import members as member_builder
from jobs.sweeps import submit
from jobs.sweeps.expansion import SweepError, expand


def sweep(config: Any, hydra_context: Any, launcher: Any, arguments: list[str]) -> Any:
    """Expand the sweep and launch every member in one batch (the body of ZerorunSweeper.sweep)."""
    try:
        members = expand(config, hydra_context.config_loader, arguments)
    except SweepError as e:
        _exit(e.problems)
    return launcher.launch(members, initial_job_idx=0)


def launch(config: Any, hydra_context: Any, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> list[Any]:
    """Build the members, then dry-run, submit or run them (the body of ZerorunLauncher.launch)."""
    from hydra.core.utils import JobReturn, JobStatus

    try:
        built = member_builder.build(config, hydra_context.config_loader, job_overrides, initial_job_idx)
    except SweepError as e:
        _exit(e.problems)
    rc, jobs = submit.run(built)
    if rc:
        sys.exit(rc)
    returns = []
    for m in built.members:
        r = JobReturn(overrides=list(m.overrides), cfg=None, hydra_cfg=None, working_dir=m.run_dir,
                      task_name="zerorun", status=JobStatus.COMPLETED)
        r.return_value = jobs.get(m.num)  # the array task that runs it; None for a dry run
        returns.append(r)
    return returns


def _exit(problems: list[str], code: int = 2) -> NoReturn:
    sys.stderr.write("zerorun: the sweep cannot run (nothing was submitted):\n"
                     + "".join(f"  - {p}\n" for p in problems))
    sys.exit(code)
