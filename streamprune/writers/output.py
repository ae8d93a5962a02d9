"""What every writer does first: open the source and claim the output directory."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from typing import Iterable, Sequence

from ..atomic import remove_stale_temps
from ..errors import ManifestError, OutputExistsError, StorageError, StreamPruneError
from ..indexfile import INDEX_SUFFIX, companion_path
from ..manifest import MANIFEST_NAME, Manifest
from ..shardsummary import keyhash_path
from ..sources import Sample, Source, open_source

__all__ = ["open_writer_source", "start_output_dir"]

log = logging.getLogger(__name__)


def open_writer_source(
    src: str | os.PathLike | Iterable[Sample] | Source,
    split: str,
    image_format: str | None,
    quality: int,
    class_names: Sequence[str] | None,
) -> Source:
    """Open ``src`` for writing and refuse an empty one.

    Args:
        src: A :class:`Source`, a path :func:`~streamprune.sources.open_source` accepts, or an
            iterable of ``(key, {extension: bytes}, label)``.
        split: IDX split to read.
        image_format: ``jpg`` or ``png`` for array sources.
        quality: JPEG quality for array sources.
        class_names: Class names by label id (overrides the source's).

    Returns:
        The source.

    Raises:
        StreamPruneError: The source has no samples (or cannot be opened).
    """
    if isinstance(src, Source) and not isinstance(src, (str, os.PathLike)):
        source = src
    else:
        source = open_source(src, split=split, fmt=image_format, quality=quality, class_names=class_names)
    if len(source) == 0:
        raise StreamPruneError(f"{src!r}: source has no samples")
    return source


def start_output_dir(
    out_dir: str | os.PathLike,
    shard_pattern: str,
    *,
    overwrite: bool = False,
    same_run: bool = False,
    resume: bool | None = None,
    records: Sequence[str] = (),
) -> str:
    """Claim ``out_dir``: create it, refuse or remove another dataset there, remove stale temporaries.

    A directory that holds a dataset (``manifest.json``) or shards of this writer without one
    (an unfinished run) is another dataset unless ``same_run`` (a resumed run with the same
    options, which keeps its finished shards). Writing over it could leave shards that the new
    manifest does not list, and would invalidate masks made for it, so it is refused unless
    ``overwrite``; then its shards and index files (those the old manifest lists inside
    ``out_dir``, and every file of this writer's names) are removed first, and how many is
    logged. Shards the old manifest lists outside ``out_dir`` are left alone.

    The manifest goes before anything is written, so the directory reads as incomplete until
    it is rewritten. Temporaries that a killed run of the same writer left (its shards', index
    files' and manifest's ``*.tmp-<pid>`` names, of processes that are gone) are removed.

    Args:
        out_dir: The output directory.
        shard_pattern: Glob of the shard file names this writer writes (``shard-*.tar``).
        overwrite: Replace another dataset found there (``--overwrite``).
        same_run: The caller resumes the run whose shards are there (same options).
        resume: Whether the caller was asked to resume (``None``: this writer cannot resume);
            only for the refusal's wording.
        records: Other files of this writer there (its options record), removed with the old
            dataset by ``overwrite``.

    Returns:
        ``out_dir`` as a string.

    Raises:
        OutputExistsError: ``out_dir`` holds another dataset and ``overwrite`` is off.
        StorageError: ``out_dir`` cannot be created (a file in the way, no permission).
    """
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission: name the directory the user gave
        raise StorageError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc})") from exc
    own = (shard_pattern, shard_pattern + INDEX_SUFFIX, companion_path(shard_pattern + INDEX_SUFFIX), MANIFEST_NAME)
    for path in remove_stale_temps(out_dir, (*own, keyhash_path(shard_pattern + INDEX_SUFFIX))):
        log.info("removed %s, left by a run that did not finish", path)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    found = sorted(glob.glob(os.path.join(glob.escape(out_dir), shard_pattern)))
    if (os.path.exists(manifest_path) or found) and not same_run:
        if not overwrite:
            raise OutputExistsError(f"{out_dir}: {_what_is_there(manifest_path, found)}; {_refusal_hint(resume)}")
        shards, indexes = _remove_dataset(out_dir, own[:3], records)
        log.warning("%s: --overwrite: removed the previous dataset's %d shard(s) and %d index file(s)", out_dir, shards, indexes)
    if os.path.exists(manifest_path):
        os.unlink(manifest_path)
    return out_dir


def _refusal_hint(resume: bool | None) -> str:
    """What a user can do about a refused output directory."""
    hint = "write into an empty directory, "
    if resume:
        hint = "it was written with other options than this run's, so --resume cannot continue it; " + hint
    elif resume is not None:
        hint += "finish that same run with --resume (resume=True), "
    return hint + "or pass --overwrite (overwrite=True) to remove its shards and index files first"


def _what_is_there(manifest_path: str, shards: list[str]) -> str:
    """Words for the dataset found in an output directory: its manifest and size, or its shard files."""
    if os.path.exists(manifest_path):
        try:
            old = Manifest.load(manifest_path)
        except ManifestError:
            return f"already holds another dataset (an unreadable manifest {manifest_path})"
        return f"already holds another dataset: {manifest_path} ({_shards(len(old.shards))}, {old.num_samples} samples)"
    return (f"already holds {len(shards)} shard file(s) of another run with no manifest (unfinished, or written with "
            f"other options), e.g. {os.path.basename(shards[0])}")


def _shards(n: int) -> str:
    return f"{n} shard" if n == 1 else f"{n} shards"


def _remove_dataset(out_dir: str, own: Sequence[str], records: Sequence[str]) -> tuple[int, int]:
    """Remove the dataset in ``out_dir``: the files its manifest lists there, and this writer's own.

    Returns:
        Shard files and index files (sidecars and companions) removed.
    """
    shards: set[str] = set()
    indexes: set[str] = set()
    root = os.path.abspath(out_dir)
    # paths are normalised, never resolved: a symbolic link there is removed itself, not what it points to
    try:
        old = Manifest.load(out_dir) if os.path.exists(os.path.join(out_dir, MANIFEST_NAME)) else None
    except ManifestError:
        old = None  # unreadable: this writer's own names are still removed below
    for entry in old.shards if old is not None else ():
        for path, kind in ((old.resolve(entry.name), shards), (old.resolve(entry.index), indexes),
                           (companion_path(old.resolve(entry.index)), indexes)):
            path = os.path.abspath(path)
            if path.startswith(root + os.sep) and (os.path.isfile(path) or os.path.islink(path)):  # shards elsewhere are not this directory's
                kind.add(path)
    shard_glob, *index_globs = own
    shards.update(os.path.abspath(p) for p in glob.glob(os.path.join(glob.escape(root), shard_glob)))
    for pattern in index_globs:
        indexes.update(os.path.abspath(p) for p in glob.glob(os.path.join(glob.escape(root), pattern)))
    # key-hash files are derived from the index sidecars (not counted): they go with them
    derived = {keyhash_path(p) for p in indexes if p.endswith(".json")}
    for path in [*shards, *indexes, *derived, *(os.path.join(root, r) for r in records)]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return len(shards), len(indexes)
