"""Atomic file writes: data goes to a temporary name and is renamed only when complete.

A crash or an exception mid-write leaves at most a ``*.tmp-*`` file behind, never a file
under the final name that looks complete.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from typing import IO, Any, Iterable, Iterator

from .errors import StorageError

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "file_sha256", "temp_name", "remove_stale_temps"]


def temp_name(path: str | os.PathLike) -> str:
    """Return the temporary name used while ``path`` is being written.

    Args:
        path: Final file path.

    Returns:
        A sibling path unique to this process.
    """
    path = os.fspath(path)
    return f"{path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` and rename it into place on success.

    Args:
        path: Final file path.
        mode: Write mode, ``"wb"`` or ``"w"``.
        fsync: Flush file data to disk before the rename, so a crash cannot leave a renamed
            file with missing content.

    Yields:
        The open temporary file.

    Raises:
        StorageError: The file cannot be created there (no such directory, no permission);
            names ``path``.
    """
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        fh = open(tmp, mode)
    except OSError as exc:  # the user chose the path: say which, as one of our errors
        raise StorageError(f"{path}: cannot write it ({exc.strerror or exc})") from exc
    try:
        yield fh
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except BaseException:
        fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: Final file path.
        data: Content.
        fsync: Flush to disk before renaming.
    """
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, fsync: bool = True) -> bytes:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically.

    Args:
        path: Final file path.
        obj: JSON-serialisable object.
        fsync: Flush to disk before renaming.

    Returns:
        The bytes written, so callers can checksum exactly what is on disk.
    """
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(path, data, fsync=fsync)
    return data


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks.

    Args:
        path: File to hash.
        chunk: Read size in bytes.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(directory: str | os.PathLike, patterns: Iterable[str]) -> list[str]:
    """Remove temporaries that killed runs left behind for files matching ``patterns``.

    A run killed by a signal cannot clean up after itself. Only files named like
    :func:`temp_name` of a file matching one of ``patterns`` (``shard-*.tar`` ->
    ``shard-*.tar.tmp-<pid>``) whose process is gone are removed; nothing else is touched.

    Args:
        directory: Where to look.
        patterns: Glob patterns of the final file names the caller writes.

    Returns:
        The paths removed.
    """
    directory = os.fspath(directory)
    removed = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(directory), pattern + ".tmp-*")):
            pid = path.rsplit(".tmp-", 1)[1]
            if not pid.isdigit() or _process_alive(int(pid)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed
