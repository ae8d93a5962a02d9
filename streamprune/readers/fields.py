"""Samples of MDS and LitData shards turned into their format's fields, at the readers' output.

The reader core reads every format the same way (kept byte ranges, checksums, the kept-bytes
cache) and yields ``{"__key__", "__url__", member: bytes}``; for an MDS or LitData shard the
one member is the sample's stored bytes, decoded here with the format's own decoder
(:mod:`streamprune.sampleformats`). Tar samples pass through untouched, and a manifest of tar
shards only costs nothing: :meth:`FieldDecoder.stream` returns the stream itself.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ..manifest import Manifest
from ..sampleformats import FOREIGN_FORMATS, decode_fields, sample_decoder

__all__ = ["FieldDecoder"]


class FieldDecoder:
    """Decodes the samples of a manifest's MDS and LitData shards (picklable: decoders are rebuilt per process).

    Args:
        manifest: The dataset; its shards' ``format`` and ``layout`` say how to decode.
    """

    def __init__(self, manifest: Manifest) -> None:
        self._formats = [(entry.format, entry.layout) for entry in manifest.shards]
        #: Whether any shard needs decoding (else streams pass through unchanged).
        self.active = any(fmt in FOREIGN_FORMATS for fmt, _ in self._formats)
        self._by_url = {manifest.shard_path(k): k for k in range(len(manifest.shards))} if self.active else {}
        self._decoders: dict[int, Callable[[bytes], Any] | None] = {}

    def bind(self, url: str, k: int) -> None:
        """Samples whose ``__url__`` is ``url`` come from shard ``k`` (a location the caller gave)."""
        if self.active:
            self._by_url[url] = k

    def _decoder(self, k: int) -> Callable[[bytes], Any] | None:
        try:
            return self._decoders[k]
        except KeyError:
            fmt, layout = self._formats[k]
            decode = self._decoders[k] = sample_decoder(fmt, layout) if fmt in FOREIGN_FORMATS else None
            return decode

    def decode(self, sample: dict, k: int) -> dict:
        """``sample`` of shard ``k`` as its format's fields (a tar sample unchanged)."""
        decode = self._decoder(k)
        if decode is None:
            return sample
        return decode_fields(self._formats[k][0], decode, sample)

    def __call__(self, sample: dict) -> dict:
        """``sample`` decoded, its shard found by its ``__url__``."""
        return self.decode(sample, self._by_url[sample["__url__"]])

    def stream(self, samples: Iterable[dict]) -> Iterator[dict]:
        """The samples decoded (the iterator itself when no shard needs decoding)."""
        if not self.active:
            return iter(samples)
        return map(self, samples)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_decoders"] = {}  # decoders hold the peers' objects: rebuilt in each process
        return state
