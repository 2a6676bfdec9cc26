"""Each task family learns something in a few hundred CPU steps: a broken encoding, a label shift or
a mask that hides the answer shows up here as accuracy at the chance baseline.

Slow (about a minute per family on a quiet core). Each case trains a tiny looped model with the
family's CPU-profile architecture and compares the token accuracy on the positions that carry the
answer with a stated input-blind baseline, which it must beat by a margin.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fpr_core.config import ExperimentConfig
from fpr_core.experiment import board_coordinates
from fpr_core.model import LoopedModel
from fpr_core.tasks import get_task, make_splits
from fpr_core.train import train

pytestmark = pytest.mark.slow


def _trained_predictions(cfg: dict, tmp_path):
    """Train cfg's tiny model on its task; return (task, id split, predictions on it)."""
    exp = ExperimentConfig.from_dict(cfg)
    task = get_task(exp.task.name, **exp.task.params)
    splits = make_splits(task, train_size=exp.task.train_size, ood_sizes=(), n_train=exp.train.n_train,
                         n_eval=128, seed=0, cache_dir=tmp_path)
    model_cfg = dataclasses.replace(exp.model, vocab_size=task.vocab_size, n_classes=task.n_classes)
    torch.manual_seed(0)
    model = LoopedModel(model_cfg, exp.solver, exp.grad, grid=task.grid,
                        train_tokens=int(np.prod(splits["train"].inputs.shape[1:])),
                        coordinates=board_coordinates(task, model_cfg.positions))
    result = train(model, task, splits["train"], exp.train)
    assert result.status == "ok", result.message
    data = splits["id"]
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(data.inputs)).logits
    return task, data, task.decode(logits).numpy()


def _cfg(task: dict, steps: int, **model) -> dict:
    return {"task": task, "model": {"dim": 32, "heads": 2, **model},
            "solver": {"train_cap": 12, "eval_cap": 24}, "grad": "truncated:4",
            "train": {"steps": steps, "batch_size": 32, "lr": 5e-3, "warmup": 20, "n_train": 1024},
            "eval": {"diagnostics": False}}


def test_prefix_sums_beats_a_coin(tmp_path):
    _, data, pred = _trained_predictions(
        _cfg({"name": "prefix_sums", "train_size": 12}, 200, conv="1d"), tmp_path)
    acc = (pred == data.targets).mean()
    assert acc >= 0.5 + 0.3, acc  # chance: 0.5 per bit


def test_mazes_beat_the_all_off_path_guess(tmp_path):
    _, data, pred = _trained_predictions(
        _cfg({"name": "mazes", "train_size": 7}, 300, mixer="conv"), tmp_path)
    baseline = 1.0 - data.targets.mean()  # predict "not on the path" everywhere (~0.7 at 7x7)
    acc = (pred == data.targets).mean()
    assert acc >= baseline + 0.5 * (1.0 - baseline), (acc, baseline)  # half the baseline's errors gone


def test_sudoku_fills_blanks_better_than_a_uniform_guess(tmp_path):
    _, data, pred = _trained_predictions(
        _cfg({"name": "sudoku", "params": {"box": "2x2"}, "train_size": 5}, 300, positions="absolute"),
        tmp_path)
    blanks = data.inputs == 0
    acc = (pred[blanks] == data.targets[blanks]).mean()
    assert acc >= 0.25 + 0.3, acc  # chance on a blank: 1 of 4 digits


def test_state_tracking_beats_the_best_input_blind_guess(tmp_path):
    _, data, pred = _trained_predictions(
        _cfg({"name": "state_tracking", "params": {"group": "S5", "alphabet": "generators"},
              "train_size": 8}, 300, mixer="conv", causal=True), tmp_path)
    # best input-blind predictor: the most frequent product at each position
    blind = np.mean([np.bincount(col).max() / len(col) for col in data.targets.T])
    acc = (pred == data.targets).mean()
    assert acc >= blind + 0.15, (acc, blind)


def test_chess_finds_move_squares_better_than_the_best_input_blind_guess(tmp_path):
    from fpr_core.tasks.chess import FROM, TO
    _, data, pred = _trained_predictions(
        _cfg({"name": "chess", "train_size": 3}, 300, positions="absolute"), tmp_path)
    hits = []
    for cls in (FROM, TO):
        true_sq = (data.targets == cls).reshape(len(data), -1).argmax(1)
        pred_sq = (pred == cls).reshape(len(data), -1).argmax(1)
        hits.append((true_sq == pred_sq).mean())
    # input-blind: always name the most frequent from/to squares of this split
    blind = max(np.bincount((data.targets == FROM).reshape(len(data), -1).argmax(1)).max(),
                np.bincount((data.targets == TO).reshape(len(data), -1).argmax(1)).max()) / len(data)
    assert min(hits) >= blind + 0.1, (hits, blind)
