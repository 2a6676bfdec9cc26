"""K members of one configuration trained as one model: parameters stacked on a leading member axis.

A study's cost is mostly seeds, and at dim 32 a training step is overhead-bound (a kernel launch
costs about what its arithmetic does). Stacking K seeds of one configuration makes every kernel K
times larger for about the same number of launches.

How: the batch axis carries the members, member-major, ``(K*B, T, d)`` with rows ``k*B .. k*B+B-1``
belonging to member k. Everything in the loop that has no weights (norms, attention, activations,
the solver's per-sample halting) already works per sample, so it runs unchanged on K*B rows. The
modules that hold weights are switched to member-batched forms of themselves, with the same
parameter names and each parameter stacked to (K, *shape):

- ``nn.Linear`` -> one ``torch.baddbmm`` over the member axis (measured against torch.func's
  ``vmap(functional_call)`` in benchmarks/bench_ensemble.py: batched matmuls won on CPU at dim 32);
- ``nn.Embedding`` -> one lookup in the (K*V, d) table with per-member offsets;
- depthwise ``nn.Conv2d`` (every token conv, 1-D ones as 1 x T images) -> one conv per member on its rows;
- ``ResidualCoefficients`` -> per-member coefficients (K, d) repeated over each member's rows.

The switch changes a module's class in place (as torch.nn.utils.parametrize does), so the model's
own code (``LoopedModel._step``, the solver, the gradient modes) is the one that runs; a module
holding weights of any other kind is refused, never run wrongly.

Halting: the solver shrinks its active set as samples converge, which would mix members' rows.
``MemberLoopMap.f_subset`` pads each member's active rows to the largest member's count (masks
where shrinking would break the batching), so every sample keeps its per-sample halting.

Each member keeps its own init (built alone from its seed), its own batch order (its own
generator), its own loss (the total is a sum, so member k's gradient is dL_k/dtheta_k), its own
gradient clipping and its own divergence stop; AdamW and EMA act elementwise and are shared.
Checkpoints are per member and in the lone format of ``fpr_core.train``, so a member's state
resumes as a lone run or inside any ensemble.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.config import ConfigError, ExperimentConfig, TrainConfig
from fpr_core.device import autocast
from fpr_core.losses import get_loss
from fpr_core.model.looped import LoopedModel, LoopMap, LoopOutput
from fpr_core.model.recall import ResidualCoefficients
from fpr_core.tasks.base import Task, TaskData
from fpr_core.train import (ADAM_BETAS, CHECKPOINT_FORMAT, EMA, TrainResult, _batch_metrics, _clone_cpu, _no_decay,
                            lr_at, training_loss)

MembersLogFn = Callable[[int, list[Optional[dict[str, float]]]], None]
"""on_log(step, per-member metrics; None for a member that stopped training)."""
MembersCheckpointFn = Callable[[int, list[Optional[dict[str, Any]]]], None]
"""on_checkpoint(step, per-member lone-format training states; None for a member that stopped)."""


# ------------------------------------------------------------------------ member-batched modules

def _members_first(t: torch.Tensor, members: int) -> torch.Tensor:
    """(K*B, ..., c) -> (K, B*..., c): each member's rows as one matrix."""
    return t.reshape(members, -1, t.shape[-1])


class MemberLinear(nn.Linear):
    """nn.Linear with weight (K, out, in) and bias (K, out): one batched matmul over members."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K*B, ..., in) -> (K*B, ..., out)
        w = self.weight.transpose(1, 2)  # (K, in, out)
        h = _members_first(x, w.shape[0])
        y = torch.bmm(h, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), h, w)
        return y.reshape(*x.shape[:-1], w.shape[-1])


class MemberEmbedding(nn.Embedding):
    """nn.Embedding with weight (K, V, d): member k's tokens look up rows k*V .. k*V+V-1."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (K*B, T) -> (K*B, T, d)
        k, v, d = self.weight.shape
        offsets = torch.arange(k, device=tokens.device).repeat_interleave(tokens.shape[0] // k) * v
        return F.embedding(tokens + offsets.view(-1, *([1] * (tokens.dim() - 1))), self.weight.reshape(k * v, d))


class MemberConv2d(nn.Conv2d):
    """A depthwise conv with weight (K, C, 1, kh, kw): one conv per member, on that member's block
    of rows with its own kernel, the rows' memory left as it is. DepthwiseTokenConv hands over
    channels-last views, on which PyTorch's CPU depthwise kernel is fast; folding the K*B samples
    into K*B*C channel groups of one conv needed a contiguous copy and ran 3.3x slower than the K
    separate convs (9x9 mazes, K=4, batch 64, dim 32, forward + backward: 11.9 against 3.6 ms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K*B, C, H, W) -> (K*B, C, H', W')
        return torch.cat([F.conv2d(rows, weight, None, self.stride, self.padding, self.dilation, self.groups)
                          for rows, weight in zip(x.chunk(self.weight.shape[0]), self.weight)])


MEMBER_FORMS: dict[type, type] = {nn.Linear: MemberLinear, nn.Embedding: MemberEmbedding,
                                  nn.Conv2d: MemberConv2d,
                                  ResidualCoefficients: ResidualCoefficients}
"""The modules with weights a member-batched model knows, and their member-batched forms
(ResidualCoefficients is elementwise in its logits: stacked (K, d) logits give (K, d) coefficients,
which ``MemberLoopedModel`` repeats over each member's rows)."""


@dataclass
class MemberLoopMap(LoopMap):
    """A LoopMap over K*B member-major rows.

    The solver's active set shrinks as samples halt, and a shrunk set no longer splits into K
    equal member blocks. ``f_subset`` pads each member's active rows to the largest member's count
    (zero states in the padding, their outputs dropped), so compute still follows difficulty and
    every sample gets exactly the F of its own member."""

    members: int = 1
    model: Optional["MemberLoopedModel"] = field(default=None, repr=False)
    _padding: Optional[tuple] = field(default=None, repr=False)
    """(idx, slots (A,), x rows of the padded layout) for the active set ``idx``."""

    def run(self, z: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
        """F on member-major rows: the model's coefficients follow the rows per member."""
        self.model.rows_per_member = z.shape[0] // self.members
        return self.step(z, x_rows)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return self.run(z, self.x)

    def f_subset(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (A, T, d) -> (A, T, d)
        if idx.numel() == self.x.shape[0]:
            return self.run(z, self.x)
        if self._padding is None or self._padding[0] is not idx:
            self._padding = (idx, *self._pad(idx))
        _, slots, x_rows = self._padding
        padded = z.new_zeros(x_rows.shape[0], *z.shape[1:]).index_copy(0, slots, z)
        return self.run(padded, x_rows).index_select(0, slots)

    def _pad(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots (A,): each active row's place in the padded (K*W, ...) layout, W = the largest
        member's active count; and the x rows of that layout (padding reads its member's first row)."""
        k, b = self.members, self.x.shape[0] // self.members
        member = torch.div(idx, b, rounding_mode="floor")                 # (A,)
        counts = torch.bincount(member, minlength=k)                      # (K,)
        width = int(counts.max())
        first = counts.cumsum(0) - counts                                 # (K,)
        slots = member * width + torch.arange(idx.numel(), device=idx.device) - first[member]
        rows = torch.div(torch.arange(k * width, device=idx.device), width, rounding_mode="floor") * b
        return slots, self.x.index_select(0, rows.index_copy(0, slots, idx))


class MemberLoopedModel(LoopedModel):
    """A LoopedModel whose weights are stacked over ``members`` and whose batch is K*B rows."""

    members: int = 1
    rows_per_member: int = 1
    """Rows of each member in the batch F runs on next (set by ``MemberLoopMap.run``)."""

    def loop_map_from_embedding(self, x: torch.Tensor, shape: tuple[int, ...]) -> LoopMap:
        if x.shape[0] % self.members:
            raise ValueError(f"member-batched model: got {x.shape[0]} rows, expected a multiple of {self.members}")
        lm = super().loop_map_from_embedding(x, shape)
        fields = {f.name: getattr(lm, f.name) for f in dataclasses.fields(LoopMap) if f.init and f.name != "_rows"}
        return MemberLoopMap(**fields, members=self.members, model=self)

    def _coefficients_once(self) -> Callable[[], tuple]:
        """LoopedModel's coefficients once per loop map and grad mode, each (K, d) repeated over the
        rows of its member: (K*rows, 1, d), which broadcasts against (K*rows, T, d) as (d,) does alone."""
        cache: dict[tuple[bool, int], tuple] = {}

        def coeffs() -> tuple:
            grad, rows = torch.is_grad_enabled(), self.rows_per_member
            if (grad, rows) not in cache:
                if (grad, 0) not in cache:
                    cache[grad, 0] = self.coeffs()
                cache[grad, rows] = tuple(c.repeat_interleave(rows, 0).unsqueeze(1) if c.dim() == 2 else c
                                          for c in cache[grad, 0])
            return cache[grad, rows]
        return coeffs


# --------------------------------------------------------------------------- what can be stacked

def member_refusals(cfg: ExperimentConfig) -> list[str]:
    """Why K > 1 members of ``cfg`` cannot train as one batched model (empty: they can)."""
    m, s, g, t = cfg.model, cfg.solver, cfg.grad, cfg.train
    why = []
    if m.spectral is not None:
        why.append("model.spectral (spectral normalisation's power iteration is per weight matrix)")
    if m.positions == "absolute":
        why.append("model.positions 'absolute' (board coordinate tables are not member-batched)")
    if m.attention_mask == "board":
        why.append("model.attention_mask 'board' (the member-batched attention has no board mask)")
    if m.z0 == "random":
        why.append("model.z0 'random' (one random draw per member would need a generator per member)")
    if g.mode in ("progressive", "implicit"):
        why.append(f"grad.mode {g.mode!r} (per-member step counts / a batch-wide convergence test)")
    if not s.per_sample:
        why.append("solver.per_sample false (batch halting would wait for the slowest member's sample)")
    if t.compile:
        why.append("train.compile")
    if getattr(t, "select_every", 0):
        why.append("train.select_every (keep-best selection is per lone run)")
    return why


def check_members(cfgs: Sequence[ExperimentConfig]) -> None:
    """Raise ConfigError unless ``cfgs`` are one configuration at several seeds that can be stacked."""
    if not cfgs:
        raise ConfigError("seeds_per_trial: got no members, expected at least one")
    first = dataclasses.replace(cfgs[0], seed=0)
    for cfg in cfgs[1:]:
        if dataclasses.replace(cfg, seed=0) != first:
            raise ConfigError("seeds_per_trial: the members of one trial must differ only in their seed")
    why = member_refusals(cfgs[0]) if len(cfgs) > 1 else []
    if why:
        raise ConfigError("seeds_per_trial > 1 cannot stack this configuration: " + "; ".join(why)
                          + ". Set seeds_per_trial: 1 for it.")


def stack_models(models: Sequence[LoopedModel]) -> MemberLoopedModel:
    """One member-batched model holding ``models`` (one configuration, built alone from their seeds)."""
    ens = copy.deepcopy(models[0])
    named = [dict(m.named_parameters()) for m in models]
    for prefix, mod in ens.named_modules():
        own = list(mod.named_parameters(recurse=False))
        if not own:
            continue
        form = MEMBER_FORMS.get(type(mod))
        if form is None or (isinstance(mod, nn.Conv2d) and mod.groups != mod.in_channels):
            raise ConfigError(f"seeds_per_trial > 1: module {prefix or 'model'} ({type(mod).__name__}) "
                              "has no member-batched form")
        for name, _ in own:
            full = f"{prefix}.{name}" if prefix else name
            setattr(mod, name, nn.Parameter(torch.stack([p[full].detach() for p in named])))
        mod.__class__ = form
    ens.__class__ = MemberLoopedModel
    ens.members = len(models)
    return ens


def member_state_dict(ens: MemberLoopedModel, k: int) -> dict[str, torch.Tensor]:
    """Member k's weights as a lone LoopedModel's state_dict (buffers are shared, not stacked)."""
    stacked = {name for name, _ in ens.named_parameters()}
    return {name: (t[k] if name in stacked else t) for name, t in ens.state_dict().items()}


def load_member_states(ens: MemberLoopedModel, states: Sequence[dict[str, torch.Tensor]]) -> None:
    """Stack lone state_dicts (one per member) into ``ens``."""
    stacked = {name for name, _ in ens.named_parameters()}
    ens.load_state_dict({name: (torch.stack([s[name] for s in states]) if name in stacked else t)
                         for name, t in states[0].items()})


def unstack_member(ens: MemberLoopedModel, k: int, into: LoopedModel) -> LoopedModel:
    """Load member k's weights into ``into`` (a lone model of the same configuration) and return it."""
    into.load_state_dict(member_state_dict(ens, k))
    return into


# ---------------------------------------------------------------------------------- training

def build_member_optimizer(ens: MemberLoopedModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """``fpr_core.train.build_optimizer``'s groups, decided on the member shapes (a stacked norm
    gain is still a gain), in the same order, so optimizer state slices to the lone format."""
    decay, no_decay = [], []
    for name, param in ens.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param[0]) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS)


def _member_optimizer_state(opt_state: dict[str, Any], k: int) -> dict[str, Any]:
    return {"state": {i: {n: (v if n == "step" else v[k]) for n, v in s.items()} for i, s in opt_state["state"].items()},
            "param_groups": opt_state["param_groups"]}


def _stack_optimizer_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = states[0]
    return {"state": {i: {n: (v.clone() if n == "step" else torch.stack([st["state"][i][n] for st in states]))
                          for n, v in s.items()} for i, s in first["state"].items()},
            "param_groups": first["param_groups"]}


def clip_member_grads(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Per-member ``clip_grad_norm_``: (K,) total gradient norm of each member, each clipped alone."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).float().norm(dim=1) for g in grads]).norm(dim=0)  # (K,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


@dataclass
class _MemberSlice:
    """The rows of one member in a LoopOutput (what ``_batch_metrics`` reads)."""

    logits: torch.Tensor
    trace: Any


@dataclass
class _Trace:
    iterations: torch.Tensor


@dataclass
class _Member:
    """One member's bookkeeping: its batches, its losses, and why it stopped (if it did)."""

    cfg: TrainConfig
    batches: torch.Generator
    losses: list[float]
    status: str = "ok"
    message: str = ""
    steps: int = 0
    final_loss: float = float("nan")


def train_members(ens: MemberLoopedModel, task: Task, datas: Sequence[TaskData], cfgs: Sequence[TrainConfig], *,
                  on_log: Optional[MembersLogFn] = None, on_checkpoint: Optional[MembersCheckpointFn] = None,
                  resume_states: Optional[Sequence[dict[str, Any]]] = None,
                  should_stop: Optional[Callable[[], bool]] = None) -> list[TrainResult]:
    """``fpr_core.train.train`` for K members at once: member k trains on ``datas[k]`` with
    ``cfgs[k]`` (the same config but for its seed). Returns one TrainResult per member, whose
    ``eval_model`` is the member-batched model (or its EMA copy): unstack with ``unstack_member``."""
    k_members = ens.members
    cfg = cfgs[0]
    device = next(ens.parameters()).device
    data = [tuple(torch.as_tensor(a, device=device) for a in (d.inputs, d.targets, d.mask)) for d in datas]
    loss_fn = get_loss(cfg.loss, cfg.label_smoothing)
    torch.manual_seed(cfg.seed)
    members = [_Member(c, torch.Generator().manual_seed(c.seed), []) for c in cfgs]
    optimizer = build_member_optimizer(ens, cfg)
    ema = EMA(ens, cfg.ema) if cfg.ema is not None else None
    step, seconds = 0, 0.0
    if resume_states is not None:
        step, seconds = _restore(ens, optimizer, ema, members, resume_states)
    params = [p for p in ens.parameters() if p.requires_grad]
    started = time.perf_counter()
    b = cfg.batch_size
    rows = [slice(k * b, (k + 1) * b) for k in range(k_members)]

    def results() -> list[TrainResult]:
        wall = seconds + time.perf_counter() - started
        model = ema.module if ema else ens
        return [TrainResult(m.status, m.steps if m.status != "ok" else step, wall,
                            m.final_loss if m.status != "ok" else (m.losses[-1] if m.losses else float("nan")),
                            m.message, list(m.losses), model) for m in members]

    while step < cfg.steps:
        training = [m.status == "ok" for m in members]
        if not any(training):
            break
        if should_stop is not None and should_stop():
            for m in members:
                if m.status == "ok":
                    m.status, m.message, m.steps = "stopped", f"should_stop() at step {step}", step
                    m.final_loss = m.losses[-1] if m.losses else float("nan")
            break
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = [torch.randint(len(d[0]), (b,), generator=m.batches).to(device) for d, m in zip(data, members)]
        inputs = torch.cat([d[0][i] for d, i in zip(data, idx)])
        targets = torch.cat([d[1][i] for d, i in zip(data, idx)])
        mask = torch.cat([d[2][i] for d, i in zip(data, idx)])
        member_loss = [torch.zeros(()) for _ in members]

        def summed_loss(logits, tgt, msk):  # the sum of member means: member k's gradient is dL_k/dtheta_k
            total = None
            for k, r in enumerate(rows):
                lk = loss_fn(logits[r], tgt[r], msk[r])
                member_loss[k] = member_loss[k] + lk.detach().float().cpu()
                total = lk if total is None else total + lk
            return total

        ens.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss, out = training_loss(ens, inputs, targets, mask, summed_loss)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norms = clip_member_grads(params, max_norm).tolist()
        values = [float(v) for v in member_loss]
        for k, m in enumerate(members):
            if m.status != "ok":
                continue
            why = (f"non-finite loss {values[k]} at step {step + 1}" if not math.isfinite(values[k]) else
                   f"non-finite gradient norm {norms[k]} at step {step + 1}" if not math.isfinite(norms[k]) else "")
            if why:
                m.status, m.message, m.steps, m.final_loss = "diverged", why, step, values[k]
        _freeze_stopped(params, members)
        optimizer.step()
        if ema is not None:
            ema.update(ens)
        step += 1
        for k, m in enumerate(members):
            if m.status == "ok":
                m.losses.append(values[k])
        if on_log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            on_log(step, [_member_metrics(task, out, rows[k], targets, mask, values[k], lr, norms[k])
                          if m.status == "ok" else None for k, m in enumerate(members)])
        if on_checkpoint is not None and step % cfg.checkpoint_every == 0:
            seconds += time.perf_counter() - started
            started = time.perf_counter()
            on_checkpoint(step, member_states(ens, optimizer, ema, members, step, seconds))
    return results()


def _freeze_stopped(params: list[nn.Parameter], members: list[_Member]) -> None:
    """Zero the gradients of members that stopped (a non-finite gradient must not reach AdamW)."""
    stopped = torch.tensor([m.status != "ok" for m in members])
    if not stopped.any():
        return
    for p in params:
        if p.grad is not None:
            p.grad[stopped.to(p.device)] = 0.0


def _member_metrics(task: Task, out: LoopOutput, rows: slice, targets, mask, loss: float, lr: float,
                    grad_norm: float) -> dict[str, float]:
    metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
    view = _MemberSlice(out.logits[rows], _Trace(out.trace.iterations[rows]))
    metrics.update(_batch_metrics(task, view, targets[rows], mask[rows]))
    return metrics


def member_states(ens: MemberLoopedModel, optimizer: torch.optim.AdamW, ema: Optional[EMA], members: list[_Member],
                  step: int, seconds: float) -> list[Optional[dict[str, Any]]]:
    """One lone-format training state (``fpr_core.train``) per member still training, else None."""
    opt_state = optimizer.state_dict()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    out: list[Optional[dict[str, Any]]] = []
    for k, m in enumerate(members):
        if m.status != "ok":
            out.append(None)
            continue
        out.append(_clone_cpu({
            "format": CHECKPOINT_FORMAT, "step": step, "seconds": seconds, "losses": list(m.losses),
            "model": member_state_dict(ens, k), "optimizer": _member_optimizer_state(opt_state, k),
            "ema": member_state_dict(ema.module, k) if ema else None,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda, "batches": m.batches.get_state()},
        }))
    return out


def _restore(ens, optimizer, ema, members: list[_Member], states: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """Stack per-member lone-format states back in; they must come from one step."""
    steps = {int(s["step"]) for s in states}
    if len(steps) != 1 or len(states) != len(members):
        raise ValueError(f"resume_states: got {len(states)} states at steps {sorted(steps)}, expected "
                         f"{len(members)} states of one step")
    for s in states:
        if s.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"resume_state: format {s.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        if (s["ema"] is None) != (ema is None):
            raise ValueError("resume_state: EMA presence differs from train.ema of this run")
    load_member_states(ens, [s["model"] for s in states])
    optimizer.load_state_dict(_stack_optimizer_states([s["optimizer"] for s in states]))
    if ema is not None:
        load_member_states(ema.module, [s["ema"] for s in states])
    torch.set_rng_state(states[0]["rng"]["torch"])
    for m, s in zip(members, states):
        m.batches.set_state(s["rng"]["batches"])
        m.losses = [float(v) for v in s["losses"]]
    return steps.pop(), max(float(s["seconds"]) for s in states)
