"""`fpr-sweep`: run, validate, inspect and report benchmark sweeps of looped transformers.

Exit codes: 0 ok, 1 some trials failed (or the run was interrupted), 2 bad input (spec, options,
resources, unreachable tracking server). User mistakes print one clear message, never a traceback.
"""
from __future__ import annotations

import contextlib
import csv
import ipaddress
import itertools
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.sweep.layout import DEFAULT_RESULTS_DIR, SweepDir
from orchestrator.sweep.plan import SweepPlan, plan_sweep, reused_tuning_seeds
from orchestrator.sweep.spec import SpecError, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="Benchmark sweeps of looped transformers that halt at a fixed point: "
                       "expand a YAML spec into trials, run them on Ray Tune, log to MLflow, "
                       "write Parquet tables under results/.")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_BAD_INPUT = 0, 1, 2
LOOPBACK = "127.0.0.1"
"""The MLflow UI binds here unless told otherwise (with a warning); a local Ray runs no dashboard."""


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _load(spec_path: Path, smoke: bool = False) -> SweepPlan:
    """The validated plan (exit 2 on a bad spec); warns when a study reuses its recipes' tuning seeds."""
    try:
        plan = plan_sweep(spec_path, smoke)
        reused = reused_tuning_seeds(plan)
    except SpecError as e:
        _fail(str(e))
        raise  # unreachable: _fail exits
    if reused:
        err_console.print(f"[yellow]warning:[/] {escape(reused)}", highlight=False, soft_wrap=True)
    return plan


SPEC_ARG = typer.Argument(..., help="Sweep spec (YAML); see `fpr-sweep schema` and the README.",
                          show_default=False)
SWEEP_ARG = typer.Argument(..., help="Sweep name (looked up under --results-dir) or a sweep directory.",
                           show_default=False)
RESULTS_OPT = typer.Option(None, "--results-dir", help="Results root (default: the spec's results_dir, "
                                                       "which defaults to results/).")


@app.command()
def run(spec_path: Path = SPEC_ARG,
        address: Optional[str] = typer.Option(
            None, "--address", help="Ray cluster to run on (e.g. 'auto' or 'ray://head:10001'); "
                                    "default: $RAY_ADDRESS, else a local Ray using every core."),
        max_concurrent: Optional[int] = typer.Option(
            None, "--max-concurrent", min=1, help="Max trials running at once (default: the spec's, else "
                                                 "as many as resources allow)."),
        tracking_uri: Optional[str] = typer.Option(
            None, "--tracking-uri", help="MLflow tracking URI, e.g. http://host:5000 (default: the spec's, "
                                         "else sqlite:///<results>/<sweep>/mlflow.db)."),
        results_dir: Optional[str] = RESULTS_OPT,
        storage: Optional[str] = typer.Option(
            None, "--storage-path", "--storage",
            help="Tune storage for checkpoints and experiment state (default: <results>/<sweep>/tune); on a "
                 "multi-node cluster use shared storage (s3://bucket/prefix, gs://..., or an NFS path); "
                 "each sweep gets its own folder under it. results.parquet is still written under --results-dir."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the trial counts per task and the first "
                                                              "trials; run nothing."),
        all_path: Optional[Path] = typer.Option(None, "--all", help="With --dry-run: write every trial to this "
                                                                    "CSV file.", show_default=False),
        smoke: bool = typer.Option(False, "--smoke", help="Tiny budget (few steps, small eval sets, first seed, "
                                                          "two OOD sizes), written to <sweep>-smoke/."),
        system_metrics: bool = typer.Option(False, "--system-metrics", help="Log the driver host's CPU, memory, "
                                            "disk and network use to the sweep's MLflow run (also a spec option)."),
        force: bool = typer.Option(False, "--force", help="Take over the sweep's lock when its holder is gone "
                                                          "(a driver killed without cleaning up)."),
        extend: bool = typer.Option(False, "--extend", help="Run a changed spec in the same sweep folder on "
                                                            "purpose, adding its trials (recorded in sweep.json)."),
        yes: bool = typer.Option(False, "--yes", help="Run a sweep above the 10,000-trial guard without a "
                                                      "max_trials in the spec."),
        node_timeout: float = typer.Option(
            30, "--node-timeout", min=0, help="Minutes to wait for the cluster's autoscaler to add the GPU nodes "
                                              "trials ask for (a cluster that cannot add them fails at once)."),
        require_clean: bool = typer.Option(
            False, "--require-clean", help="Refuse to start unless the code is a clean git commit (the spec's "
                                           "require_clean: true does the same); without it a dirty tree only warns."),
        ) -> None:
    """Run a sweep (or resume it: the same command continues an interrupted sweep)."""
    plan = _load(spec_path, smoke)
    spec = plan.spec
    results_dir = os.path.expanduser(results_dir) if results_dir else None  # '~/results' through `ray job submit`
    if dry_run:
        _print_plan(plan, results_dir, all_path)
        raise typer.Exit(EXIT_OK)
    _check_clean_tree(require_clean or spec.require_clean)
    _check_address(address or os.environ.get("RAY_ADDRESS"))  # before the slow imports: seconds, not minutes
    _local_ray_on_loopback(address)
    from orchestrator.store import store_address
    from orchestrator.run.driver import (GpuUnavailable, RunOptions, SweepError, check_size, exit_fenced, run_sweep,
                                         sweep_dir_for)

    opts = RunOptions(address, max_concurrent, tracking_uri, results_dir, storage, yes, node_timeout * 60)
    try:
        check_size(plan, yes)  # before anything is written or started
        sweep_dir = sweep_dir_for(plan, opts)
    except SweepError as e:
        _fail(str(e))
    uri = tracking_uri or spec.tracking_uri or store_address.default_tracking_uri(sweep_dir)
    try:
        store_address.check_reachable(uri)
    except store_address.TrackingError as e:
        _fail(str(e))
    from orchestrator.run import record
    from orchestrator.run.lock import LockHeld, SweepLock

    new_dir = _first_missing(sweep_dir)
    refused = None
    from orchestrator.store.space import DiskFull, failed_path, is_disk_full

    def refuse_disk_full(e: BaseException) -> None:  # before any trial: leave no folder behind
        if new_dir is not None:
            shutil.rmtree(new_dir, ignore_errors=True)
        _fail(str(e if isinstance(e, DiskFull) else DiskFull(failed_path(e, sweep_dir), 0)))

    lock = SweepLock(sweep_dir, force=force, on_lost=lambda _holder: exit_fenced(lock.lost_message()))
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except LockHeld as e:
        _fail(str(e))
    except OSError as e:
        if not is_disk_full(e):
            raise
        refuse_disk_full(e)
    try:
        if lock.took_over is not None:
            err_console.print(f"[yellow]took over the lock of {lock.took_over.describe()}[/]", highlight=False)
        try:
            extended_from = record.check_spec(spec, sweep_dir, extend)
            _check_pooling(spec, sweep_dir, extend, extended_from)
        except record.SpecChanged as e:
            _fail(str(e))
        try:
            info = record.write_record(sweep_dir, spec, plan.path.read_text(), plan.path, uri, smoke, extended_from)
        except OSError as e:
            if not is_disk_full(e):
                raise
            lock.release()
            refuse_disk_full(e)

        def tracker_factory(directory: Path, meta):  # runs in a thread while Ray starts: mlflow loads there
            from orchestrator.store import tracking
            from orchestrator.store.run_info import source_tags

            tags = {"spec_hash": meta.spec_hash, "git_commit": meta.git_commit,
                    **source_tags(meta.git_commit, f"fpr-sweep run {spec_path}")}
            t = tracking.SweepTracker(uri, meta.sweep, directory, tags, sweep_id=info["sweep_id"],
                                      description=spec.description.strip(), fence=lock.check)
            t.log_sweep_params({"spec": spec.science(), "description": spec.description, "smoke": smoke})
            if system_metrics or spec.system_metrics:
                t.start_system_metrics()
            return t

        try:
            outcome = run_sweep(plan, opts, tracker_factory, console, fence=lock.check, release=lock.release,
                                resume_command=shlex.join(["fpr-sweep", *sys.argv[1:]]))
        except (SweepError, store_address.TrackingError) as e:  # refused before its first trial
            refused = e
    finally:
        lock.release()
    if refused is not None:
        if new_dir is not None:
            shutil.rmtree(new_dir, ignore_errors=True)  # with the MLflow store this run created in it
        _fail(str(refused) + (_cpu_profile_hint(spec_path) if isinstance(refused, GpuUnavailable) else ""))
    _print_outcome(outcome, uri)
    raise typer.Exit(outcome.exit_code)


def _check_pooling(spec, sweep_dir: Path, extend: bool, extended_from: Optional[str]) -> None:
    """Refuse to pool trials of two specs, judged from the trial files themselves (each row carries
    its spec hash): sweep.json may be gone or restored from elsewhere. Hashes the folder's history
    records (earlier --extend runs) count as this sweep's."""
    from orchestrator.store import parquet as results
    from orchestrator.run.record import SpecChanged, read_info

    known = {spec.spec_hash(), extended_from} | {h.get("spec_hash") for h in read_info(sweep_dir).get("history", [])}
    with results.read_only():
        foreign = {h: n for h, n in results.spec_hashes(sweep_dir).items() if h and h not in known}
    if foreign and not extend:
        shown = ", ".join(f"{n} trial{'s' if n > 1 else ''} of spec hash {h}" for h, n in sorted(foreign.items()))
        raise SpecChanged(f"{SweepDir(sweep_dir).trials} holds {shown}, not of this spec (hash {spec.spec_hash()}), "
                          f"and {SweepDir(sweep_dir).info.name} does not record them. Trials of two specs must not "
                          "pool under one name: give the changed spec a new `name`, or pass --results-dir to run "
                          "it elsewhere; --extend adds its trials to this sweep on purpose.")


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (what a refused run must remove)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _cpu_profile_hint(spec_path: Path) -> str:
    from orchestrator.run.preflight import cpu_profile_for

    profile = cpu_profile_for(spec_path)
    if profile is None:
        return " To train on CPU instead, set resources.gpu: 0."
    return f" Without GPUs, run the study's CPU profile instead: fpr-sweep run {_shown(profile)}"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_clean_tree(required: bool) -> None:
    """Rows record the git commit they ran from; from a dirty tree that commit is not the code that
    ran. Refuse (exit 2, before anything is created) when required, else warn loudly."""
    from orchestrator.store import provenance

    changes = provenance.uncommitted_changes()
    if not changes:
        return
    shown = "\n  ".join(changes[:10]) + (f"\n  ... and {len(changes) - 10} more" if len(changes) > 10 else "")
    what = f"the code in {provenance.REPO_DIR} is not a clean git commit:\n  {shown}\n"
    if required:
        _fail(what + "--require-clean (or require_clean: true in the spec): commit or stash the changes first.")
    err_console.print(f"[bold yellow]warning: {what}every row will record git_commit '...+dirty', a state of the "
                      "code that no commit holds. Commit first for results others can reproduce "
                      "(--require-clean refuses to start from a dirty tree).[/]", highlight=False, soft_wrap=True)


def _check_address(address: Optional[str]) -> None:
    """Refuse an address where no Ray answers within seconds, before anything is created."""
    from orchestrator.run.preflight import AddressError, check_address

    try:
        check_address(address)
    except AddressError as e:
        _fail(str(e))


LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_OWN_PROCESS = False
"""True once ``main`` runs the command: this process is `fpr-sweep` itself rather than a caller's
(a test's CliRunner), so what Ray reads at import is ours to set."""


def _local_ray_on_loopback(address: Optional[str]) -> None:
    """A local Ray (no --address, no $RAY_ADDRESS) serves this machine only, so every one of its
    processes should listen on 127.0.0.1. Left alone, Ray binds the address other hosts reach
    this one by: its GCS and raylets, its agents' HTTP servers, and the dashboard's and
    autoscaler's Prometheus metrics servers (on 0.0.0.0). Ray keeps to loopback where multi-node
    support is off, as on macOS and Windows: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (ray
    _private/services.py, ``get_node_ip_address``). Ray reads it once, at import, so ray is imported
    here with it set to 0, and the variable is put back at once: no child process inherits it (a
    ``ray start`` that inherited it would refuse to join a cluster). Left alone when the user set it."""
    if (not _OWN_PROCESS or address or os.environ.get("RAY_ADDRESS") or "ray" in sys.modules
            or LOCAL_ONLY_VAR in os.environ):
        return
    os.environ[LOCAL_ONLY_VAR] = "0"
    try:
        import ray  # noqa: F401  (ray._private.ray_constants reads the variable now)
    finally:
        del os.environ[LOCAL_ONLY_VAR]


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _warn_if_exposed(host: str, option: str, what: str) -> None:
    if not _is_loopback(host):
        err_console.print(f"[bold yellow]warning:[/] {option} {host}: {what} will accept connections from "
                          "other machines; keep it on 127.0.0.1 and use an SSH tunnel "
                          "(e.g. `ray attach CLUSTER.yaml --port-forward PORT`).", highlight=False, soft_wrap=True)


PLAN_SAMPLE = 20
"""Trials `--dry-run` shows in its table; `--all FILE` writes every one."""
PLAN_COLUMNS = ("#", "trial", "task", "variant", "seed", "train", "ood sizes", "samples", "done")


def _plan_row(i: int, c, samples: int, done: dict[str, str]) -> tuple[str, ...]:
    return (str(i), c.cell_id, c.task, c.variant, str(c.seed), str(c.train_size),
            ",".join(map(str, c.ood_sizes)), str(samples), done.get(c.cell_id, ""))


def _print_plan(plan: SweepPlan, results_dir: Optional[str], all_path: Optional[Path]) -> None:
    """A summary per task, the first PLAN_SAMPLE trials, and with ``all_path`` every trial as CSV
    (written as the grid is walked, so a 10^6-cell grid never sits in memory)."""
    spec, smoke, grid = plan.spec, plan.smoke, plan.grid
    samples = spec.search.num_samples if spec.search else 1
    done = _done_statuses(SweepDir.under(results_dir or spec.results_dir, spec.name, smoke).root)
    shown = min(PLAN_SAMPLE, len(grid))
    table = Table(title=f"{spec.name}{' (smoke)' if smoke else ''}: trials"
                        + (f" (first {shown} of {len(grid)})" if shown < len(grid) else ""))
    for col in PLAN_COLUMNS:
        table.add_column(col)
    for i, c in enumerate(itertools.islice(grid.cells(), shown), 1):
        table.add_row(*_plan_row(i, c, samples, done))
    console.print(table)
    if all_path is not None:
        with open(all_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PLAN_COLUMNS)
            writer.writerows(_plan_row(i, c, samples, done) for i, c in enumerate(grid.cells(), 1))
        console.print(f"all {len(grid)} trials written to {all_path}", highlight=False)
    elif shown < len(grid):
        console.print(f"... {len(grid) - shown} more (--all FILE writes every trial as CSV)", highlight=False)
    summary = Table(title="per task")
    for col in ("task", "train", "ood sizes", "grid cells", "seeds", "trials"):
        summary.add_column(col)
    for t in grid.tasks:
        summary.add_row(t.task, str(t.train_size), ",".join(map(str, t.ood_sizes)), str(t.count() // len(t.seeds)),
                        str(len(t.seeds)), str(t.count() * samples))
    console.print(summary)
    per_task = [t.count() // len(t.seeds) for t in grid.tasks]
    seeds = {len(t.seeds) for t in grid.tasks}
    grid_text = (f"{per_task[0]} grid cells x {len(spec.tasks)} tasks" if len(set(per_task)) == 1
                 else f"({' + '.join(map(str, per_task))}) grid cells over {len(spec.tasks)} tasks")
    seeds_text = f"{seeds.pop()} seeds" if len(seeds) == 1 else "seeds per task"
    finished = ""
    if done:  # a folder's trials may be another spec's (an edited spec): say how many are this one's
        mine = sum(1 for c in grid.cells() if c.cell_id in done)
        other = len(done) - mine
        finished = f"; {mine} of them finished" + (f" ({other} finished trials in the sweep folder are not this "
                                                   "spec's)" if other else "")
    console.print(f"{grid_text} x {seeds_text} x {samples} samples = {plan.trial_count} trials{finished}",
                  highlight=False)
    _print_destinations(spec, results_dir, smoke)


def _print_destinations(spec, results_dir: Optional[str], smoke: bool) -> None:
    """Where a run of this spec writes rows, models and tracking (issue 33): a spec that writes
    outside the working tree, or to a remote tracker, says so before anything runs."""
    from orchestrator.store import store_address

    root = Path(os.path.abspath(SweepDir.under(results_dir or spec.results_dir, spec.name, smoke).root))
    uri = spec.tracking_uri or store_address.default_tracking_uri(root)
    try:
        root.relative_to(Path.cwd())
        where = ""
    except ValueError:
        where = "  (outside the working tree)"
    remote = not uri.startswith(("sqlite:", "file:", "/"))
    models = f"{root / 'models'}" if spec.keep_models != "none" else "none kept (keep_models: none)"
    console.print(f"rows:     {root / 'trials'}, {root / 'results.parquet'}{where}\n"
                  f"models:   {models}\n"
                  f"tracking: {uri}" + ("  (a remote tracker: params, metrics and models leave this machine)"
                                        if remote else ""), highlight=False, soft_wrap=True)


def _done_statuses(sweep_dir: Path) -> dict[str, str]:
    from orchestrator.store import parquet as results

    if not sweep_dir.is_dir():
        return {}
    with results.read_only():  # --dry-run moves and rewrites nothing
        return results.finished_statuses(sweep_dir)


def _print_outcome(outcome, uri: str) -> None:
    from orchestrator.store import parquet as results

    if outcome.stopped:
        err_console.print(f"[bold red]stopped:[/] {outcome.stopped}", highlight=False, soft_wrap=True)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "no trials finished"
    console.print(f"\ntrials: {counts}" + (f"; {outcome.unfinished} unfinished (interrupted: run the same "
                                           "command again to resume)" if outcome.unfinished else ""),
                  highlight=False)
    if outcome.results_path is not None and outcome.results_path.exists():
        _print_accuracy(results.accuracy_table(outcome.sweep_dir))
        console.print(f"results: {outcome.results_path}", highlight=False)
    if outcome.models:
        from fpr_core.saved_model import human_bytes

        sizes = sorted(outcome.models.values())
        console.print(f"models:  {len(sizes)} kept in {SweepDir(outcome.sweep_dir).models} ({human_bytes(sum(sizes))}; "
                      f"{human_bytes(sizes[0])}" + (f" to {human_bytes(sizes[-1])}" if sizes[-1] != sizes[0] else "")
                      + " per trial)", highlight=False)
    console.print(f"MLflow:  {uri}   (fpr-sweep ui {shlex.quote(_shown(outcome.sweep_dir))})", highlight=False)
    if outcome.tracking_problem:
        err_console.print(f"[bold red]MLflow incomplete:[/] {outcome.tracking_problem}", highlight=False,
                          soft_wrap=True)
    if outcome.counts.get("failed"):
        for s in results.trial_summaries(outcome.sweep_dir):
            if s["status"] == "failed":
                err_console.print(f"[red]failed[/] {s['trial_id']} {s['task']} {s['variant']} seed={s['seed']}: "
                                  f"{s['error']}", highlight=False)


def _print_accuracy(rows: list[dict]) -> None:
    """Per task: exact accuracy and mean loop iterations per variant (mean over seeds) and split."""
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        splits = sorted({r["split"] for r in mine}, key=lambda s: (s != "id", int(s.split("_")[1]) if s != "id" else 0))
        table = Table(title=f"{task}: exact accuracy / mean loop iterations (mean over seeds)")
        for col in ["variant", *splits]:
            table.add_column(col)
        keyed: dict[str, dict] = {}
        for r in mine:
            keyed.setdefault(r["variant"], {})[r["split"]] = r
        for variant, by_split in sorted(keyed.items()):
            table.add_row(variant, *[_cell(by_split.get(s)) for s in splits])
        console.print(table)


def _cell(row: Optional[dict]) -> str:
    if not row or row.get("exact_acc") is None:
        return ""
    iters = row.get("iters_mean")
    return f"{100 * row['exact_acc']:.1f}%" + ("" if iters is None else f" / {iters:.0f}")


@app.command()
def validate(spec_path: Path = SPEC_ARG,
             yes: bool = typer.Option(False, "--yes", help="Pass a spec whose trials are estimated not to fit "
                                                           "in this machine's memory.")) -> None:
    """Check a spec (shape, every fpr_core value, every trial config, each trial's memory) without
    running anything."""
    plan = _load(spec_path)
    _check_memory(plan, yes)
    console.print(f"{spec_path}: ok ({plan.trial_count} trials, spec hash {plan.spec.spec_hash()})",
                  highlight=False)
    _print_destinations(plan.spec, None, False)


MEMORY_CHECKED_TRIALS = 10_000
"""validate estimates the memory of at most this many trials (the grid's first ones)."""


def _check_memory(plan: SweepPlan, yes: bool) -> None:
    """Refuse (exit 2) a spec whose largest trial is estimated not to fit in this machine's memory
    (run/memory.py), printing the estimate; ``--yes`` passes it with a warning."""
    from fpr_core.config import ExperimentConfig
    from orchestrator.run import memory
    from orchestrator.sweep.expand import resolve

    worst = None
    for cell in itertools.islice(plan.cells(), MEMORY_CHECKED_TRIALS):
        trial = resolve(cell)
        est = memory.estimate(ExperimentConfig.from_dict(trial.experiment_config()))
        if worst is None or est.total > worst[1].total:
            worst = (trial, est)
    if worst is None:
        return
    have, source = memory.local_memory()
    if plan.spec.resources.gpu > 0 and have < memory.LARGEST_GPU:  # its trials run on GPU nodes, not here
        have, source = memory.LARGEST_GPU, "the largest GPU's memory"
    trial, est = worst
    if est.total <= memory.FIT_FRACTION * have:
        return
    c = trial.cell
    message = (f"trial {trial.trial_id} ({c.task} {c.variant} seed {c.seed}) needs an estimated {est.describe()}, "
               f"more than {memory.FIT_FRACTION:.0%} of {source} ({memory.gib(have)}); shrink model.dim, the batch "
               "sizes, solver.train_cap or the largest ood size, or pass --yes to validate it anyway.")
    if yes:
        err_console.print(f"[yellow]warning: {escape(message)}[/]", highlight=False)
        return
    _fail(message)


@app.command()
def schema() -> None:
    """Print the JSON schema of sweep specs (every key and config field: its type, allowed values and meaning)."""
    from orchestrator.sweep.json_schema import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


def _sweep_dir(sweep: str, results_dir: Optional[str]) -> Path:
    candidate = SweepDir(Path(sweep))
    if candidate.holds_sweep():
        return candidate.root.resolve()
    in_results = SweepDir.under(results_dir or DEFAULT_RESULTS_DIR, sweep)
    if in_results.root.is_dir():
        return in_results.root.resolve()
    _fail(f"no sweep {sweep!r}: neither {candidate.root} nor {in_results.root} holds a sweep "
          "(run `fpr-sweep run SPEC` first, or pass --results-dir).")
    raise AssertionError("unreachable")


STATUS_ROWS = 50
"""Trials `status` lists (failed, running and pending first); `--all` lists every one."""
STATE_ORDER = {"failed": 0, "running": 1, "pending": 2, "diverged": 3, "stopped": 4, "ok": 5}


@app.command()
def status(sweep: str = SWEEP_ARG, results_dir: Optional[str] = RESULTS_OPT,
           all_trials: bool = typer.Option(False, "--all", help=f"List every trial, not the first {STATUS_ROWS} "
                                                               "(failed, running and pending first).")) -> None:
    """Per-trial state of a sweep: done (ok/diverged/stopped), failed, running or pending.

    Reads Parquet and JSON only (never Tune's pickled state), so it is safe on any results folder."""
    from orchestrator.run.live import planned_trials, trial_states

    sweep_dir = _sweep_dir(sweep, results_dir)
    states, unplanned = trial_states(sweep_dir, *planned_trials(sweep_dir))
    lines = sorted((STATE_ORDER.get(s["status"], 9), tid, (s["task"], s["variant"], str(s["seed"])), s["status"],
                    (s.get("error") or "")[:80]) for tid, s in states.items())
    counts: dict[str, int] = {}
    for line in lines:
        counts[line[3]] = counts.get(line[3], 0) + 1
    shown = lines if all_trials else lines[:STATUS_ROWS]
    more = "" if len(shown) == len(lines) else f" ({len(shown)} of {len(lines)}; --all lists every one)"
    table = Table(title=f"{sweep_dir.name}: trials{more}")
    for col in ("trial", "task", "variant", "seed", "status", "error"):
        table.add_column(col)
    for _, tid, row, state, error in shown:
        table.add_row(tid, *row, state, error)
    console.print(table)
    if unplanned:
        counts["pending"] = counts.get("pending", 0) + unplanned
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials yet", highlight=False)


@app.command()
def report(sweep: str = SWEEP_ARG, results_dir: Optional[str] = RESULTS_OPT) -> None:
    """Build the sweep's report (tables and plots) from results.parquet."""
    from orchestrator.report.build import build_report
    from orchestrator.store import parquet as results

    sweep_dir = _sweep_dir(sweep, results_dir)
    try:
        with results.read_only():  # reads the files as they are; rewrites no table, moves no file
            build_report(sweep_dir, console=console)  # prints its summary and the report's path
    except SpecError as e:
        _fail(str(e))
    except FileNotFoundError:
        _fail(f"{sweep_dir}: no trial has finished yet (no results.parquet, no trials/*.parquet); "
              "run the sweep first.")
    _log_report(sweep_dir)


def _log_report(sweep_dir: Path) -> None:
    """The report and its plots as artifacts of the sweep's MLflow run (when the store answers)."""
    from orchestrator.store import store_address

    from orchestrator.run.lock import LockHeld, SweepLock

    uri = _tracking_uri(sweep_dir)
    if not store_address.store_exists(uri):  # results copied without their MLflow store
        return
    lock = SweepLock(sweep_dir)
    try:  # the spool is the running driver's: write to it only while holding the sweep
        lock.acquire()
    except (LockHeld, OSError) as e:
        why = "a driver is running this sweep" if isinstance(e, LockHeld) else f"cannot take its lock ({e})"
        err_console.print(f"[yellow]warning:[/] report not logged to MLflow: {why}; run `fpr-sweep report` "
                          "again once it has ended.", highlight=False, soft_wrap=True)
        return
    try:
        try:
            store_address.check_reachable(uri)
            tracker = _attach_tracker(uri, sweep_dir, fence=lock.check)
        except store_address.TrackingError as e:
            err_console.print(f"[yellow]warning:[/] report not logged to MLflow: {e}", highlight=False)
            return
        tracker.log_sweep_files([SweepDir(sweep_dir).report])
        tracker.log_sweep_files(sorted(sweep_dir.glob("*.png")) + sorted(sweep_dir.glob("*.pdf")), "plots")
        problem = tracker.close()
        if problem:
            err_console.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    finally:
        lock.release()


@app.command("eval")
def eval_(sweep: str = SWEEP_ARG,
          sizes: Optional[str] = typer.Option(None, "--sizes", help="New eval sizes, comma-separated, e.g. 25,33 "
                                                                    "(each becomes an ood_<size> split)."),
          halting: Optional[str] = typer.Option(None, "--halting",
                                                help="Halting protocols, comma-separated, e.g. trained,paper,long: "
                                                     "every split each trial has (and the --sizes) is evaluated "
                                                     "under each, one row per (split, protocol). Built-ins: trained "
                                                     "(the trial's own), paper (tol 0.1, no cycle halting, FPRM), "
                                                     "long (no cycle halting, caps x16); more from the spec's "
                                                     "eval.protocols. Default: the --sizes under trained. "
                                                     "docs/halting.md."),
          cap_law: str = typer.Option("trained", "--cap-law",
                                      help="Loop cap law: trained (each protocol's, by default the trial's "
                                           "solver.eval_cap_law), task (the task's own law), linear "
                                           "(eval_cap x size/train_size), quadratic (eval_cap x "
                                           "(size/train_size)^2) or fixed (eval_cap at every size); other than "
                                           "trained, the rows' protocol is named <protocol>_cap_<law>."),
          trials: Optional[str] = typer.Option(None, "--trials", help="Only these trial ids (comma-separated; "
                                                                      "default: every ok trial)."),
          force: bool = typer.Option(False, "--force", help="Evaluate (split, protocol) pairs a trial already has "
                                                            "again (its rows for them are replaced)."),
          n_eval: Optional[int] = typer.Option(None, "--n-eval", min=1,
                                               help="Instances per evaluated split (default: each trial's "
                                                    "eval.n_eval, the only choice that reproduces a split's "
                                                    "instances); fewer for sizes whose loop runs thousands of "
                                                    "steps, e.g. 59x59 mazes."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (default: $RAY_ADDRESS, "
                                                                        "else a local Ray)."),
          results_dir: Optional[str] = RESULTS_OPT) -> None:
    """Evaluate finished trials' saved models again (in parallel on Ray, no training): on new sizes
    and/or under named halting protocols. Adds the rows (one per trial, split and protocol) to
    results.parquet and the metrics to the trials' MLflow runs. Pairs a trial already has are
    skipped unless --force, so an interrupted eval resumes where it stopped."""
    from orchestrator.run import reeval

    sweep_dir = _sweep_dir(sweep, results_dir)
    if cap_law not in reeval.CAP_LAWS:
        _fail(f"--cap-law: got {cap_law!r}, expected one of {', '.join(reeval.CAP_LAWS)}")
    if sizes is None and halting is None:
        _fail("expected --sizes (new sizes under the trials' own halting), --halting (protocols, on every split "
              "each trial has), or both")
    try:
        wanted = reeval.parse_sizes(sizes) if sizes is not None else []
        protocols = reeval.parse_halting(halting) if halting is not None else None
        ids = [t.strip() for t in trials.split(",") if t.strip()] if trials else None
        jobs, skipped = reeval.plan_jobs(sweep_dir, wanted, ids, force, protocols, cap_law)
    except reeval.EvalError as e:
        _fail(str(e))
    for tid, why in sorted(skipped.items()):
        console.print(f"skip {tid}: {why}", highlight=False)
    if not jobs:
        console.print("nothing to evaluate", highlight=False)
        raise typer.Exit(EXIT_OK)
    console.print(f"{len(jobs)} evaluation tasks to run; opening the sweep's MLflow store and starting Ray",
                  highlight=False)
    with _holding(sweep_dir) as lock:  # eval rewrites rows and sends to the sweep's spool: one writer
        outcome = _run_eval(sweep_dir, jobs, address, n_eval, fence=lock.check)
    what = ", ".join(x for x in (f"at {sizes}" if sizes else "", f"under {halting}" if halting else "") if x)
    console.print(f"evaluated {len(outcome.evaluated)} trials {what} in {outcome.seconds:.1f} s"
                  + (f"; {len(outcome.failed)} failed" if outcome.failed else ""), highlight=False)
    raise typer.Exit(EXIT_TRIALS_FAILED if outcome.failed else EXIT_OK)


@contextlib.contextmanager
def _holding(sweep_dir: Path):
    """The sweep's lock for a command that writes to a finished sweep (`eval`); exit 2 naming the
    driver when one is running it."""
    from orchestrator.run.lock import LockHeld, SweepLock

    lock = SweepLock(sweep_dir)
    try:
        lock.acquire()
    except LockHeld as e:
        _fail(f"{e} `fpr-sweep eval` writes the sweep's rows and MLflow runs: run it once the driver has ended.")
    try:
        yield lock
    finally:
        lock.release()


def _run_eval(sweep_dir: Path, jobs, address: Optional[str], n_eval: Optional[int] = None, fence=None):
    _local_ray_on_loopback(address)
    from orchestrator.run import reeval
    from orchestrator.run.driver import SweepError, ensure_ray, log_sweep_outcome, quiet_tune
    from orchestrator.store import parquet as results
    from orchestrator.store import store_address

    uri = _tracking_uri(sweep_dir)
    try:
        store_address.check_reachable(uri)
        tracker = _attach_tracker(uri, sweep_dir, fence=fence)
    except store_address.TrackingError as e:
        _fail(str(e))
    quiet_tune()
    try:
        ensure_ray(address, console)
    except SweepError as e:
        _fail(str(e))
    outcome = reeval.run_eval(sweep_dir, jobs, tracker, _trial_resources(sweep_dir), console, n_eval)
    results.collect(sweep_dir)
    log_sweep_outcome(tracker, SweepDir(sweep_dir))
    problem = tracker.close()
    if problem:
        err_console.print(f"[bold red]MLflow incomplete:[/] {problem}", highlight=False, soft_wrap=True)
    return outcome


def _attach_tracker(uri: str, sweep_dir: Path, fence=None):
    """The sweep's tracker without reopening its runs (``eval``, ``report``): the experiment of this
    folder's sweep id; ``fence``: the check of the sweep lock the command holds."""
    from orchestrator.store import tracking
    from orchestrator.run.record import read_info

    return tracking.SweepTracker(uri, sweep_dir.name, sweep_dir, {}, sweep_id=read_info(sweep_dir).get("sweep_id"),
                                 reopen=False, fence=fence)


def _trial_resources(sweep_dir: Path) -> dict[str, float]:
    """Ray resources of one trial as the sweep's spec asked for them (1 CPU without a spec copy)."""
    spec_copy = SweepDir(sweep_dir).spec_copy
    if not spec_copy.exists():
        return {"cpu": 1.0, "gpu": 0.0}
    try:
        return load_spec(spec_copy).resources.model_dump()
    except SpecError as e:
        _fail(str(e))
        raise


def _tracking_uri(sweep_dir: Path) -> str:
    """The sweep's MLflow store, its own mlflow.db found in the folder wherever it was moved or copied."""
    from orchestrator.store.ui import tracking_uri_of

    return tracking_uri_of(sweep_dir)


@app.command()
def ui(sweep: str = SWEEP_ARG, results_dir: Optional[str] = RESULTS_OPT,
       port: int = typer.Option(5000, "--port", help="Port to serve on."),
       host: str = typer.Option(LOOPBACK, "--host", help="Interface to bind; anything but loopback exposes "
                                                         "the UI (and the runs) to the network.")) -> None:
    """Serve the MLflow UI for a sweep's tracking store on http://127.0.0.1:PORT (--host to expose it;
    Ctrl-C or SIGTERM stops it). The store is the one inside the sweep folder, wherever it was moved."""
    from orchestrator.store import ui as mlflow_ui

    _warn_if_exposed(host, "--host", "the MLflow UI")
    sweep_dir = _sweep_dir(sweep, results_dir)
    try:
        store = mlflow_ui.resolve_store(sweep_dir)
    except mlflow_ui.UiError as e:
        _fail(str(e))
    if store.remote:
        console.print(f"{sweep_dir.name} logs to the tracking server {store.uri}: open it in a browser.",
                      highlight=False)
        return
    try:
        mlflow_ui.check_port(host, port)  # a busy port exits 2 at once, not after the server's start
    except mlflow_ui.UiError as e:
        _fail(str(e))
    from orchestrator.store.ui_mode import sweep_experiment_id, training_url

    url = training_url(f"http://{host}:{port}", sweep_experiment_id(store.uri))  # opens in model-training mode
    console.print(f"MLflow UI for {sweep_dir.name}: {url}  (store {store.uri}; Ctrl-C stops it)", highlight=False)
    raise typer.Exit(mlflow_ui.serve(store, port, host))


def main() -> None:
    """The `fpr-sweep` entry point: the command, then a prompt exit.

    After `fpr-sweep run` has printed its last line, Python's teardown of the torch, Ray and MLflow
    modules it loaded took another 2-3 s here (benchmarks/bench_orchestration.py), with nothing
    left to do. So once the command has returned and its output is flushed, Ray is stopped (when
    this process started it) and the process leaves without that teardown. Everything a command
    writes is closed before it returns (Parquet, the spool, the MLflow store's last commit)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    try:
        app()
        code = EXIT_OK
    except SystemExit as e:
        if isinstance(e.code, int):
            code = e.code
        elif e.code is None:
            code = EXIT_OK
        else:  # as the interpreter does for sys.exit("message"): print it, exit 1
            print(e.code, file=sys.stderr)
            code = 1
    if "orchestrator.run.driver" in sys.modules:  # the only module that starts or joins Ray
        from orchestrator.run.driver import stop_ray

        stop_ray()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
