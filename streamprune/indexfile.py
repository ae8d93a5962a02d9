"""The per-shard index sidecar: save, load and check it against its shard.

Format (``<shard>.index.json``, UTF-8 JSON, version 1)::

    {"format": "streamprune-index", "version": 1,
     "shard": "shard-000000.tar", "shard_bytes": 123456, "sha256": "<hex or empty>",
     "keys": [...], "labels": [...],            # label -1 = unlabelled
     "start": [...], "end": [...],              # byte range of each sample (headers included)
     "members": [[[ext, data_offset, size], ...], ...],
     "checksum": "xxh3_64", "checksums": ["<16 hex digits>", ...]}   # optional

Arrays are aligned by sample position in the shard. The manifest stores the SHA-256 of this
file, so a mask bound to an index is bound to these exact byte ranges. ``checksums`` (optional:
indexes written before it load without) is each sample's
:func:`~streamprune.shardindex.sample_checksum`, what readers check with ``verify=True``.

Beside it, :func:`save_index` writes a binary companion ``<shard>.index.npz`` (version 2)
holding the same index compactly: integers in the narrowest dtype that holds the shard's
values, byte offsets replaced by gaps in 512-byte blocks (a sample's start, end and member
offsets follow from them and the member sizes; checked when writing), keys as one
NUL-separated UTF-8 blob, all in one ``columns`` array, tagged with the SHA-256 of the JSON it
was made from (layout: FORMATS.md). Parsing the JSON costs ~2 us per sample, every epoch, in every
DataLoader worker, whatever the mask keeps; the companion loads in a fraction of that and
builds member tuples only for the samples actually read. The JSON stays the index: its bytes
are still read and checked against the manifest; a companion that is missing, of another
version, or made from other JSON bytes (a cache left from before the JSON changed) is ignored
and the JSON is parsed instead. A companion whose own digest (``digest``: BLAKE2b over its
meta and columns) does not match, or that cannot be read at all, is damaged: loading it is an
:class:`~streamprune.errors.IndexMismatchError` naming the file, never a silently different
index and never silently skipped (storage that damages one file damages others).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os

import numpy as np

from . import storage
from .atomic import atomic_open, atomic_write_json
from .errors import IndexMismatchError, ManifestError
from .jsonfile import parse_versioned_json
from .shardindex import MemberTable, ShardIndex
from .tarindex import BLOCK

__all__ = ["INDEX_SUFFIX", "save_index", "load_index", "index_path_for", "companion_path", "object_marker"]

log = logging.getLogger(__name__)

INDEX_FORMAT = "streamprune-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".index.json"
#: Hex digits of each checksum algorithm's digest, as the JSON stores it (zero-padded).
_HEX_DIGITS = {"xxh3_64": 16, "crc32": 8}
COMPANION_FORMAT = "streamprune-index-companion"
#: Version 3: ``digest`` covers the meta as well as the columns (version 2 covered only the
#: columns, so a damaged meta field such as ``shard_bytes`` or ``extensions`` loaded silently).
COMPANION_VERSION = 3


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
        **_checksum_fields(index),
        **_object_field(index),
        **(extra_fields or {}),
    }
    data = atomic_write_json(path, obj, fsync=False)
    digest = hashlib.sha256(data).hexdigest()
    if companion:
        _save_companion(index, companion_path(path), digest)
    return digest


def _checksum_fields(index: ShardIndex) -> dict:
    """The optional ``checksum``/``checksums`` JSON fields (none when the index has no checksums)."""
    if index.checksums is None:
        return {}
    width = _HEX_DIGITS[index.checksum_algorithm]
    return {"checksum": index.checksum_algorithm, "checksums": [f"{v:0{width}x}" for v in np.asarray(index.checksums).tolist()]}


def _object_field(index: ShardIndex) -> dict:
    """The optional ``object`` field: the shard object's size, ETag and URL when it was indexed remotely."""
    obj = index.extra.get("object")
    return {"object": obj} if isinstance(obj, dict) else {}


def object_marker(index: ShardIndex) -> dict:
    """The index's ``object`` record (``{"size", "etag", "url"}``), or ``{}`` when it has none.

    Indexing or writing a remote shard records the object's ETag (or version marker) and the
    URL it was read from; a reader of that same URL checks it, so an object replaced after
    indexing is an error before any byte is used (a copy elsewhere has its own ETag).
    """
    obj = index.extra.get("object")
    return obj if isinstance(obj, dict) else {}


def _narrow(values: np.ndarray | list[int], signed: bool = False) -> np.ndarray:
    """``values`` in the smallest integer dtype that holds them (what the companion stores)."""
    a = np.asarray(values, dtype=np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dtype in ((np.int8, np.int16, np.int32, np.int64) if signed else (np.uint8, np.uint16, np.uint32, np.uint64)):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return a.astype(dtype)
    raise OverflowError(f"values {lo}..{hi} do not fit 64 bits")


def _layout_from_gaps(
    start_gap: np.ndarray, member_count: np.ndarray, member_gap: np.ndarray, member_size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rebuild ``(start, end, member_first, member_offset)`` (int64) from the compact columns.

    The tar layout, walked in order from byte 0: skip ``start_gap[i]`` blocks, the sample
    starts; for each of its members skip ``member_gap[j]`` blocks (its headers), the data
    starts, then the data padded to a whole block; the sample ends there.
    """
    n = len(member_count)
    first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(member_count, out=first[1:])
    gap = member_gap.astype(np.int64) * BLOCK
    padded = (member_size.astype(np.int64) + (BLOCK - 1)) // BLOCK * BLOCK
    # walked[j]: bytes advanced by the members before member j (their headers and padded data)
    walked = np.zeros(len(gap) + 1, dtype=np.int64)
    np.cumsum(gap + padded, out=walked[1:])
    skipped = np.cumsum(start_gap.astype(np.int64) * BLOCK)  # bytes between samples, up to sample i
    start = skipped + walked[first[:-1]]
    end = skipped + walked[first[1:]]
    member_offset = np.repeat(skipped, member_count.astype(np.int64)) + walked[:-1] + gap
    return start, end, first, member_offset


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
    extensions: list[str] = []
    ext_ids: dict[str, int] = {}
    counts, ext_col, offset_col, size_col = [], [], [], []
    for group in index.members:
        counts.append(len(group))
        for ext, offset, size in group:
            e = ext_ids.get(ext)
            if e is None:
                e = ext_ids[ext] = len(extensions)
                extensions.append(ext)
            ext_col.append(e)
            offset_col.append(offset)
            size_col.append(size)
    start = np.asarray(index.start, dtype=np.int64)
    end = np.asarray(index.end, dtype=np.int64)
    offset = np.asarray(offset_col, dtype=np.int64)
    size = np.asarray(size_col, dtype=np.int64)
    count = np.asarray(counts, dtype=np.int64)
    first = np.zeros(len(count) + 1, dtype=np.int64)
    np.cumsum(count, out=first[1:])
    # Gaps in blocks: between the previous sample's end and this sample's start, and between the
    # previous position in the sample (its start, or the last member's padded data end) and a
    # member's data. In a tar every one is a whole number of blocks (1 for a plain ustar header).
    prev_end = np.concatenate([[0], end[:-1]])
    padded = (size + (BLOCK - 1)) // BLOCK * BLOCK
    before = np.concatenate([[0], offset + padded])[:-1] if len(offset) else offset
    is_first = np.zeros(len(offset), dtype=bool)
    is_first[first[:-1][count > 0]] = True
    before = np.where(is_first, np.repeat(start, count), before)
    start_gap_bytes = start - prev_end
    member_gap_bytes = offset - before
    gaps = np.concatenate([start_gap_bytes, member_gap_bytes])
    if (gaps < 0).any() or (gaps % BLOCK).any() or (size < 0).any():
        log.debug("%s: byte ranges are not a tar's block layout; no binary companion (the JSON is used)", path)
        return
    columns = {
        "start_gap": _narrow(start_gap_bytes // BLOCK),
        "member_count": _narrow(count),
        "member_ext": _narrow(ext_col),
        "member_gap": _narrow(member_gap_bytes // BLOCK),
        "member_size": _narrow(size),
    }
    # Only what the layout rebuilds exactly is left out: check it, rather than trust the walk.
    got = _layout_from_gaps(columns["start_gap"], columns["member_count"], columns["member_gap"], columns["member_size"])
    if not (np.array_equal(got[0], start) and np.array_equal(got[1], end) and np.array_equal(got[3], offset)):
        log.debug("%s: samples' byte ranges do not follow from their members; no binary companion (the JSON is used)", path)
        return
    arrays = {"keys": np.frombuffer(blob, dtype=np.uint8), "labels": _narrow(index.labels, signed=True), **columns}
    if index.checksums is not None:
        arrays["checksums"] = np.asarray(index.checksums, dtype=np.uint64)
    # One npz member for every column (back to back, 8-byte aligned, described in meta.columns):
    # each npz member costs a zip entry and a header parse on load, more than the data itself.
    layout, chunks, pos = [], [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        layout.append({"name": name, "dtype": a.dtype.str, "offset": pos, "length": len(a)})
        chunks.append(a.tobytes())
        pad = -a.nbytes % 8
        chunks.append(bytes(pad))
        pos += a.nbytes + pad
    meta = {
        "format": COMPANION_FORMAT,
        "version": COMPANION_VERSION,
        "json_sha256": json_sha256,
        "shard": index.shard,
        "shard_bytes": int(index.shard_bytes),
        "sha256": index.sha256,
        "extensions": extensions,
        "num_samples": len(keys),
        "num_members": len(offset),
        "block": BLOCK,
        "checksum": index.checksum_algorithm if index.checksums is not None else "",
        **_object_field(index),
        "columns": layout,
    }
    columns = b"".join(chunks)
    # the digest covers every meta field and the columns, so no damaged byte is ever used
    meta["digest"] = _companion_digest(meta, columns)
    with atomic_open(path, "wb", fsync=False) as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), columns=np.frombuffer(columns, dtype=np.uint8))


def _companion_digest(meta: dict, columns: bytes) -> str:
    """BLAKE2b-128 of the meta's canonical JSON (without ``digest``) followed by the column bytes."""
    fields = {k: v for k, v in meta.items() if k != "digest"}
    h = hashlib.blake2b(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8"), digest_size=16)
    h.update(columns)
    return h.hexdigest()


def _damaged(name: str, why: str) -> IndexMismatchError:
    return IndexMismatchError(
        f"{name}: index companion is damaged ({why}); delete it to read the JSON index, or re-run `streamprune index`"
    )


_COMPANION_ARRAYS = ("keys", "labels", "start_gap", "member_count", "member_ext", "member_gap", "member_size")


def _read(path: str, storage_options: dict | None) -> bytes:
    """A local file's or a URL's bytes (``FileNotFoundError`` when missing)."""
    if storage.is_remote(path):
        return storage.read_bytes(path, storage_options)
    with open(storage.local_path(path), "rb") as fh:
        return fh.read()


def _load_bound_companion(path: str, expected_sha256: str, storage_options: dict | None = None) -> ShardIndex | None:
    """The companion as the index when its bytes have the digest the manifest recorded, else ``None``."""
    try:
        raw = _read(path, storage_options)
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        return None  # rewritten since the manifest: the JSON decides (and is checked against it)
    return _load_companion(io.BytesIO(raw), None, path)


_warned_old_companion = False


def _warn_old_companion(name: str, version: object) -> None:
    """Say once per process that companions of another version make every shard parse its JSON."""
    global _warned_old_companion
    if not _warned_old_companion:
        _warned_old_companion = True
        log.warning("%s: index companion version %s, this version reads %d: the JSON sidecar is parsed instead "
                    "(slower; remote reads make 2 more requests a shard). Re-run `streamprune index` on the "
                    "dataset to write current companions (said once per process)", name, version, COMPANION_VERSION)


def _load_companion(source: str | io.BytesIO, json_sha256: str | None, name: str | None = None) -> ShardIndex | None:
    """The index from the binary companion; ``None`` when it is absent or a stale cache.

    Args:
        source: The companion file (or its bytes).
        json_sha256: Digest of the JSON sidecar it must have been made from; ``None`` when the
            caller has already checked the companion's own digest against the manifest.
        name: The companion's path or URL, for messages (default: ``source`` when a path).

    Returns:
        The index, or ``None`` when the file is missing, of another format or version, or made
        from other JSON bytes: then the JSON is the index.

    Raises:
        IndexMismatchError: The companion is damaged: unreadable, its digest does not match its
            meta and columns, or its fields are inconsistent.
    """
    name = name or (source if isinstance(source, str) else "index companion")
    try:
        with np.load(source, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("meta is not a JSON object")
            if meta.get("format") != COMPANION_FORMAT or meta.get("version") != COMPANION_VERSION:
                _warn_old_companion(name, meta.get("version"))
                return None  # another version (v1, v2: other columns) is a stale cache: the JSON is read
            data = z["columns"]
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any failure to parse the npz is damage
        raise _damaged(name, f"unreadable: {type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
        raise _damaged(name, "its columns are not a uint8 vector")
    if _companion_digest(meta, data.tobytes()) != meta.get("digest"):
        raise _damaged(name, "its digest does not match its meta and columns")
    if json_sha256 is not None and meta.get("json_sha256") != json_sha256:
        return None  # made from other JSON bytes: a stale cache, the JSON is the index
    try:
        names = _COMPANION_ARRAYS + (("checksums",) if meta.get("checksum") else ())
        layout = {c["name"]: c for c in meta["columns"]}
        arrays = {}
        for column in names:
            c = layout[column]
            dtype = np.dtype(c["dtype"])
            if dtype.kind not in "iu" or c["offset"] % 8:
                raise ValueError(f"column {column!r}: dtype {dtype} at offset {c['offset']}")
            arrays[column] = np.frombuffer(data, dtype=dtype, count=c["length"], offset=c["offset"])
        index = _companion_index(meta, arrays)
    except Exception as exc:  # noqa: BLE001 - a digest-valid companion with bad fields: a writer bug
        raise _damaged(name, f"inconsistent fields: {exc}") from None
    return index


def _companion_index(meta: dict, arrays: dict) -> ShardIndex:
    """The :class:`ShardIndex` a companion's meta and columns describe (``ValueError`` if inconsistent)."""
    if not (isinstance(meta["shard"], str) and all(isinstance(e, str) for e in meta.get("extensions") or [])):
        raise ValueError("fields of the wrong type")
    n = int(meta.get("num_samples", -1))
    m = int(meta.get("num_members", -1))
    extensions = list(meta.get("extensions") or [])
    count, ext_id = arrays["member_count"], arrays["member_ext"]
    checksums = arrays.get("checksums")
    if not (
        meta.get("block") == BLOCK
        and len(arrays["labels"]) == n == len(arrays["start_gap"]) == len(count)
        and int(count.sum(dtype=np.int64)) == m == len(ext_id) == len(arrays["member_gap"]) == len(arrays["member_size"])
        and (m == 0 or int(ext_id.max()) < len(extensions))
        and (checksums is None or len(checksums) == n)
        and all(a.dtype.kind in "iu" for a in arrays.values())
    ):
        raise ValueError("column lengths do not match the counts")
    keys = arrays["keys"].tobytes().decode("utf-8").split("\0") if n else []
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} samples")
    start, end, first, offset = _layout_from_gaps(arrays["start_gap"], count, arrays["member_gap"], arrays["member_size"])
    obj = meta.get("object")
    return ShardIndex(
        extra={"object": obj} if isinstance(obj, dict) else {},
        shard=meta["shard"],
        shard_bytes=int(meta["shard_bytes"]),
        keys=keys,
        labels=arrays["labels"].astype(np.int64),
        start=start,
        end=end,
        members=MemberTable(first, ext_id, offset, arrays["member_size"], extensions),
        sha256=meta.get("sha256", ""),
        checksums=None if checksums is None else checksums.astype(np.uint64),
        checksum_algorithm=meta.get("checksum", "") if checksums is not None else "",
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
    if "checksums" in obj and not isinstance(obj["checksums"], list):
        return "'checksums' must be a list of hex strings"
    return None


def load_index(
    path: str | os.PathLike,
    expected_sha256: str | None = None,
    companion_sha256: str | None = None,
    storage_options: dict | None = None,
) -> ShardIndex:
    """Load a shard index sidecar.

    Args:
        path: Index file path.
        expected_sha256: If given, the digest recorded in the manifest; a different file is
            an error (the index was rewritten after the manifest and masks were made).
        companion_sha256: The binary companion's digest as the manifest records it: when the
            companion has exactly these bytes it is the index, and the JSON is not read at
            all (what makes an epoch start cheap at scale); otherwise the JSON is read as usual.
        storage_options: fsspec options when ``path`` is a URL.

    Returns:
        The :class:`ShardIndex`.

    Raises:
        ManifestError: The file is missing or not a streamprune index.
        IndexMismatchError: The file's digest differs from ``expected_sha256``, or its binary
            companion is damaged (the message names the companion).
    """
    path = os.fspath(path)
    if companion_sha256:
        bound = _load_bound_companion(companion_path(path), companion_sha256, storage_options)
        if bound is not None:
            return bound
    try:
        data = _read(path, storage_options)
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
    if storage.is_remote(path):
        try:
            fast = _load_companion(io.BytesIO(_read(companion_path(path), storage_options)), digest, companion_path(path))
        except OSError:
            fast = None
    else:
        fast = _load_companion(companion_path(path), digest)
    if fast is not None:
        return fast
    obj = parse_versioned_json(
        data, path, INDEX_FORMAT, INDEX_VERSION, "shard index", ManifestError, "index", f" (expected {INDEX_VERSION})"
    )
    problem = _json_problem(obj)
    if problem:
        raise ManifestError(f"{path}: malformed shard index: {problem}")
    n = len(obj["keys"])
    has_checksums = "checksums" in obj
    for field in ("labels", "start", "end", "members") + (("checksums",) if has_checksums else ()):
        if len(obj[field]) != n:
            raise ManifestError(f"{path}: field {field!r} has {len(obj[field])} entries for {n} keys")
    checksums = None
    if has_checksums:
        try:
            checksums = np.array([int(h, 16) for h in obj["checksums"]], dtype=np.uint64)
        except (TypeError, ValueError, OverflowError):
            raise ManifestError(f"{path}: field 'checksums' holds a value that is not a 64-bit hex number") from None
    return ShardIndex(
        shard=obj["shard"],
        shard_bytes=int(obj["shard_bytes"]),
        keys=obj["keys"],
        labels=np.asarray(obj["labels"], dtype=np.int64),
        start=np.asarray(obj["start"], dtype=np.int64),
        end=np.asarray(obj["end"], dtype=np.int64),
        members=[[tuple(m) for m in group] for group in obj["members"]],
        sha256=obj.get("sha256", ""),
        checksums=checksums,
        checksum_algorithm=str(obj.get("checksum", "")) if has_checksums else "",
        extra={"object": obj["object"]} if isinstance(obj.get("object"), dict) else {},
    )
