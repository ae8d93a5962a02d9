"""Reader state for exact mid-epoch resume, and resume points for elastic resume.

Two forms, both small JSON-able dicts of counts and seeds (never sample lists):

* a **reader state** (``format: "streamprune-reader-state"``) is one (rank, worker) slice's
  progress: the epoch, the sequence it plans over, how many of its samples were consumed, and
  the bindings. ``torchdata``'s ``StatefulDataLoader`` collects it from ``state_dict()`` in each
  worker after every batch and hands it back to ``load_state_dict()`` in the same worker before
  ``iter()``; the resumed slice skips the consumed samples by advancing its plan's segments,
  without reading them. Same world size and worker count only (torchdata's rule).
* a **resume point** (``format: "streamprune-resume-point"``) is the global position of an
  epoch: the old world size W and worker count w, ``uneven``, epoch, seed, the bindings, the
  consumed count of each old (rank, worker) slice and the resulting *remainder* (intervals of
  the epoch's sequence not yet seen, see :func:`~streamprune.readers.plan.remainder_after`).
  ``resume_point(loader.state_dict())`` builds it from the reader states found anywhere in a
  loader's nested state (all-gathered over ranks when ``torch.distributed`` is initialised);
  ``load_resume_point(point)`` on a reader with any world size and worker count then yields
  every not-yet-seen sample of that epoch exactly once across the new ranks, in the epoch's
  order, cut by count into W' x w' slices with the ``uneven`` rule applied to the remainder.

Both are bound to the manifest (fingerprint) and the mask (SHA-256 of its keep bits): loading
either with another mask raises :class:`MaskMismatchError`, with rewritten shards
:class:`StreamPruneError`, each naming what differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..errors import MaskMismatchError, StreamPruneError
from .plan import (
    Intervals,
    Segment,
    epoch_sequence,
    plan_epoch,
    rank_sizes,
    remainder_after,
    skip_segments,
    slice_bounds,
    take_positions,
)

__all__ = [
    "STATE_FORMAT",
    "POINT_FORMAT",
    "STATE_VERSION",
    "Binding",
    "Position",
    "ResumableSource",
    "ResumableSampler",
    "find_states",
    "make_resume_point",
]

STATE_FORMAT = "streamprune-reader-state"
POINT_FORMAT = "streamprune-resume-point"
STATE_VERSION = 1


@dataclass(frozen=True)
class Binding:
    """What a state is only valid for.

    Attributes:
        manifest_fingerprint: The manifest's fingerprint (changes when a shard is rewritten).
        mask_digest: SHA-256 of the keep bits (``"all"`` without a mask).
        kept: Kept samples in the whole dataset.
    """

    manifest_fingerprint: str
    mask_digest: str
    kept: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as stored in a state."""
        return {"manifest_fingerprint": self.manifest_fingerprint, "mask_digest": self.mask_digest, "kept": self.kept}

    def check(self, saved: dict[str, Any], what: str) -> None:
        """Raise unless ``saved`` (a state or point) was made with this binding.

        Raises:
            StreamPruneError: Another manifest, or rewritten shards.
            MaskMismatchError: Another mask (different keep bits).
        """
        if saved.get("manifest_fingerprint") != self.manifest_fingerprint:
            raise StreamPruneError(
                f"{what} was saved for manifest {str(saved.get('manifest_fingerprint'))[:12]}, this reader reads "
                f"{self.manifest_fingerprint[:12]}: another dataset, or its shards were rewritten or re-indexed"
            )
        if saved.get("mask_digest") != self.mask_digest or int(saved.get("kept", -1)) != self.kept:
            raise MaskMismatchError(
                f"{what} was saved with mask {str(saved.get('mask_digest'))[:12]} ({saved.get('kept')} kept), this "
                f"reader's mask is {self.mask_digest[:12]} ({self.kept} kept): resume with the mask of that epoch"
            )


@dataclass
class Position:
    """One (rank, worker) slice's progress through one epoch.

    Attributes:
        epoch: The epoch.
        sequence: What the slice's plan cuts: the epoch's sequence or a remainder (intervals).
        remainder: The remainder planned over, or ``None`` for the whole epoch.
        consumed: Samples of the slice already yielded.
        size: Samples in the slice.
    """

    epoch: int
    sequence: Intervals
    remainder: Intervals | None
    consumed: int
    size: int


def _check_format(state: Any, fmt: str, kind: str, what: str) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise StreamPruneError(f"{what}: not a {fmt} dict (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if state.get("version") != STATE_VERSION:
        raise StreamPruneError(f"{what}: version {state.get('version')} is not supported (this streamprune reads {STATE_VERSION})")
    if state.get("kind") != kind:
        raise StreamPruneError(f"{what}: was saved by a {state.get('kind')} reader, not a {kind}")
    return state


def find_states(obj: Any, kind: str | None = None) -> list[dict[str, Any]]:
    """Every reader state inside ``obj`` (a loader's nested state dict, a list of them, ...).

    Searches for the format marker, so it does not depend on how torchdata nests its state.
    """
    found: list[dict[str, Any]] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("format") == STATE_FORMAT:
                if kind is None or item.get("kind") == kind:
                    found.append(item)
                continue
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def _gather(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' states when ``torch.distributed`` is initialised (a collective: every rank must call)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return parts
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, parts)
    return [s for rank_parts in gathered for s in rank_parts]


def _intervals(value: Any) -> Intervals | None:
    return None if value is None else [(int(b), int(e)) for b, e in value]


def make_resume_point(states: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """One global resume point from the reader states of every old (rank, worker) slice.

    Args:
        states: Reader states of one epoch, from all ranks.
        kind: ``"source"`` or ``"sampler"``.

    Returns:
        The resume point (see the module docstring).

    Raises:
        StreamPruneError: No states, states of different epochs / runs, or slices missing.
    """
    if not states:
        raise StreamPruneError(f"no {STATE_FORMAT} of a {kind} reader found in the given state")
    for s in states:
        _check_format(s, STATE_FORMAT, kind, "reader state")
    first = states[0]
    shared = ("epoch", "seed", "shuffle", "uneven", "world_size", "num_workers", "sequence", "manifest_fingerprint", "mask_digest", "kept")
    for s in states[1:]:
        differ = [k for k in shared if s.get(k) != first.get(k)]
        if differ:
            raise StreamPruneError(f"reader states disagree on {differ} (from different runs or epochs?)")
    world, workers = int(first["world_size"]), int(first["num_workers"])
    consumed: list[list[int | None]] = [[None] * workers for _ in range(world)]
    for s in states:
        r, w = int(s["rank"]), int(s["worker"])
        if consumed[r][w] is not None and consumed[r][w] != s["consumed"]:
            raise StreamPruneError(f"two different states for rank {r} worker {w}")
        consumed[r][w] = int(s["consumed"])
    missing = [(r, w) for r in range(world) for w in range(workers) if consumed[r][w] is None]
    if missing:
        raise StreamPruneError(
            f"the states cover {world * workers - len(missing)} of {world} ranks x {workers} workers (missing {missing[:4]}); "
            "call resume_point on every rank with torch.distributed initialised, or pass every rank's loader state"
        )
    counts = [[int(c) for c in row] for row in consumed]  # type: ignore[arg-type]
    remainder = remainder_after(_intervals(first["sequence"]) or [], world, workers, first["uneven"], counts)
    point = {k: first[k] for k in ("epoch", "seed", "shuffle", "uneven", "world_size", "num_workers")}
    point.update(
        format=POINT_FORMAT, version=STATE_VERSION, kind=kind, consumed=counts, remainder=[list(i) for i in remainder],
        manifest_fingerprint=first["manifest_fingerprint"], mask_digest=first["mask_digest"], kept=first["kept"],
    )
    return point


class _Resumable:
    """What the source and the sampler share: pending resumes and the state/point round trip.

    Subclasses provide ``seed``, ``shuffle``, ``uneven``, ``rank``, ``world_size``, the
    current ``epoch``, ``_binding()``, ``_skip(plan, n)`` and ``_slice_plan(epoch, remainder,
    worker, workers) -> (plan, sequence planned over, slice size)``.
    """

    _kind = ""
    _pending: dict[str, Any] | None = None  # from load_state_dict: one slice, used once
    _elastic: tuple[int, Intervals] | None = None  # from load_resume_point: (epoch, remainder)
    _position: Position | None = None  # the iteration under way (or finished)
    _armed: tuple[Any, Position] | None = None  # started eagerly, not yet iterated

    def _worker(self) -> tuple[int, int]:
        return 0, 1

    def _start(self, consume: bool = True) -> tuple[Any, Position]:
        """Plan this process's slice of the current epoch, applying a pending resume."""
        epoch = self.epoch  # type: ignore[attr-defined]
        remainder: Intervals | None = None
        skip = 0
        pending = self._pending
        if pending is not None:
            if pending["epoch"] == epoch:
                remainder, skip = _intervals(pending["remainder"]), int(pending["consumed"])
            elif pending["consumed"] < pending["size"]:
                raise StreamPruneError(
                    f"the loaded state is in the middle of epoch {pending['epoch']} but the reader is at epoch {epoch}: "
                    f"call set_epoch({pending['epoch']}) before iterating the resumed epoch"
                )
            if consume:
                self._pending = None
        elif self._elastic is not None and self._elastic[0] == epoch:
            remainder = self._elastic[1]
        worker, workers = self._worker()
        plan, sequence, per_slice = self._slice_plan(epoch, remainder, worker, workers)  # type: ignore[attr-defined]
        if skip > per_slice:
            raise StreamPruneError(f"the loaded state consumed {skip} samples of a {per_slice}-sample slice")
        position = Position(epoch, sequence, remainder, skip, per_slice)
        return self._skip(plan, skip), position

    def _skip(self, plan: Any, skip: int) -> Any:
        raise NotImplementedError

    def _current_position(self) -> Position:
        if self._armed is not None and self._armed[1] is not None:
            return self._armed[1]
        if self._position is not None and self._position.epoch == self.epoch:  # type: ignore[attr-defined]
            return self._position
        return self._start(consume=False)[1]

    def state_dict(self) -> dict[str, Any]:
        """This slice's position as a small, versioned, bound reader state (see :mod:`.state`)."""
        position = self._current_position()
        worker, workers = self._worker()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "kind": self._kind,
            **self._binding().to_dict(),  # type: ignore[attr-defined]
            "epoch": position.epoch,
            "seed": self.seed,  # type: ignore[attr-defined]
            "shuffle": self.shuffle,  # type: ignore[attr-defined]
            "uneven": self.uneven,  # type: ignore[attr-defined]
            "rank": self.rank,  # type: ignore[attr-defined]
            "world_size": self.world_size,  # type: ignore[attr-defined]
            "worker": worker,
            "num_workers": workers,
            "sequence": [list(i) for i in position.sequence],
            "remainder": None if position.remainder is None else [list(i) for i in position.remainder],
            "consumed": position.consumed,
            "size": position.size,
        }

    def _check_order(self, saved: dict[str, Any], what: str) -> None:
        mine = {"seed": self.seed, "shuffle": self.shuffle}  # type: ignore[attr-defined]
        differ = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if differ:
            raise StreamPruneError(f"{what} was saved with {', '.join(f'{k}={a!r}' for k, (a, _) in differ.items())}; this reader has "
                                   f"{', '.join(f'{k}={b!r}' for k, (_, b) in differ.items())}: the epoch order would differ")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume this slice where ``state`` left it, at the next ``iter()`` (same world size and workers).

        Raises:
            StreamPruneError: Wrong format or version, another manifest, seed, world size or worker count.
            MaskMismatchError: Another mask.
        """
        _check_format(state, STATE_FORMAT, self._kind, "reader state")
        self._binding().check(state, "reader state")  # type: ignore[attr-defined]
        self._check_order(state, "reader state")
        worker, workers = self._worker()
        saved = (state["rank"], state["world_size"], state["worker"], state["num_workers"])
        if saved != (self.rank, self.world_size, worker, workers) or state["uneven"] != self.uneven:  # type: ignore[attr-defined]
            raise StreamPruneError(
                f"reader state of rank {saved[0]}/{saved[1]}, worker {saved[2]}/{saved[3]} ({state['uneven']}) cannot be loaded "
                f"into rank {self.rank}/{self.world_size}, worker {worker}/{workers} ({self.uneven}); "  # type: ignore[attr-defined]
                "for another world size or worker count use resume_point() / load_resume_point()"
            )
        self._pending = {k: state[k] for k in ("epoch", "remainder", "consumed", "size")}
        self._elastic = None
        self._armed = None

    def resume_point(self, loader_state: Any) -> dict[str, Any]:
        """The global resume point of the epoch in ``loader_state`` (a collective when distributed).

        Finds this reader's states anywhere in ``loader_state`` (a ``StatefulDataLoader``'s
        ``state_dict()``, this reader's own ``state_dict()``, or a list of several ranks'), and,
        when ``torch.distributed`` is initialised, all-gathers every rank's states: call it on
        every rank. Save the result with the checkpoint; it is a few hundred bytes.

        Raises:
            StreamPruneError: No states found, or some old slice is missing.
        """
        return make_resume_point(_gather(find_states(loader_state, self._kind)), self._kind)

    def load_resume_point(self, point: dict[str, Any]) -> None:
        """Resume the point's epoch over its remainder, with this reader's world size and workers.

        Call it before iterating, then ``set_epoch(point["epoch"])`` (mask schedules: with that
        epoch's mask). The remainder applies while the reader is at that epoch; ``set_epoch``
        with any other epoch forgets it.

        Raises:
            StreamPruneError: Wrong format or version, another manifest, seed or shuffle.
            MaskMismatchError: Another mask.
        """
        _check_format(point, POINT_FORMAT, self._kind, "resume point")
        self._binding().check(point, "resume point")  # type: ignore[attr-defined]
        self._check_order(point, "resume point")
        self._elastic = (int(point["epoch"]), _intervals(point["remainder"]) or [])
        self._pending = None
        self._armed = None

    def _forget_other_epochs(self, epoch: int) -> None:
        if self._elastic is not None and self._elastic[0] != epoch:
            self._elastic = None


class ResumableSource(_Resumable):
    """Resume support of :class:`~streamprune.readers.PrunedSource` (plans over segments)."""

    _kind = "source"

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def _slice_plan(self, epoch: int, remainder: Intervals | None, worker: int, workers: int) -> tuple[list[Segment], Intervals, int]:
        counts = self.kept_counts  # type: ignore[attr-defined]
        plan = plan_epoch(
            counts, seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size,  # type: ignore[attr-defined]
            worker=worker, num_workers=workers, uneven=self.uneven, remainder=remainder,  # type: ignore[attr-defined]
        )
        if remainder is None:  # the fresh epoch, with plan_epoch's "drop" rotation
            remainder = epoch_sequence(int(np.sum(counts)), self.world_size, self.uneven, epoch)  # type: ignore[attr-defined]
        return plan.segments, remainder, plan.total

    def _skip(self, plan: list[Segment], skip: int) -> list[Segment]:
        return skip_segments(plan, skip)


class ResumableSampler(_Resumable):
    """Resume support of :class:`~streamprune.readers.KeptSampler` (plans over positions of the permuted kept list)."""

    _kind = "sampler"

    def _slice_plan(self, epoch: int, remainder: Intervals | None, worker: int, workers: int) -> tuple[np.ndarray, Intervals, int]:
        n = len(self.indices)  # type: ignore[attr-defined]
        sequence = remainder if remainder is not None else ([(0, n)] if n else [])
        length = sum(e - b for b, e in sequence)
        per_rank = rank_sizes(length, self.world_size, self.uneven) if length else 0  # type: ignore[attr-defined]
        lo, hi = slice_bounds(per_rank, self.rank, 0, 1)  # type: ignore[attr-defined]
        parts = [np.arange(b, e, dtype=np.int64) for b, e in take_positions(sequence, lo, hi)]
        positions = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return positions, sequence, hi - lo

    def _skip(self, plan: np.ndarray, skip: int) -> np.ndarray:
        return plan[skip:]


def warn_buffered(stages: list[str]) -> None:
    """Warn that buffering stages make a resumed position inexact (they hold samples the state counts as consumed)."""
    warnings.warn(
        f"the pipeline has buffering stage(s) {stages}: samples held in their buffers at the checkpoint were counted as "
        "consumed, so the resumed epoch skips them; remove shuffle buffers (the reader's shuffle=True is exact) for exact resume",
        stacklevel=3,
    )


def counted(samples: Iterator[Any], position: Position) -> Iterator[Any]:
    """Yield ``samples``, counting each in ``position.consumed`` as it is handed out."""
    for sample in samples:
        position.consumed += 1
        yield sample


def raise_on_first(exc: BaseException) -> Iterator[Any]:
    """An iterator that raises ``exc`` when first advanced."""
    raise exc
    yield  # a generator, so the raise waits for next()
