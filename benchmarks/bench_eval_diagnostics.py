"""Cost of the stability diagnostics relative to the evaluation they ride on.

For prefix sums at the training size and at a 4x longer OOD size, one untrained default model
evaluates the same split twice, side by side: diagnostics off, then on (probes on ``diag_n``
instances). The printed ratio is (eval with diagnostics) / (eval without); it says how much the
three stability axes add to every eval split of every trial.

    .venv/bin/python benchmarks/bench_eval_diagnostics.py           # n_eval 256, diag_n 32
    .venv/bin/python benchmarks/bench_eval_diagnostics.py --smoke   # tiny, seconds
"""
from __future__ import annotations

import argparse

import torch

from fpr_core.config import EvalConfig, GradConfig, ModelConfig, SolverConfig
from fpr_core.evaluate import evaluate_split, scaled_eval_cap
from fpr_core.model import LoopedModel
from fpr_core.tasks import get_task
from timing import best_time



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args()
    n_eval, diag_n, train_size, repeats = (16, 4, 8, 1) if args.smoke else (256, 32, 32, 2)
    task = get_task("prefix_sums")
    solver = SolverConfig(eval_cap=32)
    torch.manual_seed(0)
    model = LoopedModel(ModelConfig(conv="1d"), solver, GradConfig(), grid=False, train_tokens=train_size)
    device = torch.device("cpu")
    print(f"torch threads {torch.get_num_threads()}, n_eval {n_eval}, diag_n {diag_n}, "
          f"power_iters 20, model dim {model.model_cfg.dim}")
    print(f"{'size':>6} {'cap':>5} {'eval s':>8} {'eval+diag s':>12} {'ratio':>6}")
    for size in (train_size, 4 * train_size):
        data = task.generate(n_eval, size, seed=1)
        cap = scaled_eval_cap(solver, size, train_size)
        off, on = (EvalConfig(n_eval=n_eval, diagnostics=flag, diag_n=diag_n) for flag in (False, True))
        t_off = best_time(lambda: evaluate_split(model, task, data, cap=cap, cfg=off, device=device), repeats)
        t_on = best_time(lambda: evaluate_split(model, task, data, cap=cap, cfg=on, device=device), repeats)
        print(f"{size:>6} {cap:>5} {t_off:>8.2f} {t_on:>12.2f} {t_on / t_off:>6.2f}")


if __name__ == "__main__":
    main()
