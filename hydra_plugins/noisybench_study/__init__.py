"""noisybench's Optuna sweeper as a Hydra plugin (Hydra instantiates sweepers only from the
`hydra_plugins` namespace). `hydra/sweeper=optuna` selects it (noisybench.study.register); the
sweep itself is noisybench.study_sweep, imported when a search starts (it imports optuna)."""
from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class StudySweeper(Sweeper):
    """hydra-optuna-sweeper's sweeper with a study that persists and trials averaged over seeds."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: Any, n_trials: int, n_jobs: int,
                 max_failure_rate: float, search_space: Any, custom_search_space: Any, params: Any,
                 seeds: Any = None) -> None:
        from noisybench.study_sweep import StudySweeperImpl

        self.sweeper = StudySweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                                        search_space, custom_search_space, params, seeds=seeds)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
