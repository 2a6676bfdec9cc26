"""Task registry: every task family is picked by name and imported lazily.

    >>> from fpr_core.tasks import get_task, make_splits
    >>> task = get_task("state_tracking", group="A5")
    >>> splits = make_splits(task, train_size=32, ood_sizes=(64, 128), n_train=512, n_eval=64)
    >>> sorted(splits)
    ['id', 'ood_128', 'ood_64', 'train']

Each name maps to a module of this package defining exactly one `Task` subclass whose `name`
matches. Modules are imported only when their task is asked for, so python-chess is imported only
for chess and a task file plugs in by existing at `fpr_core/tasks/<name>.py`.

Tasks outside this package plug in through the environment: ``FPR_TASK_PLUGINS=pkg.mytasks,other``
names importable modules; every `Task` subclass defined in them (with a `name`) is registered under
that name. The driver and every Ray worker must be able to import them (PYTHONPATH or an installed
package) and see the variable (local Ray workers inherit the driver's environment).
"""
from __future__ import annotations

import importlib
import os

from fpr_core.tasks.base import Task, TaskData
from fpr_core.tasks import splits as _splits

_MODULES: dict[str, str] = {
    "prefix_sums": "fpr_core.tasks.prefix_sums",
    "mazes": "fpr_core.tasks.mazes",
    "sudoku": "fpr_core.tasks.sudoku",
    "chess": "fpr_core.tasks.chess",
    "state_tracking": "fpr_core.tasks.state_tracking",
}

PLUGINS_ENV = "FPR_TASK_PLUGINS"
"""Environment variable: comma-separated modules defining extra `Task` subclasses."""


def _defined_tasks(module) -> list[type[Task]]:
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Task) and obj is not Task
            and obj.__module__ == module.__name__ and isinstance(getattr(obj, "name", None), str)]


def plugin_modules() -> dict[str, str]:
    """Task name -> module for every task defined by the modules named in $FPR_TASK_PLUGINS."""
    out: dict[str, str] = {}
    for module_name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ImportError(f"{PLUGINS_ENV}: cannot import task plugin module {module_name!r} ({e}); "
                              "expected a module importable by the driver and every Ray worker") from e
        for cls in _defined_tasks(module):
            if cls.name in _MODULES or out.get(cls.name, module_name) != module_name:
                raise ValueError(f"{PLUGINS_ENV}: task {cls.name!r} from {module_name} is already "
                                 f"registered by {_MODULES.get(cls.name) or out[cls.name]}")
            out[cls.name] = module_name
    return out


def _registered() -> dict[str, str]:
    return {**_MODULES, **plugin_modules()} if os.environ.get(PLUGINS_ENV) else _MODULES


def __getattr__(attr: str):
    if attr == "TASK_NAMES":  # computed on access, so plugins named in the environment count
        return tuple(_registered())
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


TASK_NAMES: tuple[str, ...]
"""Every registered task name: the built-in ones in the order the docs list them, then plugins."""


def task_class(name: str) -> type[Task]:
    """The `Task` subclass registered under `name` (imports its module on first use)."""
    modules = _registered()
    if name not in modules:
        raise ValueError(f"task: unknown task {name!r}; expected one of {list(modules)}")
    module = importlib.import_module(modules[name])
    found = [obj for obj in _defined_tasks(module) if obj.name == name]
    if len(found) != 1:
        raise ValueError(f"task {name!r}: module {module.__name__} must define exactly one Task "
                         f"subclass with name={name!r}, found {len(found)}")
    return found[0]


def get_task(name: str, **params) -> Task:
    """Build the task `name` with its parameters (unknown parameters raise ValueError)."""
    return task_class(name)(**params)


def make_splits(task: Task | str, *args, **kwargs) -> dict[str, TaskData]:
    """``splits.make_splits`` for a Task or a registered task name (default params)."""
    return _splits.make_splits(get_task(task) if isinstance(task, str) else task, *args, **kwargs)


__all__ = ["Task", "TaskData", "TASK_NAMES", "PLUGINS_ENV", "get_task", "task_class", "make_splits",
           "plugin_modules"]
