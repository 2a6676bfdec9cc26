"""Prefix sums: a known parity string, determinism, and a verifier that checks by the rules."""
import numpy as np
import pytest

from fpr_core.tasks import TaskData, get_task


@pytest.fixture(scope="module")
def task():
    return get_task("prefix_sums")


def test_known_parity_string(task):
    bits = np.array([[1, 0, 1, 1, 0, 0, 1, 0]])
    expected = np.array([[1, 1, 0, 1, 1, 1, 0, 0]])
    data = TaskData(bits, expected, np.ones_like(bits, dtype=bool), {}, 8)
    assert task.verify(data, expected).tolist() == [True]
    assert task.verify(data, 1 - expected).tolist() == [False]


def test_generate_shapes_meta_and_targets(task):
    data = task.generate(50, 24, seed=3)
    assert data.inputs.shape == data.targets.shape == data.mask.shape == (50, 24)
    assert data.inputs.dtype == data.targets.dtype == np.int64 and data.mask.all()
    assert set(np.unique(data.inputs)) <= {0, 1}
    assert (data.meta["length"] == 24).all()
    assert (data.meta["n_ones"] == data.inputs.sum(1)).all()
    # the last target is the parity of the whole string
    assert (data.targets[:, -1] == data.inputs.sum(1) % 2).all()


def test_verifier_recomputes_from_input_and_rejects_one_flipped_bit(task):
    data = task.generate(30, 32, seed=1)
    assert task.verify(data, data.targets).all()
    corrupted = data.targets.copy()
    corrupted[np.arange(30), np.arange(30) % 32] ^= 1
    assert not task.verify(data, corrupted).any()
    # a tampered stored target does not fool the verifier: it recomputes from the input
    tampered = TaskData(data.inputs, corrupted, data.mask, data.meta, data.size)
    assert not task.verify(tampered, corrupted).any()
    assert task.verify(tampered, data.targets).all()


def test_rejects_params_and_bad_shapes(task):
    with pytest.raises(ValueError, match="prefix_sums"):
        get_task("prefix_sums", length=3)
    data = task.generate(4, 8, 0)
    with pytest.raises(ValueError, match="shape"):
        task.verify(data, data.targets[:, :4])
