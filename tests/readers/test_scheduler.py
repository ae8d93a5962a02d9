"""The scheduler's cross-shard pipeline: order, overlap at shard boundaries, errors in order, bounded bytes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from builders import make_samples

from streamprune import storage
from streamprune.errors import IndexMismatchError
from streamprune.manifest import Manifest
from streamprune.readers.byterange import ShardFile, read_runs
from streamprune.readers.scheduler import FetchPolicy, ShardRead, read_shards_scheduled
from streamprune.writers import write_shards


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched-ds")
    write_shards(make_samples(96, seed=3), root / "ds", samples_per_shard=16, shuffle=False, progress=False)
    return Manifest.load(str(root / "ds"))


class Recorder:
    """Every event of a read, in order: opens, reads started, samples yielded (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.lock = threading.Lock()

    def add(self, *event) -> None:
        with self.lock:
            self.events.append(event)


class RecordingObject(storage.LocalObject):
    def __init__(self, path: str, shard: int, rec: Recorder, gate: threading.Event | None = None) -> None:
        super().__init__(path)
        self.shard, self.rec, self.gate = shard, rec, gate

    def read(self, start: int, end: int) -> bytes:
        self.rec.add("read", self.shard, start, end)
        if self.gate is not None:
            assert self.gate.wait(10)
        return super().read(start, end)


def _reads(m: Manifest, rec: Recorder, orders: dict[int, np.ndarray], fail_open: int | None = None, gates=None):
    for k, order in orders.items():
        def open_shard(k=k):
            rec.add("open", k)
            if k == fail_open:
                raise IndexMismatchError(f"shard {k}: cannot open")
            obj = RecordingObject(m.shard_path(k), k, rec, (gates or {}).get(k))
            return ShardFile.from_storage(obj, m.index(k, cache=False))
        yield ShardRead(m.shard_path(k), order, open_shard)


def _reference(m: Manifest, orders: dict[int, np.ndarray]) -> list[tuple[str, dict]]:
    out = []
    for k, order in orders.items():
        with ShardFile(m.shard_path(k), m.index(k)) as shard:
            for s in read_runs(shard, order, m.shard_path(k)):
                out.append((s["__key__"], {e: v for e, v in s.items() if not e.startswith("__")}))
    return out


def _orders(m: Manifest, seed: int = 0, keep: float = 0.5) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, entry in enumerate(m.shards):
        kept = np.flatnonzero(rng.random(entry.samples) < keep)
        out[k] = rng.permutation(kept) if k % 2 else kept  # shuffled and sorted orders
    return out


@pytest.mark.integration
@pytest.mark.parametrize("depth", [1, 3, 16])
def test_samples_equal_the_serial_reader_in_order(dataset, depth):
    orders = _orders(dataset)
    rec = Recorder()
    policy = FetchPolicy(depth=depth, max_gap=1 << 20, max_waste=0.5, max_request=4096)
    got = [(s["__key__"], {e: v for e, v in s.items() if not e.startswith("__")})
           for s in read_shards_scheduled(_reads(dataset, rec, orders), policy)]
    assert got == _reference(dataset, orders)


def test_next_shard_is_open_and_fetching_before_the_current_one_is_consumed(dataset, monkeypatch):
    orders = {k: np.arange(dataset.shards[k].samples) for k in range(3)}
    last_start = int(dataset.index(0).start[-1])
    rec = Recorder()
    overlapped = []
    original = RecordingObject.read

    def read(self, start, end):
        if self.shard == 0 and start == last_start:
            # shard 0's last request stays in flight until shard 1's first request has started:
            # a scheduler that drained shard 0 before opening shard 1 never gets here in time
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not overlapped:
                with rec.lock:
                    overlapped[:] = [e for e in rec.events if e[0] == "read" and e[1] == 1][:1]
                time.sleep(0.005)
        return original(self, start, end)

    monkeypatch.setattr(RecordingObject, "read", read)
    policy = FetchPolicy(depth=8, max_gap=0, max_request=1)  # one request per sample
    got = [s["__key__"] for s in read_shards_scheduled(_reads(dataset, rec, orders), policy)]
    assert got == [k for j in range(3) for k in dataset.index(j).keys]
    assert overlapped, "shard 1 was not fetched while shard 0's last request was in flight"


def test_a_shard_that_fails_to_open_raises_after_every_earlier_sample(dataset):
    orders = {k: np.arange(dataset.shards[k].samples) for k in range(3)}
    rec = Recorder()
    got = []
    with pytest.raises(IndexMismatchError, match="shard 1: cannot open"):
        for s in read_shards_scheduled(_reads(dataset, rec, orders, fail_open=1), FetchPolicy(depth=4, max_gap=0)):
            got.append(s["__key__"])
    assert got == dataset.index(0).keys  # shard 0 whole, nothing of shard 1 or 2


def test_a_failed_request_raises_in_order(dataset, monkeypatch):
    orders = {k: np.arange(dataset.shards[k].samples) for k in range(2)}
    bad_start = int(dataset.index(0).start[10])
    original = RecordingObject.read

    def read(self, start, end):
        if self.shard == 0 and start == bad_start:
            raise storage.RemoteError("injected", url=self.url, start=start, end=end)
        return original(self, start, end)

    monkeypatch.setattr(RecordingObject, "read", read)
    got = []
    with pytest.raises(storage.RemoteError, match="injected"):
        for s in read_shards_scheduled(_reads(dataset, Recorder(), orders), FetchPolicy(depth=8, max_gap=0, max_request=1)):
            got.append(s["__key__"])
    assert got == dataset.index(0).keys[:10]


def test_bytes_in_flight_stay_under_the_cap(dataset):
    orders = {k: np.arange(dataset.shards[k].samples) for k in range(len(dataset.shards))}
    record = {}  # key -> bytes of its tar record (one request each below)
    for k in orders:
        index = dataset.index(k)
        record.update(zip(index.keys, (index.end - index.start).tolist()))
    cap = 3 * max(record.values())
    rec = Recorder()
    stream = read_shards_scheduled(_reads(dataset, rec, orders), FetchPolicy(depth=64, max_gap=0, max_request=1,
                                                                              max_inflight_bytes=cap))
    consumed = 0
    most = 0
    for s in stream:
        consumed += record[s["__key__"]]
        with rec.lock:
            started = sum(e[3] - e[2] for e in rec.events if e[0] == "read")
        most = max(most, started - consumed)
        assert started - consumed <= cap  # requested but not yet consumed
    assert consumed == sum(record.values())
    assert most >= cap - max(record.values())  # the cap, not the depth, was the limit


def test_closing_early_closes_every_opened_shard(dataset):
    orders = {k: np.arange(dataset.shards[k].samples) for k in range(4)}
    opened: list[RecordingObject] = []
    original = RecordingObject.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self)

    RecordingObject.__init__ = init
    try:
        stream = read_shards_scheduled(_reads(dataset, Recorder(), orders), FetchPolicy(depth=4, max_gap=0))
        next(stream)
        stream.close()
    finally:
        RecordingObject.__init__ = original
    assert opened and all(obj.fd == -1 for obj in opened)
