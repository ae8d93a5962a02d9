"""Indexing tar shards that live at URLs (``streamprune index s3://bucket/shards-{000000..000099}.tar``).

Each shard is read in one sequential streaming pass into a temporary local file (its SHA-256
computed on the way), indexed there (header walk and per-sample checksums, as for local
shards), and removed; its index records the object's size, ETag and URL (the ``object``
field, FORMATS.md), so a reader of that URL notices an object replaced after indexing. The
index sidecars and the manifest go to ``out``, a directory or a URL prefix; the manifest is
written last, so nothing incomplete looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Sequence

from tqdm.auto import tqdm

from . import storage
from .errors import LabelError, ManifestError
from .indexfile import INDEX_SUFFIX, companion_path, save_index
from .indexing import AUTO_LABELS, DEFAULT_LABEL_EXT
from .manifest import MANIFEST_NAME, Manifest, build_manifest
from .shardindex import ShardIndex
from .tarindex import index_tar

__all__ = ["index_remote_shards", "shard_name_under"]

log = logging.getLogger(__name__)


def shard_name_under(url: str, out: str) -> str:
    """The name a manifest in ``out`` records for the shard at ``url``: relative when under ``out``."""
    prefix = out.rstrip("/") + "/"
    return url[len(prefix) :] if url.startswith(prefix) else url


def _fetch(url: str, dest: str, storage_options: dict | None) -> tuple[str, dict]:
    """Stream ``url`` to ``dest`` in order; return its SHA-256 and ``{"size", "etag", "url"}``."""
    info = storage.object_info(url, storage_options)
    digest = hashlib.sha256()
    with open(dest, "wb") as fh:
        for chunk in storage.iter_object(url, storage_options):
            digest.update(chunk)
            fh.write(chunk)
    if os.path.getsize(dest) != info["size"]:
        raise ManifestError(f"{url}: read {os.path.getsize(dest)} bytes, the object is {info['size']}: it changed while indexing")
    return digest.hexdigest(), {"size": info["size"], "etag": info["etag"], "url": url}


def index_remote_shards(
    urls: Sequence[str],
    out: str,
    label_ext: str | None = AUTO_LABELS,
    checksum: bool = True,
    classes: list[str] | None = None,
    progress: bool = True,
    sample_checksums: bool = True,
    storage_options: dict | None = None,
) -> Manifest:
    """Index tar shards at URLs (brace patterns expanded) and write their manifest to ``out``.

    Args:
        urls: Shard URLs or webdataset brace patterns, in manifest order.
        out: Directory or URL prefix for the index sidecars and ``manifest.json``.
        label_ext: As :func:`~streamprune.indexing.index_shards` (``"auto"``, an extension, ``None``).
        checksum: Record each shard's SHA-256.
        classes: Class names by label id.
        progress: Show a progress bar.
        sample_checksums: Record per-sample checksums (readers of remote shards verify them).
        storage_options: fsspec options.

    Returns:
        The saved manifest (its ``path`` is where it was written).

    Raises:
        ManifestError: No shards, two with one file name, or an object changed while read.
        LabelError: Some samples have the label member and others do not (``label_ext="auto"``).
    """
    urls = storage.expand_urls(list(urls))
    if not urls:
        raise ManifestError("no shard URLs given to index")
    names = [storage.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise ManifestError("two shards share a file name; their index files would clash")
    remote_out = storage.is_remote(out)
    if not remote_out:
        os.makedirs(out, exist_ok=True)
    storage.remove(storage.join(out, MANIFEST_NAME), storage_options)  # incomplete until rewritten
    auto = label_ext == AUTO_LABELS
    with tempfile.TemporaryDirectory(prefix="streamprune-index-") as tmp:
        local_out = tmp if remote_out else out
        entries: list[tuple[ShardIndex, str, str]] = []
        for url, base in tqdm(list(zip(urls, names)), desc="index", unit="shard", disable=not progress):
            local = os.path.join(tmp, base)
            sha, marker = _fetch(url, local, storage_options)
            rel = shard_name_under(url, out) if remote_out else url
            index = index_tar(local, label_ext=DEFAULT_LABEL_EXT if auto else label_ext, name=rel,
                              require_labels=not auto, sample_checksums=sample_checksums)
            os.unlink(local)
            index.sha256 = sha if checksum else ""
            index.extra["object"] = marker
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
    manifest.path = storage.join(out, MANIFEST_NAME)
    return manifest


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
