"""DLC's cost and FlexRand's gain, placed against the papers' own protocols.

Two questions the downstream suite leaves open (issue 22, item 6):

**A. Cost, extrapolated to the papers' training budgets.** DLC (Jiang et al., ICLR 2025) needs no
training: K + 1 = 51 evaluation passes of a pretrained backbone. Training-based scores need a
training run, and their papers run it far longer than the downstream suite's 4-epoch recording.
On one target (Fashion-MNIST test split, 5,000 downstream-train images, the downstream suite's
``small_cnn`` backbone and finetune recipe) this suite measures, in ``--rounds`` rounds:

* DLC's wall time (``score_source(method="dlc", levels=50)``, workers=1: two reader passes);
* one training epoch of ``record_dynamics`` (the recording EL2N, forgetting and AUM are computed
  from; median of 2 epochs) and one evaluation-mode EL2N snapshot pass (``el2n_epochs=[2]``);

then multiplies the per-epoch cost by the epochs each method's paper trains for
(:data:`PAPER_PROTOCOLS`): EL2N, Paul et al. 2021: scores at epoch 20 averaged over 10
independent runs (200 training epochs + 10 snapshot passes); forgetting and AUM, as CCS's
reference code collects them (Zheng et al. 2023, ``train.py --epochs 200``): one 200-epoch
full-data run. **These totals are an extrapolation** (per-epoch time x epochs), not a measured
200-epoch run; both sides scale linearly in N, so the ratio carries to larger sets of the same
images and model, not to another architecture.

**B. DLC + FlexRand against random where hardness varies.** The same target with 30% symmetric
label noise (``--noise``: that fraction of the downstream-train labels replaced by a uniformly
drawn other class, seed 0; the test part keeps its true labels), and the clean target as a
control (``--no-clean`` skips it). Per budget (fraction KEPT, default 10%, 30%, 50%) and seed (``--seeds``, default 5;
the seed sets the selection, the new head's initialisation and the data order), the backbone is
finetuned on the kept subset for the downstream suite's fixed step count (4 epochs of the full
set: 400 steps of 50) and tested on the clean test part. Methods: ``dlc-flexrand`` (DLC K = 50
from the pretrained backbone, FlexRand gamma 0.5), ``random`` (uniform), ``cb-random``
(class-balanced random). The gain is the paired difference DLC+FlexRand - random per seed,
reported as the mean with a 95% Student-t interval and the min-max over seeds; the JSON also
records the share of mislabelled samples each method kept. The paper reports +2.6 points at 10%
kept and +1.1 at 50% (average over five image datasets); "reproduces" below means the whole
interval lies above 0, "contradicted" that it lies below 0, and otherwise "not detected".

Run:  python -m benchmarks dlc                  (~25 min on 2 idle cores; far longer when shared)
      python -m benchmarks dlc --no-clean --rounds 2   (the noisy target only)
      python -m benchmarks dlc --quick          (smoke run, results/quick/)
Writes ``benchmarks/results/dlc_bench.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import mdtable, resultsfile, stats
from .finetune import ARCH, FASHION, INPUT_SIZE, cache_matches, pretrain_backbone
from .suite import Suite, Target

log = logging.getLogger("dlc_bench")

#: The training budgets the papers use, for the extrapolation (CIFAR-10 protocols).
PAPER_PROTOCOLS: dict[str, dict[str, Any]] = {
    "el2n": {"epochs": 20, "runs": 10, "snapshots": 10,
             "source": "Paul et al. 2021 (arXiv 2107.07075): EL2N at epoch 20, averaged over 10 independent runs"},
    "forgetting": {"epochs": 200, "runs": 1, "snapshots": 0,
                   "source": "Toneva et al. 2019 (arXiv 1812.05159) count events over a whole training run; CCS's reference "
                             "code (Zheng et al. 2023, arXiv 2210.15809) collects them in one 200-epoch run"},
    "aum": {"epochs": 200, "runs": 1, "snapshots": 0,
            "source": "CCS's reference code (Zheng et al. 2023, arXiv 2210.15809): AUM from the same 200-epoch full-data run"},
}
#: DLC + FlexRand minus random, points, average over five datasets (Jiang et al. 2025, arXiv 2402.05356).
PAPER_GAIN = {"0.1": 2.6, "0.5": 1.1, "0.9": 0.6}
METHODS = ("dlc-flexrand", "random", "cb-random")
#: Two-sided 95% Student-t quantiles by degrees of freedom (n - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


# ------------------------------------------------------------------------------------------
# pure helpers (unit-tested in tests/benchmarks/test_dlc_bench.py)


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile for ``df`` degrees of freedom (the next smaller tabulated df)."""
    if df < 1:
        return float("nan")
    return _T95[max(k for k in _T95 if k <= df)] if df <= 30 else 1.96


def paired_gain(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Per-seed differences ``a[i] - b[i]``: mean, 95% t interval, min-max and the verdict against 0.

    Args:
        a: One method's accuracies, one per seed.
        b: The other's, same seeds in the same order.

    Returns:
        ``{"diffs", "n", "mean", "ci95": [lo, hi], "min", "max", "verdict"}``; the verdict is
        ``"gain"`` when the whole interval is above 0, ``"loss"`` when below, else ``"not detected"``.
    """
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return {"diffs": d, "n": n, "mean": d[0] if d else float("nan"), "ci95": None, "min": min(d, default=float("nan")),
                "max": max(d, default=float("nan")), "verdict": "not detected"}
    mean = statistics.fmean(d)
    half = t95(n - 1) * statistics.stdev(d) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict = "gain" if lo > 0 else ("loss" if hi < 0 else "not detected")
    return {"diffs": [round(x, 3) for x in d], "n": n, "mean": mean, "ci95": [lo, hi], "min": min(d), "max": max(d), "verdict": verdict}


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric label noise: ``round(n * fraction)`` labels replaced by a uniformly drawn OTHER class.

    Args:
        labels: ``int64[n]`` true labels.
        fraction: Share of samples whose label is changed.
        num_classes: Number of classes.
        seed: Seed of the draw.

    Returns:
        ``(noisy labels, bool[n] flipped)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.permutation(n)[: int(round(n * fraction))]] = True
    shift = rng.integers(1, num_classes, size=n)  # 1..C-1: never the true class
    noisy = np.where(flipped, (labels + shift) % num_classes, labels)
    return noisy, flipped


def extrapolate(epoch_s: float, snapshot_s: float, dlc_s: float, protocols: dict[str, dict[str, Any]] = PAPER_PROTOCOLS) -> dict[str, Any]:
    """Each training-based method's time at its paper's budget, and its ratio to DLC's measured time.

    Args:
        epoch_s: Seconds per training epoch (measured).
        snapshot_s: Seconds per evaluation-mode snapshot pass (measured).
        dlc_s: DLC's measured seconds.
        protocols: Epochs, runs and snapshot passes per method.

    Returns:
        ``{method: {"epochs_total", "snapshots", "seconds", "ratio_to_dlc", "source"}}``; every
        ``seconds`` is ``epochs x runs x epoch_s + snapshots x snapshot_s``: an extrapolation.
    """
    out = {}
    for name, p in protocols.items():
        total_epochs = p["epochs"] * p["runs"]
        seconds = total_epochs * epoch_s + p["snapshots"] * snapshot_s
        out[name] = {"epochs_total": total_epochs, "snapshots": p["snapshots"], "seconds": seconds,
                     "ratio_to_dlc": seconds / dlc_s if dlc_s > 0 else float("nan"), "source": p["source"]}
    return out


# ------------------------------------------------------------------------------------------
# measuring


def prepare_targets(data_dir: str, cfg: dict, progress: bool) -> dict[str, dict[str, Any]]:
    """Shard the clean and the noisy downstream-train parts and the (clean) test part, cached."""
    # optional extra: scikit-learn; streamprune's writers load PIL and webdataset (heavy, only when the suite runs)
    from sklearn.model_selection import train_test_split

    from streamprune import write_shards
    from streamprune.sources import idx_source
    from streamprune.sources.arrays import FASHION_MNIST_CLASSES, ArraySource  # deferred with the block above

    src = idx_source(FASHION, split="t10k")
    images, labels = src.images, np.asarray(src.labels, dtype=np.int64)
    idx = np.arange(len(labels))
    tr, rest = train_test_split(idx, train_size=cfg["train"], stratify=labels, random_state=0)
    te = train_test_split(rest, train_size=cfg["test"], stratify=labels[rest], random_state=0)[0] if cfg["test"] < len(rest) else rest
    tr, te = np.sort(tr), np.sort(te)
    noisy, flipped = flip_labels(labels[tr], cfg["noise"], len(FASHION_MNIST_CLASSES), seed=0)
    out = {}
    parts = {"test": (te, labels[te], None), "clean": (tr, labels[tr], np.zeros(len(tr), bool)), f"noisy-{cfg['noise']:g}": (tr, noisy, flipped)}
    for name, (ids, y, flips) in parts.items():
        params = {"name": name, "train": cfg["train"], "test": cfg["test"], "noise": cfg["noise"], "version": 1}
        root = os.path.join(data_dir, f"{name}-{cfg['train']}-{cfg['test']}")
        if not (cache_matches(root, params) and os.path.exists(os.path.join(root, "manifest.json"))):
            write_shards(ArraySource(images[ids], y, FASHION_MNIST_CLASSES, prefix=f"dlc-{name.replace('.', 'p')}-"), root, samples_per_shard=1000,
                         workers=1, progress=progress, overwrite=True)
            resultsfile.write_json(os.path.join(root, "bench_meta.json"), {"params": params})
        out[name] = {"dir": root, "flipped": flips}
    return out


def time_costs(train_dir: str, init_ckpt: str, cfg: dict, work: str, progress: bool) -> list[dict[str, Any]]:
    """``--rounds`` rounds of: DLC's wall time, and a 2-epoch recording with one EL2N snapshot."""
    # heavy import (torch, numba), only when the suite runs
    from streamprune import Manifest
    from streamprune.dynamics import record_dynamics
    from streamprune.scoring import score_source

    train = Manifest.load(train_dir)
    rounds = []
    for r in range(cfg["rounds"]):
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        score_source(train, "dlc", [0.5], os.path.join(work, "dlc"), workers=1, selector="flexrand", surrogate=ARCH, checkpoint=init_ckpt,
                     input_size=INPUT_SIZE, batch_size=256, seed=0, progress=progress, levels=cfg["levels"])
        dlc_s = time.perf_counter() - t0
        rec = record_dynamics(train, ARCH, os.path.join(work, "dynamics"), epochs=2, checkpoint=init_ckpt, batch_size=cfg["batch_size"],
                              lr=cfg["lr"], optimizer="sgd", weight_decay=cfg["weight_decay"], schedule="onecycle", input_size=INPUT_SIZE,
                              workers=1, seed=0, el2n_epochs=[2], progress=progress)
        with open(rec.files.meta) as fh:
            snapshot_s = float(np.sum(json.load(fh)["el2n"]["seconds"]))
        rounds.append({"dlc_seconds": round(dlc_s, 3), "epoch_seconds": [round(s, 3) for s in rec.training.epoch_seconds],
                       "snapshot_seconds": round(snapshot_s, 3), "load": list(os.getloadavg())})
        log.info("cost round %d: DLC %.1f s, epoch %s s, snapshot %.1f s", r + 1, dlc_s, rec.training.epoch_seconds, snapshot_s)
    shutil.rmtree(work, ignore_errors=True)
    return rounds


def cost_summary(rounds: Sequence[dict[str, Any]], levels: int) -> dict[str, Any]:
    """Medians over the rounds and the extrapolation to the papers' budgets."""
    dlc_s = stats.median([r["dlc_seconds"] for r in rounds])
    epoch_s = stats.median([s for r in rounds for s in r["epoch_seconds"]])
    snapshot_s = stats.median([r["snapshot_seconds"] for r in rounds])
    return {
        "measured": {"dlc_seconds": dlc_s, "dlc_passes": levels + 1, "dlc_seconds_per_pass": dlc_s / (levels + 1),
                     "training_epoch_seconds": epoch_s, "el2n_snapshot_seconds": snapshot_s,
                     "dlc_in_training_epochs": dlc_s / epoch_s if epoch_s else float("nan")},
        "extrapolated": extrapolate(epoch_s, snapshot_s, dlc_s),
        "label": "EXTRAPOLATION: measured seconds per training epoch x the papers' epoch counts; no such run was made",
    }


def accuracy_runs(targets: dict[str, dict[str, Any]], backbone_ckpt: str, cfg: dict, work: str, progress: bool) -> tuple[list[dict], dict]:
    """Finetune on each method's kept subset for every condition, budget and seed."""
    # heavy import (torch, numba), only when the suite runs
    from streamprune import Manifest
    from streamprune.scoring import score_source
    from streamprune.scoring.scores_file import ScoreFile
    from streamprune.selection import select

    from .finetune import (  # helpers that import torch
        decode_all,
        finetune_accuracy,
        head_init_state,
        write_init_checkpoint,
    )

    test = Manifest.load(targets["test"]["dir"])
    x_test, y_test = decode_all(test)
    runs: list[dict] = []
    dlc_info: dict[str, Any] = {}
    for cond in (c for c in targets if c != "test" and (c != "clean" or cfg["clean_control"])):
        train = Manifest.load(targets[cond]["dir"])
        x, y = decode_all(train)
        # the writer shuffles: map each manifest position to its source row by the key's number
        rows = np.array([int(k.rsplit("-", 1)[1]) for k in train.keys()], dtype=np.int64)
        flipped = targets[cond]["flipped"][rows]
        n, c = train.num_samples, train.num_classes
        steps = cfg["epochs"] * math.ceil(n / cfg["batch_size"])
        init_ckpt = write_init_checkpoint(os.path.join(work, f"{cond}-init.pt"), head_init_state(backbone_ckpt, c, 0), c, train.classes,
                                          backbone_ckpt, 0)
        t0 = time.perf_counter()
        out = score_source(train, "dlc", [0.5], os.path.join(work, cond, "dlc"), workers=1, selector="flexrand", surrogate=ARCH,
                           checkpoint=init_ckpt, input_size=INPUT_SIZE, batch_size=256, seed=0, progress=progress, levels=cfg["levels"])
        scores = ScoreFile.load(out["scores"])
        dlc = np.asarray(scores.scores, dtype=np.float64)
        dlc_info[cond] = {"seconds": round(time.perf_counter() - t0, 2),
                          "mean_dlc_mislabelled": float(dlc[flipped].mean()) if flipped.any() else None,
                          "mean_dlc_clean": float(dlc[~flipped].mean())}
        labels = np.asarray(train.labels(), dtype=np.int64)
        for seed in cfg["seeds"]:
            state = head_init_state(backbone_ckpt, c, seed)
            for budget in cfg["budgets"]:
                ratio = round(1.0 - budget, 6)
                kept = {
                    "dlc-flexrand": select(scores, ratio, "flexrand", labels=labels, seed=seed, gamma=0.5),
                    "random": select(scores, ratio, "random", labels=labels, seed=seed),
                    "cb-random": select(scores, ratio, "class-balanced-random", labels=labels, seed=seed),
                }
                for method in METHODS:
                    t1 = time.perf_counter()
                    acc = finetune_accuracy(state, c, x, y, kept[method], x_test, y_test, cfg, steps, seed)
                    runs.append({"condition": cond, "method": method, "budget": budget, "seed": seed, "kept": int(len(kept[method])),
                                 "mislabelled_kept_share": float(flipped[kept[method]].mean()) if len(kept[method]) else 0.0,
                                 "accuracy": round(acc, 2), "seconds": round(time.perf_counter() - t1, 2)})
                log.info("%s seed %d kept %.0f%%: %s", cond, seed, budget * 100,
                         " ".join(f"{r['method']} {r['accuracy']:.2f}" for r in runs[-len(METHODS):]))
    return runs, dlc_info


def summarize(runs: Sequence[dict], seeds: Sequence[int]) -> dict[str, Any]:
    """Per condition and budget: each method's mean accuracy, and the paired gains over random."""
    out: dict[str, Any] = {}
    for cond in sorted({r["condition"] for r in runs}):
        out[cond] = {}
        for budget in sorted({r["budget"] for r in runs if r["condition"] == cond}):
            cell = {}
            acc = {m: [next(r["accuracy"] for r in runs if (r["condition"], r["method"], r["budget"], r["seed"]) == (cond, m, budget, s))
                       for s in seeds] for m in METHODS}
            for m in METHODS:
                share = [r["mislabelled_kept_share"] for r in runs if (r["condition"], r["method"], r["budget"]) == (cond, m, budget)]
                cell[m] = {"mean": statistics.fmean(acc[m]), "min": min(acc[m]), "max": max(acc[m]),
                           "mislabelled_kept_share": statistics.fmean(share)}
            cell["gain_vs_random"] = paired_gain(acc["dlc-flexrand"], acc["random"])
            cell["gain_vs_cb_random"] = paired_gain(acc["dlc-flexrand"], acc["cb-random"])
            cell["paper_gain"] = PAPER_GAIN.get(f"{budget:g}")
            out[cond][f"{budget:g}"] = cell
    return out


def statement(summary: dict[str, Any], noisy: str) -> str:
    """The plain answer: does the paper's gain over random reproduce on the noisy target?"""
    cells = summary.get(noisy, {})
    if not cells:
        return "no noisy-target runs"
    parts = []
    for b, cell in cells.items():
        g = cell["gain_vs_random"]
        ci = g["ci95"]
        ci_text = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "n/a"
        paper = f"; paper {cell['paper_gain']:+.1f}" if cell["paper_gain"] is not None else ""
        parts.append(f"{float(b) * 100:.0f}% kept: {g['mean']:+.2f} points, 95% CI {ci_text} ({g['verdict']}{paper})")
    gains = [c["gain_vs_random"]["verdict"] for c in cells.values()]
    if all(v == "gain" for v in gains):
        head = "The paper's gain over random reproduces here at every budget measured"
    elif any(v == "gain" for v in gains):
        head = "The paper's gain over random reproduces here at some budgets only"
    elif any(v == "loss" for v in gains):
        head = "The paper's gain over random does not reproduce here: DLC+FlexRand is worse than random at some budgets"
    else:
        head = "The paper's gain over random does not reproduce here: no difference from random is detected at any budget"
    return f"{head} ({noisy} target): " + "; ".join(parts) + "."


def targets_of(results: dict[str, Any]) -> list[Target]:
    """One target per noisy-target budget: DLC+FlexRand - random > 0 over the whole 95% interval."""
    out = []
    noisy = results.get("noisy_condition")
    for b, cell in (results.get("summary", {}).get(noisy) or {}).items():
        g = cell["gain_vs_random"]
        out.append(Target.check(f"DLC+FlexRand - random, {float(b) * 100:.0f}% kept, {noisy} (points, mean of {g['n']} seeds)",
                                round(g["mean"], 3), 0.0, ">", interval=g["ci95"], paper=cell["paper_gain"]))
    return out


def run(cfg: dict, progress: bool) -> dict[str, Any]:
    """The whole suite; returns the results dict."""
    # heavy import (torch), only when the suite runs
    import torch

    from streamprune import Manifest

    from .finetune import head_init_state, write_init_checkpoint  # helpers that import torch

    torch.set_num_threads(cfg["threads"])
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    data_dir = cfg["data_dir"]
    backbone = pretrain_backbone(os.path.join(data_dir, "downstream"), cfg, progress)
    targets = prepare_targets(os.path.join(data_dir, "dlc"), cfg, progress)
    work = os.path.join(data_dir, "dlc", "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    noisy = f"noisy-{cfg['noise']:g}"
    results: dict[str, Any] = {
        "benchmark": "dlc_bench",
        "started": started.isoformat(timespec="seconds"),
        "quick": cfg["quick"],
        "config": {k: v for k, v in cfg.items() if k != "data_dir"},
        "backbone": {k: v for k, v in backbone.items() if k not in ("shards",)},
        "noisy_condition": noisy,
        "paper_protocols": PAPER_PROTOCOLS,
        "paper_gain": PAPER_GAIN,
    }
    clean = Manifest.load(targets["clean"]["dir"])
    init_ckpt = write_init_checkpoint(os.path.join(work, "cost-init.pt"), head_init_state(backbone["checkpoint"], clean.num_classes, 0),
                                      clean.num_classes, clean.classes, backbone["checkpoint"], 0)
    rounds = time_costs(targets["clean"]["dir"], init_ckpt, cfg, os.path.join(work, "cost"), progress)
    results["cost_rounds"] = rounds
    results["cost"] = cost_summary(rounds, cfg["levels"])
    runs, dlc_info = accuracy_runs(targets, backbone["checkpoint"], cfg, work, progress)
    results["runs"] = runs
    results["dlc_scores"] = dlc_info
    results["summary"] = summarize(runs, cfg["seeds"])
    results["statement"] = statement(results["summary"], noisy)
    results["targets"] = [t.to_dict() for t in targets_of(results)]
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    shutil.rmtree(work, ignore_errors=True)
    return results


# ------------------------------------------------------------------------------------------
# tables


def report_markdown(results: dict[str, Any]) -> str:
    """The cost table (measured, then extrapolated) and the accuracy/gain table."""
    lines = []
    cost = results.get("cost")
    if cost:
        m = cost["measured"]
        rows = [["DLC (K = 50: 51 eval passes), measured", f"{m['dlc_seconds']:.1f}", "1.0x"],
                ["one training epoch (recording), measured", f"{m['training_epoch_seconds']:.2f}", f"{m['training_epoch_seconds'] / m['dlc_seconds']:.2f}x"],
                ["one EL2N eval snapshot pass, measured", f"{m['el2n_snapshot_seconds']:.2f}", f"{m['el2n_snapshot_seconds'] / m['dlc_seconds']:.2f}x"]]
        for name, e in cost["extrapolated"].items():
            rows.append([f"{name} at its paper's budget ({e['epochs_total']} epochs"
                         + (f" + {e['snapshots']} snapshots" if e["snapshots"] else "") + "), EXTRAPOLATED",
                         f"{e['seconds']:.0f}", f"{e['ratio_to_dlc']:.0f}x"])
        lines.append(mdtable.markdown_table(["pruning cost on 5,000 images", "seconds", "vs DLC"], rows, "lrr"))
        lines.append("")
    summary = results.get("summary", {})
    rows = []
    for cond, cells in summary.items():
        for b, cell in cells.items():
            g = cell["gain_vs_random"]
            ci = g["ci95"]
            rows.append([cond, f"{float(b) * 100:.0f}%", *[f"{cell[m]['mean']:.2f}" for m in METHODS],
                         f"{g['mean']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{g['mean']:+.2f}",
                         f"{g['min']:+.2f} .. {g['max']:+.2f}", g["verdict"],
                         "-" if cell["paper_gain"] is None else f"{cell['paper_gain']:+.1f}",
                         " / ".join(f"{cell[m]['mislabelled_kept_share'] * 100:.0f}%" for m in ("dlc-flexrand", "random"))])
    if rows:
        lines.append(mdtable.markdown_table(
            ["target", "kept", "DLC+FlexRand", "random", "cb-random", "gain vs random, mean [95% CI]", "min..max", "verdict", "paper",
             "mislabelled kept (DLC+FR / random)"], rows, "llrrrrrlrr"))
    if results.get("statement"):
        lines += ["", results["statement"]]
    return "\n".join(lines)


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's parameters (``--quick`` shrinks everything)."""
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else ([0.1, 0.5] if args.quick else [0.1, 0.3, 0.5])
    for b in budgets:
        if not 0.0 < b < 1.0:
            raise SystemExit(f"--budgets: {b} is not a fraction kept in (0, 1)")
    if not 0.0 <= args.noise < 1.0:
        raise SystemExit(f"--noise: {args.noise} must be in [0, 1)")
    return {
        "quick": bool(args.quick),
        "data_dir": os.path.abspath(args.data_dir or resultsfile.DEFAULT_DATA),
        "train": 500 if args.quick else 5000,
        "test": 500 if args.quick else 5000,
        "noise": args.noise,
        "budgets": budgets,
        "seeds": list(range(args.seeds if args.seeds else (2 if args.quick else 5))),
        "levels": 10 if args.quick else 50,
        "epochs": 2 if args.quick else 4,
        "batch_size": 50,
        "lr": 0.05,
        "weight_decay": 5e-4,
        "rounds": args.rounds if args.rounds else (1 if args.quick else 5),
        "clean_control": not args.no_clean,
        "threads": args.threads,
        "pretrain_subset": 6000 if args.quick else 0,
        "pretrain_epochs": 1 if args.quick else 2,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``--data-dir``: the cache for shards and checkpoints; the backbone is the downstream suite's)."""
    p.add_argument("--budgets", help="comma-separated budgets = fractions KEPT (default 0.1,0.3,0.5)")
    p.add_argument("--noise", type=float, default=0.3, help="share of downstream-train labels flipped (default 0.3)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 5; quick 2)")
    p.add_argument("--rounds", type=int, help="cost rounds (default 5: fewer are never 'met'; quick 1)")
    p.add_argument("--no-clean", action="store_true", help="skip the clean-target control runs (the cost part still uses the clean target)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


class DlcSuite(Suite):
    """``dlc``: DLC's cost against training-based scores at their papers' budgets, and FlexRand's gain on a noisy target."""

    name, title = "dlc", "DLC cost and FlexRand gain"
    measures = ("streamprune/scoring/dlc.py", "streamprune/selection.py", "streamprune/scoring/training_based.py",
                "streamprune/dynamics.py")
    add_arguments, tables = staticmethod(add_arguments), staticmethod(report_markdown)
    log_format, quiet_loggers = "%(asctime)s %(name)s: %(message)s", ("streamprune",)

    def measure(self, args: argparse.Namespace) -> dict[str, Any]:
        """Cost rounds, then the accuracy runs on the noisy target (:func:`run`)."""
        return run(config(args), progress=not args.quiet)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """The targets from the stored summary (:func:`targets_of`)."""
        out = dict(results)
        if "commit" not in out and isinstance(out.get("git"), dict):  # results written before the suite template
            out.update(commit=out["git"].get("commit"), dirty=out["git"].get("dirty"))
        out["targets"] = [t.to_dict() for t in targets_of(out)]
        return out
