"""zerorun's Hydra sweeper and launcher: `zerorun -m KEY=A,B ...` becomes one Slurm job array, fire-and-forget.

Hydra finds plugins only inside the `hydra_plugins` namespace package, so the classes Hydra instantiates live
here; they are thin shells over jobs/sweeps/launcher.py, imported lazily so that Hydra's plugin scan (which imports
every module here at start-up) stays fast and never imports zerorun's planning code or submitit.
"""
