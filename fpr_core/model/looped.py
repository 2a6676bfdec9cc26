"""LoopedModel: one composable looped transformer (DESIGN.md, 'fpr_core').

Inputs are LongTensor tokens (B, L) for sequences or (B, H, W) for grids; ``shape`` below is
(L,) or (H, W) and T = prod(shape). The input embedding x = embed(inputs) (B, T, d) is computed once
per forward; one loop step is

    F(z; x) = OuterNorm(Blocks(Recall.enter(Conv(z), x)))          # (B, T, d) -> (B, T, d)

and the readout is a per-token linear head on RMSNorm(z*), giving logits (B, *shape, C).
No learned absolute positions anywhere, so the same weights run at any length / grid size.
Spectral option: every linear map inside the loop (attention, MLP, recall projections; not the
depthwise conv, not embedding/readout) gets torch's spectral_norm parametrization, then a scale by
the target sigma, so each has operator norm sigma (DESIGN.md, 'Spectral regime').
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from fpr_core.config import GradConfig, ModelConfig, SolverConfig
from fpr_core.gradients import run_loop
from fpr_core.model.block import Block
from fpr_core.model.norms import RMSNorm, make_norm
from fpr_core.model.positions import BoardCoordinates, DepthwiseConv, rope_tables
from fpr_core.model.recall import ResidualCoefficients, make_recall
from fpr_core.solver import LoopTrace

SPECTRAL_WARMUP_ITERS = 200
"""Extra power iterations at construction so sigma(W) matches the target from the first step."""


@dataclass
class LoopOutput:
    """What the model returns in training and evaluation alike."""

    logits: torch.Tensor
    """(B, *shape, C)."""
    z: torch.Tensor
    """(B, T, d): the final state (the reached fixed point, or the last iterate)."""
    trace: LoopTrace
    """Per-sample iterations / residual / converged / cycled, plus the batch residual curve."""


@dataclass
class LoopMap:
    """The loop map F(.; x) for one batch, bound to its embedding x and token shape."""

    x: torch.Tensor
    """(B, T, d) input embedding."""
    z0: torch.Tensor
    """(B, T, d) default initial state (recall=none: x; standard/internal: zeros)."""
    shape: tuple[int, ...]
    """(L,) or (H, W)."""
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """step(z, x_rows) -> F(z; x_rows) for matching rows of z and x."""
    _rows: Optional[tuple] = field(default=None, repr=False)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        """F(z; x) on the whole batch: (B, T, d) -> (B, T, d), one full loop step incl. outer norm."""
        return self.step(z, self.x)

    def f_subset(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """F on the samples idx (A,) long: z (A, T, d) -> (A, T, d). The solver's ``f``.

        The rows of x are gathered once per distinct ``idx`` object (the solver reuses it until
        the active set changes)."""
        if idx.numel() == self.x.shape[0]:
            return self.step(z, self.x)
        cached = self._rows
        if cached is None or cached[0] is not idx:
            cached = self._rows = (idx, self.x[idx])
        return self.step(z, cached[1])


class _ScaleBy(nn.Module):
    """Parametrization W -> sigma * W, stacked on top of spectral_norm."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.sigma


class LoopedModel(nn.Module):
    """Embedding -> fixed-point loop of F(z; x) -> per-token readout; variants chosen by config."""

    def __init__(self, model_cfg: ModelConfig, solver_cfg: SolverConfig, grad_cfg: GradConfig, *,
                 grid: bool, train_tokens: int, coordinates: Optional[torch.Tensor] = None) -> None:
        """coordinates: (T, K) board coordinate ids per token (Task.coordinates), required by and
        only used with model.positions='absolute'."""
        super().__init__()
        model_cfg.validate()
        solver_cfg.validate()
        grad_cfg.validate()
        if train_tokens < 2:
            raise ValueError(f"train_tokens: got {train_tokens}, expected the token count at the training size (>= 2)")
        self.model_cfg, self.solver_cfg, self.grad_cfg = model_cfg, solver_cfg, grad_cfg
        self.grid, self.train_tokens = grid, train_tokens
        c = model_cfg
        n_sub = 2 * c.n_layers
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        if (c.positions == "absolute") != (coordinates is not None):
            raise ValueError("model.positions=absolute needs the task's board coordinates (and only "
                             f"it uses them); got positions={c.positions!r} with coordinates "
                             f"{'given' if coordinates is not None else 'missing'}")
        self.coordinates = BoardCoordinates(coordinates, c.dim) if coordinates is not None else None
        self.conv = (DepthwiseConv(c.conv, c.dim, c.conv_kernel, c.causal, c.init_std)
                     if c.conv != "none" else None)
        self.coeffs = ResidualCoefficients(c.residual_scale, c.dim, n_sub, c.a1_init, c.a2_init)
        self.recall = make_recall(c.recall, c.dim, n_sub, c.recall_form)
        pre_norm = make_norm("rms" if c.pre_norm else "none", c.dim)
        self.blocks = nn.ModuleList(Block(c, pre_norm, grid) for _ in range(c.n_layers))
        self.outer_norm = make_norm(c.outer_norm, c.dim)
        self.final_norm = RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.n_classes)
        self._init_weights()
        if c.spectral is not None:
            self._apply_spectral(c.spectral)

    # ----- construction -------------------------------------------------------------------
    def _init_weights(self) -> None:
        std = self.model_cfg.init_std
        nn.init.normal_(self.embed.weight, std=1.0)  # x at unit RMS, the scale of a normed state
        for mod in list(self.blocks.modules()) + [self.head]:
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        if self.model_cfg.recall == "internal":
            for proj in self.recall.projs:
                nn.init.normal_(proj.weight, std=std)

    def loop_linears(self) -> list[nn.Linear]:
        """The linear maps inside the loop (the ones the spectral option normalizes)."""
        mods = list(self.blocks.modules()) + list(self.recall.modules())
        return [m for m in mods if isinstance(m, nn.Linear)]

    def _apply_spectral(self, sigma: float) -> None:
        for lin in self.loop_linears():
            spectral_norm(lin)
            sn = lin.parametrizations.weight[0]
            with torch.no_grad():  # torch's own power method (private API, torch 2.13)
                sn._power_method(sn._reshape_weight_to_matrix(lin.parametrizations.weight.original),
                                 SPECTRAL_WARMUP_ITERS)
            parametrize.register_parametrization(lin, "weight", _ScaleBy(sigma))

    @contextlib.contextmanager
    def weights_cached(self):
        """Compute parametrized weights once per forward (spectral_norm otherwise reruns per step).

        The cache is filled with grad enabled up front: a first access inside the no-grad solve
        would otherwise cache a weight without graph and silently cut the gradient to it.
        """
        if self.model_cfg.spectral is None:
            yield
            return
        with parametrize.cached():
            with torch.set_grad_enabled(torch.is_grad_enabled() or self.training):
                for lin in self.loop_linears():
                    lin.weight
            yield

    # ----- the loop map -------------------------------------------------------------------
    def token_shape(self, inputs: torch.Tensor) -> tuple[int, ...]:
        """(L,) for (B, L) inputs, (H, W) for (B, H, W) grids; raises on the wrong rank."""
        want = 3 if self.grid else 2
        if inputs.dim() != want:
            kind = "grid (B, H, W)" if self.grid else "sequence (B, L)"
            raise ValueError(f"inputs: got shape {tuple(inputs.shape)}, expected a {kind} LongTensor")
        return tuple(inputs.shape[1:])

    def embed_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Tokens (B, *shape) -> x (B, T, d)."""
        self.token_shape(inputs)
        x = self.embed(inputs.flatten(1))  # (B, T, d)
        if self.coordinates is not None:
            x = x + self.coordinates(x.shape[1])
        return x

    def loop_map(self, inputs: torch.Tensor) -> LoopMap:
        """The loop map bound to embed(inputs)."""
        return self.loop_map_from_embedding(self.embed_inputs(inputs), self.token_shape(inputs))

    def loop_map_from_embedding(self, x: torch.Tensor, shape: tuple[int, ...]) -> LoopMap:
        """The loop map bound to a given embedding x (B, T, d) (e.g. a perturbed one); shape (L,)/(H, W)."""
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != x.shape[1]:
            raise ValueError(f"shape: got {shape} for {x.shape[1]} tokens, expected prod(shape) == T")
        c = self.model_cfg
        head_dim = c.dim // c.heads
        rope = rope_tables(c.positions, shape, head_dim, x.device)
        scale = 1.0 / math.sqrt(head_dim)
        if c.log_n_attention:  # keep attention sharp on larger inputs
            scale *= math.log(max(x.shape[1], 2)) / math.log(self.train_tokens)

        def step(z: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
            return self._step(z, x_rows, shape, rope, scale)

        return LoopMap(x=x, z0=self.recall.z0(x), shape=shape, step=step)

    def _step(self, z, x, shape, rope, scale) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        if self.conv is not None:
            z = self.conv(z, shape)
        coeffs = self.coeffs()
        z = self.recall.enter(z, x, coeffs)
        for i, block in enumerate(self.blocks):
            z = block(z, x, self.recall, coeffs, 2 * i, shape, rope, scale)
        return self.outer_norm(z)

    def readout(self, z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """z (B, T, d) -> logits (B, *shape, C)."""
        logits = self.head(self.final_norm(z))
        return logits.view(z.shape[0], *shape, logits.shape[-1])

    # ----- forward ------------------------------------------------------------------------
    def default_cap(self) -> int:
        return self.solver_cfg.train_cap if self.training else self.solver_cfg.eval_cap

    def forward(self, inputs: torch.Tensor, *, cap: Optional[int] = None,
                z0: Optional[torch.Tensor] = None) -> LoopOutput:
        """Solve for the fixed point and read it out.

        cap: max loop steps (default train_cap in training, eval_cap in eval). z0: (B, T, d)
        initial state (default LoopMap.z0). In training mode gradients follow grad_cfg.mode
        (progressive uses the full unroll here; its extra term lives in train.training_loss);
        in eval mode it is a plain solve (wrap in torch.no_grad to keep no graph).
        """
        cap = self.default_cap() if cap is None else int(cap)
        with self.weights_cached():
            lm = self.loop_map(inputs)
            start = lm.z0 if z0 is None else z0
            z, trace = run_loop(lm, start, self.solver_cfg, self.grad_cfg, cap, training=self.training)
            logits = self.readout(z, lm.shape)
        return LoopOutput(logits=logits, z=z, trace=trace)
