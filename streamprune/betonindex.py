"""Read FFCV ``.beton`` files without FFCV: header, field table, metadata table, allocations.

An FFCV file (format version 2, what ``ffcv==1.0.2`` writes) is laid out as::

    header            24 bytes: version <u2, num_fields <u2, page_size <u4,
                      num_samples <u8, alloc_table_ptr <u8 (numpy aligned struct)
    field table       num_fields x 1041 bytes: type_id <u1, name 16 x <u1 (NUL padded),
                      arguments 1024 x <u1
    metadata table    num_samples rows of the fields' metadata types (aligned struct)
    data region       starts at the next multiple of page_size; pages of page_size bytes
    allocation table  at alloc_table_ptr to the end: (sample_id <u8, ptr <u8, size <u8) rows

Built-in field types and their metadata: 0 FloatField ``<f8``, 1 IntField ``<i8``,
2 RGBImageField (mode <u1, width <u2, height <u2, data_ptr <u8; packed), 3 BytesField
(ptr, size), 4 NDArrayField (ptr), 5 JSONField (ptr, size), 6 TorchTensorField (ptr);
255 is a custom field whose metadata size only its own class knows (refused here).

:func:`index_beton` turns a file into a :class:`~streamprune.shardindex.ShardIndex` (keys,
labels from the integer label field, and each sample's data pointer ranges), so keep masks,
scores and reports work on ``.beton`` files as on tar shards; :mod:`streamprune.indexing` runs
it over files written by anyone and writes their manifest.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import ManifestError
from .indexfile import save_index
from .shardindex import ShardIndex

__all__ = [
    "BETON_VERSION",
    "BetonInfo",
    "read_beton",
    "looks_like_beton",
    "index_beton",
    "save_beton_index",
    "beton_key",
]

log = logging.getLogger(__name__)

BETON_VERSION = 2
MIN_PAGE_SIZE = 1 << 21

HEADER_DTYPE = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)
FIELD_DESC_DTYPE = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC_DTYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
_PTR_SIZE = np.dtype([("ptr", "<u8"), ("size", "<u8")])
_RGB = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])

# type_id -> (FFCV class name, metadata dtype, column holding the data pointer or None,
#             column holding the size or None: size then comes from the allocation table)
FIELD_TYPES: dict[int, tuple[str, np.dtype, str | None, str | None]] = {
    0: ("FloatField", np.dtype("<f8"), None, None),
    1: ("IntField", np.dtype("<i8"), None, None),
    2: ("RGBImageField", _RGB, "data_ptr", None),
    3: ("BytesField", _PTR_SIZE, "ptr", "size"),
    4: ("NDArrayField", np.dtype("<u8"), "", None),
    5: ("JSONField", _PTR_SIZE, "ptr", "size"),
    6: ("TorchTensorField", np.dtype("<u8"), "", None),
}
_BY_NAME = {spec[0]: spec for spec in FIELD_TYPES.values()}


def beton_key(stem: str, i: int) -> str:
    """The key synthesised for sample ``i`` of a plain-FFCV file (FFCV stores no keys)."""
    return f"{stem}/{i:08d}"


@dataclass
class BetonInfo:
    """What an FFCV file's header, field table, metadata and allocation table say.

    Attributes:
        path: The file.
        file_bytes: Its size.
        version: FFCV format version (2).
        page_size: FFCV page size in bytes (the unit its process cache reads).
        num_samples: Samples in the file.
        alloc_table_ptr: Offset of the allocation table.
        data_start: Offset of the first data page.
        fields: ``(name, FFCV class name)`` per field, in file order.
        metadata: The metadata table (structured array; column ``f{j}`` is field ``j``).
        alloc: The allocation table.
    """

    path: str
    file_bytes: int
    version: int
    page_size: int
    num_samples: int
    alloc_table_ptr: int
    data_start: int
    fields: list[tuple[str, str]]
    metadata: np.ndarray = field(repr=False)
    alloc: np.ndarray = field(repr=False)

    @property
    def field_names(self) -> list[str]:
        """Field names in file order."""
        return [name for name, _ in self.fields]

    def column(self, name: str) -> np.ndarray:
        """The metadata column of field ``name``."""
        return self.metadata[f"f{self.field_names.index(name)}"]

    def sample_pages(self) -> np.ndarray:
        """Page number (``ptr // page_size``) of each sample's first allocation (-1: none)."""
        first = np.full(self.num_samples, np.iinfo(np.int64).max, dtype=np.int64)
        if len(self.alloc):
            np.minimum.at(first, self.alloc["sample_id"].astype(np.int64), self.alloc["ptr"].astype(np.int64))
        return np.where(first == np.iinfo(np.int64).max, -1, first // self.page_size)

    def summary(self, label_field: str | None = None, image_field: str | None = None) -> dict:
        """The JSON-ready description stored in the index sidecar (``"beton"`` entry)."""
        return {
            "version": self.version,
            "page_size": self.page_size,
            "num_samples": self.num_samples,
            "data_start": self.data_start,
            "alloc_table_ptr": self.alloc_table_ptr,
            "fields": [{"name": n, "type": t} for n, t in self.fields],
            "label_field": label_field,
            "image_field": image_field,
        }


def _decode_name(raw: np.ndarray) -> str:
    return raw.tobytes().split(b"\x00", 1)[0].decode("ascii", errors="replace")


def read_beton(path: str | os.PathLike) -> BetonInfo:
    """Parse and check an FFCV file's header and tables (reads no sample data).

    Args:
        path: The ``.beton`` file.

    Returns:
        The parsed :class:`BetonInfo`.

    Raises:
        ManifestError: Missing, truncated or not an FFCV version-2 file, a custom field type,
            or tables that point outside the file (the message names the file).
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: .beton file not found") from None
    if size < HEADER_DTYPE.itemsize:
        raise ManifestError(f"{path}: {size} bytes is too short for an FFCV file")
    with open(path, "rb") as fh:
        header = np.frombuffer(fh.read(HEADER_DTYPE.itemsize), dtype=HEADER_DTYPE)[0]
        version = int(header["version"])
        if version != BETON_VERSION:
            raise ManifestError(f"{path}: not an FFCV version-{BETON_VERSION} file (header version {version})")
        num_fields = int(header["num_fields"])
        page_size = int(header["page_size"])
        num_samples = int(header["num_samples"])
        alloc_ptr = int(header["alloc_table_ptr"])
        if page_size < MIN_PAGE_SIZE or page_size & (page_size - 1):
            raise ManifestError(f"{path}: page size {page_size} is not a power of two >= {MIN_PAGE_SIZE}")
        if num_fields < 1:
            raise ManifestError(f"{path}: the FFCV header declares no fields")
        desc_bytes = num_fields * FIELD_DESC_DTYPE.itemsize
        raw = fh.read(desc_bytes)
        if len(raw) != desc_bytes:
            raise ManifestError(f"{path}: truncated FFCV field table")
        descs = np.frombuffer(raw, dtype=FIELD_DESC_DTYPE)
        fields: list[tuple[str, str]] = []
        dtypes = []
        for desc in descs:
            name = _decode_name(desc["name"])
            type_id = int(desc["type_id"])
            if type_id not in FIELD_TYPES:
                raise ManifestError(
                    f"{path}: field {name!r} has a custom FFCV type (id {type_id}); its metadata size is unknown "
                    "outside its own Field class, so the file cannot be indexed"
                )
            fields.append((name, FIELD_TYPES[type_id][0]))
            dtypes.append(FIELD_TYPES[type_id][1])
        metadata_dtype = np.dtype([(f"f{j}", t) for j, t in enumerate(dtypes)], align=True)
        meta_start = HEADER_DTYPE.itemsize + desc_bytes
        meta_bytes = num_samples * metadata_dtype.itemsize
        data_start = -(-(meta_start + meta_bytes) // page_size) * page_size
        if alloc_ptr < meta_start + meta_bytes or alloc_ptr > size or (size - alloc_ptr) % ALLOC_DTYPE.itemsize:
            raise ManifestError(
                f"{path}: allocation table at byte {alloc_ptr} does not fit a {size}-byte file with "
                f"{num_samples} samples (truncated, or still being written?)"
            )
        raw = fh.read(meta_bytes)
        if len(raw) != meta_bytes:
            raise ManifestError(f"{path}: truncated FFCV metadata table")
        metadata = np.frombuffer(raw, dtype=metadata_dtype)
        fh.seek(alloc_ptr)
        alloc = np.frombuffer(fh.read(), dtype=ALLOC_DTYPE)
    if len(alloc):
        if int(alloc["sample_id"].max()) >= num_samples:
            raise ManifestError(f"{path}: allocation table names sample {int(alloc['sample_id'].max())} of {num_samples}")
        ends = alloc["ptr"] + alloc["size"]
        if int(alloc["ptr"].min()) < data_start or int(ends.max()) > alloc_ptr:
            raise ManifestError(f"{path}: an allocation points outside the data region")
    names = [n for n, _ in fields]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate field names {names}")
    return BetonInfo(
        path=path,
        file_bytes=size,
        version=version,
        page_size=page_size,
        num_samples=num_samples,
        alloc_table_ptr=alloc_ptr,
        data_start=data_start,
        fields=fields,
        metadata=metadata,
        alloc=alloc,
    )


def looks_like_beton(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with a plausible FFCV header (cheap: reads 24 bytes)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_DTYPE.itemsize)
        size = os.path.getsize(path)
    except OSError:
        return False
    if len(raw) < HEADER_DTYPE.itemsize:
        return False
    header = np.frombuffer(raw, dtype=HEADER_DTYPE)[0]
    page = int(header["page_size"])
    return (
        int(header["version"]) == BETON_VERSION
        and 0 < int(header["num_fields"]) < 256
        and page >= MIN_PAGE_SIZE
        and not page & (page - 1)
        and HEADER_DTYPE.itemsize < int(header["alloc_table_ptr"]) <= size
    )


def _pick_label_field(info: BetonInfo, label_field: str | None) -> str | None:
    ints = [name for name, kind in info.fields if kind == "IntField"]
    if label_field is None:
        return None
    if label_field != "auto":
        if label_field not in info.field_names:
            raise ManifestError(f"{info.path}: no field {label_field!r} (fields: {info.field_names})")
        kind = dict(info.fields)[label_field]
        if kind != "IntField":
            raise ManifestError(f"{info.path}: label field {label_field!r} is a {kind}, not an IntField")
        return label_field
    if "label" in ints:
        return "label"
    if len(ints) == 1:
        return ints[0]
    if not ints:
        log.warning("%s: no integer field; indexing it as unlabelled", info.path)
        return None
    raise ManifestError(
        f"{info.path}: several integer fields {ints} could be the label; name one (--label-field / label_field=)"
    )


def _pick_image_field(info: BetonInfo) -> str | None:
    images = [name for name, kind in info.fields if kind == "RGBImageField"]
    return images[0] if images else None


def _members(info: BetonInfo) -> tuple[np.ndarray, np.ndarray, list[list[tuple[str, int, int]]]]:
    """Per sample: start, end and ``(field, ptr, size)`` of each field's data."""
    n = info.num_samples
    order = np.argsort(info.alloc["ptr"], kind="stable")
    sorted_ptr = info.alloc["ptr"][order]
    sorted_size = info.alloc["size"][order]
    cols = []
    for j, (name, kind) in enumerate(info.fields):
        _, _, ptr_col, size_col = _BY_NAME[kind]
        if ptr_col is None:
            continue
        col = info.metadata[f"f{j}"]
        ptr = (col if ptr_col == "" else col[ptr_col]).astype(np.uint64)
        if size_col is not None:
            size = col[size_col].astype(np.uint64)
        else:
            pos = np.searchsorted(sorted_ptr, ptr)
            pos = np.minimum(pos, max(len(sorted_ptr) - 1, 0))
            if not len(sorted_ptr) or not np.array_equal(sorted_ptr[pos], ptr):
                bad = int(np.flatnonzero(sorted_ptr[pos] != ptr)[0]) if len(sorted_ptr) else 0
                raise ManifestError(
                    f"{info.path}: field {name!r} of sample {bad} points to byte {int(ptr[bad])}, "
                    "which is not in the allocation table"
                )
            size = sorted_size[pos]
        cols.append((name, ptr.astype(np.int64), size.astype(np.int64)))
    if not cols:
        zero = np.zeros(n, dtype=np.int64)
        return zero, zero.copy(), [[] for _ in range(n)]
    ptrs = np.stack([c[1] for c in cols])
    ends = np.stack([c[1] + c[2] for c in cols])
    start = ptrs.min(axis=0)
    end = ends.max(axis=0)
    members = [[(name, int(p), int(s)) for name, p, s in zip(*col_row)] for col_row in _rows(cols, n)]
    return start, end, members


def _rows(cols, n):
    names = [c[0] for c in cols]
    ptr_lists = [c[1].tolist() for c in cols]
    size_lists = [c[2].tolist() for c in cols]
    for i in range(n):
        yield names, [p[i] for p in ptr_lists], [s[i] for s in size_lists]


def index_beton(
    path: str | os.PathLike,
    label_field: str | None = "auto",
    keys: list[str] | None = None,
    name: str | None = None,
) -> tuple[ShardIndex, BetonInfo]:
    """Index one ``.beton`` file: keys, labels and each sample's data pointer range.

    Args:
        path: The file.
        label_field: Integer field holding the label; ``"auto"`` picks a field named
            ``label``, else the only ``IntField`` (none: unlabelled); ``None``: unlabelled.
        keys: Sample keys in file order (what ``streamprune shard`` knows); default
            ``f"{stem}/{i:08d}"`` since FFCV stores no keys.
        name: Name recorded for the file (relative to the manifest directory).

    Returns:
        ``(index, info)``: ``start``/``end`` are the byte range of the sample's data
        allocations, ``members`` lists ``(field, ptr, size)``; ``extra["beton"]`` describes
        the file.

    Raises:
        ManifestError: Bad file, unknown label field, or ``keys`` of the wrong length.
    """
    path = os.fspath(path)
    info = read_beton(path)
    chosen = _pick_label_field(info, label_field)
    n = info.num_samples
    if keys is None:
        stem = os.path.basename(path)
        stem = stem[: -len(".beton")] if stem.endswith(".beton") else stem
        keys = [beton_key(stem, i) for i in range(n)]
    elif len(keys) != n:
        raise ManifestError(f"{path}: {len(keys)} keys given for {n} samples")
    labels = info.column(chosen).astype(np.int64) if chosen else np.full(n, -1, dtype=np.int64)
    start, end, members = _members(info)
    index = ShardIndex(
        shard=name if name is not None else os.path.basename(path),
        shard_bytes=info.file_bytes,
        keys=list(keys),
        labels=labels,
        start=start,
        end=end,
        members=members,
        sha256="",
        extra={"beton": info.summary(label_field=chosen, image_field=_pick_image_field(info))},
    )
    return index, info


def save_beton_index(index: ShardIndex, path: str | os.PathLike) -> str:
    """Write a ``.beton`` file's index sidecar (index format version 1 plus a ``beton`` entry).

    Args:
        index: From :func:`index_beton`.
        path: Destination (conventionally ``<file>.beton.index.json``).

    Returns:
        SHA-256 of the bytes written.
    """
    # .beton files are read by FFCV through indices, never member by member: no binary companion.
    return save_index(index, path, companion=False, extra_fields={"beton": index.extra.get("beton", {})})
