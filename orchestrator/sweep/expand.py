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

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from fpr_core.config import CAP_EXPONENTS, ConfigError, TaskSpec, identity_sections, resolve_cap_law, to_dict
from fpr_core.split_names import eval_split_names
from orchestrator.sweep.metrics import CELL_KEY, SEARCH_KEY
from orchestrator.sweep.sections import (SECTIONS, apply_overrides, base_sections, build_section, check_dotted,
                                         resolved_sections)
from orchestrator.sweep.spec import SpecError, SweepSpec, TaskEntry, dist_probes, stable_hash

SMOKE_BUDGET: dict[str, Any] = {"train.steps": 30, "train.n_train": 256, "train.warmup": 5,
                                "train.log_every": 10, "train.checkpoint_every": 15,
                                "train.select_every": 15, "train.n_select": 32,
                                "eval.n_eval": 32, "eval.diag_n": 8,
                                "solver.train_cap": 8, "solver.eval_cap": 12}
"""Upper bounds applied by ``--smoke`` (each value is min(spec value, bound)). The caps are bounded
because a 30-step model never settles: every instance runs to the cap, under every halting protocol
(``long`` is x16), and at a study's caps that was most of a smoke run's compute."""
SMOKE_OOD_SIZES = 2
"""``--smoke`` keeps this many OOD sizes per task (the smallest ones)."""
SMOKE_CAP_LAW = "linear"
"""``--smoke`` grows OOD caps at most this fast with size (a slower law stays). The bounded
``solver.eval_cap`` alone did not bound the OOD caps: the mazes' quadratic law made the smoke cap
at 33x33 161 steps, 13x the training size's, and those never-settling evaluations were three
quarters of a maze smoke trial."""


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
        return eval_split_names(self.ood_sizes)

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


def trial_of_config(config: dict[str, Any]) -> Trial:
    """The trial a Tune config describes (what the trainable runs, what the driver books)."""
    return resolve(Cell.from_payload(config[CELL_KEY]), config.get(SEARCH_KEY))


def variant_label(axis_values: dict[str, Any]) -> str:
    """'recall=none,outer_norm=rms': field names, dotted only where two sections share a name."""
    if not axis_values:
        return "base"
    short = {k: k.split(".", 1)[-1] for k in axis_values}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    return ",".join(f"{k if short[k] in clash else short[k]}={_label(v)}" for k, v in axis_values.items())


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def task_spec(entry: TaskEntry, smoke: bool = False) -> TaskSpec:
    """A spec's task entry as fpr_core's TaskSpec, its sizes filled in from the task's defaults
    (``--smoke`` keeps the SMOKE_OOD_SIZES smallest OOD sizes)."""
    from fpr_core.tasks import task_class

    tcls = task_class(entry.name)
    ood = tuple(entry.ood_sizes if entry.ood_sizes is not None else tcls.default_ood_sizes)
    return TaskSpec(entry.name, dict(entry.params), entry.train_size or tcls.default_train_size,
                    tuple(sorted(ood)[:SMOKE_OOD_SIZES]) if smoke else ood)


def _smoke_bounded(section: str, built: Any, task_cap_law: str) -> dict[str, Any]:
    """The values of one resolved section under the ``--smoke`` budget: min(spec value, bound) for
    its SMOKE_BUDGET fields, and a cap law no faster than SMOKE_CAP_LAW (``task_cap_law``: the
    task's own, which 'task' means)."""
    values = dataclasses.asdict(built)
    if section == "solver" and CAP_EXPONENTS[resolve_cap_law(built, task_cap_law)] > CAP_EXPONENTS[SMOKE_CAP_LAW]:
        values["eval_cap_law"] = SMOKE_CAP_LAW
    for key, bound in SMOKE_BUDGET.items():
        sec, fld = check_dotted(key)
        if sec == section:
            current = values.get(fld)
            values[fld] = bound if current is None else min(current, bound)
    return values


def _canonical(obj: Any) -> str:
    """The JSON ``stable_hash`` hashes (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


@dataclass(frozen=True)
class SectionPart:
    """One config section resolved for one combination of the axis values that address it."""

    values: dict[str, Any]
    """Every field of the section (shared, read-only, by every cell using this combination)."""
    text: str
    """Its canonical JSON, the fragment of the trial hash's input that this section contributes."""
    label: dict[str, Any]
    """The axis values that produced it, e.g. {'model.dim': 32, 'model.heads': 4}."""


class TaskGrid:
    """The cells of one task entry: its grid (global axes, narrowed by the task's own) x seeds.

    fpr_core builds each config section on its own (``spec.build_section``), so a cell's config is
    the product of per-section configs and only axes addressing the same section can interact (e.g.
    ``model.dim`` and ``model.heads``). Each distinct combination of one section's axis values is
    built and checked once; a cell is assembled from these parts, and its id hashes the same JSON
    as ``trial_hash``, concatenated from the parts' canonical fragments.
    """

    def __init__(self, spec: SweepSpec, index: int, smoke: bool, path: Optional[Path]) -> None:
        from fpr_core.tasks import get_task

        entry = spec.tasks[index]
        self.index, self.task_spec = index, task_spec(entry, smoke)
        self._task_obj = get_task(entry.name, **entry.params)
        seeds = list(entry.seeds or spec.seeds)
        self.seeds = seeds[:1] if smoke else seeds
        self.keys = list(spec.axes)
        self.values = [entry.axes.get(k, spec.axes[k]) for k in self.keys]
        self._smoke, self._where = smoke, f"{path}: " if path else ""
        task_base = apply_overrides(base_sections(spec.base), entry.overrides)
        self.parts = {name: self._section_parts(name, task_base) for name in SECTIONS}
        t = self.task_spec
        self._prefix = (f'{{"ood_sizes":{_canonical(list(t.ood_sizes))},"params":{_canonical(t.params)},'
                        '"sections":{')
        self._suffix = f',"task":{_canonical(t.name)},"train_size":{_canonical(t.train_size)}}}'

    @property
    def task(self) -> str:
        return self.task_spec.name

    @property
    def train_size(self) -> int:
        return self.task_spec.train_size

    @property
    def ood_sizes(self) -> tuple[int, ...]:
        return self.task_spec.ood_sizes

    def axes_of(self, section: str) -> list[int]:
        """Positions (in the grid's axis order) of the axes that address ``section``."""
        return [i for i, k in enumerate(self.keys) if check_dotted(k)[0] == section]

    def _section_parts(self, section: str, task_base: dict[str, dict[str, Any]]) -> dict[tuple, SectionPart]:
        """combination of value positions -> resolved part; rejects bad and colliding combinations."""
        axes = self.axes_of(section)
        parts: dict[tuple, SectionPart] = {}
        seen: dict[str, tuple] = {}
        for combo in itertools.product(*(range(len(self.values[i])) for i in axes)):
            label = {self.keys[i]: self.values[i][j] for i, j in zip(axes, combo)}
            raw = apply_overrides(task_base, label)[section]
            try:
                built = build_section(section, raw)
                if self._smoke:
                    built = build_section(section, _smoke_bounded(section, built, self._task_obj.cap_law))
                values = dataclasses.asdict(built)
                if section == "model":  # absolute positions and a board mask need a task with a board
                    from fpr_core.experiment import task_model_inputs

                    task_model_inputs(self._task_obj, built)
            except (ConfigError, TypeError, ValueError) as e:
                raise SpecError(f"{self._where}tasks[{self.index}] ({self.task}) with grid cell "
                                f"{variant_label(label)}: {e}") from None
            text = _canonical(identity_sections({section: values})[section])
            if text in seen:
                raise SpecError(f"{self._where}axes: grid cells {variant_label(parts[seen[text]].label)!r} and "
                                f"{variant_label(label)!r} of task {self.task} resolve to the same config (an "
                                "axis repeats a value or sets a default twice); expected distinct values")
            seen[text] = combo
            parts[combo] = SectionPart(values, text, label)
        return parts

    def count(self) -> int:
        """Cells of this task: the product of its axis lengths x seeds."""
        return math.prod(len(v) for v in self.values) * len(self.seeds)

    def splits(self) -> list[str]:
        return eval_split_names(self.ood_sizes)

    def cells(self, start: int = 0) -> Iterator[Cell]:
        """Cells in order (grid cell, then seed), skipping the first ``start``."""
        section_axes = {name: self.axes_of(name) for name in SECTIONS}
        ordered = sorted(SECTIONS)  # the hash's JSON lists sections by name
        n_seeds = len(self.seeds)
        combos = itertools.product(*(range(len(v)) for v in self.values))
        for combo in itertools.islice(combos, start // n_seeds, None):
            parts = {name: self.parts[name][tuple(combo[i] for i in section_axes[name])] for name in SECTIONS}
            sections = {name: parts[name].values for name in SECTIONS}
            body = self._prefix + ",".join(f'"{name}":{parts[name].text}' for name in ordered) + '},"seed":'
            axis_values = {k: self.values[i][j] for i, (k, j) in enumerate(zip(self.keys, combo))}
            variant = variant_label(axis_values)
            first = start % n_seeds if start else 0
            start = 0
            for seed in self.seeds[first:]:
                cid = hashlib.sha256(f"{body}{_canonical(seed)}{self._suffix}".encode()).hexdigest()[:10]
                yield Cell(cid, self.task_spec, variant, seed, sections, axis_values)


class SweepGrid:
    """Every cell of a sweep, counted in closed form, checked per section, walked lazily.

    Building it validates every combination (SpecError names the task and grid cell); ``cells()``
    then yields Cell objects one at a time in the deterministic order (task, grid cell, seed), so a
    10^6-cell grid is never held in memory.
    """

    def __init__(self, spec: SweepSpec, smoke: bool = False, path: Optional[Path] = None) -> None:
        self.spec = spec
        self.smoke = smoke
        self.tasks = [TaskGrid(spec, i, smoke, path) for i in range(len(spec.tasks))]
        self._check_tasks_distinct(path)

    def __len__(self) -> int:
        return sum(t.count() for t in self.tasks)

    def trial_count(self) -> int:
        """Trials the sweep runs: cells x search samples."""
        return len(self) * (self.spec.search.num_samples if self.spec.search else 1)

    def cells(self, start: int = 0) -> Iterator[Cell]:
        """Cells from position ``start`` on, without building the ones before it."""
        for t in self.tasks:
            if start >= t.count():
                start -= t.count()
                continue
            yield from t.cells(start)
            start = 0

    def max_train_steps(self) -> int:
        """The longest training budget of any trial (ASHA's default max_t)."""
        return max(int(p.values["steps"]) for t in self.tasks for p in t.parts["train"].values())

    def train_steps(self) -> int:
        """Training steps of every trial together (for the size guard's compute estimate)."""
        return self._train_total(lambda train: int(train["steps"]))

    def train_examples(self) -> int:
        """Training examples drawn by every trial together: steps x batch size, summed."""
        return self._train_total(lambda train: int(train["steps"]) * int(train["batch_size"]))

    def _train_total(self, per_trial) -> int:
        samples = self.spec.search.num_samples if self.spec.search else 1
        total = 0
        for t in self.tasks:
            parts = t.parts["train"].values()  # each train part is used by count/len(parts) cells
            total += sum(per_trial(p.values) for p in parts) * (t.count() // len(parts)) * samples
        return total

    def _check_tasks_distinct(self, path: Optional[Path]) -> None:
        """Two task entries with the same identity collide when every section has a part in common."""
        for j, b in enumerate(self.tasks):
            for a in self.tasks[:j]:
                same_task = a.task_spec == b.task_spec
                if same_task and set(a.seeds) & set(b.seeds) and all(
                        {p.text for p in a.parts[n].values()} & {p.text for p in b.parts[n].values()}
                        for n in SECTIONS):
                    where = f"{path}: " if path else ""
                    raise SpecError(f"{where}tasks[{b.index}] ({b.task}) repeats trials of tasks[{a.index}]: "
                                    "both resolve some grid cells to the same config; expected distinct tasks")


def expand(spec: SweepSpec, smoke: bool = False, path: Optional[Path] = None) -> list[Cell]:
    """Every cell of the sweep as a list, in a deterministic order (task, grid cell, seed): for
    small sweeps and tests; the driver and the CLI walk ``SweepGrid`` lazily."""
    return list(SweepGrid(spec, smoke, path).cells())


def trial_count(spec: SweepSpec, cells: list[Cell]) -> int:
    """Trials the sweep runs: cells x search samples."""
    return len(cells) * (spec.search.num_samples if spec.search else 1)


def check_learnable_inputs(spec: SweepSpec, grid: SweepGrid, path: Path) -> None:
    """Refuse every arm whose input embedding would get no gradient under its estimator
    (``fpr_core.gradients.input_gradient_refusal``: e.g. no recall with truncated gradients).

    ``grid`` is the expanded SweepGrid: each task's model and grad parts are checked pairwise (every
    pair occurs in some cell of the product), and with each value a search may sample for them."""
    from fpr_core.gradients import input_gradient_refusal

    probes: list[dict[str, Any]] = [{}]
    for key, dist in (spec.search.space.items() if spec.search else ()):
        if key.split(".", 1)[0] in ("model", "grad"):
            probes += [{key: value} for _, value in dist_probes(dist)]
    for t in grid.tasks:
        for model_part in t.parts["model"].values():
            for grad_part in t.parts["grad"].values():
                for probe in probes:
                    sections = apply_overrides({"model": model_part.values, "grad": grad_part.values}, probe)
                    why = input_gradient_refusal(build_section("model", sections["model"]),
                                                 build_section("grad", sections["grad"]))
                    if why is not None:
                        arm = variant_label({**model_part.label, **grad_part.label, **probe})
                        raise SpecError(f"{path}: tasks[{t.index}] ({t.task}): "
                                        f"arm {arm!r} (recall none) is refused: {why}")
