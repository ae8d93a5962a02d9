"""Writing tar shards to object storage (``streamprune shard SRC s3://bucket/ds``).

Shards are written and verified locally, in a temporary directory, by
:func:`~streamprune.writers.shards.write_shards`; as soon as a shard and its index are
complete, a :class:`ShardUploader` thread uploads the shard, its index sidecar and companion
(one object each: an object store's PUT is atomic, complete or absent) while later shards are
still being written, and removes the local copy of the shard. ``manifest.json`` goes last,
once every upload succeeded. A manifest already at the URL is removed first, so a reader
never takes an unfinished dataset for a finished one, and a run that fails at any point
leaves no manifest at the URL (shards without a manifest are no dataset).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import tempfile
import threading
from typing import Any

from .. import storage
from ..errors import ArgumentError, ManifestError, OutputExistsError, redact
from ..indexfile import INDEX_SUFFIX, companion_path
from ..manifest import MANIFEST_NAME, Manifest
from ..shardindex import ShardIndex
from .shards import write_shards

__all__ = ["ShardUploader", "write_shards_to", "upload_dataset"]

log = logging.getLogger(__name__)


class ShardUploader:
    """Uploads finished shards (shard, index sidecar, companion) in background threads.

    :meth:`submit` queues one shard and returns at once unless ``max_pending`` shards are
    already queued or uploading: then it waits, which holds the shard writer back, so the local
    copy stays a few shards large. The first upload that fails for good (after
    :class:`~streamprune.storage.RemoteObject`'s retries) is raised, naming the shard and URL, by the next
    :meth:`submit` or by :meth:`finish`; leaving the ``with`` block cancels the queued uploads
    and waits for the running ones (the local files must outlive them).

    Args:
        local_dir: Directory the shards and their index files are in (names are relative to it).
        url: URL prefix to upload to.
        storage_options: fsspec options for ``url``.
        threads: Uploads running at once.
        max_pending: Shards queued or uploading before :meth:`submit` waits (default ``2 * threads``).
        delete_uploaded: Remove each local shard file once uploaded (its small index files are
            kept: the manifest is built from them).
    """

    def __init__(
        self,
        local_dir: str,
        url: str,
        storage_options: dict | None = None,
        threads: int = 4,
        max_pending: int | None = None,
        delete_uploaded: bool = False,
    ) -> None:
        if threads < 1:
            raise ArgumentError(f"upload threads={threads}: must be at least 1")
        self.local_dir = local_dir
        self.url = url
        self.storage_options = storage_options
        self.delete_uploaded = delete_uploaded
        self.uploaded: list[str] = []  # shard names, in the order their uploads completed
        self._pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="streamprune-upload")
        self._slots = threading.BoundedSemaphore(max_pending or 2 * threads)
        self._futures: list[cf.Future] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, shard: str, index: str | None = None) -> None:
        """Queue the upload of ``shard`` with its index sidecar (default ``shard + INDEX_SUFFIX``) and companion.

        Raises:
            RemoteError: An earlier upload failed for good.
        """
        self._raise_failure()
        self._slots.acquire()  # waits while max_pending shards are queued or uploading
        try:
            self._raise_failure()
            future = self._pool.submit(self._upload, shard, index or shard + INDEX_SUFFIX)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def finish(self) -> None:
        """Wait for every queued upload.

        Raises:
            RemoteError: An upload failed for good (the first failure).
        """
        cf.wait(self._futures)
        self._raise_failure()
        for future in self._futures:
            future.result()  # an unexpected error of an upload thread (not a failed PUT) is raised too

    def close(self) -> None:
        """Cancel the queued uploads and wait for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ShardUploader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _raise_failure(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def _upload(self, shard: str, index: str) -> None:
        """One shard's objects, the shard file first; a failure is kept for the writer's thread to raise."""
        if self._error is not None:  # the run is failing: upload nothing more
            return
        names = [shard, index, os.path.relpath(companion_path(os.path.join(self.local_dir, index)), self.local_dir)]
        for name in names:
            path = os.path.join(self.local_dir, name)
            if not os.path.exists(path):  # an index saved without a companion
                continue
            target = storage.join(self.url, name)
            try:
                storage.put_file(path, target, self.storage_options)
            except Exception as exc:  # noqa: BLE001 - kept and re-raised on the writer's thread, naming the shard
                error = storage.RemoteError(f"shard {shard}: upload of {path} to {target} failed: {exc}",
                                            url=target, status=getattr(exc, "status", None))
                error.__cause__ = exc
                with self._lock:
                    self._error = self._error or error
                return
        if self.delete_uploaded:
            os.unlink(os.path.join(self.local_dir, shard))
        with self._lock:
            self.uploaded.append(shard)
        log.debug("uploaded %s to %s", shard, redact(self.url))


def upload_dataset(
    local_dir: str, manifest: Manifest, url: str, storage_options: dict | None = None, threads: int = 4
) -> Manifest:
    """Upload a written dataset's shards and index files to ``url``, then its manifest, last.

    Args:
        local_dir: The dataset's directory (its files are kept).
        manifest: Its manifest.
        url: URL prefix to upload to.
        storage_options: fsspec options for ``url``.
        threads: Uploads running at once.

    Returns:
        The manifest as read from ``url``.

    Raises:
        RemoteError: An upload failed for good (no manifest is uploaded then).
    """
    with ShardUploader(local_dir, url, storage_options, threads=threads) as uploader:
        for entry in manifest.shards:
            uploader.submit(entry.name, entry.index)
        uploader.finish()
    storage.put_file(os.path.join(local_dir, MANIFEST_NAME), storage.join(url, MANIFEST_NAME), storage_options)
    return Manifest.load(storage.join(url, MANIFEST_NAME), storage_options=storage_options)


def _claim_url(url: str, storage_options: dict | None, overwrite: bool) -> None:
    """Refuse a URL prefix holding a dataset, or (``overwrite``) remove it; the manifest goes first.

    Without a manifest, shards a failed run left are not looked for (listing a prefix is not
    what every store allows); the new run's objects replace those of the same names.

    Raises:
        OutputExistsError: A manifest is there and ``overwrite`` is off.
    """
    manifest_url = storage.join(url, MANIFEST_NAME)
    if not storage.exists(manifest_url, storage_options):
        return
    try:
        old = Manifest.load(manifest_url, storage_options=storage_options)
    except ManifestError:
        old = None
    if not overwrite:
        what = f"{len(old.shards)} shard{'' if len(old.shards) == 1 else 's'}, {old.num_samples} samples" if old is not None else "unreadable"
        raise OutputExistsError(
            f"{url}: already holds another dataset: {manifest_url} ({what}); write to an empty prefix, or pass "
            "--overwrite (overwrite=True) to remove its shards and index files first"
        )
    storage.remove(manifest_url, storage_options)  # incomplete from here on
    removed = {"shard": 0, "index": 0}
    for entry in old.shards if old is not None else ():
        for name, kind in ((entry.name, "shard"), (entry.index, "index"), (companion_path(entry.index), "index")):
            if storage.is_remote(name) or os.path.isabs(name) or name.startswith(".."):
                continue  # not under this prefix: not this dataset's to remove
            target = storage.join(url, name)
            if storage.exists(target, storage_options):
                storage.remove(target, storage_options)
                removed[kind] += 1
    log.warning("%s: --overwrite: removed the previous dataset's %d shard(s) and %d index file(s)", url, removed["shard"], removed["index"])


def write_shards_to(
    src: Any,
    url: str,
    storage_options: dict | None = None,
    tmp_dir: str | None = None,
    upload_threads: int = 4,
    overwrite: bool = False,
    **kwargs: Any,
) -> Manifest:
    """:func:`~streamprune.writers.shards.write_shards` to a directory or a URL prefix.

    For a URL, each shard is uploaded with its index files as soon as it is complete, while
    later shards are written, and removed locally once uploaded; the manifest is uploaded
    last, after every upload succeeded. The temporary directory holds the shards written but
    not uploaded yet (a few per writer: writing waits for the uploads) and the small index
    files; it is removed at the end, so ``resume=True`` has nothing to resume for a URL.

    Args:
        src: As ``write_shards``.
        url: Output directory, or a URL prefix (``s3://bucket/ds``) the dataset is uploaded to.
        storage_options: fsspec options for the URL.
        tmp_dir: Where the local shards are written before upload (default: the system temp dir).
        upload_threads: Shards uploaded at once (for a URL).
        overwrite: The directory or URL may hold another dataset: it is removed first (for a
            URL: the manifest, and the shard and index objects it lists under the URL). Without
            it a manifest there is refused (:class:`~streamprune.errors.OutputExistsError`), so
            no shard the new manifest does not list is left behind.
        **kwargs: Passed to ``write_shards`` (its ``on_shard`` is called after a shard's upload is queued).

    Returns:
        The manifest (for a URL: as loaded from the URL).

    Raises:
        RemoteError: A shard's upload failed for good (names the shard and URL): the run
            stops, queued uploads are dropped, and no manifest is at the URL.
        OutputExistsError: A manifest is at the URL (or in the directory) and ``overwrite`` is off.
    """
    if not storage.is_remote(url):
        return write_shards(src, url, overwrite=overwrite, **kwargs)
    if kwargs.get("resume"):
        log.warning("resume: shards for a URL are written to a new temporary directory; nothing is resumed")
    _claim_url(url, storage_options, overwrite)
    also = kwargs.pop("on_shard", None)
    # exits in reverse: the uploads stop before the directory they read from is removed
    with (
        tempfile.TemporaryDirectory(prefix="streamprune-shard-", dir=tmp_dir) as tmp,
        ShardUploader(tmp, url, storage_options, threads=upload_threads, delete_uploaded=True) as uploader,
    ):

        def upload(k: int, path: str, index: ShardIndex) -> None:
            uploader.submit(os.path.basename(path))
            if also is not None:
                also(k, path, index)

        manifest = write_shards(src, tmp, on_shard=upload, **kwargs)
        uploader.finish()
        storage.put_file(os.path.join(tmp, MANIFEST_NAME), storage.join(url, MANIFEST_NAME), storage_options)
    log.info("uploaded %d shards and the manifest to %s", len(manifest.shards), redact(url))
    return Manifest.load(storage.join(url, MANIFEST_NAME), storage_options=storage_options)
