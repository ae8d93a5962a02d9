"""The format-neutral index of one shard: every sample's key, label and byte ranges.

Tar shards (:mod:`.tarindex`) and FFCV ``.beton`` files (:mod:`.betonindex`) are both
described by a :class:`ShardIndex`; readers, masks and the manifest only ever see this type.

It also defines what a sample's checksum is, since the indexer, the shard writer and the
readers must all compute the same value: the hash of the concatenation of the sample's member
data in archive order (data bytes only: no tar headers, no padding), with the algorithm named
in the index (:data:`CHECKSUM_ALGORITHMS`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from .errors import UnknownNameError

try:
    import xxhash
except ImportError:  # a declared dependency; without it indexes fall back to zlib's CRC-32
    xxhash = None

__all__ = [
    "MemberTable",
    "ShardIndex",
    "SampleHasher",
    "CHECKSUM_ALGORITHMS",
    "DEFAULT_CHECKSUM",
    "checksum_hasher",
    "sample_checksum",
]


class SampleHasher(Protocol):
    """A streaming hash: ``update`` with each member's data in archive order, then ``intdigest``."""

    def update(self, data: bytes | memoryview) -> None: ...

    def intdigest(self) -> int: ...


class _Crc32:
    """zlib's CRC-32 behind the streaming interface (the no-dependency fallback)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def intdigest(self) -> int:
        return self.value


#: Algorithm name (as stored in an index) -> factory of a fresh :class:`SampleHasher`.
#: ``xxh3_64`` was the fastest measured (``benchmarks/index_bench.py``, "hashes"), ahead of
#: CRC32C and far ahead of zlib's CRC-32, which stays readable so indexes written without
#: ``xxhash`` installed can still be verified.
CHECKSUM_ALGORITHMS: dict[str, Callable[[], SampleHasher]] = {"crc32": _Crc32}
if xxhash is not None:
    CHECKSUM_ALGORITHMS["xxh3_64"] = xxhash.xxh3_64
#: The algorithm new indexes use.
DEFAULT_CHECKSUM = "xxh3_64" if xxhash is not None else "crc32"


def checksum_hasher(algorithm: str) -> Callable[[], SampleHasher]:
    """The hasher factory for an algorithm named in an index.

    Raises:
        UnknownNameError: The algorithm is unknown here (for ``xxh3_64``: ``xxhash`` is not installed).
    """
    try:
        return CHECKSUM_ALGORITHMS[algorithm]
    except KeyError:
        hint = " (pip install xxhash)" if algorithm.startswith("xxh") else ""
        raise UnknownNameError(f"checksum algorithm {algorithm!r} is not available{hint}; known: {sorted(CHECKSUM_ALGORITHMS)}") from None


def sample_checksum(parts: Iterable[bytes | memoryview], algorithm: str = DEFAULT_CHECKSUM) -> int:
    """Checksum of one sample: its member data, concatenated in archive order.

    Args:
        parts: Each member's data bytes, in archive order.
        algorithm: A key of :data:`CHECKSUM_ALGORITHMS`.

    Returns:
        The digest as an unsigned integer (64 bits for ``xxh3_64``, 32 for ``crc32``).
    """
    h = checksum_hasher(algorithm)()
    for part in parts:
        h.update(part)
    return h.intdigest()


class MemberTable:
    """Per-sample member lists held as flat arrays, built into tuples only when looked up.

    Behaves like the list ``members[i] -> [(extension, data_offset, size), ...]``, but loading
    it creates no per-member Python objects, and a reader builds tuples only for the samples
    it reads (a pruned sample's members are never built).

    Args:
        first: ``int64[n + 1]``: sample ``i``'s members are rows ``first[i]:first[i+1]``.
        ext_id: ``int[m]`` index into ``extensions`` per member row.
        offset: ``int64[m]`` data offset per member row.
        size: ``int64[m]`` data size per member row.
        extensions: The distinct extensions.
    """

    def __init__(self, first: np.ndarray, ext_id: np.ndarray, offset: np.ndarray, size: np.ndarray, extensions: list[str]) -> None:
        self._arrays = (first, ext_id, offset, size, list(extensions))
        self._n = len(first) - 1
        self._lists: tuple[list, list, list, list] | None = None

    def columns(self) -> tuple[list[int], list[str], list[int], list[int]]:
        """``(first, ext, offset, size)`` as Python lists (extensions, not ids), built on first use and kept.

        For readers that look up a few samples' members by row without building tuples;
        sample ``i``'s members are rows ``first[i]:first[i + 1]`` (do not modify the lists).
        """
        # One bulk .tolist() per column on first use: per-sample numpy slicing costs more.
        if self._lists is None:
            first, ext_id, offset, size, extensions = self._arrays
            self._lists = (first.tolist(), [extensions[e] for e in ext_id.tolist()], offset.tolist(), size.tolist())
        return self._lists

    def __len__(self) -> int:
        return self._n

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``(first, ext_id, offset, size, extensions)``, the table's columns as given (do not modify).

        For readers that gather the members of many samples at once with numpy instead of
        building one list per sample.
        """
        first, ext_id, offset, size, extensions = self._arrays
        return first, ext_id, offset, size, list(extensions)

    def __getitem__(self, i: int) -> list[tuple[str, int, int]]:
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"sample {i} out of range for {self._n} samples")
        first, ext, offset, size = self.columns()
        a, b = first[i], first[i + 1]
        return list(zip(ext[a:b], offset[a:b], size[a:b]))

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        for i in range(self._n):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        try:
            return len(self) == len(other) and all(a == list(b) for a, b in zip(self, other))  # type: ignore[arg-type]
        except TypeError:
            return NotImplemented

    def tolist(self) -> list[list[tuple[str, int, int]]]:
        """The member lists as plain Python lists."""
        return list(self)


@dataclass
class ShardIndex:
    """Byte ranges of every sample in one shard (tar or .beton).

    Attributes:
        shard: Shard file name (relative to the manifest directory when part of one).
        shard_bytes: Size of the shard file.
        keys: Sample keys in archive order.
        labels: Integer label per sample (``-1`` when the dataset has no labels).
        start: Offset of the first header byte of each sample.
        end: Offset one past the last (padded) data byte of each sample.
        members: Per sample, a list of ``(extension, data_offset, size)`` (a list, or a
            :class:`MemberTable` when loaded from a binary index companion).
        sha256: Hex digest of the shard file, or ``""`` when not computed.
        extra: Format-specific data (``.beton`` header fields).
        checksums: Per sample, :func:`sample_checksum` of its member data (``uint64``), or
            ``None`` when the index has none (written before checksums existed, or a format
            whose readers do not verify).
        checksum_algorithm: The algorithm of ``checksums`` (a key of
            :data:`CHECKSUM_ALGORITHMS`), ``""`` when there are none.
        format: The shard's format as the manifest records it (``"tar"``; ``"mds"`` or
            ``"litdata"``: each sample is one member, the sample's bytes, with no tar headers
            to check). Not saved in the sidecar: set from the manifest entry on load.
    """

    shard: str
    shard_bytes: int
    keys: list[str]
    labels: np.ndarray
    start: np.ndarray
    end: np.ndarray
    members: "list[list[tuple[str, int, int]]] | MemberTable"
    sha256: str = ""
    extra: dict = field(default_factory=dict)
    checksums: np.ndarray | None = None
    checksum_algorithm: str = ""
    format: str = "tar"

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def data_bytes(self) -> np.ndarray:
        """Bytes each sample occupies in the shard, headers and padding included."""
        return self.end - self.start
