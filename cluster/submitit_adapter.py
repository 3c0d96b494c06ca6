"""The one use of a private submitit API: its sbatch renderer, `submitit.slurm.slurm._make_sbatch_string`.

zerorun renders its batch scripts with submitit's own renderer (sorted `#SBATCH` flags, its array line from
map_count and array_parallelism, its setup/command/teardown sections) instead of a copy of it. The function is
private, so every call goes through `sbatch_text` here, and tests/test_adapters.py pins what zerorun relies on:
an upgrade of submitit that changes it fails that test, not a user's job.
"""

from __future__ import annotations

from typing import Any


def sbatch_text(*, command: str, setup: list[str], teardown: list[str], additional: dict[str, Any],
                **parameters: Any) -> str:
    """The batch script submitit would write: `parameters` are its named sbatch parameters (job_name, nodes,
    ..., map_count and array_parallelism for an array), `additional` its additional_parameters. zerorun writes
    the srun line itself (`command`), so submitit's own srun wrapping and its log paths are turned off."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(
        command=command,
        folder="/",  # unused: every path submitit would derive from it is set through `additional`
        wckey=None,  # type: ignore[arg-type]
        setup=setup,
        teardown=teardown,
        stderr_to_stdout=True,
        use_srun=False,
        additional_parameters=additional,
        **parameters,
    )
