"""Files and folders written whole or not at all: the work goes to a temporary path beside the target,
which is renamed over the target only when the writing ended without error."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``PATH.tmp`` to write; it replaces ``path`` in one rename when the block ends without
    error, and is removed when it raises (``path`` is then left as it was)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty ``FOLDER.tmp`` to write into; once the block ends without error it replaces
    ``folder`` (a partial ``FOLDER.tmp`` left by an interrupted run is cleared first)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
