"""LoopedModel: one composable looped transformer (DESIGN.md, 'fpr_core').

Inputs are LongTensor tokens (B, L) for sequences or (B, H, W) for grids; ``shape`` below is
(L,) or (H, W) and T = prod(shape). The input embedding x = embed(inputs) (B, T, d) is computed once
per forward; one loop step is

    F(z; x) = OuterNorm(F_pre(z; x)),  F_pre = Blocks(Recall.enter(Conv(z), x))   # (B, T, d) -> (B, T, d)

and the readout is a per-token linear head on RMSNorm(z*), giving logits (B, *shape, C).
No learned absolute positions anywhere, so the same weights run at any length / grid size.
Spectral regime: fpr_core.model.spectral. Initial state: ``model.z0`` (``initial_state``).

Public API for objectives and probes (nothing outside this module reaches into underscored
members): ``loop_map`` / ``loop_map_from_embedding`` (F bound to one batch, with its start z0, its
pre-outer-norm step and FPRM's random start), ``weights_cached`` (parametrized weights computed once
per forward), ``readout``, ``default_cap``, ``step_gain``.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from fpr_core.config import ConfigError, GradConfig, ModelConfig, SolverConfig
from fpr_core.gradients import run_loop
from fpr_core.model.block import Block
from fpr_core.model.norms import RMSNorm, make_norm
from fpr_core.model.positions import BoardCoordinates, DepthwiseConv, rope_tables
from fpr_core.model.recall import ResidualCoefficients, make_recall
from fpr_core.model.spectral import (CALIBRATION_BATCH, GAIN_ITERS, HOLD_ITERS, WARM_ITERS, calibrate_scale,
                                     jacobian_norm, normalise_maps, unit_rms_states)
from fpr_core.solver import RESIDUALS, LoopTrace

TRUNCATION = 2.0
"""FPRM's (TRM's) truncated normal start: cut at +-2 std, rescaled so the std is the one asked for."""
_TRUNC_STD = 0.87962566103423978
"""Std of a standard normal truncated to [-2, 2]."""


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
    """(B, T, d) the model's initial state for this batch (``model.z0``)."""
    shape: tuple[int, ...]
    """(L,) or (H, W)."""
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """step(z, x_rows) -> F(z; x_rows) for matching rows of z and x."""
    step_pre: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    """step_pre(z, x_rows) -> F_pre(z; x_rows), the step before its outer norm (for internal
    recall in the per-sublayer form: without any of its per-sublayer outer norms); None = a map
    with no outer norm (F_pre = F)."""
    z0_std: float = 1.0
    """Std of ``random_start``."""
    step_with_residual: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None
    """step_with_residual(z, x_rows) -> (F(z; x_rows), the solver's residual (A,) of that step) in one call
    (the compiled training step fuses them); None = not offered, the solver measures."""
    _rows: Optional[tuple] = field(default=None, repr=False)

    def f(self, z: torch.Tensor) -> torch.Tensor:
        """F(z; x) on the whole batch: (B, T, d) -> (B, T, d), one full loop step incl. outer norm."""
        return self.step(z, self.x)

    def f_pre(self, z: torch.Tensor) -> torch.Tensor:
        """F_pre(z; x): the step before the outer norm, whose gain the spectral regime sets."""
        return (self.step_pre or self.step)(z, self.x)

    def random_start(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, T, d) FPRM's random initial state: truncated normal with std ``model.z0_std``.

        The start ``model.z0: random`` draws at every forward, and the one path independence probes."""
        return truncated_normal(self.x.shape, self.z0_std, generator).to(self.x.device, self.x.dtype)

    def f_subset(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """F on the samples idx (A,) long: z (A, T, d) -> (A, T, d). The solver's ``f``.

        The rows of x are gathered once per distinct ``idx`` object (the solver reuses it until
        the active set changes)."""
        return self.step(z, self._x_rows(idx))

    def step_with_residual_subset(self) -> Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """The solver's ``with_residual``: (z, idx) -> (F on the samples idx, their residuals), or None."""
        if self.step_with_residual is None:
            return None
        return lambda z, idx: self.step_with_residual(z, self._x_rows(idx))

    def _x_rows(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.numel() == self.x.shape[0]:
            return self.x
        cached = self._rows
        if cached is None or cached[0] is not idx:
            cached = self._rows = (idx, self.x[idx])
        return cached[1]


@functools.lru_cache(maxsize=None)
def _compiled(method: Callable, cpu: bool) -> Callable:
    """``method`` under torch.compile; on CPU with TorchInductor's C++ wrapper, which calls the
    graph's kernels without a Python frame per kernel (measured at dim 32: 10.7 vs 11.8 ms per
    training step of bench_throughput)."""
    return torch.compile(method, dynamic=None, options={"cpp_wrapper": True} if cpu else None)


def cpu_compiler() -> tuple[str, Optional[str]]:
    """The C++ compiler TorchInductor builds CPU kernels with ($CXX, else g++), and its path (None
    when it is not on PATH)."""
    name = os.environ.get("CXX") or "g++"
    return name, shutil.which(name)


def require_compiler(device: torch.device) -> None:
    """Refuse train.compile up front, rather than at the first training step, on a CPU without a
    C++ compiler."""
    name, path = cpu_compiler()
    if device.type == "cpu" and path is None:
        raise ConfigError("train.compile: TorchInductor needs a C++ compiler for CPU kernels and found "
                           f"none ({name} is not on PATH); install g++ or set $CXX, or set train.compile: false")


def truncated_normal(shape, std: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """CPU draw of N(0, 1) truncated to [-2, 2], rescaled to std ``std`` (TRM's trunc_normal_init_)."""
    t = torch.empty(shape)
    nn.init.trunc_normal_(t, 0.0, 1.0, -TRUNCATION, TRUNCATION, generator=generator)
    return t * (std / _TRUNC_STD)


class LoopedModel(nn.Module):
    """Embedding -> fixed-point loop of F(z; x) -> per-token readout; variants chosen by config."""

    def __init__(self, model_cfg: ModelConfig, solver_cfg: SolverConfig, grad_cfg: GradConfig, *,
                 grid: bool, train_tokens: int, coordinates: Optional[torch.Tensor] = None,
                 board_mask: Optional[torch.Tensor] = None) -> None:
        """coordinates: (T, K) board coordinate ids per token (Task.coordinates), required by and
        only used with model.positions='absolute'. board_mask: (T, T) bool (Task.board_mask),
        required by and only used with model.attention_mask='board'."""
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
        self.conv = (DepthwiseConv(c.conv, c.dim, c.conv_kernel, c.causal, c.init_std, c.conv_form)
                     if c.conv != "none" else None)
        entry = c.entry_form()
        self.coeffs = ResidualCoefficients(c.residual_scale, c.dim, n_sub, c.a1_init, c.a2_init, entry)
        self.recall = make_recall(c.recall, c.dim, n_sub, c.recall_form, entry)
        pre_norm = make_norm("rms" if c.pre_norm else "none", c.dim)
        per_sublayer = c.recall == "internal" and c.internal_norm == "per_sublayer"
        post_norm = make_norm(c.outer_norm if per_sublayer else "none", c.dim)
        self.blocks = nn.ModuleList(Block(c, pre_norm, post_norm, grid, self.coeffs.scales_sublayers)
                                    for _ in range(c.n_layers))
        if (c.attention_mask == "board") != (board_mask is not None):
            raise ValueError("model.attention_mask=board needs the task's board mask (and only it uses one); "
                             f"got attention_mask={c.attention_mask!r} with board_mask "
                             f"{'given' if board_mask is not None else 'missing'}")
        if board_mask is not None:
            for block in self.blocks:
                block.attn.restrict_to(board_mask)
        self.outer_norm = make_norm("none" if per_sublayer else c.outer_norm, c.dim)  # the blocks norm
        self.final_norm = RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.n_classes)
        self.compile_training = False
        """Run the loop step under torch.compile in training mode (``compile_training_steps``)."""
        self._init_weights()
        self._spectral_scales: list = []
        self._hold_vectors: Optional[torch.Tensor] = None
        if c.spectral is not None:
            self._apply_spectral(c.spectral, c.spectral_mode)

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

    def _apply_spectral(self, sigma: float, mode: str) -> None:
        scales = self._spectral_scales = normalise_maps(self.loop_linears(), sigma)
        if mode == "step":
            generator = torch.Generator().manual_seed(0)
            lm, z = self._reference_batch(generator)
            c = self.model_cfg
            what = f"recall={c.recall}, residual_scale={c.residual_scale}"
            was_training = self.training
            self.eval()  # spectral_norm's power method must not step inside torch.func
            vectors = [None]  # warm start: the singular vectors move little between scales

            def gain(exact: bool) -> float:  # exact: more iterations, still warm-started (power
                # iteration only underestimates, and the carried vector is the best start there is)
                g, vectors[0] = self.step_gain(lm, z, vectors[0], GAIN_ITERS if exact else WARM_ITERS)
                return float(g.median())
            with torch.no_grad():
                calibrate_scale(scales, gain, sigma, what)
            self.train(was_training)

    def after_optimizer_step(self) -> None:
        """Called by the trainer after every optimizer step: with ``model.spectral_hold: every_step``,
        re-normalise the common map scale c so the step's gain is sigma again (spectral
        normalisation, Miyato et al. 2018, of the whole step). HOLD_ITERS power iterations,
        warm-started from the last step's singular vectors, measure the gain on the calibration's
        reference batch (``reference_gain``), then c <- c*(sigma/gain)^(1/2): the gain grows about
        like c^2 (two maps per branch), and this correction contracts the error for any exponent in
        (0, 4). The warm start is not part of a checkpoint, so the first correction after a resume
        starts cold (GAIN_ITERS)."""
        c = self.model_cfg
        if c.spectral_hold != "every_step" or not self._spectral_scales:
            return
        was_training = self.training
        self.eval()  # spectral_norm's power method must not step inside torch.func
        with torch.no_grad():
            lm, z = self._reference_batch(torch.Generator().manual_seed(0))
            cold = self._hold_vectors is None
            gain, self._hold_vectors = self.step_gain(lm, z, self._hold_vectors, GAIN_ITERS if cold else HOLD_ITERS)
            factor = (c.spectral / max(float(gain.median()), 1e-12)) ** 0.5
            for scale in self._spectral_scales:
                scale.scale.mul_(factor)
        self.train(was_training)

    def reference_gain(self, iters: int = GAIN_ITERS) -> float:
        """The step's gain ||dF_pre/dz||_2 (median over samples) on the calibration's reference batch,
        from a cold power iteration of ``iters`` steps: the quantity ``spectral_mode: step`` sets to
        sigma at initialisation and ``spectral_hold: every_step`` holds there."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            lm, z = self._reference_batch(torch.Generator().manual_seed(0))
            gain, _ = self.step_gain(lm, z, None, iters)
        self.train(was_training)
        return float(gain.median())

    def _reference_batch(self, generator: torch.Generator) -> tuple["LoopMap", torch.Tensor]:
        """Random tokens at the training size and unit-RMS states: where the step gain is calibrated."""
        side = math.isqrt(self.train_tokens)
        shape = ((side, side) if side * side == self.train_tokens else (1, self.train_tokens)) if self.grid \
            else (self.train_tokens,)
        tokens = torch.randint(self.model_cfg.vocab_size, (CALIBRATION_BATCH, *shape), generator=generator)
        with torch.no_grad():
            lm = self.loop_map(tokens)
        return lm, unit_rms_states(tuple(lm.x.shape), generator)

    def step_gain(self, lm: "LoopMap", z: torch.Tensor, v: Optional[torch.Tensor] = None,
                  iters: int = GAIN_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) the spectral norm of dF_pre/dz at z (B, T, d) per sample (the step's gain before
        the outer norm, what ``spectral_mode: step`` sets to sigma at initialisation), and the top
        right-singular vectors (B, T, d); v warm-starts the power iteration of ``iters`` steps."""
        with torch.enable_grad():
            gain, v = jacobian_norm(lm.f_pre, z.detach(), iters, v)
        return gain.detach(), v.detach()

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

    def compile_training_steps(self) -> None:
        """Run every loop step of training mode through ``torch.compile`` (TorchInductor), which
        fuses the step's small kernels; evaluation, whose sizes vary, stays eager (``train.compile``).

        Dynamo's graphs are cached per code object and guard on the model, so the graphs of models
        compiled earlier in this process are dropped first: a reused Ray actor trains many models
        one after another, and past dynamo's recompile limit it would fall back to eager. A
        shrinking active batch costs one recompile (the batch dim becomes dynamic), not one per size."""
        import torch._inductor.config as inductor  # here: importing Inductor costs every other user

        require_compiler(next(self.parameters()).device)
        torch._dynamo.reset()
        # Inductor compiles in a pool of min(32, cores) processes by default: on a shared node each
        # trial would start one; keep to the threads this process was given (Ray: resources.cpu)
        inductor.compile_threads = max(1, min(inductor.compile_threads, torch.get_num_threads()))
        self.compile_training = True

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

        coeffs = self._coefficients_once()

        compiled = self.training and self.compile_training
        cpu = x.device.type == "cpu"
        run = _compiled(LoopedModel._step, cpu) if compiled else LoopedModel._step
        run_with_residual = _compiled(LoopedModel._step_with_residual, cpu) if compiled else None

        def step(z: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
            return run(self, z, x_rows, shape, rope, scale, coeffs())

        def step_pre(z: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
            return self._step(z, x_rows, shape, rope, scale, coeffs(), outer=False)

        def step_with_residual(z: torch.Tensor, x_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return run_with_residual(self, z, x_rows, shape, rope, scale, coeffs(), self.solver_cfg.residual)

        lm = LoopMap(x=x, z0=x, shape=shape, step=step, step_pre=step_pre, z0_std=c.z0_std,
                     step_with_residual=step_with_residual if compiled else None)
        lm.z0 = self.initial_state(lm)
        return lm

    def initial_state(self, lm: "LoopMap") -> torch.Tensor:
        """(B, T, d) the start ``model.z0`` asks for: auto (x without recall, zeros with it), zeros,
        x, or random (FPRM: a fresh truncated-normal draw at every call)."""
        kind = self.model_cfg.z0
        if kind == "auto":
            kind = "x" if self.model_cfg.recall == "none" else "zeros"
        if kind == "x":
            return lm.x
        if kind == "zeros":
            return torch.zeros_like(lm.x)
        return lm.random_start()

    def _coefficients_once(self) -> Callable[[], tuple]:
        """The residual coefficients, computed once per loop map and grad mode rather than at every
        step (the same values; their gradient sums over the steps that use them as before)."""
        cache: dict[bool, tuple] = {}

        def coeffs() -> tuple:
            grad = torch.is_grad_enabled()
            if grad not in cache:
                cache[grad] = self.coeffs()
            return cache[grad]
        return coeffs

    def _step(self, z, x, shape, rope, scale, coeffs, outer: bool = True) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        if self.conv is not None:
            z = self.conv(z, shape)
        z = self.recall.enter(z, x, coeffs)
        for i, block in enumerate(self.blocks):
            z = block(z, x, self.recall, coeffs, 2 * i, shape, rope, scale, post=outer)
        return self.outer_norm(z) if outer else z

    def _step_with_residual(self, z, x, shape, rope, scale, coeffs, residual: str) -> tuple[torch.Tensor, torch.Tensor]:
        """F(z) and the solver's residual of this step (``solver.residual``), one compiled graph."""
        fz = self._step(z, x, shape, rope, scale, coeffs)
        with torch.no_grad():
            return fz, RESIDUALS.get(residual)(z, fz)

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
