"""Site profiles for Hydra: `site=NAME` finds NAME.yaml in the user's folder ($ZERORUN_SITES, default
~/.config/zerorun/sites) before the examples shipped in configs/site/ (configs/sites.py says where).

Hydra finds plugins only inside the `hydra_plugins` namespace package: a search-path plugin puts the config source
first on the search path, for `python train.py`, the `zerorun` console script and the compose API alike.
"""
