"""Scoring methods behind a string-keyed registry, and the one-pass ``score -> masks`` job.

A scoring method is a function ``method(request: ScoreRequest, **options) -> ScoreFile``
registered under a name::

    from streamprune.scoring import ScoreRequest, register_score
    from streamprune.scoring.scores_file import ScoreFile

    @register_score("my-score")
    def my_score(request: ScoreRequest, k: int = 10) -> ScoreFile:
        ...

and run by :func:`score_source` (``streamprune score --method NAME``), which saves the scores
file once and writes one keep mask per requested ratio. Methods compute scores only; they
never write masks (``scores_file.mask_from_scores`` does, here and in ``streamprune mask
--scores``). Registered here: ``lm`` (label mapping, :mod:`.lm`), ``fm`` (feature mapping, :mod:`.fm`), and the
class-blind baselines ``random-classes``, ``random-samples``, ``moderate``, ``grand`` (:mod:`.baselines`),
the training-free ``dlc`` (hardness of the downstream set itself, :mod:`.dlc`), and the training-based
``el2n``, ``forgetting``, ``aum``, ``grand-dyn`` (option ``dynamics_dir``) and ``ssp`` (:mod:`.training_based`).
"""

from __future__ import annotations

import logging
import os
import time
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..errors import StreamPruneError
from ..manifest import MANIFEST_NAME, Manifest
from ..masks import check_ratio
from .scores_file import ScoreFile, mask_from_scores

__all__ = [
    "ScoreFn",
    "ScoreRequest",
    "register_score",
    "get_score",
    "available_scores",
    "resolve_target",
    "score_source",
    "SCORES_NAME",
]

log = logging.getLogger(__name__)

ScoreFn = Callable[..., ScoreFile]
_REGISTRY: dict[str, ScoreFn] = {}
#: File name of the scores a scoring pass writes in its output directory.
SCORES_NAME = "scores.json"


def register_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator registering a scoring method under ``name``.

    Args:
        name: Registry key (what ``--method`` takes).

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: ``name`` is already registered to another function.
    """

    def decorate(fn: ScoreFn) -> ScoreFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"scoring method {name!r} is already registered ({existing.__module__}.{existing.__name__})")
        _REGISTRY[name] = fn
        return fn

    return decorate


def get_score(name: str) -> ScoreFn:
    """Look up a registered scoring method.

    Args:
        name: Registry key.

    Returns:
        The method.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scoring method {name!r}; available: {', '.join(available_scores())}") from None


def available_scores() -> list[str]:
    """Names of the registered scoring methods, sorted."""
    return sorted(_REGISTRY)


@dataclass
class ScoreRequest:
    """Everything a scoring method may need, resolved once by :func:`score_source`.

    Attributes:
        source: The source dataset being pruned.
        target: The target (downstream) training set, or ``None`` for target-free methods.
        surrogate: Architecture name or ``"package.module:function"`` entry point, or ``None``.
        checkpoint: Surrogate checkpoint, or ``None`` (randomly initialised, seeded).
        input_size: Network input side; ``None``: the checkpoint's, else the default 32.
        batch_size: Samples per forward pass.
        workers: DataLoader worker processes.
        device: Torch device (``"cpu"``, ``"cuda"``, ``"auto"``).
        seed: Seed (initialisation of an untrained surrogate, random choices).
        progress: Show progress bars.
        target_description: Free text describing the target (recorded in the scores).
        out_dir: Output directory of the scoring pass (methods may cache there, e.g. FM features).
    """

    source: Manifest
    target: Manifest | None = None
    surrogate: str | None = None
    checkpoint: str | None = None
    input_size: int | None = None
    batch_size: int = 256
    workers: int = 0
    device: str | None = "cpu"
    seed: int = 0
    progress: bool = True
    target_description: str | None = None
    out_dir: str | None = None

    def build_surrogate(self) -> tuple[Any, dict[str, Any]]:
        """Build the surrogate over the source classes, with its provenance.

        Returns:
            ``(model, info)``: the ``torch.nn.Module`` in eval mode, and ``info`` holding ``arch``, ``checkpoint``, ``checkpoint_sha256``,
            ``input_size`` and the checkpoint's training metadata.

        Raises:
            ValueError: No surrogate was given.
            StreamPruneError: The checkpoint was trained on other classes.
        """
        import torch

        from ..models import DEFAULT_INPUT_SIZE, build_surrogate, checkpoint_info

        if not self.surrogate:
            raise ValueError("this scoring method needs a surrogate (--surrogate ARCH_OR_ENTRYPOINT)")
        info = checkpoint_info(self.checkpoint)
        classes = info.pop("classes", None)
        if classes and self.source.classes and list(classes) != list(self.source.classes):
            raise StreamPruneError(
                f"{self.checkpoint}: surrogate was trained on classes {list(classes)[:4]}..., "
                f"source {self.source.path} has {list(self.source.classes)[:4]}..."
            )
        trained_size = info.get("input_size")
        input_size = int(self.input_size or trained_size or DEFAULT_INPUT_SIZE)
        if trained_size and int(trained_size) != input_size:
            log.warning("surrogate was trained at input %s, scoring at %s", trained_size, input_size)
        torch.manual_seed(self.seed)  # an untrained surrogate is the same on every run
        model = build_surrogate(self.surrogate, self.source.num_classes, self.checkpoint)
        return model, {"arch": self.surrogate, **info, "input_size": input_size}

    def target_info(self) -> dict[str, Any] | None:
        """Provenance of the target set (manifest, fingerprint, size, description)."""
        if self.target is None:
            return None
        return {
            "manifest": self.target.path,
            "fingerprint": self.target.fingerprint,
            "num_samples": self.target.num_samples,
            "classes": list(self.target.classes),
            "description": self.target_description,
        }


def _is_manifest_path(path: str) -> bool:
    return (os.path.isfile(path) and path.endswith(".json")) or os.path.isfile(os.path.join(path, MANIFEST_NAME))


def resolve_target(
    target: str | os.PathLike | Manifest | Iterable,
    work_dir: str | os.PathLike,
    split: str = "train",
    workers: int = 1,
    progress: bool = True,
) -> Manifest:
    """Open a target dataset, sharding it first when it is not a manifest yet.

    Args:
        target: A manifest (object, ``manifest.json`` or its directory), or anything
            ``streamprune shard`` accepts (image folder tree, IDX directory, ``.npz``, or an
            iterable of ``(key, {ext: bytes}, label)``); the latter is sharded into
            ``work_dir/target``.
        work_dir: Output directory of the scoring pass.
        split: IDX split to shard (``train``: LM votes with the target's training samples).
        workers: Shard-writing processes.
        progress: Show a progress bar.

    Returns:
        The target manifest.
    """
    from ..writers import write_shards

    if isinstance(target, Manifest):
        return target
    if isinstance(target, (str, os.PathLike)) and _is_manifest_path(os.fspath(target)):
        return Manifest.load(target)
    out = os.path.join(os.fspath(work_dir), "target")
    log.info("sharding target %s (split %s) into %s", target if isinstance(target, (str, os.PathLike)) else "<samples>", split, out)
    return write_shards(target, out, split=split, workers=workers, progress=progress)


def score_source(
    source: str | os.PathLike | Manifest,
    method: str,
    ratios: Sequence[float],
    out_dir: str | os.PathLike,
    *,
    target: str | os.PathLike | Manifest | Iterable | None = None,
    target_split: str = "train",
    surrogate: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    input_size: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
    device: str | None = "cpu",
    seed: int = 0,
    progress: bool = True,
    selector: str = "top",
    selector_options: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score a source dataset once, save ``scores.json``, and write one mask per ratio.

    Masks are named ``{method}-{ratio:g}.spmask`` in ``out_dir`` (``lm-0.6.spmask``), or
    ``{method}-{selector}-{ratio:g}.spmask`` with a selector other than ``top``.

    Args:
        source: Source manifest (path, directory or object).
        method: Registered scoring method (see :func:`available_scores`).
        ratios: Fractions REMOVED, each in ``[0, 1)``.
        out_dir: Output directory (created).
        target: Target training set (see :func:`resolve_target`), for methods that need one.
        target_split: IDX split to shard when ``target`` is an IDX directory.
        surrogate: Surrogate architecture or entry point, for methods that need one.
        checkpoint: Surrogate checkpoint (``None``: untrained, seeded).
        input_size: Network input side (default: the checkpoint's, else 32).
        batch_size: Samples per forward pass.
        workers: DataLoader workers (and shard writers for the target).
        device: Torch device.
        seed: Seed.
        progress: Show progress bars.
        selector: Registered selector turning the scores into masks (:mod:`streamprune.selection`).
        selector_options: Options for the selector (e.g. ``{"gamma": 0.5}``).
        **options: Method options (``soft_vote=True`` for LM).

    Returns:
        ``{"scores": path, "masks": {ratio: path}, "kept": {ratio: kept item ids},
        "target": target manifest path or None, "seconds": {"target", "score", "masks"}}``.

    Raises:
        ValueError: Unknown method or option, or a bad ratio.
    """
    from ..selection import get_selector

    fn = get_score(method)
    get_selector(selector)  # an unknown selector fails before the (long) scoring pass
    selector_options = dict(selector_options or {})
    try:
        inspect.signature(fn).bind(None, **options)
    except TypeError:
        raise ValueError(f"method {method!r} does not take option(s) {sorted(options)}") from None
    ratios = [check_ratio(r, "ratio") for r in ratios]
    if not ratios:
        raise ValueError("give at least one ratio")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    src = source if isinstance(source, Manifest) else Manifest.load(source)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    tgt = None
    description = None
    if target is not None:
        description = os.path.abspath(os.fspath(target)) if isinstance(target, (str, os.PathLike)) else None
        tgt = resolve_target(target, out_dir, split=target_split, workers=max(1, workers), progress=progress)
        if description and not _is_manifest_path(description):
            description = f"{description} (split {target_split})"
    seconds["target"] = time.perf_counter() - t0
    request = ScoreRequest(
        source=src,
        target=tgt,
        surrogate=surrogate,
        checkpoint=os.fspath(checkpoint) if checkpoint is not None else None,
        input_size=input_size,
        batch_size=batch_size,
        workers=workers,
        device=device,
        seed=seed,
        progress=progress,
        target_description=description,
        out_dir=out_dir,
    )
    t0 = time.perf_counter()
    scores = fn(request, **options)
    seconds["score"] = time.perf_counter() - t0
    scores_path = scores.save(os.path.join(out_dir, SCORES_NAME))
    t0 = time.perf_counter()
    masks: dict[float, str] = {}
    kept: dict[float, list[int]] = {}
    for ratio in ratios:
        try:
            mask = mask_from_scores(src, scores, ratio, selector, seed=seed, **selector_options)
        except ValueError as exc:
            raise ValueError(f"{exc}; the scores are saved in {scores_path} (streamprune mask --scores)") from None
        stem = method if selector == "top" else f"{method}-{selector}"
        masks[ratio] = mask.save(os.path.join(out_dir, f"{stem}-{ratio:g}.spmask"))
        kept[ratio] = list(mask.provenance.get("kept_classes") or mask.provenance.get("kept_clusters") or [])
    seconds["masks"] = time.perf_counter() - t0
    log.info("%s: scores -> %s, %d masks in %s", method, scores_path, len(masks), out_dir)
    return {
        "scores": scores_path,
        "masks": masks,
        "kept": kept,
        "target": tgt.path if tgt is not None else None,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


from . import lm as _lm  # noqa: E402,F401  (registers "lm")
from . import fm as _fm  # noqa: E402,F401  (registers "fm")
from . import baselines as _baselines  # noqa: E402,F401  (random-classes, random-samples, moderate, grand)
from . import dlc as _dlc  # noqa: E402,F401  (registers "dlc")
from . import training_based as _training_based  # noqa: E402,F401  (el2n, forgetting, aum, grand-dyn, ssp)
