"""Remote shards over real servers: nginx (HTTP Range), moto (S3), and a fault-injecting proxy."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from builders import make_samples  # noqa: E402
from remote_servers import NGINX, FaultProxy, Nginx  # noqa: E402

from streamprune import storage  # noqa: E402
from streamprune.errors import ChecksumError, IndexMismatchError  # noqa: E402
from streamprune.manifest import Manifest  # noqa: E402
from streamprune.masks import random_mask  # noqa: E402
from streamprune.optional import MissingExtraError  # noqa: E402
from streamprune.readers.mapstyle import PrunedMapDataset  # noqa: E402
from streamprune.readers.scheduler import FetchPolicy, plan_fetches  # noqa: E402
from streamprune.readers.webdataset import PrunedSource, PrunedWebDataset, pruned_tarfile_samples  # noqa: E402
from streamprune.storage import RemoteError, RetryPolicy  # noqa: E402
from streamprune.writers import write_shards  # noqa: E402

needs_nginx = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (apt-get install nginx-light)")


def _samples(n=160, seed=0):
    # bigger payloads than the default fixture, so gaps, coalescing and byte counts mean something
    rng = np.random.default_rng(seed)
    out = []
    for key, files, label in make_samples(n, seed=seed):
        files = dict(files)
        files["bin"] = rng.integers(0, 256, size=int(rng.integers(2000, 12000)), dtype=np.uint8).tobytes()
        out.append((key, files, label))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote-ds")
    write_shards(_samples(), root / "ds", samples_per_shard=40, shuffle=False, progress=False)
    return str(root / "ds")


@pytest.fixture
def nginx_on_a_copy(dataset, tmp_path):
    """nginx serving a private copy of ``dataset`` (``copy``), for tests that change objects under it; ``(server, copy)``."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    server = Nginx(str(copy), str(tmp_path / "ng"))
    yield server, copy
    server.stop()


@pytest.fixture(scope="module")
def s3(dataset):
    pytest.importorskip("s3fs")
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer
    from remote_servers import free_port

    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="bucket")
    for name in os.listdir(dataset):
        client.upload_file(os.path.join(dataset, name), "bucket", f"ds/{name}")
    yield "s3://bucket/ds"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _read(ds):
    return [(s["__key__"], s["bin"], s["txt"]) for s in ds]


def _mask(dataset, ratio, level):
    return random_mask(Manifest.load(dataset), ratio, level=level, seed=1)


def _plain_webdataset(dataset, keep):
    m = Manifest.load(dataset)
    kept = set(np.asarray(m.keys())[keep.keep].tolist())
    urls = [m.shard_path(k) for k in range(len(m.shards))]
    ds = wds.WebDataset(urls, shardshuffle=False).select(lambda s: s["__key__"] in kept)
    return [(s["__key__"], s["bin"], s["txt"]) for s in ds]


@pytest.mark.integration
@needs_nginx
@pytest.mark.parametrize("ratio,level", [(0.0, "sample"), (0.4, "sample"), (0.8, "sample"), (0.5, "class")])
def test_http_reads_equal_local_and_plain_webdataset(dataset, nginx, ratio, level):
    keep = _mask(dataset, ratio, level)
    local = _read(PrunedSource(dataset, keep))
    remote = _read(PrunedSource(nginx.url + "/manifest.json", keep))
    assert remote == local
    assert remote == _plain_webdataset(dataset, keep)
    # the same manifest, shards from the server (one manifest, two copies)
    assert _read(PrunedSource(dataset, keep, base=nginx.url)) == local


@pytest.mark.integration
@needs_nginx
def test_http_workers_and_ranks(dataset, nginx, tmp_path):
    keep = _mask(dataset, 0.6, "sample")
    path = keep.save(str(tmp_path / "keep.spmask"))
    shutil.copy(path, os.path.join(dataset, "keep.spmask"))  # a mask at a URL, too
    mask_url = nginx.url + "/keep.spmask"
    for rank in range(2):
        local = PrunedSource(dataset, path, rank=rank, world_size=2, shuffle=True, seed=3)
        remote = PrunedWebDataset(nginx.url + "/manifest.json", mask_url, rank=rank, world_size=2, shuffle=True, seed=3)
        loader = torch.utils.data.DataLoader(remote, batch_size=None, num_workers=2)
        got = sorted(s["__key__"] for s in loader)
        want = sorted(s["__key__"] for s in torch.utils.data.DataLoader(local, batch_size=None, num_workers=2))
        assert got == want and len(got) == len(set(got))


@pytest.mark.integration
@needs_nginx
def test_http_map_style_and_tarfile_stage(dataset, nginx):
    keep = _mask(dataset, 0.5, "sample")
    local = PrunedMapDataset(dataset, keep)
    remote = PrunedMapDataset(dataset, keep, base=nginx.url)
    assert [remote[i]["bin"] for i in range(len(remote))] == [local[i]["bin"] for i in range(len(local))]
    batch = remote.__getitems__(list(range(0, len(remote), 3)))
    assert [s["__key__"] for s in batch] == [local[i]["__key__"] for i in range(0, len(local), 3)]
    m = Manifest.load(dataset, base=nginx.url)
    urls = [m.shard_path(k) for k in range(len(m.shards))]
    stage = pruned_tarfile_samples(dataset, keep, base=nginx.url)
    assert _read(stage(iter(urls))) == _read(PrunedSource(dataset, keep))


@pytest.mark.integration
@needs_nginx
def test_bytes_sent_never_include_pruned_ranges_beyond_the_waste_cap(dataset, nginx):
    keep = _mask(dataset, 0.7, "sample")
    m = Manifest.load(dataset)
    policy = FetchPolicy(depth=4, max_waste=0.05)
    nginx.clear_log()
    _read(PrunedSource(dataset, keep, base=nginx.url, fetch=policy))
    entries = [e for e in nginx.log_entries() if e["uri"].endswith(".tar") and e["method"] == "GET"]
    offsets = m.shard_offsets
    kept_bytes = pruned_in_ranges = sent = 0
    for k, entry in enumerate(m.shards):
        index = m.index(k)
        bits = keep.keep[offsets[k] : offsets[k + 1]]
        kept_bytes += int(index.data_bytes[bits].sum())
        pruned = [(int(a), int(b)) for a, b in zip(index.start[~bits], index.end[~bits])]
        for e in (e for e in entries if e["uri"] == "/" + entry.name):
            assert e["status"] == 206 and e["range"].startswith("bytes="), e
            lo, hi = (int(x) for x in e["range"][len("bytes=") :].split("-"))
            hi += 1
            sent += e["body_bytes"]
            inside = sum(max(0, min(b, hi) - max(a, lo)) for a, b in pruned)
            pruned_in_ranges += inside
            # a request starts at a kept sample and ends with one: pruned bytes only as gaps between them
            kept_starts = set(index.start[bits].tolist())
            kept_ends = set(index.end[bits].tolist())
            assert lo in kept_starts and hi in kept_ends, (lo, hi)
    assert sent == kept_bytes + pruned_in_ranges
    assert pruned_in_ranges <= policy.max_waste * kept_bytes * 1.0001


@pytest.mark.integration
@needs_nginx
def test_fault_proxy_loses_and_repeats_nothing(dataset, nginx):
    keep = _mask(dataset, 0.5, "sample")
    want = _read(PrunedSource(dataset, keep))
    proxy = FaultProxy(nginx.port, fail_every=4, drop_every=7, slow_every=5, slow_seconds=0.2)
    try:
        fast_retry = FetchPolicy(depth=4, max_gap=0)  # small requests: many chances to fail
        got = _read(PrunedSource(dataset, keep, base=proxy.url, fetch=fast_retry))
    finally:
        proxy.stop()
    assert got == want
    assert proxy.counts["503"] > 0 and proxy.counts["dropped"] > 0 and proxy.counts["slow"] > 0


@pytest.mark.integration
@needs_nginx
def test_changed_object_is_detected(dataset, nginx_on_a_copy):
    server, copy = nginx_on_a_copy
    keep = _mask(dataset, 0.0, "sample")
    shard = copy / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    index = Manifest.load(dataset).index(1)
    offset, size = index.members[5][0][1], index.members[5][0][2]
    data[offset + size // 2] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="shard-000001.tar"):
        _read(PrunedSource(dataset, keep, base=server.url))  # remote: verified by default
    shard.write_bytes(bytes(data[:-512]))
    with pytest.raises(IndexMismatchError, match="bytes but its index describes"):
        _read(PrunedSource(dataset, keep, base=server.url))


def test_unreachable_server_is_a_clear_error(dataset):
    from remote_servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=2, base_delay=0.01)
    obj = storage.RemoteObject(url + "/shard-000000.tar", retry=policy)
    with pytest.raises(RemoteError, match=r"127\.0\.0\.1.*shard-000000.tar.*failed after retries"):
        obj.read(0, 512)
    with pytest.raises(RemoteError, match="manifest.json"):
        Manifest.load(url + "/manifest.json")


def test_missing_extra_is_one_error(monkeypatch, dataset):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(MissingExtraError, match=r"streamprune\[remote\]"):
        Manifest.load("http://127.0.0.1:9/manifest.json")


@pytest.mark.integration
def test_s3_reads_equal_local(dataset, s3):
    keep = _mask(dataset, 0.6, "class")
    local = _read(PrunedSource(dataset, keep))
    assert _read(PrunedSource(s3 + "/manifest.json", keep)) == local
    assert _read(PrunedSource(dataset, keep, base=s3)) == local
    mapped = PrunedMapDataset(s3 + "/manifest.json", keep)
    assert [mapped[i]["__key__"] for i in range(len(mapped))] == [k for k, _, _ in local]


@pytest.mark.integration
def test_s3_bad_credentials_are_a_clear_error(dataset, s3):
    from moto import settings

    saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # moto checks credentials from now on
    try:
        options = {"key": "AKIAWRONGWRONGWRONG1", "secret": "wrong"}
        with pytest.raises(RemoteError, match="access denied|403|InvalidAccessKeyId|Forbidden"):
            Manifest.load(s3 + "/manifest.json", storage_options=options)
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = saved


def test_plan_fetches_coalesces_within_budget(dataset):
    m = Manifest.load(dataset)
    index = m.index(0)
    order = np.arange(0, len(index), 2)  # every other sample: every gap is one sample
    kept = int(index.data_bytes[order].sum())
    assert len(plan_fetches(index, order, FetchPolicy(max_gap=0))) == len(order)
    plan = plan_fetches(index, order, FetchPolicy(max_gap=1 << 20, max_waste=0.05))
    fetched = sum(hi - lo for _, _, lo, hi in plan)
    assert kept < fetched <= kept * 1.05
    everything = plan_fetches(index, np.arange(len(index)), FetchPolicy(max_request=1 << 30))
    assert len(everything) == 1 and everything[0][2:] == (0, int(index.end[-1]))
    # covers each position once, in order
    assert [p for a, b, _, _ in plan for p in order[a:b]] == order.tolist()


@pytest.mark.integration
@needs_nginx
def test_index_urls_with_brace_pattern_records_etag(dataset, nginx, tmp_path):
    from click.testing import CliRunner

    from streamprune_cli.main import cli

    out = tmp_path / "idx"
    pattern = nginx.url + "/shard-{000000..000003}.tar"
    result = CliRunner().invoke(cli, ["index", pattern, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    m = Manifest.load(str(out))
    assert m.shard_path(0) == nginx.url + "/shard-000000.tar"
    marker = m.index(0).extra["object"]
    assert marker["etag"] and marker["url"] == nginx.url + "/shard-000000.tar"
    assert m.shards[0].sha256 == Manifest.load(dataset).shards[0].sha256
    keep = random_mask(m, 0.5, seed=2)
    from streamprune.masks import KeepMask

    assert _read(PrunedSource(m, keep)) == _read(PrunedSource(dataset, KeepMask(keep.keep, Manifest.load(dataset), {})))
    result = CliRunner().invoke(cli, ["inspect", nginx.url + "/manifest.json", "--base", nginx.url])
    assert result.exit_code == 0 and "shard" in result.output.lower(), result.output


@pytest.mark.integration
@needs_nginx
def test_replaced_object_fails_the_etag_check(dataset, nginx_on_a_copy, tmp_path):
    server, copy = nginx_on_a_copy
    from streamprune.remoteindex import index_remote_shards

    m = index_remote_shards([server.url + "/shard-{000000..000001}.tar"], str(tmp_path / "idx"), progress=False)
    shard = copy / "shard-000000.tar"
    os.utime(shard, (1, 1))  # same bytes, a new ETag (nginx: mtime-size)
    with pytest.raises(IndexMismatchError, match="ETag"):
        _read(PrunedSource(m))


@pytest.mark.integration
def test_s3_index_writes_manifest_last(dataset, s3):
    from streamprune.remoteindex import index_remote_shards

    m = index_remote_shards([s3 + "/shard-{000000..000003}.tar"], s3 + "/indexed", progress=False)
    assert m.path == s3 + "/indexed/manifest.json"
    loaded = Manifest.load(m.path)
    assert loaded.shard_path(1) == s3 + "/shard-000001.tar"
    assert _read(PrunedSource(loaded)) == _read(PrunedSource(dataset))


def test_local_reads_with_io_depth_equal_serial(dataset):
    keep = _mask(dataset, 0.8, "sample")
    assert _read(PrunedSource(dataset, keep, io_depth=8)) == _read(PrunedSource(dataset, keep))
    assert _read(PrunedSource(dataset, keep, io_depth=8, shuffle=True)) == _read(PrunedSource(dataset, keep, shuffle=True))


@pytest.mark.integration
def test_shard_to_s3_uploads_manifest_last_and_reads_back(dataset, s3, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from streamprune.writers import remote as remote_writer
    from streamprune_cli.main import cli

    src = tmp_path / "src.npz"
    rng = np.random.default_rng(0)
    np.savez(src, x=rng.integers(0, 255, size=(60, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 3, size=60))
    local = tmp_path / "local"
    write_shards(str(src), str(local), samples_per_shard=16, progress=False)
    url = s3 + "/written"
    uploads = []
    real_put = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda a, b, o=None: (uploads.append(b), real_put(a, b, o)))
    result = CliRunner().invoke(cli, ["shard", str(src), url, "--samples-per-shard", "16", "-q"])
    assert result.exit_code == 0, result.output
    assert uploads[-1] == url + "/manifest.json" and len(uploads) == 1 + 4 * 3  # shard, index, companion each
    keep = random_mask(Manifest.load(str(local)), 0.5, seed=3)
    got = [(s["__key__"], s["cls"]) for s in PrunedSource(url + "/manifest.json", keep)]
    assert got == [(s["__key__"], s["cls"]) for s in PrunedSource(str(local), keep)] and got

    # a run that fails mid-way (the third upload) leaves no manifest at the URL
    calls = []

    def failing(a, b, o=None):
        calls.append(b)
        if len(calls) == 3:
            raise RemoteError("injected upload failure", url=b)
        real_put(a, b, o)

    monkeypatch.setattr(storage, "put_file", failing)
    with pytest.raises(RemoteError, match="injected"):
        remote_writer.write_shards_to(str(src), url, samples_per_shard=16, progress=False, overwrite=True)
    assert not storage.exists(url + "/manifest.json")


@pytest.mark.integration
@needs_nginx
def test_main_process_reads_again_after_forked_workers_exit(dataset, nginx):
    # A forked DataLoader worker used to finalize the parent's inherited fsspec filesystem,
    # unregistering the parent's pooled sockets from the epoll set they share: the parent's
    # next request on one hung until aiohttp's 300 s timeout.
    import threading

    url = nginx.url + "/manifest.json"
    ds = PrunedSource(url, None)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork")
    assert len(list(loader)) == Manifest.load(dataset).num_samples
    done = []
    reader = threading.Thread(target=lambda: done.append(storage.read_bytes(url)), daemon=True)
    reader.start()
    reader.join(60)
    assert done and done[0] == open(os.path.join(dataset, "manifest.json"), "rb").read()


class _GatedSource:
    """64 samples (4 shards of 16, unshuffled); reading shard ``gate_shard``'s first sample waits for ``gate``.

    ``events`` records ``("read", shard)`` at each shard's first sample, so a test can place
    the uploads among the shards' writing.
    """

    class_names = ["0", "1", "2"]

    def __init__(self, gate, gate_shard, events):
        self.samples = [(key, files, label % 3) for key, files, label in make_samples(64, seed=4)]
        self.gate, self.gate_shard, self.events = gate, gate_shard, events
        self.opened = False

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if i % 16 == 0:
            self.events.append(("read", i // 16))
            if i // 16 == self.gate_shard and not self.opened:
                self.opened = True
                self.events.append(("gate", self.gate.wait(120)))  # a deadlock guard, not a timing check
        return self.samples[i]


@pytest.mark.integration
def test_shard_to_s3_uploads_each_shard_while_later_ones_are_written(s3, tmp_path, monkeypatch):
    import threading

    from streamprune.writers.remote import write_shards_to

    url = s3 + "/overlap"
    events, gate = [], threading.Event()
    real_put = storage.put_file

    def put(local, target, options=None):
        if target.endswith(".tar"):  # the previous shard's local copy is gone once it was uploaded (one upload thread)
            previous = os.path.join(os.path.dirname(local), "shard-{:06d}.tar".format(int(target[-10:-4]) - 1))
            events.append(("local copy of the previous shard", os.path.exists(previous)))
        real_put(local, target, options)
        events.append(("put", storage.basename(target)))
        if target.endswith("shard-000000.tar"):
            gate.set()

    monkeypatch.setattr(storage, "put_file", put)
    source = _GatedSource(gate, 3, events)
    m = write_shards_to(source, url, tmp_dir=str(tmp_path), upload_threads=1, samples_per_shard=16, shuffle=False,
                        progress=False)
    # shard 0 was in the bucket before shard 3 was read, and the manifest went up last
    assert events.index(("put", "shard-000000.tar")) < events.index(("read", 3)) and ("gate", True) in events
    assert [e for e in events if e[0] == "put"][-1] == ("put", "manifest.json")
    assert ("local copy of the previous shard", True) not in events
    assert os.listdir(tmp_path) == []  # the temporary directory is gone
    local = write_shards(source.samples, tmp_path / "local", samples_per_shard=16, shuffle=False, progress=False,
                         class_names=source.class_names)
    assert m.path == url + "/manifest.json" and [s.to_json() for s in m.shards] == [s.to_json() for s in local.shards]
    assert _read(PrunedSource(m)) == _read(PrunedSource(local))


@pytest.mark.integration
def test_shard_to_s3_failed_shard_upload_names_it_and_leaves_no_manifest(s3, tmp_path, monkeypatch):
    from streamprune.writers.remote import write_shards_to

    url = s3 + "/failing"
    storage.write_bytes(url + "/manifest.json", b"{}")  # a finished-looking dataset from an earlier run
    real_put = storage.put_file
    puts = []

    def put(local, target, options=None):
        puts.append(storage.basename(target))
        if target.endswith("shard-000001.tar.index.json"):
            raise OSError("injected: connection reset")
        real_put(local, target, options)

    monkeypatch.setattr(storage, "put_file", put)
    samples = [(key, files, label % 3) for key, files, label in make_samples(64, seed=5)]
    with pytest.raises(RemoteError, match=r"shard shard-000001\.tar: .* to s3://bucket/ds/failing/shard-000001\.tar\.index\.json "
                                          r"failed: injected") as info:
        write_shards_to(samples, url, tmp_dir=str(tmp_path), samples_per_shard=16, shuffle=False, progress=False, overwrite=True)
    assert info.value.url == url + "/shard-000001.tar.index.json"
    assert not storage.exists(url + "/manifest.json") and "manifest.json" not in puts
    assert os.listdir(tmp_path) == []


# --- If-Match: an object replaced after its shard was opened ----------------------------------


@pytest.mark.integration
@needs_nginx
def test_object_replaced_mid_epoch_fails_its_if_match(dataset, nginx_on_a_copy, tmp_path):
    from streamprune.remoteindex import index_remote_shards
    from streamprune.storage import ObjectChangedError

    server, copy = nginx_on_a_copy
    m = index_remote_shards([server.url + "/shard-000000.tar"], str(tmp_path / "idx"), progress=False)
    one_by_one = FetchPolicy(depth=1, max_request=1, max_inflight_bytes=1)  # a request per sample
    samples = iter(PrunedSource(m, fetch=one_by_one))
    next(samples)
    shard = copy / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[::-1])  # replaced: same size, other bytes
    os.utime(shard, (2_000_000_000, 2_000_000_000))  # nginx's ETag is mtime-size: make sure it moves
    server.clear_log()
    with pytest.raises(ObjectChangedError, match=r"shard-000000\.tar.*412 Precondition Failed") as info:
        list(samples)
    assert isinstance(info.value, IndexMismatchError)
    assert [e["status"] for e in server.log_entries() if e["status"] == 412] == [412]  # not retried


def _s3_upload(dataset, shard, key):
    """One of ``dataset``'s shards put at ``s3://bucket/<key>``; the boto3 client and its bytes."""
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    with open(os.path.join(dataset, shard), "rb") as fh:
        data = fh.read()
    client.put_object(Bucket="bucket", Key=key, Body=data)
    return client, data


@pytest.mark.integration
def test_s3_object_replaced_after_open_fails_its_if_match(dataset, s3):
    from streamprune.remoteindex import index_remote_shards
    from streamprune.storage import ObjectChangedError

    client, data = _s3_upload(dataset, "shard-000000.tar", "replaced/shard-000000.tar")
    url = "s3://bucket/replaced/shard-000000.tar"
    m = index_remote_shards([url], "s3://bucket/replaced", progress=False)
    samples = iter(PrunedSource(m, fetch=FetchPolicy(depth=1, max_request=1, max_inflight_bytes=1)))
    assert next(samples)["__key__"] == Manifest.load(dataset).index(0).keys[0]  # reads with IfMatch pass
    obj = storage.RemoteObject(url)
    assert obj.native_async  # the lean client's IfMatch (fsspec's is the fallback)
    obj.expect_etag(obj.etag)
    client.put_object(Bucket="bucket", Key="replaced/shard-000000.tar", Body=data[::-1])  # a new object, same size
    with pytest.raises(ObjectChangedError, match=r"s3://bucket/replaced/shard-000000\.tar.*412"):
        list(samples)
    with pytest.raises(ObjectChangedError):
        obj.read(0, 512)
    assert obj.requests == 1  # a failed precondition is not retried


def test_a_weak_etag_is_not_sent_as_a_precondition():
    obj = storage.RemoteObject("http://127.0.0.1:9/shard.tar")
    obj.expect_etag('W/"5d41-1"')  # If-Match compares strongly: a weak ETag would fail every read
    assert obj.if_match == ""
    obj.expect_etag('"5d41-1"')
    assert obj.if_match == '"5d41-1"'


# --- commands that open a manifest: --base and --storage-options -----------------------------


def _cli(*args):
    from click.testing import CliRunner

    from streamprune_cli.main import cli

    return CliRunner().invoke(cli, [os.fspath(a) for a in args])


@pytest.mark.integration
@needs_nginx
def test_mask_and_score_read_a_manifest_url_or_a_base(dataset, nginx, tmp_path):
    from streamprune.masks import MaskFile

    url = nginx.url + "/manifest.json"
    want = random_mask(Manifest.load(dataset), 0.5, seed=3).keep
    for name, where in (("url", [url]), ("base", [dataset, "--base", nginx.url])):
        r = _cli("mask", *where, "--random", "--ratio", "0.5", "--seed", "3", "--out", tmp_path / f"{name}.spmask")
        assert r.exit_code == 0, r.output
        assert np.array_equal(MaskFile(str(tmp_path / f"{name}.spmask")).to_bool(), want)
    r = _cli("score", url, "--method", "random-classes", "--ratio", "0.5", "--out", tmp_path / "s", "-q")
    assert r.exit_code == 0, r.output
    local = _cli("score", dataset, "--method", "random-classes", "--ratio", "0.5", "--out", tmp_path / "l", "-q")
    assert local.exit_code == 0, local.output
    assert np.array_equal(MaskFile(str(tmp_path / "s" / "random-classes-0.5.spmask")).to_bool(),
                          MaskFile(str(tmp_path / "l" / "random-classes-0.5.spmask")).to_bool())
    for command in (["mask", url, "--random", "--ratio", "0.5", "--out", tmp_path / "x.spmask"],
                    ["score", url, "--method", "random-classes", "--ratio", "0.5", "--out", tmp_path / "x"],
                    ["inspect", url], ["train-surrogate", url, "--model", "resnet18", "--out", tmp_path / "c.pt"],
                    ["dynamics", url, "--model", "resnet18", "--epochs", "1", "--out", tmp_path / "d"],
                    ["index", nginx.url + "/shard-000000.tar", "--out", tmp_path / "i"]):
        r = _cli(*command, "--storage-options", "[1]")
        assert r.exit_code == 2 and "--storage-options" in r.output and "JSON object" in r.output, (command, r.output)


def _uid_samples(n=24):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        payload = rng.bytes(int(rng.integers(500, 4000))) if i != 17 else out[3][1]["bin"]  # 17 repeats 3's data
        uid = f"{i:032x}"
        out.append((f"u{i:04d}", {"bin": payload, "uid": uid.encode()} if i != 17 else {"bin": payload, "uid": out[3][1]["uid"]}, i % 2))
    return out


@pytest.mark.integration
@needs_nginx
def test_base_serves_the_shards_to_uid_keys_and_exact_dedup(tmp_path):
    from streamprune.scores import ScoreFile

    ds = tmp_path / "ds"
    write_shards(_uid_samples(), ds, samples_per_shard=8, shuffle=False, progress=False)
    meta = tmp_path / "meta"  # the manifest and indexes alone: shards only behind --base
    shutil.copytree(ds, meta, ignore=shutil.ignore_patterns("*.tar"))
    server = Nginx(str(ds), str(tmp_path / "ng"))
    try:
        keys = tmp_path / "uids.txt"
        keys.write_text("".join(f"{i:032x}\n" for i in (1, 2, 9, 20)))
        r = _cli("mask", meta, "--keys", keys, "--out", tmp_path / "k.spmask")
        assert r.exit_code != 0 and "shard-000000.tar" in r.output  # without --base the shards are missing
        server.clear_log()
        r = _cli("mask", meta, "--keys", keys, "--base", server.url, "--out", tmp_path / "k.spmask")
        assert r.exit_code == 0, r.output
        assert "4 of 4 listed ids found (by uid)" in r.output and "kept 4 of 24" in r.output
        assert any(e["uri"].endswith(".tar") and e["status"] == 206 for e in server.log_entries())
        r = _cli("score", meta, "--method", "exact-dedup", "--ratio", "0", "--base", server.url, "--out", tmp_path / "dd", "-q")
        assert r.exit_code == 0, r.output
        params = ScoreFile.load(str(tmp_path / "dd" / "scores.json")).params
        assert params["duplicates"] == 1 and params["bytes_read"] > 0, params
    finally:
        server.stop()


@pytest.mark.integration
@needs_nginx
def test_train_surrogate_and_dynamics_read_a_manifest_url(tmp_path):
    src = tmp_path / "ds.npz"
    rng = np.random.default_rng(2)
    np.savez(src, images=rng.integers(0, 256, (24, 8, 8), dtype=np.uint8), labels=np.arange(24) % 3)
    write_shards(str(src), str(tmp_path / "data"), samples_per_shard=8, progress=False)
    server = Nginx(str(tmp_path / "data"), str(tmp_path / "ng"))
    try:
        url = server.url + "/manifest.json"
        server.clear_log()
        r = _cli("train-surrogate", url, "--model", "resnet18", "--input-size", "8", "--batch-size", "8", "--max-steps", "2",
                 "--out", tmp_path / "c.pt", "-q")
        assert r.exit_code == 0 and os.path.exists(tmp_path / "c.pt"), r.output
        assert any(e["status"] == 206 for e in server.log_entries())
        server.clear_log()
        r = _cli("dynamics", tmp_path / "data", "--base", server.url, "--model", "resnet18", "--input-size", "8",
                 "--batch-size", "8", "--epochs", "1", "--out", tmp_path / "dyn", "-q")
        assert r.exit_code == 0, r.output
        assert "recorded 24 of 24 samples" in r.output
        assert {e["uri"] for e in server.log_entries() if e["status"] == 206} >= {f"/shard-{k:06d}.tar" for k in range(3)}
    finally:
        server.stop()


# --- remote indexing: the ranged header walk, shards in parallel -------------------------------


def _same_index_but_checksums(a, b):
    assert a.keys == b.keys and a.shard == b.shard and a.shard_bytes == b.shard_bytes
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end)
    assert [list(map(tuple, g)) for g in a.members] == [list(map(tuple, g)) for g in b.members]
    assert a.extra["object"] == b.extra["object"]


def _big_member_samples(n=30, size=100_000, seed=5):
    rng = np.random.default_rng(seed)
    return [(f"b{i:04d}", {"bin": rng.bytes(size), "txt": f"sample {i}".encode()}, i % 3) for i in range(n)]


@pytest.mark.integration
@needs_nginx
def test_no_checksum_index_walks_headers_by_ranged_reads_only(tmp_path):
    from click.testing import CliRunner

    from streamprune.remoteindex import index_remote_shards
    from streamprune_cli.main import cli

    big = tmp_path / "big"
    write_shards(_big_member_samples(), big, samples_per_shard=15, shuffle=False, progress=False)
    server = Nginx(str(big), str(tmp_path / "ng"))
    try:
        pattern = server.url + "/shard-{000000..000001}.tar"
        streamed = index_remote_shards([pattern], str(tmp_path / "streamed"), progress=False)
        server.clear_log()
        result = CliRunner().invoke(cli, ["index", pattern, "--out", str(tmp_path / "ranged"), "--no-checksum", "-q"])
        assert result.exit_code == 0, result.output
        log = [e for e in server.log_entries() if e["uri"].endswith(".tar")]
        ranged = Manifest.load(str(tmp_path / "ranged"))
        for k, entry in enumerate(ranged.shards):
            size = os.path.getsize(big / os.path.basename(entry.name))
            gets = [e for e in log if e["uri"] == "/" + os.path.basename(entry.name) and e["method"] == "GET"]
            assert gets and all(e["status"] == 206 for e in gets)  # ranged reads only, never the whole object
            assert sum(e["body_bytes"] for e in gets) < size / 8
            _same_index_but_checksums(ranged.index(k), streamed.index(k))
            assert ranged.index(k).checksums is None and not entry.sha256 and streamed.index(k).checksums is not None
        keep = random_mask(ranged, 0.5, seed=1)
        from streamprune.masks import KeepMask

        local = Manifest.load(str(big))
        assert _read(PrunedSource(ranged, keep)) == _read(PrunedSource(local, KeepMask(keep.keep, local, {})))
    finally:
        server.stop()


@pytest.mark.integration
@needs_nginx
def test_ranged_walk_of_small_members_equals_streaming_in_few_requests(dataset, nginx, tmp_path):
    from streamprune.remoteindex import index_remote_shards

    nginx.clear_log()
    m = index_remote_shards([nginx.url + "/shard-{000000..000003}.tar"], str(tmp_path / "r"), checksum=False,
                            sample_checksums=False, progress=False)
    gets = [e for e in nginx.log_entries() if e["uri"].endswith(".tar") and e["method"] == "GET"]
    local = Manifest.load(dataset)
    assert len(gets) < local.num_samples / 10  # windows of many small samples, not a request per header
    for k in range(len(m.shards)):
        want = local.index(k)  # the index written beside the shard: a relative name, no object record
        want.shard, want.extra["object"] = m.index(k).shard, m.index(k).extra["object"]
        _same_index_but_checksums(m.index(k), want)


def test_ranged_walk_reads_labels_and_refuses_unlabelled_samples(tmp_path):
    from streamprune.errors import LabelError
    from streamprune.tarindex import RangedView, index_tar, index_tar_ranges

    write_shards(_big_member_samples(n=6), tmp_path / "ds", samples_per_shard=6, shuffle=False, progress=False)
    path = str(tmp_path / "ds" / "shard-000000.tar")
    data = open(path, "rb").read()
    got = index_tar_ranges(RangedView(lambda a, b: data[a:b], len(data)), "s.tar", label_ext="cls")
    assert got.labels.tolist() == index_tar(path, label_ext="cls").labels.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(LabelError, match="s.tar.*b0000.*no .txt2"):
        index_tar_ranges(RangedView(lambda a, b: data[a:b], len(data)), "s.tar", label_ext="txt2")


@pytest.mark.integration
@needs_nginx
def test_parallel_remote_index_equals_serial(dataset, nginx, tmp_path):
    from streamprune.engine import LocalEngine, ThreadEngine
    from streamprune.remoteindex import index_remote_shards

    pattern = nginx.url + "/shard-{000000..000003}.tar"
    serial = index_remote_shards([pattern], str(tmp_path / "serial"), progress=False, workers=1)
    for name, engine in (("threads", ThreadEngine(4)), ("processes", LocalEngine(2))):
        m = index_remote_shards([pattern], str(tmp_path / name), progress=False, engine=engine)
        assert engine.last_report.workers == (4 if name == "threads" else 2) and sorted(engine.last_report.ran) == [0, 1, 2, 3]
        assert [s.to_json() for s in m.shards] == [s.to_json() for s in serial.shards]


# --- FFCV stays local ---------------------------------------------------------------------------


@pytest.mark.integration
@needs_nginx
def test_remote_beton_is_a_clear_error(tmp_path):
    pytest.importorskip("ffcv")
    from streamprune.errors import StreamPruneError
    from streamprune.readers.ffcv import pruned_ffcv_loader
    from streamprune.writers import write_beton

    src = tmp_path / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(src, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), labels=np.arange(16) % 2)
    local = write_beton(str(src), tmp_path / "beton", write_mode="raw", page_size=1 << 21, progress=False)
    server = Nginx(str(tmp_path / "beton"), str(tmp_path / "ng"))
    try:
        where = re.escape(server.url + "/shard-000000.beton")
        for manifest in (server.url + "/manifest.json", Manifest.load(local.path, base=server.url)):
            with pytest.raises(StreamPruneError, match=where + ".*local disk only"):
                pruned_ffcv_loader(manifest, batch_size=4)
        r = _cli("index", server.url + "/shard-000000.beton", "--out", tmp_path / "idx")
        assert r.exit_code == 1 and server.url + "/shard-000000.beton" in r.output and "local disk only" in r.output, r.output
        r = _cli("shard", src, server.url + "/out", "--format", "beton")  # the writer's rule: a library error, exit 1
        assert r.exit_code == 1 and server.url + "/out" in r.output and "local disk only" in r.output, r.output
    finally:
        server.stop()


@pytest.mark.integration
@needs_nginx
def test_map_style_batch_is_planned_one_request_per_run_of_adjacent_samples(dataset, nginx):
    local = PrunedMapDataset(dataset)
    remote = PrunedMapDataset(dataset, base=nginx.url)
    batch = [7, 3, 4, 5, 6, 3, 60, 61]  # shard 0's 3-7 adjacent (3 twice), shard 1's 60-61 adjacent
    nginx.clear_log()
    got = remote.__getitems__(batch)
    assert [s["__key__"] for s in got] == [local[i]["__key__"] for i in batch]
    assert all(g["bin"] == local[i]["bin"] for g, i in zip(got, batch))
    assert got[1] is not got[5]  # a sample asked twice comes back as two dicts
    data = [e for e in nginx.log_entries() if e["uri"].endswith(".tar") and e["method"] == "GET"]
    assert len(data) == 2, data  # shards of 40 samples: 3-7 in shard 0, 60-61 in shard 1


# --- the lean client (streamprune.rangeclient): submit, preconditions, fork, signatures --------


def _no_executor():
    class Refusing:
        def submit(self, *args, **kwargs):
            raise AssertionError("the lean client must not use the caller's executor")

    return Refusing()


def _many_ranges(size, count, seed):
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, size - 1, size=count)
    lengths = rng.integers(1, 40_000, size=count)
    ranges = [(int(a), int(min(size, a + n))) for a, n in zip(starts, lengths)]
    return ranges + [(0, size), (size - 1, size), (0, 1)]


@pytest.mark.integration
@needs_nginx
def test_submit_many_concurrent_ranges_returns_exactly_the_file_bytes(dataset, nginx):
    name = "shard-000001.tar"
    data = open(os.path.join(dataset, name), "rb").read()
    obj = storage.RemoteObject(nginx.url + "/" + name)
    assert obj.native_async and obj.size == len(data)
    obj.expect_etag(obj.etag)  # every read conditional, as a reader sends them
    ranges = _many_ranges(len(data), 600, seed=3)
    nginx.clear_log()
    futures = [obj.submit(a, b, _no_executor()) for a, b in ranges]  # all at once: the client keeps them in flight
    got = [f.result(120) for f in futures]
    assert all(isinstance(g, bytes) and g == data[a:b] for g, (a, b) in zip(got, ranges))
    assert obj.requests == len(ranges) and obj.bytes_read == sum(b - a for a, b in ranges)
    served = [e for e in nginx.log_entries() if e["uri"] == "/" + name and e["method"] == "GET"]
    assert len(served) == len(ranges) and {e["status"] for e in served} <= {200, 206}
    # read() from many threads at once goes the same way
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(lambda r: obj.read(*r), ranges[:100])) == [data[a:b] for a, b in ranges[:100]]


@pytest.mark.integration
def test_s3_submit_many_ranges_and_metadata_equal_fsspec(dataset, s3):
    name = "shard-000002.tar"
    data = open(os.path.join(dataset, name), "rb").read()
    obj = storage.RemoteObject(f"{s3}/{name}")
    assert obj.native_async
    fs = obj.fs  # fsspec's view of the same object: the ETag an index recorded through it must still match
    info = fs.info(obj._path)  # noqa: SLF001 - the path fsspec knows the object by
    assert obj.size == info["size"] == len(data) and obj.etag == storage.info_etag(info)
    obj.expect_etag(obj.etag)
    ranges = _many_ranges(len(data), 60, seed=4)
    futures = [obj.submit(a, b, _no_executor()) for a, b in ranges]
    assert [f.result(120) for f in futures] == [data[a:b] for a, b in ranges]


@pytest.mark.integration
@needs_nginx
def test_http_metadata_equals_fsspec(dataset, nginx):
    obj = storage.RemoteObject(nginx.url + "/shard-000000.tar")
    info = obj.fs.info(obj._path)  # noqa: SLF001 - the path fsspec knows the object by
    assert obj.native_async and obj.size == info["size"] and obj.etag == storage.info_etag(info)


@pytest.mark.integration
@needs_nginx
def test_submit_if_match_412_is_object_changed_not_retried(dataset, nginx_on_a_copy, tmp_path):
    from streamprune.storage import ObjectChangedError

    server, copy = nginx_on_a_copy
    obj = storage.RemoteObject(server.url + "/shard-000002.tar")
    obj.expect_etag(obj.etag)
    assert obj.submit(0, 512, _no_executor()).result() == (copy / "shard-000002.tar").read_bytes()[:512]
    os.utime(copy / "shard-000002.tar", (2_000_000_000, 2_000_000_000))  # a new ETag
    server.clear_log()
    before = obj.requests
    with pytest.raises(ObjectChangedError, match=r"shard-000002\.tar: bytes 512-1024: .*412 Precondition Failed"):
        obj.submit(512, 1024, _no_executor()).result()
    assert obj.requests == before + 1
    assert [e["status"] for e in server.log_entries()] == [412]


@pytest.mark.integration
def test_s3_submit_if_match_412_is_object_changed(dataset, s3):
    from streamprune.storage import ObjectChangedError

    client, data = _s3_upload(dataset, "shard-000003.tar", "lean/replaced.tar")
    obj = storage.RemoteObject("s3://bucket/lean/replaced.tar")
    assert obj.native_async
    obj.expect_etag(obj.etag)
    assert obj.submit(100, 600, _no_executor()).result() == data[100:600]
    client.put_object(Bucket="bucket", Key="lean/replaced.tar", Body=data[::-1])
    with pytest.raises(ObjectChangedError, match=r"s3://bucket/lean/replaced\.tar: bytes 0-512: .*412"):
        obj.submit(0, 512, _no_executor()).result()
    assert obj.requests == 2


@pytest.mark.integration
def test_s3_signatures_are_checked_and_secrets_stay_out_of_messages(dataset, s3, caplog):
    import logging

    import boto3
    from moto import settings

    iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    iam.create_user(UserName="lean-reader")
    iam.put_user_policy(UserName="lean-reader", PolicyName="read",
                        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}')
    key = iam.create_access_key(UserName="lean-reader")["AccessKey"]
    data = open(os.path.join(dataset, "shard-000000.tar"), "rb").read()
    saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # moto checks every signature from now on
    try:
        good = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        obj = storage.RemoteObject(f"{s3}/shard-000000.tar", good)
        assert obj.native_async and obj.size == len(data)
        assert obj.read(1000, 3000) == data[1000:3000]
        caplog.set_level(logging.DEBUG)
        wrong = {"key": key["AccessKeyId"], "secret": "not-the-secret-" + key["SecretAccessKey"][:8]}
        obj = storage.RemoteObject(f"{s3}/shard-000000.tar", wrong, retry=RetryPolicy(attempts=2, base_delay=0.01))
        with pytest.raises(RemoteError, match=r"access denied \(HTTP 403 .*SignatureDoesNotMatch.*check the credentials") as info:
            obj.read(0, 100)
        text = str(info.value) + "\n".join(r.getMessage() for r in caplog.records)
        for secret in (key["SecretAccessKey"], wrong["secret"]):
            assert secret not in text
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = saved


def _child_reads(obj, ranges, data, queue):
    try:
        got = [obj.submit(a, b, _no_executor()) for a, b in ranges]
        queue.put(all(f.result(60) == data[a:b] for f, (a, b) in zip(got, ranges)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        queue.put(repr(exc))


@pytest.mark.integration
@needs_nginx
def test_forked_child_reads_while_the_parent_keeps_reading(dataset, nginx):
    import multiprocessing
    import threading
    import time

    name = "shard-000003.tar"
    data = open(os.path.join(dataset, name), "rb").read()
    obj = storage.RemoteObject(nginx.url + "/" + name)
    ranges = _many_ranges(len(data), 200, seed=5)
    assert [f.result() for f in [obj.submit(a, b, None) for a, b in ranges]] == [data[a:b] for a, b in ranges]
    stop, errors, rounds = threading.Event(), [], [0]

    def parent_reads():
        while not stop.is_set():
            futures = [obj.submit(a, b, None) for a, b in ranges[:64]]
            if [f.result(60) for f in futures] != [data[a:b] for a, b in ranges[:64]]:
                errors.append("wrong bytes in the parent")
            rounds[0] += 1

    reader = threading.Thread(target=parent_reads, daemon=True)
    reader.start()
    ctx = multiprocessing.get_context("fork")
    try:
        for _ in range(3):  # children forked while the parent's connections are busy; each exits, closing its copies
            queue = ctx.Queue()
            child = ctx.Process(target=_child_reads, args=(obj, ranges, data, queue))
            child.start()
            assert queue.get(timeout=120) is True
            child.join(60)
            assert child.exitcode == 0
        seen = rounds[0]
        deadline = time.monotonic() + 30
        while rounds[0] < seen + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rounds[0] >= seen + 3, "the parent stopped reading after its children exited"
    finally:
        stop.set()
        reader.join(60)
    assert not errors and not reader.is_alive()


@pytest.mark.integration
@needs_nginx
def test_pickled_remote_object_reads_in_a_spawned_process(dataset, nginx):
    import multiprocessing
    import pickle

    name = "shard-000000.tar"
    data = open(os.path.join(dataset, name), "rb").read()
    obj = storage.RemoteObject(nginx.url + "/" + name)
    obj.expect_etag(obj.etag)
    assert obj.read(0, 10) == data[:10]
    copy = pickle.loads(pickle.dumps(obj))
    assert copy.read(10, 20) == data[10:20] and copy.if_match == obj.if_match
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(obj, [(0, 512), (100, 9000)], data, queue))
    child.start()
    assert queue.get(timeout=120) is True
    child.join(60)
