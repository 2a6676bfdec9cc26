"""Chess mate-in-1 puzzles: find the mating move; harder = more pieces on the board.

Why mate-in-1 with a piece-count axis: mate-in-2 needs lookahead over the opponent's replies, a
different algorithm, not "mate-in-1, iterated longer", so it cannot separate looped variants. A
mate-in-1 with more pieces is the same check-and-refute computation over more material: more
candidate checks to refute, more blockers and defenders on the rays, more flight squares to test.

`size` = number of pieces other than the two kings (the OOD axis). A split at size k holds
positions with exactly k such pieces: 1..k-1 of them white (attackers), the rest black (blockers
and defenders). Train 3, OOD 5, 7 and 9 by default. The board is always 8×8, so the task declares
absolute square coordinates (`coordinates`) for model.positions='absolute'.

Task parameter `depth` (default 1): 1 = mate-in-1 (the profile). 2 = mate-in-2 with a unique key
move that leaves black at least one legal reply, kept only as a separate split (a different task
config), never as an OOD size of mate-in-1. Positions are kept only when the first move is unique,
counting all promotions over (from, to) squares, and the answer is always expressible as from/to
with a queen promotion (a position whose only solution is an under-promotion is rejected).

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

Meta per puzzle: `depth`, `n_pieces` (all pieces, kings included), `checks` (legal checking moves
of the mover: the candidates a solver must refute, all but one), and `ray_len` (the difficulty key:
Chebyshev distance the mating piece travels, 1 for knights, kings and pawns), which is how far an
attack must propagate square by square for a local rule to see the mate.

Generation: random sparse placements around a "king net": the black king sits on an edge square
with probability 0.8; the white king and the white pieces (queen/rook/bishop/knight/pawn) are
placed near it with probability 0.6, black pieces (mostly pawns) likewise, else anywhere.
Positions failing `board.is_valid()` (e.g. the side not to move in check) are redrawn; the rest are
kept if they are a unique-first-move puzzle of the requested depth. Measured in one process on a
shared (busy) 2-core machine, mate-in-1 at the old 1–3 + 0–3 piece mix: 70–130 puzzles per second;
mate-in-2: 9–11. Generation runs in fixed-size chunks, each seeded from (seed, depth, size, chunk
index) and merged in order, so a process pool over the available cores gives the same arrays as
one process.
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
MAX_PIECES = 14
"""Largest size (pieces besides the kings) a split may ask for."""
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


def random_position(rng: np.random.Generator, pieces: int) -> pychess.Board:
    """A random sparse placement around the black king with `pieces` pieces besides the kings
    (1..pieces-1 white, the rest black; fewer if a piece finds no free square), white to move
    (may be invalid)."""
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
    white = 1 if pieces == 1 else int(rng.integers(1, pieces))
    for _ in range(white):
        place(_PIECE_TYPES[rng.choice(5, p=_WHITE_WEIGHTS)], pychess.WHITE, 3)
    for _ in range(pieces - white):
        place(_PIECE_TYPES[rng.choice(5, p=_BLACK_WEIGHTS)], pychess.BLACK, 2)
    return board


def puzzle_meta(board: pychess.Board, move: pychess.Move) -> tuple[int, int, int]:
    """(n_pieces, checks, ray_len) of a puzzle (see module docstring)."""
    checks = sum(board.gives_check(m) for m in board.legal_moves)
    ray = max(abs(pychess.square_file(move.from_square) - pychess.square_file(move.to_square)),
              abs(pychess.square_rank(move.from_square) - pychess.square_rank(move.to_square)))
    if board.piece_type_at(move.from_square) == pychess.KNIGHT:
        ray = 1
    return len(board.piece_map()), int(checks), int(ray)


def _generate_chunk(n: int, depth: int, pieces: int, entropy: tuple[int, ...]) -> list[tuple]:
    """n puzzles of `depth` with `pieces` pieces besides the kings, from a Generator seeded by
    `entropy`: (tokens, target, (n_pieces, checks, ray_len)) each."""
    rng = np.random.default_rng(list(entropy))
    found = []
    draws = 0
    while len(found) < n:
        board = random_position(rng, pieces)
        draws += 1
        if draws > _MAX_DRAWS_PER_PUZZLE * n:
            raise RuntimeError(f"chess: found only {len(found)} of {n} mate-in-{depth} puzzles in "
                               f"{draws} random placements")
        if not board.is_valid() or len(board.piece_map()) != pieces + 2:
            continue
        move = puzzle_move(board, depth)
        if move is not None:
            found.append((encode_board(board), move_target(board, move), puzzle_meta(board, move)))
    return found


def _worker_count(n_chunks: int) -> int:
    """Processes to use: one per available core, at most one per chunk, and only this one when we
    are a daemonic process (which may not have children, e.g. inside a multiprocessing pool)."""
    if multiprocessing.current_process().daemon:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, n_chunks))


def _run_chunks(jobs: list[tuple[int, int, int, tuple[int, ...]]]) -> list[list]:
    """Run `_generate_chunk` over jobs, in a process pool when there is more than one; in order."""
    workers = _worker_count(len(jobs))
    if workers == 1:
        return [_generate_chunk(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_generate_chunk, *zip(*jobs)))


class Chess(Task):
    """Unique-first-move mate puzzles; size = pieces besides the kings. See module docstring."""

    name = "chess"
    grid = True
    version = "2"
    default_train_size = 3
    default_ood_sizes = (5, 7, 9)
    difficulty_key = "ray_len"
    cap_law = "fixed"
    accepted_params = ("depth",)

    def __init__(self, depth: int = 1, **params) -> None:
        super().__init__(**params)  # rejects unknown parameters
        if depth not in _CHUNK:
            raise ValueError(f"task 'chess': depth (mate depth) must be one of {sorted(_CHUNK)}, "
                             f"got {depth!r}")
        self.depth = int(depth)
        self.params = {} if self.depth == 1 else {"depth": self.depth}

    @property
    def vocab_size(self) -> int:
        return 13

    @property
    def n_classes(self) -> int:
        return 3

    def coordinates(self) -> np.ndarray:
        """(64, 1) square id of every grid cell (row-major; the board is always 8×8)."""
        return np.arange(64, dtype=np.int64)[:, None]

    def board_mask(self) -> np.ndarray:
        """(64, 64) bool: square a sees square b when a piece on a could reach b on an empty board:
        the same rank, file or diagonal (queen lines, covering rooks, bishops, pawns and kings) or a
        knight jump, and itself. The chess analogue of sudoku's peers; every attack of a mate-in-1
        runs along one of these relations."""
        rank, file = np.divmod(np.arange(64), 8)
        dr, df = np.abs(rank[:, None] - rank[None, :]), np.abs(file[:, None] - file[None, :])
        line = (dr == 0) | (df == 0) | (dr == df)
        knight = ((dr == 1) & (df == 2)) | ((dr == 2) & (df == 1))
        return line | knight

    def generate(self, n: int, size: int, seed: int) -> TaskData:
        """n distinct mate-in-`depth` puzzles with `size` pieces besides the kings, deterministic
        in (seed, depth, size)."""
        if not 1 <= size <= MAX_PIECES:
            raise ValueError(f"chess size (pieces besides the kings) must be in 1..{MAX_PIECES}, "
                             f"got {size}")
        chunk = _CHUNK[self.depth]
        kept, seen, next_chunk = [], set(), 0
        while len(kept) < n:
            missing = n - len(kept)
            jobs = [(min(chunk, missing - i * chunk), self.depth, size,
                     (seed, self.depth, size, next_chunk + i)) for i in range(-(-missing // chunk))]
            next_chunk += len(jobs)
            for puzzles in _run_chunks(jobs):
                for tokens, target, meta in puzzles:
                    key = tokens.tobytes()
                    if key not in seen and len(kept) < n:
                        seen.add(key)
                        kept.append((tokens, target, meta))
        inputs = np.stack([k[0] for k in kept]) if kept else np.zeros((0, 8, 8), np.int64)
        targets = np.stack([k[1] for k in kept]) if kept else np.zeros((0, 8, 8), np.int64)
        stats = np.array([k[2] for k in kept], np.int64).reshape(-1, 3)
        meta = {"depth": np.full(n, self.depth, np.int64), "n_pieces": stats[:, 0],
                "checks": stats[:, 1], "ray_len": stats[:, 2]}
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
        depths = data.meta.get("depth", np.full(len(data), self.depth))
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
