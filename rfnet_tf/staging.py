"""Writing files and directories so that readers never see them half-written.

Permissions (decision): what this module writes gets the permissions of an ordinary
``open()`` / ``mkdir()`` (0666 / 0777 less the umask, so usually 0644 / 0755), not the
0600 / 0700 of the temporary files and folders it writes through.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class DestinationError(ValueError):
    """A file or directory cannot be written where it was asked to go."""


def ordinary_mode(directory: bool = False) -> int:
    """0o777 (a folder) or 0o666 (a file) less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def writable_ancestor(path: str | os.PathLike, subject: str | os.PathLike | None = None) -> Path:
    """The nearest existing ancestor of ``path`` (``path`` itself included), checked by
    making and removing a temporary folder in it.

    Trying beats ``os.access``, which says yes to root on a place that refuses writes
    (a read-only file system, ``/sys``).

    Raises:
      DestinationError: that ancestor is not a folder, or no folder can be made in it;
        the message starts with ``subject`` (default ``path``).
    """
    path = Path(os.path.abspath(path))
    subject = path if subject is None else subject
    ancestor = next(candidate for candidate in (path, *path.parents) if candidate.exists())
    if not ancestor.is_dir():
        raise DestinationError(f"{subject}: {ancestor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=ancestor))
    except OSError as error:
        raise DestinationError(f"{subject}: cannot write in {ancestor}: {error.strerror}") from error
    return ancestor


def check_destination(directory: str | os.PathLike) -> Path:
    """The absolute path of ``directory`` if :func:`staged_directory` can (re)place it.

    Raises:
      DestinationError: ``directory`` is a file, holds the current working directory
        (replacing it would pull the folder from under the process), or its parent
        cannot be written (:func:`writable_ancestor`).
    """
    directory = Path(os.path.abspath(directory))
    if directory.exists() and not directory.is_dir():
        raise DestinationError(f"{directory}: exists and is not a directory")
    cwd = Path.cwd().resolve()
    resolved = directory.resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise DestinationError(
            f"{directory}: is or holds the current directory, and is replaced as a whole at "
            "the end; run from another directory or choose another destination"
        )
    writable_ancestor(directory.parent, subject=directory)
    return directory


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename,
    with ordinary permissions; parent folders are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, ordinary_mode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary sibling of ``directory`` to write into.

    ``directory`` is checked first (:func:`check_destination`). When the block ends
    normally the sibling takes ``directory``'s place: an old ``directory`` is moved aside,
    the sibling renamed into place (ordinary permissions) and the old one deleted. When it
    raises (also on SIGINT / SIGTERM under ``rfnet_tf.cli``), the sibling and any parent
    folders made for it are deleted and ``directory`` is left as it was.

    Raises:
      DestinationError: ``directory`` cannot be used, or writing into the sibling or
        replacing ``directory`` failed (an ``OSError`` such as a full disk).
    """
    directory = check_destination(directory)
    made = [parent for parent in directory.parents if not parent.exists()]
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-staging-", dir=directory.parent))
    except OSError as error:
        raise DestinationError(f"{directory}: cannot be written: {error}") from error
    try:
        yield staging
        staging.chmod(ordinary_mode(directory=True))
        _replace(directory, staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in made:  # nearest first
            with contextlib.suppress(OSError):
                parent.rmdir()
        if isinstance(error, OSError):
            raise DestinationError(f"{directory}: writing failed: {error}") from error
        raise


def _replace(directory: Path, staging: Path) -> None:
    """Renames ``staging`` to ``directory``; an old ``directory`` is moved aside first and
    deleted after (put back if the rename fails)."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}-old-", dir=directory.parent))
    try:
        os.replace(directory, retired / directory.name)
        try:
            os.replace(staging, directory)
        except BaseException:
            os.replace(retired / directory.name, directory)
            raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
