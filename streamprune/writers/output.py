"""What every writer does first: open the source and claim the output directory."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from ..errors import StreamPruneError
from ..manifest import MANIFEST_NAME
from ..sources import Sample, Source, open_source

__all__ = ["open_writer_source", "start_output_dir"]


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


def start_output_dir(out_dir: str | os.PathLike) -> str:
    """Create ``out_dir`` and remove a manifest left there, so it reads as incomplete until rewritten.

    Args:
        out_dir: The output directory.

    Returns:
        ``out_dir`` as a string.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, MANIFEST_NAME)):
        os.unlink(os.path.join(out_dir, MANIFEST_NAME))
    return out_dir
