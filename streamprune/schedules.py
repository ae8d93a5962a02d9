"""Per-epoch mask schedules: a keep mask for every epoch, computed from per-sample statistics.

A schedule is anything with ``mask_for_epoch(epoch) -> Mask | None``; the training loop hands
each epoch's mask to the reader at the epoch boundary::

    ds = PrunedWebDataset(manifest, shuffle=True, dynamic_masks=True)   # shared-memory mask
    schedule = InfoBatch(manifest, epochs=E)
    fit(model, loader, epochs=E, ..., index_of=index_of,
        on_epoch_start=lambda e: ds.set_epoch(e, mask=schedule.mask_for_epoch(e)),
        on_batch=schedule.record, loss_weights=schedule.loss_weights,
        on_epoch_end=lambda _stats: schedule.sync())

The statistics come from the training itself (``fit(on_batch=...)``: each batch's per-sample
losses with their manifest positions) or from a dynamics recording
(:func:`streamprune.dynamicsfile.load_dynamics`, field ``loss``) through ``initial_scores``.

:class:`InfoBatch` (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic
Data Pruning", ICLR 2024) is the worked example; its definition is in ``docs/methods-dynamic.md``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import ArgumentError, StreamPruneError
from .manifest import Manifest, ManifestLike, open_manifest
from .masks import KeepMask, Mask, MaskLike, mask_from_bool, open_mask

if TYPE_CHECKING:
    from .train import BatchOutput

__all__ = ["MaskSchedule", "InfoBatch", "INFOBATCH_FORMAT"]

INFOBATCH_FORMAT = "streamprune-infobatch"
INFOBATCH_VERSION = 1


@runtime_checkable
class MaskSchedule(Protocol):
    """A keep mask per epoch."""

    def mask_for_epoch(self, epoch: int) -> Mask | None:
        """The mask to train epoch ``epoch`` with (``None``: every sample)."""


class InfoBatch:
    """InfoBatch: prune well-learned samples at random each epoch and rescale the kept ones' losses.

    Each epoch ``e`` with ``1 <= e < floor(delta * epochs)``: a sample is *well learned* when its
    last recorded loss is below the mean of the recorded losses; ``round(ratio * n)`` of the
    ``n`` well-learned samples are pruned at random (each with probability ``ratio``), and the
    kept well-learned samples' losses are multiplied by ``1 / (1 - ratio)`` so the expected
    gradient is unchanged. Epoch 0 (no losses yet) and the annealing epochs
    ``e >= floor(delta * epochs)`` use every sample without rescaling. Samples never seen keep
    no score and are always kept.

    Args:
        manifest: The training set.
        epochs: Total training epochs (for the annealing point).
        ratio: Pruning probability ``r`` of a well-learned sample (paper default 0.5).
        delta: Fraction of epochs before annealing (paper default 0.875).
        seed: Seed of the random pruning (mixed with the epoch).
        base_mask: A static mask the schedule stays inside (``None``: every sample).
        initial_scores: Per-sample losses (manifest order, NaN = unknown) to start from, e.g.
            a dynamics recording's last ``loss``; then epoch 0 may prune too.
    """

    def __init__(
        self,
        manifest: ManifestLike,
        *,
        epochs: int,
        ratio: float = 0.5,
        delta: float = 0.875,
        seed: int = 0,
        base_mask: MaskLike = None,
        initial_scores: np.ndarray | None = None,
    ) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ArgumentError(f"ratio={ratio}: must be in [0, 1)")
        if not 0.0 <= delta <= 1.0:
            raise ArgumentError(f"delta={delta}: must be in [0, 1]")
        self.manifest: Manifest = open_manifest(manifest)
        self.epochs = int(epochs)
        self.ratio = float(ratio)
        self.delta = float(delta)
        self.seed = int(seed)
        base = open_mask(base_mask, self.manifest)
        n = self.manifest.num_samples
        self.base = np.ones(n, dtype=bool) if base is None else np.asarray(base.to_bool(), dtype=bool).copy()
        self.scores = np.full(n, np.nan, dtype=np.float32)
        if initial_scores is not None:
            initial = np.asarray(initial_scores, dtype=np.float32)
            if initial.shape != (n,):
                raise ArgumentError(f"initial_scores has shape {initial.shape}; the manifest has {n} samples")
            self.scores[:] = initial
        self.weights = np.ones(n, dtype=np.float32)
        self._epoch: int | None = None  # epoch whose mask and weights are current
        self._keep: np.ndarray | None = None
        self._updated = np.zeros(n, dtype=bool)  # recorded since the last sync
        self.history: list[dict[str, Any]] = []

    @property
    def anneal_epoch(self) -> int:
        """First epoch of the annealing phase (full data, no rescaling)."""
        return int(math.floor(self.delta * self.epochs))

    def prunes(self, epoch: int) -> bool:
        """Whether ``epoch`` prunes (before annealing, with losses recorded)."""
        return epoch < self.anneal_epoch and bool(np.isfinite(self.scores[self.base]).any())

    def mask_for_epoch(self, epoch: int) -> KeepMask:
        """The epoch's keep mask; also sets the weights :meth:`loss_weights` returns for it.

        Computed once per epoch and then cached (also across :meth:`state_dict`), so a run
        resumed mid-epoch gets the same mask, although losses were recorded since.
        """
        if self._epoch == epoch and self._keep is not None:
            return mask_from_bool(self.manifest, self._keep, method="infobatch", epoch=epoch, seed=self.seed)
        keep = self.base.copy()
        self.weights[:] = 1.0
        well_count = pruned = 0
        if self.prunes(epoch):
            scored = self.base & np.isfinite(self.scores)
            mean = float(self.scores[scored].mean())
            well = np.flatnonzero(scored & (self.scores < mean))
            well_count = len(well)
            pruned = int(round(self.ratio * well_count))
            rng = np.random.default_rng([self.seed, epoch, 0x1B])
            drop = rng.choice(well, size=pruned, replace=False)
            keep[drop] = False
            kept_well = np.setdiff1d(well, drop, assume_unique=True)
            self.weights[kept_well] = 1.0 / (1.0 - self.ratio)
        self._epoch, self._keep = epoch, keep
        self.history.append({"epoch": epoch, "kept": int(keep.sum()), "well_learned": well_count, "pruned": pruned})
        return mask_from_bool(self.manifest, keep, method="infobatch", epoch=epoch, seed=self.seed)

    def record(self, out: BatchOutput) -> None:
        """``fit(on_batch=...)`` hook: remember each sample's training loss (needs ``fit(index_of=...)``)."""
        if out.indices is None:
            raise StreamPruneError("InfoBatch.record needs sample positions: pass fit(index_of=...) and a loader with keys")
        self.scores[out.indices] = out.losses.detach().float().cpu().numpy()
        self._updated[out.indices] = True

    def loss_weights(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """``fit(loss_weights=...)`` hook: ``1 / (1 - ratio)`` for kept well-learned samples, else 1."""
        if self._epoch != epoch:
            raise StreamPruneError(f"InfoBatch: weights are for epoch {self._epoch}; call mask_for_epoch({epoch}) first")
        return self.weights[indices]

    def sync(self) -> None:
        """Share the losses recorded on every rank (call at each epoch's end; no-op unless distributed)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            self._updated[:] = False
            return
        mine = torch.from_numpy(np.where(self._updated, self.scores, 0.0).astype(np.float64))
        count = torch.from_numpy(self._updated.astype(np.float64))
        torch.distributed.all_reduce(mine)
        torch.distributed.all_reduce(count)
        seen = count.numpy() > 0
        # A sample read by two ranks (padding) gets the mean of its losses.
        self.scores[seen] = (mine.numpy()[seen] / count.numpy()[seen]).astype(np.float32)
        self._updated[:] = False

    def state_dict(self) -> dict[str, Any]:
        """Scores, the current epoch's mask and weights: save it with the checkpoint."""
        return {
            "format": INFOBATCH_FORMAT, "version": INFOBATCH_VERSION, "manifest_fingerprint": self.manifest.fingerprint,
            "ratio": self.ratio, "delta": self.delta, "epochs": self.epochs, "seed": self.seed,
            "scores": self.scores.copy(), "weights": self.weights.copy(), "epoch": self._epoch,
            "keep": None if self._keep is None else self._keep.copy(), "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            StreamPruneError: Another format, manifest or settings.
        """
        if state.get("format") != INFOBATCH_FORMAT or state.get("version") != INFOBATCH_VERSION:
            raise StreamPruneError("not an InfoBatch state of a supported version")
        if state["manifest_fingerprint"] != self.manifest.fingerprint:
            raise StreamPruneError("InfoBatch state was saved for another manifest")
        mine = (self.ratio, self.delta, self.epochs, self.seed)
        if (state["ratio"], state["delta"], state["epochs"], state["seed"]) != mine:
            raise StreamPruneError(f"InfoBatch state has (ratio, delta, epochs, seed) = "
                                   f"{(state['ratio'], state['delta'], state['epochs'], state['seed'])}, this schedule {mine}")
        self.scores[:] = state["scores"]
        self.weights[:] = state["weights"]
        self._epoch = state["epoch"]
        self._keep = None if state["keep"] is None else np.asarray(state["keep"], dtype=bool).copy()
        self.history = list(state["history"])
