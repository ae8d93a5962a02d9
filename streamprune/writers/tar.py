"""Write webdataset-compatible tar shards and record every member's byte range while writing.

Members are written as POSIX ustar entries (a PAX ``path`` record for names over 100 bytes),
with fixed mode, owner and mtime, so the same input gives byte-identical shards. Each sample's
checksum is computed from the bytes in hand as they are written (no second read). After a
shard is closed its headers are walked again and compared with what was written; only then
is it renamed from its temporary name.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from ..atomic import file_sha256, temp_name
from ..errors import ArgumentError, DuplicateKeyError, LabelError, StreamPruneError
from ..shardindex import DEFAULT_CHECKSUM, ShardIndex, checksum_hasher
from ..tarindex import BLOCK, index_tar, parse_label

__all__ = ["TarShardWriter"]


def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\0"


def _header(name: bytes, size: int, typeflag: bytes, mtime: int) -> bytes:
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = _octal(0o644, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    checksum = sum(header)
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    # the record's length counts its own decimal digits: find the total T = len(body) + len(str(T))
    total = len(body) + 1
    while total != len(body) + len(str(total)):
        total += 1
    return str(total).encode() + body


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


class TarShardWriter:
    """Write one tar shard atomically and build its index on the way.

    Args:
        path: Final shard path; data goes to a temporary sibling until :meth:`close`.
        label_ext: Extension under which integer labels are stored (``None``: unlabelled).
        mtime: Modification time stamped on every member (fixed for reproducible shards).
        checksum_algorithm: Algorithm of the per-sample checksums recorded in the index (what
            :func:`~streamprune.tarindex.index_tar` computes from the finished shard), or
            ``None`` for none.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        label_ext: str | None = "cls",
        mtime: int = 0,
        checksum_algorithm: str | None = DEFAULT_CHECKSUM,
    ) -> None:
        self.path = os.fspath(path)
        self.tmp = temp_name(self.path)
        self.label_ext = label_ext
        self.mtime = mtime
        self._fh = open(self.tmp, "wb")
        self._pos = 0
        self.keys: list[str] = []
        self.labels: list[int] = []
        self.start: list[int] = []
        self.end: list[int] = []
        self.members: list[list[tuple[str, int, int]]] = []
        self.checksum_algorithm = checksum_algorithm or ""
        self._hasher = checksum_hasher(checksum_algorithm) if checksum_algorithm else None
        self.checksums: list[int] = []
        self._seen: set[str] = set()

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._pos += len(data)

    def write(self, key: str, files: Mapping[str, bytes], label: int | None = None) -> None:
        """Append one sample.

        Args:
            key: Sample key; must not contain a dot in its last path component.
            files: Extension -> content (e.g. ``{"jpg": b"..."}``); written in sorted order.
            label: Integer label, stored as ``<key>.<label_ext>`` unless ``files`` has it; when
                ``files`` has it, the index records that member's value.

        Raises:
            ValueError: Bad key or extension.
            LabelError: ``files`` holds a label member that is not an integer or disagrees
                with ``label``.
            DuplicateKeyError: ``key`` was already written to this shard.
        """
        if not key or "." in key.rsplit("/", 1)[-1] or key.startswith("__"):
            raise ArgumentError(f"sample key {key!r}: keys must be non-empty, have no '.' in the last path part, and not start with '__'")
        if key in self._seen:
            raise DuplicateKeyError(f"{self.path}: sample key {key!r} written twice")
        items = {ext.lower(): bytes(data) for ext, data in files.items()}
        if self.label_ext is not None and self.label_ext in items:
            # the index must record the label the shard holds (what `index_tar` would read back)
            stored = parse_label(items[self.label_ext], self.path, key, self.label_ext)
            if label is not None and int(label) != stored:
                raise LabelError(
                    f"{self.path}: sample {key!r}: label {label} disagrees with its .{self.label_ext} member ({stored})"
                )
            label = stored
        elif label is not None and self.label_ext is not None:
            items[self.label_ext] = str(int(label)).encode()
        self._seen.add(key)
        if not items:
            raise ArgumentError(f"sample {key!r} has no files")
        start = self._pos
        group: list[tuple[str, int, int]] = []
        h = self._hasher() if self._hasher is not None else None
        for ext in sorted(items):
            if not ext or "/" in ext:
                raise ArgumentError(f"sample {key!r}: bad extension {ext!r}")
            data = items[ext]
            name = f"{key}.{ext}".encode("utf-8")
            if len(name) > 100:
                record = _pax_record("path", name)
                self._write(_header(b"PaxHeader/" + name[-80:], len(record), b"x", self.mtime))
                self._write(record + _padding(len(record)))
                name = name[:100]
            self._write(_header(name, len(data), b"0", self.mtime))
            group.append((ext, self._pos, len(data)))
            if h is not None:
                h.update(data)  # members in archive order, data bytes only: as index_tar hashes them
            self._write(data)
            self._write(_padding(len(data)))
        self.keys.append(key)
        self.labels.append(-1 if label is None else int(label))
        self.start.append(start)
        self.end.append(self._pos)
        self.members.append(group)
        if h is not None:
            self.checksums.append(h.intdigest())

    def __len__(self) -> int:
        return len(self.keys)

    def close(self, checksum: bool = True) -> ShardIndex:
        """Finish the archive, verify it, and rename it into place.

        Args:
            checksum: Compute the shard's SHA-256 for the manifest.

        Returns:
            The shard's index (``shard`` is the file's basename).

        Raises:
            StreamPruneError: The archive read back does not match what was written.
        """
        try:
            self._write(bytes(2 * BLOCK))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            written = ShardIndex(
                shard=os.path.basename(self.path),
                shard_bytes=self._pos,
                keys=self.keys,
                labels=np.asarray(self.labels, dtype=np.int64),
                start=np.asarray(self.start, dtype=np.int64),
                end=np.asarray(self.end, dtype=np.int64),
                members=self.members,
                checksums=np.asarray(self.checksums, dtype=np.uint64) if self._hasher is not None else None,
                checksum_algorithm=self.checksum_algorithm,
            )
            self._verify(written)
            if checksum:
                written.sha256 = file_sha256(self.tmp)
        except BaseException:
            self.abort()
            raise
        os.replace(self.tmp, self.path)
        return written

    def _verify(self, written: ShardIndex) -> None:
        # Headers only: the checksums came from the bytes written, so the data is not read again.
        reread = index_tar(self.tmp, label_ext=None, name=written.shard, sample_checksums=False)
        if (
            reread.keys != written.keys
            or reread.shard_bytes != written.shard_bytes
            or not np.array_equal(reread.start, written.start)
            or not np.array_equal(reread.end, written.end)
            or reread.members != written.members
        ):
            raise StreamPruneError(
                f"{self.path}: shard read back has {len(reread)} samples, {len(written)} were written, "
                "or their byte ranges differ; the shard was not kept"
            )

    def abort(self) -> None:
        """Discard the partial shard."""
        if not self._fh.closed:
            self._fh.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
