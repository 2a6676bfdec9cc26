"""Shared fixtures (one Ray session for every in-process Ray test, tiny sweep specs written to tmp
dirs) and the test tiers.

The tiers (docs/testing.md):
- `make test-fast` = `pytest -m "not slow"`: every in-process test, under a minute on 2 cores.
- `make test` = everything, as CI runs it, on two pytest workers (pytest-xdist).

A test is `slow` when it leaves the process or waits on real services: it starts Ray, runs
`fpr-sweep` (or any Python) in a subprocess, starts a real server (MLflow, sshd) or calls
`torch.compile`; or when it trains or solves in-process for many seconds (LONG_IN_PROCESS). The marking lives here rather than in each file: every test that uses a fixture
in SLOW_FIXTURES, every test of a module in SLOW_MODULES and every test named in SLOW_TESTS is
marked slow (a file may also mark itself with `pytestmark = pytest.mark.slow`, or a test with
`@pytest.mark.slow`). A new file is fast by default. In the fast tier a test that starts a Python
subprocess, Ray or torch.compile anyway fails with a message naming this file, and every test that
took more than FAST_TEST_S is listed at the end, so a misfiled test is found at once.

`make test` runs on pytest-xdist workers with OneQueueScheduling: tests are sorted longest first
(EXPECTED_S, then the other slow tests, then the fast ones) and a worker that finishes takes the next
from one shared queue, so the run ends on short in-process tests on every worker instead of one
worker finishing a queue of long tests alone (xdist's default hands each worker a quarter of its
share at once, in order: one worker got most of the slow tier). The tests of a module in
SHARED_FIXTURE_MODULES go to one worker together, so their module-scoped fixture (a cluster, a
finished sweep) is built once. Each worker that gets a `ray_session` test starts its own session
Ray. (`--dist loadgroup` would group tests, but it does nothing with pytest 9.2 and pytest-xdist
3.8: xdist sets a node attribute pytest no longer reads.)
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
    "test_figures",          # the committed study's figures drawn (~30 s)
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
    "test_board_mask.py::test_a_board_masked_model_trains_and_evaluates",
    "test_selection.py::test_run_experiment_with_selection_evaluates_the_selected_weights",
    "test_selection.py::test_the_best_weights_survive_a_resume",
    "test_selection.py::test_selection_returns_the_best_scoring_weights_not_the_last",
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

EXPECTED_S = {
    "test_launcher.py::test_ray_up_job_submit_rsync_down_ray_down": 251,
    "test_shipped_smoke.py::test_every_shipped_spec_runs_with_smoke[ood_generalization_cpu]": 239,
    "test_moved_sweep.py::test_a_copied_sweep_serves_reads_and_writes_only_its_own_artifacts": 130,
    "test_interrupt_summary.py::test_an_interrupted_run_reads_true_and_resumes_with_the_same_codes": 109,
    "test_shipped_smoke.py::test_every_benchmark_runs_with_smoke[bench_orchestration]": 106,
    "test_slow_tracking.py::test_a_slow_tracking_server_is_called_slow_and_its_writes_wait_in_the_spool": 96,
    "test_shipped_smoke.py::test_every_benchmark_runs_with_smoke[bench_scale]": 90,
    "test_faults_more.py::test_a_driver_woken_after_losing_its_lock_stops_before_its_next_write": 83,
    "test_stops.py::test_sigterm_stops_like_ctrl_c_one_driver_per_sweep_and_the_resume_is_exact": 82,
    "test_faults_more.py::test_a_failed_retry_never_replaces_a_finished_trials_ok_rows": 79,
    "test_outage.py::test_server_killed_mid_sweep_loses_nothing_and_folders_never_share_runs": 77,
    "test_shipped_smoke.py::test_every_shipped_spec_runs_with_smoke[cpu_profiles]": 77,
    "test_shipped_smoke.py::test_every_shipped_spec_runs_with_smoke[quickstart]": 75,
    "test_resume.py::test_killed_sweep_resumes_without_loss_or_duplicates[state-intact]": 74,
    "test_tasks_learn.py::test_profile_beats_chance[mazes]": 73,
    "test_resume.py::test_killed_sweep_resumes_without_loss_or_duplicates[state-truncated]": 71,
    "test_shipped_smoke.py::test_every_benchmark_runs_with_smoke[bench_reeval]": 70,
    "test_tasks_learn.py::test_profile_beats_chance[chess]": 68,
    "test_faults_hung.py::test_a_hung_evaluation_ends_timed_out_and_a_resume_does_not_train_it_again": 63,
    "test_faults.py::test_raising_trials_retry_then_fail_and_diverged_trials_are_not_retried": 62,
    "test_disk_full.py::test_disk_full_stops_with_one_message_and_the_next_run_resumes": 61,
    "test_tasks_learn.py::test_profile_beats_chance[prefix_sums]": 55,
    "test_tasks_learn.py::test_profile_beats_chance[state_tracking]": 49,
    "test_tasks_learn.py::test_profile_beats_chance[sudoku]": 47,
    "test_models_e2e.py::test_models_kept_series_fields_and_eval_on_new_sizes": 46,
    "test_moved_sweep.py::test_a_folder_moved_with_writes_pending_sends_them_to_its_own_store_at_the_new_path": 45,
    "test_faults_hung.py::test_a_trial_past_max_trial_minutes_ends_timed_out_with_its_rows": 45,
    "test_tracking.py::test_server_killed_and_restarted_loses_and_duplicates_nothing": 44,
    "test_e2e_sweep.py::test_grid_sweep_writes_rows_runs_and_failures": 44,
    "test_multinode.py::test_worker_node_killed_mid_trial_is_retried_and_the_sweep_completes": 40,
    "test_faults_more.py::test_sigterm_to_the_process_group_stops_the_driver_cleanly[kill-group]": 38,
    "test_multinode.py::test_two_sweeps_share_the_cluster_and_use_both_nodes": 37,
    "test_safe_defaults.py::test_secrets_never_reach_results_runs_or_files_and_no_dashboard_listens": 35,
    "test_cluster_resources.py::test_the_run_waits_for_the_autoscaler_to_add_a_gpu_node_then_trains_there": 31,
}
"""About the seconds the longest tests take in a `make test` run on 2 cores (keys: file, file::test
or file::test[params]; from the per-test times of full runs, which `make test` prints at its end).
Only their order matters: `make test` starts them first, longest first, so that no long test starts
last. A slow test not listed counts as SLOW_DEFAULT_S, a fast one as 0; ties keep their files' order."""

SLOW_DEFAULT_S = 20.0

SHARED_FIXTURE_MODULES = {
    "test_faults_more",  # finished_sweep: a sweep run by the CLI, read by most of its tests
    "test_multinode",    # cluster: a two-node `ray start` cluster
}
"""Modules whose tests run on one worker, one after the other: their module-scoped fixture is
expensive, and split across workers it is built (and torn down) once per worker and per switch."""

FAST_TEST_S = 5.0
"""A fast-tier test slower than this is listed at the end of the run as a candidate for `slow`."""


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Thread-count variables a parallel run sets to 1 (pytest_configure)."""

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
    parallel = config.getoption("numprocesses", None) and not hasattr(config, "workerinput")
    if parallel and not config.option.basetemp:
        config.option.basetemp = _short_basetemp()
    if parallel:
        # One intra-op thread per process, set before the workers start so that they, and every
        # fpr-sweep, benchmark and Ray process they spawn, inherit it. With torch's default (one
        # thread per core) three workers on 2 cores spin-wait on each other's cores: the every-step
        # spectral hold's 20 steps took 42 s that way beside a busy process, 3.1 s on one thread.
        for var in THREAD_VARS:
            os.environ[var] = "1"
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
    # Longest first, so the many short in-process tests fill every worker at the end instead of one
    # worker finishing a long test alone.
    items.sort(key=lambda item: -_expected_seconds(item))


def _expected_seconds(item: pytest.Item) -> float:
    """EXPECTED_S of the test (by id, then function, then file); else SLOW_DEFAULT_S or 0."""
    path = Path(str(item.fspath)).name
    for key in (f"{path}::{item.name}", f"{path}::{getattr(item, 'originalname', item.name)}", path):
        if key in EXPECTED_S:
            return EXPECTED_S[key]
    return SLOW_DEFAULT_S if item.get_closest_marker("slow") else 0.0


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: pytest-xdist may be absent
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """One shared queue of tests, in collection order (the module docstring says why)."""
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class OneQueueScheduling(LoadScopeScheduling):
        """Work units of one test (of one module in SHARED_FIXTURE_MODULES), handed out in
        collection order, one more whenever a worker has at most one queued."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).stem in SHARED_FIXTURE_MODULES else nodeid

    config.option.loadscopereorder = False  # keep the longest-first order
    return OneQueueScheduling(config, log)


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
