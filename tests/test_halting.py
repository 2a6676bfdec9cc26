"""Halting protocols evaluated without retraining, and cap-bound splits named (issue 26, items 3-4).

- a protocol is a few named solver settings; 'trained' changes nothing, 'paper' is FPRM's rule,
  'long' lifts the caps; specs may define more, and unknown names are refused with file and field;
- re-evaluating a saved model under 'trained' gives the trial's own rows bit for bit;
- a map that never converges ends at the cap on every instance and its split is cap_bound;
- old rows read as 'trained'; the report reads one protocol per split and never a cap-bound one
  while another protocol is not cap-bound.
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from fpr_core.config import (BUILTIN_HALTING, TRAINED, ConfigError, EvalConfig, ExperimentConfig, HaltingProtocol,
                             SolverConfig)
from fpr_core.evaluate import CAP_BOUND_SHARE, EvalResult, evaluate_split
from fpr_core.experiment import SplitResult, run_experiment
from fpr_core.saved_model import save_experiment_model
from fpr_core.solver import solve
from fpr_core.tasks import get_task
from orchestrator.report.frame import add_capped, claim_rows
from orchestrator.store.rows import evaluated_rows, split_fields

TINY = {"task": {"name": "prefix_sums", "train_size": 8, "ood_sizes": [12]},
        "model": {"dim": 16, "heads": 2},
        "solver": {"train_cap": 6, "eval_cap": 8},
        "grad": {"mode": "truncated", "k": 2},
        "train": {"steps": 10, "batch_size": 16, "n_train": 64, "log_every": 5, "checkpoint_every": 5, "warmup": 2},
        "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2}}


# ---------------------------------------------------------------- protocols as configs

def test_builtin_protocols_change_only_their_settings():
    solver = SolverConfig(tol=0.01, eval_cap=64, eval_cap_law="fixed", detect_cycles=True)
    assert BUILTIN_HALTING[TRAINED].apply(solver) is solver  # the very object: evaluation unchanged
    paper = BUILTIN_HALTING["paper"].apply(solver)
    assert (paper.tol, paper.detect_cycles, paper.eval_cap) == (0.1, False, 64)
    long = BUILTIN_HALTING["long"].apply(solver)
    assert (long.tol, long.detect_cycles, long.eval_cap, long.eval_cap_law) == (0.01, False, 1024, "fixed")
    custom = HaltingProtocol(tol=1e-3, cap_law="linear", cap_scale=2.5).apply(solver)
    assert (custom.tol, custom.eval_cap, custom.eval_cap_law, custom.detect_cycles) == (1e-3, 160, "linear", True)
    assert dataclasses.replace(paper, tol=0.01, detect_cycles=True) == solver  # nothing else moved


@pytest.mark.parametrize("values, message", [
    ({"halting": ["trained", "lng"]}, "eval.halting[1]: unknown protocol 'lng'; expected one of ['trained', 'paper', 'long']"),
    ({"halting": ["long"]}, "expected a list that includes 'trained'"),
    ({"halting": ["trained", "trained"]}, "expected distinct names"),
    ({"protocols": {"paper": {"tol": 0.2}}}, "eval.protocols.paper: a built-in protocol"),
    ({"protocols": {"strict": {"tl": 0.2}}}, "eval.protocols.strict: unknown field(s) ['tl']"),
    ({"protocols": {"strict": {"tol": -1}}}, "eval.protocols.strict.tol: got -1"),
    ({"protocols": {"strict": {"cap_law": "cubic"}}}, "eval.protocols.strict.cap_law: got 'cubic'"),
    ({"protocols": {"Strict!": {}}}, "protocol name 'Strict!'"),
])
def test_bad_protocols_are_refused_naming_the_field(values, message):
    with pytest.raises(ConfigError) as err:
        EvalConfig.from_dict(values)
    assert message in str(err.value)


def test_spec_defines_protocols_and_names_file_and_field(tmp_path):
    from orchestrator.sweep.expand import SweepGrid
    from orchestrator.sweep.spec import SpecError, load_spec

    spec = {"name": "halting", "tasks": [{"name": "prefix_sums", "train_size": 8, "ood_sizes": [12]}],
            "base": {"eval": {"halting": ["trained", "long", "strict"],
                              "protocols": {"strict": {"tol": "1e-3", "cap_scale": 4}}}}}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(spec))
    (cell,) = SweepGrid(load_spec(path)).tasks[0].cells()
    cfg = ExperimentConfig.from_dict({"task": {"name": "prefix_sums"}, **cell.sections})
    assert cfg.eval.halting == ("trained", "long", "strict")
    assert cfg.eval.halting_protocols()["strict"] == HaltingProtocol(tol=1e-3, cap_scale=4)

    spec["base"]["eval"]["halting"] = ["trained", "lnog"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert str(err.value).startswith(f"{bad}: base: eval.halting[1]: unknown protocol 'lnog'; expected one of "
                                     "['trained', 'paper', 'long', 'strict']")


def test_a_trial_without_protocols_keeps_its_id():
    """eval.halting and eval.protocols came after trial ids were pinned: at their defaults they
    stay out of the id, so every committed trial keeps its id; set, they name a new trial."""
    from fpr_core.config import identity_sections

    plain = dataclasses.asdict(EvalConfig())
    listed = dataclasses.asdict(EvalConfig.from_dict({"halting": ["trained"]}))
    assert identity_sections({"eval": plain}) == identity_sections({"eval": listed})
    assert "halting" not in identity_sections({"eval": plain})["eval"]
    longer = dataclasses.asdict(EvalConfig.from_dict({"halting": ["trained", "long"]}))
    assert identity_sections({"eval": longer}) != identity_sections({"eval": plain})


# ---------------------------------------------------------------- cap-bound: a toy map

class ToyLoop(nn.Module):
    """The interface evaluate_split uses (loop_map(inputs).z0, forward(inputs, cap, z0) -> logits,
    trace) around fpr_core's real solver. rotate: F(z) = z turned by 90 degrees in each pair of
    channels (period 4: never converges, never a period-2 cycle); else F(z) = z/2 + x, which
    contracts to the fixed point 2x."""

    def __init__(self, rotate: bool, solver: SolverConfig) -> None:
        super().__init__()
        self.rotate, self.solver_cfg = rotate, solver
        self.embed = nn.Embedding(2, 2)
        self.read = nn.Linear(2, 2)

    def loop_map(self, inputs):
        return SimpleNamespace(z0=self.embed(inputs))

    def forward(self, inputs, *, cap, z0):
        x = self.embed(inputs)  # (B, T, 2)
        if self.rotate:
            def f(z, idx):
                return torch.stack([-z[..., 1], z[..., 0]], -1)
        else:
            def f(z, idx):
                return 0.5 * z + x[idx]
        z, trace = solve(f, z0, self.solver_cfg, cap, train=False)
        return SimpleNamespace(logits=self.read(z), trace=trace)


@pytest.mark.parametrize("detect_cycles", [True, False])
def test_a_map_that_never_converges_is_cap_bound(detect_cycles):
    task = get_task("prefix_sums")
    data = task.generate(24, 8, seed=1)
    cfg = EvalConfig(batch_size=8, diagnostics=False)
    torch.manual_seed(0)
    solver = SolverConfig(eval_cap=16, detect_cycles=detect_cycles)
    never = evaluate_split(ToyLoop(True, solver), task, data, cap=16, cfg=cfg, device="cpu")
    assert never.metrics["capped_share"] == 1.0 and never.metrics["reachability"] == 0.0
    assert (never.instance_iters == 16).all() and not never.instance_cycled.any()
    row = split_fields(SplitResult("id", 8, never))
    assert row["capped_share"] == 1.0 and row["cap_bound"] is True

    settles = evaluate_split(ToyLoop(False, solver), task, data, cap=16, cfg=cfg, device="cpu")
    assert settles.metrics["capped_share"] == 0.0 and settles.metrics["reachability"] == 1.0
    row = split_fields(SplitResult("id", 8, settles))
    assert row["capped_share"] == 0.0 and row["cap_bound"] is False and row["halting"] == TRAINED


def test_cap_bound_threshold_is_five_percent():
    assert CAP_BOUND_SHARE == 0.05
    for share, bound in [(0.05, False), (0.0508, True), (0.0, False)]:
        metrics = {"capped_share": share}
        row = split_fields(SplitResult("id", 8, EvalResult(metrics, **_empty_arrays())))
        assert row["cap_bound"] is bound


def _empty_arrays() -> dict:
    return {f.name: np.zeros(0) for f in dataclasses.fields(EvalResult) if f.name != "metrics"}


# ---------------------------------------------------------------- 'trained' re-evaluation is exact

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trial evaluated under trained and long at its end, and its saved model's bytes."""
    cfg = ExperimentConfig.from_dict({**TINY, "eval": {**TINY["eval"], "halting": ["trained", "long"]}})
    result = run_experiment(cfg, device="cpu")
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_experiment_model(path, result, cfg.to_dict())
    return cfg, result, path.read_bytes()


def test_spec_protocols_evaluated_at_the_end_of_the_trial(trained):
    cfg, result, _ = trained
    assert [(s.split, s.halting) for s in result.splits] == [("id", "trained"), ("ood_12", "trained"),
                                                             ("id", "long"), ("ood_12", "long")]
    caps = {(s.split, s.halting): s.metrics["eval_cap"] for s in result.splits}
    assert caps == {("id", "trained"): 8, ("ood_12", "trained"): 12, ("id", "long"): 128, ("ood_12", "long"): 192}
    # the long rows do not disturb the trained ones: the same trial without them gives the same rows
    alone = run_experiment(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, halting=("trained",))),
                           device="cpu")
    assert [_comparable(split_fields(s)) for s in alone.splits] == \
           [_comparable(split_fields(s)) for s in result.splits if s.halting == TRAINED]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "eval_seconds"}


@pytest.mark.parametrize("halting", [TRAINED, "long"])
def test_re_evaluation_reproduces_the_trials_rows_bit_for_bit(trained, halting, monkeypatch):
    from orchestrator.run import reeval, trainable

    monkeypatch.setattr(trainable, "worker_info", lambda: {"hostname": "h", "node_id": None, "versions": "{}"})
    _, result, model_bytes = trained
    protocol = dataclasses.asdict(BUILTIN_HALTING[halting])
    answer = reeval.evaluate_saved_model(model_bytes, ["id", "ood_12"], halting, protocol)
    again = [_comparable(s) for s in answer["splits"]]
    own = [_comparable(split_fields(s)) for s in result.splits if s.halting == halting]
    assert again == own  # every metric, per-instance array and compute curve, float for float
    assert [d["split"] for d in answer["datasets"]] == ["id", "ood_12"]


def test_eval_rows_are_keyed_by_split_and_protocol():
    base = {"trial_id": "t", "status": "ok", "size": 8, "exact_acc": 0.5}
    old = [dict(base, split="id"), dict(base, split="ood_12", size=12)]  # written before protocols: no halting
    new = [{"split": "id", "size": 8, "halting": "long", "exact_acc": 0.9},
           {"split": "id", "size": 8, "halting": "trained", "exact_acc": 0.5}]
    rows = evaluated_rows(old, new, {"hostname": "h"})
    assert [(r["split"], r["halting"], r["exact_acc"]) for r in rows] == [
        ("id", "trained", 0.5), ("ood_12", "trained", 0.5), ("id", "long", 0.9)]


# ---------------------------------------------------------------- the report reads one protocol per split

def _frame(rows):
    df = pd.DataFrame(rows)
    df["status_ok"] = True
    df["learned"] = True
    return df


def test_claim_rows_skip_a_cap_bound_protocol_when_another_is_not():
    rows = []
    for variant in ("standard", "internal"):
        for seed in (0, 1, 2):
            for halting, bound in (("trained", variant == "internal"), ("long", False)):
                rows.append({"task_label": "sudoku", "variant_label": variant, "trial_id": f"{variant}{seed}",
                             "seed": seed, "split": "ood_22", "halting": halting, "cap_bound": bound,
                             "capped_share": 0.9 if bound else 0.0, "n": 256})
            rows.append({"task_label": "sudoku", "variant_label": variant, "trial_id": f"{variant}{seed}",
                         "seed": seed, "split": "id", "halting": "trained", "cap_bound": False,
                         "capped_share": 0.0, "n": 256})
    picked = claim_rows(_frame(rows))
    # 22 blanks: internal is cap-bound under trained, so both arms are read under long (never mixed)
    ood = picked[picked.split == "ood_22"]
    assert set(ood.halting) == {"long"} and len(ood) == 6 and not ood.claim_cap_bound.any()
    assert set(picked[picked.split == "id"].halting) == {"trained"}  # trained preferred where it is free
    # every protocol cap-bound: the preferred one's rows, flagged as deciding nothing
    stuck = _frame([dict(r, cap_bound=True) for r in rows if r["split"] == "ood_22"])
    out = claim_rows(stuck)
    assert set(out.halting) == {"trained"} and out.claim_cap_bound.all()
    # an unlearned trial's cap-bound row does not block a protocol
    unlearned = _frame(rows)
    unlearned.loc[(unlearned.variant_label == "internal") & (unlearned.halting == "trained"), "learned"] = False
    assert set(claim_rows(unlearned).query("split == 'ood_22'").halting) == {"trained"}


def test_rows_without_capped_share_get_it_from_their_instances():
    row = {"instance_iters": [64.0, 64.0, 10.0, 3.0], "eval_cap": 64, "instance_converged": [False, True, True, True],
           "instance_cycled": [False, False, False, False], "cycled_frac": 0.0, "reachability": 0.75,
           "capped_share": None, "cap_bound": None, "halting": "trained"}
    out = add_capped(pd.DataFrame([row]))
    assert out.capped_share.iloc[0] == 0.25 and bool(out.cap_bound.iloc[0])


def test_old_parquet_rows_read_as_trained(tmp_path):
    """A schema-2 trial file (no halting, capped_share, cap_bound columns) reads with halting
    'trained' and capped_share from its instance flags."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.report.frame import load_results
    from orchestrator.store import parquet
    from orchestrator.store.schema import results_schema

    sweep = tmp_path / "old"
    (sweep / "trials").mkdir(parents=True)
    old_fields = [f for f in results_schema() if f.name not in ("halting", "capped_share", "cap_bound")]
    row = {"sweep": "old", "trial_id": "abc", "task": "prefix_sums", "split": "id", "size": 8, "status": "ok",
           "n": 2, "exact_acc": 1.0, "eval_cap": 8, "instance_iters": [8.0, 2.0],
           "instance_converged": [False, True], "instance_cycled": [False, False]}
    table = pa.Table.from_pylist([row], schema=pa.schema(old_fields))
    table = table.replace_schema_metadata({b"fpr_sweep.schema_version": b"2", b"fpr_sweep.trial_id": b"abc"})
    pq.write_table(table, sweep / "trials" / "abc.parquet")
    assert parquet.read_trial(sweep, "abc").column("halting").to_pylist() == ["trained"]
    df = load_results(sweep)
    assert df.halting.tolist() == ["trained"] and df.capped_share.tolist() == [0.5] and bool(df.cap_bound.iloc[0])
    assert load_results(sweep, halting="long").empty and math.isclose(load_results(sweep, None).n.iloc[0], 2)


# ---------------------------------------------------------------- through the product

SAME_METRICS = ["n", "exact_acc", "token_acc", "iters_mean", "iters_p50", "iters_p95", "eval_cap", "reachability",
                "cycled_frac", "residual_median", "capped_share", "cap_bound", "input_derivative", "spectral_radius",
                "instance_iters", "instance_correct", "instance_converged", "instance_cycled", "budget_acc"]


@pytest.mark.slow
def test_eval_halting_through_the_cli(spec_dir, ray_session):
    """A spec's eval.halting rows at the end of the trial; `fpr-sweep eval --halting` adds the
    missing (split, protocol) rows, skips present ones, and a forced 'trained' re-evaluation
    equals the trial's own rows; MLflow keys other protocols apart."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from conftest import TINY_BASE, write_spec
    from orchestrator.cli import app

    runner = CliRunner()
    base = {**TINY_BASE, "eval": {**TINY_BASE["eval"], "halting": ["trained", "paper"]}}
    path = write_spec(spec_dir, name="halting", base=base,
                      tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}])
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    sweep_dir = spec_dir / "results" / "halting"
    first = pd.read_parquet(sweep_dir / "results.parquet")
    assert sorted(zip(first.split, first.halting)) == [("id", "paper"), ("id", "trained"),
                                                      ("ood_16", "paper"), ("ood_16", "trained")]

    out = runner.invoke(app, ["eval", str(sweep_dir), "--halting", "trained,long"])
    assert out.exit_code == 0 and "[1/1" in out.output and "[long]" in out.output, out.output
    df = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(df) == 6 and sorted(df[df.halting == "long"].split) == ["id", "ood_16"]
    assert (df[df.halting == "long"].eval_cap.sort_values().tolist() == [128, 256])  # 8 x 16, then x 16/8
    again = runner.invoke(app, ["eval", str(sweep_dir), "--halting", "long,trained"])
    assert again.exit_code == 0 and "nothing to evaluate" in again.output
    bad = runner.invoke(app, ["eval", str(sweep_dir), "--halting", "lnog"])
    assert bad.exit_code == 2 and "unknown protocol ['lnog']" in bad.output

    forced = runner.invoke(app, ["eval", str(sweep_dir), "--halting", "trained", "--force"])
    assert forced.exit_code == 0, forced.output
    redone = pd.read_parquet(sweep_dir / "results.parquet")
    key = ["split", "halting"]
    before = first[first.halting == "trained"].sort_values(key).reset_index(drop=True)
    after = redone[redone.halting == "trained"].sort_values(key).reset_index(drop=True)
    assert (after.finished_at > before.finished_at).all()
    for column in SAME_METRICS:
        assert before[column].map(_plain).tolist() == after[column].map(_plain).tolist(), column

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("halting").experiment_id])
              if "trial_id" in r.data.tags]
    metrics = run.data.metrics
    trained_16 = after.set_index("split").exact_acc["ood_16"]
    assert metrics["acc/ood_16"] == trained_16
    assert metrics["acc/ood_16/long"] == df[(df.halting == "long") & (df.split == "ood_16")].exact_acc.iloc[0]
    assert "acc/ood_16/paper" in metrics and "by_loop_budget/exact_acc/ood_16/long" in metrics
    assert [s for s, _ in sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                                       "by_size/exact_acc"))] == [8, 8, 16, 16]


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def test_sweep_summary_reads_the_trials_own_halting():
    from orchestrator.store.run_info import sweep_summary

    rows = [{"trial_id": "a", "task": "sudoku", "variant": "v", "status": "ok", "split": "ood_22", "size": 22,
             "exact_acc": 0.3, "halting": "trained"},
            {"trial_id": "a", "task": "sudoku", "variant": "v", "status": "ok", "split": "ood_22", "size": 22,
             "exact_acc": 0.6, "halting": "long"},
            {"trial_id": "b", "task": "sudoku", "variant": "w", "status": "ok", "split": "ood_22", "size": 22,
             "exact_acc": 0.4}]  # a row written before protocols: trained
    metrics, tags = sweep_summary(rows)
    assert metrics["best_ood_acc/sudoku"] == 0.4 and tags["best_variant/sudoku"] == "w (size 22)"
