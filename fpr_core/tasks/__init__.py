"""Task registry: every task family is picked by name and imported lazily.

    >>> from fpr_core.tasks import get_task, make_splits
    >>> task = get_task("state_tracking", group="A5")
    >>> splits = make_splits(task, train_size=32, ood_sizes=(64, 128), n_train=512, n_eval=64)
    >>> sorted(splits)
    ['id', 'ood_128', 'ood_64', 'train']

Each name maps to a module of this package defining exactly one `Task` subclass whose `name`
matches. Modules are imported only when their task is asked for, so python-chess is imported only
for chess and a task file plugs in by existing at `fpr_core/tasks/<name>.py`.
"""
from __future__ import annotations

import importlib

from fpr_core.tasks.base import Task, TaskData
from fpr_core.tasks.splits import make_splits

_MODULES: dict[str, str] = {
    "prefix_sums": "fpr_core.tasks.prefix_sums",
    "mazes": "fpr_core.tasks.mazes",
    "sudoku": "fpr_core.tasks.sudoku",
    "chess": "fpr_core.tasks.chess",
    "state_tracking": "fpr_core.tasks.state_tracking",
}

TASK_NAMES: tuple[str, ...] = tuple(_MODULES)
"""Every registered task name, in the order the docs list them."""


def task_class(name: str) -> type[Task]:
    """The `Task` subclass registered under `name` (imports its module on first use)."""
    if name not in _MODULES:
        raise ValueError(f"task: unknown task {name!r}; expected one of {list(TASK_NAMES)}")
    module = importlib.import_module(_MODULES[name])
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Task) and obj is not Task
             and obj.__module__ == module.__name__ and getattr(obj, "name", None) == name]
    if len(found) != 1:
        raise ValueError(f"task {name!r}: module {module.__name__} must define exactly one Task "
                         f"subclass with name={name!r}, found {len(found)}")
    return found[0]


def get_task(name: str, **params) -> Task:
    """Build the task `name` with its parameters (unknown parameters raise ValueError)."""
    return task_class(name)(**params)


__all__ = ["Task", "TaskData", "TASK_NAMES", "get_task", "task_class", "make_splits"]
