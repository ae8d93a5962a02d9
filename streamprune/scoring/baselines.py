"""Class-blind source-pruning baselines (``docs/methods.md`` sections 1 and 3).

Zhang et al. compare LM/FM against these, applied without looking at the target:

* ``random-classes``: class level, a seeded uniform score per class (keep the highest).
* ``random-samples``: sample level, a seeded uniform score per sample.
* ``moderate`` (Xia et al., ICLR 2023): per class, the Euclidean distance of each sample's
  surrogate feature to the class's coordinate-wise **median** feature; within each class the
  samples are ranked by that distance and the score is ``-|q - 0.5|`` with ``q`` the sample's
  rank quantile in its class (``rank / (n_c - 1)``), so keeping the top of the global ranking
  keeps the middle band of every class (the reference selects the band between distance
  quantiles ``0.5 -+ budget/2``). Unlabelled sources are one class.
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

from ..errors import StreamPruneError
from ..gradnorms import per_sample_grad_norms
from ..infer import eval_batches
from ..models import cpu_threads_beside_workers, resolve_device
from ..scores import ScoreFile, rank_items
from .features import feature_root, surrogate_features
from .registry import register_score
from .request import ScoreRequest

# per_sample_grad_norms moved to streamprune.gradnorms; it stays importable from here.
__all__ = ["grand", "moderate", "moderate_scores", "per_sample_grad_norms", "random_classes", "random_samples"]

log = logging.getLogger(__name__)


def _common(request: ScoreRequest) -> dict[str, Any]:
    src = request.source
    return {"manifest": src.path, "num_samples": src.num_samples, "manifest_fingerprint": src.fingerprint, "seed": request.seed}


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
        raise ValueError(f"{src.path}: method 'random-classes' needs a labelled source")
    scores = np.random.default_rng(request.seed).random(c)
    return ScoreFile(
        method="random-classes", level="class", higher_is="keep", score_name="uniform", scores=scores,
        ranking=rank_items(scores), tiebreak="uniform desc, then id asc",
        items=list(src.classes) or [str(i) for i in range(c)], params={"class_blind": True}, **_common(request),
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
    return ScoreFile(
        method="random-samples", level="sample", higher_is="keep", score_name="uniform", scores=scores,
        ranking=rank_items(scores), tiebreak="uniform desc, then id asc", params={"class_blind": True}, **_common(request),
    )


def moderate_scores(store: Any, labels: np.ndarray, chunk_rows: int = 65536) -> dict[str, np.ndarray]:
    """Moderate's per-class distance to the median feature, and the middle-band score.

    One pass over the chunked features collects each class's rows (float16, as cached); each
    class is then processed on its own (its median and distances in float32).

    Args:
        store: Chunked features (``num_samples``, ``dim``, ``iter_chunks``), manifest order.
        labels: ``int64[N]`` labels; ``-1`` (unlabelled) rows form one extra group.
        chunk_rows: Rows per chunk.

    Returns:
        ``{"distance": float64[N], "quantile": float64[N] rank quantile in the class,
        "score": float64[N] = -|quantile - 0.5|}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = store.num_samples
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} feature rows")
    groups: dict[int, list[np.ndarray]] = {}
    rows: dict[int, list[np.ndarray]] = {}
    for start, chunk in store.iter_chunks(chunk_rows):
        lab = labels[start : start + len(chunk)]
        for c in np.unique(lab).tolist():
            sel = np.flatnonzero(lab == c)
            groups.setdefault(c, []).append(chunk[sel].astype(np.float16))
            rows.setdefault(c, []).append(sel + start)
    distance = np.zeros(n, dtype=np.float64)
    quantile = np.full(n, 0.5, dtype=np.float64)
    for c in sorted(groups):
        x = np.concatenate(groups.pop(c)).astype(np.float32)
        idx = np.concatenate(rows.pop(c))
        med = np.median(x, axis=0)
        d = np.sqrt(((x - med) ** 2).sum(axis=1, dtype=np.float64))
        distance[idx] = d
        if len(d) > 1:
            order = np.lexsort((idx, d))  # by distance, ties by sample id
            q = np.empty(len(d), dtype=np.float64)
            q[order] = np.arange(len(d)) / (len(d) - 1)
            quantile[idx] = q
    return {"distance": distance, "quantile": quantile, "score": -np.abs(quantile - 0.5)}


@register_score("moderate")
def moderate(request: ScoreRequest, feature_dir: str | None = None, chunk_rows: int = 65536) -> ScoreFile:
    """Moderate (class-blind: the target is not used), sample level, middle band kept first.

    Features are the surrogate's penultimate features, cached like FM's (``OUT/features``).

    Args:
        request: Source, surrogate and run settings.
        feature_dir: Feature cache directory (default ``OUT/features``).
        chunk_rows: Rows per chunk.

    Returns:
        Sample-level scores (``score = -|rank quantile in class - 0.5|``, higher = keep).
    """
    src = request.source
    root = feature_root(request, feature_dir)
    store, info = surrogate_features(request, src, root, desc="moderate: source")
    labels = src.labels() if src.label_ext is not None else np.full(src.num_samples, -1, dtype=np.int64)
    m = moderate_scores(store, labels, chunk_rows)
    return ScoreFile(
        method="moderate", level="sample", higher_is="keep", score_name="-|class rank quantile - 0.5|", scores=m["score"],
        extra={"distance_to_class_median": m["distance"], "class_quantile": m["quantile"]},
        ranking=rank_items(m["score"]), tiebreak="score desc, then sample id asc", surrogate=info,
        params={"class_blind": True, "feature_dir": os.path.abspath(root), "median": "coordinate-wise, per class"},
        **_common(request),
    )


@register_score("grand")
def grand(request: ScoreRequest, grad_chunk: int = 16) -> ScoreFile:
    """GraNd: per-sample gradient norm of the surrogate's loss at its checkpoint (keep highest).

    Args:
        request: Source, surrogate (its checkpoint is the "early" one) and run settings.
        grad_chunk: Samples vmapped at once.

    Returns:
        Sample-level scores.

    Raises:
        ValueError: No surrogate.
        StreamPruneError: The source has no labels.
    """
    src = request.source
    if src.label_ext is None:
        raise StreamPruneError(f"{src.path}: method 'grand' needs source labels (cross-entropy)")
    model, info = request.build_surrogate()
    dev = resolve_device(request.device)
    model = model.to(dev).eval()
    batches = eval_batches(src, input_size=info["input_size"], batch_size=request.batch_size, workers=request.workers, labels=True)
    scores = np.full(src.num_samples, np.nan)
    start = time.perf_counter()
    with cpu_threads_beside_workers(request.workers, dev), tqdm(total=len(batches), desc="grand", unit="sample", disable=not request.progress) as bar:
        for pos, x, y in batches:
            scores[pos] = per_sample_grad_norms(model, x.to(dev), y.to(dev), chunk=grad_chunk)
            bar.update(len(pos))
    if np.isnan(scores).any():
        raise StreamPruneError(f"{src.path}: {int(np.isnan(scores).sum())} samples were not scored")
    seconds = time.perf_counter() - start
    return ScoreFile(
        method="grand", level="sample", higher_is="keep", harder="higher", score_name="grad_norm", scores=scores, ranking=rank_items(scores),
        tiebreak="grad_norm desc, then sample id asc", surrogate=info,
        params={"class_blind": True, "parameters": "all", "mode": "eval", "grad_chunk": grad_chunk, "seconds": round(seconds, 3)},
        **_common(request),
    )
