"""The scoring job: score a source once, save ``scores.json``, write one keep mask per ratio.

Methods compute scores only; they never write masks. :func:`score_source` saves the scores
file and derives the masks with :func:`streamprune.selection.mask_from_scores`, the same call
``streamprune mask scores`` makes, so a mask made later from the scores file is the mask the
pass wrote.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from typing import Any, Iterable, Sequence

from ..engine import Engine, make_engine
from ..errors import ArgumentError
from ..manifest import MANIFEST_NAME, Manifest
from ..ratios import check_ratio
from ..selection import get_selector, mask_from_scores
from ..writers import write_shards
from .registry import default_selector, get_score, method_options
from .request import ScoreRequest

__all__ = ["SCORES_NAME", "resolve_target", "score_source"]

log = logging.getLogger(__name__)

#: File name of the scores a scoring pass writes in its output directory.
SCORES_NAME = "scores.json"


def _is_manifest_path(path: str) -> bool:
    return (os.path.isfile(path) and path.endswith(".json")) or os.path.isfile(os.path.join(path, MANIFEST_NAME))


def resolve_target(
    target: str | os.PathLike | Manifest | Iterable,
    work_dir: str | os.PathLike,
    split: str = "train",
    workers: int = 1,
    progress: bool = True,
    engine: str | Engine | None = None,
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
        engine: Where the shards are written (see :func:`~streamprune.writers.write_shards`).

    Returns:
        The target manifest.
    """
    if isinstance(target, Manifest):
        return target
    if isinstance(target, (str, os.PathLike)) and _is_manifest_path(os.fspath(target)):
        return Manifest.load(target)
    out = os.path.join(os.fspath(work_dir), "target")
    log.info("sharding target %s (split %s) into %s", target if isinstance(target, (str, os.PathLike)) else "<samples>", split, out)
    # OUT/target is this pass's own: a rerun replaces the target it sharded last time
    return write_shards(target, out, split=split, workers=workers, progress=progress, engine=engine, overwrite=True)


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """``value``, or ``alias_value`` when only the alias was given; both is an error unless equal."""
    if value is not None and alias_value is not None and value != alias_value:
        raise ArgumentError(f"{name}={value!r} and {alias}={alias_value!r} are two names of one option: give one")
    return alias_value if value is None else value


def _keyword_names(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options given under their command-line names (``dlc_mask``) renamed to the method's keywords (``mask``)."""
    out = dict(options)
    for option in method_options(method):
        cli_name = option.cli_flag[2:].replace("-", "_")
        if cli_name != option.name and cli_name in out:
            out[option.name] = _one_of(option.name, out.get(option.name), cli_name, out.pop(cli_name))
    return out


def score_source(
    source: str | os.PathLike | Manifest,
    method: str,
    ratios: Sequence[float],
    out_dir: str | os.PathLike,
    *,
    target: str | os.PathLike | Manifest | Iterable | None = None,
    target_split: str = "train",
    model: str | None = None,
    surrogate: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    input_size: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
    device: str | None = "cpu",
    seed: int = 0,
    progress: bool = True,
    selector: str | None = None,
    selector_options: dict[str, Any] | None = None,
    engine: str | Engine | None = None,
    ray_address: str | None = None,
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
        model: The model a method scores with (the CLI's ``--model``): the surrogate's
            architecture or entry point for LM/FM/..., DLC's backbone.
        surrogate: The older name of ``model``, still accepted.
        checkpoint: The model's checkpoint (``None``: untrained, seeded).
        input_size: Network input side (default: the checkpoint's, else 32).
        batch_size: Samples per forward pass.
        workers: DataLoader workers (and shard writers for the target).
        device: Torch device.
        seed: Seed.
        progress: Show progress bars.
        selector: Registered selector turning the scores into masks (:mod:`streamprune.selection`);
            ``None``: the method's default (``top``; ``flexrand`` for ``dlc``).
        selector_options: Options for the selector (e.g. ``{"gamma": 0.5}``).
        engine: Where the per-shard passes run: the embedding pass of the feature-based
            methods (FM, Moderate, SSP) and sharding the target. ``None``: in this process,
            as before; ``"local"`` / ``"ray"`` / an :class:`~streamprune.engine.Engine`: one
            task per shard (:mod:`streamprune.engine`). The scores and masks are computed
            here from the per-shard outputs: selection ranks all samples at once.
        ray_address: Ray cluster address for ``engine="ray"`` (``None``: Ray's default).
        **options: Method options (``soft_vote=True`` for LM), under their keyword names or their
            command-line names (``dlc_mask="random"`` as ``--dlc-mask random``, same as ``mask=``).

    Returns:
        ``{"scores": path, "masks": {ratio: path}, "kept": {ratio: kept item ids},
        "target": target manifest path or None, "seconds": {"target", "score", "masks"}}``.

    Raises:
        ValueError: Unknown method or option, an option given under both its names, or a bad ratio.
    """
    fn = get_score(method)
    surrogate = _one_of("model", model, "surrogate", surrogate)
    options = _keyword_names(method, options)
    selector = selector or default_selector(method)
    get_selector(selector)  # an unknown selector fails before the (long) scoring pass
    selector_options = dict(selector_options or {})
    try:
        inspect.signature(fn).bind(None, **options)
    except TypeError:
        raise ArgumentError(f"method {method!r} does not take option(s) {sorted(options)}") from None
    ratios = [check_ratio(r, "ratio") for r in ratios]
    if not ratios:
        raise ArgumentError("give at least one ratio")
    runner = None if engine is None and ray_address is None else make_engine(engine or "ray", address=ray_address)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    src = source if isinstance(source, Manifest) else Manifest.load(source)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    tgt = None
    description = None
    if target is not None:
        description = os.path.abspath(os.fspath(target)) if isinstance(target, (str, os.PathLike)) else None
        tgt = resolve_target(target, out_dir, split=target_split, workers=max(1, workers), progress=progress, engine=runner)
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
        engine=runner,
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
            raise ArgumentError(f"{exc}; the scores are saved in {scores_path} (streamprune mask scores)") from None
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
