"""Surrogate models: construction, evaluation transform, features and checkpoints.

Batched inference over a manifest lives in :mod:`streamprune.infer`.

A *surrogate* is a small classifier used only to compute scores (see ``docs/methods.md``).
It is named either by a torchvision architecture (``resnet18``, ``resnet50``,
``mobilenet_v3_small``, anything :func:`torchvision.models.get_model` knows; always built with
``weights=None``, random initialisation) or by a Python entry point ``"package.module:function"``
that is called as ``function(num_classes=C)`` and returns an ``nn.Module``.

Checkpoints written by :func:`save_checkpoint` (what ``streamprune train-surrogate`` writes) are
``torch.save`` dicts::

    {"format": "streamprune-surrogate", "version": 1, "arch": "resnet18", "num_classes": 10,
     "input_size": 32, "state_dict": {...}, "classes": [...], "epochs": 1, "steps": 300, ...}

:func:`build_surrogate` also accepts a bare state dict (or a dict with ``"state_dict"`` /
``"model"``) written by other code.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .atomic import atomic_open, file_sha256
from .errors import ArgumentError, StreamPruneError

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_INPUT_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_surrogate",
    "checkpoint_info",
    "cpu_threads_beside_workers",
    "features",
    "features_and_logits",
    "head_module",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "surrogate_transform",
]

log = logging.getLogger(__name__)

#: Per-channel normalisation applied by :func:`surrogate_transform` (the ImageNet statistics
#: torchvision models are conventionally trained with), RGB order, on pixels scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Default side length of the square network input: small, so CPU scoring stays fast.
DEFAULT_INPUT_SIZE = 32
CHECKPOINT_FORMAT = "streamprune-surrogate"
CHECKPOINT_VERSION = 1
_HEAD_NAMES = ("fc", "classifier", "head", "heads")


def _load_entry_point(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ArgumentError(f"surrogate {spec!r}: an entry point must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArgumentError(f"surrogate {spec!r}: cannot import module {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ArgumentError(f"surrogate {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        # the user named the wrong thing: a bad value of the spec string, not a type error in our code
        raise ArgumentError(f"surrogate {spec!r}: {attr!r} is not callable")  # noqa: TRY004
    return obj


def build_surrogate(arch: str, num_classes: int, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Build a surrogate classifier, randomly initialised or loaded from a checkpoint.

    Args:
        arch: A torchvision architecture name (``resnet18``, ``resnet50``,
            ``mobilenet_v3_small``, ...; built with ``weights=None``) or an entry point
            ``"package.module:function"`` called as ``function(num_classes=num_classes)``.
        num_classes: Number of output classes.
        checkpoint: Optional checkpoint file: one written by :func:`save_checkpoint`, or a
            plain state dict (also accepted under a ``"state_dict"`` or ``"model"`` key).

    Returns:
        The model, in evaluation mode, on the CPU.

    Raises:
        ValueError: Unknown architecture, bad entry point, or ``num_classes < 1``.
        StreamPruneError: The checkpoint is unreadable or does not fit the model (the
            message names the file).
    """
    if num_classes < 1:
        raise ArgumentError(f"num_classes={num_classes}: must be at least 1")
    if ":" in arch:
        model = _load_entry_point(arch)(num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"surrogate {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        import torchvision  # deferred: costs ~1 s to import, and entry-point surrogates never need it

        try:
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        except ValueError:
            known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:12])
            raise ArgumentError(
                f"surrogate {arch!r}: not a torchvision architecture (e.g. {known}, ...) "
                "nor an entry point 'package.module:function'"
            ) from None
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        path = os.fspath(checkpoint)
        if ckpt.get("format") == CHECKPOINT_FORMAT and (ckpt.get("arch") != arch or int(ckpt.get("num_classes", -1)) != num_classes):
            raise StreamPruneError(
                f"{path}: checkpoint is for arch {ckpt.get('arch')!r} with {ckpt.get('num_classes')} classes, "
                f"not {arch!r} with {num_classes}"
            )
        state = ckpt.get("state_dict", ckpt.get("model", ckpt))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise StreamPruneError(f"{path}: state dict does not fit surrogate {arch!r} ({first})") from None
    return model.eval()


class _ToRGB:
    """Convert a PIL image of any mode to RGB (grey images are replicated over 3 channels)."""

    def __call__(self, image):
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def surrogate_transform(
    input_size: int = DEFAULT_INPUT_SIZE,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Callable[[Any], torch.Tensor]:
    """The deterministic evaluation transform used to train and run surrogates.

    Steps, for a PIL image of any size and mode (28x28 grey to 224x224 RGB and beyond):

    1. convert to RGB (a grey ``L`` image is copied to all three channels; palette, ``LA`` and
       ``RGBA`` images are converted by PIL, alpha dropped);
    2. resize the shorter side to ``input_size`` (bilinear, antialiased), then centre-crop to
       ``input_size x input_size`` (a square image is simply resized);
    3. convert to a float tensor ``[3, input_size, input_size]`` with values in ``[0, 1]``;
    4. normalise each channel with fixed ``mean`` and ``std`` (default: the ImageNet statistics
       :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`), whatever the dataset.

    No augmentation: the same image always gives the same tensor. The result is picklable,
    so it works in DataLoader worker processes.

    Args:
        input_size: Side of the square network input (default 32, fast on a CPU).
        mean: Per-channel mean subtracted (RGB).
        std: Per-channel standard deviation divided by (RGB).

    Returns:
        A callable ``PIL.Image -> torch.Tensor``.

    Raises:
        ValueError: ``input_size`` is smaller than 8.
    """
    # deferred: torchvision costs ~1 s to import; checkpoint helpers never need it
    from torchvision import transforms

    if int(input_size) < 8:
        raise ArgumentError(f"input_size={input_size}: must be at least 8 pixels")
    size = int(input_size)
    return transforms.Compose(
        [
            _ToRGB(),
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head whose input is the penultimate (pooled) feature vector.

    Looks for a child named ``fc`` (ResNets), ``classifier`` (MobileNet, EfficientNet, ...),
    ``head`` or ``heads`` (ViT); for an ``nn.Sequential`` model, its last child.

    Args:
        model: The classifier.

    Returns:
        The head module.

    Raises:
        ValueError: No head can be identified.
    """
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    if isinstance(model, nn.Sequential) and len(model):
        return model[-1]
    raise ArgumentError(
        f"{type(model).__name__}: cannot find the classifier head; give the model an 'fc' or 'classifier' "
        "attribute, or make it an nn.Sequential whose last module is the head"
    )


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and logits of one forward pass.

    A forward pre-hook on :func:`head_module` captures what the head receives, so the model
    runs once whatever its architecture. A feature map (``[B, C, H, W]``) is pooled globally
    and tokens (``[B, N, D]``) are averaged, giving the vector the head would see after its
    own pooling.

    Args:
        model: The classifier.
        x: Input batch ``[B, 3, H, W]``.

    Returns:
        ``([B, D] features, [B, C] logits)``.

    Raises:
        ValueError: No head can be identified, or the head is not called in ``forward``.
    """
    captured: list[torch.Tensor] = []

    def hook(_module, inputs):
        captured.append(inputs[0])

    handle = head_module(model).register_forward_pre_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise ArgumentError(f"{type(model).__name__}: the classifier head was not called in forward()")
    feats = captured[-1]
    if feats.ndim == 4:
        feats = feats.mean(dim=(2, 3))
    elif feats.ndim == 3:
        feats = feats.mean(dim=1)
    return feats.flatten(1), logits


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features: the global-average-pooled vector the classifier head receives.

    For a ResNet this is the 512-d (resnet18) or 2048-d (resnet50) ``avgpool`` output; for
    ``mobilenet_v3_small`` the 576-d pooled ``features`` output (the input of
    ``classifier``). Works for any model :func:`head_module` understands; call it under
    ``torch.no_grad()`` and in eval mode for scoring.

    Args:
        model: The classifier.
        x: Input batch ``[B, 3, H, W]``.

    Returns:
        ``[B, D]`` features.
    """
    return features_and_logits(model, x)[0]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    num_classes: int,
    input_size: int = DEFAULT_INPUT_SIZE,
    **meta: Any,
) -> str:
    """Write a surrogate checkpoint atomically (``torch.save`` to a temp name, then rename).

    Args:
        path: Destination file.
        model: The trained model.
        arch: Architecture name or entry point (what :func:`build_surrogate` takes).
        num_classes: Number of output classes.
        input_size: Input side the model was trained at.
        **meta: Further JSON-like fields (epochs, steps, classes, manifest_fingerprint, ...).

    Returns:
        The path written.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "num_classes": int(num_classes),
        "input_size": int(input_size),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        **meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file (tensors on the CPU; no arbitrary code is unpickled).

    Args:
        path: Checkpoint file.

    Returns:
        The stored dict (a bare state dict is returned as it is).

    Raises:
        StreamPruneError: Missing or unreadable file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StreamPruneError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many types for a bad file)
        raise StreamPruneError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise StreamPruneError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict / state dict")
    if obj.get("format") == CHECKPOINT_FORMAT and obj.get("version") != CHECKPOINT_VERSION:
        raise StreamPruneError(f"{path}: surrogate checkpoint version {obj.get('version')} is not supported")
    return obj


def _json_like(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_json_like(v) for v in value)
    return isinstance(value, (str, int, float, bool, type(None)))


def checkpoint_info(path: str | os.PathLike | None) -> dict:
    """Provenance of a checkpoint: path, SHA-256 and its metadata (without the weights).

    Args:
        path: Checkpoint file, or ``None`` (an untrained surrogate).

    Returns:
        ``{"checkpoint": abs path | None, "checkpoint_sha256": hex | None, ...metadata}``.
    """
    if path is None:
        return {"checkpoint": None, "checkpoint_sha256": None}
    ckpt = load_checkpoint(path)
    meta = {k: v for k, v in ckpt.items() if k != "state_dict" and _json_like(v)}
    meta.pop("format", None)
    meta.pop("version", None)
    return {"checkpoint": os.path.abspath(os.fspath(path)), "checkpoint_sha256": file_sha256(path), **meta}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Pick the torch device: ``None``/``"auto"`` means CUDA when available, else the CPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or ``None``.

    Returns:
        The device.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device={device!r}: CUDA is not available on this machine")
    return dev


@contextlib.contextmanager
def cpu_threads_beside_workers(workers: int, device: torch.device) -> Iterator[None]:
    """Use at most ``cores - workers`` torch threads on the CPU while DataLoader workers run.

    Decode workers and torch's OpenMP threads otherwise compete for the same cores, and
    OpenMP threads that wait on a preempted sibling slow training down several times.

    Args:
        workers: DataLoader worker processes that will run beside the model.
        device: The model's device; only ``cpu`` changes anything.

    Yields:
        Nothing; the previous thread count is restored on exit.
    """
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = max(1, cores - workers)
    change = device.type == "cpu" and workers > 0 and wanted < before
    if change:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)
