"""Paper figures (issue 32 item 7), drawn from the committed study's results.parquet (read only;
figures go to a temporary folder): every trial visible with the undertrained ones marked, at most
three lines per panel, intervals only from three or more learned seeds, PNG and PDF, drawn at half a
page's width with the legend inside it."""
from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.markers import MarkerStyle
from PIL import Image

from orchestrator.report import claims, plots
from orchestrator.sweep.layout import SweepDir
from orchestrator.report.frame import load_results, prepare
from orchestrator.store import parquet

STUDY = Path(__file__).resolve().parent.parent / "results" / "ood_generalization_cpu_previous"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    if not (STUDY / "results.parquet").exists():
        pytest.skip("the committed study's results.parquet is not in this checkout")
    copy = tmp_path_factory.mktemp("study")
    shutil.copy2(STUDY / "results.parquet", copy / "results.parquet")
    with parquet.read_only():
        frame = claims.with_halting(prepare(load_results(copy, halting=None)))
    return copy, frame[frame["halting"] == claims.TRAINED]


def _task(frame, task):
    return frame[(frame["task_label"] == task) & frame["status_ok"]]


def test_each_figure_is_png_and_pdf_at_half_a_page_width(study, tmp_path):
    _copy, frame = study
    written = plots.plot_task(frame, "prefix_sums", SweepDir(tmp_path))
    assert len(written) == 4
    for png in written:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        width_in = Image.open(png).size[0] / 300  # saved at 300 dpi
        assert width_in <= plots.FIG_WIDTH * 1.1, (png.name, width_in)  # a wider legend would widen it


def test_no_panel_holds_more_than_three_lines(study):
    _copy, frame = study
    rows = _task(frame, "prefix_sums")  # 3 recall placements x 6 contexts
    line_by, panels = plots.accuracy_panels(rows)
    assert line_by == "recall" and len(panels) == 6
    for _title, panel in panels:
        assert panel["recall"].nunique() <= plots.MAX_LINES


def test_every_trial_is_a_point_and_undertrained_ones_are_crosses(study):
    _copy, frame = study
    rows = _task(frame, "prefix_sums")
    sub = rows[rows["recall"] == "none"]  # 30 trials, 1 learned: the panel the old figure left empty
    fig, ax = plt.subplots()
    try:
        plots._accuracy_line(ax, sub, plots.styles(["none"])["none"], "recall=none", 1.0, None)
        points = {len(c.get_offsets()): c for c in ax.collections if not isinstance(c, PolyCollection)}
        learned = sub[sub["learned"]].groupby(["trial_id", "size"]).ngroups
        undertrained = sub[~sub["learned"]].groupby(["trial_id", "size"]).ngroups
        assert sorted(points) == sorted([learned, undertrained]) and learned > 0 and undertrained > 0
        cross = MarkerStyle("x")
        cross = cross.get_path().transformed(cross.get_transform()).vertices
        assert np.allclose(points[undertrained].get_paths()[0].vertices, cross)
        assert points[learned].get_paths()[0].vertices.shape != cross.shape
    finally:
        plt.close(fig)


@pytest.mark.parametrize("learned_seeds, banded", [(2, False), (3, True)])
def test_an_interval_needs_three_learned_seeds(study, learned_seeds, banded):
    _copy, frame = study
    rows = _task(frame, "sudoku")
    variant = rows["variant_label"].iloc[0]
    sub = rows[(rows["variant_label"] == variant) & rows["learned"]]
    seeds = sorted(sub["seed"].unique())[:learned_seeds]
    sub = sub[sub["seed"].isin(seeds)]
    fig, ax = plt.subplots()
    try:
        plots._accuracy_line(ax, sub, plots.styles(["v"])["v"], "v", 1.0, None)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert bool(bands) is banded
    finally:
        plt.close(fig)


def test_the_legend_fits_the_figure(study):
    _copy, frame = study
    fig, axes = plots._subplots(3)
    try:
        for i, ax in enumerate(np.ravel(axes)[:3]):
            ax.plot([1, 2], [0, 1], label=f"outer_norm=rms, spectral=0.5 (contractive), mixer=attention, variant {i}")
        legend = plots._legend(fig, axes)
        renderer = fig.canvas.get_renderer()
        assert legend.get_window_extent(renderer).width <= fig.get_window_extent(renderer).width
    finally:
        plt.close(fig)
