"""Indexing shards wherever they are: :func:`index_dataset`, the one call for paths or URLs
(local files go to :func:`~streamprune.indexing.index_files`), and tar shards that live at URLs
(``streamprune index s3://bucket/shards-{000000..000099}.tar``).

With checksums (the default), each shard is read in one sequential streaming pass into a
temporary local file (its SHA-256 computed on the way), indexed there (header walk and
per-sample checksums, as for local shards), and removed. Without checksums, its tar headers
are walked with ranged reads only (:class:`~streamprune.tarindex.RangedView`): a header and the
small members beside it come in one window, and large members' data is never fetched. Either
way every read is conditional on the ETag the object had when indexing started (a shard
replaced meanwhile is an error), and the index records the object's size, ETag and URL (the
``object`` field, FORMATS.md), so a reader of that URL notices an object replaced after
indexing.

Shards are indexed concurrently: by default on threads (the work is waiting on the network),
or on any :class:`~streamprune.engine.Engine` (forked processes, Ray actors). The index
sidecars and the manifest go to ``out``, a directory or a URL prefix; the manifest is written
last, so nothing incomplete looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Sequence

from tqdm.auto import tqdm

from . import storage
from .engine import Engine, ThreadEngine, make_engine
from .errors import ArgumentError, LabelError, ManifestError, redact
from .indexfile import INDEX_SUFFIX, companion_path, save_index
from .indexing import AUTO_LABELS, DEFAULT_LABEL_EXT, index_files, index_foreign
from .manifest import MANIFEST_NAME, Manifest, build_manifest
from .shardindex import ShardIndex
from .tarindex import RangedView, index_tar, index_tar_ranges

__all__ = ["index_dataset", "index_remote_shards", "shard_name_under", "DEFAULT_WORKERS"]

log = logging.getLogger(__name__)

#: Shards indexed at once when no engine is given (threads: a shard's time is spent waiting on the network).
DEFAULT_WORKERS = 8
#: Bytes per request of the streaming pass.
STREAM_BLOCK = 8 << 20


def shard_name_under(url: str, out: str) -> str:
    """The name a manifest in ``out`` records for the shard at ``url``: relative when under ``out``."""
    prefix = out.rstrip("/") + "/"
    return url[len(prefix) :] if url.startswith(prefix) else url


def _stream(obj: storage.RemoteObject, dest: str) -> str:
    """Copy the object to ``dest`` in one sequential pass; return its SHA-256."""
    digest = hashlib.sha256()
    size = obj.size
    with open(dest, "wb") as fh:
        for start in range(0, size, STREAM_BLOCK):
            chunk = obj.read(start, min(size, start + STREAM_BLOCK))
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def _index_object(state: None, job: tuple[str, str, str | None, bool, bool, dict | None]) -> ShardIndex:
    """The per-shard task: index the tar at one URL (streamed, or by ranged reads without checksums).

    Args:
        state: Unused (the pass has no setup).
        job: ``(url, name to record, label_ext, checksum, sample_checksums, storage_options)``.

    Returns:
        The shard's index, its ``object`` record set.
    """
    url, rel, label_ext, checksum, sample_checksums, storage_options = job
    auto = label_ext == AUTO_LABELS
    label_ext = DEFAULT_LABEL_EXT if auto else label_ext
    obj = storage.RemoteObject(url, storage_options)
    size, etag = obj.size, obj.etag
    if etag:
        obj.expect_etag(etag)  # one object from the first read to the last, or an error
    if checksum or sample_checksums:
        with tempfile.TemporaryDirectory(prefix="streamprune-index-") as tmp:
            local = os.path.join(tmp, storage.basename(url))
            sha = _stream(obj, local)
            index = index_tar(local, label_ext=label_ext, name=rel, require_labels=not auto, sample_checksums=sample_checksums)
        index.sha256 = sha if checksum else ""
    else:
        view = RangedView(obj.read, size)
        index = index_tar_ranges(view, rel, label_ext=label_ext, require_labels=not auto)
        log.debug("%s: headers walked in %d ranged reads, %d of %d bytes", redact(url), view.requests, view.bytes_read, size)
    index.extra["object"] = {"size": size, "etag": etag, "url": redact(url)}  # written: never credentials
    return index


def index_remote_shards(
    urls: Sequence[str],
    out: str,
    label_ext: str | None = AUTO_LABELS,
    checksum: bool = True,
    classes: list[str] | None = None,
    progress: bool = True,
    sample_checksums: bool = True,
    storage_options: dict | None = None,
    workers: int = DEFAULT_WORKERS,
    engine: str | Engine | None = None,
) -> Manifest:
    """Index tar shards at URLs (brace patterns expanded) and write their manifest to ``out``.

    Args:
        urls: Shard URLs or webdataset brace patterns, in manifest order.
        out: Directory or URL prefix for the index sidecars and ``manifest.json``.
        label_ext: As :func:`~streamprune.indexing.index_shards` (``"auto"``, an extension, ``None``).
        checksum: Record each shard's SHA-256 (a streaming pass over every byte).
        classes: Class names by label id.
        progress: Show a progress bar.
        sample_checksums: Record per-sample checksums (a streaming pass; readers of remote shards
            verify them). With neither checksum, headers are walked with ranged reads only.
        storage_options: fsspec options.
        workers: Shards indexed at once on threads of this process (when ``engine`` is ``None``).
        engine: Where the per-shard tasks run instead: ``"local"`` (``workers`` forked
            processes), ``"ray"``, or an :class:`~streamprune.engine.Engine`.

    Returns:
        The saved manifest (its ``path`` is where it was written).

    Raises:
        ManifestError: No shards, two with one file name, an FFCV ``.beton`` file (those stay
            local), an object replaced while it was read
            (:class:`~streamprune.storage.ObjectChangedError`), or a shard URL with credentials
            (``https://user:secret@...``) that the manifest would record (give them in
            ``storage_options``).
        LabelError: Some samples have the label member and others do not (``label_ext="auto"``).
        ValueError: ``workers`` below 1.
    """
    urls = storage.expand_urls(list(urls))
    if not urls:
        raise ManifestError("no shard URLs given to index")
    if workers < 1:
        raise ArgumentError(f"workers={workers}: must be at least 1")
    for url in urls:
        if url.endswith(".beton"):
            raise ManifestError(
                f"{url}: FFCV .beton files are indexed and read from local disk only (FFCV memory-maps them); "
                "copy the file locally and index the copy"
            )
    names = [storage.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise ManifestError("two shards share a file name; their index files would clash")
    runner = ThreadEngine(workers) if engine is None else make_engine(engine, workers=workers)
    remote_out = storage.is_remote(out)
    if not remote_out:
        os.makedirs(out, exist_ok=True)
    storage.remove(storage.join(out, MANIFEST_NAME), storage_options)  # incomplete until rewritten
    auto = label_ext == AUTO_LABELS
    rels = [shard_name_under(url, out) if remote_out else url for url in urls]
    for rel in rels:
        if redact(rel) != rel:
            raise ManifestError(
                f"{rel}: the manifest would record this shard URL with its credentials; give them in storage_options "
                "(--storage-options) instead of the URL"
            )
    tasks = [(url, rel, label_ext, checksum, sample_checksums, storage_options) for url, rel in zip(urls, rels)]
    with tempfile.TemporaryDirectory(prefix="streamprune-index-") as tmp:
        local_out = tmp if remote_out else out
        try:
            with tqdm(total=len(tasks), desc="index", unit="shard", disable=not progress) as bar:
                indexes: list[ShardIndex] = runner.map(_index_object, tasks, on_result=lambda k, _: bar.update(1), desc="index")
        finally:
            if runner is not engine:  # made here from a name: ours to release (a local Ray instance)
                runner.close()
        entries: list[tuple[ShardIndex, str, str]] = []
        for index, rel, base in zip(indexes, rels, names):
            index_name = base + INDEX_SUFFIX
            save_index(index, os.path.join(local_out, index_name))
            entries.append((index, rel, index_name))
        if auto:
            label_ext = _auto_labels([ix for ix, _, _ in entries])
        manifest = build_manifest(local_out, entries, classes=classes, label_ext=label_ext)
        if not remote_out:
            manifest.save()
            return manifest
        manifest.save(os.path.join(tmp, MANIFEST_NAME))
        for _, _, index_name in entries:  # the indexes first, the manifest last
            for name in (index_name, os.path.basename(companion_path(index_name))):
                if os.path.exists(os.path.join(tmp, name)):
                    storage.put_file(os.path.join(tmp, name), storage.join(out, name), storage_options)
        storage.put_file(os.path.join(tmp, MANIFEST_NAME), storage.join(out, MANIFEST_NAME), storage_options)
    manifest.root = out.rstrip("/")
    manifest.path = redact(storage.join(out, MANIFEST_NAME))
    return manifest


def index_dataset(
    shards: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    label_ext: str | None = AUTO_LABELS,
    label_field: str | None = "auto",
    checksum: bool = True,
    workers: int | None = None,
    engine: str | Engine | None = None,
    resume: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
    key_field: str | None = None,
) -> Manifest:
    """Index existing shards (tar or ``.beton``, local paths or URLs) and write their manifest to ``out``.

    Local files (a directory stands for its shards) are indexed by
    :func:`~streamprune.indexing.index_files`; when any of ``shards`` is a URL (or a brace
    pattern of URLs), all are indexed as remote tar shards by :func:`index_remote_shards`.

    Args:
        shards: Paths, directories, URLs or webdataset brace patterns, in manifest order.
        out: Directory (or, for URLs, URL prefix) for the index sidecars and ``manifest.json``.
        label_ext: Tar: extension of the integer label member, ``"auto"``, or ``None`` (unlabelled).
        label_field: ``.beton``: integer field holding the label (``"auto"``), or ``None``.
        checksum: Record each shard's SHA-256 and per-sample checksums (URLs without it: only
            the headers are read, by ranged requests).
        workers: Shards indexed at once (default: local files, the CPU count; URLs, :data:`DEFAULT_WORKERS` threads).
        engine: Where the per-shard tasks run (``local``, ``ray`` or an :class:`~streamprune.engine.Engine`).
        resume: Local tar shards: keep the index files an interrupted run wrote.
        storage_options: fsspec options for URLs.
        progress: Show a progress bar.
        key_field: MDS, LitData: field holding each sample's key, e.g. ``uid`` (default: keys are
            global positions; see :func:`~streamprune.indexing.index_foreign`).

    Returns:
        The saved manifest.

    Raises:
        ArgumentError: ``resume`` for URLs (a URL is indexed again); ``key_field`` for tar or ``.beton``.
        ManifestError: No shards, a missing one, tar and ``.beton`` mixed, ``.beton`` at a URL.
        TarFormatError: A damaged shard (named).
    """
    shards = list(shards)
    if len(shards) == 1 and storage.is_remote(shards[0]) and storage.basename(os.fspath(shards[0])) == "index.json":
        # An MDS or LitData dataset at a URL (a local one is detected by index_files).
        return index_foreign(os.fspath(shards[0]), out, label_field=label_field, checksum=checksum, sample_checksums=checksum,
                             progress=progress, storage_options=storage_options, workers=workers or 8, engine=engine,
                             key_field=key_field)
    if any(storage.is_remote(s) for s in shards):
        if key_field is not None:
            raise ArgumentError(f"key_field={key_field!r} (--key-field) is for MDS and LitData datasets (give the URL of "
                                "their index.json); tar samples carry their own keys")
        if resume:
            raise ArgumentError("resume is for local shards; a URL is indexed again")
        return index_remote_shards(
            [os.fspath(s) for s in shards], os.fspath(out), label_ext=label_ext, checksum=checksum, sample_checksums=checksum,
            progress=progress, storage_options=storage_options, workers=workers or DEFAULT_WORKERS, engine=engine,
        )
    return index_files(
        shards, out, label_ext=label_ext, label_field=label_field, checksum=checksum, progress=progress,
        workers=workers or os.cpu_count() or 1, engine=engine, resume=resume, key_field=key_field,
    )


def _auto_labels(indexes: list[ShardIndex]) -> str | None:
    """``label_ext="auto"`` settled: every sample labelled, none (``None``), or an error."""
    labelled = sum(int((ix.labels >= 0).sum()) for ix in indexes)
    total = sum(len(ix) for ix in indexes)
    if labelled == total:
        return DEFAULT_LABEL_EXT
    if labelled == 0:
        log.warning("no sample has a .%s member: indexed without labels", DEFAULT_LABEL_EXT)
        return None
    raise LabelError(f"{labelled} of {total} samples have a .{DEFAULT_LABEL_EXT} member; label every sample, or use --no-labels")
