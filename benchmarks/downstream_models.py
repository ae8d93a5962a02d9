"""The backbone of ``downstream_bench.py``: a small CNN for 28x28 inputs.

:func:`small_cnn` is a plain ``nn.Sequential``: four 3x3 convolution + BatchNorm + ReLU blocks,
each with stride 2 (28 -> 14 -> 7 -> 4 -> 2 pixels), widths 16-32-64-128, a global average
pool and a linear head (99k parameters with 10 classes, 128-d features). The head is the last
child, so :func:`streamprune.models.head_module` finds it, DLC's embedder reads the pooled
128-d vector it receives, and DLC masks the four convolution weights (97k weights).

Stride 2 in every block keeps the CPU cost low: on the 2-core benchmark machine under load,
one torch thread trains it at about 2,800 samples/s and runs eval forwards at about 9,000
samples/s (batch 64 / 256, 3x28x28 inputs).

It is used through the entry point :data:`ENTRY_POINT` (``downstream_models:small_cnn``),
which needs ``benchmarks/`` on ``sys.path`` (``downstream_bench.py`` puts it there).
"""

from __future__ import annotations

from torch import nn

__all__ = ["small_cnn", "WIDTHS", "ENTRY_POINT"]

#: Channels of the four stride-2 blocks.
WIDTHS = (16, 32, 64, 128)
#: What ``build_surrogate`` / ``score_source(surrogate=...)`` take for :func:`small_cnn`.
ENTRY_POINT = "downstream_models:small_cnn"


def small_cnn(num_classes: int) -> nn.Sequential:
    """Four stride-2 conv-BN-ReLU blocks (RGB input), global average pool, linear head.

    Args:
        num_classes: Outputs of the head.

    Returns:
        The model; its last child is the ``nn.Linear`` head.
    """
    layers: list[nn.Module] = []
    c = 3  # surrogate_transform gives RGB (grey images are copied to 3 channels)
    for w in WIDTHS:
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
