"""What Tune searches and how it stops trials: the param space of a study, the grid feed, the search
domains of a spec's ``search`` section, Optuna (TPE) and the ASHA scheduler."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from orchestrator.run import tune_api
from orchestrator.run.members import CellGroups, group_config
from orchestrator.run.trainable import TIME_LIMIT_KEY
from orchestrator.store.rows import SweepMeta
from orchestrator.sweep.expand import Cell, SweepGrid
from orchestrator.sweep.metrics import CELL_KEY, META_KEY, SEARCH_KEY, STEP
from orchestrator.sweep.spec import SweepSpec


def param_space(spec: SweepSpec, cell: Optional[Cell], meta: SweepMeta) -> dict[str, Any]:
    """Grid sweeps: the sweep's provenance only (GridFeed adds each cell). Search sweeps: the one
    cell and the search domains."""
    limit = {TIME_LIMIT_KEY: spec.max_trial_minutes * 60} if spec.max_trial_minutes else {}
    if cell is None:
        return {META_KEY: meta.as_dict(), **limit}
    return {CELL_KEY: cell.payload(), META_KEY: meta.as_dict(), **limit,
            SEARCH_KEY: {k: search_domain(d) for k, d in spec.search.space.items()}}


class GridFeed(tune_api.Searcher):
    """Feeds a grid sweep's cells to Tune one at a time, walking the lazy grid.

    ``tune.grid_search`` over a list of payloads deep-copies the whole list for every variant it
    generates (quadratic: 1,000 trials took 46 s before the first one started, 10^4 never started in
    10 minutes). Tune asks a searcher for a trial only when it can queue one, so here the first trial
    starts as soon as Ray is up, the driver holds only the trials Tune has created, and Ctrl-C
    stops it at any point. Tune saves ``position`` with its experiment state and restores it on
    resume; cells already finished (``skip``) are passed over.
    """

    def __init__(self, spec: SweepSpec, smoke: bool, skip: frozenset[str]) -> None:
        super().__init__()
        self.spec, self.smoke, self.skip = spec, smoke, skip
        self.position = 0
        """Cells of the grid walked so far (queued or skipped)."""
        self._groups: Optional[CellGroups] = None
        self._start = 0

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> Optional[dict]:
        """The next unfinished cell, or with ``seeds_per_trial`` > 1 a group of seeds of one arm."""
        if self._groups is None:
            cells = SweepGrid(self.spec, self.smoke).cells(self.position)
            self._groups, self._start = CellGroups(cells, self.spec.seeds_per_trial, self.skip), self.position
        group = self._groups.next_group()
        self.position = self._start + self._groups.walked
        return tune_api.Searcher.FINISHED if group is None else group_config(group)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        pass  # a grid learns nothing from results

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"position": self.position}))

    def restore(self, checkpoint_path: str) -> None:
        self.position = int(json.loads(Path(checkpoint_path).read_text())["position"])
        self._groups = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_groups": None}  # Tune pickles the searcher; a generator cannot be


def search_domain(dist: Any) -> Any:
    """Tune's domain for one distribution of the spec's ``search.space``."""
    kind = dist.type
    if kind == "loguniform":
        return tune_api.loguniform(dist.low, dist.high)
    if kind == "uniform":
        return tune_api.uniform(dist.low, dist.high)
    if kind == "int":
        return (tune_api.lograndint if dist.log else tune_api.randint)(dist.low, dist.high + 1)
    return tune_api.choice(list(dist.values))


def search_algorithm(spec: SweepSpec, cell: Optional[Cell], smoke: bool, skip: frozenset[str]) -> Any:
    """Grid sweeps: the GridFeed over the cells not in ``skip``. Search sweeps: one Optuna study
    per cell, seeded by the cell's seed."""
    if cell is None:
        return GridFeed(spec, smoke, skip)
    return tune_api.optuna_search(spec.search.metric, spec.search.mode, cell.seed)


def scheduler(spec: SweepSpec, grid: SweepGrid) -> Optional[Any]:
    """ASHA on the spec's training metric, or None."""
    s = spec.scheduler
    if s.type == "none":
        return None
    max_t = s.max_t or grid.max_train_steps()
    # stop_last_trials=False: a trial reaching max_t has finished training and must still evaluate.
    return tune_api.asha_scheduler(time_attr=STEP, metric=s.metric, mode=s.mode, max_t=max_t,
                                   grace_period=min(s.grace_period, max_t), reduction_factor=s.reduction_factor,
                                   stop_last_trials=False)
