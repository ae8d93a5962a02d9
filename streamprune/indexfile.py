"""The per-shard index sidecar: save, load and check it against its shard.

Format (``<shard>.index.json``, UTF-8 JSON, version 1)::

    {"format": "streamprune-index", "version": 1,
     "shard": "shard-000000.tar", "shard_bytes": 123456, "sha256": "<hex or empty>",
     "keys": [...], "labels": [...],            # label -1 = unlabelled
     "start": [...], "end": [...],              # byte range of each sample (headers included)
     "members": [[[ext, data_offset, size], ...], ...]}

Arrays are aligned by sample position in the shard. The manifest stores the SHA-256 of this
file, so a mask bound to an index is bound to these exact byte ranges.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .atomic import atomic_write_json
from .errors import IndexMismatchError, ManifestError
from .tarindex import ShardIndex

__all__ = ["INDEX_SUFFIX", "save_index", "load_index", "index_path_for"]

INDEX_FORMAT = "streamprune-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".index.json"


def index_path_for(shard_path: str | os.PathLike) -> str:
    """Return the sidecar index path for a shard path.

    Args:
        shard_path: Path of the tar shard.

    Returns:
        ``<shard_path>`` with ``.index.json`` appended.
    """
    return os.fspath(shard_path) + INDEX_SUFFIX


def save_index(index: ShardIndex, path: str | os.PathLike) -> str:
    """Write a shard index atomically.

    Args:
        index: The index to save.
        path: Destination path.

    Returns:
        SHA-256 hex digest of the bytes written.
    """
    obj = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "shard": index.shard,
        "shard_bytes": int(index.shard_bytes),
        "sha256": index.sha256,
        "keys": index.keys,
        "labels": index.labels.tolist(),
        "start": index.start.tolist(),
        "end": index.end.tolist(),
        "members": index.members,  # tuples encode as JSON arrays: no per-member copy
    }
    data = atomic_write_json(path, obj, fsync=False)
    return hashlib.sha256(data).hexdigest()


def load_index(path: str | os.PathLike, expected_sha256: str | None = None) -> ShardIndex:
    """Load a shard index sidecar.

    Args:
        path: Index file path.
        expected_sha256: If given, the digest recorded in the manifest; a different file is
            an error (the index was rewritten after the manifest and masks were made).

    Returns:
        The :class:`ShardIndex`.

    Raises:
        ManifestError: The file is missing or not a streamprune index.
        IndexMismatchError: The file's digest differs from ``expected_sha256``.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ManifestError(f"{path}: shard index is missing (run `streamprune index` on the shard)") from None
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IndexMismatchError(
            f"{path}: index does not match the manifest (its checksum changed since the manifest "
            "was written); re-run `streamprune index` and make new masks"
        )
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{path}: shard index is not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != INDEX_FORMAT:
        raise ManifestError(f"{path}: not a streamprune shard index")
    if obj.get("version") != INDEX_VERSION:
        raise ManifestError(f"{path}: index version {obj.get('version')} is not supported (expected {INDEX_VERSION})")
    n = len(obj["keys"])
    for field in ("labels", "start", "end", "members"):
        if len(obj[field]) != n:
            raise ManifestError(f"{path}: field {field!r} has {len(obj[field])} entries for {n} keys")
    return ShardIndex(
        shard=obj["shard"],
        shard_bytes=int(obj["shard_bytes"]),
        keys=obj["keys"],
        labels=np.asarray(obj["labels"], dtype=np.int64),
        start=np.asarray(obj["start"], dtype=np.int64),
        end=np.asarray(obj["end"], dtype=np.int64),
        members=[[tuple(m) for m in group] for group in obj["members"]],
        sha256=obj.get("sha256", ""),
    )
