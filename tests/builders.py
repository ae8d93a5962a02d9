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
