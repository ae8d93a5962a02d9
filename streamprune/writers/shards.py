"""Split a source into tar shards (in parallel), index them, and write the manifest."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..atomic import file_sha256
from ..engine import Engine, make_engine, recorded_options, same_options
from ..errors import ArgumentError, ManifestError, StreamPruneError
from ..indexfile import INDEX_SUFFIX, load_index, save_index
from ..manifest import Manifest, manifest_from_summaries
from ..shardindex import ShardIndex
from ..shardsummary import ClassCounts, ShardSummary, summarize_index
from ..sources import Sample, Source
from .order import WriteOrder, source_labels
from .output import open_writer_source, start_output_dir
from .tar import TarShardWriter

__all__ = ["write_shards", "shard_name", "ShardDone", "WRITE_OPTIONS_NAME", "TAR_LAYOUTS"]

#: Sample orders a tar dataset can be written in (see ``write_shards(layout=)``).
TAR_LAYOUTS = ("default", "class-sorted")

log = logging.getLogger(__name__)

_SOURCE: Source | None = None
_ORDER: WriteOrder | None = None
#: ``on_shard(k, path, summary)``: shard ``k`` (at ``path``) and its index files are complete and verified.
ShardDone = Callable[[int, str, ShardSummary], None]
#: What a shard-writing run was asked to do, in its output directory: a resumed run keeps finished shards only under the same options.
WRITE_OPTIONS_NAME = ".streamprune-shard-options.json"


def shard_name(k: int, pattern: str = "shard-{:06d}.tar") -> str:
    """Return the file name of shard ``k``."""
    return pattern.format(k)


def _set_source(source: Source | None, order: WriteOrder | None = None) -> None:
    global _SOURCE, _ORDER
    _SOURCE, _ORDER = source, order


def _write_one(out_dir: str, name: str, slots: tuple[int, int], label_ext: str | None, checksum: bool) -> ShardIndex:
    source, order = _SOURCE, _ORDER
    assert source is not None and order is not None
    positions = order.positions(*slots)
    path = os.path.join(out_dir, name)
    with TarShardWriter(path, label_ext=label_ext) as writer:
        for i in positions:
            key, files, label = source[int(i)]
            writer.write(key, files, label)
        index = writer.close(checksum=checksum)
    if len(index) != len(positions):
        raise StreamPruneError(f"{path}: {len(index)} samples written, {len(positions)} expected")
    save_index(index, path + INDEX_SUFFIX)
    return index


def _use_source(source: Source, order: WriteOrder) -> Source:
    """A worker's setup: make ``source`` and ``order`` the ones :func:`_write_one` uses (once per worker)."""
    _set_source(source, order)
    return source


def _write_task(state: Any, job: tuple[str, str, tuple[int, int], str | None, bool]) -> ShardSummary:
    """The per-shard task of :func:`write_shards`: write one shard and its index files, return its summary.

    Only the summary travels back: the driver's memory grows with the shards, not the samples.
    """
    out_dir, name = job[0], job[1]
    return summarize_index(_write_one(*job), os.path.join(out_dir, name) + INDEX_SUFFIX, name, name + INDEX_SUFFIX)


def _shard_is_complete(source: Source, order: WriteOrder, job: tuple[str, str, tuple[int, int], str | None, bool]) -> bool:
    """Whether a previous run finished this shard: its index loads and describes this shard file.

    The index must name the shard, hold as many samples as the shard should, with the first
    and last keys of its samples in the source, record the file's current size and (when
    checksums are on) the file's SHA-256, so a truncated or replaced shard is written again.
    """
    out_dir, name, slots, _, checksum = job
    positions = order.positions(*slots)
    path = os.path.join(out_dir, name)
    try:
        index = load_index(path + INDEX_SUFFIX)
        if index.shard != name or len(index) != len(positions) or int(index.shard_bytes) != os.path.getsize(path):
            return False
        if index.keys[0] != source[int(positions[0])][0] or index.keys[-1] != source[int(positions[-1])][0]:
            return False
        return not checksum or index.sha256 == file_sha256(path)
    except (OSError, ManifestError):
        return False


def write_shards(
    src: str | os.PathLike | Iterable[Sample] | Source,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = 1,
    quality: int = 95,
    image_format: str | None = None,
    split: str = "train",
    class_names: Sequence[str] | None = None,
    label_ext: str | None = "cls",
    checksum: bool = True,
    progress: bool = True,
    engine: str | Engine | None = None,
    resume: bool = False,
    on_shard: ShardDone | None = None,
    layout: str = "default",
    overwrite: bool = False,
) -> Manifest:
    """Write a source as webdataset tar shards with per-shard indexes and a manifest.

    Sample order is shuffled (seeded) before sharding by default, so every shard mixes
    classes; ``layout="class-sorted"`` then writes class after class instead. Each output shard is one task of ``engine``: written under a temporary name,
    read back and checked, and renamed, with its index, by the task itself;
    ``manifest.json`` is written last, so a directory with a manifest is complete. The
    shards are byte-identical whatever engine and however many workers write them.

    Args:
        src: A path :func:`~streamprune.sources.open_source` accepts, a :class:`Source`, or an
            iterable of ``(key, {extension: bytes}, label)`` (consumed into memory).
        out_dir: Output directory (created).
        samples_per_shard: Samples per shard (the last shard may have fewer).
        shuffle: Shuffle sample order before sharding.
        seed: Shuffle seed.
        workers: Processes (or Ray actors) writing shards in parallel.
        quality: JPEG quality for array sources.
        image_format: ``jpg`` or ``png`` for array sources.
        split: IDX split to read.
        class_names: Class names by label id (overrides the source's).
        label_ext: Extension of the label member (``None``: unlabelled).
        checksum: Record each shard's SHA-256 in the manifest.
        progress: Show a progress bar.
        engine: ``"local"`` / ``None`` (this machine's processes), ``"ray"`` (the source is
            put in Ray's object store once; a folder source's files must be visible to every
            node), or an :class:`~streamprune.engine.Engine`.
        resume: Keep the shards a previous (interrupted) run with the same options finished:
            a shard is kept when its index loads and matches the file (size and, with
            ``checksum``, SHA-256) and its first and last keys are the source's. Resuming
            trusts that the source's content did not change between the runs (the options
            and the source's size are compared; the sample bytes are not re-encoded). Shards
            of a run with other options are another dataset (see ``overwrite``).
        on_shard: Called in this thread as ``on_shard(k, path, summary)`` (a
            :class:`~streamprune.shardsummary.ShardSummary`: ``shard``, ``shard_bytes``, ...) as soon as shard ``k``
            and its index files are complete and verified, in completion order (shards kept by
            ``resume`` first), before the manifest is written; while it runs no further shard
            is started (a few per worker may be under way), and an error it raises stops the
            run. :func:`~streamprune.writers.remote.write_shards_to` uploads shards this way.
        layout: ``default`` (the shuffled order) or ``class-sorted``: each class's samples
            together (shuffled within the class), so a class-level mask keeps long runs and a
            pruned read makes a few large reads or requests; a DataLoader needs
            ``shuffle=True`` on the reader then, since a shard holds one or two classes.
        overwrite: ``out_dir`` may hold another dataset (a manifest, or shards of a run that is
            not resumed): its shards and index files are removed first (how many is logged).
            Without it such a directory is refused, so no shard the new manifest does not list
            is left behind; ``resume`` with the same options continues the run that is there.

    Returns:
        The saved manifest.

    Raises:
        ArgumentError: Bad argument (also a ``ValueError``).
        OutputExistsError: ``out_dir`` holds another dataset and ``overwrite`` is off.
        StreamPruneError: Bad source, or a shard failed verification.
    """
    if samples_per_shard < 1:
        raise ArgumentError(f"samples_per_shard={samples_per_shard}: must be at least 1")
    if workers < 1:
        raise ArgumentError(f"workers={workers}: must be at least 1")
    if layout == "page-aware":
        raise ArgumentError("layout='page-aware' is a layout for .beton files; tar shards take 'class-sorted'")
    if layout not in TAR_LAYOUTS:
        raise ArgumentError(f"layout={layout!r}: must be one of {', '.join(TAR_LAYOUTS)}")
    source = open_writer_source(src, split, image_format, quality, class_names)
    n = len(source)
    # the order is computed per shard from LAZY_FROM samples on (writers/order.py): the driver holds no array over them
    grouped = layout == "class-sorted"
    order = WriteOrder(n, shuffle, seed, (lambda: source_labels(source)) if grouped else None,
                       class_starts=getattr(source, "class_starts", None) if grouped else None)
    slots = [(i, min(i + samples_per_shard, n)) for i in range(0, n, samples_per_shard)]
    names = [shard_name(k) for k in range(len(slots))]
    options = {
        "samples": n, "samples_per_shard": samples_per_shard, "shuffle": shuffle, "seed": seed, "quality": quality,
        "image_format": image_format, "split": split, "label_ext": label_ext, "checksum": bool(checksum),
        "source": os.path.abspath(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else type(source).__name__,
        "class_names": list(class_names) if class_names else None,
        **({"layout": layout} if layout != "default" else {}),  # runs written before layouts still resume
        **({"order": "feistel"} if order.lazy else {}),  # not NumPy's permutation: an older run of this size is not resumed
    }
    same_run = resume and recorded_options(out_dir, WRITE_OPTIONS_NAME) == options
    out_dir = start_output_dir(out_dir, shard_name(0).replace("000000", "*"), overwrite=overwrite, same_run=same_run,
                               resume=resume, records=(WRITE_OPTIONS_NAME,))
    resumable = same_options(out_dir, WRITE_OPTIONS_NAME, options) and resume
    runner = make_engine(engine, workers=workers)
    tasks = [(out_dir, names[k], slot, label_ext, checksum) for k, slot in enumerate(slots)]
    bar = tqdm(total=n, desc="shard", unit="sample", disable=not progress)
    kept: dict[int, ShardSummary] = {}

    counted = ClassCounts()  # each shard's label counts added up as it arrives, not held per shard

    def finished(k: int, summary: ShardSummary) -> None:
        counted.fold(summary)
        bar.update(slots[k][1] - slots[k][0])
        if on_shard is not None:
            on_shard(k, os.path.join(out_dir, names[k]), summary)

    _set_source(source, order)
    try:
        if resumable:  # the previous run's verified shards are complete now: reported before new ones are written
            for k in range(len(tasks)):
                if _shard_is_complete(source, order, tasks[k]):
                    index_path = os.path.join(out_dir, names[k]) + INDEX_SUFFIX
                    kept[k] = summarize_index(load_index(index_path), index_path, names[k], names[k] + INDEX_SUFFIX)
                    finished(k, kept[k])
        # each worker's setup makes the source the one _write_one reads (a local process gets it by fork)
        summaries: list[ShardSummary | None] = runner.map(
            _write_task, tasks, setup=functools.partial(_use_source, source, order),
            done=(lambda k: k in kept) if resumable else None, on_result=finished, desc="shard",
        )
        summaries = [kept.get(k, summary) for k, summary in enumerate(summaries)]
    finally:
        _set_source(None)
        bar.close()
    names_in = list(class_names) if class_names else list(getattr(source, "class_names", []) or []) or None
    manifest = manifest_from_summaries(out_dir, [s for s in summaries if s is not None], classes=names_in, label_ext=label_ext,
                                       class_counts=counted.total)
    if manifest.num_samples != n:
        raise StreamPruneError(f"{out_dir}: {manifest.num_samples} samples in the shards, {n} in the source")
    manifest.save()
    log.info("wrote %d samples in %d shards to %s", n, len(names), out_dir)
    return manifest
