"""K trials of one configuration, differing only in their seed, run end to end as one batched model.

``run_member_experiments(cfgs)`` is ``fpr_core.experiment.run_experiment`` for K seeds at once:
each member generates its own splits from its own seed and is initialised alone from its own
training seed (exactly as its lone trial), then the K models train stacked (``fpr_core.ensemble``)
and each member is unstacked into a lone model and evaluated by the same code as a lone trial.
With one member it *is* ``run_experiment`` (bit-identical by construction).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Optional, Sequence

import torch

from fpr_core.config import ExperimentConfig
from fpr_core.device import select_device
from fpr_core.ensemble import (MembersCheckpointFn, MembersLogFn, check_members, stack_models, train_members,
                               unstack_member)
from fpr_core.experiment import (ExperimentResult, dataset_infos, evaluate_splits, run_experiment, task_model_inputs,
                                 task_of, training_seed)


def _lone_callbacks(on_log: Optional[MembersLogFn], on_checkpoint: Optional[MembersCheckpointFn]):
    """The member callbacks of a single member, as fpr_core.train's lone callbacks."""
    log = (lambda step, metrics: on_log(step, [metrics])) if on_log else None
    ckpt = (lambda step, state: on_checkpoint(step, [state])) if on_checkpoint else None
    return log, ckpt


def build_member_model(cfg: ExperimentConfig, task, splits, device):
    """Member ``cfg``'s lone model, initialised from its training seed as ``run_experiment`` does."""
    from fpr_core.model import LoopedModel

    model_cfg = dataclasses.replace(cfg.model, vocab_size=task.vocab_size, n_classes=task.n_classes)
    torch.manual_seed(training_seed(cfg))
    train_tokens = math.prod(splits["train"].inputs.shape[1:])
    model = LoopedModel(model_cfg, cfg.solver, cfg.grad, grid=task.grid, train_tokens=train_tokens,
                        **task_model_inputs(task, cfg.model)).to(device)
    return model, model_cfg, train_tokens


def run_member_experiments(cfgs: Sequence[ExperimentConfig], *, cache_dir: str | os.PathLike | None | bool = None,
                           on_log: Optional[MembersLogFn] = None, on_checkpoint: Optional[MembersCheckpointFn] = None,
                           resume_states: Optional[Sequence[dict[str, Any]]] = None,
                           should_stop: Optional[Callable[[], bool]] = None,
                           device: str | torch.device = "auto") -> list[ExperimentResult]:
    """``run_experiment`` for each of ``cfgs`` (one configuration at K seeds), trained as one model.

    on_log(step, [metrics per member]) and on_checkpoint(step, [lone-format state per member]) get
    None for a member that stopped training (diverged). resume_states: one state per member, all of
    one step. Returns one ExperimentResult per member, in order."""
    from fpr_core.tasks import make_splits

    check_members(cfgs)
    if len(cfgs) == 1:
        log, ckpt = _lone_callbacks(on_log, on_checkpoint)
        return [run_experiment(cfgs[0], cache_dir=cache_dir, on_log=log, on_checkpoint=ckpt,
                               resume_state=resume_states[0] if resume_states else None,
                               should_stop=should_stop, device=device)]
    task, train_size = task_of(cfgs[0])
    ood_sizes = tuple(task.default_ood_sizes if cfgs[0].task.ood_sizes is None else cfgs[0].task.ood_sizes)
    dev = select_device(cfgs[0].train.device if device == "auto" else device)
    splits, models = [], []
    for cfg in cfgs:
        splits.append(make_splits(task, train_size=train_size, ood_sizes=ood_sizes, n_train=cfg.train.n_train,
                                  n_eval=cfg.eval.n_eval, seed=cfg.seed, cache_dir=cache_dir))
        models.append(build_member_model(cfg, task, splits[-1], dev))
    ens = stack_models([m for m, _, _ in models])
    train_cfgs = [dataclasses.replace(cfg.train, seed=training_seed(cfg)) for cfg in cfgs]
    trained = train_members(ens, task, [s["train"] for s in splits], train_cfgs, on_log=on_log,
                            on_checkpoint=on_checkpoint, resume_states=resume_states, should_stop=should_stop)
    results = []
    for k, (cfg, split, (model, model_cfg, train_tokens), result) in enumerate(zip(cfgs, splits, models, trained)):
        unstack_member(ens, k, model)
        eval_model = model
        if result.eval_model is not ens:  # the EMA copy
            eval_model = unstack_member(result.eval_model, k, _lone_copy(model))
        result = dataclasses.replace(result, eval_model=eval_model)
        evaluated = []
        if result.status == "ok":
            for halting in cfg.eval.halting:
                evaluated += evaluate_splits(eval_model, task, split, cfg, train_size, dev, halting=halting)
        results.append(ExperimentResult(result, evaluated, model_cfg, train_size, task.difficulty_key, str(dev),
                                        model=model, train_tokens=train_tokens, datasets=dataset_infos(split)))
    return results


def _lone_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)
