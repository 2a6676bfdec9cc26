"""Chess mate puzzles: find the first move of a forced mate (mate-in-1 for training, mate-in-2 OOD).

Positions are kept only when the first move is unique: `size` = mate depth. Size 1: exactly one
move mates. Size 2: no move mates at once and exactly one "key" move leaves black with at least one
legal reply and a mate-in-1 after every reply. Uniqueness is over (from, to) squares, counting all
promotions, and the answer is always expressible as from/to with a queen promotion (a position whose
only solution is an under-promotion is rejected).

Encoding (grid task, (N, 8, 8)):
- inputs: one token per square, from the side to move's perspective: a position with black to move
  is mirrored with `board.mirror()` (flip ranks, swap colours), so the mover is always "white".
  Tokens: 0 = empty, 1–6 = mover's P N B R Q K, 7–12 = opponent's P N B R Q K (vocab 13). Row 0 is
  rank 8 and column 0 is file a, so a grid prints like a diagram with the mover at the bottom.
- targets: per square 0 = none, 1 = from-square, 2 = to-square of the first move (3 classes);
  mask: all 64 squares. `decode` turns logits into exactly one from- and one to-square.
- The position is reconstructible from the tokens alone (`board_from_tokens`): the mover is white,
  and generated positions have no castling rights and no en-passant square (they are placed, not
  played), so nothing else is needed; `verify` checks predictions on that board.

Generation: random sparse placements around a "king net": the black king sits on an edge square
with probability 0.8; the white king, 1–3 white pieces and 0–3 black pieces (queen/rook/bishop/
knight/pawn) are placed near it with probability 0.6, else anywhere. Positions failing
`board.is_valid()` (e.g. the side not to move in check) are redrawn; the rest are kept if they are a
unique-first-move puzzle of the requested depth, so sizes 1 and 2 share one piece distribution and
differ only in depth. About 1 in 25 valid placements is a unique mate-in-1, and about 1 in 25 a
unique mate-in-2. Measured in one process on a shared (busy) 2-core machine: 70–130 mate-in-1 and
9–11 mate-in-2 puzzles per second. Mate-in-1 answers are all checks (mostly queen and rook moves);
about a quarter of mate-in-2 keys are checks and a third are king moves.
Generation runs in fixed-size chunks, each seeded from (seed, size, chunk index) and merged in
order, so a process pool over the available cores gives the same arrays as one process.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import chess as pychess
import numpy as np
import torch

from fpr_core.tasks.base import Task, TaskData

_PIECE_TYPES = (pychess.QUEEN, pychess.ROOK, pychess.BISHOP, pychess.KNIGHT, pychess.PAWN)
_WHITE_WEIGHTS = np.array([0.25, 0.30, 0.15, 0.15, 0.15])
"""Sampling weights of `_PIECE_TYPES` for the attacking (white) side."""
_BLACK_WEIGHTS = np.array([0.10, 0.15, 0.15, 0.15, 0.45])
"""Sampling weights of `_PIECE_TYPES` for the defending (black) side: mostly pawns, the usual
blockers of a king's flight squares."""
_NEAR_PROB = 0.6
"""Probability that a piece is placed near the black king rather than anywhere."""
_CHUNK = {1: 64, 2: 8}
"""Puzzles per generation chunk by depth (about a second of work each); fixed so results do not
depend on the number of worker processes."""
_MAX_DRAWS_PER_PUZZLE = 200_000
"""Random placements tried for one puzzle before giving up."""

NONE, FROM, TO = 0, 1, 2
"""Target classes of a square."""


def encode_board(board: pychess.Board) -> np.ndarray:
    """(8, 8) int64 tokens of `board` from the side to move's perspective (mirrored if black moves)."""
    if board.turn == pychess.BLACK:
        board = board.mirror()
    tokens = np.zeros((8, 8), np.int64)
    for square, piece in board.piece_map().items():
        row, col = square_to_cell(square)
        tokens[row, col] = piece.piece_type + (0 if piece.color == pychess.WHITE else 6)
    return tokens


def board_from_tokens(tokens: np.ndarray) -> pychess.Board:
    """The position of (8, 8) tokens: white to move, no castling rights, no en-passant square."""
    board = pychess.Board(None)
    for row, col in zip(*np.nonzero(tokens)):
        token = int(tokens[row, col])
        color = pychess.WHITE if token <= 6 else pychess.BLACK
        board.set_piece_at(pychess.square(int(col), 7 - int(row)),
                           pychess.Piece(token - (0 if color == pychess.WHITE else 6), color))
    return board


def square_to_cell(square: int) -> tuple[int, int]:
    """Grid (row, col) of a square: row 0 = rank 8, col 0 = file a."""
    return 7 - pychess.square_rank(square), pychess.square_file(square)


def move_target(board: pychess.Board, move: pychess.Move) -> np.ndarray:
    """(8, 8) target classes for `move` played on `board`, in the same perspective as `encode_board`."""
    squares = (move.from_square, move.to_square)
    if board.turn == pychess.BLACK:
        squares = tuple(pychess.square_mirror(s) for s in squares)
    target = np.full((8, 8), NONE, np.int64)
    target[square_to_cell(squares[0])] = FROM
    target[square_to_cell(squares[1])] = TO
    return target


def move_from_squares(board: pychess.Board, from_square: int, to_square: int) -> pychess.Move:
    """The move from/to squares denote on `board`, promoting to a queen when a pawn reaches the
    last rank (the target cannot name a promotion piece)."""
    piece = board.piece_at(from_square)
    last_rank = 7 if board.turn == pychess.WHITE else 0
    promotes = (piece is not None and piece.piece_type == pychess.PAWN
                and pychess.square_rank(to_square) == last_rank)
    return pychess.Move(from_square, to_square, promotion=pychess.QUEEN if promotes else None)


def wins(board: pychess.Board, move: pychess.Move, depth: int) -> bool:
    """Does the mover force mate within `depth` of its own moves, starting with legal `move`?

    Depth 1: `move` mates. Depth d: `move` mates, or the opponent has a legal reply and after every
    reply some move wins within d - 1 (a stalemating move never wins). `board` is left unchanged.
    """
    board.push(move)
    try:
        if depth == 1:  # only a check can mate: skip move generation for the (many) quiet moves
            return board.is_check() and not any(board.generate_legal_moves())
        replies = list(board.legal_moves)
        if not replies:
            return board.is_check()
        for reply in replies:
            board.push(reply)
            try:
                if not any(wins(board, answer, depth - 1) for answer in list(board.legal_moves)):
                    return False
            finally:
                board.pop()
        return True
    finally:
        board.pop()


def winning_squares(board: pychess.Board, depth: int) -> set[tuple[int, int]]:
    """(from, to) squares of every legal first move that wins within `depth` (all promotions)."""
    return {(m.from_square, m.to_square) for m in list(board.legal_moves) if wins(board, m, depth)}


def puzzle_move(board: pychess.Board, depth: int) -> pychess.Move | None:
    """The unique first move if `board` is a puzzle of exactly this depth, else None.

    A puzzle of depth d has no win within d - 1 moves and exactly one (from, to) that wins within
    d, which must also win when it promotes (if at all) to a queen.
    """
    if depth > 1 and any(wins(board, m, depth - 1) for m in list(board.legal_moves)):
        return None
    solutions = winning_squares(board, depth)
    if len(solutions) != 1:
        return None
    move = move_from_squares(board, *solutions.pop())
    return move if wins(board, move, depth) else None


def random_position(rng: np.random.Generator) -> pychess.Board:
    """A random sparse placement around the black king, white to move (may be invalid)."""
    board = pychess.Board(None)
    while True:
        king = int(rng.integers(64))
        file, rank = pychess.square_file(king), pychess.square_rank(king)
        if file in (0, 7) or rank in (0, 7) or rng.random() < 0.2:
            break
    board.set_piece_at(king, pychess.Piece(pychess.KING, pychess.BLACK))

    def place(piece_type: int, color: bool, radius: int) -> None:
        for _ in range(64):
            if rng.random() < _NEAR_PROB:
                df, dr = rng.integers(-radius, radius + 1, 2)
                f, r = file + int(df), rank + int(dr)
                if not (0 <= f < 8 and 0 <= r < 8):
                    continue
                square = pychess.square(f, r)
            else:
                square = int(rng.integers(64))
            pawn_on_edge = piece_type == pychess.PAWN and pychess.square_rank(square) in (0, 7)
            if board.piece_at(square) is None and not pawn_on_edge:
                board.set_piece_at(square, pychess.Piece(piece_type, color))
                return

    place(pychess.KING, pychess.WHITE, 3)
    for _ in range(int(rng.integers(1, 4))):
        place(_PIECE_TYPES[rng.choice(5, p=_WHITE_WEIGHTS)], pychess.WHITE, 3)
    for _ in range(int(rng.integers(0, 4))):
        place(_PIECE_TYPES[rng.choice(5, p=_BLACK_WEIGHTS)], pychess.BLACK, 2)
    return board


def _generate_chunk(n: int, depth: int, entropy: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """n puzzles of `depth` from a Generator seeded by `entropy`: (tokens, target, n_pieces) each."""
    rng = np.random.default_rng(list(entropy))
    found = []
    draws = 0
    while len(found) < n:
        board = random_position(rng)
        draws += 1
        if draws > _MAX_DRAWS_PER_PUZZLE * n:
            raise RuntimeError(f"chess: found only {len(found)} of {n} mate-in-{depth} puzzles in "
                               f"{draws} random placements")
        if not board.is_valid():
            continue
        move = puzzle_move(board, depth)
        if move is not None:
            found.append((encode_board(board), move_target(board, move), len(board.piece_map())))
    return found


def _worker_count(n_chunks: int) -> int:
    """Processes to use: one per available core, at most one per chunk, and only this one when we
    are a daemonic process (which may not have children, e.g. inside a multiprocessing pool)."""
    if multiprocessing.current_process().daemon:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, n_chunks))


def _run_chunks(jobs: list[tuple[int, int, tuple[int, ...]]]) -> list[list]:
    """Run `_generate_chunk` over jobs, in a process pool when there is more than one; in order."""
    workers = _worker_count(len(jobs))
    if workers == 1:
        return [_generate_chunk(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_generate_chunk, *zip(*jobs)))


class Chess(Task):
    """Unique-first-move mate puzzles; size = mate depth (1 train, 2 OOD). See module docstring."""

    name = "chess"
    grid = True
    version = "1"
    default_train_size = 1
    default_ood_sizes = (2,)
    difficulty_key = "depth"

    @property
    def vocab_size(self) -> int:
        return 13

    @property
    def n_classes(self) -> int:
        return 3

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n distinct mate-in-`size` puzzles (size 1 or 2), deterministic in (seed, size)."""
        if size not in _CHUNK:
            raise ValueError(f"chess size (mate depth) must be one of {sorted(_CHUNK)}, got {size}")
        chunk = _CHUNK[size]
        kept, seen, next_chunk = [], set(), 0
        while len(kept) < n:
            missing = n - len(kept)
            jobs = [(min(chunk, missing - i * chunk), size, (seed, size, next_chunk + i))
                    for i in range(-(-missing // chunk))]
            next_chunk += len(jobs)
            for puzzles in _run_chunks(jobs):
                for tokens, target, n_pieces in puzzles:
                    key = tokens.tobytes()
                    if key not in seen and len(kept) < n:
                        seen.add(key)
                        kept.append((tokens, target, n_pieces))
        inputs = np.stack([k[0] for k in kept]) if kept else np.zeros((0, 8, 8), np.int64)
        targets = np.stack([k[1] for k in kept]) if kept else np.zeros((0, 8, 8), np.int64)
        meta = {"depth": np.full(n, size, np.int64),
                "n_pieces": np.array([k[2] for k in kept], np.int64)}
        return TaskData(inputs, targets, np.ones((n, 8, 8), bool), meta, size)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 8, 8, 3) logits -> (N, 8, 8) with exactly one FROM (argmax of the class-1 logit) and
        one TO (argmax of the class-2 logit over the other squares); the rest NONE."""
        flat = logits.flatten(1, 2)  # (N, 64, 3)
        from_idx = flat[..., FROM].argmax(-1)  # (N,)
        to_scores = flat[..., TO].clone()
        to_scores.scatter_(1, from_idx[:, None], float("-inf"))
        to_idx = to_scores.argmax(-1)  # (N,)
        out = torch.full(flat.shape[:2], NONE, dtype=torch.long, device=logits.device)
        out.scatter_(1, from_idx[:, None], FROM)
        out.scatter_(1, to_idx[:, None], TO)
        return out.view(logits.shape[:-1])

    def verify(self, data: TaskData, predictions: np.ndarray) -> np.ndarray:
        """(N,) bool: the predicted from/to (exactly one of each) is a legal move on the position
        rebuilt from the tokens (queen promotion assumed) that forces mate within the split's depth;
        checked by the rules with python-chess, not against the stored target."""
        predictions = np.asarray(predictions)
        if predictions.shape != data.inputs.shape:
            raise ValueError(f"chess predictions must have shape {data.inputs.shape}, "
                             f"got {predictions.shape}")
        depths = data.meta.get("depth", np.full(len(data), data.size))
        return np.array([_move_wins(tokens, pred, int(depth))
                         for tokens, pred, depth in zip(data.inputs, predictions, depths)], bool)


def _move_wins(tokens: np.ndarray, prediction: np.ndarray, depth: int) -> bool:
    """Is the from/to move marked in `prediction` (8, 8) legal on `tokens` and winning in `depth`?"""
    froms, tos = np.argwhere(prediction == FROM), np.argwhere(prediction == TO)
    if len(froms) != 1 or len(tos) != 1:
        return False
    board = board_from_tokens(tokens)
    squares = [pychess.square(int(col), 7 - int(row)) for row, col in (froms[0], tos[0])]
    move = move_from_squares(board, *squares)
    return board.is_legal(move) and wins(board, move, depth)
