"""run_experiment end to end on the real prefix_sums task, and the strict experiment config."""
import dataclasses

import numpy as np
import pytest

from fpr_core.config import ConfigError, ExperimentConfig, GradConfig, TaskSpec
from fpr_core.evaluate import METRIC_KEYS
from fpr_core.experiment import run_experiment, training_seed

TINY = {
    "task": {"name": "prefix_sums", "train_size": 6, "ood_sizes": [12]},
    "model": {"dim": 16, "heads": 2, "conv": "1d"},
    "solver": {"train_cap": 4, "eval_cap": 8},
    "grad": "truncated:2",
    "train": {"steps": 6, "batch_size": 16, "n_train": 64, "warmup": 2, "log_every": 3,
              "checkpoint_every": 3},
    "eval": {"n_eval": 12, "batch_size": 8, "diag_n": 4, "power_iters": 3},
    "seed": 3,
}


def test_config_round_trip_and_strictness():
    cfg = ExperimentConfig.from_dict(TINY)
    assert cfg.grad == GradConfig(mode="truncated", k=2)
    assert cfg.task == TaskSpec("prefix_sums", {}, 6, (12,))
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown section"):
        ExperimentConfig.from_dict({**TINY, "optimizer": {}})
    with pytest.raises(ConfigError, match=r"model: unknown field\(s\) \['width'\]"):
        ExperimentConfig.from_dict({**TINY, "model": {"width": 3}})
    with pytest.raises(ConfigError, match="task.train_size"):
        ExperimentConfig.from_dict({**TINY, "task": {"name": "prefix_sums", "train_size": 0}})
    with pytest.raises(ConfigError, match="seed"):
        ExperimentConfig.from_dict({**TINY, "seed": "3"})


def test_training_seed_mixes_trial_and_train_seed():
    cfg = ExperimentConfig.from_dict(TINY)
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1))
    assert len({training_seed(cfg), training_seed(other),
                training_seed(dataclasses.replace(cfg, seed=4))}) == 3


def test_run_experiment_end_to_end(tmp_path):
    logs, checkpoints = [], []
    cfg = ExperimentConfig.from_dict(TINY)
    result = run_experiment(cfg, cache_dir=tmp_path, device="cpu",
                            on_log=lambda step, m: logs.append(step),
                            on_checkpoint=lambda step, state: checkpoints.append(step))
    assert result.train.status == "ok" and result.train.steps == 6
    assert logs == [3, 6] and checkpoints == [3, 6]
    assert result.model_cfg_resolved.vocab_size == 2 and result.model_cfg_resolved.n_classes == 2
    assert (result.train_size, result.difficulty_key, result.device) == (6, "length", "cpu")
    assert [(s.split, s.size) for s in result.splits] == [("id", 6), ("ood_12", 12)]
    caps = {s.split: s.metrics["eval_cap"] for s in result.splits}
    assert caps == {"id": 8, "ood_12": 16}  # eval_cap * 12 / 6 on the larger split
    for split in result.splits:
        assert tuple(split.metrics) == METRIC_KEYS and split.metrics["n"] == 12
        assert all(np.isfinite(split.metrics[k]) for k in METRIC_KEYS)
        ev = split.result
        assert ev.instance_iters.shape == ev.instance_difficulty.shape == ev.instance_correct.shape == (12,)
        assert (ev.instance_difficulty == split.size).all()
        assert ev.instance_iters.max() <= split.metrics["eval_cap"]


def test_stopped_training_evaluates_nothing(tmp_path):
    cfg = ExperimentConfig.from_dict(TINY)
    result = run_experiment(cfg, cache_dir=tmp_path, device="cpu", should_stop=lambda: True)
    assert result.train.status == "stopped" and result.splits == []


def test_diverged_training_evaluates_nothing(tmp_path):
    unstable = {**TINY, "model": {**TINY["model"], "outer_norm": "none", "pre_norm": False,
                                  "residual_scale": "none"},
                "train": {**TINY["train"], "steps": 30, "lr": 1e6, "warmup": 1, "grad_clip": 0.0}}
    result = run_experiment(ExperimentConfig.from_dict(unstable), cache_dir=tmp_path, device="cpu")
    assert result.train.status == "diverged" and result.splits == []
    assert result.train.steps < 30 and "non-finite" in result.train.message
