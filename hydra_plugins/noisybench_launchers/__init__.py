"""noisybench's Hydra launchers: the submitit and joblib plugins' own, with noisybench's options
(`runs_per_task`, `wait`, `jobs_per_gpu`; docs/cluster.md). Hydra loads launcher classes only from
the `hydra_plugins` package, hence this package beside `noisybench`; the logic is in
noisybench.cluster and noisybench.gpus."""
