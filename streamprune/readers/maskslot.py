"""The reader's current keep mask, switchable between epochs, also inside persistent DataLoader workers.

A persistent DataLoader worker holds its own copy of the dataset, made when the worker started,
so a mask set later in the main process never reaches it. :class:`MaskSlot` keeps the current
mask in one of two ways:

* ``shared=True``: the keep bits live in shared memory (one byte-aligned packed bitset per shard,
  laid end to end, as a mask file stores them), beside the per-shard kept counts, the mask's
  digest and a generation counter. :meth:`MaskSlot.switch` in the main process rewrites them;
  every copy sees the new mask at its next :meth:`MaskSlot.sync` (the start of an epoch). The
  buffers cost ``N / 8`` bytes plus 8 bytes per shard, allocated once.
* ``shared=False`` (default): the mask is a plain attribute. A switch replaces it in the main
  process, which reaches ``num_workers=0`` and workers started afterwards, and bumps a shared
  generation counter, so a persistent worker still holding the old mask raises a clear
  :class:`StreamPruneError` instead of reading the wrong samples.

Switching only happens between epochs (``set_epoch``); a switch while workers read is not
supported (they would see a half-written bitset).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import StreamPruneError
from ..manifest import Manifest
from ..masks import Mask, MaskLike, bits_digest, open_mask, packed_shard_bits

__all__ = ["MaskSlot", "SharedMask", "ALL_KEPT"]

#: Digest recorded when no mask is given (every sample kept).
ALL_KEPT = "all"


class SharedMask:
    """A keep mask whose bits live in shared memory; implements the :class:`~streamprune.masks.Mask` protocol.

    Args:
        manifest: The dataset the mask covers.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.samples = np.asarray([s.samples for s in manifest.shards], dtype=np.int64)
        nbytes = (self.samples + 7) // 8
        self.byte_offsets = np.concatenate([[0], np.cumsum(nbytes)]).astype(np.int64)
        self._fingerprint = manifest.fingerprint
        self._bits = torch.zeros(int(self.byte_offsets[-1]), dtype=torch.uint8).share_memory_()
        self._counts = torch.zeros(len(self.samples), dtype=torch.int64).share_memory_()
        self._digest = torch.zeros(32, dtype=torch.uint8).share_memory_()
        self._provenance: dict = {}

    def write(self, mask: Mask | None) -> None:
        """Copy ``mask``'s bits (``None``: keep all) into the shared buffers (main process, between epochs)."""
        bits = self._bits.numpy()
        counts = self._counts.numpy()
        for k, n in enumerate(self.samples.tolist()):
            keep = np.ones(n, dtype=bool) if mask is None else mask.shard(k)
            lo, hi = int(self.byte_offsets[k]), int(self.byte_offsets[k + 1])
            bits[lo:hi] = np.frombuffer(packed_shard_bits(keep), dtype=np.uint8)
            counts[k] = int(keep.sum())
        # The buffer is the per-shard bitsets end to end with no padding: its hash is the digest.
        digest = bits_digest([bits.tobytes()]) if mask is not None else None
        self._digest.numpy()[:] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8) if digest else 0
        self._provenance = dict(mask.provenance) if mask is not None else {"method": "all"}

    @property
    def kept(self) -> int:
        """Number of kept samples."""
        return int(self._counts.sum())

    @property
    def num_samples(self) -> int:
        """Number of samples the mask covers."""
        return int(self.samples.sum())

    @property
    def provenance(self) -> dict:
        """How the mask now in the buffer was made (as known to the process that wrote it)."""
        return self._provenance

    @property
    def manifest_fingerprint(self) -> str:
        """Fingerprint of the manifest the buffers were made for."""
        return self._fingerprint

    def check(self, manifest: Manifest) -> None:
        """Raise :class:`StreamPruneError` unless the buffers were made for ``manifest``."""
        if manifest.fingerprint != self._fingerprint:
            raise StreamPruneError(f"shared mask was made for manifest {self._fingerprint[:12]}, not {manifest.fingerprint[:12]}")

    def shard(self, k: int) -> np.ndarray:
        """Boolean keep array of shard ``k``, read from shared memory."""
        lo, hi = int(self.byte_offsets[k]), int(self.byte_offsets[k + 1])
        return np.unpackbits(self._bits.numpy()[lo:hi], bitorder="little", count=int(self.samples[k])).astype(bool)

    def shard_kept_counts(self) -> np.ndarray:
        """Kept samples per shard, manifest order."""
        return self._counts.numpy().copy()

    def to_bool(self) -> np.ndarray:
        """All bits in manifest order."""
        parts = [self.shard(k) for k in range(len(self.samples))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def digest(self) -> str:
        """SHA-256 of the keep bits, as computed when they were written (``"all"`` for no mask)."""
        raw = self._digest.numpy().tobytes()
        return ALL_KEPT if not any(raw) else raw.hex()


class MaskSlot:
    """The current mask of one reader, and the per-epoch switch (see the module docstring).

    Args:
        manifest: The dataset.
        mask: The initial mask (already opened and checked), or ``None``.
        shared: Keep the bits in shared memory so persistent workers see switches.
    """

    def __init__(self, manifest: Manifest, mask: Mask | None, *, shared: bool = False) -> None:
        self.manifest = manifest
        self.shared = SharedMask(manifest) if shared else None
        # Bumped on every switch; each copy remembers the generation its mask belongs to.
        self._generation = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._local_generation = 0
        self._mask = mask
        self.last_switch_seconds = 0.0
        if self.shared is not None:
            self.shared.write(mask)
            self._mask = self.shared if mask is not None else None

    @property
    def generation(self) -> int:
        """How many switches have happened (shared by all copies)."""
        return int(self._generation[0])

    @property
    def mask(self) -> Mask | None:
        """The mask this copy reads with (``None``: every sample)."""
        return self._mask

    def switch(self, mask: MaskLike | Mask) -> Mask | None:
        """Make ``mask`` current (main process, between epochs); returns the mask to read with.

        Raises:
            MaskMismatchError: ``mask`` was made for another manifest or index.
        """
        t0 = time.perf_counter()
        opened = open_mask(mask, self.manifest)
        if self.shared is not None:
            self.shared.write(opened)
            self._mask = self.shared if opened is not None else None
        else:
            self._mask = opened
        self._generation += 1
        self._local_generation = self.generation
        self.last_switch_seconds = time.perf_counter() - t0
        return self._mask

    def sync(self) -> bool:
        """Catch up with switches made in another process; ``True`` if this copy's mask changed.

        Raises:
            StreamPruneError: A switch happened after this copy was made and the bits are not
                shared (a persistent worker of a reader built without ``dynamic_masks=True``).
        """
        generation = self.generation
        if generation == self._local_generation:
            return False
        if self.shared is None:
            raise StreamPruneError(
                "the keep mask was switched (set_epoch(..., mask=...)) after this DataLoader worker started, and "
                "persistent workers cannot see a switch unless the reader is built with dynamic_masks=True "
                "(shared-memory mask); or use persistent_workers=False"
            )
        self._mask = None if self.shared.digest() == ALL_KEPT else self.shared
        self._local_generation = generation
        return True

    def kept_counts(self) -> np.ndarray | None:
        """Per-shard kept counts of the current mask (``None``: no mask, every sample)."""
        return None if self._mask is None else self._mask.shard_kept_counts()

    def digest(self) -> str:
        """Digest of the current mask's keep bits (``"all"`` for no mask)."""
        return ALL_KEPT if self._mask is None else self._mask.digest()
