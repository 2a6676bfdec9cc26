"""model.positions='absolute': embeddings of the board coordinates a fixed-size task declares."""
import numpy as np
import pytest
import torch

from fpr_core.config import ConfigError, ExperimentConfig, GradConfig, ModelConfig, SolverConfig
from fpr_core.experiment import board_coordinates
from fpr_core.model import LoopedModel
from fpr_core.tasks import get_task


def _model(positions: str, coordinates, **cfg):
    model_cfg = ModelConfig(vocab_size=7, n_classes=6, dim=16, heads=2, positions=positions, **cfg)
    return LoopedModel(model_cfg, SolverConfig(train_cap=3, eval_cap=3), GradConfig(k=1), grid=True,
                       train_tokens=36, coordinates=coordinates)


def test_same_token_on_different_cells_gets_different_embeddings_only_with_coordinates():
    coords = torch.as_tensor(get_task("sudoku", box="2x3").coordinates())
    blank = torch.zeros(1, 6, 6, dtype=torch.long)
    torch.manual_seed(0)
    x = _model("absolute", coords).embed_inputs(blank)[0]  # (36, d)
    assert len({tuple(row.round(decimals=5).tolist()) for row in x}) == 36
    # cells sharing row, column and box differ by the same embedding offsets (a sum of tables)
    plain = _model("none", None).embed_inputs(blank)[0]
    assert torch.allclose(plain, plain[:1].expand_as(plain))


def test_absolute_positions_train_and_reject_a_board_of_another_size():
    coords = torch.as_tensor(get_task("sudoku", box="2x3").coordinates())
    model = _model("absolute", coords, mixer="attention")
    inputs = torch.randint(0, 7, (4, 6, 6))
    out = model(inputs)
    out.logits.sum().backward()
    assert model.coordinates.tables[2].weight.grad.abs().sum() > 0  # the box table learns
    assert "coordinates.ids" in model.state_dict()  # a saved model carries its coordinates
    with pytest.raises(ValueError, match="declared coordinates for 36 tokens, got an input of 16"):
        model(torch.zeros(1, 4, 4, dtype=torch.long))


def test_coordinates_only_with_absolute_and_only_for_fixed_boards():
    coords = torch.as_tensor(get_task("sudoku", box="2x3").coordinates())
    with pytest.raises(ValueError, match="positions=absolute needs"):
        _model("absolute", None)
    with pytest.raises(ValueError, match="positions=absolute needs"):
        _model("rope2d", coords)
    with pytest.raises(ConfigError, match="task 'mazes' declares none"):
        board_coordinates(get_task("mazes"), "absolute")
    assert board_coordinates(get_task("mazes"), "none") is None
    assert board_coordinates(get_task("chess"), "absolute").shape == (64, 1)


def test_sweep_expansion_rejects_absolute_positions_on_a_growing_task(tmp_path):
    from conftest import write_spec
    from orchestrator.sweep.expand import expand
    from orchestrator.sweep.spec import SpecError, load_spec
    path = write_spec(tmp_path, name="abs", tasks=[{"name": "prefix_sums", "train_size": 8,
                                                     "ood_sizes": [16],
                                                     "overrides": {"model.positions": "absolute"}}])
    with pytest.raises(SpecError, match="prefix_sums.*declares none"):
        expand(load_spec(path), path=path)
    ok = write_spec(tmp_path, name="abs_ok", tasks=[{"name": "sudoku", "params": {"box": "2x2"},
                                                      "overrides": {"model.positions": "absolute"}}])
    assert len(expand(load_spec(ok), path=ok)) == 1


def test_experiment_trains_sudoku_with_board_coordinates(tmp_path):
    from fpr_core.experiment import run_experiment
    cfg = ExperimentConfig.from_dict({
        "task": {"name": "sudoku", "params": {"box": "2x2"}, "train_size": 4, "ood_sizes": [6]},
        "model": {"dim": 16, "heads": 2, "positions": "absolute"},
        "solver": {"train_cap": 2, "eval_cap": 3}, "grad": "truncated:1",
        "train": {"steps": 2, "n_train": 16, "batch_size": 4, "warmup": 1},
        "eval": {"n_eval": 4, "diagnostics": False}})
    result = run_experiment(cfg, cache_dir=tmp_path, device="cpu")
    assert [s.split for s in result.splits] == ["id", "ood_6"]
    assert [s.metrics["eval_cap"] for s in result.splits] == [3, 3]  # sudoku's cap law is fixed
    assert np.isfinite(result.train.final_loss)
