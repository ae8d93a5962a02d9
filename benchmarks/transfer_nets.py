"""The two small CNNs of ``transfer_bench.py``: the surrogate and the (larger) pretraining model.

Both are plain ``nn.Sequential`` stacks of 3x3 conv + BatchNorm + ReLU blocks (stride 2 each,
28 -> 14 -> 7 -> 4 -> 2), a global average pool and a linear head, so
:func:`streamprune.models.head_module` finds the head (the last child) and
:func:`streamprune.models.features` returns the pooled vector it receives.

* :func:`surrogate_cnn`: 3 input channels (it is run through ``surrogate_transform``, which
  gives RGB), widths 16-32-64, 24k parameters, 64-d features. Used as the scoring surrogate
  entry point ``transfer_nets:surrogate_cnn`` (``benchmarks/`` must be on ``sys.path``).
* :func:`pretrain_cnn`: 1 input channel (grey), widths 16-32-64-128, 98k parameters (4x the
  surrogate, one stage deeper), 128-d features.

Sized so that one CPU thread trains the pretraining model at ~4,000 samples/s on 28x28
inputs (measured on the 2-core benchmark machine), which is what lets 16 pretraining configs
x 3 seeds fit the benchmark's 30-minute budget.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["conv_net", "surrogate_cnn", "pretrain_cnn", "SURROGATE_ENTRY_POINT"]

#: What ``build_surrogate`` / ``score_source(surrogate=...)`` take for :func:`surrogate_cnn`.
SURROGATE_ENTRY_POINT = "transfer_nets:surrogate_cnn"


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
    """The scoring surrogate: RGB input, widths 16-32-64 (24k parameters with 10 classes)."""
    return conv_net(num_classes, (16, 32, 64), in_channels=3)


def pretrain_cnn(num_classes: int) -> nn.Sequential:
    """The pretraining model: grey input, widths 16-32-64-128 (98k parameters with 10 classes)."""
    return conv_net(num_classes, (16, 32, 64, 128), in_channels=1)
