"""Remote indexing measured: the streaming pass vs the ranged header walk, and shards in parallel.

Not a registered suite (no targets, no report section): a script behind the numbers quoted for
``streamprune index URL...`` (README, "Remote shards"). It writes ``--shards`` tar shards of
``--samples`` samples each, every sample a ``--member-kb`` KB ``.bin`` member and a ``.cls``
label, and indexes them with :func:`streamprune.remoteindex.index_remote_shards`:

* ``stream``: the default (SHA-256 and per-sample checksums: one sequential pass per shard);
* ``ranged``: ``checksum=False, sample_checksums=False`` (``--no-checksum``): headers only, by
  ranged reads;

each with the shards one at a time (``workers=1``), on threads (:class:`ThreadEngine`) and on
forked processes (:class:`LocalEngine`), against two servers on loopback:

* nginx (``tests/remote_servers.Nginx``; its access log gives the bytes sent), no added latency;
* the Python simulated store (:class:`benchmarks.sim_store.SimStore`) with
  ``--ttfb-ms`` to first byte per request and ``--conn-mbps`` per connection.

Times are the median of ``--repeats`` runs. Bytes are response bodies (HEAD requests counted
as requests).

Run:  python -m benchmarks.remote_index_measure [--shards 8 --samples 100 --member-kb 100 --ttfb-ms 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamprune.engine import Engine, LocalEngine, ThreadEngine
from streamprune.remoteindex import index_remote_shards
from streamprune.writers import write_shards

from . import provenance, resultsfile
from .sim_store import SimStore

__all__ = ["main"]

MODES = {"stream": {"checksum": True, "sample_checksums": True}, "ranged": {"checksum": False, "sample_checksums": False}}


def _samples(shards: int, samples: int, member_kb: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    size = member_kb * 1000
    return [(f"s{i:06d}", {"bin": rng.bytes(int(rng.integers(size * 9 // 10, size * 11 // 10)))}, i % 10) for i in range(shards * samples)]


def _nginx_class() -> Any:
    """The test suite's nginx server class (``None`` when nginx is not installed), loaded from its file."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "remote_servers.py")
    spec = importlib.util.spec_from_file_location("remote_servers", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]  # the file is part of this repository
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.Nginx if os.path.exists(module.NGINX) else None


def _timed(fn: Callable[[], Any], repeats: int, before: Callable[[], None], after: Callable[[], dict]) -> dict:
    """Median seconds of ``repeats`` calls, and the server counts (``after()``) of the last one."""
    seconds = []
    counts: dict = {}
    for _ in range(repeats):
        before()
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
        counts = after()
    return {"seconds": round(statistics.median(seconds), 3), "runs": [round(s, 3) for s in seconds], **counts}


def _engines(workers: int) -> dict[str, Callable[[], Engine | None]]:
    return {"serial": lambda: ThreadEngine(1), "threads": lambda: ThreadEngine(workers), "processes": lambda: LocalEngine(workers)}


def measure(server: str, base_url: str, shards: int, repeats: int, workers: int, before: Callable[[], None],
            after: Callable[[], dict], out_dir: str) -> list[dict]:
    """Every mode x engine over ``shards`` shards at ``base_url``, and one shard alone per mode."""
    rows = []
    urls = [f"{base_url}/shard-{k:06d}.tar" for k in range(shards)]
    # once untimed: the first request of a process opens the HTTP session (and imports aiohttp)
    index_remote_shards(urls[:1], os.path.join(out_dir, "idx"), progress=False, checksum=False, sample_checksums=False)
    for mode, options in MODES.items():
        for name, make in [("one shard", lambda: ThreadEngine(1))] + list(_engines(workers).items()):
            targets = urls[:1] if name == "one shard" else urls

            def run(targets=targets, make=make, options=options) -> None:
                index_remote_shards(targets, os.path.join(out_dir, "idx"), progress=False, engine=make(), **options)

            row = {"server": server, "mode": mode, "engine": name, "shards": len(targets), **_timed(run, repeats, before, after)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Write the shards, serve them, measure; print one JSON line per configuration and a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--samples", type=int, default=100, help="samples per shard")
    p.add_argument("--member-kb", type=int, default=100, help="average member size, KB")
    p.add_argument("--ttfb-ms", type=float, default=30.0, help="simulated store: time to first byte per request")
    p.add_argument("--conn-mbps", type=float, default=100.0, help="simulated store: MB/s per connection")
    p.add_argument("--total-mbps", type=float, default=400.0, help="simulated store: MB/s in all")
    p.add_argument("--workers", type=int, default=8, help="threads / processes of the parallel runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--servers", default="nginx,sim", help="comma-separated: nginx, sim")
    p.add_argument("--out", default=os.path.join(resultsfile.DEFAULT_RESULTS, "remote_index.json"), help="results JSON")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="streamprune-rindex-bench-")
    rows: list[dict] = []
    try:
        data = os.path.join(tmp, "data")
        write_shards(_samples(args.shards, args.samples, args.member_kb), data, samples_per_shard=args.samples, shuffle=False,
                     progress=False)
        sizes = [os.path.getsize(os.path.join(data, f"shard-{k:06d}.tar")) for k in range(args.shards)]
        print(json.dumps({"shards": args.shards, "shard_bytes": sizes[0], "total_bytes": sum(sizes)}), flush=True)
        servers = args.servers.split(",")
        nginx_cls = _nginx_class() if "nginx" in servers else None
        if nginx_cls is not None:
            server = nginx_cls(data, os.path.join(tmp, "nginx"))
            try:
                def counts() -> dict:
                    entries = [e for e in server.log_entries() if e["uri"].endswith(".tar")]
                    return {"requests": len(entries), "bytes": sum(e["body_bytes"] for e in entries)}

                rows += measure("nginx", server.url, args.shards, args.repeats, args.workers, server.clear_log, counts, tmp)
            finally:
                server.stop()
        if "sim" in servers:
            store = SimStore(data, args.conn_mbps * 1e6, args.total_mbps * 1e6)
            try:
                store.set_ttfb(args.ttfb_ms / 1000)

                def sim_counts() -> dict:
                    stats = store.stats()
                    return {"requests": stats["requests"], "bytes": stats["bytes"]}

                rows += measure(f"sim {args.ttfb_ms:g} ms", store.url, args.shards, args.repeats, args.workers, store.reset,
                                sim_counts, tmp)
            finally:
                store.stop()
        print("| server | mode | engine | shards | seconds (median) | requests | bytes |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['server']} | {r['mode']} | {r['engine']} | {r['shards']} | {r['seconds']:.3f} | {r['requests']} | {r['bytes']:,} |")
        resultsfile.write_json(args.out, {**provenance.provenance(), "setup": vars(args) | {"shard_bytes": sizes[0]}, "rows": rows})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
