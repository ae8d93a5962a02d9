"""Class-blind source-pruning baselines (``docs/methods.md`` section 2).

Zhang et al. compare LM/FM against these, applied without looking at the target:

* ``random-classes``: class level, a seeded uniform score per class (keep the highest).
* ``random-samples``: sample level, a seeded uniform score per sample.
* ``moderate`` (Xia et al., ICLR 2023): each sample's score is the Euclidean distance of its
  surrogate feature to its class's coordinate-wise **median** feature; the kept samples are
  those whose distance is closest to the median distance **over the whole source** (one
  global band), as the reference code does (``tmllab/Moderate-DS``, ``selection.py``:
  ``get_median`` per class, ``get_distance`` to the sample's own class median, then
  ``get_prune_idx`` sorts *all* distances together and keeps the sorted positions
  ``round(N (0.5 - b/2)) .. round(N (0.5 + b/2))``, ``b`` the kept fraction). ``band="class"``
  keeps the middle band of every class instead (an option, not the paper's). Unlabelled
  sources are one class.
* ``grand`` (Paul et al., 2021): ``||grad_theta CE(f(x), y)||_2`` per sample, over all
  parameters of the surrogate at the given (early) checkpoint, evaluation mode (BatchNorm
  uses its running statistics, so a sample's score does not depend on its batch); computed
  with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``;
  :func:`streamprune.gradnorms.per_sample_grad_norms`). Keep the highest.

Ties are broken by item id (lower first) after the primary score.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import ArgumentError, StreamPruneError
from ..gradnorms import GRAD_STRATEGIES, per_sample_grad_norms, resolve_grad_strategy
from ..infer import eval_batches
from ..models import cpu_threads_beside_workers, resolve_device
from ..scores import ScoreFile
from .features import feature_root, surrogate_features
from .registry import MethodOption, register_score
from .request import ScoreRequest

__all__ = ["grand", "moderate", "moderate_scores", "random_classes", "random_samples"]

log = logging.getLogger(__name__)


@register_score("random-classes")
def random_classes(request: ScoreRequest) -> ScoreFile:
    """Random classes: a seeded uniform score per source class, class level (keep highest).

    Args:
        request: Source and seed.

    Returns:
        Class-level scores.

    Raises:
        ValueError: The source has no classes.
    """
    src = request.source
    c = src.num_classes
    if c < 1:
        raise ArgumentError(f"{src.path}: method 'random-classes' needs a labelled source")
    scores = np.random.default_rng(request.seed).random(c)
    return request.score_file(
        "random-classes", "class", scores, higher_is="keep", score_name="uniform",
        items=list(src.classes) or [str(i) for i in range(c)], params={"class_blind": True},
    )


@register_score("random-samples")
def random_samples(request: ScoreRequest) -> ScoreFile:
    """Random samples: a seeded uniform score per source sample, sample level (keep highest).

    Args:
        request: Source and seed.

    Returns:
        Sample-level scores.
    """
    n = request.source.num_samples
    scores = np.random.default_rng(request.seed).random(n)
    return request.score_file("random-samples", "sample", scores, higher_is="keep", score_name="uniform", params={"class_blind": True})


def moderate_scores(store: Any, labels: np.ndarray, chunk_rows: int = 65536, band: str = "global") -> dict[str, np.ndarray]:
    """Moderate's distance to the class median feature, and the middle-band score.

    One pass over the chunked features collects each class's rows (float16, as cached); each
    class is then processed on its own (its coordinate-wise median and the distances in
    float32, summed in float64).

    The band score ranks the distances (ties by sample id) over the whole source
    (``band="global"``, the reference code) or within each class (``band="class"``); with
    ``r`` a sample's rank among ``n`` and ``q = r / (n - 1)``, ``score = -|q - 0.5|``. The
    ``rank_first`` key orders mirrored ranks (equal score): the smaller distance first. Taking
    the top ``k`` of ``rank_items(score, rank_first)`` then keeps the ranks
    ``floor((n - k) / 2) .. floor((n - k) / 2) + k - 1``: the ``k`` distances around the
    median, the extra one on the near side when ``n - k`` is odd.

    Args:
        store: Chunked features (``num_samples``, ``dim``, ``iter_chunks``), manifest order.
        labels: ``int64[N]`` labels; ``-1`` (unlabelled) rows form one extra group.
        chunk_rows: Rows per chunk.
        band: ``"global"`` (one band over all samples) or ``"class"`` (a band per class).

    Returns:
        ``{"distance": float64[N] to the class median feature, "quantile": float64[N] rank
        quantile of the distance (globally or in the class), "score": float64[N],
        "rank_first": float64[N] tie-break key (higher first)}``.

    Raises:
        ValueError: Wrong number of labels or unknown ``band``.
    """
    if band not in ("global", "class"):
        raise ArgumentError(f"band={band!r}: must be 'global' (the reference code) or 'class'")
    labels = np.asarray(labels, dtype=np.int64)
    n = store.num_samples
    if len(labels) != n:
        raise ArgumentError(f"{len(labels)} labels for {n} feature rows")
    groups: dict[int, list[np.ndarray]] = {}
    rows: dict[int, list[np.ndarray]] = {}
    for start, chunk in store.iter_chunks(chunk_rows):
        lab = labels[start : start + len(chunk)]
        for c in np.unique(lab).tolist():
            sel = np.flatnonzero(lab == c)
            groups.setdefault(c, []).append(chunk[sel].astype(np.float16))
            rows.setdefault(c, []).append(sel + start)
    distance = np.zeros(n, dtype=np.float64)
    for c in sorted(groups):
        x = np.concatenate(groups.pop(c)).astype(np.float32)
        idx = np.concatenate(rows.pop(c))
        med = np.median(x, axis=0)
        distance[idx] = np.sqrt(((x - med) ** 2).sum(axis=1, dtype=np.float64))
    rank = np.empty(n, dtype=np.float64)
    sizes = np.empty(n, dtype=np.int64)
    members = [np.arange(n)] if band == "global" else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for idx in members:
        order = idx[np.lexsort((idx, distance[idx]))]  # by distance, ties by sample id
        rank[order] = np.arange(len(idx))
        sizes[idx] = len(idx)
    quantile = np.where(sizes > 1, rank / np.maximum(sizes - 1, 1), 0.5)
    # -|q - 0.5| written as -|2 r - (n - 1)| / (2 (n - 1)): the numerator is an exact integer, so
    # mirrored ranks m - d and m + d get bit-identical scores and rank_first (not float rounding)
    # decides which comes first
    score = np.where(sizes > 1, -np.abs(2.0 * rank - (sizes - 1)) / (2.0 * np.maximum(sizes - 1, 1)), 0.0)
    return {"distance": distance, "quantile": quantile, "score": score, "rank_first": -rank}


@register_score(
    "moderate",
    options=(
        MethodOption(
            "band", str, "keep the distances nearest the median over the whole source (global, the reference code) or within each class",
            choices=("global", "class"), flag="moderate-band",
        ),
    ),
)
def moderate(request: ScoreRequest, band: str = "global", feature_dir: str | None = None, chunk_rows: int = 65536) -> ScoreFile:
    """Moderate (class-blind: the target is not used), sample level, middle band kept first.

    Features are the surrogate's penultimate features, cached like FM's (``OUT/features``).
    Each sample's distance is to its own class's coordinate-wise median feature (the
    reference's ``get_median``/``get_distance``); the band is over all samples by default, as
    the reference's ``get_prune_idx`` sorts the distances of the whole training set together,
    so classes whose samples sit far from (or near to) their median lose more samples. See
    :func:`moderate_scores` for the exact rank window kept.

    Args:
        request: Source, surrogate and run settings.
        band: ``"global"`` (default, code-exact) or ``"class"`` (the middle band of every class).
        feature_dir: Feature cache directory (default ``OUT/features``).
        chunk_rows: Rows per chunk.

    Returns:
        Sample-level scores (``score = -|rank quantile - 0.5|``, higher = keep).

    Raises:
        ValueError: Unknown ``band``.
    """
    src = request.source
    if band not in ("global", "class"):
        raise ArgumentError(f"band={band!r}: must be 'global' (the reference code) or 'class'")
    root = feature_root(request, feature_dir)
    store, info = surrogate_features(request, src, root, desc="moderate: source")
    labels = src.labels() if src.label_ext is not None else np.full(src.num_samples, -1, dtype=np.int64)
    m = moderate_scores(store, labels, chunk_rows, band=band)
    where = "source" if band == "global" else "class"
    # rank_first: of two mirrored ranks (equal score), the smaller distance first
    return request.score_file(
        "moderate", "sample", m["score"], higher_is="keep", score_name=f"-|{where} rank quantile - 0.5|", ties=[("rank_first", m["rank_first"])],
        variant=f"band-{band}", surrogate=info,
        extra={"distance_to_class_median": m["distance"], f"{where}_quantile": m["quantile"], "rank_first": m["rank_first"]},
        params={
            "class_blind": True, "feature_dir": os.path.abspath(root), "median": "coordinate-wise, per class",
            "distance": "euclidean to the sample's class median", "band": band,
        },
    )


@register_score(
    "grand",
    options=(
        MethodOption(
            "grad_strategy", str, "per-sample gradients by torch.func vmap, or one autograd call per sample (loop); auto: vmap "
            "on CUDA, the loop on a CPU, where it is several times faster", choices=GRAD_STRATEGIES,
        ),
    ),
)
def grand(request: ScoreRequest, grad_chunk: int = 16, grad_strategy: str = "auto") -> ScoreFile:
    """GraNd: per-sample gradient norm of the surrogate's loss at its checkpoint (keep highest).

    Args:
        request: Source, surrogate (its checkpoint is the "early" one) and run settings.
        grad_chunk: Samples vmapped at once (``vmap``).
        grad_strategy: ``"auto"``, ``"vmap"`` or ``"loop"``
            (:func:`~streamprune.gradnorms.resolve_grad_strategy`); the norms are the same.

    Returns:
        Sample-level scores.

    Raises:
        ValueError: No surrogate, or an unknown ``grad_strategy``.
        StreamPruneError: The source has no labels.
    """
    src = request.source
    if src.label_ext is None:
        raise StreamPruneError(f"{src.path}: method 'grand' needs source labels (cross-entropy)")
    dev = resolve_device(request.device)
    strategy = resolve_grad_strategy(grad_strategy, dev)  # an unknown one fails before the model is built
    model, info = request.build_surrogate()
    model = model.to(dev).eval()
    batches = eval_batches(src, input_size=info["input_size"], batch_size=request.batch_size, workers=request.workers, labels=True)
    scores = np.full(src.num_samples, np.nan)
    start = time.perf_counter()
    with cpu_threads_beside_workers(request.workers, dev), tqdm(total=len(batches), desc="grand", unit="sample", disable=not request.progress) as bar:
        for pos, x, y in batches:
            scores[pos] = per_sample_grad_norms(model, x.to(dev), y.to(dev), chunk=grad_chunk, strategy=strategy)
            bar.update(len(pos))
    if np.isnan(scores).any():
        raise StreamPruneError(f"{src.path}: {int(np.isnan(scores).sum())} samples were not scored")
    seconds = time.perf_counter() - start
    return request.score_file(
        "grand", "sample", scores, higher_is="keep", score_name="grad_norm", harder="higher", surrogate=info,
        params={"class_blind": True, "parameters": "all", "mode": "eval", "grad_chunk": grad_chunk, "grad_strategy": strategy, "seconds": round(seconds, 3)},
    )
