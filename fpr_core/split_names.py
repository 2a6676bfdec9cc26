"""The names of a trial's data splits, spelled in one place: 'train', 'id' (unseen instances at
the training size) and 'ood_<size>'. No torch here, so the orchestrator's light modules (metric
names, the spec's JSON schema, the console) can name splits without importing it.
"""
from __future__ import annotations

ID_SPLIT = "id"
"""The in-distribution eval split: unseen instances at the training size."""
OOD_PREFIX = "ood_"
TRAIN_SPLIT = "train"


def split_name(size: int | None = None) -> str:
    """The one spelling of an eval split's name: ``'ood_<size>'`` for instances of ``size``, and
    ``'id'`` (the in-distribution split, at the training size) when ``size`` is None."""
    return ID_SPLIT if size is None else f"{OOD_PREFIX}{int(size)}"


def parse_split(name: str, train_size: int) -> int:
    """The instance size of the eval split ``name`` (``split_name``'s inverse): ``train_size`` for
    'id'; ValueError naming the expected forms for anything else."""
    if name == ID_SPLIT:
        return int(train_size)
    digits = name[len(OOD_PREFIX):] if name.startswith(OOD_PREFIX) else ""
    if not digits.isdigit():
        raise ValueError(f"split {name!r}: expected {ID_SPLIT!r} or '{OOD_PREFIX}<size>'")
    return int(digits)


def eval_split_names(ood_sizes) -> list[str]:
    """The eval splits of a trial, in order: 'id', then one 'ood_<size>' per OOD size."""
    return [split_name()] + [split_name(s) for s in ood_sizes]
