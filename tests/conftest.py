"""Shared fixtures: a small labelled dataset, a shard-writing helper, the tiny test model, and
the real-data Fashion-MNIST scenario (sharded and trained once per session)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import CLASSES, make_samples  # noqa: F401  (re-exported: fixtures below use them)

from streamprune.manifest import Manifest, open_manifest
from streamprune.sources import FASHION_MNIST_DIR
from streamprune.writers import write_shards


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


@pytest.fixture
def tiny_arch():
    """Entry point of the smallest test classifier (:func:`tiny_models.tiny`); files that need
    another shape override this fixture with another ``tiny_models`` entry point."""
    return "tiny_models:tiny"


@dataclass(frozen=True)
class FashionScenario:
    """What the LM demo on Fashion-MNIST left behind, shared by the real-data tests.

    Attributes:
        result: :func:`streamprune.demo.run_demo`'s return value (ratio 0.7, 150 steps).
        source: The sharded train split (60,000 samples, 5,000 per shard).
        target: The footwear images of the t10k split (3,000 samples).
        checkpoint: The resnet18 surrogate the demo trained (input 32, 150 Adam steps).
        scores: The LM scores file of the demo's scoring pass.
    """

    result: dict
    source: Manifest
    target: Manifest
    checkpoint: Path
    scores: Path


@pytest.fixture(scope="session")
def fashion(tmp_path_factory):
    """The LM demo run once on Fashion-MNIST; its shards, surrogate and scores are reused.

    Sharding all 60,000 images and training a resnet18 take most of a real-data test's
    time, so the demo test, the LM test and the FM test share one run instead of each
    sharding and training its own (the demo trains exactly as ``train_surrogate`` with
    ``max_steps=150, input_size=32`` would).
    """
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip(f"{FASHION_MNIST_DIR} not installed")
    from streamprune.demo import run_demo  # deferred: only the slow real-data tests need torch's models

    out = tmp_path_factory.mktemp("fashion")
    result = run_demo(str(out), ratio=0.7, samples_per_shard=5000, train_steps=150, progress=False)
    return FashionScenario(
        result=result, source=open_manifest(result["manifest"]), target=open_manifest(out / "target"),
        checkpoint=out / "surrogate.pt", scores=out / "lm" / "scores.json",
    )
