"""Label mapping (LM): rank source classes by the target samples a surrogate maps to them.

Zhang et al., NeurIPS 2023 (``docs/methods.md`` section 1). A surrogate classifier over the C
source classes runs over the target's training samples with the deterministic evaluation
transform; each target sample votes for its top-1 source class, and the classes with the
most votes are kept. Ties (frequent: with a small target many classes get no vote) are broken
by the summed softmax probability over the target set, then by class id (lower first). The
soft-vote variant ranks by the summed softmax, ties broken by votes, then class id.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import ArgumentError
from ..infer import infer
from ..kernels import vote_histogram
from ..scores import ScoreFile, rank_items
from .registry import MethodOption, register_score
from .request import ScoreRequest

__all__ = ["label_mapping", "lm", "lm_scores", "softmax"]

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits.

    Args:
        logits: ``[N, C]`` logits.

    Returns:
        ``float64[N, C]`` probabilities.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def label_mapping(logits: np.ndarray, num_classes: int, soft_vote: bool = False) -> dict[str, np.ndarray]:
    """LM votes, tie-break key and ranking from the surrogate's logits on the target set.

    Args:
        logits: ``[N, C]`` surrogate logits of the N target samples over the C source classes.
        num_classes: C.
        soft_vote: Rank by summed softmax (votes break its ties) instead of by votes.

    Returns:
        ``{"votes": float64[C] top-1 counts, "softmax_sum": float64[C], "ranking": int64[C]}``;
        ``ranking`` lists class ids most-voted first, ties broken deterministically.

    Raises:
        ValueError: ``logits`` is not ``[N, num_classes]``.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ArgumentError(f"logits have shape {logits.shape}; expected [N, {num_classes}]")
    top1 = logits.argmax(axis=1)  # ties go to the lower class id
    votes = vote_histogram(top1, num_classes)
    softmax_sum = softmax(logits).sum(axis=0) if len(logits) else np.zeros(num_classes)
    ranking = rank_items(softmax_sum, votes) if soft_vote else rank_items(votes, softmax_sum)
    return {"votes": votes, "softmax_sum": softmax_sum, "ranking": ranking}


def lm_scores(
    logits: np.ndarray,
    source_classes: list[str],
    manifest_fingerprint: str,
    soft_vote: bool = False,
    **fields,
) -> ScoreFile:
    """Wrap :func:`label_mapping`'s result as a class-level :class:`ScoreFile`.

    Args:
        logits: ``[N, C]`` surrogate logits on the target samples.
        source_classes: Source class names (length C).
        manifest_fingerprint: Fingerprint of the source manifest.
        soft_vote: Use the soft-vote variant.
        **fields: Further :class:`ScoreFile` fields (manifest, surrogate, target, seed, params).

    Returns:
        The (unsaved) scores.
    """
    result = label_mapping(logits, len(source_classes), soft_vote=soft_vote)
    primary, secondary = ("softmax_sum", "votes") if soft_vote else ("votes", "softmax_sum")
    return ScoreFile.ranked(
        "lm",
        "class",
        result[primary],
        higher_is="keep",
        score_name=primary,
        ties=[(secondary, result[secondary])],
        variant="soft-vote" if soft_vote else "hard-vote",
        extra={"votes": result["votes"], "softmax_sum": result["softmax_sum"]},
        manifest_fingerprint=manifest_fingerprint,
        items=list(source_classes),
        **fields,
    )


@register_score(
    "lm", options=(MethodOption("soft_vote", bool, "rank by summed softmax instead of top-1 votes"),)
)
def lm(request: ScoreRequest, soft_vote: bool = False) -> ScoreFile:
    """Label mapping over the request's target set (class level; needs a surrogate).

    Args:
        request: Source, target, surrogate and run settings.
        soft_vote: Rank by summed softmax instead of top-1 votes.

    Returns:
        Class-level scores, higher = keep.

    Raises:
        ValueError: No target or no surrogate given.
        StreamPruneError: The surrogate checkpoint is for other classes.
    """
    if request.target is None:
        raise ArgumentError("method 'lm' needs a target dataset (--target)")
    source = request.source
    model, surrogate = request.build_surrogate()
    start = time.perf_counter()
    out = infer(
        model, request.target, input_size=surrogate["input_size"], batch_size=request.batch_size,
        workers=request.workers, device=request.device, progress=request.progress, desc="lm: target",
    )
    seconds = time.perf_counter() - start
    log.info("lm: ran %s over %d target samples in %.1f s", surrogate["arch"], len(out["logits"]), seconds)
    return lm_scores(
        out["logits"],
        list(source.classes) or [str(c) for c in range(source.num_classes)],
        source.fingerprint,
        soft_vote=soft_vote,
        manifest=source.path,
        num_samples=source.num_samples,
        surrogate=surrogate,
        target=request.target_info(),
        seed=request.seed,
        params={"soft_vote": soft_vote, "batch_size": request.batch_size, "inference_seconds": round(seconds, 3)},
    )

