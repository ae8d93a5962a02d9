"""Helpers for the reader tests: a small, awkward dataset builder and the DDP rank entry point.

``build_dataset`` writes tar shards of uneven sizes with :class:`TarShardWriter` and indexes
them with :func:`streamprune.index_shards`. Samples carry a random-size ``bin`` payload (some
empty, some 100-300 KB so that coalescing and run limits matter), a real PNG under the
two-part extension ``seg.png``, a ``.cls`` label, and on every third sample a ``meta.json``.
A few keys live in sub-directories and one key is long enough to need a PAX path record.

Run as a script (``python _dist_worker.py RANK WORLD PORT MANIFEST MASK OUT``) it is one rank
of a gloo job: it iterates :class:`PrunedWebDataset` through a 2-worker DataLoader in several
configurations, runs collectives after each, and writes what it saw to ``OUT`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SHARD_SIZES = (90, 17, 130, 1, 75, 110, 60)
N_CLASSES = 6


@dataclass
class Built:
    """A dataset written by :func:`build_dataset`."""

    root: str
    manifest_path: str
    shard_paths: list
    keys: list  # manifest order
    labels: np.ndarray  # manifest order
    files: list  # manifest order: {ext: bytes} as written (label member included)
    images: list  # manifest order: the uint8 array encoded in "seg.png"
    shard_sizes: tuple
    shard_of: np.ndarray = field(default=None)  # shard number of each sample


def build_dataset(root, shard_sizes=DEFAULT_SHARD_SIZES, seed=0, big_fraction=0.08, n_classes=N_CLASSES) -> Built:
    """Write shards of the given sizes under ``root`` and their manifest; return what was written."""
    from streamprune import index_shards
    from streamprune.sources.base import encode_image
    from streamprune.writers.tar import TarShardWriter

    root = os.path.abspath(os.fspath(root))
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys, labels, files_all, images, paths, shard_of = [], [], [], [], [], []
    g = 0
    for k, n in enumerate(shard_sizes):
        path = os.path.join(root, f"shard-{k:06d}.tar")
        with TarShardWriter(path, label_ext="cls") as writer:
            for j in range(n):
                if k == 2 and j == 0:
                    key = "long_" + "x" * 110 + f"_{g:05d}"  # name > 100 bytes: PAX path record
                elif g % 7 == 3:
                    key = f"grp{g % 4}/s{g:05d}"
                else:
                    key = f"s{g:05d}"
                label = int(rng.integers(n_classes))
                r = rng.random()
                if r < big_fraction:
                    size = int(rng.integers(100_000, 300_000))
                elif r < big_fraction + 0.15:
                    size = 0
                else:
                    size = int(rng.integers(1, 3000))
                image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                files = {"bin": rng.bytes(size), "seg.png": encode_image(image, "png")}
                if g % 3 == 0:
                    files["meta.json"] = json.dumps({"g": g, "key": key}).encode()
                writer.write(key, files, label)
                files = dict(files)
                files["cls"] = str(label).encode()
                keys.append(key)
                labels.append(label)
                files_all.append(files)
                images.append(image)
                shard_of.append(k)
                g += 1
            writer.close(checksum=False)
        paths.append(path)
    manifest = index_shards(
        paths, root, label_ext="cls", checksum=True, classes=[f"c{i}" for i in range(n_classes)], progress=False
    )
    return Built(
        root=root,
        manifest_path=manifest.path,
        shard_paths=[manifest.shard_path(k) for k in range(len(manifest.shards))],
        keys=keys,
        labels=np.asarray(labels, dtype=np.int64),
        files=files_all,
        images=images,
        shard_sizes=tuple(shard_sizes),
        shard_of=np.asarray(shard_of, dtype=np.int64),
    )


def sample_key(sample):
    """Map stage: a sample dict to its key (module level so DataLoader workers can use it)."""
    return sample["__key__"]


# Configurations every rank iterates: name -> (PrunedWebDataset kwargs, epoch).
CONFIGS = {
    "drop": ({"uneven": "drop"}, 0),
    "pad": ({"uneven": "pad"}, 0),
    "pad_shuffle": ({"uneven": "pad", "shuffle": True, "seed": 5}, 3),
    "drop_shuffle": ({"uneven": "drop", "shuffle": True, "seed": 5}, 3),
}


def rank_main(rank: int, world: int, port: int, manifest_path: str, mask_path: str, out_path: str) -> None:
    """One rank of the gloo job (see the module docstring)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from streamprune import PrunedWebDataset

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        out = {}
        for name, (kwargs, epoch) in CONFIGS.items():
            ds = PrunedWebDataset(manifest_path, mask_path, **kwargs)
            ds.set_epoch(epoch)
            loader = DataLoader(ds.map(sample_key), batch_size=None, num_workers=2)
            keys = list(loader)
            count = torch.tensor([len(keys)], dtype=torch.int64)
            dist.all_reduce(count)  # a collective after iteration: hangs if a rank were stuck
            gathered = [None] * world
            dist.all_gather_object(gathered, len(keys))
            out[name] = {
                "len": len(ds),
                "keys": keys,
                "sum": int(count.item()),
                "counts": gathered,
                "rank": ds.source.rank,
                "world_size": ds.source.world_size,
            }
        dist.barrier()
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, out_path)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    rank_main(int(a[0]), int(a[1]), int(a[2]), a[3], a[4], a[5])
