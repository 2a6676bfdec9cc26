"""Every arm can learn its input, or the run refuses it (issue 26, item 1).

The rule (``fpr_core.gradients.input_gradient_refusal``) is checked by measurement: over recall x
gradient estimator, one real training step on prefix sums either gives the input embedding a
nonzero gradient (the rule accepts) or exactly zero (the rule refuses). And the product refuses
the refused arms at its edge: `validate` and `run` exit 2 with a message and create nothing.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_spec
from fpr_core.config import ConfigError, ExperimentConfig, GradConfig
from fpr_core.experiment import task_of
from fpr_core.gradients import check_input_gradient, input_gradient_refusal
from fpr_core.model import LoopedModel
from fpr_core.tasks import make_splits
from fpr_core.train import train
from orchestrator.cli import app

GRADS = {"bptt": {"mode": "bptt"}, "truncated:2": {"mode": "truncated", "k": 2},
         "phantom:2": {"mode": "phantom", "k": 2}, "implicit": {"mode": "implicit"},
         "progressive": {"mode": "progressive", "alpha": 0.5},
         "progressive-alpha1": {"mode": "progressive", "alpha": 1.0},
         "progressive-halting": {"mode": "progressive", "progressive": "halting", "alpha": 0.5, "k": 2},
         "truncated:2-segments2": {"mode": "truncated", "k": 2, "segments": 2}}
REFUSED = {"truncated:2", "phantom:2", "implicit", "progressive-alpha1", "truncated:2-segments2"}


def one_step_embedding_grad(cfg: ExperimentConfig) -> float:
    """Norm of the input embedding's gradient after one optimizer step of ``train``."""
    task, train_size = task_of(cfg)
    data = make_splits(task, train_size=train_size, ood_sizes=(), n_train=32, n_eval=4, seed=0,
                       cache_dir=False)["train"]
    torch.manual_seed(0)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=task.vocab_size, n_classes=task.n_classes)
    model = LoopedModel(model_cfg, cfg.solver, cfg.grad, grid=task.grid,
                        train_tokens=math.prod(data.inputs.shape[1:]))
    result = train(model, task, data, cfg.train)
    assert result.status == "ok" and result.steps == 1
    grad = model.embed.weight.grad
    return 0.0 if grad is None else float(grad.norm())


@pytest.mark.parametrize("grad", list(GRADS))
@pytest.mark.parametrize("recall", ["none", "standard", "internal"])
def test_rule_matches_the_measured_embedding_gradient(recall, grad):
    cfg = ExperimentConfig.from_dict({
        "task": {"name": "prefix_sums", "train_size": 8, "ood_sizes": []},
        "model": {"dim": 16, "heads": 2, "recall": recall, "outer_norm": "rms", "conv": "1d"},
        "solver": {"train_cap": 6, "eval_cap": 8}, "grad": GRADS[grad],
        "train": {"steps": 1, "batch_size": 16, "n_train": 32, "warmup": 1, "grad_clip": 0.0}})
    refused = input_gradient_refusal(cfg.model, cfg.grad)
    assert (refused is not None) == (recall == "none" and grad in REFUSED)
    norm = one_step_embedding_grad(cfg)
    if refused is None:
        assert norm > 0, f"accepted, but the embedding's gradient is {norm}"
        check_input_gradient(cfg)
    else:
        assert norm == 0.0, f"refused, but the embedding's gradient is {norm}"
        with pytest.raises(ConfigError, match="no gradient"):
            check_input_gradient(cfg)


def test_the_refusal_explains_itself():
    why = input_gradient_refusal(ExperimentConfig.from_dict({"model": {"recall": "none"}}).model,
                                 GradConfig.parse("truncated:8"))
    for part in ("truncated:8", "z0 = x", "detached", "`grad: bptt`", "progressive"):
        assert part in why


REFUSED_SPEC = dict(tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                    axes={"model.recall": ["standard", "none"], "model.outer_norm": ["rms"]})


@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_and_run_refuse_a_no_recall_arm_under_truncated(spec_dir, command):
    base = {"model": {"dim": 16, "heads": 2}, "grad": "truncated:8"}
    path = write_spec(spec_dir, name="refused", base=base, **REFUSED_SPEC)
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in text and result.exception is None or isinstance(result.exception, SystemExit)
    for part in ("arm 'recall=none,outer_norm=rms'", "truncated:8", "no gradient", "z0 = x", "`grad: bptt`",
                 "progressive"):
        assert part in text, part
    assert not (spec_dir / "results").exists()  # nothing created


def test_a_search_that_may_sample_a_refused_estimator_is_refused(spec_dir):
    base = {"model": {"dim": 16, "heads": 2, "recall": "none"}, "grad": "bptt"}
    path = write_spec(spec_dir, name="searched", base=base, tasks=REFUSED_SPEC["tasks"],
                      search={"num_samples": 2, "metric": "acc/id",
                              "space": {"grad.mode": {"type": "categorical", "values": ["bptt", "implicit"]}}})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "implicit" in result.output, result.output
