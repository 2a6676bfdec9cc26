"""A tiny name -> factory registry: every variant (norms, positions, recall, solvers, grad modes)
is picked by name from one of these, never by a forked class or an if-chain in generic code."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise a KeyError naming the field and the choices."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("rms")`` stores the decorated object under ``name``."""
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.field}: {name!r} registered twice")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(f"{self.field}: got {name!r}, expected one of {sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)
