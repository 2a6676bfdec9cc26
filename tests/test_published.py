"""The report's first table: our headline figure (the papers' arm, at the size closest to the
published test/train ratio) beside the published one."""
from __future__ import annotations

import pandas as pd

from orchestrator.report.published import PUBLISHED, headline_split, headline_table


def _rows(task: str, variant: str, recall: str, sizes: dict[str, int], means: dict[str, float],
          halting: str = "trained") -> list[dict]:
    return [dict(task=task, variant=variant, recall=recall, outer_norm="rms", split=split, halting=halting, size=size,
                 n_seeds=5, n_learned=4, learned_mean=means[split]) for split, size in sizes.items()]


def _fmt(cell) -> str:
    return f"{cell['learned_mean']:.3f}"


MAZES = {"id": 9, "ood_17": 17, "ood_33": 33, "ood_59": 59}
PREFIX = {"id": 16, "ood_32": 32, "ood_64": 64, "ood_128": 128}


def test_headline_split_is_the_size_closest_to_the_published_ratio():
    mazes = pd.DataFrame(_rows("mazes", "v", "standard", MAZES, dict.fromkeys(MAZES, 1.0)))
    assert headline_split(mazes, 59 / 9) == "ood_59"
    assert headline_split(mazes[mazes["split"] != "ood_59"], 59 / 9) == "ood_33"
    prefix = pd.DataFrame(_rows("prefix_sums", "v", "standard", PREFIX, dict.fromkeys(PREFIX, 1.0)))
    assert headline_split(prefix, 16.0) == "ood_128"   # 8x is the closest we have to 16x
    assert headline_split(prefix, 4.0) == "ood_64"
    assert headline_split(prefix, None) == "ood_128"


def test_headline_table_reads_the_papers_arm_under_trained_halting_only():
    table = pd.DataFrame(
        _rows("mazes", "standard+rms", "standard", MAZES, {"id": 1.0, "ood_17": 0.99, "ood_33": 0.9, "ood_59": 0.7})
        + _rows("mazes", "standard+rms", "standard", MAZES, dict.fromkeys(MAZES, 0.1), halting="long")
        + _rows("mazes", "none+rms", "none", MAZES, dict.fromkeys(MAZES, 0.5))
        + _rows("state_tracking[alphabet=generators,group=S5]", "standard+rms", "standard",
                {"id": 16, "ood_32": 32, "ood_64": 64, "ood_128": 128},
                {"id": 1.0, "ood_32": 0.4, "ood_64": 0.06, "ood_128": 0.0}))
    header, body = headline_table(table, _fmt)
    assert header[0] == "task" and "published" in header
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in body] == [
        ("mazes", "standard+rms", "ood_59 (6.56×)", "0.700", "4/5"),
        ("state_tracking[alphabet=generators,group=S5]", "standard+rms", "ood_64 (4×)", "0.060", "4/5")]
    assert body[0][5] == PUBLISHED["mazes"].figure and "0.941" in body[1][5]
