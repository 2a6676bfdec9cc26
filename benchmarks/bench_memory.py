"""Peak training memory vs loop steps: truncated / phantom stay flat, BPTT grows.

Two honest CPU measures, each training step (forward + backward of one batch) in a fresh child
process so allocations of one configuration never hide in another's high-water mark:

- peak RSS delta: the kernel's resident-set high-water mark (VmHWM, reset through
  /proc/self/clear_refs just before the step) minus the RSS before the step. It includes
  allocator slack and is what the machine actually has to provide.
- saved-for-backward: bytes of distinct tensor storages autograd keeps for backward, counted with
  torch.autograd.graph.saved_tensors_hooks (the activation memory that grows with BPTT).
On CUDA the child reports torch.cuda.max_memory_allocated instead of RSS.

The loop is an expansive untrained model and the solver tolerance is unreachably low, so every
configuration runs exactly `steps` loop steps (asserted) (truncated/phantom: steps - k without grad, then k = 4 with grad).
Goal: truncated/phantom at 256 steps <= 1.1x their memory at 16 steps.
Run: python benchmarks/bench_memory.py   (add --smoke for a seconds-long check)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def child(mode: str, steps: int, dim: int, tokens: int, batch: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fpr_core.config import GradConfig, ModelConfig, SolverConfig
    from fpr_core.train import training_loss
    from fpr_core.model import LoopedModel

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # An expansive untrained loop (plain residuals, large weights) never settles, so with an
    # unreachable tolerance every configuration really runs `steps` loop steps.
    cfg = ModelConfig(vocab_size=4, n_classes=2, dim=dim, heads=4, residual_scale="none", init_std=1.0)
    model = LoopedModel(cfg, SolverConfig(tol=1e-30, train_cap=steps, detect_cycles=False),
                        GradConfig(mode=mode, k=4), grid=False, train_tokens=tokens).to(device).train()
    inputs = torch.randint(0, 4, (batch, tokens), device=device)
    targets, mask = inputs.remainder(2), torch.ones_like(inputs, dtype=torch.bool)

    def loss_fn(logits, t, m):
        return F.cross_entropy(logits[m], t[m])

    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the VmHWM high-water mark
        base = _rss_kb("VmRSS") * 1024
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, out = training_loss(model, inputs, targets, mask, loss_fn)
    loss.backward()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kb("VmHWM") * 1024
    assert int(out.trace.iterations.max()) == steps
    return {"peak_delta_mb": (peak - base) / 2**20, "saved_mb": sum(saved.values()) / 2**20,
            "device": device}


def run(mode: str, steps: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(steps), "--dim", str(args.dim),
           "--tokens", str(args.tokens), "--batch", str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.dim, args.tokens, args.batch)))
        return
    long_steps, bptt_steps = (256, (16, 32, 64)) if not args.smoke else (32, (8, 16))
    if args.smoke:
        args.dim, args.tokens, args.batch = 32, 16, 4
    print(f"batch {args.batch} x {args.tokens} tokens, dim {args.dim}; one training step per child process")
    print(f"{'mode':10s} {'steps':>5s} {'peak delta MB':>14s} {'saved MB':>9s}")
    results = {}
    for mode, steps in ([("truncated", 16), ("truncated", long_steps), ("phantom", 16),
                         ("phantom", long_steps)] + [("bptt", s) for s in bptt_steps]):
        r = results[mode, steps] = run(mode, steps, args)
        print(f"{mode:10s} {steps:5d} {r['peak_delta_mb']:14.1f} {r['saved_mb']:9.1f}  ({r['device']})")
    for mode in ("truncated", "phantom"):
        a, b = results[mode, 16], results[mode, long_steps]
        print(f"{mode}: {long_steps} vs 16 steps: peak delta ratio {b['peak_delta_mb'] / a['peak_delta_mb']:.2f}, "
              f"saved ratio {b['saved_mb'] / a['saved_mb']:.2f}  (goal <= 1.1)")
    first, last = results["bptt", bptt_steps[0]], results["bptt", bptt_steps[-1]]
    print(f"bptt: {bptt_steps[-1]} vs {bptt_steps[0]} steps: peak delta ratio "
          f"{last['peak_delta_mb'] / first['peak_delta_mb']:.2f}, saved ratio {last['saved_mb'] / first['saved_mb']:.2f}")


if __name__ == "__main__":
    main()
