"""No value of a secret-looking environment variable reaches a file zerorun writes.

The names: which variables hold secrets by convention, in both directions (the ones a wider pattern would wrongly
catch too). The check every writer calls (check_no_secrets), and the snapshot, which redacts the user's diff.
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from jobs import snapshot
from jobs.snapshot import check_no_secrets, is_secret_name, leaked_secrets, redact_secrets

VALUE = "zr_s3cr3t_value_0123456789"

SECRET_NAMES = [
    # the names the old pattern missed
    "WANDB_KEY", "KAGGLE_KEY", "OPENAI_KEY", "SSH_KEY", "GITHUB_PAT",
    # and the conventions around them
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AZURE_CLIENT_SECRET", "DB_PASSWORD", "PGPASSWORD", "SMTP_PASSWD", "MYSQL_PWD", "DB_PASS",
    "GOOGLE_APPLICATION_CREDENTIALS", "DOCKER_CREDS", "HTTP_AUTH", "BASIC_AUTH_USER_PASS", "SSH_PRIVATE_KEY",
    "GPG_PASSPHRASE", "BROWSER_COOKIE", "MY_SESSION", "SENTRY_DSN", "HFTOKEN", "MYAPIKEY", "api_key", "Gh_Pat2",
]
HARMLESS_NAMES = [
    "KEYBOARD", "KEYMAP", "MONKEY", "PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "PATCH", "HOSTNAME", "HOST", "PWD",
    "OLDPWD", "USER", "HOME", "SHELL", "LANG", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "TOKENIZERS_PARALLELISM",
    "SSH_AUTH_SOCK", "XDG_SESSION_TYPE", "DBUS_SESSION_BUS_ADDRESS", "SESSION_MANAGER", "DESKTOP_SESSION",
    "HF_TOKEN_PATH", "GPG_KEY_FILE", "PASSAGE", "COMPASS", "SLURM_CONF", "CUDA_VISIBLE_DEVICES",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_recognised_and_their_value_caught(name):
    assert is_secret_name(name)
    assert leaked_secrets([f"source_prefix: {VALUE}\n"], {name: VALUE}) == [name]


@pytest.mark.parametrize("name", HARMLESS_NAMES)
def test_harmless_names_are_not_secrets(name):
    assert not is_secret_name(name)
    assert leaked_secrets([f"source_prefix: {VALUE}\n"], {name: VALUE}) == []


def test_short_values_are_ignored_long_ones_caught_in_escaped_and_multiline_forms():
    assert leaked_secrets(["enabled: true\nmode: main\n"], {"SOME_TOKEN": "true", "API_KEY": "main"}) == []
    quoted = 'ab"cd\\ef_0123456789'
    assert leaked_secrets([json.dumps({"x": quoted})], {"HF_TOKEN": quoted}) == ["HF_TOKEN"]
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n-----END OPENSSH PRIVATE KEY-----\n"
    # one line of the key is enough to be a leak; its armour alone is not
    assert leaked_secrets(["+ b3BlbnNzaC1rZXktdjEAAAAABG5vbmU"], {"SSH_KEY": pem}) == ["SSH_KEY"]
    assert leaked_secrets(["-----BEGIN OPENSSH PRIVATE KEY-----"], {"SSH_KEY": pem}) == []


def test_check_names_the_variable_the_files_and_the_fix():
    env = {"WANDB_KEY": VALUE, "KAGGLE_KEY": "k" * 40, "HOSTNAME": "a-long-host-name", "PATH": "/usr/bin:/bin"}
    texts = {"config.yaml": f"dataset:\n  source_prefix: {VALUE}\n", "job.sbatch": f"# command: x={VALUE}\n",
             "ranks.txt": "host a-long-host-name /usr/bin:/bin\n"}
    problems = check_no_secrets(texts, env)
    assert len(problems) == 1, problems
    assert "$WANDB_KEY would be written into config.yaml, job.sbatch" in problems[0]
    assert "cluster.env_passthrough" in problems[0] and "${oc.env:WANDB_KEY}" in problems[0]
    assert check_no_secrets({"config.yaml": "nothing here\n"}, env) == []


def test_check_reads_this_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("OPENAI_KEY", VALUE)
    assert "$OPENAI_KEY" in check_no_secrets({"overrides": f"dataset.source_prefix={VALUE}"})[0]


def test_redaction_replaces_every_form_and_names_the_variable():
    text, names = redact_secrets(f"+token = '{VALUE}'\n+again {VALUE}\n", {"GITHUB_PAT": VALUE, "PATH": VALUE})
    assert VALUE not in text and names == ["GITHUB_PAT"]
    assert text.count("<redacted by zerorun: the value of $GITHUB_PAT>") == 2


def _repo_with_a_secret_in_its_diff(root, value: str):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (root / "train_extra.py").write_text("TOKEN = None\n")
    git("add", "train_extra.py")
    git("commit", "-qm", "start")
    (root / "train_extra.py").write_text(f"TOKEN = {value!r}\n")


def test_a_secret_in_the_uncommitted_diff_is_caught_and_never_written(tmp_path):
    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    repo.mkdir()
    run_dir.mkdir()
    _repo_with_a_secret_in_its_diff(repo, VALUE)
    env = {"KAGGLE_KEY": VALUE}
    _, diff = snapshot.git_state(str(repo))
    assert VALUE in diff
    assert "$KAGGLE_KEY would be written into git.diff" in check_no_secrets({"git.diff": diff}, env)[0]

    err = io.StringIO()
    out = snapshot.write_snapshot(str(run_dir), "config: 1\n", "#!/bin/bash\n", str(repo), "/usr/bin/python3",
                                  environ=env, err=err)
    written = {p.name: p.read_text() for p in out.iterdir()}
    assert set(written) == {"config.yaml", "job.sbatch", "git.json", "git.diff", "versions.json"}
    assert not any(VALUE in text for text in written.values())
    assert "<redacted by zerorun: the value of $KAGGLE_KEY>" in written["git.diff"]
    assert json.loads(written["git.json"])["redacted"] == {"git.diff": ["$KAGGLE_KEY"]}
    assert "git.diff: the value of $KAGGLE_KEY" in err.getvalue() and "tracked file" in err.getvalue()
    assert all((p.stat().st_mode & 0o077) == 0 for p in out.iterdir()), "snapshot files are private"


def test_a_clean_snapshot_is_written_as_read_and_says_nothing(tmp_path):
    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    repo.mkdir()
    run_dir.mkdir()
    _repo_with_a_secret_in_its_diff(repo, "not_a_secret_anyone_has")
    err = io.StringIO()
    out = snapshot.write_snapshot(str(run_dir), "config: 1\n", "#!/bin/bash\n", str(repo), "/usr/bin/python3",
                                  environ={"KAGGLE_KEY": VALUE}, err=err)
    assert "not_a_secret_anyone_has" in (out / "git.diff").read_text()
    assert "redacted" not in json.loads((out / "git.json").read_text()) and err.getvalue() == ""
