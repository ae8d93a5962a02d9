"""The pruned reader as webdataset pipeline pieces.

* :class:`PrunedSource` is an ``IterableDataset`` of kept sample dicts; it splits the epoch
  over ranks and DataLoader workers by kept counts (see :mod:`.plan`). Use it as the first
  stage of any ``webdataset.DataPipeline``.
* :class:`PrunedWebDataset` is that source with webdataset's fluent API (``.decode()``,
  ``.to_tuple()``, ``.map()``, ``.shuffle()``, ``.batched()``, ...).
* :func:`pruned_tarfile_samples` is a drop-in for ``wds.tarfile_to_samples()`` in an
  existing pipeline that already lists and splits shard URLs.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import itertools
import logging
import os
import shutil
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from .. import storage
from ..errors import ArgumentError, MaskMismatchError, StreamPruneError
from ..manifest import Manifest, ManifestLike, open_manifest
from ..masks import Mask, MaskLike, kept_counts, open_mask
from .byterange import READAHEAD_BYTES, ReadAhead, ShardFile, read_runs, run_spans
from .fields import FieldDecoder
from .keptcache import KeptCache
from .maskslot import MaskSlot
from .plan import Segment, plan_epoch, within_shard_order
from .scheduler import DEFAULT_REMOTE_POLICY, CacheBinding, FetchPolicy, ReadStats, ShardRead, read_shards_scheduled
from .state import Binding, ResumableSource, counted, raise_on_first, warn_buffered

log = logging.getLogger(__name__)

__all__ = [
    "PrunedSource", "PrunedWebDataset", "pruned_tarfile_samples", "require_tar", "distributed_rank_world", "remote_mask",
    "fetch_policy", "shard_read", "open_cache",
]


#: Shard formats these readers read by byte range (MDS and LitData samples decoded to their fields).
BYTE_RANGE_FORMATS = ("tar", "mds", "litdata")


def require_tar(manifest: Manifest) -> Manifest:
    """Return ``manifest`` if the readers read all its shards (tar, MDS, LitData); a clear error for ``.beton`` files."""
    for entry in manifest.shards:
        if entry.format not in BYTE_RANGE_FORMATS:
            raise StreamPruneError(
                f"{manifest.path}: shard {entry.name} is a {entry.format} file; these readers read tar, MDS and LitData shards "
                "(load .beton files with streamprune.pruned_ffcv_loader)"
            )
    return manifest


def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else ``$RANK``/``$WORLD_SIZE``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


#: Shards a reader opens ahead of the one it reads, at most (each holds a descriptor and its index).
SHARDS_AHEAD = 4

#: ``set_epoch``'s default: keep the current mask.
_SAME_MASK: Any = object()


class PrunedSource(ResumableSource, IterableDataset):
    """Kept samples of a sharded dataset, read by byte range.

    Shards are tar shards (samples are ``{"__key__", "__url__", ext: bytes}``) or, indexed in
    place, MosaicML MDS shards and LitData chunks (samples are the format's own fields, decoded
    by its own decoder, plus ``__key__`` and ``__url__``; see :mod:`streamprune.sampleformats`).

    Args:
        manifest: Manifest path or object.
        mask: Keep mask (path, :class:`MaskFile`, :class:`KeepMask`), or ``None`` for all.
        shuffle: Shuffle shard order and sample order within shards, seeded by
            ``(seed, epoch)``. Off by default: archive order reads sequentially.
        seed: Base seed.
        rank: Rank in a distributed job; default from ``torch.distributed`` or ``$RANK``.
        world_size: Number of ranks; default from ``torch.distributed`` or ``$WORLD_SIZE``.
        uneven: ``"pad"`` (every rank gets ceil(kept/world) samples, repeating a few) or
            ``"drop"`` (floor, skipping a few) so all ranks get the same count.
        fadvise: Switch off kernel read-ahead and prefetch exactly the kept ranges: one window
            of :data:`~streamprune.readers.byterange.READAHEAD_BYTES` ahead of the reads, which
            runs on into the next shards (see :class:`~streamprune.readers.byterange.ReadAhead`).
        check_headers: Check the first tar header of every read against the index (cheap: one
            header per coalesced read).
        max_run_bytes: Largest single read when coalescing adjacent kept samples.
        verify: Check every sample read against its checksum in the index (a mismatch is a
            :class:`~streamprune.errors.ChecksumError` naming shard, key and byte range).
            ``None``: the storage's default (off for local files; see
            :func:`~streamprune.readers.byterange.default_verify`). ``True`` on an index
            without checksums is a :class:`~streamprune.errors.ManifestError`.
        base: Directory or URL prefix that relative shard names resolve against instead of
            the manifest's directory (``"s3://bucket/prefix"``: the same shards in a bucket).
        storage_options: fsspec options for remote manifests, masks and shards (endpoint,
            profile, ...); credentials otherwise come from each backend's standard configuration.
        allow_foreign_locations: Accept a manifest from a URL that names shards or indexes
            outside its own prefix and ``base`` (local paths, ``file://`` URLs, other hosts):
            refused by default, see :meth:`~streamprune.manifest.Manifest.load`.
        fetch: How remote shards are fetched (requests in flight, coalescing, memory cap);
            default :data:`~streamprune.readers.scheduler.DEFAULT_REMOTE_POLICY`.
        io_depth: Positioned reads in flight for *local* shards (threads); ``1`` (default)
            reads one run at a time with read-ahead hints (``fadvise``). The default is
            measured: cold, on io_bench's 532 MB of JPEG shards on this project's virtual disk
            (one request served at a time), 16 threads took 1.5x as long at r=0.8 with 2.3x
            the CPU, while the hints kept the disk busy for ~93-98 % of the epoch (see
            benchmarks/README.md, "Cold local reads: read-ahead across shards").
        dynamic_masks: Keep the mask's bits in shared memory so ``set_epoch(epoch, mask=...)``
            reaches persistent DataLoader workers (costs N/8 bytes; see :mod:`.maskslot`).
        cache_dir: A kept-bytes cache for remote shards (:mod:`.keptcache`): the first epoch
            stores the kept samples it fetched; later epochs (and later runs, and other
            workers and ranks on this machine) read them from there and fetch only what is
            missing, e.g. after a mask change. Holds about the kept bytes, not whole shards.
        cache_limit: Most bytes the cache keeps (least recently used shards are evicted);
            default 80% of the free space on ``cache_dir``'s file system when first used.

    Resume: ``state_dict()`` / ``load_state_dict()`` (with ``StatefulDataLoader``) and
    ``resume_point()`` / ``load_resume_point()`` (elastic), see :mod:`.state`.
    """

    def __init__(
        self,
        manifest: ManifestLike,
        mask: MaskLike = None,
        *,
        base: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        allow_foreign_locations: bool = False,
        fetch: FetchPolicy | None = None,
        io_depth: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        uneven: str = "pad",
        fadvise: bool = True,
        check_headers: bool = True,
        max_run_bytes: int = 1 << 20,
        verify: bool | None = None,
        dynamic_masks: bool = False,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | None = None,
    ) -> None:
        super().__init__()
        # A private copy: iterating drops cached indexes, which must not touch the caller's object.
        self.manifest = copy.copy(require_tar(open_manifest(manifest, base, storage_options, allow_foreign_locations)))
        self.manifest.drop_cache()
        # MDS and LitData samples leave as their format's fields (tar samples pass through)
        self._fields = FieldDecoder(self.manifest)
        self._slot = MaskSlot(self.manifest, open_mask(remote_mask(mask, self.manifest.storage_options), self.manifest), shared=dynamic_masks)
        self.mask = self._slot.mask
        self.kept_counts = kept_counts(self.manifest, self.mask)
        auto_rank, auto_world = distributed_rank_world()
        self.rank = auto_rank if rank is None else rank
        self.world_size = auto_world if world_size is None else world_size
        if uneven not in ("pad", "drop"):
            raise ArgumentError(f"uneven={uneven!r}: must be 'pad' or 'drop'")
        self.shuffle = shuffle
        self.seed = seed
        self.uneven = uneven
        self.fadvise = fadvise
        self.check_headers = check_headers
        self.max_run_bytes = max_run_bytes
        self.verify = verify
        self.fetch = fetch
        self.io_depth = io_depth
        #: What the last epoch read in this process did (remote shards): requests, bytes, time, the prediction.
        self.read_stats = ReadStats()
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.cache_limit = cache_limit
        self._cache: KeptCache | None = None
        # Shared memory, so set_epoch reaches persistent DataLoader workers too.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._kept_cache: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        """The epoch that seeds the shuffle."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int, mask: MaskLike | Mask = _SAME_MASK) -> None:
        """Set the epoch that seeds the shuffle (call before each epoch, as with DistributedSampler).

        Works with ``persistent_workers=True``: the value lives in shared memory.

        Args:
            epoch: The epoch.
            mask: Switch to this keep mask (``None``: every sample) from this epoch on, without
                reopening shards or restarting workers; persistent workers need
                ``dynamic_masks=True``. Default: keep the current mask.
        """
        self._epoch[0] = int(epoch)
        self._forget_other_epochs(int(epoch))
        if mask is not _SAME_MASK:
            self.mask = self._slot.switch(mask)
            self._mask_changed()

    def _mask_changed(self) -> None:
        self.kept_counts = kept_counts(self.manifest, self.mask)
        self._kept_cache = {}

    def _sync_mask(self) -> None:
        """Pick up a mask switched in another process (persistent workers; see :class:`MaskSlot`)."""
        if self._slot.sync():
            self.mask = self._slot.mask
            self._mask_changed()

    def _binding(self) -> Binding:
        self._sync_mask()
        return Binding(self.manifest.fingerprint, self._slot.digest(), self.kept)

    def binding(self) -> dict:
        """The manifest fingerprint, mask digest and kept count this source reads.

        What a trainer's checkpoint records (e.g. a ``LightningDataModule.state_dict``) so that
        a resume on another dataset or mask is refused (see docs/recipes.md).
        """
        return self._binding().to_dict()

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the kept count split over ranks)."""
        plan = plan_epoch(self.kept_counts, rank=self.rank, world_size=self.world_size, uneven=self.uneven)
        return plan.per_rank

    @property
    def kept(self) -> int:
        """Kept samples in the whole dataset."""
        return int(self.kept_counts.sum())

    def shard_kept_positions(self, k: int) -> np.ndarray:
        """Positions (in shard ``k``) of its kept samples, ascending; loads only shard k's bits."""
        cached = self._kept_cache.get(k)
        if cached is None:
            if self.mask is None:
                cached = np.arange(self.manifest.shards[k].samples)
            else:
                cached = np.flatnonzero(self.mask.shard(k))
            self._kept_cache = {k: cached}  # one shard at a time keeps memory flat
        return cached

    def arm(self) -> None:
        """Plan the next iteration now (before its first sample), so ``state_dict`` already describes it."""
        try:
            self._sync_mask()
            self._armed = self._start()
        except StreamPruneError as exc:
            # Raised at the first sample instead: DataLoader workers report errors raised while
            # fetching, but die without a message on errors raised while creating the iterator.
            self._armed = (exc, None)

    def __iter__(self) -> Iterator[dict]:
        if self._armed is None:
            self.arm()
        segments, position = self._armed
        if position is None:
            self._armed = None
            return raise_on_first(segments)
        self._armed = None
        self._position = position
        return counted(self._fields.stream(self._read(segments, position.epoch)), position)

    def _read(self, segments: list, epoch: int) -> Iterator[dict]:
        """The kept samples of ``segments``, in order.

        Remote shards (and local ones with ``io_depth > 1``) go to the scheduler as one stream,
        requests in flight across shard boundaries. Local shards read one run at a time share
        one :class:`ReadAhead` window: when it has room and the current shard's runs are all
        announced, the next segment's shard is opened (and its index loaded) and its first kept
        runs are announced, so the disk's queue stays full across shard boundaries (at most
        :data:`SHARDS_AHEAD` shards are open ahead). Either way an error opening a shard ahead
        is raised at its turn, after every sample before it.
        """
        # consecutive segments read the same way (all remote, or all local) form one stream, so
        # the scheduler keeps requests in flight across their shard boundaries
        self.read_stats = stats = ReadStats()
        for policy, grouped in itertools.groupby(segments, key=lambda seg: self._policy(seg.shard)):
            group = list(grouped)
            if policy is not None:
                cache = self._cache_binding() if storage.is_remote(self.manifest.shard_path(group[0].shard)) else None
                yield from read_shards_scheduled((self._shard_read(seg, epoch) for seg in group), policy, stats=stats,
                                                 cache=cache)
                continue
            yield from self._read_local(group, epoch)
        if stats.requests:
            log.info("epoch %d: %d requests, %.1f MB fetched (%.1f MB kept) in %.2f s; planner predicted %.2f s; "
                     "whole shards: %d requests, %.1f MB; calibrated %.1f ms, %.0f MB/s, %d in flight", epoch,
                     stats.requests, stats.fetched_bytes / 1e6, stats.kept_bytes / 1e6, stats.seconds,
                     stats.predicted_seconds, stats.whole_requests, stats.whole_bytes / 1e6, stats.latency * 1e3,
                     stats.conn_bandwidth / 1e6, stats.depth)

    def _read_local(self, segments: list[Segment], epoch: int) -> Iterator[dict]:
        """Local segments with the serial reader, the next shards opened and announced to the kernel ahead."""
        manifest = self.manifest
        todo = collections.deque(segments)
        # shards opened ahead, in read order, or the error opening one (raised at its turn)
        ahead: collections.deque[tuple[ShardFile, np.ndarray, str] | Exception] = collections.deque()
        readahead = ReadAhead(READAHEAD_BYTES) if self.fadvise else None

        def open_next() -> bool:
            """Open the next segment's shard; ``False``: nothing was queued."""
            if not todo or len(ahead) >= SHARDS_AHEAD or (ahead and isinstance(ahead[-1], Exception)):
                return False
            segment = todo.popleft()
            path = manifest.shard_path(segment.shard)
            try:
                order = self._order(segment, epoch)
                shard = ShardFile(path, manifest.index(segment.shard), fadvise=self.fadvise, verify=self.verify)
            except (StreamPruneError, OSError) as exc:
                ahead.append(exc)
                return True
            ahead.append((shard, order, path))
            if readahead is not None:
                readahead.add(shard, *run_spans(shard.index, order, self.max_run_bytes))
            return True

        if readahead is not None:
            readahead.more = open_next
        try:
            while ahead or todo:
                if not ahead:
                    open_next()
                item = ahead.popleft()
                if isinstance(item, Exception):
                    raise item
                shard, order, path = item
                with shard:
                    yield from read_runs(
                        shard, order, path, max_run_bytes=self.max_run_bytes, check_headers=self.check_headers,
                        readahead=readahead,
                    )
                manifest.drop_cache()
        finally:
            for item in ahead:
                if isinstance(item, tuple):
                    item[0].close()

    def _cache_binding(self) -> CacheBinding | None:
        """The kept-bytes cache of this process (opened on first use), or ``None`` without ``cache_dir``."""
        if self.cache_dir is None:
            return None
        if self._cache is None:
            self._cache = open_cache(self.cache_dir, self.cache_limit)
        return CacheBinding(self._cache, self.manifest.fingerprint)

    def _policy(self, k: int) -> FetchPolicy | None:
        return fetch_policy(self.manifest.shard_path(k), self.fetch, self.io_depth, self.max_run_bytes)

    def _order(self, segment: Segment, epoch: int) -> np.ndarray:
        return within_shard_order(
            self.shard_kept_positions(segment.shard), self.seed, epoch, segment.shard, self.shuffle
        )[segment.begin : segment.end]

    def _shard_read(self, segment: Segment, epoch: int) -> ShardRead:
        # every request's first header is checked as it arrives (check_headers included)
        k = segment.shard
        return shard_read(self.manifest, k, self.manifest.shard_path(k), self._order(segment, epoch), self.verify)


class PrunedWebDataset(wds.DataPipeline, wds.FluidInterface):
    """A webdataset pipeline that yields only the kept samples, read by byte range.

    ``PrunedWebDataset(manifest, mask)`` behaves like ``wds.WebDataset(urls)`` filtered to the
    kept keys, and chains the same way::

        ds = PrunedWebDataset("data/manifest.json", "lm-0.6.spmask", shuffle=True)
        ds = ds.decode("pil").to_tuple("jpg", "cls").map_tuple(transform, int)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=4)
        for epoch in range(epochs):
            ds.set_epoch(epoch)
            ...

    ``.decode("pil")`` decodes with PIL. ``.decode(streamprune.image_decoder())`` decodes JPEGs
    with the fastest decoder installed (simplejpeg, PyTurboJPEG; PIL otherwise) and, given a
    ``size``, at a reduced scale; :func:`streamprune.decode.image_key` names the dataset's
    image member(s) for ``to_tuple``::

        ds = ds.decode(image_decoder(size=224)).to_tuple(image_key(ds.source.manifest), "cls")

    Args:
        manifest: Manifest path or object.
        mask: Keep mask, or ``None`` to read everything.
        **kwargs: Passed to :class:`PrunedSource` (shuffle, seed, rank, world_size, uneven,
            verify, ...).
    """

    def __init__(self, manifest: ManifestLike, mask: MaskLike = None, **kwargs: Any) -> None:
        super().__init__()
        self.source = PrunedSource(manifest, mask, **kwargs)
        self.append(self.source)

    def set_epoch(self, epoch: int, mask: MaskLike | Mask = _SAME_MASK) -> None:
        """Set the epoch that seeds shard and sample shuffling; optionally switch the mask (see :meth:`PrunedSource.set_epoch`)."""
        self.source.set_epoch(epoch, mask)

    def __iter__(self) -> Iterator[Any]:
        # webdataset starts the source lazily, at the first sample; start it now so that a
        # StatefulDataLoader's first state_dict() already describes this iteration.
        self.source.arm()
        return super().__iter__()

    def buffering_stages(self) -> list[str]:
        """Names of stages that hold samples back (shuffle buffers): they make a resumed position inexact."""
        names = []
        for stage in self.pipeline[1:]:
            f = getattr(stage, "f", None)
            if getattr(f, "__name__", "") in ("_shuffle", "_unbatched_shuffle"):
                names.append(f.__name__.lstrip("_"))
        return names

    def state_dict(self) -> dict:
        """The source's reader state (see :mod:`.state`); stages hold no position."""
        state = self.source.state_dict()
        buffered = self.buffering_stages()
        if buffered:
            state["buffered"] = buffered
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume the source where ``state`` left it (warns when shuffle buffers made it inexact)."""
        if state.get("buffered"):
            warn_buffered(state["buffered"])
        self.source.load_state_dict(state)

    def resume_point(self, loader_state: Any) -> dict:
        """The global resume point, see :meth:`PrunedSource.resume_point`."""
        return self.source.resume_point(loader_state)

    def load_resume_point(self, point: dict) -> None:
        """Resume an epoch elastically, see :meth:`PrunedSource.load_resume_point`."""
        self.source.load_resume_point(point)

    def __len__(self) -> int:
        """Kept samples this rank yields per epoch (before any batching stage)."""
        return len(self.source)


def remote_mask(mask: MaskLike, storage_options: dict | None) -> MaskLike:
    """A mask given as a URL, downloaded once (per URL and ETag) to a local cache; others unchanged."""
    if isinstance(mask, (str, os.PathLike)) and storage.is_remote(mask):
        return storage.local_copy(os.fspath(mask), storage_options)
    return mask


def open_cache(cache_dir: str, limit: int | None = None) -> KeptCache:
    """A :class:`KeptCache` at ``cache_dir``, limited to ``limit`` bytes or 80% of the free space there.

    Raises:
        CacheError: The directory cannot be created or written.
    """
    if limit is None:
        os.makedirs(cache_dir, exist_ok=True)
        limit = max(1 << 20, int(shutil.disk_usage(cache_dir).free * 0.8))
    return KeptCache(cache_dir, limit)


def fetch_policy(path: str, fetch: FetchPolicy | None, io_depth: int, max_run_bytes: int) -> FetchPolicy | None:
    """The scheduler policy for one shard, or ``None`` to read it with the serial local reader.

    In a DataLoader worker the remote policy's ``total_depth`` is shared among the workers.
    """
    if storage.is_remote(path):
        policy = fetch or DEFAULT_REMOTE_POLICY
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers != policy.workers:
            policy = dataclasses.replace(policy, workers=info.num_workers)
        return policy
    if io_depth > 1:
        # local: no latency to amortise, so no pruned gap is worth reading; runs as the serial reader cuts them
        return FetchPolicy(depth=io_depth, max_gap=0, max_request=max_run_bytes, calibrate=False)
    return None


def shard_read(manifest: Manifest, k: int, url: str, order: np.ndarray, verify: bool | None) -> ShardRead:
    """Shard ``k`` at ``url`` for :func:`read_shards_scheduled`, opened when the scheduler gets to it.

    The index is not cached on the manifest (the scheduler holds it while the shard is read),
    so memory stays flat over an epoch.
    """
    return ShardRead(url, order, functools.partial(_open_shard, manifest, k, url, verify))


def _open_shard(manifest: Manifest, k: int, url: str, verify: bool | None) -> ShardFile:
    obj = storage.open_object(url, manifest.storage_options)
    return ShardFile.from_storage(obj, manifest.index(k, cache=False), verify=verify)


def pruned_tarfile_samples(
    manifest: ManifestLike,
    mask: MaskLike = None,
    *,
    fadvise: bool = True,
    verify: bool | None = None,
    base: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    fetch: FetchPolicy | None = None,
    allow_foreign_locations: bool = False,
):
    """A stage that replaces ``wds.tarfile_to_samples()``: shard URLs in, kept samples out.

    Drop it into an existing pipeline that lists and splits shards itself::

        wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker,
                         pruned_tarfile_samples(manifest, mask), wds.decode("pil"), ...)

    Args:
        manifest: Manifest path or object covering the URLs.
        mask: Keep mask, or ``None``.
        fadvise: Switch off read-ahead and prefetch kept ranges.
        verify: Check samples against their checksums (as :class:`PrunedSource`).
        base: Where relative shard names resolve (as :class:`PrunedSource`).
        storage_options: fsspec options for remote locations.
        fetch: How remote shards are fetched (as :class:`PrunedSource`).
        allow_foreign_locations: Accept a manifest from a URL naming files outside its prefix
            and ``base`` (as :class:`PrunedSource`).

    Returns:
        A picklable callable taking an iterator of ``{"url": path}`` dicts (or path strings or URLs).
    """
    manifest = open_manifest(manifest, base, storage_options, allow_foreign_locations)
    return _TarfileStage(require_tar(manifest), mask, fadvise, verify, fetch)


def _location_key(location: str) -> str:
    """What identifies a shard location: the URL itself, or a local file's real path."""
    return location if storage.is_remote(location) else os.path.realpath(storage.local_path(location))


class _TarfileStage:
    def __init__(
        self, manifest: Manifest, mask: MaskLike, fadvise: bool, verify: bool | None = None, fetch: FetchPolicy | None = None
    ) -> None:
        self.manifest = manifest
        self.mask = open_mask(remote_mask(mask, manifest.storage_options), manifest)
        self.fadvise = fadvise
        self.verify = verify
        self.fetch = fetch
        self.by_path = {_location_key(manifest.shard_path(k)): k for k in range(len(manifest.shards))}
        self.fields = FieldDecoder(manifest)

    def __call__(self, urls: Iterable[Any]) -> Iterator[dict]:
        return self.fields.stream(self._samples(urls))

    def _samples(self, urls: Iterable[Any]) -> Iterator[dict]:
        located = (self._locate(item) for item in urls)
        # consecutive remote shards form one scheduled stream (requests in flight across shards)
        for remote, group in itertools.groupby(located, key=lambda item: storage.is_remote(item[0])):
            if remote:
                yield from read_shards_scheduled((self._shard_read(url, k) for url, k in group),
                                                 self.fetch or DEFAULT_REMOTE_POLICY)
                continue
            for url, k in group:
                # not cached: a worker holds the index of the shard it reads, not of every shard it has read
                with ShardFile(url, self.manifest.index(k, cache=False), fadvise=self.fadvise, verify=self.verify) as shard:
                    yield from read_runs(shard, self._kept(k), url)

    def _locate(self, item: Any) -> tuple[str, int]:
        url = item["url"] if isinstance(item, dict) else item
        k = self.by_path.get(_location_key(url))
        if k is None:
            raise MaskMismatchError(f"{url}: shard is not in manifest {self.manifest.path}")
        self.fields.bind(url, k)
        return url, k

    def _kept(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.mask.shard(k)) if self.mask is not None else np.arange(self.manifest.shards[k].samples)

    def _shard_read(self, url: str, k: int) -> ShardRead:
        return shard_read(self.manifest, k, url, self._kept(k), self.verify)
