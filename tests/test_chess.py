"""Chess mate puzzles: known mates, the rules verifier, encoding/mirroring, decode, determinism."""
import chess
import numpy as np
import pytest
import torch

from fpr_core.tasks.base import TaskData
from fpr_core.tasks.chess import (FROM, NONE, TO, Chess, _generate_chunk, board_from_tokens,
                                  encode_board, move_target, puzzle_move)

BACK_RANK_M1 = "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1"  # 1.Ra8#
DOUBLED_ROOKS_M2 = "3qr1k1/5ppp/8/8/8/8/4RPPP/4R1K1 w - - 0 1"  # 1.Rxe8+ Qxe8 2.Rxe8#
PROMOTION_M1 = "7k/P7/6K1/8/8/8/8/8 w - - 0 1"  # 1.a8=Q# (a8=R# too: the same from/to)


@pytest.fixture(scope="module")
def task() -> Chess:
    return Chess()


def _split(fen: str, move_uci: str, depth: int) -> TaskData:
    """A one-puzzle split with `move_uci` as its target."""
    board = chess.Board(fen)
    inputs = encode_board(board)[None]
    target = move_target(board, chess.Move.from_uci(move_uci))[None]
    return TaskData(inputs, target, np.ones_like(inputs, bool),
                    {"depth": np.array([depth]), "n_pieces": np.array([len(board.piece_map())])},
                    len(board.piece_map()) - 2)


def _prediction(board: chess.Board, move_uci: str) -> np.ndarray:
    return move_target(board, chess.Move.from_uci(move_uci))[None]


def test_known_mate_in_one(task):
    board = chess.Board(BACK_RANK_M1)
    assert puzzle_move(board, 1) == chess.Move.from_uci("a1a8")
    assert puzzle_move(board, 2) is None  # a mate-in-1 is not a mate-in-2 puzzle
    data = _split(BACK_RANK_M1, "a1a8", 1)
    assert task.verify(data, data.targets).all()
    assert not task.verify(data, _prediction(board, "a1a7")).any()  # legal, no mate
    assert not task.verify(data, _prediction(board, "a1b3")).any()  # not a rook move
    two_froms = data.targets.copy()
    two_froms[0, 0, 0] = FROM
    assert not task.verify(data, two_froms).any()


def test_known_mate_in_two(task):
    board = chess.Board(DOUBLED_ROOKS_M2)
    assert puzzle_move(board, 1) is None
    assert puzzle_move(board, 2) == chess.Move.from_uci("e2e8")
    data = _split(DOUBLED_ROOKS_M2, "e2e8", 2)
    assert task.verify(data, data.targets).all()  # meta depth 2 is what verify checks
    assert not task.verify(data, _prediction(board, "e2e7")).any()
    assert not task.verify(data, _prediction(board, "e1e8")).any()  # blocked by the e2 rook


def test_promotion_is_read_as_a_queen(task):
    board = chess.Board(PROMOTION_M1)
    assert puzzle_move(board, 1) == chess.Move.from_uci("a7a8q")
    data = _split(PROMOTION_M1, "a7a8q", 1)
    assert task.verify(data, data.targets).all()


def test_mirroring_round_trip():
    board = chess.Board(BACK_RANK_M1)
    black_to_move = board.mirror()  # the same puzzle with colours swapped, black to move
    assert black_to_move.turn == chess.BLACK
    assert np.array_equal(encode_board(black_to_move), encode_board(board))
    move = chess.Move.from_uci("a1a8")
    mirrored_move = chess.Move(chess.square_mirror(move.from_square), chess.square_mirror(move.to_square))
    assert black_to_move.is_checkmate() is False and black_to_move.is_legal(mirrored_move)
    assert np.array_equal(move_target(black_to_move, mirrored_move), move_target(board, move))
    rebuilt = board_from_tokens(encode_board(black_to_move))
    assert rebuilt.turn == chess.WHITE and rebuilt.piece_map() == board.piece_map()
    tokens = encode_board(board)
    assert tokens[0, 6] == chess.KING + 6 and tokens[7, 0] == chess.ROOK  # row 0 = rank 8


@pytest.mark.parametrize("depth, pieces, n", [(1, 3, 6), (1, 7, 4), (2, 3, 2)])
def test_generated_puzzles_are_unique_first_move_mates(depth, pieces, n):
    task = Chess(depth=depth)
    data = task.generate(n, pieces, seed=1)
    assert data.inputs.shape == data.targets.shape == data.mask.shape == (n, 8, 8)
    assert data.inputs.dtype == data.targets.dtype == np.int64 and data.mask.all()
    assert (data.meta["depth"] == depth).all()
    assert (data.meta["n_pieces"] == pieces + 2).all()  # size = pieces besides the kings
    assert ((data.inputs != 0).sum(axis=(1, 2)) == pieces + 2).all()
    assert (data.meta["checks"] >= (1 if depth == 1 else 0)).all()
    assert (data.meta["ray_len"] >= 1).all() and (data.meta["ray_len"] <= 7).all()
    assert ((data.targets == FROM).sum(axis=(1, 2)) == 1).all()
    assert ((data.targets == TO).sum(axis=(1, 2)) == 1).all()
    assert task.verify(data, data.targets).all()
    for i, (tokens, target) in enumerate(zip(data.inputs, data.targets)):
        board = board_from_tokens(tokens)
        assert board.is_valid()
        # Independently of the module's search: python-chess's own checkmate test, counting
        # distinct (from, to) (a queen and a rook promotion on one square are one answer).
        mates = set()
        for move in list(board.legal_moves):
            board.push(move)
            if board.is_checkmate():
                mates.add((move.from_square, move.to_square))
            board.pop()
        assert len(mates) == (1 if depth == 1 else 0)
        # The first move is unique: any other legal move is rejected by the verifier.
        wrong = next(m for m in board.legal_moves
                     if not np.array_equal(move_target(board, m), target))
        assert not task.verify(data.subset(np.array([i])), move_target(board, wrong)[None]).any()


def test_generation_is_deterministic_and_pool_matches_one_process(task):
    a, b = task.generate(3, 3, seed=7), task.generate(3, 3, seed=7)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, task.generate(3, 3, seed=8).inputs)
    pooled = task.generate(70, 3, seed=5)  # two chunks of 64 + 6: runs in a process pool
    first_chunk = _generate_chunk(64, 1, 3, (5, 1, 3, 0))  # chunk 0, in this process
    assert np.array_equal(pooled.inputs[:64], np.stack([p[0] for p in first_chunk]))
    assert len({row.tobytes() for row in pooled.inputs}) == 70


def test_decode_gives_one_from_and_one_to(task):
    logits = torch.randn(5, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    logits[0, 2, 3, FROM] = 10.0
    logits[0, 2, 3, TO] = 10.0  # same square wins both: TO must go elsewhere
    decoded = task.decode(logits)
    assert decoded.shape == (5, 8, 8)
    assert ((decoded == FROM).sum(dim=(1, 2)) == 1).all() and ((decoded == TO).sum(dim=(1, 2)) == 1).all()
    assert decoded[0, 2, 3] == FROM and ((decoded == NONE).sum(dim=(1, 2)) == 62).all()


def test_bad_arguments_raise(task):
    with pytest.raises(ValueError, match="chess.*mate depth"):
        Chess(depth=3)
    with pytest.raises(ValueError, match="chess"):
        Chess(pieces=3)
    with pytest.raises(ValueError, match="pieces besides the kings"):
        task.generate(1, 15, seed=0)
    data = _split(BACK_RANK_M1, "a1a8", 1)
    with pytest.raises(ValueError, match="shape"):
        task.verify(data, np.zeros((1, 64)))


def test_more_pieces_is_the_ood_axis_and_squares_are_declared(task):
    assert task.default_train_size < min(task.default_ood_sizes) and task.cap_law == "fixed"
    coords = task.coordinates()
    assert coords.shape == (64, 1) and sorted(coords[:, 0]) == list(range(64))
    assert Chess(depth=2).params == {"depth": 2} and task.params == {}
