"""train.compile: the training loop's steps under torch.compile give eager's numbers to float
tolerance, on a solve whose active batch shrinks, with a bounded number of compiled graphs."""
import copy

import pytest
import torch
import torch._dynamo.utils

from fpr_core.config import ConfigError, ExperimentConfig, GradConfig, ModelConfig, SolverConfig
from fpr_core.experiment import run_experiment
from fpr_core.model import LoopedModel
from fpr_core.model.looped import cpu_compiler

GRAPHS_PER_MODEL = 8
"""Upper bound on compiled frames per model: grad on / off, a first static and then a dynamic
batch, and the grad steps' input with and without requires_grad (6 measured)."""

needs_compiler = pytest.mark.skipif(cpu_compiler()[1] is None,
                                    reason="TorchInductor needs a C++ compiler for CPU kernels")


def tiny_model() -> LoopedModel:
    torch.manual_seed(0)
    # the shapes of the trial below (prefix sums, 6 tokens, batch 16), so it finds these graphs in
    # TorchInductor's cache; at this init, tol 0.05 is reached after 6 to 8 steps or not within
    # the cap: the active batch shrinks
    cfg = ModelConfig(vocab_size=2, n_classes=2, dim=16, heads=2, conv="1d", init_std=0.5)
    return LoopedModel(cfg, SolverConfig(tol=0.05, train_cap=12), GradConfig(mode="truncated", k=2),
                       grid=False, train_tokens=6).train()


def forward_backward(model: LoopedModel, inputs: torch.Tensor):
    out = model(inputs)
    out.logits.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


@needs_compiler
def test_compiled_training_steps_match_eager_and_do_not_recompile_per_batch_size():
    eager = tiny_model()
    compiled = copy.deepcopy(eager)
    compiled.compile_training_steps()
    torch._dynamo.utils.counters.clear()
    generator = torch.Generator().manual_seed(1)
    shrank = False
    for _ in range(3):
        inputs = torch.randint(0, 2, (16, 6), generator=generator)
        want, want_grads = forward_backward(eager, inputs)
        got, got_grads = forward_backward(compiled, inputs)
        assert torch.equal(got.trace.iterations, want.trace.iterations)
        torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.trace.residual, want.trace.residual, atol=1e-5, rtol=1e-4)
        assert got_grads.keys() == want_grads.keys()
        for name in want_grads:
            torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)
        shrank = shrank or len(set(want.trace.iterations.tolist())) > 1
    assert shrank, "the test needs samples that halt at different steps"
    frames = torch._dynamo.utils.counters["frames"]
    assert 0 < frames["ok"] <= GRAPHS_PER_MODEL and frames["total"] == frames["ok"]
    with torch.no_grad():  # evaluation stays eager: no new graph for another size
        compiled.eval()(torch.randint(0, 2, (4, 12)))
    assert torch._dynamo.utils.counters["frames"]["total"] == frames["total"]


@needs_compiler
def test_a_trial_with_train_compile_follows_the_eager_loss_curve():
    base = {"task": {"name": "prefix_sums", "train_size": 6, "ood_sizes": [12]},
            "model": {"dim": 16, "heads": 2, "conv": "1d"}, "solver": {"train_cap": 4, "eval_cap": 8},
            "grad": "truncated:2",
            "train": {"steps": 4, "batch_size": 16, "n_train": 64, "warmup": 2, "log_every": 1},
            "eval": {"n_eval": 8, "batch_size": 8, "diag_n": 2, "power_iters": 2}, "seed": 3}
    curves = {}
    for compile_ in (False, True):
        cfg = ExperimentConfig.from_dict({**base, "train": {**base["train"], "compile": compile_}})
        losses = []
        result = run_experiment(cfg, cache_dir=False, on_log=lambda step, m: losses.append(m["loss"]))
        assert result.train.status == "ok" and result.model.compile_training is compile_
        curves[compile_] = losses
    assert len(curves[True]) == 4
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)


def test_compile_is_refused_clearly_without_a_cpu_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"train.compile: .*no-such-compiler"):
        model.compile_training_steps()
    assert not model.compile_training
    with pytest.raises(ConfigError, match="train.compile: got 'yes'"):
        ExperimentConfig.from_dict({"train": {"compile": "yes"}})
