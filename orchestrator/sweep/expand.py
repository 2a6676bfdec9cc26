"""From a validated spec to the list of trials: grid cells x tasks x seeds (x search samples).

A trial's id is a short hash of its *resolved* config (task, sizes, every fpr_core field with its
default filled in, seed), so the same trial is recognised across re-runs and spec edits: a trial
already finished under ``results/<sweep>/trials/`` is never trained again.

How the grid and the Optuna search combine (Ray Tune cannot mix ``tune.grid_search`` with
``OptunaSearch``): the grid, tasks and seeds are expanded here into *cells*; without a ``search``
section every cell is one trial and one Tuner runs the explicit list. With a ``search`` section each
cell gets its own Tuner with its own Optuna (TPE) study of ``num_samples`` trials over the search
space, so every grid cell is tuned on equal terms and no cell's results steer another cell's search.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fpr_core.config import ConfigError, TaskSpec, identity_sections, to_dict
from orchestrator.sweep.sections import apply_overrides, base_sections, check_dotted, resolved_sections
from orchestrator.sweep.spec import SpecError, SweepSpec, TaskEntry, stable_hash

SMOKE_BUDGET: dict[str, Any] = {"train.steps": 30, "train.n_train": 256, "train.warmup": 5,
                                "train.log_every": 10, "train.checkpoint_every": 15,
                                "eval.n_eval": 32, "eval.diag_n": 8}
"""Upper bounds applied by ``--smoke`` (each value is min(spec value, bound))."""
SMOKE_OOD_SIZES = 2
"""``--smoke`` keeps this many OOD sizes per task (the smallest ones)."""


@dataclass(frozen=True)
class Cell:
    """One grid cell x task x seed: a trial (grid sweeps) or the base of one Optuna study."""

    cell_id: str
    """Hash of the resolved config before search values; equals the trial id without a search."""
    task_spec: TaskSpec
    """The task's identity: name, params, train_size and ood_sizes, every one filled in."""
    variant: str
    """Human label of the grid cell, e.g. 'recall=none,outer_norm=rms' ('base' without axes)."""
    seed: int
    sections: dict[str, dict[str, Any]]
    """Resolved fpr_core sections: model, solver, grad, train, eval (every field present)."""
    axis_values: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.task_spec.name

    @property
    def task_params(self) -> dict[str, Any]:
        return self.task_spec.params

    @property
    def train_size(self) -> int:
        return self.task_spec.train_size

    @property
    def ood_sizes(self) -> tuple[int, ...]:
        return self.task_spec.ood_sizes

    def splits(self) -> list[str]:
        """Eval split names this trial reports, in order: 'id', then 'ood_<size>'."""
        return ["id"] + [f"ood_{s}" for s in self.ood_sizes]

    def payload(self) -> dict[str, Any]:
        """JSON-able form carried inside the Tune config (``Cell.from_payload`` inverts it)."""
        return {"cell_id": self.cell_id, "task": self.task, "task_params": self.task_params,
                "train_size": self.train_size, "ood_sizes": list(self.ood_sizes),
                "variant": self.variant, "seed": self.seed, "sections": self.sections,
                "axis_values": self.axis_values}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> "Cell":
        task = TaskSpec(data["task"], dict(data["task_params"]), int(data["train_size"]), tuple(data["ood_sizes"]))
        return cls(data["cell_id"], task, data["variant"], int(data["seed"]), data["sections"],
                   dict(data.get("axis_values", {})))


@dataclass(frozen=True)
class Trial:
    """A fully resolved trial: a cell plus its search values (if any)."""

    trial_id: str
    cell: Cell
    sections: dict[str, dict[str, Any]]
    search_values: dict[str, Any]

    def experiment_config(self) -> dict[str, Any]:
        """The dict ``fpr_core.experiment.ExperimentConfig.from_dict`` takes."""
        c = self.cell
        return {"task": {**to_dict(c.task_spec), "ood_sizes": list(c.ood_sizes)},
                **{name: dict(values) for name, values in self.sections.items()}, "seed": c.seed}


def trial_hash(task: str, params: dict, train_size: int, ood_sizes, sections: dict, seed: int) -> str:
    """The stable trial id: 10 hex chars of sha256 over the resolved config (fields added after ids
    were pinned count only when set away from their default: ``identity_sections``)."""
    return stable_hash({"task": task, "params": params, "train_size": train_size,
                        "ood_sizes": list(ood_sizes), "sections": identity_sections(sections),
                        "seed": seed}, 10)


def task_trial_hash(task: TaskSpec, sections: dict, seed: int) -> str:
    """``trial_hash`` of a resolved task."""
    return trial_hash(task.name, task.params, task.train_size, task.ood_sizes, sections, seed)


def resolve(cell: Cell, search_values: Optional[dict[str, Any]] = None) -> Trial:
    """Apply sampled search values to a cell; the result's id hashes the final config."""
    search_values = dict(search_values or {})
    if not search_values:
        return Trial(cell.cell_id, cell, cell.sections, {})
    sections = resolved_sections(apply_overrides(cell.sections, search_values))
    tid = task_trial_hash(cell.task_spec, sections, cell.seed)
    return Trial(tid, cell, sections, search_values)


def variant_label(axis_values: dict[str, Any]) -> str:
    """'recall=none,outer_norm=rms': field names, dotted only where two sections share a name."""
    if not axis_values:
        return "base"
    short = {k: k.split(".", 1)[-1] for k in axis_values}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    return ",".join(f"{k if short[k] in clash else short[k]}={_label(v)}" for k, v in axis_values.items())


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def _smoke_overrides(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, bound in SMOKE_BUDGET.items():
        section, fld = check_dotted(key)
        current = sections[section].get(fld)
        out[key] = bound if current is None else min(current, bound)
    return out


def task_spec(entry: TaskEntry, smoke: bool = False) -> TaskSpec:
    """A spec's task entry as fpr_core's TaskSpec, its sizes filled in from the task's defaults
    (``--smoke`` keeps the SMOKE_OOD_SIZES smallest OOD sizes)."""
    from fpr_core.tasks import task_class

    tcls = task_class(entry.name)
    ood = tuple(entry.ood_sizes if entry.ood_sizes is not None else tcls.default_ood_sizes)
    return TaskSpec(entry.name, dict(entry.params), entry.train_size or tcls.default_train_size,
                    tuple(sorted(ood)[:SMOKE_OOD_SIZES]) if smoke else ood)


def expand(spec: SweepSpec, smoke: bool = False, path: Optional[Path] = None) -> list[Cell]:
    """Every cell of the sweep, in a deterministic order (task, grid cell, seed).

    Each cell's config is built by fpr_core's dataclasses, so a bad combination of values (e.g.
    dim and heads set on different axes) raises SpecError, as do two cells with the same config.
    """
    from fpr_core.experiment import board_coordinates
    from fpr_core.tasks import get_task

    base = base_sections(spec.base)
    keys = list(spec.axes)
    seeds = spec.seeds[:1] if smoke else spec.seeds
    cells: list[Cell] = []
    for entry in spec.tasks:
        task = task_spec(entry, smoke)
        task_base = apply_overrides(base, entry.overrides)
        task_axes = {k: entry.axes.get(k, spec.axes[k]) for k in keys}
        for combo in itertools.product(*(task_axes[k] for k in keys)):
            axis_values = dict(zip(keys, combo))
            raw = apply_overrides(task_base, axis_values)
            if smoke:
                raw = apply_overrides(raw, _smoke_overrides(resolved_sections(raw)))
            try:
                sections = resolved_sections(raw)
                board_coordinates(get_task(entry.name, **entry.params), sections["model"]["positions"])
            except (ConfigError, TypeError, ValueError) as e:
                where = f"{path}: " if path else ""
                raise SpecError(f"{where}tasks[{spec.tasks.index(entry)}] ({entry.name}) with grid cell "
                                f"{variant_label(axis_values)}: {e}") from None
            for seed in seeds:
                cells.append(Cell(task_trial_hash(task, sections, seed), task, variant_label(axis_values),
                                  seed, sections, axis_values))
    _check_unique(cells, path)
    return cells


def _check_unique(cells: list[Cell], path: Optional[Path]) -> None:
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.cell_id in seen:
            where = f"{path}: " if path else ""
            raise SpecError(f"{where}axes: grid cells {seen[c.cell_id].variant!r} and {c.variant!r} of task "
                            f"{c.task} resolve to the same config (an axis repeats a value or sets a default "
                            "twice); expected distinct values")
        seen[c.cell_id] = c


def trial_count(spec: SweepSpec, cells: list[Cell]) -> int:
    """Trials the sweep runs: cells x search samples."""
    return len(cells) * (spec.search.num_samples if spec.search else 1)
