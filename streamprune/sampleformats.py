"""Samples of other tools' shard formats, decoded by those tools' own decoders.

A MosaicML MDS shard or a LitData chunk stores each sample as one byte string (its own
size prefix, then its columns or leaves). streamprune indexes that byte string as the
sample's single member (extension :data:`RAW_MEMBER`), reads it by byte range like any
other sample, and turns it into the format's fields here, with the decoder the format's
own reader uses:

* ``mds``: ``streaming``'s ``MDSReader.decode_sample`` (every MDS encoding it knows: raw
  ``bytes``, ``str``, ``int``, the fixed-width numbers, ``ndarray``, ``pil``/``jpeg``/``png``
  images, ``json``; ``pkl`` columns are refused, as the peer refuses them unless
  ``allow_unsafe_types``);
* ``litdata``: ``litdata``'s ``PyTreeLoader.deserialize`` with the dataset's serializers
  (``bytes``, ``int``, ``str``, ``pil``/``jpeg`` images, numpy arrays and tensors, ...), so
  a sample is the pytree ``optimize`` was given (usually a dict of fields).

A shard's *layout* is what the decoder needs, copied from the format's ``index.json`` into
the manifest's shard entry (``ShardEntry.layout``): the MDS shard record, or LitData's
``config``. Decoders are built once per distinct layout and process.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any, Callable

from .errors import CompressedShardError, StreamPruneError
from .optional import require_extra

__all__ = ["FOREIGN_FORMATS", "RAW_MEMBER", "sample_decoder", "decode_fields", "field_names", "image_fields", "check_layout"]

#: Encodings (MDS) and serializers (LitData ``data_format``) whose decoded value is a PIL image.
IMAGE_ENCODINGS = ("pil", "jpeg", "png", "jpg", "webp")

#: Shard formats read through a decoder here (``tar`` samples are member dicts as stored).
FOREIGN_FORMATS = ("mds", "litdata")
#: Member extension of a foreign sample's bytes in its index (one member: the whole sample).
RAW_MEMBER = {"mds": "mds", "litdata": "litdata"}

_HINT = {
    "mds": ("streaming", "pip install mosaicml-streaming==0.13.0 (the `formats` extra; --no-deps keeps numpy as it is)"),
    "litdata": ("litdata", "pip install litdata==0.2.76 (the `formats` extra)"),
}


def _layout_key(layout: dict) -> str:
    return json.dumps(layout, sort_keys=True)


def sample_decoder(fmt: str, layout: dict) -> Callable[[bytes], Any]:
    """The function turning one sample's stored bytes into what the format's own reader returns.

    Args:
        fmt: ``"mds"`` or ``"litdata"``.
        layout: The shard's layout (see the module docstring).

    Returns:
        ``decode(data) -> sample`` (a dict of fields for MDS; LitData's pytree).

    Raises:
        MissingExtraError: The format's package is not installed.
        StreamPruneError: An unknown format, or an MDS column of an unsafe encoding (pickle).
    """
    if fmt not in FOREIGN_FORMATS:
        raise StreamPruneError(f"no sample decoder for shard format {fmt!r}; known: {', '.join(FOREIGN_FORMATS)}")
    return _cached_decoder(fmt, _layout_key(layout))


@functools.lru_cache(maxsize=64)
def _cached_decoder(fmt: str, key: str) -> Callable[[bytes], Any]:
    layout = json.loads(key)
    module, hint = _HINT[fmt]
    require_extra(module, hint, f"reading {fmt} shards")
    if fmt == "mds":
        return _mds_decoder(layout)
    return _litdata_decoder(layout)


def _mds_decoder(layout: dict) -> Callable[[bytes], dict]:
    # deferred: the optional peer package, imported only for MDS datasets
    from streaming.base.format.mds.reader import MDSReader

    reader = MDSReader.from_json("", None, copy.deepcopy(layout))
    try:
        reader.validate(allow_unsafe_types=False)
    except ValueError as exc:
        raise StreamPruneError(f"MDS shard {layout.get('raw_data', {}).get('basename')}: {exc}") from None
    return reader.decode_sample


def _litdata_decoder(config: dict) -> Callable[[bytes], Any]:
    # deferred: the optional peer package, imported only for LitData datasets
    from litdata.streaming import serializers as lit_serializers
    from litdata.streaming.config import treespec_loads
    from litdata.streaming.item_loader import PyTreeLoader

    config = copy.deepcopy(config)
    if config.get("data_spec") is not None:
        config["data_spec"] = treespec_loads(config["data_spec"])
    loader = PyTreeLoader()
    # no chunk list: the loader only needs the config to deserialize one item
    # litdata builds its default serializer table only in this helper (what its own readers
    # call); the version is pinned in the `formats` extra
    loader.setup(config, [], lit_serializers._get_serializers(None))
    return loader.deserialize


def decode_fields(fmt: str, decode: Callable[[bytes], Any], sample: dict) -> dict:
    """A reader's raw sample dict (``__key__``, ``__url__``, the raw member) as the format's fields.

    The fields come first as the format's reader returns them, then ``__key__`` and
    ``__url__`` (a field of the same name is overwritten: webdataset's meaning wins). A LitData
    item that is not a dict is returned under the field ``"item"``. ``decode`` is
    :func:`sample_decoder` of the sample's shard.
    """
    value = decode(sample[RAW_MEMBER[fmt]])
    out = dict(value) if isinstance(value, dict) else {"item": value}
    out["__key__"] = sample["__key__"]
    out["__url__"] = sample["__url__"]
    return out


def field_names(fmt: str, layout: dict) -> list[str]:
    """The top-level field names a sample of this layout has (empty when not a dict of fields)."""
    if fmt == "mds":
        return list(layout.get("column_names") or [])
    spec = layout.get("data_spec")
    try:
        spec_obj = json.loads(spec) if isinstance(spec, str) else None
        root = spec_obj[1] if isinstance(spec_obj, list) else None
        if root and root.get("type") == "builtins.dict":
            return list(json.loads(root["context"]))
    except (ValueError, TypeError, KeyError, IndexError):
        pass
    return []


def image_fields(fmt: str, layout: dict) -> list[str]:
    """The fields whose decoded value is an image (MDS ``pil``/``jpeg``/``png`` columns; LitData ``pil``/``jpeg`` leaves)."""
    if fmt == "mds":
        pairs = zip(layout.get("column_names") or [], layout.get("column_encodings") or [])
    else:
        # a flat dict's leaves are flattened in the order of its keys, which data_format follows
        pairs = zip(field_names(fmt, layout), layout.get("data_format") or [])
    return [name for name, enc in pairs if str(enc).split(":", 1)[0].lower() in IMAGE_ENCODINGS]


def check_layout(fmt: str, layout: dict, shard: str) -> None:
    """Refuse, with one clear error naming the shard, a layout whose samples cannot be read by byte range.

    Raises:
        CompressedShardError: The shard is compressed (or encrypted): its samples are not at
            fixed byte ranges of the stored object, so pruning it would save no I/O.
        StreamPruneError: A layout streamprune does not read (another LitData item loader,
            another MDS version).
    """
    if fmt == "mds":
        if layout.get("version") != 2 or layout.get("format") != "mds":
            raise StreamPruneError(f"{shard}: MDS shard of version {layout.get('version')!r}, format {layout.get('format')!r}; "
                                   "streamprune reads MDS version 2")
        if layout.get("compression") or layout.get("zip_data"):
            raise CompressedShardError(
                f"{shard}: MDS shard compressed with {layout.get('compression')!r}; a compressed shard can only be read "
                "whole, so it cannot be pruned by byte range. Rewrite the dataset without compression "
                "(MDSWriter(..., compression=None)) to read it pruned in place"
            )
        return
    if layout.get("encryption"):
        raise CompressedShardError(f"{shard}: LitData chunk is encrypted; encrypted chunks cannot be read by byte range")
    if layout.get("compression"):
        raise CompressedShardError(
            f"{shard}: LitData chunk compressed with {layout.get('compression')!r}; a compressed chunk can only be read "
            "whole, so it cannot be pruned by byte range. Rewrite it without compression "
            "(litdata.optimize(..., compression=None)) to read it pruned in place"
        )
    if layout.get("item_loader", "PyTreeLoader") != "PyTreeLoader":
        raise StreamPruneError(
            f"{shard}: LitData item loader {layout.get('item_loader')!r}; streamprune reads chunks written with the "
            "default PyTreeLoader (one item per sample)"
        )
