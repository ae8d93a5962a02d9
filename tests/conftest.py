"""Shared, generic fixtures: a small labelled dataset and a shard-writing helper."""

from __future__ import annotations

import os

import numpy as np
import pytest

from streamprune.writers import write_shards

CLASSES = ["ant", "bee", "cat", "dog"]


def make_samples(n: int = 40, n_classes: int = 4, seed: int = 0, prefix: str = "s") -> list:
    """``n`` samples ``(key, {"bin": bytes, "txt": bytes}, label)`` with varied sizes.

    Labels cycle through the classes in order, so an unshuffled dataset is sorted
    round-robin and every class has ``n // n_classes`` (+1) samples.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = int(rng.integers(0, 3000))
        payload = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        out.append((f"{prefix}{i:05d}", {"bin": payload, "txt": f"sample {i}".encode()}, i % n_classes))
    return out


@pytest.fixture
def sample_factory():
    """The :func:`make_samples` function, for tests that need custom sizes or seeds."""
    return make_samples


@pytest.fixture
def labelled_samples():
    """40 labelled samples over 4 classes (see :func:`make_samples`)."""
    return make_samples()


@pytest.fixture
def shard_writer():
    """A function ``(samples, out_dir, **kwargs) -> Manifest`` wrapping ``write_shards``.

    Defaults: 10 samples per shard, class names :data:`CLASSES`, no progress bar.
    """

    def write(samples, out_dir, **kwargs):
        kwargs.setdefault("samples_per_shard", 10)
        kwargs.setdefault("class_names", CLASSES)
        kwargs.setdefault("progress", False)
        return write_shards(samples, os.fspath(out_dir), **kwargs)

    return write


@pytest.fixture
def small_dataset(tmp_path, labelled_samples, shard_writer):
    """``labelled_samples`` written to ``tmp_path / "data"`` (4 shards of 10); the Manifest."""
    return shard_writer(labelled_samples, tmp_path / "data")
