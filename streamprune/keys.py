"""Key lists in and out: masks from lists of sample keys or 128-bit uids, and kept keys exported.

Formats read by :func:`read_key_list` (by file extension):

* text (``.txt`` and anything not listed below): one key per line, surrounding whitespace
  stripped, empty lines skipped; a first line holding a tab makes the file a table (header
  line, tab-separated columns, as :func:`export_keys` writes ``.txt`` with scores or uids),
  whose ``key`` column (or ``key_column``) is read;
* ``.npy`` (read with ``allow_pickle=False``): a 1-D array of strings (keys or uid hex
  strings); DataComp-style 128-bit uids as two ``uint64`` columns, either a structured array
  of two ``uint64`` fields (DataComp's ``np.dtype("u8,u8")`` subset files) or a ``[N, 2]``
  ``uint64`` array; a structured array with a ``key``/``uid`` field (or ``key_column``);
* ``.parquet`` and Arrow IPC files (``.arrow``, ``.feather``, ``.ipc``), which need the
  ``parquet`` extra (pyarrow): the column ``key_column``, else the first of ``key``, ``uid``,
  ``__key__``; a string column, a 16-byte binary column (uid bytes, big-endian) or a column
  of ``[hi, lo]`` uint64 pairs.

**Uids.** A 128-bit uid is written as 32 lowercase hex digits: ``hi`` (the first uint64
column) then ``lo``, each zero-padded to 16 digits (``f"{hi:016x}{lo:016x}"``), as DataComp
does. A sample's uid, derived from the manifest (:func:`manifest_uids`), is, in this order:
the content of its ``uid`` member (``<key>.uid``, text); else the ``"uid"`` field of its
``json`` member (DataComp's webdataset shards); else its key, when the key is 32 hex digits
(DataComp shards resharded by uid are keyed by the uid hex); else it has none. Only those
small members are read, by byte range, and only for the samples needed.

**Matching** (:func:`match_key_list`): ids typed as uids (two uint64 columns, 16-byte binary,
or a column named ``uid``) are matched against the samples' uids. Other ids are matched against
the keys first; ids not found as keys that look like uids (32 hex digits, any case) are then
looked up among the samples' uids. Ids found nowhere are *missing*: they are counted and
reported, and by default any missing id is an error (:class:`MissingKeysError`): a key list
made for another version of a dataset would otherwise silently drop samples.
``allow_missing=True`` (``--allow-missing``) accepts them; the count and a few examples
are still recorded in the mask's provenance. Repeated ids count once.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .atomic import atomic_open, temp_name
from .engine import Engine
from .errors import ArgumentError, MissingKeysError, StorageError, StreamPruneError
from .keytable import KeyTable, TableMatch, build_key_table, id_digests
from .manifest import Manifest, ManifestLike, open_manifest
from .masks import MAGIC, KeepMask, Mask, MaskFile, mask_from_bool, provenance_record
from .optional import require_pyarrow
from .scores import ScoreFile
from .shardindex import ShardIndex
from .shardmask import write_mask_by_shard

__all__ = [
    "ARROW_EXTENSIONS",
    "KeyList",
    "KeyMatch",
    "MissingKeysError",
    "MissingUidError",
    "export_keys",
    "is_uid",
    "manifest_uids",
    "mask_from_key_list",
    "mask_from_keys",
    "match_key_list",
    "read_key_list",
    "read_member_data",
    "sample_scores",
    "uid_hex",
    "uid_pair",
]

#: File extensions read and written through pyarrow (the ``parquet`` extra).
ARROW_EXTENSIONS = (".parquet", ".arrow", ".feather", ".ipc")
_HEX = frozenset("0123456789abcdefABCDEF")
#: Columns tried, in order, when no key column is named.
_DEFAULT_COLUMNS = ("key", "uid", "__key__")


class MissingUidError(StreamPruneError):
    """Uids were asked for, and a sample has none (see :func:`manifest_uids`)."""


@dataclass
class KeyList:
    """Ids read from a key-list file.

    Attributes:
        ids: The ids as strings (keys, or uid hex for uids), in file order.
        kind: ``"uid"`` when the file types them as 128-bit uids, else ``"key"``.
        source: The file read (``None`` for lists built in memory).
        column: The column read, for tables.
    """

    ids: list[str]
    kind: str = "key"
    source: str | None = None
    column: str | None = None


@dataclass
class KeyMatch:
    """Where each distinct id of a key list is in a manifest.

    Attributes:
        ids: The distinct ids, first occurrence order.
        positions: ``int64`` manifest position of each id, ``-1`` when missing.
        duplicates: Ids in the list beyond their first occurrence.
        matched_by: ``"key"``, ``"uid"`` or ``"key+uid"``: what the found ids were matched with.
    """

    ids: list[str]
    positions: np.ndarray
    duplicates: int
    matched_by: str

    @property
    def missing(self) -> list[str]:
        """The ids not found, in list order."""
        return [self.ids[i] for i in np.flatnonzero(self.positions < 0)]


def is_uid(text: str) -> bool:
    """Whether ``text`` is a 128-bit uid written as 32 hex digits (any case)."""
    return len(text) == 32 and _HEX.issuperset(text)


def uid_hex(hi: int, lo: int) -> str:
    """The 32-digit lowercase hex form of a uid given as two uint64 halves (``hi`` first)."""
    return f"{int(hi):016x}{int(lo):016x}"


def uid_pair(uid: str) -> tuple[int, int]:
    """The ``(hi, lo)`` uint64 halves of a 32-digit hex uid (inverse of :func:`uid_hex`).

    Raises:
        ValueError: ``uid`` is not 32 hex digits.
    """
    if not is_uid(uid):
        raise ArgumentError(f"{uid!r} is not a 128-bit uid (32 hex digits)")
    return int(uid[:16], 16), int(uid[16:], 16)


# --- reading key lists ---------------------------------------------------------------------


def _uids_from_pairs(pairs: np.ndarray) -> list[str]:
    pairs = np.asarray(pairs, dtype=np.uint64).reshape(-1, 2)
    return [uid_hex(hi, lo) for hi, lo in pairs.tolist()]


def _strings(values: Iterable[Any]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


#: Ids a key-list reader yields at once (:func:`iter_key_list`): ~25 MB of Python strings.
KEY_CHUNK = 1 << 18


def _npy_chunks(path: str, key_column: str | None, size: int) -> Iterator[KeyList]:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: a list as long as the dataset is read a chunk at a time
    names = arr.dtype.names
    if names:
        if len(names) == 2 and all(arr.dtype[n] == np.uint64 for n in names) and key_column is None:
            for i in range(0, max(len(arr), 1), size):
                part = arr[i : i + size]
                yield KeyList(_uids_from_pairs(np.stack([part[names[0]], part[names[1]]], axis=-1)), "uid", path)
            return
        column = key_column or next((c for c in _DEFAULT_COLUMNS if c in names), None)
        if column not in names:
            raise StreamPruneError(f"{path}: no key column {key_column or _DEFAULT_COLUMNS!r} among fields {list(names)}")
        field = arr[column]
        pairs = field.dtype == np.uint64 and field.ndim == 2 and field.shape[1] == 2
        for i in range(0, max(len(field), 1), size):
            part = field[i : i + size]
            if pairs:
                yield KeyList(_uids_from_pairs(part), "uid", path, column)
            else:
                yield KeyList(_strings(part.tolist()), "uid" if column == "uid" else "key", path, column)
        return
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype == np.uint64:
        for i in range(0, max(len(arr), 1), size):
            yield KeyList(_uids_from_pairs(arr[i : i + size]), "uid", path)
        return
    if arr.ndim != 1 or arr.dtype.kind not in "USiu":
        raise StreamPruneError(
            f"{path}: a .npy key list must be 1-D strings, [N, 2] uint64 uids or a structured array; got {arr.dtype} {arr.shape}"
        )
    for i in range(0, max(len(arr), 1), size):
        yield KeyList(_strings(arr[i : i + size].tolist()), "key", path)


def _arrow_source(path: str) -> tuple[list[str], Callable[[str, int], Iterator[Any]]]:
    """The file's column names (its schema alone is read), and ``batches(column, size)`` over its rows.

    Parquet goes through ``pyarrow.dataset`` (a file, or a directory of parts as Spark writes
    ``x.parquet/``); Arrow IPC files are memory-mapped and read a record batch at a time.
    """
    pa = require_pyarrow(f"reading {path}")
    if path.lower().endswith(".parquet"):
        import pyarrow.dataset as pads  # deferred: pyarrow is the optional parquet extra

        data = pads.dataset(path, format="parquet")
        return data.schema.names, lambda column, size: iter(data.to_batches(columns=[column], batch_size=size))

    def opened(source: Any) -> Any:
        try:
            return pa.ipc.open_file(source)
        except pa.ArrowInvalid:  # the streaming IPC format has no footer
            source.seek(0)
            return pa.ipc.open_stream(source)

    with pa.memory_map(path) as source:
        names = opened(source).schema.names

    def batches(column: str, size: int) -> Iterator[Any]:
        with pa.memory_map(path) as source:
            reader = opened(source)
            parts = (reader.get_batch(i) for i in range(reader.num_record_batches)) if hasattr(reader, "num_record_batches") else reader
            for batch in parts:
                part = batch.select([column])
                for i in range(0, part.num_rows, size):
                    yield part.slice(i, size)

    return names, batches


def _arrow_chunks(path: str, key_column: str | None, size: int) -> Iterator[KeyList]:
    pa = require_pyarrow(f"reading {path}")
    names, batches = _arrow_source(path)
    column = key_column or next((c for c in _DEFAULT_COLUMNS if c in names), None)
    if column not in names:
        raise StreamPruneError(f"{path}: no key column {key_column or _DEFAULT_COLUMNS!r} among columns {names} (--key-column)")
    kind = "uid" if column == "uid" else "key"
    yielded = False
    for batch in batches(column, size):
        col = batch.column(0)
        yielded = True
        if pa.types.is_fixed_size_binary(col.type) and col.type.byte_width == 16:
            yield KeyList([bytes(v).hex() for v in col.to_pylist()], "uid", path, column)
        elif (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)) and pa.types.is_unsigned_integer(col.type.value_type):
            yield KeyList(_uids_from_pairs(np.asarray(col.to_pylist(), dtype=np.uint64)), "uid", path, column)
        else:
            yield KeyList(_strings(col.to_pylist()), kind, path, column)
    if not yielded:
        yield KeyList([], kind, path, column)


def _text_chunks(path: str, key_column: str | None, size: int) -> Iterator[KeyList]:
    with open(path, encoding="utf-8") as fh:
        head = fh.readline()
        column, j, kind = None, None, "key"
        first_lines = head.splitlines()  # the header is the first line by str.splitlines, as before
        if first_lines and "\t" in first_lines[0]:
            header = first_lines[0].split("\t")
            column = key_column or next((c for c in _DEFAULT_COLUMNS if c in header), None)
            if column not in header:
                raise StreamPruneError(f"{path}: no key column {key_column or _DEFAULT_COLUMNS!r} in the header {header}")
            j, kind, pending = header.index(column), ("uid" if column == "uid" else "key"), first_lines[1:]
        else:
            pending = [head]
        ids: list[str] = []
        for raw in _lines(pending, fh):
            for line in raw.splitlines():  # str.splitlines' line breaks (\x0b, \x85, \u2028, ...), as a whole-file read splits
                if not line.strip():
                    continue
                ids.append(line.strip() if j is None else line.split("\t")[j].strip())
            if len(ids) >= size:
                yield KeyList(ids, kind, path, column)
                ids = []
        yield KeyList(ids, kind, path, column)


def _lines(first: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


def iter_key_list(path: str | os.PathLike, key_column: str | None = None, chunk: int = KEY_CHUNK) -> Iterator[KeyList]:
    """Read a key list a chunk at a time (see :func:`read_key_list`): memory is a chunk, not the list.

    Args:
        path: The file.
        key_column: As for :func:`read_key_list`.
        chunk: Ids per chunk.

    Yields:
        :class:`KeyList` chunks in file order (at least one, perhaps empty), all of one ``kind``
        and ``column``; uids lowercased.

    Raises:
        StreamPruneError: Unreadable or damaged file, or no key column.
        MissingExtraError: A parquet/Arrow file without pyarrow installed.
    """
    path = os.fspath(path)
    lower = path.lower()
    reader = _npy_chunks if lower.endswith(".npy") else _arrow_chunks if lower.endswith(ARROW_EXTENSIONS) else _text_chunks
    chunks = reader(path, key_column, max(1, int(chunk)))
    while True:
        try:
            out = next(chunks)
        except StopIteration:
            return
        except StreamPruneError:
            raise
        except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:  # numpy, pyarrow and text decoding raise these for a damaged file
            raise StreamPruneError(f"{path}: not a readable key list ({type(exc).__name__}: {exc})") from None
        if out.kind == "uid":
            out.ids = [u.lower() for u in out.ids]
        yield out


def read_key_list(path: str | os.PathLike, key_column: str | None = None) -> KeyList:
    """Read a key list: text, ``.npy``, parquet or Arrow IPC (see the module docstring).

    Args:
        path: The file.
        key_column: Column (parquet/Arrow, tab-separated text) or field (structured ``.npy``)
            holding the keys; default the first of ``key``, ``uid``, ``__key__``.

    Returns:
        The :class:`KeyList`.

    Raises:
        StreamPruneError: Unreadable or damaged file, or no key column.
        MissingExtraError: A parquet/Arrow file without pyarrow installed.
    """
    chunks = list(iter_key_list(path, key_column))
    return KeyList([i for c in chunks for i in c.ids], chunks[0].kind, chunks[0].source, chunks[0].column)


# --- uids from the shards ------------------------------------------------------------------


def read_member_data(
    manifest: Manifest, positions: Sequence[int] | np.ndarray, extensions: Iterable[str] | None = None
) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """Read the member data of some samples by byte range (nothing else of the shard is read).

    Shards are local files or URLs (``manifest.base`` and ``manifest.storage_options`` apply),
    opened as the readers open them (:class:`~streamprune.readers.byterange.ShardFile`: size
    and ETag checked against the index). Whole samples (``extensions=None``) are read as the
    readers read them: samples adjacent on disk in one read, sliced by
    :func:`~streamprune.readers.byterange.samples_from_buffer`, so each read's first header is
    checked and, where the storage's default says so (remote shards), each sample against its
    checksum. With ``extensions``, only those members are read, one range each: a checksum
    covers a whole sample, so they are not verified.

    Args:
        manifest: The dataset.
        positions: Global sample positions (manifest order), any order; yielded ascending.
        extensions: Only these members (``None``: all of them).

    Yields:
        ``(position, [(extension, data bytes), ...])`` in archive member order.

    Raises:
        IndexMismatchError: A shard or a header disagrees with its index.
        ChecksumError: A remote sample's bytes differ from its checksum.
    """
    # Deferred on purpose: the readers package loads torch and webdataset, which key lists (the CLI) do not need.
    from .readers.byterange import ShardFile, plan_runs, samples_from_buffer

    wanted = None if extensions is None else set(extensions)
    positions = np.unique(np.asarray(positions, dtype=np.int64))
    offsets = manifest.shard_offsets
    shard_of = np.searchsorted(offsets, positions, side="right") - 1
    for k in np.unique(shard_of).tolist():
        path = manifest.shard_path(k)
        order = positions[shard_of == k] - int(offsets[k])
        with ShardFile(path, manifest.index(k), fadvise=False, storage_options=manifest.storage_options) as shard:
            index = shard.index
            if wanted is not None:
                for pos in order.tolist():
                    parts = [(ext, shard.read_range(offset, offset + size, index.keys[pos]))
                             for ext, offset, size in index.members[pos] if ext in wanted]
                    yield pos + int(offsets[k]), parts
                continue
            local = order.tolist()
            for a, b in plan_runs(index, order, _MEMBER_RUN_BYTES):
                lo, hi = int(index.start[local[a]]), int(index.end[local[b - 1]])
                data = shard.read_range(lo, hi, index.keys[local[a]])
                for pos, sample in zip(local[a:b], samples_from_buffer(shard, local, a, b, lo, data, path)):
                    yield pos + int(offsets[k]), [(ext, value) for ext, value in sample.items() if not ext.startswith("__")]


#: Largest single read of adjacent whole samples in :func:`read_member_data`.
_MEMBER_RUN_BYTES = 1 << 20


def _uid_from_members(parts: list[tuple[str, bytes]]) -> str:
    members = dict(parts)
    if "uid" in members:
        return members["uid"].decode("utf-8").strip()
    if "json" in members:
        try:
            value = json.loads(members["json"]).get("uid")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, str):
            return value.strip()
    return ""


def manifest_uids(manifest: Manifest, positions: Sequence[int] | np.ndarray | None = None) -> list[str]:
    """The uid of each sample (see the module docstring for the rule), ``""`` where none.

    Only the ``uid`` / ``json`` members of the requested samples are read (by byte range).

    Args:
        manifest: The dataset.
        positions: Global sample positions (``None``: every sample), in the order wanted.

    Returns:
        One uid per requested position (32-hex uids lowercased).
    """
    keys = manifest.keys()
    positions = np.arange(len(keys)) if positions is None else np.asarray(positions, dtype=np.int64)
    offsets = manifest.shard_offsets
    readable = []
    for pos in np.unique(positions).tolist():
        k = int(np.searchsorted(offsets, pos, side="right") - 1)
        if any(ext in ("uid", "json") for ext, _, _ in manifest.index(k).members[pos - int(offsets[k])]):
            readable.append(pos)
    found = {pos: _uid_from_members(parts) for pos, parts in read_member_data(manifest, readable, ("uid", "json"))}
    out = []
    for pos in positions.tolist():
        uid = found.get(pos) or (keys[pos] if is_uid(keys[pos]) else "")
        out.append(uid.lower() if is_uid(uid) else uid)
    return out


def shard_uids(manifest: Manifest, k: int, index: ShardIndex | None = None) -> list[str]:
    """The uid of each sample of shard ``k`` (as :func:`manifest_uids`), reading only that shard's small members.

    Args:
        manifest: The dataset.
        k: Shard number.
        index: Shard ``k``'s index, when already loaded.

    Returns:
        One uid per sample of the shard, ``""`` where none.
    """
    index = manifest.index(k) if index is None else index
    base = int(manifest.shard_offsets[k])
    readable = [base + i for i, members in enumerate(index.members) if any(ext in ("uid", "json") for ext, _, _ in members)]
    found = {pos - base: _uid_from_members(parts) for pos, parts in read_member_data(manifest, readable, ("uid", "json"))}
    out = []
    for i, key in enumerate(index.keys):
        uid = found.get(i) or (key if is_uid(key) else "")
        out.append(uid.lower() if is_uid(uid) else uid)
    return out


class ShardIds:
    """Shard ``k``'s sample ids a key list is matched with: its keys, or its uids (a picklable ``ids_of``).

    Args:
        manifest: The dataset (for uids, which are read from the shards).
        by: ``"key"`` or ``"uid"``.
    """

    def __init__(self, manifest: Manifest, by: str) -> None:
        self.manifest, self.by = manifest, by

    def __call__(self, k: int, index: ShardIndex) -> list[str]:
        return list(index.keys) if self.by == "key" else shard_uids(self.manifest, k, index)


# --- matching and masks --------------------------------------------------------------------


def _lookup(haystack: Sequence[str], needles: Sequence[str]) -> np.ndarray:
    """Position of each needle in ``haystack`` (``-1`` when absent); first occurrence wins."""
    out = np.full(len(needles), -1, dtype=np.int64)
    if not len(needles) or not len(haystack):
        return out
    hay = np.asarray(haystack, dtype=str)
    order = np.argsort(hay, kind="stable")
    sorted_hay = hay[order]
    probe = np.asarray(needles, dtype=str)
    at = np.searchsorted(sorted_hay, probe)
    inside = np.flatnonzero(at < len(sorted_hay))
    hit = inside[sorted_hay[at[inside]] == probe[inside]]
    out[hit] = order[at[hit]]
    return out


def match_key_list(manifest: Manifest, keys: KeyList | Iterable[str]) -> KeyMatch:
    """Find each distinct id of a key list in the manifest, by key or by uid (module docstring).

    Args:
        manifest: The dataset.
        keys: A :class:`KeyList` or plain keys.

    Returns:
        The :class:`KeyMatch`.
    """
    key_list = keys if isinstance(keys, KeyList) else KeyList(list(keys))
    ids = list(dict.fromkeys(key_list.ids))
    duplicates = len(key_list.ids) - len(ids)
    if key_list.kind == "uid":
        return KeyMatch(ids, _lookup(manifest_uids(manifest), [i.lower() for i in ids]), duplicates, "uid")
    positions = _lookup(manifest.keys(), ids)
    by = "key"
    retry = [j for j in np.flatnonzero(positions < 0).tolist() if is_uid(ids[j])]
    if retry:
        found = _lookup(manifest_uids(manifest), [ids[j].lower() for j in retry])
        if (found >= 0).any():
            positions[np.asarray(retry)] = found
            by = "uid" if (positions >= 0).sum() == (found >= 0).sum() else "key+uid"
    return KeyMatch(ids, positions, duplicates, by)


def mask_from_keys(
    manifest: ManifestLike,
    keys: str | os.PathLike | KeyList | Iterable[str],
    *,
    drop: bool = False,
    key_column: str | None = None,
    allow_missing: bool = False,
    out: str | os.PathLike | None = None,
    engine: str | Engine | None = None,
    workers: int = 1,
) -> KeepMask | MaskFile:
    """Keep exactly the listed samples (or, with ``drop``, everything but them): the one "mask from keys".

    Without ``out`` the manifest's keys (or uids) and the list are matched in memory. With
    ``out`` neither is held: the list is streamed into an on-disk digest table
    (:mod:`streamprune.keytable`) and each engine task matches one shard's samples against it
    and writes that shard's bits (:mod:`streamprune.shardmask`), so memory does not grow with
    the dataset or the list. The two keep the same samples and record the same provenance, with
    one difference: where several samples carry one listed uid, the per-shard path keeps all of
    them (removes all, with ``drop``) and the in-memory path the first. ``mask keys`` takes the
    per-shard path.

    Args:
        manifest: The dataset: a :class:`Manifest`, or its ``manifest.json`` (path or URL) or directory.
        keys: A key-list file (:func:`read_key_list`), a :class:`KeyList`, or plain keys.
        drop: The list names samples to remove; all others are kept.
        key_column: Column holding the keys, for tables.
        allow_missing: Accept ids that are not in the manifest (still counted and reported).
        out: Write the mask here (``*.spmask``), shard by shard, and return it opened.
        engine: With ``out``: where the per-shard tasks run (``"local"`` / ``None``, ``"ray"``, an
            engine; its workers must see ``out``'s directory, where the digest table is built).
        workers: Local processes when ``engine`` is a name.

    Returns:
        The mask (a :class:`~streamprune.masks.MaskFile` with ``out``). Provenance: ``method`` (``"keys"`` or ``"keys-drop"``), ``keys_file``,
        ``key_column``, ``ids`` (distinct ids in the list), ``duplicates``, ``matched``,
        ``missing`` (count), ``missing_examples`` (up to 5), ``matched_by``.

    Raises:
        MissingKeysError: Some ids are not in the manifest and ``allow_missing`` is off.
    """
    manifest = open_manifest(manifest)
    if out is not None:
        return _mask_by_shard(manifest, keys, os.fspath(out), drop=drop, key_column=key_column, allow_missing=allow_missing,
                              engine=engine, workers=workers)
    source = None
    if isinstance(keys, (str, os.PathLike)):
        source = os.path.abspath(os.fspath(keys))
        keys = read_key_list(keys, key_column)
    elif isinstance(keys, KeyList):
        source = os.path.abspath(keys.source) if keys.source else None
    match = match_key_list(manifest, keys)
    missing = match.missing
    if missing and not allow_missing:
        raise _missing_error(len(missing), len(match.ids), source, manifest, match.matched_by, missing[:5])
    listed = np.zeros(manifest.num_samples, dtype=bool)
    listed[match.positions[match.positions >= 0]] = True
    return mask_from_bool(
        manifest, ~listed if drop else listed, method="keys-drop" if drop else "keys",
        keys_file=source, key_column=getattr(keys, "column", None) or key_column, ids=len(match.ids),
        duplicates=match.duplicates, matched=len(match.ids) - len(missing), missing=len(missing),
        missing_examples=missing[:5], matched_by=match.matched_by,
    )




def _missing_error(missing: int, ids: int, source: str | None, manifest: Manifest, by: str, examples: list[str]) -> MissingKeysError:
    return MissingKeysError(
        f"{missing} of {ids} ids in {source or 'the key list'} are not in {manifest.path} "
        f"(matched by {by}), e.g. {examples}; pass --allow-missing (allow_missing=True) to accept them"
    )


class _SavedBits:
    """Shard ``k``'s bits of a saved mask (a picklable ``previous`` for :class:`~streamprune.keytable.TableMatch`)."""

    def __init__(self, path: str) -> None:
        self.path, self._mask = path, None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_mask": None}

    def __call__(self, k: int) -> np.ndarray:
        if self._mask is None:
            self._mask = MaskFile(self.path)
        return self._mask.shard(k)


def _unmatched_uids(chunks: Callable[[], Iterator[KeyList]], table: KeyTable) -> Iterator[tuple[list[str], np.ndarray]]:
    """The list's uid-looking ids that matched no key, lowercased, each with its position in ``table``."""
    flags = table.matched()
    for chunk in chunks():
        ids = [i for i in chunk.ids if is_uid(i)]
        if not ids:
            continue
        at = table.lookup(*id_digests(ids))
        left = np.flatnonzero((at >= 0) & (np.asarray(flags[np.maximum(at, 0)]) == 0))
        if len(left):
            yield [ids[j].lower() for j in left.tolist()], at[left].astype(np.uint64)


def _ids_at(chunks: Callable[[], Iterator[KeyList]], rows: list[int]) -> list[str]:
    """The ids at list positions ``rows`` (ascending), read again from the list."""
    wanted, out, seen = set(rows), {}, 0
    for chunk in chunks():
        for j in [r - seen for r in rows if seen <= r < seen + len(chunk.ids)]:
            out[seen + j] = chunk.ids[j]
        seen += len(chunk.ids)
        if len(out) == len(wanted):
            break
    return [out[r] for r in rows if r in out]


def _restamped(draft: str, out: str, provenance: dict[str, Any]) -> MaskFile:
    """``draft`` with its provenance replaced, written atomically to ``out`` (the bits copied as they are)."""
    mask = MaskFile(draft)
    header = {**mask.header, "provenance": {**provenance, "created": mask.header["provenance"].get("created")}}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    with atomic_open(out, "wb") as fh, open(draft, "rb") as bits:
        fh.write(MAGIC + struct.pack("<Q", len(raw)) + raw)
        bits.seek(mask._data_start)
        shutil.copyfileobj(bits, fh, 1 << 24)
    written = MaskFile(out)  # opening checks the size against the header
    if written.kept != mask.kept or os.path.getsize(out) - written._data_start != os.path.getsize(draft) - mask._data_start:
        raise StreamPruneError(f"{out}: mask read back differs from the mask written")
    return written


def _mask_by_shard(manifest: Manifest, keys: str | os.PathLike | KeyList | Iterable[str], out: str, *, drop: bool,
                   key_column: str | None, allow_missing: bool, engine: str | Engine | None, workers: int) -> MaskFile:
    """:func:`mask_from_keys` with ``out``: the list streamed into a digest table, each shard matched by a task."""
    source = None
    if isinstance(keys, (str, os.PathLike)):
        source = os.path.abspath(os.fspath(keys))

        def chunks() -> Iterator[KeyList]:
            return iter_key_list(source, key_column)
    else:
        given = keys if isinstance(keys, KeyList) else KeyList(list(keys))
        if given.kind == "uid":
            given = KeyList([i.lower() for i in given.ids], "uid", given.source, given.column)
        source = os.path.abspath(given.source) if given.source else None

        def chunks() -> Iterator[KeyList]:
            return iter([given])
    head = next(chunks())
    head = KeyList([], head.kind, head.source, head.column)  # its kind and column; not a chunk of ids held throughout
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # as KeepMask.save: the user chose the path
    except OSError as exc:
        raise StorageError(f"{out}: cannot write it ({exc.strerror or exc})") from exc
    work = temp_name(out) + ".keys"
    shutil.rmtree(work, ignore_errors=True)
    try:
        table = build_key_table((c.ids for c in chunks()), os.path.join(work, "ids"))
        by = "uid" if head.kind == "uid" else "key"
        draft = os.path.join(work, "keys.spmask")
        write_mask_by_shard(manifest, TableMatch(table, ShardIds(manifest, by), drop=drop), draft, {"method": "keys"},
                            engine=engine, workers=workers, progress_desc="mask keys")
        by_key = table.count_matched()
        matched = by_key
        if by == "key" and by_key < table.ids:
            # every spelling of a uid keeps its own row (a list may hold one uid in two cases: both are found)
            retry = build_key_table(_unmatched_uids(chunks, table), os.path.join(work, "uids"), unique=False)
            if retry.ids:
                again = os.path.join(work, "uids.spmask")
                match = TableMatch(retry, ShardIds(manifest, "uid"), marks=table, marks_rows=True, drop=drop, previous=_SavedBits(draft))
                write_mask_by_shard(manifest, match, again, {"method": "keys"}, engine=engine, workers=workers, progress_desc="mask uids")
                draft, matched = again, table.count_matched()
                if matched > by_key:
                    by = "uid" if by_key == 0 else "key+uid"
        missing = table.ids - matched
        examples = _ids_at(chunks, table.first_unmatched_rows(5)) if missing else []
        if missing and not allow_missing:
            raise _missing_error(missing, table.ids, source, manifest, by, examples)
        kept = MaskFile(draft).kept
        ratio = 1.0 - kept / manifest.num_samples if manifest.num_samples else 0.0
        provenance = provenance_record(
            "keys-drop" if drop else "keys", round(float(ratio), 6), level="sample", keys_file=source,
            key_column=head.column or key_column, ids=table.ids, duplicates=table.duplicates, matched=matched, missing=missing,
            missing_examples=examples, matched_by=by,
        )
        return _restamped(draft, out, provenance)
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: The name :func:`mask_from_keys` had before it became the only "mask from keys"; documented
#: in ``docs/deduplication.md``, so it stays.
mask_from_key_list = mask_from_keys

# --- export --------------------------------------------------------------------------------


def sample_scores(manifest: Manifest, scores: ScoreFile) -> np.ndarray:
    """Each sample's score from a scores file: its own (sample level) or its item's.

    Class-level scores give a sample its class's score (``nan`` when unlabelled); cluster-level
    ones its cluster's.

    Args:
        manifest: The dataset the scores belong to (checked).
        scores: The scores.

    Returns:
        ``float64[N]`` in manifest order.
    """
    scores.check(manifest)
    if scores.level == "sample":
        return np.asarray(scores.scores, dtype=np.float64)
    if scores.level == "cluster":
        return np.asarray(scores.scores, dtype=np.float64)[np.asarray(scores.assignments, dtype=np.int64)]
    labels = manifest.labels()
    out = np.full(len(labels), np.nan)
    ok = labels >= 0
    out[ok] = np.asarray(scores.scores, dtype=np.float64)[labels[ok]]
    return out


def _write_table(path: str, columns: dict[str, list | np.ndarray]) -> None:
    lower = path.lower()
    if lower.endswith(ARROW_EXTENSIONS):
        pa = require_pyarrow(f"writing {path}")
        table = pa.table({name: pa.array(values if isinstance(values, list) else values.tolist()) for name, values in columns.items()})
        tmp = f"{path}.tmp-{os.getpid()}"
        if lower.endswith(".parquet"):
            pa.parquet.write_table(table, tmp)
        else:
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        os.replace(tmp, path)
        return
    keys = columns["key"]
    if lower.endswith(".npy"):
        if len(columns) == 1:
            arr = np.asarray(keys, dtype=str)
        else:
            dtype = [(name, np.asarray(v).dtype if name == "score" else np.asarray(v, dtype=str).dtype) for name, v in columns.items()]
            arr = np.empty(len(keys), dtype=dtype)
            for name, values in columns.items():
                arr[name] = values
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        if len(columns) > 1:
            fh.write("\t".join(columns) + "\n")
            for row in zip(*[list(v) if not isinstance(v, np.ndarray) else v.tolist() for v in columns.values()]):
                fh.write("\t".join(repr(x) if isinstance(x, float) else str(x) for x in row) + "\n")
        else:
            fh.writelines(f"{k}\n" for k in keys)
    os.replace(tmp, path)


def _no_uid(manifest: Manifest, position: int, count: int) -> None:
    """Raise :class:`MissingUidError` naming the sample at ``position`` (and how many lack a uid)."""
    k = int(np.searchsorted(manifest.shard_offsets, position, side="right") - 1)
    key = manifest.index(k).keys[position - int(manifest.shard_offsets[k])]
    raise MissingUidError(
        f"{manifest.path}: sample {key!r} (shard {manifest.shards[k].name}) has no uid, and {count - 1} more kept samples "
        "lack one: a uid is a .uid member, a \"uid\" field of the .json member, or a key of 32 hex digits; export without --uids"
    )


def export_keys(
    manifest: Manifest,
    mask: Mask | None,
    path: str | os.PathLike,
    *,
    scores: ScoreFile | None = None,
    uids: bool = False,
) -> dict[str, Any]:
    """Write the kept samples' keys (manifest order), optionally with their uids and scores.

    Formats by extension: ``.parquet`` / ``.arrow`` / ``.feather`` / ``.ipc`` (columns ``key``,
    ``uid``, ``score``; the ``parquet`` extra), ``.npy`` (a 1-D string array of keys, or a
    structured array with fields ``key``, ``uid``, ``score``), anything else text (one key per
    line, or with more columns a tab-separated table under a header line). Every format reads
    back with :func:`read_key_list`.

    Args:
        manifest: The dataset.
        mask: The keep mask (checked against ``manifest``), or ``None`` for every sample.
        path: Output file (written atomically).
        scores: A scores file of this manifest: adds each kept sample's score
            (:func:`sample_scores`).
        uids: Add each kept sample's uid (:func:`manifest_uids`; reads only the kept samples'
            ``uid``/``json`` members). Every kept sample must have one.

    Returns:
        ``{"path", "rows", "columns"}``.

    Raises:
        MissingUidError: ``uids`` and a kept sample has no uid (names the first); nothing is written.
        StorageError: ``path`` cannot be written (names it).
    """
    path = os.fspath(path)
    if mask is not None:
        mask.check(manifest)
        kept = np.flatnonzero(mask.to_bool())
    else:
        kept = np.arange(manifest.num_samples)
    all_keys = manifest.keys()
    columns: dict[str, list | np.ndarray] = {"key": [all_keys[i] for i in kept.tolist()]}
    if uids:
        columns["uid"] = manifest_uids(manifest, kept)
        if "" in columns["uid"]:
            _no_uid(manifest, int(kept[columns["uid"].index("")]), columns["uid"].count(""))
    if scores is not None:
        columns["score"] = sample_scores(manifest, scores)[kept]
    try:
        _write_table(path, columns)
    except OSError as exc:  # the user chose the path: say which, as one of our errors
        raise StorageError(f"{path}: cannot write it ({exc.strerror or exc})") from exc
    return {"path": path, "rows": len(kept), "columns": list(columns)}
