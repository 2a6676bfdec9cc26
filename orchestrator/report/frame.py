"""Load a sweep's results table and label its rows for the report (variants, regimes, trials).

The results table (``orchestrator/store/schema.py``) has one row per (trial, eval split). The report groups
trials into *variants*: the values of recall, outer_norm and the spectral regime, plus every other
``cfg.*`` column that takes more than one value within a task (an lr axis, a grad mode ...). Seeds
are not a variant axis: trials of one variant that differ only in seed are the seed spread.

Spectral regime (SGLT): target sigma < 1 contractive, ~1 critical, > 1 expansive, null = no
spectral normalisation ("unnormalised").

Halting protocols (docs/halting.md): a trial has one row per (split, halting protocol). Rows of
different protocols are distinct measurements of the same instances, never pooled: ``load_results``
returns the 'trained' rows unless asked for more, and ``claim_rows`` picks, per split, the one
protocol a claim reads (not a cap-bound one while another protocol is not).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa

from fpr_core.config import TRAINED
from fpr_core.evaluate import CAP_BOUND_SHARE
from fpr_core.split_names import ID_SPLIT, OOD_PREFIX
from orchestrator.store import parquet
from orchestrator.sweep.columns import COLUMNS, CONFIG_PREFIX, config_column
from orchestrator.sweep.layout import SweepPath

CRITICAL_TOL = 0.05
"""|sigma - 1| <= CRITICAL_TOL counts as the critical spectral regime."""

REGIME_ORDER = ("contractive", "critical", "expansive", "unnormalised")
RECALL_ORDER = ("none", "standard", "internal")
NORM_ORDER = ("none", "rms", "layer")

RECALL_AXIS, NORM_AXIS, SPECTRAL_AXIS = (config_column("model", f) for f in ("recall", "outer_norm", "spectral"))
ALWAYS_AXES = (RECALL_AXIS, NORM_AXIS, SPECTRAL_AXIS)
"""Axes every variant label shows, varying or not: the three the stability claims are about."""

NON_AXES = frozenset(config_column(*key.split(".")) for key in (
    "train.seed", "train.device", "model.vocab_size", "model.n_classes", "eval.halting", "eval.protocols"))
"""cfg columns that never define a variant: the seed (that is the spread), the device, the
vocabulary/class counts that are set from the task, and which halting protocols were evaluated
(the ``halting`` column says which protocol a row is)."""


def load_results(sweep_dir: SweepPath, halting: str | tuple[str, ...] | None = TRAINED) -> pd.DataFrame:
    """The sweep's rows as they are now (``store.parquet.read_current``: results.parquet, or the
    sweep's own trial files while a sweep runs or when the table is broken), every schema column
    present. Other ``*.parquet`` files in the folder are never read.

    halting: the protocols whose rows to return: 'trained' (default: each trial's own halting, one
    row per (trial, split), as before protocols existed), a tuple of names, or None for every row
    (then a trial has one row per (split, protocol): group or pick with ``claim_rows``). Rows
    written before ``capped_share`` existed get it from their per-instance flags (``instance_outcomes``)."""
    df = _to_pandas(parquet.read_current(sweep_dir))
    if halting is not None:
        df = df[df["halting"].isin((halting,) if isinstance(halting, str) else tuple(halting))]
    return add_capped(df.reset_index(drop=True))


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """The table as pandas, an integer config column with nulls (a field an older table lacks) as
    Python ints and None, not floats: a variant label reads ``mixer_window=3``, never ``3.0``."""
    df = table.to_pandas()
    for f in table.schema:
        if f.name.startswith(CONFIG_PREFIX) and pa.types.is_integer(f.type) and table.column(f.name).null_count:
            df[f.name] = pd.Series(table.column(f.name).to_pylist(), index=df.index, dtype=object)
    return df


def add_capped(df: pd.DataFrame) -> pd.DataFrame:
    """``capped_share`` and ``cap_bound`` filled in where a row lacks them (rows written before the
    columns existed) from its per-instance outcomes; rows without instance data stay null."""
    if df.empty or "capped_share" not in df.columns or not df["capped_share"].isna().any():
        return df
    out = df.copy()
    missing = out["capped_share"].isna()
    shares = [_capped_share(row) for row in out.loc[missing].to_dict("records")]
    out.loc[missing, "capped_share"] = shares
    known = missing & out["capped_share"].notna()
    out["cap_bound"] = out["cap_bound"].astype(object)
    out.loc[known, "cap_bound"] = out.loc[known, "capped_share"] > CAP_BOUND_SHARE
    return out


def _capped_share(row) -> float:
    outcomes = instance_outcomes(row)
    return float(np.mean(outcomes == CAPPED)) if outcomes.size else math.nan


def claim_rows(frame: pd.DataFrame, by: tuple[str, ...] = ("task_label", "split"),
               prefer: tuple[str, ...] = (TRAINED,), among: str | None = "learned") -> pd.DataFrame:
    """The rows a claim reads: for each group of ``by`` (default: a split of a task, across every
    variant, so arms are compared under one protocol), the rows of one halting protocol: the first
    protocol of ``prefer``, then the others present in name order, under which no row of the group
    is cap-bound. Where every protocol present is cap-bound, the preferred one's rows, which then
    decide nothing. Rows of trials that are not ``among`` (default 'learned', the competence gate;
    None = all) neither choose nor block a protocol, but are returned with the group's choice.

    ``frame``: rows of every protocol (``load_results(..., halting=None)`` then ``prepare``).
    Adds ``claim_halting`` (the protocol chosen for the row's group) and ``claim_cap_bound`` (True
    where even that protocol is cap-bound: the group decides nothing). A claim never mixes
    protocols within a group and never uses a cap-bound split while a protocol exists in which it
    is not cap-bound (issue 26; docs/halting.md)."""
    if frame.empty:
        return frame.assign(claim_halting=pd.Series(dtype=object), claim_cap_bound=pd.Series(dtype=bool))
    halting = frame["halting"].fillna(TRAINED) if "halting" in frame.columns else pd.Series(TRAINED, index=frame.index)
    bound = (frame["cap_bound"].fillna(False).astype(bool) if "cap_bound" in frame.columns
             else pd.Series(False, index=frame.index))
    deciding = frame[among].fillna(False).astype(bool) if among and among in frame.columns else pd.Series(True, index=frame.index)
    keys = [frame[c].astype(object).fillna("") for c in by]
    picks = []
    for key, idx in frame.groupby(keys, sort=False).groups.items():
        present = sorted(set(halting[idx]))
        order = [p for p in prefer if p in present] + [p for p in present if p not in prefer]
        free = [p for p in order if not (bound[idx] & deciding[idx] & halting[idx].eq(p)).any()]
        chosen = free[0] if free else order[0]
        rows = idx[halting[idx].eq(chosen)]
        picks.append(frame.loc[rows].assign(claim_halting=chosen, claim_cap_bound=not free))
    return pd.concat(picks).sort_index()


def cap_bound_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (task_label, variant_label, split, halting) of ok rows: trials, pooled capped
    share, and cap_bound (any trial's row cap-bound), for the report to name cap-bound splits."""
    cols = ["task_label", "variant_label", "split", "halting"]
    ok = frame[frame["status_ok"]] if "status_ok" in frame.columns else frame
    if ok.empty:
        return pd.DataFrame(columns=cols + ["trials", "capped_share", "cap_bound"])
    ok = ok.assign(halting=ok["halting"].fillna(TRAINED), weight=ok["n"].fillna(0),
                   capped_n=ok["capped_share"].astype(float) * ok["n"].fillna(0),
                   bound=ok["cap_bound"].fillna(False).astype(bool))
    g = ok.groupby(cols, dropna=False, sort=True)
    out = g.agg(trials=("trial_id", "nunique"), capped_n=("capped_n", "sum"), weight=("weight", "sum"),
                cap_bound=("bound", "any")).reset_index()
    out["capped_share"] = out["capped_n"] / out["weight"].where(out["weight"] > 0)
    return out[cols + ["trials", "capped_share", "cap_bound"]]


def sigmas(values: pd.Series) -> pd.Series:
    """cfg.model.spectral as floats, NaN for none (the column is typed; a hand-made frame's text
    values, '0.5' or None, read the same)."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def spectral_regime(sigma: float) -> str:
    """The SGLT spectral regime of a target sigma (NaN = unnormalised)."""
    if math.isnan(sigma):
        return "unnormalised"
    if abs(sigma - 1.0) <= CRITICAL_TOL:
        return "critical"
    return "contractive" if sigma < 1.0 else "expansive"


def split_sort_key(split: str, size) -> tuple:
    """'id' first, then OOD splits by size."""
    size_key = float(size) if size is not None and not pd.isna(size) else math.inf
    return (0 if split == ID_SPLIT else 1, size_key, split)


def is_ood(split: pd.Series) -> pd.Series:
    return split.astype(str).str.startswith(OOD_PREFIX)


def variant_axes(df: pd.DataFrame) -> list[str]:
    """The cfg columns that define variants: ALWAYS_AXES present in the table, then every other
    cfg column with more than one distinct value (nulls included) within some task."""
    cfg_cols = [c for c in df.columns if c.startswith(CONFIG_PREFIX)]
    axes = [c for c in ALWAYS_AXES if c in cfg_cols and df[c].notna().any()]
    for col in cfg_cols:
        if col in axes or col in NON_AXES:
            continue
        per_task = df.groupby("task", dropna=False)[col].nunique(dropna=False)
        if (per_task > 1).any():
            axes.append(col)
    return axes


def _short_names(axes: list[str]) -> dict[str, str]:
    """'cfg.model.recall' -> 'recall', unless two sections share a field name (then 'train.batch_size')."""
    fields = [a.split(".")[-1] for a in axes]
    return {a: (f if fields.count(f) == 1 else ".".join(a.split(".")[1:])) for a, f in zip(axes, fields)}


def _axis_value(col: str, value) -> str:
    if col == SPECTRAL_AXIS:
        sigma = float(sigmas(pd.Series([value])).iloc[0])
        return spectral_regime(sigma) if math.isnan(sigma) else f"{sigma:g} ({spectral_regime(sigma)})"
    return "null" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _task_labels(df: pd.DataFrame) -> pd.Series:
    """The task name, plus its params where one task appears with several param sets (S5 vs A5),
    plus its training size where one task appears with several."""
    params = df["task_params"].fillna("{}").astype(str)
    train = df["train_size"].astype("Int64").astype(str)
    n_params = params.groupby(df["task"]).transform("nunique")
    n_train = train.groupby(df["task"]).transform("nunique")

    def label(task, p, t, np_, nt):
        extra = [_params_text(p)] if np_ > 1 else []
        extra += [f"train={t}"] if nt > 1 else []
        return f"{task}[{','.join(extra)}]" if extra else task

    return pd.Series([label(*x) for x in zip(df["task"], params, train, n_params, n_train)], index=df.index)


def _params_text(params_json: str) -> str:
    try:
        items = json.loads(params_json)
    except ValueError:
        return params_json
    return ",".join(f"{k}={v}" for k, v in sorted(items.items())) if isinstance(items, dict) else params_json


def prepare(df: pd.DataFrame, min_id_acc: float | None = None) -> pd.DataFrame:
    """A copy of the results with report columns: task_label, recall, outer_norm, sigma, regime,
    variant_label (all variant axes, plus the spec hash when rows of several specs are present),
    context_label (all axes but recall), status_ok (True when every row of the row's trial has status
    ok), and the competence gate's id_acc_trial and learned (``add_competence`` with min_id_acc,
    default MIN_ID_ACC)."""
    out = df.copy()
    out["task_label"] = _task_labels(out)
    out["recall"] = out[RECALL_AXIS].astype(object) if RECALL_AXIS in out else None
    out["outer_norm"] = out[NORM_AXIS].astype(object) if NORM_AXIS in out else None
    out["sigma"] = sigmas(out[SPECTRAL_AXIS]) if SPECTRAL_AXIS in out else math.nan
    out["regime"] = pd.Series(out["sigma"], index=out.index).map(spectral_regime)
    axes = variant_axes(out)
    names = _short_names(axes)
    if axes:
        out["variant_label"] = [", ".join(f"{names[a]}={_axis_value(a, row[i])}" for i, a in enumerate(axes))
                                for row in out[axes].itertuples(index=False)]
        others = [a for a in axes if a != RECALL_AXIS]
        out["context_label"] = [", ".join(f"{names[a]}={_axis_value(a, row[i])}" for i, a in enumerate(others))
                                for row in out[others].itertuples(index=False)] if others else ""
    else:  # no cfg columns filled in: fall back to the orchestrator's own label
        out["variant_label"] = out["variant"].fillna("all").astype(str)
        out["context_label"] = ""
    if out["spec_hash"].nunique(dropna=False) > 1:  # trials of two specs (an --extend) never pool as seeds
        spec = " [spec " + out["spec_hash"].fillna("?").astype(str) + "]"
        out["variant_label"] = out["variant_label"].astype(str) + spec
        out["context_label"] = out["context_label"].astype(str) + spec
    # a trial counts only if all of its rows are ok (a failed trial's leftover rows do not)
    out["status_ok"] = (out["status"] == "ok").groupby(out["trial_id"]).transform("all")
    return add_competence(out, MIN_ID_ACC if min_id_acc is None else min_id_acc)


def variant_sort_key(label: str, frame: pd.DataFrame) -> tuple:
    """Order variants by recall, outer norm, sigma (as in the papers' tables), then label."""
    row = frame.loc[frame["variant_label"] == label].iloc[0]
    recall = RECALL_ORDER.index(row["recall"]) if row["recall"] in RECALL_ORDER else len(RECALL_ORDER)
    norm = NORM_ORDER.index(row["outer_norm"]) if row["outer_norm"] in NORM_ORDER else len(NORM_ORDER)
    sigma = row["sigma"] if not pd.isna(row["sigma"]) else math.inf
    return (recall, norm, sigma, label)


def ordered_variants(frame: pd.DataFrame) -> list[str]:
    labels = frame["variant_label"].dropna().unique().tolist()
    return sorted(labels, key=lambda label: variant_sort_key(label, frame))


MIN_ID_ACC = 0.95
"""Default competence gate: a trial *learned* when its in-distribution exact accuracy is at least
this (spec field ``report.min_id_acc``). OOD accuracy and stability are read on learned trials."""


def add_competence(frame: pd.DataFrame, min_id_acc: float = MIN_ID_ACC) -> pd.DataFrame:
    """A copy with ``id_acc_trial`` (the trial's in-distribution exact accuracy, NaN if it has no
    ok 'id' row) and ``learned`` (ok trial with id_acc_trial >= min_id_acc) on every row."""
    out = frame.copy()
    trained = out["halting"].fillna(TRAINED).eq(TRAINED) if "halting" in out.columns else True
    id_rows = out[(out["split"] == ID_SPLIT) & out["status_ok"] & trained]  # the trial's own halting decides
    id_acc = id_rows.groupby("trial_id")["exact_acc"].max()
    out["id_acc_trial"] = out["trial_id"].map(id_acc).astype(float)
    out["learned"] = out["status_ok"] & (out["id_acc_trial"] >= min_id_acc)
    return out


# Halting outcome of one instance. A capped instance is not a converged one: every iteration
# statistic keeps converged, cycled and capped apart (DESIGN.md, 'Fixed-point solver and halting').
CONVERGED, CYCLED, CAPPED, STALLED, HALTED = "converged", "cycled", "capped", "stalled", "halted"
OUTCOMES = (CONVERGED, CYCLED, CAPPED, STALLED, HALTED)
"""stalled: halted below the cap with eta < min_eta; halted: below the cap, reason not recorded
(a schema-1 row of a split that also had cycles)."""


def instance_outcomes(row) -> np.ndarray:
    """(N,) outcome per instance of one results row (a mapping with the schema's columns), or an
    empty array without data; see ``outcomes_of``."""
    return outcomes_of(row["instance_iters"], row["eval_cap"], row.get("instance_converged"),
                       row.get("instance_cycled"), row.get("cycled_frac"))


def outcomes_of(iters, cap, converged=None, cycled=None, cycled_frac=None) -> np.ndarray:
    """(N,) outcome per instance (OUTCOMES).

    Schema >= 2 rows carry per-instance converged / cycled flags. Schema-1 rows only have the
    iterations: an instance at the cap is capped; below it, converged when the split had no cycles
    (a stall needs thousands of steps of eta decay, beyond every cap), else 'halted'."""
    if iters is None or len(iters) == 0:
        return np.empty(0, dtype=object)
    iters = np.asarray(iters, dtype=float)
    at_cap = iters >= cap if cap is not None and not pd.isna(cap) else np.zeros(iters.size, bool)
    out = np.full(iters.size, HALTED, dtype=object)
    if converged is not None and len(converged) == iters.size:
        converged = np.asarray(converged, bool)
        cycled = np.asarray(cycled, bool) if cycled is not None and len(cycled) == iters.size else np.zeros_like(converged)
        out[:] = STALLED
        out[at_cap] = CAPPED
        out[cycled] = CYCLED
        out[converged] = CONVERGED
        return out
    no_cycles = cycled_frac is not None and not pd.isna(cycled_frac) and cycled_frac == 0
    out[~at_cap] = CONVERGED if no_cycles else HALTED
    out[at_cap] = CAPPED
    return out


def _outcome_counts(row) -> dict[str, float]:
    """Instances per outcome in one row. Per-instance flags when the row has them; a schema-1 row
    takes converged and cycled from its split-level reachability and cycled_frac, capped from the
    iterations at the cap, and calls the rest stalled (shares exact, only which instance unknown)."""
    outcomes = instance_outcomes(row)
    if not outcomes.size:
        return {}
    flags = row.get("instance_converged")
    if flags is not None and len(flags) == outcomes.size:
        return {o: float(np.sum(outcomes == o)) for o in OUTCOMES}
    n = float(outcomes.size)  # an instance converging on the cap's last step is at the cap yet converged
    converged = float(row["reachability"] or 0.0) * n
    cycled = min(float(row["cycled_frac"] or 0.0) * n, n - converged)
    capped = min(float(np.sum(outcomes == CAPPED)), n - converged - cycled)
    return {CONVERGED: converged, CYCLED: cycled, CAPPED: capped,
            STALLED: max(n - capped - converged - cycled, 0.0), HALTED: 0.0}


def outcome_shares(rows: pd.DataFrame) -> dict[str, float]:
    """Share of each outcome over every instance of ``rows`` (NaN when no instance data)."""
    totals = dict.fromkeys(OUTCOMES, 0.0)
    cols = [c for c in ("instance_iters", "eval_cap", "instance_converged", "instance_cycled", "cycled_frac",
                        "reachability") if c in rows.columns]
    for row in rows[cols].to_dict("records"):
        for outcome, count in _outcome_counts(row).items():
            totals[outcome] += count
    n = sum(totals.values())
    return {o: (totals[o] / n if n else math.nan) for o in OUTCOMES}


def trial_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ok trial: labels, seed, learned, in-distribution accuracy, mean OOD accuracy and
    the stability axes averaged over its eval splits (ID and OOD), under the trial's own halting."""
    trained = frame["halting"].fillna(TRAINED).eq(TRAINED) if "halting" in frame.columns else True
    ok = frame[frame["status_ok"] & trained].copy()  # one protocol: the trial's own
    ok["ood_acc"] = ok["exact_acc"].where(is_ood(ok["split"]))
    keys = ["trial_id", "task", "task_label", "variant_label", "context_label", "recall", "outer_norm", "regime"]
    metrics = {"ood_acc": "mean", "id_acc_trial": "first", "learned": "first",
               **{c.name: "mean" for c in COLUMNS if c.trial_mean}, "seed": "first", "sigma": "first"}
    ok = ok.astype({k: object for k in keys})
    return ok.groupby(keys, dropna=False, sort=False).agg(metrics).reset_index()


def seed_std(values: pd.Series) -> float:
    """Sample std across seeds (ddof=1); NaN with fewer than two seeds."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def finite_mean(values) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
