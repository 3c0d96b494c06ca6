"""`zerorun site list | show NAME | probe NAME`: the site profiles (configs/sites.py) and their probes
(cluster/site_probe.py). Imports nothing of the training stack.

`probe` asks the cluster once and keeps the answer beside the profile (NAME.probe.yaml in the user's site folder);
every later `zerorun site=NAME ...` is checked against it without asking Slurm. It then checks the profile's own
settings against what it found, so a wrong partition or GPU type shows now, not at the first submission.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, TextIO

from cluster import site_probe
from configs import sites


def main(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="zerorun site", description="Site profiles: site=NAME on the command line "
                                f"(your folder: ${sites.SITES_ENV}, default {sites.DEFAULT_FOLDER}; docs/sites.md).")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("list", help="the sites found, where, and when each was probed")
    show = sub.add_parser("show", help="a site's profile and its probe")
    show.add_argument("name")
    probe = sub.add_parser("probe", help="ask the cluster once (partitions, limits, GRES, QOS) and keep the answer")
    probe.add_argument("name")
    args = p.parse_args(argv)
    if args.verb == "list":
        return _list(out)
    path = sites.find(args.name)
    if path is None:
        err.write(f"zerorun: {sites.unknown_site(args.name)}\n")
        return 2
    return _show(args.name, path, out, err) if args.verb == "show" else _probe(args.name, out, err)


def _kept(name: str, err: TextIO) -> Optional[site_probe.SiteProbe]:
    try:
        return site_probe.load(name)
    except site_probe.SiteProbeError as e:
        err.write(f"zerorun: {e}\n")
        return None


def _list(out: TextIO) -> int:
    from cluster import table

    found = sites.profiles()
    rows = []
    for name, path in found.items():
        try:
            kept = site_probe.load(name)
            probed = kept.probed_at if kept else "never (zerorun site probe " + name + ")"
        except site_probe.SiteProbeError:
            probed = "unreadable (probe it again)"
        rows.append([name, str(path), probed])
    if rows:
        table.show(("SITE", "PROFILE", "PROBED"), rows, out)
    out.write("looked in: " + "; ".join(f"{what}: {folder}" for what, folder in sites.folders()) + "\n")
    return 0


def _show(name: str, path, out: TextIO, err: TextIO) -> int:  # type: ignore[no-untyped-def]
    out.write(f"----- {path} -----\n{path.read_text()}")
    kept = _kept(name, err)
    where = sites.probe_path(name)
    if kept is None:
        out.write(f"\n(no probe kept at {where}: `zerorun site probe {name}` asks the cluster once)\n")
    else:
        out.write(f"\n----- probe: {where} -----\n{site_probe.describe(kept)}")
    return 0


def _probe(name: str, out: TextIO, err: TextIO) -> int:
    try:
        probe = site_probe.probe(name)
    except site_probe.SiteProbeError as e:
        err.write(f"zerorun: site {name} not probed: {e}\n")
        return 1
    path = site_probe.save(probe)
    out.write(site_probe.describe(probe))
    out.write(f"kept in {path}; zerorun site={name} ... is checked against it without asking Slurm\n")
    problems = _profile_problems(name, probe)
    if problems:
        err.write(f"zerorun: the profile of site {name} would be refused on this cluster:\n"
                  + "".join(f"  - {x}\n" for x in problems))
        return 2
    return 0


def _profile_problems(name: str, probe: site_probe.SiteProbe) -> list[str]:
    """The profile's own settings (site=NAME alone) checked against the probe just taken."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cluster.backends import get_backend
    from cluster.plan import make_plan
    from configs.finalize import finalize
    from configs.schema import register

    register()
    try:
        with initialize_config_module("configs", version_base="1.3"):
            cfg = finalize(compose("config", overrides=[f"site={name}", "run_id=probe"]))
    except (HydraException, OmegaConfBaseException) as e:
        return [f"the profile does not compose: {e}"]
    plan = make_plan(cfg)
    if plan.backend != "slurm":
        return []
    return list(get_backend(plan.backend).preflight(plan, site_probe.facts(probe)).problems)
