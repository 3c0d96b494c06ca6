"""The config source of site profiles (`zerorun-sites://`), and the search-path plugin that puts it first.

It answers only for the `site` group. A profile is loaded as Hydra loads any YAML config, in the global package
(its keys are cluster.*, ...), with `site.name` set to the profile's name so the submission can find its probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

SCHEME = "zerorun-sites"


class ZerorunSitesSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # first: a profile in the user's folder hides a shipped one of the same name
        search_path.prepend(provider="zerorun-sites", path=f"{SCHEME}://")


class ZerorunSitesSource(ConfigSource):
    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)

    @staticmethod
    def scheme() -> str:
        return SCHEME

    @staticmethod
    def _name(config_path: str) -> Optional[str]:
        from configs import sites

        group, _, name = config_path.strip("/").partition("/")
        if group != sites.GROUP or not name or "/" in name:
            return None
        return name[: -len(".yaml")] if name.endswith(".yaml") else name

    def _file(self, config_path: str) -> Optional[Path]:
        from configs import sites

        name = self._name(config_path)
        return sites.find(name) if name else None

    def load_config(self, config_path: str) -> ConfigResult:
        from omegaconf import DictConfig, OmegaConf

        path = self._file(config_path)
        if path is None:
            raise ConfigLoadError(f"Config not found: {config_path}")
        text = path.read_text(encoding="utf-8")
        header = ConfigSource._get_header_dict(text)
        # a profile sets keys of the whole config (cluster.*, site.*), whatever its header says
        header["package"] = "_global_"
        cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
        if not isinstance(cfg, DictConfig):
            raise ConfigLoadError(f"{path}: a site profile is a mapping of keys (cluster: ...), not a list")
        site = cfg.get("site")
        if not isinstance(site, DictConfig):
            cfg.site = {}
        cfg.site.name = self._name(config_path)
        return ConfigResult(config=cfg, path=f"{self.scheme()}://{path.parent}", provider=self.provider,
                            header=header)

    def __repr__(self) -> str:
        from configs import sites

        where = "; ".join(f"{what}: {folder}" for what, folder in sites.folders())
        return f"provider={self.provider}, path={self.scheme()}:// (site profiles; {where})"

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        from configs import sites

        return config_path.strip("/") in ("", sites.GROUP)

    def is_config(self, config_path: str) -> bool:
        return self._file(config_path) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        from configs import sites

        path = config_path.strip("/")
        if path == "" and results_filter in (None, ObjectType.GROUP):
            return [sites.GROUP]
        if path == sites.GROUP and results_filter in (None, ObjectType.CONFIG):
            return sorted(sites.profiles())
        return []
