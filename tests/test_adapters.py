"""What zerorun relies on in the private APIs it uses, pinned: a library upgrade that changes them fails here."""

from __future__ import annotations

from cluster.submitit_adapter import sbatch_text


def test_submitits_renderer_writes_sorted_flags_setup_command_and_teardown_in_order():
    text = sbatch_text(command="srun x", setup=["echo setup"], teardown=["echo after", ""],
                       additional={"signal": "USR2@90", "output": "/dev/null", "export": "HOME"},
                       job_name="j", nodes=2, ntasks_per_node=4, time=30, partition="p")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    flags = [line for line in lines if line.startswith("#SBATCH")]
    assert flags == sorted(flags), "flags are no longer sorted"
    assert {"#SBATCH --job-name=j", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --time=30",
            "#SBATCH --partition=p", "#SBATCH --signal=USR2@90", "#SBATCH --output=/dev/null",
            "#SBATCH --export=HOME"} <= set(flags)
    # additional parameters replace submitit's own: one --signal, our --output, no --error, no wckey
    assert sum(f.startswith("#SBATCH --signal") for f in flags) == 1
    assert not any(f.startswith(("#SBATCH --error", "#SBATCH --wckey")) for f in flags)
    # sections in order; no srun wrapping of the command
    order = [lines.index("echo setup"), lines.index("srun x"), lines.index("echo after")]
    assert order == sorted(order)
    assert text.endswith("echo after\n")


def test_submitits_array_line_is_zero_based_with_the_parallelism_cap():
    text = sbatch_text(command="srun x", setup=[], teardown=[], additional={}, job_name="j", map_count=10,
                       array_parallelism=3)
    assert "#SBATCH --array=0-9%3" in text.splitlines()
