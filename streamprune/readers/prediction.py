"""What a pruned epoch will cost from a store: requests, bytes, time and dollars, before reading it.

:func:`predict_epoch` plans every shard of a manifest under a mask exactly as the remote reader
would (:func:`~streamprune.readers.planner.plan_shard`, archive order) and adds up what the
:class:`~streamprune.readers.planner.StoreModel` predicts, next to the same figures for reading
every shard whole. ``streamprune inspect MANIFEST --mask M --plan`` prints it; after a real run,
:class:`~streamprune.readers.scheduler.ReadStats` holds the measured figures to compare with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..manifest import Manifest
from ..masks import Mask
from .planner import Objective, StoreModel, plan_shard, whole_shard_cost

__all__ = ["METADATA_REQUESTS_PER_SHARD", "predict_epoch", "format_prediction"]

#: Requests to open one remote shard besides its data: the object's size and ETag, and its
#: index (JSON sidecar and binary companion).
METADATA_REQUESTS_PER_SHARD = 3


def predict_epoch(manifest: Manifest, mask: Mask | None, model: StoreModel, depth: int | None = None,
                  max_depth: int = 128, max_request: int = 2 << 20, objective: Objective = "time",
                  max_waste: float | None = None) -> dict[str, Any]:
    """Plan one epoch of ``manifest`` under ``mask`` and predict its requests, bytes, time and price.

    One reader process in archive order (``shuffle=False``); the time is the sum of the
    shards' predicted times plus one latency to start (shards are read one after another, each
    with ``depth`` requests in flight).

    Args:
        manifest: The dataset.
        mask: The keep mask (``None``: everything).
        model: The store and client model.
        depth: Requests in flight; ``None``: adaptive, as the reader does, up to ``max_depth``.
        max_depth: Cap on adaptive depth.
        max_request: Largest request, bytes.
        objective: ``"time"`` or ``"cost"``.
        max_waste: Cap on pruned bytes fetched along, as a fraction of the kept bytes.

    Returns:
        ``{"planned": {...}, "whole": {...}, "speedup": float, "model": {...}}``; each of
        ``planned`` and ``whole`` has ``requests`` (data), ``metadata_requests``, ``bytes``,
        ``kept_bytes``, ``pruned_bytes`` (fetched along), ``seconds`` and ``dollars``.
    """
    def depth_of(request_bytes: float) -> float:
        return depth if depth is not None else model.depth_for(request_bytes, max_depth)

    planned = {"requests": 0, "bytes": 0, "kept_bytes": 0, "seconds": 0.0, "dollars": 0.0, "samples": 0}
    whole = {"requests": 0, "bytes": 0, "kept_bytes": 0, "seconds": 0.0, "dollars": 0.0, "samples": 0}
    shards_read = 0
    for k in range(len(manifest.shards)):
        index = manifest.index(k, cache=False)
        keep = np.arange(len(index)) if mask is None else np.flatnonzero(mask.shard(k))
        w_requests, w_bytes = whole_shard_cost(index, max_request)
        whole["requests"] += w_requests
        whole["bytes"] += w_bytes
        whole["kept_bytes"] += w_bytes
        whole["samples"] += len(index)
        whole["seconds"] += model.seconds(w_requests, w_bytes, depth_of(w_bytes / max(1, w_requests)))
        whole["dollars"] += model.dollars(w_requests, max(0, w_bytes - w_requests * model.free_bytes_per_request))
        if not len(keep):
            continue
        shards_read += 1
        plan = plan_shard(index, keep, model, depth_of, max_request, objective, max_waste)
        planned["requests"] += len(plan.requests)
        planned["bytes"] += plan.fetched_bytes
        planned["kept_bytes"] += plan.kept_bytes
        planned["samples"] += len(keep)
        planned["seconds"] += plan.seconds
        planned["dollars"] += plan.dollars
    for figures, shards in ((planned, shards_read), (whole, len(manifest.shards))):
        figures["metadata_requests"] = shards * METADATA_REQUESTS_PER_SHARD
        figures["pruned_bytes"] = figures["bytes"] - figures["kept_bytes"]
        figures["seconds"] += model.latency if figures["requests"] else 0.0
        figures["dollars"] += model.dollars(figures["metadata_requests"], 0)
    return {
        "planned": planned,
        "whole": whole,
        "speedup": whole["seconds"] / planned["seconds"] if planned["seconds"] else float("inf"),
        "model": dict(model.__dict__),
        "objective": objective,
    }


def format_prediction(pred: dict[str, Any]) -> str:
    """A short table of :func:`predict_epoch`'s result, for the command line."""
    model = pred["model"]
    lines = [
        f"store model: {model['latency'] * 1000:.0f} ms to first byte, {model['conn_bandwidth'] / 1e6:.0f} MB/s per "
        f"connection, {model['total_bandwidth'] / 1e6:.0f} MB/s in all, {model['cpu_per_request'] * 1e3:.2f} ms CPU per "
        f"request; ${model['price_per_1000_requests']:g} per 1,000 requests, ${model['price_per_gb']:g} per GB "
        f"(objective: {pred['objective']})",
        f"{'per epoch':<14}{'requests':>10}{'+ metadata':>12}{'MB fetched':>12}{'MB kept':>10}{'MB pruned':>11}"
        f"{'seconds':>10}{'dollars':>12}",
    ]
    for name, label in (("planned", "planned"), ("whole", "whole shards")):
        f = pred[name]
        lines.append(f"{label:<14}{f['requests']:>10,}{f['metadata_requests']:>12,}{f['bytes'] / 1e6:>12,.1f}"
                     f"{f['kept_bytes'] / 1e6:>10,.1f}{f['pruned_bytes'] / 1e6:>11,.1f}{f['seconds']:>10.2f}"
                     f"{f['dollars']:>12.6f}")
    lines.append(f"predicted speed-up: {pred['speedup']:.2f}x (one reader process, archive order)")
    return "\n".join(lines)
