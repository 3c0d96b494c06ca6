"""What a submission leaves in its run folder: a snapshot of what ran, and a small record of the submission.

snapshot/  the resolved config and the rendered script, the git commit and uncommitted diff of the user's code (when the submitting
           directory is in a git repo), the versions of the packages that matter, the Python that runs the ranks.
submission.json  job id, submit time, command, for `zerorun status/logs/cancel`; submissions.jsonl keeps every
           submission of the run (a resumed run is submitted again into the same folder).

Environment values are never written: secrets travel to a job by name only (sbatch --export). `leaked_secrets`
is the guard for text about to be written. Nothing here imports the training stack: versions come from package
metadata.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping, Optional

SNAPSHOT_DIR = "snapshot"
RECORD_NAME = "submission.json"
HISTORY_NAME = "submissions.jsonl"
# the distributions whose versions decide what a run does
PACKAGES = ("zerorun", "torch", "pytorch-lightning", "lightning", "deepspeed", "transformers", "tokenizers",
            "datasets", "hydra-core", "omegaconf", "submitit", "rich")
# names of environment variables that hold secrets by convention
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
# shorter values are too likely to appear by chance ("1", "true") to be told apart from a leak
SECRET_MIN_LEN = 8
GIT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Submission:
    job_id: str
    submitted_at: str
    command: list[str]
    run_dir: str
    script: str
    zerorun_version: str


def version() -> str:
    try:
        return metadata.version("zerorun")
    except metadata.PackageNotFoundError:
        return "unknown"


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, Optional[str]]:
    found: dict[str, Optional[str]] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def leaked_secrets(texts: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """Names of secret-looking environment variables whose value appears in any of `texts`. Pure."""
    secrets = {k: v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= SECRET_MIN_LEN}
    joined = "\n".join(texts)
    return sorted(k for k, v in secrets.items() if v in joined)


def _git(workdir: str, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", workdir, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(workdir: str) -> tuple[dict, str]:
    """(facts, diff) of the git repo holding `workdir`; ({"repo": None}, "") outside one."""
    root = _git(workdir, "rev-parse", "--show-toplevel")
    if root is None:
        return {"repo": None}, ""
    status = _git(workdir, "status", "--porcelain") or ""
    facts = {
        "repo": root.strip(),
        "commit": (_git(workdir, "rev-parse", "--verify", "-q", "HEAD") or "").strip() or None,
        "branch": (_git(workdir, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
        "dirty": bool(status.strip()),
        "status": status.splitlines(),
    }
    diff = _git(workdir, "diff", "HEAD", "--binary") if facts["commit"] else _git(workdir, "diff", "--binary")
    return facts, diff or ""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_snapshot(run_dir: str, config_yaml: str, script: str, workdir: str, python: str) -> Path:
    """Snapshot what is about to run into RUN_DIR/snapshot (the latest submission's; the ranks read
    RUN_DIR/config.yaml)."""
    out = Path(run_dir) / SNAPSHOT_DIR
    out.mkdir(mode=0o700, exist_ok=True)
    facts, diff = git_state(workdir)
    _write(out / "config.yaml", config_yaml)
    _write(out / "job.sbatch", script)
    _write(out / "git.json", json.dumps({**facts, "workdir": workdir}, indent=1, ensure_ascii=False) + "\n")
    _write(out / "git.diff", diff)
    env = {"python": python, "python_version": platform.python_version(), "platform": platform.platform(),
           "packages": package_versions()}
    _write(out / "versions.json", json.dumps(env, indent=1, sort_keys=True) + "\n")
    return out


def write_record(run_dir: str, submission: Submission) -> Path:
    """Record a submission: the file that says this run folder was submitted, and as which job."""
    text = json.dumps(asdict(submission), ensure_ascii=False)
    with open(Path(run_dir) / HISTORY_NAME, "a") as f:
        f.write(text + "\n")
    path = Path(run_dir) / RECORD_NAME
    _write(path, json.dumps(asdict(submission), indent=1, ensure_ascii=False) + "\n")
    return path


def read_record(run_dir: str | Path) -> Optional[Submission]:
    try:
        data = json.loads((Path(run_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return Submission(**{k: data.get(k) for k in Submission.__dataclass_fields__})  # type: ignore[arg-type]
