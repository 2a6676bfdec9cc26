"""Training: the objective (deep-supervision segments, Deep Thinking's progressive loss) and the
loop (AdamW + warmup/cosine, grad clipping, optional EMA, exact resume, divergence stop).

The trainer knows nothing of loggers or Ray: it calls ``on_log(step, metrics)`` and
``on_checkpoint(step, state)`` and checks ``should_stop()``. A checkpoint ``state`` holds only
tensors and plain containers (CPU copies), so it round-trips through ``torch.load(weights_only=True)``
and, passed back as ``resume_state``, continues training exactly (same batches, same losses).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from fpr_core.config import TrainConfig
from fpr_core.device import autocast, select_device
from fpr_core.gradients import unroll
from fpr_core.losses import get_loss
from fpr_core.model.looped import LoopOutput
from fpr_core.tasks.base import Task, TaskData

__all__ = ["TrainResult", "train", "training_loss", "sample_progressive_steps", "lr_at", "save_checkpoint",
           "load_checkpoint", "select_device"]

ADAM_BETAS = (0.9, 0.95)
"""FPRM's AdamW betas."""
CHECKPOINT_FORMAT = 1

LogFn = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[int, dict[str, Any]], None]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------- the objective

def training_loss(model, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, loss_fn: LossFn):
    """The training loss for every grad mode (incl. progressive) and deep-supervision segments.

    inputs/targets/mask (B, *shape); loss_fn(logits (B, *shape, C), targets, mask) -> scalar.
    ``grad.segments > 1`` is deep supervision (FPRM/TRM): the forward runs ``segments`` times, each
    from the previous segment's detached state, and the per-segment losses are summed. Returns
    (loss, out) with out the LoopOutput of the last segment. The model must be in training mode;
    the caller runs backward and the optimizer step.
    """
    grad_cfg = model.grad_cfg
    total, z, out = None, None, None
    for _ in range(grad_cfg.segments):
        if grad_cfg.mode == "progressive":
            progressive = progressive_dt if grad_cfg.progressive == "dt" else progressive_halting
            loss, out = progressive(model, inputs, targets, mask, loss_fn, z)
        else:
            out = model(inputs, z0=z)
            loss = loss_fn(out.logits, targets, mask)
        total = loss if total is None else total + loss
        z = out.z.detach()
    return total, out


def sample_progressive_steps(total: int, generator: Optional[torch.Generator] = None) -> tuple[int, int]:
    """Deep Thinking's draw for T = total: n ~ U{0..T-1} steps without grad, k ~ U{1..T-n} with grad
    (DT's ``randrange(0, T)`` and ``randrange(1, T - n + 1)``)."""
    n = int(torch.randint(0, total, (), generator=generator))
    k = int(torch.randint(1, total - n + 1, (), generator=generator))
    return n, k


def progressive_dt(model, inputs, targets, mask, loss_fn: LossFn, z0=None):
    """Deep Thinking's progressive loss as published (Bansal et al. 2022, deep-thinking train_model):
    T = solver.train_cap plain steps, no halting. full: the loss after T steps from the start;
    progressive: n steps without grad, then k steps with grad from the detached state;
    loss = (1 - alpha)*full + alpha*progressive (alpha = 1: the full run keeps no graph)."""
    alpha, total = model.grad_cfg.alpha, model.solver_cfg.train_cap
    with model.weights_cached():
        lm = model.loop_map(inputs)
        start = lm.z0 if z0 is None else z0
        with torch.set_grad_enabled(torch.is_grad_enabled() and alpha < 1.0):
            z, trace = unroll(lm, start, total, model.solver_cfg)
            logits = model.readout(z, lm.shape)
        out = LoopOutput(logits=logits, z=z, trace=trace)
        loss = (1.0 - alpha) * loss_fn(logits, targets, mask) if alpha < 1.0 else None
        if alpha > 0.0:
            prog = alpha * progressive_term(model, lm, start, *sample_progressive_steps(total),
                                            targets, mask, loss_fn)
            loss = prog if loss is None else loss + prog
    return loss, out


def progressive_halting(model, inputs, targets, mask, loss_fn: LossFn, z0=None):
    """This project's first progressive form (``grad.progressive: halting``): full = the halting
    solver's forward under bptt; n ~ U{0..cap-1} detached steps, then j ~ U{1..grad.k} with grad."""
    grad_cfg, cap = model.grad_cfg, model.default_cap()
    alpha = grad_cfg.alpha
    if alpha < 1.0:
        out = model(inputs, z0=z0)
        loss = (1.0 - alpha) * loss_fn(out.logits, targets, mask)
    else:
        with torch.no_grad():
            out = model(inputs, z0=z0)
        loss = None
    if alpha > 0.0:
        n = int(torch.randint(0, max(cap, 1), ()).item())
        j = int(torch.randint(1, grad_cfg.k + 1, ()).item())
        with model.weights_cached():
            lm = model.loop_map(inputs)
            prog = alpha * progressive_term(model, lm, lm.z0 if z0 is None else z0, n, j, targets, mask, loss_fn)
        loss = prog if loss is None else loss + prog
    return loss, out


def progressive_term(model, lm, start: torch.Tensor, n: int, k: int, targets, mask, loss_fn: LossFn) -> torch.Tensor:
    """Deep Thinking's progressive term: n plain steps without grad from ``start``, then k steps with
    grad from the detached state; the loss of that state's readout."""
    z = start
    with torch.no_grad():
        for _ in range(n):
            z = lm.f(z)
    z = z.detach()
    for _ in range(k):
        z = lm.f(z)
    return loss_fn(model.readout(z, lm.shape), targets, mask)


# ------------------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """Outcome of ``train``."""

    status: str
    """ok | diverged (non-finite loss or grad norm) | stopped (should_stop() returned True)."""
    steps: int
    """Optimizer steps completed (including steps done before a resume)."""
    seconds: float
    """Wall time spent training (including time before a resume)."""
    final_loss: float
    """Loss of the last completed step (nan if none, or the non-finite value that stopped it)."""
    message: str = ""
    """Why training stopped early, empty when status is ok."""
    losses: list[float] = field(default_factory=list)
    """Training loss of every completed step, in order."""
    eval_model: Optional[nn.Module] = field(default=None, repr=False)
    """The weights to evaluate: the EMA copy when ``TrainConfig.ema`` is set, else the model; with
    ``select_every`` the best-scoring of those weights (see ``selected_step``)."""
    selected_step: Optional[int] = None
    """The step whose weights ``eval_model`` holds when ``select_every`` > 0 (None when off)."""
    selected_score: Optional[float] = None
    """Their held-out exact accuracy."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to 10% of lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm gains, biases (1-D) and residual-scale logits (FPRM: 'no weight decay') skip decay."""
    return param.ndim < 2 or "logit" in name


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: decayed weight matrices and undecayed gains/biases/logits."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS)


class EMA:
    """Exponential moving average of the weights; ``module`` is the copy used for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema: got {decay}, expected a decay strictly between 0 and 1 or null")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)


def _clone_cpu(obj: Any) -> Any:
    """Deep copy of a state (tensors cloned to CPU, containers rebuilt as plain dict/list)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clone_cpu(v) for v in obj]
    return obj


def save_checkpoint(path, state: dict[str, Any]) -> None:
    """Write a training state (from ``on_checkpoint``) to ``path``."""
    torch.save(state, path)


def load_checkpoint(path) -> dict[str, Any]:
    """Read a training state written by ``save_checkpoint`` (``weights_only=True``: no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class _Loop:
    """Everything that changes while training; ``state()``/``restore()`` make it resumable."""

    model: nn.Module
    optimizer: torch.optim.AdamW
    ema: Optional[EMA]
    batches: torch.Generator
    step: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    best: Optional[dict[str, Any]] = None
    """With ``select_every``: {"step", "score", "weights"} of the best-scoring eval weights so far."""

    def eval_module(self) -> nn.Module:
        return self.ema.module if self.ema else self.model

    def offer_selection(self, score: float) -> None:
        """Keep the eval weights of this step if they score above every earlier step (ties keep the
        earlier, as Deep Thinking saves model_best only on a strictly higher val accuracy)."""
        if self.best is None or score > self.best["score"]:
            self.best = {"step": self.step, "score": float(score),
                         "weights": _clone_cpu(self.eval_module().state_dict())}

    def state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return _clone_cpu({
            "format": CHECKPOINT_FORMAT, "step": self.step, "seconds": self.seconds,
            "losses": list(self.losses), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None, "best": self.best,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda, "batches": self.batches.get_state()},
        })

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"resume_state: format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        if (state["ema"] is None) != (self.ema is None):
            raise ValueError("resume_state: EMA presence differs from train.ema of this run")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.batches.set_state(state["rng"]["batches"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.losses = [float(v) for v in state["losses"]]
        self.best = state.get("best")


def _batch_metrics(task: Task, out, targets: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token accuracy on masked positions, exact match per instance, mean loop iterations."""
    with torch.no_grad():
        correct = task.decode(out.logits.float()) == targets  # (B, *shape)
        masked = correct | ~mask
        token_acc = correct[mask].float().mean() if mask.any() else torch.tensor(float("nan"))
        return {"token_acc": float(token_acc),
                "exact_acc": float(masked.flatten(1).all(1).float().mean()),
                "iters_mean": float(out.trace.iterations.float().mean())}


def train(model: nn.Module, task: Task, data: TaskData, cfg: TrainConfig, *,
          on_log: Optional[LogFn] = None, on_checkpoint: Optional[CheckpointFn] = None,
          resume_state: Optional[dict[str, Any]] = None,
          should_stop: Optional[Callable[[], bool]] = None,
          select: Optional[Callable[[nn.Module], float]] = None) -> TrainResult:
    """Train ``model`` (already on its device) on ``data`` for ``cfg.steps`` optimizer steps.

    Batches are drawn with replacement by a ``torch.Generator`` seeded with ``cfg.seed``, and the
    global torch RNG (random initial states, progressive-loss draws) is seeded too, so on CPU the
    same seed gives the same loss curve. A non-finite loss or gradient norm stops training with
    status ``diverged`` before the weights are touched. With ``cfg.select_every`` > 0,
    ``select(eval_weights) -> score`` is called every that many steps (and at the last step) and the
    best-scoring weights are the ones returned for evaluation.
    """
    device = next(model.parameters()).device
    inputs, targets, mask = (torch.as_tensor(a, device=device) for a in (data.inputs, data.targets, data.mask))
    loss_fn = get_loss(cfg.loss, cfg.label_smoothing)
    if cfg.select_every and select is None:
        raise ValueError("train.select_every > 0 needs a select(model) -> score function")
    torch.manual_seed(cfg.seed)
    loop = _Loop(model, build_optimizer(model, cfg), EMA(model, cfg.ema) if cfg.ema is not None else None,
                 torch.Generator().manual_seed(cfg.seed))
    if resume_state is not None:
        loop.restore(resume_state)
    trainable = [p for p in model.parameters() if p.requires_grad]
    status, message, started = "ok", "", time.perf_counter()

    def finish(final_loss: float) -> TrainResult:
        loop.seconds += time.perf_counter() - started
        eval_model, best = loop.eval_module(), loop.best
        if best is not None:
            eval_model = copy.deepcopy(eval_model).eval().requires_grad_(False)
            eval_model.load_state_dict(best["weights"])
        return TrainResult(status, loop.step, loop.seconds, final_loss, message, list(loop.losses), eval_model,
                           best["step"] if best else None, best["score"] if best else None)

    while loop.step < cfg.steps:
        if should_stop is not None and should_stop():
            status, message = "stopped", f"should_stop() at step {loop.step}"
            break
        lr = lr_at(loop.step, cfg)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(data), (cfg.batch_size,), generator=loop.batches).to(device)
        batch_targets, batch_mask = targets[idx], mask[idx]
        model.train()
        loop.optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss, out = training_loss(model, inputs[idx], batch_targets, batch_mask, loss_fn)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            status, message = "diverged", f"non-finite loss {loss_value} at step {loop.step + 1}"
            return finish(loss_value)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        if not math.isfinite(grad_norm):
            status, message = "diverged", f"non-finite gradient norm {grad_norm} at step {loop.step + 1}"
            return finish(loss_value)
        loop.optimizer.step()
        after_step = getattr(model, "after_optimizer_step", None)
        if after_step is not None:  # e.g. model.spectral_hold: every_step re-normalises the step gain
            after_step()
        if loop.ema is not None:
            loop.ema.update(model)
        loop.step += 1
        loop.losses.append(loss_value)
        selection = None
        if cfg.select_every and (loop.step % cfg.select_every == 0 or loop.step == cfg.steps):
            selection = float(select(loop.eval_module()))
            loop.offer_selection(selection)
        if on_log is not None and (loop.step % cfg.log_every == 0 or loop.step == cfg.steps):
            metrics = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}
            metrics.update(_batch_metrics(task, out, batch_targets, batch_mask))
            if selection is not None:
                metrics["select_exact_acc"] = selection
            on_log(loop.step, metrics)
        if on_checkpoint is not None and loop.step % cfg.checkpoint_every == 0:
            loop.seconds += time.perf_counter() - started
            started = time.perf_counter()
            on_checkpoint(loop.step, loop.state())
    return finish(loop.losses[-1] if loop.losses else float("nan"))
