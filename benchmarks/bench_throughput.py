"""One training step of LoopedModel vs a plain loop of torch.nn.TransformerEncoderLayer.

Both: embedding, `steps` loop steps with gradient through all of them (our grad mode bptt with an
unreachable tolerance, so no early halting; the baseline re-injects x with z <- layer(z + x)),
a per-token linear head, cross-entropy, backward and an AdamW step. Same width, heads, MLP width
(GELU, 4x) and pre-norm. Timed side by side in interleaved rounds, best of at least `--repeats`
rounds and of as many as fit in `--seconds` per side.

With ``--compile`` (the default) a third side runs our step with ``train.compile`` (torch.compile
of the loop step, ``LoopedModel.compile_training_steps``); its compile time is printed apart and
not counted in the step time, as a long trial amortises it.

Also prints the achieved FLOP/s of our step (analytic count: per loop step and token,
2*(4d^2 + 2*d*4d) for the linear maps plus 4*T*d for attention scores and values; training = 3x the
forward) as a fraction of this machine's measured float32 matmul peak (a 1024^3 torch.mm).
Goal: ours / baseline throughput >= 1.0. Run: python benchmarks/bench_throughput.py [--smoke]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from fpr_core.config import ConfigError, GradConfig, ModelConfig, SolverConfig
from fpr_core.model import LoopedModel


class PlainLoop(nn.Module):
    """Baseline: embedding -> steps x TransformerEncoderLayer (z <- layer(z + x)) -> head."""

    def __init__(self, vocab: int, classes: int, dim: int, heads: int, steps: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True, bias=False)
        self.head = nn.Linear(dim, classes)
        self.steps = steps

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.embed(inputs)
        z = torch.zeros_like(x)
        for _ in range(self.steps):
            z = self.layer(z + x)
        return self.head(z)


def matmul_peak(device: str, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def train_flops(batch: int, tokens: int, dim: int, steps: int) -> float:
    per_token = 2 * (4 * dim * dim + 2 * dim * 4 * dim) + 4 * tokens * dim
    return 3.0 * batch * tokens * steps * per_token


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="at least this many timed rounds")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="and more rounds until each side has run this long: a small step's best of 5 "
                             "moved by 15%% between runs on a 2-core machine")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time our step under torch.compile (train.compile); compile time printed apart")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.tokens, args.dim, args.steps, args.repeats, args.seconds = 2, 16, 32, 2, 1, 0.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4, n_classes=2, dim=args.dim, heads=args.heads, mlp="gelu", mlp_ratio=4.0)

    def looped() -> LoopedModel:
        torch.manual_seed(0)
        return LoopedModel(cfg, SolverConfig(tol=1e-30, train_cap=args.steps, detect_cycles=False),
                           GradConfig(mode="bptt"), grid=False, train_tokens=args.tokens).to(device).train()
    ours = looped()
    base = PlainLoop(4, 2, args.dim, args.heads, args.steps).to(device).train()
    models = {"ours": ours, "baseline": base}
    if args.compile and args.smoke:  # compiling costs ~10 s; tests/test_compile.py covers train.compile
        print("compiled side left out in --smoke")
    elif args.compile:
        try:
            models["compiled"] = looped()
            models["compiled"].compile_training_steps()
        except ConfigError as e:  # no C++ compiler for Inductor's CPU kernels
            print(f"compiled side left out: {e}")
            del models["compiled"]
    inputs = torch.randint(0, 4, (args.batch, args.tokens), device=device)
    targets = inputs.remainder(2)
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models.values()}

    def step(model, logits_of):
        opt = opts[id(model)]
        opt.zero_grad(set_to_none=True)
        logits = logits_of(inputs)
        F.cross_entropy(logits.reshape(-1, 2), targets.reshape(-1)).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    runs = {name: (lambda m=m: step(m, (lambda i: m(i).logits) if isinstance(m, LoopedModel) else m))
            for name, m in models.items()}
    warmup = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        fn()  # warm-up (the compiled side compiles here)
        warmup[name] = time.perf_counter() - t0
    best = {name: float("inf") for name in runs}
    spent = {name: 0.0 for name in runs}
    rounds = 0
    while rounds < args.repeats or min(spent.values()) < args.seconds:
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            took = time.perf_counter() - t0
            best[name], spent[name] = min(best[name], took), spent[name] + took
        rounds += 1
    with torch.no_grad():
        iters = int(ours(inputs).trace.iterations.max())
    assert iters == args.steps, f"ours halted after {iters} of {args.steps} steps"
    peak = matmul_peak(device)
    flops = train_flops(args.batch, args.tokens, args.dim, args.steps)
    print(f"{device}, threads {torch.get_num_threads()}: batch {args.batch} x {args.tokens} tokens, "
          f"dim {args.dim}, heads {args.heads}, {args.steps} loop steps with grad; best of {rounds} rounds")
    print(f"ours      {best['ours'] * 1e3:8.1f} ms / training step")
    print(f"baseline  {best['baseline'] * 1e3:8.1f} ms / training step (nn.TransformerEncoderLayer loop)")
    print(f"throughput ours / baseline = {best['baseline'] / best['ours']:.2f}  (goal >= 1.0)")
    if "compiled" in best:
        print(f"compiled  {best['compiled'] * 1e3:8.1f} ms / training step (train.compile; first step with "
              f"compiling {warmup['compiled']:.1f} s)")
        print(f"throughput compiled / baseline = {best['baseline'] / best['compiled']:.2f}")
    for name in [n for n in ("ours", "compiled") if n in best]:
        print(f"{name}: achieved {flops / best[name] / 1e9:.1f} GFLOP/s of measured matmul peak "
              f"{peak / 1e9:.1f} GFLOP/s = {flops / best[name] / peak:.2f} of peak")


if __name__ == "__main__":
    main()
