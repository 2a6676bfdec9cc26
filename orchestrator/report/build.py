"""`fpr-sweep report SWEEP`: the results table of a sweep -> report.md, PNG figures, claim verdicts.

Works on partial results (a sweep still running, or one with failed trials): the header says which
trials are not ok, which ok trials lack an eval split the other trials of their task have, and which
(variant, seed) cells have no rows at all. Accuracy tables and figures use ok rows only.

    build_report(Path("results/quickstart"))   # writes results/quickstart/report.md + *.png
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from orchestrator.report import claims
from orchestrator.report.claims import Verdict, compute_verdicts
from orchestrator.report.plots import plot_task
from orchestrator.report.frame import (is_ood, load_results, ordered_variants, prepare, seed_std,
                                      split_sort_key)
from orchestrator.store.schema import STATUSES
from orchestrator.sweep.layout import SweepDir
ERROR_CHARS = 160
"""Error messages are cut to their first line and this many characters in the report."""


def ood_table(df: pd.DataFrame) -> pd.DataFrame:
    """Exact accuracy per (task, variant, split): mean and sample std over seeds (ok rows only).

    Long format, one row per (task, variant, split), ordered by task, variant (recall, outer norm,
    sigma) and split ('id' first, then OOD by size). Columns: task, variant, recall, outer_norm,
    regime, split, size, ood, exact_acc_mean, exact_acc_std (NaN with one seed), n_seeds."""
    frame = df if "variant_label" in df.columns else prepare(df)
    ok = frame[frame["status_ok"]]
    columns = ["task", "variant", "recall", "outer_norm", "regime", "split", "size", "ood",
               "exact_acc_mean", "exact_acc_std", "n_seeds"]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    keys = ["task_label", "variant_label", "recall", "outer_norm", "regime", "split"]
    grouped = ok.astype({k: object for k in keys}).groupby(keys, dropna=False, sort=False)
    table = grouped.agg(size=("size", "max"), exact_acc_mean=("exact_acc", "mean"),
                        exact_acc_std=("exact_acc", seed_std), n_seeds=("exact_acc", "count")).reset_index()
    table = table.rename(columns={"task_label": "task", "variant_label": "variant"})
    table["ood"] = is_ood(table["split"])
    order = {v: i for i, v in enumerate(ordered_variants(frame))}
    table["_key"] = [(t, order.get(v, len(order)), split_sort_key(s, z))
                     for t, v, s, z in zip(table["task"], table["variant"], table["split"], table["size"])]
    return table.sort_values("_key").drop(columns="_key").reset_index(drop=True)[columns]


def _fmt_acc(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.3f}" if n < 2 or pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def ood_display(table: pd.DataFrame, task: str) -> tuple[list[str], list[list[str]]]:
    """One task's table for reading: a row per variant, a column per split ('mean ± std')."""
    rows = table[table["task"] == task]
    splits = sorted({(s, z) for s, z in zip(rows["split"], rows["size"])}, key=lambda sz: split_sort_key(*sz))
    split_names = list(dict.fromkeys(s for s, _ in splits))
    sizes = {s: z for s, z in splits}
    header = ["variant", "seeds"] + [f"{s} ({int(sizes[s])})" if s == "id" and not pd.isna(sizes[s]) else s
                                     for s in split_names]
    body = []
    for variant in dict.fromkeys(rows["variant"]):
        cells = rows[rows["variant"] == variant].set_index("split")
        seeds = int(cells["n_seeds"].max())
        body.append([variant, str(seeds)] + [
            _fmt_acc(cells.at[s, "exact_acc_mean"], cells.at[s, "exact_acc_std"], int(cells.at[s, "n_seeds"]))
            if s in cells.index else "-" for s in split_names])
    return header, body


def trial_statuses(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: task, variant, seed, status (its first non-ok row status, else ok), error."""
    def first_bad(group: pd.DataFrame) -> pd.Series:
        bad = group[group["status"] != "ok"]
        row = bad.iloc[0] if len(bad) else group.iloc[0]
        return pd.Series({"task": row["task_label"], "variant": row["variant_label"], "seed": row["seed"],
                          "status": row["status"], "error": row["error"]})

    cols = ["trial_id", "task_label", "variant_label", "seed", "status", "error"]
    return frame[cols].groupby("trial_id", sort=True).apply(first_bad, include_groups=False).reset_index()


def missing_items(frame: pd.DataFrame, statuses: pd.DataFrame) -> list[str]:
    """Human-readable lines: non-ok trials, ok trials lacking a split, (variant, seed) cells without rows."""
    lines = []
    for _, t in statuses[statuses["status"] != "ok"].iterrows():
        error = str(t["error"]).strip().splitlines()[0][:ERROR_CHARS] if isinstance(t["error"], str) and t["error"].strip() else "no error message"
        lines.append(f"trial {t['trial_id']} ({t['task']}, {t['variant']}, seed {t['seed']}): "
                     f"status {t['status']}: {error}")
    ok_ids = set(statuses.loc[statuses["status"] == "ok", "trial_id"])
    for task, rows in frame.groupby("task_label", sort=True):
        expected = set(rows["split"])
        for trial_id, trial in rows[rows["trial_id"].isin(ok_ids)].groupby("trial_id", sort=True):
            lacking = sorted(expected - set(trial["split"]), key=lambda s: split_sort_key(s, None))
            if lacking:
                lines.append(f"trial {trial_id} ({task}, {trial['variant_label'].iloc[0]}): "
                             f"no rows for split(s) {', '.join(lacking)}")
        seeds = sorted(rows["seed"].dropna().unique())
        for variant, sub in rows.groupby("variant_label", sort=True):
            absent = [int(s) for s in seeds if s not in set(sub["seed"].dropna())]
            if absent:
                lines.append(f"{task}, {variant}: no trial for seed(s) {', '.join(map(str, absent))}")
    return lines


def provenance(frame: pd.DataFrame) -> dict[str, str]:
    """Sweep name(s), spec hash(es), git commit(s) and wall time when finished_at is recorded."""
    def values(col: str) -> str:
        vals = sorted(str(v) for v in frame[col].dropna().unique())
        return ", ".join(vals) if vals else "not recorded"

    info = {"sweep": values("sweep"), "spec hash": values("spec_hash"), "git commit(s)": values("git_commit")}
    finished = pd.to_datetime(frame["finished_at"], utc=True)
    if finished.notna().any():
        spent = frame["train_seconds"].fillna(0.0) + frame["eval_seconds"].fillna(0.0)
        started = finished - pd.to_timedelta(spent, unit="s")
        wall = (finished.max() - started.min()).total_seconds()
        per_trial_train = frame.groupby("trial_id")["train_seconds"].max().fillna(0.0).sum()
        compute = per_trial_train + frame["eval_seconds"].fillna(0.0).sum()
        info["wall time"] = (f"~{_duration(wall)} (earliest trial start, estimated from finished_at minus "
                             f"train+eval seconds, to the last finished row)")
        info["trial compute"] = f"{_duration(compute)} (sum of train and eval seconds)"
        info["last row finished"] = str(finished.max())
    else:
        info["wall time"] = "not derivable (no finished_at recorded)"
    return info


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _spread_text(spread: float) -> str:
    return "n/a (< 2 seeds)" if math.isnan(spread) else f"{spread:.3f}"


def verdict_rows(verdicts: list[Verdict]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "claim", "numbers", "verdict", "seed spread", "why"]
    return header, [[str(v.claim_id), v.claim, v.evidence, v.verdict, _spread_text(v.seed_spread), v.reason]
                    for v in verdicts]


def thresholds_text() -> str:
    """The thresholds the verdicts use, read from orchestrator.report.claims (never restated by hand)."""
    names = ["MIN_SEEDS", "MIN_MARGIN", "REACH_MIN", "RHO_MAX", "DEP_RATIO_SUPPORT", "DEP_RATIO_CONTRADICT",
             "DEP_ABS", "NONINF_MARGIN", "RHO_SUPPORT", "RHO_CONTRADICT", "MIN_INSTANCES", "MIN_SIZES"]
    return ", ".join(f"`{n}` = {getattr(claims, n)}" for n in names)


def render_markdown(frame: pd.DataFrame, statuses: pd.DataFrame, missing: list[str], table: pd.DataFrame,
                    figures: dict[str, list[Path]], verdicts: list[Verdict]) -> str:
    info = provenance(frame)
    counts = statuses["status"].value_counts()
    out = [f"# Sweep report: {info['sweep']}", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items() if k != "sweep"]
    out += ["", "## Trials by status", "",
            md_table(["status", "trials"], [[s, str(int(counts.get(s, 0)))] for s in STATUSES]
                     + [[s, str(int(n))] for s, n in counts.items() if s not in STATUSES]
                     + [["total", str(len(statuses))]]), ""]
    out += ["## Missing or not ok", ""]
    out += [f"- {line}" for line in missing] if missing else ["Nothing missing: every trial is ok and has every split."]
    out += ["", "## Exact accuracy per variant and split (mean ± std over seeds, ok trials)", ""]
    for task in table["task"].drop_duplicates():
        out += [f"### {task}", "", md_table(*ood_display(table, task)), ""]
        out += [f"![{p.stem}]({p.name})" for p in figures.get(task, [])] + [""]
    out += ["## Claim verdicts", "", md_table(*verdict_rows(verdicts)), "",
            "Verdicts are computed from the rows above (rules in `orchestrator/report/claims.py`). Thresholds: "
            + thresholds_text() + ".", ""]
    return "\n".join(out)


def print_summary(console: Console, frame: pd.DataFrame, statuses: pd.DataFrame, missing: list[str],
                  table: pd.DataFrame, verdicts: list[Verdict]) -> None:
    """The status counts, the accuracy tables and the verdicts in the terminal."""
    counts = statuses["status"].value_counts()
    console.print(f"[bold]sweep {provenance(frame)['sweep']}[/bold]: "
                  + ", ".join(f"{s} {int(counts.get(s, 0))}" for s in STATUSES)
                  + f" ({len(missing)} item(s) missing or not ok)")
    for task in table["task"].drop_duplicates():
        header, body = ood_display(table, task)
        rich_table = Table(title=f"{task}: exact accuracy", show_lines=False)
        for name in header:
            rich_table.add_column(name, overflow="fold")
        for row in body:
            rich_table.add_row(*row)
        console.print(rich_table)
    rich_verdicts = Table(title="claim verdicts", show_lines=True)
    for name in verdict_rows(verdicts)[0]:
        rich_verdicts.add_column(name, overflow="fold")
    style = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}
    for row, v in zip(verdict_rows(verdicts)[1], verdicts):
        row[3] = f"[{style[v.verdict]}]{v.verdict}[/]"
        rich_verdicts.add_row(*row)
    console.print(rich_verdicts)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(sweep_dir: Path, *, console: Console | None = None) -> Path:
    """Write ``sweep_dir/report.md`` and its PNG figures from the sweep's results; print the
    summary tables with rich; return the report's path."""
    sweep_dir = Path(sweep_dir)
    console = console or Console()
    df = load_results(sweep_dir)
    report_path = SweepDir(sweep_dir).report
    if df.empty:
        _write_atomic(report_path, f"# Sweep report: {sweep_dir.name}\n\nThe results table has no rows yet.\n")
        console.print(f"[yellow]{sweep_dir}: the results table has no rows yet[/yellow]")
        return report_path
    frame = prepare(df)
    statuses = trial_statuses(frame)
    missing = missing_items(frame, statuses)
    table = ood_table(frame)
    figures = {task: plot_task(frame, task, sweep_dir) for task in sorted(frame["task_label"].unique())}
    verdicts = compute_verdicts(frame)
    _write_atomic(report_path, render_markdown(frame, statuses, missing, table, figures, verdicts))
    print_summary(console, frame, statuses, missing, table, verdicts)
    console.print(f"report: {report_path}")
    return report_path
