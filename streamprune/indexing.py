"""Indexing shards written by anyone: one entry point for every shard format.

:func:`index_files` looks at each file's content (an FFCV header, or a tar) and hands the
files to :func:`index_shards` (tar) or :func:`index_betons` (``.beton``); each writes one index
sidecar per file and the ``manifest.json`` last, so an interrupted run leaves no manifest that
looks complete.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .atomic import file_sha256
from .betonindex import index_beton, looks_like_beton, save_beton_index
from .errors import LabelError, ManifestError
from .indexfile import INDEX_SUFFIX, save_index
from .manifest import MANIFEST_NAME, Manifest, build_manifest
from .shardindex import ShardIndex
from .tarindex import index_tar

__all__ = ["index_files", "index_shards", "index_betons", "is_beton", "AUTO_LABELS", "DEFAULT_LABEL_EXT"]

log = logging.getLogger(__name__)

#: ``label_ext`` value meaning: labels if every sample has a ``.cls`` member, none if no sample has.
AUTO_LABELS = "auto"
#: The label member webdataset's own examples use; what ``auto`` looks for.
DEFAULT_LABEL_EXT = "cls"


def is_beton(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an FFCV ``.beton`` file: by its header, whatever its name.

    A file named ``*.beton`` counts too, so that a damaged one gets the FFCV reader's error
    (which names what is wrong with the header) rather than a tar parser's.
    """
    return os.fspath(path).endswith(".beton") or looks_like_beton(path)


def index_files(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    label_ext: str | None = AUTO_LABELS,
    label_field: str | None = "auto",
    checksum: bool = True,
    classes: list[str] | None = None,
    progress: bool = True,
    workers: int = 1,
    sample_checksums: bool = True,
) -> Manifest:
    """Index tar shards or ``.beton`` files (chosen by content) and write their manifest.

    Args:
        paths: Files to index, in manifest order; all tar or all ``.beton``.
        out_dir: Where the sidecars and ``manifest.json`` go.
        label_ext: Tar: extension of the integer label member (every sample must have it),
            ``"auto"`` (see :func:`index_shards`), or ``None`` (unlabelled).
        label_field: ``.beton``: integer field holding the label (``"auto"``), or ``None``.
        checksum: Record each file's SHA-256 (reads every byte once).
        classes: Class names by label id.
        progress: Show a progress bar.
        workers: Tar shards indexed in parallel processes.
        sample_checksums: Tar: record each sample's checksum (see :func:`index_shards`).

    Returns:
        The saved manifest.

    Raises:
        ManifestError: No files, a missing file, or tar and ``.beton`` files mixed.
    """
    if not paths:
        raise ManifestError("no shard files given to index")
    kinds = [is_beton(p) for p in paths]
    if any(kinds) and not all(kinds):
        first = os.fspath(paths[kinds.index(True)])
        raise ManifestError(f"{first} is an FFCV .beton file but others are tar shards: give either tar shards or .beton files, not both")
    if all(kinds):
        return index_betons(paths, out_dir, label_field=label_field, checksum=checksum, classes=classes, progress=progress)
    return index_shards(
        paths, out_dir, label_ext=label_ext, checksum=checksum, classes=classes, progress=progress, workers=workers,
        sample_checksums=sample_checksums,
    )


def _check_names(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Check the files exist and have distinct names; return ``(path, relative name, index name)``."""
    jobs = []
    seen: set[str] = set()
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ManifestError(f"{path}: shard not found")
        base = os.path.basename(path)
        if base in seen:
            raise ManifestError(f"{path}: two shards share the file name {base!r}; their index files would clash")
        seen.add(base)
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(os.fspath(out_dir)))
        jobs.append((path, rel, base + INDEX_SUFFIX))
    return jobs


def _claim_out_dir(out_dir: str | os.PathLike) -> str:
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path):
        os.unlink(manifest_path)  # the directory is incomplete until the manifest is rewritten
    return out_dir


def _index_tar_file(
    path: str, rel: str, label_ext: str | None, checksum: bool, index_path: str, sample_checksums: bool = True
) -> ShardIndex:
    auto = label_ext == AUTO_LABELS
    index = index_tar(
        path, label_ext=DEFAULT_LABEL_EXT if auto else label_ext, name=rel, require_labels=not auto,
        sample_checksums=sample_checksums,
    )
    if checksum:
        index.sha256 = file_sha256(path)
    save_index(index, index_path)
    return index


def _settle_auto_labels(indexes: Sequence[ShardIndex]) -> str | None:
    """Decide what ``label_ext="auto"`` found: every sample labelled, none, or an error for some.

    Returns:
        The label extension the manifest records (``None`` when no sample has a label).

    Raises:
        LabelError: Some samples have the label member and others do not (names the first without).
    """
    labelled = sum(int((index.labels >= 0).sum()) for index in indexes)
    total = sum(len(index) for index in indexes)
    if labelled == total:
        return DEFAULT_LABEL_EXT
    if labelled == 0:
        log.warning(
            "no sample has a .%s member: indexed without labels (name the label member with --label-ext)",
            DEFAULT_LABEL_EXT,
        )
        return None
    index = next(ix for ix in indexes if (ix.labels < 0).any())
    key = index.keys[int(np.argmax(index.labels < 0))]
    raise LabelError(
        f"{index.shard}: sample {key!r} has no .{DEFAULT_LABEL_EXT} member, but {labelled} of {total} samples have one; "
        "label every sample, or index without labels (--no-labels)"
    )


def index_shards(
    shards: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    label_ext: str | None = AUTO_LABELS,
    checksum: bool = True,
    classes: list[str] | None = None,
    progress: bool = True,
    workers: int = 1,
    sample_checksums: bool = True,
) -> Manifest:
    """Index existing tar shards written by anyone and write their manifest.

    Index sidecars go to ``out_dir`` as ``<shard basename>.index.json``; shard paths are
    recorded relative to ``out_dir`` when possible. With ``workers > 1`` shards are indexed
    in parallel processes; the manifest is the same either way.

    Args:
        shards: Tar files to index, in the order they should appear in the manifest.
        out_dir: Where the sidecars and ``manifest.json`` are written.
        label_ext: Extension of the integer label member (every sample must have one);
            ``"auto"``: labels from ``.cls`` members when every sample has one, no labels (with
            a warning) when no sample has one, an error naming the first unlabelled sample
            when only some have one; ``None`` for unlabelled data.
        checksum: Compute each shard's SHA-256 (reads every byte once).
        classes: Class names by label id.
        progress: Show a progress bar.
        workers: Processes indexing shards in parallel.
        sample_checksums: Record each sample's checksum in its index (reads every member's
            data once more), so readers can verify samples (``verify=True``).

    Returns:
        The saved manifest.

    Raises:
        ValueError: ``workers`` is below 1.
        ManifestError: A shard is missing, or two shards share a file name.
        LabelError: A sample lacks the label member (see ``label_ext``) or its label is not an integer.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    jobs = _check_names(shards, out_dir)
    out_dir = _claim_out_dir(out_dir)
    indexes: list[ShardIndex | None] = [None] * len(jobs)
    with tqdm(total=len(jobs), desc="index", unit="shard", disable=not progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            for k, (path, rel, index_name) in enumerate(jobs):
                indexes[k] = _index_tar_file(path, rel, label_ext, checksum, os.path.join(out_dir, index_name), sample_checksums)
                bar.update(1)
        else:
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as pool:
                futures = {
                    pool.submit(
                        _index_tar_file, path, rel, label_ext, checksum, os.path.join(out_dir, index_name), sample_checksums
                    ): k
                    for k, (path, rel, index_name) in enumerate(jobs)
                }
                for future in cf.as_completed(futures):
                    indexes[futures[future]] = future.result()
                    bar.update(1)
    entries = [(index, rel, index_name) for index, (_, rel, index_name) in zip(indexes, jobs) if index is not None]
    if label_ext == AUTO_LABELS:
        label_ext = _settle_auto_labels([index for index, _, _ in entries])
    manifest = build_manifest(out_dir, entries, classes=classes, label_ext=label_ext)
    manifest.save()
    return manifest


def index_betons(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    label_field: str | None = "auto",
    checksum: bool = True,
    classes: list[str] | None = None,
    progress: bool = True,
) -> Manifest:
    """Index ``.beton`` files written by anyone (plain FFCV included) and write their manifest.

    Keys are synthesised as ``f"{stem}/{i:08d}"`` (FFCV stores none); shards are recorded with
    ``"format": "beton"``; sidecars go to ``out_dir`` as ``<file>.index.json``.

    Args:
        paths: ``.beton`` files, in manifest order.
        out_dir: Where the sidecars and ``manifest.json`` go.
        label_field: See :func:`~streamprune.betonindex.index_beton`.
        checksum: Record each file's SHA-256 (reads it once).
        classes: Class names by label id.
        progress: Show a progress bar.

    Returns:
        The saved manifest.

    Raises:
        ManifestError: A file is missing or not an FFCV file, or two files share a name.
    """
    jobs = _check_names(paths, out_dir)
    out_dir = _claim_out_dir(out_dir)
    entries = []
    for path, rel, index_name in tqdm(jobs, desc="index", unit="file", disable=not progress):
        index, _ = index_beton(path, label_field=label_field, name=rel)
        if checksum:
            index.sha256 = file_sha256(path)
        save_beton_index(index, os.path.join(out_dir, index_name))
        entries.append((index, rel, index_name))
    manifest = build_manifest(out_dir, entries, classes=classes, label_ext=None)
    for entry in manifest.shards:
        entry.format = "beton"
    labelled = [e[0].extra["beton"]["label_field"] for e in entries]
    manifest.label_ext = labelled[0] if labelled and len(set(labelled)) == 1 else None
    manifest.save()
    return manifest
