"""Writing tar shards to object storage (``streamprune shard SRC s3://bucket/ds``).

Shards are written and verified locally, in a temporary directory, by
:func:`~streamprune.writers.shards.write_shards`; then each shard is uploaded with its index
sidecar and companion, one object each (an object store's PUT is atomic: complete or absent),
and ``manifest.json`` last. A manifest already at the URL is removed first, so a reader never
takes an unfinished dataset for a finished one, and a run that fails at any point leaves no
manifest at the URL.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from .. import storage
from ..indexfile import companion_path
from ..manifest import MANIFEST_NAME, Manifest
from .shards import write_shards

__all__ = ["write_shards_to", "upload_dataset"]

log = logging.getLogger(__name__)


def upload_dataset(local_dir: str, manifest: Manifest, url: str, storage_options: dict | None = None) -> Manifest:
    """Upload a written dataset's shards and index files to ``url``, then its manifest, last.

    Returns:
        The manifest as read from ``url``.
    """
    for k, entry in enumerate(manifest.shards):
        names = [entry.name, entry.index, os.path.relpath(companion_path(manifest.resolve(entry.index)), local_dir)]
        for name in names:
            path = os.path.join(local_dir, name)
            if os.path.exists(path):
                storage.put_file(path, storage.join(url, name), storage_options)
        log.info("uploaded shard %d of %d", k + 1, len(manifest.shards))
    storage.put_file(os.path.join(local_dir, MANIFEST_NAME), storage.join(url, MANIFEST_NAME), storage_options)
    return Manifest.load(storage.join(url, MANIFEST_NAME), storage_options=storage_options)


def write_shards_to(src: Any, url: str, storage_options: dict | None = None, tmp_dir: str | None = None, **kwargs: Any) -> Manifest:
    """:func:`~streamprune.writers.shards.write_shards` to a directory or a URL prefix.

    Args:
        src: As ``write_shards``.
        url: Output directory, or a URL prefix (``s3://bucket/ds``) the dataset is uploaded to.
        storage_options: fsspec options for the URL.
        tmp_dir: Where the local copy is written before upload (default: the system temp dir).
        **kwargs: Passed to ``write_shards``.

    Returns:
        The manifest (for a URL: as loaded from the URL).
    """
    if not storage.is_remote(url):
        return write_shards(src, url, **kwargs)
    storage.remove(storage.join(url, MANIFEST_NAME), storage_options)  # incomplete until rewritten
    with tempfile.TemporaryDirectory(prefix="streamprune-shard-", dir=tmp_dir) as tmp:
        manifest = write_shards(src, tmp, **kwargs)
        return upload_dataset(tmp, manifest, url, storage_options)
