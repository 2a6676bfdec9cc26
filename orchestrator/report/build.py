"""`fpr-sweep report SWEEP`: the results table of a sweep -> report.md, PNG figures, claim verdicts.

Competence first: a trial *learned* when its in-distribution exact accuracy reaches the sweep's
``report.min_id_acc`` (spec.yaml beside the results; default 0.95). OOD accuracy is shown over
learned trials with its 95% t-interval on seed means (none below 3 seeds: n and the values), and
P(learned) beside it with its Clopper-Pearson interval. Every number printed is also written to
``estimates.parquet`` (``ESTIMATE_COLUMNS``, one row per task x variant x split x halting and per
claim part). The statistical rules: docs/statistics.md.

Works on partial results (a sweep still running, or one with failed trials): the header says which
trials are not ok, which ok trials lack an eval split the other trials of their task have, and which
(variant, seed) cells have no rows at all. Accuracy tables and figures use ok rows only.

    build_report(Path("results/quickstart"))   # writes results/quickstart/report.md + *.png
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orchestrator.report import bootstrap, claims, published, regimes
from orchestrator.report.claims import SUPPORTED, CONTRADICTED, Verdict
from orchestrator.report.frame import (CAPPED, CONVERGED, CYCLED, STALLED, instance_outcomes, is_ood,
                                      load_results, ordered_variants, outcome_shares, prepare, split_sort_key)
from orchestrator.report.plots import plot_task
from orchestrator.store.schema import STATUSES
from orchestrator.sweep.layout import SweepDir, SweepPath
from orchestrator.sweep.spec import ReportSpec, SpecError
ERROR_CHARS = 160
"""Error messages are cut to their first line and this many characters in the report."""


def ood_table(df: pd.DataFrame, min_id_acc: float | None = None) -> pd.DataFrame:
    """Exact accuracy per (task, variant, split, halting protocol), with the competence gate.

    Long format, one row per (task, variant, split, halting), ordered by task, variant (recall,
    outer norm, sigma) and split ('id' first, then OOD by size). Columns: task, variant, recall,
    outer_norm, regime, split, halting ('trained' when the rows carry none), size, ood, n_seeds (ok
    trials), n_learned, all_mean, all_low, all_high (every ok trial: the intention-to-treat
    accuracy), and over the learned trials only: learned_mean, learned_low, learned_high (95%
    t-interval on seed means; NaN with fewer than 3 seeds), learned_values (the seed values),
    learned_method."""
    frame = df if "variant_label" in df.columns and min_id_acc is None else prepare(df, min_id_acc)
    ok = claims.with_halting(frame[frame["status_ok"]])
    columns = ["task", "variant", "recall", "outer_norm", "regime", "split", "halting", "size", "ood", "n_seeds",
               "n_learned", "all_mean", "all_low", "all_high", "learned_mean", "learned_low", "learned_high",
               "learned_values", "learned_method"]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    keys = ["task_label", "variant_label", "recall", "outer_norm", "regime", "split", "halting"]
    records = []
    for key, rows in ok.astype({k: object for k in keys}).groupby(keys, dropna=False, sort=False):
        estimate = claims.split_accuracy(rows)
        everyone = claims.split_accuracy(rows, learned_only=False)
        records.append(dict(zip(["task", "variant", "recall", "outer_norm", "regime", "split", "halting"], key),
                            size=rows["size"].max(), n_seeds=int(rows["exact_acc"].notna().sum()),
                            n_learned=int(rows["learned"].sum()), all_mean=float(rows["exact_acc"].mean()),
                            all_low=everyone.low, all_high=everyone.high,
                            learned_mean=estimate.effect, learned_low=estimate.low, learned_high=estimate.high,
                            learned_values=estimate.values, learned_method=estimate.method))
    table = pd.DataFrame.from_records(records)
    table["ood"] = is_ood(table["split"])
    order = {v: i for i, v in enumerate(ordered_variants(frame))}
    table["_key"] = [(t, order.get(v, len(order)), split_sort_key(s, z))
                     for t, v, s, z in zip(table["task"], table["variant"], table["split"], table["size"])]
    return table.sort_values("_key").drop(columns="_key").reset_index(drop=True)[columns]


def _fmt_learned(cell) -> str:
    """'0.62 [0.55, 0.69]' at the interval's precision; below 3 learned seeds the values and n."""
    if cell["n_learned"] == 0 or pd.isna(cell["learned_mean"]):
        return "-"
    estimate = bootstrap.Estimate(cell["learned_mean"], cell["learned_low"], cell["learned_high"],
                                  int(cell["n_learned"]), values=tuple(cell["learned_values"] or ()))
    return estimate.text(".3f")


def ood_display(table: pd.DataFrame, task: str, rho: dict[str, float] | None = None
                ) -> tuple[list[str], list[list[str]]]:
    """One task's table for reading: a row per variant (and halting protocol, when there are
    several); learned k/n with P(learned) [Clopper-Pearson]; the measured rho(dF/dz) over learned
    trials; id accuracy of every trial; each split over learned trials."""
    rows = table[table["task"] == task]
    splits = sorted({(s, z) for s, z in zip(rows["split"], rows["size"])}, key=lambda sz: split_sort_key(*sz))
    split_names = list(dict.fromkeys(s for s, _ in splits))
    sizes = {s: z for s, z in splits}
    header = (["variant", "learned k/n (P(learned) [95% CP])", "rho at z*", "id, all trials"]
              + [f"{s} ({int(sizes[s])})" if s == "id" and not pd.isna(sizes[s]) else s for s in split_names])
    several = rows["halting"].nunique() > 1 if "halting" in rows else False
    body = []
    for variant, halting in dict.fromkeys(zip(rows["variant"], rows.get("halting", pd.Series(["trained"] * len(rows),
                                                                                              index=rows.index)))):
        cells = rows[(rows["variant"] == variant) & (rows.get("halting", "trained") == halting)].set_index("split")
        first = cells.iloc[0] if "id" not in cells.index else cells.loc["id"]
        n, k = int(first["n_seeds"]), int(first["n_learned"])
        measured = (rho or {}).get(variant, math.nan)
        name = f"{variant} [halting={halting}]" if several else variant
        body.append([name, f"{k}/{n} ({bootstrap.clopper_pearson(k, n).text('.2f')})" if n else "0/0",
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


def expected_cells(sweep_dir: SweepPath) -> ExpectedCells | None:
    """The grid the spec copy beside the results expands to (None without one, or for a search
    sweep, whose trials are samples rather than cells). Task entries may differ in seeds and OOD
    sizes, so what a trial lacks is judged against its own entry, not the task's union."""
    from orchestrator.sweep.expand import expand
    from orchestrator.sweep.spec import load_spec

    path = SweepDir.of(sweep_dir).spec_copy
    try:
        spec = load_spec(path)
    except (OSError, SpecError):
        return None
    if spec.search is not None:
        return None
    return {(c.task, c.variant, int(c.seed)): set(c.splits())
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
    header = ["#", "claim", "paper", "minimum effect", "verdict", "why"]
    return header, [[str(v.claim_id), v.claim, v.source.paper.split(",")[0], v.min_effect, v.label, v.reason]
                    for v in verdicts]


def thresholds_text() -> str:
    """The constants the verdicts use, read from orchestrator.report.claims (never restated by hand)."""
    names = ["MIN_LEARNED_SEEDS", "ALPHA", "MIN_ACC_EFFECT", "REACH_MIN", "RHO_MAX", "MIN_DERIVATIVE_EFFECT",
             "VERIFIED_MIN", "NONINF_MARGIN", "MIN_RHO_EFFECT", "MIN_INSTANCES", "OVERTHINK_MAX", "CAP_BOUND_SHARE"]
    return ", ".join(f"`{n}` = {getattr(claims, n)}" for n in names)


def claim_sections(verdicts: list[Verdict]) -> list[str]:
    """Per claim: the sentence and its paper, estimand, arms, tasks, rule; the verdict (per halting
    protocol when several); each part's evidence and the intention-to-treat lines."""
    out = []
    for v in verdicts:
        src = v.source
        out += [f"### Claim {v.claim_id}: {src.title}", "",
                f"- **paper**: {src.paper} ({src.url})", f"- **as stated**: {src.quote}",
                f"- **estimand**: {src.estimand}", f"- **arms**: {src.arms}", f"- **tasks**: {src.tasks}",
                f"- **decision rule**: {src.rule}; minimum effect: {src.min_effect}",
                f"- **verdict**: **{v.label}**: {v.reason}"]
        if len(v.by_protocol) > 1:
            out += [f"- **per halting protocol**: " + "; ".join(f"{h}: {label}" for h, label in v.by_protocol.items())]
        out += ["", "Parts:", ""] + [f"- {line}" for line in v.details] + [""]
    return out


def analysis_sections(analysis: claims.Analysis) -> list[str]:
    """Cap-bound cells, the trainability lines and overthinking per variant and split."""
    out = ["## Cap-bound splits left out", ""]
    bound = analysis.cap_bound
    if bound.empty:
        out += ["None: no learned (variant, split) cell has more than "
                f"{claims.CAP_BOUND_SHARE:.0%} of its instances at the loop cap.", ""]
    else:
        out += [f"A cell whose learned trials have more than {claims.CAP_BOUND_SHARE:.0%} of instances at the loop cap "
                "measures the cap, not the model: it is left out of every claim (accuracy, reachability, iterations, "
                "overthinking) and shown here. Its accuracy stays in the tables above.", "",
                md_table(["task", "variant", "split", "halting", "capped share (learned)", "learned trials", "from"],
                         [[r.task, r.variant, r.split, r.halting, f"{r.capped_share:.0%}", str(r.n_learned), r.source]
                          for r in bound.itertuples()]), ""]
    out += ["## Trainability: P(learned) with and without outer norm", "",
            "Learned counts per task, spectral regime and recall group, with outer norm against without "
            "(Clopper-Pearson intervals, Fisher's exact test). SGLT's claim 2 includes 'supported by stable "
            "backpropagation'; these counts are its trainability side.", ""]
    out += [f"- {line}" for line in analysis.trainability] or ["- no task has arms with and without outer norm"]
    over = analysis.overthinking
    out += ["", "## Overthinking per variant and split", "",
            "Share of instances right at some loop budget <= the training depth and wrong at the fixed point (Deep "
            "Thinking's overthinking), from the stored budget curves: peak accuracy over those budgets minus accuracy "
            "at the fixed point, floored at 0, a lower bound on the instance-level share (per-instance budget curves "
            "are not stored). Mean over seeds [95% t-interval]; all ok trials, and learned trials only.", ""]
    if over.empty:
        out += ["No budget curves with a recorded training depth."]
    for (task, halting), rows in (over.groupby(["task", "halting"], sort=True) if not over.empty else []):
        splits = sorted(rows["split"].unique(), key=lambda sp: split_sort_key(sp, None))
        body = []
        for variant, cells in rows.groupby("variant", sort=False):
            cells = cells.set_index("split")
            line = [variant, f"{int(cells['k'].iloc[0])}/{int(cells['n'].iloc[0])}"]
            for sp in splits:
                if sp not in cells.index:
                    line.append("-")
                    continue
                c = cells.loc[sp]
                text = c["all"].text(".3f") + (f"; learned {c['learned'].text('.3f')}" if c["k"] else "")
                line.append(text + (" (cap-bound)" if c["cap_bound"] else ""))
            body.append(line)
        title = f"### {task}" + (f" [halting={halting}]" if over["halting"].nunique() > 1 else "")
        out += ["", title, "", md_table(["variant", "learned k/n"] + splits, body)]
    out += ["", "Cells read 'all trials; learned trials'. (cap-bound): the cell's learned trials hit the cap on more "
            f"than {claims.CAP_BOUND_SHARE:.0%} of instances, so its 'fixed point' is the cap; shown, left out of "
            "claim 6."]
    return out + [""]


def regime_section(tables: dict[str, list[list[str]]]) -> list[str]:
    """'Regimes by measured rho' (orchestrator.report.regimes): one table per task."""
    out = ["## Regimes by measured rho", "", regimes.INTRO, ""]
    if not tables:
        return out + ["No trial has a measured rho.", ""]
    for task, body in tables.items():
        out += [f"### {task}", "", md_table(regimes.HEADER, body), ""]
    return out


def render_markdown(frame: pd.DataFrame, statuses: pd.DataFrame, missing: list[str], table: pd.DataFrame,
                    figures: dict[str, list[Path]], analysis: claims.Analysis, min_id_acc: float,
                    notes: list[str] | None = None, regime_bodies: dict | None = None) -> str:
    info = provenance(frame)
    counts = statuses["status"].value_counts()
    verdicts = analysis.verdicts
    out = [f"# Sweep report: {info['sweep']}", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items() if k != "sweep"]
    out += [f"- **competence gate**: a trial is *learned* when its in-distribution exact accuracy is >= "
            f"{min_id_acc:g} (`report.min_id_acc`); {int(frame.drop_duplicates('trial_id')['learned'].sum())} of "
            f"{frame['trial_id'].nunique()} trials learned"]
    out += [f"- **halting protocols**: {', '.join(analysis.per_protocol) or '-'}"
            + (" (one: the halting the trials were trained and evaluated with)"
               if list(analysis.per_protocol) == [claims.TRAINED] else
               "; claims are judged per protocol, learned = in-distribution accuracy under 'trained'")]
    out += [f"- **note**: {n}" for n in notes or []]
    out += ["- **every number below** is also in `estimates.parquet` beside this report"]
    out += ["", "## Headline figures beside the published ones", "", published.HEADLINE_RULE,
            "", md_table(*published.headline_table(table, _fmt_learned)), ""]
    out += ["## Claim verdicts", "", md_table(*verdict_rows(verdicts)), "",
            f"Rule: {claims.RULE}. Intervals: {bootstrap.LEVEL:.0%} t-intervals on seed means (accuracies with a "
            f"binomial SE floor), Clopper-Pearson for P(learned), Fisher z for rank correlations across trials; printed "
            f"to the interval's precision. Rules in `orchestrator/report/claims.py` and docs/statistics.md. Constants: "
            + thresholds_text() + ".", ""]
    out += ["## Claims as the papers state them, and the evidence", ""] + claim_sections(verdicts)
    out += analysis_sections(analysis)
    out += regime_section(regime_bodies or {})
    out += ["## Trials by status", "",
            md_table(["status", "trials"], [[s, str(int(counts.get(s, 0)))] for s in STATUSES]
                     + [[s, str(int(n))] for s, n in counts.items() if s not in STATUSES]
                     + [["total", str(len(statuses))]]), ""]
    out += ["## Missing or not ok", ""]
    out += [f"- {line}" for line in missing] if missing else ["Nothing missing: every trial is ok and has every split."]
    out += ["", "## Exact accuracy per variant and split", "",
            "Split columns: mean over *learned* trials [95% t-interval on seed means]; below 3 learned seeds no "
            "interval, n and the seed values instead; `-` = no learned trial. `learned k/n`: learned seeds and "
            "P(learned) [95% Clopper-Pearson]; `rho at z*`: measured spectral radius of dF/dz, mean over learned "
            "trials; `id, all trials`: in-distribution accuracy of every ok trial.", ""]
    if frame["input_derivative"].isna().all():
        out[-2] += (" This table predates schema 2: its rho was measured at the probe's rest state, not at "
                    "the solver's z*.")
    for task in table["task"].drop_duplicates():
        out += [f"### {task}", "", md_table(*ood_display(table, task, measured_rho(frame, task))), ""]
        out += ["Halting per split (every ok trial): share of instances converged (r < tol) / cycled / at the "
                "cap (/ stalled: halted below the cap otherwise), median iterations of the converged instances "
                "(`-`: none known), loop cap.", "", md_table(*iteration_display(frame, task)), ""]
        out += [f"![{p.stem}]({p.name})" for p in figures.get(task, [])] + [""]
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


def report_settings(sweep_dir: SweepPath) -> ReportSpec:
    """The ``report`` section of the spec.yaml the sweep was run with (defaults when absent)."""
    path = SweepDir.of(sweep_dir).spec_copy
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


def build_report(sweep_dir: SweepPath, *, console: Console | None = None, min_id_acc: float | None = None) -> Path:
    """Write ``sweep_dir/report.md`` and its PNG figures from the sweep's results; print the
    summary tables with rich; return the report's path. ``min_id_acc`` overrides the spec's
    ``report.min_id_acc`` (raises SpecError when spec.yaml's report section is invalid)."""
    layout = SweepDir.of(sweep_dir)
    sweep_dir = layout.root
    console = console or Console()
    gate = report_settings(layout).min_id_acc if min_id_acc is None else float(min_id_acc)
    try:  # every halting protocol's rows (a store that predates protocols has only the trials' own)
        df = load_results(sweep_dir, halting=None)
    except TypeError:
        df = load_results(sweep_dir)
    report_path = layout.report
    if df.empty:
        _write_atomic(report_path, f"# Sweep report: {sweep_dir.name}\n\nThe results table has no rows yet.\n")
        console.print(f"[yellow]{sweep_dir}: the results table has no rows yet[/yellow]")
        return report_path
    frame = claims.with_halting(prepare(df, gate))
    if frame["halting"].nunique() > 1:  # every protocol's tables show the same learned models
        frame = claims.trained_competence(frame, gate)
    frame, notes = recompute_sudoku_depth(frame)
    statuses = trial_statuses(frame)
    missing = missing_items(frame, statuses, expected_cells(layout))
    table = ood_table(frame)
    own = claims.with_halting(frame)
    own = own[own["halting"] == claims.TRAINED] if (own["halting"] == claims.TRAINED).any() else own
    figures = {task: plot_task(own, task, layout) for task in sorted(own["task_label"].unique())}
    analysis = claims.analyse(frame, gate=gate)
    regime_bodies, regime_estimates = regimes.regime_tables(frame)
    if regime_estimates:
        analysis = dataclasses.replace(analysis, estimates=pd.concat(
            [analysis.estimates, pd.DataFrame.from_records(regime_estimates, columns=list(ESTIMATE_COLUMNS))],
            ignore_index=True))
    _write_atomic(report_path, render_markdown(frame, statuses, missing, table, figures, analysis, gate, notes,
                                               regime_bodies))
    write_estimates(layout.estimates, table, analysis)
    print_summary(console, frame, statuses, missing, table, analysis.verdicts)
    console.print(f"report: {report_path}")
    return report_path

ESTIMATE_COLUMNS = claims.Recorder.COLUMNS
"""kind, task, variant, split, halting, n_seeds, n_learned, estimate, lo, hi, method, p."""


def estimates_frame(table: pd.DataFrame, analysis: claims.Analysis) -> pd.DataFrame:
    """Every number the report prints, one row each: the accuracy table ('accuracy': learned
    trials, t-interval; 'accuracy_all': every ok trial, the intention-to-treat accuracy) and the
    claims' estimates (``claims.Recorder``: differences, reachability, rho, P(learned), Fisher tests,
    overthinking, rank correlations, claim parts). Missing intervals are NaN; p is NaN where no
    test applies."""
    rows = []
    for r in table.to_dict("records"):
        base = {"task": r["task"], "variant": r["variant"], "split": r["split"], "halting": r["halting"],
                "n_seeds": int(r["n_seeds"]), "n_learned": int(r["n_learned"]), "p": math.nan}
        rows.append({**base, "kind": "accuracy", "estimate": r["learned_mean"], "lo": r["learned_low"],
                     "hi": r["learned_high"], "method": r["learned_method"] or "no learned trial"})
        rows.append({**base, "kind": "accuracy_all", "estimate": r["all_mean"], "lo": r["all_low"],
                     "hi": r["all_high"], "method": "t on seed means (binomial SE floor), every ok trial"})
    out = pd.concat([pd.DataFrame.from_records(rows, columns=list(ESTIMATE_COLUMNS)), analysis.estimates],
                    ignore_index=True)
    out = out.astype({"n_seeds": "int64", "n_learned": "Int64", "estimate": "float64", "lo": "float64",
                      "hi": "float64", "p": "float64"})
    return out[list(ESTIMATE_COLUMNS)]


def write_estimates(path: Path, table: pd.DataFrame, analysis: claims.Analysis) -> Path:
    """Write ``estimates_frame`` to ``path`` atomically (Parquet, queryable like results.parquet)."""
    tmp = path.with_name(f".{path.name}.tmp")
    estimates_frame(table, analysis).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def recompute_sudoku_depth(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Sudoku rows keyed by the search ``rating`` (tables written before propagation depth was the
    key): regenerate each trial's evaluation puzzles (deterministic in the trial's seed, through the
    task cache), check that their ratings equal the stored ones instance by instance, and key the
    rows by propagation depth instead. Rows whose puzzles do not match keep the rating, and a note
    says so."""
    rows = frame[(frame["task"] == "sudoku") & (frame["difficulty_key"] == "rating") & frame["status_ok"]]
    if rows.empty:
        return frame, []
    from fpr_core.tasks import get_task, make_splits
    from fpr_core.tasks.sudoku import propagation_depth

    out = frame.copy()
    matched, failed = 0, 0
    for _, trial in rows.groupby("trial_id", sort=True):
        first = trial.iloc[0]
        try:
            params = json.loads(first["task_params"] or "{}")
            task = get_task("sudoku", **params)
            sizes = tuple(int(z) for z in sorted(trial.loc[trial["split"] != "id", "size"].dropna().unique()))
            splits = make_splits(task, int(first["train_size"]), sizes, n_train=int(first["cfg.train.n_train"]),
                                 n_eval=int(first["cfg.eval.n_eval"]), seed=int(first["seed"]))
        except (ValueError, KeyError, TypeError):  # a row without the config to regenerate from
            failed += len(trial)
            continue
        for index, row in trial.iterrows():
            data = splits.get(row["split"])
            stored = row["instance_difficulty"]
            if data is None or stored is None or len(stored) != len(data.meta["rating"]) \
                    or not np.array_equal(np.asarray(stored, float), data.meta["rating"].astype(float)):
                failed += 1
                continue
            depth = propagation_depth(data.inputs.reshape(len(stored), -1), data.targets.reshape(len(stored), -1) + 1,
                                      task.box)
            out.at[index, "instance_difficulty"] = depth.astype(np.float32)
            out.at[index, "difficulty_key"] = "propagation_depth"
            matched += 1
    note = (f"sudoku: these rows store the search `rating` as difficulty (0 for most puzzles); the evaluation "
            f"puzzles were regenerated from each trial's seed and {matched} row(s) matched the stored ratings "
            f"instance by instance, so claim 5 reads their propagation depth (rounds of naked singles to solve)")
    if failed:
        note += f"; {failed} row(s) did not match and keep the rating"
    return out, [note]
