"""Writing a directory so that readers never see it half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike):
    """Yields an empty temporary sibling of ``directory`` to write into.

    When the block ends normally the sibling replaces ``directory`` (any old content is
    removed first, then one rename); when it raises, the sibling is deleted and
    ``directory`` is left as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        yield staging
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
