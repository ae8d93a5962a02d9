"""Index MosaicML MDS and LitData datasets in place, from their own ``index.json`` and offset tables.

Both formats keep a dataset-level ``index.json`` (the shard files, their sample counts and
how samples are encoded) and start every shard with the same offset table: a ``uint32``
sample count ``n`` then ``n + 1`` ``uint32`` offsets; sample ``i`` is the bytes
``[offset[i], offset[i + 1])`` of the shard. So a shard's :class:`~streamprune.shardindex.ShardIndex`
comes from reading ``4 * (n + 2)`` bytes, with no scan of the data: every sample is one
member (extension ``mds`` or ``litdata``) spanning its byte range.

**Keys** are the sample's global position in the dataset, in decimal (``"0"``, ``"1"``, ...):
the shards in the order ``index.json`` lists them, samples in shard order, which is the
sample id the format's own reader gives (``StreamingDataset[i]``, LitData's
``StreamingDataset[i]``). They stay valid as long as ``index.json`` is not rewritten.
With ``key_field`` (``streamprune index --key-field uid``) a sample's key is instead the value of
that field (a string, UTF-8 bytes or an integer in decimal: DataComp's 32-hex-digit uids, for
one), read from every sample at indexing time; keys must then be distinct (the manifest checks).

The data is read once, sequentially, only when something needs it: per-sample checksums,
the shard's SHA-256 and the hashes the format recorded (MDS ``raw_data.hashes``), labels or
keys from a field (decoded with the format's own decoder, :mod:`.sampleformats`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .errors import ArgumentError, CompressedShardError, IndexMismatchError, LabelError, ManifestError, StreamPruneError, redact
from .sampleformats import RAW_MEMBER, check_layout, decode_fields, field_names, sample_decoder
from .shardindex import DEFAULT_CHECKSUM, MemberTable, ShardIndex, sample_checksum

__all__ = ["INDEX_JSON", "ForeignShard", "ForeignDataset", "index_json_location", "open_foreign_dataset",
           "index_foreign_shard", "LABEL_FIELDS"]

log = logging.getLogger(__name__)

#: The dataset-level file both formats write.
INDEX_JSON = "index.json"
#: Fields taken as the label when ``label_field="auto"``, in this order.
LABEL_FIELDS = ("cls", "label")


@dataclass
class ForeignShard:
    """One shard as the dataset's ``index.json`` describes it.

    Attributes:
        location: Path or URL of the shard file.
        samples: Samples it holds.
        size: Its size in bytes as recorded (``-1``: not recorded).
        layout: What decoding its samples needs (see :mod:`.sampleformats`).
        hashes: Digests the format recorded, algorithm -> hex.
        first: Global position of its first sample.
    """

    location: str
    samples: int
    size: int
    layout: dict
    hashes: dict = field(default_factory=dict)
    first: int = 0


@dataclass
class ForeignDataset:
    """An MDS or LitData dataset: its format, its ``index.json`` and its shards in order."""

    format: str
    index_json: str
    shards: list[ForeignShard]

    def label_field(self, requested: str | None) -> str | None:
        """The field labels come from: ``requested``, or for ``"auto"`` the first of :data:`LABEL_FIELDS` present.

        Raises:
            LabelError: A named field is not one of the dataset's fields.
        """
        names = field_names(self.format, self.shards[0].layout) if self.shards else []
        if requested == "auto":
            return next((n for n in LABEL_FIELDS if n in names), None)
        if requested is not None and names and requested not in names:
            raise LabelError(f"{self.index_json}: no field {requested!r} to take labels from; fields: {', '.join(names)}")
        return requested

    def key_field(self, requested: str | None) -> str | None:
        """The field keys come from (``None``: keys are global positions).

        Raises:
            ArgumentError: ``requested`` is not one of the dataset's fields.
        """
        names = field_names(self.format, self.shards[0].layout) if self.shards else []
        if requested is not None and names and requested not in names:
            raise ArgumentError(f"{self.index_json}: no field {requested!r} to take keys from (--key-field); "
                                f"fields: {', '.join(names)}")
        return requested


def index_json_location(location: str | os.PathLike) -> str:
    """The ``index.json`` a dataset location names: the file itself, or the one in the directory or prefix."""
    location = os.fspath(location)
    if storage.basename(location) == INDEX_JSON:
        return location
    return storage.join(location.rstrip("/"), INDEX_JSON)


def _read_whole(location: str, storage_options: dict | None) -> bytes:
    with storage.open_object(location, storage_options) as obj:
        return obj.read(0, obj.size)


def open_foreign_dataset(location: str | os.PathLike, storage_options: dict | None = None) -> ForeignDataset | None:
    """Read an MDS or LitData ``index.json``; ``None`` when ``location`` holds neither.

    Args:
        location: The ``index.json`` or the directory (or URL prefix) holding it.
        storage_options: fsspec options for a URL.

    Returns:
        The dataset, or ``None`` when there is no ``index.json`` or it is another tool's.

    Raises:
        ManifestError: The ``index.json`` is one of these formats but malformed or empty.
        CompressedShardError: A shard is compressed (see :func:`~streamprune.sampleformats.check_layout`).
    """
    path = index_json_location(location)
    local = not storage.is_remote(path)
    if local and not os.path.isfile(storage.local_path(path)):
        return None
    try:
        obj = json.loads(_read_whole(path, storage_options))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    root = path[: -len(INDEX_JSON)].rstrip("/") or "."
    shards: list[ForeignShard] = []
    if isinstance(obj.get("shards"), list) and obj["shards"] and all(isinstance(s, dict) for s in obj["shards"]) \
            and obj["shards"][0].get("format") == "mds":
        fmt = "mds"
        for s in obj["shards"]:
            try:
                raw = s["raw_data"]
                loc = storage.join(root, raw["basename"])
                check_layout(fmt, s, redact(loc))
                shards.append(ForeignShard(loc, int(s["samples"]), int(raw["bytes"]), s, dict(raw.get("hashes") or {})))
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"{redact(path)}: malformed MDS shard record ({exc!r})") from None
    elif isinstance(obj.get("chunks"), list) and "config" in obj:
        fmt = "litdata"
        config = obj["config"]
        if not obj["chunks"] or not isinstance(config, dict):
            raise ManifestError(f"{redact(path)}: LitData index with no chunks (was optimize interrupted?)")
        for c in obj["chunks"]:
            try:
                loc = storage.join(root, c["filename"])
                check_layout(fmt, config, redact(loc))
                shards.append(ForeignShard(loc, int(c["chunk_size"]), int(c.get("chunk_bytes") or -1), config))
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"{redact(path)}: malformed LitData chunk record ({exc!r})") from None
    else:
        return None
    first = 0
    for shard in shards:
        shard.first = first
        first += shard.samples
    return ForeignDataset(fmt, path, shards)


def _offsets(head: bytes, shard: ForeignShard, name: str) -> np.ndarray:
    """The shard's offset table, checked against ``index.json`` and the object's size."""
    n = int(np.frombuffer(head[:4], "<u4")[0]) if len(head) >= 4 else -1
    if n != shard.samples:
        raise IndexMismatchError(f"{name}: its offset table counts {n} samples, index.json says {shard.samples}")
    table = head[4 : 4 * (n + 2)]
    if len(table) != 4 * (n + 1):
        raise IndexMismatchError(f"{name}: offset table cut short ({len(table)} of {4 * (n + 1)} bytes)")
    return np.frombuffer(table, "<u4").astype(np.int64)


def _check_offsets(offsets: np.ndarray, size: int, name: str) -> None:
    n = len(offsets) - 1
    # MDS puts its shard record (JSON) between the table and the first sample: >=, not ==
    if offsets[0] < 4 * (n + 2) or (np.diff(offsets) < 0).any() or offsets[-1] > size:
        raise IndexMismatchError(f"{name}: offset table is not a valid table of {n} samples in {size} bytes")


def _check_format_hashes(data: bytes, shard: ForeignShard, name: str) -> None:
    """Compare the digests the format recorded for the shard (MDS ``raw_data.hashes``) with its bytes."""
    for algo, expected in shard.hashes.items():
        if algo in hashlib.algorithms_available:
            got = hashlib.new(algo, data).hexdigest()
        else:
            # deferred: the peer's own hash functions (xxh*), an optional package
            from streaming.base.hashing import get_hash
            got = get_hash(algo, data)
        if got != expected:
            raise IndexMismatchError(
                f"{name}: {algo} digest {got} differs from the {expected} index.json records; the shard was changed or "
                "damaged after it was written"
            )


def _label(value: Any, field_name: str, key: str, name: str) -> int:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    raise LabelError(f"{name}: sample {key} (global position): field {field_name!r} holds {value!r}, not a label "
                     "(a non-negative integer); name the label field with --label-field, or index with --no-labels")


def _key(value: Any, field_name: str, position: int, name: str) -> str:
    """A sample's key from its ``field_name`` value: a string as it is, bytes as UTF-8, an integer in decimal."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = None
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        value = str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ArgumentError(f"{name}: sample {position} (global position): field {field_name!r} holds {value!r}, not a key "
                        "(a non-empty string, UTF-8 bytes or an integer); name another field with --key-field, or leave "
                        "it out for position keys")


def index_foreign_shard(
    fmt: str,
    shard: ForeignShard,
    name: str,
    *,
    label_field: str | None,
    checksum: bool = True,
    sample_checksums: bool = True,
    storage_options: dict | None = None,
    key_field: str | None = None,
) -> ShardIndex:
    """Index one MDS shard or LitData chunk from its offset table.

    Args:
        fmt: ``"mds"`` or ``"litdata"``.
        shard: The shard as ``index.json`` describes it.
        name: The shard's name in the manifest.
        label_field: Field holding each sample's integer label, or ``None``.
        checksum: Record the shard's SHA-256 and check the digests ``index.json`` records.
        sample_checksums: Record each sample's checksum (its bytes, :func:`~streamprune.shardindex.sample_checksum`).
        storage_options: fsspec options for a URL.
        key_field: Field whose value is each sample's key (e.g. DataComp's ``uid``); ``None``:
            keys are global positions. The shard is then read whole, each sample decoded.

    Returns:
        The index: one member per sample, keys its global positions (or its ``key_field``).

    Raises:
        IndexMismatchError: The shard disagrees with ``index.json`` (size, count, digest) or its table is invalid.
        LabelError: A sample's label field is not a non-negative integer.
        ArgumentError: A sample's key field is empty or not a string, bytes or integer.
    """
    shown = redact(shard.location)
    with storage.open_object(shard.location, storage_options) as obj:
        size, etag = obj.size, obj.etag
        if fmt == "mds" and shard.size >= 0 and size != shard.size:
            raise IndexMismatchError(f"{shown}: {size} bytes, index.json says {shard.size}")
        need_data = checksum or sample_checksums or label_field is not None or key_field is not None
        if need_data:
            data = obj.read(0, size)
            head = data
        else:
            data = b""
            head = obj.read(0, min(size, 4 * (shard.samples + 2)))
    offsets = _offsets(head, shard, shown)
    _check_offsets(offsets, size, shown)
    if fmt == "litdata" and len(offsets) > 1 and int(np.diff(offsets).min()) < 4 * len(shard.layout.get("data_format") or ()):
        # an item holds at least its leaves' uint32 size header; shorter items mean the rows live
        # in LitData's Arrow row footer (written when no field is an image, array or tensor, and
        # for compressed chunks): one IPC block for the whole chunk, no per-sample byte ranges
        raise CompressedShardError(
            f"{shown}: LitData chunk whose offset table points at empty items: its rows are stored together in an Arrow "
            "footer (LitData writes chunks this way when compressed, and when no field is an image, array or tensor), "
            "not at per-sample byte ranges, so it cannot be pruned by byte range. streamprune reads chunks written "
            "with compression=None whose samples include an image, numpy array or tensor field"
        )
    n = shard.samples
    start, end = offsets[:-1].copy(), offsets[1:].copy()
    keys = [str(shard.first + i) for i in range(n)]
    labels = np.full(n, -1, dtype=np.int64)
    checksums = None
    if need_data:
        if checksum:
            _check_format_hashes(data, shard, shown)
        view = memoryview(data)
        if sample_checksums:
            checksums = np.fromiter((sample_checksum((view[a:b],), DEFAULT_CHECKSUM) for a, b in zip(start.tolist(), end.tolist())),
                                    dtype=np.uint64, count=n)
        if label_field is not None or key_field is not None:
            decode = sample_decoder(fmt, shard.layout)
            member = RAW_MEMBER[fmt]
            for i, (a, b) in enumerate(zip(start.tolist(), end.tolist())):
                position = keys[i]
                fields = decode_fields(fmt, decode, {"__key__": position, "__url__": "", member: data[a:b]})
                for wanted in (label_field, key_field):
                    if wanted is not None and wanted not in fields:
                        raise LabelError(f"{shown}: sample {position} (global position) has no field {wanted!r}")
                if label_field is not None:
                    labels[i] = _label(fields[label_field], label_field, position, shown)
                if key_field is not None:
                    keys[i] = _key(fields[key_field], key_field, shard.first + i, shown)
    members = MemberTable(np.arange(n + 1, dtype=np.int64), np.zeros(n, dtype=np.int64), start, end - start, [RAW_MEMBER[fmt]])
    index = ShardIndex(
        shard=name, shard_bytes=size, keys=keys, labels=labels, start=start, end=end, members=members,
        sha256=hashlib.sha256(data).hexdigest() if checksum else "",
        checksums=checksums, checksum_algorithm=DEFAULT_CHECKSUM if checksums is not None else "",
    )
    index.format = fmt
    if storage.is_remote(shard.location):
        index.extra["object"] = {"size": size, "etag": etag, "url": shown}  # written: never credentials
    return index


def require_foreign(location: str | os.PathLike, storage_options: dict | None = None) -> ForeignDataset:
    """:func:`open_foreign_dataset`, with an error instead of ``None``.

    Raises:
        StreamPruneError: No MDS or LitData ``index.json`` at ``location``.
    """
    dataset = open_foreign_dataset(location, storage_options)
    if dataset is None:
        raise StreamPruneError(f"{redact(index_json_location(location))}: not an MDS or LitData index.json")
    return dataset
