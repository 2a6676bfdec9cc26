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
    # only the columns read here: the per-instance arrays make every row copy slow at 10^3+ trials
    ok = ok[["task_label", "trial_id", "split", "size", "exact_acc", "n", "spectral_radius", "variant_label",
             "regime", "learned"]]
    ident = ok[ok["split"] == "id"].drop_duplicates(["task_label", "trial_id"]).sort_values(["task_label", "trial_id"])
    ood = ok[is_ood(ok["split"])]
    ood = ood.assign(_key=[split_sort_key(s, z) for s, z in zip(ood["split"], ood["size"])])
    largest = ood.sort_values("_key").groupby(["task_label", "trial_id"]).tail(1).set_index(["task_label", "trial_id"])
    out = []
    for row in ident.itertuples(index=False):
        big = largest.loc[(row.task_label, row.trial_id)] if (row.task_label, row.trial_id) in largest.index else None
        rho = float(row.spectral_radius) if pd.notna(row.spectral_radius) else math.nan
        out.append({"task_label": row.task_label, "trial_id": row.trial_id, "arm": arm_label(row.variant_label),
                    "label_regime": row.regime, "rho": rho,
                    "measured_regime": measured_regime(rho), "learned": bool(row.learned),
                    "largest_split": None if big is None else big["split"],
                    "largest_correct": math.nan if big is None else round(big["exact_acc"] * big["n"]),
                    "largest_n": 0 if big is None else int(big["n"])})
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
