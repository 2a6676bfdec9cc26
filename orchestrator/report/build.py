"""`fpr-sweep report SWEEP`: the results table of a sweep -> report.md, PNG figures, claim verdicts.

Competence first: a trial *learned* when its in-distribution exact accuracy reaches the sweep's
``report.min_id_acc`` (spec.yaml beside the results; default 0.95). OOD accuracy is shown over
learned trials with its 95% hierarchical-bootstrap interval, and P(learned) beside it.

Works on partial results (a sweep still running, or one with failed trials): the header says which
trials are not ok, which ok trials lack an eval split the other trials of their task have, and which
(variant, seed) cells have no rows at all. Accuracy tables and figures use ok rows only.

    build_report(Path("results/quickstart"))   # writes results/quickstart/report.md + *.png
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orchestrator.report import bootstrap, claims
from orchestrator.report.claims import SUPPORTED, CONTRADICTED, Verdict, compute_verdicts
from orchestrator.report.frame import (CAPPED, CONVERGED, CYCLED, STALLED, instance_outcomes, is_ood,
                                      load_results, ordered_variants, outcome_shares, prepare, split_sort_key)
from orchestrator.report.plots import plot_task
from orchestrator.store.schema import STATUSES
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.spec import ReportSpec, SpecError
ERROR_CHARS = 160
"""Error messages are cut to their first line and this many characters in the report."""


def ood_table(df: pd.DataFrame, min_id_acc: float | None = None) -> pd.DataFrame:
    """Exact accuracy per (task, variant, split), with the competence gate.

    Long format, one row per (task, variant, split), ordered by task, variant (recall, outer norm,
    sigma) and split ('id' first, then OOD by size). Columns: task, variant, recall, outer_norm,
    regime, split, size, ood, n_seeds (ok trials), n_learned, all_mean (every ok trial), and over the
    learned trials only: learned_mean, learned_low, learned_high (95% hierarchical-bootstrap
    interval: seeds, then instances; NaN with no learned trial)."""
    frame = df if "variant_label" in df.columns and min_id_acc is None else prepare(df, min_id_acc)
    ok = frame[frame["status_ok"]]
    columns = ["task", "variant", "recall", "outer_norm", "regime", "split", "size", "ood", "n_seeds",
               "n_learned", "all_mean", "learned_mean", "learned_low", "learned_high"]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    rng = bootstrap.make_rng()
    keys = ["task_label", "variant_label", "recall", "outer_norm", "regime", "split"]
    records = []
    for key, rows in ok.astype({k: object for k in keys}).groupby(keys, dropna=False, sort=False):
        estimate = claims.split_accuracy(rows, rng)
        records.append(dict(zip(["task", "variant", "recall", "outer_norm", "regime", "split"], key),
                            size=rows["size"].max(), n_seeds=int(rows["exact_acc"].notna().sum()),
                            n_learned=int(rows["learned"].sum()), all_mean=float(rows["exact_acc"].mean()),
                            learned_mean=estimate.effect, learned_low=estimate.low, learned_high=estimate.high))
    table = pd.DataFrame.from_records(records)
    table["ood"] = is_ood(table["split"])
    order = {v: i for i, v in enumerate(ordered_variants(frame))}
    table["_key"] = [(t, order.get(v, len(order)), split_sort_key(s, z))
                     for t, v, s, z in zip(table["task"], table["variant"], table["split"], table["size"])]
    return table.sort_values("_key").drop(columns="_key").reset_index(drop=True)[columns]


def _fmt_learned(cell) -> str:
    if cell["n_learned"] == 0 or pd.isna(cell["learned_mean"]):
        return "-"
    if cell["n_learned"] < 2 or pd.isna(cell["learned_low"]):
        return f"{cell['learned_mean']:.3f}"
    return f"{cell['learned_mean']:.3f} [{cell['learned_low']:.2f}, {cell['learned_high']:.2f}]"


def ood_display(table: pd.DataFrame, task: str, rho: dict[str, float] | None = None
                ) -> tuple[list[str], list[list[str]]]:
    """One task's table for reading: a row per variant; learned k/n (P(learned)); the measured
    rho(dF/dz) over learned trials; id accuracy of every trial; each split over learned trials."""
    rows = table[table["task"] == task]
    splits = sorted({(s, z) for s, z in zip(rows["split"], rows["size"])}, key=lambda sz: split_sort_key(*sz))
    split_names = list(dict.fromkeys(s for s, _ in splits))
    sizes = {s: z for s, z in splits}
    header = (["variant", "learned (P)", "rho at z*", "id, all trials"]
              + [f"{s} ({int(sizes[s])})" if s == "id" and not pd.isna(sizes[s]) else s for s in split_names])
    body = []
    for variant in dict.fromkeys(rows["variant"]):
        cells = rows[rows["variant"] == variant].set_index("split")
        first = cells.iloc[0] if "id" not in cells.index else cells.loc["id"]
        n, k = int(first["n_seeds"]), int(first["n_learned"])
        measured = (rho or {}).get(variant, math.nan)
        body.append([variant, f"{k}/{n} ({k / n:.2f})" if n else "0/0",
                     "-" if pd.isna(measured) else f"{measured:.2f}",
                     "-" if pd.isna(first["all_mean"]) or "id" not in cells.index else f"{first['all_mean']:.3f}"]
                    + [_fmt_learned(cells.loc[s]) if s in cells.index else "-" for s in split_names])
    return header, body


def measured_rho(frame: pd.DataFrame, task: str) -> dict[str, float]:
    """Mean rho(dF/dz) per variant over the learned trials of ``task`` (NaN when not measured)."""
    rows = frame[(frame["task_label"] == task) & frame["learned"]]
    return rows.groupby("variant_label")["spectral_radius"].mean().to_dict()


def iteration_display(frame: pd.DataFrame, task: str) -> tuple[list[str], list[list[str]]]:
    """Per variant and split: shares converged / cycled / capped (other halts make up the rest),
    median iterations of the converged instances, and the loop cap. Ok trials, learned or not."""
    rows = frame[(frame["task_label"] == task) & frame["status_ok"]]
    splits = sorted({(s, z) for s, z in zip(rows["split"], rows["size"])}, key=lambda sz: split_sort_key(*sz))
    header = ["variant"] + [s for s, _ in splits]
    body = []
    for variant in ordered_variants(rows):
        sub = rows[rows["variant_label"] == variant]
        line = [variant]
        for split, _ in splits:
            cell = sub[sub["split"] == split]
            line.append(_iteration_cell(cell))
        body.append(line)
    return header, body


def _iteration_cell(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "-"
    shares = outcome_shares(rows)
    if math.isnan(shares[CONVERGED]):
        return "no instance data"
    iters = np.concatenate([np.asarray(r["instance_iters"], float)[instance_outcomes(r) == CONVERGED]
                            for _, r in rows.iterrows() if r["instance_iters"] is not None])
    median = f"{np.median(iters):.0f}" if iters.size else "-"
    cap = rows["eval_cap"].max()
    stalled = f" / {shares[STALLED]:.0%} stalled" if shares[STALLED] > 0 else ""
    return (f"{shares[CONVERGED]:.0%} conv / {shares[CYCLED]:.0%} cyc / {shares[CAPPED]:.0%} cap{stalled}; "
            f"median {median} (cap {int(cap) if not pd.isna(cap) else '?'})")


def trial_statuses(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: task, variant, seed, status (its first non-ok row status, else ok), error."""
    def first_bad(group: pd.DataFrame) -> pd.Series:
        bad = group[group["status"] != "ok"]
        row = bad.iloc[0] if len(bad) else group.iloc[0]
        return pd.Series({"task": row["task_label"], "variant": row["variant_label"], "seed": row["seed"],
                          "status": row["status"], "error": row["error"]})

    cols = ["trial_id", "task_label", "variant_label", "seed", "status", "error"]
    return frame[cols].groupby("trial_id", sort=True).apply(first_bad, include_groups=False).reset_index()


ExpectedCells = dict[tuple[str, str, int], set[str]]
"""(task, variant, seed) -> the splits its trial should have: what the sweep's spec expands to."""


def expected_cells(sweep_dir: Path) -> ExpectedCells | None:
    """The grid the spec copy beside the results expands to (None without one, or for a search
    sweep, whose trials are samples rather than cells). Task entries may differ in seeds and OOD
    sizes, so what a trial lacks is judged against its own entry, not the task's union."""
    from orchestrator.sweep.expand import expand
    from orchestrator.sweep.spec import load_spec

    path = SweepDir(sweep_dir).spec_copy
    try:
        spec = load_spec(path)
    except (OSError, SpecError):
        return None
    if spec.search is not None:
        return None
    return {(c.task, c.variant, int(c.seed)): {"id", *(f"ood_{size}" for size in c.ood_sizes)}
            for c in expand(spec, path=path)}


def missing_items(frame: pd.DataFrame, statuses: pd.DataFrame, expected: ExpectedCells | None = None) -> list[str]:
    """Human-readable lines: non-ok trials, ok trials lacking a split, (variant, seed) cells without
    rows; against the spec's grid when ``expected`` is given, else against each task's union of
    splits and seeds."""
    lines = []
    for _, t in statuses[statuses["status"] != "ok"].iterrows():
        error = str(t["error"]).strip().splitlines()[0][:ERROR_CHARS] if isinstance(t["error"], str) and t["error"].strip() else "no error message"
        lines.append(f"trial {t['trial_id']} ({t['task']}, {t['variant']}, seed {t['seed']}): "
                     f"status {t['status']}: {error}")
    ok_ids = set(statuses.loc[statuses["status"] == "ok", "trial_id"])
    if expected is not None:
        return lines + _missing_from_grid(frame, ok_ids, expected)
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


def _missing_from_grid(frame: pd.DataFrame, ok_ids: set, expected: ExpectedCells) -> list[str]:
    lines, seen = [], set()
    for trial_id, trial in frame.groupby("trial_id", sort=True):
        first = trial.iloc[0]
        key = (first["task"], first["variant"], int(first["seed"]))
        seen.add(key)
        lacking = sorted(expected.get(key, set()) - set(trial["split"]), key=lambda s: split_sort_key(s, None))
        if trial_id in ok_ids and lacking:
            lines.append(f"trial {trial_id} ({first['task_label']}, {first['variant_label']}): "
                         f"no rows for split(s) {', '.join(lacking)}")
    absent: dict[tuple[str, str], list[int]] = {}
    for task, variant, seed in sorted(set(expected) - seen):
        absent.setdefault((task, variant), []).append(seed)
    lines += [f"{task}, {variant}: no trial for seed(s) {', '.join(map(str, seeds))}"
              for (task, variant), seeds in absent.items()]
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


def verdict_rows(verdicts: list[Verdict]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "claim", "effect [95% interval] per part", "minimum effect", "verdict", "why"]
    return header, [[str(v.claim_id), v.claim, v.evidence, v.min_effect, v.label, v.reason] for v in verdicts]


def thresholds_text() -> str:
    """The constants the verdicts use, read from orchestrator.report.claims (never restated by hand)."""
    names = ["MIN_LEARNED_SEEDS", "ALPHA", "MIN_ACC_EFFECT", "REACH_MIN", "RHO_MAX", "MIN_DERIVATIVE_EFFECT",
             "VERIFIED_MIN", "NONINF_MARGIN", "MIN_RHO_EFFECT", "MIN_INSTANCES"]
    return ", ".join(f"`{n}` = {getattr(claims, n)}" for n in names)


def render_markdown(frame: pd.DataFrame, statuses: pd.DataFrame, missing: list[str], table: pd.DataFrame,
                    figures: dict[str, list[Path]], verdicts: list[Verdict], min_id_acc: float) -> str:
    info = provenance(frame)
    counts = statuses["status"].value_counts()
    out = [f"# Sweep report: {info['sweep']}", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items() if k != "sweep"]
    out += [f"- **competence gate**: a trial is *learned* when its in-distribution exact accuracy is >= "
            f"{min_id_acc:g} (`report.min_id_acc`); {int(frame.drop_duplicates('trial_id')['learned'].sum())} of "
            f"{frame['trial_id'].nunique()} trials learned"]
    out += ["", "## Trials by status", "",
            md_table(["status", "trials"], [[s, str(int(counts.get(s, 0)))] for s in STATUSES]
                     + [[s, str(int(n))] for s, n in counts.items() if s not in STATUSES]
                     + [["total", str(len(statuses))]]), ""]
    out += ["## Missing or not ok", ""]
    out += [f"- {line}" for line in missing] if missing else ["Nothing missing: every trial is ok and has every split."]
    out += ["", "## Exact accuracy per variant and split", "",
            "Split columns: mean over *learned* trials [95% interval, hierarchical bootstrap over seeds then "
            "instances; none with one learned seed]; `-` = no learned trial. `learned (P)`: learned seeds k/n "
            "and P(learned); `rho at z*`: measured spectral radius of dF/dz, mean over learned trials; "
            "`id, all trials`: in-distribution accuracy of every ok trial.", ""]
    if frame["input_derivative"].isna().all():
        out[-2] += (" This table predates schema 2: its rho was measured at the probe's rest state, not at "
                    "the solver's z*.")
    for task in table["task"].drop_duplicates():
        out += [f"### {task}", "", md_table(*ood_display(table, task, measured_rho(frame, task))), ""]
        out += ["Halting per split (every ok trial): share of instances converged (r < tol) / cycled / at the "
                "cap (/ stalled: halted below the cap otherwise), median iterations of the converged instances "
                "(`-`: none known), loop cap.", "", md_table(*iteration_display(frame, task)), ""]
        out += [f"![{p.stem}]({p.name})" for p in figures.get(task, [])] + [""]
    out += ["## Claim verdicts", "", md_table(*verdict_rows(verdicts)), "",
            f"Rule: {claims.RULE}. Rules and minimum effects in `orchestrator/report/claims.py`; intervals "
            f"{bootstrap.LEVEL:.0%}, {bootstrap.N_BOOT} replicates, seed {bootstrap.BOOT_SEED}. Constants: "
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
        header, body = ood_display(table, task, measured_rho(frame, task))
        rich_table = Table(title=f"{task}: exact accuracy (learned trials)", show_lines=False)
        for name in header:
            rich_table.add_column(name, overflow="fold")
        for row in body:
            rich_table.add_row(*row)
        console.print(rich_table)
    rich_verdicts = Table(title="claim verdicts", show_lines=True)
    header, body = verdict_rows(verdicts)
    for name in header:
        rich_verdicts.add_column(name, overflow="fold")
    style = {SUPPORTED: "green", CONTRADICTED: "red"}
    for row, v in zip(body, verdicts):
        row[4] = f"[{style.get(v.verdict, 'yellow')}]{v.label}[/]"
        rich_verdicts.add_row(*row)
    console.print(rich_verdicts)


def report_settings(sweep_dir: Path) -> ReportSpec:
    """The ``report`` section of the spec.yaml the sweep was run with (defaults when absent)."""
    path = SweepDir(Path(sweep_dir)).spec_copy
    if not path.exists():
        return ReportSpec()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e})") from None
    section = data.get("report") if isinstance(data, dict) else None
    try:
        return ReportSpec.model_validate(section or {})
    except ValidationError as e:
        problems = "; ".join(f"report.{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
                             for err in e.errors())
        raise SpecError(f"{path}: {problems}") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(sweep_dir: Path, *, console: Console | None = None, min_id_acc: float | None = None) -> Path:
    """Write ``sweep_dir/report.md`` and its PNG figures from the sweep's results; print the
    summary tables with rich; return the report's path. ``min_id_acc`` overrides the spec's
    ``report.min_id_acc`` (raises SpecError when spec.yaml's report section is invalid)."""
    sweep_dir = Path(sweep_dir)
    console = console or Console()
    gate = report_settings(sweep_dir).min_id_acc if min_id_acc is None else float(min_id_acc)
    df = load_results(sweep_dir)
    report_path = SweepDir(sweep_dir).report
    if df.empty:
        _write_atomic(report_path, f"# Sweep report: {sweep_dir.name}\n\nThe results table has no rows yet.\n")
        console.print(f"[yellow]{sweep_dir}: the results table has no rows yet[/yellow]")
        return report_path
    frame = prepare(df, gate)
    statuses = trial_statuses(frame)
    missing = missing_items(frame, statuses, expected_cells(sweep_dir))
    table = ood_table(frame)
    figures = {task: plot_task(frame, task, sweep_dir) for task in sorted(frame["task_label"].unique())}
    verdicts = compute_verdicts(frame)
    _write_atomic(report_path, render_markdown(frame, statuses, missing, table, figures, verdicts, gate))
    print_summary(console, frame, statuses, missing, table, verdicts)
    console.print(f"report: {report_path}")
    return report_path
