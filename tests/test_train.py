"""Training loop: losses, schedule, learning, determinism, exact resume, divergence and stop."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fpr_core.config import GradConfig, ModelConfig, SolverConfig, TrainConfig
from fpr_core.losses import get_loss, log_stablemax, masked_cross_entropy, stablemax_cross_entropy
from fpr_core.model import LoopedModel
from fpr_core.tasks import get_task
from fpr_core.train import (build_optimizer, load_checkpoint, lr_at, save_checkpoint, select_device,
                            train)

SIZE = 2
"""Running parity of 2-bit strings: small enough to learn visibly in a few dozen steps."""


@pytest.fixture(scope="module")
def task():
    return get_task("prefix_sums")


@pytest.fixture(scope="module")
def data(task):
    return task.generate(256, SIZE, seed=1)


def tiny_model(seed=0, grad=GradConfig(mode="truncated", k=2), **model_kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(dim=16, heads=2, **model_kw)
    return LoopedModel(cfg, SolverConfig(train_cap=6, eval_cap=12), grad, grid=False, train_tokens=SIZE)


def tiny_train_cfg(**kw):
    base = dict(steps=12, batch_size=16, lr=3e-3, warmup=3, log_every=4, checkpoint_every=6, seed=5)
    base.update(kw)
    return TrainConfig(**base)


# ----- losses ---------------------------------------------------------------------------------
def test_masked_cross_entropy_matches_torch_on_masked_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g)
    targets = torch.randint(0, 4, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    want = F.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(masked_cross_entropy(logits, targets, mask), want, atol=1e-6)
    # positions outside the mask never count
    scrambled = logits.clone()
    scrambled[~mask] = 100.0
    assert torch.allclose(masked_cross_entropy(scrambled, targets, mask), want, atol=1e-6)


def test_stablemax_by_hand():
    # s(2) = 3, s(0) = 1, s(-1) = 1/2  ->  p = (3, 1, 0.5) / 4.5
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    assert torch.allclose(log_stablemax(logits).exp(), torch.tensor([[[3, 1, 0.5]]]) / 4.5)
    loss = stablemax_cross_entropy(logits, torch.tensor([[2]]), torch.tensor([[True]]))
    assert math.isclose(float(loss), -math.log(0.5 / 4.5), rel_tol=1e-6)


def test_stablemax_gradient_is_finite_for_large_logits():
    logits = torch.tensor([[[1.0, 1e4, -1e4]]], requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([[0]]), torch.tensor([[True]])).backward()
    assert torch.isfinite(logits.grad).all()


def test_loss_registry_rejects_unknown_name():
    assert get_loss("stablemax") is stablemax_cross_entropy
    with pytest.raises(ValueError, match="train.loss"):
        get_loss("mse")


# ----- schedule, optimizer, device -------------------------------------------------------------
def test_lr_warmup_then_cosine_to_ten_percent():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_no_weight_decay_on_gains_biases_and_residual_logits():
    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    undecayed = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert {"coeffs.a1_logit", "coeffs.a2_logit", "head.bias"} <= undecayed
    assert "head.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed


def test_select_device():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == want
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            select_device("cuda")


# ----- training ---------------------------------------------------------------------------------
def test_loss_decreases_and_logs(task, data):
    logs = []
    cfg = tiny_train_cfg(steps=30, lr=1e-2, batch_size=32, log_every=10)
    result = train(tiny_model(), task, data, cfg, on_log=lambda step, m: logs.append((step, m)))
    assert result.status == "ok" and result.steps == 30 and len(result.losses) == 30
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.05
    assert [s for s, _ in logs] == [10, 20, 30]
    for _, m in logs:
        assert set(m) == {"loss", "token_acc", "exact_acc", "iters_mean", "lr", "grad_norm"}
        assert 0 <= m["token_acc"] <= 1 and 0 <= m["exact_acc"] <= 1
        assert 1 <= m["iters_mean"] <= 6 and m["grad_norm"] > 0
    assert result.final_loss == result.losses[-1]
    assert result.eval_model is not None


def test_same_seed_same_loss_history(task, data):
    a = train(tiny_model(), task, data, tiny_train_cfg(steps=8))
    b = train(tiny_model(), task, data, tiny_train_cfg(steps=8))
    c = train(tiny_model(), task, data, tiny_train_cfg(steps=8, seed=6))
    assert a.losses == b.losses
    assert a.losses != c.losses


@pytest.mark.parametrize("grad, model_kw", [
    (GradConfig(mode="truncated", k=2), {}),
    # progressive draws its prefix lengths from the global torch RNG; spectral_norm adds buffers
    (GradConfig(mode="progressive", k=2), {"spectral": 0.8}),
])
def test_checkpoint_resume_is_exact(task, data, tmp_path, grad, model_kw):
    cfg = tiny_train_cfg(ema=0.9)
    states = {}
    full_model = tiny_model(grad=grad, **model_kw)
    full = train(full_model, task, data, cfg, on_checkpoint=lambda step, s: states.setdefault(step, s))
    assert sorted(states) == [6, 12]
    save_checkpoint(tmp_path / "ckpt.pt", states[6])
    state = load_checkpoint(tmp_path / "ckpt.pt")  # weights_only=True round trip
    resumed_model = tiny_model(seed=123, grad=grad, **model_kw)  # everything must come from the state
    resumed = train(resumed_model, task, data, cfg, resume_state=state)
    assert resumed.status == "ok" and resumed.steps == 12
    assert resumed.losses == full.losses
    for (name, p), q in zip(full.eval_model.state_dict().items(), resumed.eval_model.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_nan_weight_diverges_without_exception(task, data):
    model = tiny_model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    result = train(model, task, data, tiny_train_cfg(steps=5))
    assert result.status == "diverged" and result.steps == 0
    assert "non-finite loss" in result.message and math.isnan(result.final_loss)


def test_huge_lr_diverges(task, data):
    model = tiny_model(outer_norm="none", pre_norm=False, residual_scale="none")
    result = train(model, task, data, tiny_train_cfg(steps=30, lr=1e6, warmup=1, grad_clip=0.0))
    assert result.status == "diverged", result
    assert result.steps < 30 and "non-finite" in result.message


def test_should_stop_stops(task, data):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    result = train(tiny_model(), task, data, tiny_train_cfg(), should_stop=stop)
    assert result.status == "stopped" and result.steps == 3 and len(result.losses) == 3
