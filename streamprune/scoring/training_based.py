"""Training-based baseline scores (``docs/methods.md`` section 4), all per sample.

From a recording of :func:`streamprune.dynamics.record_dynamics` (option ``dynamics_dir``,
``streamprune score --dynamics DIR``; ``epochs`` / ``--dynamics-epochs N`` uses the first N
recorded epochs):

* ``el2n`` (Paul et al., 2021): ``||softmax(f(x)) - onehot(y)||_2`` averaged over the
  evaluation-mode snapshots (``--el2n-epochs``) of every run (``--runs``) taken at epochs
  ``<= epochs`` (default: all), as the paper scores early checkpoints. Recordings without
  snapshots fall back to the training forward pass, mean over the first ``epochs`` epochs
  (default ``min(10, recorded)``), with a warning and ``params["el2n_source"]`` saying so.
  Harder = higher; kept first.
* ``forgetting`` (Toneva et al., 2019): number of correct -> incorrect transitions between
  consecutive epochs. A sample never classified correctly in any of the E epochs counts as
  most forgotten: it scores ``E + 1``, above any attainable count (at most ``floor(E / 2)``).
  Harder = higher; kept first; ties (frequent: counts are small integers) broken by a seeded
  uniform draw, then sample id.
* ``aum`` (Pleiss et al., 2020): sum over epochs of the logit margin ``z_y - max_{k != y} z_k``
  (the paper's definition; ``margin="probability"``, ``--aum-margin probability``: of
  ``p_y - max_{k != y} p_k``, the variant CCS's reference code ranks by). Low AUM = hard (or
  mislabelled): ``harder = "lower"``, and the ``top`` selector keeps the lowest first
  (``higher_is = "prune"``), like the other hardness scores. CCS (Zheng et al.) consumes
  this score through its stratified selector.
* ``grand-dyn``: GraNd from the gradient norms recorded during the same run
  (``--grand-epochs``), averaged over the snapshots taken at epochs ``<= epochs``. The
  class-blind ``grand`` method (:mod:`.baselines`) instead computes the norms at a given
  surrogate checkpoint.

Without the recording (dynamics-free):

* ``ssp``, self-supervised prototypes (Sorscher et al., 2022): k-means (FM's streamed k-means,
  :func:`.kmeans.kmeans`) on the surrogate's penultimate features (FM's per-shard feature cache);
  score = distance to the nearest centroid (Euclidean, or cosine distance on unit-normalised
  features). Harder = farther. ``keep="hard"`` (default: plentiful data) keeps the farthest
  first; ``keep="easy"`` (scarce data) the nearest first. The embedding is whatever the
  surrogate gives: pass a self-supervised backbone as ``package.module:function`` to follow
  the paper; a surrogate from ``train-surrogate`` gives a supervised embedding.

Scores never know about masks: every method scores every sample of the manifest, and a
recording with NaN rows (made with a mask) is refused with a message saying so.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from ..dynamicsfile import Dynamics, load_dynamics
from ..errors import ArgumentError, StreamPruneError
from ..kernels import nearest_centroid
from ..scores import ScoreFile
from .features import ArrayStore, RowTransform, feature_root, surrogate_features
from .kmeans import cluster_features, kmeans_options
from .registry import MethodOption, register_score
from .request import ScoreRequest

__all__ = [
    "AUM_MARGINS",
    "DEFAULT_EL2N_EPOCHS",
    "aum",
    "aum_scores",
    "el2n",
    "el2n_scores",
    "forgetting",
    "forgetting_scores",
    "grand_dyn",
    "prototype_distances",
    "ssp",
]

log = logging.getLogger(__name__)

#: EL2N from the training pass (recordings without snapshots) averages at most this many
#: leading epochs by default ("early training").
DEFAULT_EL2N_EPOCHS = 10


def el2n_scores(el2n: np.ndarray) -> np.ndarray:
    """Mean EL2N over every axis but the last (epochs; or runs and snapshot epochs).

    Args:
        el2n: ``[E, N]`` per-epoch, or ``[runs, S, N]`` per-snapshot ``||softmax - onehot||_2``.

    Returns:
        ``float64[N]``.
    """
    a = np.asarray(el2n, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]).mean(axis=0)


def forgetting_scores(correct: np.ndarray) -> dict[str, np.ndarray]:
    """Forgetting events per sample, never-learned samples ranked as most forgotten.

    Args:
        correct: ``[E, N]`` 0/1 per-epoch correctness.

    Returns:
        ``{"score": float64[N] events, or E + 1 when never learned, "events": float64[N]
        correct -> incorrect transitions between consecutive epochs, "never_learned":
        float64[N] 1.0 for samples never correct}``.
    """
    c = np.asarray(correct) > 0.5
    epochs = c.shape[0]
    events = (c[:-1] & ~c[1:]).sum(axis=0).astype(np.float64)
    never = ~c.any(axis=0)
    return {"score": np.where(never, float(epochs + 1), events), "events": events, "never_learned": never.astype(np.float64)}


def aum_scores(margin: np.ndarray) -> np.ndarray:
    """Area under the margin: the sum over epochs of the per-epoch margins.

    Args:
        margin: ``[E, N]`` per-epoch margins (logit margins ``z_y - max_{k != y} z_k`` for the
            paper's AUM, probability margins for the variant).

    Returns:
        ``float64[N]``.
    """
    return np.asarray(margin, dtype=np.float64).sum(axis=0)


def _open(request: ScoreRequest, method: str, dynamics_dir: str | os.PathLike | None) -> Dynamics:
    if not dynamics_dir:
        raise ArgumentError(
            f"method {method!r} needs recorded training dynamics: record them with `streamprune dynamics MANIFEST "
            f"--model ARCH --epochs E --out DIR`, then pass --dynamics DIR (dynamics_dir=DIR)"
        )
    dyn = load_dynamics(dynamics_dir, request.source)
    dyn.require_recorded(method)
    return dyn


def _fields(request: ScoreRequest, dyn: Dynamics, epochs_used: int, **params: Any) -> dict[str, Any]:
    return {
        "seed": int(dyn.meta.get("seed", request.seed)),
        "surrogate": dict(dyn.meta.get("model") or {}),
        "params": {
            "class_blind": True,
            "dynamics_dir": os.path.abspath(dyn.directory),
            "epochs_used": epochs_used,
            "epochs_recorded": dyn.epochs,
            "optimizer": dyn.meta.get("optimizer"),
            **params,
        },
    }


#: Options of the scores computed from recorded training dynamics.
DYNAMICS_OPTIONS = (
    MethodOption("dynamics_dir", str, "directory written by `streamprune dynamics`", flag="dynamics"),
    MethodOption(
        "epochs", int, "use the first N recorded epochs (EL2N, GraNd: the snapshots taken at epochs <= N)", flag="dynamics-epochs",
        default_help="all; EL2N without snapshots min(10, all)",
    ),
)


@register_score("el2n", options=DYNAMICS_OPTIONS)
def el2n(request: ScoreRequest, dynamics_dir: str | None = None, epochs: int | None = None) -> ScoreFile:
    """EL2N (Paul et al., 2021): mean ``||softmax - onehot||_2`` early in training (keep highest).

    With evaluation-mode snapshots in the recording (``--el2n-epochs``), the score averages them
    over every run and every snapshot epoch ``<= epochs``: the paper's definition (early
    checkpoints scored in evaluation mode, averaged over independent runs). A recording made
    without snapshots (including every version-1 recording) falls back to the EL2N of the
    training forward pass (train-mode BatchNorm, weights moving within the epoch) averaged over
    the first ``epochs`` epochs; the scores file's ``params["el2n_source"]`` says which, and the
    fallback logs a warning.

    Args:
        request: Source dataset.
        dynamics_dir: Recording of :func:`~streamprune.dynamics.record_dynamics`.
        epochs: Snapshots: the latest snapshot epoch averaged, ``0 .. recorded`` (default all).
            Training pass: leading epochs averaged (default ``min(10, recorded)``).

    Returns:
        Sample-level scores, ``harder="higher"``.

    Raises:
        ValueError: No ``dynamics_dir``, or ``epochs`` out of range.
        StreamPruneError: Bad or incomplete recording, one for another manifest, or no
            snapshot at or before ``epochs``.
    """
    dyn = _open(request, "el2n", dynamics_dir)
    if dyn.el2n_array is not None:
        snaps, at = dyn.el2n_snapshots(epochs)
        if np.isnan(snaps).any():
            raise StreamPruneError(f"{dyn.meta_path}: EL2N snapshots are missing for {int(np.isnan(snaps).any(axis=(0, 1)).sum())} samples")
        scores = el2n_scores(snaps)
        params = {
            "el2n_source": "eval-mode snapshots", "mode": "eval", "el2n_epochs": at, "runs": int(snaps.shape[0]),
            "seeds": list((dyn.meta.get("el2n") or {}).get("seeds", [])),
        }
        e = max(at)
    else:
        e = min(DEFAULT_EL2N_EPOCHS, dyn.epochs) if epochs is None else int(epochs)
        log.warning(
            "%s: no evaluation-mode EL2N snapshots (recorded without --el2n-epochs); EL2N falls back to the training forward "
            "pass of the first %d epoch(s), train-mode BatchNorm and weights moving within each epoch, not the paper's definition",
            dyn.meta_path, e,
        )
        scores = el2n_scores(dyn.field("el2n", e))
        params = {"el2n_source": "training forward pass (fallback: the recording has no eval-mode snapshots)", "mode": "train", "runs": 1}
    return request.score_file(
        "el2n", "sample", scores, higher_is="keep", score_name="mean_el2n", harder="higher", **_fields(request, dyn, e, **params),
    )


@register_score("forgetting", options=DYNAMICS_OPTIONS)
def forgetting(request: ScoreRequest, dynamics_dir: str | None = None, epochs: int | None = None) -> ScoreFile:
    """Forgetting events over training (keep highest; never learned = ``E + 1``).

    Args:
        request: Source dataset and seed (of the tie-break draw).
        dynamics_dir: Recording of :func:`~streamprune.dynamics.record_dynamics`.
        epochs: Leading epochs counted (default: all recorded).

    Returns:
        Sample-level scores, ``harder="higher"``; ``extra`` holds ``events``,
        ``never_learned`` and the tie-break draw.

    Raises:
        ValueError: No ``dynamics_dir``, or ``epochs`` out of range.
        StreamPruneError: Bad or incomplete recording, or one for another manifest.
    """
    dyn = _open(request, "forgetting", dynamics_dir)
    e = dyn.epochs if epochs is None else int(epochs)
    f = forgetting_scores(dyn.field("correct", e))
    draw = np.random.default_rng(request.seed).random(request.source.num_samples)
    return request.score_file(
        "forgetting", "sample", f["score"], higher_is="keep", score_name="forgetting_events", ties=[("tiebreak_uniform", draw)], harder="higher",
        extra={"events": f["events"], "never_learned": f["never_learned"], "tiebreak_uniform": draw},
        **_fields(request, dyn, e, never_learned_score=e + 1, tiebreak_seed=request.seed),
    )


#: AUM's margin variants: the recorded field each sums.
AUM_MARGINS = {"logit": "logit_margin", "probability": "margin"}


@register_score(
    "aum",
    options=DYNAMICS_OPTIONS + (
        MethodOption("margin", str, "AUM over logit margins (Pleiss et al.) or probability margins (CCS's reference code)",
                     flag="aum-margin", choices=tuple(AUM_MARGINS)),
    ),
)
def aum(request: ScoreRequest, dynamics_dir: str | None = None, epochs: int | None = None, margin: str = "logit") -> ScoreFile:
    """AUM: summed margin, by default of the logits ``z_y - max_{k != y} z_k`` (low = hard; the lowest are kept first).

    Args:
        request: Source dataset.
        dynamics_dir: Recording of :func:`~streamprune.dynamics.record_dynamics`.
        epochs: Leading epochs summed (default: all recorded).
        margin: ``"logit"`` (Pleiss et al.'s definition) or ``"probability"``
            (``p_y - max_{k != y} p_k``, the variant CCS's reference code uses).

    Returns:
        Sample-level scores, ``harder="lower"``, ``higher_is="prune"``, ``variant`` = ``margin``.

    Raises:
        ValueError: No ``dynamics_dir``, unknown ``margin``, or ``epochs`` out of range.
        StreamPruneError: Bad or incomplete recording, one for another manifest, or (for
            ``margin="logit"``) a recording made before logit margins were recorded.
    """
    if margin not in AUM_MARGINS:
        raise ArgumentError(f"margin={margin!r}: must be one of {', '.join(AUM_MARGINS)}")
    dyn = _open(request, "aum", dynamics_dir)
    field = AUM_MARGINS[margin]
    if field not in dyn.fields:
        raise StreamPruneError(
            f"{dyn.meta_path}: recorded without logit margins (dynamics format version {dyn.meta.get('version')}); AUM as Pleiss et al. "
            "define it needs them: record the dynamics again, or use the probability-margin variant (--aum-margin probability)"
        )
    e = dyn.epochs if epochs is None else int(epochs)
    scores = aum_scores(dyn.field(field, e))
    return request.score_file(
        "aum", "sample", scores, higher_is="prune", score_name="area_under_margin", harder="lower", variant=margin,
        **_fields(request, dyn, e, aum_margin=margin),
    )


@register_score("grand-dyn", options=DYNAMICS_OPTIONS)
def grand_dyn(request: ScoreRequest, dynamics_dir: str | None = None, epochs: int | None = None) -> ScoreFile:
    """GraNd from the per-sample gradient norms recorded with the dynamics (keep highest).

    Args:
        request: Source dataset.
        dynamics_dir: Recording made with ``grand_epochs`` (``--grand-epochs``).
        epochs: Average the snapshots taken at training epochs ``<= epochs`` (default: all).

    Returns:
        Sample-level scores, ``harder="higher"``.

    Raises:
        ValueError: No ``dynamics_dir``.
        StreamPruneError: No gradient norms recorded (or none that early), bad recording.
    """
    dyn = _open(request, "grand-dyn", dynamics_dir)
    norms, at = dyn.grand(epochs)
    if np.isnan(norms).any():
        raise StreamPruneError(f"{dyn.meta_path}: gradient norms are missing for {int(np.isnan(norms).any(0).sum())} samples")
    scores = norms.astype(np.float64).mean(axis=0)
    return request.score_file(
        "grand-dyn", "sample", scores, higher_is="keep", score_name="mean_grad_norm", harder="higher",
        **_fields(request, dyn, max(at), grand_epochs=at, mode=(dyn.meta.get("grand") or {}).get("mode")),
    )


class _UnitRows(RowTransform):
    """Rows of a chunked feature source scaled to unit Euclidean norm (zero rows stay zero)."""

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
        return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def prototype_distances(store: Any, centroids: np.ndarray, distance: str = "euclidean", chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest prototype of each sample and the distance to it.

    Args:
        store: Chunked features (``FeatureStore``, ``ArrayStore``) or an ``[N, D]`` array.
        centroids: ``[K, D]`` prototypes.
        distance: ``"euclidean"`` (``||x - c||``) or ``"cosine"`` (``1 - cos(x, c)``; the
            nearest prototype is the one of largest cosine).

    Returns:
        ``(int64[N] nearest centroid, float64[N] distance)``; ties go to the lower centroid id.

    Raises:
        ValueError: Unknown ``distance``.
    """
    if distance not in ("euclidean", "cosine"):
        raise ArgumentError(f"distance={distance!r}: must be 'euclidean' or 'cosine'")
    if isinstance(store, np.ndarray):
        store = ArrayStore(store)
    c = np.asarray(centroids, dtype=np.float32)
    if distance == "cosine":
        store = _UnitRows(store)
        c = _UnitRows.transform(c)
    idx = np.empty(store.num_samples, dtype=np.int64)
    dist = np.empty(store.num_samples, dtype=np.float64)
    c64 = c.astype(np.float64)
    for start, chunk in store.iter_chunks(chunk_rows):
        near, _ = nearest_centroid(chunk, c)
        x = chunk.astype(np.float64)
        # exact distance to the chosen centroid, free of the expansion's float32 cancellation
        if distance == "euclidean":
            d = np.sqrt(((x - c64[near]) ** 2).sum(axis=1))
        else:
            d = 1.0 - (x * c64[near]).sum(axis=1)
        idx[start : start + len(chunk)] = near
        dist[start : start + len(chunk)] = d
    return idx, dist


@register_score("ssp", options=kmeans_options("the number of classes"))
def ssp(
    request: ScoreRequest,
    clusters: int | None = None,
    kmeans_iters: int = 20,
    keep: str = "hard",
    distance: str = "euclidean",
    feature_dir: str | None = None,
    chunk_rows: int = 65536,
    init_sample: int | None = None,
) -> ScoreFile:
    """Self-supervised prototypes: distance to the nearest k-means centroid of the features.

    Args:
        request: Source, surrogate (the embedding) and run settings.
        clusters: K (default: the number of source classes).
        kmeans_iters: Maximum Lloyd iterations.
        keep: ``"hard"`` (farthest first: plentiful data) or ``"easy"`` (nearest first: scarce data).
        distance: ``"euclidean"`` or ``"cosine"`` (k-means then runs on unit-normalised features).
        feature_dir: Feature cache directory (default ``OUT/features``, shared with FM/Moderate).
        chunk_rows: Rows read at a time.
        init_sample: Rows of the seeded subsample k-means++ runs on.

    Returns:
        Sample-level scores (``scores`` = distance, ``harder="higher"``; ``higher_is`` is
        ``"keep"`` for ``keep="hard"``, ``"prune"`` for ``"easy"``); ``extra["cluster"]``.

    Raises:
        ValueError: No surrogate, bad ``keep``/``distance``, or no K for an unlabelled source.
    """
    if keep not in ("hard", "easy"):
        raise ArgumentError(f"keep={keep!r}: must be 'hard' (far from prototypes first) or 'easy'")
    if distance not in ("euclidean", "cosine"):
        raise ArgumentError(f"distance={distance!r}: must be 'euclidean' or 'cosine'")
    src = request.source
    k = clusters if clusters is not None else src.num_classes
    if not k or k < 1:
        raise ArgumentError(f"{src.path}: method 'ssp' needs the number of prototypes (--clusters K); the source has no classes")
    root = feature_root(request, feature_dir)
    t0 = time.perf_counter()
    store, info = surrogate_features(request, src, root, desc="ssp: source")
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    space = _UnitRows(store) if distance == "cosine" else store
    km = cluster_features(space, int(k), engine=request.engine, iters=kmeans_iters, init_sample=init_sample, chunk_rows=chunk_rows,
                          seed=request.seed, progress=request.progress)
    cluster, dist = prototype_distances(store, km.centroids, distance, chunk_rows)
    hard = keep == "hard"
    return request.score_file(
        "ssp", "sample", dist, higher_is="keep" if hard else "prune", score_name=f"{distance}_distance_to_nearest_prototype",
        variant=f"keep-{keep}", harder="higher", extra={"cluster": cluster.astype(np.float64)}, surrogate=info,
        params={
            "class_blind": True, "clusters": int(k), "kmeans_iters": kmeans_iters, "iterations_run": km.iterations,
            "inertia": km.inertia, "keep": keep, "distance": distance, "feature_dir": os.path.abspath(root),
            "embed_seconds": round(embed_s, 3), "cluster_seconds": round(time.perf_counter() - t0, 3),
        },
    )
