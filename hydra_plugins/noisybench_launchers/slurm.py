"""The submitit launchers with `runs_per_task` and `wait` (in _submitit.py): loaded only when
hydra-submitit-launcher is installed (pip install 'noisybench[cluster]'), so that Hydra's plugin scan,
which imports every module here, prints no warning on an install without it."""
try:
    from hydra_plugins.noisybench_launchers._submitit import LocalLauncher, SlurmLauncher  # noqa: F401
except ImportError:  # hydra/launcher=slurm then fails as Hydra fails for any launcher it cannot find
    pass
