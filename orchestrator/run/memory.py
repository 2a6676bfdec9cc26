"""A rough memory estimate of one trial, for `validate` (issue 33 item 9): a spec with dim 10^6 or an
eval size of 10^6 passed validation and was OOM-killed once running (dim 8,192 in a 3 GB cgroup).

The estimate is an order of magnitude, not a measurement: float32 parameters (the looped block's
attention and MLP, the recall/injection matrix, embeddings), their gradients and AdamW's two moment
buffers (plus an EMA copy), the activations kept for the backward pass over every loop step up to
the training cap (bptt and truncated alike: an upper bound), and one loop step's activations at the
largest eval size (evaluation runs without gradients). Tokens per instance: size for sequence
tasks, size^2 for mazes (an S x S grid), the fixed board for sudoku (81) and chess (64). Attention
scores count only where fpr_core forms them explicitly (short sequences on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

BYTES = 4  # float32
FIXED_BOARD = {"sudoku": 81, "chess": 64}
SQUARE = {"mazes"}
LARGEST_GPU = 80 * 2**30
"""A GPU spec's trials run on GPU nodes that validate cannot see: they must fit this (an A100/H100)."""
FIT_FRACTION = 0.8
"""A trial may use at most this share of a node's memory (Ray, the driver and the OS need the rest)."""


def tokens(task: str, size: int) -> int:
    if task in FIXED_BOARD:
        return FIXED_BOARD[task]
    return size * size if task in SQUARE else size


@dataclass
class Estimate:
    params: int
    weights_bytes: int
    """Parameters, gradients, AdamW's two moments (and the EMA copy)."""
    train_activation_bytes: int
    eval_activation_bytes: int

    @property
    def total(self) -> int:
        return self.weights_bytes + max(self.train_activation_bytes, self.eval_activation_bytes)

    def describe(self) -> str:
        return (f"~{gib(self.total)} ({self.params:,} parameters: {gib(self.weights_bytes)} with gradients and AdamW "
                f"state; activations {gib(self.train_activation_bytes)} in training, "
                f"{gib(self.eval_activation_bytes)} at the largest eval size)")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def _step_activations(batch: int, t: int, d: int, heads: int, layers: int, mlp_ratio: float) -> int:
    """Floats one loop step keeps: the block's per-token tensors, and the attention scores where
    fpr_core forms them (up to SMALL_ATTENTION_TOKENS on CPU; longer sequences, and every CUDA one,
    take PyTorch's fused attention, which keeps no T x T scores)."""
    from fpr_core.model.mixers import SMALL_ATTENTION_TOKENS

    per_token = layers * (12 + 3 * mlp_ratio) * d
    scores = layers * batch * heads * t * t * 2 if t <= SMALL_ATTENTION_TOKENS else 0
    return int(batch * t * per_token + scores)


def estimate(cfg: Any) -> Estimate:
    """``cfg``: fpr_core's ExperimentConfig of one trial."""
    m, task = cfg.model, cfg.task
    d, layers, ratio = int(m.dim), int(m.n_layers), float(m.mlp_ratio)
    params = int(layers * (4 + 3 * ratio) * d * d + 2 * d * d + (m.vocab_size + m.n_classes + 16) * d)
    copies = 4 + (1 if cfg.train.ema else 0)  # weights, gradients, AdamW exp_avg and exp_avg_sq (+ EMA)
    t_train = tokens(task.name, task.train_size)
    t_eval = max(tokens(task.name, s) for s in (task.train_size, *task.ood_sizes))
    b_train, b_eval = min(cfg.train.batch_size, cfg.train.n_train), min(cfg.eval.batch_size, cfg.eval.n_eval)
    train = cfg.solver.train_cap * _step_activations(b_train, t_train, d, m.heads, layers, ratio)
    # no gradients: the state, the input and one sublayer's transient tensors (about a third of training's)
    evaluation = _step_activations(b_eval, t_eval, d, m.heads, layers, ratio) // 3 + 2 * b_eval * t_eval * d
    return Estimate(params, params * BYTES * copies, train * BYTES, evaluation * BYTES)


def _cgroup_limit() -> Optional[int]:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def local_memory() -> tuple[int, str]:
    """This machine's memory (the smaller of RAM and this cgroup's limit) and where it came from."""
    import psutil

    total = psutil.virtual_memory().total
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, "this cgroup's memory limit"
    return total, "this machine's memory"


MEMORY_CHECKED_TRIALS = 10_000
"""`validate` estimates the memory of at most this many trials (the grid's first ones)."""


def check_fits(plan: Any, yes: bool) -> Optional[str]:
    """Refuse (DoesNotFit) a plan whose largest trial is estimated not to fit in this machine's
    memory (or the largest GPU's, for a GPU spec), naming the trial and the estimate; with ``yes``
    the same message comes back as a warning. None when every checked trial fits."""
    import itertools

    from fpr_core.config import ExperimentConfig
    from orchestrator.sweep.errors import DoesNotFit
    from orchestrator.sweep.expand import resolve

    worst = None
    for cell in itertools.islice(plan.cells(), MEMORY_CHECKED_TRIALS):
        trial = resolve(cell)
        est = estimate(ExperimentConfig.from_dict(trial.experiment_config()))
        if worst is None or est.total > worst[1].total:
            worst = (trial, est)
    if worst is None:
        return None
    have, source = local_memory()
    if plan.spec.resources.gpu > 0 and have < LARGEST_GPU:  # its trials run on GPU nodes, not here
        have, source = LARGEST_GPU, "the largest GPU's memory"
    trial, est = worst
    if est.total <= FIT_FRACTION * have:
        return None
    c = trial.cell
    message = (f"trial {trial.trial_id} ({c.task} {c.variant} seed {c.seed}) needs an estimated {est.describe()}, "
               f"more than {FIT_FRACTION:.0%} of {source} ({gib(have)}); shrink model.dim, the batch "
               "sizes, solver.train_cap or the largest ood size, or pass --yes to validate it anyway.")
    if yes:
        return message
    raise DoesNotFit(message)
