"""evaluate_split: every results column, verifier-based accuracy, per-instance arrays, cap rule."""
import math

import numpy as np
import pytest
import torch

from fpr_core.config import EvalConfig, GradConfig, ModelConfig, SolverConfig
from fpr_core.evaluate import METRIC_KEYS, PROBE_KEYS, evaluate_split, probe_subset, scaled_eval_cap
from fpr_core.model import LoopedModel
from fpr_core.tasks import get_task

TRAIN_SIZE = 8


@pytest.fixture(scope="module")
def task():
    return get_task("prefix_sums")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, heads=2, conv="1d")
    return LoopedModel(cfg, SolverConfig(eval_cap=10), GradConfig(), grid=False, train_tokens=TRAIN_SIZE)


def test_every_metric_with_sane_ranges(task, model):
    data = task.generate(20, 12, seed=3)
    result = evaluate_split(model, task, data, cap=10, cfg=EvalConfig(batch_size=8, diag_n=6, power_iters=4),
                            device="cpu")
    m = result.metrics
    assert tuple(m) == METRIC_KEYS
    assert m["n"] == 20 and m["eval_cap"] == 10 and m["eval_seconds"] > 0
    for key in ("exact_acc", "token_acc", "reachability", "cycled_frac"):
        assert 0.0 <= m[key] <= 1.0, key
    assert 1 <= m["iters_p50"] <= m["iters_p95"] <= 10 and 1 <= m["iters_mean"] <= 10
    for key in PROBE_KEYS:
        assert math.isfinite(m[key]) and m[key] >= 0, key
    assert result.instance_iters.shape == (20,) and result.instance_iters.dtype == np.float32
    assert result.instance_iters.max() <= 10
    assert np.array_equal(result.instance_difficulty, np.full(20, 12, dtype=np.float32))
    assert result.instance_correct.dtype == bool
    assert m["exact_acc"] == pytest.approx(result.instance_correct.mean())
    assert m["iters_mean"] == pytest.approx(result.instance_iters.mean())
    assert 1 <= len(result.residual_curve) <= 10 and np.isfinite(result.residual_curve).all()


def test_accuracy_agrees_with_direct_argmax(task, model):
    data = task.generate(16, TRAIN_SIZE, seed=4)
    result = evaluate_split(model, task, data, cap=6, cfg=EvalConfig(batch_size=5, diagnostics=False),
                            device="cpu")
    with torch.no_grad():
        pred = model.eval()(torch.as_tensor(data.inputs), cap=6).logits.argmax(-1).numpy()
    assert np.array_equal(result.instance_correct, (pred == data.targets).all(1))
    assert result.metrics["token_acc"] == pytest.approx((pred == data.targets).mean())
    assert all(math.isnan(result.metrics[k]) for k in PROBE_KEYS)


@pytest.mark.parametrize("training", [True, False])
def test_eval_restores_the_callers_mode(task, model, training):
    model.train(training)
    evaluate_split(model, task, task.generate(2, 4, seed=5), cap=2, cfg=EvalConfig(diag_n=2, power_iters=2),
                   device="cpu")
    assert model.training == training


def test_scaled_eval_cap_rule():
    solver = SolverConfig(eval_cap=64, eval_cap_law="linear")
    assert scaled_eval_cap(solver, 32, 32) == 64
    assert scaled_eval_cap(solver, 16, 32) == 64       # never shrinks below eval_cap
    assert scaled_eval_cap(solver, 128, 32) == 256
    assert scaled_eval_cap(solver, 33, 32) == 66       # ceil(64 * 33 / 32)
    assert scaled_eval_cap(SolverConfig(eval_cap=64, eval_cap_law="fixed"), 128, 32) == 64


def test_quadratic_cap_law_covers_the_maze_dead_end_depth():
    """Mazes: 40 at 9x9 becomes 538 at 33x33 and 1720 at 59x59 (dead-end filling needs a mean 162
    and 446 steps there; the linear cap, 147 at 33, is below the mean)."""
    quadratic = SolverConfig(eval_cap=40, eval_cap_law="quadratic")
    assert scaled_eval_cap(quadratic, 33, 9) == 538    # ceil(40 * (33/9)^2)
    assert scaled_eval_cap(quadratic, 59, 9) == 1720
    assert scaled_eval_cap(quadratic, 9, 9) == 40
    assert scaled_eval_cap(SolverConfig(eval_cap=40, eval_cap_law="linear"), 33, 9) == 147


@pytest.mark.parametrize("name, law", [("mazes", "quadratic"), ("prefix_sums", "linear"),
                                       ("state_tracking", "linear"), ("sudoku", "fixed"),
                                       ("chess", "fixed")])
def test_task_cap_law_is_the_default(name, law):
    from fpr_core.tasks import task_class
    assert task_class(name).cap_law == law
    solver = SolverConfig(eval_cap=10)  # eval_cap_law = "task"
    expected = {"quadratic": 40, "linear": 20, "fixed": 10}[law]
    assert scaled_eval_cap(solver, 2 * 9, 9, task_class(name).cap_law) == expected
    assert scaled_eval_cap(SolverConfig(eval_cap=10, eval_cap_law="fixed"), 18, 9, law) == 10


def test_unknown_cap_law_is_a_config_error():
    from fpr_core.config import ConfigError
    with pytest.raises(ConfigError, match="eval_cap_law.*cubic.*quadratic"):
        SolverConfig.from_dict({"eval_cap_law": "cubic"})


def test_compute_curve_matches_direct_solves_and_ends_at_the_exact_accuracy(task, model):
    """Deep Thinking's accuracy per test-time budget: each point is the readout of a solve capped
    at that budget, and the last budget is the cap, where it is the split's exact accuracy."""
    data = task.generate(12, TRAIN_SIZE, seed=6)
    result = evaluate_split(model, task, data, cap=10, cfg=EvalConfig(batch_size=5, diagnostics=False),
                            device="cpu")
    assert result.budget_iters[0] == 1 and result.budget_iters[-1] == 10
    assert np.all(np.diff(result.budget_iters) > 0)
    assert result.budget_acc[-1] == result.metrics["exact_acc"]
    with torch.no_grad():
        direct = [float(np.mean(task.verify(data, model.eval()(torch.as_tensor(data.inputs), cap=int(b))
                                            .logits.argmax(-1).numpy()))) for b in result.budget_iters]
    assert result.budget_acc.tolist() == direct
    assert result.instance_converged.dtype == bool and result.instance_cycled.shape == (12,)
    assert result.metrics["reachability"] == pytest.approx(result.instance_converged.mean())


def test_probe_subset_is_seeded_random_not_the_first_instances():
    a, b = probe_subset(100, 10, seed=1), probe_subset(100, 10, seed=1)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10 and not np.array_equal(a, np.arange(10))
    assert not np.array_equal(a, probe_subset(100, 10, seed=2))
    assert np.array_equal(probe_subset(5, 10, seed=0), np.arange(5))
