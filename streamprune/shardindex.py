"""The format-neutral index of one shard: every sample's key, label and byte ranges.

Tar shards (:mod:`.tarindex`) and FFCV ``.beton`` files (:mod:`.betonindex`) are both
described by a :class:`ShardIndex`; readers, masks and the manifest only ever see this type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

__all__ = ["MemberTable", "ShardIndex"]


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

    def _columns(self) -> tuple[list, list, list, list]:
        # One bulk .tolist() per column on first use: per-sample numpy slicing costs more.
        if self._lists is None:
            first, ext_id, offset, size, extensions = self._arrays
            self._lists = (first.tolist(), [extensions[e] for e in ext_id.tolist()], offset.tolist(), size.tolist())
        return self._lists

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> list[tuple[str, int, int]]:
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"sample {i} out of range for {self._n} samples")
        first, ext, offset, size = self._columns()
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

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def data_bytes(self) -> np.ndarray:
        """Bytes each sample occupies in the shard, headers and padding included."""
        return self.end - self.start
