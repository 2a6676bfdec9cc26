"""Stability diagnostics against loops whose answers are known in closed form, and the SGLT check
on the real model: without recall a contractive loop forgets its input, with recall it does not."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fpr_core.config import GradConfig, ModelConfig, SolverConfig
from fpr_core.diagnostics import (DIAGNOSTIC_KEYS, iterate_to_rest, probe_loop, reachability,
                                  spectral_radius, stability_diagnostics)
from fpr_core.model import LoopedModel, LoopMap, LoopOutput
from fpr_core.solver import solve


def linear_loop_map(matrix: torch.Tensor, x: torch.Tensor) -> LoopMap:
    """F(z; x) = z A^T + x on (B, T, d): J = A at every z, z* = x (I - A^T)^-1."""
    return LoopMap(x=x, z0=torch.zeros_like(x), shape=(x.shape[1],),
                   step=lambda z, x_rows: z @ matrix.T + x_rows)


def matrix_with_eigenvalues(blocks: list[torch.Tensor], seed: int) -> torch.Tensor:
    """A = P diag(blocks) P^-1 for a random P: non-normal, spectrum = that of the blocks."""
    d = sum(b.shape[0] for b in blocks)
    p = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (p @ torch.block_diag(*blocks) @ torch.linalg.inv(p)).float()


class AffineLoop(nn.Module):
    """A real looped model with a closed-form fixed point: F(z; x) = a*z + x, z* = x / (1 - a).

    Input dependence and fixed-point spread are both exactly 1/(1 - a), the spectral radius is a,
    and every start reaches the same z* (path independence 0).
    """

    def __init__(self, a: float, dim: int = 6) -> None:
        super().__init__()
        self.a = a
        self.embed = nn.Embedding(2, dim)
        self.solver_cfg = SolverConfig(tol=1e-4)

    def loop_map(self, inputs):
        return self.loop_map_from_embedding(self.embed(inputs), tuple(inputs.shape[1:]))

    def loop_map_from_embedding(self, x, shape):
        return LoopMap(x=x, z0=torch.zeros_like(x), shape=shape, step=lambda z, xr: self.a * z + xr)

    def forward(self, inputs, *, cap=None, z0=None):
        lm = self.loop_map(inputs)
        z, trace = solve(lm.f_subset, lm.z0 if z0 is None else z0, self.solver_cfg, cap, train=False)
        return LoopOutput(logits=z[..., :2], z=z, trace=trace)


@pytest.mark.parametrize("blocks, rho", [
    ([torch.tensor([[0.6]]), torch.tensor([[0.3]]), torch.tensor([[-0.2]]), torch.tensor([[0.1]])], 0.6),
    # a complex pair 0.7 * exp(+-i 0.9) dominates a real 0.5: single-step ratios oscillate
    ([0.7 * torch.tensor([[math.cos(0.9), -math.sin(0.9)], [math.sin(0.9), math.cos(0.9)]]),
      torch.tensor([[0.5]]), torch.tensor([[-0.3]])], 0.7),
])
def test_spectral_radius_of_known_linear_map(blocks, rho):
    matrix = matrix_with_eigenvalues([b.double() for b in blocks], seed=0)
    x = torch.randn(5, 3, matrix.shape[0], generator=torch.Generator().manual_seed(1))
    lm = linear_loop_map(matrix, x)
    est = spectral_radius(lm.f, x, iters=80, generator=torch.Generator().manual_seed(2))
    assert est.shape == (5,)
    assert torch.allclose(est, torch.full((5,), rho), rtol=0.03)


def test_iterate_to_rest_reaches_closed_form_fixed_point():
    matrix = matrix_with_eigenvalues([torch.tensor([[0.5]]).double(), torch.tensor([[-0.4]]).double(),
                                      torch.tensor([[0.2]]).double()], seed=3)
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(4))
    lm = linear_loop_map(matrix, x)
    z = iterate_to_rest(lm.f, lm.z0, cap=500)
    want = x @ torch.linalg.inv(torch.eye(3) - matrix.T)
    assert torch.allclose(z, want, atol=1e-5)


def test_probes_on_affine_loop_match_closed_form():
    torch.manual_seed(0)
    model = AffineLoop(a=0.5)
    inputs = torch.randint(0, 2, (12, 5), generator=torch.Generator().manual_seed(5))
    diag = stability_diagnostics(model, inputs, cap=200, power_iters=10)
    assert set(diag) == set(DIAGNOSTIC_KEYS)
    assert diag["input_dependence"] == pytest.approx(2.0, rel=1e-3)
    assert diag["fixed_point_spread"] == pytest.approx(2.0, rel=1e-3)
    assert diag["path_independence"] < 1e-4
    assert diag["spectral_radius"] == pytest.approx(0.5, rel=1e-3)
    assert diag["reachability"] == 1.0 and diag["cycled_frac"] == 0.0
    assert diag["residual_median"] < 1e-4
    # from z0 = 0, z_t = 2x(1 - 0.5^t), so r_t ~ 0.5^(t+2): below tol 1e-4 after about 12 steps
    assert 10 <= diag["iters_p50"] <= diag["iters_p95"] <= 16


def test_reachability_from_per_sample_stats():
    out = reachability(torch.tensor([1, 2, 3, 10]), torch.tensor([0.001, 0.002, 0.5, 0.9]),
                       torch.tensor([True, True, False, False]), torch.tensor([False, False, True, False]))
    assert out == {"reachability": 0.5, "iters_p50": 2.5, "iters_p95": pytest.approx(8.95),
                   "residual_median": pytest.approx(0.251), "cycled_frac": 0.25}


def real_model(recall: str, seed: int = 0) -> LoopedModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(dim=16, heads=2, recall=recall, outer_norm="none", spectral=0.5)
    return LoopedModel(cfg, SolverConfig(), GradConfig(), grid=False, train_tokens=8)


def test_without_recall_a_contractive_loop_forgets_its_input():
    """SGLT: no recall => no strong input dependence; recall => z* moves with x (toy theory check)."""
    inputs = torch.randint(0, 2, (8, 8), generator=torch.Generator().manual_seed(6))
    none = probe_loop(real_model("none"), inputs, cap=48, power_iters=8)
    standard = probe_loop(real_model("standard"), inputs, cap=48, power_iters=8)
    assert none["input_dependence"] < 0.05 and none["fixed_point_spread"] < 0.05
    assert standard["input_dependence"] > 0.2 and standard["fixed_point_spread"] > 0.2
    assert standard["path_independence"] < 1e-3  # recall + contraction: one fixed point per input
    assert 0 < standard["spectral_radius"] < 1
    for value in [*none.values(), *standard.values()]:
        assert np.isfinite(value)


def test_probe_restores_training_mode():
    model = real_model("standard").train()
    probe_loop(model, torch.zeros(2, 8, dtype=torch.long), cap=4, power_iters=2)
    assert model.training
