"""Where bytes live (streamprune.storage): names joined against a base, which locations lie within a
prefix, whole-object and ranged reads of local files and fsspec URLs, and their errors.

The lean HTTP/S3 client is tests/readers/test_rangeclient.py; reads from real servers (nginx,
moto) are tests/readers/test_remote.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

from streamprune import storage
from streamprune.errors import StorageError
from streamprune.storage import LocalReadError, RetryPolicy

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.mark.parametrize(
    "base, name, joined",
    [
        ("/data/ds", "shard-0.tar", "/data/ds/shard-0.tar"),
        ("/data/ds", "/elsewhere/x.tar", "/elsewhere/x.tar"),  # an absolute name as it is
        ("file:///data/ds", "a/b.tar", "/data/ds/a/b.tar"),
        ("https://host/ds/", "/shard-0.tar", "https://host/ds/shard-0.tar"),  # one slash between
        ("s3://bucket/ds", "sub/x.tar", "s3://bucket/ds/sub/x.tar"),
        ("/data/ds", "s3://bucket/x.tar", "s3://bucket/x.tar"),  # a URL name as it is
    ],
)
def test_join(base, name, joined):
    assert storage.join(base, name) == joined


@pytest.mark.parametrize(
    "location, prefix, inside",
    [
        ("https://host/ds/a.tar", "https://host/ds", True),
        ("https://host/ds", "https://host/ds/", True),  # the prefix itself
        ("https://host/dsx/a.tar", "https://host/ds", False),  # a sibling sharing the prefix's letters
        ("https://host/ds/../x", "https://host/ds", False),
        ("https://host/ds/%2e%2e/x", "https://host/ds", False),  # dot segments percent-encoded
        ("https://HOST/ds/a", "https://host/ds", True),  # host names compare in any case
        ("https://user:pw@host/ds/a", "https://host/ds", True),  # userinfo is not the host
        ("https://host:8443/ds/a", "https://host/ds", False),  # another port
        ("http://host/ds/a", "https://host/ds", False),  # another scheme
        ("https://host:x/ds/a", "https://host/ds", False),  # a port that is not a number
        ("/data/ds/a/../b.tar", "/data/ds", True),
        ("/data/ds/../x.tar", "/data/ds", False),
        ("/data/ds", "https://host/data/ds", False),  # a path is never under a URL, nor the reverse
    ],
)
def test_within(location, prefix, inside):
    assert storage.within(location, prefix) is inside


def test_location_helpers():
    assert storage.is_remote("S3://b/k") and not storage.is_remote("FILE:///x") and not storage.is_remote("/x")
    assert storage.is_file_url("Local://x") and not storage.is_file_url("/x")
    assert storage.local_path("file:///a/b") == "/a/b" and storage.local_path("/a/b") == "/a/b"
    assert storage.parent("https://host/ds/a.tar") == "https://host/ds" and storage.basename("https://host/ds/a.tar/") == "a.tar"
    assert storage.expand_urls(["s-{0..2}.tar", "x.tar"]) == ["s-0.tar", "s-1.tar", "s-2.tar", "x.tar"]


def test_local_objects_read_byte_ranges_and_name_the_file_when_short(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    obj = storage.open_object(f"file://{path}")
    assert isinstance(obj, storage.LocalObject) and obj.size == len(DATA)
    assert obj.read(100, 356) == DATA[100:356]
    with pytest.raises(LocalReadError, match=rf"{path}: bytes 10000-10300: read 240 of 300 \(file shorter\)") as info:
        obj.read(10_000, 10_300)
    assert isinstance(info.value, StorageError) and isinstance(info.value, OSError)
    obj.close()
    assert storage.object_info(str(path)) == {"size": len(DATA), "etag": ""}
    with pytest.raises(FileNotFoundError):
        storage.open_object(str(tmp_path / "missing"))


def test_local_whole_object_helpers(tmp_path):
    path = str(tmp_path / "sub" / "obj")
    os.makedirs(os.path.dirname(path))
    assert not storage.exists(path)
    storage.write_bytes(path, DATA)
    assert storage.exists(path) and storage.read_bytes(path) == DATA
    assert b"".join(storage.iter_object(path, block=1000)) == DATA
    assert storage.local_copy(path) == path  # local: no copy
    storage.remove(path)
    storage.remove(path)  # a missing one is not an error
    assert not storage.exists(path)
    assert os.listdir(os.path.dirname(path)) == []  # the atomic write left no temporary file


def test_fsspec_objects_read_write_and_copy(tmp_path):
    pytest.importorskip("fsspec")
    url = "memory://storage-tests/obj"
    storage.write_bytes(url, DATA)
    assert storage.exists(url) and storage.read_bytes(url) == DATA
    assert storage.object_info(url)["size"] == len(DATA)
    copy = storage.local_copy(url, cache_dir=str(tmp_path))
    assert os.path.dirname(copy) == str(tmp_path) and open(copy, "rb").read() == DATA
    assert storage.local_copy(url, cache_dir=str(tmp_path)) == copy  # downloaded once per version
    storage.write_bytes(url, DATA[:100])  # replaced: another size, another copy
    assert open(storage.local_copy(url, cache_dir=str(tmp_path)), "rb").read() == DATA[:100]
    storage.remove(url)
    assert not storage.exists(url)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(url)


def test_retry_backoff_is_capped_full_jitter():
    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.3)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2


def test_memory_scheme_submits_on_the_executor():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/lean-fallback/obj", DATA)
    obj = storage.RemoteObject("memory://lean-fallback/obj")
    assert not obj.native_async
    used = []

    class Recording(cf.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            used.append(args)
            return super().submit(fn, *args, **kwargs)

    with Recording(2) as pool:
        assert obj.submit(7, 700, pool).result() == DATA[7:700]
    assert used == [(7, 700)]
    local = storage.LocalObject(__file__)
    assert not local.native_async
    with open(__file__, "rb") as fh:
        assert local.submit(0, 50, cf.ThreadPoolExecutor(1)).result() == fh.read(50)
    local.close()
