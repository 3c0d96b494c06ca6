"""`zerorun`: the Hydra training app, plus a few verbs (`zerorun cluster up`, `zerorun status`, ...).

A first argument that names a verb runs the verb; anything else is Hydra's command line
(`zerorun task=nlp/translation trainer=deepspeed cluster=slurm ...`). Verbs import only what they use, so
`zerorun status` and `zerorun --help` stay fast and never import torch.

Why the app is not always started through `@hydra.main`: Hydra 1.3's app start composes the config twice (once
to read hydra.mode, once to run), and its --help deep-copies the config store once per config group (~125 copies
here, 0.5 s). A command line of plain overrides is composed once with Hydra's compose API and handed to the same
`launch()`; anything aimed at Hydra itself (a flag such as --multirun/--cfg/--info, or a hydra.* override) still
goes through `@hydra.main`. `--help` prints zerorun's own help, built from the verb table and the config folder.
"""

from __future__ import annotations

import sys
from typing import Callable

from configs.keys import composition_error


def _cluster(argv: list[str]) -> int:
    from cluster.localslurm import main

    return main(argv)


def _sweep_target(argv: list[str]) -> bool:
    """Is the verb's target a sweep folder (it holds a sweep record)?"""
    from jobs.sweeps.verbs import is_sweep

    return bool(argv) and not argv[0].startswith("-") and is_sweep(argv[0])


# Each verb is handed the streams of the moment: a default argument would keep the sys.stdout of the time its
# module was first imported.
def _status(argv: list[str]) -> int:
    if _sweep_target(argv):
        from jobs.sweeps.verbs import status as sweep_status

        return sweep_status(argv, sys.stdout, sys.stderr)
    from jobs.sweeps.verbs import overview
    from jobs.verbs import status

    return status(argv, sys.stdout, sweeps=overview)


def _logs(argv: list[str]) -> int:
    from jobs.verbs import logs

    return logs(argv, sys.stdout)


def _cancel(argv: list[str]) -> int:
    if _sweep_target(argv):
        from jobs.sweeps.verbs import cancel as sweep_cancel

        return sweep_cancel(argv, sys.stdout, sys.stderr)
    from jobs.verbs import cancel

    return cancel(argv, sys.stdout)


def _resubmit(argv: list[str]) -> int:
    from jobs.sweeps.verbs import resubmit

    return resubmit(argv, sys.stdout, sys.stderr)


def _report(argv: list[str]) -> int:
    from jobs.sweeps.verbs import report

    return report(argv, sys.stdout, sys.stderr)


def _eval(argv: list[str]) -> int:
    from jobs.verbs import eval_verb

    return eval_verb(argv, sys.stdout, sys.stderr)


def _site(argv: list[str]) -> int:
    from jobs.site import main

    return main(argv, sys.stdout, sys.stderr)


VERBS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "cluster": (_cluster, "a real Slurm cluster on this machine: zerorun cluster up | down | status"),
    "site": (_site, "site profiles (site=NAME): zerorun site list | show NAME | probe NAME"),
    "status": (_status, "state of submitted runs: zerorun status [RUN_DIR|JOB_ID|SWEEP_DIR] (none: every run and "
                        "sweep)"),
    "logs": (_logs, "a rank's log: zerorun logs JOB_ID|RUN_DIR [--rank R] [--batch] [--follow]"),
    "cancel": (_cancel, "cancel a submitted job or sweep: zerorun cancel JOB_ID|RUN_DIR|SWEEP_DIR"),
    "resubmit": (_resubmit, "a sweep's failed, timed-out or cancelled members again: zerorun resubmit SWEEP_DIR "
                            "--failed"),
    "eval": (_eval, "evaluate a run's final checkpoint as a job of its own, after the run: zerorun eval RUN_DIR "
                    "[split=test] [cluster=...] | zerorun eval SWEEP_DIR --best"),
    "report": (_report, "plot a sweep and print its best members: zerorun report SWEEP_DIR"),
}

HELP_FLAGS = ("--help", "-h")


def config_groups() -> dict[str, list[str]]:
    """group -> its options, read from the config package's folders (what Hydra's --help lists, without Hydra)."""
    from importlib.resources import files

    root = files("configs")
    groups: dict[str, list[str]] = {}

    def walk(node, prefix: str, group: str) -> None:  # type: ignore[no-untyped-def]
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir() and not child.name.startswith("__"):
                walk(child, f"{prefix}{child.name}/", group)
            elif child.name.endswith(".yaml"):
                groups.setdefault(group, []).append(prefix + child.name[: -len(".yaml")])

    for top in sorted(root.iterdir(), key=lambda c: c.name):
        if top.is_dir() and not top.name.startswith("__"):
            walk(top, "", top.name)
    # site profiles: the user's folder too (configs/sites.py)
    from configs import sites

    groups[sites.GROUP] = sorted(set(groups.get(sites.GROUP, [])) | set(sites.profiles()))
    return groups


def help_text() -> str:
    verbs = "\n".join(f"  {name:<8} {text}" for name, (_, text) in VERBS.items())
    groups = "\n".join(f"  {g}: {', '.join(opts)}" for g, opts in config_groups().items())
    return f"""zerorun: one Hydra config, one command: Lightning + DeepSpeed ZeRO-2 training here or on Slurm.

usage:
  zerorun [GROUP=OPTION] [KEY=VALUE]...   run (cluster=local) or submit (cluster=slurm) a training job
  zerorun ... dry_run=true                 write and print what would run or be submitted; submit nothing
  zerorun -m KEY=A,B [KEY2=C,D]...         a sweep: every combination, one Slurm job array (docs/sweeps.md)
  zerorun VERB [ARGS]

verbs:
{verbs}

config groups (GROUP=OPTION):
{groups}

examples:
  zerorun trainer.max_steps=20
  zerorun cluster=local cluster.nodes=2 cluster.tasks_per_node=1 trainer=ddp
  zerorun cluster=slurm cluster.nodes=2 cluster.gpus_per_node=4 trainer=deepspeed dry_run=true
  zerorun site probe NAME && zerorun site=NAME trainer=deepspeed   (docs/sites.md)
  zerorun status
  zerorun -m cluster=slurm optimizer.lr=1e-4,3e-4 seed=1,2,3 sweep.parallelism=4

more: zerorun --cfg job (the composed config), zerorun --hydra-help (Hydra's flags), docs/cluster.md
"""


def _for_hydra(argv: list[str]) -> bool:
    """Does the command line ask anything of Hydra itself (a flag, or a hydra.* override)?"""
    for a in argv:
        if a.startswith("-"):
            return True
        if a.lstrip("+~").startswith(("hydra.", "hydra/", "hydra=")):
            return True
    return False


def run_overrides(overrides: list[str]) -> int:
    """Compose the config once from plain overrides and launch it (what @hydra.main would do, minus its second
    composition and its run-dir logging)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from jobs.app import launch

    try:
        with initialize_config_module("configs", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"zerorun: {composition_error(e)}", file=sys.stderr)
        return 1
    return launch(cfg, overrides)


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in VERBS:
        sys.exit(VERBS[argv[0]][0](argv[1:]))
    if any(a in HELP_FLAGS for a in argv):
        sys.stdout.write(help_text())
        sys.exit(0)
    if not _for_hydra(argv):
        sys.exit(run_overrides(argv))
    from jobs.app import hydra_main

    hydra_main()


if __name__ == "__main__":
    main()
