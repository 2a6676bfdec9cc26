"""LoopedModel: every option's non-default path runs forward + backward on sequences and grids and
then on a larger input with the same weights; option semantics (coupling, spectral norm, log-n,
size errors) and determinism."""
import math

import pytest
import torch
import torch.nn.functional as F

from fpr_core.config import GradConfig, ModelConfig, SolverConfig
from fpr_core.model import LoopedModel, LoopOutput

SEQ, BIG_SEQ = (3, 12), (2, 40)
GRID, BIG_GRID = (3, 4, 4), (2, 7, 7)

# Each entry: a non-default option (defaults: standard scaled recall, pre-norm, rms outer norm,
# learned residual scale, no spectral, no positions, no conv, log-n on, swiglu, 1 layer).
OPTIONS = [
    dict(recall="none"), dict(recall="internal"), dict(recall="standard", recall_form="concat"),
    dict(pre_norm=False), dict(outer_norm="none"), dict(outer_norm="layer"),
    dict(residual_scale="none"), dict(residual_scale="fixed"), dict(spectral=0.5, spectral_mode="per_map"),
    dict(positions="rope1d"), dict(conv="1d", conv_kernel=4), dict(log_n_attention=False),
    dict(mlp="gelu", mlp_ratio=3.0), dict(n_layers=2),
    dict(mixer="local_attention"), dict(mixer="local_attention", mixer_window=5, positions="rope1d"),
    dict(mixer="conv"), dict(mixer="conv", mixer_window=5, recall="internal"),
    dict(causal=True), dict(causal=True, mixer="local_attention", mixer_window=2),
    dict(causal=True, mixer="conv", mixer_window=4), dict(causal=True, conv="1d", conv_kernel=4),
    dict(recall="internal", internal_norm="per_step"), dict(recall="internal", outer_norm="layer"),
    dict(z0="random", z0_std=6.0), dict(z0="x"), dict(recall="internal", z0="random"),
]
GRID_ONLY = [dict(positions="rope2d"), dict(conv="2d"), dict(causal=True, conv="2d", mixer="local_attention")]


def build(grid=False, seed=0, solver=None, grad=None, **opts):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=3, n_classes=2, dim=16, heads=2, **opts)
    train_tokens = 16 if grid else SEQ[1]
    return LoopedModel(cfg, solver or SolverConfig(train_cap=6, eval_cap=12), grad or GradConfig(k=2),
                       grid=grid, train_tokens=train_tokens)


def tokens(shape, seed=1):
    return torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(seed))


def run_train_and_big(model, grid):
    small, big = (GRID, BIG_GRID) if grid else (SEQ, BIG_SEQ)
    model.train()
    out = model(tokens(small))
    assert isinstance(out, LoopOutput)
    assert out.logits.shape == (*small, 2) and out.z.shape == (small[0], math.prod(small[1:]), 16)
    loss = F.cross_entropy(out.logits.flatten(0, -2), tokens(small, 2).remainder(2).flatten())
    loss.backward()
    # recall=none under truncated gradients: x enters only through z0, before the no-grad solve,
    # so the embedding gets no gradient (a property of the combination, not a bug).
    no_grad_ok = {"embed.weight"} if model.model_cfg.recall == "none" else set()
    for name, p in model.named_parameters():
        assert (p.grad is not None) or name in no_grad_ok, name
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    mixer = [p for n, p in model.named_parameters() if n.startswith("blocks.0.attn.")]
    assert model.head.weight.grad.abs().sum() > 0 and mixer[0].grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        big_out = model(tokens(big))
    assert big_out.logits.shape == (*big, 2)
    assert torch.isfinite(big_out.logits).all()
    tr = big_out.trace
    assert tr.iterations.shape == (big[0],) and tr.iterations.dtype == torch.long
    assert tr.converged.dtype == torch.bool and tr.cycled.dtype == torch.bool
    assert tr.residual_curve.dim() == 1 and tr.residual_curve.numel() == int(tr.iterations.max())


@pytest.mark.parametrize("grid", [False, True], ids=["seq", "grid"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_option_forward_backward_and_larger_input(opts, grid):
    run_train_and_big(build(grid=grid, **opts), grid)


@pytest.mark.parametrize("opts", GRID_ONLY, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_grid_only_option(opts):
    run_train_and_big(build(grid=True, **opts), grid=True)


@pytest.mark.parametrize("opts", GRID_ONLY)
def test_grid_only_option_rejects_sequences(opts):
    model = build(grid=False, **opts)
    with pytest.raises(ValueError, match="grid"):
        model(tokens(SEQ))


def test_wrong_input_rank_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"grid \(B, H, W\)"):
        build(grid=True)(tokens(SEQ))


def test_residual_coupling_matches_fprm():
    model = build(n_layers=2)  # S = 4 sublayers per step
    a1, b1, a2, b2 = model.coeffs()
    assert torch.allclose(a1, torch.full_like(a1, 0.75)) and torch.allclose(a2, torch.full_like(a2, 0.25))
    s = 4
    assert torch.allclose(b2, torch.full_like(b2, 1 - 0.25 * 0.75 ** s))
    assert torch.allclose(b1, torch.full_like(b1, (1 - 0.25 * 0.75 ** s) * 0.25 / (1 - 0.75 ** s)))
    learned = {n for n, _ in model.named_parameters()}
    assert {"coeffs.a1_logit", "coeffs.a2_logit"} <= learned
    fixed = build(residual_scale="fixed")
    assert not any("logit" in n for n, _ in fixed.named_parameters())
    assert {"coeffs.a1_logit", "coeffs.a2_logit"} <= {n for n, _ in fixed.named_buffers()}


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_per_map_spectral_norm_of_loop_maps_equals_target(sigma):
    model = build(spectral=sigma, spectral_mode="per_map", recall="internal", n_layers=2)
    linears = model.loop_linears()
    assert len(linears) == 2 * 4 + 4  # qkv, out, up, down per block + one recall proj per sublayer
    for lin in linears:
        measured = torch.linalg.matrix_norm(lin.weight.detach(), 2)
        assert measured.item() == pytest.approx(sigma, rel=1e-3)


def test_log_n_attention_only_changes_larger_inputs():
    # init_std 0.3: attention logits large enough for their scale to matter
    on, off = build(log_n_attention=True, init_std=0.3), build(log_n_attention=False, init_std=0.3)
    on.eval(), off.eval()
    with torch.no_grad():
        assert torch.allclose(on(tokens(SEQ)).logits, off(tokens(SEQ)).logits)
        assert not torch.allclose(on(tokens(BIG_SEQ)).logits, off(tokens(BIG_SEQ)).logits)


def test_recall_none_starts_from_x_and_others_from_zero():
    for recall, from_x in [("none", True), ("standard", False), ("internal", False)]:
        lm = build(recall=recall).loop_map(tokens(SEQ))
        assert torch.equal(lm.z0, lm.x) == from_x
        assert from_x or not lm.z0.any()


def test_internal_recall_keeps_x_out_of_the_residual_stream():
    # With zero sublayer weights, internal recall leaves z untouched (x only feeds sublayer inputs),
    # whereas standard recall moves z towards b2*x.
    for recall, moved in [("internal", False), ("standard", True)]:
        model = build(recall=recall, outer_norm="none", residual_scale="none")
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.out.weight.zero_(), blk.mlp.down.weight.zero_()
        lm = model.loop_map(tokens(SEQ))
        z = torch.randn_like(lm.x)
        assert (not torch.allclose(lm.f(z), z)) == moved


def test_loop_map_from_embedding_matches_loop_map():
    model = build(positions="rope2d", conv="2d", grid=True)
    inp = tokens(GRID)
    lm = model.loop_map(inp)
    lm2 = model.loop_map_from_embedding(lm.x, (4, 4))
    z = torch.randn_like(lm.x)
    assert torch.allclose(lm.f(z), lm2.f(z))
    idx = torch.tensor([2, 0])
    assert torch.allclose(lm.f_subset(z[idx], idx), lm.f(z)[idx], atol=1e-6)
    assert model.readout(z, (4, 4)).shape == (3, 4, 4, 2)


def test_same_seed_same_output():
    outs = []
    for _ in range(2):
        model = build(seed=7, positions="rope1d", conv="1d")
        model.train()
        out = model(tokens(SEQ))
        out.logits.sum().backward()
        outs.append((out.logits.detach(), model.embed.weight.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(build(seed=8)(tokens(SEQ)).logits, build(seed=7)(tokens(SEQ)).logits)


def test_gain_free_rms_norm_matches_torch_in_value_gradient_and_jvp():
    """The loop's RMSNorm (closed-form Jacobian, fpr_core.model.norms) against F.rms_norm: the same
    values, gradients and forward-mode products (torch.func, as the spectral probes use it)."""
    from fpr_core.model.norms import EPS, unit_rms

    x = torch.randn(4, 5, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randn_like(x)
    reference = lambda a: F.rms_norm(a, (16,), eps=EPS)  # noqa: E731
    torch.testing.assert_close(unit_rms(x), reference(x))
    assert torch.autograd.gradcheck(unit_rms, (x,))
    torch.testing.assert_close(torch.autograd.grad(unit_rms(x), x, t)[0], torch.autograd.grad(reference(x), x, t)[0])
    torch.testing.assert_close(torch.func.jvp(unit_rms, (x,), (t,))[1], torch.func.jvp(reference, (x,), (t,))[1])
    half = x.detach().bfloat16().requires_grad_()  # CUDA's bf16 autocast: normed in float32, returned in bf16
    ours, theirs = unit_rms(half), reference(half.detach().float()).bfloat16()
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs)
    (grad,) = torch.autograd.grad(ours, half, t.bfloat16())
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


@pytest.mark.parametrize("opts", [dict(recall="none"), dict(recall="internal"), dict(residual_scale="none")],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_unit_residual_coefficients_take_a_plain_add_with_the_same_result(opts):
    """Where FPRM's coupling does not apply (a1 = b1 = 1) the residual is z + f(h): the same step,
    bit for bit, as the scaled form a1*z + b1*f(h)."""
    model = build(**opts)
    lm = model.loop_map(tokens(SEQ))
    z = torch.randn(lm.x.shape, generator=torch.Generator().manual_seed(3))
    assert not any(block.scaled for block in model.blocks)
    plain = lm.f(z)
    for block in model.blocks:
        block.scaled = True
    assert torch.equal(plain, lm.f(z))
