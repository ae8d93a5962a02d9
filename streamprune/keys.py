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
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import ArgumentError, MissingKeysError, StorageError, StreamPruneError
from .manifest import Manifest, ManifestLike, open_manifest
from .masks import KeepMask, Mask, mask_from_bool
from .optional import require_pyarrow
from .scores import ScoreFile

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


def _read_npy(path: str, key_column: str | None) -> KeyList:
    arr = np.load(path, allow_pickle=False)
    names = arr.dtype.names
    if names:
        if len(names) == 2 and all(arr.dtype[n] == np.uint64 for n in names) and key_column is None:
            return KeyList(_uids_from_pairs(np.stack([arr[names[0]], arr[names[1]]], axis=-1)), "uid", path)
        column = key_column or next((c for c in _DEFAULT_COLUMNS if c in names), None)
        if column not in names:
            raise StreamPruneError(f"{path}: no key column {key_column or _DEFAULT_COLUMNS!r} among fields {list(names)}")
        field = arr[column]
        if field.dtype == np.uint64 and field.ndim == 2 and field.shape[1] == 2:
            return KeyList(_uids_from_pairs(field), "uid", path, column)
        return KeyList(_strings(field.tolist()), "uid" if column == "uid" else "key", path, column)
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype == np.uint64:
        return KeyList(_uids_from_pairs(arr), "uid", path)
    if arr.ndim != 1 or arr.dtype.kind not in "USiu":
        raise StreamPruneError(
            f"{path}: a .npy key list must be 1-D strings, [N, 2] uint64 uids or a structured array; got {arr.dtype} {arr.shape}"
        )
    return KeyList(_strings(arr.tolist()), "key", path)


def _arrow_table(path: str) -> Any:
    pa = require_pyarrow(f"reading {path}")
    if path.endswith(".parquet"):
        return pa.parquet.read_table(path)
    with pa.memory_map(path) as source:
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:  # the streaming IPC format has no footer
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()


def _read_arrow(path: str, key_column: str | None) -> KeyList:
    pa = require_pyarrow(f"reading {path}")
    table = _arrow_table(path)
    names = table.column_names
    column = key_column or next((c for c in _DEFAULT_COLUMNS if c in names), None)
    if column not in names:
        raise StreamPruneError(f"{path}: no key column {key_column or _DEFAULT_COLUMNS!r} among columns {names} (--key-column)")
    col = table.column(column).combine_chunks()
    kind = "uid" if column == "uid" else "key"
    if pa.types.is_fixed_size_binary(col.type) and col.type.byte_width == 16:
        return KeyList([bytes(v).hex() for v in col.to_pylist()], "uid", path, column)
    if (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)) and pa.types.is_unsigned_integer(col.type.value_type):
        return KeyList(_uids_from_pairs(np.asarray(col.to_pylist(), dtype=np.uint64)), "uid", path, column)
    return KeyList(_strings(col.to_pylist()), kind, path, column)


def _read_text(path: str, key_column: str | None) -> KeyList:
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if lines and "\t" in lines[0]:
        header = lines[0].split("\t")
        column = key_column or next((c for c in _DEFAULT_COLUMNS if c in header), None)
        if column not in header:
            raise StreamPruneError(f"{path}: no key column {key_column or _DEFAULT_COLUMNS!r} in the header {header}")
        j = header.index(column)
        ids = [row.split("\t")[j].strip() for row in lines[1:] if row.strip()]
        return KeyList(ids, "uid" if column == "uid" else "key", path, column)
    return KeyList([s for s in (line.strip() for line in lines) if s], "key", path)


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
    path = os.fspath(path)
    lower = path.lower()
    reader = _read_npy if lower.endswith(".npy") else _read_arrow if lower.endswith(ARROW_EXTENSIONS) else _read_text
    try:
        out = reader(path, key_column)
    except StreamPruneError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # numpy, pyarrow and text decoding raise these for a damaged file
        raise StreamPruneError(f"{path}: not a readable key list ({type(exc).__name__}: {exc})") from None
    if out.kind == "uid":
        out.ids = [u.lower() for u in out.ids]
    return out


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
) -> KeepMask:
    """Keep exactly the listed samples (or, with ``drop``, everything but them): the one "mask from keys".

    Args:
        manifest: The dataset: a :class:`Manifest`, or its ``manifest.json`` (path or URL) or directory.
        keys: A key-list file (:func:`read_key_list`), a :class:`KeyList`, or plain keys.
        drop: The list names samples to remove; all others are kept.
        key_column: Column holding the keys, for tables.
        allow_missing: Accept ids that are not in the manifest (still counted and reported).

    Returns:
        The mask. Provenance: ``method`` (``"keys"`` or ``"keys-drop"``), ``keys_file``,
        ``key_column``, ``ids`` (distinct ids in the list), ``duplicates``, ``matched``,
        ``missing`` (count), ``missing_examples`` (up to 5), ``matched_by``.

    Raises:
        MissingKeysError: Some ids are not in the manifest and ``allow_missing`` is off.
    """
    manifest = open_manifest(manifest)
    source = None
    if isinstance(keys, (str, os.PathLike)):
        source = os.path.abspath(os.fspath(keys))
        keys = read_key_list(keys, key_column)
    elif isinstance(keys, KeyList):
        source = os.path.abspath(keys.source) if keys.source else None
    match = match_key_list(manifest, keys)
    missing = match.missing
    if missing and not allow_missing:
        raise MissingKeysError(
            f"{len(missing)} of {len(match.ids)} ids in {source or 'the key list'} are not in {manifest.path} "
            f"(matched by {match.matched_by}), e.g. {missing[:5]}; pass --allow-missing (allow_missing=True) to accept them"
        )
    listed = np.zeros(manifest.num_samples, dtype=bool)
    listed[match.positions[match.positions >= 0]] = True
    return mask_from_bool(
        manifest, ~listed if drop else listed, method="keys-drop" if drop else "keys",
        keys_file=source, key_column=getattr(keys, "column", None) or key_column, ids=len(match.ids),
        duplicates=match.duplicates, matched=len(match.ids) - len(missing), missing=len(missing),
        missing_examples=missing[:5], matched_by=match.matched_by,
    )



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
