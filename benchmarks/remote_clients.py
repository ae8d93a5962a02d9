"""HTTP client libraries for ranged reads, measured side by side: what the remote reader should use.

Not a registered suite (no targets, no report section): a script behind the client choice in
the README ("Remote shards"). The Python simulated store
(:class:`benchmarks.sim_store.SimStore`, loopback, ``--ttfb-ms`` to first byte,
``--conn-mbps`` per connection, ``--total-mbps`` in all) serves one ``--object-mb`` object of
random bytes; each client fetches the same disjoint ranges of ``--range-kb`` KB, one slot in
every ``1/--keep`` (what a pruned read at r = 1 - keep asks for):

* ``fsspec_threads``: fsspec ``HTTPFileSystem.cat_file`` on a pool of ``--depth`` threads
  (what :mod:`streamprune.readers.scheduler` does);
* ``fsspec_cat_ranges``: one ``cat_ranges`` call (fsspec's async gather, ``batch_size=depth``);
* ``obstore_threads``: obstore ``get_range`` (Rust ``object_store``) on ``--depth`` threads;
* ``obstore_get_ranges``: one obstore ``get_ranges`` call (its own concurrency and coalescing).

Per client: ranges/s (wall clock), the client's CPU per range, the median over ``--repeats``
interleaved rounds, and the requests and bytes the store served (a client that coalesces
ranges sends fewer, larger requests and fetches the gaps between them). Clients that are not installed are skipped.

Run:  python -m benchmarks.remote_clients [--ttfb-ms 0,30 --requests 400 --range-kb 120 --depth 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import common
from .sim_store import SimStore

__all__ = ["main"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def clients(base: str, name: str, starts: list[int], ends: list[int], depth: int) -> dict[str, Callable[[], list]]:
    """The clients to compare, each a call that fetches every range once."""
    out: dict[str, Callable[[], list]] = {}
    try:
        # optional: fsspec is the remote extra
        import fsspec
    except ImportError:
        fsspec = None
    if fsspec is not None:
        fs = fsspec.filesystem("http")
        url = f"{base}/{name}"

        def fsspec_threads() -> list:
            with cf.ThreadPoolExecutor(depth) as pool:
                return list(pool.map(lambda se: fs.cat_file(url, start=se[0], end=se[1]), zip(starts, ends)))

        out["fsspec_threads"] = fsspec_threads
        out["fsspec_cat_ranges"] = lambda: fs.cat_ranges([url] * len(starts), starts, ends, batch_size=depth)
    try:
        # optional: obstore is a candidate client, not a dependency
        import obstore
        from obstore.store import HTTPStore
    except ImportError:
        obstore = None
    if obstore is not None:
        store = HTTPStore.from_url(base, client_options={"allow_http": True})  # the simulated store is plain HTTP

        def obstore_threads() -> list:
            with cf.ThreadPoolExecutor(depth) as pool:
                return list(pool.map(lambda se: bytes(obstore.get_range(store, name, start=se[0], end=se[1])),
                                     zip(starts, ends)))

        out["obstore_threads"] = obstore_threads
        out["obstore_get_ranges"] = lambda: [bytes(b) for b in obstore.get_ranges(store, name, starts=starts, ends=ends)]
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Serve a shard from the simulated store, time every client, write the JSON; return it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ttfb-ms", default="0,30", help="times to first byte to measure at, ms (comma-separated)")
    p.add_argument("--object-mb", type=int, default=256, help="size of the object read, MiB")
    p.add_argument("--keep", type=float, default=0.2, help="fraction of the object's range slots fetched")
    p.add_argument("--range-kb", type=int, default=120)
    p.add_argument("--depth", type=int, default=32, help="requests in flight")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--conn-mbps", type=float, default=100.0)
    p.add_argument("--total-mbps", type=float, default=400.0)
    p.add_argument("--out", default=os.path.join(common.DEFAULT_RESULTS, "remote_clients.json"))
    args = p.parse_args(argv)
    data = os.path.join(common.DEFAULT_DATA, "remote_clients")
    name = f"random-{args.object_mb}mib.bin"
    path = os.path.join(data, name)
    size = args.object_mb << 20
    if not os.path.exists(path) or os.path.getsize(path) != size:
        os.makedirs(data, exist_ok=True)
        with open(path + ".tmp", "wb") as fh:
            for _ in range(args.object_mb):
                fh.write(os.urandom(1 << 20))
        os.replace(path + ".tmp", path)
    span = args.range_kb * 1000
    stride = round(span / args.keep)
    starts = list(range(0, size - span, stride))
    ends = [s + span for s in starts]
    store = SimStore(data, args.conn_mbps * 1e6, args.total_mbps * 1e6)
    rows = []
    try:
        for ttfb in [float(x) for x in args.ttfb_ms.split(",")]:
            store.set_ttfb(ttfb / 1e3)
            calls = clients(store.url, name, starts, ends, args.depth)
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in calls}
            served: dict[str, dict] = {}
            for _ in range(args.repeats):
                for client, call in calls.items():  # interleaved: every client once per round
                    store.reset()
                    c0, t0 = _cpu(), time.perf_counter()
                    got = call()
                    wall, cpu = time.perf_counter() - t0, _cpu() - c0
                    served[client] = store.stats()
                    if len(got) != len(starts) or any(len(b) != span for b in got):
                        raise RuntimeError(f"{client}: wrong bytes")
                    times[client].append((wall, cpu))
            for client, values in times.items():
                wall = statistics.median(w for w, _ in values)
                cpu = statistics.median(c for _, c in values)
                rows.append({"client": client, "ttfb_ms": ttfb, "requests": len(starts), "range_bytes": span,
                             "depth": args.depth, "seconds": wall, "requests_per_s": len(starts) / wall,
                             "server_requests": served[client]["requests"], "server_bytes": served[client]["bytes"],
                             "client_cpu_ms_per_request": cpu / len(starts) * 1e3,
                             "requests_per_s_interval": [len(starts) / max(w for w, _ in values),
                                                         len(starts) / min(w for w, _ in values)]})
    finally:
        store.stop()
    print("| ttfb ms | client | ranges/s [min-max] | client CPU ms/range | requests served | MB served |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["requests_per_s_interval"]
        print(f"| {r['ttfb_ms']:g} | {r['client']} | {r['requests_per_s']:.0f} [{lo:.0f}-{hi:.0f}] | "
              f"{r['client_cpu_ms_per_request']:.2f} | {r['server_requests']} | {r['server_bytes'] / 1e6:.1f} |")
    results = {"command": common.command_line(), "simulation": True, "setup": vars(args),
               "machine": common.machine_info() | {"packages_remote": common.package_versions(["fsspec", "aiohttp", "obstore"])},
               "loadavg": os.getloadavg(), "rows": rows}
    common.write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
