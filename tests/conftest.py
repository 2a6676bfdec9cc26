"""Shared fixtures (one Ray session for every in-process Ray test, tiny sweep specs written to tmp
dirs) and the test tiers.

The tiers (docs/testing.md):
- `make test-fast` = `pytest -m "not slow"`: every in-process test, about 2 minutes on 2 cores.
- `make test` = everything, as CI runs it, on two pytest workers (pytest-xdist).

A test is `slow` when it leaves the process or waits on real services: it starts Ray, runs
`fpr-sweep` (or any Python) in a subprocess, starts a real server (MLflow, sshd) or calls
`torch.compile`; or when it trains or solves in-process for many seconds (LONG_IN_PROCESS). The marking lives here rather than in each file: every test that uses a fixture
in SLOW_FIXTURES, every test of a module in SLOW_MODULES and every test named in SLOW_TESTS is
marked slow (a file may also mark itself with `pytestmark = pytest.mark.slow`, or a test with
`@pytest.mark.slow`). A new file is fast by default. In the fast tier a test that starts a Python
subprocess, Ray or torch.compile anyway fails with a message naming this file, and every test that
took more than FAST_TEST_S is listed at the end, so a misfiled test is found at once.

`make test` runs on two pytest-xdist workers (`-n 2`), slow tests first. Each worker that gets a
`ray_session` test starts its own session Ray. (Grouping tests per worker with `--dist loadgroup`
does nothing with pytest 9.2 and pytest-xdist 3.8: xdist sets a node attribute pytest no longer
reads.)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

TINY_BASE = {
    "model": {"dim": 16, "heads": 2},
    "solver": {"train_cap": 6, "eval_cap": 8},
    "grad": "bptt",  # an estimator every arm can learn under: run refuses no recall with truncated (issue 26)
    "train": {"steps": 10, "batch_size": 16, "n_train": 64, "log_every": 5, "checkpoint_every": 5,
              "warmup": 2},
    "eval": {"n_eval": 8, "diag_n": 4, "power_iters": 2},
}
"""A budget small enough for a trial to finish in seconds (most of it is worker start-up)."""

# ---------------------------------------------------------------- tiers

SLOW_FIXTURES = {"ray_session"}
"""Fixtures that start something out of process: a test using one is slow."""

SLOW_MODULES = {
    "test_compile",          # torch.compile
    "test_disk_full",        # the CLI in a subprocess, a tmpfs mount
    "test_e2e_sweep",        # Ray
    "test_faults_more",      # the CLI in a subprocess
    "test_charts",           # a new MLflow SQLite store (its migrations: ~10 s)
    "test_launcher",         # sshd, Ray's cluster launcher in network namespaces
    "test_models_e2e",       # Ray, an MLflow server
    "test_multinode",        # `ray start` clusters
    "test_outage",           # an MLflow server, the CLI in a subprocess
    "test_ray_lifecycle",    # Ray in a subprocess
    "test_resume",           # the CLI in a subprocess, killed and resumed
    "test_shipped_smoke",    # every spec and benchmark in a subprocess
    "test_spec_change",      # the CLI in a subprocess
    "test_stops",            # the CLI in a subprocess, signals
}
"""Modules whose every test is slow (file stem)."""

SLOW_TESTS = {
    "test_faults.py::test_unreachable_tracking_server_stops_before_any_trial",   # the CLI in a subprocess
    "test_faults.py::test_two_sweeps_writing_one_results_dir_never_expose_partial_files",  # spawned writers
    "test_lock.py::test_a_live_holder_blocks_and_a_killed_one_is_replaced",      # a Python subprocess
    "test_lock.py::test_a_driver_whose_lease_expired_is_fenced_off_before_its_next_write",  # the same
    "test_safe_defaults.py::test_exposing_the_mlflow_ui_warns_first",            # the CLI in a subprocess
    "test_spec.py::test_alias_bomb_is_refused_fast_with_a_bounded_message",      # the CLI in a subprocess
    "test_tasks_common.py::test_numba_kernels_are_cached_in_the_user_cache_dir_not_the_source_tree",
    "test_done_state.py::test_run_and_report_on_a_table_only_folder_train_nothing_and_read_every_trial",  # MLflow, report
}
"""Single slow tests in otherwise fast modules (file::function, parameters left out)."""

LONG_IN_PROCESS = {
    "test_board_coordinates.py::test_experiment_trains_sudoku_with_board_coordinates",
    "test_corrupt_files.py::test_garbage_results_table_is_rebuilt_and_report_works_from_trial_files",
    "test_diagnostics.py::test_implicit_derivative_is_exactly_zero_without_recall",
    "test_diagnostics.py::test_probe_restores_training_mode",
    "test_experiment.py::test_run_experiment_end_to_end",
    "test_faithful.py::test_per_map_spectral_compounds_below_sigma",
    "test_faithful.py::test_spectral_sets_the_gain_of_the_step_at_init",
    "test_faithful.py::test_spectral_step_trains_on_sequences_and_grids_and_runs_larger",
    "test_faithful.py::test_unreachable_spectral_target_names_the_range",
    "test_gradients.py::test_implicit_and_phantom_match_bptt_at_the_fixed_point",
    "test_gradients.py::test_implicit_gradient_matches_finite_differences",
    "test_mlflow_model.py::test_tracker_logs_a_pyfunc_model_with_metrics_and_datasets",
    "test_report.py::test_claim_3_uses_only_splits_with_verified_fixed_points_in_both_arms",
    "test_report.py::test_competence_gate_is_settable",
    "test_report.py::test_every_claim_supported_by_data_that_supports_it",
    "test_report.py::test_iterations_falling_with_difficulty_contradicts_claim_5",
    "test_report.py::test_report_files_and_partial_sweep",
    "test_report.py::test_standard_beating_internal_on_sudoku_contradicts_claim_4",
    "test_report.py::test_swapping_recall_and_no_recall_accuracy_contradicts_claim_1",
    "test_report.py::test_undertrained_recall_arms_give_undertrained_not_a_verdict",
    "test_report.py::test_unstable_recall_norm_contradicts_claim_2_and_input_dependent_none_claim_3",
    "test_saved_model.py::test_final_and_ema_weights_both_kept",
    "test_saved_model.py::test_saved_model_reproduces_recorded_metrics",
    "test_solver.py::test_contractive_model_reaches_a_fixed_point",
    "test_solver.py::test_each_sample_matches_running_it_alone",
    "test_solver.py::test_undamped_solve_is_plain_iteration_bit_for_bit_until_eta_decays",
    "test_spectral_constraint.py::test_every_step_hold_keeps_the_step_gain_within_ten_percent_after_200_steps",
    "test_train.py::test_checkpoint_resume_is_exact",
    "test_train.py::test_loss_decreases_and_logs",
    "test_train.py::test_same_seed_same_loss_history",
    "test_training_pieces.py::test_training_piece_runs",
}
"""In-process tests that train, solve or bootstrap for many seconds (each over FAST_TEST_S in a
`make test-fast` run on 2 shared cores): slow, so the fast tier stays near 2 minutes. They still
run in `make test` and CI."""

FAST_TEST_S = 5.0
"""A fast-tier test slower than this is listed at the end of the run as a candidate for `slow`."""


SHORT_TMP_KEPT = 3
"""Runs whose temp folders under /tmp/fprt are kept (as pytest keeps its last 3 pytest-N)."""


def _short_basetemp() -> str:
    """A short temp root for a parallel run. pytest-xdist puts each worker's temp dirs one level
    deeper (popen-gwN/), and Ray's socket paths under a test's temp dir must stay within 107 bytes:
    under /tmp/pytest-of-<user>/pytest-<N>/popen-gw1/ the multi-node tests' raylets fail to start."""
    root = Path(tempfile.gettempdir()) / "fprt"
    root.mkdir(exist_ok=True)
    for old in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)[:-SHORT_TMP_KEPT + 1]:
        shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix="r", dir=root)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput") \
            and not config.option.basetemp:
        config.option.basetemp = _short_basetemp()
    # The state-signing key is created once here, before pytest-xdist's workers race to create it.
    from orchestrator.run import trust

    trust._key()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        name = f"{path.name}::{getattr(item, 'originalname', item.name)}"
        if (path.stem in SLOW_MODULES or name in SLOW_TESTS or name in LONG_IN_PROCESS
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)
    # Slow tests first (in their files' order), so the longest start early and the many short
    # in-process tests fill both workers at the end instead of one worker finishing a cluster alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _fast_tier(config: pytest.Config) -> bool:
    return "not slow" in (config.getoption("markexpr", "") or "")


@pytest.fixture(autouse=True)
def _fast_tier_stays_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """In the fast tier: a Python subprocess, Ray or torch.compile fails the test, naming the fix."""
    if not _fast_tier(request.config):
        yield
        return
    hint = (f"{request.node.nodeid} is in the fast tier but {{}}: mark it slow (SLOW_MODULES or "
            "SLOW_TESTS in tests/conftest.py, or @pytest.mark.slow)")
    real_init = subprocess.Popen.__init__

    def popen_init(self, args, *a, **kw):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        program = os.path.basename(str(argv[0])) if argv else ""
        if program.startswith("python") or program in ("fpr-sweep", "ray", "mlflow") or str(argv[0]) == sys.executable:
            pytest.fail(hint.format(f"starts `{program}` in a subprocess"), pytrace=False)
        real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    import torch  # nearly every fast test imports it anyway

    def no_compile(*a, **kw):
        pytest.fail(hint.format("calls torch.compile"), pytrace=False)

    monkeypatch.setattr(torch, "compile", no_compile)
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(hint.format("started Ray"), pytrace=False)


_fast_tier_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Setup + call + teardown seconds per test (on the controller too when xdist runs workers)."""
    _fast_tier_seconds[report.nodeid] = _fast_tier_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if not _fast_tier(config):
        return
    over = sorted(((s, n) for n, s in _fast_tier_seconds.items() if s > FAST_TEST_S), reverse=True)
    if over:
        terminalreporter.section(f"fast-tier tests over {FAST_TEST_S:g} s (candidates for the slow tier)")
        for took, nodeid in over:
            terminalreporter.line(f"{took:6.1f} s  {nodeid}")


# ---------------------------------------------------------------- fixtures

def write_spec(directory: Path, **spec) -> Path:
    """Write a sweep spec (tiny budget unless ``base`` is given) and return its path."""
    spec.setdefault("base", TINY_BASE)
    spec.setdefault("results_dir", str(directory / "results"))
    path = directory / f"{spec['name'].replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole test session; run_sweep joins it instead of starting its own."""
    import ray

    ray.shutdown()  # something may have started Ray implicitly (e.g. ray.get_runtime_context())
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()
