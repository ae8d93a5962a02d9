"""FFCV backend: .beton writing and indexing, pruned FFCV loading, masks shared with tar shards.

Tests that need FFCV are skipped when it is not installed; the missing-extra error test runs
without it (it hides ``ffcv`` from the import system).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import streamprune as sp
from streamprune.atomic import file_sha256
from streamprune.betonindex import index_beton, looks_like_beton, read_beton
from streamprune.errors import MaskMismatchError, StreamPruneError
from streamprune.optional import MissingExtraError
from streamprune_cli.main import cli

# find_spec, not an import: importing ffcv takes ~10 s, which every pytest worker would pay at collection
needs_ffcv = pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="ffcv is not installed (the `ffcv` extra)")
# numba's dispatcher finalizers complain when FFCV's compiled pipelines are garbage-collected
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.integration]  # importing ffcv takes ~10 s: out of the edit loop

PAGE = 1 << 21  # FFCV's smallest page keeps test files small


def _images(n: int, h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """64 random 12x16 RGB images over 4 classes (label i % 4), as an .npz source (read only: shared by the module)."""
    path = tmp_path_factory.mktemp("ffcv-src") / "small.npz"
    np.savez(path, images=_images(64), labels=np.arange(64) % 4, class_names=np.array(["a", "b", "c", "d"]))
    return str(path)


@pytest.fixture(scope="module")
def beton(tmp_path_factory, npz):
    """The .npz written as one raw-pixel .beton file (default layout, seed 0); read only, written once per module
    (each FFCV write starts its own worker pool)."""
    return sp.write_beton(npz, tmp_path_factory.mktemp("ffcv") / "beton", write_mode="raw", page_size=PAGE, progress=False)


@pytest.fixture(scope="module")
def beton_contents(beton):
    """Every image and label of ``beton``, in file order, by FFCV's own sequential loader."""
    return _load_all(sp.pruned_ffcv_loader(beton, batch_size=64, num_workers=1, order="sequential"))


def _load_all(loader):
    images, labels = [], []
    for image, label in loader:  # FFCV reuses its batch buffers: copy
        images.append(image.numpy().copy())
        labels.append(label.numpy().reshape(-1).copy())
    return np.concatenate(images), np.concatenate(labels)


def _positions(images: np.ndarray, reference: np.ndarray) -> list[int]:
    """Position in ``reference`` of each image (the random images are unique)."""
    lookup = {reference[i].tobytes(): i for i in range(len(reference))}
    return [lookup[im.tobytes()] for im in images]


# ------------------------------------------------------------------------------------------
# the missing extra (runs without ffcv)


def test_missing_ffcv_gives_one_clear_error_naming_the_extra(monkeypatch, tmp_path, npz):
    monkeypatch.setitem(sys.modules, "ffcv", None)  # `import ffcv` now raises ImportError
    for call in (
        lambda: sp.pruned_ffcv_loader(tmp_path / "nothing", batch_size=4),
        lambda: sp.write_beton(npz, tmp_path / "out"),
    ):
        with pytest.raises(MissingExtraError) as info:
            call()
        message = str(info.value)
        assert "streamprune[ffcv]" in message and "pkg-config libopencv-dev libturbojpeg0-dev" in message
        assert isinstance(info.value, StreamPruneError)
    result = CliRunner().invoke(cli, ["shard", npz, str(tmp_path / "cli"), "--format", "beton", "-q"])
    assert result.exit_code != 0
    assert "streamprune[ffcv]" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------
# writing and indexing


@needs_ffcv
def test_beton_shard_records_format_keys_labels_counts_and_checksums(tmp_path, npz, beton):
    manifest = sp.Manifest.load(beton.path)
    (entry,) = manifest.shards
    path = manifest.shard_path(0)
    assert entry.format == "beton" and entry.name == "shard-000000.beton"
    assert entry.samples == 64 and entry.bytes == os.path.getsize(path)
    assert entry.sha256 == file_sha256(path)
    assert manifest.classes == ["a", "b", "c", "d"] and manifest.class_counts == [16] * 4
    keys = manifest.keys()
    assert sorted(keys) == [f"{i:08d}" for i in range(64)]
    np.testing.assert_array_equal(manifest.labels(), [int(k) % 4 for k in keys])
    with open(manifest.resolve(entry.index)) as fh:
        sidecar = json.load(fh)
    assert sidecar["beton"]["page_size"] == PAGE and sidecar["beton"]["layout"] == "default"
    assert sidecar["beton"]["label_field"] == "label" and sidecar["beton"]["image_field"] == "image"
    assert (manifest.sample_bytes() == 12 * 16 * 3).all()  # raw pixels
    with open(beton.path) as fh:
        assert json.load(fh)["shards"][0]["format"] == "beton"
    # the same source and seed as tar shards: the same keys in the same order
    tar = sp.write_shards(npz, tmp_path / "tar", samples_per_shard=20, progress=False)
    assert tar.keys() == keys
    with open(tar.path) as fh:
        assert "format" not in json.load(fh)["shards"][0]  # tar manifests are unchanged


@needs_ffcv
def test_manifest_without_format_field_loads_as_tar(small_dataset):
    with open(small_dataset.path) as fh:
        obj = json.load(fh)
    assert all("format" not in s for s in obj["shards"])
    assert all(s.format == "tar" for s in sp.Manifest.load(small_dataset.path).shards)


@pytest.mark.integration
@needs_ffcv
def test_samples_per_file_splits_files_and_the_loader_needs_a_file_number(tmp_path, npz):
    manifest = sp.write_beton(npz, tmp_path / "b", samples_per_file=25, write_mode="jpg", page_size=PAGE, progress=False)
    assert [s.samples for s in manifest.shards] == [25, 25, 14]
    assert [s.name for s in manifest.shards] == [f"shard-{k:06d}.beton" for k in range(3)]
    with pytest.raises(StreamPruneError, match="shard=k"):
        sp.pruned_ffcv_loader(manifest, batch_size=8, num_workers=1)
    loader = sp.pruned_ffcv_loader(manifest, batch_size=8, num_workers=1, shard=2, order="sequential", pipelines={"image": None})
    (labels,) = zip(*loader)
    np.testing.assert_array_equal(np.concatenate([np.asarray(x).ravel() for x in labels]), manifest.labels()[50:])


@needs_ffcv
def test_read_beton_agrees_with_ffcv_reader(beton):
    from ffcv.reader import Reader

    path = beton.shard_path(0)
    info = read_beton(path)
    reader = Reader(path)
    assert info.num_samples == reader.num_samples and info.page_size == reader.page_size
    assert info.field_names == reader.field_names == ["image", "label"]
    assert info.metadata.dtype.itemsize == reader.metadata.dtype.itemsize
    assert info.metadata.tobytes() == reader.metadata.tobytes()
    assert info.alloc.tobytes() == reader.alloc_table.tobytes()
    assert looks_like_beton(path) and not looks_like_beton(__file__)


@pytest.mark.integration
@needs_ffcv
def test_index_of_a_plain_ffcv_file(tmp_path):
    from ffcv.fields import FloatField, IntField, RGBImageField
    from ffcv.reader import Reader
    from ffcv.writer import DatasetWriter

    images = _images(30, 10, 14, seed=4)
    ys = (np.arange(30) * 7) % 5

    class Data:
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return float(i) / 2, images[i], int(ys[i])

    path = str(tmp_path / "plain.beton")
    fields = {"weight": FloatField(), "img": RGBImageField(write_mode="jpg"), "y": IntField()}
    DatasetWriter(path, fields, page_size=PAGE, num_workers=1).from_indexed_dataset(Data())
    manifest = sp.index_betons([path], tmp_path / "idx", progress=False)
    assert manifest.shards[0].format == "beton" and manifest.shards[0].samples == 30
    assert manifest.keys()[:2] == ["plain/00000000", "plain/00000001"]
    np.testing.assert_array_equal(manifest.labels(), ys)  # the only IntField is the label
    assert manifest.class_counts == np.bincount(ys).tolist()
    reader = Reader(path)
    sizes = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    expected = [sizes[int(p)] for p in reader.metadata["f1"]["data_ptr"]]
    np.testing.assert_array_equal(manifest.sample_bytes(), expected)
    index, _ = index_beton(path, label_field=None)
    assert (index.labels == -1).all()
    with pytest.raises(sp.ManifestError, match="FloatField"):
        index_beton(path, label_field="weight")
    # a pruned loader over the indexed file
    mask = sp.mask_from_classes(manifest, [0, 3])
    loader = sp.pruned_ffcv_loader(manifest, mask, batch_size=7, num_workers=1, pipelines={"img": None, "weight": None})
    (labels,) = zip(*loader)
    assert sorted(np.concatenate([np.asarray(x).ravel() for x in labels]).tolist()) == sorted(ys[np.isin(ys, [0, 3])].tolist())


@pytest.mark.integration
@needs_ffcv
def test_a_failing_sample_names_its_key_and_leaves_no_file(tmp_path):
    good = io.BytesIO()
    from PIL import Image

    Image.fromarray(_images(1)[0]).save(good, format="PNG")
    samples = [(f"k{i}", {"png": good.getvalue()}, 0) for i in range(5)] + [("broken", {"jpg": b"not a jpeg"}, 1)]
    with pytest.raises(StreamPruneError, match="broken"):
        sp.write_beton(samples, tmp_path / "b", page_size=PAGE, progress=False)
    assert not [n for n in os.listdir(tmp_path / "b") if n.endswith(".beton") or ".tmp-" in n]
    assert not os.path.exists(tmp_path / "b" / "manifest.json")


@pytest.mark.integration
@needs_ffcv
def test_write_modes_and_quality_reach_the_file(tmp_path, npz):
    raw_bytes = 12 * 16 * 3
    sizes = {}
    for q in (20, 95):
        m = sp.write_beton(npz, tmp_path / f"q{q}", write_mode="jpg", quality=q, page_size=PAGE, progress=False)
        info = read_beton(m.shard_path(0))
        assert (info.column("image")["mode"] == 0).all()  # 0 = FFCV's jpg mode
        with open(m.resolve(m.shards[0].index)) as fh:
            assert json.load(fh)["beton"]["jpeg_quality"] == q
        sizes[q] = int(m.sample_bytes().sum())
    assert sizes[20] < sizes[95]
    # smart: JPEG only for images whose raw pixels exceed the threshold
    for threshold, mode in ((raw_bytes - 1, 0), (raw_bytes, 1)):
        m = sp.write_beton(npz, tmp_path / f"smart{threshold}", write_mode="smart", smart_threshold=threshold, page_size=PAGE, progress=False)
        assert (read_beton(m.shard_path(0)).column("image")["mode"] == mode).all()
    raw = sp.write_beton(npz, tmp_path / "raw", write_mode="raw", max_resolution=8, page_size=PAGE, progress=False)
    image = read_beton(raw.shard_path(0)).column("image")
    assert (image["mode"] == 1).all() and (image["width"] == 8).all() and (image["height"] == 6).all()
    assert (raw.sample_bytes() == 8 * 6 * 3).all()


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **options)
    return buf.getvalue()


@pytest.mark.integration
@needs_ffcv
def test_keep_jpeg_stores_the_source_jpeg_bytes_unchanged(tmp_path):
    from ffcv.fields.decoders import SimpleRGBImageDecoder
    from PIL import Image

    images = _images(10, 24, 32, seed=5)
    samples = [(f"k{i:02d}", {"jpg": _jpeg(images[i], quality=90, subsampling=0)}, i % 2) for i in range(8)]
    samples.append(("gray", {"jpg": _jpeg(images[8][:, :, 0])}, 0))  # 1-channel JPEG: re-encoded as RGB
    png = io.BytesIO()
    Image.fromarray(images[9]).save(png, format="PNG")
    samples.append(("png", {"png": png.getvalue()}, 1))
    m = sp.write_beton(samples, tmp_path / "b", write_mode="jpg", keep_jpeg=True, page_size=PAGE, progress=False)
    with open(m.shard_path(0), "rb") as fh:
        data = fh.read()
    index = m.index(0)
    stored = {}
    for key, members in zip(m.keys(), index.members):
        ((_, ptr, size),) = members
        stored[key] = data[ptr : ptr + size]
    source = dict((k, f) for k, f, _ in samples)
    for i in range(8):
        assert stored[f"k{i:02d}"] == source[f"k{i:02d}"]["jpg"]
    assert stored["gray"] != source["gray"]["jpg"] and stored["png"][:2] == b"\xff\xd8"  # encoded by FFCV
    with open(m.resolve(m.shards[0].index)) as fh:
        extra = json.load(fh)["beton"]
    assert extra["keep_jpeg"] is True and extra["jpeg_stored_as_is"] == 8
    # FFCV decodes the stored bytes like PIL does: both use libjpeg-turbo, with different IDCTs, which
    # differ by ~1 level on noise images (a channel swap or another image would differ by ~85)
    loader = sp.pruned_ffcv_loader(m, batch_size=10, num_workers=1, order="sequential", pipelines={"image": [SimpleRGBImageDecoder()]})
    decoded, _ = next(iter(loader))
    keys = m.keys()
    for j in range(10):
        if keys[j].startswith("k"):
            pil = np.asarray(Image.open(io.BytesIO(source[keys[j]]["jpg"])).convert("RGB"), dtype=np.int16)
            assert np.abs(np.asarray(decoded[j], dtype=np.int16) - pil).mean() < 3.0
    # larger than max_resolution: downscaled through the encode path instead
    small = sp.write_beton(samples[:4], tmp_path / "small", write_mode="jpg", keep_jpeg=True, max_resolution=16, page_size=PAGE, progress=False)
    assert (read_beton(small.shard_path(0)).column("image")["width"] == 16).all()
    with open(small.resolve(small.shards[0].index)) as fh:
        assert json.load(fh)["beton"]["jpeg_stored_as_is"] == 0
    with pytest.raises(ValueError, match="keep_jpeg"):
        sp.write_beton(samples, tmp_path / "bad", write_mode="smart", keep_jpeg=True)


# ------------------------------------------------------------------------------------------
# pruned loading


@pytest.mark.integration
@needs_ffcv
@pytest.mark.parametrize(
    ("order", "os_cache", "readahead"),
    [("random", True, True), ("quasi_random", False, True), ("sequential", True, True), ("quasi_random", True, False)],
)
def test_pruned_loader_yields_exactly_the_kept_samples(beton, beton_contents, order, os_cache, readahead):
    full_images, full_labels = beton_contents
    assert len(full_images) == 64
    mask = sp.random_mask(beton, 0.6, seed=2)
    loader = sp.pruned_ffcv_loader(
        beton, mask, batch_size=5, num_workers=2, order=order, os_cache=os_cache, readahead=readahead, seed=1
    )
    images, labels = _load_all(loader)
    kept = np.flatnonzero(mask.keep)
    positions = _positions(images, full_images)
    assert sorted(positions) == kept.tolist()  # every kept sample once, nothing else
    np.testing.assert_array_equal(labels, full_labels[positions])
    np.testing.assert_array_equal(labels, beton.labels()[positions])
    if order == "sequential":
        assert positions == kept.tolist()
    if not readahead:
        assert type(loader.memory_manager.context).__name__ == "RandomAccessOSCacheContext"
    # os_cache chooses FFCV's memory manager: the page cache (memory map) or its own page reads
    assert type(loader.memory_manager).__name__ == ("OSCacheManager" if os_cache else "ProcessCacheManager")
    np.testing.assert_array_equal(loader.kept_indices, kept)


@pytest.mark.integration
@needs_ffcv
def test_distributed_passes_through_to_ffcv(tmp_path, beton):
    import torch.distributed as dist

    mask = sp.random_mask(beton, 0.5, seed=4)
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = sp.pruned_ffcv_loader(beton, mask, batch_size=8, num_workers=1, distributed=True, pipelines={"image": None})
        assert loader.distributed
        labels = np.concatenate([b[0].numpy().ravel() for b in loader])
        assert sorted(labels.tolist()) == sorted(beton.labels()[mask.keep].tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
@needs_ffcv
def test_batch_size_and_drop_last_pass_through(beton):
    keep = np.zeros(64, dtype=bool)
    keep[:33] = True
    mask = sp.mask_from_bool(beton, keep)
    sizes = {}
    for drop_last in (True, False):
        loader = sp.pruned_ffcv_loader(beton, mask, batch_size=8, num_workers=1, drop_last=drop_last, pipelines={"image": None})
        sizes[drop_last] = [len(np.asarray(b[0]).reshape(-1)) for b in loader]
        assert len(loader) == len(sizes[drop_last])
    assert sizes[True] == [8, 8, 8, 8] and sizes[False] == [8, 8, 8, 8, 1]
    # pipelines reach FFCV: a center-crop decoder gives its fixed size
    from ffcv.fields.decoders import CenterCropRGBImageDecoder

    loader = sp.pruned_ffcv_loader(beton, mask, batch_size=8, num_workers=1, pipelines={"image": [CenterCropRGBImageDecoder((5, 5), 1.0)]})
    images, labels = next(iter(loader))
    assert images.shape == (8, 5, 5, 3) and len(np.asarray(labels).reshape(-1)) == 8
    with pytest.raises(StreamPruneError, match="quasi_random"):
        sp.pruned_ffcv_loader(beton, mask, batch_size=8, order="quasi_random", distributed=True)
    with pytest.raises(ValueError, match="order"):
        sp.pruned_ffcv_loader(beton, mask, batch_size=8, order="backwards")
    with pytest.raises(ValueError, match="readahead"):
        sp.pruned_ffcv_loader(beton, mask, batch_size=8, os_cache=False, readahead=False)
    with pytest.raises(StreamPruneError, match="keeps no samples"):
        sp.pruned_ffcv_loader(beton, sp.mask_from_bool(beton, np.zeros(64, dtype=bool)), batch_size=8)


@pytest.mark.integration
@needs_ffcv
def test_a_mask_made_on_the_tar_manifest_drives_the_beton_loader(tmp_path, npz, beton):
    tar = sp.write_shards(npz, tmp_path / "tar", samples_per_shard=20, progress=False)
    paware = sp.write_beton(npz, tmp_path / "paware", layout="page-aware", write_mode="raw", page_size=PAGE, progress=False)
    assert paware.keys() != tar.keys()  # another order, the same keys
    for mask in (sp.random_mask(tar, 0.6, seed=3), sp.random_mask(tar, 0.5, level="class", seed=1)):
        path = mask.save(tmp_path / "tar.spmask")
        tar_keys = np.asarray(tar.keys())
        want = sorted(tar_keys[mask.keep].tolist())
        for target in (beton, paware):
            keys = np.asarray(target.keys())
            # in memory: translated automatically; from a file: with the manifest it was made for
            for loader in (
                sp.pruned_ffcv_loader(target, mask, batch_size=8, num_workers=1, pipelines={"image": None}),
                sp.pruned_ffcv_loader(target, path, mask_manifest=tar.path, batch_size=8, num_workers=1, pipelines={"image": None}),
            ):
                assert sorted(keys[loader.kept_indices.astype(np.int64)].tolist()) == want
                labels = np.concatenate([np.asarray(b[0]).ravel() for b in loader])
                assert sorted(labels.tolist()) == sorted(tar.labels()[mask.keep].tolist())
            translated = sp.translate_mask(path, target, mask_manifest=tar)
            assert sorted(keys[translated.keep].tolist()) == want
            assert translated.provenance["translated_from"] == tar.fingerprint
        with pytest.raises(MaskMismatchError, match="made for another manifest"):
            sp.pruned_ffcv_loader(beton, path, batch_size=8)


@needs_ffcv
def test_a_mask_from_an_unrelated_dataset_is_refused(tmp_path, beton, shard_writer, labelled_samples):
    other = shard_writer(labelled_samples, tmp_path / "other")  # keys s00000.., 40 samples
    with pytest.raises(MaskMismatchError, match="40 samples"):
        sp.pruned_ffcv_loader(beton, sp.random_mask(other, 0.5), batch_size=8)
    # same synthetic keys and count, different labels: refused by the label check
    path = tmp_path / "same-keys.npz"
    np.savez(path, images=_images(64, seed=9), labels=(np.arange(64) + 1) % 4)
    lookalike = sp.write_shards(str(path), tmp_path / "lookalike", samples_per_shard=32, progress=False)
    assert sorted(lookalike.keys()) == sorted(beton.keys())
    with pytest.raises(MaskMismatchError, match="label"):
        sp.pruned_ffcv_loader(beton, sp.random_mask(lookalike, 0.5), batch_size=8)
    with pytest.raises(MaskMismatchError):
        sp.translate_mask(sp.random_mask(other, 0.5), beton, strict=False)


@needs_ffcv
def test_tar_readers_refuse_a_beton_manifest(beton):
    with pytest.raises(StreamPruneError, match="pruned_ffcv_loader"):
        sp.PrunedWebDataset(beton)
    with pytest.raises(StreamPruneError, match="pruned_ffcv_loader"):
        sp.PrunedMapDataset(beton)


# ------------------------------------------------------------------------------------------
# page-aware layout


@pytest.mark.integration
@needs_ffcv
def test_page_aware_layout_keeps_classes_together_in_pages(tmp_path):
    n, classes = 640, 4  # 27 KB raw each: 75 per 2 MiB page, a class spans ~2 pages (ImageNet: ~17 of 8 MiB)
    labels = np.random.default_rng(1).permutation(np.arange(n) % classes)
    path = tmp_path / "big.npz"
    np.savez(path, images=_images(n, 96, 96, seed=3), labels=labels)
    purity = {}
    pages_read = {}
    for layout in ("default", "page-aware"):
        manifest = sp.write_beton(
            str(path), tmp_path / layout, layout=layout, write_mode="raw", workers=2, page_size=PAGE, progress=False
        )
        info = read_beton(manifest.shard_path(0))
        pages = info.sample_pages()
        mlabels = manifest.labels()
        per_page = [np.bincount(mlabels[pages == p], minlength=classes) for p in np.unique(pages)]
        purity[layout] = float(np.mean([c.max() / c.sum() for c in per_page]))
        keep = sp.mask_from_classes(manifest, [2]).keep
        pages_read[layout] = len(np.unique(pages[keep])) / len(np.unique(pages))
    assert purity["page-aware"] >= 0.8 > purity["default"]
    assert pages_read["default"] == 1.0  # a class-level mask touches every page of the default layout
    assert pages_read["page-aware"] <= 0.45


# ------------------------------------------------------------------------------------------
# CLI


@needs_ffcv
def test_cli_shard_beton_and_index_beton(tmp_path, npz):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        cli, ["shard", npz, str(out), "--format", "beton", "--write-mode", "jpg", "--max-resolution", "8", "--quality", "80", "-q"]
    )
    assert result.exit_code == 0, result.output
    manifest = sp.Manifest.load(out)
    assert manifest.shards[0].format == "beton" and manifest.num_samples == 64
    info = read_beton(manifest.shard_path(0))
    assert info.column("image")["width"].max() == 8 and (info.column("image")["mode"] == 0).all()  # jpg, resized
    result = runner.invoke(cli, ["index", manifest.shard_path(0), "--out", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 0, result.output
    indexed = sp.Manifest.load(tmp_path / "idx")
    assert indexed.keys()[0] == "shard-000000/00000000"
    np.testing.assert_array_equal(indexed.labels(), manifest.labels())
    result = runner.invoke(cli, ["mask", str(tmp_path / "idx"), "--random", "--ratio", "0.5", "--out", str(tmp_path / "m.spmask")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["inspect", str(tmp_path / "idx"), "--mask", str(tmp_path / "m.spmask")])
    assert result.exit_code == 0 and "kept" in result.output
    tar = sp.write_shards(npz, tmp_path / "tar", samples_per_shard=64, progress=False)
    result = runner.invoke(cli, ["index", manifest.shard_path(0), tar.shard_path(0), "--out", str(tmp_path / "mixed")])
    assert result.exit_code != 0 and "not both" in result.output


@needs_ffcv
def test_beton_into_a_directory_holding_a_dataset_is_refused_and_overwrite_replaces_it(tmp_path, npz, small_dataset):
    from streamprune.errors import OutputExistsError

    root = small_dataset.root  # 4 tar shards
    with pytest.raises(OutputExistsError, match=r"already holds another dataset: .*manifest\.json \(4 shards, 40 samples\)"):
        sp.write_beton(npz, root, write_mode="raw", page_size=PAGE, progress=False)
    assert sp.Manifest.load(root).fingerprint == small_dataset.fingerprint  # untouched
    m = sp.write_beton(npz, root, write_mode="raw", page_size=PAGE, progress=False, overwrite=True)
    assert [s.format for s in m.shards] == ["beton"]
    assert not [n for n in os.listdir(root) if ".tar" in n]  # no tar shard or its index left behind
