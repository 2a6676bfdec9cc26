"""The live display on an 80x24 terminal: one log line per trial event (no copies of anything in
the scrollback), a live region that always fits the screen, short variant codes with a legend,
pending count and ETA; Ray/Tune messages with wrong advice are dropped."""
from __future__ import annotations

import io
import logging
import re
import sys

from rich.console import Console

from orchestrator.console import SweepProgress, quiet_ray_messages

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
VARIANTS = [f"recall={r},outer_norm={n},spectral=contractive" for r in ("none", "standard", "internal")
            for n in ("none", "rms")]


def _terminal(width: int = 80, height: int = 24) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, height=height, color_system=None), out


def _plain(out: io.StringIO) -> list[str]:
    return [ANSI.sub("", line) for line in out.getvalue().splitlines()]


def test_events_print_once_and_the_live_region_fits_80x24():
    console, out = _terminal()
    progress = SweepProgress(console, total=40, title="ood_generalization_cpu")
    progress.start()
    try:
        for i in range(30):  # more running trials than the screen has rows
            variant = VARIANTS[i % len(VARIANTS)]
            progress.started(f"{i:010x}", "prefix_sums", variant, i % 3)
            progress.result(f"{i:010x}", "prefix_sums", variant, i % 3, 100, "train/loss=0.5123")
        lines = console.render_lines(progress._render(), console.options, pad=False)
        assert len(lines) <= 24 - 2  # always below the screen height: rich redraws it in place
        assert max(sum(len(s.text) for s in line) for line in lines) <= 80
        text = "\n".join("".join(s.text for s in line) for line in lines)
        assert "v6" in text and "recall=" not in text  # codes, not labels cut to 'recall=none…'
        words = " ".join(text.split())  # the summary may wrap at 80 columns
        assert "30 running · 10 pending" in words and "ETA --" in words
        assert "more running" in text
        for i in range(10):
            progress.finished(f"{i:010x}", "prefix_sums", VARIANTS[i % len(VARIANTS)], i % 3, "ok",
                              "acc/ood_64=0.750")
        progress.finished("0000000000", "prefix_sums", VARIANTS[0], 0, "ok")  # re-reported: ignored
    finally:
        progress.stop()
    plain = _plain(out)
    for i in range(10):
        finished = [l for l in plain if f"{i:010x}" in l and "ok" in l and "acc/ood_64=0.750" in l]
        assert len(finished) == 1, (i, finished)
    legend = [l for l in plain if l.startswith("variant v")]
    assert legend == [f"variant v{k + 1} = {v}" for k, v in enumerate(VARIANTS)]
    assert plain[-1].startswith("ood_generalization_cpu 10/40 done · 20 running · 10 pending")
    assert "ETA ~" in plain[-1]


def test_eta_is_remaining_trials_at_the_observed_rate():
    console, _ = _terminal()
    progress = SweepProgress(console, total=10, already_done=2)
    progress.started("a", "mazes", "base", 0)
    assert progress.eta_seconds() is None
    progress.finished("a", "mazes", "base", 0, "ok")
    progress._first_start = 1000.0
    assert progress.eta_seconds(now=1060.0) == 7 * 60.0  # one trial a minute, 7 left
    assert progress.counts() == {"running": 0, "failed": 0, "pending": 7}


def test_pipe_output_is_one_line_per_event_with_counts():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=160)
    progress = SweepProgress(console, total=2, title="quickstart")
    progress.start()
    progress.started("t1", "mazes", "recall=none", 0)
    progress.finished("t1", "mazes", "recall=none", 0, "failed")
    progress.stop()
    plain = _plain(out)
    assert plain[0].startswith("[0/2] started  mazes recall=none s0 t1")
    assert plain[1].startswith("[1/2] failed   mazes recall=none s0 t1")
    assert plain[2].startswith("quickstart 1/2 done · 0 running · 1 pending · 1 failed")


def test_ray_log_handlers_write_above_the_live_region_while_it_runs():
    console, out = _terminal()
    handler = logging.StreamHandler(sys.__stderr__)
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    try:
        progress = SweepProgress(console, total=1)
        progress.start()
        assert handler.stream is sys.stderr and sys.stderr is not sys.__stderr__
        ray_logger.warning("a message from Ray")
        progress.stop()
        assert handler.stream is sys.__stderr__
    finally:
        ray_logger.removeHandler(handler)
    assert "a message from Ray" in out.getvalue()


def test_wrong_advice_from_ray_and_tune_is_dropped():
    import ray._private.authentication.authentication_token_setup as auth
    import ray.tune.analysis.experiment_analysis as analysis
    import ray.tune.tune as tune_module
    import ray.tune.utils.util as tune_util

    quiet_ray_messages()
    quiet_ray_messages()  # idempotent
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    messages = {tune_module.logger: ["Experiment has been interrupted, but the most recent state was saved.\n"
                                     "Resume experiment with: Tuner.restore(path=\"/x\", trainable=...)",
                                     "Total run time: 3.00 seconds"],
                analysis.logger: ["Failed to fetch metrics for 2 trial(s):\n- t1: ValueError()"],
                tune_util.logger: ["The `process_trial_result` operation took 2.747 s, which may be a "
                                   "performance bottleneck."],
                auth.logger: ["Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled"]}
    for logger, texts in messages.items():
        keep = Keep()
        logger.addHandler(keep)
        try:
            for text in texts:
                logger.warning(text)
        finally:
            logger.removeHandler(keep)
    assert seen == ["Total run time: 3.00 seconds"]
