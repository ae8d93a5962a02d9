"""Atomic file writes: data goes to a temporary name and is renamed only when complete.

A crash or an exception mid-write leaves at most a ``*.tmp-*`` file behind, never a file
under the final name that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "file_sha256", "temp_name"]


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
    """
    path = os.fspath(path)
    tmp = temp_name(path)
    fh = open(tmp, mode)
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
