"""Config validation: every mistake is named by its dotted key, before anything compiles.

A recipe declares its schema as a ``ConfigDict`` of defaults; ``check_against_schema`` rejects keys the schema does not
know (with a spelling suggestion) and values of the wrong type. Range and choice checks are small helpers.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config value is unknown, mistyped or out of range; the message names the dotted key."""


def _is_section(x: Any) -> bool:
    return isinstance(x, ml_collections.ConfigDict | Mapping)


def _compatible(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list)
    return isinstance(value, type(default))


def check_against_schema(
    config: Any, schema: Any, *, prefix: str = "config", open_sections: Iterable[str] = ()
) -> None:
    """Raises ``ConfigError`` for the first key of ``config`` absent from ``schema`` or of a different type.

    Args:
      open_sections: dotted keys (e.g. ``'config.model.rope_scaling'``) whose contents are free-form.
    """
    open_sections = set(open_sections)
    if prefix in open_sections:
        return
    known = list(schema.keys())
    for key in config.keys():  # noqa: SIM118 (ConfigDict, not a dict)
        path = f"{prefix}.{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{prefix}.{close[0]}'?" if close else f"; known keys here: {sorted(known)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        value, default = config[key], schema[key]
        if _is_section(default):
            if value is not None and not _is_section(value):
                raise ConfigError(f"'{path}' must be a section (dict), got {type(value).__name__} {value!r}")
            if value is not None:
                check_against_schema(value, default, prefix=path, open_sections=open_sections)
        elif not _compatible(value, default):
            raise ConfigError(
                f"'{path}' must be of type {type(default).__name__} (like the default {default!r}), "
                f"got {type(value).__name__} {value!r}"
            )


def get_path(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split(".")[1:]:
        node = node[part]
    return node


def check_choice(config: Any, dotted: str, choices: Iterable[Any]) -> None:
    choices = list(choices)
    value = get_path(config, dotted)
    if value not in choices:
        raise ConfigError(f"'{dotted}' is {value!r}; expected one of {choices}")


def check_positive(config: Any, *dotted: str, allow_zero: bool = False) -> None:
    for key in dotted:
        value = get_path(config, key)
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"'{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_divides(config: Any, numerator: str, denominator: str) -> None:
    a, b = get_path(config, numerator), get_path(config, denominator)
    if b <= 0 or a % b:
        raise ConfigError(f"'{numerator}' ({a}) must be divisible by '{denominator}' ({b})")
