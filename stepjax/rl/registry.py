"""Name -> function tables so configs choose advantage estimators and rewards by name."""

from __future__ import annotations

from collections.abc import Callable


class Registry:
    """A named table of functions: ``@registry.register('name')``, ``registry.get('name')``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def wrap(fn: Callable) -> Callable:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._fns[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable:
        if name not in self._fns:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._fns)}")
        return self._fns[name]

    def names(self) -> list[str]:
        return sorted(self._fns)


ADVANTAGES = Registry("advantage estimator")
REWARDS = Registry("reward")
