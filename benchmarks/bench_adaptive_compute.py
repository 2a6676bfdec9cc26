"""Eval time on a mixed-difficulty batch: per-sample halting vs batch-level halting vs an oracle.

Difficulty here is the distance of the initial state from the fixed point, the situation of deep-
supervision segments and warm starts: 3/4 of the batch starts near its fixed point (z* plus 1e-3
relative noise: easy), 1/4 from FPRM's random initial state N(0, 6^2) (hard). The loop is a
slowly-contracting untrained model (fixed residual scale a1 = 0.97, a2 = 0.95, contraction about
a2*a1^2 ~ 0.9 per step), so hard samples need many steps. Modes timed side by side in one run:

- per-sample halting: converged samples leave the active batch (SolverConfig.per_sample=True);
- batch-level halting: every sample runs until the slowest halts (per_sample=False, FPRM);
- oracle: each sample run alone (batch of 1) for exactly the steps it needs.

Goals: per-sample <= 0.6x batch-level, <= 1.2x oracle. Run: python benchmarks/bench_adaptive_compute.py
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from fpr_core.config import GradConfig, ModelConfig, SolverConfig
from fpr_core.model import LoopedModel
from fpr_core.solver import solve
from timing import best_times



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:  # best of 3 on one thread: one run of each, on a loaded 2-core machine, gave ratios off by 15x
        args.batch, args.tokens, args.repeats = 8, 16, 3
        torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4, n_classes=2, dim=args.dim, heads=4, residual_scale="fixed",
                      a1_init=0.97, a2_init=0.95)
    solver = SolverConfig(tol=1e-4, eval_cap=400, detect_cycles=False)
    model = LoopedModel(cfg, solver, GradConfig(), grid=False, train_tokens=args.tokens).eval()
    inputs = torch.randint(0, 4, (args.batch, args.tokens))
    with torch.no_grad():
        lm = model.loop_map(inputs)
        z_star, _ = solve(lm.f_subset, lm.z0, solver, 400, train=False)
        n_easy = args.batch * 3 // 4
        z0 = 6.0 * torch.randn_like(z_star)
        z0[:n_easy] = z_star[:n_easy] * (1 + 1e-3 * torch.randn_like(z_star[:n_easy]))
        per_cfg, batch_cfg = solver, dataclasses.replace(solver, per_sample=False)
        _, trace = solve(lm.f_subset, z0, per_cfg, 400, train=False)
        needed = trace.iterations.tolist()

        def per_sample():
            solve(lm.f_subset, z0, per_cfg, 400, train=False)

        def batch_level():
            solve(lm.f_subset, z0, batch_cfg, 400, train=False)

        singles = [model.loop_map(inputs[b:b + 1]) for b in range(args.batch)]

        def oracle():
            for b, one in enumerate(singles):
                z = z0[b:b + 1]
                for _ in range(needed[b]):
                    z = one.f(z)

        t_ps, t_bl, t_or = best_times([per_sample, batch_level, oracle], args.repeats)
    print(f"batch {args.batch} x {args.tokens} tokens, dim {args.dim}, threads {torch.get_num_threads()}")
    print(f"iterations needed: easy median {sorted(needed[:n_easy])[n_easy // 2]}, "
          f"hard median {sorted(needed[n_easy:])[(args.batch - n_easy) // 2]}, max {max(needed)}, "
          f"converged {trace.converged.float().mean().item():.2f}")
    print(f"per-sample halting  {t_ps * 1e3:8.1f} ms")
    print(f"batch-level halting {t_bl * 1e3:8.1f} ms")
    print(f"oracle (alone)      {t_or * 1e3:8.1f} ms")
    print(f"ratio per-sample / batch-level = {t_ps / t_bl:.2f}  (goal <= 0.6)")
    print(f"ratio per-sample / oracle      = {t_ps / t_or:.2f}  (goal <= 1.2)")


if __name__ == "__main__":
    main()
