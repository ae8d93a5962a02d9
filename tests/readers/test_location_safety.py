"""A manifest from a URL names only its own data; credentials never reach messages, logs or files.

A manifest served over HTTP (nginx, 127.0.0.1) that names an absolute local path, a ``file://``
URL, another host or a ``..`` out of its prefix is refused with ``UnsafeLocationError`` unless
the caller opts in; relative names, URLs on the manifest's own host and the caller's ``base``
keep working. URLs with userinfo are redacted in errors and log lines, and the files a remote
write or index produces hold neither storage_options secrets nor URL credentials.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import traceback

import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from builders import make_samples  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from remote_servers import NGINX, FaultProxy  # noqa: E402

from benchmarks.nginx_store import NginxStore  # noqa: E402
from streamprune import storage  # noqa: E402
from streamprune.errors import ManifestError, UnsafeLocationError, redact  # noqa: E402
from streamprune.manifest import Manifest, open_manifest  # noqa: E402
from streamprune.readers.mapstyle import PrunedMapDataset  # noqa: E402
from streamprune.readers.webdataset import PrunedSource, pruned_tarfile_samples  # noqa: E402
from streamprune.storage import RemoteError, RetryPolicy  # noqa: E402
from streamprune.writers import write_shards  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (apt-get install nginx-light)")

SECRET = "s3cr3t-Pa55word"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(local dataset dir, served root, store)``: the dataset copied to ``served/ds``, nginx on two ports (two origins)."""
    root = tmp_path_factory.mktemp("safety")
    local = root / "local"
    write_shards(make_samples(24, seed=3), str(local), samples_per_shard=8, shuffle=False, progress=False)
    served = root / "served"
    shutil.copytree(local, served / "ds")
    store = NginxStore(str(served), str(root / "nginx"), settings={"a": (0.0, None), "b": (0.0, None)})
    yield str(local), str(served), store
    store.stop()


def _keys_and_bytes(samples):
    return [(s["__key__"], s["bin"], s["txt"]) for s in samples]


def _serve_manifest(served: str, name: str, shard0: str | None = None, index0: str | None = None) -> str:
    """Write ``served/ds/<name>``: the dataset's manifest with shard 0's name (and/or index name) replaced."""
    with open(os.path.join(served, "ds", "manifest.json")) as fh:
        obj = json.load(fh)
    if shard0 is not None:
        obj["shards"][0]["name"] = shard0
    if index0 is not None:
        obj["shards"][0]["index"] = index0
    with open(os.path.join(served, "ds", name), "w") as fh:
        json.dump(obj, fh)
    return name


def _url(store: NginxStore, name: str, port: str = "a") -> str:
    return f"{store.url(port)}/ds/{name}"


@pytest.mark.integration
@pytest.mark.parametrize("shard0,reason", [
    ("/etc/passwd", "absolute local path"),
    ("file:///etc/passwd", "file:// URL"),
    ("http://169.254.169.254/latest/meta-data/shard.tar", "another host"),
    ("https://127.0.0.1/ds/shard-000000.tar", "another host"),  # same host, another scheme
    ("../../../../etc/passwd", "climbs out"),
    ("sub/../../secret/shard.tar", "climbs out"),
    ("%2e%2e/%2e%2e/etc/passwd", "climbs out"),
])
def test_remote_manifest_naming_foreign_locations_is_refused(served, shard0, reason):
    _, served_dir, store = served
    url = _url(store, _serve_manifest(served_dir, f"evil-{abs(hash(shard0))}.json", shard0=shard0))
    with pytest.raises(UnsafeLocationError, match=reason) as info:
        Manifest.load(url)
    err = info.value
    assert url in str(err) and repr(shard0) in str(err) and "shard entry 0" in str(err)
    assert err.manifest == url and err.entry == shard0 and reason in err.reason
    assert "allow_foreign_locations=True" in str(err)
    # every reader that opens a manifest refuses it the same way
    for open_reader in (PrunedSource, PrunedMapDataset, pruned_tarfile_samples, open_manifest):
        with pytest.raises(UnsafeLocationError):
            open_reader(url)
    # and accepts it when the caller opts in (loading only: these locations hold no shard)
    m = Manifest.load(url, allow_foreign_locations=True)
    assert m.shards[0].name == shard0
    assert open_manifest(url, allow_foreign_locations=True).shards[0].name == shard0


@pytest.mark.integration
def test_a_foreign_index_name_is_refused_too(served):
    _, served_dir, store = served
    url = _url(store, _serve_manifest(served_dir, "evil-index.json", index0="http://10.0.0.1/internal/index.json"))
    with pytest.raises(UnsafeLocationError, match="the index 'http://10.0.0.1/internal/index.json', a URL on another host"):
        Manifest.load(url)


@pytest.mark.integration
def test_relative_and_same_host_names_read_as_before(served):
    local, served_dir, store = served
    expected = _keys_and_bytes(PrunedSource(local))
    # the manifest as written (relative names), then with shard 0 as an absolute URL under its prefix,
    # as a relative name with a harmless '..', and as a URL in another directory of the same host
    assert _keys_and_bytes(PrunedSource(_url(store, "manifest.json"))) == expected
    for name, shard0 in [("abs.json", _url(store, "shard-000000.tar")), ("dots.json", "sub/../shard-000000.tar"),
                         ("sibling.json", f"{store.url('a')}/ds/../ds/shard-000000.tar")]:
        url = _url(store, _serve_manifest(served_dir, name, shard0=shard0))
        assert _keys_and_bytes(PrunedSource(url)) == expected
        assert _keys_and_bytes(PrunedMapDataset(url)) == expected


@pytest.mark.integration
def test_another_host_is_read_with_the_opt_in(served):
    local, served_dir, store = served
    other = _url(store, "shard-000000.tar", port="b")  # the same files behind another origin
    url = _url(store, _serve_manifest(served_dir, "other-host.json", shard0=other))
    with pytest.raises(UnsafeLocationError, match="another host"):
        PrunedSource(url)
    expected = _keys_and_bytes(PrunedSource(local))
    assert _keys_and_bytes(PrunedSource(url, allow_foreign_locations=True)) == expected
    assert _keys_and_bytes(PrunedMapDataset(url, allow_foreign_locations=True)) == expected
    # a base the caller gives on that host is trusted: its host's URLs are accepted
    assert _keys_and_bytes(PrunedSource(url, base=store.url("b") + "/ds")) == expected


@pytest.mark.integration
def test_a_local_base_is_trusted_but_not_what_lies_outside_it(served, tmp_path):
    local, served_dir, store = served
    copy = tmp_path / "copy"
    shutil.copytree(local, copy)
    expected = _keys_and_bytes(PrunedSource(local))
    # the base the user gives: relative names resolve there, and absolute paths under it are accepted
    assert _keys_and_bytes(PrunedSource(_url(store, "manifest.json"), base=str(copy))) == expected
    inside = _url(store, _serve_manifest(served_dir, "inside-base.json", shard0=str(copy / "shard-000000.tar")))
    assert _keys_and_bytes(PrunedSource(inside, base=str(copy))) == expected
    # an absolute path, a file:// URL, or a '..' out of the base reads files the user did not name
    outside = os.path.join(local, "shard-000000.tar")
    rel = os.path.relpath(outside, copy)
    assert rel.startswith("..")
    for name, shard0, reason in [("abs-out.json", outside, "absolute local path"),
                                 ("file-out.json", "file://" + outside, "file:// URL"),
                                 ("rel-out.json", rel, "climbs out")]:
        url = _url(store, _serve_manifest(served_dir, name, shard0=shard0))
        with pytest.raises(UnsafeLocationError, match=reason):
            PrunedSource(url, base=str(copy))
        # opted in, the shard is read from where the manifest says
        assert _keys_and_bytes(PrunedSource(url, base=str(copy), allow_foreign_locations=True)) == expected


@pytest.mark.integration
def test_a_loaded_manifest_is_checked_again_when_its_base_moves(served, tmp_path):
    local, served_dir, store = served
    outside = os.path.join(local, "shard-000000.tar")
    url = _url(store, _serve_manifest(served_dir, "moved.json", shard0=outside))
    m = Manifest.load(url, base=local)  # under the base given: accepted
    with pytest.raises(UnsafeLocationError):
        open_manifest(m, base=str(tmp_path))  # not under the new one
    assert open_manifest(m, base=str(tmp_path), allow_foreign_locations=True).shard_path(0) == outside


@pytest.mark.integration
def test_local_manifests_keep_todays_behaviour(served, tmp_path):
    local, _, _ = served
    with open(os.path.join(local, "manifest.json")) as fh:
        obj = json.load(fh)
    for entry in obj["shards"]:  # absolute paths elsewhere: fine in a local manifest
        entry["name"] = os.path.join(local, entry["name"])
        entry["index"] = "file://" + os.path.join(local, entry["index"])
    (tmp_path / "manifest.json").write_text(json.dumps(obj))
    assert _keys_and_bytes(PrunedSource(str(tmp_path))) == _keys_and_bytes(PrunedSource(local))


@pytest.mark.integration
def test_the_command_line_refuses_and_opts_in(served):
    _, served_dir, store = served
    from streamprune_cli.main import cli

    url = _url(store, _serve_manifest(served_dir, "cli.json", shard0="file:///etc/passwd"))
    refused = CliRunner().invoke(cli, ["inspect", url])
    assert refused.exit_code == 1, refused.output
    assert "'file:///etc/passwd', a file:// URL" in refused.output and "--allow-foreign-locations" in refused.output
    allowed = CliRunner().invoke(cli, ["inspect", url, "--allow-foreign-locations", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.output)["samples"] == 24


# --- credentials -----------------------------------------------------------------------------


def _with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://reader:{SECRET}@", 1)


def _no_secret(err: BaseException) -> None:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert SECRET not in text
    assert SECRET not in repr(err) and all(SECRET not in str(a) for a in err.args)
    assert SECRET not in str(getattr(err, "url", ""))


def test_redact_replaces_userinfo_only():
    assert redact(f"https://user:{SECRET}@host/ds/x.tar") == "https://***@host/ds/x.tar"
    assert redact(f"GET 'http://{SECRET}@h:8/a' failed; s3://bucket/key@v2 kept") == "GET 'http://***@h:8/a' failed; s3://bucket/key@v2 kept"
    assert redact("/data/a@b/x.tar") == "/data/a@b/x.tar"


@pytest.mark.integration
def test_remote_errors_for_urls_with_credentials_hold_no_secret(served, caplog):
    _, _, store = served
    caplog.set_level(logging.DEBUG, logger="streamprune")
    missing = _with_userinfo(_url(store, "missing.tar"))
    with pytest.raises(RemoteError) as info:
        storage.RemoteObject(missing).read(0, 10)
    assert info.value.status == 404 and "***@" in str(info.value)
    _no_secret(info.value)
    with pytest.raises(FileNotFoundError) as info:
        storage.read_bytes(missing)
    _no_secret(info.value)
    # a server error, retried, then reported with the client's own message about it
    proxy = FaultProxy(store.ports["a"], fail_every=1)
    try:
        flaky = f"http://reader:{SECRET}@127.0.0.1:{proxy.port}/ds/shard-000000.tar"
        obj = storage.RemoteObject(flaky, retry=RetryPolicy(attempts=3, base_delay=0.001))
        with pytest.raises(RemoteError) as info:
            obj.read(0, 10)
        assert info.value.status == 503
        _no_secret(info.value)
    finally:
        proxy.stop()
    # a manifest behind such a URL: read with the credentials, never shown with them
    manifest_url = _with_userinfo(_url(store, "manifest.json"))
    m = Manifest.load(manifest_url)
    assert SECRET not in m.path and SECRET in m.root  # the shards are read with the credentials
    assert len(list(PrunedSource(m))) == 24
    with pytest.raises(ManifestError) as info:
        Manifest.load(_with_userinfo(_url(store, "nope.json")))
    _no_secret(info.value)
    with pytest.raises(UnsafeLocationError) as info:
        Manifest.load(_with_userinfo(_url(store, "cli.json")))
    _no_secret(info.value)
    assert SECRET not in caplog.text


@pytest.mark.integration
def test_written_files_hold_no_storage_options_secrets(tmp_path):
    """``shard SRC s3://...`` and ``index URL`` with secrets in storage_options: no file written holds them."""
    pytest.importorskip("s3fs")
    pytest.importorskip("boto3")
    import boto3
    from moto.server import ThreadedMotoServer
    from remote_servers import free_port

    from streamprune.remoteindex import index_remote_shards
    from streamprune.writers.remote import write_shards_to

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "AKIAEXAMPLEKEY", "secret": SECRET, "token": SECRET + "-token",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="y",
                              region_name="us-east-1")
        client.create_bucket(Bucket="bucket")
        src = tmp_path / "src.npz"
        rng = np.random.default_rng(0)
        np.savez(src, x=rng.integers(0, 255, size=(30, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 3, size=30))
        m = write_shards_to(str(src), "s3://bucket/written", storage_options=options, samples_per_shard=10, progress=False)
        assert m.num_samples == 30
        indexed = index_remote_shards(["s3://bucket/written/shard-{000000..000002}.tar"], str(tmp_path / "idx"),
                                      storage_options=options, progress=False)
        indexed_remote = index_remote_shards(["s3://bucket/written/shard-{000000..000002}.tar"], "s3://bucket/idx",
                                             storage_options=options, progress=False)
        assert indexed.num_samples == indexed_remote.num_samples == 30
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="bucket")["Contents"]]
        assert "written/manifest.json" in keys and "idx/manifest.json" in keys
        for key in keys:
            body = client.get_object(Bucket="bucket", Key=key)["Body"].read()
            assert SECRET.encode() not in body and b"AKIAEXAMPLEKEY" not in body, key
        for name in os.listdir(tmp_path / "idx"):
            body = (tmp_path / "idx" / name).read_bytes()
            assert SECRET.encode() not in body and b"AKIAEXAMPLEKEY" not in body, name
    finally:
        server.stop()


@pytest.mark.integration
def test_index_refuses_to_record_a_shard_url_with_credentials(served, tmp_path):
    _, _, store = served
    from streamprune.remoteindex import index_remote_shards

    url = _with_userinfo(_url(store, "shard-000000.tar"))
    with pytest.raises(ManifestError, match="credentials") as info:
        index_remote_shards([url], str(tmp_path / "idx"), progress=False)
    _no_secret(info.value)
    assert not (tmp_path / "idx" / "manifest.json").exists()
