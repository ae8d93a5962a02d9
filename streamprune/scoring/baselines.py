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
  with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``). Keep the highest.

Ties are broken by item id (lower first) after the primary score.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from ..errors import StreamPruneError
from .registry import MethodOption, register_score
from .request import ScoreRequest
from ..scores import ScoreFile, rank_items

__all__ = ["random_classes", "random_samples", "moderate_scores", "moderate", "per_sample_grad_norms", "grand"]

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
    from .fm import _feature_root, surrogate_features

    src = request.source
    root = _feature_root(request, feature_dir)
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


def per_sample_grad_norms(model: Any, x: Any, y: Any, chunk: int = 16, strategy: str = "vmap") -> np.ndarray:
    """``||grad_theta CE(model(x_i), y_i)||_2`` for each sample, with ``torch.func``.

    The model is used as it is (call ``.eval()`` first for BatchNorm running statistics);
    gradients over all its parameters. With ``strategy="vmap"``, ``chunk`` samples are
    vmapped at a time (memory: ``chunk`` x parameter count floats). ``"loop"`` runs one
    ``torch.autograd.grad`` per sample instead (same values; the parameters' ``.grad`` are
    not touched): on a CPU it is several times faster for convolutional nets (resnet18 at
    32 px: about 0.05 s against 0.2-0.4 s per sample, one thread), because vmapped
    convolution backward passes are slow there.

    Args:
        model: ``torch.nn.Module`` classifier.
        x: ``[B, ...]`` inputs.
        y: ``int64[B]`` labels.
        chunk: Samples per vmapped call.
        strategy: ``"vmap"`` or ``"loop"``.

    Returns:
        ``float64[B]`` gradient norms.

    Raises:
        ValueError: Unknown ``strategy``.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    if strategy == "loop":
        trainable = [p for p in model.parameters() if p.requires_grad]
        norms = []
        for i in range(len(x)):
            g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), trainable)
            norms.append(float(torch.sqrt(sum(t.double().pow(2).sum() for t in g))))
        return np.asarray(norms, dtype=np.float64)
    if strategy != "vmap":
        raise ValueError(f"strategy={strategy!r}: must be 'vmap' or 'loop'")
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, b, xi, yi):
        out = functional_call(model, (p, b), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, None, 0, 0))
    out = []
    for lo in range(0, len(x), chunk):
        g = per_sample(params, buffers, x[lo : lo + chunk], y[lo : lo + chunk])
        sq = sum(t.reshape(t.shape[0], -1).double().pow(2).sum(1) for t in g.values())
        out.append(torch.sqrt(sq).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


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
    import torch
    from tqdm.auto import tqdm

    from ..models import cpu_threads_beside_workers, resolve_device, surrogate_transform
    from ..readers import PrunedWebDataset

    src = request.source
    if src.label_ext is None:
        raise StreamPruneError(f"{src.path}: method 'grand' needs source labels (cross-entropy)")
    model, info = request.build_surrogate()
    dev = resolve_device(request.device)
    model = model.to(dev).eval()
    ds = PrunedWebDataset(src, None, shuffle=False, rank=0, world_size=1)
    position_of = {key: i for i, key in enumerate(src.keys())}
    pipeline = ds.decode("pil").to_tuple("__key__", "jpg;png", "cls").map_tuple(str, surrogate_transform(info["input_size"]), int)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=request.batch_size, num_workers=request.workers)
    scores = np.full(src.num_samples, np.nan)
    start = time.perf_counter()
    with cpu_threads_beside_workers(request.workers, dev), tqdm(total=len(ds), desc="grand", unit="sample", disable=not request.progress) as bar:
        for keys, x, y in loader:
            norms = per_sample_grad_norms(model, x.to(dev), y.to(dev), chunk=grad_chunk)
            scores[[position_of[k] for k in keys]] = norms
            bar.update(len(keys))
    if np.isnan(scores).any():
        raise StreamPruneError(f"{src.path}: {int(np.isnan(scores).sum())} samples were not scored")
    seconds = time.perf_counter() - start
    return ScoreFile(
        method="grand", level="sample", higher_is="keep", harder="higher", score_name="grad_norm", scores=scores, ranking=rank_items(scores),
        tiebreak="grad_norm desc, then sample id asc", surrogate=info,
        params={"class_blind": True, "parameters": "all", "mode": "eval", "grad_chunk": grad_chunk, "seconds": round(seconds, 3)},
        **_common(request),
    )
