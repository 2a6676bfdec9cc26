"""Ray Tune, behind one module (ray_session.py holds Ray itself; no other module imports ray): the
names this project takes from Tune, and the few Tune classes it adapts. Ray's API has changed
across versions (inside a trainable only ``ray.tune.report``/``get_checkpoint``/``Checkpoint`` and
the ``ray.tune`` config classes work: STACK.md), so a change lands here alone.

Schedulers, the Optuna searcher and the experiment reader load on first use (Optuna is slow to
import and only search sweeps need it).
"""
from __future__ import annotations

from typing import Any

from ray.tune import (Callback, Checkpoint, CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner,
                      choice, get_checkpoint, lograndint, loguniform, randint, report, uniform, with_resources)
from ray.tune.search import Searcher

__all__ = ["Callback", "Checkpoint", "CheckpointConfig", "FailureConfig", "RunConfig", "Searcher", "TuneConfig",
           "Tuner", "asha_scheduler", "choice", "experiment_trials", "get_checkpoint", "lograndint", "loguniform",
           "optuna_search", "randint", "report", "uniform", "with_resources"]


def asha_scheduler(**kwargs: Any) -> Any:
    """Tune's ASHAScheduler with these arguments."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(**kwargs)


def optuna_search(metric: str, mode: str, seed: int) -> Any:
    """Tune's OptunaSearch, told only final results: our intermediate reports carry training
    metrics, the search metric (e.g. acc/ood_64) arrives once at the end. ASHA-stopped trials
    never report it and reach Optuna as PRUNED, so their early values do not bias TPE."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    class FinalResultOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalResultOptunaSearch(metric=metric, mode=mode, seed=seed)


def experiment_trials(path: str) -> list[Any]:
    """The Tune trials of the experiment saved at ``path`` (read back from its state files)."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(path).trials
