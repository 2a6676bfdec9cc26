"""The sweep report on synthetic results tables with the real schema: each claim's verdict follows
the data (supported, then contradicted when the data is flipped), missing data gives inconclusive,
and a partial sweep still yields report.md, figures and a list of what is missing."""
from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from orchestrator.report.claims import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, compute_verdicts, spearman)
from orchestrator.report.build import build_report, ood_table
from orchestrator.report.frame import load_results, spectral_regime
from orchestrator.store.schema import config_columns, results_schema

SIZES = {"prefix_sums": (32, (64, 128, 256)), "sudoku": (40, (50, 60))}
"""task -> (train size, OOD sizes)."""


def _ood_acc(task: str, recall: str, norm: str, size: int, train: int) -> float:
    """Recall beats none; internal a bit above standard with outer norm; decays with size."""
    base = {"none": 0.2, "standard": 0.7, "internal": 0.7}[recall]
    if recall == "internal" and norm != "none":
        base += 0.1
    return base - 0.05 * math.log2(size / train)


def make_rows(tasks=("prefix_sums", "sudoku"), recalls=("none", "standard", "internal"),
              norms=("none", "rms"), spectrals=("0.5", "2.0", None), seeds=(0, 1),
              acc=_ood_acc, n_inst=16) -> list[dict]:
    """One row per (trial, split) following the schema, with stability axes as the papers claim:
    recall + outer norm reachable (0.97) and contractive (rho 0.8), no recall input-independent."""
    rows = []
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for i, (task, recall, norm, spectral, seed) in enumerate(
            itertools.product(tasks, recalls, norms, spectrals, seeds)):
        train, ood = SIZES[task]
        rng = np.random.default_rng(i)
        stable = recall != "none" and norm != "none"
        cfg = {c: None for c in config_columns()}
        cfg.update({"cfg.model.recall": recall, "cfg.model.outer_norm": norm, "cfg.model.spectral": spectral,
                    "cfg.train.seed": str(seed), "cfg.model.dim": "64", "cfg.train.lr": "0.001"})
        trial_id = f"t{i:03d}"
        for split, size in [("id", train)] + [(f"ood_{s}", s) for s in ood]:
            difficulty = size + rng.integers(0, 8, n_inst)
            iters = 0.5 * difficulty + rng.normal(0, 1, n_inst)
            exact = train and (0.95 if split == "id" else acc(task, recall, norm, size, train))
            rows.append({
                "sweep": "synthetic", "trial_id": trial_id, "spec_hash": "abc", "variant": f"{recall},{norm}",
                "task": task, "task_params": "{}", "split": split, "size": size, "train_size": train,
                "n": n_inst, "exact_acc": float(np.clip(exact + rng.normal(0, 0.005), 0, 1)),
                "token_acc": 0.99, "iters_mean": float(iters.mean()), "iters_p50": float(np.median(iters)),
                "iters_p95": float(np.quantile(iters, 0.95)), "eval_cap": 4 * size,
                "reachability": 0.97 if stable else 0.6, "cycled_frac": 0.0, "residual_median": 1e-3,
                "input_dependence": (0.5 if recall != "none" else 0.002) * (1 + rng.normal(0, 0.02)),
                "fixed_point_spread": 0.1, "path_independence": 0.0,
                "spectral_radius": 0.8 if stable else 1.3,
                "instance_iters": iters.astype(np.float32).tolist(),
                "instance_difficulty": difficulty.astype(np.float32).tolist(),
                "instance_correct": [True] * n_inst, "difficulty_key": "length",
                "train_seconds": 30.0, "eval_seconds": 2.0, "train_steps": 100, "final_loss": 0.1,
                "status": "ok", "error": None, "seed": seed, "git_commit": "deadbeef",
                "versions": "{}", "hostname": "h", "node_id": "n", "device": "cpu",
                "finished_at": start + dt.timedelta(minutes=i), **cfg})
    return rows


def write_table(tmp_path, rows, name="synthetic"):
    sweep_dir = tmp_path / name
    sweep_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=results_schema()), sweep_dir / "results.parquet")
    return sweep_dir


def verdicts_of(tmp_path, rows) -> dict[int, object]:
    df = load_results(write_table(tmp_path, rows))
    return {v.claim_id: v for v in compute_verdicts(df)}


def test_spearman_matches_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spectral_regimes():
    assert [spectral_regime(s) for s in (0.5, 1.0, 1.02, 2.0, math.nan)] == [
        "contractive", "critical", "critical", "expansive", "unnormalised"]


def test_every_claim_supported_by_data_that_supports_it(tmp_path):
    verdicts = verdicts_of(tmp_path, make_rows())
    assert {k: v.verdict for k, v in verdicts.items()} == {k: SUPPORTED for k in range(1, 6)}
    assert set(verdicts[2].parts) == {f"{t}/{r}" for t in SIZES for r in ("contractive", "expansive", "unnormalised")}
    assert "recall" in verdicts[1].evidence and verdicts[1].seed_spread < 0.05


def test_swapping_recall_and_no_recall_accuracy_contradicts_claim_1(tmp_path):
    swapped = {"none": "standard", "standard": "none", "internal": "none"}
    flipped = lambda task, recall, norm, size, train: _ood_acc(task, swapped[recall], norm, size, train)  # noqa: E731
    assert verdicts_of(tmp_path, make_rows(acc=flipped))[1].verdict == CONTRADICTED


def test_equal_accuracy_leaves_claim_1_inconclusive(tmp_path):
    same = lambda task, recall, norm, size, train: 0.5  # noqa: E731
    assert verdicts_of(tmp_path, make_rows(acc=same))[1].verdict == INCONCLUSIVE


def test_unstable_recall_norm_contradicts_claim_2_and_input_dependent_none_claim_3(tmp_path):
    rows = make_rows()
    for row in rows:
        if row["cfg.model.recall"] != "none" and row["cfg.model.outer_norm"] != "none" \
                and row["cfg.model.spectral"] == "2.0":
            row["reachability"], row["spectral_radius"] = 0.4, 1.6
        if row["cfg.model.recall"] == "none":
            row["input_dependence"] = 0.45
    verdicts = verdicts_of(tmp_path, rows)
    assert verdicts[2].verdict == CONTRADICTED
    assert verdicts[2].parts["sudoku/expansive"] == CONTRADICTED
    assert verdicts[2].parts["sudoku/contractive"] == SUPPORTED
    assert verdicts[3].verdict == CONTRADICTED


def test_standard_beating_internal_on_sudoku_contradicts_claim_4(tmp_path):
    def internal_worse(task, recall, norm, size, train):
        return _ood_acc(task, recall, norm, size, train) - (0.3 if recall == "internal" else 0.0)
    assert verdicts_of(tmp_path, make_rows(acc=internal_worse))[4].verdict == CONTRADICTED


def test_claim_4_inconclusive_without_sudoku(tmp_path):
    verdict = verdicts_of(tmp_path, make_rows(tasks=("prefix_sums",)))[4]
    assert verdict.verdict == INCONCLUSIVE and "sudoku" in verdict.reason


def test_iterations_falling_with_difficulty_contradicts_claim_5(tmp_path):
    rows = make_rows()
    for row in rows:
        row["instance_iters"] = [1000.0 - d for d in row["instance_difficulty"]]
        row["iters_mean"] = 1000.0 - row["size"]
    assert verdicts_of(tmp_path, rows)[5].verdict == CONTRADICTED


def test_one_seed_makes_comparisons_inconclusive_but_thresholds_still_judge(tmp_path):
    verdicts = verdicts_of(tmp_path, make_rows(seeds=(0,)))
    assert verdicts[1].verdict == INCONCLUSIVE and "0/12 matched pair(s)" in verdicts[1].evidence
    assert verdicts[2].verdict == SUPPORTED and math.isnan(verdicts[2].seed_spread)


def test_ood_table_means_and_stds_over_seeds(tmp_path):
    table = ood_table(load_results(write_table(tmp_path, make_rows(seeds=(0, 1, 2)))))
    cell = table[(table["task"] == "prefix_sums") & (table["split"] == "ood_128")
                 & (table["recall"] == "standard") & (table["outer_norm"] == "rms")
                 & (table["regime"] == "contractive")].iloc[0]
    assert cell["n_seeds"] == 3
    assert cell["exact_acc_mean"] == pytest.approx(0.7 - 0.05 * 2, abs=0.02)
    assert 0 < cell["exact_acc_std"] < 0.02
    splits = table[(table["variant"] == cell["variant"]) & (table["task"] == "prefix_sums")]["split"].tolist()
    assert splits == ["id", "ood_64", "ood_128", "ood_256"]


def test_report_files_and_partial_sweep(tmp_path):
    rows = make_rows(tasks=("prefix_sums", "sudoku"), spectrals=("0.5",))
    failed = rows[0]["trial_id"]
    rows = [r for r in rows if r["trial_id"] != failed or r["split"] == "id"]
    rows[0].update(status="failed", error="RuntimeError: loss is nan\ntraceback ...", exact_acc=None)
    dropped_split = [r for r in rows if r["trial_id"] == "t005" and r["split"] == "ood_256"]
    rows = [r for r in rows if r not in dropped_split]
    rows = [r for r in rows if not (r["trial_id"] == "t003")]  # a (variant, seed) cell without rows
    sweep_dir = write_table(tmp_path, rows)
    console = Console(record=True, width=200)
    report = build_report(sweep_dir, console=console)
    text = report.read_text()
    assert report == sweep_dir / "report.md"
    assert f"trial {failed}" in text and "status failed: RuntimeError: loss is nan" in text
    assert "trial t005" in text and "ood_256" in text
    assert "no trial for seed(s) 1" in text
    assert "| failed | 1 |" in text and "| ok |" in text
    assert "deadbeef" in text and "wall time" in text
    pngs = sorted(p.name for p in sweep_dir.glob("*.png"))
    assert len(pngs) == 6 and all((sweep_dir / p).stat().st_size > 1000 for p in pngs)
    assert all(f"]({p})" in text for p in pngs)
    assert "Claim verdicts" in text and "claim verdicts" in console.export_text()
    assert not list(sweep_dir.glob(".*.tmp"))


def test_report_with_a_single_variant_and_seed(tmp_path):
    rows = make_rows(tasks=("prefix_sums",), recalls=("standard",), norms=("rms",), spectrals=(None,), seeds=(0,))
    report = build_report(write_table(tmp_path, rows), console=Console(record=True))
    text = report.read_text()
    assert "Nothing missing" in text
    verdicts = compute_verdicts(load_results(report.parent))
    assert verdicts[0].verdict == INCONCLUSIVE and "no data" in verdicts[0].reason
    assert len(list(report.parent.glob("*.png"))) == 3


def test_running_sweep_reads_per_trial_files_and_labels_task_params(tmp_path):
    sweep_dir = tmp_path / "running"
    (sweep_dir / "trials").mkdir(parents=True)
    rows = make_rows(tasks=("prefix_sums",), recalls=("none", "standard"), norms=("rms",), spectrals=(None,))
    for row in rows:
        row["task_params"] = '{"group": "S5"}' if row["seed"] == 0 else '{"group": "A5"}'
    for trial_id in sorted({r["trial_id"] for r in rows}):
        mine = [r for r in rows if r["trial_id"] == trial_id]
        pq.write_table(pa.Table.from_pylist(mine, schema=results_schema()), sweep_dir / "trials" / f"{trial_id}.parquet")
    (sweep_dir / "trials" / ".t999.parquet.tmp").write_bytes(b"half written")
    df = load_results(sweep_dir)
    assert len(df) == len(rows)
    assert set(ood_table(df)["task"]) == {"prefix_sums[group=A5]", "prefix_sums[group=S5]"}


def test_sweep_where_every_trial_failed_still_reports(tmp_path):
    rows = make_rows(tasks=("sudoku",), spectrals=(None,))
    for row in rows:
        row.update(status="failed", error="CUDA out of memory", exact_acc=None, reachability=None,
                   instance_iters=None, instance_difficulty=None, iters_mean=None)
    report = build_report(write_table(tmp_path, rows), console=Console(record=True))
    text = report.read_text()
    assert "| failed | 12 |" in text and "CUDA out of memory" in text
    verdicts = compute_verdicts(load_results(report.parent))
    assert [v.verdict for v in verdicts] == [INCONCLUSIVE] * 5
    assert not list(report.parent.glob("*.png"))


def test_a_variant_short_of_seeds_drops_out_of_the_comparison_only(tmp_path):
    rows = [r for r in make_rows(tasks=("prefix_sums",)) if r["trial_id"] != "t000"]  # none/none/0.5, seed 0
    verdict = verdicts_of(tmp_path, rows)[1]
    assert verdict.verdict == SUPPORTED and "10/12 matched pair(s)" in verdict.evidence


def test_claim_3_ignores_splits_where_no_fixed_point_was_reached(tmp_path):
    rows = make_rows()
    for row in rows:  # no-recall states that never settle blow the sensitivity ratio up
        if row["cfg.model.recall"] == "none" and row["cfg.model.outer_norm"] == "none":
            row["input_dependence"], row["reachability"] = 1e5, 0.0
    verdicts = verdicts_of(tmp_path, rows)
    assert verdicts[3].verdict == SUPPORTED
    for row in rows:  # ... but a reached, input-dependent no-recall fixed point still contradicts
        if row["cfg.model.recall"] == "none" and row["cfg.model.outer_norm"] == "none":
            row["reachability"] = 0.9
    assert verdicts_of(tmp_path / "reached", rows)[3].verdict == CONTRADICTED
