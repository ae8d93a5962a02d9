"""Keep masks: one bit per sample, stored per shard, bound to the index they were made for.

On-disk format (``*.spmask``, version 1)::

    bytes 0..7    magic  b"SPMASK01"
    bytes 8..15   header length H, little-endian uint64
    bytes 16..    header: UTF-8 JSON, H bytes
    then          per-shard bitsets, each at the ``offset`` its header entry gives (relative to
                  the first byte after the header, 8-byte aligned), ``numpy.packbits`` with
                  ``bitorder="little"``: bit i of shard k set = sample i of shard k is kept.

Header fields: ``format``, ``version``, ``manifest_fingerprint`` (see
:attr:`Manifest.fingerprint`), ``manifest`` (its path or URL, informational), ``num_samples``, ``kept``, ``provenance`` (method, ratio,
level, seed, scores, created, ...), ``classes``, ``kept_per_class``, ``total_per_class``,
``kept_bytes``, and ``shards``: per shard ``name``, ``samples``, ``kept``, ``kept_bytes``,
``index_sha256``, ``offset``, ``nbytes``.

A reader of shard k reads the header and then only shard k's bitset (one positioned read).
A mask whose per-shard ``index_sha256`` or sample count differs from the manifest's is
rejected with :class:`MaskMismatchError`: it was made for another or a rewritten shard.
"Ratio" is always the fraction of samples (or classes) removed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Union, runtime_checkable

import numpy as np

from . import storage
from .atomic import atomic_open
from .errors import ArgumentError, MaskMismatchError, StorageError, StreamPruneError
from .manifest import Manifest, ManifestLike, open_manifest
from .ratios import check_ratio, kept_count

__all__ = [
    "Mask",
    "MaskLike",
    "KeepMask",
    "MaskFile",
    "open_mask",
    "as_mask",
    "bits_digest",
    "packed_shard_bits",
    "kept_counts",
    "random_mask",
    "mask_from_bool",
    "mask_from_classes",
    "provenance_record",
    "translate_mask",
    "MaskOperators",
    "MASK_OPERATIONS",
    "combine_masks",
]

MAGIC = b"SPMASK01"
MASK_FORMAT = "streamprune-mask"
MASK_VERSION = 1


@runtime_checkable
class Mask(Protocol):
    """What every keep mask offers, in memory (:class:`KeepMask`) or on disk (:class:`MaskFile`).

    Readers, adapters and scorers use only this interface, so they never ask which kind of
    mask they were given.
    """

    @property
    def kept(self) -> int:
        """Number of kept samples."""

    @property
    def num_samples(self) -> int:
        """Number of samples the mask covers."""

    @property
    def provenance(self) -> dict:
        """How the mask was made."""

    @property
    def manifest_fingerprint(self) -> str:
        """Fingerprint of the manifest the mask was made for."""

    def check(self, manifest: Manifest) -> None:
        """Raise :class:`MaskMismatchError` unless the mask was made for ``manifest``."""

    def shard(self, k: int) -> np.ndarray:
        """Boolean keep array of shard ``k``."""

    def shard_kept_counts(self) -> np.ndarray:
        """Kept samples per shard, manifest order."""

    def to_bool(self) -> np.ndarray:
        """All bits in manifest order."""

    def digest(self) -> str:
        """SHA-256 (hex) of the keep bits: equal for a :class:`MaskFile` and the :class:`KeepMask` it loads."""


def packed_shard_bits(keep: np.ndarray) -> bytes:
    """One shard's keep bits as a mask file stores them (``numpy.packbits``, little bit order, no padding)."""
    return np.packbits(np.asarray(keep, dtype=bool), bitorder="little").tobytes()


def bits_digest(packed_shards: Iterable[bytes]) -> str:
    """The mask digest: SHA-256 of the per-shard packed bitsets laid end to end (alignment padding excluded).

    Binds resume states to the exact kept set: two masks have the same digest exactly when they
    keep the same samples of shards with the same sample counts.
    """
    h = hashlib.sha256()
    for raw in packed_shards:
        h.update(raw)
    return h.hexdigest()


class MaskOperators:
    """Mask algebra as Python operators: ``a & b``, ``a | b``, ``~a``, ``a - b`` (a without b).

    Mixed into :class:`KeepMask` and :class:`MaskFile`. Each operator calls
    :func:`combine_masks` and returns a new :class:`KeepMask` whose provenance records the
    operation and its operands. The manifest of the result is that of the first operand that
    knows one (a :class:`KeepMask`); two :class:`MaskFile` objects know none, so combine them
    with ``combine_masks(op, [a, b], manifest=M)`` (or ``a.load(M) & b``).
    """

    def __and__(self, other: "Mask") -> "KeepMask":
        return combine_masks("and", [self, other])

    def __or__(self, other: "Mask") -> "KeepMask":
        return combine_masks("or", [self, other])

    def __sub__(self, other: "Mask") -> "KeepMask":
        return combine_masks("minus", [self, other])

    def __invert__(self) -> "KeepMask":
        return combine_masks("not", [self])


@dataclass
class KeepMask(MaskOperators):
    """A keep mask over a manifest's samples, in manifest order.

    Attributes:
        keep: Boolean array, one entry per sample, in manifest order.
        manifest: The manifest the mask belongs to.
        provenance: How the mask was made (method, ratio, level, seed, scores, ...).
    """

    keep: np.ndarray
    manifest: Manifest
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keep = np.asarray(self.keep, dtype=bool)
        if self.keep.ndim != 1 or len(self.keep) != self.manifest.num_samples:
            raise MaskMismatchError(
                f"keep array has shape {self.keep.shape}; the manifest has {self.manifest.num_samples} samples"
            )

    def __repr__(self) -> str:
        # One line: the default dataclass repr would print the whole manifest and every bit.
        return (f"KeepMask(manifest={self.manifest.path or self.manifest.root!r}, shards={len(self.manifest.shards)}, "
                f"samples={self.num_samples}, kept={self.kept}, method={self.provenance.get('method')!r})")

    @property
    def kept(self) -> int:
        """Number of kept samples."""
        return int(self.keep.sum())

    @property
    def num_samples(self) -> int:
        """Number of samples the mask covers."""
        return len(self.keep)

    @property
    def manifest_fingerprint(self) -> str:
        """Fingerprint of the manifest the mask was made for."""
        return self.manifest.fingerprint

    def check(self, manifest: Manifest) -> None:
        """Raise unless this mask was made for exactly ``manifest``.

        Args:
            manifest: The manifest the mask is about to be used with.

        Raises:
            MaskMismatchError: The mask belongs to another manifest.
        """
        if self.manifest.fingerprint != manifest.fingerprint:
            raise MaskMismatchError(
                f"in-memory mask was made for {self.manifest.path} (fingerprint {self.manifest.fingerprint[:12]}), "
                f"not for {manifest.path} ({manifest.fingerprint[:12]})"
            )

    def shard(self, k: int) -> np.ndarray:
        """Boolean keep array of shard ``k``."""
        offsets = self.manifest.shard_offsets
        return self.keep[offsets[k] : offsets[k + 1]]

    def shard_kept_counts(self) -> np.ndarray:
        """Kept samples per shard, manifest order."""
        running = np.concatenate([[0], np.cumsum(self.keep, dtype=np.int64)])
        return np.diff(running[self.manifest.shard_offsets])

    def to_bool(self) -> np.ndarray:
        """All bits in manifest order (the array itself, not a copy)."""
        return self.keep

    def digest(self) -> str:
        """SHA-256 of the per-shard packed keep bits (see :func:`bits_digest`); cached until ``keep`` is replaced."""
        cached = self.__dict__.get("_digest")
        if cached is not None and cached[0] is self.keep:
            return cached[1]
        bounds = self.manifest.shard_offsets
        value = bits_digest(packed_shard_bits(self.keep[bounds[k] : bounds[k + 1]]) for k in range(len(bounds) - 1))
        self.__dict__["_digest"] = (self.keep, value)
        return value

    def header(self) -> dict:
        """Build the JSON header (counts, provenance, binding) for this mask."""
        manifest = self.manifest
        labels = manifest.labels()
        sizes = manifest.sample_bytes()
        n_classes = len(manifest.classes)
        labelled = labels >= 0
        total_per_class = np.bincount(labels[labelled], minlength=n_classes)
        kept_per_class = np.bincount(labels[labelled & self.keep], minlength=n_classes)
        shards = []
        offset = 0
        bounds = manifest.shard_offsets
        for k, entry in enumerate(manifest.shards):
            bits = self.keep[bounds[k] : bounds[k + 1]]
            nbytes = (len(bits) + 7) // 8
            shards.append(
                {
                    "name": entry.name,
                    "samples": entry.samples,
                    "kept": int(bits.sum()),
                    "kept_bytes": int(sizes[bounds[k] : bounds[k + 1]][bits].sum()),
                    "index_sha256": entry.index_sha256,
                    "offset": offset,
                    "nbytes": nbytes,
                }
            )
            offset += (nbytes + 7) // 8 * 8
        provenance = dict(self.provenance)
        provenance.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        return {
            "format": MASK_FORMAT,
            "version": MASK_VERSION,
            "manifest_fingerprint": manifest.fingerprint,
            "manifest": manifest.path,
            "num_samples": manifest.num_samples,
            "kept": self.kept,
            "kept_bytes": int(sizes[self.keep].sum()),
            "total_bytes": int(sizes.sum()),
            "provenance": provenance,
            "classes": manifest.classes,
            "kept_per_class": kept_per_class.tolist(),
            "total_per_class": total_per_class.tolist(),
            "shards": shards,
        }

    def save(self, path: str | os.PathLike) -> str:
        """Write the mask atomically and verify it by reading it back.

        Args:
            path: Destination file (conventionally ``*.spmask``); its directory is created
                if missing, as ``score --out`` creates its own.

        Returns:
            The path written.
        """
        path = os.fspath(path)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        except OSError as exc:  # a file in the way, no permission: the user chose the path
            raise StorageError(f"{path}: cannot write it ({exc.strerror or exc})") from exc
        header = self.header()
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        bounds = self.manifest.shard_offsets
        with atomic_open(path, "wb") as fh:
            fh.write(MAGIC + struct.pack("<Q", len(raw)) + raw)
            for k in range(len(header["shards"])):
                packed = packed_shard_bits(self.keep[bounds[k] : bounds[k + 1]])
                fh.write(packed + bytes(-len(packed) % 8))
        reread = MaskFile(path)
        if reread.kept != self.kept or not np.array_equal(reread.to_bool(), self.keep):
            raise StreamPruneError(f"{path}: mask read back differs from the mask written")
        return path


class MaskFile(MaskOperators):
    """A mask file opened lazily: the header now, each shard's bits on demand.

    Args:
        path: Mask file path.
        location: Where the mask was given from when ``path`` is a local copy of it (a URL);
            reports and error messages name it. Default: ``path``.
    """

    def __init__(self, path: str | os.PathLike, location: str | None = None) -> None:
        self.path = os.fspath(path)
        self.location = location or self.path
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(16)
                if len(head) < 16 or head[:8] != MAGIC:
                    raise MaskMismatchError(f"{self.location}: not a streamprune mask file (bad magic)")
                (length,) = struct.unpack("<Q", head[8:16])
                if length > os.fstat(fh.fileno()).st_size - 16:
                    raise MaskMismatchError(f"{self.location}: mask header is truncated (header length {length})")
                raw = fh.read(length)
            if len(raw) != length:
                raise MaskMismatchError(f"{self.location}: mask header is truncated")
            self.header = json.loads(raw)
        except FileNotFoundError:
            raise MaskMismatchError(f"{self.location}: mask file not found") from None
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
            raise MaskMismatchError(f"{self.location}: mask header is not valid JSON ({exc})") from None
        if not isinstance(self.header, dict) or self.header.get("format") != MASK_FORMAT or self.header.get("version") != MASK_VERSION:
            raise MaskMismatchError(f"{self.location}: unsupported mask format or version")
        problem = _header_problem(self.header, os.path.getsize(self.path) - 16 - length)
        if problem:
            raise MaskMismatchError(f"{self.location}: malformed mask header: {problem}")
        self._data_start = 16 + length
        expected = self._data_start + sum((s["nbytes"] + 7) // 8 * 8 for s in self.header["shards"])
        actual = os.path.getsize(self.path)
        if actual != expected:
            raise MaskMismatchError(f"{self.location}: mask file is {actual} bytes, header describes {expected}")

    @classmethod
    def open(cls, location: str | os.PathLike, storage_options: dict | None = None) -> "MaskFile":
        """Open a mask file by path or URL (a URL is downloaded once to a local cache).

        Args:
            location: Mask file path, or URL (``s3://``, ``https://``, ...).
            storage_options: fsspec options for a URL.

        Returns:
            The mask file; its :attr:`location` is ``location`` as given.
        """
        location = os.fspath(location)
        return cls(storage.local_copy(location, storage_options), location=location)

    def __repr__(self) -> str:
        return (f"MaskFile({self.location!r}, shards={len(self.header['shards'])}, samples={self.num_samples}, "
                f"kept={self.kept}, method={self.provenance.get('method')!r})")

    @property
    def kept(self) -> int:
        """Number of kept samples."""
        return int(self.header["kept"])

    @property
    def num_samples(self) -> int:
        """Number of samples the mask covers."""
        return int(self.header["num_samples"])

    @property
    def provenance(self) -> dict:
        """How the mask was made."""
        return self.header["provenance"]

    @property
    def manifest_fingerprint(self) -> str:
        """Fingerprint of the manifest the mask was made for."""
        return str(self.header.get("manifest_fingerprint"))

    def shard_kept_counts(self) -> np.ndarray:
        """Kept samples per shard, from the header alone."""
        return np.asarray([s["kept"] for s in self.header["shards"]], dtype=np.int64)

    def check(self, manifest: Manifest) -> None:
        """Raise unless this mask was made for exactly ``manifest``'s shard indexes.

        Args:
            manifest: The manifest the mask is about to be used with.

        Raises:
            MaskMismatchError: Naming the first shard whose index or count differs.
        """
        shards = self.header["shards"]
        if len(shards) != len(manifest.shards):
            raise MaskMismatchError(
                f"{self.location}: {self._made_for(manifest)}: the mask covers {len(shards)} shards, the manifest has "
                f"{len(manifest.shards)}"
            )
        for k, (mine, theirs) in enumerate(zip(shards, manifest.shards)):
            if mine["samples"] != theirs.samples or mine["index_sha256"] != theirs.index_sha256:
                raise MaskMismatchError(
                    f"{self.location}: {self._made_for(manifest)}: shard {k} ({theirs.name}) differs (mask: "
                    f"{mine['samples']} samples, index {mine['index_sha256'][:12]}; manifest: {theirs.samples}, "
                    f"{theirs.index_sha256[:12]}). Another dataset, or this one rewritten or re-indexed since the "
                    "mask was made: make the mask again (or translate it by key: translate_mask, --mask-manifest)"
                )

    def _made_for(self, manifest: Manifest) -> str:
        """Which manifest the mask was made for and which it was given (both named, fingerprints shortened)."""
        recorded = self.header.get("manifest")
        made_for = f"{recorded} (fingerprint {self.manifest_fingerprint[:12]})" if recorded else f"fingerprint {self.manifest_fingerprint[:12]}"
        return f"mask was made for manifest {made_for}, not for {manifest.path} (fingerprint {manifest.fingerprint[:12]})"

    def shard(self, k: int) -> np.ndarray:
        """Read only shard ``k``'s bits.

        Args:
            k: Shard number in manifest order.

        Returns:
            Boolean keep array for the shard's samples.
        """
        entry = self.header["shards"][k]
        with open(self.path, "rb") as fh:
            raw = os.pread(fh.fileno(), entry["nbytes"], self._data_start + entry["offset"])
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little", count=entry["samples"])
        keep = bits.astype(bool)
        if int(keep.sum()) != entry["kept"]:
            raise MaskMismatchError(f"{self.location}: shard {k} bitset has {int(keep.sum())} bits set, header says {entry['kept']}")
        return keep

    def to_bool(self) -> np.ndarray:
        """All bits in manifest order."""
        parts = [self.shard(k) for k in range(len(self.header["shards"]))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def digest(self) -> str:
        """SHA-256 of the per-shard bitsets as stored (one read of the bit region; cached)."""
        cached = getattr(self, "_digest", None)
        if cached is None:
            shards = self.header["shards"]
            with open(self.path, "rb") as fh:
                region = os.pread(fh.fileno(), os.path.getsize(self.path) - self._data_start, self._data_start)
            cached = bits_digest(region[s["offset"] : s["offset"] + s["nbytes"]] for s in shards)
            self._digest = cached
        return cached

    def load(self, manifest: Manifest) -> KeepMask:
        """Check against ``manifest`` and return the in-memory :class:`KeepMask`."""
        self.check(manifest)
        return KeepMask(self.to_bool(), manifest, dict(self.provenance))


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**63


def _header_problem(header: dict, data_bytes: int) -> str | None:
    """What is wrong with a mask header's fields (``data_bytes``: bytes after the header), or ``None``."""
    if not _count(header.get("kept")) or not _count(header.get("num_samples")) or header["kept"] > header["num_samples"]:
        return "'kept' and 'num_samples' must be counts, kept <= num_samples"
    if not isinstance(header.get("provenance"), dict):
        return "'provenance' must be an object"
    shards = header.get("shards")
    if not isinstance(shards, list):
        return "'shards' must be a list"
    for k, s in enumerate(shards):
        if not (
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("index_sha256"), str)
            and all(_count(s.get(f)) for f in ("samples", "kept", "offset", "nbytes"))
            and s["kept"] <= s["samples"] and s["nbytes"] == (s["samples"] + 7) // 8 and s["offset"] + s["nbytes"] <= data_bytes
        ):
            return (f"shard entry {k} needs name, index_sha256, samples, kept <= samples, nbytes = ceil(samples / 8) "
                    "and a bitset inside the file")
    if sum(s["samples"] for s in shards) != header["num_samples"] or sum(s["kept"] for s in shards) != header["kept"]:
        return "per-shard samples and kept counts do not add up to num_samples and kept"
    return None


def provenance_record(method: str, ratio: float | None, **extra: Any) -> dict:
    """A mask's provenance: ``method`` and ``ratio``, then the ``extra`` fields that are not ``None``."""
    out = {"method": method, "ratio": ratio}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def mask_from_bool(manifest: ManifestLike, keep: np.ndarray, method: str = "custom", **provenance) -> KeepMask:
    """Build a mask from a boolean array in manifest order.

    Args:
        manifest: The dataset: a :class:`Manifest`, or its ``manifest.json`` (path or URL) or directory.
        keep: One boolean per sample, manifest order.
        method: Name recorded in the provenance.
        **provenance: Further provenance fields (seed, scores, ...).

    Returns:
        The mask.
    """
    manifest = open_manifest(manifest)
    keep = np.asarray(keep, dtype=bool)
    ratio = 1.0 - keep.mean() if len(keep) else 0.0
    return KeepMask(keep, manifest, provenance_record(method, round(float(ratio), 6), level="sample", **provenance))


def mask_from_classes(manifest: ManifestLike, classes: Iterable[int | str], method: str = "classes", **provenance) -> KeepMask:
    """Build a class-level mask: every sample of a kept class is kept.

    Args:
        manifest: The dataset: a :class:`Manifest`, or its ``manifest.json`` (path or URL) or directory.
        classes: Kept class ids or class names.
        method: Name recorded in the provenance.
        **provenance: Further provenance fields.

    Returns:
        The mask.

    Raises:
        ValueError: A class name or id is unknown.
    """
    manifest = open_manifest(manifest)
    ids = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in manifest.classes:
                raise ArgumentError(f"class {c!r} is not one of the manifest's classes")
            ids.append(manifest.classes.index(c))
        else:
            ids.append(int(c))
    n = manifest.num_classes
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ArgumentError(f"class ids {bad} are outside 0..{n - 1}")
    keep = np.isin(manifest.labels(), np.asarray(ids, dtype=np.int64))
    ratio = 1.0 - len(set(ids)) / n if n else 0.0
    return KeepMask(keep, manifest, provenance_record(method, round(ratio, 6), level="class", kept_classes=sorted(set(ids)), **provenance))


def random_mask(manifest: ManifestLike, ratio: float, level: str = "sample", seed: int = 0) -> KeepMask:
    """Remove a random ``ratio`` of the samples, or of the classes.

    Args:
        manifest: The dataset: a :class:`Manifest`, or its ``manifest.json`` (path or URL) or directory.
        ratio: Fraction removed, in ``[0, 1)``.
        level: ``"sample"`` (remove round(N*ratio) samples) or ``"class"`` (remove
            round(C*ratio) whole classes).
        seed: Random seed.

    Returns:
        The mask.
    """
    manifest = open_manifest(manifest)
    ratio = check_ratio(ratio)
    rng = np.random.default_rng(seed)
    if level == "sample":
        n = manifest.num_samples
        n_keep = kept_count(n, ratio, allow_empty=True)
        keep = np.zeros(n, dtype=bool)
        keep[rng.choice(n, size=n_keep, replace=False)] = True
        return KeepMask(keep, manifest, provenance_record("random", ratio, level="sample", seed=seed))
    if level == "class":
        c = manifest.num_classes
        n_keep = kept_count(c, ratio, allow_empty=True)
        kept = np.sort(rng.choice(c, size=n_keep, replace=False))
        return mask_from_classes(manifest, kept.tolist(), method="random", seed=seed)
    raise ArgumentError(f"level={level!r}: must be 'sample' or 'class'")


def translate_mask(
    mask: "KeepMask | MaskFile | str | os.PathLike",
    manifest: ManifestLike,
    mask_manifest: "Manifest | str | os.PathLike | None" = None,
    strict: bool = True,
) -> KeepMask:
    """Carry a keep mask over to another manifest of the same samples, matching by key.

    A mask is bound to one manifest (its fingerprint). The tar shards and the ``.beton``
    file written from the same source carry the same sample keys, so a mask made on one
    applies to the other through the keys: kept keys are looked up in ``manifest`` and the
    result follows ``manifest``'s sample order.

    Args:
        mask: A :class:`KeepMask` (knows its manifest), or a mask file / :class:`MaskFile`
            (then ``mask_manifest`` must be the manifest it was made for, unless it was
            made for ``manifest`` itself).
        manifest: The manifest to translate to (or its path or URL).
        mask_manifest: The manifest the mask was made for (path or object), for mask files;
            the name ``pruned_ffcv_loader`` and ``streamprune mask --mask-manifest`` use.
        strict: Require both manifests to hold exactly the same keys with the same labels;
            otherwise only the kept keys must exist in ``manifest`` with the same labels
            (its other samples are not kept).

    Returns:
        The mask over ``manifest`` (the input itself when it already belongs to it);
        provenance gains ``translated_from`` (the source fingerprint).

    Raises:
        MaskMismatchError: The mask does not belong to ``mask_manifest``, no manifest it was
            made for is known, or a key is missing or labelled differently (the message names one).
    """
    manifest = open_manifest(manifest)
    if isinstance(mask, (str, os.PathLike)):
        mask = MaskFile(mask)
    if mask_manifest is not None and not isinstance(mask_manifest, Manifest):
        mask_manifest = Manifest.load(mask_manifest)
    if isinstance(mask, MaskFile):
        if mask.header.get("manifest_fingerprint") == manifest.fingerprint:
            return mask.load(manifest)
        if mask_manifest is None:
            raise MaskMismatchError(
                f"{mask.path}: mask was made for another manifest (fingerprint "
                f"{str(mask.header.get('manifest_fingerprint'))[:12]}, not {manifest.fingerprint[:12]} of "
                f"{manifest.path}); give the manifest it was made for to translate it by sample key"
            )
        mask = mask.load(mask_manifest)
    elif not isinstance(mask, KeepMask):
        raise TypeError(f"mask must be a path, MaskFile or KeepMask, not {type(mask).__name__}")
    elif mask_manifest is not None and mask_manifest.fingerprint != mask.manifest.fingerprint:
        raise MaskMismatchError(f"in-memory mask was made for {mask.manifest.path}, not for {mask_manifest.path}")
    source = mask.manifest
    if source.fingerprint == manifest.fingerprint:
        return mask
    source_keys = source.keys()
    target_keys = manifest.keys()
    position = {key: i for i, key in enumerate(target_keys)}
    if len(position) != len(target_keys):
        raise MaskMismatchError(f"{manifest.path}: duplicate sample keys; cannot translate a mask by key")
    if strict:
        if len(source_keys) != len(target_keys):
            raise MaskMismatchError(
                f"mask's manifest {source.path} has {len(source_keys)} samples, {manifest.path} has "
                f"{len(target_keys)}: not the same dataset (pass strict=False to map a subset)"
            )
        missing = next((k for k in source_keys if k not in position), None)
        if missing is not None:
            raise MaskMismatchError(
                f"sample key {missing!r} of the mask's manifest {source.path} is not in {manifest.path}: "
                "not the same dataset, so the mask cannot be translated"
            )
    sel = np.arange(len(source_keys)) if strict else np.flatnonzero(mask.keep)
    idx = np.fromiter((position.get(source_keys[i], -1) for i in sel), dtype=np.int64, count=len(sel))
    if (idx < 0).any():
        missing = source_keys[int(sel[np.argmax(idx < 0)])]
        raise MaskMismatchError(
            f"kept sample key {missing!r} of {source.path} is not in {manifest.path}; the mask cannot be translated"
        )
    source_labels = source.labels()[sel]
    target_labels = manifest.labels()[idx]
    if (source_labels != target_labels).any():
        b = int(np.argmax(source_labels != target_labels))
        raise MaskMismatchError(
            f"sample key {source_keys[int(sel[b])]!r} has label {int(source_labels[b])} in {source.path} but "
            f"{int(target_labels[b])} in {manifest.path}: not the same dataset, so the mask cannot be translated"
        )
    keep = np.zeros(manifest.num_samples, dtype=bool)
    keep[idx] = mask.keep[sel]
    provenance = dict(mask.provenance)
    provenance["translated_from"] = source.fingerprint
    return KeepMask(keep, manifest, provenance)


MaskLike = Union[str, os.PathLike, KeepMask, MaskFile, None]


def open_mask(mask: MaskLike, manifest: Manifest) -> Mask | None:
    """Open a mask (path, file or in-memory) and check it belongs to ``manifest``.

    Args:
        mask: A mask path, :class:`MaskFile`, :class:`KeepMask`, or ``None`` (keep all).
        manifest: The dataset the mask will be used with.

    Returns:
        The opened mask, or ``None``.

    Raises:
        MaskMismatchError: The mask was made for another dataset or index.
        TypeError: ``mask`` is none of the above.
    """
    if mask is None:
        return None
    mask = as_mask(mask)
    mask.check(manifest)
    return mask


def as_mask(mask: str | os.PathLike | Mask) -> Mask:
    """A mask object from a mask file path or a mask (not yet checked against any manifest).

    Raises:
        TypeError: ``mask`` is neither a path nor a :class:`Mask`.
    """
    if isinstance(mask, (str, os.PathLike)):
        return MaskFile(mask)
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a path, MaskFile or KeepMask, not {type(mask).__name__}")
    return mask


def kept_counts(manifest: Manifest, mask: Mask | None) -> np.ndarray:
    """Kept samples per shard (every sample when ``mask`` is ``None``), without reading bitsets of mask files."""
    if mask is None:
        return np.asarray([s.samples for s in manifest.shards], dtype=np.int64)
    return mask.shard_kept_counts()


#: The mask-algebra operations :func:`combine_masks` knows, with their operand counts
#: (``None``: two or more).
MASK_OPERATIONS: dict[str, int | None] = {"and": None, "or": None, "not": 1, "minus": 2}


def _describe_mask(mask: Mask) -> str:
    where = getattr(mask, "location", None) or (f"in-memory mask of {mask.manifest.path}" if isinstance(mask, KeepMask) else "mask")
    return f"{where} (manifest fingerprint {str(mask.manifest_fingerprint)[:12]})"


def _operand_bits(mask: Mask, manifest: Manifest, sources: list[Manifest]) -> tuple[np.ndarray, str | None]:
    """``mask``'s bits over ``manifest`` (translated by key when it belongs to another one)."""
    if mask.manifest_fingerprint == manifest.fingerprint:
        mask.check(manifest)
        return np.asarray(mask.to_bool(), dtype=bool), None
    source = mask.manifest if isinstance(mask, KeepMask) else next(
        (m for m in sources if m.fingerprint == mask.manifest_fingerprint), None
    )
    if source is None:
        raise MaskMismatchError(
            f"masks of different manifests: {_describe_mask(mask)} was not made for {manifest.path} (fingerprint "
            f"{manifest.fingerprint[:12]}); give the manifest it was made for (mask_manifests= / --mask-manifest) "
            "to translate it by sample key"
        )
    try:
        translated = translate_mask(mask, manifest, mask_manifest=source)
    except MaskMismatchError as exc:
        raise MaskMismatchError(
            f"masks of different manifests cannot be combined: {_describe_mask(mask)} (manifest {source.path}) and "
            f"{manifest.path} (fingerprint {manifest.fingerprint[:12]}): {exc}"
        ) from None
    return translated.keep, source.fingerprint


def combine_masks(
    operation: str,
    masks: "Iterable[Mask | str | os.PathLike]",
    manifest: "ManifestLike | None" = None,
    source_manifests: "Iterable[Manifest | str | os.PathLike]" = (),
    *,
    mask_manifests: "Iterable[Manifest | str | os.PathLike]" = (),
) -> KeepMask:
    """Combine keep masks: ``and`` (kept by all), ``or`` (by any), ``not`` (complement), ``minus``.

    ``minus`` takes two masks A and B and keeps what A keeps and B does not (``A & ~B``).
    Every operand must belong to the result's manifest, or be carried over to it by key
    (:func:`translate_mask`, strict: both manifests hold the same keys with the same labels,
    e.g. the tar and the ``.beton`` version of one source). A :class:`KeepMask` knows its
    manifest and is translated automatically; a mask file of another manifest is translated
    when that manifest is among ``mask_manifests``, and refused otherwise.

    Args:
        operation: ``"and"``, ``"or"`` (two or more masks), ``"not"`` (one), ``"minus"`` (two).
        masks: The operands: :class:`KeepMask`, :class:`MaskFile` or mask file paths.
        manifest: The manifest of the result (or its path or URL); default: that of the first :class:`KeepMask`.
        source_manifests: The older name of ``mask_manifests`` (both may be given: all are used).
        mask_manifests: Manifests (objects or paths) other operands may have been made for
            (``streamprune mask --mask-manifest``).

    Returns:
        A :class:`KeepMask` over ``manifest``. Its provenance: ``method`` and ``operation`` (the
        operation), ``level`` ``"sample"``, ``ratio`` (fraction removed) and ``operands``: per
        operand its ``path`` (``None`` in memory), ``digest`` (:meth:`Mask.digest` of the
        operand as given), ``manifest_fingerprint``, ``kept``, ``num_samples``,
        ``translated_from`` (when carried over) and its own ``provenance``.

    Raises:
        ValueError: Unknown operation or wrong number of operands.
        MaskMismatchError: No manifest is known, or an operand belongs to a manifest it cannot
            be translated from (the message names both).
    """
    if operation not in MASK_OPERATIONS:
        raise ArgumentError(f"mask operation {operation!r}: must be one of {', '.join(MASK_OPERATIONS)}")
    operands = [as_mask(m) for m in masks]
    arity = MASK_OPERATIONS[operation]
    if (arity is None and len(operands) < 2) or (arity is not None and len(operands) != arity):
        need = "two or more masks" if arity is None else f"{arity} mask{'s' if arity > 1 else ''}"
        raise ArgumentError(f"mask operation {operation!r} takes {need}, got {len(operands)}")
    sources = [m if isinstance(m, Manifest) else Manifest.load(m) for m in [*source_manifests, *mask_manifests]]
    if manifest is not None:
        manifest = open_manifest(manifest)
    else:
        manifest = next((m.manifest for m in operands if isinstance(m, KeepMask)), None)
    if manifest is None:
        raise MaskMismatchError(
            "mask files do not know their manifest: pass manifest= to combine_masks (or load one first: mask.load(manifest))"
        )
    bits = []
    described = []
    for m in operands:
        keep, translated_from = _operand_bits(m, manifest, sources)
        bits.append(keep)
        entry = {
            "path": os.path.abspath(m.path) if isinstance(m, MaskFile) else None,
            "digest": m.digest(),
            "manifest_fingerprint": m.manifest_fingerprint,
            "kept": int(m.kept),
            "num_samples": int(m.num_samples),
            "provenance": dict(m.provenance),
        }
        if translated_from is not None:
            entry["translated_from"] = translated_from
        described.append(entry)
    if operation == "and":
        keep = np.logical_and.reduce(bits)
    elif operation == "or":
        keep = np.logical_or.reduce(bits)
    elif operation == "not":
        keep = ~bits[0]
    else:
        keep = bits[0] & ~bits[1]
    ratio = 1.0 - keep.mean() if len(keep) else 0.0
    provenance = {"method": operation, "operation": operation, "ratio": round(float(ratio), 6), "level": "sample", "operands": described}
    return KeepMask(keep, manifest, provenance)
