"""Source adapters: class-per-folder trees, IDX files (gzipped or not) and .npz arrays."""

from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from streamprune.errors import LabelError, StreamPruneError
from streamprune.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FolderSource,
    ListSource,
    idx_source,
    npz_source,
    open_source,
    read_idx,
)
from streamprune.writers import write_shards


def _image_bytes(seed: int, fmt: str, size=(12, 9)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image_tree(tmp_path):
    """root/{dog,cat,bird}/... with PNG and JPEG files, odd names and non-image files."""
    root = tmp_path / "tree"
    files = {
        "dog/a.png": _image_bytes(1, "PNG"),
        "dog/b 1.jpg": _image_bytes(2, "JPEG"),
        "dog/sub/z.PNG": _image_bytes(3, "PNG"),
        "cat/x.y.jpeg": _image_bytes(4, "JPEG"),
        "cat/ü.png": _image_bytes(5, "PNG"),
        "bird/c.jpg": _image_bytes(6, "JPEG"),
        "bird/notes.txt": b"not an image",
        ".cache/ignored.png": _image_bytes(7, "PNG"),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root, files


def test_folder_classes_are_sorted_subfolders_and_files_copied_unchanged(image_tree):
    root, files = image_tree
    source = FolderSource(root)
    assert source.class_names == ["bird", "cat", "dog"]
    got = {source[i][0]: source[i] for i in range(len(source))}
    expected = {
        "bird/c": ("jpg", "bird/c.jpg", 0),
        "cat/x_y": ("jpeg", "cat/x.y.jpeg", 1),
        "cat/_": ("png", "cat/ü.png", 1),
        "dog/a": ("png", "dog/a.png", 2),
        "dog/b_1": ("jpg", "dog/b 1.jpg", 2),
        "dog/sub/z": ("png", "dog/sub/z.PNG", 2),
    }
    assert set(got) == set(expected)
    for key, (ext, rel, label) in expected.items():
        _, data, got_label = got[key]
        assert data == {ext: files[rel]}
        assert got_label == label


def test_folder_keys_that_collide_after_sanitising_are_rejected(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a b.png").write_bytes(_image_bytes(1, "PNG"))
    (tmp_path / "c" / "a_b.png").write_bytes(_image_bytes(2, "PNG"))
    with pytest.raises(StreamPruneError, match="same sample key"):
        FolderSource(tmp_path)


def test_folder_class_folders_that_collide_after_sanitising_are_rejected(tmp_path):
    for name in ("a b", "a_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(_image_bytes(1, "PNG"))
    with pytest.raises(StreamPruneError, match="same key prefix 'a_b'"):
        FolderSource(tmp_path)


def _tree_of(root, per_class: dict[str, int]) -> None:
    for name, count in per_class.items():
        (root / name / "deep").mkdir(parents=True)
        for i in range(count):  # half in a sub-folder, names that sort differently as strings and numbers
            (root / name / ("deep" if i % 2 else "") / f"{i}.png").write_bytes(b"%d" % i)


def test_folder_order_is_class_then_sorted_path_as_a_brute_force_walk_gives(tmp_path):
    _tree_of(tmp_path, {"b": 12, "a": 7, "a-b": 3})
    source = FolderSource(tmp_path)
    expected = []
    for label, name in enumerate(sorted(os.listdir(tmp_path))):
        for dirpath, _, filenames in sorted(os.walk(tmp_path / name)):
            expected += [(os.path.relpath(os.path.join(dirpath, f), tmp_path), label) for f in sorted(filenames)]
    got = [(source.key_label(i), source[i]) for i in range(len(source))]
    assert [(key, label) for (key, label), _ in got] == [(rel.rsplit(".", 1)[0], label) for rel, label in expected]
    assert [data["png"] for _, (_, data, _) in got] == [(tmp_path / rel).read_bytes() for rel, _ in expected]
    assert source.labels().tolist() == [label for _, label in expected]


def test_folder_source_pickles_class_counts_not_file_lists(tmp_path):
    """What a shard task carries does not grow with the files: the counts, not a listing."""
    import pickle

    small, large = tmp_path / "s", tmp_path / "l"
    _tree_of(small, {"a": 2, "b": 2})
    _tree_of(large, {"a": 300, "b": 300})
    sources = [FolderSource(small), FolderSource(large)]
    for source in sources:
        [source[i] for i in range(len(source))]  # every class listed in this process
    sizes = [len(pickle.dumps(source)) for source in sources]
    assert sizes[0] == sizes[1]
    copy = pickle.loads(pickle.dumps(sources[1]))
    assert [copy.key_label(i) for i in (0, 299, 300, 599)] == [sources[1].key_label(i) for i in (0, 299, 300, 599)]


def test_folder_tree_changed_after_opening_names_the_class_folder(tmp_path):
    _tree_of(tmp_path, {"a": 4, "b": 4})
    source = FolderSource(tmp_path)
    (tmp_path / "b" / "extra.png").write_bytes(b"new")
    assert source[0][0] == "a/0"  # class a is unchanged
    with pytest.raises(StreamPruneError, match=r"b: 5 images now, 4 when the source was opened"):
        source[4]
    with pytest.raises(IndexError):
        source[8]


def test_folder_without_class_folders_or_images_is_rejected(tmp_path):
    (tmp_path / "flat.png").write_bytes(_image_bytes(1, "PNG"))
    with pytest.raises(StreamPruneError, match="no class sub-folders"):
        FolderSource(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(StreamPruneError, match="no image files"):
        FolderSource(tmp_path)


def test_folder_tree_sharded_keeps_file_bytes_and_class_names(tmp_path, image_tree):
    root, files = image_tree
    manifest = write_shards(root, tmp_path / "out", samples_per_shard=4, progress=False)
    assert manifest.classes == ["bird", "cat", "dog"]
    assert manifest.class_counts == [1, 2, 3]
    shards = [manifest.shard_path(k) for k in range(len(manifest.shards))]
    samples = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}
    assert samples["dog/b_1"]["jpg"] == files["dog/b 1.jpg"]
    assert samples["dog/sub/z"]["png"] == files["dog/sub/z.PNG"]
    assert samples["cat/x_y"]["jpeg"] == files["cat/x.y.jpeg"]
    assert samples["cat/x_y"]["cls"] == b"1"


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = {3: 0x00000803, 1: 0x00000801}[array.ndim]
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_idx_dir(directory, split, images, labels, gz):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)


def _arrays(n=12, h=7, w=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), (np.arange(n) % 3).astype(np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_are_read_gzipped_or_not(tmp_path, gz):
    images, labels = _arrays()
    _write_idx_dir(tmp_path / "idx", "train", images, labels, gz)
    suffix = ".gz" if gz else ""
    got = read_idx(tmp_path / "idx" / f"train-images-idx3-ubyte{suffix}")
    assert got.shape == (12, 7, 5) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(read_idx(tmp_path / "idx" / f"train-labels-idx1-ubyte{suffix}"), labels)

    source = idx_source(tmp_path / "idx", split="train", fmt="png")
    assert len(source) == 12
    assert source.class_names == ["0", "1", "2"]
    key, files, label = source[5]
    assert key == "train_00000005"
    assert label == 2
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(files["png"]))), images[5])  # png is lossless


def test_idx_images_file_path_finds_labels_beside_it_and_test_means_t10k(tmp_path):
    images, labels = _arrays(n=5)
    _write_idx_dir(tmp_path / "idx", "t10k", images, labels, gz=True)
    by_dir = idx_source(tmp_path / "idx", split="test")
    by_file = idx_source(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz")
    assert len(by_dir) == len(by_file) == 5
    assert by_dir[3][0] == "t10k_00000003"
    assert by_file[3][2] == int(labels[3])
    assert isinstance(open_source(tmp_path / "idx", split="t10k"), type(by_dir))


def test_idx_directory_is_sharded_with_jpg_by_default(tmp_path):
    images, labels = _arrays(n=9)
    _write_idx_dir(tmp_path / "idx", "train", images, labels, gz=False)
    manifest = write_shards(tmp_path / "idx", tmp_path / "out", samples_per_shard=4, progress=False)
    assert manifest.num_samples == 9
    assert [s.samples for s in manifest.shards] == [4, 4, 1]
    assert manifest.class_counts == [3, 3, 3]
    exts = {ext for k in range(3) for group in manifest.index(k).members for ext, _, _ in group}
    assert exts == {"jpg", "cls"}


def test_truncated_or_foreign_idx_file_is_rejected(tmp_path):
    images, _ = _arrays()
    (tmp_path / "short-idx3-ubyte").write_bytes(_idx_bytes(images)[:-10])
    with pytest.raises(StreamPruneError, match="truncated"):
        read_idx(tmp_path / "short-idx3-ubyte")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(StreamPruneError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_idx_cut_inside_its_header_is_rejected(tmp_path):
    (tmp_path / "tiny-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(StreamPruneError, match="tiny-idx3-ubyte.*truncated"):
        read_idx(tmp_path / "tiny-idx3-ubyte")


def test_corrupt_gzipped_idx_raises_stream_prune_error(tmp_path):
    images = (np.arange(40 * 28 * 28) % 13).astype(np.uint8).reshape(40, 28, 28)  # compressible
    clean = gzip.compress(_idx_bytes(images))
    rng = np.random.default_rng(0)
    for trial in range(12):
        data = bytearray(clean)
        for i in rng.integers(20, len(data) - 10, 5):
            data[i] ^= 0xFF
        path = tmp_path / f"c{trial}-idx3-ubyte.gz"
        path.write_bytes(bytes(data))
        try:
            read_idx(path)
        except StreamPruneError as exc:
            assert os.fspath(path) in str(exc)


def test_npz_with_class_names_and_override(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["r", "g", "b"]))
    source = npz_source(tmp_path / "d.npz", fmt="png")
    assert source.class_names == ["r", "g", "b"]
    key, files, label = source[4]
    assert (key, label) == ("00000004", 1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(files["png"]))), images[4])
    assert npz_source(tmp_path / "d.npz", class_names=["x", "y", "z"]).class_names == ["x", "y", "z"]
    manifest = write_shards(tmp_path / "d.npz", tmp_path / "out", progress=False)
    assert manifest.classes == ["r", "g", "b"]
    assert manifest.class_counts == [2, 2, 2]


def test_npz_with_x_y_names_and_no_class_names(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4), dtype=np.uint8), y=np.array([1, 0, 1]))
    source = open_source(tmp_path / "d.npz")
    assert source.class_names == ["0", "1"]
    assert list(source[0][1]) == ["jpg"]


def test_npz_missing_labels_or_negative_labels_raise_label_error(tmp_path):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(LabelError, match="no label array"):
        npz_source(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "neg.npz", images=np.zeros((3, 4, 4), dtype=np.uint8), labels=np.array([0, -1, 1]))
    with pytest.raises(LabelError, match="negative"):
        npz_source(tmp_path / "neg.npz")


def test_lower_jpeg_quality_gives_smaller_images(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    base = ((xx * 8 + yy * 3) % 256).astype(np.uint8)
    images = np.stack([np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8) for _ in range(8)])
    np.savez(tmp_path / "d.npz", images=images, labels=np.zeros(8, dtype=np.int64))
    sizes = {}
    for quality in (10, 95):
        source = npz_source(tmp_path / "d.npz", quality=quality)
        sizes[quality] = sum(len(source[i][1]["jpg"]) for i in range(len(source)))
        manifest = write_shards(tmp_path / "d.npz", tmp_path / f"q{quality}", quality=quality, progress=False)
        member_bytes = sum(size for group in manifest.index(0).members for ext, _, size in group if ext == "jpg")
        assert member_bytes == sizes[quality]
    assert sizes[10] < sizes[95]


def test_open_source_rejects_missing_and_unknown_paths(tmp_path):
    with pytest.raises(StreamPruneError, match="not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(StreamPruneError, match="not a recognised source"):
        open_source(tmp_path / "data.csv")
    assert isinstance(open_source([("k", {"txt": b"x"}, 0)]), ListSource)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Fashion-MNIST not installed")
def test_fashion_mnist_t10k_header_counts():
    images = read_idx(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28)
    assert labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    source = idx_source(FASHION_MNIST_DIR, split="t10k")
    assert len(source) == 10000
    assert source.class_names == FASHION_MNIST_CLASSES
