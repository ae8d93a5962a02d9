"""Walk tar headers and group members into webdataset samples with their byte ranges.

The walk reads only the 512-byte headers (and the payloads of PAX and GNU long-name
headers), never member data, so indexing runs at header-parsing speed; :func:`index_tar` then
reads the member data once more only to compute each sample's checksum (optional). Members are grouped
into samples the way webdataset does it: the key is the path up to the first dot of the
basename, the extension is the rest (``x.seg.png`` -> key ``x``, extension ``seg.png``),
consecutive members with the same key form one sample, and ``__*__`` metadata members,
directories, links and other non-regular entries are skipped.
"""

from __future__ import annotations

import mmap
import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import CompressedShardError, DuplicateKeyError, LabelError, TarFormatError
from .shardindex import DEFAULT_CHECKSUM, MemberTable, ShardIndex, checksum_hasher

__all__ = [
    "TarMember",
    "MemberTable",
    "ShardIndex",
    "RangedView",
    "iter_tar_members",
    "walk_headers",
    "index_tar",
    "index_tar_ranges",
    "split_key_ext",
]

BLOCK = 512
_GZIP_MAGIC = b"\x1f\x8b"
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_REGULAR = (b"0", b"\0", b"7")
_EXTENDED = (b"x", b"L", b"g", b"K")
_BASE256 = (b"\x80", b"\xff")


@dataclass(frozen=True)
class TarMember:
    """One regular file inside a tar.

    Attributes:
        name: Member path as stored (PAX ``path`` and GNU long names applied).
        header_offset: Offset of the first header block that belongs to this member
            (including any PAX or GNU long-name blocks before its own header).
        data_offset: Offset of the first data byte.
        size: Data size in bytes.
    """

    name: str
    header_offset: int
    data_offset: int
    size: int


def split_key_ext(name: str) -> tuple[str | None, str | None]:
    """Split a member name into webdataset key and extension.

    Args:
        name: Member path inside the tar.

    Returns:
        ``(key, extension)``, or ``(None, None)`` when the name has no extension.
    """
    match = _KEY_EXT.match(name)
    if not match:
        return None, None
    return match.group(1), match.group(2)


def _parse_number(field_bytes: bytes, shard: str, offset: int) -> int:
    if field_bytes[:1] in (b"\x80", b"\xff"):
        # GNU base-256 encoding, used for members of 8 GiB and more.
        value = int.from_bytes(field_bytes[1:], "big")
        return -value if field_bytes[0] == 0xFF else value
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(
            f"{shard}: corrupt tar header at byte {offset}: size field {field_bytes!r} is not octal"
        ) from None


def _plain_octal(field_bytes: bytes) -> int:
    """A numeric header field in the common form (octal digits), or -1 for anything else.

    Anything else (base-256, not octal) is for :func:`_parse_number`, which accepts or raises.
    """
    if field_bytes[:1] in _BASE256:
        return -1
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def _parse_pax(payload: bytes, shard: str, offset: int) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise TarFormatError(f"{shard}: corrupt PAX header at byte {offset}") from None
        if length <= 0:
            raise TarFormatError(f"{shard}: corrupt PAX header at byte {offset}")
        record = payload[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _check_not_gzip(head: bytes, shard: str) -> None:
    if head[:2] == _GZIP_MAGIC:
        raise CompressedShardError(
            f"{shard}: shard is gzip-compressed; compressed tars cannot be read by byte range, so "
            "pruning would save no I/O. Decompress it first (e.g. `gunzip -k` or `zcat x.tar.gz > "
            "x.tar`) and index the plain .tar."
        )


def iter_tar_members(path: str | os.PathLike) -> Iterator[TarMember]:
    """Yield the regular members of an uncompressed tar file, reading headers only.

    Handles ustar (with name prefix), GNU long names (``L``), PAX extended headers
    (``x``; global ``g`` headers are skipped) and GNU base-256 sizes.

    Args:
        path: Path of the tar file.

    Yields:
        One :class:`TarMember` per regular file, in archive order.

    Raises:
        CompressedShardError: The file is gzip-compressed.
        TarFormatError: The file is truncated or a header is corrupt.
    """
    shard = os.fspath(path)
    file_size = os.path.getsize(shard)
    if file_size == 0:
        raise TarFormatError(f"{shard}: empty file, not a tar archive")
    with open(shard, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        _check_not_gzip(mm[:2], shard)
        yield from walk_headers(mm, file_size, shard)


def walk_headers(mm: mmap.mmap, file_size: int, shard: str) -> Iterator[TarMember]:
    """Walk the tar headers of a buffer, yielding regular members with their data ranges.

    Args:
        mm: Anything sliceable as bytes from offset 0 (an ``mmap``, or a positioned-read view
            whose offset 0 is a header), covering ``file_size`` bytes.
        file_size: Bytes the walk may cover.
        shard: Shard name for error messages.

    Yields:
        Each regular member, in archive order.

    Raises:
        TarFormatError: A corrupt, truncated or unsupported header (named by byte offset).
    """
    # Hot loop: the common case (octal fields, unsigned checksum) takes the short path
    # (_plain_octal, the Adler-32 byte sum); anything else (base-256 numbers, bad octal, signed
    # or wrong checksums) goes through _parse_number / _verify_checksum, which accept or raise.
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    pending_start: int | None = None
    zero_block = bytes(BLOCK)
    adler32 = zlib.adler32
    octal = _plain_octal
    extended = _EXTENDED
    regular = _REGULAR
    while pos + BLOCK <= file_size:
        header = mm[pos : pos + BLOCK]
        if header == zero_block:
            if pending_start is not None:
                raise TarFormatError(f"{shard}: extended header at byte {pending_start} has no member")
            return
        # Byte sum of the header: the low 16 bits of Adler-32 are 1 + the byte sum mod 65521,
        # exact for 256 bytes (at most 65280), so two halves give the exact sum.
        field = header[148:156]
        stored = octal(field)
        if stored < 0 or stored != (adler32(header[:256]) & 0xFFFF) + (adler32(header[256:]) & 0xFFFF) - 2 - sum(field) + 256:
            _verify_checksum(header, shard, pos)
        field = header[124:136]
        size = octal(field)
        if size < 0:
            size = _parse_number(field, shard, pos)
            if size < 0:
                raise TarFormatError(f"{shard}: corrupt tar header at byte {pos}: negative size {size}")
        typeflag = header[156:157]
        data_offset = pos + BLOCK
        if pending_start is None:
            pending_start = pos
        if typeflag in extended:
            if data_offset + size > file_size:
                raise TarFormatError(
                    f"{shard}: truncated: extended header at byte {pos} needs {size} bytes, file "
                    f"has {file_size - data_offset}"
                )
            payload = mm[data_offset : data_offset + size]
            if typeflag == b"L":
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif typeflag == b"x":
                pax = _parse_pax(payload, shard, pos)
            elif typeflag == b"g":
                pending_start = None  # a global header belongs to no member
            pos = data_offset + (size + BLOCK - 1) // BLOCK * BLOCK
            continue
        if pax and "size" in pax:
            text = pax["size"]
            if not (text.isascii() and text.isdigit()):
                raise TarFormatError(f"{shard}: corrupt PAX header before byte {pos}: size {text[:40]!r} is not a decimal number")
            size = int(text)
        if data_offset + size > file_size:
            raise TarFormatError(
                f"{shard}: truncated: member at byte {pos} needs {size} bytes, file has "
                f"{max(file_size - data_offset, 0)}"
            )
        if typeflag in regular:
            yield TarMember(_member_name(header, long_name, pax), pending_start, data_offset, size)
        long_name = None
        pax = {}
        pending_start = None
        pos = data_offset + (size + BLOCK - 1) // BLOCK * BLOCK
    if pos < file_size or pending_start is not None:
        raise TarFormatError(f"{shard}: truncated: incomplete tar header at byte {pos} (file size {file_size})")


class RangedView:
    """Byte slices of a shard served from windows fetched by ranged reads: what a header walk needs, no more.

    A slice outside the current window fetches a new one starting at the slice. Its size adapts
    to the shard: twice the stretch the walk used of the previous window, between ``min_window``
    and ``max_window``. Where members are small, consecutive headers fill the window and it
    grows (few requests); where they are large, the walk jumps out of each window after one
    header and it shrinks to ``min_window`` (few bytes: a header and the small members beside it).

    Args:
        read: ``read(start, end)`` returns exactly bytes ``[start, end)`` (a ranged request).
        size: Bytes in the shard.
        window: Size of the first window.
        min_window: Smallest window.
        max_window: Largest window.
    """

    def __init__(
        self, read: Callable[[int, int], bytes], size: int, window: int = 64 << 10, min_window: int = 4 << 10,
        max_window: int = 1 << 20,
    ) -> None:
        self.read = read
        self.size = size
        self.window = window
        self.min_window = min_window
        self.max_window = max_window
        self.requests = 0  # windows fetched
        self.bytes_read = 0
        self._lo = self._hi = self._used = 0
        self._buf = b""

    def __getitem__(self, span: slice) -> bytes:
        start, stop = span.start, min(span.stop, self.size)
        if not (self._lo <= start and stop <= self._hi):
            if self.requests:
                self.window = min(self.max_window, max(self.min_window, 2 * (self._used - self._lo)))
            self._lo, self._hi = start, min(self.size, start + max(self.window, stop - start))
            self._buf = self.read(self._lo, self._hi) if self._hi > self._lo else b""
            self.requests += 1
            self.bytes_read += len(self._buf)
            self._used = stop
        else:
            self._used = max(self._used, stop)
        return self._buf[start - self._lo : stop - self._lo]


def _verify_checksum(header: bytes, shard: str, pos: int) -> None:
    stored = _parse_number(header[148:156], shard, pos)
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return
    # Some old writers used signed chars for the checksum.
    signed = unsigned - 2 * sum(b for b in header if b > 127)
    if stored != signed:
        raise TarFormatError(
            f"{shard}: corrupt tar header at byte {pos} (checksum {stored} != {unsigned}); "
            "the file is damaged or not a tar archive"
        )


def _member_name(header: bytes, long_name: str | None, pax: dict[str, str]) -> str:
    if "path" in pax:
        return pax["path"]
    if long_name is not None:
        return long_name
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if header[257:263] == b"ustar\0":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    return name


def _group_samples(members: Iterator[TarMember], shard: str):
    keys: list[str] = []
    start: list[int] = []
    end: list[int] = []
    groups: list[list[tuple[str, int, int]]] = []
    seen: set[str] = set()
    current: str | None = None
    for member in members:
        name = member.name
        if "/" not in name and name.startswith("__") and name.endswith("__"):
            continue
        if _META.match(name):
            continue
        key, ext = split_key_ext(name)
        if key is None:
            continue
        ext = ext.lower()
        if key != current:
            if key in seen:
                raise DuplicateKeyError(
                    f"{shard}: duplicate sample key {key!r} (member {name!r} at byte "
                    f"{member.header_offset}); members of one sample must be adjacent and keys unique"
                )
            seen.add(key)
            current = key
            keys.append(key)
            start.append(member.header_offset)
            end.append(0)
            groups.append([])
        group = groups[-1]
        for other_ext, _, _ in group:
            if other_ext == ext:
                raise DuplicateKeyError(f"{shard}: sample {key!r} has member {name!r} twice")
        group.append((ext, member.data_offset, member.size))
        end[-1] = member.data_offset + (member.size + BLOCK - 1) // BLOCK * BLOCK
    return keys, start, end, groups


def index_tar(
    path: str | os.PathLike,
    label_ext: str | None = None,
    name: str | None = None,
    require_labels: bool = True,
    sample_checksums: bool = True,
    checksum_algorithm: str = DEFAULT_CHECKSUM,
) -> ShardIndex:
    """Index one uncompressed tar shard.

    Args:
        path: Path of the tar file.
        label_ext: Extension of the member that holds the integer label (e.g. ``"cls"``), or
            ``None`` for an unlabelled dataset.
        name: Name to record for the shard; defaults to the file's basename.
        require_labels: Raise when a sample has no ``label_ext`` member; otherwise its label
            is ``-1`` (the caller decides what a partly labelled dataset means).
        sample_checksums: Also checksum every sample's member data (reads every data byte
            once; see :func:`~streamprune.shardindex.sample_checksum`), so readers can verify.
        checksum_algorithm: Algorithm for ``sample_checksums``.

    Returns:
        The shard's :class:`ShardIndex` (``sha256`` left empty).

    Raises:
        TarFormatError: Truncated, corrupt or compressed tar.
        DuplicateKeyError: A key occurs twice.
        LabelError: ``label_ext`` is given and a sample lacks it or it is not an integer.
    """
    shard = os.fspath(path)
    keys, start, end, groups = _group_samples(iter_tar_members(shard), shard)
    labels = np.full(len(keys), -1, dtype=np.int64)
    if label_ext is not None:
        with open(shard, "rb") as fh:
            fd = fh.fileno()
            for i, group in enumerate(groups):
                labels[i] = _read_label(fd, group, label_ext, shard, keys[i], require_labels)
    return ShardIndex(
        shard=name or os.path.basename(shard),
        shard_bytes=os.path.getsize(shard),
        keys=keys,
        labels=labels,
        start=np.asarray(start, dtype=np.int64),
        end=np.asarray(end, dtype=np.int64),
        members=groups,
        checksums=_checksum_groups(shard, groups, checksum_algorithm) if sample_checksums else None,
        checksum_algorithm=checksum_algorithm if sample_checksums else "",
    )


def index_tar_ranges(
    view: RangedView,
    name: str,
    label_ext: str | None = None,
    require_labels: bool = True,
) -> ShardIndex:
    """Index one tar shard read through ranged reads: headers (and label members) only, no other data.

    The same index :func:`index_tar` builds with ``sample_checksums=False``, for a shard that is
    not a local file (an object behind a URL): member data other than labels is never fetched.

    Args:
        view: The shard's bytes, fetched window by window.
        name: Name to record for the shard (and to name it in errors).
        label_ext: As :func:`index_tar`.
        require_labels: As :func:`index_tar`.

    Returns:
        The shard's :class:`ShardIndex`, without checksums (``sha256`` empty).

    Raises:
        TarFormatError: Truncated, corrupt or compressed tar.
        DuplicateKeyError: A key occurs twice.
        LabelError: As :func:`index_tar`.
    """
    if view.size == 0:
        raise TarFormatError(f"{name}: empty file, not a tar archive")
    _check_not_gzip(view[0:2], name)
    labels_at: dict[int, bytes] = {}

    def members() -> Iterator[TarMember]:
        for member in walk_headers(view, view.size, name):
            if label_ext is not None and (split_key_ext(member.name)[1] or "").lower() == label_ext:
                # read now: a label sits beside its header, inside the window just fetched
                labels_at[member.data_offset] = view[member.data_offset : member.data_offset + member.size]
            yield member

    keys, start, end, groups = _group_samples(members(), name)
    labels = np.full(len(keys), -1, dtype=np.int64)
    if label_ext is not None:
        for i, group in enumerate(groups):
            offset = next((offset for ext, offset, _ in group if ext == label_ext), None)
            if offset is not None:
                labels[i] = parse_label(labels_at[offset], name, keys[i], label_ext)
            elif require_labels:
                raise LabelError(f"{name}: sample {keys[i]!r} has no .{label_ext} member holding its label")
    return ShardIndex(
        shard=name,
        shard_bytes=view.size,
        keys=keys,
        labels=labels,
        start=np.asarray(start, dtype=np.int64),
        end=np.asarray(end, dtype=np.int64),
        members=groups,
        checksums=None,
        checksum_algorithm="",
    )


def _checksum_groups(shard: str, groups: list[list[tuple[str, int, int]]], algorithm: str) -> np.ndarray:
    """Per sample, the checksum of its members' data in archive order (read through an mmap)."""
    new = checksum_hasher(algorithm)
    out = np.zeros(len(groups), dtype=np.uint64)
    if not groups:
        return out
    digests = []
    with open(shard, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)  # slices of a memoryview copy nothing
        try:
            for group in groups:
                h = new()
                for _, offset, size in group:
                    h.update(view[offset : offset + size])
                digests.append(h.intdigest())
        finally:
            view.release()  # the mmap cannot close while a view of it is alive
    out[:] = digests
    return out


def _read_label(fd: int, group: list[tuple[str, int, int]], label_ext: str, shard: str, key: str, required: bool) -> int:
    for ext, offset, size in group:
        if ext == label_ext:
            raw = os.pread(fd, size, offset)
            return parse_label(raw, shard, key, label_ext)
    if not required:
        return -1
    raise LabelError(f"{shard}: sample {key!r} has no .{label_ext} member holding its label")


def parse_label(raw: bytes, shard: str, key: str, label_ext: str) -> int:
    """Parse a label member's bytes as a decimal integer.

    Args:
        raw: Member content.
        shard: Shard name, for the error message.
        key: Sample key, for the error message.
        label_ext: Label extension, for the error message.

    Returns:
        The label.

    Raises:
        LabelError: The content is not a non-negative integer.
    """
    try:
        value = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise LabelError(
            f"{shard}: sample {key!r}: label member .{label_ext} is {raw[:40]!r}, not an integer"
        ) from None
    if value < 0:
        raise LabelError(f"{shard}: sample {key!r}: label {value} is negative")
    return value
