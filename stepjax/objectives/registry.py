"""Objectives registered by name so configs can choose them (``config.loss.name = 'lm'``)."""

from __future__ import annotations

from collections.abc import Callable

_LOSSES: dict[str, Callable] = {}


def register_loss(name: str) -> Callable[[Callable], Callable]:
    def wrap(fn: Callable) -> Callable:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = fn
        return fn

    return wrap


def get_loss(name: str) -> Callable:
    if name not in _LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered losses: {sorted(_LOSSES)}")
    return _LOSSES[name]


def registered_losses() -> list[str]:
    return sorted(_LOSSES)
