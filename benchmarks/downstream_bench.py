"""Downstream pruning benchmark: accuracy of finetuning on pruned target subsets, and pruning time.

Issue 4, item 5. A pretrained backbone is finetuned on subsets of a downstream (target)
training set chosen by DLC + FlexRand, random, class-balanced random, EL2N, forgetting,
Moderate and CCS, at budgets (fractions KEPT) 10%, 20%, .. 90%, for the same number of optimizer
steps, and tested on a held-out part. Each method's pruning time, including any training it
needs, is measured side by side in the same run.

**Backbone** (shared by every method; DLC needs a pretrained model). ``benchmarks.nets:
small_cnn`` (four stride-2 conv-BN-ReLU blocks, widths 16-32-64-128, 99k parameters, 128-d
features, RGB 28x28 input through ``surrogate_transform(28)``), trained with
``train_surrogate`` on Fashion-MNIST TRAIN (60k images, sharded with ``write_shards``) for
2 epochs (AdamW, lr 2e-3, batch 128, seed 0). The shards and checkpoint are cached under
``benchmarks/data/downstream/`` and reused while the parameters match.

**Downstream datasets** (never overlapping the pretraining images), each split stratified
with seed 0 and both parts sharded with ``write_shards`` (JPEG q95, as the pretraining shards):

* ``fashion-test``: the Fashion-MNIST TEST split (10k): 5,000 downstream-train / 5,000 test.
  Same 10 classes as the pretraining set (the head is still new).
* ``digits``: scikit-learn's digits (1,797 8x8 images, 0..16) scaled to 0..255 and upsampled
  to 28x28 grey (PIL bilinear): 1,200 train / 597 test.

**Finetune recipe** (the evaluation finetune and the training-dynamics recording alike): the
pretrained backbone with a NEW head for the downstream classes (``nn.Linear`` initialised with
``torch.manual_seed(seed)``; the backbone weights are the checkpoint's), all parameters
trained, SGD with Nesterov momentum 0.9, peak lr 0.05, weight decay 5e-4, one-cycle schedule
(``streamprune.train.make_optimizer`` / ``make_schedule``), batch 50, a FIXED number of steps
per dataset: the steps of E epochs over the FULL train part (fashion-test: E = 4, 400 steps;
digits: E = 10, 240 steps). Every subset is trained for those same steps whatever its size
(fixed steps, not epochs): batches are consecutive slices of a stream of seeded per-epoch
permutations of the kept samples, so every batch has 50 samples (a subset smaller than a
batch repeats within it). For speed each train (and test) part is decoded ONCE through the
product's reader (``PrunedWebDataset`` + ``surrogate_transform(28)``, manifest order) into an
in-memory tensor, and a subset is an index into it; the scoring passes themselves all read the
shards through the reader. Test accuracy is the top-1 accuracy on the whole test part.

**Methods** (``docs/methods.md`` sections 3-5; scores computed once per dataset, deterministic;
the selection, the head initialisation and the data order use the seed 0, 1, 2):

================  =======================================================================
``dlc-flexrand``  ``dlc`` score (K = 50 levels, geometric L1 masking, the pretrained
                  backbone) + ``flexrand`` selector, gamma 0.5 (class-wise)
``random``        uniform over the whole set (``random`` selector)
``cb-random``     class-balanced random (``class-balanced-random`` selector)
``el2n``          ``el2n`` as Paul et al. define it: evaluation-mode snapshots of
                  ``--el2n-runs`` independent runs (default 5; the paper 10), each trained
                  ``E // 2`` epochs (fashion-test 2, digits 5) from the same start and
                  scored at its end; ``top`` selector = keep the highest (hardest),
                  class-blind
``forgetting``    ``forgetting`` over all E recorded epochs, ``top`` = keep the most forgotten
                  (never learned first), class-blind
``moderate``      ``moderate`` on the backbone's features, ``top`` = the middle band of the
                  distances over the whole set (the default global band, as the reference code)
``ccs``           ``aum`` (logit margins) over all E epochs + ``ccs`` selector (50 strata,
                  class-blind) with streamprune's default beta rule (0 for budgets b >= 50%,
                  0.3 * (0.5 - b) / 0.4 below: 0.3 at 10% kept), NOT the paper's per-dataset
                  beta search (``docs/methods.md`` section 5)
================  =======================================================================

Forgetting and AUM come from ONE ``record_dynamics`` recording on the full train part with
exactly the finetune recipe above (seed 0: the head of seed 0, E epochs = the fixed step
count). EL2N comes from a second recording of ``--el2n-runs`` runs (seeds 0, 1, ...: data
order and, the backbone being fixed, nothing else), each ``E // 2`` epochs of the same recipe,
with an evaluation-mode EL2N snapshot after its last epoch (``el2n_epochs=[E // 2]``).
Deviation: the paper scores a checkpoint early in a long schedule (epoch 20 of 200); here each
run's one-cycle schedule spans its ``E // 2`` epochs, so the snapshot is taken after the
learning rate has annealed. A full-data run at budget 100% ("full", 3 seeds) is
reported as a reference.

**Pruning time** (wall seconds, measured in ``--rounds`` rounds, each running every timed
config once in a shuffled order, and reported as the median over rounds; ratios are paired
within a round, then the median):

* DLC: ``score_source(method="dlc", selector="flexrand")`` (two streaming passes through the
  reader, K + 1 = 51 eval forwards per sample, plus the mask), ``workers=1`` (one decode
  worker; the library then runs torch on cores - 1 = 1 thread);
* EL2N: the whole EL2N recording (``--el2n-runs`` runs of ``E // 2`` epochs and their
  snapshot passes) plus ``score_source(method="el2n")``;
* forgetting, CCS: the whole recording (``record_dynamics``, ``workers=1``) plus their
  ``score_source`` (forgetting / aum + ccs);
* Moderate: ``score_source(method="moderate")`` (one feature pass through the reader, no cache
  reused: every round uses a fresh directory);
* random: ``score_source(method="random-samples")`` (no model at all).

Extra rows, NOT the default and not used for the accuracy tables: ``dlc-k10`` (DLC with
K = 10 levels: 11 forwards per sample) and ``dlc-w0`` (K = 50, ``workers=0``: decoding in the
main process, torch on every core), the latter to check that the default ``workers=1`` does
not lose to ``workers=0`` when other jobs share the cores.

Cost model, for honesty: DLC costs (K + 1) * N eval forwards; a training-based score costs
E epochs * N forward + backward passes (about 3 forwards each). With the short recording of
this protocol (E = 4 or 10 epochs) DLC is NOT cheaper; the JSON reports, per dataset, the
seconds per recording epoch, the break-even number of epochs (DLC time / epoch time) and the
number of epochs a training-based method would need for DLC to be 20x faster. The paper's
~35x compares against full finetunes of many epochs.

Targets (issue 4): DLC pruning time at least 20x lower than every training-based method
(EL2N, forgetting, CCS) on the same data and machine (paper: ~35x); DLC + FlexRand at or above
random on average over the budgets (paper: +0.6 to +2.6 points), per dataset.

Run:  python -m benchmarks downstream              (9 budgets x 7 methods x 3 seeds x 2 datasets; ~25-30 min on 2 cores)
      python -m benchmarks downstream --budgets 0.1,0.3,0.5,0.7,0.9   (five budgets; ~15 min)
      python -m benchmarks downstream --quick      (tiny smoke run, < 3 min; results/quick/)
      python -m benchmarks downstream --resummarize benchmarks/results/downstream_bench.json
Writes ``benchmarks/results/downstream_bench.json`` and ``downstream_bench.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import os
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamprune import Manifest
from streamprune.sources import FASHION_MNIST_DIR

from . import mdtable, provenance, resultsfile, stats
from .finetune import (  # shared with the DLC suite (benchmarks/finetune.py)
    ARCH,
    INPUT_SIZE,
    cache_matches,
    decode_all,
    finetune_accuracy,
    head_init_state,
    mark_cache,
    pretrain_backbone,
    write_init_checkpoint,
)
from .suite import Suite, Target

log = logging.getLogger("downstream_bench")


#: Accuracy methods in table order: name -> (label, score method, selector).
METHODS: dict[str, tuple[str, str, str]] = {
    "dlc-flexrand": ("DLC+FlexRand", "dlc", "flexrand"),
    "random": ("random", "random-samples", "random"),
    "cb-random": ("class-bal. random", "random-samples", "class-balanced-random"),
    "el2n": ("EL2N", "el2n", "top"),
    "forgetting": ("forgetting", "forgetting", "top"),
    "moderate": ("Moderate", "moderate", "top"),
    "ccs": ("CCS (AUM)", "aum", "ccs"),
}
#: Methods whose pruning needs the training-dynamics recording.
TRAINING_BASED = ("el2n", "forgetting", "ccs")
#: Extra timing rows (not the default configuration).
EXTRA_ROWS = {"dlc-k10": "DLC K=10 (not default)", "dlc-w0": "DLC K=50, workers=0 (not default)"}
FULL = "full"  # the 100%-budget reference


# ------------------------------------------------------------------------------------------
# pure helpers (unit-tested in tests/benchmarks/test_downstream_bench.py)


def budget_key(budget: float) -> str:
    """JSON key of a budget (fraction KEPT): ``0.1 -> "0.1"``."""
    return f"{float(budget):g}"


def ratio_of(budget: float) -> float:
    """Fraction REMOVED for a budget (fraction KEPT), rounded so ``1 - 0.9`` is ``0.1``."""
    return round(1.0 - float(budget), 10)


def ccs_beta(budget: float) -> float:
    """CCS's hard-cutoff fraction beta for a budget (fraction KEPT).

    0 for budgets of 50% and more; below, linear up to 0.3 at 10% kept (and beyond, capped so
    that at least the budget is left: ``beta <= 1 - budget``).
    """
    b = float(budget)
    beta = 0.0 if b >= 0.5 else 0.3 * (0.5 - b) / 0.4
    return round(min(beta, max(0.0, 1.0 - b)), 6)


def selector_options(method: str, budget: float) -> dict[str, Any]:
    """Selector options of an accuracy method at a budget (fraction KEPT)."""
    if method == "dlc-flexrand":
        return {"gamma": 0.5}
    if method == "ccs":
        return {"beta": ccs_beta(budget), "strata": 50}
    return {}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for a single value)."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    return float(statistics.fmean(v)), (float(statistics.stdev(v)) if len(v) > 1 else 0.0)


def summarize(runs: Sequence[dict]) -> dict:
    """Mean and std of the test accuracy over seeds, per dataset, method and budget.

    Args:
        runs: ``{"dataset", "method", "budget" (float or "full"), "seed", "accuracy"}`` records
            (accuracy in percent).

    Returns:
        ``{dataset: {method: {budget_key: {"mean", "std", "n", "seeds"}}}}``; the 100% reference
        is under method ``"full"``, key ``"1"``.
    """
    groups: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in runs:
        key = (r["dataset"], r["method"], budget_key(r["budget"]))
        groups.setdefault(key, []).append((int(r["seed"]), float(r["accuracy"])))
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for (ds, method, bk), items in sorted(groups.items()):
        items.sort()
        m, s = mean_std([a for _, a in items])
        out.setdefault(ds, {}).setdefault(method, {})[bk] = {"mean": m, "std": s, "n": len(items), "seeds": [k for k, _ in items]}
    return out


def _budget_sort(keys: Sequence[str]) -> list[str]:
    return sorted(keys, key=float)


def differences(summary: dict, method: str = "dlc-flexrand", baseline: str = "random") -> dict:
    """Mean accuracy of ``method`` minus ``baseline``, per budget and averaged over budgets.

    Only budgets both have are compared.

    Args:
        summary: :func:`summarize` output.
        method: Method compared.
        baseline: Method subtracted.

    Returns:
        ``{dataset: {"per_budget": {budget_key: points}, "mean": points (nan if none),
        "method", "baseline"}}``.
    """
    out = {}
    for ds, methods in summary.items():
        a, b = methods.get(method, {}), methods.get(baseline, {})
        common_keys = _budget_sort([k for k in a if k in b])
        per = {k: a[k]["mean"] - b[k]["mean"] for k in common_keys}
        out[ds] = {
            "per_budget": per,
            "mean": float(statistics.fmean(per.values())) if per else float("nan"),
            "method": method,
            "baseline": baseline,
        }
    return out


def pruning_times(rounds: Sequence[dict], el2n_epochs: int) -> dict[str, list[float]]:
    """Each method's pruning seconds in each timing round, from the timed configs.

    Args:
        rounds: Per round ``{"dlc": s, "random-samples": s, "moderate": s, "dynamics": {"wall":
            s, "seconds_per_epoch": [...]}, "el2n": s, "forgetting": s, "aum": s}`` plus any of
            :data:`EXTRA_ROWS`.
        el2n_epochs: Leading recorded epochs EL2N uses.

    Returns:
        ``{method: [seconds per round]}`` for the accuracy methods and the extra rows present.
    """
    out: dict[str, list[float]] = {}
    for r in rounds:
        dyn = r["dynamics"]
        epochs = list(dyn["seconds_per_epoch"])
        dyn_wall = float(dyn["wall"])
        if "el2n_dynamics" in r:  # its own multi-run recording with eval-mode snapshots
            el2n_part = float(r["el2n_dynamics"]["wall"])
        else:  # older results: the training-pass fallback read the main recording's first epochs
            el2n_part = dyn_wall - float(sum(epochs[el2n_epochs:]))  # set-up + the epochs EL2N reads
        rows = {
            "dlc-flexrand": r["dlc"],
            "random": r["random-samples"],
            "cb-random": r["random-samples"],
            "el2n": el2n_part + r["el2n"],
            "forgetting": dyn_wall + r["forgetting"],
            "moderate": r["moderate"],
            "ccs": dyn_wall + r["aum"],
        }
        rows.update({k: r[k] for k in EXTRA_ROWS if k in r})
        for k, v in rows.items():
            out.setdefault(k, []).append(float(v))
    return out


def timing_summary(rounds: Sequence[dict], el2n_epochs: int) -> dict:
    """Median pruning time per method and its ratio to DLC's, paired within rounds.

    Args:
        rounds: See :func:`pruning_times`.
        el2n_epochs: Leading recorded epochs EL2N uses.

    Returns:
        ``{"seconds": {method: {"median", "runs"}}, "ratio_to_dlc": {method: {"median",
        "runs", ...}}}`` (:meth:`benchmarks.stats.Ratio.to_dict`); ratio = the method's time / DLC's
        time (> 1: DLC is faster), paired within a round.
    """
    times = pruning_times(rounds, el2n_epochs)
    dlc = times["dlc-flexrand"]
    seconds = {k: {"median": stats.median(v), "runs": [round(x, 3) for x in v]} for k, v in times.items()}
    ratios = {k: stats.paired_ratio(v, dlc).to_dict() for k, v in times.items()}
    return {"seconds": seconds, "ratio_to_dlc": ratios}


def cost_model(timing: dict, rounds: Sequence[dict], levels: int, epochs: int, n: int) -> dict:
    """DLC's cost against the recording's per-epoch cost (break-even epochs, epochs for 20x).

    Args:
        timing: :func:`timing_summary` output.
        rounds: The timing rounds (for the recording's seconds per epoch).
        levels: DLC's K.
        epochs: Recorded epochs E.
        n: Samples in the train part.

    Returns:
        A dict of forwards, seconds per epoch, break-even and 20x epochs.
    """
    per_epoch = stats.median([s for r in rounds for s in r["dynamics"]["seconds_per_epoch"]])
    dlc_s = timing["seconds"]["dlc-flexrand"]["median"]
    return {
        "dlc_eval_forwards": (levels + 1) * n,
        "recording_forward_backward_passes": epochs * n,
        "recording_seconds_per_epoch_median": per_epoch,
        "dlc_seconds_median": dlc_s,
        "break_even_epochs": dlc_s / per_epoch if per_epoch > 0 else float("nan"),
        "epochs_for_20x": 20.0 * dlc_s / per_epoch if per_epoch > 0 else float("nan"),
    }


def evaluate_targets(summary: dict, timing: dict, labels: dict[str, str] | None = None) -> list[dict]:
    """The issue's targets, per dataset, as measured.

    Args:
        summary: :func:`summarize` output.
        timing: ``{dataset: timing_summary(...)}``.
        labels: Dataset display names.

    Returns:
        :meth:`Target.to_dict` entries (``target``, ``measured`` text, ``value``, ``goal``, ``met``, ``verdict``,
        ...): first the time ratios (every
        training-based method at least 20x DLC's time), then DLC + FlexRand minus random
        averaged over budgets (>= 0 points).
    """
    labels = labels or {}
    out = []
    for ds in _ordered(timing, labels):
        ratio = timing[ds]["ratio_to_dlc"]
        vals = {m: ratio[m]["median"] for m in TRAINING_BASED if m in ratio}
        worst = min(vals.values()) if vals else float("nan")
        # the slowest-to-beat method's range: [min of the lows, min of the highs] over the methods, paired rounds
        runs = [stats.ratio_of(ratio[m]["runs"]) for m in TRAINING_BASED if m in ratio]
        interval = (min(r.low for r in runs), min(r.high for r in runs)) if runs and min(r.n for r in runs) > 1 else None
        out.append(Target.check(
            f"{labels.get(ds, ds)}: DLC pruning time >= 20x lower than each training-based method", worst, 20.0, ">=",
            shown=", ".join(f"{METHODS[m][0]} {v:.2f}x" for m, v in vals.items()) + f" (min {worst:.2f}x)",
            goal=">= 20x", valid=bool(vals), interval=interval, rounds=min(r.n for r in runs) if runs else None,
        ))
    diffs = differences(summary)
    for ds in _ordered(diffs, labels):
        d = diffs[ds]
        per = ", ".join(f"{float(k) * 100:.0f}%: {v:+.2f}" for k, v in d["per_budget"].items())
        out.append(Target.check(
            f"{labels.get(ds, ds)}: DLC+FlexRand - random, mean over budgets", d["mean"], 0.0, ">=",
            shown=f"{d['mean']:+.2f} points ({per})", goal=">= 0 points", valid=bool(d["per_budget"]),
        ))
    return [t.to_dict() for t in out]


def _ordered(keys: Any, preferred: Any) -> list[str]:
    """``keys`` in the order of ``preferred`` (the run's dataset order), the rest sorted after."""
    return [k for k in preferred if k in keys] + sorted(k for k in keys if k not in preferred)


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def report_markdown(results: dict) -> str:
    """The benchmark's tables as markdown: accuracy per dataset, DLC - random, pruning times (targets: :class:`DownstreamSuite`).

    Args:
        results: The results JSON (as written by this script).

    Returns:
        Markdown text.
    """
    summary = results.get("summary", {})
    timing = results.get("timing", {})
    datasets = results.get("datasets", {})
    methods = [m for m in METHODS if any(m in summary.get(ds, {}) for ds in summary)] or list(METHODS)
    lines: list[str] = []
    for ds in _ordered(summary, datasets):
        info = datasets.get(ds, {})
        title = info.get("label", ds)
        lines.append(f"**{title}**: test accuracy (%), mean ± std over seeds"
                     + (f" ({info.get('train')} train / {info.get('test')} test, {info.get('steps')} steps of batch {info.get('batch_size')})" if info else ""))
        lines.append("")
        diffs = differences(summary, "dlc-flexrand", "random").get(ds, {"per_budget": {}, "mean": float("nan")})
        diffs_cb = differences(summary, "dlc-flexrand", "cb-random").get(ds, {"per_budget": {}, "mean": float("nan")})
        keys = _budget_sort({k for m in methods for k in summary[ds].get(m, {})})
        headers = ["kept"] + [METHODS[m][0] for m in methods] + ["DLC - random", "DLC - cb-random"]
        rows = []
        for k in keys:
            row = [f"{float(k) * 100:.0f}%"] + [_cell(summary[ds].get(m, {}).get(k)) for m in methods]
            row.append(f"{diffs['per_budget'][k]:+.2f}" if k in diffs["per_budget"] else "-")
            row.append(f"{diffs_cb['per_budget'][k]:+.2f}" if k in diffs_cb["per_budget"] else "-")
            rows.append(row)
        means = ["mean"]
        for m in methods:
            vals = [summary[ds][m][k]["mean"] for k in keys if k in summary[ds].get(m, {})]
            means.append(f"{statistics.fmean(vals):.2f}" if vals else "-")
        means += [f"{diffs['mean']:+.2f}", f"{diffs_cb['mean']:+.2f}"]
        rows.append(means)
        lines.append(mdtable.markdown_table(headers, rows))
        full = summary[ds].get(FULL, {}).get("1")
        if full:
            lines.append("")
            lines.append(f"Full train part (100% kept, same steps): {_cell(full)}.")
        lines.append("")
    if timing:
        lines.append("**Pruning time** (wall seconds, median over rounds, including any training the method needs; "
                     "ratio = method time / DLC time, paired per round)")
        lines.append("")
        ds_names = _ordered(timing, datasets)
        headers = ["method"]
        for ds in ds_names:
            name = datasets.get(ds, {}).get("label", ds)
            headers += [f"{name} s", f"{name} / DLC"]
        rows = []
        order = list(METHODS) + [k for k in EXTRA_ROWS]
        for m in order:
            if not any(m in timing[ds]["seconds"] for ds in ds_names):
                continue
            if m == "cb-random":
                continue  # the same score pass as random
            label = METHODS[m][0] if m in METHODS else EXTRA_ROWS[m]
            row = [label]
            for ds in ds_names:
                s = timing[ds]["seconds"].get(m)
                r = timing[ds]["ratio_to_dlc"].get(m)
                row += [f"{s['median']:.2f}" if s else "-", f"{r['median']:.3g}x" if r else "-"]
            rows.append(row)
        lines.append(mdtable.markdown_table(headers, rows))
        lines.append("")
        cm_rows = []
        for ds in ds_names:
            cm = timing[ds].get("cost_model")
            if cm:
                cm_rows.append([
                    datasets.get(ds, {}).get("label", ds), f"{cm['dlc_eval_forwards']:,}", f"{cm['recording_forward_backward_passes']:,}",
                    f"{cm['recording_seconds_per_epoch_median']:.2f}", f"{cm['break_even_epochs']:.1f}", f"{cm['epochs_for_20x']:.0f}",
                ])
        if cm_rows:
            lines.append("Cost model: DLC's eval forwards vs the recording's forward+backward passes; break-even = recording "
                         "epochs at which a training-based method costs as much as DLC.")
            lines.append("")
            lines.append(mdtable.markdown_table(
                ["dataset", "DLC forwards", "recording fwd+bwd", "s / recording epoch", "break-even epochs", "epochs for 20x"], cm_rows
            ))
            lines.append("")
    corr = results.get("score_correlations") or {}
    if any(corr.values()):
        lines.append("Spearman correlations between the scores of the last timing round:")
        lines.append("")
        names = [n for n in CORRELATIONS if any(n in c for c in corr.values())]
        lines.append(mdtable.markdown_table(["dataset", *names],
                                           [[datasets.get(ds, {}).get("label", ds), *(f"{c[n]:.2f}" if n in c else "-" for n in names)]
                                            for ds, c in corr.items()]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(results: dict, path: str) -> str:
    """Accuracy vs budget per dataset (mean ± std) and pruning times (log scale), as a PNG."""
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib

    matplotlib.use("Agg")
    # heavy import, loaded only to draw the plot (the registry imports every suite)
    import matplotlib.pyplot as plt

    summary, timing, datasets = results["summary"], results.get("timing", {}), results.get("datasets", {})
    names = _ordered(summary, datasets)
    fig, axes = plt.subplots(1, len(names) + 2, figsize=(5.0 * (len(names) + 2), 4.2))
    for ax, ds in zip(axes, names):
        for m in METHODS:
            if m not in summary[ds]:
                continue
            keys = _budget_sort(list(summary[ds][m]))
            x = [float(k) * 100 for k in keys]
            y = [summary[ds][m][k]["mean"] for k in keys]
            e = [summary[ds][m][k]["std"] for k in keys]
            style = {"lw": 2.4, "color": "black"} if m == "dlc-flexrand" else {"lw": 1.2}
            ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=METHODS[m][0], **style)
        full = summary[ds].get(FULL, {}).get("1")
        if full:
            ax.axhline(full["mean"], color="grey", ls=":", lw=1, label="full (100%)")
        ax.set_title(datasets.get(ds, {}).get("label", ds))
        ax.set_xlabel("budget (% of the train part kept)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    ax = axes[len(names)]
    for baseline, ls in (("random", "-"), ("cb-random", "--")):
        diffs = differences(summary, "dlc-flexrand", baseline)
        for j, ds in enumerate(names):
            per = diffs.get(ds, {}).get("per_budget", {})
            if per:
                ax.plot([float(k) * 100 for k in per], list(per.values()), marker="o", ms=3, ls=ls, color=f"C{j}",
                        label=f"{datasets.get(ds, {}).get('label', ds)} vs {METHODS[baseline][0]}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_title("DLC+FlexRand minus baseline (mean of seeds)")
    ax.set_xlabel("budget (% of the train part kept)")
    ax.set_ylabel("accuracy difference (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[-1]
    rows = [m for m in list(METHODS) + list(EXTRA_ROWS) if m != "cb-random" and any(m in timing[ds]["seconds"] for ds in timing)]
    width = 0.8 / max(1, len(timing))
    for j, ds in enumerate(timing):
        vals = [timing[ds]["seconds"].get(m, {}).get("median", float("nan")) for m in rows]
        ax.bar(np.arange(len(rows)) + j * width, vals, width, label=datasets.get(ds, {}).get("label", ds))
    ax.set_xticks(np.arange(len(rows)) + width * (len(timing) - 1) / 2)
    ax.set_xticklabels([METHODS[m][0] if m in METHODS else m for m in rows], rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("pruning time (s, median; incl. training)")
    ax.set_title("pruning time")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finalize(results: dict) -> dict:
    """Recompute the summary, differences, timing summaries and targets from the raw records."""
    results["summary"] = summarize(results["runs"])
    results["vs_random"] = differences(results["summary"], "dlc-flexrand", "random")
    results["vs_class_balanced_random"] = differences(results["summary"], "dlc-flexrand", "cb-random")
    labels = {k: v.get("label", k) for k, v in results.get("datasets", {}).items()}
    timing = {}
    for ds, t in results.get("timing_rounds", {}).items():
        info = results["datasets"][ds]
        timing[ds] = timing_summary(t, info["el2n_epochs"])
        timing[ds]["cost_model"] = cost_model(timing[ds], t, results["config"]["levels"], info["epochs"], info["train"])
    results["timing"] = timing
    results["targets"] = evaluate_targets(results["summary"], timing, labels)
    return results


# ------------------------------------------------------------------------------------------
# data, backbone, scoring, finetuning (only run from main)


def _load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # optional extra: scikit-learn, only this path needs it
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    small = (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)) for im in small])
    return big, d.target.astype(np.int64)


def prepare_downstream(data_dir: str, name: str, cfg: dict, progress: bool) -> dict:
    """Split a downstream dataset (stratified, seed 0) and shard both parts (cached)."""
    # optional extra: scikit-learn, only this path needs it
    from sklearn.model_selection import train_test_split

    from streamprune import write_shards
    from streamprune.sources import idx_source
    from streamprune.sources.arrays import FASHION_MNIST_CLASSES, ArraySource  # deferred with the rest of this block

    spec = cfg["datasets"][name]
    params = {"name": name, "train": spec["train"], "test": spec["test"], "seed": 0, "version": 1}
    root = os.path.join(data_dir, f"{name}-{spec['train']}-{spec['test']}")
    out = {"train_dir": os.path.join(root, "train"), "test_dir": os.path.join(root, "test")}
    if cache_matches(root, params) and all(os.path.exists(os.path.join(d, "manifest.json")) for d in out.values()):
        return out
    if name == "fashion-test":
        src = idx_source(FASHION_MNIST_DIR, split="t10k")
        images, labels, classes = src.images, src.labels, FASHION_MNIST_CLASSES
    else:
        images, labels = _digits_arrays()
        classes = [str(c) for c in range(10)]
    idx = np.arange(len(labels))
    tr, rest = train_test_split(idx, train_size=spec["train"], stratify=labels, random_state=0)
    te = rest if spec["test"] >= len(rest) else train_test_split(rest, train_size=spec["test"], stratify=labels[rest], random_state=0)[0]
    for part, ids in (("train", np.sort(tr)), ("test", np.sort(te))):
        src = ArraySource(images[ids], labels[ids], classes, prefix=f"{name}-{part}-")
        write_shards(src, out[f"{part}_dir"], samples_per_shard=1000 if name == "fashion-test" else 500, workers=1, progress=progress,
                     overwrite=True)
    mark_cache(root, params)
    return out


def timing_round(name: str, info: dict, cfg: dict, work: str, order_seed: int, progress: bool) -> tuple[dict, dict]:
    """One timing round on a dataset: every timed config once, in a seeded random order.

    Returns:
        ``(seconds record for :func:`pruning_times`, {score method: scores path})``.
    """
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.dynamics import record_dynamics
    from streamprune.scoring import score_source

    train = Manifest.load(info["train_dir"])
    ckpt = info["init_checkpoint"]
    common_kw = {"surrogate": ARCH, "checkpoint": ckpt, "input_size": INPUT_SIZE, "batch_size": 256, "seed": 0, "progress": progress}
    rec: dict[str, Any] = {}
    paths: dict[str, str] = {}
    if os.path.isdir(work):
        shutil.rmtree(work)

    def run_score(key: str, method: str, selector: str, sel_opts: dict, workers: int = 1, **options: Any) -> None:
        t0 = time.perf_counter()
        out = score_source(train, method, [0.5], os.path.join(work, key), workers=workers, selector=selector,
                           selector_options=sel_opts, **common_kw, **options)
        rec[key] = round(time.perf_counter() - t0, 4)
        paths[key] = out["scores"]

    def dynamics_and_scores() -> None:
        ddir = os.path.join(work, "dynamics")
        t0 = time.perf_counter()
        out = record_dynamics(train, ARCH, ddir, epochs=info["epochs"], checkpoint=ckpt, batch_size=cfg["batch_size"], lr=cfg["lr"],
                              optimizer="sgd", weight_decay=cfg["weight_decay"], schedule="onecycle", input_size=INPUT_SIZE,
                              workers=1, seed=0, progress=progress)
        rec["dynamics"] = {"wall": round(time.perf_counter() - t0, 4), "seconds_per_epoch": out.training.epoch_seconds,
                           "train_accuracy": out.training.train_accuracy}
        run_score("forgetting", "forgetting", "top", {}, dynamics_dir=ddir)
        run_score("aum", "aum", "ccs", {"beta": 0.0, "strata": 50}, dynamics_dir=ddir)

    def el2n_snapshots_and_score() -> None:
        # Paul et al.'s EL2N: eval-mode snapshots of several independent runs, early in training
        ddir = os.path.join(work, "el2n-dynamics")
        t0 = time.perf_counter()
        out = record_dynamics(train, ARCH, ddir, epochs=info["el2n_epochs"], checkpoint=ckpt, batch_size=cfg["batch_size"], lr=cfg["lr"],
                              optimizer="sgd", weight_decay=cfg["weight_decay"], schedule="onecycle", input_size=INPUT_SIZE,
                              workers=1, seed=0, el2n_epochs=[info["el2n_epochs"]], runs=cfg["el2n_runs"], progress=progress)
        rec["el2n_dynamics"] = {"wall": round(time.perf_counter() - t0, 4), "runs": out.runs, "epochs": out.epochs,
                                "el2n_epochs": list(out.el2n_epochs)}
        run_score("el2n", "el2n", "top", {}, dynamics_dir=ddir)

    configs = {
        "dlc": lambda: run_score("dlc", "dlc", "flexrand", {"gamma": 0.5}, levels=cfg["levels"]),
        "dynamics": dynamics_and_scores,
        "el2n-dynamics": el2n_snapshots_and_score,
        "moderate": lambda: run_score("moderate", "moderate", "top", {}),
        "random-samples": lambda: run_score("random-samples", "random-samples", "random", {}),
    }
    if "dlc-k10" in cfg["extra_rows"]:
        configs["dlc-k10"] = lambda: run_score("dlc-k10", "dlc", "flexrand", {"gamma": 0.5}, levels=10)
    if "dlc-w0" in cfg["extra_rows"]:
        configs["dlc-w0"] = lambda: run_score("dlc-w0", "dlc", "flexrand", {"gamma": 0.5}, workers=0, levels=cfg["levels"])
    order = list(configs)
    random.Random(order_seed).shuffle(order)
    for key in order:
        log.info("%s: timing %s (load %s)", name, key, _load())
        configs[key]()
    rec["order"] = order
    rec["load_after"] = _load()
    return rec, paths


def _check_same_scores(a: dict, b: dict) -> dict:
    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.scoring.scores_file import ScoreFile

    out = {}
    for k, path_a in a.items():
        if k in b and k != "random-samples":
            sa, sb = ScoreFile.load(path_a).scores, ScoreFile.load(b[k]).scores
            out[k] = float(np.max(np.abs(np.asarray(sa) - np.asarray(sb)))) if len(sa) else 0.0
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two score vectors (ties get their average rank)."""
    def ranks(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        _, inverse, counts = np.unique(v[order], return_inverse=True, return_counts=True)
        out = np.empty(len(v))
        out[order] = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
        return out

    if len(a) < 2:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


#: Score correlations stored per dataset: name -> (score key, other score key, sign applied to the other).
CORRELATIONS = {"dlc_k10_vs_dlc": ("dlc", "dlc-k10", 1.0), "dlc_vs_el2n": ("dlc", "el2n", 1.0), "dlc_vs_neg_aum": ("dlc", "aum", -1.0)}


def score_correlations(paths: dict[str, str]) -> dict[str, float]:
    """Spearman correlations between the scores of one timing round (those in :data:`CORRELATIONS` that ran)."""
    # heavy import (torch, numba via the scoring package), loaded only when the suite runs
    from streamprune.scoring.scores_file import ScoreFile

    out = {}
    for name, (a, b, sign) in CORRELATIONS.items():
        if a in paths and b in paths:
            out[name] = spearman(ScoreFile.load(paths[a]).scores, sign * np.asarray(ScoreFile.load(paths[b]).scores))
    return out


def run(cfg: dict, out_dir: str, progress: bool) -> dict:
    """The whole benchmark; returns the results dict (not yet finalized)."""
    # heavy import (torch), loaded only when this runs: the registry imports every suite
    import torch

    # heavy import, deferred: streamprune's readers/models/scoring/writers load torch, numba, webdataset or PIL, and the registry imports every suite
    from streamprune.scoring.scores_file import ScoreFile
    from streamprune.selection import select

    torch.set_num_threads(cfg["threads"])
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    loads = [{"phase": "start", "load": _load()}]
    data_dir = cfg["data_dir"]
    os.makedirs(data_dir, exist_ok=True)
    backbone = pretrain_backbone(data_dir, cfg, progress)
    loads.append({"phase": "backbone ready", "load": _load()})
    results: dict[str, Any] = {
        "benchmark": "downstream_bench",
        "command": provenance.command_line(),
        "quick": cfg["quick"],
        "machine": provenance.machine_info(),
        "started": started.isoformat(timespec="seconds"),
        "config": {k: v for k, v in cfg.items() if k != "data_dir"},
        "backbone": {"arch": ARCH, "widths": [16, 32, 64, 128], "input_size": INPUT_SIZE, **{k: v for k, v in backbone.items() if k != "shards"}},
        "methods": {m: {"label": v[0], "score": v[1], "selector": v[2]} for m, v in METHODS.items()},
        "ccs_beta": {budget_key(b): ccs_beta(b) for b in cfg["budgets"]},
        "datasets": {},
        "timing_rounds": {},
        "score_determinism": {},
        "runs": [],
    }
    for name, spec in cfg["datasets"].items():
        info = prepare_downstream(data_dir, name, cfg, progress)
        train, test = Manifest.load(info["train_dir"]), Manifest.load(info["test_dir"])
        n, c = train.num_samples, train.num_classes
        steps_per_epoch = math.ceil(n / cfg["batch_size"])
        info.update(label=spec["label"], train=n, test=test.num_samples, classes=c, epochs=spec["epochs"],
                    steps=spec["epochs"] * steps_per_epoch, batch_size=cfg["batch_size"], el2n_epochs=max(1, spec["epochs"] // 2),
                    class_sizes=np.bincount(train.labels(), minlength=c).tolist())
        work = os.path.join(data_dir, "work", name)
        os.makedirs(work, exist_ok=True)
        states = {s: head_init_state(backbone["checkpoint"], c, s) for s in cfg["seeds"]}
        info["init_checkpoint"] = write_init_checkpoint(os.path.join(work, "init-seed0.pt"), head_init_state(backbone["checkpoint"], c, 0),
                                                        c, list(train.classes), backbone["checkpoint"], 0)
        results["datasets"][name] = info
        log.info("%s: %d train / %d test, %d classes, %d steps (%d epochs of the full part), EL2N epochs %d",
                 name, n, info["test"], c, info["steps"], info["epochs"], info["el2n_epochs"])
        rounds, last_paths, first_paths = [], {}, {}
        for r in range(cfg["rounds"]):
            rec, paths = timing_round(name, info, cfg, os.path.join(work, f"round{r}"), order_seed=1000 * r + len(name), progress=progress)
            rounds.append(rec)
            first_paths = first_paths or paths
            last_paths = paths
            log.info("%s: round %d: %s", name, r, {k: v for k, v in rec.items() if k not in ("order", "dynamics")})
        results["timing_rounds"][name] = rounds
        results["score_determinism"][name] = _check_same_scores(first_paths, last_paths) if cfg["rounds"] > 1 else {}
        results.setdefault("score_correlations", {})[name] = score_correlations(last_paths)
        loads.append({"phase": f"{name} timed", "load": _load()})

        scores = {m: ScoreFile.load(last_paths[score]) for m, (_, score, _) in METHODS.items()}
        labels = train.labels()
        x, y = decode_all(train)
        x_test, y_test = decode_all(test)
        if not np.array_equal(y, labels):
            raise RuntimeError(f"{train.path}: decoded labels differ from the manifest's")
        t_eval = time.perf_counter()
        for seed in cfg["seeds"]:  # the 100% reference
            t0 = time.perf_counter()
            acc = finetune_accuracy(states[seed], c, x, y, np.arange(n), x_test, y_test, cfg, info["steps"], seed)
            results["runs"].append({"dataset": name, "method": FULL, "budget": 1.0, "seed": seed, "kept": n,
                                    "accuracy": acc, "seconds": round(time.perf_counter() - t0, 2)})
        for b in cfg["budgets"]:
            for m, (label, _, selector) in METHODS.items():
                for seed in cfg["seeds"]:
                    kept = select(scores[m], ratio_of(b), selector, labels=labels, seed=seed, **selector_options(m, b))
                    t0 = time.perf_counter()
                    acc = finetune_accuracy(states[seed], c, x, y, kept, x_test, y_test, cfg, info["steps"], seed)
                    results["runs"].append({
                        "dataset": name, "method": m, "budget": b, "seed": seed, "kept": len(kept),
                        "kept_per_class": np.bincount(labels[kept], minlength=c).tolist(),
                        "accuracy": acc, "seconds": round(time.perf_counter() - t0, 2),
                    })
                done = [r["accuracy"] for r in results["runs"] if r["dataset"] == name and r["method"] == m and r["budget"] == b]
                log.info("%s: kept %.0f%% %-18s %s (load %s)", name, b * 100, label, " ".join(f"{a:.2f}" for a in done), _load())
        info["eval_seconds"] = round(time.perf_counter() - t_eval, 1)
        loads.append({"phase": f"{name} evaluated", "load": _load()})
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results["date"] = results["finished"]
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    loads.append({"phase": "end", "load": _load()})
    results["load"] = loads
    return results


def config(args: argparse.Namespace) -> dict:
    """The run's parameters from the command line (``--quick`` shrinks everything)."""
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else ([0.1, 0.5, 0.9] if args.quick else [round(0.1 * k, 1) for k in range(1, 10)])
    for b in budgets:
        if not 0.0 < b < 1.0:
            raise SystemExit(f"--budgets: {b} is not a fraction kept in (0, 1)")
    if args.quick:
        datasets = {
            "fashion-test": {"label": "Fashion-MNIST test split", "train": 500, "test": 500, "epochs": 2},
            "digits": {"label": "sklearn digits (28 px)", "train": 300, "test": 300, "epochs": 2},
        }
    else:
        datasets = {
            "fashion-test": {"label": "Fashion-MNIST test split", "train": 5000, "test": 5000, "epochs": 4},
            "digits": {"label": "sklearn digits (28 px)", "train": 1200, "test": 597, "epochs": 10},
        }
    if args.datasets:
        wanted = args.datasets.split(",")
        unknown = [d for d in wanted if d not in datasets]
        if unknown:
            raise SystemExit(f"--datasets: unknown {unknown}; choose from {list(datasets)}")
        datasets = {d: datasets[d] for d in wanted}
    seeds = list(range(args.seeds if args.seeds else (2 if args.quick else 3)))
    return {
        "quick": bool(args.quick),
        "data_dir": os.path.abspath(args.data_dir or os.path.join(resultsfile.DEFAULT_DATA, "downstream")),
        "budgets": budgets,
        "seeds": seeds,
        "datasets": datasets,
        "levels": 50,
        "batch_size": 50,
        "lr": 0.05,
        "weight_decay": 5e-4,
        "rounds": args.rounds if args.rounds else (1 if args.quick else 5),
        "el2n_runs": args.el2n_runs if args.el2n_runs else (2 if args.quick else 5),
        "extra_rows": [] if args.no_extra_rows else list(EXTRA_ROWS),
        "threads": args.threads,
        "pretrain_subset": 6000 if args.quick else 0,
        "pretrain_epochs": 1 if args.quick else 2,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's own options (``--data-dir``: the cache for shards and checkpoints)."""
    p.add_argument("--budgets", help="comma-separated budgets = fractions KEPT (default 0.1,0.2,...,0.9)")
    p.add_argument("--datasets", help="comma-separated subset of fashion-test,digits")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; quick 2)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 5: fewer are never 'met'; quick 1)")
    p.add_argument("--el2n-runs", type=int, help="independent runs EL2N's eval-mode snapshots average (default 5; quick 2; the paper 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the evaluation finetunes (default 1)")
    p.add_argument("--no-extra-rows", action="store_true", help="skip the dlc-k10 / dlc-w0 timing rows")


class DownstreamSuite(Suite):
    """``downstream``: finetuning accuracy on pruned target subsets, and each method's pruning time."""
    name, title = "downstream", "Downstream pruning (target subsets)"
    data_name = "downstream"
    has_plot = True
    measures = ("streamprune/scoring/dlc.py", "streamprune/scoring/training_based.py", "streamprune/scoring/baselines.py",
                "streamprune/selection.py", "streamprune/dynamics.py", "streamprune/train.py")
    add_arguments, tables = staticmethod(add_arguments), staticmethod(report_markdown)
    log_format, quiet_loggers = "%(asctime)s %(name)s: %(message)s", ("streamprune",)

    def measure(self, args: argparse.Namespace) -> dict[str, Any]:
        """Score, prune and finetune every method at every budget (:func:`run`)."""
        return run(config(args), args.out, progress=not args.quiet)

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Summary, differences, timing and targets from the raw records (:func:`finalize`)."""
        return finalize(dict(results))

    def plot(self, results: dict[str, Any], path: str) -> None:
        """Accuracy against budget per method (:func:`plot`)."""
        plot(results, path)
