"""Registry, make_splits disjointness and the disk cache, shared by every task family."""
import os

import numpy as np
import pytest

from fpr_core.tasks import TASK_NAMES, Task, get_task, make_splits
from fpr_core.tasks import cache
from fpr_core.tasks.splits import derive_seed, instance_hashes

MINE = ["prefix_sums", "mazes", "state_tracking"]


def test_registry_lists_all_five_and_rejects_unknown_names():
    assert set(TASK_NAMES) == {"prefix_sums", "mazes", "sudoku", "chess", "state_tracking"}
    with pytest.raises(ValueError, match="unknown task 'sodoku'.*prefix_sums"):
        get_task("sodoku")


def test_registry_requires_exactly_one_matching_task_class(monkeypatch):
    import fpr_core.tasks as tasks
    monkeypatch.setitem(tasks._MODULES, "prefix_sums", "fpr_core.tasks.cache")
    with pytest.raises(ValueError, match="exactly one Task subclass.*found 0"):
        get_task("prefix_sums")


@pytest.mark.parametrize("name,size,params", [
    ("prefix_sums", 16, {}), ("mazes", 13, {}), ("state_tracking", 32, {}),
    ("state_tracking", 32, {"alphabet": "generators"}), ("sudoku", 14, {"box": "2x3"})])
def test_generation_is_deterministic_in_seed(name, size, params):
    task = get_task(name, **params)
    a, b, c = task.generate(20, size, 7), task.generate(20, size, 7), task.generate(20, size, 8)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_get_task_returns_the_named_task(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    assert task.default_train_size < min(task.default_ood_sizes)


def test_derive_seed_is_deterministic_and_label_dependent():
    assert derive_seed(0, "id", 0) == derive_seed(0, "id", 0)
    assert len({derive_seed(0, "id", 0), derive_seed(0, "id", 1), derive_seed(1, "id", 0),
                derive_seed(0, "train")}) == 4


def _hashes(data):
    return set(instance_hashes(data.inputs))


def _assert_disjoint(splits, n_eval):
    train = _hashes(splits["train"])
    evals = [k for k in splits if k != "train"]
    seen = set(train)
    for k in evals:
        assert len(splits[k]) == n_eval
        h = instance_hashes(splits[k].inputs)
        assert len(set(h)) == n_eval, f"{k} repeats an instance"
        assert not (set(h) & seen), f"{k} shares an instance with train or another eval split"
        seen |= set(h)


def test_make_splits_disjoint_where_collisions_are_frequent(tmp_path):
    # 8-bit strings: 256 possible; 200 train draws cover ~54% of them, so eval must skip many.
    task = get_task("prefix_sums")
    splits = make_splits(task, train_size=8, ood_sizes=(9, 10), n_train=200, n_eval=60, seed=0,
                         cache_dir=tmp_path)
    assert sorted(splits) == ["id", "ood_10", "ood_9", "train"]
    assert splits["id"].inputs.shape == (60, 8) and splits["ood_10"].inputs.shape == (60, 10)
    assert len(_hashes(splits["train"])) < 200  # collisions really happened in train
    _assert_disjoint(splits, 60)
    again = make_splits(task, train_size=8, ood_sizes=(9, 10), n_train=200, n_eval=60, seed=0,
                        cache_dir=False)
    for k in splits:
        assert np.array_equal(splits[k].inputs, again[k].inputs)


def test_make_splits_disjoint_for_tiny_mazes():
    # 5x5 grids hold 2x2 cells: 4 spanning trees x 12 (start, goal) pairs = 48 distinct mazes
    splits = make_splits("mazes", train_size=5, ood_sizes=(7,), n_train=30, n_eval=8, seed=3,
                         cache_dir=False)
    assert len(_hashes(splits["train"])) < 30
    _assert_disjoint(splits, 8)


def test_make_splits_raises_when_the_space_is_too_small():
    with pytest.raises(ValueError, match="prefix_sums.*too small"):
        make_splits("prefix_sums", train_size=3, ood_sizes=(), n_train=100, n_eval=5,
                    cache_dir=False)


def test_make_splits_defaults_come_from_the_task():
    task = get_task("prefix_sums")
    splits = make_splits(task, n_train=8, n_eval=4, cache_dir=False)
    assert set(splits) == {"train", "id"} | {f"ood_{s}" for s in task.default_ood_sizes}
    assert splits["train"].size == task.default_train_size


def test_cache_round_trip_is_identical_and_keyed_by_version(tmp_path, monkeypatch):
    task = get_task("prefix_sums")
    first = cache.generate_cached(task, 16, 12, seed=5, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    # a second call reads the file: make generate fail to prove it is not called
    monkeypatch.setattr(type(task), "generate", lambda *a, **k: pytest.fail("regenerated"))
    second = cache.generate_cached(task, 16, 12, seed=5, cache_dir=tmp_path)
    for attr in ("inputs", "targets", "mask"):
        assert np.array_equal(getattr(first, attr), getattr(second, attr))
        assert getattr(first, attr).dtype == getattr(second, attr).dtype
    assert first.meta.keys() == second.meta.keys() and second.size == 12
    assert all(np.array_equal(first.meta[k], second.meta[k]) for k in first.meta)
    monkeypatch.undo()
    # a new generator version is a different key, hence a different file
    monkeypatch.setattr(type(task), "version", "999")
    cache.generate_cached(task, 16, 12, seed=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_cache_default_dir_follows_env_and_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    task = get_task("prefix_sums")
    cache.generate_cached(task, 4, 6, seed=0, cache_dir=None)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    cache.generate_cached(task, 4, 6, seed=1, cache_dir=False)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1


def test_cache_ignores_a_corrupt_file(tmp_path):
    task = get_task("prefix_sums")
    path = cache.cache_path(tmp_path, task, 6, 4, 0)
    path.write_bytes(b"not an npz")
    data = cache.generate_cached(task, 4, 6, seed=0, cache_dir=tmp_path)
    assert np.array_equal(data.inputs, task.generate(4, 6, 0).inputs)
    assert os.path.getsize(path) > 100


def test_cache_is_keyed_by_task_params(tmp_path):
    s5, a5 = get_task("state_tracking", group="S5"), get_task("state_tracking", group="A5")
    x = cache.generate_cached(s5, 8, 10, seed=0, cache_dir=tmp_path)
    y = cache.generate_cached(a5, 8, 10, seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert x.inputs.max() < 120 and y.inputs.max() < 60


PROFILE_TASKS = [("prefix_sums", {}), ("mazes", {}), ("mazes", {"loss_mask": "open"}),
                 ("state_tracking", {}), ("state_tracking", {"alphabet": "generators"}),
                 ("sudoku", {"box": "2x2"}), ("sudoku", {"box": "2x3"}), ("chess", {})]


@pytest.mark.parametrize("name, params", PROFILE_TASKS)
def test_make_splits_every_task_small(name, params):
    """Verified instances, difficulty metadata, OOD splits disjoint from train, for every profile."""
    task = get_task(name, **params)
    sizes = (task.default_ood_sizes[0],)
    splits = make_splits(task, ood_sizes=sizes, n_train=64, n_eval=16, seed=1, cache_dir=False)
    _assert_disjoint(splits, 16)
    for split in splits.values():
        assert split.inputs.dtype == np.int64 and split.targets.dtype == np.int64
        assert split.mask.dtype == bool and split.inputs.shape == split.targets.shape
        assert all(v.shape == (len(split),) for v in split.meta.values())
        assert task.difficulty_key in split.meta
        assert task.verify(split, split.targets).all()


def test_numba_kernels_are_cached_in_the_user_cache_dir_not_the_source_tree(tmp_path):
    """A fresh interpreter compiles the maze and sudoku kernels: the cache files land under
    $XDG_CACHE_HOME/fpr-sweep/numba and nothing numba writes appears next to the sources."""
    import subprocess
    import sys
    from pathlib import Path

    import fpr_core.tasks
    source_dir = Path(fpr_core.tasks.__file__).parent
    before = {p for p in source_dir.rglob("*") if p.suffix in (".nbi", ".nbc")}
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = ("from fpr_core.tasks import get_task; get_task('mazes').generate(2, 9, 0); "
            "get_task('sudoku', box='2x2').generate(2, 4, 0); "
            "import numba; print(numba.config.CACHE_DIR)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    cache_dir = tmp_path / "fpr-sweep" / "numba"
    assert out.stdout.strip() == str(cache_dir)
    assert any(p.suffix == ".nbi" for p in cache_dir.rglob("*"))
    assert {p for p in source_dir.rglob("*") if p.suffix in (".nbi", ".nbc")} == before
