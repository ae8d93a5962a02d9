"""Exceptions raised by streamprune.

Every error names the file, shard, sample or argument that is wrong, so a user can act on
the message alone.
"""

from __future__ import annotations

__all__ = [
    "StreamPruneError",
    "TarFormatError",
    "IndexMismatchError",
    "MaskMismatchError",
    "ManifestError",
    "LabelError",
    "DuplicateKeyError",
    "CompressedShardError",
]


class StreamPruneError(Exception):
    """Base class of every error streamprune raises on bad input."""


class TarFormatError(StreamPruneError):
    """A tar shard is truncated, corrupt or uses a feature that cannot be read by byte range."""


class CompressedShardError(TarFormatError):
    """A gzip-compressed shard was given where byte-range reads are required."""


class ManifestError(StreamPruneError):
    """A manifest or index file is missing, unreadable or inconsistent."""


class IndexMismatchError(ManifestError):
    """An index does not describe the shard file it sits beside (rewritten or replaced shard)."""


class MaskMismatchError(StreamPruneError):
    """A keep mask was made for a different dataset, shard or index."""


class LabelError(StreamPruneError):
    """A sample's label is missing or not an integer."""


class DuplicateKeyError(StreamPruneError):
    """The same sample key occurs twice in a shard or dataset."""
