"""``streamprune shard SRC s3://...`` measured: each shard uploaded as it is finished vs write-all-then-upload.

Not a registered suite (no targets, no report section): a script behind the numbers quoted for
``streamprune shard SRC URL`` in the closing note of issue 11. A moto S3 server (its own
process, loopback) receives the same dataset three ways, side by side in every repetition:

* ``write_then_upload``: :func:`streamprune.writers.write_shards` to a local temporary
  directory, then every file uploaded one at a time, manifest last (what ``shard SRC URL``
  did before it uploaded per shard);
* ``per_shard_1`` / ``per_shard_4``: :func:`streamprune.writers.remote.write_shards_to` with
  ``upload_threads`` 1 and 4 (each shard uploaded as soon as it is written and verified,
  while later shards are written).

Two sources: an ``.npz`` of images (the writer encodes JPEGs: writing costs CPU) and
pre-encoded byte payloads (writing is a copy). Times are medians of ``--repeats``.

Run:  python -m benchmarks.remote_upload_measure [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamprune import storage
from streamprune.manifest import MANIFEST_NAME
from streamprune.writers import write_shards
from streamprune.writers.remote import write_shards_to

from . import provenance, resultsfile, servers

__all__ = ["main"]


def write_then_upload(src: Any, url: str, samples_per_shard: int) -> None:
    """Every shard written locally first, then each file uploaded, the manifest last."""
    tmp = tempfile.mkdtemp(prefix="upload-measure-")
    try:
        write_shards(src, tmp, samples_per_shard=samples_per_shard, progress=False)
        names = sorted(n for n in os.listdir(tmp) if n != MANIFEST_NAME)
        for name in names:
            storage.put_file(os.path.join(tmp, name), storage.join(url, name))
        storage.put_file(os.path.join(tmp, MANIFEST_NAME), storage.join(url, MANIFEST_NAME))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Start moto, time every arm side by side, write the JSON; return it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples-per-shard", type=int, default=150)
    p.add_argument("--out", default=os.path.join(resultsfile.DEFAULT_RESULTS, "remote_upload.json"))
    args = p.parse_args(argv)
    port = servers.free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="upload-measure-src-")
    rows = []
    try:
        servers.wait_port(port, timeout=20.0)
        # optional: the S3 test stack (dev extra)
        import boto3
        import s3fs

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        s3 = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
        rng = np.random.default_rng(0)
        npz = os.path.join(work, "images.npz")
        np.savez(npz, x=rng.integers(0, 255, size=(3000, 96, 96, 3), dtype=np.uint8), y=rng.integers(0, 10, size=3000))
        blobs = [(f"b{i:05d}", {"bin": rng.integers(0, 256, size=25_000, dtype=np.uint8).tobytes()}, i % 10)
                 for i in range(1600)]
        spp = args.samples_per_shard
        arms = {
            "write_then_upload": lambda src, url: write_then_upload(src, url, spp),
            "per_shard_1": lambda src, url: write_shards_to(src, url, upload_threads=1, samples_per_shard=spp, progress=False),
            "per_shard_4": lambda src, url: write_shards_to(src, url, upload_threads=4, samples_per_shard=spp, progress=False),
        }
        for source, src in (("npz images (JPEG encoded)", npz), ("pre-encoded bytes", blobs)):
            times: dict[str, list[float]] = {arm: [] for arm in arms}
            for rep in range(args.repeats):
                for arm, fn in arms.items():  # side by side: every arm once per repetition
                    url = f"s3://bench/{arm}-{rep}-{len(rows)}"
                    t0 = time.perf_counter()
                    fn(src, url)
                    times[arm].append(time.perf_counter() - t0)
                    s3.rm(url, recursive=True)  # moto holds objects in memory: every run starts alike
            rows.append({"source": source, **{arm: {"median_s": statistics.median(t), "runs_s": t} for arm, t in times.items()}})
    finally:
        servers.stop_process(server)
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        print(r["source"] + ": " + ", ".join(f"{arm} {r[arm]['median_s']:.2f} s" for arm in arms))
    results = {**provenance.provenance(), "setup": vars(args), "loadavg": os.getloadavg(), "rows": rows}
    resultsfile.write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
