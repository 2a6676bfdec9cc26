"""Gradient modes: every mode (and deep-supervision segments) trains on sequences and grids;
implicit and phantom gradients match BPTT at a converged fixed point; deep supervision sums
per-segment losses from detached states."""
import pytest
import torch
import torch.nn.functional as F

from fpr_core.config import GradConfig, ModelConfig, SolverConfig
from fpr_core.train import training_loss
from fpr_core.model import LoopedModel

MODES = ["bptt", "truncated", "phantom", "implicit", "progressive"]


def loss_fn(logits, targets, mask):
    return F.cross_entropy(logits[mask], targets[mask])


def build(grad, grid=False, solver=None, seed=0, **opts):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=3, n_classes=2, dim=16, heads=2, **opts)
    return LoopedModel(cfg, solver or SolverConfig(train_cap=6, eval_cap=10), grad,
                       grid=grid, train_tokens=16)


def batch(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 3, shape, generator=g)
    return inputs, inputs.remainder(2), torch.rand(shape, generator=g) > 0.2


@pytest.mark.parametrize("segments", [1, 2])
@pytest.mark.parametrize("grid", [False, True], ids=["seq", "grid"])
@pytest.mark.parametrize("mode", MODES)
def test_mode_trains_and_runs_larger(mode, grid, segments):
    positions, conv = ("rope2d", "2d") if grid else ("rope1d", "1d")
    model = build(GradConfig(mode=mode, k=2, segments=segments), grid, positions=positions, conv=conv)
    model.train()
    inputs, targets, mask = batch((3, 4, 4) if grid else (3, 16))
    loss, out = training_loss(model, inputs, targets, mask, loss_fn)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert out.logits.shape == (*inputs.shape, 2)
    model.eval()
    with torch.no_grad():
        big = model(batch((2, 6, 6) if grid else (2, 40))[0])
    assert big.logits.shape == ((2, 6, 6, 2) if grid else (2, 40, 2))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_progressive_extreme_alphas(alpha):
    model = build(GradConfig(mode="progressive", k=3, alpha=alpha)).train()
    loss, _ = training_loss(model, *batch((2, 16)), loss_fn)
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad.abs().sum() > 0


def test_segments_sum_losses_from_detached_states():
    model = build(GradConfig(mode="bptt", segments=3)).train()
    inputs, targets, mask = batch((2, 16))
    loss, _ = training_loss(model, inputs, targets, mask, loss_fn)
    expected, z = 0.0, None
    for _ in range(3):
        out = model(inputs, z0=z)
        expected = expected + loss_fn(out.logits, targets, mask)
        z = out.z.detach()
    assert torch.allclose(loss, expected)


def test_truncated_and_phantom_count_their_grad_steps():
    for mode in ("truncated", "phantom"):
        model = build(GradConfig(mode=mode, k=3), solver=SolverConfig(tol=1e-30, train_cap=8)).train()
        out = model(batch((2, 16))[0])
        assert (out.trace.iterations == 8).all()  # cap 8 = 5 no-grad steps + 3 with grad


def _param_grads(model, mode, k, cap):
    """Gradient of a fixed loss wrt all parameters under the given grad mode (float64)."""
    model.grad_cfg = GradConfig(mode=mode, k=k, phantom_eta=0.5, implicit_iters=200)
    model.zero_grad()
    inputs, targets, mask = batch((2, 16), seed=3)
    loss, out = training_loss(model, inputs, targets, mask, loss_fn)
    loss.backward()
    assert out.trace.converged.all()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_implicit_and_phantom_match_bptt_at_the_fixed_point():
    # A contractive loop (spectral 0.5, float64) solved to r < 1e-10: BPTT through the converged
    # unroll, the IFT gradient and a 40-step phantom gradient (contraction ~(0.5 + 0.5*rho)^40)
    # all estimate (I - J)^-T dL/dz*. Tolerance: relative L2 error < 1e-4.
    solver = SolverConfig(tol=1e-10, train_cap=300)
    model = build(GradConfig(), solver=solver, spectral=0.5, init_std=0.3, outer_norm="none").double().train()
    ref = _param_grads(model, "bptt", 1, 300)
    for mode, k in [("implicit", 1), ("phantom", 40)]:
        got = _param_grads(model, mode, k, 300)
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel < 1e-4, (mode, rel)
    truncated_one = _param_grads(model, "truncated", 1, 300)  # the one-step gradient is biased
    assert ((truncated_one - ref).norm() / ref.norm()).item() > 1e-3


def test_implicit_gradient_matches_finite_differences():
    solver = SolverConfig(tol=1e-12, train_cap=400)
    model = build(GradConfig(mode="implicit", implicit_iters=200), solver=solver, spectral=0.5,
                  init_std=0.3).double().train()
    inputs, targets, mask = batch((2, 16), seed=4)
    loss, _ = training_loss(model, inputs, targets, mask, loss_fn)
    loss.backward()
    param = model.coeffs.a1_logit
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(5), dtype=param.dtype)
    analytic = (param.grad * direction).sum().item()
    eps = 1e-5
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            param.add_(sign * eps * direction)
            values.append(training_loss(model, inputs, targets, mask, loss_fn)[0].item())
            param.sub_(sign * eps * direction)
    numeric = (values[0] - values[1]) / (2 * eps)
    # float64 central difference; tolerance 1e-4 relative, set by the backward solve's stopping
    # rule (IMPLICIT_TOL = 1e-5 relative change per iteration), not by the finite difference.
    assert analytic == pytest.approx(numeric, rel=1e-4)
