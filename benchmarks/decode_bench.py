"""JPEG decode cost per core, per decoder, at full and reduced size: the decoder rows of the I/O benchmarks.

Every installed decoder of :mod:`streamprune.decode` (simplejpeg, PyTurboJPEG, PIL) decodes the
same ``--decode-samples`` JPEGs (io_bench's dataset: read from ``--data-dir`` when it holds the
generated shards, else made by the same generator), at full size and at each ``--decode-sizes``
(DCT-scaled decode, then resized to that shorter side), beside the reference that the loaders
used before ``streamprune.decode``: PIL's full decode, then torchvision's ``Resize``. Rounds are
interleaved (every config once per round, shuffled); the measure is samples per CPU-second of
the decoding thread (one core, whatever else the machine runs), median over rounds, with the
mean pixel difference of each config from the PIL reference (untimed).

Run:  python -m benchmarks io_decode [--decode-samples 1000 --decode-sizes 128,32 --repeats 3]
Results: ``benchmarks/results/io_decode.json`` (before this suite existed: ``python -m benchmarks io --only decode``).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import jpegdata, mdtable, provenance, resultsfile, stats
from .suite import Suite

__all__ = ["DECODE_REFERENCE", "DecodeSuite", "decode_configs", "decode_table", "decoder_equivalence", "decoder_rows"]


DECODE_REFERENCE = "pil+Resize"  # what the loaders did before streamprune.decode: PIL full decode, then Resize(size)


def decode_inputs(args: argparse.Namespace) -> tuple[list[bytes], str]:
    """The first ``--decode-samples`` JPEGs of io_bench's dataset, in memory (reading is not timed).

    From the generated shards when ``--data-dir`` holds them; else made by the same generator
    (``jpegdata.make_jpeg(i, seed)``, the bytes ``JpegSource`` writes as sample ``i``), so the
    rows do not need the whole dataset generated.
    """
    n = args.decode_samples
    if os.path.exists(os.path.join(args.data_dir, "manifest.json")):
        import streamprune as sp  # deferred: like the rest of this module, the library loads only when measuring

        jpegs = []
        for sample in sp.PrunedSource(args.data_dir, shuffle=False, rank=0, world_size=1):
            jpegs.append(sample["jpg"])
            if len(jpegs) == n:
                break
        return jpegs, f"first {len(jpegs)} samples of {args.data_dir}"
    return [jpegdata.make_jpeg(i, args.seed) for i in range(n)], f"jpegdata.make_jpeg(i, seed={args.seed}) for i < {n} (the dataset's first samples)"


def decode_configs(sizes: Sequence[int]) -> list[tuple[str, int | None]]:
    """(decoder, size) of every row: each installed backend at full size and at each size, and the reference."""
    from streamprune.decode import available_decoders  # deferred: the library loads only when measuring

    return [(b, s) for b in available_decoders() for s in (None, *sizes)] + [(DECODE_REFERENCE, s) for s in sizes]


def make_decode_fn(backend: str, size: int | None):
    """A function ``bytes -> PIL.Image`` for one row."""
    # deferred: the library and torchvision load only when measuring
    from torchvision import transforms

    from streamprune.decode import image_decoder

    if backend == DECODE_REFERENCE:
        full, resize = image_decoder("pil"), transforms.Resize(size, antialias=True)
        return lambda data: resize(full.decode(data))
    return image_decoder(backend, size=size).decode


def decoder_rows(jpegs: Sequence[bytes], configs, repeats: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Decode every JPEG with every config, interleaved over ``repeats`` shuffled rounds.

    Each run decodes all of ``jpegs`` in this thread (the decoders start no threads), so
    samples per CPU-second of this thread (``time.thread_time``) is samples/s on one core,
    whatever else the machine runs; wall-clock samples/s is recorded beside it.

    Returns:
        ``(runs, rows)``: one dict per run, and per config the medians over rounds.
    """
    fns = {c: make_decode_fn(*c) for c in configs}
    for fn in fns.values():  # warm-up, untimed: imports, library loading, first allocations
        fn(jpegs[0])
    runs = []
    rng = random.Random(seed)
    for rnd in range(repeats):
        order = list(configs)
        rng.shuffle(order)
        for backend, size in order:
            fn = fns[(backend, size)]
            gc.collect()
            c0, w0 = time.thread_time(), time.perf_counter()
            pixels = 0
            for data in jpegs:
                image = fn(data)
                pixels += image.size[0] * image.size[1]
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            runs.append({"decoder": backend, "size": size, "round": rnd, "samples": len(jpegs), "cpu_s": cpu, "wall_s": wall,
                         "samples_per_cpu_s": len(jpegs) / cpu, "samples_per_wall_s": len(jpegs) / wall,
                         "mean_output_pixels": pixels / len(jpegs)})
        print(f"decode round {rnd + 1}/{repeats} (load avg {os.getloadavg()[0]:.1f})", flush=True)
    rows = []
    for backend, size in configs:
        mine = [r for r in runs if r["decoder"] == backend and r["size"] == size]
        per_core = [r["samples_per_cpu_s"] for r in mine]
        rows.append({"decoder": backend, "size": size, "rounds": len(mine),
                     "samples_per_s_per_core": stats.median(per_core), "per_core_min": min(per_core), "per_core_max": max(per_core),
                     "samples_per_wall_s": stats.median([r["samples_per_wall_s"] for r in mine]),
                     "mean_output_pixels": mine[0]["mean_output_pixels"]})
    return runs, rows


def decoder_equivalence(jpegs: Sequence[bytes], configs, n: int = 50) -> list[dict]:
    """Per config, mean absolute pixel difference (grey levels of 255) from the PIL reference on ``n`` images.

    Full-size rows compare with PIL's full decode; sized rows with PIL's full decode resized
    by torchvision's ``Resize(size)`` (the reference row). Untimed.
    """
    refs = {size: make_decode_fn("pil", None) if size is None else make_decode_fn(DECODE_REFERENCE, size) for _, size in configs}
    out = []
    for backend, size in configs:
        fn = make_decode_fn(backend, size)
        diffs = []
        for data in jpegs[:n]:
            got, want = fn(data), refs[size](data)
            if got.size != want.size or got.mode != want.mode:
                raise AssertionError(f"{backend} size={size}: {got.mode} {got.size}, PIL gives {want.mode} {want.size}")
            diffs.append(float(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32)).mean()))
        out.append({"decoder": backend, "size": size, "images": len(diffs), "mean_abs_diff": float(np.mean(diffs)),
                    "max_image_mean_abs_diff": float(max(diffs))})
    return out


def run_decoder_rows(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the decoder rows; the results (the suite base writes ``io_decode.json``)."""
    t_start = time.perf_counter()
    machine = provenance.machine_info()
    machine["packages"].update(provenance.package_versions(["simplejpeg", "PyTurboJPEG"]))
    sizes = [int(x) for x in args.decode_sizes.split(",") if x.strip()]
    if args.quick:
        args.decode_samples = min(args.decode_samples, 100)
    jpegs, source = decode_inputs(args)
    configs = decode_configs(sizes)
    print(f"decoder rows: {len(jpegs)} JPEGs (mean {np.mean([len(j) for j in jpegs]) / 1e3:.1f} KB) from {source}; "
          f"{len(configs)} configs x {args.repeats} rounds", flush=True)
    equivalence = decoder_equivalence(jpegs, configs)
    load_start = os.getloadavg()
    runs, rows = decoder_rows(jpegs, configs, args.repeats, args.seed)
    from streamprune.decode import resolve_decoder  # deferred: the library loads only when measuring

    results = {
        "suite": "io_decode", "part": "decoder rows", "command": provenance.command_line(), "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine, "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "data": {"source": source, "samples": len(jpegs), "mean_jpeg_bytes": float(np.mean([len(j) for j in jpegs])),
                 "sides_px": "256-320 (jpegdata.make_jpeg), 4:4:4, quality 95"},
        "auto_decoder": resolve_decoder("auto"),
        "timed": "decoding every JPEG to a PIL image (sized rows: resized to shorter side `size`) in this thread, "
                 "bytes already in memory; per core = samples / thread CPU seconds, median over interleaved rounds",
        "reference": f"{DECODE_REFERENCE}: image_decoder('pil') full decode, then torchvision Resize(size, antialias=True)",
        "equivalence": equivalence, "summary": rows, "runs": runs, "total_seconds": time.perf_counter() - t_start,
    }
    return results


def decode_table(results: dict[str, Any]) -> str:
    """The decoder rows as a markdown table."""
    eq = {(e["decoder"], e["size"]): e["mean_abs_diff"] for e in results["equivalence"]}
    headers = ["decoder", "size", "samples/s per core", "[min-max]", "wall samples/s", "mean |diff| vs PIL (levels)"]
    rows = [[r["decoder"], "full" if r["size"] is None else r["size"], mdtable.fmt_num(r["samples_per_s_per_core"], 0),
             f"{r['per_core_min']:.0f}-{r['per_core_max']:.0f}", mdtable.fmt_num(r["samples_per_wall_s"], 0),
             f"{eq.get((r['decoder'], r['size']), float('nan')):.2f}"] for r in results["summary"]]
    return (f"JPEG decode, one core ({results['data']['samples']} JPEGs, mean {results['data']['mean_jpeg_bytes'] / 1e3:.0f} KB); "
            f"auto = {results['auto_decoder']}\n\n" + mdtable.markdown_table(headers, rows, "llrrrr"))


class DecodeSuite(Suite):
    """``io_decode``: JPEG decode samples/s per core per decoder, full and reduced size."""

    name, title = "io_decode", "JPEG decode per core: simplejpeg, PyTurboJPEG, PIL, full and reduced size (no targets)"
    results_name = "io_decode"
    measures = ("streamprune/decode.py",)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Samples, sizes and rounds; ``--data-dir`` defaults to io_bench's 512 MiB dataset."""
        parser.add_argument("--decode-samples", type=int, default=1000, help="JPEGs decoded per config and round (default 1000)")
        parser.add_argument("--decode-sizes", default="128,32", help="sizes of the reduced-size rows (default 128,32)")
        parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5: fewer are never 'met')")

    def measure(self, args: argparse.Namespace) -> dict[str, Any]:
        """Decode every JPEG with every config (:func:`run_decoder_rows`)."""
        if args.data_dir is None:  # io_bench's dataset, when it has been generated
            args.data_dir = os.path.join(resultsfile.DEFAULT_DATA, "io_jpeg_quick" if args.quick else "io_jpeg_512mb")
        if args.quick:
            args.repeats = min(args.repeats, 2)
        return run_decoder_rows(args)

    def tables(self, results: dict[str, Any]) -> str:
        """The decoder rows (:func:`decode_table`)."""
        return decode_table(results)
