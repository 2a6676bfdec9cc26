"""What Tune searches and how it stops trials: the param space of a study, the search domains of a
spec's ``search`` section, Optuna (TPE) and the ASHA scheduler."""
from __future__ import annotations

from typing import Any, Optional

from ray import tune

from orchestrator.run.trainable import CELL_KEY, META_KEY, SEARCH_KEY
from orchestrator.store.rows import SweepMeta
from orchestrator.sweep.expand import Cell
from orchestrator.sweep.metrics import STEP
from orchestrator.sweep.spec import SweepSpec


def param_space(spec: SweepSpec, cells: list[Cell], meta: SweepMeta) -> dict[str, Any]:
    """Grid sweeps: every cell as a grid value. Search sweeps: the one cell and the search domains."""
    if spec.search is None:
        return {CELL_KEY: tune.grid_search([c.payload() for c in cells]), META_KEY: meta.as_dict()}
    return {CELL_KEY: cells[0].payload(), META_KEY: meta.as_dict(),
            SEARCH_KEY: {k: search_domain(d) for k, d in spec.search.space.items()}}


def search_domain(dist: Any) -> Any:
    """Tune's domain for one distribution of the spec's ``search.space``."""
    kind = dist.type
    if kind == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if kind == "uniform":
        return tune.uniform(dist.low, dist.high)
    if kind == "int":
        return (tune.lograndint if dist.log else tune.randint)(dist.low, dist.high + 1)
    return tune.choice(list(dist.values))


def search_algorithm(spec: SweepSpec, cells: list[Cell]) -> Optional[Any]:
    """One Optuna study per cell (search sweeps), seeded by the cell's seed; None for grid sweeps."""
    if spec.search is None:
        return None
    return optuna_search(spec.search.metric, spec.search.mode, cells[0].seed)


def scheduler(spec: SweepSpec, cells: list[Cell]) -> Optional[Any]:
    """ASHA on the spec's training metric, or None."""
    s = spec.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = s.max_t or max(int(c.sections["train"]["steps"]) for c in cells)
    # stop_last_trials=False: a trial reaching max_t has finished training and must still evaluate.
    return ASHAScheduler(time_attr=STEP, metric=s.metric, mode=s.mode, max_t=max_t,
                         grace_period=min(s.grace_period, max_t), reduction_factor=s.reduction_factor,
                         stop_last_trials=False)


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
