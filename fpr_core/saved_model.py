"""A trained trial kept on disk: weights (and EMA weights) with the config that built them.

One file, written with ``torch.save`` and read back with ``torch.load(weights_only=True)``: it holds
only tensors, strings, numbers and plain containers, so loading it never runs pickled code. The
experiment config travels as JSON inside it, so ``load_model(path)`` alone gives a ready
``LoopedModel`` in eval mode:

    >>> from fpr_core.saved_model import load_model
    >>> model = load_model("results/quickstart/models/3f2a9c1d.pt")      # doctest: +SKIP
    >>> out = model(torch.as_tensor(inputs), cap=64)                      # doctest: +SKIP

``which`` picks the weights: ``eval`` (the ones the trial was scored with: EMA when ``train.ema``
was set, else the raw ones), ``final`` (the raw weights after the last optimizer step) or ``ema``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Optional

import torch
from torch import nn

from fpr_core.config import ExperimentConfig, ModelConfig, fill_pinned

SAVED_MODEL_FORMAT = 1
WeightsChoice = Literal["eval", "final", "ema"]
WEIGHTS_CHOICES = ("eval", "final", "ema")


@dataclass
class SavedModel:
    """The contents of a saved-model file, read back."""

    config: dict[str, Any]
    """The trial's resolved experiment config (``ExperimentConfig.to_dict()``)."""
    model_config: dict[str, Any]
    """The ModelConfig with vocab_size / n_classes filled in from the task."""
    grid: bool
    """True for grid tasks (inputs (B, H, W))."""
    train_tokens: int
    """Tokens per instance at the training size."""
    weights: dict[str, torch.Tensor]
    """state_dict of the raw trained model."""
    ema: Optional[dict[str, torch.Tensor]]
    """state_dict of the EMA copy, None when the trial trained without EMA."""
    meta: dict[str, Any]
    """Free-form provenance (trial id, sweep, git commit, train steps) as JSON-able values."""

    def experiment_config(self):
        """The config as fpr_core's ExperimentConfig (a model saved before a ``changed_default`` field
        existed reads as what it ran: ``fpr_core.config.fill_pinned``)."""
        config = dict(self.config)
        if isinstance(config.get("model"), dict):
            config["model"] = fill_pinned("model", config["model"])
        return ExperimentConfig.from_dict(config)

    def build(self, which: WeightsChoice = "eval", device: str | torch.device = "cpu") -> nn.Module:
        """A LoopedModel with the chosen weights loaded, in eval mode, on ``device``."""
        from fpr_core.experiment import task_model_inputs, task_of
        from fpr_core.model import LoopedModel

        if which not in WEIGHTS_CHOICES:
            raise ValueError(f"which: got {which!r}, expected one of {WEIGHTS_CHOICES}")
        if which == "ema" and self.ema is None:
            raise ValueError("which='ema': this model was trained without EMA (train.ema: null)")
        cfg = self.experiment_config()
        model_cfg = ModelConfig.from_dict(fill_pinned("model", self.model_config))
        model = LoopedModel(model_cfg, cfg.solver, cfg.grad, grid=self.grid, train_tokens=self.train_tokens,
                            **task_model_inputs(task_of(cfg)[0], model_cfg))
        state = self.weights if which == "final" or self.ema is None else self.ema
        model.load_state_dict(state)
        return model.to(device).eval()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_model(path: str | os.PathLike, model: nn.Module, config: dict[str, Any], model_config: ModelConfig, *,
               ema: Optional[nn.Module] = None, meta: Optional[dict[str, Any]] = None) -> int:
    """Write ``model`` (a LoopedModel) and its EMA copy with the configs to ``path`` (atomic:
    a temp file renamed into place). Returns the file's size in bytes."""
    payload = {"format": SAVED_MODEL_FORMAT, "config": json.dumps(config, sort_keys=True),
               "model_config": json.dumps(dataclasses.asdict(model_config), sort_keys=True),
               "grid": bool(model.grid), "train_tokens": int(model.train_tokens),
               "meta": json.dumps(meta or {}, sort_keys=True, default=str),
               "weights": _cpu_state(model), "ema": None if ema is None else _cpu_state(ema)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def save_experiment_model(path: str | os.PathLike, result: Any, config: dict[str, Any],
                          meta: Optional[dict[str, Any]] = None) -> int:
    """``save_model`` for an ``ExperimentResult`` of ``run_experiment`` (EMA kept when it was used)."""
    eval_model = result.train.eval_model
    ema = eval_model if eval_model is not None and eval_model is not result.model else None
    return save_model(path, result.model, config, result.model_cfg_resolved, ema=ema, meta=meta)


def read_saved(path: str | os.PathLike | BinaryIO) -> SavedModel:
    """Read a saved-model file or its bytes in a file object (``weights_only=True``: tensors and
    plain data only)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != SAVED_MODEL_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a saved fpr_core model (format {got!r}, expected {SAVED_MODEL_FORMAT})")
    return SavedModel(config=json.loads(payload["config"]), model_config=json.loads(payload["model_config"]),
                      grid=bool(payload["grid"]), train_tokens=int(payload["train_tokens"]),
                      weights=payload["weights"], ema=payload["ema"], meta=json.loads(payload["meta"]))


def load_model(path: str | os.PathLike, which: WeightsChoice = "eval",
               device: str | torch.device = "cpu") -> nn.Module:
    """A ready LoopedModel (eval mode) from a saved-model file; see the module doc for ``which``."""
    return read_saved(path).build(which, device)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{int(n)} B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** exp:.1f} {'KMGT'[exp - 1]}iB"
