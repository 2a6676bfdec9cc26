"""Trials grouped by the spectral regime they *trained into*, not the one their sigma label asked for.

A sigma label sets the step's gain at initialisation (fpr_core.model.spectral); after training the
measured rho(dF/dz) at the verified in-distribution fixed points need not follow it (the audit:
standard + rms at sigma 0.5 / 1 / 2 measured 0.52 / 0.26 / 0.37). The 'id' row's
``spectral_radius`` holds that measurement for every ok trial, so the report can group by it.

Bins use the label's own rule (``frame.spectral_regime``): |rho - 1| <= CRITICAL_TOL is critical.
"""
from __future__ import annotations

import math

import pandas as pd

from orchestrator.report import bootstrap
from orchestrator.report.frame import is_ood, spectral_regime, split_sort_key

UNMEASURED = "unmeasured"


def measured_regime(rho: float) -> str:
    """'contractive' / 'critical' / 'expansive' for a measured rho; 'unmeasured' for NaN."""
    return UNMEASURED if rho is None or not math.isfinite(rho) else spectral_regime(float(rho))


def trial_regimes(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ok trial under its own halting: task_label, trial_id, arm (the variant without its
    sigma), the label regime, the measured rho and its regime, learned, and the correct count and
    instance count on its largest OOD split."""
    ok = frame[frame["status_ok"]]
    if "halting" in ok:
        ok = ok[ok["halting"].fillna("trained") == "trained"]
    out = []
    for (task, trial), rows in ok.groupby(["task_label", "trial_id"], sort=True):
        ident = rows[rows["split"] == "id"]
        if ident.empty:
            continue
        first = ident.iloc[0]
        ood = rows[is_ood(rows["split"])]
        largest = (max(ood.itertuples(), key=lambda r: split_sort_key(r.split, r.size)) if len(ood) else None)
        rho = float(first["spectral_radius"]) if pd.notna(first["spectral_radius"]) else math.nan
        out.append({"task_label": task, "trial_id": trial, "arm": arm_label(first["variant_label"]),
                    "label_regime": first["regime"], "rho": rho,
                    "measured_regime": measured_regime(rho), "learned": bool(first["learned"]),
                    "largest_split": None if largest is None else largest.split,
                    "largest_correct": math.nan if largest is None else round(largest.exact_acc * largest.n),
                    "largest_n": 0 if largest is None else int(largest.n)})
    return pd.DataFrame(out)


def arm_label(variant_label: str) -> str:
    """The variant without its sigma label: 'recall=standard, outer_norm=rms, mixer=conv'."""
    return ", ".join(p for p in str(variant_label).split(", ") if not p.startswith("spectral=")) or "all"


INTRO = ("Trials grouped by rho(dF/dz) measured at their verified in-distribution fixed points after training "
         "(the 'id' row's `spectral_radius`), beside the regime their sigma label set at initialisation. "
         "`largest OOD`: exact accuracy on each task's largest OOD split over the learned trials, mean "
         "[95% t-interval] (none below 3 trials).")
HEADER = ["arm", "measured regime", "median rho", "label regimes (trials)", "learned k/n", "largest OOD split",
          "largest OOD (learned)"]


def regime_tables(frame: pd.DataFrame) -> tuple[dict[str, list[list[str]]], list[dict]]:
    """Per task, the body of a HEADER table (one line per arm x measured regime), and
    the estimates rows behind it (kind 'measured_regime_acc')."""
    trials = trial_regimes(frame)
    if trials.empty or trials["rho"].isna().all():
        return {}, []
    tables, records = {}, []
    for task, rows in trials.groupby("task_label", sort=True):
        body = tables.setdefault(task, [])
        for (arm, regime), g in rows.groupby(["arm", "measured_regime"], sort=True):
            learned = g[g["learned"] & (g["largest_n"] > 0)]
            est = bootstrap.accuracy_t(learned[["largest_correct"]].to_numpy(float),
                                       learned[["largest_n"]].to_numpy(float))
            labels = ", ".join(f"{k} {v}" for k, v in g["label_regime"].value_counts().items())
            split = learned["largest_split"].dropna().iloc[0] if learned["largest_split"].notna().any() else "-"
            body.append([arm, regime, f"{g['rho'].median():.2f}" if g["rho"].notna().any() else "-",
                         labels, f"{len(learned)}/{len(g)}", split, est.text(".3f") if est.n_seeds else "-"])
            records.append({"kind": "measured_regime_acc", "task": task, "variant": f"{arm}, measured={regime}",
                            "split": split, "halting": "trained", "n_seeds": int(len(g)),
                            "n_learned": int(len(learned)), "estimate": float(est.effect), "lo": float(est.low),
                            "hi": float(est.high), "method": est.method, "p": math.nan})
    return tables, records
