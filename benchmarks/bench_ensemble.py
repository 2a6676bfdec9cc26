"""Seeds per hour when K seeds of one configuration train as one member-batched model (fpr_core.ensemble).

For K in --members, trains K seeds for --steps optimizer steps: K = 1 is today's lone trainer
(fpr_core.train.train), K > 1 one member-batched model (fpr_core.ensemble.train_members). Two
profiles, measured side by side in one process, every K of a profile interleaved per repeat so a
change in machine load hits each alike:

- quickstart: sweeps/quickstart.yaml, prefix sums at 16 bits, the standard-recall + rms cell (dim 32);
- maze: sweeps/cpu_profiles.yaml's mazes profile (9x9, conv mixer, dim 32, truncated:8, EMA; its
  keep-best selection off, see PROFILES).

Each trial runs on one thread (torch.set_num_threads(1)), as a `resources: {cpu: 1}` trial does, and
time is the process CPU time (robust on a shared machine; wall time is printed beside it). What is
timed is training only, from initialisation (the loop's iteration count grows as a model learns, so
these are early-training steps): the fixed costs a sweep pays per trial (a worker, torch import,
data, evaluation) are not in it; `fpr-sweep run` wall times of whole sweeps are in docs/speed.md.

Memory per member: bytes autograd saves for the backward of one training step plus parameters,
gradients and AdamW's two moments, divided by K.

Also times one loop step F (forward + backward) of the quickstart model at K = 4 both ways the
issue names: torch.func (stack_module_state + functional_call + vmap) against the member-batched
modules (batched matmuls over the member axis).

    python benchmarks/bench_ensemble.py                 # both profiles, K = 1 2 4 8
    python benchmarks/bench_ensemble.py --smoke         # a tiny budget (the test suite runs this)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpr_core.config import ExperimentConfig  # noqa: E402
from fpr_core.ensemble import stack_models, train_members  # noqa: E402
from fpr_core.experiment import task_of, training_seed  # noqa: E402
from fpr_core.losses import get_loss  # noqa: E402
from fpr_core.members import build_member_model  # noqa: E402
from fpr_core.tasks import make_splits  # noqa: E402
from fpr_core.train import train, training_loss  # noqa: E402
from orchestrator.sweep.expand import expand, resolve  # noqa: E402
from orchestrator.sweep.spec import load_spec  # noqa: E402

PROFILES = {
    "quickstart": (ROOT / "sweeps" / "quickstart.yaml", "prefix_sums",
                   {"model.recall": "standard", "model.outer_norm": "rms"}, {}),
    "maze": (ROOT / "sweeps" / "cpu_profiles.yaml", "mazes", {}, {"train.select_every": 0}),
}
"""name -> (spec, task entry, the grid cell's values, overrides). The maze profile keeps its best
weights by held-out scoring (train.select_every), which members do not stack (they run one seed
per trial); it is turned off here, where only training steps are timed."""
SMOKE = {"train.n_train": 64, "eval.n_eval": 8, "solver.train_cap": 4}


def profile_config(name: str, sets: dict) -> ExperimentConfig:
    """The profile's trial config exactly as the orchestrator expands it, with ``sets`` applied."""
    spec_path, task, cell_values, overrides = PROFILES[name]
    sets = {**overrides, **sets}
    spec = load_spec(spec_path)
    for cell in expand(spec, path=spec_path):
        sections = cell.sections
        if cell.task == task and all(_dotted(sections, k) == v for k, v in cell_values.items()):
            return ExperimentConfig.from_dict(resolve(cell, sets).experiment_config())
    raise SystemExit(f"{spec_path}: no {task} cell with {cell_values}")


def _dotted(sections: dict, key: str):
    section, _, field = key.partition(".")
    value = sections.get(section, {})
    return value.get(field) if isinstance(value, dict) else None


class Profile:
    """Per seed: its training data and a factory of its freshly initialised lone model."""

    def __init__(self, cfg: ExperimentConfig, seeds: int) -> None:
        self.cfgs = [dataclasses.replace(cfg, seed=s) for s in range(seeds)]
        self.task, size = task_of(cfg)
        self.splits = [make_splits(self.task, train_size=size, ood_sizes=(), n_train=c.train.n_train,
                                   n_eval=c.eval.n_eval, seed=c.seed) for c in self.cfgs]

    def train_cfg(self, k: int, steps: int):
        c = self.cfgs[k]
        return dataclasses.replace(c.train, seed=training_seed(c), steps=steps)

    def model(self, k: int):
        return build_member_model(self.cfgs[k], self.task, self.splits[k], "cpu")[0]

    def run(self, members: int, steps: int) -> None:
        """Train seeds 0..members-1 for ``steps`` steps: lone for one member, stacked otherwise."""
        if members == 1:
            train(self.model(0), self.task, self.splits[0]["train"], self.train_cfg(0, steps))
            return
        ens = stack_models([self.model(k) for k in range(members)])
        train_members(ens, self.task, [self.splits[k]["train"] for k in range(members)],
                      [self.train_cfg(k, steps) for k in range(members)])


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn()."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def step_memory(profile: Profile, members: int) -> float:
    """Bytes per member of one training step: tensors autograd saves + parameters, grads, AdamW moments."""
    model = profile.model(0) if members == 1 else stack_models([profile.model(k) for k in range(members)])
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = profile.train_cfg(0, 1)
    gen = torch.Generator().manual_seed(0)
    batch = [profile.splits[k]["train"] for k in range(members)]
    idx = [torch.randint(len(b), (cfg.batch_size,), generator=gen) for b in batch]
    inputs, targets, mask = (torch.cat([torch.as_tensor(getattr(b, a))[i] for b, i in zip(batch, idx)])
                             for a in ("inputs", "targets", "mask"))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t
    model.train()
    loss_fn = get_loss(cfg.loss)
    rows = cfg.batch_size

    def summed(logits, tgt, msk):
        return sum(loss_fn(logits[k * rows:(k + 1) * rows], tgt[k * rows:(k + 1) * rows],
                           msk[k * rows:(k + 1) * rows]) for k in range(members))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = training_loss(model, inputs, targets, mask, summed)
    saved = sum(seen.values())
    return (saved + 4 * param_bytes) / members  # params, grads, exp_avg, exp_avg_sq


def vmap_against_bmm(profile: Profile, members: int, repeats: int) -> tuple[float, float]:
    """CPU seconds of one loop step F forward + backward on K x (B, T, d): torch.func vmap over
    stacked lone models, and the member-batched model."""
    from torch.func import functional_call, stack_module_state, vmap

    from fpr_core.model.norms import _UnitRMS

    models = [profile.model(k) for k in range(members)]
    cfg = profile.train_cfg(0, 1)
    tokens = torch.cat([torch.as_tensor(profile.splits[k]["train"].inputs[:cfg.batch_size]) for k in range(members)])
    shape = tuple(tokens.shape[1:])
    with torch.no_grad():
        x = torch.cat([m.embed_inputs(tokens[k * cfg.batch_size:(k + 1) * cfg.batch_size])
                       for k, m in enumerate(models)])  # (K*B, T, d)
    z = torch.randn_like(x)
    params, buffers = stack_module_state(models)
    step = _Step(models[0], shape)
    weights = {f"model.{n}": t for n, t in {**params, **buffers}.items()}

    def run_vmap():
        out = vmap(lambda w, z_k, x_k: functional_call(step, w, (z_k, x_k)))(
            weights, z.view(members, -1, *z.shape[1:]), x.view(members, -1, *x.shape[1:]))
        out.square().sum().backward()

    ens = stack_models(models)

    def run_members():
        ens.loop_map_from_embedding(x, shape).f(z).square().sum().backward()

    # torch.func needs a vmap rule for the norm's hand-written autograd.Function; derived here for
    # this measurement only (fpr_core does not vmap)
    before = getattr(_UnitRMS, "generate_vmap_rule", False)
    _UnitRMS.generate_vmap_rule = True
    try:
        run_vmap(), run_members()
        best = [float("inf"), float("inf")]
        for _ in range(repeats):
            for i, fn in enumerate((run_vmap, run_members)):
                best[i] = min(best[i], timed(fn)[0])
    finally:
        _UnitRMS.generate_vmap_rule = before
    return best[0], best[1]


class _Step(torch.nn.Module):
    """F(z; x) of a lone model as a module's forward (what torch.func.functional_call calls)."""

    def __init__(self, model, shape) -> None:
        super().__init__()
        self.model, self.shape = model, shape

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.loop_map_from_embedding(x, self.shape).f(z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 10],
                        help="training steps timed per profile (in --profiles order)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = dict(SMOKE) if args.smoke else {}
    steps = [2] * len(args.profiles) if args.smoke else args.steps
    repeats = 1 if args.smoke else args.repeats
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"(2 cores); one thread per trial; process CPU time, wall beside it", flush=True)
    for name, n_steps in zip(args.profiles, steps):
        cfg = profile_config(name, sets)
        profile = Profile(cfg, max(args.members))
        for k in args.members:  # warm up allocator and kernels once per K
            profile.run(k, 1)
        best = {k: (float("inf"), float("inf")) for k in args.members}
        for _ in range(repeats):
            for k in args.members:
                cpu, wall = timed(lambda: profile.run(k, n_steps))
                best[k] = min(best[k], (cpu, wall))
        one_cpu, one_wall = best[args.members[0]]
        one_mem = step_memory(profile, args.members[0])
        print(f"\n{name}: {cfg.task.name} {cfg.task.train_size}, dim {cfg.model.dim}, batch {cfg.train.batch_size}, "
              f"grad {cfg.grad.mode}, {n_steps} steps from init, best of {repeats}", flush=True)
        print(f"{'K':>3} {'seeds/h (cpu)':>14} {'x K=1':>6} {'seeds/h (wall)':>15} {'x K=1':>6} "
              f"{'MiB/member':>11} {'x K=1':>6}")
        for k in args.members:
            cpu, wall = best[k]
            mem = step_memory(profile, k)
            rate_cpu, rate_wall = 3600 * k / (cpu / n_steps * cfg.train.steps), 3600 * k / (wall / n_steps * cfg.train.steps)
            print(f"{k:>3} {rate_cpu:>14.1f} {k * one_cpu / cpu:>6.2f} {rate_wall:>15.1f} {k * one_wall / wall:>6.2f} "
                  f"{mem / 2**20:>11.2f} {mem / one_mem:>6.2f}", flush=True)
    if "quickstart" in args.profiles and 4 in args.members and not args.smoke:
        profile = Profile(profile_config("quickstart", {}), 4)
        t_vmap, t_bmm = vmap_against_bmm(profile, 4, 5)
        print(f"\none loop step F, forward + backward, quickstart K=4: torch.func vmap {t_vmap * 1e3:.2f} ms, "
              f"member-batched modules {t_bmm * 1e3:.2f} ms (CPU)", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
