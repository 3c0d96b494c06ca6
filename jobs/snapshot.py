"""What a submission leaves in its run folder: a snapshot of what ran, and a small record of the submission.

snapshot/  the resolved config and the rendered script, the git commit and uncommitted diff of the user's code (when the submitting
           directory is in a git repo), the versions of the packages that matter, the Python that runs the ranks.
submission.json  job id, submit time, command, for `zerorun status/logs/cancel`; submissions.jsonl keeps every
           submission of the run (a resumed run is submitted again into the same folder).

Environment values are never written: secrets travel to a job by name only (sbatch --export). `check_no_secrets`
is the one guard every writer calls with the texts it is about to write, and refuses on what it returns; the
snapshot itself redacts (`redact_secrets`) what it copies from the user's tree, so the uncommitted diff never
carries a secret either. Nothing here imports the training stack: versions come from package metadata.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping, Optional, TextIO

from trainer_core.durable import append_line, write_atomic

SNAPSHOT_DIR = "snapshot"
RECORD_NAME = "submission.json"
HISTORY_NAME = "submissions.jsonl"
# the distributions whose versions decide what a run does
PACKAGES = ("zerorun", "torch", "pytorch-lightning", "lightning", "deepspeed", "transformers", "tokenizers",
            "datasets", "hydra-core", "omegaconf", "submitit", "rich", "wandb", "mlflow-skinny", "mlflow")
# A variable holds a secret by convention when a word of its name (split at anything but a letter) is one of
# SECRET_WORDS, or ends with one of SECRET_ENDINGS (written without a separator: HFTOKEN, DBPASSWORD, APIKEY).
# Whole words, so KEYBOARD, PATH, HOSTNAME, GIT_AUTHOR_NAME or TOKENIZERS_PARALLELISM are not secrets.
SECRET_ENDINGS = ("TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWORDS", "PASSWD", "PASSPHRASE",
                  "CREDENTIAL", "CREDENTIALS", "APIKEY", "ACCESSKEY", "SECRETKEY", "PRIVATEKEY", "AUTHKEY")
SECRET_WORDS = frozenset({"KEY", "KEYS", "PAT", "AUTH", "PASS", "PWD", "CREDS", "PRIVATE", "COOKIE", "COOKIES",
                          "SESSION", "DSN", "BEARER"})
# ...unless its last word says the value only points at a secret (SSH_AUTH_SOCK, GPG_KEY_FILE, HF_TOKEN_PATH),
NOT_SECRET_LAST_WORDS = frozenset({"FILE", "PATH", "DIR", "SOCK", "SOCKET", "TYPE", "CLASS", "DESKTOP"})
# ...or it is one of the login session's variables that match a word above and hold nothing secret.
NOT_SECRET_NAMES = frozenset({"PWD", "DBUS_SESSION_BUS_ADDRESS", "SESSION_MANAGER", "DESKTOP_SESSION"})
# Shorter values are too likely to appear by chance ("1", "true", "main") to be told apart from a leak.
SECRET_MIN_LEN = 8
# what a redacted value reads in the snapshot
REDACTED = "<redacted by zerorun: the value of ${name}>"
GIT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Submission:
    job_id: str
    submitted_at: str
    command: list[str]
    run_dir: str
    script: str
    zerorun_version: str
    # the jobs it waits for, as rendered (sbatch --dependency, from cluster.after); None: none
    dependency: Optional[str] = None


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


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret by convention (see SECRET_WORDS)."""
    upper = name.upper()
    words = [w for w in re.split(r"[^A-Z]+", upper) if w]
    if not words or upper in NOT_SECRET_NAMES or words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    return any(w in SECRET_WORDS or w.endswith(SECRET_ENDINGS) for w in words)


def secret_values(environ: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """name -> the forms its value can take in a written file (as is, JSON- or YAML-escaped, each line of a
    multi-line value such as a private key), for every secret-looking variable with a value long enough to tell."""
    found: dict[str, tuple[str, ...]] = {}
    for name, value in environ.items():
        if not is_secret_name(name) or len(value) < SECRET_MIN_LEN:
            continue
        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        # a PEM armour line ("-----BEGIN ... KEY-----") is no secret; the lines between are
        forms |= {line.strip() for line in value.splitlines()
                  if len(line.strip()) >= SECRET_MIN_LEN and not line.lstrip().startswith("-----")}
        found[name] = tuple(sorted(f for f in forms if len(f) >= SECRET_MIN_LEN))
    return found


def leaked_secrets(texts: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """Names of secret-looking environment variables whose value appears in any of `texts`. Pure."""
    joined = "\n".join(texts)
    return sorted(name for name, forms in secret_values(environ).items() if any(f in joined for f in forms))


def check_no_secrets(texts: Mapping[str, str], environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """The check every writer makes before it writes: `texts` maps each file (or what else is recorded: the command
    line, swept values) to the text about to be written; one problem per secret-looking environment variable whose
    value is in it, naming the files and the fix. Empty: nothing secret would be written. `environ` defaults to
    this process's environment."""
    values = secret_values(os.environ if environ is None else environ)
    problems = []
    for name, forms in sorted(values.items()):
        where = [label for label, text in texts.items() if any(f in text for f in forms)]
        if where:
            problems.append(
                f"the value of ${name} would be written into {', '.join(where)} (a config or command line that "
                f"interpolates ${{oc.env:{name}}} or holds its value?); remove it there and list {name} in "
                f"cluster.env_passthrough: the job then inherits it from your shell by name, and no file holds it")
    return problems


def redact_secrets(text: str, environ: Optional[Mapping[str, str]] = None) -> tuple[str, list[str]]:
    """`text` with every secret-looking environment value replaced by a note naming its variable, and the names
    replaced. For records copied from the user's tree (the uncommitted diff), which are kept, not run."""
    replaced = []
    for name, forms in sorted(secret_values(os.environ if environ is None else environ).items()):
        hit = False
        for form in sorted(forms, key=len, reverse=True):  # the whole value before any line of it
            if form in text:
                text, hit = text.replace(form, REDACTED.format(name=name)), True
        if hit:
            replaced.append(name)
    return text, replaced


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


def snapshot_texts(config_yaml: str, script: str, workdir: str, python: str) -> dict[str, str]:
    """name -> text of every file of the snapshot, as read now (git and package metadata), before any redaction."""
    facts, diff = git_state(workdir)
    env = {"python": python, "python_version": platform.python_version(), "platform": platform.platform(),
           "packages": package_versions()}
    return {
        "config.yaml": config_yaml,
        "job.sbatch": script,
        "git.json": json.dumps({**facts, "workdir": workdir}, indent=1, ensure_ascii=False) + "\n",
        "git.diff": diff,
        "versions.json": json.dumps(env, indent=1, sort_keys=True) + "\n",
    }


def write_snapshot(run_dir: str, config_yaml: str, script: str, workdir: str, python: str,
                   environ: Optional[Mapping[str, str]] = None, err: Optional[TextIO] = None) -> Path:
    """Snapshot what is about to run into RUN_DIR/snapshot (the latest submission's; the ranks read
    RUN_DIR/config.yaml).

    The snapshot copies the user's uncommitted diff, which zerorun does not control: a secret-looking environment
    value in it (a token pasted into a tracked file) is written redacted, with a note on `err` and in git.json.
    Redacting rather than refusing: the diff is a record of the tree, not what runs (the job runs the tree
    itself), so the submission loses nothing by it, and the guard holds whoever calls this. The config and the
    script are what runs; their writers refuse a secret before this is called (check_no_secrets)."""
    out = Path(run_dir) / SNAPSHOT_DIR
    out.mkdir(mode=0o700, exist_ok=True)
    texts = snapshot_texts(config_yaml, script, workdir, python)
    redacted: dict[str, list[str]] = {}
    for name in list(texts):
        texts[name], names = redact_secrets(texts[name], environ)
        if names:
            redacted[name] = names
    if redacted:
        facts = json.loads(texts["git.json"])
        facts["redacted"] = {name: [f"${n}" for n in names] for name, names in sorted(redacted.items())}
        texts["git.json"] = json.dumps(facts, indent=1, ensure_ascii=False) + "\n"
        what = "; ".join(f"{name}: the value of {', '.join('$' + n for n in names)}"
                         for name, names in sorted(redacted.items()))
        (err or sys.stderr).write(
            f"zerorun: the snapshot holds redacted text ({what}), written as {REDACTED.format(name='NAME')}: a "
            "tracked file holds a secret; read it from the environment there instead (and keep it out of git)\n")
    for name, text in texts.items():
        write_atomic(out / name, text)
    return out


def write_record(run_dir: str, submission: Submission) -> Path:
    """Record a submission: the file that says this run folder was submitted, and as which job."""
    record = asdict(submission)
    append_line(Path(run_dir) / HISTORY_NAME, json.dumps(record, ensure_ascii=False))
    return write_atomic(Path(run_dir) / RECORD_NAME, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def read_record(run_dir: str | Path) -> Optional[Submission]:
    try:
        data = json.loads((Path(run_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return Submission(**{k: data.get(k) for k in Submission.__dataclass_fields__})  # type: ignore[arg-type]
