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
    "ChecksumError",
    "OutputExistsError",
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


class OutputExistsError(StreamPruneError):
    """An output directory (or URL prefix) already holds another dataset, and overwriting it was not asked for."""


class LabelError(StreamPruneError):
    """A sample's label is missing or not an integer."""


class DuplicateKeyError(StreamPruneError):
    """The same sample key occurs twice in a shard or dataset."""


class ChecksumError(StreamPruneError):
    """A sample's bytes read from a shard do not match the checksum its index recorded.

    Attributes:
        shard: Path of the shard.
        key: The sample's key.
        start: First byte of the sample's range in the shard (headers included).
        end: One past its last byte.
    """

    def __init__(self, message: str, shard: str = "", key: str = "", start: int = -1, end: int = -1) -> None:
        super().__init__(message)
        self.shard, self.key, self.start, self.end = shard, key, start, end

    def __reduce__(self):
        # keep the attributes when the error crosses a process boundary (DataLoader workers)
        return (type(self), (str(self.args[0]) if self.args else "", self.shard, self.key, self.start, self.end))
