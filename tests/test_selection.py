"""Recipe levers of train: keep-best selection on held-out instances (Deep Thinking) and label
smoothing (DART)."""
import dataclasses

import pytest
import torch

from fpr_core.config import ConfigError, ExperimentConfig, GradConfig, ModelConfig, SolverConfig, TrainConfig
from fpr_core.experiment import held_out_selection, run_experiment
from fpr_core.losses import get_loss, masked_cross_entropy
from fpr_core.model import LoopedModel
from fpr_core.tasks import get_task
from fpr_core.train import load_checkpoint, train

SIZE = 2


@pytest.fixture(scope="module")
def task():
    return get_task("prefix_sums")


@pytest.fixture(scope="module")
def data(task):
    return task.generate(256, SIZE, seed=1)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return LoopedModel(ModelConfig(dim=16, heads=2), SolverConfig(train_cap=6, eval_cap=12),
                       GradConfig(mode="bptt"), grid=False, train_tokens=SIZE)


def cfg(**kw):
    base = dict(steps=12, batch_size=16, lr=3e-3, warmup=3, log_every=4, checkpoint_every=6, seed=5)
    return TrainConfig(**{**base, **kw})


class ScriptedScore:
    """A select function whose score peaks at call ``peak`` and records the weights it was shown."""

    def __init__(self, peak: int):
        self.peak, self.calls, self.seen = peak, 0, []

    def __call__(self, model) -> float:
        self.calls += 1
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return 1.0 if self.calls == self.peak else 0.1


def test_selection_returns_the_best_scoring_weights_not_the_last(task, data):
    score = ScriptedScore(peak=2)
    result = train(tiny_model(), task, data, cfg(select_every=4), select=score)
    assert score.calls == 3  # steps 4, 8, 12
    assert (result.selected_step, result.selected_score) == (8, 1.0)
    picked = result.eval_model.state_dict()
    assert all(torch.equal(picked[k], score.seen[1][k]) for k in picked)
    assert any(not torch.equal(picked[k], score.seen[2][k]) for k in picked)  # the last differs


def test_scoring_never_changes_the_training_curve(task, data):
    plain = train(tiny_model(), task, data, cfg(steps=8))

    def noisy_score(model):  # draws from the global RNG like a random z0 would
        torch.rand(100)
        return 0.5
    selected = train(tiny_model(), task, data, cfg(steps=8, select_every=2), select=noisy_score)
    assert selected.losses == plain.losses


def test_the_best_weights_survive_a_resume(task, data, tmp_path):
    states = {}
    first = ScriptedScore(peak=1)
    train(tiny_model(), task, data, cfg(select_every=4), select=first,
          on_checkpoint=lambda step, state: states.setdefault(step, state))
    torch.save(states[6], tmp_path / "ckpt.pt")
    later = ScriptedScore(peak=99)  # never scores 1.0 again after the resume
    resumed = train(tiny_model(), task, data, cfg(select_every=4), select=later,
                    resume_state=load_checkpoint(tmp_path / "ckpt.pt"))
    assert resumed.selected_step == 4 and resumed.selected_score == 1.0


def test_held_out_instances_are_never_trained_on():
    exp = ExperimentConfig.from_dict({"task": {"name": "prefix_sums", "train_size": 4},
                                      "train": {"n_train": 64, "select_every": 5, "n_select": 16}})
    task = get_task("prefix_sums")
    data = task.generate(64, 4, seed=0)
    fit, select = held_out_selection(task, data, exp, torch.device("cpu"))
    assert len(fit) == 48 and select is not None
    assert (fit.inputs == data.inputs[:48]).all()


def test_run_experiment_with_selection_evaluates_the_selected_weights():
    exp = ExperimentConfig.from_dict({
        "task": {"name": "prefix_sums", "train_size": 10, "ood_sizes": [12]},
        "model": {"dim": 16, "heads": 2}, "grad": "bptt",
        "solver": {"train_cap": 6, "eval_cap": 8},
        "train": {"steps": 20, "batch_size": 16, "n_train": 96, "select_every": 10, "n_select": 32,
                  "warmup": 2, "log_every": 10},
        "eval": {"n_eval": 16, "diagnostics": False}})
    logged = []
    result = run_experiment(exp, device="cpu", on_log=lambda step, m: logged.append((step, m)))
    assert result.train.selected_step in (10, 20)
    assert all("select_exact_acc" in m for _, m in logged)
    assert [s.split for s in result.splits] == ["id", "ood_12"]


def test_label_smoothing_spreads_the_target():
    logits = torch.tensor([[[4.0, 0.0, 0.0]]])
    targets, mask = torch.tensor([[0]]), torch.tensor([[True]])
    smooth = get_loss("ce", 0.3)(logits, targets, mask)
    plain = masked_cross_entropy(logits, targets, mask)
    logp = torch.log_softmax(logits[0, 0], -1)
    want = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])  # 1 - e + e/3 on the label, e/3 elsewhere
    assert torch.allclose(smooth, want, atol=1e-6) and smooth > plain


@pytest.mark.parametrize("train, field", [
    ({"loss": "stablemax", "label_smoothing": 0.1}, "train.label_smoothing"),
    ({"label_smoothing": 1.0}, "train.label_smoothing"),
    ({"select_every": 10, "n_select": 4096, "n_train": 4096}, "train.n_select"),
])
def test_bad_recipe_levers_are_refused_with_the_field(train, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ExperimentConfig.from_dict({"task": {"name": "prefix_sums"}, "train": train})
