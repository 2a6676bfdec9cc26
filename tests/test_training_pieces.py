"""The papers' training pieces, each an option that runs end to end (issue 26, item 6; sources in
docs/model-options.md): deep supervision segments (FPRM/TRM), FPRM's random z0 (truncated normal,
std 6), Deep Thinking's open-cell maze loss mask, stablemax cross-entropy (TRM/FPRM); and the loop's
non-default forms of issue 26 (FPRM's replace conv and outer_only entry, DT's plain entry)."""
from __future__ import annotations

import math

import pytest

from fpr_core.config import ExperimentConfig
from fpr_core.experiment import run_experiment

PREFIX = {"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}
MAZE = {"name": "mazes", "train_size": 5, "ood_sizes": [], "params": {"loss_mask": "open"}}
PIECES = {
    "deep supervision": (PREFIX, {"grad": {"mode": "truncated", "k": 2, "segments": 3}}),
    "FPRM random z0": (PREFIX, {"model": {"z0": "random", "z0_std": 6.0}}),
    "DT open-cell maze mask": (MAZE, {"model": {"conv": "2d", "mixer": "conv"}}),
    "stablemax": (PREFIX, {"train": {"loss": "stablemax"}}),
    # the loop's new forms (docs/model-options.md): FPRM's replace conv and outer_only entry, DT's plain entry
    "FPRM replace conv": (PREFIX, {"model": {"conv_form": "replace"}}),
    "FPRM outer_only entry": (PREFIX, {"model": {"loop_entry": "outer_only"}}),
    "DT plain no-recall entry": (PREFIX, {"model": {"recall": "none", "loop_entry": "plain"}, "grad": {"mode": "bptt"}}),
}


@pytest.mark.parametrize("piece", list(PIECES))
def test_training_piece_runs(piece):
    task, extra = PIECES[piece]
    sections = {"model": {"dim": 16, "heads": 2, "outer_norm": "rms", "conv": "1d"},
                "solver": {"train_cap": 6, "eval_cap": 8}, "grad": "truncated:2",
                "train": {"steps": 4, "batch_size": 8, "n_train": 32, "warmup": 1},
                "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2}}
    for name, values in extra.items():
        sections[name] = values if isinstance(values, dict) and name == "grad" else {**sections[name], **values}
    result = run_experiment(ExperimentConfig.from_dict({"task": task, **sections}), cache_dir=False)
    assert result.train.status == "ok" and all(math.isfinite(v) for v in result.train.losses)
    assert result.splits and result.splits[0].split == "id"
