"""The dataset manifest: shards, sample counts, sizes, checksums, class names and totals.

Format (``manifest.json``, UTF-8 JSON, version 1)::

    {"format": "streamprune-manifest", "version": 1, "created": "<ISO time>",
     "label_ext": "cls" | null, "classes": ["name", ...],
     "num_samples": N, "total_bytes": B, "class_counts": [...],
     "shards": [{"name": "shard-000000.tar", "index": "shard-000000.tar.index.json",
                 "samples": n, "bytes": b, "sha256": "<hex or empty>",
                 "index_sha256": "<hex>"}, ...]}

A shard entry may add ``"format": "beton"`` (an FFCV file), ``"mds"`` (a MosaicML MDS shard) or
``"litdata"`` (a LitData chunk), with ``"layout"``, the format's description of how the
samples are encoded (see :mod:`.sampleformats`); without it a shard is a tar. It
may add ``"companion_sha256"``: the digest of the index's binary companion
(``<index>.npz``), so that a reader loads the companion alone, checked against the manifest,
without reading the JSON sidecar at all.

Shard and index names are relative to the manifest's directory (absolute paths and URLs are
kept as they are). The manifest may itself be a URL (``s3://bucket/ds/manifest.json``,
``https://...``), and a reader may move the base that relative *shard* names resolve
against (``Manifest.load(path, base="s3://bucket/prefix")``), so one manifest and one mask
serve a local copy and a bucket copy; index names keep resolving against the manifest's own
directory (they travel with it). Samples are numbered globally in manifest order: shard 0's samples first, in
archive order, then shard 1's, and so on. Masks and scores use this order.

A manifest read from a URL names only its own data: each shard and index name must be
relative (without a ``..`` that climbs out of the prefix it resolves against) or an absolute
URL on the manifest's own host or the host of the ``base`` the caller gave (same scheme, host
and port). An absolute local path, a ``file://`` URL, another host or a climb out of the prefix is an
:class:`~streamprune.errors.UnsafeLocationError` when the manifest is loaded, unless the
caller passes ``allow_foreign_locations=True``: a downloaded manifest cannot make a training
job read local files or internal endpoints into its samples. Manifests read from local files
are trusted as they are. A manifest URL's credentials (``https://user:secret@host/...``) stay
in ``root`` (shards are read with them) but never in ``path``, messages or files written.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from . import storage
from .atomic import atomic_write_json
from .errors import DuplicateKeyError, IndexMismatchError, ManifestError, UnsafeLocationError, redact
from .indexfile import load_index
from .jsonfile import read_versioned_json
from .shardindex import ShardIndex
from .shardsummary import ShardSummary, find_duplicate_key, summarize_index

__all__ = ["ShardEntry", "Manifest", "ManifestLike", "open_manifest", "build_manifest", "manifest_from_summaries", "MANIFEST_NAME", "IMAGE_EXTENSIONS"]

MANIFEST_FORMAT = "streamprune-manifest"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_FORMATS = ("tar", "beton", "mds", "litdata")
#: Member extensions that hold an encoded image, in the order a loader prefers them when a
#: sample has several (``jpg`` first, as webdataset datasets usually name their images).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")


@dataclass
class ShardEntry:
    """One shard as the manifest records it.

    ``format`` is ``"tar"`` (webdataset tar, the default; omitted from the JSON, so manifests
    written before the field existed load unchanged) or ``"beton"`` (an FFCV file).
    """

    name: str
    index: str
    samples: int
    bytes: int
    sha256: str
    index_sha256: str
    format: str = "tar"
    companion_sha256: str = ""
    layout: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Return the JSON form (optional fields left out when they hold their default)."""
        out = dict(self.__dict__)
        if out.get("format") == "tar":
            del out["format"]
        if not out.get("companion_sha256"):
            out.pop("companion_sha256", None)
        if not out.get("layout"):
            out.pop("layout", None)
        return out


@dataclass
class Manifest:
    """A loaded manifest with lazy, cached access to the shard indexes.

    Attributes:
        root: Directory that relative shard and index names resolve against.
        shards: Shard entries in manifest order.
        classes: Class names by label id (may be empty for unlabelled data).
        label_ext: Extension of the label member, or ``None``.
        created: ISO creation time.
        path: File (or URL) the manifest was loaded from, if any (a URL's credentials
            redacted: this is what messages and the files that record the manifest show).
        base: Where relative shard names resolve, when it is not ``root`` (a copy of the
            shards elsewhere: another directory, a bucket prefix, an HTTP server).
        storage_options: Options for the fsspec filesystem of remote locations (endpoint,
            profile, ...). Kept in memory only: :meth:`save` never writes them.
        allow_foreign_locations: A manifest loaded from a URL may name shards and indexes
            outside its prefix and ``base`` (see the module docstring). In memory only.
    """

    root: str
    shards: list[ShardEntry]
    classes: list[str] = field(default_factory=list)
    label_ext: str | None = "cls"
    created: str = ""
    path: str | None = None
    class_counts: list[int] = field(default_factory=list)
    _indexes: dict[int, ShardIndex] = field(default_factory=dict, repr=False)
    base: str | None = None
    storage_options: dict | None = field(default=None, repr=False)
    allow_foreign_locations: bool = field(default=False, repr=False)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        base: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        allow_foreign_locations: bool = False,
    ) -> "Manifest":
        """Load ``manifest.json`` (or a directory or URL prefix containing one).

        Args:
            path: Manifest file or URL, or the directory (URL prefix) that holds ``manifest.json``.
            base: Directory or URL prefix that relative shard names resolve against instead of
                the manifest's directory (the same shards copied elsewhere).
            storage_options: fsspec options for remote locations (credentials come from each
                backend's standard configuration otherwise).
            allow_foreign_locations: Accept a manifest from a URL that names shards or indexes
                outside its own prefix and ``base`` (local paths, ``file://`` URLs, other
                hosts, ``..`` out of the prefix). Only for a manifest you trust.

        Returns:
            The manifest.

        Raises:
            ManifestError: Missing or malformed manifest.
            UnsafeLocationError: A manifest from a URL names a location outside its prefix
                and ``base`` (and ``allow_foreign_locations`` is off).
        """
        path = os.fspath(path)
        data = None
        if storage.is_remote(path):
            if not path.endswith(".json"):
                path = storage.join(path, MANIFEST_NAME)
            try:
                data = storage.read_bytes(path, storage_options)
            except FileNotFoundError:
                raise ManifestError(f"{path}: manifest not found") from None
        else:
            path = storage.local_path(path)
            if os.path.isdir(path):
                path = os.path.join(path, MANIFEST_NAME)
        obj = read_versioned_json(path, MANIFEST_FORMAT, MANIFEST_VERSION, "manifest", ManifestError, data=data)
        try:
            shards = [ShardEntry(**s) for s in obj["shards"]]
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{path}: malformed shard entry ({exc})") from None
        for k, s in enumerate(shards):
            bad = _bad_entry_field(s)
            if bad is not None:
                raise ManifestError(f"{path}: shard entry {k}: {bad!r} is {getattr(s, bad)!r}, {_ENTRY_FIELDS[bad][1]}")
            if s.format not in SHARD_FORMATS:
                raise ManifestError(f"{path}: shard {s.name} has format {s.format!r}; known: {', '.join(SHARD_FORMATS)}")
        classes, counts, label_ext, created = (obj.get("classes") or [], obj.get("class_counts") or [], obj.get("label_ext"),
                                               obj.get("created", ""))
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ManifestError(f"{path}: 'classes' must be a list of class names")
        if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise ManifestError(f"{path}: 'class_counts' must be a list of integers")
        if not (label_ext is None or isinstance(label_ext, str)) or not isinstance(created, str):
            raise ManifestError(f"{path}: 'label_ext' must be a string or null and 'created' a string")
        remote = storage.is_remote(path)
        manifest = cls(
            root=storage.parent(path),
            shards=shards,
            classes=list(classes),
            label_ext=label_ext,
            created=created,
            path=redact(path) if remote else os.path.abspath(path),
            class_counts=list(counts),
            base=None if base is None else _base(base),
            storage_options=storage_options,
            allow_foreign_locations=allow_foreign_locations,
        )
        manifest.check_locations()
        if manifest.num_samples >= _INT64 or manifest.total_bytes >= _INT64:
            raise ManifestError(f"{path}: shard sample counts or sizes add up to more than 2**63")
        if obj.get("num_samples") != manifest.num_samples:
            raise ManifestError(
                f"{path}: num_samples {obj.get('num_samples')} disagrees with the shard counts "
                f"({manifest.num_samples})"
            )
        return manifest

    def save(self, path: str | os.PathLike | None = None) -> str:
        """Write the manifest atomically.

        Args:
            path: Destination; defaults to ``root/manifest.json``.

        Returns:
            The path written.
        """
        path = os.fspath(path) if path is not None else os.path.join(self.root, MANIFEST_NAME)
        obj = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "created": self.created or _now(),
            "label_ext": self.label_ext,
            "classes": self.classes,
            "num_samples": self.num_samples,
            "total_bytes": self.total_bytes,
            "class_counts": self.class_counts,
            "shards": [s.to_json() for s in self.shards],
        }
        atomic_write_json(path, obj)
        self.path = os.path.abspath(path)
        return path

    def __repr__(self) -> str:
        # One line: the default dataclass repr lists every shard entry (kilobytes for a few shards).
        where = self.path or self.root
        base = f", base={self.base!r}" if self.base is not None else ""
        return f"Manifest({where!r}, shards={len(self.shards)}, samples={self.num_samples}, classes={len(self.classes)}{base})"

    @property
    def num_samples(self) -> int:
        """Total number of samples over all shards."""
        return sum(s.samples for s in self.shards)

    @property
    def total_bytes(self) -> int:
        """Total size of all shard files."""
        return sum(s.bytes for s in self.shards)

    @property
    def num_classes(self) -> int:
        """Number of classes (from the class names, else from the largest label)."""
        if self.classes:
            return len(self.classes)
        return int(self.labels().max()) + 1 if self.num_samples else 0

    @property
    def shard_offsets(self) -> np.ndarray:
        """Global index of each shard's first sample, plus the total at the end."""
        return np.concatenate([[0], np.cumsum([s.samples for s in self.shards])]).astype(np.int64)

    @property
    def fingerprint(self) -> str:
        """Digest identifying this exact set of shard indexes (what masks are bound to)."""
        digest = hashlib.sha256()
        for s in self.shards:
            digest.update(f"{s.name}\0{s.samples}\0{s.index_sha256}\n".encode())
        return digest.hexdigest()

    def resolve(self, name: str) -> str:
        """Absolute path (or URL) of a name recorded in the manifest, against its directory."""
        return storage.join(self.root, name)

    def shard_path(self, k: int) -> str:
        """Absolute path or URL of shard ``k`` (relative names resolve against ``base`` when set)."""
        return storage.join(self.base if self.base is not None else self.root, self.shards[k].name)

    def with_base(
        self, base: str | os.PathLike | None, storage_options: dict | None = None, allow_foreign_locations: bool | None = None,
    ) -> "Manifest":
        """A copy whose relative shard names resolve against ``base`` (``None``: unchanged).

        Args:
            base: The new base, or ``None`` to keep the current one.
            storage_options: New fsspec options, or ``None`` to keep the current ones.
            allow_foreign_locations: New setting (see :meth:`load`), or ``None`` to keep it.

        Raises:
            UnsafeLocationError: The manifest came from a URL and names a location outside its
                prefix and the new base (see :meth:`check_locations`).
        """
        other = copy.copy(self)
        other._indexes = {}
        if base is not None:
            other.base = _base(base)
        if storage_options is not None:
            other.storage_options = storage_options
        if allow_foreign_locations is not None:
            other.allow_foreign_locations = allow_foreign_locations
        other.check_locations()
        return other

    def check_locations(self) -> None:
        """Check that a manifest read from a URL names only its own data (see the module docstring).

        Every shard name (resolved against ``base`` when set, else ``root``) and every index
        name (against ``root``) must be relative without climbing out of that prefix with
        ``..``, an absolute URL with the scheme, host and port of ``root`` or ``base``, or an
        absolute path under a local ``base``. A no-op for a manifest read from a local file, or
        with ``allow_foreign_locations`` set.

        Raises:
            UnsafeLocationError: Naming the manifest, the entry, and why it is refused.
        """
        if self.allow_foreign_locations or self.path is None or not storage.is_remote(self.root):
            return
        trusted = [self.root] if self.base is None else [self.root, self.base]
        shard_base = self.base if self.base is not None else self.root
        for k, entry in enumerate(self.shards):
            for what, name, against in (("shard", entry.name, shard_base), ("index", entry.index, self.root)):
                reason = _foreign(name, against, trusted)
                if reason is None:
                    continue
                where = f"its own location {redact(self.root)}" + (f" or the base given, {redact(self.base)}" if self.base else "")
                raise UnsafeLocationError(
                    f"{self.path}: shard entry {k} names the {what} {name!r}, {reason}; a manifest read from a URL may "
                    f"only name files relative to {where}, or URLs on the same host. Pass allow_foreign_locations=True (command line: "
                    "--allow-foreign-locations) only if you trust this manifest",
                    manifest=self.path, entry=name, reason=reason,
                )

    def index(self, k: int, cache: bool = True) -> ShardIndex:
        """Load (and cache) shard ``k``'s index, checked against the manifest.

        Args:
            k: Shard number in manifest order.
            cache: Keep it for the next call (a reader that holds the index itself passes
                ``False``, so memory stays flat over an epoch).

        Returns:
            The shard's index.

        Raises:
            ManifestError: The index is missing or malformed.
            IndexMismatchError: The index was rewritten, or it disagrees with the manifest.
        """
        cached = self._indexes.get(k)
        if cached is not None:
            return cached
        entry = self.shards[k]
        path = self.resolve(entry.index)
        index = load_index(
            path, expected_sha256=entry.index_sha256, companion_sha256=entry.companion_sha256 or None,
            storage_options=self.storage_options,
        )
        if len(index) != entry.samples or index.shard_bytes != entry.bytes:
            raise IndexMismatchError(
                f"{path}: index has {len(index)} samples / {index.shard_bytes} bytes, manifest says "
                f"{entry.samples} / {entry.bytes} for shard {entry.name}"
            )
        if entry.format != "tar":
            index.format = entry.format
        if cache:
            self._indexes[k] = index
        return index

    def labels(self) -> np.ndarray:
        """Labels of all samples in manifest order (``-1`` where unlabelled)."""
        if not self.shards:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.index(k).labels for k in range(len(self.shards))])

    def keys(self) -> list[str]:
        """Keys of all samples in manifest order."""
        out: list[str] = []
        for k in range(len(self.shards)):
            out.extend(self.index(k).keys)
        return out

    def sample_bytes(self) -> np.ndarray:
        """Bytes each sample occupies on disk, in manifest order."""
        if not self.shards:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.index(k).data_bytes for k in range(len(self.shards))])

    def image_extensions(self) -> tuple[str, ...]:
        """The image member extensions (``jpg``, ``webp``, ...) of this dataset's samples.

        Read from shard 0's index, which a reader loads first anyway: writers put the same
        member types in every shard (a folder of mixed ``jpg``/``png`` files is shuffled over
        all shards), so one shard names them without loading every index.

        Returns:
            The extensions, in :data:`IMAGE_EXTENSIONS` order; empty when shard 0 holds no
            image member (or the manifest has no shards).
        """
        if not self.shards:
            return ()
        present = {ext.lower() for members in self.index(0).members for ext, _, _ in members}
        return tuple(ext for ext in IMAGE_EXTENSIONS if ext in present)

    def drop_cache(self) -> None:
        """Forget cached indexes (e.g. before handing the manifest to worker processes)."""
        self._indexes = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_indexes"] = {}
        return state


_INT64 = 2**63
#: Each shard entry field's type, and what the error says it must be.
_ENTRY_FIELDS = {
    "name": (str, "must be a file name"),
    "index": (str, "must be a file name"),
    "samples": (int, "must be a count from 0 to 2**63 - 1"),
    "bytes": (int, "must be a size from 0 to 2**63 - 1"),
    "sha256": (str, "must be a hex digest or empty"),
    "index_sha256": (str, "must be a hex digest or empty"),
    "format": (str, f"must be one of {', '.join(SHARD_FORMATS)}"),
    "companion_sha256": (str, "must be a hex digest or empty"),
    "layout": (dict, "must be an object (the format's sample layout)"),
}


def _bad_entry_field(entry: ShardEntry) -> str | None:
    """The first field of a loaded shard entry with the wrong type or an impossible value, else ``None``."""
    for name, (kind, _) in _ENTRY_FIELDS.items():
        value = getattr(entry, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return name
        if kind is int and not 0 <= value < _INT64:
            return name
        if kind is str and ("\0" in value or not value.isascii() and not _utf8(value)):
            return name
    return None


def _foreign(name: str, against: str, trusted: list[str]) -> str | None:
    """Why the location ``name`` (resolved against ``against``) is outside every ``trusted`` prefix, else ``None``."""
    if storage.is_file_url(name) or not storage.is_remote(name) and os.path.isabs(name):
        local = name[name.index("://") + 3 :] if storage.is_file_url(name) else name
        if any(not storage.is_remote(p) and storage.within(local, p) for p in trusted):
            return None  # under the local base the caller gave
        return "a file:// URL" if storage.is_file_url(name) else "an absolute local path"
    if storage.is_remote(name):
        if _origin(name) in {_origin(p) for p in trusted if storage.is_remote(p)}:
            return None
        return "a URL on another host (scheme, host or port differ from the manifest's and the base's)"
    if storage.within(storage.join(against, name), against):
        return None
    return "a relative name that climbs out of its prefix with '..'"


def _origin(url: str) -> tuple:
    """``(scheme, host, port)`` of a URL, its userinfo left out."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number: no host of ours has it
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _base(base: str | os.PathLike) -> str:
    """A base location as stored: URLs as given (without a trailing slash), paths made absolute."""
    base = os.fspath(base)
    return base.rstrip("/") if storage.is_remote(base) else os.path.abspath(storage.local_path(base))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\\udcff")
        return False
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_manifest(
    root: str | os.PathLike,
    entries: list[tuple[ShardIndex, str, str]],
    classes: list[str] | None = None,
    label_ext: str | None = "cls",
) -> Manifest:
    """Assemble a manifest from shard indexes that are already saved (writes their key-hash files).

    For a few shards held in memory (``.beton`` files, remote indexing); per-shard passes
    summarise each shard where it was indexed and call :func:`manifest_from_summaries`.

    Args:
        root: Directory the manifest will live in.
        entries: Per shard, ``(index, shard_name, index_name)`` with names relative to
            ``root`` (or absolute); the index must carry ``sha256`` when checksums are used.
        classes: Class names by label id; default ``["0", ..., str(max label)]``.
        label_ext: Label member extension, or ``None`` for unlabelled data.

    Returns:
        The manifest (not yet saved).

    Raises:
        DuplicateKeyError: A key occurs in two shards.
        ManifestError: A label is out of range for ``classes``.
    """
    root = os.fspath(root)
    summaries = [
        summarize_index(index, index_name if os.path.isabs(index_name) else os.path.join(root, index_name), shard_name, index_name)
        for index, shard_name, index_name in entries
    ]
    return manifest_from_summaries(root, summaries, classes=classes, label_ext=label_ext, index_of=lambda k: entries[k][0])


def manifest_from_summaries(
    root: str | os.PathLike,
    summaries: Sequence[ShardSummary],
    classes: list[str] | None = None,
    label_ext: str | None = "cls",
    index_of: Callable[[int], ShardIndex] | None = None,
    chunk: int | None = None,
    class_counts: np.ndarray | None = None,
) -> Manifest:
    """Assemble a manifest from per-shard summaries, checking keys are distinct by their hashes.

    Memory grows with the number of shards, not samples: the duplicate-key check reads the
    shards' key-hash files a hash range at a time (:func:`~streamprune.shardsummary.find_duplicate_key`).

    Args:
        root: Directory the manifest will live in.
        summaries: Per shard, in manifest order.
        classes: Class names by label id; default ``["0", ..., str(max label)]``.
        label_ext: Label member extension, or ``None`` for unlabelled data.
        index_of: Loads shard ``k``'s index to confirm a hash match (default: its saved sidecar).
        chunk: Hashes the duplicate check sorts at once (default
            :data:`~streamprune.shardsummary.DEFAULT_CHUNK`).
        class_counts: Samples per label, when the summaries' own counts were folded into a
            total as they arrived (:class:`~streamprune.shardsummary.ClassCounts`).

    Returns:
        The manifest (not yet saved).

    Raises:
        DuplicateKeyError: A key occurs in two shards (or twice in one).
        ManifestError: A label is out of range for ``classes``.
    """
    root = os.fspath(root)
    if index_of is None:
        def index_of(k: int) -> ShardIndex:
            name = summaries[k].index
            return load_index(name if os.path.isabs(name) else os.path.join(root, name))
    found = find_duplicate_key(summaries, index_of, **({} if chunk is None else {"chunk": chunk}))
    if found is not None:
        key, first, second = found
        raise DuplicateKeyError(f"sample key {key!r} occurs in both {first} and {second}")
    max_label = max((s.max_label for s in summaries), default=-1)
    if class_counts is not None:
        max_label = max(max_label, len(class_counts) - 1)
    if classes is None:
        classes = [str(c) for c in range(max_label + 1)]
    counts = np.zeros(len(classes), dtype=np.int64)
    for s in summaries:
        if s.max_label >= len(classes):
            raise ManifestError(f"shard {s.shard}: label {s.max_label} is out of range for {len(classes)} classes")
        if s.label_counts is not None:
            counts[: len(s.label_counts)] += s.label_counts
    if class_counts is not None:
        if len(class_counts) > len(classes):
            raise ManifestError(f"label {len(class_counts) - 1} is out of range for {len(classes)} classes")
        counts[: len(class_counts)] += np.asarray(class_counts, dtype=np.int64)
    shards = [
        ShardEntry(
            name=s.shard, index=s.index, samples=int(s.samples), bytes=int(s.shard_bytes), sha256=s.sha256,
            index_sha256=s.index_sha256, companion_sha256=s.companion_sha256,
        )
        for s in summaries
    ]
    return Manifest(
        root=root,
        shards=shards,
        classes=list(classes),
        label_ext=label_ext,
        created=_now(),
        class_counts=counts.tolist(),
    )


ManifestLike = Union[str, os.PathLike, Manifest]


def open_manifest(
    manifest: ManifestLike,
    base: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    allow_foreign_locations: bool = False,
) -> Manifest:
    """Return a :class:`Manifest`, loading it when a path or URL (file or its directory) is given.

    Args:
        manifest: A loaded manifest, ``manifest.json`` (path or URL), or the directory holding it.
        base: Where relative shard names resolve instead (see :meth:`Manifest.load`).
        storage_options: fsspec options for remote locations.
        allow_foreign_locations: Accept a manifest from a URL that names files outside its
            prefix and ``base`` (see :meth:`Manifest.load`); a loaded manifest keeps its own
            setting unless this is ``True``.

    Returns:
        The manifest.

    Raises:
        ManifestError: Missing or malformed manifest.
        UnsafeLocationError: A manifest from a URL names a location outside its prefix and ``base``.
    """
    if isinstance(manifest, Manifest):
        if base is None and storage_options is None and not allow_foreign_locations:
            return manifest
        return manifest.with_base(base, storage_options, True if allow_foreign_locations else None)
    return Manifest.load(manifest, base=base, storage_options=storage_options, allow_foreign_locations=allow_foreign_locations)
