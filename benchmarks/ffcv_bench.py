"""FFCV benchmark: pruned FFCV loading from keep masks, warm and cold page cache, two layouts.

Writes an ImageNet-like JPEG dataset (random-texture RGB images 256-320 px, stored by FFCV as
JPEG at quality 95, ~60 KB each, ~330 MB in all) as a ``.beton`` twice, with
``streamprune.write_beton``:

  default     the seeded shuffle (what ``streamprune shard --format beton`` writes)
  page-aware  samples of a class together in FFCV pages (``--layout page-aware``)

The dataset has 10 classes of ~520 images (~32 MB, ~4 FFCV pages of 8 MiB each), keeping the
ImageNet property that matters here: a class spans several pages (ImageNet: ~1300 images of
~110 KB, ~17 pages per class).

Masks are made once on the default manifest (sample-level random, and class-level random:
whole classes removed) and applied to the page-aware file by sample key
(``translate_mask``), so both layouts load exactly the same samples. Each config builds one
``streamprune.pruned_ffcv_loader`` (``indices=`` the kept samples) with decode
(``CenterCropRGBImageDecoder((224, 224), 224/256)`` + ``ToTensor``; labels ``IntDecoder``),
``batch_size`` 64, ``num_workers`` 2, ``drop_last=False``:

  layout x order     default + RANDOM; page-aware + QUASI_RANDOM (page by page)
  access             mmap: os_cache=True (FFCV memory-maps the file; the kernel reads around
                     each page fault, read_ahead_kb of the device);
                     mmap-random: os_cache=True, readahead=False (the map gets MADV_RANDOM: only
                     faulted pages are read; cold runs only, warm it is the same as mmap);
                     pages: os_cache=False (FFCV's process cache: whole pages read with pread)
  cache              warm: the file is read into the page cache before the epoch;
                     cold: the file is evicted (POSIX_FADV_DONTNEED) right before the epoch,
                     and /proc/self/io read_bytes over the epoch is what came from storage
                     (FFCV's decode and page-reader threads run in this process, so they count)

Each loader is compiled and run once before timing (numba). The timed region is one epoch
(iterating the loader). Rounds are interleaved (every config once per round, shuffled order);
speed-up of ratio r = t(ratio 0) / t(ratio r) for the same layout, access and cache, paired
within a round, median over rounds; ideal = 1/(1-r). For os_cache=False the bytes FFCV reads
are predictable: pages touched by kept samples x page size, reported next to the measurement.

Run:  python -m benchmarks ffcv            (full, ~10-15 min on 2 cores)
      python -m benchmarks ffcv --quick    (smoke run on tiny data)

``run(BenchConfig(...))`` returns the rows as a dict; the FFCV helpers this suite shares with
``io_bench.py`` (``ffcv_pipelines``, ``run_epoch``, ``release_mmap``, ``page_stats``,
``read_ahead_kb``) are in ``pagecache.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import streamprune as sp

from . import ffcvloop, jpegdata, mdtable, pagecache, provenance, resultsfile, stats
from .suite import Suite, Target

log = logging.getLogger("ffcv_bench")

GENERATOR_VERSION = 1
LAYOUT_ORDER = {"default": "random", "page-aware": "quasi_random"}
# access mode -> (os_cache, readahead)
ACCESS = {"mmap": (True, True), "mmap-random": (True, False), "pages": (False, True)}
ACCESS_LABELS = {
    "mmap": "os_cache on (FFCV memory map, kernel read-around)",
    "mmap-random": "os_cache on, readahead=False (MADV_RANDOM)",
    "pages": "os_cache off (FFCV reads whole pages)",
}


@dataclass
class BenchConfig:
    """What to run (defaults: the full benchmark)."""

    data_dir: str = os.path.join(resultsfile.DEFAULT_DATA, "ffcv_jpeg")
    out_dir: str = resultsfile.DEFAULT_RESULTS
    samples: int = 5200
    classes: int = 10
    quality: int = 95
    page_size: int = 1 << 23
    ratios: tuple = (0.4, 0.6, 0.8)
    levels: tuple = ("sample", "class")
    layouts: tuple = ("default", "page-aware")
    access_warm: tuple = ("mmap", "pages")
    access_cold: tuple = ("mmap", "mmap-random", "pages")
    caches: tuple = ("warm", "cold")
    repeats: int = 3
    batch_size: int = 64
    num_workers: int = 2
    seed: int = 0
    write_workers: int = 2
    plot: bool = True
    extra: dict = field(default_factory=dict)


class BenchSource:
    """``samples`` synthetic JPEGs (``jpegdata.make_jpeg``) over ``classes`` balanced classes."""

    def __init__(self, samples: int, classes: int, seed: int) -> None:
        self.samples = samples
        self.seed = seed
        self.labels = np.random.default_rng([seed, 11]).permutation(np.arange(samples) % classes)
        self.class_names = [f"c{c:02d}" for c in range(classes)]

    def __len__(self) -> int:
        return self.samples

    def key_label(self, i: int) -> tuple[str, int]:
        return f"img{i:08d}", int(self.labels[i])

    def __getitem__(self, i: int):
        key, label = self.key_label(i)
        return key, {"jpg": jpegdata.make_jpeg(i, self.seed)}, label


def prepare_betons(cfg: BenchConfig) -> dict:
    """Write (or reuse) the dataset in each layout; returns ``{layout: Manifest}``."""
    out = {}
    for layout in cfg.layouts:
        directory = os.path.join(cfg.data_dir, layout)
        params = {
            "generator_version": GENERATOR_VERSION,
            "samples": cfg.samples,
            "classes": cfg.classes,
            "quality": cfg.quality,
            "page_size": cfg.page_size,
            "seed": cfg.seed,
            "layout": layout,
        }
        meta_path = os.path.join(directory, "bench_meta.json")
        if os.path.exists(meta_path) and os.path.exists(os.path.join(directory, "manifest.json")):
            with open(meta_path) as fh:
                if json.load(fh).get("params") == params:
                    log.info("reusing %s", directory)
                    out[layout] = sp.Manifest.load(directory)
                    continue
        log.info("writing %d JPEG samples as a %s-layout .beton into %s ...", cfg.samples, layout, directory)
        t0 = time.perf_counter()
        manifest = sp.write_beton(
            BenchSource(cfg.samples, cfg.classes, cfg.seed),
            directory,
            write_mode="jpg",
            quality=cfg.quality,
            layout=layout,
            page_size=cfg.page_size,
            workers=cfg.write_workers,
            seed=cfg.seed,
            progress=False,
            overwrite=True,  # a .beton of other parameters: replaced
        )
        os.sync()
        with open(meta_path, "w") as fh:
            json.dump({"params": params, "seconds": time.perf_counter() - t0}, fh)
        log.info("  %.1f MB in %.1f s", manifest.total_bytes / 1e6, time.perf_counter() - t0)
        out[layout] = manifest
    return out


def make_masks(manifest, cfg: BenchConfig) -> dict:
    """``{(level, ratio): KeepMask}`` on ``manifest`` (ratio 0: ``None``, everything)."""
    masks = {("none", 0.0): None}
    for level in cfg.levels:
        for ratio in cfg.ratios:
            masks[(level, ratio)] = sp.random_mask(manifest, ratio, level=level, seed=cfg.seed + 1)
    return masks


def run(cfg: BenchConfig) -> dict:
    """Run the benchmark; returns ``{"meta", "rows", "targets", "runs", "checks"}``."""
    t_start = time.perf_counter()
    manifests = prepare_betons(cfg)
    base = manifests[cfg.layouts[0]]
    masks = make_masks(base, cfg)
    paths = {layout: m.shard_path(0) for layout, m in manifests.items()}
    sizes = {layout: os.path.getsize(p) for layout, p in paths.items()}
    checks = {"eviction": pagecache.check_eviction([paths[cfg.layouts[0]]], sizes[cfg.layouts[0]])}
    log.info("eviction check: cold read %.2f of the file, warm %.4f -> %s",
             checks["eviction"]["cold_fraction"], checks["eviction"]["warm_read_bytes"] / sizes[cfg.layouts[0]],
             "ok" if checks["eviction"]["ok"] else "NOT OK")

    configs = []
    for layout in cfg.layouts:
        manifest = manifests[layout]
        for (level, ratio), mask in masks.items():
            if layout == "page-aware" and level == "sample":
                continue  # grouping by class cannot help a sample-level random mask
            keep = None if mask is None else sp.translate_mask(mask, manifest).keep
            stats = ffcvloop.page_stats(manifest, keep)
            for access in dict.fromkeys(cfg.access_warm + cfg.access_cold):
                os_cache, readahead = ACCESS[access]
                configs.append({
                    "layout": layout, "order": LAYOUT_ORDER[layout], "level": level, "ratio": ratio,
                    "access": access, "os_cache": os_cache, "readahead": readahead,
                    "caches": tuple(c for c in cfg.caches if access in (cfg.access_warm if c == "warm" else cfg.access_cold)),
                    "mask": mask, "kept": int(manifest.num_samples if keep is None else keep.sum()),
                    "keep": keep, **stats,
                })
    log.info("%d loader configs; compiling and checking each once (warm cache) ...", len(configs))
    loaders = {}
    for i, c in enumerate(configs):
        loader = sp.pruned_ffcv_loader(
            manifests[c["layout"]], c["mask"], batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            order=c["order"], os_cache=c["os_cache"], readahead=c["readahead"], pipelines=ffcvloop.ffcv_pipelines(),
            seed=cfg.seed, drop_last=False,
        )
        pagecache.warm([paths[c["layout"]]])
        seconds, n, checksum = ffcvloop.run_epoch(loader)
        ffcvloop.release_mmap(loader)
        labels = manifests[c["layout"]].labels()
        expected = labels if c["keep"] is None else labels[c["keep"]]
        if n != c["kept"] or checksum != int(expected.sum()):
            raise RuntimeError(f"config {i}: loaded {n} samples (label sum {checksum}), expected {c['kept']} ({int(expected.sum())})")
        loaders[i] = loader
    checks["same_samples"] = "every config loaded exactly its kept count with the kept labels' sum"

    runs = []
    rng = random.Random(cfg.seed)
    for rnd in range(cfg.repeats):
        for cache in cfg.caches:
            order = [i for i, c in enumerate(configs) if cache in c["caches"]]
            rng.shuffle(order)
            for i in order:
                c = configs[i]
                path = paths[c["layout"]]
                if cache == "warm":
                    pagecache.warm([path])
                else:
                    pagecache.evict([path])
                gc.collect()
                rb0 = pagecache.read_bytes()
                seconds, n, _ = ffcvloop.run_epoch(loaders[i])
                read = pagecache.read_bytes() - rb0
                ffcvloop.release_mmap(loaders[i])
                runs.append({"round": rnd, "config": i, "cache": cache, "seconds": seconds, "samples": n, "read_bytes": read})
        log.info("round %d/%d done (%.0f s elapsed)", rnd + 1, cfg.repeats, time.perf_counter() - t_start)

    rows = summarize(configs, runs, sizes, cfg)
    targets = evaluate_targets(rows)
    meta = {
        "command": provenance.command_line(),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("extra",)},
        "machine": provenance.machine_info(),
        "ffcv": provenance.package_versions(["ffcv", "numba", "opencv-python"]),
        "read_ahead_kb": pagecache.read_ahead_kb(paths[cfg.layouts[0]]),
        "files": {layout: {"path": paths[layout], "bytes": sizes[layout], "samples": manifests[layout].num_samples}
                  for layout in cfg.layouts},
        "seconds_total": time.perf_counter() - t_start,
    }
    described = [{k: v for k, v in c.items() if k not in ("mask", "keep")} for c in configs]
    return {"meta": meta, "rows": rows, "targets": targets, "configs": described, "runs": runs, "checks": checks}


def summarize(configs, runs, sizes, cfg: BenchConfig) -> list[dict]:
    """One row per (config, cache): medians, paired speed-ups, bytes read."""
    by = {(r["config"], r["cache"], r["round"]): r for r in runs}
    baseline = {}
    for i, c in enumerate(configs):
        if c["ratio"] == 0.0:
            baseline[(c["layout"], c["access"])] = i
    rows = []
    for i, c in enumerate(configs):
        for cache in cfg.caches:
            mine = [by[(i, cache, r)] for r in range(cfg.repeats) if (i, cache, r) in by]
            if not mine:
                continue
            b = baseline[(c["layout"], c["access"])]
            speedups = [by[(b, cache, r["round"])]["seconds"] / r["seconds"] for r in mine if (b, cache, r["round"]) in by]
            seconds = stats.median([r["seconds"] for r in mine])
            read = stats.median([r["read_bytes"] for r in mine])
            ideal = 1.0 / (1.0 - c["ratio"])
            speedup = stats.median(speedups)
            rows.append({
                "layout": c["layout"], "order": c["order"], "level": c["level"], "ratio": c["ratio"],
                "access": c["access"], "os_cache": c["os_cache"], "readahead": c["readahead"],
                "cache": cache, "kept": c["kept"],
                "seconds": seconds, "seconds_all": [r["seconds"] for r in mine],
                "samples_per_s": c["kept"] / seconds,
                "speedup_vs_r0": speedup, "ideal": ideal, "efficiency": speedup / ideal,
                "read_bytes": int(read), "read_bytes_all": [r["read_bytes"] for r in mine],
                "read_fraction": read / sizes[c["layout"]],
                "pages_touched": c["pages_touched"], "pages_total": c["pages_total"],
                "page_fraction": c["page_fraction"], "kept_data_fraction": c["kept_data_fraction"],
                "predicted_page_read_fraction": c["predicted_page_read_bytes"] / sizes[c["layout"]],
            })
    return rows


def find(rows, **kw) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def _speedup(rows: list[dict], row: dict) -> stats.Ratio:
    """``row``'s speed-up over its r=0 row (same layout, access and cache), paired round by round."""
    base = next((b for b in rows if b["ratio"] == 0.0 and b["layout"] == row["layout"] and b["access"] == row["access"]
                 and b["cache"] == row["cache"]), None)
    if base is None or len(base["seconds_all"]) != len(row["seconds_all"]):  # rounds cannot be paired: no interval
        return stats.paired_ratio([], [])
    return stats.paired_ratio(base["seconds_all"], row["seconds_all"])


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's two targets, checked on every row they apply to (stored as :meth:`Target.to_dict`).

    A speed-up target is judged on the min-max of its per-round ratio (:mod:`benchmarks.stats`).
    """
    out = []
    for r in rows:
        where = {"layout": r["layout"], "level": r["level"], "access": r["access"], "ratio": r["ratio"]}
        if r["cache"] == "warm" and r["ratio"] in (0.4, 0.6, 0.8):
            paired = _speedup(rows, r)
            out.append(Target.check("warm, decode: speed-up >= 0.85 x 1/(1-r)", r["speedup_vs_r0"], 0.85 * r["ideal"], ">=",
                                    interval=paired.interval, rounds=paired.n or None, **where))
    for r in rows:
        where = {"layout": r["layout"], "level": r["level"], "access": r["access"], "ratio": r["ratio"]}
        if r["cache"] == "cold" and r["ratio"] == 0.8 and r["level"] == "class":
            out.append(Target.check("cold, class-level r=0.8: bytes read <= (1-r) + 10% of the file (required of page-aware)",
                                    r["read_fraction"], (1 - r["ratio"]) + 0.10, "<=", **where))
    return [t.to_dict() for t in out]


def _row_order(r):
    return (r["cache"] != "warm", r["layout"], list(ACCESS).index(r["access"]), r["level"] != "none", r["level"], r["ratio"])


def detail_table(result: dict) -> str:
    """The files, then every row in full (markdown)."""
    rows = result["rows"]
    meta = result["meta"]
    lines = [
        "files: " + ", ".join(f"{k} {v['bytes'] / 1e6:.0f} MB ({v['samples']} samples)" for k, v in meta["files"].items()),
        f"read_ahead_kb: {meta['read_ahead_kb']}, FFCV page size {meta['config']['page_size'] >> 20} MiB; "
        "access: " + "; ".join(f"{k} = {v}" for k, v in ACCESS_LABELS.items()),
        "",
    ]
    headers = ["layout", "order", "access", "cache", "level", "ratio", "kept", "s/epoch", "img/s",
               "speed-up", "ideal", "eff.", "read/file", "pages touched", "kept data"]
    table = []
    for r in sorted(rows, key=_row_order):
        table.append([
            r["layout"], r["order"], r["access"], r["cache"], r["level"], f"{r['ratio']:.1f}",
            r["kept"], f"{r['seconds']:.2f}", f"{r['samples_per_s']:.0f}", f"{r['speedup_vs_r0']:.2f}",
            f"{r['ideal']:.2f}", f"{r['efficiency']:.2f}", f"{r['read_fraction']:.3f}",
            f"{r['pages_touched']}/{r['pages_total']}", f"{r['kept_data_fraction']:.3f}",
        ])
    lines.append(mdtable.markdown_table(headers, table, "llllllrrrrrrrrr"))
    return "\n".join(lines)


_COLORS = {("default", "sample"): "tab:blue", ("default", "class"): "tab:orange", ("page-aware", "class"): "tab:green",
           ("page-aware", "sample"): "tab:purple"}
_STYLES = {"mmap": "-", "pages": "--", "mmap-random": ":"}
_MARKERS = {"mmap": "o", "pages": "s", "mmap-random": "^"}


def _series(rows, cache):
    for layout in ("default", "page-aware"):
        for access in ACCESS:
            for level in ("sample", "class"):
                pts = find(rows, layout=layout, access=access, cache=cache, level=level)
                base = find(rows, layout=layout, access=access, cache=cache, level="none")
                if pts:
                    style = {"color": _COLORS[(layout, level)], "linestyle": _STYLES[access], "marker": _MARKERS[access]}
                    yield f"{layout}, {level}, {access}", sorted(base + pts, key=lambda r: r["ratio"]), style


def plot(result: dict, path: str) -> None:
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib

    matplotlib.use("Agg")
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    ratios = sorted({r["ratio"] for r in rows})
    grid = np.linspace(0, max(ratios), 50)
    ax1.plot(grid, 1 / (1 - grid), "k--", label="ideal 1/(1-r)")
    ax1.plot(grid, 0.85 / (1 - grid), "k:", label="target 0.85 x ideal")
    for label, pts, style in _series(rows, "warm"):
        ax1.plot([p["ratio"] for p in pts], [p["speedup_vs_r0"] for p in pts], label=label, **style)
    ax1.set_xlabel("ratio removed r")
    ax1.set_ylabel("epoch speed-up vs r = 0 (warm cache, with decode)")
    ax1.set_title("Pruned FFCV loading, warm page cache")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.plot(grid, 1 - grid, "k--", label="kept fraction 1-r")
    ax2.plot(grid, 1.1 - grid, "k:", label="target (1-r) + 10%")
    for label, pts, style in _series(rows, "cold"):
        ax2.plot([p["ratio"] for p in pts], [p["read_fraction"] for p in pts], label=label, **style)
    ax2.set_xlabel("ratio removed r")
    ax2.set_ylabel("bytes read from storage / file size (cold cache)")
    ax2.set_title(f"Cold cache: bytes FFCV reads (read_ahead_kb={result['meta']['read_ahead_kb']}, "
                  f"page {result['meta']['config']['page_size'] >> 20} MiB)")
    ax2.set_ylim(0, 1.15)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``python -m benchmarks ffcv --help``; ``--data-dir``: the .beton files)."""
    p.add_argument("--samples", type=int, default=5200, help="images (default 5200: ~330 MB as FFCV JPEG q95)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5: fewer are never 'met', benchmarks/stats.py)")
    p.add_argument("--ratios", default="0.4,0.6,0.8")
    p.add_argument("--caches", default="warm,cold")


def config(a: argparse.Namespace) -> BenchConfig:
    """The parsed options as a :class:`BenchConfig` (``--quick``: tiny data, 2 rounds)."""
    cfg = BenchConfig(samples=a.samples, classes=a.classes, repeats=a.repeats, seed=a.seed, plot=not a.no_plot,
                      ratios=tuple(float(x) for x in a.ratios.split(",") if x.strip()),
                      caches=tuple(x.strip() for x in a.caches.split(",") if x.strip()))
    if a.quick:
        cfg.samples, cfg.repeats, cfg.page_size = min(cfg.samples, 600), min(cfg.repeats, 2), 1 << 21
        cfg.data_dir = os.path.join(resultsfile.DEFAULT_DATA, "ffcv_jpeg_quick")
    if a.data_dir:
        cfg.data_dir = a.data_dir
    cfg.out_dir = a.out
    return cfg


def tables(results: dict[str, Any]) -> str:
    """Speed-up per (cache, layout, order, access, level) and ratio, and the cold read fractions."""
    rows_in = results["rows"]
    ratios = [r for r in mdtable.ratios_of(rows_in) if r > 0]
    groups: dict[tuple, dict[float, dict]] = {}
    for row in rows_in:
        key = (row["cache"], row["layout"], row["order"], row["access"])
        groups.setdefault(key + (row["level"],), {})[float(row["ratio"])] = row
        if row["level"] == "none":
            for level in ("sample", "class"):
                groups.setdefault(key + (level,), {})[0.0] = row
    headers = ["cache", "layout, order", "access", "level", "r=0 samples/s"] + [f"r={r:g} speed-up" for r in ratios] + [
        "read fraction at " + " / ".join(f"{r:g}" for r in ratios)
    ]
    rows = []
    for (cache, layout, order, access, level), by_ratio in groups.items():
        if level == "none" or not any(r in by_ratio for r in ratios):
            continue
        base = by_ratio.get(0.0, {})
        cells = [cache, f"{layout}, {order}", access, level, mdtable.fmt_num(base.get("samples_per_s"), 0)]
        cells += ["-" if r not in by_ratio else f"{by_ratio[r]['speedup_vs_r0']:.2f}" for r in ratios]
        cells.append(" / ".join(f"{by_ratio[r]['read_fraction']:.3f}" for r in ratios if r in by_ratio) if cache == "cold" else "-")
        rows.append(cells)
    return ("Epoch-time speed-up t(0)/t(r) (median of repeats); bytes read from storage / file size (cold).\n\n"
            + mdtable.markdown_table(headers, rows, "llll" + "r" * (len(headers) - 4)))


class FfcvSuite(Suite):
    """``ffcv``: pruned ``.beton`` loading, default vs page-aware layout, os_cache on/off, warm/cold."""
    name, title = "ffcv", "FFCV backend: pruned .beton loading"
    has_plot = True
    measures = ("streamprune/readers/ffcv.py", "streamprune/betonindex.py", "streamprune/writers/beton.py", "streamprune/masks.py")
    add_arguments, configure, measurement = staticmethod(add_arguments), staticmethod(config), staticmethod(run)
    log_format = "%(asctime)s %(message)s"

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The targets from the stored rows (:func:`evaluate_targets`)."""
        return {**results, "targets": evaluate_targets(results["rows"])}

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Speed-up against ratio per layout and access (:func:`plot`)."""
        plot(results, path)

    def tables(self, results: dict[str, Any]) -> str:
        """The speed-up table, then every row in full (:func:`detail_table`)."""
        return tables(results) + "\n\n" + detail_table(results)
