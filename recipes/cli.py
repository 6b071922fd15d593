"""Shared pieces of the command-line entry points (``recipes.run``, ``recipes.convert``, ``recipes.merge``)."""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """Flag parser for ``app.run``: a bad flag is one ``error: ...`` line on stderr and exit status 2, not a
    traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
