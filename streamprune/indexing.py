"""Indexing shards written by anyone: one entry point for every shard format.

:func:`index_files` looks at each file's content (an FFCV header, or a tar) and hands the
files to :func:`index_shards` (tar) or :func:`index_betons` (``.beton``); each writes one index
sidecar per file and the ``manifest.json`` last, so an interrupted run leaves no manifest that
looks complete.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from tqdm.auto import tqdm

from . import storage
from .atomic import file_sha256
from .betonindex import index_beton, looks_like_beton, save_beton_index
from .engine import Engine, ThreadEngine, make_engine, same_options
from .errors import ArgumentError, LabelError, ManifestError, redact
from .foreignindex import index_foreign_shard, open_foreign_dataset, require_foreign
from .indexfile import INDEX_SUFFIX, companion_path, load_index, save_index
from .manifest import MANIFEST_NAME, Manifest, build_manifest, manifest_from_summaries
from .shardindex import ShardIndex
from .shardsummary import ClassCounts, ShardSummary, summarize_index
from .tarindex import index_tar

__all__ = ["index_files", "index_shards", "index_betons", "index_foreign", "is_foreign", "is_beton", "shard_files", "AUTO_LABELS", "DEFAULT_LABEL_EXT"]

log = logging.getLogger(__name__)

#: ``label_ext`` value meaning: labels if every sample has a ``.cls`` member, none if no sample has.
AUTO_LABELS = "auto"
#: The label member webdataset's own examples use; what ``auto`` looks for.
DEFAULT_LABEL_EXT = "cls"
#: The options an index pass ran with, in its output directory: a resumed pass reuses sidecars only under the same options.
INDEX_OPTIONS_NAME = ".streamprune-index-options.json"


def is_beton(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an FFCV ``.beton`` file: by its header, whatever its name.

    A file named ``*.beton`` counts too, so that a damaged one gets the FFCV reader's error
    (which names what is wrong with the header) rather than a tar parser's.
    """
    return os.fspath(path).endswith(".beton") or looks_like_beton(path)


def shard_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The shard files ``paths`` name: files as given, a directory as its ``*.tar`` files, sorted by name.

    A directory without tar files gives its ``*.beton`` files instead.

    Args:
        paths: Shard files and directories, in manifest order.

    Returns:
        The files, a directory's in place of it.

    Raises:
        ManifestError: A directory holds neither ``*.tar`` nor ``*.beton`` files.
    """
    out: list[str] = []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            out.append(path)
            continue
        names = sorted(os.listdir(path))
        found = [n for n in names if n.endswith(".tar")] or [n for n in names if n.endswith(".beton")]
        found = [n for n in found if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise ManifestError(f"{path}: a directory with no *.tar shards (or .beton files) in it; pass the shard files themselves")
        out.extend(os.path.join(path, n) for n in found)
    return out


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
    engine: str | Engine | None = None,
    resume: bool = False,
    key_field: str | None = None,
) -> Manifest:
    """Index tar shards, ``.beton`` files or an MDS/LitData dataset (chosen by content) and write their manifest.

    Args:
        paths: Files to index, in manifest order; all tar or all ``.beton``. A directory stands
            for its ``*.tar`` files sorted by name (see :func:`shard_files`). One MDS or LitData
            ``index.json``, or a directory holding one, is that dataset (see :func:`index_foreign`).
        out_dir: Where the sidecars and ``manifest.json`` go.
        label_ext: Tar: extension of the integer label member (every sample must have it),
            ``"auto"`` (see :func:`index_shards`), or ``None`` (unlabelled).
        label_field: ``.beton``, MDS, LitData: field holding the integer label (``"auto"``), or ``None``.
        checksum: Record each file's SHA-256 (reads every byte once).
        classes: Class names by label id.
        progress: Show a progress bar.
        workers: Tar shards indexed in parallel processes (or Ray actors).
        sample_checksums: Tar: record each sample's checksum (see :func:`index_shards`).
        engine: Where tar shards are indexed (see :func:`index_shards`); ``.beton`` files are
            indexed in this process.
        resume: Tar: keep index sidecars a previous run finished (see :func:`index_shards`).
        key_field: MDS, LitData: field holding each sample's key (see :func:`index_foreign`).

    Returns:
        The saved manifest.

    Raises:
        ManifestError: No files, a missing file, or tar and ``.beton`` files mixed.
        ArgumentError: ``key_field`` for tar shards or ``.beton`` files (their keys are their own).
    """
    if not paths:
        raise ManifestError("no shard files given to index")
    if len(paths) == 1 and is_foreign(paths[0]):
        return index_foreign(
            paths[0], out_dir, label_field=label_field, checksum=checksum, classes=classes, progress=progress,
            sample_checksums=sample_checksums, workers=workers, engine=engine, key_field=key_field,
        )
    if key_field is not None:
        raise ArgumentError(f"key_field={key_field!r} (--key-field) is for MDS and LitData datasets; {os.fspath(paths[0])} is "
                            "not one (tar and .beton samples carry their own keys)")
    paths = shard_files(paths)
    kinds = [is_beton(p) for p in paths]
    if any(kinds) and not all(kinds):
        first = os.fspath(paths[kinds.index(True)])
        raise ManifestError(f"{first} is an FFCV .beton file but others are tar shards: give either tar shards or .beton files, not both")
    if all(kinds):
        return index_betons(paths, out_dir, label_field=label_field, checksum=checksum, classes=classes, progress=progress)
    return index_shards(
        paths, out_dir, label_ext=label_ext, checksum=checksum, classes=classes, progress=progress, workers=workers,
        sample_checksums=sample_checksums, engine=engine, resume=resume,
    )


def _check_names(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Check the files exist and have distinct names; return ``(path, relative name, index name)``."""
    jobs = []
    seen: set[str] = set()
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ManifestError(f"{path}: shard not found")
        if os.path.isdir(path):
            raise ManifestError(f"{path}: a directory, not a shard file; pass its shards ({os.path.join(path, '*.tar')}) or give it to index_files")
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


def _index_task(state: Any, job: tuple[str, str, str | None, bool, str, bool]) -> ShardSummary:
    """The per-shard task of :func:`index_shards`: index one tar, write its sidecars, return its summary.

    Only the summary travels back: the driver's memory grows with the shards, not the samples.
    """
    index = _index_tar_file(*job)
    return summarize_index(index, job[4], job[1], os.path.basename(job[4]))


def _index_is_current(job: tuple[str, str, str | None, bool, str, bool]) -> bool:
    """Whether a previous run's sidecar for this shard can be kept.

    It must load, name this shard, record the shard's current size, carry a SHA-256 exactly
    when checksums are asked for, and be newer than the shard file (a shard rewritten after
    it was indexed is indexed again). The options the run used are checked separately
    (:data:`INDEX_OPTIONS_NAME`).
    """
    path, rel, _, checksum, index_path, sample_checksums = job
    try:
        if not os.path.isfile(companion_path(index_path)) or os.stat(index_path).st_mtime_ns < os.stat(path).st_mtime_ns:
            return False
        index = load_index(index_path)
    except (OSError, ManifestError):
        return False
    return (
        index.shard == rel
        and int(index.shard_bytes) == os.path.getsize(path)
        and bool(index.sha256) == bool(checksum)
        and (index.checksums is not None) == bool(sample_checksums)
    )


def _settle_auto_labels(summaries: Sequence[ShardSummary]) -> str | None:
    """Decide what ``label_ext="auto"`` found: every sample labelled, none, or an error for some.

    Returns:
        The label extension the manifest records (``None`` when no sample has a label).

    Raises:
        LabelError: Some samples have the label member and others do not (names the first without).
    """
    total = sum(s.samples for s in summaries)
    labelled = total - sum(s.unlabelled for s in summaries)
    if labelled == total:
        return DEFAULT_LABEL_EXT
    if labelled == 0:
        log.warning(
            "no sample has a .%s member: indexed without labels (name the label member with --label-ext)",
            DEFAULT_LABEL_EXT,
        )
        return None
    summary = next(s for s in summaries if s.unlabelled)
    raise LabelError(
        f"{summary.shard}: sample {summary.first_unlabelled!r} has no .{DEFAULT_LABEL_EXT} member, but {labelled} of {total} samples have one; "
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
    engine: str | Engine | None = None,
    resume: bool = False,
) -> Manifest:
    """Index existing tar shards written by anyone and write their manifest.

    Index sidecars go to ``out_dir`` as ``<shard basename>.index.json``; shard paths are
    recorded relative to ``out_dir`` when possible. Each shard is one task of ``engine``
    (this process, ``workers`` parallel processes, or Ray actors), which writes the shard's
    sidecar itself; the sidecars and the manifest are the same whatever runs them.

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
        workers: Processes (or Ray actors) indexing shards in parallel.
        sample_checksums: Record each sample's checksum in its index (reads every member's
            data once more), so readers can verify samples (``verify=True``).
        engine: ``"local"`` / ``None`` (this machine's processes), ``"ray"``, or an
            :class:`~streamprune.engine.Engine`; its :attr:`~streamprune.engine.Engine.reports`
            say how many shards were indexed and how many kept.
        resume: Keep the sidecars a previous (interrupted) run with the same options wrote
            when they still describe their shard (same name and size, sidecar newer than the
            shard): a rerun indexes only the remaining shards.

    Returns:
        The saved manifest.

    Raises:
        ValueError: ``workers`` is below 1, or an unknown engine.
        ManifestError: A shard is missing, or two shards share a file name.
        LabelError: A sample lacks the label member (see ``label_ext``) or its label is not an integer.
    """
    if workers < 1:
        raise ArgumentError(f"workers={workers}: must be at least 1")
    jobs = _check_names(shards, out_dir)
    runner = make_engine(engine, workers=workers)
    out_dir = _claim_out_dir(out_dir)
    tasks = [(path, rel, label_ext, checksum, os.path.join(out_dir, index_name), sample_checksums) for path, rel, index_name in jobs]
    options = {"label_ext": label_ext, "checksum": bool(checksum), "sample_checksums": bool(sample_checksums)}
    resumable = same_options(out_dir, INDEX_OPTIONS_NAME, options) and resume
    with tqdm(total=len(jobs), desc="index", unit="shard", disable=not progress) as bar:
        counted = ClassCounts()  # each shard's label counts added up as it arrives, not held per shard

        def arrived(k: int, summary: ShardSummary) -> None:
            counted.fold(summary)
            bar.update(1)

        summaries: list[ShardSummary | None] = runner.map(
            _index_task, tasks, done=(lambda k: _index_is_current(tasks[k])) if resumable else None,
            on_result=arrived, desc="index",
        )
        for k, summary in enumerate(summaries):
            if summary is None:  # kept from the previous run: summarised here, one index at a time
                index_path = tasks[k][4]
                summaries[k] = counted.fold(summarize_index(load_index(index_path), index_path, jobs[k][1], jobs[k][2]))
                bar.update(1)
    done = [s for s in summaries if s is not None]
    if label_ext == AUTO_LABELS:
        label_ext = _settle_auto_labels(done)
    manifest = manifest_from_summaries(out_dir, done, classes=classes, label_ext=label_ext, class_counts=counted.total)
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


def is_foreign(location: str | os.PathLike) -> bool:
    """Whether ``location`` names an MDS or LitData dataset: a local ``index.json`` of one (or its directory), or a URL ending in ``index.json``."""
    location = os.fspath(location)
    if storage.is_remote(location):
        return storage.basename(location) == "index.json"
    path = location if os.path.basename(location) == "index.json" else os.path.join(location, "index.json")
    return os.path.isfile(path) and open_foreign_dataset(path) is not None


def _foreign_task(state: Any, job: tuple) -> ShardIndex:
    """The per-shard task of :func:`index_foreign`: index one shard, write its sidecar."""
    fmt, shard, name, label_field, checksum, sample_checksums, storage_options, index_path, key_field = job
    index = index_foreign_shard(fmt, shard, name, label_field=label_field, checksum=checksum,
                                sample_checksums=sample_checksums, storage_options=storage_options, key_field=key_field)
    save_index(index, index_path)
    return index


def index_foreign(
    location: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    label_field: str | None = "auto",
    checksum: bool = True,
    classes: list[str] | None = None,
    progress: bool = True,
    sample_checksums: bool = True,
    storage_options: dict | None = None,
    workers: int = 1,
    engine: str | Engine | None = None,
    key_field: str | None = None,
) -> Manifest:
    """Index a MosaicML MDS or LitData dataset in place (local or at a URL) and write its manifest.

    The format is detected from the dataset's ``index.json``; each shard's offset table gives
    every sample's byte range (see :mod:`~streamprune.foreignindex`: keys are global
    positions). Shards are not copied: the manifest names them where they are (relative to
    ``out_dir`` when local, as URLs when remote).

    Args:
        location: The dataset's ``index.json``, or the directory or URL prefix holding it.
        out_dir: Local directory for the index sidecars and ``manifest.json``.
        label_field: Field holding integer labels; ``"auto"``: ``cls`` or ``label`` when the
            dataset has such a field, else none; ``None``: no labels.
        checksum: Record each shard's SHA-256 and check the digests ``index.json`` records.
        classes: Class names by label id.
        progress: Show a progress bar.
        sample_checksums: Record per-sample checksums (readers verify remote samples with them).
        storage_options: fsspec options for a URL.
        workers: Shards indexed at once (threads for a URL, processes for local files).
        engine: Where the per-shard tasks run (see :func:`index_shards`).
        key_field: Field whose value is each sample's key (e.g. ``uid``, so that DataComp uid
            lists match by key); ``None``: keys are global positions. Every sample is read.

    Returns:
        The saved manifest.

    Raises:
        StreamPruneError: No MDS or LitData ``index.json`` at ``location``.
        ArgumentError: ``key_field`` is not a field, or a sample's value is not a key.
        DuplicateKeyError: Two samples have the same ``key_field`` value.
        CompressedShardError: A shard is compressed or encrypted (names it; says how to fix it).
        IndexMismatchError: A shard disagrees with ``index.json`` (size, count, recorded digest).
        LabelError: The label field is missing or not an integer.
    """
    dataset = require_foreign(location, storage_options)
    field_name = dataset.label_field(label_field)
    key_field = dataset.key_field(key_field)
    out_dir = _claim_out_dir(out_dir)
    names = [storage.basename(s.location) for s in dataset.shards]
    if len(set(names)) != len(names):
        raise ManifestError(f"{redact(dataset.index_json)}: two shards share a file name; their index files would clash")
    rels = [s.location if storage.is_remote(s.location) else os.path.relpath(os.path.abspath(s.location), os.path.abspath(out_dir))
            for s in dataset.shards]
    for rel in rels:
        if redact(rel) != rel:
            raise ManifestError(f"{rel}: the manifest would record this URL with its credentials; give them in storage_options")
    tasks = [(dataset.format, shard, rel, field_name, checksum, sample_checksums, storage_options,
              os.path.join(out_dir, name + INDEX_SUFFIX), key_field) for shard, rel, name in zip(dataset.shards, rels, names)]
    remote = storage.is_remote(dataset.index_json)
    # threads for shards at URLs: their time is spent waiting on the network
    runner = make_engine(engine, workers=workers) if engine is not None or not remote else ThreadEngine(max(workers, 4))
    with tqdm(total=len(tasks), desc="index", unit="shard", disable=not progress) as bar:
        indexes = runner.map(_foreign_task, tasks, on_result=lambda k, _: bar.update(1), desc="index")
    entries = [(index, rel, name + INDEX_SUFFIX) for index, rel, name in zip(indexes, rels, names)]
    manifest = build_manifest(out_dir, entries, classes=classes, label_ext=field_name)
    for entry, shard in zip(manifest.shards, dataset.shards):
        entry.format = dataset.format
        entry.layout = shard.layout
    manifest.label_ext = field_name
    manifest.save()
    log.info("indexed %s dataset %s: %d shards, %d samples", dataset.format, redact(dataset.index_json), len(tasks),
             manifest.num_samples)
    return manifest

