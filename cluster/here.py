"""A command run on this machine, for what a backend does where its process already is (the hang watchdog's stack
capture on the batch host's own node, every node of the local backend)."""

from __future__ import annotations

import subprocess


def local_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run `argv` here, as a backend's `on_node` does for the node it runs on. (exit status, its output)"""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not finish within {timeout:.0f} s"
    return out.returncode, out.stdout + out.stderr
