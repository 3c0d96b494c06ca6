"""The private Hydra and OmegaConf behaviour zerorun relies on (cluster/adapters.py), pinned: a library upgrade
that changes any of it fails here, not in a user's sweep."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from cluster import adapters


def parse(*lines: str):  # type: ignore[no-untyped-def]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(lines))


def test_the_grid_is_every_combination_last_key_fastest_in_hydras_spelling():
    assert adapters.grid(parse("a=1,2", "b=x,'y z'", "c=3")) == [
        ["a=1", "b=x", "c=3"], ["a=1", "b='y z'", "c=3"], ["a=2", "b=x", "c=3"], ["a=2", "b='y z'", "c=3"]]
    assert adapters.grid(parse("seed=range(0,3)")) == [["seed=0"], ["seed=1"], ["seed=2"]]
    assert adapters.grid(parse("+x=1,2")) == [["+x=1"], ["+x=2"]]
    assert adapters.grid(parse("seed=range(0,0)")) == []


def test_a_values_text_is_the_line_the_grid_writes_and_its_value_is_plain():
    """The sweeper finds each member's values by the grid's own lines: `KEY=value_text(v)` must be them."""
    for line in ("lr=1e-4,3e-4", "name='a b',c", "xs=[1,2],[3]", "flag=true,false", "d={a:1},{b:2}", "t=null,x"):
        o = parse(line)[0]
        mine = [f"{o.get_key_element()}={adapters.value_text(v)}" for v in o.sweep_iterator()]
        assert [m[0] for m in adapters.grid([o])] == mine, line
    o = parse("name='a b',3,1e-4,[1,'x'],true")[0]
    assert [adapters.plain_value(v) for v in o.sweep_iterator()] == ["a b", 3, 1e-4, [1, "x"], True]
    assert type(adapters.plain_value(next(iter(o.sweep_iterator())))) is str, "a quoted string becomes a str"


@dataclass
class Inner:
    steps: int = 1
    rate: float = 0.5
    name: str = "x"
    on: bool = False


@dataclass
class Top:
    inner: Inner = field(default_factory=Inner)


def test_a_leaf_setter_converts_and_checks_as_the_declared_type():
    cfg = OmegaConf.structured(Top)
    steps = adapters.leaf_setter(cfg, "inner.steps")
    assert steps("7") == 7 and type(steps("7")) is int
    with pytest.raises(ValidationError):
        steps("ten")
    assert adapters.leaf_setter(cfg, "inner.rate")(3) == 3.0
    assert adapters.leaf_setter(cfg, "inner.on")("true") is True
    assert adapters.leaf_setter(cfg, "inner.name")(5) == "5"
    assert adapters.leaf_setter(cfg, "inner") is None, "a container is not a leaf"
    assert adapters.leaf_setter(cfg, "inner.nope") is None
    assert adapters.leaf_setter(cfg, "nope.steps") is None


@pytest.mark.parametrize("text", ["true", "off", "Yes", "3", "1e-4", "0x1f", ".inf", "1_000", "null", "x", "a b",
                                  "", "3.0.1", "it's", "~"])
def test_config_yaml_quotes_strings_as_omegaconf_does(text):
    """zerorun writes config.yaml with PyYAML's emitter plus this quoting; the text must be OmegaConf.to_yaml's."""
    from jobs.sweeps.members import _section

    assert _section("k", text) == OmegaConf.to_yaml(OmegaConf.create({"k": text})), text
    quotes = adapters.yaml_quoter()
    assert quotes("true") and quotes("1e-4") and not quotes("x")


# ---- submitit: the sbatch renderer ----

def test_submitits_renderer_writes_sorted_flags_setup_command_and_teardown_in_order():
    text = adapters.sbatch_text(command="srun x", setup=["echo setup"], teardown=["echo after", ""],
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
    text = adapters.sbatch_text(command="srun x", setup=[], teardown=[], additional={}, job_name="j", map_count=10,
                       array_parallelism=3)
    assert "#SBATCH --array=0-9%3" in text.splitlines()
