"""Trial ids survive fpr_core growing new config fields: the committed study's ids reproduce, and a
trial that sets a new field away from its default gets a new id."""
from pathlib import Path

import pyarrow.parquet as pq

from fpr_core.config import ModelConfig, _entry_pinned, identity_sections
from orchestrator.sweep.expand import expand, trial_hash
from orchestrator.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
STUDY = "ood_generalization_cpu_previous"
"""The committed study these ids were pinned on (the confirmatory run of the redesigned spec writes
results/ood_generalization_cpu; this one moved aside, its spec copy beside it)."""
FIRST_STUDY_SPEC = Path(__file__).resolve().parent / "data" / "study_2026_round1" / "spec.yaml"
"""The spec of the first committed study (42 trials): its ids are pinned literally below."""


def pinned_entry_id(cell) -> str:
    """The cell's id with model.loop_entry set to what its pinned trial ran (issue 26 made a plain
    entry the default without recall and with internal recall: those trials are new ones)."""
    model = cell.sections["model"]
    old = {**cell.sections, "model": {**model, "loop_entry": _entry_pinned(model)}}
    return trial_hash(cell.task, cell.task_params, cell.train_size, cell.ood_sizes, old, cell.seed)


def test_committed_study_trial_ids_reproduce():
    committed = pq.read_table(ROOT / "results" / STUDY / "results.parquet", columns=["trial_id"])
    # the spec copy the committed run read (sweeps/ may since have moved on to new trials)
    cells = expand(load_spec(ROOT / "results" / STUDY / "spec.yaml"))
    assert {pinned_entry_id(c) for c in cells} == set(committed.column(0).to_pylist())
    # exactly the trials whose behaviour the new default changed (a2 shrink -> plain entry) got new ids
    for c in cells:
        ran_plain = ModelConfig.from_dict(c.sections["model"]).entry_form() == "plain"
        assert (c.cell_id != pinned_entry_id(c)) == ran_plain, c.variant
    assert sum(c.cell_id != pinned_entry_id(c) for c in cells) == 24  # none/internal at spectral 2 or null


def test_new_field_counts_only_away_from_its_default():
    cell = next(c for c in expand(load_spec(ROOT / "sweeps" / "ood_generalization_cpu.yaml"))
                if c.sections["model"]["mixer"] == "attention")
    assert "mixer" in cell.sections["model"]
    assert "mixer" not in identity_sections(cell.sections)["model"]
    moved = {**cell.sections, "model": {**cell.sections["model"], "mixer": "conv"}}
    assert identity_sections(moved)["model"]["mixer"] == "conv"
    args = (cell.task, cell.task_params, cell.train_size, cell.ood_sizes)
    assert trial_hash(*args, moved, cell.seed) != trial_hash(*args, cell.sections, cell.seed) == cell.cell_id


def test_known_trial_and_spec_hashes_are_pinned():
    """Literal ids of the first committed study: a change to hashing, expansion or spec loading that
    renamed trials (so `fpr-sweep run` would retrain finished ones) fails here."""
    # expanded, not planned: `run` now refuses its no-recall arms under truncated:8 (issue 26)
    spec = load_spec(FIRST_STUDY_SPEC)
    cells = expand(spec)
    first = cells[0]
    assert (pinned_entry_id(first), first.task, first.variant, first.seed) == (
        "fbdda8530f", "mazes", "recall=none,outer_norm=rms,spectral=null", 0)
    assert spec.spec_hash() == "a7fc38a351fe"
    assert len({pinned_entry_id(c) for c in cells}) == 42


def test_committed_study_rows_name_one_spec():
    committed = pq.read_table(ROOT / "results" / STUDY / "results.parquet", columns=["spec_hash"])
    spec_hash = load_spec(ROOT / "results" / STUDY / "spec.yaml").spec_hash()
    assert set(committed.column(0).to_pylist()) == {spec_hash}
