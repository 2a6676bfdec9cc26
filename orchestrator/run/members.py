"""``seeds_per_trial: K``: one Tune trial trains K seeds of one configuration as one batched model
(fpr_core.members), and every seed stays a trial of its own everywhere else.

- The grid feed (tune_space.GridFeed) groups up to K consecutive unfinished cells that differ only
  in their seed into one Tune config: ``CELL_KEY`` holds the first member's cell (Tune's folder is
  named after it) and ``MEMBERS_KEY`` every member's. A group of one is today's config exactly. An
  arm that cannot be stacked (``fpr_core.ensemble.member_refusals``) runs one seed per trial.
- Each member keeps the trial id it has with K = 1 (its cell's id), its own rows file, its own
  MLflow child run, its own kept model and its own resume state: the driver's hooks see one
  ``MemberView`` per member (``member_views``), a Tune trial narrowed to that member, so the hub's
  code runs per member unchanged.
- ASHA and Optuna read the plain metric keys, which carry the mean over members; each member's own
  values travel under ``MEMBER_RESULTS_KEY`` and reach its MLflow run.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from orchestrator.sweep.expand import Cell, Trial, resolve, trial_of_config
from orchestrator.sweep.metrics import (CELL_KEY, CURVES_KEY, DATASETS_KEY, ROWS_KEY, SEARCH_KEY, STATUS_KEY, STEP,
                                        train_report)

MEMBERS_KEY = "members"
"""Tune config key: the cell payloads of a group's members (absent for a trial of one seed)."""
MEMBER_RESULTS_KEY = "fpr/members"
"""Reported key: JSON {trial_id: that member's own result} (training metrics, or its final result)."""
STATE_FILE = "train_state-{trial_id}.pt"
"""A member's training state inside a group's checkpoint (fpr_core.train's lone format)."""


def member_trials(config: dict[str, Any]) -> list[Trial]:
    """The trials one Tune config runs: its members, or the one trial of CELL_KEY."""
    if MEMBERS_KEY not in config:
        return [trial_of_config(config)]
    return [resolve(Cell.from_payload(p), config.get(SEARCH_KEY)) for p in config[MEMBERS_KEY]]


# ----------------------------------------------------------------------------- grouping cells

def _same_arm(a: Cell, b: Cell) -> bool:
    return (a.task_spec, a.variant, a.sections) == (b.task_spec, b.variant, b.sections)


@functools.lru_cache(maxsize=256)
def _stackable(sections_json: str) -> bool:
    from fpr_core.config import ExperimentConfig
    from fpr_core.ensemble import member_refusals

    return not member_refusals(ExperimentConfig.from_dict(json.loads(sections_json)))


def stackable(cell: Cell) -> bool:
    """Whether the cell's configuration can train as a member of a batched model."""
    return _stackable(json.dumps(cell.sections, sort_keys=True, default=str))


def group_config(cells: list[Cell]) -> dict[str, Any]:
    """The Tune config of a group (today's config for a group of one)."""
    config: dict[str, Any] = {CELL_KEY: cells[0].payload()}
    if len(cells) > 1:
        config[MEMBERS_KEY] = [c.payload() for c in cells]
    return config


class CellGroups:
    """Walks cells and yields groups of up to ``size`` consecutive unfinished cells of one arm.

    ``walked`` counts the cells consumed (grouped or skipped), for GridFeed's saved position; a cell
    read ahead that starts the next group is held, not counted."""

    def __init__(self, cells: Iterator[Cell], size: int, skip: frozenset[str]) -> None:
        self.cells, self.size, self.skip = cells, size, skip
        self.walked = 0
        self._held: Optional[Cell] = None

    def _next(self) -> Optional[Cell]:
        if self._held is not None:
            cell, self._held = self._held, None
            return cell
        for cell in self.cells:
            if cell.cell_id not in self.skip:
                return cell
            self.walked += 1
        return None

    def next_group(self) -> Optional[list[Cell]]:
        first = self._next()
        if first is None:
            return None
        self.walked += 1
        group = [first]
        if self.size > 1 and stackable(first):
            while len(group) < self.size:
                cell = self._next()
                if cell is None:
                    break
                if not _same_arm(first, cell):
                    self._held = cell
                    break
                self.walked += 1
                group.append(cell)
        return group


# ----------------------------------------------------------------------- the driver's view

@dataclass
class CheckpointView:
    """A member's folder inside a group's final checkpoint (what DriverHub.keep_model reads)."""

    filesystem: Any
    path: str


def member_result(result: Optional[dict[str, Any]], trial_id: str) -> Optional[dict[str, Any]]:
    """A group's report narrowed to one member: its own metrics, rows, curves and datasets."""
    if not result or MEMBER_RESULTS_KEY not in result:
        return result
    own = json.loads(result[MEMBER_RESULTS_KEY]).get(trial_id)
    if own is None:
        return {STEP: result.get(STEP)}
    return {STEP: result.get(STEP), **own}


class MemberView:
    """A Tune trial as one of its members: the config of that member alone, its own last result
    and checkpoint folder; everything else is the Tune trial's."""

    def __init__(self, tune_trial: Any, trial: Trial, grouped: bool) -> None:
        self._tune_trial, self._trial, self._grouped = tune_trial, trial, grouped
        self.config = {k: v for k, v in tune_trial.config.items() if k != MEMBERS_KEY}
        self.config[CELL_KEY] = trial.cell.payload()
        self.trial_id = f"{tune_trial.trial_id}/{trial.trial_id}" if grouped else tune_trial.trial_id

    @property
    def last_result(self) -> Optional[dict[str, Any]]:
        return member_result(self._tune_trial.last_result, self._trial.trial_id)

    @property
    def checkpoint(self) -> Any:
        return member_checkpoint(self._tune_trial.checkpoint, self._trial.trial_id, self._grouped)

    def __getattr__(self, name: str) -> Any:  # error_file, get_error, status: the Tune trial's
        return getattr(self._tune_trial, name)


def member_checkpoint(checkpoint: Any, trial_id: str, grouped: bool) -> Any:
    if checkpoint is None or not grouped:
        return checkpoint
    return CheckpointView(checkpoint.filesystem, f"{checkpoint.path}/{trial_id}")


def view_result(view: Any, result: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """A report as the view's member sees it (the report itself for a trial of one seed)."""
    return member_result(result, view._trial.trial_id) if isinstance(view, MemberView) else result


def view_checkpoint(view: Any, checkpoint: Any) -> Any:
    """A checkpoint as the view's member sees it: its own folder of a group's checkpoint."""
    return member_checkpoint(checkpoint, view._trial.trial_id, True) if isinstance(view, MemberView) else checkpoint


def member_views(tune_trial: Any) -> list[Any]:
    """One view per member of a Tune trial; the trial itself when it holds one seed."""
    if MEMBERS_KEY not in tune_trial.config:
        return [tune_trial]
    return [MemberView(tune_trial, t, True) for t in member_trials(tune_trial.config)]


# ----------------------------------------------------------------------- the trainable's side

def mean_metrics(per_member: list[Optional[dict[str, float]]]) -> dict[str, float]:
    """Mean over the members still training of every metric they all report."""
    live = [m for m in per_member if m]
    if not live:
        return {}
    return {k: sum(m[k] for m in live) / len(live) for k in live[0] if all(k in m for m in live)}


def training_report(step: int, trials: list[Trial], per_member: list[Optional[dict[str, float]]]) -> dict[str, Any]:
    """One training report of a group: the members' mean under the plain keys (ASHA reads them),
    each member's own metrics under MEMBER_RESULTS_KEY."""
    own = {t.trial_id: train_report(m) for t, m in zip(trials, per_member) if m}
    return {STEP: step, **train_report(mean_metrics(per_member)), MEMBER_RESULTS_KEY: json.dumps(own)}


def group_final(finals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A group's final report: every member's rows under ROWS_KEY, the mean of each numeric metric
    over the members that report it (what Optuna reads), each member's own final under
    MEMBER_RESULTS_KEY."""
    rows = [row for f in finals.values() for row in json.loads(f[ROWS_KEY])]
    keys = {k for f in finals.values() for k, v in f.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mean = {k: sum(f[k] for f in finals.values() if k in f) / sum(1 for f in finals.values() if k in f) for k in keys}
    first = next(iter(finals.values()))
    return {**mean, ROWS_KEY: json.dumps(rows), CURVES_KEY: "{}", STATUS_KEY: first[STATUS_KEY],
            STEP: max(f.get(STEP) or 0 for f in finals.values()), MEMBER_RESULTS_KEY: json.dumps(finals)}


def final_checkpoint_dir(tmp: str, finals: dict[str, dict[str, Any]], save_models: dict[str, Any],
                         rows_file: str, model_file: str) -> None:
    """Write a group's final checkpoint: the members' kept results, and each member's model in a
    folder named after its trial id."""
    kept = {tid: {k: f[k] for k in (ROWS_KEY, CURVES_KEY, DATASETS_KEY) if k in f} for tid, f in finals.items()}
    Path(tmp, rows_file).write_text(json.dumps({MEMBER_RESULTS_KEY: kept}))
    for trial_id, save in save_models.items():
        Path(tmp, trial_id).mkdir()
        save(Path(tmp, trial_id, model_file))
