"""Fixtures shared by the reader tests.

``built`` is a dataset written by ``_dist_worker.build_dataset`` (tar shards of varied sizes,
with the expected keys, labels and shard of every sample), once per module, with the keyword
arguments the module names in ``BUILT`` (a dict; the defaults where it names none). ``nginx``
serves the module's own ``dataset`` fixture (a directory) over HTTP.
"""

from __future__ import annotations

import os

import pytest
import webdataset as wds
from _dist_worker import build_dataset
from remote_servers import NGINX, Nginx

from streamprune import Manifest


@pytest.fixture(scope="module")
def built(request, tmp_path_factory):
    """The module's ``build_dataset(**BUILT)`` under a fresh temporary directory."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    return build_dataset(tmp_path_factory.mktemp(name) / "data", **getattr(request.module, "BUILT", {}))


@pytest.fixture(scope="module")
def manifest(built):
    """The manifest of ``built``."""
    return Manifest.load(built.manifest_path)


@pytest.fixture(scope="module")
def reference(built):
    """Every sample of ``built`` as plain webdataset reads it, in archive order."""
    samples = list(wds.WebDataset(built.shard_paths, shardshuffle=False))
    for s in samples:
        s.pop("__local_path__", None)
    return samples


@pytest.fixture(scope="module")
def nginx(dataset, tmp_path_factory):
    """An nginx serving the module's ``dataset`` directory (skipped where nginx is not installed)."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    server = Nginx(dataset, str(tmp_path_factory.mktemp("nginx")))
    yield server
    server.stop()
