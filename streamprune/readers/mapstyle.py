"""Random access to kept samples, and a sampler, for training code built on samplers."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .. import storage
from ..manifest import Manifest, ManifestLike, open_manifest
from ..masks import Mask, MaskLike, open_mask
from .byterange import ShardFile, read_sample
from .fields import FieldDecoder
from .maskslot import ALL_KEPT
from .scheduler import DEFAULT_REMOTE_POLICY, FetchPolicy, ShardRead, read_shards_scheduled
from .state import STATE_FORMAT, STATE_VERSION, Binding, ResumableSampler, counted
from .webdataset import distributed_rank_world, fetch_policy, remote_mask, require_tar

__all__ = ["PrunedMapDataset", "KeptSampler"]


def _kept_global(manifest: Manifest, mask: Mask | None) -> np.ndarray:
    if mask is None:
        return np.arange(manifest.num_samples, dtype=np.int64)
    return np.flatnonzero(mask.to_bool()).astype(np.int64)


class PrunedMapDataset(Dataset):
    """Map-style dataset over the kept samples only: ``ds[i]`` is the i-th kept sample.

    Each item is a webdataset sample dict (``__key__``, ``__url__``, extension -> bytes),
    passed through ``transform`` if one is given. Shards are opened lazily, per process, so
    the dataset is safe to use with DataLoader workers. Use any sampler with it (e.g.
    ``DistributedSampler`` for DDP).

    Shards are read with the kernel's read-ahead off, so a cold read fetches only the kept
    samples' bytes; a batching DataLoader fetches through :meth:`__getitems__`, which
    announces the batch's samples first so their reads overlap (:meth:`prefetch`). A batch of
    remote samples is planned and fetched as the iterable reader's epochs are (the planner
    merges what is worth merging within the batch; requests run concurrently), one plan per
    batch: later batches are not known to the dataset.

    Args:
        manifest: Manifest path or object.
        mask: Keep mask, or ``None`` for every sample.
        transform: Function applied to each sample dict.
        max_open_files: Shard file descriptors kept open per process.
        verify: Check every sample read against its checksum in the index (as
            :class:`~streamprune.readers.webdataset.PrunedSource`; ``None``: the storage's default).
        base: Where relative shard names resolve (as ``PrunedSource``: a bucket or server copy).
        storage_options: fsspec options for remote manifests, masks and shards.
        fetch_depth: Requests in flight when the DataLoader asks for a batch of remote samples
            at once (``__getitems__``); ``None``: ``fetch``'s (adaptive by default); ``1``: one
            sample at a time.
        fetch: How a batch of remote samples is planned and fetched (as ``PrunedSource``'s ``fetch``).
        allow_foreign_locations: Accept a manifest from a URL naming files outside its prefix
            and ``base`` (as ``PrunedSource``).
    """

    def __init__(
        self,
        manifest: ManifestLike,
        mask: MaskLike = None,
        transform: Callable[[dict], object] | None = None,
        max_open_files: int = 64,
        verify: bool | None = None,
        base: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        fetch_depth: int | None = None,
        fetch: FetchPolicy | None = None,
        allow_foreign_locations: bool = False,
    ) -> None:
        self.manifest = require_tar(open_manifest(manifest, base, storage_options, allow_foreign_locations))
        self.mask = open_mask(remote_mask(mask, self.manifest.storage_options), self.manifest)
        self.fetch_depth = fetch_depth
        policy = fetch or DEFAULT_REMOTE_POLICY
        self.fetch = policy if fetch_depth is None else dataclasses.replace(policy, depth=fetch_depth)
        self.kept_global = _kept_global(self.manifest, self.mask)
        offsets = self.manifest.shard_offsets
        self._shard_of = (np.searchsorted(offsets, self.kept_global, side="right") - 1).astype(np.int64)
        self._pos_in_shard = self.kept_global - offsets[self._shard_of]
        self.transform = transform
        self.max_open_files = max_open_files
        self.verify = verify
        self._files: dict[int, ShardFile] = {}
        self._pid = os.getpid()
        # MDS and LitData samples are returned as their format's fields (tar samples as stored)
        self._fields = FieldDecoder(self.manifest)

    def __len__(self) -> int:
        return len(self.kept_global)

    def _shard(self, k: int) -> ShardFile:
        if self._pid != os.getpid():
            self._files = {}  # descriptors inherited over fork share offsets; open our own
            self._pid = os.getpid()
        shard = self._files.get(k)
        if shard is None:
            if len(self._files) >= self.max_open_files:
                oldest = next(iter(self._files))
                self._files.pop(oldest).close()
            # local files: read-ahead off (POSIX_FADV_RANDOM): with it on, a cold read of one kept sample
            # also read the pruned samples after it (0.83 of the shards' bytes at r=0.8, not 0.2)
            shard = ShardFile(self.manifest.shard_path(k), self.manifest.index(k), fadvise=True, verify=self.verify,
                              storage_options=self.manifest.storage_options)
            self._files[k] = shard
        return shard

    def _locate(self, i: int) -> tuple[int, int]:
        """``(shard, position in shard)`` of the i-th kept sample."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} kept samples")
        return int(self._shard_of[i]), int(self._pos_in_shard[i])

    def __getitem__(self, i: int):
        k, pos = self._locate(i)
        shard = self._shard(k)
        # large members are read one by one straight into their values, small ones in one read
        # of the sample; the sample's first header is checked against the index either way
        sample = read_sample(shard, pos, shard.path)
        if self._fields.active:
            sample = self._fields.decode(sample, k)
        return self.transform(sample) if self.transform is not None else sample

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The kept samples at ``indices``, in that order: what a DataLoader fetches for one batch.

        ``torch.utils.data.DataLoader`` calls this (when batching) with the batch's indices, so
        the whole batch is announced to the kernel first (:meth:`prefetch`) and its reads
        overlap on a cold cache, instead of each waiting for the disk in turn.
        """
        indices = list(indices)
        shards = {int(k) for k in self._shard_of[indices].tolist()} if indices else set()
        if self.fetch_depth != 1 and len(indices) > 1 and any(storage.is_remote(self.manifest.shard_path(k)) for k in shards):
            return self._fetch_batch(indices)
        self.prefetch(indices)
        return [self[i] for i in indices]

    def _fetch_batch(self, indices: list[int]) -> list:
        """A batch of remote samples: per shard, its samples in disk order, planned and fetched concurrently."""
        located = [self._locate(i) for i in indices]
        by_shard: dict[int, set[int]] = {}
        for k, pos in located:
            by_shard.setdefault(k, set()).add(pos)
        reads = [ShardRead(self.manifest.shard_path(k), np.array(sorted(positions), dtype=np.int64),
                           functools.partial(self._shard, k), owned=False) for k, positions in by_shard.items()]
        for k in by_shard:
            self._shard(k)  # opened here, on this thread: the open-file cache is not thread-safe
        policy = fetch_policy(reads[0].url, self.fetch, 1, 1 << 20) or self.fetch
        # the scheduler yields each read's samples in its order, reads one after another
        stream = read_shards_scheduled(reads, policy)
        got = {(k, pos): next(stream) for k, read in zip(by_shard, reads) for pos in read.order.tolist()}
        stream.close()
        if self._fields.active:
            got = {loc: self._fields.decode(sample, loc[0]) for loc, sample in got.items()}
        out = [dict(got[loc]) if located.count(loc) > 1 else got[loc] for loc in located]
        return [self.transform(s) for s in out] if self.transform is not None else out

    def prefetch(self, indices: Iterable[int]) -> None:
        """Announce that the kept samples at ``indices`` will be read soon (``POSIX_FADV_WILLNEED``).

        Shards are opened with read-ahead off (``POSIX_FADV_RANDOM``), so that a cold read
        fetches only the requested sample's bytes; this hint starts the reads of samples the
        caller knows it will ask for (a batch, a sampler's next indices) in the background.
        Exactly their byte ranges are requested, never a pruned sample's.

        Args:
            indices: Kept-sample indices, as for ``ds[i]``.
        """
        pending: tuple[ShardFile, int, int] | None = None  # a range not yet announced, grown while samples follow on
        for i in indices:
            k, pos = self._locate(i)
            shard = self._shard(k)
            start, end = int(shard.index.start[pos]), int(shard.index.end[pos])
            if pending is not None and pending[0] is shard and pending[2] == start:
                pending = (shard, pending[1], end)  # adjacent on disk: one hint for both (fewer system calls)
                continue
            if pending is not None:
                pending[0].prefetch(pending[1], pending[2])
            pending = (shard, start, end)
        if pending is not None:
            pending[0].prefetch(pending[1], pending[2])

    def global_index(self, i: int) -> int:
        """Manifest-order index of the i-th kept sample."""
        return int(self.kept_global[i])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _binding(self) -> Binding:
        digest = ALL_KEPT if self.mask is None else self.mask.digest()
        return Binding(self.manifest.fingerprint, digest, len(self.kept_global))

    def state_dict(self) -> dict:
        """The dataset's bindings only: a map-style dataset has no position (the sampler has)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "kind": "map", **self._binding().to_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Check that ``state`` was saved with this manifest and mask.

        Raises:
            StreamPruneError: Another manifest or rewritten shards.
            MaskMismatchError: Another mask.
        """
        self._binding().check(state, "map dataset state")


class KeptSampler(ResumableSampler, Sampler[int]):
    """Yields manifest-order indices of kept samples, for a full (unpruned) map dataset.

    Shuffled per epoch from ``(seed, epoch)``; in a distributed job each rank gets an equal
    share (padded by repeating, or dropped, like ``DistributedSampler``).

    Args:
        manifest: Manifest path or object.
        mask: Keep mask, or ``None``.
        shuffle: Shuffle each epoch.
        seed: Base seed.
        rank: Rank; default from ``torch.distributed`` or ``$RANK``.
        world_size: World size; default from ``torch.distributed`` or ``$WORLD_SIZE``.
        drop_last: Drop the tail instead of padding to equal shares.

    Resume: ``state_dict()`` / ``load_state_dict()`` (``StatefulDataLoader`` calls them) and
    ``resume_point()`` / ``load_resume_point()`` for another world size (see :mod:`.state`).
    """

    def __init__(
        self,
        manifest: ManifestLike,
        mask: MaskLike = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        manifest = open_manifest(manifest)
        opened = open_mask(mask, manifest)
        self.indices = _kept_global(manifest, opened)
        self._bound = Binding(manifest.fingerprint, ALL_KEPT if opened is None else opened.digest(), len(self.indices))
        auto_rank, auto_world = distributed_rank_world()
        self.rank = auto_rank if rank is None else rank
        self.world_size = auto_world if world_size is None else world_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.uneven = "drop" if drop_last else "pad"
        self.epoch = 0
        n = len(self.indices)
        self.per_rank = n // self.world_size if drop_last else -(-n // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the shuffle."""
        self.epoch = int(epoch)
        self._forget_other_epochs(self.epoch)

    def __len__(self) -> int:
        return self.per_rank

    def _binding(self) -> Binding:
        return self._bound

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All kept indices in the epoch's order (before the per-rank split)."""
        indices = self.indices
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + epoch)
            indices = indices[torch.randperm(len(indices), generator=g).numpy()]
        return indices

    def __iter__(self) -> Iterator[int]:
        # Positions of the epoch order this rank yields (equal to the padded/truncated share
        # of a plain epoch; a resumed epoch's remainder otherwise), minus what was consumed.
        positions, position = self._start()
        self._position = position
        share = self.epoch_order(position.epoch)[positions] if len(positions) else positions
        return counted(iter(share.tolist()), position)
