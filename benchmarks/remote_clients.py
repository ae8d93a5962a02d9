"""HTTP clients for ranged reads, measured side by side against nginx: what the remote reader should use.

Not a registered suite (no targets, no report section): a script behind the client choice in
the README ("Remote shards"). The native nginx store (:class:`benchmarks.nginx_store.NginxStore`,
loopback, one port per setting: ``t0`` no latency and no rate limit, ``t30`` 30 ms to first
byte and 100 MB/s per connection) serves one ``--object-mib`` object of random bytes; nginx is a
separate process, so the CPU measured here is the client's alone. Every client fetches the same
``--requests`` disjoint ``--range-kb`` KB ranges at random places in the object, ``depth``
requests in flight (``--depths``):

* ``fsspec_threads``: fsspec ``HTTPFileSystem.cat_file`` on ``depth`` threads (what the
  scheduler did before :mod:`streamprune.rangeclient`; fsspec's aiohttp pool holds 100 connections);
* ``fsspec_cat_ranges``: one fsspec ``cat_ranges`` call (its async gather, ``batch_size=depth``);
* ``obstore_threads``: obstore ``get_range`` (Rust ``object_store``) on ``depth`` threads;
* ``obstore_async``: obstore ``get_range_async`` on one asyncio loop thread, a semaphore of ``depth``;
* ``aiohttp``: one ``ClientSession`` on one loop thread, a semaphore of ``depth``;
* ``http_client``: the standard library's ``http.client``, one keep-alive connection per thread;
* ``streamprune_uvloop`` (``streamprune_asyncio`` with ``STREAMPRUNE_EVENT_LOOP=asyncio`` or
  without uvloop): :meth:`streamprune.storage.RemoteObject.submit` (the lean client,
  :mod:`streamprune.rangeclient`, with its retries, ``If-Match`` and counters), ``depth``
  futures in flight, as the scheduler drives it;
* ``rangeclient_uvloop_in_loop``: the same client's ``get_range`` gathered on its own loop with
  a semaphore (no thread hand-off per request: like the ``aiohttp`` and ``obstore_async`` rows).

Per client and setting: requests/s (wall clock) and client CPU per request (this process's CPU
time over the round / requests), median and min-max over ``--repeats`` interleaved rounds (every
client once per round, after one untimed warm-up pass that opens its connections). Every round's
bytes are compared with the file, and nginx's access log must show exactly one ``206`` per range.
Clients that are not installed are skipped.

Run:  python -m benchmarks.remote_clients [--depths 32,128 --ttfb-ms 0,30 --requests 800 --repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import http.client
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamprune import rangeclient, storage

from . import provenance, resultsfile
from .nginx_store import NginxStore, echo_module_available

__all__ = ["main", "clients"]

Fetch = Callable[[list[tuple[int, int]]], list]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _LoopThread:
    """One asyncio loop on a daemon thread, for the async clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _bounded(depth: int, get: Callable[[int, int], Any]) -> Callable[[list[tuple[int, int]]], Any]:
    """A coroutine function fetching every range with ``get`` (a coroutine), ``depth`` at a time."""

    async def fetch_all(ranges: list[tuple[int, int]]) -> list:
        gate = asyncio.Semaphore(depth)

        async def one(lo: int, hi: int) -> Any:
            async with gate:
                return await get(lo, hi)

        return await asyncio.gather(*(one(lo, hi) for lo, hi in ranges))

    return fetch_all


def clients(base: str, name: str, depth: int) -> tuple[dict[str, Fetch], list[Callable[[], None]]]:
    """The clients to compare at ``depth`` requests in flight, and the calls that release them.

    Args:
        base: The store's base URL (``http://127.0.0.1:PORT``).
        name: The object's name under it.
        depth: Requests in flight.

    Returns:
        ``({client: fetch(ranges) -> list of bytes}, [cleanup, ...])``.
    """
    url = f"{base}/{name}"
    out: dict[str, Fetch] = {}
    cleanup: list[Callable[[], None]] = []
    pool = cf.ThreadPoolExecutor(depth, thread_name_prefix="bench-client")
    cleanup.append(lambda: pool.shutdown(wait=True))
    try:
        # optional: fsspec is the remote extra
        import fsspec
    except ImportError:
        fsspec = None
    if fsspec is not None:
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        out["fsspec_threads"] = lambda ranges: list(pool.map(lambda r: fs.cat_file(url, start=r[0], end=r[1]), ranges))
        out["fsspec_cat_ranges"] = lambda ranges: fs.cat_ranges([url] * len(ranges), [r[0] for r in ranges],
                                                                [r[1] for r in ranges], batch_size=depth)
    try:
        # optional: obstore is a candidate client, not a dependency of the reader
        import obstore
        from obstore.store import HTTPStore
    except ImportError:
        obstore = None
    if obstore is not None:
        store = HTTPStore.from_url(base, client_options={"allow_http": True})  # nginx on loopback is plain HTTP
        out["obstore_threads"] = lambda ranges: list(pool.map(
            lambda r: bytes(obstore.get_range(store, name, start=r[0], end=r[1])), ranges))
        obstore_loop = _LoopThread()
        cleanup.append(obstore_loop.stop)

        async def obstore_get(lo: int, hi: int) -> bytes:
            return bytes(await obstore.get_range_async(store, name, start=lo, end=hi))

        obstore_all = _bounded(depth, obstore_get)
        out["obstore_async"] = lambda ranges: obstore_loop.run(obstore_all(ranges))
    try:
        # optional: aiohttp comes with the remote extra
        import aiohttp
    except ImportError:
        aiohttp = None
    if aiohttp is not None:
        aio_loop = _LoopThread()

        async def make_session() -> Any:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

        session = aio_loop.run(make_session())

        async def aio_get(lo: int, hi: int) -> bytes:
            async with session.get(url, headers={"Range": f"bytes={lo}-{hi - 1}"}) as resp:
                resp.raise_for_status()
                return await resp.read()

        aio_all = _bounded(depth, aio_get)
        out["aiohttp"] = lambda ranges: aio_loop.run(aio_all(ranges))
        cleanup.append(lambda: (aio_loop.run(session.close()), aio_loop.stop()))
    host, port = base.split("://", 1)[1].split(":")
    local = threading.local()
    connections: list[http.client.HTTPConnection] = []

    def stdlib_get(r: tuple[int, int]) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=60)
            connections.append(conn)
        conn.request("GET", "/" + name, headers={"Range": f"bytes={r[0]}-{r[1] - 1}"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 206:
            raise RuntimeError(f"http.client: status {resp.status}")
        return data

    out["http_client"] = lambda ranges: list(pool.map(stdlib_get, ranges))
    cleanup.append(lambda: [c.close() for c in connections])
    obj = storage.RemoteObject(url)
    if getattr(obj, "native_async", False):  # False: a checkout before the lean client

        def streamprune_submit(ranges: list[tuple[int, int]]) -> list:
            gate = threading.Semaphore(depth)
            futures = []
            for lo, hi in ranges:
                gate.acquire()
                future = obj.submit(lo, hi, pool)
                future.add_done_callback(lambda _: gate.release())
                futures.append(future)
            return [f.result() for f in futures]

        kind = rangeclient.event_loop_kind()
        out[f"streamprune_{kind}"] = streamprune_submit
        target = rangeclient.target_for(url)

        async def lean_get(lo: int, hi: int) -> bytes:
            return await rangeclient.get_range(target, lo, hi)

        lean_all = _bounded(depth, lean_get)
        out[f"rangeclient_{kind}_in_loop"] = lambda ranges: rangeclient.submit(lean_all(ranges)).result()
    return out, cleanup


def _ranges(size: int, span: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` disjoint ``span``-byte ranges at random slots of an object of ``size`` bytes, in random order."""
    slots = list(range(size // span))
    if count > len(slots):
        raise SystemExit(f"--requests {count}: only {len(slots)} disjoint ranges of {span} bytes fit in the object")
    random.Random(seed).shuffle(slots)
    return [(s * span, s * span + span) for s in slots[:count]]


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Serve an object from nginx, time every client at every setting, write the JSON; return it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ttfb-ms", default="0,30", help="times to first byte, ms (comma-separated; 0: no rate limit either)")
    p.add_argument("--depths", default="32,128", help="requests in flight (comma-separated)")
    p.add_argument("--object-mib", type=int, default=100, help="size of the object read, MiB")
    p.add_argument("--range-kb", type=int, default=120, help="bytes per range, in thousands")
    p.add_argument("--requests", type=int, default=800, help="ranges per round")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--conn-mbps", type=float, default=100.0, help="MB/s per connection where the latency is > 0")
    p.add_argument("--clients", default="", help="only these clients (comma-separated; default all installed)")
    p.add_argument("--out", default=os.path.join(resultsfile.DEFAULT_RESULTS, "remote_clients.json"))
    args = p.parse_args(argv)
    ttfbs = [float(x) for x in args.ttfb_ms.split(",")]
    if any(t > 0 for t in ttfbs) and not echo_module_available():
        raise SystemExit("nginx's echo module is missing (apt-get install nginx-light libnginx-mod-http-echo)")
    data = os.path.join(resultsfile.DEFAULT_DATA, "remote_clients")
    name = f"random-{args.object_mib}mib.bin"
    path = os.path.join(data, name)
    size = args.object_mib << 20
    if not os.path.exists(path) or os.path.getsize(path) != size:
        os.makedirs(data, exist_ok=True)
        with open(path + ".tmp", "wb") as fh:
            for _ in range(args.object_mib):
                fh.write(os.urandom(1 << 20))
        os.replace(path + ".tmp", path)
    with open(path, "rb") as fh:
        content = fh.read()
    span = args.range_kb * 1000
    ranges = _ranges(size, span, args.requests, seed=0)
    settings = {f"t{t:g}": (t / 1e3, args.conn_mbps * 1e6 if t > 0 else None) for t in ttfbs}
    workdir = tempfile.mkdtemp(prefix="streamprune-clients-")
    store = NginxStore(data, workdir, settings=settings)
    revision = provenance.git_revision()
    load_start = os.getloadavg()
    rows = []
    try:
        for setting, (ttfb, rate) in settings.items():
            for depth in [int(x) for x in args.depths.split(",")]:
                calls, cleanup = clients(store.url(setting), name, depth)
                if args.clients:
                    calls = {k: v for k, v in calls.items() if k in args.clients.split(",")}
                try:
                    for call in calls.values():  # warm-up: connections opened, imports and pools built
                        call(ranges[: 2 * depth])
                    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in calls}
                    for _ in range(args.repeats):
                        for client, call in calls.items():  # interleaved: every client once per round
                            store.clear_log()
                            c0, t0 = _cpu(), time.perf_counter()
                            got = call(ranges)
                            wall, cpu = time.perf_counter() - t0, _cpu() - c0
                            if any(bytes(b) != content[lo:hi] for b, (lo, hi) in zip(got, ranges)) or len(got) != len(ranges):
                                raise RuntimeError(f"{client}: wrong bytes")
                            served = [e for e in store.log_entries(setting) if e["method"] == "GET"]
                            if len(served) != len(ranges) or any(e["status"] != 206 for e in served):
                                raise RuntimeError(f"{client}: nginx served {len(served)} GETs for {len(ranges)} ranges")
                            runs[client].append((len(ranges) / wall, cpu / len(ranges) * 1e3))
                finally:
                    for release in cleanup:
                        release()
                for client, values in runs.items():
                    rows.append({"client": client, "ttfb_ms": ttfb * 1e3, "conn_bytes_per_s": rate, "depth": depth,
                                 "requests": len(ranges), "range_bytes": span,
                                 "requests_per_s": _summary([r for r, _ in values]),
                                 "client_cpu_ms_per_request": _summary([c for _, c in values]),
                                 "rounds": [{"requests_per_s": r, "client_cpu_ms_per_request": c} for r, c in values]})
    finally:
        store.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("| ttfb ms | depth | client | requests/s median [min-max] | client CPU ms/request median [min-max] |")
    print("|---:|---:|---|---:|---:|")
    for r in rows:
        q, c = r["requests_per_s"], r["client_cpu_ms_per_request"]
        print(f"| {r['ttfb_ms']:g} | {r['depth']} | {r['client']} | {q['median']:.0f} [{q['min']:.0f}-{q['max']:.0f}] | "
              f"{c['median']:.3f} [{c['min']:.3f}-{c['max']:.3f}] |")
    results = {**provenance.provenance(packages_remote=["fsspec", "aiohttp", "obstore", "uvloop"]), **revision,
               "store": "nginx (benchmarks.nginx_store)", "setup": vars(args), "settings": settings,
               "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "rows": rows}
    resultsfile.write_json(args.out, results)
    return results


if __name__ == "__main__":
    provenance.set_command("python -m benchmarks.remote_clients", sys.argv[1:])
    main()
