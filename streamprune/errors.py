"""Exceptions raised by streamprune.

Every error names the file, shard, sample or argument that is wrong, so a user can act on
the message alone, and never the credentials a location may carry: a URL's userinfo
(``https://user:secret@host/...``) is replaced by ``***`` in every message (:func:`redact`).
"""

from __future__ import annotations

import re

__all__ = [
    "redact",
    "StreamPruneError",
    "ArgumentError",
    "MissingKeysError",
    "UnknownNameError",
    "StorageError",
    "TarFormatError",
    "IndexMismatchError",
    "MaskMismatchError",
    "ManifestError",
    "LabelError",
    "DuplicateKeyError",
    "CompressedShardError",
    "ChecksumError",
    "CacheError",
    "UnsafeLocationError",
    "OutputExistsError",
]

#: A URL's userinfo: what follows ``scheme://`` up to the last ``@`` before the host's end.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``.

    ``https://user:secret@host/ds/x.tar`` becomes ``https://***@host/ds/x.tar``; text without
    such a URL is returned unchanged. Works on a single URL or on a whole message that quotes
    several (an HTTP client's error text), so it is the one place credentials are scrubbed from
    error messages, log lines and the locations written into files.

    Args:
        text: A URL, a path or any message.

    Returns:
        The text without credentials.
    """
    if "@" not in text:  # the common case, without a regex
        return text
    return _USERINFO.sub(r"\g<scheme>***@", text)


class StreamPruneError(Exception):
    """Base class of every error streamprune raises on bad input.

    Its message never holds credentials: the userinfo of any URL in a string argument is
    replaced by ``***`` (:func:`redact`) however the message was built.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args), **kwargs)

    def __str__(self) -> str:
        # The message as written, also where a second base (KeyError, OSError) would format it
        # otherwise (KeyError quotes it; OSError shows errno fields).
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ArgumentError(StreamPruneError, ValueError):
    """An argument is out of range, not one of its choices, or does not go with another one.

    Also a :class:`ValueError`, as Python code expects of a bad argument value; the message
    names the argument (``ratio=1.0: must be in [0, 1)``).
    """


class MissingKeysError(StreamPruneError, KeyError):
    """Sample keys (or uids, class names) were asked for that the dataset does not have.

    Also a :class:`KeyError`, as Python code expects of a failed lookup; unlike a plain
    ``KeyError`` its text is the message itself, not its quoted repr.
    """


class UnknownNameError(StreamPruneError, KeyError):
    """A name looked up in a fixed table is not there: a checksum algorithm an index names that
    this installation does not have. Also a :class:`KeyError`; its text is the message."""


class StorageError(StreamPruneError, OSError):
    """A file or object cannot be read or written as asked: missing, shorter than its index
    says, a directory where a file belongs, or refused by the store. Names the path or URL.

    Also an :class:`OSError`. :class:`streamprune.storage.RemoteError` (a URL) and
    :class:`streamprune.storage.LocalReadError` (a local file) are the two kinds.
    """


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
        self.shard, self.key, self.start, self.end = redact(shard), key, start, end

    def __reduce__(self):
        # keep the attributes when the error crosses a process boundary (DataLoader workers)
        return (type(self), (str(self.args[0]) if self.args else "", self.shard, self.key, self.start, self.end))


class CacheError(StreamPruneError):
    """A kept-bytes cache cannot be used: its directory is not writable, or an argument is wrong."""
class UnsafeLocationError(ManifestError):
    """A manifest read from a URL names a file outside its own prefix and the base the user gave.

    A manifest downloaded from a URL may name shards and indexes relative to itself (or to the
    ``base`` the caller passed), or as URLs on its own host or the base's; an absolute local
    path, a ``file://`` URL, another host or a ``..`` that climbs out of the prefix is refused,
    so a downloaded manifest cannot make a training job read local files or internal endpoints
    into its samples. ``allow_foreign_locations=True`` (``--allow-foreign-locations``) accepts
    them for a manifest the user trusts.

    Attributes:
        manifest: The manifest's URL (credentials redacted).
        entry: The offending name, as the manifest records it.
        reason: Why it is refused.
    """

    def __init__(self, message: str, manifest: str = "", entry: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.manifest, self.entry, self.reason = redact(manifest), redact(entry), reason

    def __reduce__(self):
        # keep the attributes when the error crosses a process boundary (DataLoader workers)
        return (type(self), (str(self.args[0]) if self.args else "", self.manifest, self.entry, self.reason))
