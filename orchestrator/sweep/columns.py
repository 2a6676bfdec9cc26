"""Every column of the results table, declared once: its name, its type, what fills it and where it
is logged. The Arrow schema (store/schema.py), the row builder (store/rows.py), the MLflow metric
keys (sweep/metrics.py) and the report's per-trial summary (report/frame.py) all read this table,
so a new metric is one line here (plus fpr_core computing it under the same key).

Types are named here, not given as Arrow types: this room imports no pyarrow (schema.py maps each
``kind`` to its Arrow type). The config columns (``cfg.<section>.<field>``) are not listed: they
follow fpr_core's config dataclasses (``config_columns``).
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from orchestrator.sweep.sections import SECTIONS, field_names, field_types

Kind = Literal["str", "int", "float", "bool", "time", "floats32", "floats", "ints", "bools", "strs"]
"""A column's type: a scalar (str, int, float = float64, bool, time = UTC timestamp) or a list of
them (floats32 = list of float32, floats = list of float64, ints, bools, strs)."""

Source = Literal["trial", "split", "metric", "derived", "instance", "training", "worker"]
"""What fills a column: ``trial`` provenance shared by a trial's rows (``rows.base_row``); ``split``
which split and protocol a row is, and its status; ``metric`` a key of fpr_core's
``EvalResult.metrics`` (``evaluate.METRIC_KEYS``) copied as is; ``derived`` computed from metrics;
``instance`` an array attribute of ``EvalResult`` of the same name; ``training`` the trial's
training outcome; ``worker`` where the trial ran."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    source: Source
    doc: str = ""
    required: bool = False
    """Never null (a non-nullable Arrow field)."""
    mlflow: Optional[str] = None
    """Per-split metric: logged to MLflow as ``<mlflow>/<split>`` (``acc/ood_64``)."""
    by_size: bool = False
    """Also logged as the series ``by_size/<name>`` with step = the split's size."""
    final: bool = False
    """Carried per split in a trial's final Tune report (what Optuna may optimise)."""
    summary: bool = False
    """Logged once per trial to MLflow, under its own name."""
    trial_mean: bool = False
    """Averaged over a trial's eval splits in the report's per-trial summary (a stability axis)."""
    legacy: bool = False
    """Only older tables fill it; nothing writes it now."""


def _metric(name: str, kind: Kind = "float", doc: str = "", **flags: Any) -> Column:
    """A per-split metric column, logged to MLflow under its own name unless ``mlflow`` says."""
    flags.setdefault("mlflow", name)
    return Column(name, kind, "metric", doc, **flags)


SPLIT = "split"
SIZE = "size"
HALTING = "halting"
STATUS = "status"
EXACT_ACC = "exact_acc"
ITERS_MEAN = "iters_mean"
SPECTRAL_RADIUS = "spectral_radius"
CAPPED_SHARE = "capped_share"
CAP_BOUND = "cap_bound"

COLUMNS: tuple[Column, ...] = (
    Column("sweep", "str", "trial", required=True),
    Column("trial_id", "str", "trial", required=True),
    Column("spec_hash", "str", "trial"),
    Column("variant", "str", "trial", "human label of the grid cell, e.g. 'recall=none,outer_norm=rms'"),
    Column("task", "str", "trial", required=True),
    Column("task_params", "str", "trial", "JSON of task params, e.g. {\"group\": \"S5\"}"),
    Column(SPLIT, "str", "split", "'id' or 'ood_<size>' (fpr_core.tasks.splits.split_name)", required=True),
    Column(HALTING, "str", "split", "halting protocol of the row: trained, paper, long, ... (null = trained)"),
    Column(SIZE, "int", "split"),
    Column("train_size", "int", "trial"),
    _metric("n", "int", mlflow=None),
    _metric(EXACT_ACC, doc="verifier-based, per instance", mlflow="acc", by_size=True, final=True),
    _metric("token_acc", doc="masked positions", by_size=True),
    _metric(ITERS_MEAN, by_size=True, final=True, trial_mean=True),
    _metric("iters_p50"),
    _metric("iters_p95", by_size=True),
    _metric("eval_cap", "int", mlflow=None),
    _metric("reachability", doc="fraction with r < tol within the cap", by_size=True, trial_mean=True),
    _metric("cycled_frac"),
    _metric(CAPPED_SHARE, doc="share of instances that ended at the cap (not converged, not cycled)",
            mlflow=None),
    Column(CAP_BOUND, "bool", "derived", "capped_share > 0.05: the split measures the cap "
                                         "(evaluate.CAP_BOUND_SHARE)"),
    _metric("residual_median"),
    _metric("input_dependence", doc="schema 1 only: finite difference ||z*(x)-z*(x')|| / ||x-x'||",
            trial_mean=True, legacy=True),
    _metric("input_derivative", doc="median ||(I-J)^-1 (dF/dx) v|| at verified z*, unit v", trial_mean=True),
    _metric("basin_jump_1e-4", doc="share of verified z* that jump under a 1e-4*||x|| perturbation"),
    _metric("basin_jump_1e-3"),
    _metric("basin_jump_1e-2"),
    _metric("probe_n", "int", "instances in the seeded random probe subset", mlflow=None),
    _metric("probe_verified", doc="share of the subset at a verified z* (solver r < tol)"),
    _metric("fixed_point_spread", doc="spread of z* across distinct inputs"),
    _metric("path_independence", doc="distance of z* reached from different z0 (0 = independent)"),
    _metric(SPECTRAL_RADIUS, doc="rho(dF/dz) at the solver's z* (schema 1: at the probe's rest state)",
            trial_mean=True),
    Column("instance_iters", "floats32", "instance", "per instance, for iterations vs difficulty"),
    Column("instance_difficulty", "floats32", "instance", "per instance, task.difficulty_key"),
    Column("instance_correct", "bools", "instance"),
    Column("instance_converged", "bools", "instance", "r < tol before the cap"),
    Column("instance_cycled", "bools", "instance", "halted on a period-2 cycle"),
    Column("budget_iters", "ints", "instance", "test-time compute curve: loop budgets ..."),
    Column("budget_acc", "floats", "instance", "... and the exact accuracy read out at each"),
    Column("difficulty_key", "str", "training"),
    Column("train_seconds", "float", "training", summary=True),
    _metric("eval_seconds", mlflow=None),
    Column("train_steps", "int", "training", summary=True),
    Column("final_loss", "float", "training", summary=True),
    Column(STATUS, "str", "split", "one of schema.STATUSES", required=True),
    Column("error", "str", "split"),
    Column("seed", "int", "trial"),
    Column("git_commit", "str", "trial"),
    Column("versions", "str", "worker", "JSON {\"torch\": ..., \"ray\": ..., ...}"),
    Column("hostname", "str", "worker"),
    Column("node_id", "str", "worker"),
    Column("device", "str", "training"),
    Column("finished_at", "time", "trial"),
)
"""The result columns in table order (the config columns follow them)."""

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}


def columns(source: Source) -> tuple[Column, ...]:
    return tuple(c for c in COLUMNS if c.source == source)


# ---------------------------------------------------------------- config columns

CONFIG_PREFIX = "cfg."


def config_column(section: str, name: str) -> str:
    """``('model', 'recall')`` -> ``cfg.model.recall``."""
    return f"{CONFIG_PREFIX}{section}.{name}"


def config_columns() -> list[str]:
    """Every flattened config column, ``cfg.<section>.<field>``, in a fixed order."""
    return [config_column(section, name) for section in SECTIONS for name in field_names(section)]


def config_kind(hint: Any) -> Optional[Kind]:
    """A config field's column kind from its type: bool, int, float, str (and Literal strings), a
    tuple of one of them (a list), Optional of any of these (the column is nullable either way);
    None for a type with no fixed shape (a mapping), stored as its ``str()``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        kinds = {config_kind(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is Literal:
        return "str" if all(isinstance(a, str) for a in args) else None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"str": "strs", "int": "ints", "float": "floats", "bool": "bools"}.get(config_kind(args[0]) or "")
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(hint)


@functools.lru_cache(maxsize=1)
def config_kinds() -> dict[str, Kind]:
    """``cfg.<section>.<field>`` -> its column kind (``config_kind``; 'str' for a mapping). Built
    once; read-only."""
    return {config_column(section, f.name): config_kind(field_types(cls)[f.name]) or "str"
            for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def config_cell(kind: Kind, value: Any) -> Any:
    """A config value as its column holds it: scalars as they are (an int in a float field as a
    float), a tuple as a list, a mapping (a field of kind 'str' whose value is no string) as its
    ``str()``; None stays null."""
    if value is None:
        return None
    if kind == "float" and not isinstance(value, bool):
        return float(value)
    if kind in ("strs", "ints", "floats", "bools"):
        return list(value)
    if kind == "str" and not isinstance(value, str):
        return str(value)
    return value
