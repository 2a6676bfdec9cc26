"""`fpr-sweep`: run, validate, inspect and report benchmark sweeps of looped transformers.

Each command parses its options, calls one function of the room that owns the work, and prints
what comes back (the tables are console.py's). Exit codes: 0 ok, 1 some trials failed (or the run
was interrupted), 2 bad input (spec, options, resources, unreachable tracking server): every
UserError (sweep/errors.py) and SpecError a room raises prints one clear message, never a traceback.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator import console as screen
from orchestrator.sweep.errors import UserError
from orchestrator.sweep.layout import SweepDir
from orchestrator.sweep.plan import SweepPlan, plan_sweep, reused_tuning_seeds
from orchestrator.sweep.spec import SpecError

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
_OWN_PROCESS = False
"""True once ``main`` runs the command: this process is `fpr-sweep` itself rather than a caller's
(a test's CliRunner), so what Ray reads at import is ours to set (run/launch.py)."""


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A room's refusal (UserError, SpecError) exits 2 with its message, without a traceback."""
    try:
        yield
    except (UserError, SpecError) as e:
        _fail(str(e))


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _load(spec_path: Path, smoke: bool = False) -> SweepPlan:
    """The validated plan (exit 2 on a bad spec); warns when a study reuses its recipes' tuning seeds."""
    with _user_errors():
        plan = plan_sweep(spec_path, smoke)
        reused = reused_tuning_seeds(plan)
    if reused:
        _warn(reused)
    return plan


def _sweep_dir(sweep: str, results_dir: Optional[str]) -> SweepDir:
    with _user_errors():
        return SweepDir.find(sweep, results_dir)


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
        smoke: bool = typer.Option(False, "--smoke", help="Tiny budget (few steps, small eval sets, short loop "
                                                          "caps, first seed, two OOD sizes), written to "
                                                          "<sweep>-smoke/."),
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
    from orchestrator.run import launch
    from orchestrator.run.session import RunOptions

    plan = _load(spec_path, smoke)
    results_dir = os.path.expanduser(results_dir) if results_dir else None  # '~/results' through `ray job submit`
    if dry_run:
        preview = launch.preview(plan, results_dir)
        screen.print_plan(console, plan, preview.done, all_path)
        screen.print_destinations(console, preview.destinations)
        raise typer.Exit(EXIT_OK)
    opts = RunOptions(address, max_concurrent, tracking_uri, results_dir, storage, yes, node_timeout * 60,
                      force=force, extend=extend, system_metrics=system_metrics, require_clean=require_clean,
                      own_process=_OWN_PROCESS, resume_command=shlex.join(["fpr-sweep", *sys.argv[1:]]))
    with _user_errors():
        outcome = launch.run(plan, opts, console, err_console)
    screen.print_outcome(console, err_console, outcome)
    raise typer.Exit(outcome.exit_code)


@app.command()
def validate(spec_path: Path = SPEC_ARG,
             yes: bool = typer.Option(False, "--yes", help="Pass a spec whose trials are estimated not to fit "
                                                           "in this machine's memory.")) -> None:
    """Check a spec (shape, every fpr_core value, every trial config, each trial's memory) without
    running anything."""
    from orchestrator.run import launch

    plan = _load(spec_path)
    with _user_errors():
        checked = launch.validate(plan, yes)
    if checked.memory_warning:
        err_console.print(f"[yellow]warning: {escape(checked.memory_warning)}[/]", highlight=False)
    console.print(f"{spec_path}: ok ({plan.trial_count} trials, spec hash {plan.spec.spec_hash()})",
                  highlight=False)
    screen.print_destinations(console, checked.destinations)


@app.command()
def schema() -> None:
    """Print the JSON schema of sweep specs (every key and config field: its type, allowed values and meaning)."""
    from orchestrator.sweep.json_schema import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


@app.command()
def status(sweep: str = SWEEP_ARG, results_dir: Optional[str] = RESULTS_OPT,
           all_trials: bool = typer.Option(False, "--all", help=f"List every trial, not the first {screen.STATUS_ROWS} "
                                                               "(failed, running and pending first).")) -> None:
    """Per-trial state of a sweep: done (ok/diverged/stopped), failed, running or pending.

    Reads Parquet and JSON only (never Tune's pickled state), so it is safe on any results folder."""
    from orchestrator.run.live import planned_trials, trial_states

    sweep_dir = _sweep_dir(sweep, results_dir)
    states, unplanned = trial_states(sweep_dir, *planned_trials(sweep_dir))
    screen.print_status(console, sweep_dir.name, states, unplanned, all_trials)


@app.command()
def report(sweep: str = SWEEP_ARG, results_dir: Optional[str] = RESULTS_OPT) -> None:
    """Build the sweep's report (tables and plots) from results.parquet."""
    from orchestrator.report.build import build_report
    from orchestrator.run import launch
    from orchestrator.store import parquet

    sweep_dir = _sweep_dir(sweep, results_dir)
    try:
        with _user_errors(), parquet.read_only():  # reads the files as they are; rewrites no table, moves no file
            build_report(sweep_dir, console=console)  # prints its summary and the report's path
    except FileNotFoundError:
        _fail(f"{sweep_dir}: no trial has finished yet (no results.parquet, no trials/*.parquet); "
              "run the sweep first.")
    launch.log_report(sweep_dir, err_console)


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
    from orchestrator.run import launch
    from orchestrator.run.reeval import EvalRequest

    sweep_dir = _sweep_dir(sweep, results_dir)
    request = EvalRequest(sizes, halting, cap_law, trials, force, n_eval, address)
    with _user_errors():
        outcome = launch.evaluate(sweep_dir, request, console, err_console, own_process=_OWN_PROCESS)
    if outcome is None:
        raise typer.Exit(EXIT_OK)
    what = ", ".join(x for x in (f"at {sizes}" if sizes else "", f"under {halting}" if halting else "") if x)
    console.print(f"evaluated {len(outcome.evaluated)} trials {what} in {outcome.seconds:.1f} s"
                  + (f"; {len(outcome.failed)} failed" if outcome.failed else ""), highlight=False)
    raise typer.Exit(EXIT_TRIALS_FAILED if outcome.failed else EXIT_OK)


@app.command()
def ui(sweep: str = SWEEP_ARG, results_dir: Optional[str] = RESULTS_OPT,
       port: int = typer.Option(5000, "--port", help="Port to serve on."),
       host: str = typer.Option(LOOPBACK, "--host", help="Interface to bind; anything but loopback exposes "
                                                         "the UI (and the runs) to the network.")) -> None:
    """Serve the MLflow UI for a sweep's tracking store on http://127.0.0.1:PORT (--host to expose it;
    Ctrl-C or SIGTERM stops it). The store is the one inside the sweep folder, wherever it was moved."""
    from orchestrator.store import ui as mlflow_ui
    from orchestrator.store.ui_mode import sweep_experiment_id, training_url

    _warn_if_exposed(host, "--host", "the MLflow UI")
    sweep_dir = _sweep_dir(sweep, results_dir)
    with _user_errors():
        store = mlflow_ui.resolve_store(sweep_dir.root)
        if not store.remote:
            mlflow_ui.check_port(host, port)  # a busy port exits 2 at once, not after the server's start
    if store.remote:
        console.print(f"{sweep_dir.name} logs to the tracking server {store.uri}: open it in a browser.",
                      highlight=False)
        return
    url = training_url(f"http://{host}:{port}", sweep_experiment_id(store.uri))  # opens in model-training mode
    console.print(f"MLflow UI for {sweep_dir.name}: {url}  (store {store.uri}; Ctrl-C stops it)", highlight=False)
    raise typer.Exit(mlflow_ui.serve(store, port, host))


def _warn_if_exposed(host: str, option: str, what: str) -> None:
    if not _is_loopback(host):
        err_console.print(f"[bold yellow]warning:[/] {option} {host}: {what} will accept connections from "
                          "other machines; keep it on 127.0.0.1 and use an SSH tunnel "
                          "(e.g. `ray attach CLUSTER.yaml --port-forward PORT`).", highlight=False, soft_wrap=True)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


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
    if "orchestrator.run.ray_session" in sys.modules:  # the only module that starts or joins Ray
        from orchestrator.run.ray_session import stop_ray

        stop_ray()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
