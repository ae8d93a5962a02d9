"""``write_dataset``: the one call that shards a source, to a directory or a URL prefix, as tar shards or FFCV files.

It picks the writer (:func:`~streamprune.writers.remote.write_shards_to` for tar shards, local
or uploaded; :func:`~streamprune.writers.beton.write_beton` for ``.beton`` files) and refuses
what the chosen writer cannot do; each writer checks its own arguments (a ``.beton`` file is
written to local disk only, a layout belongs to one format).
"""

from __future__ import annotations

import os
from typing import Any

from ..engine import Engine
from ..errors import ArgumentError
from ..manifest import Manifest
from .beton import write_beton
from .remote import write_shards_to

__all__ = ["FORMATS", "write_dataset"]

#: What ``write_dataset(format=)`` writes.
FORMATS = ("tar", "beton")
#: Samples per tar shard when none is given (a ``.beton`` dataset is one file unless told otherwise).
DEFAULT_SAMPLES_PER_SHARD = 1000


def write_dataset(
    src: Any,
    out: str | os.PathLike,
    *,
    format: str = "tar",  # noqa: A002 - the user-facing name (--format)
    samples_per_shard: int | None = None,
    workers: int = 1,
    engine: str | Engine | None = None,
    resume: bool = False,
    storage_options: dict | None = None,
    write_mode: str = "smart",
    max_resolution: int | None = None,
    **options: Any,
) -> Manifest:
    """Shard ``src`` into ``out`` (a directory, or for tar shards a URL prefix) and write its manifest.

    Args:
        src: What :func:`~streamprune.writers.write_shards` accepts (a path, a source, samples).
        out: Output directory, or URL prefix (``s3://bucket/ds``) for tar shards, each uploaded
            as soon as it is written and the manifest last.
        format: ``tar`` (webdataset shards) or ``beton`` (FFCV files; the ``ffcv`` extra).
        samples_per_shard: Samples per shard (default 1000) or per ``.beton`` file (default: one file).
        workers: Shards written in parallel (``.beton``: FFCV writer processes).
        engine: Where tar shards are written (``local``, ``ray`` or an :class:`~streamprune.engine.Engine`).
        resume: Tar: keep the shards an interrupted run with the same options finished.
        storage_options: fsspec options for a URL ``out``.
        write_mode: ``.beton``: how images are stored (``raw``, ``jpg``, ``smart``).
        max_resolution: ``.beton``: downscale so the longer side is at most this.
        **options: Options both writers take (``shuffle``, ``seed``, ``quality``,
            ``image_format``, ``split``, ``layout``, ``checksum``, ``progress``, ``overwrite``, ...).

    Returns:
        The saved manifest.

    Raises:
        ArgumentError: An unknown format, an engine other than this machine's or ``resume``
            for ``.beton`` files (FFCV writes each file with its own processes), or what the
            writer refuses (a ``.beton`` URL, a layout of the other format).
        OutputExistsError: ``out`` holds another dataset and ``overwrite`` is off.
    """
    if format not in FORMATS:
        raise ArgumentError(f"format={format!r}: must be one of {', '.join(FORMATS)}")
    if format == "beton":
        if resume or _engine_name(engine) != "local":
            raise ArgumentError("engine='ray' and resume are for tar shards; FFCV writes one .beton file with its own processes")
        return write_beton(src, out, samples_per_file=samples_per_shard, workers=workers, write_mode=write_mode,
                           max_resolution=max_resolution, **options)
    if write_mode != "smart" or max_resolution is not None:
        raise ArgumentError("write_mode and max_resolution are options of .beton files (format='beton')")
    return write_shards_to(src, os.fspath(out), storage_options=storage_options,
                           samples_per_shard=samples_per_shard or DEFAULT_SAMPLES_PER_SHARD, workers=workers,
                           engine=engine, resume=resume, **options)


def _engine_name(engine: str | Engine | None) -> str:
    """``local`` for ``None``/``"local"``/a local engine, else the engine's name."""
    if engine is None:
        return "local"
    return engine if isinstance(engine, str) else engine.name
