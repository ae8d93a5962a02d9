"""Summaries of a dataset and a mask: kept counts per shard and class, bytes, speed-up."""

from __future__ import annotations

import numpy as np

from .manifest import Manifest
from .masks import Mask, MaskFile

__all__ = ["describe", "format_report", "kept_summary"]

#: Kept class or cluster ids :func:`kept_summary` lists before eliding the rest.
MAX_IDS = 20


def kept_summary(mask: Mask) -> str:
    """What a mask keeps, in words: the kept classes or clusters by id for those levels, and the samples.

    Args:
        mask: A mask (its provenance says the level and, for class or cluster level, the kept ids).

    Returns:
        ``"clusters [1, 4, 7] (30 of 80 samples)"``, ``"classes [0, 3] (16 of 40 samples)"`` or
        ``"40 of 80 samples"``; more than :data:`MAX_IDS` ids end in ``..., N more``.
    """
    samples = f"{mask.kept} of {mask.num_samples} samples"
    level = mask.provenance.get("level")
    ids = mask.provenance.get(f"kept_{level}es" if level == "class" else f"kept_{level}s")
    if level not in ("class", "cluster") or ids is None:
        return samples
    shown = ", ".join(str(i) for i in ids[:MAX_IDS]) + (f", ... {len(ids) - MAX_IDS} more" if len(ids) > MAX_IDS else "")
    return f"{'classes' if level == 'class' else 'clusters'} [{shown}] ({samples})"


def describe(manifest: Manifest, mask: MaskFile | None = None) -> dict:
    """Describe what a (pruned) read of ``manifest`` will touch.

    Args:
        manifest: The dataset.
        mask: An opened mask file (checked against the manifest), or ``None``; it is named by
            its :attr:`~streamprune.masks.MaskFile.location` (a URL as given).

    Returns:
        A JSON-ready dict: totals, kept counts, bytes to read, expected speed-up, and
        per-shard and per-class rows.
    """
    sizes = manifest.sample_bytes()
    labels = manifest.labels()
    if mask is not None:
        mask.check(manifest)
        keep = mask.to_bool()
    else:
        keep = np.ones(manifest.num_samples, dtype=bool)
    offsets = manifest.shard_offsets
    shards = []
    for k, entry in enumerate(manifest.shards):
        bits = keep[offsets[k] : offsets[k + 1]]
        shards.append(
            {
                "shard": entry.name,
                "samples": entry.samples,
                "kept": int(bits.sum()),
                "bytes": entry.bytes,
                "kept_bytes": int(sizes[offsets[k] : offsets[k + 1]][bits].sum()),
            }
        )
    n_classes = len(manifest.classes)
    labelled = labels >= 0
    total_pc = np.bincount(labels[labelled], minlength=n_classes)
    kept_pc = np.bincount(labels[labelled & keep], minlength=n_classes)
    classes = [
        {"class": i, "name": manifest.classes[i] if i < n_classes else str(i), "samples": int(t), "kept": int(k)}
        for i, (t, k) in enumerate(zip(total_pc, kept_pc))
    ]
    kept = int(keep.sum())
    kept_bytes = int(sizes[keep].sum())
    total_bytes = int(manifest.total_bytes)
    return {
        "manifest": manifest.path,
        "mask": mask.location if mask is not None else None,  # a URL as given, not its local copy
        "provenance": mask.provenance if mask is not None else None,
        "samples": manifest.num_samples,
        "kept": kept,
        "ratio_removed": 1.0 - kept / manifest.num_samples if manifest.num_samples else 0.0,
        "shards": len(manifest.shards),
        "total_bytes": total_bytes,
        "kept_bytes": kept_bytes,
        "expected_speedup": (manifest.num_samples / kept) if kept else float("inf"),
        "expected_io_speedup": (total_bytes / kept_bytes) if kept_bytes else float("inf"),
        "classes_kept": int((kept_pc > 0).sum()),
        "per_shard": shards,
        "per_class": classes,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_report(info: dict, max_rows: int = 20) -> str:
    """Render :func:`describe`'s output as a readable text table.

    Args:
        info: Output of :func:`describe`.
        max_rows: Shard rows shown before eliding.

    Returns:
        The report text.
    """
    lines = [
        f"manifest: {info['manifest']}",
        f"mask:     {info['mask'] or '(none: everything kept)'}",
    ]
    if info["provenance"]:
        prov = ", ".join(f"{k}={v}" for k, v in info["provenance"].items() if k != "kept_classes")
        lines.append(f"made by:  {prov}")
    lines += [
        f"samples:  {info['kept']:,} kept of {info['samples']:,} (ratio removed {info['ratio_removed']:.3f})",
        f"classes:  {info['classes_kept']} of {len(info['per_class'])} have kept samples",
        f"bytes:    {_mb(info['kept_bytes'])} to read of {_mb(info['total_bytes'])}",
        f"expected speed-up: {info['expected_speedup']:.2f}x samples, {info['expected_io_speedup']:.2f}x bytes",
        "",
        f"{'shard':<28} {'samples':>8} {'kept':>8} {'kept MB':>10}",
    ]
    rows = info["per_shard"]
    for row in rows[:max_rows]:
        lines.append(f"{row['shard']:<28} {row['samples']:>8} {row['kept']:>8} {row['kept_bytes'] / 1e6:>10.2f}")
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more shards")
    if info["per_class"]:
        lines += ["", f"{'class':<6} {'name':<24} {'samples':>8} {'kept':>8}"]
        for row in info["per_class"]:
            lines.append(f"{row['class']:<6} {row['name'][:24]:<24} {row['samples']:>8} {row['kept']:>8}")
    return "\n".join(lines)
