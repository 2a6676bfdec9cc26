"""model.attention_mask 'board' (the task's own relations on a fixed board) and the 'squares' loss."""
import numpy as np
import pytest
import torch

from fpr_core.config import ConfigError, ExperimentConfig
from fpr_core.experiment import run_experiment
from fpr_core.losses import get_loss
from fpr_core.model.mixers import Attention
from fpr_core.tasks import get_task


def square(name: str) -> int:
    """Grid index of a square like 'a1' (row 0 is rank 8, column 0 is file a)."""
    return (8 - int(name[1])) * 8 + "abcdefgh".index(name[0])


def test_chess_squares_see_queen_lines_and_knight_jumps():
    seen = get_task("chess").board_mask()
    assert seen.shape == (64, 64) and (seen == seen.T).all() and seen.diagonal().all()
    assert seen[square("a1"), square("h8")] and seen[square("a1"), square("a8")]  # diagonal, file
    assert seen[square("b1"), square("c3")]  # knight
    assert seen[square("a1"), square("b3")] and not seen[square("a1"), square("b4")]  # knight; neither
    assert seen[square("d4")].sum() == 1 + 27 + 8  # itself, a queen's 27 squares, 8 knight jumps


def test_sudoku_cells_see_their_peers():
    seen = get_task("sudoku", box="2x3").board_mask()  # 6x6, boxes of 2 rows x 3 columns
    assert seen.shape == (36, 36) and (seen == seen.T).all()
    assert (seen.sum(1) == 1 + 5 + 5 + 2).all()  # itself, row, column, the box's cells in neither
    assert seen[0, 5] and seen[0, 30] and seen[0, 8] and not seen[0, 9]  # row, column, box, none


def test_masked_attention_ignores_what_a_token_may_not_see():
    torch.manual_seed(0)
    attn = Attention(16, 2, 3, causal=False, grid=False, init_std=0.5)
    allowed = torch.eye(6, dtype=torch.bool) | torch.diag(torch.ones(5, dtype=torch.bool), 1)
    attn.restrict_to(allowed)  # token i sees i and i + 1
    h = torch.randn(2, 6, 16)
    moved = h.clone()
    moved[:, 5] += 3.0  # only token 4 (and 5 itself) may see token 5
    out, out_moved = attn(h, (6,), None, 0.25), attn(moved, (6,), None, 0.25)
    assert torch.allclose(out[:, :4], out_moved[:, :4], atol=1e-6)
    assert not torch.allclose(out[:, 4], out_moved[:, 4])


def exp(task: dict, model: dict, loss="ce") -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": task, "model": {"dim": 16, "heads": 2, **model}, "grad": "bptt",
        "solver": {"train_cap": 4, "eval_cap": 6},
        "train": {"steps": 3, "batch_size": 8, "n_train": 32, "warmup": 1, "loss": loss},
        "eval": {"n_eval": 8, "diagnostics": False}})


def test_a_board_masked_model_trains_and_evaluates():
    cfg = exp({"name": "sudoku", "params": {"box": "2x2"}, "train_size": 5, "ood_sizes": [7]},
              {"positions": "absolute", "attention_mask": "board"})
    result = run_experiment(cfg, device="cpu")
    assert result.train.status == "ok" and [s.split for s in result.splits] == ["id", "ood_7"]
    allowed = result.model.blocks[0].attn.allowed
    assert allowed is not None and allowed.shape == (16, 16) and not allowed.all()


@pytest.mark.parametrize("task, model, field", [
    ({"name": "prefix_sums"}, {"attention_mask": "board"}, "model.attention_mask"),
    ({"name": "sudoku", "params": {"box": "2x2"}}, {"attention_mask": "board", "mixer": "conv"},
     "model.attention_mask"),
    ({"name": "sudoku", "params": {"box": "2x2"}}, {"attention_mask": "rows"}, "model.attention_mask"),
])
def test_a_board_mask_where_there_is_no_board_is_refused(task, model, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cfg = exp(task, model)
        run_experiment(cfg, device="cpu")


def test_squares_loss_is_a_softmax_over_squares_per_class():
    logits = torch.zeros(1, 2, 2, 3)
    logits[0, 0, 1, 1] = 2.0  # class 1 (from) favours square 1
    targets = torch.zeros(1, 2, 2, dtype=torch.long)
    targets[0, 0, 1], targets[0, 1, 0] = 1, 2  # from = square 1, to = square 2
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    loss = get_loss("squares")(logits, targets, mask)
    from_term = -torch.log_softmax(torch.tensor([0.0, 2.0, 0.0, 0.0]), -1)[1]
    to_term = -torch.log_softmax(torch.zeros(4), -1)[2]
    assert torch.allclose(loss, (from_term + to_term) / 2, atol=1e-6)


def test_validate_refuses_a_board_mask_on_a_task_without_a_board(tmp_path):
    from conftest import write_spec
    from orchestrator.sweep.plan import plan_sweep
    from orchestrator.sweep.spec import SpecError

    spec = write_spec(tmp_path, name="bm", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      axes={"model.attention_mask": ["none", "board"]})
    with pytest.raises(SpecError, match=r"model\.attention_mask: 'board' needs the task's board relations"):
        plan_sweep(spec)
