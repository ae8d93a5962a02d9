"""What every writer does first: open the source and claim the output directory."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

from ..atomic import remove_stale_temps
from ..errors import StreamPruneError
from ..indexfile import INDEX_SUFFIX, companion_path
from ..manifest import MANIFEST_NAME
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


def start_output_dir(out_dir: str | os.PathLike, shard_pattern: str) -> str:
    """Claim ``out_dir``: create it, remove a manifest left there, and stale temporaries.

    The manifest goes first, so the directory reads as incomplete until it is rewritten.
    Temporaries that a killed run of the same writer left (its shards', index files' and
    manifest's ``*.tmp-<pid>`` names, of processes that are gone) are removed; no other file is.

    Args:
        out_dir: The output directory.
        shard_pattern: Glob of the shard file names this writer writes (``shard-*.tar``).

    Returns:
        ``out_dir`` as a string.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    own = (shard_pattern, shard_pattern + INDEX_SUFFIX, companion_path(shard_pattern + INDEX_SUFFIX), MANIFEST_NAME)
    for path in remove_stale_temps(out_dir, own):
        log.info("removed %s, left by a run that did not finish", path)
    if os.path.exists(os.path.join(out_dir, MANIFEST_NAME)):
        os.unlink(os.path.join(out_dir, MANIFEST_NAME))
    return out_dir
