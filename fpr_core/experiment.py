"""One trial end to end, without Ray or MLflow: data -> model -> train -> evaluate every split.

The orchestrator's trainable is a thin wrapper around ``run_experiment``: it passes callbacks for
metrics and checkpoints and turns an ``ExperimentResult`` into result rows.

Seeds: ``ExperimentConfig.seed`` is the trial seed. It generates the data (``make_splits``) and,
mixed with ``train.seed`` as ``seed * 1_000_003 + train.seed``, the model init, the batch order and
the global torch RNG of training, so trials with different seeds differ in data and init while
``train.seed`` alone re-rolls init and batches over the same data.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from fpr_core.config import TRAINED, ConfigError, ExperimentConfig, ModelConfig, TaskSpec
from fpr_core.device import select_device
from fpr_core.diagnostics import SPECTRAL_RADIUS
from fpr_core.evaluate import EvalResult, evaluate_split, held_out_exact, scaled_eval_cap
from fpr_core.tasks.base import Task, TaskData
from fpr_core.split_names import ID_SPLIT, TRAIN_SPLIT
from fpr_core.train import CheckpointFn, LogFn, TrainResult, train

SEED_STRIDE = 1_000_003


@dataclass
class SplitResult:
    """Evaluation of one split under one halting protocol: one row of the results table."""

    split: str
    """'id' or 'ood_<size>' (``tasks.splits.split_name``)."""
    size: int
    result: EvalResult
    """What ``evaluate_split`` measured: the metrics and the per-instance arrays."""
    halting: str = TRAINED
    """The halting protocol the split was evaluated under (``EvalConfig.halting``; docs/halting.md)."""

    @property
    def metrics(self) -> dict[str, float]:
        """The split's flat metrics (``evaluate.METRIC_KEYS``)."""
        return self.result.metrics


@dataclass(frozen=True)
class DatasetInfo:
    """What one generated split was: enough to recognise the same data again."""

    split: str
    """'train', 'id' or 'ood_<size>'."""
    size: int
    n: int
    """Instances in the split."""
    digest: str
    """Content hash of the split's arrays (``data_digest``)."""


@dataclass
class ExperimentResult:
    """Training outcome and one SplitResult per eval split (empty unless training ended ok)."""

    train: TrainResult
    splits: list[SplitResult]
    model_cfg_resolved: ModelConfig
    """The model config with vocab_size / n_classes filled in from the task."""
    train_size: int
    difficulty_key: str
    device: str
    model: Optional[torch.nn.Module] = None
    """The trained model (raw weights; ``train.eval_model`` is the EMA copy when EMA is on)."""
    train_tokens: int = 0
    """Tokens per instance at the training size (LoopedModel's ``train_tokens``)."""
    datasets: list[DatasetInfo] = field(default_factory=list)
    """Every split the trial generated, train first."""


def data_digest(data: TaskData) -> str:
    """Short blake2b of a split's inputs, targets and mask (shapes included): equal digests mean
    the same instances in the same order."""
    h = hashlib.blake2b(digest_size=16)
    for array in (data.inputs, data.targets, data.mask):
        a = np.ascontiguousarray(array)
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dataset_infos(splits: dict[str, TaskData]) -> list[DatasetInfo]:
    """DatasetInfo of every split, in generation order."""
    return [DatasetInfo(name, int(d.size), len(d), data_digest(d)) for name, d in splits.items()]


def training_seed(cfg: ExperimentConfig) -> int:
    """Seed of model init, batch order and training RNG (see module doc)."""
    return cfg.seed * SEED_STRIDE + cfg.train.seed


def board_coordinates(task, positions: str) -> Optional[torch.Tensor]:
    """The task's (T, K) board coordinates when ``positions`` (model.positions) is 'absolute',
    else None; ConfigError if the task declares none (its size varies)."""
    if positions != "absolute":
        return None
    coords = task.coordinates()
    if coords is None:
        raise ConfigError(f"model.positions: 'absolute' needs board coordinates, and task "
                          f"{task.name!r} declares none (its size varies); use none, rope1d or rope2d")
    return torch.as_tensor(coords, dtype=torch.long)


def task_board_mask(task, attention_mask: str) -> Optional[torch.Tensor]:
    """The task's (T, T) board mask when ``attention_mask`` (model.attention_mask) is 'board', else
    None; ConfigError if the task declares none (no fixed board)."""
    if attention_mask != "board":
        return None
    allowed = task.board_mask()
    if allowed is None:
        raise ConfigError(f"model.attention_mask: 'board' needs the task's board relations, and task "
                          f"{task.name!r} declares none (no fixed board); use none")
    return torch.as_tensor(allowed, dtype=torch.bool)


def task_model_inputs(task, model_cfg: ModelConfig) -> dict[str, Optional[torch.Tensor]]:
    """What a LoopedModel of ``model_cfg`` takes from ``task`` besides its config: the board
    coordinates (model.positions 'absolute') and the board mask (model.attention_mask 'board'),
    each None when unused; ConfigError when the task declares what the config needs."""
    return {"coordinates": board_coordinates(task, model_cfg.positions),
            "board_mask": task_board_mask(task, model_cfg.attention_mask)}


def _eval_order(name: str, size: int) -> tuple[int, int]:
    return (0 if name == ID_SPLIT else 1, size)


def run_experiment(cfg: ExperimentConfig, *, cache_dir: str | os.PathLike | None | bool = None,
                   on_log: Optional[LogFn] = None, on_checkpoint: Optional[CheckpointFn] = None,
                   resume_state: Optional[dict] = None, should_stop=None,
                   device: str | torch.device = "auto") -> ExperimentResult:
    """Build the splits, train, and evaluate 'id' and every 'ood_<size>' split.

    device: 'auto' defers to ``cfg.train.device`` (itself 'auto' = CUDA if available). The eval
    cap of each split follows ``evaluate.scaled_eval_cap``. If training does not end 'ok'
    (diverged or stopped) nothing is evaluated and ``splits`` is empty.
    """
    from fpr_core.model import LoopedModel
    from fpr_core.tasks import make_splits

    task, train_size = task_of(cfg)
    ood_sizes = task.default_ood_sizes if cfg.task.ood_sizes is None else cfg.task.ood_sizes
    splits = make_splits(task, train_size=train_size, ood_sizes=tuple(ood_sizes),
                         n_train=cfg.train.n_train, n_eval=cfg.eval.n_eval, seed=cfg.seed,
                         cache_dir=cache_dir)
    dev = select_device(cfg.train.device if device == "auto" else device)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=task.vocab_size, n_classes=task.n_classes)
    seed = training_seed(cfg)
    torch.manual_seed(seed)
    train_tokens = math.prod(splits["train"].inputs.shape[1:])
    model = LoopedModel(model_cfg, cfg.solver, cfg.grad, grid=task.grid, train_tokens=train_tokens,
                        **task_model_inputs(task, cfg.model)).to(dev)
    if cfg.train.compile:
        model.compile_training_steps()
    train_cfg = dataclasses.replace(cfg.train, seed=seed)
    train_data, select = held_out_selection(task, splits["train"], cfg, dev)
    result = train(model, task, train_data, train_cfg, on_log=on_log, on_checkpoint=on_checkpoint,
                   resume_state=resume_state, should_stop=should_stop, select=select)
    evaluated: list[SplitResult] = []
    if result.status == "ok":  # 'trained' (the trial's own rows), then any other protocol if it learned
        evaluated += evaluate_splits(result.eval_model, task, splits, cfg, train_size, dev, halting=TRAINED)
        if cfg.eval.protocol_gate <= 0 or id_exact(evaluated) >= cfg.eval.protocol_gate:
            for halting in (h for h in cfg.eval.halting if h != TRAINED):
                evaluated += evaluate_splits(result.eval_model, task, splits, cfg, train_size, dev, halting=halting)
    return ExperimentResult(result, evaluated, model_cfg, train_size, task.difficulty_key, str(dev),
                            model=model, train_tokens=train_tokens, datasets=dataset_infos(splits))


def held_out_selection(task: Task, data: TaskData, cfg: ExperimentConfig, device):
    """(instances to train on, the select function of ``train.select_every`` or None). The last
    ``train.n_select`` training instances are held out and scored at the eval cap of the training
    size; the id split is never used for selection."""
    if not cfg.train.select_every:
        return data, None
    keep = len(data) - cfg.train.n_select
    fit, held = data.subset(np.arange(keep)), data.subset(np.arange(keep, len(data)))

    def select(model: torch.nn.Module) -> float:
        return held_out_exact(model, task, held, cap=cfg.solver.eval_cap, batch_size=cfg.eval.batch_size,
                              device=device)
    return fit, select


def id_exact(results: list[SplitResult]) -> float:
    """In-distribution exact accuracy among ``results`` (NaN when there is no 'id' split)."""
    return next((r.metrics["exact_acc"] for r in results if r.split == ID_SPLIT), float("nan"))


def evaluate_splits(model: torch.nn.Module, task: Task, splits: dict[str, TaskData], cfg: ExperimentConfig,
                    train_size: int, device: torch.device, halting: str = TRAINED) -> list[SplitResult]:
    """Evaluate every split but 'train' ('id' first, then OOD by size), each with the loop cap of
    ``evaluate.scaled_eval_cap``, under the halting protocol ``halting`` (a name ``cfg.eval`` knows:
    the built-ins or ``eval.protocols``) applied to ``cfg.solver``; 'trained' is ``cfg.solver`` itself.
    Under another protocol the probes and the compute curve are left out (they are read under 'trained')."""
    solver = cfg.eval.defined_protocols()[halting].apply(cfg.solver) if halting != TRAINED else cfg.solver
    own = halting == TRAINED
    eval_cfg = cfg.eval if own else dataclasses.replace(cfg.eval, diagnostics=False)
    out: list[SplitResult] = []
    names = sorted((n for n in splits if n != TRAIN_SPLIT), key=lambda n: _eval_order(n, splits[n].size))
    with halting_solver(model, solver):
        for name in names:
            data = splits[name]
            cap = scaled_eval_cap(solver, data.size, train_size, task.cap_law)
            ev = evaluate_split(model, task, data, cap=cap, cfg=eval_cfg, device=device, seed=cfg.seed, curve=own)
            if name == ID_SPLIT:  # the trained regime: rho at every verified fixed point, not only the probes'
                ev.metrics[SPECTRAL_RADIUS] = id_spectral_radius(model, data, cap, cfg, device)
            out.append(SplitResult(name, int(data.size), ev, halting))
    return out


@contextlib.contextmanager
def halting_solver(model: torch.nn.Module, solver):
    """The model's loop halts under ``solver`` (a SolverConfig) inside the block: the solver, the
    probes and the readout all take ``model.solver_cfg``; the weights are untouched."""
    before = model.solver_cfg
    model.solver_cfg = solver
    try:
        yield model
    finally:
        model.solver_cfg = before


def id_spectral_radius(model: torch.nn.Module, data: TaskData, cap: int, cfg: ExperimentConfig, device) -> float:
    """Median rho(dF/dz) over every verified fixed point of the in-distribution split
    (``diagnostics.fixed_point_radius``, with eval.power_iters and the trial seed)."""
    from fpr_core.diagnostics import fixed_point_radius

    inputs = torch.as_tensor(data.inputs, device=device)
    return fixed_point_radius(model, inputs, cap=cap, power_iters=cfg.eval.power_iters, seed=cfg.seed,
                              batch_size=cfg.eval.batch_size)


def task_of(cfg: ExperimentConfig) -> tuple[Task, int]:
    """The config's task and its training size (the task's default when unset)."""
    from fpr_core.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.params)
    return task, (task.default_train_size if cfg.task.train_size is None else int(cfg.task.train_size))


def evaluate_sizes(model: torch.nn.Module, cfg: ExperimentConfig, sizes: tuple[int, ...], *,
                   include_id: bool = False, cache_dir: str | os.PathLike | None | bool = None,
                   device: str | torch.device = "cpu") -> tuple[list[SplitResult], list[DatasetInfo]]:
    """Evaluate a trained ``model`` of the trial ``cfg`` on 'ood_<size>' splits (and 'id'), no training.

    The splits are the ones ``run_experiment`` would have built with these OOD sizes: the same
    seeds, and the same exclusion of every train and 'id' instance, so an 'id' re-evaluation sees
    exactly the instances the trial was scored on. Returns the results and the evaluated splits'
    DatasetInfo."""
    from fpr_core.tasks import make_splits

    task, train_size = task_of(cfg)
    splits = make_splits(task, train_size=train_size, ood_sizes=tuple(sizes), n_train=cfg.train.n_train,
                         n_eval=cfg.eval.n_eval, seed=cfg.seed, cache_dir=cache_dir)
    if not include_id:
        del splits[ID_SPLIT]
    dev = torch.device(device)
    model = model.to(dev)
    infos = [i for i in dataset_infos(splits) if i.split != "train"]
    return evaluate_splits(model, task, splits, cfg, train_size, dev), infos
