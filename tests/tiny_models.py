"""Tiny classifiers for the tests, importable as entry points ``tiny_models:NAME``.

``tests/`` is on ``sys.path`` when pytest runs (and on the Ray workers' ``PYTHONPATH`` in
``tests/test_engine.py``), so ``build_surrogate("tiny_models:tiny", C)`` finds them without any
test writing a module of its own.
"""

import torchvision
from torch import nn


def tiny(num_classes: int) -> nn.Module:
    """One 4-channel convolution, global pooling and a linear head."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def tiny_bn(num_classes: int) -> nn.Module:
    """:func:`tiny` with BatchNorm after the convolution (train and eval mode differ)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )


def tiny_pool2(num_classes: int) -> nn.Module:
    """One 6-channel convolution pooled to 2x2 (24 features), no BatchNorm.

    Without BatchNorm the model is the same function in train and eval mode whatever the
    batch, so a recording made with ``lr=0`` can be reproduced by a direct forward pass.
    """
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, num_classes))


def tiny_pool2_bn(num_classes: int) -> nn.Module:
    """:func:`tiny_pool2` with BatchNorm (train and eval mode differ)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, num_classes)
    )


def tiny_cnn(num_classes: int) -> nn.Module:
    """Two convolutions with BatchNorm, global pooling and a linear head (DLC's CNN backbone)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def tiny_vit(num_classes: int) -> nn.Module:
    """A one-layer torchvision VisionTransformer for 32x32 inputs (16 patches + class token)."""
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes
    )


def not_a_model(num_classes: int) -> str:
    """An entry point that returns no module (``build_surrogate`` must refuse it)."""
    return "nope"
