"""Distorting-based learning complexity (DLC): a training-free hardness score per sample.

Jiang et al., ICLR 2025 (``docs/methods.md`` section 3). The dataset scored is the downstream
(finetuning) training set being pruned; the backbone is a pretrained model whose head and
classes generally differ from the dataset's (only its pooled penultimate features are used).

1. Embed every sample with the unmasked backbone (evaluation mode, deterministic evaluation
   transform); the class prototypes ``mu_c`` are the per-class means, kept fixed.
2. For levels ``k = 0 .. K-1`` (level 0 is the unmasked model), mask more of the backbone's
   weights, re-embed, and compute the prototype classifier's loss
   ``loss_ik = CE(logits_i, y_i)`` with ``logits_ic = 1 / max(||z_i^(k) - mu_c||_2, eps)``.
3. ``DLC_i = mean_k loss_ik``. Higher = harder (``harder = "higher"``).

Masking. The prunable weights are all convolution weights of a CNN; for a vision transformer
(torchvision ``VisionTransformer`` / ``SwinTransformer``, or ``layers="linear"``) the weights of
every ``nn.Linear`` except those in the classifier head, plus the packed q/k/v projection of
``nn.MultiheadAttention`` (a linear layer stored as a bare parameter in torchvision; timm's
ViTs, which the reference uses, have it as an ``nn.Linear``). Masks are global over all
prunable weights and nested (a weight once removed stays removed):

* ``schedule="geometric"`` (default, code-exact to the reference): level ``k`` is the model
  after ``k`` rounds of ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured,
  amount=step)``; each round removes ``round(step * remaining)`` (Python ``round``, as torch
  does) of the still-unmasked weights, so about ``(1 - step)^k`` remain.
* ``schedule="linear"``: level ``k`` has sparsity ``k * step`` (``round(k * step * n)`` weights
  removed: 0, 2%, 4%, ..., 98% for K = 50), as the paper describes.
* ``mask="l1"`` removes the smallest magnitudes first (ties: lower flat index first; torch's
  ``topk`` leaves ties unspecified); ``mask="random"`` removes them in a random order drawn
  from ``seed`` (the same nesting and counts).

How it is computed (one fast pass, not K): since each mask depends only on the weight
magnitudes (or a seeded order), the level at which every prunable weight is removed is
computed once (a sort of all prunable weights). Then:

* pass 1 streams over the shards with the unmasked model and accumulates per-class feature
  sums (memory: classes x feature dim) -> prototypes;
* pass 2 streams over the shards once more, and for each batch runs the K forwards, swapping
  the weights in place (``w = w_orig`` with the weights removed at or before level ``k``
  zeroed), accumulating each sample's loss.

So each sample is decoded twice and run through the backbone ``K + 1`` times (level 0 twice:
once for the prototypes, once for its loss; caching the level-0 features instead would cost
``N x D`` memory). Memory is bounded by one batch plus two copies of the prunable weights and
an ``int16`` removal level per weight; the original weights are restored at the end. BatchNorm
uses its running statistics (eval mode), so a sample's score does not depend on its batch,
and results are the same with any number of DataLoader workers (up to float rounding).

Token models: torchvision ``VisionTransformer``'s encoder output is pooled with ``pool="cls"``
(the class token, default) or ``pool="mean"`` (the mean of the patch tokens, class token
excluded) before the distance. Other models use the input of their classifier head
(:func:`streamprune.models.head_module`): feature maps are averaged over space, token
tensors ``[B, N, D]`` pooled by ``pool`` (``cls``: token 0, ``mean``: all tokens).

Scores file: ``method="dlc"``, sample level, ``harder="higher"``, ``higher_is="keep"`` (the
default ``top`` selector therefore keeps the hardest samples over the whole set, i.e. top-k
hard); DLC is meant to be used with ``--selector flexrand`` (:mod:`streamprune.selection`).
``extra["loss_unmasked"]`` holds the level-0 loss; ``params`` records the schedule, the
sparsity and the mean loss of every level, and the wall time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import ArgumentError, StreamPruneError
from ..infer import eval_batches
from ..manifest import Manifest
from ..models import (
    CHECKPOINT_FORMAT,
    DEFAULT_INPUT_SIZE,
    build_surrogate,
    checkpoint_info,
    cpu_threads_beside_workers,
    head_module,
    load_checkpoint,
    resolve_device,
)
from ..scores import ScoreFile
from .registry import MethodOption, register_score
from .request import ScoreRequest

__all__ = [
    "LAYERS",
    "MASKS",
    "POOLS",
    "SCHEDULES",
    "Embedder",
    "backbone_num_classes",
    "dlc",
    "dlc_scores",
    "level_counts",
    "masked_levels",
    "prunable_weights",
    "removal_levels",
]

log = logging.getLogger(__name__)

SCHEDULES = ("geometric", "linear")
MASKS = ("l1", "random")
POOLS = ("cls", "mean")
LAYERS = ("auto", "conv", "linear")


def level_counts(total: int, levels: int, schedule: str = "geometric", step: float = 0.02) -> list[int]:
    """How many prunable weights are masked at each level ``0 .. levels-1``.

    Args:
        total: Number of prunable weights.
        levels: K, the number of levels (level 0 is unmasked).
        schedule: ``geometric`` (``step`` of the remaining weights per level, as iterative
            ``global_unstructured(amount=step)``) or ``linear`` (sparsity ``k * step``).
        step: The per-level fraction.

    Returns:
        Non-decreasing counts, starting with 0.

    Raises:
        ValueError: Bad ``levels``, ``schedule`` or ``step``.
    """
    if int(levels) != levels or int(levels) < 1:
        raise ArgumentError(f"dlc: levels={levels} must be a whole number >= 1")
    levels = int(levels)
    if schedule not in SCHEDULES:
        raise ArgumentError(f"dlc: schedule={schedule!r} must be one of {', '.join(SCHEDULES)}")
    step = float(step)
    if not 0.0 < step < 1.0:
        raise ArgumentError(f"dlc: step={step} must be in (0, 1) (the fraction masked per level)")
    counts = [0]
    if schedule == "geometric":
        remaining = int(total)
        for _ in range(levels - 1):
            remaining -= round(step * remaining)  # torch's _compute_nparams_toprune
            counts.append(int(total) - remaining)
    else:
        if (levels - 1) * step > 1.0 + 1e-9:
            raise ArgumentError(f"dlc: linear schedule with levels={levels} and step={step} would exceed 100% sparsity")
        counts += [min(int(total), round(k * step * total)) for k in range(1, levels)]
    return counts


def removal_levels(
    weights: Sequence[torch.Tensor], counts: Sequence[int], mask: str = "l1", seed: int = 0
) -> list[torch.Tensor]:
    """The first level at which each weight is masked (``len(counts)``: never).

    Args:
        weights: The prunable weight tensors (one global ranking over all of them).
        counts: Weights masked at each level (:func:`level_counts`).
        mask: ``l1`` (smallest magnitude first) or ``random`` (seeded random order).
        seed: Seed of the random order.

    Returns:
        ``int16`` tensors shaped like ``weights``, on their devices.

    Raises:
        ValueError: Unknown ``mask``, or more levels than ``int16`` holds.
    """
    if mask not in MASKS:
        raise ArgumentError(f"dlc: mask={mask!r} must be one of {', '.join(MASKS)}")
    if len(counts) >= 2**15:
        raise ArgumentError(f"dlc: {len(counts)} levels is too many (at most {2**15 - 1})")
    flat = torch.cat([w.detach().reshape(-1).float().cpu() for w in weights])
    total = flat.numel()
    if mask == "l1":
        order = torch.argsort(flat.abs(), stable=True)
    else:
        order = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))
    del flat
    # rank r is masked from the first level k with counts[k] > r
    cumulative = torch.as_tensor(list(counts[1:]), dtype=torch.int64)
    level_of_rank = torch.searchsorted(cumulative, torch.arange(total, dtype=torch.int64), right=True) + 1
    level = torch.empty(total, dtype=torch.int16)
    level[order] = level_of_rank.to(torch.int16)
    out, start = [], 0
    for w in weights:
        out.append(level[start : start + w.numel()].view(w.shape).to(w.device))
        start += w.numel()
    return out


def _is_transformer(model: nn.Module) -> bool:
    # deferred: torchvision costs ~1 s to import and only transformer checks need it here
    from torchvision.models import SwinTransformer, VisionTransformer

    return isinstance(model, (VisionTransformer, SwinTransformer))


def prunable_weights(model: nn.Module, layers: str = "auto") -> tuple[list[tuple[str, nn.Parameter]], str]:
    """The weights DLC masks, by name, and which kind they are.

    Args:
        model: The backbone.
        layers: ``conv`` (all convolution weights), ``linear`` (all ``nn.Linear`` weights and
            ``nn.MultiheadAttention`` q/k/v projections outside the classifier head), or
            ``auto`` (``linear`` for torchvision ViT/Swin, else ``conv`` if the model has any
            convolution, else ``linear``).

    Returns:
        ``([(name, parameter), ...], kind)`` with kind ``conv`` or ``linear``.

    Raises:
        ValueError: Unknown ``layers``, or no prunable weight.
    """
    if layers not in LAYERS:
        raise ArgumentError(f"dlc: layers={layers!r} must be one of {', '.join(LAYERS)}")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if layers == "auto":
        layers = "linear" if _is_transformer(model) or not convs else "conv"
    chosen: list[tuple[str, nn.Parameter]] = []
    if layers == "conv":
        chosen = [(f"{n}.weight" if n else "weight", m.weight) for n, m in convs]
    else:
        try:
            head_ids = {id(p) for p in head_module(model).parameters()}
        except ValueError:
            head_ids = set()
        for n, m in model.named_modules():
            prefix = f"{n}." if n else ""
            if isinstance(m, nn.Linear):
                chosen.append((prefix + "weight", m.weight))
            elif isinstance(m, nn.MultiheadAttention):
                for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    p = getattr(m, attr, None)
                    if isinstance(p, nn.Parameter):
                        chosen.append((prefix + attr, p))
        chosen = [(n, p) for n, p in chosen if id(p) not in head_ids]
    seen: set[int] = set()
    unique = []
    for n, p in chosen:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append((n, p))
    if not unique:
        raise ArgumentError(f"dlc: {type(model).__name__} has no {layers} weights to mask (layers={layers!r})")
    return unique, layers


class Embedder:
    """Pooled penultimate features of a backbone (see the module docstring for the pooling).

    Args:
        model: The backbone, in eval mode.
        pool: ``cls`` or ``mean`` (token models only).
    """

    def __init__(self, model: nn.Module, pool: str = "cls") -> None:
        # deferred: torchvision costs ~1 s to import and only transformer checks need it here
        from torchvision.models import VisionTransformer

        if pool not in POOLS:
            raise ArgumentError(f"dlc: pool={pool!r} must be one of {', '.join(POOLS)}")
        self.model, self.pool = model, pool
        self.vit = isinstance(model, VisionTransformer)
        self.tokens = self.vit
        self._hooked = model.encoder if self.vit else head_module(model)

    def _pool_tokens(self, t: torch.Tensor, skip_cls: bool) -> torch.Tensor:
        if self.pool == "cls":
            return t[:, 0]
        return t[:, 1:].mean(dim=1) if skip_cls else t.mean(dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` features of the batch ``x``."""
        captured: list[torch.Tensor] = []
        if self.vit:
            handle = self._hooked.register_forward_hook(lambda _m, _i, out: captured.append(out))
        else:
            handle = self._hooked.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured:
            raise ArgumentError(f"{type(self.model).__name__}: the classifier head was not called in forward()")
        f = captured[-1]
        if self.vit:
            return self._pool_tokens(f, skip_cls=True)
        if f.ndim == 4:
            return f.mean(dim=(2, 3))
        if f.ndim == 3:
            self.tokens = True
            return self._pool_tokens(f, skip_cls=False)
        return f.flatten(1)


class masked_levels:
    """Context manager swapping a model's prunable weights to the mask of any level.

    ``with masked_levels(params, removal) as apply: apply(k)`` sets each weight to its
    original value, zeroed where its removal level is ``<= k``; the originals are restored
    on exit.

    Args:
        params: The prunable parameters.
        removal: Their removal levels (:func:`removal_levels`).
    """

    def __init__(self, params: Sequence[nn.Parameter], removal: Sequence[torch.Tensor]) -> None:
        self.params, self.removal = list(params), list(removal)
        self.originals: list[torch.Tensor] = []
        self.level = 0

    def __enter__(self) -> Callable[[int], None]:
        self.originals = [p.detach().clone() for p in self.params]
        self.level = 0
        return self.apply

    def apply(self, level: int) -> None:
        """Mask the weights as at ``level`` (0: unmasked)."""
        with torch.no_grad():
            # masks are nested: going up only zeroes more weights, going down needs the originals
            restore = level < self.level
            for p, orig, rem in zip(self.params, self.originals, self.removal):
                if restore:
                    p.copy_(orig)
                if level > 0:
                    p.masked_fill_(rem <= level, 0.0)
        self.level = level

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for p, orig in zip(self.params, self.originals):
                p.copy_(orig)
        self.originals = []
        self.level = 0


def dlc_scores(
    model: nn.Module,
    manifest: Any,
    *,
    levels: int = 50,
    schedule: str = "geometric",
    mask: str = "l1",
    step: float = 0.02,
    pool: str = "cls",
    layers: str = "auto",
    eps: float = 1e-8,
    input_size: int = 32,
    batch_size: int = 256,
    workers: int = 0,
    device: str | torch.device | None = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """DLC of every sample of a labelled dataset (two streaming passes, K forwards per batch).

    Args:
        model: Pretrained backbone (any head; only pooled features are used). Its prunable
            weights are changed during the run and restored afterwards.
        manifest: The (downstream training) dataset, manifest path or object.
        levels: K, masking levels including the unmasked level 0.
        schedule: ``geometric`` or ``linear`` (see the module docstring).
        mask: ``l1`` or ``random``.
        step: Fraction masked per level.
        pool: Token pooling for transformers: ``cls`` or ``mean``.
        layers: Which weights are masked: ``auto``, ``conv`` or ``linear``.
        eps: Distances are clamped to at least this before ``1 / d``.
        input_size: Side of the square network input (deterministic eval transform).
        batch_size: Samples per forward pass.
        workers: DataLoader decode workers.
        device: Torch device.
        seed: Seed of random masks.
        progress: Show progress bars.

    Returns:
        ``{"dlc": float64[N], "loss_unmasked": float64[N], "level_loss": float64[K] mean loss
        per level, "sparsity": float64[K], "prunable": int, "layers": str, "classes": int,
        "feature_dim": int, "tokens": bool, "seconds": {...}}``, rows in manifest order.

    Raises:
        StreamPruneError: Unlabelled samples, or samples that were not scored.
        ValueError: Bad options.
    """
    t_start = time.perf_counter()
    if not float(eps) > 0:
        raise ArgumentError(f"dlc: eps={eps} must be > 0")
    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    labels = np.asarray(m.labels(), dtype=np.int64)
    if m.label_ext is None or (labels < 0).any():
        raise StreamPruneError(f"{m.path}: DLC needs a label for every sample ({int((labels < 0).sum())} unlabelled)")
    present, class_index = np.unique(labels, return_inverse=True)  # prototypes for classes with samples
    n, c = len(labels), len(present)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    named, kind = prunable_weights(model, layers)
    params = [p for _, p in named]
    total = sum(p.numel() for p in params)
    counts = level_counts(total, levels, schedule, step)
    embed = Embedder(model, pool)
    t0 = time.perf_counter()
    removal = removal_levels(params, counts, mask, seed)
    seconds = {"masks": time.perf_counter() - t0}
    y_all = torch.as_tensor(class_index, dtype=torch.int64)
    batches = eval_batches(m, input_size=input_size, batch_size=batch_size, workers=workers, labels=False)

    # pass 1: prototypes from the unmasked model
    t0 = time.perf_counter()
    sums: torch.Tensor | None = None
    seen = np.zeros(n, dtype=bool)
    with torch.no_grad(), cpu_threads_beside_workers(workers, dev), tqdm(
        total=len(batches), desc="dlc: prototypes", unit="sample", disable=not progress
    ) as bar:
        for positions, x, _ in batches:
            pos = torch.from_numpy(positions)
            z = embed(x.to(dev, non_blocking=True)).double()
            if sums is None:
                sums = torch.zeros(c, z.shape[1], dtype=torch.float64, device=dev)
            sums.index_add_(0, y_all[pos].to(dev), z)
            seen[pos.numpy()] = True
            bar.update(len(pos))
    if sums is None or not seen.all():
        raise StreamPruneError(f"{m.path}: {int((~seen).sum())} of {n} samples were not read for the prototypes")
    sizes = torch.as_tensor(np.bincount(class_index, minlength=c), dtype=torch.float64, device=dev)
    prototypes = sums / sizes[:, None]
    seconds["prototypes"] = time.perf_counter() - t0

    # pass 2: every level for each batch, swapping weights in place
    t0 = time.perf_counter()
    k_levels = len(counts)
    total_loss = torch.zeros(n, dtype=torch.float64)
    loss0 = torch.zeros(n, dtype=torch.float64)
    level_sum = torch.zeros(k_levels, dtype=torch.float64)
    scored = np.zeros(n, dtype=bool)
    with torch.no_grad(), cpu_threads_beside_workers(workers, dev), masked_levels(params, removal) as apply, tqdm(
        total=len(batches), desc=f"dlc: {k_levels} levels", unit="sample", disable=not progress
    ) as bar:
        for positions, x, _ in batches:
            pos = torch.from_numpy(positions)
            x = x.to(dev, non_blocking=True)
            y = y_all[pos].to(dev)
            acc = torch.zeros(len(pos), dtype=torch.float64, device=dev)
            for k in range(k_levels):
                apply(k)
                z = embed(x).double()
                dist = torch.cdist(z, prototypes, compute_mode="donot_use_mm_for_euclid_dist")
                loss = F.cross_entropy(1.0 / dist.clamp_min(float(eps)), y, reduction="none")
                acc += loss
                level_sum[k] += loss.sum().cpu()
                if k == 0:
                    loss0[pos] = loss.cpu()
            total_loss[pos] += acc.cpu()
            scored[pos.numpy()] = True
            bar.update(len(pos))
    if not scored.all():
        raise StreamPruneError(f"{m.path}: {int((~scored).sum())} of {n} samples were not scored")
    seconds["levels"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    return {
        "dlc": (total_loss / k_levels).numpy(),
        "loss_unmasked": loss0.numpy(),
        "level_loss": (level_sum / n).numpy(),
        "sparsity": np.asarray(counts, dtype=np.float64) / total,
        "prunable": int(total),
        "prunable_tensors": len(params),
        "layers": kind,
        "classes": int(c),
        "feature_dim": int(prototypes.shape[1]),
        "tokens": bool(embed.tokens),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def backbone_num_classes(arch: str, checkpoint: str | None, fallback: int) -> int:
    """The number of classes the backbone's head has in its checkpoint.

    Args:
        arch: Architecture name or entry point.
        checkpoint: Checkpoint path, or ``None`` (an untrained backbone: ``fallback``).
        fallback: Head size of an untrained backbone.

    Returns:
        The head size: a streamprune checkpoint's ``num_classes``, else the output size of the
        head's last ``nn.Linear`` in the state dict.

    Raises:
        StreamPruneError: The state dict has no weight for the head.
    """
    if checkpoint is None:
        return max(1, int(fallback))
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("num_classes"):
        return int(ckpt["num_classes"])
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    probe = build_surrogate(arch, 1)
    head = head_module(probe)
    linears = [mod for mod in head.modules() if isinstance(mod, nn.Linear)]
    if linears:
        name = next(n for n, mod in probe.named_modules() if mod is linears[-1])
        weight = state.get(f"{name}.weight")
        if isinstance(weight, torch.Tensor) and weight.ndim == 2:
            return int(weight.shape[0])
    raise StreamPruneError(f"{checkpoint}: cannot find the classifier head's weight for {arch!r} in the state dict")


@register_score(
    "dlc",
    options=(
        MethodOption("levels", int, "masking levels K, level 0 unmasked"),
        MethodOption(
            "schedule", str, "geometric (mask 2% of the remaining weights per level) or linear (sparsity 2%, 4%, ...)",
            choices=("geometric", "linear"),
        ),
        MethodOption("mask", str, "mask by smallest magnitude or at random (seeded)", flag="dlc-mask", choices=("l1", "random")),
        MethodOption("step", float, "fraction masked per level", flag="dlc-step"),
        MethodOption("pool", str, "ViT token pooling", choices=("cls", "mean")),
    ),
    default_selector="flexrand",  # the paper's method is DLC + FlexRand, class-balanced
)
def dlc(
    request: ScoreRequest,
    levels: int = 50,
    schedule: str = "geometric",
    mask: str = "l1",
    step: float = 0.02,
    pool: str = "cls",
    layers: str = "auto",
    eps: float = 1e-8,
) -> ScoreFile:
    """DLC of the request's dataset (the downstream training set) with a pretrained backbone.

    Args:
        request: The dataset (``source``), backbone (``surrogate`` + ``checkpoint``; an
            untrained seeded one without a checkpoint) and run settings.
        levels: K masking levels (level 0 unmasked).
        schedule: ``geometric`` (code-exact default) or ``linear``.
        mask: ``l1`` or ``random`` (seeded by the request's seed).
        step: Fraction masked per level.
        pool: ViT token pooling, ``cls`` or ``mean``.
        layers: Masked weights: ``auto``, ``conv`` or ``linear``.
        eps: Distance clamp.

    Returns:
        Sample-level scores, ``harder = "higher"``, ``higher_is = "keep"``.

    Raises:
        ValueError: No backbone, or bad options.
        StreamPruneError: Unlabelled samples, or an unreadable checkpoint.
    """
    if not request.surrogate:
        raise ArgumentError("method 'dlc' needs a pretrained backbone (--surrogate ARCH_OR_ENTRYPOINT, --checkpoint)")
    src = request.source
    level_counts(1000, levels, schedule, step)  # bad options fail before any model is built
    start = time.perf_counter()
    info = checkpoint_info(request.checkpoint)
    info.pop("classes", None)  # the backbone's own classes: not the dataset's, and possibly long
    head = backbone_num_classes(request.surrogate, request.checkpoint, src.num_classes)
    input_size = int(request.input_size or info.get("input_size") or DEFAULT_INPUT_SIZE)
    torch.manual_seed(request.seed)  # an untrained backbone is the same on every run
    model = build_surrogate(request.surrogate, head, request.checkpoint)
    out = dlc_scores(
        model, src, levels=levels, schedule=schedule, mask=mask, step=step, pool=pool, layers=layers, eps=eps,
        input_size=input_size, batch_size=request.batch_size, workers=request.workers, device=request.device,
        seed=request.seed, progress=request.progress,
    )
    wall = time.perf_counter() - start
    log.info("dlc: %d samples, %d levels in %.1f s", src.num_samples, levels, wall)
    scores = out["dlc"]
    return request.score_file(
        "dlc",
        "sample",
        scores,
        higher_is="keep",
        score_name="mean prototype-classifier loss over masking levels",
        variant=f"{schedule}-{mask}",
        harder="higher",
        extra={"loss_unmasked": out["loss_unmasked"]},
        surrogate={**info, "arch": request.surrogate, "input_size": input_size, "num_classes": head},
        params={
            "levels": int(levels),
            "schedule": schedule,
            "mask": mask,
            "step": float(step),
            "pool": pool if out["tokens"] else None,
            "layers": out["layers"],
            "prunable_weights": out["prunable"],
            "prunable_tensors": out["prunable_tensors"],
            "eps": float(eps),
            "classes_scored": out["classes"],
            "feature_dim": out["feature_dim"],
            "sparsity": [round(float(s), 6) for s in out["sparsity"]],
            "level_mean_loss": [round(float(v), 6) for v in out["level_loss"]],
            "transform": "deterministic evaluation transform (streamprune.models.surrogate_transform)",
            "forwards_per_sample": int(levels) + 1,
            "batch_size": request.batch_size,
            "workers": request.workers,
            "device": str(request.device),
            "seconds": round(wall, 3),
            "seconds_detail": out["seconds"],
        },
    )
