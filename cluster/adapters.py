"""Every private API of Hydra and OmegaConf that zerorun relies on, in one place, each behind a small function
that says what it is used for. tests/test_adapters.py pins the behaviour each one must keep, so a library
upgrade that changes it fails a test here instead of a user's sweep.

Why private at all: the sweeper must write member override lines exactly as Hydra's own grid expansion writes
them (members are matched by those lines, never re-parsed), and building a member without composing a config
per member means setting a value through the schema's own node (what OmegaConf.update does, minus the walk).

And submitit's sbatch renderer, `_make_sbatch_string`: zerorun renders its batch scripts with it (sorted
#SBATCH flags, the array line from map_count and array_parallelism, the setup/command/teardown sections)
instead of a copy of it.

Each function imports its library when called: importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence


def grid(overrides: Sequence[Any]) -> list[list[str]]:
    """Every member's override lines, the cartesian product of the parsed sweep overrides, in Hydra's basic
    sweeper's order (last key fastest) and spelling. Private: BasicSweeper.split_arguments."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(list(overrides), None)
    return [list(m) for m in batches[0]] if batches else []


def value_text(value: Any) -> str:
    """One value of a sweep as the grid's override lines spell it (`KEY=<this>`). Private:
    Override._get_value_element_as_str."""
    from hydra.core.override_parser.types import Override

    return Override._get_value_element_as_str(value)


def plain_value(value: Any) -> Any:
    """One parsed value as a plain Python value (a quoted string unquoted, lists and dicts converted). Private:
    Override._convert_value."""
    from hydra.core.override_parser.types import Override

    return Override._convert_value(value)


def leaf_setter(cfg: Any, key: str) -> Optional[Callable[[Any], Any]]:
    """A function that validates and converts a value for the leaf at dotted `key` as its node's declared type
    does (raising OmegaConf's ValidationError for a value that does not fit), and returns the converted value;
    it writes only into `cfg`'s own node (give it a copy). None when `key` is not an existing leaf value node.
    Private: BaseContainer._get_node, ValueNode._set_value and _value."""
    from omegaconf import DictConfig, OmegaConf, ValueNode

    parent_path, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        node = parent._get_node(leaf) if isinstance(parent, DictConfig) else None
    except Exception:  # a missing parent: the caller's slow path says why
        return None
    if not isinstance(node, ValueNode):
        return None

    def set_value(value: Any) -> Any:
        node._set_value(value)
        return node._value()

    return set_value


def yaml_quoter() -> Callable[[str], bool]:
    """A function that says whether OmegaConf.to_yaml quotes a string (it would read back as a bool, int or
    float); get it once, call it per string. Private: omegaconf._utils.yaml_is_bool, is_int, is_float."""
    from omegaconf._utils import is_float, is_int, yaml_is_bool

    def quotes(text: str) -> bool:
        return bool(yaml_is_bool(text) or is_int(text) or is_float(text))

    return quotes


# ---- submitit ----

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
