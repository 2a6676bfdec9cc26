"""MLflow charts that compare (issue 32 item 6), against a real SQLite MLflow store: every trial
run has its own colour (the ``mlflow.runColor`` tag the UI reads), series say in their names what
their step is, no metric is a lone dot in a line chart, and the parent run holds no trial keys."""
from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient

from orchestrator.store import store_address, tracking

VARIANTS = ["recall=none,outer_norm=none", "recall=none,outer_norm=rms", "recall=standard,outer_norm=rms"]
SEEDS = [0, 1]


def _rows(variant: str, acc: float) -> list[dict]:
    common = {"variant": variant, "task": "prefix_sums", "status": "ok", "train_seconds": 2.0, "train_steps": 40,
              "final_loss": 0.2}
    return [dict(common, split="id", size=16, exact_acc=acc, iters_mean=6.0, reachability=1.0,
                 budget_iters=[1, 4, 16], budget_acc=[0.0, acc / 2, acc]),
            dict(common, split="ood_32", size=32, exact_acc=acc / 2, iters_mean=11.0, reachability=0.9),
            dict(common, split="ood_64", size=64, exact_acc=acc / 4, iters_mean=20.0, reachability=0.7)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 3-variant x 2-seed sweep logged as the driver logs it: colours named up front, training
    curves, final rows, the parent's summary."""
    sweep_dir = tmp_path_factory.mktemp("charts")
    uri = store_address.default_tracking_uri(sweep_dir)
    tr = tracking.SweepTracker(uri, "charts", sweep_dir, {"spec_hash": "h"})
    tr.set_run_colours(VARIANTS, SEEDS)
    for i, variant in enumerate(VARIANTS):
        for seed in SEEDS:
            tid = f"t{i}{seed}"
            run = tr.trial_run(tid, f"prefix_sums/{variant}/s{seed}/{tid}",
                               {"task": "prefix_sums", "variant": variant, "seed": str(seed)}, {"seed": seed})
            for step in (10, 20, 30, 40):
                tr.log_metrics(run, {"train/loss": 1.0 / step}, step)
            tr.log_final(run, _rows(variant, 0.9 - 0.2 * i), {}, {"seed": seed}, step=40)
            tr.end_trial(tid, "ok")
    tr.log_sweep_summary({"trials/total": 6.0, "trials/ok": 6.0, "best_ood_acc/prefix_sums": 0.225},
                         {"best_variant/prefix_sums": VARIANTS[0]})
    assert tr.end_sweep("FINISHED") is None
    client = MlflowClient(uri)
    parent = client.get_run(tr.parent_id)
    return client, parent, tr.child_runs()


def test_every_trial_run_has_its_own_colour(sweep):
    _client, _parent, children = sweep
    colours = {r.data.tags["trial_id"]: r.data.tags.get(tracking.RUN_COLOR_TAG) for r in children}
    assert len(colours) == 6 and all(re.fullmatch(r"#[0-9a-f]{6}", c or "") for c in colours.values()), colours
    assert len(set(colours.values())) == 6
    assert colours["t00"] == tracking.PALETTE[0] and colours["t20"] == tracking.PALETTE[2]  # hue per variant, spec order


def _chart_kind(client: MlflowClient, runs: list, key: str) -> str:
    """What MLflow 3's UI draws for ``key`` by default: a line chart when any run's latest value is
    at a step >= 1, else bars (one per run)."""
    return "line" if any(key in r.data.metrics and client.get_metric_history(r.info.run_id, key)[-1].step >= 1
                         for r in runs) else "bar"


def test_no_metric_is_a_lone_dot_in_a_line_chart(sweep):
    client, parent, children = sweep
    runs = [parent, *children]
    keys = sorted({k for r in runs for k in r.data.metrics})
    assert {"acc/ood_64", "train_seconds", "by_size/exact_acc", "train/loss",
            "by_loop_budget/exact_acc/id"} <= set(keys)
    for key in keys:
        if _chart_kind(client, runs, key) == "line":
            for r in runs:
                points = client.get_metric_history(r.info.run_id, key) if key in r.data.metrics else []
                assert len(points) != 1, (key, r.data.tags.get("trial_id"), points)
    assert _chart_kind(client, runs, "acc/ood_64") == "bar" and _chart_kind(client, runs, "by_size/exact_acc") == "line"


def test_series_name_what_their_step_is(sweep):
    client, _parent, children = sweep
    run = next(r for r in children if r.data.tags["trial_id"] == "t00")
    by_size = client.get_metric_history(run.info.run_id, "by_size/exact_acc")
    assert sorted((m.step, round(m.value, 3)) for m in by_size) == [(16, 0.9), (32, 0.45), (64, 0.225)]
    budget = client.get_metric_history(run.info.run_id, "by_loop_budget/exact_acc/id")
    assert sorted(m.step for m in budget) == [1, 4, 16]
    assert not any(k.startswith(("ood/", "ttc/")) for k in run.data.metrics)  # the old names, whose x was 'Step'


def test_the_parent_run_holds_no_trial_keys(sweep):
    _client, parent, children = sweep
    child_metrics = {k for r in children for k in r.data.metrics}
    child_params = {k for r in children for k in r.data.params}
    assert not set(parent.data.metrics) & child_metrics, set(parent.data.metrics) & child_metrics
    assert not set(parent.data.params) & child_params
    assert not {"trial_id", "variant", "seed", tracking.RUN_COLOR_TAG} & set(parent.data.tags)
    assert parent.data.metrics["trials/ok"] == 6.0
