"""Typed configs for fpr_core: one dataclass per concern, validated once, then trusted.

Every field here can be a sweep axis (the orchestrator addresses fields as
``model.recall``, ``solver.eval_cap``, ``grad.mode``, ``train.lr`` ...). Unknown keys are rejected by
``from_dict`` so a typo in a sweep never silently falls back to a default.

Paper references: FPRM = Fixed-Point Reasoners (Movahedi et al. 2026); SGLT = Stability and
Generalization in Looped Transformers (Labovich 2026); DT = Deep Thinking (Schwarzschild/Bansal).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

Recall = Literal["none", "standard", "internal"]
RecallForm = Literal["scaled", "concat"]
Norm = Literal["none", "rms", "layer"]
ResidualScale = Literal["none", "fixed", "learned"]
Positions = Literal["none", "rope1d", "rope2d", "absolute"]
Conv = Literal["none", "1d", "2d"]
Mlp = Literal["swiglu", "gelu"]
Mixer = Literal["attention", "local_attention", "conv"]
AttentionMask = Literal["none", "board"]
SpectralMode = Literal["step", "per_map"]
InternalNorm = Literal["per_sublayer", "per_step"]
InitialState = Literal["auto", "zeros", "x", "random"]
ResidualRule = Literal["per_token", "global"]
ProgressiveForm = Literal["dt", "halting"]
SolverName = Literal["damped", "anderson"]
GradMode = Literal["bptt", "truncated", "phantom", "implicit", "progressive"]
LossName = Literal["ce", "stablemax", "squares"]
LoopEntry = Literal["auto", "plain", "shrink", "outer_only"]
ConvForm = Literal["add", "replace"]
SpectralHold = Literal["init", "every_step"]
CapLaw = Literal["task", "linear", "quadratic", "fixed"]
CAP_EXPONENTS = {"fixed": 0, "linear": 1, "quadratic": 2}
"""Exponent p of each cap law: cap = ceil(eval_cap * (size / train_size)^p) above the training size
('task' is the task's own law, one of these)."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what was expected."""


def _from_dict(cls, data: dict[str, Any] | None, where: str):
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    obj = cls(**data)
    obj.validate(where)
    return obj


def _check_choice(where: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{where}.{name}: got {value!r}, expected one of {list(choices)}")


def _literal_choices(lit) -> tuple:
    return lit.__args__


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> tuple[tuple[str, tuple, bool], ...]:
    """(field, its choices, whether None is allowed) for every field of ``cls`` typed by a Literal
    or an Optional Literal."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        for arg in args:
            if typing.get_origin(arg) is Literal:
                out.append((name, _literal_choices(arg), type(None) in args))
    return tuple(out)


def check_literals(obj: Any, where: str) -> None:
    """Every Literal-typed field of a config holds one of its choices (or None where Optional): the
    Literal is the one list of choices, so a new option field is checked without being listed."""
    for name, choices, optional in _literal_fields(type(obj)):
        value = getattr(obj, name)
        if not (optional and value is None):
            _check_choice(where, name, value, choices)


def check_protocol_name(where: str, name: Any) -> None:
    """A halting protocol's name: lower-case letters, digits and '_', starting with a letter."""
    if not (isinstance(name, str) and name and name[0].isalpha() and set(name) <= set(PROTOCOL_NAME_CHARS)):
        raise ConfigError(f"{where}: protocol name {name!r}; expected lower-case letters, digits and '_', "
                          "starting with a letter (e.g. strict_tol)")


ADDED_AFTER_IDS = {"added_after_ids": True}
"""Field metadata: the field was added after trial ids were pinned by committed studies. A trial's
id omits such a field while it holds its default, so a committed trial keeps its id (see
``identity_sections``)."""


def changed_default(pinned: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Field metadata for a field added after trial ids were pinned whose default changes what some
    pinned trials ran. ``pinned(section_values)`` is the value that reproduces what a pinned trial of
    that section ran: a trial's id omits the field while it holds that value (so a trial whose
    behaviour did not change keeps its id, and one that did gets a new one), and a config written
    before the field existed (a saved model) reads as holding it (``fill_pinned``)."""
    return {"added_after_ids": True, "pinned": pinned}


def damped_skip_regime(spectral: Optional[float], spectral_mode: str) -> bool:
    """The spectral regime asks the loop step itself for a gain of at most 1 (``spectral_mode:
    step``, sigma <= 1), which a plain entry's identity skip (gain 1, more with an additive conv)
    cannot reach."""
    return spectral is not None and spectral <= 1.0 and spectral_mode == "step"


def _entry_pinned(model: dict[str, Any]) -> str:
    """What ``model.loop_entry`` pinned trials ran: the a2 shrink for no and internal recall with
    residual scaling, where the default 'auto' is now a plain entry (except in a regime of gain
    <= 1, where 'auto' still shrinks); 'auto' elsewhere."""
    shrunk = model.get("recall") in ("none", "internal") and model.get("residual_scale", "learned") != "none"
    damped = damped_skip_regime(model.get("spectral"), model.get("spectral_mode", "step"))
    return "shrink" if shrunk and not damped else "auto"


@dataclass(frozen=True)
class ModelConfig:
    """One composable looped transformer (see DESIGN.md, 'fpr_core')."""

    vocab_size: int = 2
    """Input token vocabulary; set from the task, not by hand."""
    n_classes: int = 2
    """Output classes per token; set from the task, not by hand."""
    dim: int = 64
    """Width d of the state z (B, T, d)."""
    heads: int = 4
    """Attention heads; dim must be divisible by heads."""
    n_layers: int = 1
    """Transformer blocks (attention + MLP) per loop step; 1 = the single-layer looped model of SGLT."""
    mlp: Mlp = "swiglu"
    """MLP sublayer type."""
    mlp_ratio: float = 2.0
    """MLP hidden width as a multiple of dim."""
    recall: Recall = "standard"
    """Where the input x enters the loop: none (only z0 = x), standard (residual stream at loop
    entry), internal (only the sublayer inputs, r = Norm(W[z; x]); SGLT)."""
    internal_norm: InternalNorm = field(default="per_sublayer", metadata=ADDED_AFTER_IDS)
    """With internal recall and an outer norm: per_sublayer normalises after every residual add,
    h <- Norm_out(h + Sub(Norm_in(W[h; x]))) for the attention and the MLP sublayer (the public
    reimplementation citing SGLT Def. 5.2); per_step normalises once per loop step (this
    project's first form)."""
    recall_form: RecallForm = "scaled"
    """Form of standard recall: scaled = FPRM's z <- a2*z + b2*x; concat = DT's z <- W[z; x]."""
    pre_norm: bool = True
    """RMSNorm on every sublayer input (FPRM)."""
    outer_norm: Norm = "rms"
    """Norm applied to the state at the output of every loop step (SGLT's outer normalization)."""
    residual_scale: ResidualScale = "learned"
    """FPRM's residual scaling; fixed = not trained, none = plain residual. With scaled standard
    recall it is FPRM's coupled form (z <- a2*z + b2*x, then z <- a1*z + b1*sublayer(Norm(z)),
    b2 = 1 - a2*a1^S, b1 = b2(1 - a1)/(1 - a1^S)); with loop_entry outer_only it is FPRM's
    outer_only form (a1 = b1 = 1 in the sublayers, z <- a2*z + (1 - a2)*x at loop entry). Where
    nothing is injected the sublayers are plain residuals and loop_entry says whether a2 shrinks
    the state at entry."""
    a1_init: float = 0.75
    """Initial a1 = sigmoid(logit) per channel (FPRM's best init)."""
    a2_init: float = 0.25
    """Initial a2 for scaled standard recall (FPRM's best init)."""
    spectral: Optional[float] = None
    """The loop's spectral regime sigma (None = no spectral normalization): <1 contractive, ~1
    critical, >1 expansive. What sigma sets is spectral_mode's choice."""
    spectral_mode: SpectralMode = field(default="step", metadata=ADDED_AFTER_IDS)
    """step: sigma is the gain of the loop step as a whole before the outer norm, ||dF_pre/dz||_2
    at initialisation on unit-RMS states (the regime the stability theory speaks of, SGLT):
    every linear map in the loop is spectrally normalised to one common scale c, and c is
    calibrated at construction so the step's measured gain is sigma. per_map: every linear map
    has spectral norm sigma itself (this project's first form; a step composes 2-3 such maps, so
    its gain compounds to about sigma^2-sigma^3)."""
    positions: Positions = "none"
    """Positional scheme. none / rope1d / rope2d are size-agnostic (weights run on any size).
    absolute = learned embeddings of the board coordinates the task declares (Task.coordinates:
    sudoku row/column/box, chess square), added to x: legal only for tasks whose board never
    changes size (their OOD axis is harder content, not a larger board); a task that declares
    none is rejected. Relative 2-D offsets alone cannot tell whether two cells share a sudoku box."""
    conv: Conv = "none"
    """Depthwise conv on the state at the start of every loop step (FPRM: needed for stability)."""
    conv_kernel: int = 3
    """Kernel size of the depthwise conv."""
    log_n_attention: bool = True
    """Scale attention logits by log(n)/log(n_train) so attention stays sharp on larger inputs."""
    init_std: float = 0.02
    """Std of weight init."""
    z0: InitialState = field(default="auto", metadata=ADDED_AFTER_IDS)
    """Initial state of the loop: auto (x without recall, the only way x reaches an autonomous
    loop; zeros with recall), zeros, x, or random (FPRM: a fresh truncated normal with std z0_std
    at every reset, in training and evaluation)."""
    z0_std: float = field(default=1.0, metadata=ADDED_AFTER_IDS)
    """Std of the random initial state (FPRM: init_std 1.0 by default, 6.0 in its task configs;
    its embeddings, like x here, have unit scale). Path independence starts from this draw."""
    mixer: Mixer = field(default="attention", metadata=ADDED_AFTER_IDS)
    """Token mixing sublayer of each block: attention (global, what FPRM and SGLT use),
    local_attention (each token attends to a mixer_window x mixer_window neighbourhood on grids, a
    mixer_window-token window on sequences: a size-agnostic local rule), or conv (a depthwise conv
    over the grid / sequence, no attention: Deep Thinking's nets are fully convolutional)."""
    mixer_window: int = field(default=3, metadata=ADDED_AFTER_IDS)
    """Window side k of local_attention and kernel of the conv mixer (odd, centred; causal: the k
    positions up to and including the token)."""
    causal: bool = field(default=False, metadata=ADDED_AFTER_IDS)
    """Causal mixing (FPRM's state tracking): a causal attention mask and left-padded depthwise
    convs (padding k-1), so a token never sees a later one. On grids 'later' is raster order:
    attention masks by raster order, convs and local windows see only the rows above and the
    columns to the left (a subset)."""
    loop_entry: LoopEntry = field(default="auto", metadata=changed_default(_entry_pinned))
    """What happens to the state at loop entry, before the blocks (DESIGN.md, 'Recall'):
    plain = nothing (Deep Thinking's no-recall block is a plain residual, Bansal et al. 2022;
    with concat recall DT's z <- W[z; x]); shrink = z <- a2*z with a learned a2 (init a2_init) and
    nothing injected (this project's first form for none / internal / concat recall, AUDIT 2 #3;
    a no-recall loop without outer norm then contracts to one input-independent point);
    outer_only = FPRM's ``outer_only=True`` (models/transformer.py): z <- a2*z + (1 - a2)*x with
    plain residual sublayers (a1 = b1 = 1), which injects x, so standard scaled recall only.
    auto = plain for none and internal recall, FPRM's coupled form (see residual_scale) for scaled
    standard recall, shrink for concat recall (its form before this option existed); and shrink
    for none and internal recall where the step's gain must be at most 1 (spectral <= 1,
    spectral_mode step), which a plain entry cannot reach: its identity skip alone has gain 1."""
    conv_form: ConvForm = field(default="add", metadata=ADDED_AFTER_IDS)
    """How the step conv (``conv``) acts on the state: add = z <- z + dwconv(z), weights N(0,
    init_std) (this project's form: the conv starts near the identity); replace = z <- dwconv(z)
    with PyTorch's default conv init, FPRM's form (models/transformer.py: hidden_states =
    self.conv(hidden_states), conv_bias false in its configs)."""
    attention_mask: AttentionMask = field(default="none", metadata=ADDED_AFTER_IDS)
    """Which tokens the attention mixer lets each token see: none = all (global attention); board =
    the relations the task declares on its fixed board (``Task.board_mask``: sudoku peers, the
    squares a chess piece can reach: ranks, files, diagonals, knight jumps), a local rule of the
    task's geometry as a conv is of a grid's. Needs mixer attention, no causal, and a task with a
    fixed board (sudoku, chess)."""
    spectral_hold: SpectralHold = field(default="init", metadata=ADDED_AFTER_IDS)
    """How long ``spectral_mode: step`` holds the step gain at sigma: init = calibrated once at
    construction, then training moves it (measured after training as rho at z*); every_step = the
    common map scale c is re-normalised after every optimizer step so the step's measured gain
    stays at sigma (spectral normalisation, Miyato et al. 2018, applied to the whole step rather
    than to each map; a few warm-started power iterations and one multiplicative correction per
    step, ``LoopedModel.after_optimizer_step``). Needs spectral set and spectral_mode step."""

    def validate(self, where: str = "model") -> None:
        check_literals(self, where)
        self._validate_entry(where)
        if self.attention_mask == "board" and (self.mixer != "attention" or self.causal):
            raise ConfigError(f"{where}.attention_mask: 'board' masks the global attention mixer; got "
                              f"mixer {self.mixer!r}{' with causal' if self.causal else ''}, expected mixer "
                              f"attention without causal")
        if (self.recall != "standard" and self.entry_form() == "plain"
                and damped_skip_regime(self.spectral, self.spectral_mode)):
            raise ConfigError(f"{where}.spectral: got {self.spectral} (a step gain of at most 1) with a plain loop "
                              f"entry and recall {self.recall!r}: the identity skip alone has gain 1 (more with an "
                              "additive conv), so the step cannot be brought there; set model.loop_entry: shrink "
                              "(a2 damps the skip), or spectral > 1")
        if self.spectral_hold == "every_step" and (self.spectral is None or self.spectral_mode != "step"):
            raise ConfigError(f"{where}.spectral_hold: 'every_step' holds the step gain at model.spectral, so it "
                              f"needs spectral set and spectral_mode 'step' (got spectral={self.spectral}, "
                              f"spectral_mode={self.spectral_mode!r})")
        if not isinstance(self.causal, bool):
            raise ConfigError(f"{where}.causal: got {self.causal!r}, expected true or false")
        if self.recall == "none" and self.z0 in ("zeros", "random"):
            raise ConfigError(f"{where}.z0: got {self.z0!r} with recall 'none', expected 'auto' or 'x' "
                              f"(without recall x enters only through the initial state)")
        if not self.z0_std > 0:
            raise ConfigError(f"{where}.z0_std: got {self.z0_std}, expected a positive number")
        if self.mixer_window < 1 or (not self.causal and self.mixer_window % 2 == 0):
            raise ConfigError(f"{where}.mixer_window: got {self.mixer_window}, expected an odd integer >= 1 "
                              f"(any integer >= 1 with causal)")
        if self.dim <= 0 or self.heads <= 0 or self.dim % self.heads:
            raise ConfigError(f"{where}.dim: got {self.dim}, expected a positive multiple of heads={self.heads}")
        if self.n_layers < 1:
            raise ConfigError(f"{where}.n_layers: got {self.n_layers}, expected >= 1")
        if self.spectral is not None and not self.spectral > 0:
            raise ConfigError(f"{where}.spectral: got {self.spectral}, expected a positive number or null")
        for name in ("a1_init", "a2_init"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"{where}.{name}: got {v}, expected a number strictly between 0 and 1")

    def _validate_entry(self, where: str) -> None:
        scaled = (self.recall, self.recall_form) == ("standard", "scaled")
        if self.loop_entry == "outer_only" and not scaled:
            raise ConfigError(f"{where}.loop_entry: 'outer_only' (FPRM's z <- a2*z + (1-a2)*x) injects x, so it "
                              f"is a form of scaled standard recall; got recall={self.recall!r}, "
                              f"recall_form={self.recall_form!r} (expected auto, plain or shrink there)")
        if self.loop_entry in ("plain", "shrink") and scaled:
            raise ConfigError(f"{where}.loop_entry: {self.loop_entry!r} injects nothing, but scaled standard "
                              "recall injects x at loop entry; expected auto (FPRM's coupled form) or outer_only "
                              "(a plain z + x is residual_scale: none)")

    def entry_form(self) -> str:
        """The loop entry in force: 'coupled' (FPRM's default, scaled standard recall), 'outer_only',
        'shrink' or 'plain' (``loop_entry`` with 'auto' resolved)."""
        if self.loop_entry != "auto":
            return self.loop_entry
        if self.recall == "standard":
            return "coupled" if self.recall_form == "scaled" else "shrink"
        scaled = self.residual_scale != "none"
        return "shrink" if scaled and damped_skip_regime(self.spectral, self.spectral_mode) else "plain"

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "model") -> "ModelConfig":
        return _from_dict(cls, data, where)


@dataclass(frozen=True)
class SolverConfig:
    """Fixed-point solver and halting (FPRM's damped iteration with patience decay)."""

    name: SolverName = "damped"
    """damped iteration z <- eta*F(z) + (1-eta)*z, or anderson acceleration."""
    tol: float = 1e-2
    """Halt a sample when its residual r (see residual) < tol."""
    residual: ResidualRule = field(default="per_token", metadata=ADDED_AFTER_IDS)
    """per_token: FPRM's r = max over tokens t of ||z_t - F(z)_t||_inf / ||F(z)_t||_inf; global:
    max|z - F(z)| / max|F(z)| over the whole sample (this project's first form; a token with small
    entries can be far from rest while the sample-wide ratio is small)."""
    train_cap: int = 16
    """Max loop steps per forward pass in training."""
    eval_cap: int = 64
    """Max loop steps in evaluation at the training size (OOD splits scale it, see eval_cap_law)."""
    eval_cap_law: CapLaw = field(default="task", metadata=ADDED_AFTER_IDS)
    """How the eval cap grows on OOD sizes: ceil(eval_cap * (size/train_size)^p) with p = 1
    (linear: prefix sums, state tracking: one step per extra position), p = 2 (quadratic: mazes,
    whose dead-end-filling depth grows about as side^1.9), or fixed (p = 0: sudoku and chess, whose
    OOD splits keep the board size). task = the law the task declares (Task.cap_law)."""
    eta: float = 1.0
    """Initial damping (1 = plain iteration)."""
    patience: int = 5
    """Steps without improvement of r before eta decays (FPRM P)."""
    decay_train: float = 0.9
    """eta <- decay*eta on stagnation, in training (FPRM gamma)."""
    decay_eval: float = 0.99
    """eta <- decay*eta on stagnation, in evaluation."""
    min_eta: float = 1e-3
    """Halt when eta falls below this."""
    per_sample: bool = True
    """Converged samples leave the active batch (compute follows difficulty). False = FPRM's
    batch-level halting (the batch stops at its slowest sample)."""
    detect_cycles: bool = True
    """Detect period-2 cycles (z_{t+2} ~ z_t while r stays high) and halt them as 'cycled'."""
    anderson_m: int = 5
    """History size for Anderson acceleration."""

    def validate(self, where: str = "solver") -> None:
        check_literals(self, where)
        if self.tol <= 0:
            raise ConfigError(f"{where}.tol: got {self.tol}, expected > 0")
        for name in ("train_cap", "eval_cap", "patience", "anderson_m"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: got {getattr(self, name)}, expected an integer >= 1")
        if not 0 < self.eta <= 1:
            raise ConfigError(f"{where}.eta: got {self.eta}, expected 0 < eta <= 1")

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "solver") -> "SolverConfig":
        return _from_dict(cls, data, where)


def resolve_cap_law(solver: SolverConfig, task_law: str = "linear") -> str:
    """The cap law in force: ``solver.eval_cap_law``, or the task's own law when that is 'task'."""
    law = task_law if solver.eval_cap_law == "task" else solver.eval_cap_law
    if law not in CAP_EXPONENTS:
        raise ValueError(f"cap law: got {law!r}, expected one of {sorted(CAP_EXPONENTS)}")
    return law


@dataclass(frozen=True)
class GradConfig:
    """How gradients flow through the loop (DESIGN.md, 'Gradient modes')."""

    mode: GradMode = "truncated"
    """bptt | truncated (k steps with grad after a no-grad solve) | phantom (k damped steps from the
    detached fixed point) | implicit (IFT backward solve) | progressive (DT's progressive loss)."""
    k: int = 4
    """Steps with grad for truncated / phantom; max steps with grad for progressive 'halting'."""
    phantom_eta: float = 0.5
    """Damping of phantom-gradient steps."""
    alpha: float = 0.5
    """Progressive loss mix: loss = (1-alpha)*full + alpha*progressive (DT: prefix sums 1.0,
    mazes 0.01, chess 0.5)."""
    progressive: ProgressiveForm = field(default="dt", metadata=ADDED_AFTER_IDS)
    """Form of the progressive loss. dt (Deep Thinking's code, Bansal et al. 2022): T =
    solver.train_cap plain steps, no halting; n ~ U{0..T-1} steps without grad, then
    k ~ U{1..T-n} steps with grad from the detached state; 'full' is the loss after T steps
    from the start. halting (this project's first form): 'full' is the halting solver's
    forward under bptt, n ~ U{0..cap-1}, k ~ U{1..grad.k}."""
    segments: int = 1
    """Deep supervision segments per training step (state detached between segments; FPRM/TRM)."""
    implicit_iters: int = 30
    """Max fixed-point iterations for the implicit backward solve g = J^T g + dL/dz*."""

    @classmethod
    def parse(cls, text: str) -> "GradConfig":
        """Parse the sweep shorthand 'bptt', 'truncated:4', 'phantom:2', 'implicit', 'progressive:8'."""
        mode, _, k = text.partition(":")
        kwargs: dict[str, Any] = {"mode": mode}
        if k:
            try:
                kwargs["k"] = int(k)
            except ValueError:
                raise ConfigError(f"grad: got {text!r}, expected MODE or MODE:K with integer K") from None
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self, where: str = "grad") -> None:
        check_literals(self, where)
        if self.k < 1 or self.segments < 1:
            raise ConfigError(f"{where}: k={self.k}, segments={self.segments}, expected integers >= 1")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"{where}.alpha: got {self.alpha}, expected 0 <= alpha <= 1")

    @classmethod
    def from_dict(cls, data: dict | str | None, where: str = "grad") -> "GradConfig":
        if isinstance(data, str):
            return cls.parse(data)
        return _from_dict(cls, data, where)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation budget and settings; separate from the eval budget."""

    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 64
    """Training instances per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (after warmup)."""
    weight_decay: float = 0.01
    """AdamW weight decay of the weight matrices (gains, biases and logits are not decayed)."""
    warmup: int = 50
    """Linear warmup steps, then cosine decay to 10% of lr."""
    grad_clip: float = 1.0
    """Max global gradient norm (clipped above it); 0 = no clipping."""
    ema: Optional[float] = None
    """EMA decay of weights used for evaluation (e.g. 0.999); None = off."""
    loss: LossName = "ce"
    """ce, stablemax cross-entropy (FPRM/TRM), or squares: for each class above 0 a softmax over
    the board's positions picks the square that holds it (chess: the from- and to-square), which
    is what the chess decoder reads (argmax per class over squares), where per-square ce is
    dominated by the 62 'none' squares of every board."""
    label_smoothing: float = field(default=0.0, metadata=ADDED_AFTER_IDS)
    """Label smoothing of the ce loss (0 = off). DART (Kuo et al.) reports mazes 9 -> 31 at
    98.2 +/- 0.6 over seeds with 0.3, against 73.9 +/- 26.0 with plain cross-entropy."""
    select_every: int = field(default=0, metadata=ADDED_AFTER_IDS)
    """Keep the best weights (0 = off, keep the last): every this many steps, score the eval weights
    by exact accuracy on ``n_select`` held-out training-size instances (taken from the end of the
    training set, never trained on) and evaluate the best-scoring ones. Deep Thinking keeps the
    best model by a held-out split (deep-thinking train_model.py: ``highest_val_acc_so_far``,
    ``model_best.pth``)."""
    n_select: int = field(default=256, metadata=ADDED_AFTER_IDS)
    """Held-out instances scored when ``select_every`` > 0 (removed from the ``n_train`` trained on)."""
    n_train: int = 4096
    """Training instances generated for the task."""
    log_every: int = 25
    """Report training metrics every this many steps."""
    checkpoint_every: int = 100
    """Offer a checkpoint to the caller every this many steps."""
    seed: int = 0
    """Mixed with the trial seed for init and batch order (the data depend on the trial seed only)."""
    device: str = "auto"
    """auto = CUDA if available else CPU."""
    compile: bool = field(default=False, metadata=ADDED_AFTER_IDS)
    """Run the training loop's steps under torch.compile (TorchInductor; PyTorch 2 docs,
    "torch.compile"), evaluation stays eager. Fused kernels round differently, so the same seed
    gives a loss curve equal only to float tolerance, hence off by default. It pays on long
    trials: each trial compiles a few graphs (on 2 CPU cores about 12 s the first time, far less
    once TorchInductor's on-disk cache holds them). Needs a C++ compiler on CPU."""

    def validate(self, where: str = "train") -> None:
        check_literals(self, where)
        for name in ("steps", "batch_size", "n_train", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: got {getattr(self, name)}, expected an integer >= 1")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: got {self.lr}, expected > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}.label_smoothing: got {self.label_smoothing}, expected 0 <= value < 1")
        if self.label_smoothing and self.loss != "ce":
            raise ConfigError(f"{where}.label_smoothing: only the 'ce' loss takes it, got loss {self.loss!r}")
        if self.select_every < 0 or self.n_select < 1:
            raise ConfigError(f"{where}.select_every / n_select: got {self.select_every} / {self.n_select}, "
                              f"expected select_every >= 0 (0 = off) and n_select >= 1")
        if self.select_every and self.n_select >= self.n_train:
            raise ConfigError(f"{where}.n_select: got {self.n_select}, expected fewer than n_train "
                              f"({self.n_train}): the held-out instances come out of the training set")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"{where}.compile: got {self.compile!r}, expected true or false")

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "train") -> "TrainConfig":
        return _from_dict(cls, data, where)


TRAINED = "trained"
"""The halting protocol a trial trained with (its own solver settings, unchanged)."""
PROTOCOL_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
"""A protocol name is lower-case letters, digits and '_' (it becomes part of MLflow metric keys)."""


@dataclass(frozen=True)
class HaltingProtocol:
    """Named halting settings applied to a trained model's solver at evaluation, without retraining
    (issue 26; docs/halting.md). Each field left at None keeps the trial's own ``solver`` value, so
    the empty protocol is the trial's own halting ('trained'). Reachability, the cycled share and
    the capped share are functions of (tol, cycle rule, cap): a verdict is read under a named
    protocol, and compared across protocols."""

    tol: Optional[float] = None
    """Residual tolerance: a sample converged when r < tol (None = the trial's ``solver.tol``).
    FPRM uses ``fp_thresh: 0.1`` in every config (fprm config/arch/fprm.yaml, cfg_pretrain_*.yaml)."""
    detect_cycles: Optional[bool] = None
    """Halt a sample on a detected period-2 cycle (None = the trial's ``solver.detect_cycles``).
    FPRM has no such rule: its FixedPointOptimizer keeps decaying the step size (model_utils.py)."""
    cap_law: Optional[CapLaw] = None
    """How the eval cap grows on OOD sizes (None = the trial's ``solver.eval_cap_law``)."""
    cap_scale: float = 1.0
    """Multiplies ``solver.eval_cap`` (the cap at the training size; OOD caps follow the cap law
    from it): eval_cap <- ceil(eval_cap * cap_scale)."""

    def validate(self, where: str = "halting") -> None:
        if self.tol is not None and (isinstance(self.tol, bool) or not isinstance(self.tol, (int, float))
                                     or not self.tol > 0):
            raise ConfigError(f"{where}.tol: got {self.tol!r}, expected a number > 0 or null (the trial's)")
        if self.detect_cycles is not None and not isinstance(self.detect_cycles, bool):
            raise ConfigError(f"{where}.detect_cycles: got {self.detect_cycles!r}, expected true, false or null")
        check_literals(self, where)
        if isinstance(self.cap_scale, bool) or not isinstance(self.cap_scale, (int, float)) or not self.cap_scale > 0:
            raise ConfigError(f"{where}.cap_scale: got {self.cap_scale!r}, expected a number > 0")

    def apply(self, solver: SolverConfig) -> SolverConfig:
        """``solver`` with this protocol's settings; the very same object when it changes nothing
        (so 'trained' evaluates exactly as the trial did)."""
        changes: dict[str, Any] = {}
        if self.tol is not None and self.tol != solver.tol:
            changes["tol"] = float(self.tol)
        if self.detect_cycles is not None and self.detect_cycles != solver.detect_cycles:
            changes["detect_cycles"] = self.detect_cycles
        if self.cap_law is not None and self.cap_law != solver.eval_cap_law:
            changes["eval_cap_law"] = self.cap_law
        if self.cap_scale != 1:
            changes["eval_cap"] = max(1, math.ceil(solver.eval_cap * self.cap_scale))
        return dataclasses.replace(solver, **changes) if changes else solver

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "halting") -> "HaltingProtocol":
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{where}: got {data!r}, expected a mapping of {[f.name for f in dataclasses.fields(cls)]}")
        data = dict(data or {})
        if isinstance(data.get("tol"), str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                data["tol"] = float(data["tol"])
            except ValueError:
                pass
        return _from_dict(cls, data, where)


BUILTIN_HALTING: dict[str, HaltingProtocol] = {
    TRAINED: HaltingProtocol(),
    "paper": HaltingProtocol(tol=0.1, detect_cycles=False),
    "long": HaltingProtocol(detect_cycles=False, cap_scale=16.0),
}
"""Built-in protocols. trained: the trial's own settings. paper: FPRM's halting rule, tol 0.1
(``fp_thresh`` in every FPRM config) and no cycle halting (FPRM's solver only decays its step size),
at the trial's caps. long: no cycle halting and every cap x16, a budget that does not bind where the
trial's cap did (AUDIT 1.2: sudoku at 22 blanks reaches 1.000 at cap 1024 = 64 x 16)."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation budget: instances per split and which diagnostics to run."""

    n_eval: int = 256
    """Instances per eval split (in-distribution and each OOD size)."""
    batch_size: int = 64
    """Instances per forward pass while evaluating."""
    diagnostics: bool = True
    """Run the three stability axes (on a subset of diag_n instances)."""
    diag_n: int = 32
    """Instances of each split the stability diagnostics run on (the first diag_n)."""
    power_iters: int = 20
    """Power-iteration steps for the spectral radius of dF/dz at z*."""
    halting: tuple[str, ...] = field(default=(TRAINED,), metadata=ADDED_AFTER_IDS)
    """Halting protocols every split is evaluated under at the end of the trial, one result row
    per split and protocol: built-in names (trained, paper, long: BUILTIN_HALTING) or names defined
    in ``protocols``. Must include 'trained' (the trial's own rows). docs/halting.md."""
    protocols: Optional[dict[str, dict[str, Any]]] = field(default=None, metadata=ADDED_AFTER_IDS)
    """More named halting protocols: name -> HaltingProtocol fields (tol, detect_cycles, cap_law,
    cap_scale), e.g. {strict: {tol: 0.001, cap_scale: 4}}. A name may not shadow a built-in."""
    protocol_gate: float = field(default=0.0, metadata=ADDED_AFTER_IDS)
    """The protocols after 'trained' run only when the trial's in-distribution exact accuracy under
    'trained' reaches this (0: always). The report judges claims on learned trials, learned meaning
    in distribution under 'trained' (docs/statistics.md), so a model below the gate is never read
    under another protocol; and such a model seldom settles, so it is the one that runs every
    instance to a cap x16 under 'long'. Set it to the report's min_id_acc to skip that work.
    Under the other protocols the stability probes and the test-time compute curve are not run
    either (they are read under 'trained'): accuracy, iterations, reachability, the capped share and
    rho at the in-distribution fixed points are."""

    def __post_init__(self) -> None:
        if isinstance(self.halting, list):  # YAML and JSON give lists; the identity compares tuples
            object.__setattr__(self, "halting", tuple(self.halting))

    def validate(self, where: str = "eval") -> None:
        for name in ("n_eval", "batch_size", "diag_n", "power_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: got {getattr(self, name)}, expected an integer >= 1")
        if not 0.0 <= self.protocol_gate <= 1.0:
            raise ConfigError(f"{where}.protocol_gate: got {self.protocol_gate}, expected an accuracy in [0, 1]")
        self.halting_protocols(where)
        if TRAINED not in self.halting:
            raise ConfigError(f"{where}.halting: got {list(self.halting)}, expected a list that includes "
                              f"{TRAINED!r} (the trial's own rows, which the competence gate reads)")

    def defined_protocols(self, where: str = "eval") -> dict[str, HaltingProtocol]:
        """Every protocol this config can name: the built-ins, then ``protocols`` (validated)."""
        out = dict(BUILTIN_HALTING)
        if self.protocols is None:
            return out
        if not isinstance(self.protocols, dict):
            raise ConfigError(f"{where}.protocols: got {self.protocols!r}, expected a mapping of name -> "
                              f"{{tol, detect_cycles, cap_law, cap_scale}}")
        for name, values in self.protocols.items():
            if name in BUILTIN_HALTING:
                raise ConfigError(f"{where}.protocols.{name}: a built-in protocol; expected a new name "
                                  f"(built-ins: {list(BUILTIN_HALTING)})")
            check_protocol_name(f"{where}.protocols", name)
            out[name] = HaltingProtocol.from_dict(values, f"{where}.protocols.{name}")
        return out

    def halting_protocols(self, where: str = "eval") -> dict[str, HaltingProtocol]:
        """The protocols of ``halting``, by name, in order; ConfigError naming an unknown one."""
        known = self.defined_protocols(where)
        names = self.halting
        if not isinstance(names, tuple) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}.halting: got {names!r}, expected a non-empty list of protocol names, "
                              f"e.g. [trained, long]")
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.halting: got {list(names)}, expected distinct names")
        for i, name in enumerate(names):
            if name not in known:
                raise ConfigError(f"{where}.halting[{i}]: unknown protocol {name!r}; expected one of {list(known)} "
                                  f"(define more under {where}.protocols)")
        return {name: known[name] for name in names}

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "eval") -> "EvalConfig":
        return _from_dict(cls, data, where)


@dataclass(frozen=True)
class TaskSpec:
    """Which task, its parameters, and the sizes to train and evaluate at."""

    name: str = "prefix_sums"
    """Registered task name (fpr_core.tasks.TASK_NAMES)."""
    params: dict = field(default_factory=dict)
    """Task parameters, e.g. {"group": "S5"} for state tracking."""
    train_size: Optional[int] = None
    """Size knob of the training and 'id' splits; None = the task's default_train_size."""
    ood_sizes: Optional[tuple[int, ...]] = None
    """Sizes of the 'ood_<size>' splits; None = the task's default_ood_sizes; () = none."""

    def validate(self, where: str = "task") -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"{where}.name: got {self.name!r}, expected a registered task name")
        if not isinstance(self.params, dict):
            raise ConfigError(f"{where}.params: got {self.params!r}, expected a mapping")
        if self.train_size is not None and int(self.train_size) < 1:
            raise ConfigError(f"{where}.train_size: got {self.train_size}, expected an integer >= 1")
        for size in self.ood_sizes or ():
            if int(size) < 1:
                raise ConfigError(f"{where}.ood_sizes: got {self.ood_sizes}, expected integers >= 1")

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "task") -> "TaskSpec":
        data = dict(data or {})
        if data.get("ood_sizes") is not None:
            data["ood_sizes"] = tuple(int(s) for s in data["ood_sizes"])
        return _from_dict(cls, data, where)


EXPERIMENT_SECTIONS: dict[str, type] = {"task": TaskSpec, "model": ModelConfig, "solver": SolverConfig,
                                        "grad": GradConfig, "train": TrainConfig, "eval": EvalConfig}
"""The sections of an experiment config, by name."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one trial."""

    task: TaskSpec = field(default_factory=TaskSpec)
    """Which task and sizes."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The looped model."""
    solver: SolverConfig = field(default_factory=SolverConfig)
    """Fixed-point solver and halting."""
    grad: GradConfig = field(default_factory=GradConfig)
    """Gradient mode through the loop."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation budget."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation budget and diagnostics."""
    seed: int = 0
    """Trial seed: generates the data; mixed with train.seed for init and batches
    (``fpr_core.experiment.training_seed``)."""

    @classmethod
    def from_dict(cls, data: dict | None) -> "ExperimentConfig":
        """Strict: unknown sections or fields raise ConfigError naming them."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(EXPERIMENT_SECTIONS) - {"seed"})
        if unknown:
            raise ConfigError(f"experiment: unknown section(s) {unknown}; expected some of "
                              f"{sorted(EXPERIMENT_SECTIONS) + ['seed']}")
        sections = {name: cls_.from_dict(data.get(name), name) for name, cls_ in EXPERIMENT_SECTIONS.items()}
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed: got {seed!r}, expected an integer")
        return cls(**sections, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict that ``from_dict`` reads back to an equal config."""
        out = dataclasses.asdict(self)
        if out["task"]["ood_sizes"] is not None:
            out["task"]["ood_sizes"] = list(out["task"]["ood_sizes"])
        out["eval"]["halting"] = list(out["eval"]["halting"])
        return out


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


REMOVED_AFTER_IDS: dict[str, dict[str, Any]] = {"solver": {"eval_cap_scale": True}}
"""Fields dropped after trial ids were pinned, with the value every pinned trial carried; they stay
in the identity so those trials keep their ids (solver.eval_cap_scale: true became
solver.eval_cap_law, whose default 'task' is the linear law it applied)."""


def identity_sections(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The part of resolved config sections that names a trial: every field, except fields added
    after trial ids were pinned (``ADDED_AFTER_IDS``) while they hold their default. A committed
    study's trials keep their ids; a trial that sets such a field gets a new one."""
    out = {}
    for name, values in sections.items():
        cls = EXPERIMENT_SECTIONS.get(name)
        late = {} if cls is None else {f.name: (f.metadata["pinned"](values) if f.metadata.get("pinned")
                                                else f.default)
                                       for f in dataclasses.fields(cls) if f.metadata.get("added_after_ids")}
        out[name] = {k: v for k, v in values.items() if not (k in late and v == late[k])}
        out[name] = {**REMOVED_AFTER_IDS.get(name, {}), **out[name]}
    return out


def fill_pinned(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A section's values written before some ``changed_default`` fields existed, with each missing
    such field set to what those configs ran (its ``pinned`` value): a saved model rebuilds as trained."""
    cls = EXPERIMENT_SECTIONS[section]
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.metadata.get("pinned") and f.name not in out:
            out[f.name] = f.metadata["pinned"](values)
    return out
