"""Builders shared by the tests in every folder (importable as ``builders``: ``tests/`` is on
``sys.path`` because the rootdir ``conftest.py`` is imported in pytest's default prepend mode).

Plain functions and constants live here rather than in a ``conftest.py``: each folder has its own
``conftest.py``, so ``from conftest import ...`` would be ambiguous.
"""

from __future__ import annotations

import os

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
"""``tests/``: where the helper scripts that tests run as subprocesses live."""
ROOT = os.path.dirname(TESTS_DIR)
"""The repository root."""

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


def blob_samples(n: int, size_range: tuple[int, int], n_classes: int, seed: int = 0) -> list:
    """``n`` samples ``(key, {"bin": bytes}, label)`` with ``bin`` sizes drawn from ``size_range``.

    The remote readers' datasets: payloads big enough that gaps, coalescing and byte counts
    mean something. Labels cycle through ``n_classes``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = int(rng.integers(*size_range))
        out.append((f"s{i:05d}", {"bin": rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()}, i % n_classes))
    return out


def grey_image_npz(path, n: int, n_classes: int, side: int, seed: int = 0):
    """Random ``side x side`` grey images, labels cycling through ``n_classes``, saved to ``path``
    as an npz source (``images``, ``labels``); returns ``(images, labels)``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    np.savez(path, images=images, labels=labels)
    return images, labels


def write_grey_images(directory, n: int, n_classes: int, side: int, samples_per_shard: int, name: str = "source"):
    """:func:`grey_image_npz` written as PNG tar shards under ``directory / name``: the manifest,
    the images and the labels."""
    from streamprune.writers import write_shards  # deferred: the builders are imported by every test module

    npz = os.path.join(os.fspath(directory), f"{name}.npz")
    images, labels = grey_image_npz(npz, n, n_classes, side)
    manifest = write_shards(npz, os.path.join(os.fspath(directory), name), samples_per_shard=samples_per_shard,
                            image_format="png", progress=False)
    return manifest, images, labels


def brightness_npz(path, n=60, classes=3, size=12, seed=0):
    """Images whose mean brightness depends on the class (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = (labels * (200 // max(classes - 1, 1)) + 20)[:, None, None]
    images = np.clip(base + rng.integers(-10, 10, size=(n, size, size)), 0, 255).astype(np.uint8)
    np.savez(path, images=images, labels=labels)
    return str(path)


def tiny_shard_index(name: str, keys: list[str], labels: list[int]):
    """A ShardIndex of 1 KiB samples (one 10-byte ``bin`` member each) with these keys and labels."""
    from streamprune.shardindex import ShardIndex  # deferred: the builders are imported by every test module

    n = len(keys)
    start = np.arange(n, dtype=np.int64) * 1024
    return ShardIndex(
        shard=name, shard_bytes=n * 1024 + 1024, keys=keys, labels=np.asarray(labels, dtype=np.int64), start=start,
        end=start + 1024, members=[[("bin", int(s) + 512, 10)] for s in start],
    )


def saved_summaries(tmp_path, shards: list[list[str]], labels=None) -> tuple[list, list]:
    """One :func:`tiny_shard_index` per key list saved under ``tmp_path``: their ShardSummary list and the indexes."""
    from streamprune.indexfile import save_index  # deferred: the builders are imported by every test module
    from streamprune.shardsummary import summarize_index

    summaries, indexes = [], []
    for k, keys in enumerate(shards):
        index = tiny_shard_index(f"s{k}.tar", keys, labels[k] if labels else [k % 3] * len(keys))
        path = os.path.join(tmp_path, f"s{k}.tar.index.json")
        save_index(index, path)
        summaries.append(summarize_index(index, path, f"s{k}.tar", f"s{k}.tar.index.json"))
        indexes.append(index)
    return summaries, indexes


def uid_for(i: int) -> str:
    """A deterministic 128-bit uid (32 hex digits) for sample ``i``, as DataComp writes them."""
    i = int(i)
    return f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}{(i + 7) * 1000003:016x}"
