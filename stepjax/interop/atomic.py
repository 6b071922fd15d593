"""Write a folder completely or not at all: build it beside the destination, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary sibling folder; on success it becomes ``path``.

    If the block raises, the temporary folder is removed and ``path`` is untouched. An existing non-empty ``path``
    raises ``FileExistsError`` before anything is written unless ``overwrite``; then it is moved aside, the new
    folder renamed into place, and only then is the old one deleted (a failed rename puts it back).
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A sibling (same filesystem) so the final rename is atomic; hidden so a crash leaves no plausible model folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "content")
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old / "content", path)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
