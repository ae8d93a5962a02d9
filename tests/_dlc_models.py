"""Tiny backbones for the DLC tests, importable as entry points ``_dlc_models:NAME``."""

import torchvision
from torch import nn


def tiny_cnn(num_classes: int) -> nn.Module:
    """Two convolutions with BatchNorm, global pooling and a linear head."""
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
