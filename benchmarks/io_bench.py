"""I/O benchmark: what pruning buys when reading webdataset shards.

Generates ImageNet-like JPEG shards (default 512 MiB, ~120 KB per image), makes random
sample-level keep masks at several ratios, and reads one epoch with the tar readers

  wds_after   plain ``webdataset.WebDataset(urls, shardshuffle=False)`` reading everything,
              pruned with ``.select(lambda s: s["__key__"] in keep)`` placed after ``.decode``
              (in the raw variant there is no decode stage, so it is just ``.select``);
  wds_before  the same with ``.select`` placed before ``.decode``;
  streamprune ``PrunedWebDataset(manifest, mask)`` (``+ .decode("pil")``), reading kept byte
              ranges only;
  streamprune_io16  (raw variant only) the same with ``io_depth=16``: local shards read by
              the scheduler, 16 positioned reads in flight on threads;
  io_floor    (raw variant only) a reference, not a floor: a serial replay of the kept byte
              ranges streamprune reads, one ``preadv`` at a time from one thread into one
              reused buffer (runs of up to 1 MiB, with the same ``FADV_RANDOM`` and 16 MiB
              ``WILLNEED`` window, which runs on across shards as streamprune's does), and no
              index loading, per-sample Python or sample dicts. It shows what these reads cost
              when issued this simple way; it does not bound other readers (the name is
              historical): streamprune's own epoch can be shorter.
  io_floor_par  (raw variant only) the same kept ranges read by 16 threads of ``preadv``
              (``FADV_RANDOM``, no hints): the reference with several reads in flight instead
              of read-ahead hints.

and FFCV on the same JPEG bytes (decode variant only):

  ffcv_oscache  ``streamprune.pruned_ffcv_loader(beton, mask, os_cache=True)``: FFCV memory-maps the
                ``.beton`` file (the kernel reads around each page fault);
  ffcv_pages    the same with ``os_cache=False``: FFCV reads whole 8 MiB pages with pread.

The ``.beton`` is written once from the tar shards with ``write_beton(write_mode="jpg",
keep_jpeg=True, shuffle=False)``, so it holds the very JPEG bytes of the tar members (checked
byte for byte, untimed) in the same order, and the tar masks are carried over by key with
``translate_mask``. FFCV loaders use ``order="sequential"`` (file order, as the tar readers
read), ``batch_size`` 64, ``--ffcv-workers`` decode threads (default 1, like the one PIL
thread of the tar readers) and ``ffcvloop.ffcv_pipelines()``: ``CenterCropRGBImageDecoder((224,
224), 224/256)`` (libjpeg-turbo decode of the whole image, then a centre crop resized to 224)
+ ``ToTensor``. The tar readers' decode is PIL's full-size decode to an RGB image, so the two
decoders differ; compare FFCV with the tar readers at ratio 0 with that in mind. There is no
FFCV raw variant: an ``RGBImageField`` is always decoded by FFCV's pipelines, and reading the
bytes undecoded would need another file (a ``BytesField``), not this one. Each FFCV loader is
built and JIT-compiled (numba) once before the rounds, with one untimed epoch; the timed
region is the epoch alone (building a loader costs seconds of compilation). FFCV's batch,
page-reader and decode threads run in this process (FFCV starts no processes), and
``/proc/self/io`` counts all threads of a process, so the FFCV bytes read are complete.

At ratio 0 the webdataset readers have no ``.select`` (nothing to prune); streamprune gets the
all-keep mask file. Each (reader, cache, variant, ratio) is an epoch run in this process (no
DataLoader workers, so ``/proc/self/io`` sees every read):

  cache    ``cold``: every file the reader opens (``jpegdata.dataset_files``: each shard, its
           ``.index.json`` sidecar and ``.index.npz`` companion, the manifest; and the mask file)
           is evicted from the page cache (``POSIX_FADV_DONTNEED``) right before the run;
           ``warm``: all of them are read beforehand. Each run records how many files and bytes
           that was (``cache_files``, ``cache_file_bytes``).
  variant  ``raw``: iterate and touch ``len()`` of every bytes value; ``decode``:
           ``.decode("pil")`` (webdataset's PIL handler calls ``Image.load()`` and converts to RGB,
           so every kept JPEG is fully decoded; the loop checks each ``jpg`` is a PIL image and
           sums its pixels).

Each run also records what the block device holding the shards did (``pagecache.block_stat``:
requests completed and merged, bytes, and ``io_ms``, the time it had a request in flight),
device-wide, so another process's I/O on that disk would count too. Before cold rounds a
device probe times ``O_DIRECT`` reads (no page cache) at random aligned offsets in the shards,
4 KiB to 1 MiB, one at a time and ``IO_DEPTH`` at a time: the device's fixed cost per request
and its bandwidth (a least-squares line through the serial times), and whether requests in
flight together overlap. Each cold row's ``device_model_speedup`` is that line applied to the
row's device requests and bytes: the speed-up the device itself allows, for any reader that
makes those requests.

The timed region covers building the pipeline and iterating the whole epoch. Repeats are
interleaved (every config once per round, in a shuffled order) so drift on a shared machine
hits all configs alike. Epoch-time speed-up of ratio r = t(ratio 0) / t(ratio r) for the same
reader, paired within a round, median over rounds.

Run:  python -m benchmarks io            (full, ~15-25 min)
      python -m benchmarks io --quick    (smoke run on tiny data)
      python -m benchmarks io --readers streamprune,ffcv_oscache,ffcv_pages --variants decode --merge
                                               (rerun some readers, keep the other rows of results/io_bench.json)
      python -m benchmarks io_decode          (the decoder rows, a suite of their own: benchmarks/decode_bench.py)
      python -m benchmarks io --only readers  (reader rows alone: raw kept samples with PrunedWebDataset,
                                               PrunedMapDataset and wids, warm and cold, at every ratio;
                                               writes results/io_readers.json, see benchmarks/io_readers.py)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import hashlib
import json
import logging
import math
import mmap
import os
import random
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import streamprune as sp
from streamprune import Manifest, random_mask
from streamprune.manifest import ShardEntry
from streamprune.optional import FFCV_INSTALL_HINT, ffcv_available

from . import ffcvloop, io_readers, jpegdata, mdtable, pagecache, provenance, resultsfile, stats
from .suite import Suite, Target

log = logging.getLogger("io_bench")

FFCV_READERS = {"ffcv_oscache": True, "ffcv_pages": False}  # reader -> os_cache
READERS = ("wds_after", "wds_before", "streamprune", "streamprune_io16", "io_floor", "io_floor_par", *FFCV_READERS)
RAW_ONLY = ("streamprune_io16", "io_floor", "io_floor_par")
IO_DEPTH = 16  # reads in flight of streamprune_io16 and io_floor_par
READER_LABELS = {
    "wds_after": "webdataset, select after decode",
    "wds_before": "webdataset, select before decode",
    "streamprune": "streamprune PrunedWebDataset",
    "streamprune_io16": "streamprune PrunedWebDataset(io_depth=16): 16 reads in flight on threads",
    "io_floor": "io_floor reference (not a floor): serial replay of the kept ranges, one preadv at a time",
    "io_floor_par": "io_floor_par reference: the kept ranges read by 16 threads of preadv",
    "ffcv_oscache": "FFCV pruned loader, os_cache on (memory map)",
    "ffcv_pages": "FFCV pruned loader, os_cache off (whole pages)",
}
FFCV_BATCH = 64
FFCV_ORDER = "sequential"
FFCV_IMAGE_SIDE = 224
FFCV_NO_RAW = (
    "not run: FFCV's pipelines always decode an RGBImageField; an undecoded read would need another "
    "file (a BytesField), so there is no FFCV raw variant"
)
CACHES = ("cold", "warm")
VARIANTS = ("raw", "decode")


@dataclass
class Dataset:
    """One manifest and everything needed to read it at each ratio."""

    name: str
    manifest_path: str
    urls: list[str]
    files: dict[str, list[str]]  # jpegdata.dataset_files: every file a reader opens, by kind (shards included)
    data_bytes: int
    samples: int
    mask_paths: dict[float, str] = field(default_factory=dict)
    floor_ranges: dict[float, list] = field(default_factory=dict)
    keep_sets: dict[float, set] = field(default_factory=dict)
    kept: dict[float, int] = field(default_factory=dict)
    kept_bytes: dict[float, int] = field(default_factory=dict)
    masks: dict[float, object] = field(default_factory=dict)
    pages: dict[float, dict] = field(default_factory=dict)  # .beton only: FFCV pages the kept samples touch

    def info(self) -> dict:
        """What the summary needs of a dataset (also read back from an earlier JSON)."""
        return {
            "manifest": self.manifest_path,
            "shards": len(self.urls),
            "samples": self.samples,
            "data_bytes": self.data_bytes,
            "kept": {str(r): v for r, v in self.kept.items()},
            "kept_bytes": {str(r): v for r, v in self.kept_bytes.items()},
            "cache_files": {**{kind: len(paths) for kind, paths in self.files.items()}, "mask": 1},
        }

    def all_files(self, ratio: float) -> list[str]:
        """Every file the readers open at ``ratio``: shards, ``.index.json``, ``.index.npz``, manifest and mask.

        Cold runs evict exactly these and warm runs read them first.
        """
        return [p for paths in self.files.values() for p in paths] + [self.mask_paths[ratio]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``python -m benchmarks io --help``; ``--data-dir`` defaults to benchmarks/data/io_jpeg_<N>mb)."""
    p.add_argument("--total-mb", type=float, default=512, help="dataset size in MiB (default 512)")
    p.add_argument(
        "--samples-per-shard",
        type=int,
        default=1000,
        help="samples per tar shard (default 1000: ~120 MiB shards, like ImageNet's ~1250-sample webdataset shards)",
    )
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds for the decode variant (default 5: fewer are never 'met')")
    p.add_argument(
        "--raw-repeats",
        type=int,
        default=None,
        help="rounds for the raw variant (default max(repeats, 7): raw epochs are short and noisy, and cheap)",
    )
    p.add_argument("--ratios", default="0,0.4,0.6,0.8", help="comma-separated pruning ratios (0 is always added)")
    p.add_argument(
        "--decode-mb",
        type=float,
        default=0,
        help="run the decode variant on the first shards totalling at least this many MiB (0 = all shards)",
    )
    p.add_argument("--readers", default=",".join(READERS), help="subset of " + ",".join(READERS))
    p.add_argument("--caches", default=",".join(CACHES), help="subset of cold,warm")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of raw,decode")
    p.add_argument("--ffcv-workers", type=int, default=1, help="FFCV decode threads (num_workers; default 1, like the tar readers' one PIL thread)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of OUT/io_bench.json for the (reader, cache, variant) not run now (same data required)",
    )
    p.add_argument("--only", choices=["readers"], default=None,
                   help="readers: only the reader rows (io_readers.py, results/io_readers.json); the decoder rows are the "
                        "io_decode suite")
    p.add_argument("--workers", type=int, default=2, help="processes generating shards")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick`` sizes, the parsed lists (unknown readers, caches or variants are a usage error) and the data folder."""
    if args.quick:
        args.total_mb = min(args.total_mb, 24)
        args.samples_per_shard = min(args.samples_per_shard, 50)
        args.repeats = min(args.repeats, 2)
        args.raw_repeats = min(args.raw_repeats or 2, 2)
        if args.decode_mb == 0:
            args.decode_mb = 12
    if args.raw_repeats is None:
        args.raw_repeats = max(args.repeats, 7)
    ratios = sorted({float(x) for x in args.ratios.split(",") if x.strip()} | {0.0})
    args.ratios = ratios
    args.readers = [r for r in args.readers.split(",") if r]
    args.caches = [c for c in args.caches.split(",") if c]
    args.variants = [v for v in args.variants.split(",") if v]
    for name, values, allowed in (("readers", args.readers, READERS), ("caches", args.caches, CACHES), ("variants", args.variants, VARIANTS)):
        bad = set(values) - set(allowed)
        if bad:
            raise SystemExit(f"python -m benchmarks io: --{name}: unknown {sorted(bad)}; expected some of {', '.join(allowed)}")
    if args.data_dir is None:
        tag = "quick" if args.quick else f"{round(args.total_mb)}mb"
        args.data_dir = os.path.join(resultsfile.DEFAULT_DATA, f"io_jpeg_{tag}")
    return args


# --------------------------------------------------------------------------------------------
# datasets and masks


def prepare_dataset(name: str, manifest, ratios, seed: int, mask_dir: str) -> Dataset:
    files = jpegdata.dataset_files(manifest)
    keys = np.asarray(manifest.keys())
    sizes = manifest.sample_bytes()
    ds = Dataset(
        name=name,
        manifest_path=manifest.path,
        urls=files["shards"],
        files=files,
        data_bytes=int(manifest.total_bytes),
        samples=int(manifest.num_samples),
    )
    os.makedirs(mask_dir, exist_ok=True)
    for r in ratios:
        mask = random_mask(manifest, r, level="sample", seed=seed + 1)
        path = os.path.join(mask_dir, f"{name}-r{r:.2f}.spmask")
        mask.save(path)
        ds.masks[r] = mask
        ds.mask_paths[r] = path
        ds.keep_sets[r] = set(keys[mask.keep].tolist())
        ds.kept[r] = int(mask.kept)
        ds.kept_bytes[r] = int(sizes[mask.keep].sum())
        ds.floor_ranges[r] = floor_ranges(manifest, mask)
    manifest.drop_cache()
    return ds


def floor_ranges(manifest, mask, max_run_bytes: int = 1 << 20) -> list[tuple[str, list[tuple[int, int]]]]:
    """Per shard, the (start, end) byte ranges streamprune's reader reads for ``mask``."""
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.readers.byterange import plan_runs

    out = []
    for k in range(len(manifest.shards)):
        index = manifest.index(k)
        order = np.flatnonzero(mask.shard(k))
        runs = plan_runs(index, order, max_run_bytes)
        out.append((manifest.shard_path(k), [(int(index.start[order[a]]), int(index.end[order[b - 1]])) for a, b in runs]))
    return out


def replay_floor(ranges, prefetch_bytes: int = 16 << 20) -> int:
    """Replay ``ranges`` serially: one ``preadv`` at a time, no samples built (the ``io_floor`` reference).

    It gives the same ``FADV_RANDOM`` and ``WILLNEED`` window hints as streamprune's reader (one
    window over the whole epoch: it runs on into the next shard before the current one is
    read, a shard opened when the window reaches it) and reads each range whole into one
    reused buffer. It is a reference for these reads, not a lower bound: a reader can overlap
    or split its reads differently and finish sooner.
    """
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    spans = [(k, lo, hi) for k, (_, shard_spans) in enumerate(ranges) for lo, hi in shard_spans]
    fds: dict[int, int] = {}

    def fd_of(k: int) -> int:
        if k not in fds:
            fds[k] = os.open(ranges[k][0], os.O_RDONLY)
            os.posix_fadvise(fds[k], 0, 0, os.POSIX_FADV_RANDOM)
        return fds[k]

    total = 0
    announced = 0
    announced_bytes = 0
    consumed = 0
    try:
        for k, lo, hi in spans:
            while announced < len(spans) and announced_bytes - consumed < prefetch_bytes:
                j, a, b = spans[announced]
                os.posix_fadvise(fd_of(j), a, b - a, os.POSIX_FADV_WILLNEED)
                announced_bytes += b - a
                announced += 1
            consumed += hi - lo
            total += os.preadv(fd_of(k), [view[: hi - lo]], lo)
            if hi == ranges[k][1][-1][1]:
                os.close(fds.pop(k))  # the shard's last range: done with it
    finally:
        for fd in fds.values():
            os.close(fd)
    return total


def replay_floor_parallel(ranges, depth: int = IO_DEPTH) -> int:
    """Read ``ranges`` with ``depth`` threads of ``preadv`` (the ``io_floor_par`` reference).

    Every shard is opened first with ``FADV_RANDOM``; the ranges of all shards, in order, go
    to a pool of ``depth`` threads, each reading into its own reused buffer, so ``depth``
    reads are in flight. No hints, no samples built.
    """
    local = threading.local()

    def read(item: tuple[int, int, int]) -> int:
        fd, lo, hi = item
        buf = getattr(local, "buf", None)
        if buf is None or len(buf) < hi - lo:
            buf = local.buf = bytearray(max(hi - lo, 4 << 20))
        return os.preadv(fd, [memoryview(buf)[: hi - lo]], lo)

    fds = [os.open(path, os.O_RDONLY) for path, _ in ranges]
    try:
        for fd in fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        items = [(fd, lo, hi) for fd, (_, spans) in zip(fds, ranges) for lo, hi in spans]
        with concurrent.futures.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="io_floor_par") as pool:
            return sum(pool.map(read, items))
    finally:
        for fd in fds:
            os.close(fd)


def subset_manifest(manifest, min_mb: float, out_dir: str):
    """A manifest of the first shards totalling at least ``min_mb`` MiB (absolute paths)."""
    entries = []
    total = 0
    for k, s in enumerate(manifest.shards):
        entries.append(
            ShardEntry(
                name=manifest.shard_path(k),
                index=manifest.resolve(s.index),
                samples=s.samples,
                bytes=s.bytes,
                sha256=s.sha256,
                index_sha256=s.index_sha256,
            )
        )
        total += s.bytes
        if total >= min_mb * 2**20:
            break
    os.makedirs(out_dir, exist_ok=True)
    sub = Manifest(root=out_dir, shards=entries, classes=manifest.classes, label_ext=manifest.label_ext, created=manifest.created)
    sub.save(os.path.join(out_dir, "manifest.json"))
    return Manifest.load(os.path.join(out_dir, "manifest.json"))


# --------------------------------------------------------------------------------------------
# the FFCV version of a dataset

BETON_VERSION = 1


class TarSamples:
    """A tar dataset as a ``write_beton`` source: its keys, labels and ``jpg`` bytes, in order."""

    def __init__(self, manifest) -> None:
        # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
        from streamprune import PrunedMapDataset

        self.data = PrunedMapDataset(manifest.path)
        self.keys = manifest.keys()
        self.labels = manifest.labels()
        self.class_names = list(manifest.classes)

    def __len__(self) -> int:
        return len(self.keys)

    def key_label(self, i: int) -> tuple[str, int]:
        return self.keys[i], int(self.labels[i])

    def __getitem__(self, i: int):
        sample = self.data[i]
        return sample["__key__"], {"jpg": sample["jpg"]}, int(self.labels[i])


def jpeg_digest_tar(manifest) -> tuple[list[int], str]:
    """Sizes and SHA-256 of every sample's ``jpg`` bytes in a tar manifest, in order."""
    h, sizes = hashlib.sha256(), []
    for k in range(len(manifest.shards)):
        with open(manifest.shard_path(k), "rb") as fh:
            for group in manifest.index(k).members:
                for ext, offset, size in group:
                    if ext == "jpg":
                        fh.seek(offset)
                        h.update(fh.read(size))
                        sizes.append(size)
    manifest.drop_cache()
    return sizes, h.hexdigest()


def jpeg_digest_beton(manifest) -> tuple[list[int], str]:
    """Sizes and SHA-256 of every sample's stored image bytes in a one-file ``.beton`` manifest."""
    h, sizes = hashlib.sha256(), []
    with open(manifest.shard_path(0), "rb") as fh:
        for members in manifest.index(0).members:
            ((_, ptr, size),) = members
            fh.seek(ptr)
            h.update(fh.read(size))
            sizes.append(size)
    manifest.drop_cache()
    return sizes, h.hexdigest()


def prepare_beton(ds: Dataset, workers: int, out_dir: str, mask_dir: str) -> tuple[Dataset, object, dict]:
    """Write (or reuse) ``ds`` as one ``.beton`` of the same JPEG bytes, with the same masks.

    Returns:
        The beton ``Dataset`` (its masks translated by key from ``ds``'s), its manifest and the
        untimed checks (same keys and order, same labels, the same JPEG bytes).
    """

    tar = sp.Manifest.load(ds.manifest_path)
    params = {"version": BETON_VERSION, "source_fingerprint": tar.fingerprint, "write_mode": "jpg", "keep_jpeg": True,
              "shuffle": False, "page_size": 1 << 23}
    meta_path = os.path.join(out_dir, "bench_meta.json")
    beton = None
    if os.path.exists(meta_path) and os.path.exists(os.path.join(out_dir, "manifest.json")):
        with open(meta_path) as fh:
            if json.load(fh).get("params") == params:
                print(f"reusing {out_dir}")
                beton = sp.Manifest.load(out_dir)
    if beton is None:
        print(f"writing the {ds.samples} JPEGs of {ds.name} as one .beton (JPEG bytes kept as-is) into {out_dir} ...", flush=True)
        t0 = time.perf_counter()
        beton = sp.write_beton(TarSamples(tar), out_dir, shuffle=False, workers=workers, write_mode="jpg", keep_jpeg=True,
                               page_size=params["page_size"], class_names=tar.classes, progress=False, overwrite=True)
        os.sync()
        with open(meta_path, "w") as fh:
            json.dump({"params": params, "seconds": time.perf_counter() - t0}, fh)
        print(f"  {beton.total_bytes / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")
    with open(beton.resolve(beton.shards[0].index)) as fh:
        stored_as_is = json.load(fh)["beton"].get("jpeg_stored_as_is")
    tar_sizes, tar_hash = jpeg_digest_tar(tar)
    beton_sizes, beton_hash = jpeg_digest_beton(beton)
    checks = {
        "same_keys_and_order": beton.keys() == tar.keys(),
        "same_labels": bool(np.array_equal(beton.labels(), tar.labels())),
        "jpeg_stored_as_is": stored_as_is,
        "same_jpeg_bytes": tar_sizes == beton_sizes and tar_hash == beton_hash,
        "jpeg_sha256": beton_hash,
    }
    if not (checks["same_keys_and_order"] and checks["same_labels"] and checks["same_jpeg_bytes"] and stored_as_is == ds.samples):
        raise AssertionError(f"{beton.path}: the .beton does not hold the tar dataset's JPEGs unchanged: {checks}")
    path = beton.shard_path(0)
    bds = Dataset(
        name=f"beton_{ds.name}",
        manifest_path=beton.path,
        urls=[path],
        files=jpegdata.dataset_files(beton),
        data_bytes=os.path.getsize(path),
        samples=int(beton.num_samples),
    )
    sizes = beton.sample_bytes()
    for r, mask in ds.masks.items():
        translated = sp.translate_mask(mask, beton)
        bds.masks[r] = translated
        bds.mask_paths[r] = translated.save(os.path.join(mask_dir, f"{bds.name}-r{r:.2f}.spmask"))
        bds.kept[r] = int(translated.kept)
        bds.kept_bytes[r] = int(sizes[translated.keep].sum())
        if bds.kept[r] != ds.kept[r]:
            raise AssertionError(f"translated mask at r={r}: kept {bds.kept[r]}, tar mask kept {ds.kept[r]}")
        bds.pages[r] = ffcvloop.page_stats(beton, translated.keep)
    beton.drop_cache()
    return bds, beton, checks


def build_ffcv_loaders(bds: Dataset, beton, readers, ratios, workers: int) -> dict:
    """One compiled FFCV loader per (reader, ratio), each checked with one untimed warm epoch."""
    loaders = {}
    labels = beton.labels()
    for reader in readers:
        for r in ratios:
            loader = sp.pruned_ffcv_loader(
                beton, bds.masks[r], batch_size=FFCV_BATCH, num_workers=workers, order=FFCV_ORDER,
                os_cache=FFCV_READERS[reader], pipelines=ffcvloop.ffcv_pipelines(), drop_last=False,
            )
            pagecache.warm(bds.all_files(r))
            _, n, checksum = ffcvloop.run_epoch(loader)
            ffcvloop.release_mmap(loader)
            expected = int(labels[bds.masks[r].keep].sum())
            if n != bds.kept[r] or checksum != expected:
                raise AssertionError(f"{reader} r={r}: {n} samples (label sum {checksum}), expected {bds.kept[r]} ({expected})")
            loaders[(reader, r)] = (loader, expected)
    return loaders


# --------------------------------------------------------------------------------------------
# readers


def build_reader(reader: str, ds: Dataset, ratio: float, decode: bool):
    # heavy import (webdataset), loaded only when this runs: the registry imports every suite
    import webdataset as wds

    if reader in ("streamprune", "streamprune_io16"):
        # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
        from streamprune import PrunedWebDataset

        pipe = PrunedWebDataset(ds.manifest_path, ds.mask_paths[ratio], io_depth=IO_DEPTH if reader == "streamprune_io16" else 1)
        return pipe.decode("pil") if decode else pipe
    keep = ds.keep_sets[ratio] if ratio > 0 else None
    pipe = wds.WebDataset(ds.urls, shardshuffle=False)
    if reader == "wds_after":
        if decode:
            pipe = pipe.decode("pil")
        if keep is not None:
            pipe = pipe.select(lambda s: s["__key__"] in keep)
    elif reader == "wds_before":
        if keep is not None:
            pipe = pipe.select(lambda s: s["__key__"] in keep)
        if decode:
            pipe = pipe.decode("pil")
    else:
        raise ValueError(reader)
    return pipe


def consume_raw(pipe) -> tuple[int, int, int]:
    n = 0
    nbytes = 0
    for sample in pipe:
        n += 1
        for value in sample.values():
            if type(value) is bytes:
                nbytes += len(value)
    return n, nbytes, 0


def consume_decode(pipe) -> tuple[int, int, int]:
    # heavy import (PIL), loaded only when this runs: the registry imports every suite
    from PIL import Image

    n = 0
    nbytes = 0
    pixels = 0
    for sample in pipe:
        n += 1
        img = sample["jpg"]
        if not isinstance(img, Image.Image) or img.mode != "RGB":
            raise AssertionError(f"{sample['__key__']}: jpg was not decoded to an RGB image ({type(img).__name__})")
        pixels += img.width * img.height
        for value in sample.values():
            if type(value) is bytes:
                nbytes += len(value)
    return n, nbytes, pixels


def run_ffcv_epoch(loader, expected_label_sum: int, where: str) -> tuple[int, int, int]:
    """One epoch of an FFCV loader (``ffcvloop.run_epoch``); drops its memory map afterwards."""
    _, n, checksum = ffcvloop.run_epoch(loader)
    ffcvloop.release_mmap(loader)  # a live map would keep the pages cached for the next cold run
    if checksum != expected_label_sum:
        raise AssertionError(f"{where}: label sum {checksum}, expected {expected_label_sum}")
    return n, 0, n * FFCV_IMAGE_SIDE * FFCV_IMAGE_SIDE


def run_once(reader: str, cache: str, variant: str, ratio: float, ds: Dataset, ffcv_loaders: dict | None = None) -> dict:
    files = ds.all_files(ratio)
    if cache == "cold":
        pagecache.evict(files)
    else:
        pagecache.warm(files)
    gc.collect()
    consume = consume_decode if variant == "decode" else consume_raw
    dev0 = pagecache.block_stat(ds.urls[0])
    io0 = pagecache.proc_io()
    c0 = time.process_time()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replay = {"io_floor": replay_floor, "io_floor_par": replay_floor_parallel}.get(reader)
        pipe = None if replay is not None or reader in FFCV_READERS else build_reader(reader, ds, ratio, variant == "decode")
        if replay is not None:
            n, nbytes, pixels = ds.kept[ratio], replay(ds.floor_ranges[ratio]), 0
        elif reader in FFCV_READERS:
            loader, label_sum = ffcv_loaders[(reader, ratio)]
            n, nbytes, pixels = run_ffcv_epoch(loader, label_sum, f"{reader} {cache} r={ratio}")
        else:
            n, nbytes, pixels = consume(pipe)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    io1 = pagecache.proc_io()
    dev1 = pagecache.block_stat(ds.urls[0])
    if n != ds.kept[ratio]:
        raise AssertionError(f"{reader} {cache} {variant} r={ratio}: {n} samples, expected {ds.kept[ratio]}")
    return {
        "reader": reader,
        "cache": cache,
        "variant": variant,
        "ratio": ratio,
        "dataset": ds.name,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "samples": n,
        "samples_per_s": n / seconds,
        "read_bytes": io1["read_bytes"] - io0["read_bytes"],
        "rchar": io1["rchar"] - io0["rchar"],
        "syscr": io1["syscr"] - io0["syscr"],
        "payload_bytes": nbytes,
        "pixels": pixels,
        "loadavg_1min": os.getloadavg()[0],
        "cache_files": len(files),  # evicted (cold) or read first (warm): shards, .index.json, .index.npz, manifest, mask
        "cache_file_bytes": sum(os.path.getsize(f) for f in files),
        **device_delta(dev0, dev1),
    }


def device_delta(before: dict | None, after: dict | None) -> dict:
    """What the block device did between two ``pagecache.block_stat`` readings (device-wide)."""
    if before is None or after is None:
        return {}
    return {
        "device_reads": after["reads"] - before["reads"],
        "device_read_merges": after["read_merges"] - before["read_merges"],
        "device_read_bytes": 512 * (after["read_sectors"] - before["read_sectors"]),
        "device_busy_ms": after["io_ms"] - before["io_ms"],
    }


def device_probe(paths: Sequence[str], depth: int = IO_DEPTH, rounds: int = 3, seed: int = 0) -> dict:
    """Time ``O_DIRECT`` reads at random 4 KiB-aligned offsets in ``paths`` (the page cache bypassed).

    Sizes 4 KiB, 128 KiB and 1 MiB, one at a time and ``depth`` at a time (threads), ``rounds``
    interleaved rounds, medians. A least-squares line through the serial times gives the
    device's fixed cost per request and its bandwidth.

    Returns:
        ``{"configs": {"<KiB>KiB@d<depth>": {"us_per_request", "MBps"}}, "fixed_us_per_request",
        "MBps", ...}``, or ``{"unavailable": reason}`` where ``O_DIRECT`` is refused.
    """
    sizes = (4 << 10, 128 << 10, 1 << 20)
    counts = {4 << 10: 200, 128 << 10: 200, 1 << 20: 64}
    rng = random.Random(seed)
    try:
        fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in paths]
    except (OSError, AttributeError) as exc:
        return {"unavailable": f"O_DIRECT: {exc}"}
    local = threading.local()

    def read(item: tuple[int, int, int]) -> int:
        fd, offset, n = item
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
        return os.preadv(fd, [memoryview(buf)[:n]], offset)

    times: dict[tuple[int, int], list[float]] = {}
    try:
        limits = [os.fstat(fd).st_size // 4096 - 256 for fd in fds]
        configs = [(size, d) for size in sizes for d in (1, depth)]
        for _ in range(rounds):
            rng.shuffle(configs)
            for size, d in configs:
                items = []
                for _ in range(counts[size]):
                    k = rng.randrange(len(fds))
                    items.append((fds[k], 4096 * rng.randrange(max(limits[k], 1)), size))
                t0 = time.perf_counter()
                if d == 1:
                    for item in items:
                        read(item)
                else:
                    with concurrent.futures.ThreadPoolExecutor(max_workers=d) as pool:
                        list(pool.map(read, items))
                times.setdefault((size, d), []).append((time.perf_counter() - t0) / len(items))
    except OSError as exc:
        return {"unavailable": f"O_DIRECT read: {exc}"}
    finally:
        for fd in fds:
            os.close(fd)
    per = {key: stats.median(v) for key, v in times.items()}
    xs = np.array(sizes, dtype=np.float64)
    ys = np.array([per[(size, 1)] for size in sizes])
    slope, intercept = np.polyfit(xs, ys, 1)
    return {
        "method": f"O_DIRECT preadv at random 4 KiB-aligned offsets in the shards; {rounds} rounds, medians; "
                  f"depth {depth}: a pool of {depth} threads",
        "configs": {f"{size >> 10}KiB@d{d}": {"us_per_request": 1e6 * t, "MBps": size / t / 1e6, "requests": counts[size]}
                    for (size, d), t in sorted(per.items())},
        "fixed_us_per_request": 1e6 * float(intercept),
        "MBps": 1e-6 / float(slope) if slope > 0 else float("nan"),
        "depth_speedup_1MiB": per[(1 << 20, 1)] / per[(1 << 20, depth)],
        "loadavg": os.getloadavg(),
    }


def add_device_model(rows: list[dict], probe: dict | None) -> None:
    """Give each cold row with device counters the speed-up the probed device allows for its requests.

    Device time of an epoch = requests x fixed cost + bytes / bandwidth (``probe``'s line);
    ``device_model_speedup`` = that time at ratio 0 / at this row's ratio, same reader.
    """
    if not probe or "fixed_us_per_request" not in probe or not probe["MBps"] > 0:
        return
    fixed, bandwidth = probe["fixed_us_per_request"] * 1e-6, probe["MBps"] * 1e6

    def model(r: dict) -> float:
        return r["median_device_reads"] * fixed + r["median_device_read_bytes"] / bandwidth

    base = {(r["reader"], r["variant"]): r for r in rows if r["cache"] == "cold" and r["ratio"] == 0.0}
    for row in rows:
        ref = base.get((row["reader"], row["variant"]))
        if row["cache"] != "cold" or ref is None or "median_device_reads" not in row or "median_device_reads" not in ref:
            continue
        row["device_model_seconds"] = model(row)
        row["device_model_speedup"] = model(ref) / model(row)


def verify_same_samples(ds: Dataset, ratio: float) -> dict:
    """Untimed check: streamprune yields exactly webdataset's kept samples, in the same order."""
    def digest(pipe):
        keys, h = [], hashlib.sha256()
        for s in pipe:
            keys.append(s["__key__"])
            for ext in sorted(k for k in s if not k.startswith("__")):
                h.update(ext.encode() + b"\0" + s[ext])
        return keys, h.hexdigest()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k1, h1 = digest(build_reader("wds_before", ds, ratio, False))
        k2, h2 = digest(build_reader("streamprune", ds, ratio, False))
    ok = k1 == k2 and h1 == h2
    if not ok:
        raise AssertionError(f"streamprune and webdataset+select differ at ratio {ratio}")
    return {"ratio": ratio, "samples": len(k1), "same_keys_order_and_bytes": ok}


# --------------------------------------------------------------------------------------------
# summary


# Paired ratio-0 comparisons across readers: reader -> [(reference reader, row field)]
COMPARISONS = {
    "streamprune": [("wds_after", "samples_per_s_vs_webdataset")],
    "streamprune_io16": [("wds_after", "samples_per_s_vs_webdataset"), ("streamprune", "samples_per_s_vs_streamprune")],
    **{r: [("wds_after", "samples_per_s_vs_webdataset"), ("streamprune", "samples_per_s_vs_streamprune")] for r in FFCV_READERS},
}


def summarize(runs: list[dict], ds_info: dict[str, dict], invocations: list[str]) -> list[dict]:
    """One row per (reader, cache, variant, ratio) from the latest invocation that ran it.

    Speed-ups pair runs of one invocation and round; so do the ratio-0 comparisons between
    readers, which use the latest invocation that ran both readers.
    """
    rank = {inv: i for i, inv in enumerate(invocations)}
    by_config: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs:
        by_config.setdefault((r["reader"], r["cache"], r["variant"]), {}).setdefault(r["invocation"], []).append(r)
    rows = []
    for (reader, cache, variant), per_inv in by_config.items():
        inv = max(per_inv, key=rank.__getitem__)
        groups: dict[float, list[dict]] = {}
        for r in per_inv[inv]:
            groups.setdefault(r["ratio"], []).append(r)
        for ratio, reps in groups.items():
            base = {r["round"]: r for r in groups.get(0.0, [])}
            mine = {r["round"]: r for r in reps}
            paired = stats.paired_by_round({k: b["seconds"] for k, b in base.items()}, {k: r["seconds"] for k, r in mine.items()},
                                           rounds=sorted(mine))
            # CPU time of the whole process (all threads): far less disturbed by other jobs' load
            # than wall time when the epoch is CPU-bound (decode); it leaves out I/O waits
            cpu_paired = stats.paired_by_round({k: b["cpu_seconds"] for k, b in base.items()},
                                               {k: r["cpu_seconds"] for k, r in mine.items()}, rounds=sorted(mine))
            info = ds_info[reps[0]["dataset"]]
            ideal = 1.0 / (1.0 - ratio)
            speedup = paired.median
            t_med = stats.median([r["seconds"] for r in reps])
            t0_med = stats.median([r["seconds"] for r in base.values()]) if base else float("nan")
            rb = stats.median([r["read_bytes"] for r in reps])
            rows.append({
                "reader": reader,
                "cache": cache,
                "variant": variant,
                "ratio": ratio,
                "dataset": reps[0]["dataset"],
                "invocation": inv,
                "repeats": len(reps),
                "samples": reps[0]["samples"],
                "median_seconds": t_med,
                "median_samples_per_s": stats.median([r["samples_per_s"] for r in reps]),
                "median_cpu_seconds": stats.median([r["cpu_seconds"] for r in reps]),
                "median_read_bytes": rb,
                "read_fraction_of_data": rb / info["data_bytes"],
                "kept_fraction_of_data_bytes": info["kept_bytes"][str(ratio)] / info["data_bytes"],
                "speedup": speedup,
                "speedup_min": paired.low,
                "speedup_max": paired.high,
                "speedup_rounds": paired.n,
                "speedup_of_medians": t0_med / t_med,
                "ideal_speedup": ideal,
                "speedup_over_ideal": speedup / ideal,
                "cpu_speedup": cpu_paired.median,
                "cpu_speedup_min": cpu_paired.low,
                "cpu_speedup_max": cpu_paired.high,
            })
            if "pages" in info and str(ratio) in info["pages"]:
                rows[-1]["ffcv_page_fraction"] = info["pages"][str(ratio)]["page_fraction"]
            if all("device_reads" in r for r in reps):
                for name in ("device_reads", "device_read_merges", "device_read_bytes", "device_busy_ms"):
                    rows[-1]["median_" + name] = stats.median([r[name] for r in reps])
                busy = [base[r["round"]]["device_busy_ms"] / r["device_busy_ms"] for r in reps
                        if r["round"] in base and "device_busy_ms" in base[r["round"]] and r["device_busy_ms"] > 0]
                rows[-1]["device_busy_ratio"] = stats.median(busy) if busy else float("nan")
    for row in rows:
        if row["ratio"] != 0.0:
            continue
        for ref, name in COMPARISONS.get(row["reader"], []):
            mine = by_config.get((row["reader"], row["cache"], row["variant"]), {})
            theirs = by_config.get((ref, row["cache"], row["variant"]), {})
            shared = [inv for inv in mine if inv in theirs]
            rel = stats.paired_ratio([], [])
            if shared:
                inv = max(shared, key=rank.__getitem__)
                other = {r["round"]: r["seconds"] for r in theirs[inv] if r["ratio"] == 0.0}
                own = {r["round"]: r["seconds"] for r in mine[inv] if r["ratio"] == 0.0}
                rel = stats.paired_by_round(other, own, rounds=sorted(own))
                row[name + "_invocation"] = inv
            row[name], row[name + "_min"], row[name + "_max"] = rel.median, rel.low, rel.high
            row[name + "_rounds"] = rel.n
    rows.sort(key=lambda r: (VARIANTS.index(r["variant"]), CACHES.index(r["cache"]), READERS.index(r["reader"]), r["ratio"]))
    return rows


def find(rows, **kw):
    for row in rows:
        if all(row.get(k) == v for k, v in kw.items()):
            return row
    return None


def _interval(row: dict, key: str) -> tuple[float, float] | None:
    """``(row[key_min], row[key_max])``, the paired min-max over rounds; ``None`` when not measured."""
    lo, hi = row.get(f"{key}_min"), row.get(f"{key}_max")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return None
    return lo, hi


def evaluate_targets(rows: list[dict], ratios: Sequence[float]) -> list[dict]:
    """The suite's targets on the summary rows, as stored in the JSON (:meth:`Target.to_dict`).

    A speed-up or ratio target carries the min-max of its paired ratio over rounds and their
    number (:mod:`benchmarks.stats`): met only when the whole range clears the threshold over
    at least ``stats.MIN_ROUNDS`` rounds, inconclusive when it straddles it.
    """
    out: list[Target] = []
    pruned = [x for x in ratios if x > 0]

    def speedup(reader: str, cache: str, variant: str, r: float, factor: float) -> dict | None:
        row = find(rows, reader=reader, cache=cache, variant=variant, ratio=r)
        if row:
            need = factor * row["ideal_speedup"]
            who = "" if reader == "streamprune" else f"{reader} "
            out.append(Target.check(f"{who}{cache} {variant} speed-up at r={r:g} >= {factor:g} x 1/(1-r) = {need:.2f}",
                                    row["speedup"], need, interval=_interval(row, "speedup"), repeats=row["repeats"],
                                    rounds=row.get("speedup_rounds", row["repeats"])))
        return row

    for r in pruned:
        row = speedup("streamprune", "cold", "raw", r, 0.9)
        if row:
            limit = (1 - r) + 0.05
            out.append(Target.check(f"cold raw bytes read at r={r:g} <= (1-r) + 5% = {limit:.2f} of the full read",
                                    row["read_fraction_of_data"], limit, "<="))
    for r in pruned:
        speedup("streamprune", "cold", "decode", r, 0.85)
    for variant, goal, text in (("raw", 3.0, ">= 3 x webdataset"), ("decode", 1.0, ">= webdataset (ratio >= 1)")):
        for cache in CACHES:
            row = find(rows, reader="streamprune", cache=cache, variant=variant, ratio=0.0)
            if row and not math.isnan(row.get("samples_per_s_vs_webdataset", math.nan)):  # nan: wds_after not run
                out.append(Target.check(f"{cache} {variant} r=0: streamprune samples/s {text}", row["samples_per_s_vs_webdataset"], goal,
                                        interval=_interval(row, "samples_per_s_vs_webdataset"),
                                        rounds=row.get("samples_per_s_vs_webdataset_rounds")))
    # ffcv_bench's warm target, checked here on io_bench's data: sample-level masks, file order
    for reader in FFCV_READERS:
        for r in pruned:
            speedup(reader, "warm", "decode", r, 0.85)
    return [t.to_dict() for t in out]


def _ratio(value) -> str:
    """A paired ratio for the tables; blank when it was not measured (no pair in one invocation)."""
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def detail_tables(rows: list[dict], meta: dict[str, Any]) -> str:
    """Every row in full, per variant and cache, and FFCV against the tar readers at r=0 (markdown)."""
    if not rows:
        return ""
    out: list[str] = []
    out.append(f"data: {meta['data']['samples']} samples, {meta['data']['data_bytes'] / 2**20:.1f} MiB in "
          f"{meta['data']['shards']} shards, mean JPEG {meta['data']['mean_jpeg_bytes'] / 1e3:.1f} KB")
    if meta["data"].get("decode_subset"):
        sub = meta["data"]["decode_subset"]
        out.append(f"decode variant on a subset: first {sub['shards']} shards, {sub['samples']} samples, {sub['data_bytes'] / 2**20:.1f} MiB")
    for variant in VARIANTS:
        for cache in CACHES:
            sel = [r for r in rows if r["variant"] == variant and r["cache"] == cache]
            if not sel:
                continue
            reps = sorted({r["repeats"] for r in sel})
            out.append(f"\n{variant}, {cache} cache  (median of {'/'.join(map(str, reps))} rounds; speed-up = t(r=0)/t(r), paired per round)")
            table = []
            for r in sel:
                rel = r.get("samples_per_s_vs_webdataset")
                table.append([
                    r["reader"],
                    f"{r['ratio']:.1f}",
                    r["samples"],
                    f"{r['median_seconds']:.3f}",
                    f"{r['median_samples_per_s']:.0f}",
                    f"{r['speedup']:.2f} [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}]",
                    f"{r['ideal_speedup']:.2f}",
                    f"{r['speedup_over_ideal']:.2f}",
                    f"{r['cpu_speedup']:.2f}",
                    f"{r['median_read_bytes'] / 2**20:.1f}",
                    f"{r['read_fraction_of_data']:.3f}",
                    _ratio(rel),
                    mdtable.fmt_num(r["median_device_reads"], 0) if "median_device_reads" in r else "",
                    _ratio(r.get("device_busy_ratio")),
                    _ratio(r.get("device_model_speedup")),
                ])
            out.append("\n" + mdtable.markdown_table(
                ["reader", "ratio", "samples", "t (s)", "samples/s", "speed-up [min-max]", "ideal", "/ideal", "cpu speed-up", "read MiB", "read frac",
                 "vs wds @0", "device reqs", "device busy ratio", "device model"],
                table,
            ))
    ffcv_rows = [r for r in rows if r["reader"] in FFCV_READERS and r["ratio"] == 0.0]
    if ffcv_rows:
        ff = meta.get("ffcv", {})
        out.append(f"\ndecode at r=0: FFCV against the tar readers, paired time ratios (FFCV: {ff.get('decoder', '?')}, "
              f"{ff.get('num_workers', '?')} decode thread(s); tar readers: PIL full-size decode to RGB, 1 thread; the decoders differ)")
        out.append("\n" + mdtable.markdown_table(
            ["reader", "cache", "samples/s", "vs wds_after", "vs streamprune"],
            [[r["reader"], r["cache"], f"{r['median_samples_per_s']:.0f}", _ratio(r.get("samples_per_s_vs_webdataset")),
              _ratio(r.get("samples_per_s_vs_streamprune"))] for r in ffcv_rows],
        ))
        out.append(f"\nFFCV raw variant: {FFCV_NO_RAW}")
    return "\n".join(out)


def _repeats(rows, variant: str) -> str:
    return "/".join(str(n) for n in sorted({r["repeats"] for r in rows if r["variant"] == variant})) or "-"


def plot(rows, ratios, path, meta):
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib

    matplotlib.use("Agg")
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    colors = {"wds_after": "tab:red", "wds_before": "tab:orange", "streamprune": "tab:blue", "streamprune_io16": "tab:cyan",
              "io_floor": "tab:gray", "io_floor_par": "tab:brown", "ffcv_oscache": "tab:green", "ffcv_pages": "tab:purple"}
    markers = {"wds_after": "s", "wds_before": "^", "streamprune": "o", "streamprune_io16": "P", "io_floor": "x", "io_floor_par": "+",
               "ffcv_oscache": "D", "ffcv_pages": "v"}
    short = {"wds_after": "wds after", "wds_before": "wds before", "streamprune": "streamprune", "streamprune_io16": "streamprune io_depth=16",
             "io_floor": "io_floor (serial replay, reference)", "io_floor_par": "io_floor_par (16 threads, reference)",
             "ffcv_oscache": "FFCV os_cache", "ffcv_pages": "FFCV pages"}
    xs = np.linspace(0, max(ratios), 50)
    handles = {}
    for i, variant in enumerate(VARIANTS):
        for j, cache in enumerate(CACHES):
            ax = axes[i, j]
            (h,) = ax.plot(xs, 1 / (1 - xs), "k--", lw=1)
            handles["ideal 1/(1-r)"] = h
            notes = []
            for reader in READERS:
                sel = sorted([r for r in rows if r["reader"] == reader and r["cache"] == cache and r["variant"] == variant], key=lambda r: r["ratio"])
                if not sel:
                    continue
                x = [r["ratio"] for r in sel]
                y = [r["speedup"] for r in sel]
                lo = [r["speedup"] - r["speedup_min"] for r in sel]
                hi = [r["speedup_max"] - r["speedup"] for r in sel]
                h = ax.errorbar(x, y, yerr=[lo, hi], color=colors[reader], marker=markers[reader], capsize=3, alpha=0.9)
                handles[READER_LABELS[reader]] = h
                if sel[0]["ratio"] == 0:
                    notes.append(f"{short[reader]}: {sel[0]['median_samples_per_s']:.0f}/s")
            ax.text(0.02, 0.98, "samples/s at r=0\n" + "\n".join(notes), transform=ax.transAxes, va="top", ha="left",
                    fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
            ax.set_title(f"{variant}, {cache} page cache: epoch-time speed-up")
            ax.set_xlabel("pruning ratio r (fraction of samples removed)")
            ax.set_ylabel("t(r=0) / t(r)  (same reader)")
            ax.set_xticks(ratios)
            ax.grid(alpha=0.3)
        ax = axes[i, 2]
        (h,) = ax.plot(xs, 1 - xs, "k:", lw=1.5)
        handles["kept fraction 1-r (bytes panels)"] = h
        for reader in READERS:
            sel = sorted([r for r in rows if r["reader"] == reader and r["cache"] == "cold" and r["variant"] == variant], key=lambda r: r["ratio"])
            if sel:
                ax.plot([r["ratio"] for r in sel], [r["read_fraction_of_data"] for r in sel], color=colors[reader], marker=markers[reader])
        ax.set_title(f"{variant}, cold cache: bytes read from storage")
        ax.set_xlabel("pruning ratio r")
        ax.set_ylabel("read_bytes (/proc/self/io) / data size")
        ax.set_ylim(0, 1.1)
        ax.set_xticks(ratios)
        ax.grid(alpha=0.3)
    d = meta["data"]
    sub = d.get("decode_subset")
    fig.suptitle(
        f"streamprune io_bench: {d['samples']} JPEG samples, {d['data_bytes'] / 2**20:.0f} MiB in {d['shards']} shards, mean {d['mean_jpeg_bytes'] / 1e3:.0f} KB"
        + (f"; decode rows on {sub['data_bytes'] / 2**20:.0f} MiB subset" if sub else "")
        + f"; {meta['machine']['cpu_count']} cores; medians of {_repeats(rows, 'raw')} (raw) / {_repeats(rows, 'decode')} (decode) rounds, bars = min-max"
        + ("\nFFCV (decode only): same JPEG bytes in one .beton, sequential order, CenterCrop 224 decoder (tar readers: PIL full-size decode)"
           if any(r["reader"] in FFCV_READERS for r in rows) else "")
        + (f"\nrows merged from {len({r['invocation'] for r in rows if 'invocation' in r})} invocations under different load: "
           "compare samples/s only within one (the JSON names each row's invocation)" if meta.get("merged") else ""),
        fontsize=11,
    )
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (options as :func:`add_arguments`, after :func:`configure`); the results with summary and targets."""
    if args.only == "readers":
        return io_readers.run_reader_rows(args, prepare_dataset)

    t_start = time.perf_counter()
    machine = provenance.machine_info()
    print(f"io_bench: {machine['cpu_count']} cores, python {machine['python']}, webdataset {machine['packages']['webdataset']}")
    manifest = jpegdata.make_jpeg_shards(args.data_dir, args.total_mb, args.samples_per_shard, args.seed, args.workers)
    jpeg = jpegdata.jpeg_sizes(manifest)
    data = {
        "dir": os.path.abspath(args.data_dir),
        "samples": int(manifest.num_samples),
        "shards": len(manifest.shards),
        "data_bytes": int(manifest.total_bytes),
        "mean_jpeg_bytes": float(jpeg.mean()),
        "median_jpeg_bytes": float(np.median(jpeg)),
        "p5_p95_jpeg_bytes": np.percentile(jpeg, [5, 95]).tolist(),
        "members_per_sample": ["jpg", "cls"],
    }
    print(f"data: {data['samples']} samples, {data['data_bytes'] / 2**20:.1f} MiB ({data['data_bytes'] / 1e6:.0f} MB) in {data['shards']} shards; "
          f"mean JPEG {data['mean_jpeg_bytes'] / 1e3:.1f} KB (median {data['median_jpeg_bytes'] / 1e3:.1f}, 5-95% "
          f"{data['p5_p95_jpeg_bytes'][0] / 1e3:.0f}-{data['p5_p95_jpeg_bytes'][1] / 1e3:.0f} KB)")

    mask_dir = os.path.join(args.data_dir, "masks")
    datasets = {"full": prepare_dataset("full", manifest, args.ratios, args.seed, mask_dir)}
    decode_ds = "full"
    if "decode" in args.variants and args.decode_mb and args.decode_mb * 2**20 < manifest.total_bytes:
        sub = subset_manifest(manifest, args.decode_mb, os.path.join(args.data_dir, f"subset_{int(args.decode_mb)}mb"))
        datasets["decode_subset"] = prepare_dataset("decode_subset", sub, args.ratios, args.seed, mask_dir)
        decode_ds = "decode_subset"
        d = datasets[decode_ds]
        data["decode_subset"] = {"shards": len(d.urls), "samples": d.samples, "data_bytes": d.data_bytes, "min_mb": args.decode_mb}
        print(f"decode variant runs on the first {len(d.urls)} shards: {d.samples} samples, {d.data_bytes / 2**20:.1f} MiB")

    skipped = {}
    ffcv_readers = [r for r in args.readers if r in FFCV_READERS]
    if ffcv_readers and "decode" not in args.variants:
        for r in ffcv_readers:
            skipped[r] = FFCV_NO_RAW
        log.warning("skipping %s: FFCV runs in the decode variant only (%s)", ", ".join(ffcv_readers), FFCV_NO_RAW)
        ffcv_readers = []
    if ffcv_readers:

        if not ffcv_available():
            for r in ffcv_readers:
                skipped[r] = f"ffcv not installed: {FFCV_INSTALL_HINT}"
            log.warning("skipping the FFCV readers %s: %s", ", ".join(ffcv_readers), FFCV_INSTALL_HINT)
            ffcv_readers = []
    args.readers = [r for r in args.readers if r not in skipped]

    ffcv_loaders = {}
    ffcv_meta = None
    beton_ds = None
    if ffcv_readers:
        src = datasets[decode_ds]
        bds, beton, beton_checks = prepare_beton(src, args.workers, os.path.join(args.data_dir, f"beton_{decode_ds}"), mask_dir)
        datasets[bds.name] = bds
        beton_ds = bds.name
        print(f"beton: {bds.data_bytes / 2**20:.1f} MiB, the same {bds.samples} JPEGs byte for byte (sha256 {beton_checks['jpeg_sha256'][:12]}), "
              f"masks translated by key; FFCV pages touched at r=" + ", ".join(f"{r:g}: {bds.pages[r]['page_fraction']:.2f}" for r in args.ratios))
        ffcv_eviction = pagecache.check_eviction(bds.urls, bds.data_bytes)
        print(f"eviction check (.beton): cold read fetched {ffcv_eviction['cold_fraction']:.3f} of the file, warm "
              f"{ffcv_eviction['warm_read_bytes'] / 2**20:.1f} MiB -> {'OK' if ffcv_eviction['ok'] else 'NOT WORKING'}")
        t0 = time.perf_counter()
        ffcv_loaders = build_ffcv_loaders(bds, beton, ffcv_readers, args.ratios, args.ffcv_workers)
        print(f"built, compiled and checked {len(ffcv_loaders)} FFCV loaders in {time.perf_counter() - t0:.1f} s")
        ffcv_meta = {
            "readers": {r: {"os_cache": FFCV_READERS[r], "label": READER_LABELS[r]} for r in ffcv_readers},
            "file": bds.urls[0],
            "file_bytes": bds.data_bytes,
            "page_size": 1 << 23,
            "read_ahead_kb": pagecache.read_ahead_kb(bds.urls[0]),
            "written_with": "write_beton(TarSamples(tar manifest), write_mode='jpg', keep_jpeg=True, shuffle=False)",
            "checks": beton_checks,
            "eviction_check": ffcv_eviction,
            "order": FFCV_ORDER,
            "batch_size": FFCV_BATCH,
            "drop_last": False,
            "num_workers": args.ffcv_workers,
            "decoder": f"CenterCropRGBImageDecoder(({FFCV_IMAGE_SIDE}, {FFCV_IMAGE_SIDE}), 224/256) + ToTensor (ffcvloop.ffcv_pipelines())",
            "decoder_note": "tar readers decode with PIL at full size (256-320 px) to an RGB image; FFCV decodes with libjpeg-turbo, "
                            "then centre-crops and resizes to 224: the decoders differ",
            "raw_variant": FFCV_NO_RAW,
            "timed": "one epoch of a loader built and JIT-compiled (with one untimed epoch) before the rounds",
            "read_bytes": "FFCV's batch, page-reader and decode threads run in this process (it starts no processes); "
                          "/proc/self/io counts every thread of the process, so read_bytes is everything FFCV read",
            "cold": "POSIX_FADV_DONTNEED on the .beton, its index sidecar and companion, manifest and mask file, and FFCV's memory map "
                    "dropped after every epoch (a live map would keep its pages cached)",
            "pages_touched": {str(r): bds.pages[r] for r in args.ratios},
        }

    all_files = sorted({f for ds in datasets.values() for r in args.ratios for f in ds.all_files(r)})
    eviction = pagecache.check_eviction(datasets["full"].urls, datasets["full"].data_bytes)
    print(f"eviction check: cold full read fetched {eviction['cold_read_bytes'] / 2**20:.1f} MiB of {eviction['file_bytes'] / 2**20:.1f} MiB "
          f"({eviction['cold_MBps']:.0f} MB/s), warm re-read fetched {eviction['warm_read_bytes'] / 2**20:.1f} MiB ({eviction['warm_MBps']:.0f} MB/s)"
          f" -> {'OK' if eviction['ok'] else 'NOT WORKING: cold numbers are not cold'}")
    probe = None
    if "cold" in args.caches:
        probe = device_probe(datasets["full"].urls)
        if "unavailable" in probe:
            print(f"device probe: {probe['unavailable']}")
        else:
            print(f"device probe (O_DIRECT, random offsets): {probe['fixed_us_per_request']:.0f} us per request + "
                  f"{probe['MBps']:.0f} MB/s; 1 MiB reads {IO_DEPTH} at a time: {probe['depth_speedup_1MiB']:.2f}x the throughput of one at a time")
    pagecache.warm(all_files)
    verification = [verify_same_samples(datasets["full"], r) for r in args.ratios if r > 0][:1]
    print(f"verified streamprune == webdataset+select (keys, order, bytes) at ratio {verification[0]['ratio'] if verification else '-'}")

    configs = []
    for variant in args.variants:
        for cache in args.caches:
            for reader in args.readers:
                if reader in RAW_ONLY and variant != "raw":
                    continue
                if reader in FFCV_READERS and variant != "decode":
                    continue
                for ratio in args.ratios:
                    configs.append((reader, cache, variant, ratio))
    rounds = max(args.raw_repeats if "raw" in args.variants else 0, args.repeats if "decode" in args.variants else 0)
    invocation = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_start = os.getloadavg()
    runs = []
    rng = random.Random(args.seed)
    for rnd in range(rounds):
        todo = [c for c in configs if rnd < (args.raw_repeats if c[2] == "raw" else args.repeats)]
        rng.shuffle(todo)
        t_round = time.perf_counter()
        for reader, cache, variant, ratio in todo:
            if reader in FFCV_READERS:
                ds = datasets[beton_ds]
            else:
                ds = datasets[decode_ds if variant == "decode" else "full"]
            res = run_once(reader, cache, variant, ratio, ds, ffcv_loaders)
            res["round"] = rnd
            res["invocation"] = invocation
            runs.append(res)
        print(f"round {rnd + 1}/{rounds}: {len(todo)} runs in {time.perf_counter() - t_round:.1f} s (load avg {os.getloadavg()[0]:.1f})", flush=True)

    ds_info = {name: ds.info() for name, ds in datasets.items()}
    for name, ds in datasets.items():
        ds_info[name]["used_for"] = (
            ["decode (ffcv)"] if name == beton_ds else ["raw"] + (["decode"] if decode_ds == name else [])
        )
        if ds.pages:
            ds_info[name]["pages"] = {str(r): v for r, v in ds.pages.items()}
    this = {
        "id": invocation,
        "command": provenance.command_line(),
        "args": {k: v for k, v in vars(args).items()},
        "readers": args.readers,
        "caches": args.caches,
        "variants": args.variants,
        "repeats": args.repeats,
        "raw_repeats": args.raw_repeats,
        "skipped_readers": skipped,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "loadavg_1min_during_runs": [min((r["loadavg_1min"] for r in runs), default=None), max((r["loadavg_1min"] for r in runs), default=None)],
        "eviction_check": eviction,
        "device_probe": probe,
        "verification": verification,
        "ffcv": ffcv_meta,
        "total_seconds": None,
    }
    json_path = os.path.join(args.out, "io_bench.json")
    invocations = [this]
    if args.merge:
        runs, invocations, ds_info = merge_previous(json_path, runs, this, ds_info)
    order = [inv["id"] for inv in invocations]
    rows = summarize(runs, ds_info, order)
    add_device_model(rows, probe)
    targets = evaluate_targets(rows, sorted({r["ratio"] for r in rows}))
    used = {r["invocation"] for r in rows} | {v for r in rows for k, v in r.items() if k.endswith("_invocation")}
    runs = [r for r in runs if r["invocation"] in used]
    invocations = [inv for inv in invocations if inv["id"] in used or inv["id"] == invocation]
    latest_ffcv = next((inv["ffcv"] for inv in reversed(invocations) if inv.get("ffcv")), None)
    meta = {
        "benchmark": "io_bench",
        "command": this["command"],
        "args": this["args"],
        "machine": machine,
        "data": data,
        "datasets": ds_info,
        "eviction_check": eviction,
        "device_probe": probe,
        "verification": verification,
        "repeats": args.repeats,
        "raw_repeats": args.raw_repeats,
        "merged": bool(args.merge and len(invocations) > 1),
        "invocations": invocations,
        "skipped_readers": skipped,
        "ffcv": latest_ffcv,
        "method": {
            "timed": "building the pipeline + iterating one full epoch in the main process (no DataLoader workers); "
                     "FFCV: the epoch only (loaders are built and compiled before the rounds)",
            "speedup": "t(ratio 0)/t(ratio r) for the same reader, cache and variant, paired within a round; median over rounds",
            "cpu_speedup": "the same with process CPU time (time.process_time, all threads): robust to other jobs' load "
                           "when the epoch is CPU-bound, blind to I/O waits",
            "samples_per_s_vs_webdataset": "t(wds_after, r=0)/t(reader, r=0), paired within a round of one invocation; median",
            "samples_per_s_vs_streamprune": "FFCV rows: t(streamprune, r=0)/t(reader, r=0), paired the same way",
            "read_fraction_of_data": "median /proc/self/io read_bytes delta / total bytes of the files read (tar shards, or the .beton)",
            "cold": "POSIX_FADV_DONTNEED on every file the reader opens (each shard, .index.json, .index.npz, the manifest, "
                    "the mask; counted per run in cache_files) right before the run",
            "warm": "every such file read completely right before the run",
            "ratio_0": "webdataset readers have no .select at ratio 0; streamprune reads the all-keep mask file",
            "decode": ".decode('pil'): PIL Image.open + load() + convert('RGB') per jpg; FFCV: see ffcv.decoder",
            "merge": "rows come from the latest invocation that ran their (reader, cache, variant); see invocations",
            "device": "median_device_*: deltas of the shards' block device counters over the run (pagecache.block_stat; device-wide); "
                      "device_busy_ratio: io_ms(ratio 0)/io_ms(ratio r), paired per round, median; device_model_speedup: "
                      "(requests x fixed cost + bytes / bandwidth) at ratio 0 over the same at ratio r, with device_probe's line",
        },
        "total_seconds": None,
    }
    this["total_seconds"] = meta["total_seconds"] = time.perf_counter() - t_start
    return {**meta, "summary": rows, "targets": targets, "runs": runs}


def resummarize(saved: dict[str, Any]) -> dict[str, Any]:
    """Recompute ``summary`` and ``targets`` of io_bench results from their runs (measures nothing)."""
    saved = dict(saved)
    invocations = saved.get("invocations") or [{"id": "earlier"}]
    for r in saved["runs"]:
        r.setdefault("invocation", invocations[-1]["id"])
    rows = summarize(saved["runs"], saved["datasets"], [inv["id"] for inv in invocations])
    add_device_model(rows, saved.get("device_probe"))
    saved["summary"] = rows
    saved["targets"] = evaluate_targets(rows, sorted({r["ratio"] for r in rows}))
    return saved


def merge_previous(path: str, runs: list[dict], this: dict, ds_info: dict) -> tuple[list[dict], list[dict], dict]:
    """Add the runs of an earlier ``io_bench.json`` (same data) to this invocation's.

    Earlier runs are kept as they are; :func:`summarize` takes each (reader, cache, variant)
    from the latest invocation that ran it.

    Raises:
        SystemExit: The earlier results were measured on other data or masks.
    """
    if not os.path.exists(path):
        log.warning("--merge: %s does not exist yet; writing this invocation alone", path)
        return runs, [this], ds_info
    with open(path) as fh:
        old = json.load(fh)
    old_invocations = old.get("invocations") or [{
        "id": old.get("invocation", "earlier"),
        "command": old.get("command"),
        "args": old.get("args"),
        "readers": (old.get("args") or {}).get("readers"),
        "repeats": old.get("repeats"),
        "raw_repeats": old.get("raw_repeats"),
        "loadavg_start": (old.get("machine") or {}).get("load_avg_at_start"),
        "eviction_check": old.get("eviction_check"),
        "verification": old.get("verification"),
        "total_seconds": old.get("total_seconds"),
    }]
    legacy = old_invocations[-1]["id"]
    for name, info in (old.get("datasets") or {}).items():
        now = ds_info.get(name)
        if now is None:
            ds_info[name] = info
            continue
        for key in ("samples", "data_bytes", "kept"):
            if info.get(key) != now.get(key):
                raise SystemExit(
                    f"--merge: {path} was measured on other data (dataset {name!r}: {key} {info.get(key)} there, "
                    f"{now.get(key)} now); run without --merge"
                )
    if this["id"] in {inv["id"] for inv in old_invocations}:
        this["id"] += "b"
        for r in runs:
            r["invocation"] = this["id"]
    old_runs = [{**r, "invocation": r.get("invocation", legacy)} for r in old.get("runs", [])]
    print(f"--merge: keeping {len(old_runs)} runs of {len(old_invocations)} earlier invocation(s) from {path}")
    return old_runs + runs, old_invocations + [this], ds_info


def tables(results: dict[str, Any]) -> str:
    """Speed-up per (variant, cache, reader) and ratio, and the cold read fractions."""
    summary = results["summary"]
    ratios = [r for r in mdtable.ratios_of(summary) if r > 0]
    groups: dict[tuple, dict[float, dict]] = {}
    for row in summary:
        groups.setdefault((row["variant"], row["cache"], row["reader"]), {})[float(row["ratio"])] = row
    headers = ["variant, cache", "reader", "r=0 samples/s"] + [f"r={r:g} speed-up" for r in ratios] + [
        "read fraction at " + " / ".join(f"{r:g}" for r in ratios)
    ]
    rows = []
    for (variant, cache, reader), by_ratio in groups.items():
        base = by_ratio.get(0.0, {})
        cells = [f"{variant}, {cache}", reader, mdtable.fmt_num(base.get("median_samples_per_s"), 0)]
        for r in ratios:
            row = by_ratio.get(r)
            cells.append("-" if row is None else f"{row['speedup']:.2f} [{row['speedup_min']:.2f}-{row['speedup_max']:.2f}]")
        fracs = [by_ratio[r].get("read_fraction_of_data") for r in ratios if r in by_ratio]
        cells.append(" / ".join(f"{f:.3f}" for f in fracs if f is not None) if cache == "cold" else "-")
        rows.append(cells)
    rows.append(["ideal 1/(1-r)", "", ""] + [f"{1 / (1 - r):.2f}" for r in ratios] + [" / ".join(f"{1 - r:.1f}" for r in ratios)])
    return ("Epoch-time speed-up t(0)/t(r), paired within a round, median [min-max]; bytes read from storage / data size (cold).\n\n"
            + mdtable.markdown_table(headers, rows, "ll" + "r" * (len(headers) - 2)))


class IoSuite(Suite):
    """``io``: pruned vs unpruned epoch time and bytes read, webdataset vs streamprune vs FFCV.

    The reader rows (``--only readers``) live in their own file, ``io_readers.json``; their
    table and targets follow io_bench's own.
    """
    name, title = "io", "I/O: pruned vs unpruned reads (tar shards)"
    has_plot = True
    also_reads = (io_readers.RESULTS_NAME,)
    measures = ("streamprune/readers/byterange.py", "streamprune/readers/webdataset.py", "streamprune/readers/mapstyle.py",
                "streamprune/readers/ffcv.py", "streamprune/readers/plan.py", "streamprune/readers/scheduler.py",
                "streamprune/masks.py", "streamprune/indexfile.py", "streamprune/shardindex.py")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(configure), staticmethod(run)
    log_format = "%(levelname)s %(name)s: %(message)s"

    def output_name(self, args: argparse.Namespace) -> str:
        """``io_readers`` for ``--only readers`` (its own results file), else ``io_bench``."""
        return os.path.splitext(io_readers.RESULTS_NAME)[0] if args.only == "readers" else self.stem

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Summary and targets from the stored runs (the reader rows' file is summarised when measured)."""
        if results.get("part") == "reader rows" or "runs" not in results or "datasets" not in results:
            return results
        return resummarize(results)

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Speed-up against ratio per reader (:func:`plot`; none for the reader rows)."""
        if results.get("summary") and "variant" in results["summary"][0]:
            plot(results["summary"], sorted({r["ratio"] for r in results["summary"]}), path, results)

    def _reader_rows(self, results: dict[str, Any]) -> dict[str, Any] | None:
        return io_readers.load(self.results_dir, quick=bool((results.get("args") or {}).get("quick")))

    def tables(self, results: dict[str, Any]) -> str:
        """io_bench's table, every row in full, then the reader rows' (when they have been run)."""
        text = "\n\n".join(p for p in (tables(results), detail_tables(results["summary"], results)) if p)
        rows = self._reader_rows(results)
        return text if rows is None else text + "\n\n" + io_readers.readers_table(rows)

    def targets(self, results: dict[str, Any]) -> list[Target]:
        """io_bench's targets, then the reader rows' (each with the command that measured it)."""
        out = super().targets(results)
        rows = self._reader_rows(results)
        if rows is not None:
            out += [Target.from_dict(t, rows.get("command")) for t in rows.get("targets") or []]
        return out
