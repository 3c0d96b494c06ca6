"""The one quoting choke point: every literal that reaches a shell, an #SBATCH line or a Slurm file name
pattern goes through a function here. Shell variables ($SLURM_JOB_ID, ...) are spliced in on purpose by the
caller, never by passing them through these functions.

Three readers, three rules:
- the shell (bash) reads script lines: `word()` single-quotes a literal so bash hands it over byte for byte;
- sbatch reads `#SBATCH` lines with its own parser (bash never does: to bash they are comments). Whitespace ends
  a value, quotes group and backslashes escape even inside quotes, a newline ends the directive: `directive()`
  admits values without those characters (Slurm's lists, ranges and feature expressions such as `n[01-04]`,
  `a100&ib`, `[rack1|rack2]*2` included) and refuses the rest with the fix; `slurm_name()` turns any text into
  such a value (lossy, for labels such as the job name);
- Slurm expands `%j`, `%t`, ... in file names and treats any backslash as "expand nothing": `filename_pattern()`
  escapes `%` in a literal path and refuses backslashes.
A comment line must stay one line: `comment()` writes text as JSON, so a newline cannot end the comment early.
Pure.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Iterable

# Characters sbatch's directive parser reads literally: everything but whitespace, quotes and backslashes
# (Slurm's own syntax: hostlists n[01-04], feature expressions a100&ib, a|b, [x|y]*2, !feature, times 1-00:00).
_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./\-\[\]&|!*()~^]+$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
# A job name longer than this is cut: squeue and sacct show a few dozen characters at most.
NAME_MAX = 64


class QuotingError(ValueError):
    """A value cannot be written where it is asked to go; the message names the key and the fix."""


def word(value: Any) -> str:
    """One shell word that bash reads back as exactly `value` (quotes, $(), backticks, newlines, unicode)."""
    text = str(value)
    if "\x00" in text:
        raise QuotingError(f"{text!r} holds a NUL byte, which no shell argument can carry")
    return shlex.quote(text)


def join(argv: Iterable[Any]) -> str:
    """A shell command line that runs exactly `argv`."""
    return " ".join(word(a) for a in argv)


def assign(name: str, value: Any) -> str:
    """`export NAME=value` with the value quoted; the name must be a shell variable name."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise QuotingError(f"{name!r} is not an environment variable name (letters, digits, _; not first a digit)")
    return f"export {name}={word(value)}"


def directive(key: str, value: Any) -> str:
    """A value for an `#SBATCH --key=value` line, checked to read the same to sbatch and to bash.

    Such values are Slurm names, numbers, times and lists; anything else is refused rather than guessed at.
    """
    text = str(value)
    if not _DIRECTIVE_SAFE.fullmatch(text):
        raise QuotingError(
            f"sbatch --{key.replace('_', '-')}={text!r}: an #SBATCH value may not hold whitespace, quotes, "
            "backslashes or other characters sbatch reads specially; use the plain Slurm name, number or "
            "expression (letters, digits and _@%+=:,./-[]&|!*()~^)"
        )
    return text


def slurm_name(text: str, fallback: str = "zerorun") -> str:
    """A label Slurm shows (job name): unsafe runs of characters become `_`. Lossy on purpose: the exact name
    stays in the run's config.yaml, which is what the ranks read."""
    name = _NAME_UNSAFE.sub("_", text).strip("_")[:NAME_MAX]
    return name or fallback


def filename_pattern(path: str) -> str:
    """A literal path made safe to prefix a Slurm file name pattern (`%` doubled; `%j` and friends in the
    pattern that follows still expand). Returns text for `word()`, not shell text."""
    if "\\" in path:
        raise QuotingError(
            f"{path!r} holds a backslash, which makes Slurm ignore every %j/%t in a log file name (all ranks would "
            "write one file); choose cluster.runs_dir and name without backslashes"
        )
    return path.replace("%", "%%")


def comment(text: str) -> str:
    """`text` as one comment-safe line (JSON string escapes: a newline cannot end the comment)."""
    return json.dumps(text, ensure_ascii=False)
