"""The one error type of ``stepjax.interop``."""

from __future__ import annotations


class InteropError(ValueError):
    """A checkpoint folder, file or config that cannot be converted.

    The message names the file, tensor or config field and says what was expected. Subclasses ``ValueError`` so
    that callers treating bad input generically keep working.
    """
