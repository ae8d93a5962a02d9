"""The per-shard index sidecar: save, load and check it against its shard.

Format (``<shard>.index.json``, UTF-8 JSON, version 1)::

    {"format": "streamprune-index", "version": 1,
     "shard": "shard-000000.tar", "shard_bytes": 123456, "sha256": "<hex or empty>",
     "keys": [...], "labels": [...],            # label -1 = unlabelled
     "start": [...], "end": [...],              # byte range of each sample (headers included)
     "members": [[[ext, data_offset, size], ...], ...]}

Arrays are aligned by sample position in the shard. The manifest stores the SHA-256 of this
file, so a mask bound to an index is bound to these exact byte ranges.

Beside it, :func:`save_index` writes a binary companion ``<shard>.index.npz`` holding the same
arrays flat (keys as one NUL-separated UTF-8 blob, members as rows), tagged with the SHA-256
of the JSON it was made from. Parsing the JSON costs ~2 us per sample, every epoch, in every
DataLoader worker, whatever the mask keeps; the companion loads in a fraction of that and
builds member tuples only for the samples actually read. The JSON stays the index: its bytes
are still read and checked against the manifest, and a companion that is missing, unreadable,
or made from other JSON bytes is ignored (the JSON is parsed instead).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from .atomic import atomic_open, atomic_write_json
from .errors import IndexMismatchError, ManifestError
from .shardindex import MemberTable, ShardIndex

__all__ = ["INDEX_SUFFIX", "save_index", "load_index", "index_path_for", "companion_path"]

log = logging.getLogger(__name__)

INDEX_FORMAT = "streamprune-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".index.json"
COMPANION_FORMAT = "streamprune-index-companion"
COMPANION_VERSION = 1


def index_path_for(shard_path: str | os.PathLike) -> str:
    """Return the sidecar index path for a shard path.

    Args:
        shard_path: Path of the tar shard.

    Returns:
        ``<shard_path>`` with ``.index.json`` appended.
    """
    return os.fspath(shard_path) + INDEX_SUFFIX


def companion_path(path: str | os.PathLike) -> str:
    """Path of the binary companion of an index sidecar (``x.index.json`` -> ``x.index.npz``)."""
    path = os.fspath(path)
    return (path[: -len(".json")] if path.endswith(".json") else path) + ".npz"


def save_index(
    index: ShardIndex, path: str | os.PathLike, companion: bool = True, extra_fields: dict | None = None
) -> str:
    """Write a shard index atomically, and its binary companion.

    Args:
        index: The index to save.
        path: Destination path.
        companion: Also write ``<path>.npz`` (:func:`companion_path`), the fast-loading copy.
        extra_fields: Further top-level JSON fields (readers of the index format ignore them).

    Returns:
        SHA-256 hex digest of the JSON bytes written.
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
        "members": index.members if isinstance(index.members, list) else index.members.tolist(),  # tuples encode as arrays
        **(extra_fields or {}),
    }
    data = atomic_write_json(path, obj, fsync=False)
    digest = hashlib.sha256(data).hexdigest()
    if companion:
        _save_companion(index, companion_path(path), digest)
    return digest


def _save_companion(index: ShardIndex, path: str, json_sha256: str) -> None:
    keys = index.keys
    if any("\0" in k for k in keys):
        log.debug("%s: a key holds a NUL byte; no binary companion (the JSON is used)", path)
        return
    try:
        blob = "\0".join(keys).encode("utf-8")
    except UnicodeEncodeError:
        log.debug("%s: keys are not valid UTF-8; no binary companion (the JSON is used)", path)
        return
    members = index.members
    extensions: list[str] = []
    ext_ids: dict[str, int] = {}
    counts, ext_col, offset_col, size_col = [], [], [], []
    for group in members:
        counts.append(len(group))
        for ext, offset, size in group:
            e = ext_ids.get(ext)
            if e is None:
                e = ext_ids[ext] = len(extensions)
                extensions.append(ext)
            ext_col.append(e)
            offset_col.append(offset)
            size_col.append(size)
    first = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    meta = {
        "format": COMPANION_FORMAT,
        "version": COMPANION_VERSION,
        "json_sha256": json_sha256,
        "shard": index.shard,
        "shard_bytes": int(index.shard_bytes),
        "sha256": index.sha256,
        "extensions": extensions,
        "num_samples": len(keys),
    }
    with atomic_open(path, "wb", fsync=False) as fh:
        np.savez(
            fh,
            meta=np.array(json.dumps(meta)),
            keys=np.frombuffer(blob, dtype=np.uint8),
            labels=np.asarray(index.labels, dtype=np.int64),
            start=np.asarray(index.start, dtype=np.int64),
            end=np.asarray(index.end, dtype=np.int64),
            member_first=first,
            member_ext=np.asarray(ext_col, dtype=np.int32),
            member_offset=np.asarray(offset_col, dtype=np.int64),
            member_size=np.asarray(size_col, dtype=np.int64),
        )


def _load_companion(path: str, json_sha256: str) -> ShardIndex | None:
    """The index from the binary companion, or ``None`` when it cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != COMPANION_FORMAT or meta.get("version") != COMPANION_VERSION:
                return None
            if meta.get("json_sha256") != json_sha256:
                return None  # made from other JSON bytes: stale
            arrays = {name: z[name] for name in ("keys", "labels", "start", "end", "member_first", "member_ext", "member_offset", "member_size")}
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache must never stop a read: the JSON is the index
        log.debug("%s: ignoring unreadable index companion (%s)", path, exc)
        return None
    try:
        return _companion_index(meta, arrays, path)
    except Exception as exc:  # noqa: BLE001 - wrong types or values in the cache: the JSON is the index
        log.debug("%s: ignoring inconsistent index companion (%s)", path, exc)
        return None


def _companion_index(meta: dict, arrays: dict, path: str) -> ShardIndex | None:
    columns = [arrays[k] for k in ("labels", "start", "end", "member_first", "member_offset", "member_size")]
    if not (
        all(a.ndim == 1 and a.dtype == np.int64 for a in columns)
        and arrays["member_ext"].ndim == 1 and arrays["member_ext"].dtype.kind in "iu"
        and isinstance(meta["shard"], str) and all(isinstance(e, str) for e in meta.get("extensions") or [])
        and bool((np.diff(arrays["member_first"]) >= 0).all())
    ):
        log.debug("%s: ignoring index companion with arrays of the wrong type or shape", path)
        return None
    n = int(meta.get("num_samples", -1))
    keys = arrays["keys"].tobytes().decode("utf-8").split("\0") if n else []
    first = arrays["member_first"]
    m = len(arrays["member_ext"])
    extensions = list(meta.get("extensions") or [])
    if not (
        len(keys) == n == len(arrays["labels"]) == len(arrays["start"]) == len(arrays["end"]) == len(first) - 1
        and first[0] == 0 and first[-1] == m == len(arrays["member_offset"]) == len(arrays["member_size"])
        and (m == 0 or 0 <= arrays["member_ext"].min() and arrays["member_ext"].max() < len(extensions))
    ):
        log.debug("%s: ignoring inconsistent index companion", path)
        return None
    return ShardIndex(
        shard=meta["shard"],
        shard_bytes=int(meta["shard_bytes"]),
        keys=keys,
        labels=arrays["labels"],
        start=arrays["start"],
        end=arrays["end"],
        members=MemberTable(first, arrays["member_ext"], arrays["member_offset"], arrays["member_size"], extensions),
        sha256=meta.get("sha256", ""),
    )


def _is_int(value: object) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


def _json_problem(obj: dict) -> str | None:
    """What is wrong with the fields of a parsed index sidecar, or ``None`` when they are well typed."""
    if not isinstance(obj.get("shard"), str) or not _is_int(obj.get("shard_bytes")) or not isinstance(obj.get("sha256", ""), str):
        return "'shard' must be a string, 'shard_bytes' an integer and 'sha256' a string"
    keys = obj.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return "'keys' must be a list of strings"
    for field in ("labels", "start", "end"):
        values = obj.get(field)
        if not isinstance(values, list) or not all(_is_int(v) for v in values):
            return f"{field!r} must be a list of integers"
    members = obj.get("members")
    if not isinstance(members, list):
        return "'members' must be a list"
    for i, group in enumerate(members):
        if not isinstance(group, list) or not all(
            isinstance(m, list) and len(m) == 3 and isinstance(m[0], str) and _is_int(m[1]) and _is_int(m[2]) for m in group
        ):
            return f"sample {i}: members must be [extension, offset, size] lists"
    return None


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
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ManifestError(f"{path}: shard index cannot be read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise IndexMismatchError(
            f"{path}: index does not match the manifest (its checksum changed since the manifest "
            "was written); re-run `streamprune index` and make new masks"
        )
    fast = _load_companion(companion_path(path), digest)
    if fast is not None:
        return fast
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise ManifestError(f"{path}: shard index is not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != INDEX_FORMAT:
        raise ManifestError(f"{path}: not a streamprune shard index")
    if obj.get("version") != INDEX_VERSION:
        raise ManifestError(f"{path}: index version {obj.get('version')} is not supported (expected {INDEX_VERSION})")
    problem = _json_problem(obj)
    if problem:
        raise ManifestError(f"{path}: malformed shard index: {problem}")
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
