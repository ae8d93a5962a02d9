"""Random access to kept samples, and a sampler, for training code built on samplers."""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .. import storage
from ..manifest import Manifest, ManifestLike, open_manifest
from ..masks import Mask, MaskLike, open_mask
from .byterange import ShardFile, read_exact
from .maskslot import ALL_KEPT
from .state import STATE_FORMAT, STATE_VERSION, Binding, ResumableSampler, counted
from .webdataset import distributed_rank_world, remote_mask, require_tar

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
            at once (``__getitems__``).
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
        fetch_depth: int = 8,
    ) -> None:
        self.manifest = require_tar(open_manifest(manifest, base, storage_options))
        self.mask = open_mask(remote_mask(mask, self.manifest.storage_options), self.manifest)
        self.fetch_depth = fetch_depth
        self.kept_global = _kept_global(self.manifest, self.mask)
        offsets = self.manifest.shard_offsets
        self._shard_of = (np.searchsorted(offsets, self.kept_global, side="right") - 1).astype(np.int64)
        self._pos_in_shard = self.kept_global - offsets[self._shard_of]
        self.transform = transform
        self.max_open_files = max_open_files
        self.verify = verify
        self._files: dict[int, ShardFile] = {}
        self._pid = os.getpid()

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
            path = self.manifest.shard_path(k)
            if storage.is_remote(path):
                obj = storage.open_object(path, self.manifest.storage_options)
                shard = ShardFile.from_storage(obj, self.manifest.index(k), verify=self.verify)
            else:
                shard = ShardFile(path, self.manifest.index(k), fadvise=False, verify=self.verify)
            self._files[k] = shard
        return shard

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} kept samples")
        k = int(self._shard_of[i])
        pos = int(self._pos_in_shard[i])
        shard = self._shard(k)
        index = shard.index
        key = index.keys[pos]
        sample: dict = {"__key__": key, "__url__": shard.path}
        group = index.members[pos]
        # one read of the whole sample (headers included): fewer system calls than one per
        # member, and its first header is checked against the index from the same bytes
        start = int(index.start[pos])
        end = int(index.end[pos])
        view = memoryview(read_exact(shard.fd, end - start, start, shard.path, key) if shard.fd >= 0 else shard.read_range(start, end, key))
        shard.check_sample(pos, view)
        for ext, offset, size in group:
            sample[ext] = bytes(view[offset - start : offset - start + size])
        if shard.verify:
            shard.check_checksum(pos, [sample[ext] for ext, _, _ in group])
        return self.transform(sample) if self.transform is not None else sample

    def __getitems__(self, indices: list[int]) -> list:
        """A batch of items (what the DataLoader asks for): remote samples fetched concurrently."""
        if self.fetch_depth <= 1 or len(indices) <= 1 or not any(storage.is_remote(self.manifest.shard_path(int(k)))
                                                                  for k in set(self._shard_of[indices].tolist())):
            return [self[i] for i in indices]
        for k in set(self._shard_of[indices].tolist()):
            self._shard(int(k))  # open shards here: the cache is not thread-safe
        with cf.ThreadPoolExecutor(max_workers=min(self.fetch_depth, len(indices))) as pool:
            return list(pool.map(self.__getitem__, indices))

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
