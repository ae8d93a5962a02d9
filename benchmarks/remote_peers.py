"""The remote suite's peers: the same images in each peer's own format, and each peer's reader.

Each peer is set up as its documentation shows, reading the same shards (or its own copy of the
same images) from the same nginx store as streamprune:

* ``wds``: ``wds.WebDataset(["http://.../shard-000000.tar", ...])``, webdataset's own remote
  mode (one ``curl`` stream per shard; DataLoader workers split the shards).
* ``mosaic``: MosaicML streaming. The images written once with ``MDSWriter`` (its default shard
  size, ``size_limit=1 << 26``, no compression); read with ``StreamingDataset(remote="s3://...",
  local=<fresh dir>, batch_size=...)`` in a plain DataLoader (its ``StreamingDataLoader`` adds
  only mid-epoch resumption, and counts samples by ``len(batch[0])``, which the suite's
  collate, returning counts, does not support). Its S3 client is boto3,
  pointed at nginx by ``S3_ENDPOINT_URL`` (the variable its docs name); an IP endpoint makes
  botocore address buckets path-style. Its second epoch reads the shards it cached in ``local``.
* ``litdata``: LitData. The images written once with ``litdata.optimize(chunk_bytes="64MB")``
  (its README's chunk size); read with ``StreamingDataset("s3://...", cache_dir=<fresh dir>,
  storage_options={"endpoint_url": ...})`` (its documented way to name a custom S3 endpoint) and
  its ``StreamingDataLoader``. LitData 0.2.76 fetches chunks with obstore, built with fixed
  client options that do not allow plain ``http://``; the store is plain HTTP on loopback (a
  real endpoint is HTTPS), so :func:`litdata_dataset` adds ``allow_http`` to those options and
  changes nothing else. Its second epoch reads the chunks it cached.
* The MDS and LitData arms (``--readers formats``): MosaicML over the same MDS copy, in full or
  a subset of its choosing (``Stream(choose=k)``); LitData over a second copy with the images as
  uint8 arrays (:func:`convert_litdata_array`: the only layout LitData stores at per-sample byte
  ranges, so the one streamprune reads in place), in full or ``subsample=``.

Conversions are cached next to the shards (a stamp file marks a finished one), like the shards.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BUCKET", "LITDATA_ARRAY", "PEERS", "convert_litdata", "convert_litdata_array", "convert_mds", "installed",
           "litdata_dataset", "mosaic_dataset", "peer_loader", "tar_samples", "wds_dataset"]

log = logging.getLogger(__name__)

#: The bucket name in S3 paths and in the store's URLs (``/bench/<key>``).
BUCKET = "bench"
#: The peers, in the order the tables show them.
PEERS = ("wds", "mosaic", "litdata")
#: The Python package (distribution) each optional peer needs.
PACKAGES = {"mosaic": ("streaming", "mosaicml-streaming"), "litdata": ("litdata", "litdata")}
#: The LitData copy whose images are uint8 arrays (the one streamprune can read by byte range), under the bucket.
LITDATA_ARRAY = "litdata_array"


def installed(peer: str) -> str | None:
    """``None`` when ``peer`` can run, else why not (its package is missing)."""
    if peer not in PACKAGES:
        return None
    module, dist = PACKAGES[peer]
    try:
        __import__(module)
    except ImportError as exc:
        return f"{dist} is not installed ({exc}); pip install {dist}"
    return None


def tar_samples(shard: str) -> Iterator[dict[str, Any]]:
    """The samples of one of the suite's tar shards: ``{"__key__", "jpg", "cls"}`` in archive order.

    Read with :mod:`tarfile` (members ``<key>.jpg`` and ``<key>.cls``, a sample's members together).
    """
    sample: dict[str, Any] = {}
    with tarfile.open(shard) as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            fh = tf.extractfile(member)
            data = fh.read() if fh is not None else b""
            sample[ext] = int(data) if ext == "cls" else data
    if sample:
        yield sample


def litdata_samples(shard: str) -> Iterator[dict[str, Any]]:
    """``litdata.optimize``'s function: the samples of one shard (a generator: one item each)."""
    for s in tar_samples(shard):
        yield {"__key__": s["__key__"], "jpg": s["jpg"], "cls": int(s["cls"])}


def litdata_array_samples(shard: str) -> Iterator[dict[str, Any]]:
    """As :func:`litdata_samples`, with each image as a uint8 array (``optimize`` then stores every sample at its own
    byte range; a dataset of only bytes, strings and ints goes to one Arrow footer per chunk instead)."""
    # heavy import, deferred: numpy (the module is imported by the suite registry)
    import numpy as np

    for s in tar_samples(shard):
        yield {"__key__": s["__key__"], "jpg": np.frombuffer(s["jpg"], dtype=np.uint8), "cls": int(s["cls"])}


def _stamped(out: str) -> bool:
    return os.path.exists(os.path.join(out, "converted.json"))


def _stamp(out: str, seconds: float) -> None:
    with open(os.path.join(out, "converted.json"), "w") as fh:
        json.dump({"seconds": seconds}, fh)


def convert_mds(shards: list[str], data_dir: str) -> str:
    """The shards' images written once with MosaicML's ``MDSWriter`` (default options) to ``data_dir/mds``."""
    # optional peer: mosaicml-streaming
    from streaming import MDSWriter

    out = os.path.join(data_dir, "mds")
    if _stamped(out):
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with MDSWriter(out=out, columns={"__key__": "str", "jpg": "bytes", "cls": "int"}) as writer:
        for shard in shards:
            for s in tar_samples(shard):
                writer.write({"__key__": s["__key__"], "jpg": s["jpg"], "cls": int(s["cls"])})
    _stamp(out, time.perf_counter() - t0)
    log.warning("converted to MDS in %.1f s", time.perf_counter() - t0)
    return out


def convert_litdata(shards: list[str], data_dir: str, workers: int = 2, arrays: bool = False) -> str:
    """The shards' images written once with ``litdata.optimize(chunk_bytes="64MB")`` to ``data_dir/litdata``
    (``arrays``: as uint8 arrays, to ``data_dir/litdata_array``)."""
    # optional peer: litdata
    import litdata

    out = os.path.join(data_dir, LITDATA_ARRAY if arrays else "litdata")
    if _stamped(out):
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    # optimize() switches this process's multiprocessing start method to spawn for its workers;
    # the suite forks its runs, so the method in force before is put back
    method = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(fn=litdata_array_samples if arrays else litdata_samples, inputs=shards, output_dir=out, chunk_bytes="64MB",
                         num_workers=min(workers, len(shards)))
    finally:
        multiprocessing.set_start_method(method, force=True)
    _stamp(out, time.perf_counter() - t0)
    log.warning("converted to LitData chunks in %.1f s", time.perf_counter() - t0)
    return out


def convert_litdata_array(shards: list[str], data_dir: str, workers: int = 2) -> str:
    """:func:`convert_litdata` with the images as uint8 arrays, to ``data_dir/litdata_array``."""
    return convert_litdata(shards, data_dir, workers, arrays=True)


def wds_dataset(base_url: str, shard_names: list[str]) -> Any:
    """``wds.WebDataset`` over the shards' HTTP URLs (shards in order; DataLoader workers split them)."""
    # heavy import, deferred: webdataset (torch)
    import webdataset as wds

    return wds.WebDataset([f"{base_url}/{name}" for name in shard_names], shardshuffle=False, empty_check=False)


def mosaic_dataset(prefix: str, local: str, batch_size: int, choose: int | None = None) -> Any:
    """MosaicML ``StreamingDataset`` of ``s3://<BUCKET>/<prefix>`` with a fresh local cache ``local``.

    The endpoint comes from ``S3_ENDPOINT_URL`` (set by the suite, with dummy credentials).
    ``choose``: a subset of that many samples, selected MosaicML's own way (``Stream(choose=...)``,
    its documented per-stream sampling; ``sampling_method="balanced"`` by default).
    """
    # optional peer: mosaicml-streaming
    from streaming import Stream, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()  # a run killed for stalling leaves its shared memory behind
    if choose is not None:
        return StreamingDataset(streams=[Stream(remote=f"s3://{BUCKET}/{prefix}", local=local, choose=choose)],
                                shuffle=False, batch_size=batch_size)
    return StreamingDataset(remote=f"s3://{BUCKET}/{prefix}", local=local, shuffle=False, batch_size=batch_size)


def litdata_dataset(prefix: str, cache_dir: str, endpoint: str, subsample: float = 1.0) -> Any:
    """LitData ``StreamingDataset`` of ``s3://<BUCKET>/<prefix>`` through ``endpoint``, cached in ``cache_dir``.

    ``subsample``: the fraction of the samples it reads, selected LitData's own way (its ``subsample=`` option).
    """
    # optional peer: litdata
    import litdata
    import litdata.streaming.downloader as downloader

    # its obstore client options are fixed in the module; plain http is allowed for the
    # loopback store only (see the module docstring)
    downloader._OBSTORE_CLIENT_OPTIONS = dict(downloader._OBSTORE_CLIENT_OPTIONS, allow_http="true")
    return litdata.StreamingDataset(f"s3://{BUCKET}/{prefix}", cache_dir=cache_dir, subsample=subsample,
                                    storage_options={"endpoint_url": endpoint})


def peer_loader(peer: str, ds: Any, batch_size: int, workers: int, collate: Callable) -> Any:
    """The DataLoader each peer's docs use: LitData's own ``StreamingDataLoader``, else PyTorch's."""
    if peer.startswith("litdata"):
        # optional peer: litdata
        from litdata import StreamingDataLoader

        return StreamingDataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    # heavy import, deferred: torch
    import torch

    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
