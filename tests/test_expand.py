"""Expansion: trial counts, stable trial ids, precedence of overrides, smoke budgets, search values."""
from __future__ import annotations

import csv
import re

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.expand import SweepGrid, expand, resolve, trial_count, trial_hash
from orchestrator.sweep.spec import load_spec

from conftest import write_spec

runner = CliRunner()
TASKS = [{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16, 32]},
         {"name": "prefix_sums", "params": {}, "train_size": 12, "ood_sizes": [24]}]


@pytest.mark.parametrize("axes,seeds,samples", [({}, [0], None), ({"model.recall": ["none", "standard"]}, [0, 1, 2], None),
                                                ({"model.recall": ["none", "internal"], "model.outer_norm": ["none", "rms", "layer"]}, [3], 4)])
def test_dry_run_counts_match_grid_tasks_seeds_samples(spec_dir, axes, seeds, samples):
    # two entries of the same task family need distinct params; use one task entry per family here
    tasks = TASKS[:1]
    spec = {"name": "count", "tasks": tasks, "axes": axes, "seeds": seeds}
    if samples:
        spec["search"] = {"num_samples": samples, "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}
    path = write_spec(spec_dir, **spec)
    n_grid = 1
    for values in axes.values():
        n_grid *= len(values)
    expected = n_grid * len(tasks) * len(seeds) * (samples or 1)
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert re.search(rf"= {expected} trials", result.output), result.output
    assert trial_count(load_spec(path), expand(load_spec(path))) == expected


def test_task_axes_replace_the_global_axis_for_that_task_only(spec_dir):
    cheap = dict(TASKS[0])
    costly = dict(TASKS[1], params={}, axes={"model.outer_norm": ["rms"]})
    path = write_spec(spec_dir, name="per-task", tasks=[cheap, costly],
                      axes={"model.recall": ["none", "standard"], "model.outer_norm": ["none", "rms"]})
    cells = expand(load_spec(path))
    per_task = {size: [c for c in cells if c.train_size == size] for size in (8, 12)}
    assert len(per_task[8]) == 4 and len(per_task[12]) == 2
    assert {c.sections["model"]["outer_norm"] for c in per_task[12]} == {"rms"}
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0 and re.search(r"= 6 trials", result.output), result.output


def test_task_seeds_add_seeds_to_one_arm_without_changing_shared_trial_ids(spec_dir):
    """More seeds for one arm: a second entry of the same task narrowed to that arm, with its own
    (further) seeds. The first entry's trials keep the ids a one-entry spec gives them."""
    axes = {"model.recall": ["none", "standard"]}
    one = write_spec(spec_dir, name="one", tasks=TASKS[:1], axes=axes, seeds=[0, 1])
    split = write_spec(spec_dir, name="split", axes=axes, seeds=[0, 1],
                       tasks=[TASKS[0], dict(TASKS[0], axes={"model.recall": ["none"]}, seeds=[2, 3, 4])])
    base_ids = {(c.variant, c.seed): c.cell_id for c in expand(load_spec(one))}
    cells = expand(load_spec(split))
    assert sorted((c.variant, c.seed) for c in cells) == sorted(
        [("recall=none", s) for s in range(5)] + [("recall=standard", s) for s in (0, 1)])
    assert all(base_ids[(c.variant, c.seed)] == c.cell_id for c in cells if c.seed < 2)
    result = runner.invoke(app, ["run", str(split), "--dry-run"])
    assert result.exit_code == 0 and re.search(r"= 7 trials", result.output), result.output
    assert load_spec(one).spec_hash() == load_spec(write_spec(spec_dir, name="one-again", tasks=TASKS[:1], axes=axes,
                                                             seeds=[0, 1])).spec_hash()
    bad = write_spec(spec_dir, name="bad", tasks=[dict(TASKS[0], seeds=[1, 1])])
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code != 0 and "seeds repeat" in result.output, result.output


def test_trial_ids_are_stable_and_ignore_spelling(spec_dir):
    a = write_spec(spec_dir, name="a", tasks=TASKS[:1], axes={"model.recall": ["none", "standard"]})
    # same trials, spelled with an explicit default and a different name/description
    b = write_spec(spec_dir, name="b", description="x", tasks=TASKS[:1],
                   axes={"model.recall": ["none", "standard"]},
                   base={**__import__("conftest").TINY_BASE, "eval": {**__import__("conftest").TINY_BASE["eval"],
                                                                       "batch_size": 64}})
    ids_a = [c.cell_id for c in expand(load_spec(a))]
    ids_b = [c.cell_id for c in expand(load_spec(b))]
    assert ids_a == ids_b and len(set(ids_a)) == 2
    assert ids_a == [c.cell_id for c in expand(load_spec(a))]  # deterministic across calls


def test_seed_and_task_change_the_id(spec_dir):
    path = write_spec(spec_dir, name="s", tasks=TASKS[:1], seeds=[0, 1])
    c0, c1 = expand(load_spec(path))
    assert c0.cell_id != c1.cell_id and (c0.seed, c1.seed) == (0, 1)


def test_precedence_base_override_axis(spec_dir):
    path = write_spec(spec_dir, name="p", tasks=[dict(TASKS[0], overrides={"solver.eval_cap": 20})],
                      axes={"train.steps": [3, 4]})
    cells = expand(load_spec(path))
    assert [c.sections["train"]["steps"] for c in cells] == [3, 4]
    assert all(c.sections["solver"]["eval_cap"] == 20 for c in cells)
    assert cells[0].variant == "steps=3"
    assert cells[0].splits() == ["id", "ood_16", "ood_32"]


def test_grad_shorthand_axis_resolves_to_fields(spec_dir):
    path = write_spec(spec_dir, name="g", tasks=TASKS[:1], axes={"grad": ["bptt", "truncated:3"]})
    cells = expand(load_spec(path))
    assert [(c.sections["grad"]["mode"], c.sections["grad"]["k"]) for c in cells] == [("bptt", 4), ("truncated", 3)]
    assert cells[1].variant == "grad=truncated:3"


def test_smoke_shrinks_budget_and_keeps_ids_distinct(spec_dir):
    path = write_spec(spec_dir, name="sm", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16, 32, 64]}],
                      seeds=[0, 1], base={"train": {"steps": 500}})
    spec = load_spec(path)
    full, smoke = expand(spec), expand(spec, smoke=True)
    assert len(full) == 2 and len(smoke) == 1
    assert smoke[0].sections["train"]["steps"] == 30 and smoke[0].ood_sizes == (16, 32)
    assert smoke[0].cell_id != full[0].cell_id


@pytest.mark.parametrize("law, smoke_law", [("task", "linear"), ("quadratic", "linear"), ("fixed", "fixed")])
def test_smoke_caps_grow_at_most_linearly_with_size(spec_dir, law, smoke_law):
    """Mazes' own law is quadratic: --smoke bounds it to linear (its models never settle, so every
    instance runs to the cap), and keeps a slower law as it is."""
    path = write_spec(spec_dir, name="cl", tasks=[{"name": "mazes", "train_size": 9, "ood_sizes": [17, 33]}],
                      base={"solver": {"eval_cap": 52, "eval_cap_law": law}})
    spec = load_spec(path)
    (full,), (smoke,) = expand(spec), expand(spec, smoke=True)
    assert full.sections["solver"]["eval_cap_law"] == law
    assert smoke.sections["solver"]["eval_cap_law"] == smoke_law and smoke.sections["solver"]["eval_cap"] == 12


def test_search_values_change_the_trial_id(spec_dir):
    path = write_spec(spec_dir, name="sv", tasks=TASKS[:1])
    cell = expand(load_spec(path))[0]
    assert resolve(cell).trial_id == cell.cell_id
    t = resolve(cell, {"train.lr": 0.003})
    assert t.trial_id != cell.cell_id and t.sections["train"]["lr"] == 0.003
    assert t.experiment_config()["train"]["lr"] == 0.003
    assert resolve(cell, {"train.lr": 0.003}).trial_id == t.trial_id


def test_duplicate_grid_values_are_rejected(spec_dir):
    path = write_spec(spec_dir, name="dup", tasks=TASKS[:1], axes={"model.dim": [16, 16]})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "same config" in result.output


LAZY_AXES = {"model.dim": [16, 32], "model.heads": [2, 4], "grad": ["bptt", "truncated:3"],
             "train.lr": [0.001, 0.01], "eval.n_eval": [8, 16]}


def test_lazy_grid_ids_hash_the_resolved_config_and_resume_mid_grid(spec_dir):
    path = write_spec(spec_dir, name="lazy", tasks=[dict(TASKS[0], overrides={"solver.eval_cap": 20}), TASKS[1]],
                      axes=LAZY_AXES, seeds=[0, 1])
    grid = SweepGrid(load_spec(path))
    cells = list(grid.cells())
    assert len(cells) == len(grid) == 2 * 32 * 2
    for c in cells:
        assert c.cell_id == trial_hash(c.task, c.task_params, c.train_size, c.ood_sizes, c.sections, c.seed)
    assert {(c.sections["model"]["dim"], c.sections["model"]["heads"]) for c in cells} == {(16, 2), (16, 4), (32, 2), (32, 4)}
    assert [c.cell_id for c in grid.cells(77)] == [c.cell_id for c in cells[77:]]
    assert grid.train_steps() == len(cells) * 10 and grid.max_train_steps() == 10


def test_a_bad_combination_within_one_section_names_the_grid_cell(spec_dir):
    path = write_spec(spec_dir, name="combo", tasks=TASKS[:1], axes={"model.dim": [16, 18], "model.heads": [2, 4]})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "dim=18,heads=4" in result.output, result.output


def test_validate_and_dry_run_count_a_million_cells_without_listing_them(spec_dir):
    ten = lambda start, step: [start + step * i for i in range(10)]  # noqa: E731
    axes = {"train.lr": [round(0.001 * (i + 1), 4) for i in range(10)], "train.steps": ten(10, 10),
            "solver.eval_cap": ten(8, 1), "eval.n_eval": ten(8, 8), "model.mlp_ratio": [1.0 + 0.5 * i for i in range(10)]}
    path = write_spec(spec_dir, name="million", tasks=TASKS[:1], axes=axes, seeds=list(range(10)))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "(1000000 trials" in result.output, result.output
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0 and "= 1000000 trials" in result.output and "999980 more" in result.output
    assert len(result.output.splitlines()) < 60


def test_dry_run_all_writes_every_trial_to_a_file(spec_dir):
    path = write_spec(spec_dir, name="all", tasks=TASKS[:1], axes=LAZY_AXES)
    out = spec_dir / "trials.csv"
    result = runner.invoke(app, ["run", str(path), "--dry-run", "--all", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["trial"] for r in rows] == [c.cell_id for c in expand(load_spec(path))] and len(rows) == 32


def test_size_guard_asks_for_yes_or_max_trials(spec_dir):
    axes = {"train.lr": [0.001 * (i + 1) for i in range(101)], "train.steps": list(range(10, 110))}
    path = write_spec(spec_dir, name="huge", tasks=TASKS[:1], axes=axes)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "10,100 trials" in result.output and "--yes" in result.output, result.output
    assert "training steps" in result.output and not (spec_dir / "results").exists()
    capped = write_spec(spec_dir, name="capped", tasks=TASKS[:1], axes=axes, max_trials=10_000)
    result = runner.invoke(app, ["run", str(capped), "--yes"])
    assert result.exit_code == 2 and "max_trials" in result.output, result.output


def test_grid_feed_yields_unfinished_cells_and_resumes_from_its_saved_position(spec_dir):
    import pickle

    from ray.tune.search import Searcher

    from orchestrator.run.tune_space import GridFeed

    path = write_spec(spec_dir, name="feed", tasks=TASKS[:1], axes={"model.recall": ["none", "standard", "internal"]},
                      seeds=[0, 1])
    spec = load_spec(path)
    ids = [c.cell_id for c in expand(spec)]
    feed = GridFeed(spec, False, frozenset({ids[1]}))
    got = [feed.suggest(f"t{i}")["cell"]["cell_id"] for i in range(3)]
    assert got == [ids[0], ids[2], ids[3]]
    feed.save(str(spec_dir / "feed.json"))
    again = pickle.loads(pickle.dumps(feed))  # Tune pickles the searcher into tuner.pkl
    again.restore(str(spec_dir / "feed.json"))
    assert [again.suggest("x")["cell"]["cell_id"] for _ in range(2)] == ids[4:]
    assert again.suggest("y") == Searcher.FINISHED
