"""Token mixers (model.mixer) and causal mixing (model.causal): what each lets a token see."""
import pytest
import torch

from fpr_core.config import ConfigError, ModelConfig, SolverConfig
from test_model import build, tokens

EXACT_CAP = SolverConfig(tol=1e-30, train_cap=4, eval_cap=4, patience=100, detect_cycles=False)
"""Every sample runs exactly the cap: halting is a per-sample decision over all tokens, so a
causality check must not let a later token change how many steps an earlier one gets."""

MIXERS = ["attention", "local_attention", "conv"]


def changed_after(inputs: torch.Tensor, t: int) -> torch.Tensor:
    """The same tokens up to raster position t, different ones after it."""
    flat = inputs.flatten(1).clone()
    flat[:, t + 1:] = (flat[:, t + 1:] + 1).remainder(3)
    return flat.view_as(inputs)


@pytest.mark.parametrize("grid", [False, True], ids=["seq", "grid"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_causal_output_at_t_ignores_inputs_after_t(mixer, grid):
    shape, t = ((2, 4, 5), 8) if grid else ((2, 12), 5)
    conv = "2d" if grid else "1d"
    opts = dict(mixer=mixer, conv=conv, conv_kernel=4, mixer_window=3, recall="internal", init_std=0.3)
    inputs = tokens(shape)
    other = changed_after(inputs, t)
    for causal in (True, False):
        model = build(grid=grid, solver=EXACT_CAP, causal=causal, **opts).eval()
        with torch.no_grad():
            a = model(inputs).logits.flatten(1, -2)
            b = model(other).logits.flatten(1, -2)
        assert torch.allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6) == causal, causal
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:], atol=1e-6)


def footprint(mixer: str, grid: bool, window: int, causal: bool = False) -> torch.Tensor:
    """Which tokens one loop step changes when the state of one token changes (bool, token shape)."""
    shape = (1, 7, 7) if grid else (1, 15)
    model = build(grid=grid, mixer=mixer, mixer_window=window, causal=causal, init_std=0.3)
    lm = model.loop_map(tokens(shape))
    z = torch.randn_like(lm.x)
    centre = lm.x.shape[1] // 2
    moved = z.clone()
    moved[:, centre] += 1.0
    with torch.no_grad():
        diff = (lm.f(moved) - lm.f(z)).abs().amax(-1)[0] > 1e-7
    return diff.view(shape[1:])


@pytest.mark.parametrize("mixer", ["local_attention", "conv"])
def test_local_mixers_reach_exactly_their_window(mixer):
    grid_fp = footprint(mixer, grid=True, window=3)
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[2:5, 2:5] = True
    assert torch.equal(grid_fp, expected)
    seq_fp = footprint(mixer, grid=False, window=5)
    expected = torch.zeros(15, dtype=torch.bool)
    expected[5:10] = True
    assert torch.equal(seq_fp, expected)
    causal_fp = footprint(mixer, grid=False, window=3, causal=True)
    expected = torch.zeros(15, dtype=torch.bool)
    expected[7:10] = True  # a token's change reaches itself and the k-1 tokens after it
    assert torch.equal(causal_fp, expected)


def test_global_attention_reaches_every_token():
    assert footprint("attention", grid=True, window=3).all()


@pytest.mark.parametrize("grid,causal", [(False, False), (True, False), (False, True)])
def test_local_attention_with_a_covering_window_is_global_attention(grid, causal):
    shape = (2, 4, 5) if grid else (2, 9)
    window = 9 if grid else (9 if causal else 17)
    glob = build(grid=grid, causal=causal, log_n_attention=False, init_std=0.3, positions="rope1d")
    local = build(grid=grid, causal=causal, log_n_attention=False, init_std=0.3, positions="rope1d",
                  mixer="local_attention", mixer_window=window)
    local.load_state_dict(glob.state_dict())
    lm_g, lm_l = glob.loop_map(tokens(shape)), local.loop_map(tokens(shape))
    z = torch.randn_like(lm_g.x)
    assert torch.allclose(lm_g.f(z), lm_l.f(z), atol=1e-5)


def test_local_attention_runs_forward_and_backward_on_a_59x59_grid():
    model = build(grid=True, mixer="local_attention", conv="2d").train()
    out = model(tokens((1, 59, 59)), cap=2)
    out.logits.sum().backward()
    assert out.logits.shape == (1, 59, 59, 2)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("field,value", [("mixer", "mlp"), ("mixer_window", 4), ("mixer_window", 0),
                                         ("causal", "yes")])
def test_bad_mixer_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelConfig.from_dict({field: value})


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_explicit_small_attention_matches_the_fused_kernel(causal):
    """Short sequences on CPU take softmax(q k^T) v written out (faster there); it is the same
    attention as PyTorch's fused kernel up to float rounding, forward and backward."""
    import torch.nn.functional as F

    from fpr_core.model.mixers import SMALL_ATTENTION_TOKENS, attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, 8, generator=g, requires_grad=True) for _ in range(3))
    assert q.shape[-2] <= SMALL_ATTENTION_TOKENS
    ours = attend(q, k, v, 0.3, causal)
    fused = F.scaled_dot_product_attention(q, k, v, scale=0.3, is_causal=causal)
    torch.testing.assert_close(ours, fused, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    fused_grads = torch.autograd.grad(fused.square().sum(), (q, k, v))
    for a, b in zip(grads, fused_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("kernel", [3, 4])
@pytest.mark.parametrize("causal", [False, True], ids=["centred", "causal"])
def test_token_conv_is_the_padded_depthwise_conv_of_its_definition(kind, kernel, causal):
    """The channels-last fast path computes the textbook form: zero-pad (k-1 before the token when
    causal, else centred with the extra one after), then the depthwise conv1d/conv2d, no padding."""
    import torch.nn.functional as F
    from fpr_core.model.positions import DepthwiseTokenConv

    torch.manual_seed(0)
    b, d, shape = 3, 8, ((5, 7) if kind == "2d" else (11,))
    conv = DepthwiseTokenConv(kind, d, kernel, causal, init_std=0.5)
    z = torch.randn(b, int(torch.tensor(shape).prod()), d, requires_grad=True)
    before = kernel - 1 if causal else (kernel - 1) // 2
    after = kernel - 1 - before
    pads = (before, after) * len(shape) if kind == "1d" else (before, after, before, after)
    image = z.transpose(1, 2).reshape(b, d, *shape)
    textbook = F.conv2d if kind == "2d" else F.conv1d
    weight = conv.conv.weight.reshape(d, 1, *([kernel] * len(shape)))
    expected = textbook(F.pad(image, pads), weight, groups=d).reshape(b, d, -1).transpose(1, 2)
    got = conv(z, shape)
    assert torch.allclose(got, expected, atol=1e-6)
    (g_got,) = torch.autograd.grad(got.square().sum(), z)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), z)
    assert torch.allclose(g_got, g_expected, atol=1e-5)


def test_a_sequence_conv_saved_in_the_conv1d_form_loads_and_computes_the_same():
    from fpr_core.model.positions import DepthwiseTokenConv

    torch.manual_seed(0)
    saved = DepthwiseTokenConv("1d", 8, 4, True, init_std=0.5)
    old_form = {"conv.weight": saved.conv.weight.detach().reshape(8, 1, 4).clone()}  # nn.Conv1d's shape
    loaded = DepthwiseTokenConv("1d", 8, 4, True, init_std=0.5)
    loaded.load_state_dict(old_form)
    z = torch.randn(2, 9, 8)
    assert torch.equal(loaded(z, (9,)), saved(z, (9,)))
