"""Reading the versioned JSON files streamprune writes, with errors that name the file."""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import StreamPruneError

__all__ = ["read_versioned_json", "parse_versioned_json"]


def read_versioned_json(
    path: str | os.PathLike,
    fmt: str,
    version: int | tuple[int, ...],
    what: str,
    error: type[StreamPruneError] = StreamPruneError,
    missing: str | None = None,
    version_label: str | None = None,
    version_note: str = "",
    data: bytes | None = None,
) -> dict[str, Any]:
    """Load a JSON object whose ``format`` and ``version`` fields must be ``fmt`` and ``version``.

    Args:
        path: The file.
        fmt: Expected ``format`` value.
        version: The supported ``version`` (or versions).
        what: What the file is, in messages (``"manifest"``, ``"scores file"``).
        error: Exception class raised.
        missing: Message when the file does not exist (default ``"<path>: <what> not found"``).
        version_label: What to call the file in the version message (default ``what``).
        version_note: Appended to the version message (e.g. which version this release reads).
        data: The file's bytes when the caller has fetched them already (a remote manifest);
            ``path`` then only names the file in messages.

    Returns:
        The parsed object.

    Raises:
        StreamPruneError: (``error``) missing file, invalid JSON, another format, or an
            unsupported version, naming the file.
    """
    path = os.fspath(path)
    try:
        if data is None:
            with open(path, "rb") as fh:
                data = fh.read()
    except FileNotFoundError:
        raise error(missing or f"{path}: {what} not found") from None
    return parse_versioned_json(data, path, fmt, version, what, error, version_label, version_note)


def parse_versioned_json(
    data: bytes,
    path: str,
    fmt: str,
    version: int | tuple[int, ...],
    what: str,
    error: type[StreamPruneError] = StreamPruneError,
    version_label: str | None = None,
    version_note: str = "",
) -> dict[str, Any]:
    """Parse bytes already read from ``path`` as :func:`read_versioned_json` does.

    For callers that need the bytes too (to check their digest against a manifest).

    Raises:
        StreamPruneError: (``error``) invalid JSON, another format, or an unsupported version.
    """
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise error(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise error(f"{path}: not a streamprune {what}")
    versions = version if isinstance(version, tuple) else (version,)
    if obj.get("version") not in versions:
        raise error(f"{path}: {version_label or what} version {obj.get('version')} is not supported{version_note}")
    return obj
