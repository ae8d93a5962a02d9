"""The small CNNs of the transfer and downstream suites (shared, so neither suite imports the other).

All are plain ``nn.Sequential`` stacks of 3x3 conv + BatchNorm + ReLU blocks (stride 2 each,
28 -> 14 -> 7 -> 4 -> 2), a global average pool and a linear head, so
:func:`streamprune.models.head_module` finds the head (the last child) and
:func:`streamprune.models.features` returns the pooled vector it receives.

* :func:`surrogate_cnn` (transfer): 3 input channels (it is run through ``surrogate_transform``,
  which gives RGB), widths 16-32-64, 24k parameters, 64-d features. The scoring surrogate, entry
  point :data:`SURROGATE_ENTRY_POINT`.
* :func:`pretrain_cnn` (transfer): 1 input channel (grey), widths 16-32-64-128, 98k parameters
  (4x the surrogate, one stage deeper), 128-d features. Sized so that one CPU thread trains it
  at ~4,000 samples/s on 28x28 inputs (measured on the 2-core benchmark machine), which is what
  lets 16 pretraining configs x 3 seeds fit the transfer benchmark's 30-minute budget.
* :func:`small_cnn` (downstream): RGB input, widths 16-32-64-128 (:data:`WIDTHS`), 99k
  parameters with 10 classes, 128-d features; DLC's embedder reads the pooled vector and DLC
  masks the four convolution weights (97k weights). On the 2-core benchmark machine under load,
  one torch thread trains it at about 2,800 samples/s and runs eval forwards at about 9,000
  samples/s (batch 64 / 256, 3x28x28 inputs). Entry point :data:`ENTRY_POINT`.

The entry points name ``benchmarks.nets``, so the ``benchmarks`` package must be importable
(run from a source checkout: ``python -m benchmarks ...``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ENTRY_POINT", "SURROGATE_ENTRY_POINT", "WIDTHS", "conv_net", "pretrain_cnn", "small_cnn", "surrogate_cnn"]

#: What ``build_surrogate`` / ``score_source(surrogate=...)`` take for :func:`surrogate_cnn`.
SURROGATE_ENTRY_POINT = "benchmarks.nets:surrogate_cnn"
#: Channels of :func:`small_cnn`'s four stride-2 blocks.
WIDTHS = (16, 32, 64, 128)
#: What ``build_surrogate`` / ``score_source(surrogate=...)`` take for :func:`small_cnn`.
ENTRY_POINT = "benchmarks.nets:small_cnn"


def conv_net(num_classes: int, widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """Stride-2 conv-BN-ReLU blocks, global average pool, flatten, linear head.

    Args:
        num_classes: Outputs of the head.
        widths: Channels of each block (each halves the spatial size).
        in_channels: Input channels (1 grey, 3 RGB).

    Returns:
        The model; its last child is the ``nn.Linear`` head.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def surrogate_cnn(num_classes: int) -> nn.Sequential:
    """The transfer suite's scoring surrogate: RGB input, widths 16-32-64 (24k parameters with 10 classes)."""
    return conv_net(num_classes, (16, 32, 64), in_channels=3)


def pretrain_cnn(num_classes: int) -> nn.Sequential:
    """The transfer suite's pretraining model: grey input, widths 16-32-64-128 (98k parameters with 10 classes)."""
    return conv_net(num_classes, (16, 32, 64, 128), in_channels=1)


def small_cnn(num_classes: int) -> nn.Sequential:
    """The downstream suite's backbone: RGB input (``surrogate_transform`` gives RGB), widths :data:`WIDTHS`."""
    return conv_net(num_classes, WIDTHS, in_channels=3)
