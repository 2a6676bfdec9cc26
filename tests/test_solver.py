"""Fixed-point solvers: convergence on contractive maps, per-sample halting (compute follows
difficulty, batch-independent results), batch-level halting, patience decay, cycle detection,
Anderson acceleration."""
import dataclasses

import pytest
import torch

from fpr_core.config import GradConfig, ModelConfig, SolverConfig
from fpr_core.model import LoopedModel
from fpr_core.solver import RESIDUALS, residual, solve


class CountingMap:
    """F(z)_b = rate_b * z_b + shift_b (fixed point shift_b / (1 - rate_b)); records rows evaluated."""

    def __init__(self, rates, shift=1.0):
        self.rates = torch.tensor(rates).view(-1, 1, 1)
        self.shift = shift
        self.rows = 0

    def __call__(self, z, idx):
        self.rows += idx.numel()
        return self.rates[idx] * z + self.shift


def contractive_model(**solver):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=3, n_classes=2, dim=16, heads=2, spectral=0.5, init_std=0.3)
    model = LoopedModel(cfg, SolverConfig(**solver), GradConfig(), grid=False, train_tokens=12)
    return model.eval()


def test_contractive_model_reaches_a_fixed_point():
    model = contractive_model(tol=1e-4, eval_cap=200)
    lm = model.loop_map(torch.randint(0, 3, (4, 12), generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        z, trace = solve(lm.f_subset, lm.z0, model.solver_cfg, 200, train=False)
        fz = lm.f(z)
    assert trace.converged.all() and (trace.residual < 1e-4).all()
    assert (residual(z, fz) < 1e-4).all()
    assert ((fz - z).norm() / fz.norm()).item() < 1e-4


@pytest.mark.parametrize("name", ["damped", "anderson"])
def test_per_sample_halting_follows_difficulty(name):
    f = CountingMap([0.1, 0.9, 0.5])
    cfg = SolverConfig(name=name, tol=1e-4, per_sample=True)
    z0 = torch.zeros(3, 2, 4)
    z0[0] = 1.0 / 0.9  # sample 0 starts at its fixed point: done after one evaluation
    z, trace = solve(f, z0, cfg, 500, train=False)
    assert trace.converged.all()
    it = trace.iterations
    assert it[0] == 1 and (it[1:] > 1).all()
    if name == "damped":  # plain iteration needs more steps the slower the contraction
        assert it[2] < it[1]
    assert f.rows == int(it.sum())  # F never evaluated on finished samples
    fixed = (1.0 / (1.0 - f.rates)).expand_as(z)
    assert torch.allclose(z, fixed, rtol=1e-3)


def test_batch_level_halting_runs_everyone_to_the_slowest():
    f = CountingMap([0.1, 0.9, 0.5])
    cfg = SolverConfig(tol=1e-4, per_sample=False)
    _, trace = solve(f, torch.zeros(3, 2, 4), cfg, 500, train=False)
    steps = int(trace.iterations[0])
    assert (trace.iterations == steps).all() and f.rows == 3 * steps
    f_ps = CountingMap([0.1, 0.9, 0.5])
    _, trace_ps = solve(f_ps, torch.zeros(3, 2, 4), dataclasses.replace(cfg, per_sample=True), 500, train=False)
    assert int(trace_ps.iterations.max()) == steps and f_ps.rows < f.rows


@pytest.mark.parametrize("name", ["damped", "anderson"])
def test_each_sample_matches_running_it_alone(name):
    model = contractive_model(name=name, tol=1e-3)
    inputs = torch.randint(0, 3, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        lm = model.loop_map(inputs)
        z_star, _ = solve(lm.f_subset, lm.z0, model.solver_cfg, 100, train=False)
        # easy: start at its fixed point; hard: start far away
        z0 = torch.stack([z_star[0], 8 * torch.randn_like(z_star[1]), lm.z0[2]])
        z, trace = solve(lm.f_subset, z0, model.solver_cfg, 100, train=False)
        assert trace.iterations[0] < trace.iterations[1]
        for b in range(3):
            one = model.loop_map(inputs[b:b + 1])
            z_b, trace_b = solve(one.f_subset, z0[b:b + 1], model.solver_cfg, 100, train=False)
            assert trace_b.iterations.item() == trace.iterations[b].item()
            assert torch.allclose(z_b[0], z[b], atol=1e-5)  # float tolerance: batch-size-dependent kernels


def test_period_two_cycle_is_detected():
    f = lambda z, idx: -z  # noqa: E731  z -> -z -> z: a 2-cycle around the fixed point 0
    z0 = torch.ones(2, 3, 4)
    _, trace = solve(f, z0, SolverConfig(tol=1e-3), 100, train=False)
    assert trace.cycled.all() and not trace.converged.any()
    assert (trace.iterations == 2).all()  # halted at the first repeat, not at the cap
    _, trace_off = solve(f, z0, SolverConfig(tol=1e-3, detect_cycles=False, patience=2), 100, train=False)
    assert not trace_off.cycled.any()


def test_patience_decay_damps_an_oscillation_into_convergence():
    # Without cycle detection, z -> -z + 2 never converges at eta = 1; after `patience` steps
    # without improvement eta decays, and the damped map (1 - 2 eta) z + 2 eta converges to 1.
    f = lambda z, idx: -z + 2.0  # noqa: E731
    cfg = SolverConfig(tol=1e-3, detect_cycles=False, patience=3, decay_train=0.8)
    z, trace = solve(f, torch.zeros(2, 3, 4), cfg, 200, train=True)
    assert trace.converged.all() and torch.allclose(z, torch.ones_like(z), atol=1e-2)
    assert (trace.iterations > 3).all()


def test_halts_when_eta_falls_below_min_eta():
    gen = torch.Generator().manual_seed(0)
    f = lambda z, idx: torch.randn(z.shape, generator=gen)  # noqa: E731  no fixed point at all
    cfg = SolverConfig(tol=1e-3, patience=1, decay_eval=0.5, min_eta=0.05, detect_cycles=False)
    _, trace = solve(f, torch.zeros(2, 3, 4), cfg, 1000, train=False)
    assert not trace.converged.any() and (trace.iterations < 20).all()


def test_anderson_beats_plain_iteration_on_a_slow_contraction():
    f = CountingMap([0.97, 0.95])
    _, plain = solve(f, torch.zeros(2, 3, 4), SolverConfig(tol=1e-5), 2000, train=False)
    _, anderson = solve(f, torch.zeros(2, 3, 4), SolverConfig(name="anderson", tol=1e-5), 2000, train=False)
    assert plain.converged.all() and anderson.converged.all()
    assert (anderson.iterations * 5 < plain.iterations).all()


def test_cap_and_residual_curve():
    f = CountingMap([0.99])
    _, trace = solve(f, torch.zeros(1, 2, 2), SolverConfig(tol=1e-6), 7, train=False)
    assert trace.iterations.item() == 7 and not trace.converged.item()
    assert trace.residual_curve.shape == (7,)
    assert (trace.residual_curve[1:] <= trace.residual_curve[:-1]).all()


def test_differentiable_when_grad_is_enabled():
    rate = torch.tensor(0.5, requires_grad=True)
    f = lambda z, idx: rate * z + 1.0  # noqa: E731  fixed point 1 / (1 - rate)
    z, _ = solve(f, torch.zeros(2, 1, 1), SolverConfig(tol=1e-7), 100, train=True)
    z.sum().backward()
    assert rate.grad.item() == pytest.approx(2 * 1 / (1 - 0.5) ** 2, rel=1e-4)


def test_residual_is_fprm_per_token_ratio_and_global_is_kept_by_name():
    # Token 0 has large entries and is nearly at rest; token 1 has small entries and is far from
    # rest. FPRM's per-token ratio sees token 1 (0.5); a sample-wide ratio hides it (0.05 / 10).
    z = torch.tensor([[[10.0, 0.0], [0.1, 0.0]]])
    fz = torch.tensor([[[10.0, 0.0], [0.05, 0.0]]])
    assert RESIDUALS.get("per_token")(z, fz).item() == pytest.approx(1.0)
    assert RESIDUALS.get("global")(z, fz).item() == pytest.approx(0.05 / 10.0)
    assert residual is RESIDUALS.get("per_token")


@pytest.mark.parametrize("rule,halts", [("per_token", False), ("global", True)])
def test_solver_halts_by_the_configured_residual(rule, halts):
    target = torch.tensor([[[10.0, 0.0], [0.05, 0.0]]])
    f = lambda z, idx: 0.5 * (z + target[idx])  # contraction towards target, from z0 = target + offset
    z0 = target + torch.tensor([[[0.0, 0.0], [0.05, 0.0]]])
    _, trace = solve(f, z0, SolverConfig(tol=0.05, residual=rule), cap=1, train=False)
    assert bool(trace.converged[0]) == halts


def test_undamped_solve_is_plain_iteration_bit_for_bit_until_eta_decays():
    """While every eta is 1 the solver applies z <- F(z) itself (no 1*F + 0*z): the same values and
    gradients as a hand-written loop; once a sample's eta decays, updates are damped again."""
    model = contractive_model(tol=1e-30, train_cap=5, detect_cycles=False, patience=100)
    lm = model.loop_map(torch.randint(0, 3, (3, 12), generator=torch.Generator().manual_seed(2)))
    z, _ = solve(lm.f_subset, lm.z0, model.solver_cfg, 5, train=True)
    plain = lm.z0
    for _ in range(5):
        plain = lm.f(plain)
    assert torch.equal(z, plain)
    (grad_solve,) = torch.autograd.grad(z.sum(), lm.x, retain_graph=True)
    (grad_plain,) = torch.autograd.grad(plain.sum(), lm.x)
    assert torch.equal(grad_solve, grad_plain)
    # an oscillation that stalls: eta decays after `patience` steps and the iterate is damped
    f = CountingMap([-1.0], shift=1.0)
    cfg = SolverConfig(tol=1e-8, patience=2, decay_eval=0.5, detect_cycles=False)
    z, trace = solve(f, torch.zeros(1, 1, 1), cfg, 40, train=False)
    assert trace.converged.all() and torch.allclose(z, torch.full((1, 1, 1), 0.5), atol=1e-6)


def test_trace_of_rows_that_halt_at_different_steps_is_written_per_sample():
    """The bookkeeping follows the shrinking active set: every sample's iterations, residual and
    flags are those of its own last step, in batch order."""
    f = CountingMap([0.1, 0.9, 0.0, 0.5])
    cfg = SolverConfig(tol=1e-3)
    z, trace = solve(f, torch.zeros(4, 2, 3), cfg, 200, train=False)
    alone = [solve(CountingMap([r]), torch.zeros(1, 2, 3), cfg, 200, train=False) for r in (0.1, 0.9, 0.0, 0.5)]
    assert trace.iterations.tolist() == [int(t.iterations) for _, t in alone]
    assert torch.equal(trace.residual, torch.cat([t.residual for _, t in alone]))
    assert torch.equal(z, torch.cat([zz for zz, _ in alone]))
    assert trace.converged.all() and not trace.cycled.any()
    assert len(set(trace.iterations.tolist())) == 4
