"""The sweep spec: the YAML file's shape, loading, and its error messages.

``load_spec`` checks, before anything starts:

1. the *shape* of the file (pydantic, ``extra="forbid"`` everywhere, so a misspelt key is an error);
2. every ``fpr_core`` value it mentions, one at a time, by building fpr_core's own config
   dataclasses (base config, each per-task override, each grid value, each search bound) and the
   task itself, so ``model.recall: nonee`` or ``grad: truncatd:4`` fails with the file and the field
   path, not half an hour later on a Ray worker.

Combinations of values (every trial's whole config) are checked when the spec is expanded
(expand.py); ``plan.py`` does both, once, for the CLI.

Precedence when resolving a trial's config: ``base`` < ``tasks[i].overrides`` < ``axes`` (grid cell)
< ``search`` (sampled value). A field may be set by at most one of overrides / axes / search.

Every error is a ``SpecError`` whose message names the file, the field path, the bad value and what
was expected.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from fpr_core.config import ConfigError
from orchestrator.sweep.metrics import DEFAULT_SCHEDULER_METRIC, DEFAULT_SEARCH_METRIC
from orchestrator.sweep.sections import (SECTIONS, SHORTHAND_SECTION, apply_overrides, base_sections,
                                         build_sections, check_dotted, excerpt, short_repr, yaml_float)

SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A sweep name, matched against the whole string (``fullmatch``: ``$`` would accept a trailing newline)."""
MAX_SPEC_BYTES = 1_000_000
"""A spec file larger than this is refused before parsing (real specs are a few KB)."""
MAX_SPEC_NODES = 100_000
"""YAML nodes a spec may expand to once its aliases (``*anchor``) are followed: a few KB of
aliases can otherwise expand to billions of values (the "billion laughs" pattern)."""


class SpecError(ValueError):
    """The sweep spec is invalid; the message is meant for the user, as is."""


class _Strict(BaseModel):
    """Unknown keys are errors and nothing is coerced: a string is never a number or a boolean
    (lax parsing would read ``log: "yes"`` as true and ``seeds: ["1"]`` as 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


Number = Annotated[float, BeforeValidator(yaml_float)]
"""A float field of the spec: strict, except for YAML 1.1's dot-less exponent strings."""


def distinct_seeds(seeds: list[int]) -> list[int]:
    """The seeds as given; a repeated seed would run the same trial twice."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}; expected distinct integers")
    return seeds


class TaskEntry(_Strict):
    """One task family of the sweep, trained at one size and evaluated at larger ones: the YAML form
    of fpr_core's TaskSpec (expand.task_spec fills in its sizes), plus per-task overrides and axes."""

    name: str = Field(description="Task registry name: prefix_sums, mazes, sudoku, chess, state_tracking.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Task parameters, e.g. {group: S5} for state_tracking.")
    train_size: Optional[int] = Field(None, gt=0, description="Training size (default: the task's).")
    ood_sizes: Optional[list[Annotated[int, Field(gt=0)]]] = Field(
        None, description="Out-of-distribution eval sizes (default: the task's ladder).")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-task config values by dotted field, e.g. {train.steps: 800, solver.eval_cap: 128}.")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Per-task values of global grid axes (same keys as the sweep's axes), replacing "
                    "the global list for this task only, e.g. fewer spectral regimes on an expensive task.")
    seeds: Optional[list[int]] = Field(
        None, min_length=1,
        description="Seeds of this task entry, replacing the sweep's seeds (e.g. more seeds for an arm whose "
                    "outcomes were bimodal, as a second entry of the same task narrowed by `axes`).")

    @field_validator("axes")
    @classmethod
    def _non_empty_task_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values; expected a non-empty list")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_task_seeds(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        return v if v is None else distinct_seeds(v)


def _section_field(name: str, cls: type) -> tuple[Any, Any]:
    if name == SHORTHAND_SECTION:
        return (Union[str, dict[str, Any]],
                Field(default_factory=dict, description=f"{cls.__name__} fields, or the shorthand 'truncated:4', 'bptt', ..."))
    return dict[str, Any], Field(default_factory=dict, description=f"{cls.__name__} fields.")


BaseSections = create_model(
    "BaseSections", __base__=_Strict,
    __doc__="Defaults for every trial, one mapping per fpr_core config section (fpr_core/config.py).",
    **{name: _section_field(name, cls) for name, cls in SECTIONS.items()})


class _Range(_Strict):
    """A [low, high] range: an inverted one (low > high) is refused, not sampled from."""

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"inverted range: low {self.low} > high {self.high}; expected low <= high")
        return self


class LogUniform(_Range):
    """Log-uniform float in [low, high] (e.g. learning rates). Needs 0 < low <= high."""
    type: Literal["loguniform"]
    low: Number = Field(gt=0, description="Smallest value, > 0 and <= high.")
    high: Number = Field(gt=0, description="Largest value, >= low.")


class Uniform(_Range):
    """Uniform float in [low, high]. Needs low <= high."""
    type: Literal["uniform"]
    low: Number = Field(description="Smallest value, <= high.")
    high: Number = Field(description="Largest value, >= low.")


class IntRange(_Range):
    """Integer in [low, high] (inclusive), optionally log-scaled. Needs low <= high, and low >= 1
    when log is true."""
    type: Literal["int"]
    low: int = Field(description="Smallest value, <= high (>= 1 when log is true).")
    high: int = Field(description="Largest value, >= low.")
    log: bool = False

    @model_validator(mode="after")
    def _log_positive(self):
        if self.log and self.low < 1:
            raise ValueError(f"log-scaled int range needs low >= 1 (got low {self.low})")
        return self


class Categorical(_Strict):
    """One of a list of values."""
    type: Literal["categorical"]
    values: list[Any] = Field(min_length=1)


Distribution = Annotated[Union[LogUniform, Uniform, IntRange, Categorical], Field(discriminator="type")]


class SearchSpec(_Strict):
    """Optuna (TPE) search over dotted config fields, run separately inside every grid cell."""

    space: dict[str, Distribution] = Field(min_length=1, description="Dotted field -> distribution.")
    num_samples: int = Field(gt=0, description="Sampled trials per grid cell (x task x seed).")
    metric: str = Field(DEFAULT_SEARCH_METRIC, description="Final trial metric Optuna optimises, e.g. acc/id, acc/ood_64.")
    mode: Literal["max", "min"] = "max"


class SchedulerSpec(_Strict):
    """Early stopping of weak trials (ASHA) on a training metric reported every log step."""

    type: Literal["none", "asha"] = "none"
    metric: str = Field(DEFAULT_SCHEDULER_METRIC, description="Metric reported during training, e.g. train/loss.")
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(50, gt=0, description="Training steps before a trial may be stopped.")
    max_t: Optional[int] = Field(None, gt=0, description="Max training steps (default: train.steps).")
    reduction_factor: Number = Field(3.0, gt=1)


class Resources(_Strict):
    """Ray resources per trial (fractions allowed, e.g. gpu: 0.5 shares a GPU between two trials)."""

    cpu: Number = Field(1.0, gt=0)
    gpu: Number = Field(0.0, ge=0)


class ReportSpec(_Strict):
    """How ``fpr-sweep report`` judges the sweep (not part of the spec hash: it decides no trial)."""

    min_id_acc: float = Field(
        0.95, gt=0, le=1,
        description="Competence gate: a trial counts as learned, and enters the claims, when its "
                    "in-distribution exact accuracy is at least this.")


class SweepSpec(_Strict):
    """A benchmark sweep: trials = grid cells x tasks x seeds (x search samples)."""

    name: str = Field(description="Sweep name: a slug (letters, digits, - and _); results go to results_dir/name.")
    description: str = ""
    tasks: list[TaskEntry] = Field(min_length=1)
    axes: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="The grid: dotted field -> list of values, e.g. {model.recall: [none, standard]}.")
    base: BaseSections = Field(default_factory=BaseSections)
    search: Optional[SearchSpec] = None
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    seeds_per_trial: int = Field(
        1, ge=1, le=64,
        description="Seeds of one arm trained together as one batched model in one trial (K members with their "
                    "weights stacked; docs/speed.md, 'Seeds per trial'). Each seed keeps its own trial id, rows, "
                    "MLflow run and kept model; an arm that cannot be stacked (e.g. model.spectral) runs one seed "
                    "per trial. Grid sweeps only.")
    max_failures: int = Field(1, ge=0, description="Retries of a trial that raises, before it counts as failed.")
    max_concurrent: Optional[int] = Field(None, gt=0, description="Max trials running at once (default: as resources allow).")
    max_trial_minutes: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="A trial (one attempt) still training after this many minutes is ended as `timed_out`, "
                    "with its rows and its MLflow run ended; the sweep goes on (default: no limit).")
    max_trials: Optional[int] = Field(None, gt=0, description="Largest number of trials this spec may run; "
                                      "`run` refuses more. Sweeps above 10,000 trials need it (or --yes).")
    tracking_uri: Optional[str] = Field(None, description="MLflow URI (default: sqlite under the sweep's results).")
    keep_models: Literal["final", "none"] = Field(
        "final", description="final: every trial that finishes ok keeps its final weights (and EMA weights) with its "
                             "resolved config in results/<name>/models/<trial_id>.pt and as an MLflow artifact "
                             "(what `fpr-sweep eval` re-evaluates); none: keep nothing (huge sweeps).")
    system_metrics: bool = Field(
        False, description="Log the driver host's CPU, memory, disk and network use to the sweep's MLflow "
                           "run every 10 s (MLflow system metrics; needs psutil).")
    results_dir: str = Field("results", description="Where results/<name>/ goes (relative to the working directory).")
    report: ReportSpec = Field(default_factory=ReportSpec, description="How the report judges the sweep's claims.")
    tuning_seeds: list[int] = Field(
        default_factory=list, description="Seeds this spec's recipes were tuned on (a profile spec such as "
                                          "sweeps/cpu_profiles.yaml names them); a study confirming the recipes "
                                          "must use other seeds.")
    confirms: Optional[str] = Field(
        None, description="Marks this spec as a confirmatory study of the recipes in another spec (a path relative "
                          "to this file): validate and run warn when a trial seed is one of that spec's tuning_seeds.")
    require_clean: bool = Field(
        False, description="Refuse to start (exit 2) unless the code is a clean git commit, so every row's "
                            "git_commit names code that exists (studies whose results are committed set it).")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.fullmatch(v):
            raise ValueError("expected a slug of letters, digits, '-' and '_' (no slashes, dots or '..'), "
                             "at most 64 characters")
        return v

    @field_validator("axes")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values; expected a non-empty list")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return distinct_seeds(v)

    @model_validator(mode="after")
    def _members_need_a_grid(self) -> "SweepSpec":
        if self.seeds_per_trial > 1 and self.search is not None:
            raise ValueError(f"seeds_per_trial: got {self.seeds_per_trial} with a search section; expected 1 "
                             "(a search tunes each seed as its own study)")
        return self

    def science(self) -> dict[str, Any]:
        """The part of the spec that decides which trials exist (hashed into spec_hash)."""
        science = self.model_dump(include={"tasks", "axes", "base", "search", "scheduler", "seeds"})
        for task in science["tasks"]:
            if task["seeds"] is None:  # per-task seeds came later: a spec without them keeps its hash
                del task["seeds"]
        return science

    def spec_hash(self) -> str:
        """Stable short hash of the science part (name, description and runtime knobs excluded)."""
        return stable_hash(self.science(), 12)


def stable_hash(obj: Any, n: int = 10) -> str:
    """Short sha256 of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# ---------------------------------------------------------------- loading

def load_spec(path: str | Path) -> SweepSpec:
    """Read and fully validate a sweep spec; raise SpecError with a user-facing message."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of sweep keys (name, tasks, axes, ...), "
                        f"got {type(data).__name__}.")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(path, e)) from None
    check_fpr_core(spec, path)
    return spec


def read_yaml(path: Path) -> Any:
    """Parse a spec file, refusing oversized files and alias bombs before anything walks them."""
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {path.stat().st_size} bytes; a sweep spec may hold at most "
                            f"{MAX_SPEC_BYTES} bytes.")
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the sweep spec ({e.strerror or e}).") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        expanded = _expanded_nodes(node, {})
        if expanded > MAX_SPEC_NODES:
            raise SpecError(f"{path}: the YAML aliases (*anchor) expand to more than {MAX_SPEC_NODES} values "
                            f"({expanded}); write the values out or use fewer nested aliases.")
        return yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {excerpt(str(e), 400)}") from None


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias followed (aliases share node objects in
    the composed graph, so memoising by identity keeps this linear in the file's size)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = MAX_SPEC_NODES + 1  # a node reached again while being sized: a recursive alias
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_nodes(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_nodes(k, sizes) + _expanded_nodes(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[key] = min(total, MAX_SPEC_NODES + 1)
    return sizes[key]


def format_validation_error(path: Path, err: ValidationError) -> str:
    """One line per problem: file, field path, what was wrong, the bad value."""
    lines = []
    for item in err.errors(include_url=False):
        loc = _loc_path(item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling against `fpr-sweep schema`)"
        got = item.get("input")
        got_text = "" if item["type"] in ("missing", "extra_forbidden") else f" (got {short_repr(got)})"
        lines.append(f"{loc}: {msg}{got_text}")
    return f"{path}: invalid sweep spec:\n  " + "\n  ".join(lines)


def _loc_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("loguniform", "uniform", "int", "categorical") and out.count(".") >= 2:
            continue  # discriminated-union tag pydantic inserts into the path
        elif "." in str(part):  # a dotted config field used as a key: axes['model.recall']
            out += f"[{part!r}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _fail(path: Path, where: str, message: str) -> SpecError:
    return SpecError(f"{path}: {where}: {message}")


class _Problems:
    """Every mistake of a spec, collected so that one ``validate`` reports them all."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines = path, []

    def check(self, fn: Any, *args: Any) -> bool:
        """Run one check; a SpecError becomes a line. True when it passed."""
        try:
            fn(*args)
            return True
        except SpecError as e:
            self.lines.append(str(e).removeprefix(f"{self.path}: "))
            return False

    def raise_any(self) -> None:
        if len(self.lines) == 1:
            raise SpecError(f"{self.path}: {self.lines[0]}")
        if self.lines:
            raise SpecError(f"{self.path}: invalid sweep spec ({len(self.lines)} problems):\n  "
                            + "\n  ".join(self.lines))


def check_fpr_core(spec: SweepSpec, path: Path) -> None:
    """Validate every fpr_core value the spec mentions, one by one, by building fpr_core's own
    objects (combinations of values are checked when the spec is expanded, in expand.py). Every
    mistake is reported, in one SpecError."""
    problems = _Problems(path)
    base: Optional[dict] = None
    try:
        base = base_sections(spec.base)
        build_sections(base)
    except (ConfigError, TypeError, ValueError) as e:
        problems.lines.append(f"base: {e}")
        base = None  # values are checked against a base that builds; with a broken one they wait
    _check_tasks(spec, path, base, problems)
    claimed: dict[str, str] = {}
    for key, values in spec.axes.items():
        where = f"axes[{key!r}]"
        claimed[key] = where
        if problems.check(_check_key, path, where, key):
            for i, value in enumerate(values):
                problems.check(_check_value, path, f"{where}[{i}]", base, key, value)
    if spec.search is not None:
        for key, dist in spec.search.space.items():
            where = f"search.space[{key!r}]"
            if not problems.check(_check_key, path, where, key):
                continue
            if key in claimed:
                problems.lines.append(f"{where}: {key} is also set by {claimed[key]}; a field may be a grid "
                                      "axis or a search dimension, not both")
            claimed[key] = where
            for label, value in dist_probes(dist):
                problems.check(_check_value, path, f"{where}.{label}", base, key, value)
    for i, task in enumerate(spec.tasks):
        for key in task.overrides:
            if key in claimed:
                problems.lines.append(f"tasks[{i}].overrides[{key!r}]: {key} is also set by {claimed[key]}; "
                                      "set it in one place only")
    problems.raise_any()


def _check_key(path: Path, where: str, key: str) -> None:
    try:
        check_dotted(key)
    except ValueError as e:
        raise _fail(path, where, str(e)) from None


def _check_value(path: Path, where: str, base: Optional[dict], key: str, value: Any) -> None:
    if base is None:  # the base itself is broken (reported): nothing to check the value against
        return
    try:
        build_sections(apply_overrides(base, {key: value}))
    except (ConfigError, TypeError, ValueError) as e:
        raise _fail(path, where, f"bad value {short_repr(value)} for {key}: {e}") from None


def dist_probes(dist: Any) -> list[tuple[str, Any]]:
    if isinstance(dist, Categorical):
        return [(f"values[{i}]", v) for i, v in enumerate(dist.values)]
    return [("low", dist.low), ("high", dist.high)]


def _check_tasks(spec: SweepSpec, path: Path, base: Optional[dict], problems: "_Problems") -> None:
    from fpr_core.tasks import TASK_NAMES, get_task

    for i, entry in enumerate(spec.tasks):
        where = f"tasks[{i}]"
        if entry.name not in TASK_NAMES:
            problems.lines.append(f"{where}.name: unknown task {entry.name!r}; expected one of {list(TASK_NAMES)}")
        else:
            try:
                get_task(entry.name, **entry.params)
            except (TypeError, ValueError) as e:
                problems.lines.append(f"{where}.params: {short_repr(entry.params)} rejected by task "
                                      f"{entry.name}: {e}")
        for key, value in entry.overrides.items():
            if problems.check(_check_key, path, f"{where}.overrides[{key!r}]", key):
                problems.check(_check_value, path, f"{where}.overrides[{key!r}]", base, key, value)
        for key, values in entry.axes.items():
            if key not in spec.axes:
                problems.lines.append(f"{where}.axes[{key!r}]: {key} is not a grid axis of the sweep; "
                                      f"expected one of {list(spec.axes)}")
                continue
            for j, value in enumerate(values):
                problems.check(_check_value, path, f"{where}.axes[{key!r}][{j}]", base, key, value)
    for i, entry in enumerate(spec.tasks):
        for j, prior in enumerate(spec.tasks[:i]):
            if prior == entry:
                problems.lines.append(f"tasks[{i}]: repeats tasks[{j}] ({entry.name}); expected distinct task entries")
                break

