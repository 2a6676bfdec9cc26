"""K seeds of one configuration trained as one member-batched model (fpr_core.ensemble, fpr_core.members).

Every comparison is against the lone path that trials run today (fpr_core.train.train,
fpr_core.experiment.run_experiment), on real tasks."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fpr_core.config import ConfigError, ExperimentConfig
from fpr_core.ensemble import member_state_dict, stack_models, train_members
from fpr_core.experiment import run_experiment, task_of, training_seed
from fpr_core.members import build_member_model, run_member_experiments
from fpr_core.tasks import make_splits
from fpr_core.train import train

PREFIX = {"task": {"name": "prefix_sums", "train_size": 8, "ood_sizes": [12]},
          "model": {"dim": 16, "heads": 2, "conv": "1d", "recall": "standard"},
          "solver": {"train_cap": 6, "eval_cap": 8}, "grad": "bptt",
          "train": {"steps": 20, "batch_size": 16, "n_train": 128, "warmup": 4, "lr": 5e-3,
                    "log_every": 5, "checkpoint_every": 5},
          "eval": {"n_eval": 8, "diagnostics": False}}
"""Attention, a 1-D step conv, coupled residual coefficients, BPTT through per-sample halting."""
MAZE = {"task": {"name": "mazes", "train_size": 5, "ood_sizes": [7]},
        "model": {"dim": 16, "heads": 2, "conv": "2d", "mixer": "conv", "recall": "internal", "mlp": "gelu"},
        "solver": {"train_cap": 6, "eval_cap": 8, "name": "anderson"}, "grad": "truncated:2",
        "train": {"steps": 20, "batch_size": 8, "n_train": 64, "warmup": 4, "lr": 5e-3, "ema": 0.9,
                  "log_every": 5, "checkpoint_every": 5},
        "eval": {"n_eval": 8, "diagnostics": False}}
"""Grids: a conv mixer and a 2-D step conv, internal recall's projections, Anderson, truncated, EMA."""


def configs(base: dict, seeds, **sections) -> list[ExperimentConfig]:
    out = []
    for seed in seeds:
        data = {**base, "seed": seed}
        for name, values in sections.items():
            data[name] = {**base[name], **values} if isinstance(base[name], dict) else values
        out.append(ExperimentConfig.from_dict(data))
    return out


def lone_setup(cfgs):
    """Per member: its splits, its freshly built lone model and its training config."""
    task, size = task_of(cfgs[0])
    out = []
    for cfg in cfgs:
        splits = make_splits(task, train_size=size, ood_sizes=(), n_train=cfg.train.n_train,
                             n_eval=cfg.eval.n_eval, seed=cfg.seed, cache_dir=False)
        model = build_member_model(cfg, task, splits, "cpu")[0]
        out.append((splits["train"], model, dataclasses.replace(cfg.train, seed=training_seed(cfg))))
    return task, out


@pytest.mark.slow  # trains and evaluates twice (~15 CPU-s)
def test_one_member_is_the_lone_trial_bit_for_bit():
    cfg = configs(PREFIX, [3], train={"steps": 8})[0]
    lone = run_experiment(cfg, cache_dir=False, device="cpu")
    member, = run_member_experiments([cfg], cache_dir=False, device="cpu")
    assert member.train.losses == lone.train.losses
    for name, tensor in lone.model.state_dict().items():
        assert torch.equal(member.model.state_dict()[name], tensor), name
    assert [_exact(s.metrics) for s in member.splits] == [_exact(s.metrics) for s in lone.splits]


def _exact(metrics: dict) -> dict:
    """The metrics as text (nan == nan), without the timing."""
    return {k: repr(v) for k, v in metrics.items() if k != "eval_seconds"}


@pytest.mark.slow  # 3 lone runs and one ensemble of 20 steps each
@pytest.mark.parametrize("base", [PREFIX, MAZE], ids=["prefix_sums", "mazes"])
def test_each_member_matches_its_lone_run_for_20_steps(base):
    cfgs = configs(base, [0, 1, 2])
    task, setup = lone_setup(cfgs)
    lone = []
    for data, model, train_cfg in setup:
        result = train(model, task, data, train_cfg)
        lone.append((result.losses, result.eval_model.state_dict()))
    task, setup = lone_setup(cfgs)  # fresh models, same seeds
    ens = stack_models([model for _, model, _ in setup])
    results = train_members(ens, task, [d for d, _, _ in setup], [c for _, _, c in setup])
    for k, (losses, weights) in enumerate(lone):
        assert results[k].status == "ok" and len(results[k].losses) == 20
        torch.testing.assert_close(torch.tensor(results[k].losses), torch.tensor(losses), rtol=1e-4, atol=1e-5)
        mine = member_state_dict(results[k].eval_model, k)  # EMA weights where train.ema is set
        for name, tensor in weights.items():
            torch.testing.assert_close(mine[name], tensor, rtol=1e-4, atol=1e-5, msg=f"member {k} {name}")


def test_a_member_checkpoint_resumes_as_a_lone_run_and_the_ensemble_resumes_exactly():
    cfgs = configs(PREFIX, [0, 1], train={"steps": 10})
    task, setup = lone_setup(cfgs)
    states = {}
    ens = stack_models([model for _, model, _ in setup])
    full = train_members(ens, task, [d for d, _, _ in setup], [c for _, _, c in setup],
                         on_checkpoint=lambda step, s: states.setdefault(step, s))
    assert sorted(states) == [5, 10]
    # member 1's step-5 state, resumed by the lone trainer, reaches member 1's step-10 weights
    data, model, train_cfg = setup[1]
    lone = train(model, task, data, train_cfg, resume_state=copy.deepcopy(states[5][1]))  # AdamW adopts its tensors
    assert lone.losses == pytest.approx(full[1].losses, rel=1e-4, abs=1e-5)
    for name, tensor in member_state_dict(ens, 1).items():
        torch.testing.assert_close(lone.eval_model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
    # the ensemble resumed from its own step-5 states ends where the uninterrupted run did
    task, setup = lone_setup(cfgs)
    again = stack_models([model for _, model, _ in setup])
    resumed = train_members(again, task, [d for d, _, _ in setup], [c for _, _, c in setup],
                            resume_states=states[5])
    assert [r.losses for r in resumed] == [r.losses for r in full]
    for name, tensor in ens.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_a_diverged_member_stops_alone():
    cfgs = configs(PREFIX, [0, 1], train={"steps": 6})
    task, setup = lone_setup(cfgs)
    ens = stack_models([model for _, model, _ in setup])
    with torch.no_grad():
        ens.head.weight[1] = float("nan")  # member 1's readout: its loss is nan from the first step
    results = train_members(ens, task, [d for d, _, _ in setup], [c for _, _, c in setup])
    assert results[1].status == "diverged" and "non-finite loss" in results[1].message
    assert results[1].steps == 0
    assert results[0].status == "ok" and len(results[0].losses) == 6
    assert torch.isfinite(member_state_dict(ens, 0)["head.weight"]).all()


@pytest.mark.slow  # trains and evaluates two members end to end (~10 s)
def test_members_are_evaluated_as_lone_models_with_their_own_data():
    cfgs = configs(PREFIX, [0, 1], train={"steps": 4})
    results = run_member_experiments(cfgs, cache_dir=False, device="cpu")
    assert [type(r.model).__name__ for r in results] == ["LoopedModel", "LoopedModel"]
    assert results[0].datasets[0].digest != results[1].datasets[0].digest  # each seed its own data
    assert [s.split for s in results[0].splits] == ["id", "ood_12"]
    assert not torch.equal(results[0].model.head.weight, results[1].model.head.weight)


def test_configurations_that_cannot_stack_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"seeds_per_trial > 1.*model\.spectral.*grad\.mode 'implicit'"):
        run_member_experiments(configs(PREFIX, [0, 1], model={"spectral": 0.5}, grad="implicit"))
    with pytest.raises(ConfigError, match="differ only in their seed"):
        run_member_experiments(configs(PREFIX, [0], train={"lr": 1e-3}) + configs(PREFIX, [1]))


def test_f_on_an_uneven_active_set_is_each_members_own_f():
    cfgs = configs(PREFIX, [0, 1, 2])
    _, setup = lone_setup(cfgs)
    models = [model.train() for _, model, _ in setup]
    tokens = [torch.as_tensor(data.inputs[:4]) for data, _, _ in setup]  # B = 4 rows per member
    ens = stack_models(models)
    lm = ens.loop_map(torch.cat(tokens))
    idx = torch.tensor([0, 2, 5, 9, 10, 11])  # members 0, 1, 2 have 2, 1, 3 rows still active
    z = torch.randn(len(idx), *lm.x.shape[1:], generator=torch.Generator().manual_seed(0))
    got = lm.f_subset(z, idx)
    for row, r in enumerate(idx.tolist()):
        k, i = divmod(r, 4)
        want = models[k].loop_map(tokens[k]).f_subset(z[row:row + 1], torch.tensor([i]))
        torch.testing.assert_close(got[row:row + 1], want, rtol=1e-5, atol=1e-6, msg=f"row {r} (member {k})")


def test_the_grid_feed_groups_seeds_of_one_arm_and_resumes_from_its_saved_position(tmp_path):
    import pickle

    from ray.tune.search import Searcher

    from orchestrator.run.members import MEMBERS_KEY, member_trials
    from orchestrator.run.tune_space import GridFeed
    from orchestrator.sweep.expand import expand
    from orchestrator.sweep.spec import load_spec

    from conftest import write_spec

    path = write_spec(tmp_path, name="groups", tasks=[{"name": "prefix_sums", "train_size": 8}],
                      axes={"model.recall": ["none", "standard"], "model.spectral": [None, 0.5]},
                      seeds=[0, 1, 2], seeds_per_trial=2)
    spec = load_spec(path)
    cells = expand(spec)
    by_arm = {}
    for c in cells:
        by_arm.setdefault(c.variant, []).append(c.cell_id)
    feed = GridFeed(spec, False, frozenset({by_arm["recall=none,spectral=null"][0]}))  # seed 0 of one arm is done

    def ids(config):
        return [t.trial_id for t in member_trials(config)]
    first = [ids(feed.suggest(f"t{i}")) for i in range(3)]
    assert first[0] == by_arm["recall=none,spectral=null"][1:]              # seeds 1, 2 (seed 0 done)
    assert first[1:] == [[i] for i in by_arm["recall=none,spectral=0.5"][:2]]  # spectral cannot stack: one each
    feed.save(str(tmp_path / "feed.json"))
    again = pickle.loads(pickle.dumps(feed))  # Tune pickles the searcher into tuner.pkl
    again.restore(str(tmp_path / "feed.json"))
    rest = []
    while (config := again.suggest("x")) != Searcher.FINISHED:
        rest.append(ids(config))
        assert (MEMBERS_KEY in config) == (len(rest[-1]) > 1)
    assert rest == [by_arm["recall=none,spectral=0.5"][2:], by_arm["recall=standard,spectral=null"][:2],
                    by_arm["recall=standard,spectral=null"][2:], by_arm["recall=standard,spectral=0.5"][:1],
                    by_arm["recall=standard,spectral=0.5"][1:2], by_arm["recall=standard,spectral=0.5"][2:]]
