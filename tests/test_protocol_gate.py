"""eval.protocol_gate: the protocols after 'trained' run only for a model that learned in distribution
under 'trained', and never repeat the probes or the compute curve (they are read under 'trained')."""
from __future__ import annotations

import math

import pytest

from fpr_core.config import ConfigError, ExperimentConfig
from fpr_core.experiment import run_experiment

TINY = {"task": {"name": "prefix_sums", "train_size": 8, "ood_sizes": [12]},
        "model": {"dim": 16, "heads": 2},
        "solver": {"train_cap": 6, "eval_cap": 8},
        "grad": "bptt",
        "train": {"steps": 10, "batch_size": 16, "n_train": 64, "log_every": 5, "checkpoint_every": 5, "warmup": 2},
        "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2, "halting": ["trained", "long"]}}


def _run(gate: float):
    return run_experiment(ExperimentConfig.from_dict({**TINY, "eval": {**TINY["eval"], "protocol_gate": gate}}),
                          device="cpu")


def test_a_model_below_the_gate_is_evaluated_under_trained_only():
    result = _run(1.0)  # 10 steps: far from every instance right
    id_acc = next(s.metrics["exact_acc"] for s in result.splits if s.split == "id")
    assert id_acc < 1.0
    assert [(s.split, s.halting) for s in result.splits] == [("id", "trained"), ("ood_12", "trained")]


def test_other_protocols_skip_the_probes_and_the_compute_curve():
    result = _run(0.0)
    assert [(s.split, s.halting) for s in result.splits] == [("id", "trained"), ("ood_12", "trained"),
                                                             ("id", "long"), ("ood_12", "long")]
    for s in result.splits:
        own = s.halting == "trained"
        assert math.isnan(s.metrics["basin_jump_1e-3"]) != own, (s.split, s.halting)
        assert (len(s.budget_iters) > 1) == own
        assert s.budget_iters[-1] == s.metrics["eval_cap"] and not math.isnan(s.metrics["reachability"])
    # the gate does not change the trained rows
    gated = _run(1.0)
    assert [s.metrics["exact_acc"] for s in gated.splits] == \
           [s.metrics["exact_acc"] for s in result.splits if s.halting == "trained"]


@pytest.mark.parametrize("gate", [-0.1, 1.5])
def test_a_gate_outside_zero_one_is_refused(gate):
    with pytest.raises(ConfigError, match="protocol_gate"):
        ExperimentConfig.from_dict({**TINY, "eval": {**TINY["eval"], "protocol_gate": gate}})
