"""The joblib launcher with `jobs_per_gpu` (in _joblib.py): loaded only when hydra-joblib-launcher is
installed (pip install 'noisybench[cluster]'), for the reason given in slurm.py."""
try:
    from hydra_plugins.noisybench_launchers._joblib import GpuJoblibLauncher  # noqa: F401
except ImportError:
    pass
