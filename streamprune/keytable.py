"""A key list as an on-disk table of 128-bit id digests, matched shard by shard.

A key list can be as long as the dataset (DataComp's subsets list ~10^9 uids), so the per-shard
mask path (:func:`~streamprune.keys.mask_from_keys` with ``out=``) never holds it: the list is
streamed once into a :class:`KeyTable`, a directory of three column files sorted by digest
(``hi``, ``lo``: the id's 16-byte BLAKE2b digest; ``row``: where the id first occurs in the
list) plus one byte per distinct id recording whether some sample matched it. Building it sorts
one of :data:`DEFAULT_BUCKETS` digest ranges at a time (the top byte of ``hi``), so memory is a
few copies of one bucket (24 bytes an id, ``ids / 256`` ids) and one chunk of the list, never
the whole list.

Each shard's task (:class:`TableMatch`) digests its own samples' ids (keys or uids), looks them
up in the memory-mapped table (a binary search, ``log2(ids)`` pages) and sets the matched bytes
of the ids it found; several processes may do so at once (each writes whole bytes, only ever
``1``). Two ids are taken as equal when their 128-bit digests are: with 10^10 ids on each side
the chance of any collision is below 10^-18.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .atomic import atomic_open
from .errors import StorageError
from .shardindex import ShardIndex

__all__ = ["DEFAULT_BUCKETS", "KeyTable", "TableMatch", "build_key_table", "id_digests"]

#: Digest ranges the build sorts one at a time (the top 8 bits of ``hi``).
DEFAULT_BUCKETS = 256
_RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("row", "<u8")])
_COLUMNS = ("hi", "lo", "row")
#: One ``hi`` value in this many is kept in memory (``fence.u8``): a lookup then reads one block of
#: ``_FENCE`` values (2 KiB) per id, not a binary search's path through the whole column.
_FENCE = 256
#: Ids looked up at once (their blocks are gathered together: ``_BATCH x _FENCE x 8`` bytes).
_BATCH = 2048
_META = "table.json"
_MATCHED = "matched.u1"
#: Rows scanned at once when the matched bytes are counted.
_SCAN = 1 << 22


def id_digests(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 16-byte BLAKE2b digest of each id as two ``uint64`` halves.

    Args:
        ids: Ids (keys, or lowercase uid hex).

    Returns:
        ``(hi, lo)``: ``uint64[len(ids)]`` each.
    """
    blob = b"".join(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=16).digest() for i in ids)
    pairs = np.frombuffer(blob, dtype="<u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


@dataclass
class KeyTable:
    """A built key table (see the module docstring).

    Attributes:
        path: Its directory.
        ids: Distinct ids.
        listed: Ids in the list, repeats included.
    """

    path: str
    ids: int
    listed: int

    @property
    def duplicates(self) -> int:
        """Ids in the list beyond their first occurrence."""
        return self.listed - self.ids

    @classmethod
    def open(cls, path: str) -> KeyTable:
        """The table built in ``path``."""
        with open(os.path.join(path, _META)) as fh:
            meta = json.load(fh)
        return cls(path, int(meta["ids"]), int(meta["listed"]))

    def column(self, name: str, mode: str = "r") -> np.ndarray:
        """One column (``hi``, ``lo``, ``row``) as a read-only memory map (empty array for an empty table)."""
        if not self.ids:
            return np.zeros(0, dtype=np.uint64)
        return np.memmap(os.path.join(self.path, name + ".u8"), dtype="<u8", mode=mode, shape=(self.ids,))

    def matched(self, mode: str = "r") -> np.ndarray:
        """The matched byte of every id (``uint8[ids]``, memory-mapped; ``mode="r+"`` to set them)."""
        if not self.ids:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(os.path.join(self.path, _MATCHED), dtype=np.uint8, mode=mode, shape=(self.ids,))

    def fence(self) -> np.ndarray:
        """Every :data:`_FENCE`-th ``hi`` value (``ids / 256 x 8`` bytes), read once per table object."""
        cached = getattr(self, "_fence", None)
        if cached is None:
            path = os.path.join(self.path, "fence.u8")
            cached = np.fromfile(path, dtype="<u8") if os.path.exists(path) else np.asarray(self.column("hi")[::_FENCE])
            self._fence = cached
        return cached

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_fence"}  # each worker reads the fence itself

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The table position of each digest (the first of equal ones), ``-1`` where it is not in the table.

        The fence in memory gives each digest its block of :data:`_FENCE` values; only those
        blocks of the memory-mapped columns are read (one page each), so the pages a lookup
        maps grow with the digests looked up, not with the table. The mapping ends with the call.
        """
        out = np.full(len(hi), -1, dtype=np.int64)
        if not self.ids or not len(hi):
            return out
        fence, his, los = self.fence(), self.column("hi"), self.column("lo")
        steps = np.arange(_FENCE, dtype=np.int64)
        first = np.empty(len(hi), dtype=np.int64)
        for a in range(0, len(hi), _BATCH):
            h = hi[a : a + _BATCH]
            # fence[blk] < h <= fence[blk + 1]: the first value >= h is in block blk or starts block blk + 1
            blk = np.searchsorted(fence, h, side="left") - 1
            base = np.maximum(blk, 0) * _FENCE
            at = np.minimum(base[:, None] + steps, self.ids - 1)
            below = (np.asarray(his[at]) < h[:, None]) & (base[:, None] + steps < self.ids)
            first[a : a + _BATCH] = np.where(blk < 0, 0, base + below.sum(axis=1))
        inside = np.flatnonzero(first < self.ids)
        same = inside[np.asarray(his[first[inside]]) == hi[inside]]
        hit = same[np.asarray(los[first[same]]) == lo[same]]
        out[hit] = first[hit]
        for j in np.setdiff1d(same, hit).tolist():  # equal 64-bit high halves: a handful at 10^10 ids
            k = int(first[j]) + 1
            while k < self.ids and int(his[k]) == int(hi[j]):
                if int(los[k]) == int(lo[j]):
                    out[j] = k
                    break
                k += 1
        return out

    def runs(self, positions: np.ndarray) -> np.ndarray:
        """``positions`` and the positions after each that hold the same digest (``lookup`` gives the first)."""
        his, los = self.column("hi"), self.column("lo")
        out = [np.asarray(positions, dtype=np.int64)]
        step = out[0]
        while len(step):
            step = step[step + 1 < self.ids]
            step = step[(np.asarray(his[step + 1]) == np.asarray(his[step])) & (np.asarray(los[step + 1]) == np.asarray(los[step]))] + 1
            out.append(step)
        return np.concatenate(out)

    def count_matched(self) -> int:
        """Ids some sample matched."""
        flags = self.matched()
        return int(sum(int(np.count_nonzero(flags[i : i + _SCAN])) for i in range(0, self.ids, _SCAN)))

    def first_unmatched_rows(self, limit: int) -> list[int]:
        """List rows (first occurrences) of up to ``limit`` unmatched ids, the earliest in the list first."""
        flags, rows = self.matched(), self.column("row")
        best = np.zeros(0, dtype=np.uint64)
        for i in range(0, self.ids, _SCAN):
            found = np.asarray(rows[i : i + _SCAN])[np.asarray(flags[i : i + _SCAN]) == 0]
            best = np.sort(np.concatenate([best, found]))[:limit]
        return [int(r) for r in best]


def build_key_table(chunks: Iterable[Sequence[str] | tuple[Sequence[str], np.ndarray]], path: str,
                    buckets: int = DEFAULT_BUCKETS, unique: bool = True) -> KeyTable:
    """Stream a key list into a :class:`KeyTable` in the new directory ``path``.

    Args:
        chunks: The list's ids, a chunk at a time, in list order; a chunk ``(ids, rows)`` gives
            each id's ``row`` (else its position in the list).
        path: Directory to create (it must not exist).
        buckets: Digest ranges sorted one at a time (a power of two, at most 256).
        unique: Keep each digest once (its smallest row); ``False`` keeps every record, equal
            digests next to each other by row (:class:`TableMatch` with ``marks_rows`` marks them all).

    Returns:
        The table.

    Raises:
        StorageError: ``path`` cannot be created.
    """
    try:
        os.makedirs(path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot create the key table ({exc.strerror or exc})") from exc
    shift = np.uint64(64 - int(np.log2(buckets)))
    parts = os.path.join(path, "parts")
    os.makedirs(parts)
    listed = 0
    handles: dict[int, object] = {}
    try:
        for chunk in chunks:
            ids, rows = chunk if isinstance(chunk, tuple) else (chunk, None)
            hi, lo = id_digests(ids)
            records = np.empty(len(hi), dtype=_RECORD)
            records["hi"], records["lo"] = hi, lo
            records["row"] = np.arange(listed, listed + len(hi), dtype=np.uint64) if rows is None else rows
            listed += len(hi)
            bucket = (hi >> shift).astype(np.int64) if buckets > 1 else np.zeros(len(hi), dtype=np.int64)
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in np.flatnonzero(np.diff(bounds)).tolist():
                if b not in handles:
                    handles[b] = open(os.path.join(parts, f"{b:03d}.rec"), "ab")
                handles[b].write(records[order[bounds[b] : bounds[b + 1]]].tobytes())
    finally:
        for fh in handles.values():
            fh.close()
    ids = 0
    outs = {name: open(os.path.join(path, name + ".u8"), "wb") for name in (*_COLUMNS, "fence")}
    try:
        for b in range(buckets):
            part = os.path.join(parts, f"{b:03d}.rec")
            if not os.path.exists(part):
                continue
            records = np.fromfile(part, dtype=_RECORD)
            os.unlink(part)
            records = records[np.lexsort((records["row"], records["lo"], records["hi"]))]
            if unique:
                first = np.ones(len(records), dtype=bool)  # an id's first occurrence: the smallest row of its digest
                first[1:] = (records["hi"][1:] != records["hi"][:-1]) | (records["lo"][1:] != records["lo"][:-1])
                records = records[first]
            for name in _COLUMNS:
                outs[name].write(np.ascontiguousarray(records[name]).tobytes())
            fenced = records["hi"][(-ids) % _FENCE :: _FENCE]  # the rows at multiples of _FENCE
            outs["fence"].write(np.ascontiguousarray(fenced).tobytes())
            ids += len(records)
    finally:
        for fh in outs.values():
            fh.close()
    shutil.rmtree(parts, ignore_errors=True)
    with open(os.path.join(path, _MATCHED), "wb") as fh:
        fh.truncate(ids)  # sparse zeros: nothing matched yet
    with atomic_open(os.path.join(path, _META), "w") as fh:
        json.dump({"ids": ids, "listed": listed}, fh)
    return KeyTable(path, ids, listed)


class TableMatch:
    """Shard ``k`` keeps the samples whose ids are in a key table (a picklable ``keep(k, index)``).

    Args:
        table: Where the ids are looked up.
        ids_of: Picklable ``ids_of(k, index) -> ids`` of shard ``k``'s samples (keys or uids).
        marks: The table whose matched bytes a found id sets (default ``table``); with
            ``marks_rows`` the id's ``row`` in ``table`` is the position in ``marks`` to set (a
            table of retried ids pointing into the first one).
        drop: Keep the samples not listed instead.
        previous: Shard bits of an earlier pass (``previous(k) -> bool[samples]``, in keep
            terms) added to what this pass lists.
    """

    def __init__(self, table: KeyTable, ids_of: Callable[[int, ShardIndex], Sequence[str]], *, marks: KeyTable | None = None,
                 marks_rows: bool = False, drop: bool = False, previous: Callable[[int], np.ndarray] | None = None) -> None:
        self.table, self.ids_of, self.marks, self.marks_rows = table, ids_of, marks or table, marks_rows
        self.drop, self.previous = drop, previous

    def __call__(self, k: int, index: ShardIndex) -> np.ndarray:
        ids = self.ids_of(k, index)
        hi, lo = id_digests(ids)
        at = self.table.lookup(hi, lo)
        listed = at >= 0
        if listed.any():
            found = at[listed]
            if self.marks_rows:  # every record of a found digest (a table built with unique=False)
                found = np.asarray(self.table.column("row")[self.table.runs(found)]).astype(np.int64)
            flags = self.marks.matched("r+")
            flags[found] = 1
            flags.flush()
            del flags
        if self.previous is not None:
            before = np.asarray(self.previous(k), dtype=bool)
            listed |= ~before if self.drop else before
        return ~listed if self.drop else listed
