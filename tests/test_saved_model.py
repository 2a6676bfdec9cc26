"""Saved models: a trained trial written weights-only and read back into a ready LoopedModel that
scores exactly what the trial recorded, on the splits it was scored on and on new sizes."""
import pickle

import numpy as np
import pytest
import torch

from fpr_core.config import ExperimentConfig
from fpr_core.experiment import evaluate_sizes, run_experiment
from fpr_core.saved_model import load_model, read_saved, save_experiment_model

TINY = {
    "task": {"name": "prefix_sums", "train_size": 6, "ood_sizes": [12]},
    "model": {"dim": 16, "heads": 2, "conv": "1d", "spectral": 0.9},
    "solver": {"train_cap": 4, "eval_cap": 8},
    "grad": "truncated:2",
    "train": {"steps": 8, "batch_size": 16, "n_train": 64, "warmup": 2, "log_every": 4,
              "checkpoint_every": 4, "ema": 0.9},
    "eval": {"n_eval": 12, "batch_size": 8, "diag_n": 4, "power_iters": 3},
    "seed": 3,
}


class _Code:
    """An arbitrary object: unpickling it would import and run code from this module."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    cfg = ExperimentConfig.from_dict(TINY)
    result = run_experiment(cfg, cache_dir=d, device="cpu")
    path = d / "model.pt"
    size = save_experiment_model(path, result, cfg.to_dict(), meta={"trial_id": "t1"})
    return cfg, result, path, size, d


def test_saved_model_reproduces_recorded_metrics(trained):
    cfg, result, path, size, cache = trained
    assert size == path.stat().st_size > 0
    model = load_model(path)  # one call: EMA weights (the ones the trial was scored with), eval mode
    assert not model.training
    evals, infos = evaluate_sizes(model, cfg, (12,), include_id=True, cache_dir=cache)
    recorded = {s.split: s for s in result.splits}
    assert [e.split for e in evals] == ["id", "ood_12"]
    for e in evals:
        assert e.metrics["exact_acc"] == recorded[e.split].metrics["exact_acc"]
        assert e.metrics["iters_mean"] == recorded[e.split].metrics["iters_mean"]
        np.testing.assert_array_equal(e.result.instance_correct, recorded[e.split].result.instance_correct)
    assert {i.split: i.digest for i in infos} == {i.split: i.digest for i in result.datasets if i.split != "train"}


def test_final_and_ema_weights_both_kept(trained):
    cfg, result, path, _, _ = trained
    saved = read_saved(path)
    assert saved.config == cfg.to_dict() and saved.meta == {"trial_id": "t1"}
    final, ema = saved.build("final"), saved.build("ema")
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(final.state_dict()[name], tensor)
    for name, tensor in result.train.eval_model.state_dict().items():
        assert torch.equal(ema.state_dict()[name], tensor)
    assert not torch.equal(final.state_dict()["head.weight"], ema.state_dict()["head.weight"])


def test_new_size_uses_fresh_instances_and_its_scaled_cap(trained):
    cfg, result, path, _, cache = trained
    evals, infos = evaluate_sizes(load_model(path), cfg, (9,), cache_dir=cache)
    assert [(e.split, e.size, e.metrics["eval_cap"], e.metrics["n"]) for e in evals] == [("ood_9", 9, 12, 12)]
    assert [i.split for i in infos] == ["ood_9"]


def test_file_is_weights_only(trained, tmp_path):
    _, _, path, _, _ = trained
    payload = torch.load(path, weights_only=True)  # raises if anything but tensors and plain data
    assert set(payload) == {"format", "config", "model_config", "grid", "train_tokens", "meta", "weights", "ema"}
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "weights": _Code()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_model(evil)
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a saved fpr_core model"):
        load_model(tmp_path / "other.pt")
