"""Feature mapping: feature cache (resume, staleness, no re-embedding), chunked k-means, votes."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from streamprune.masks import MaskFile
from streamprune.scoring import score_source
from streamprune.scoring.features import (
    ArrayStore,
    FeatureStore,
    embed_manifest,
    feature_paths,
    shard_is_complete,
)
from streamprune.scoring.fm import fm_cluster_scores, fm_votes, kmeans, kmeans_plus_plus
from streamprune.scoring.kmeans import mean_feature_variance
from streamprune.scoring.scores_file import ScoreFile, mask_from_scores
from streamprune.sources import FASHION_MNIST_DIR
from streamprune.writers import write_shards
from streamprune_cli.main import cli

N_CLASSES = 4


def _blob_images(n, seed, classes=range(N_CLASSES)):
    """8x8 grey images; class c lights up quadrant c, so pixels form well-separated blobs."""
    rng = np.random.default_rng(seed)
    classes = list(classes)
    labels = np.array([classes[i % len(classes)] for i in range(n)])
    images = rng.integers(0, 30, size=(n, 8, 8)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 200
    return images, labels


def _npz(path, n, seed, classes=range(N_CLASSES)):
    images, labels = _blob_images(n, seed, classes)
    np.savez(path, images=images, labels=labels)
    return str(path)


def pixels(img):
    """Transform used for feature injection: the raw grey pixels as a 64-d float vector."""
    return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0).flatten()


class CountingEmbed:
    """``embed`` that returns its input and counts the samples it saw (optionally failing)."""

    def __init__(self, fail_after=None):
        self.samples = 0
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, x):
        if self.fail_after is not None and self.samples >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        self.samples += len(x)
        return x


@pytest.fixture
def blobs(tmp_path):
    """80 source samples over 4 blob classes (8 shards of 10, png, unshuffled)."""
    return write_shards(_npz(tmp_path / "s.npz", 80, 0), tmp_path / "source", samples_per_shard=10, image_format="png", shuffle=False, progress=False)




IDENT = {"features": "pixels", "version": 1}


def test_embed_stores_float16_per_shard_and_reuses_it(tmp_path, blobs):
    embed = CountingEmbed()
    store = embed_manifest(blobs, tmp_path / "f", embed, IDENT, transform=pixels, batch_size=7, progress=False)
    assert embed.samples == 80 and store.num_samples == 80 and store.dim == 64
    array, sidecar = feature_paths(tmp_path / "f", blobs, 0)
    assert array.endswith(".f16.npy") and np.load(array, mmap_mode="r").dtype == np.float16
    meta = json.loads(Path(sidecar).read_text())
    assert meta["identity"] == IDENT and meta["samples"] == 10 and meta["dim"] == 64
    images, _ = _blob_images(80, 0)
    assert np.allclose(store.read_all(), images.reshape(80, 64) / 255.0, atol=2e-3)  # manifest order, float16 precision
    again = CountingEmbed()
    embed_manifest(blobs, tmp_path / "f", again, IDENT, transform=pixels, progress=False)
    assert again.calls == 0
    # another identity (other surrogate / checkpoint) makes the cache stale: everything again
    other = CountingEmbed()
    embed_manifest(blobs, tmp_path / "f", other, {**IDENT, "version": 2}, transform=pixels, progress=False)
    assert other.samples == 80
    with pytest.raises(Exception, match="missing, incomplete or stale"):
        FeatureStore(tmp_path / "f", blobs, IDENT)


@pytest.mark.integration
def test_embed_resumes_after_interruption_and_damaged_files(tmp_path, blobs):
    cache = tmp_path / "f"
    failing = CountingEmbed(fail_after=35)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        embed_manifest(blobs, cache, failing, IDENT, transform=pixels, batch_size=5, workers=0, progress=False)
    done = [k for k in range(8) if shard_is_complete(cache, blobs, k, IDENT)]
    assert done == [0, 1, 2]  # 35 samples = 3 complete shards + half of the 4th
    assert not [p for p in os.listdir(cache) if ".tmp-" in p]  # the partial shard was dropped
    resume = CountingEmbed()
    store = embed_manifest(blobs, cache, resume, IDENT, transform=pixels, batch_size=5, workers=2, progress=False)
    assert resume.samples == 50  # resumed at the first unfinished shard
    # a truncated array and a deleted array are both redone, nothing else
    array3, _ = feature_paths(cache, blobs, 3)
    with open(array3, "r+b") as fh:
        fh.truncate(os.path.getsize(array3) - 64)
    os.unlink(feature_paths(cache, blobs, 6)[0])
    repair = CountingEmbed()
    again = embed_manifest(blobs, cache, repair, IDENT, transform=pixels, batch_size=5, progress=False)
    assert repair.samples == 20
    assert np.array_equal(again.read_all(), store.read_all())


def test_chunk_reader_is_bounded(tmp_path, blobs):
    store = embed_manifest(blobs, tmp_path / "f", CountingEmbed(), IDENT, transform=pixels, progress=False)
    seen = 0
    for _start, chunk in store.iter_chunks(chunk_rows=4):
        assert chunk.dtype == np.float32 and len(chunk) <= 4
        seen += len(chunk)
    assert seen == 80 and store.max_chunk_rows == 4
    store.max_chunk_rows = store.chunks_read = 0
    km = kmeans(store, 4, iters=5, chunk_rows=3, init_sample=40)
    assert store.max_chunk_rows <= 40  # the k-means++ subsample (init_sample rows) is the largest read
    store.max_chunk_rows = 0
    kmeans(store, 4, iters=5, chunk_rows=3, init=km.centroids)
    assert store.max_chunk_rows == 3 and store.chunks_read > 5 * 80 / 3
    rows = np.array([79, 0, 15, 16])
    assert np.array_equal(store.take(rows), store.read_all()[rows])


@pytest.mark.integration  # imports scikit-learn
def test_kmeans_matches_sklearn_inertia_with_the_same_init():
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(4000, n_features=12, centers=10, cluster_std=2.0, random_state=3)
    x = x.astype(np.float32)
    init = kmeans_plus_plus(x, 10, np.random.default_rng(0))
    ours = kmeans(ArrayStore(x), 10, init=init, iters=300, tol=1e-8, chunk_rows=333)
    ref = KMeans(10, init=init, n_init=1, max_iter=300, tol=1e-8, algorithm="lloyd").fit(x)
    assert abs(ours.inertia - ref.inertia_) <= 1e-4 * ref.inertia_
    assert np.array_equal(np.bincount(ours.assignments, minlength=10), np.bincount(ref.labels_, minlength=10))
    # seeded k-means++ is deterministic
    a, b = kmeans(x, 10, seed=5), kmeans(x, 10, seed=5)
    assert np.array_equal(a.assignments, b.assignments) and a.inertia == b.inertia


def test_kmeans_tolerance_and_iterations_follow_sklearn():
    """tol is relative to the mean per-dimension variance (sklearn's _tolerance), not the summed one."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(3000, n_features=8, centers=6, cluster_std=4.0, random_state=1)
    x = (x * 5 + 40).astype(np.float32)  # off the origin: the variance must be centred
    assert mean_feature_variance(ArrayStore(x), chunk_rows=100) == pytest.approx(np.mean(np.var(x.astype(np.float64), axis=0)), rel=1e-12)
    init = kmeans_plus_plus(x, 6, np.random.default_rng(2))
    iterations = []
    for tol in (1e-1, 1e-2, 1e-3, 1e-4, 0.0):
        ours = kmeans(ArrayStore(x), 6, init=init, iters=300, tol=tol, chunk_rows=257)
        ref = KMeans(6, init=init, n_init=1, max_iter=300, tol=tol, algorithm="lloyd").fit(x)
        assert ours.iterations == ref.n_iter_, tol
        assert np.array_equal(ours.assignments, ref.labels_), tol
        np.testing.assert_allclose(ours.centroids, ref.cluster_centers_, rtol=0, atol=1e-3)
        assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-5)
        iterations.append(ours.iterations)
    # the tolerances separate: a threshold on the summed variance (8x larger here) stops earlier
    assert iterations == [3, 4, 5, 6, 6]


def test_votes_index_distances_by_cluster_not_target():
    centroids = np.eye(6, dtype=np.float32) * 10
    target = np.tile(centroids[4], (3, 1)) + 0.1  # all near centroid 4
    v = fm_votes(target, centroids)
    assert v["votes"].tolist() == [0, 0, 0, 0, 3, 0]
    assert v["ranking"][0] == 4
    # zero-vote clusters: ordered by summed inverse distance, then id
    target2 = np.array([[9.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 9.5]], dtype=np.float32)
    v2 = fm_votes(target2, centroids)
    assert v2["votes"].tolist() == [1, 0, 0, 0, 0, 1]
    assert v2["ranking"].tolist() == [5, 0, 1, 2, 3, 4]  # 5 is closer to its voter; 1..4 tie -> id


def test_fm_keeps_the_clusters_of_the_target_classes(tmp_path, blobs):
    store = embed_manifest(blobs, tmp_path / "f", CountingEmbed(), IDENT, transform=pixels, progress=False)
    km = kmeans(store, 4, iters=20, seed=0)
    labels = blobs.labels()
    # every cluster is one blob class
    for j in range(4):
        assert len(np.unique(labels[km.assignments == j])) == 1
    timg, _ = _blob_images(12, 9, classes=[1, 3])
    scores = fm_cluster_scores(km, timg.reshape(12, 64) / 255.0, blobs.fingerprint, manifest=blobs.path, num_samples=80)
    assert scores.level == "cluster" and scores.higher_is == "keep"
    mask = mask_from_scores(blobs, scores, 0.5)
    assert mask.kept == 40
    assert set(np.unique(labels[mask.keep]).tolist()) == {1, 3}


def test_fm_through_score_source_reclusters_without_re_embedding(tmp_path, tiny_arch, monkeypatch):
    from streamprune import models

    source = write_shards(_npz(tmp_path / "s.npz", 60, 0), tmp_path / "source", samples_per_shard=20, image_format="png", progress=False)
    target = _npz(tmp_path / "t.npz", 15, 1, classes=[2])
    calls = {"n": 0}
    real = models.features

    def counting(model, x):
        calls["n"] += 1
        return real(model, x)

    monkeypatch.setattr(models, "features", counting)
    out = tmp_path / "out"
    r = score_source(source, "fm", [0.5, 0.75], out, target=target, surrogate=tiny_arch, input_size=10, batch_size=16, progress=False, clusters=8)
    assert calls["n"] > 0
    scores = ScoreFile.load(r["scores"])
    assert scores.method == "fm" and scores.level == "cluster" and scores.num_items == 8
    assert len(scores.assignments) == 60 and scores.scores.sum() == 15
    assert len(r["kept"][0.5]) == 4 and len(r["kept"][0.75]) == 2
    mask = MaskFile(r["masks"][0.5])
    assert mask.kept == int(np.isin(scores.assignments, r["kept"][0.5]).sum())
    assert os.path.isdir(out / "features") and os.path.isdir(out / "features" / "target")
    calls["n"] = 0
    r2 = score_source(source, "fm", [0.5], out, target=out / "target", surrogate=tiny_arch, input_size=10, progress=False, clusters=5)
    assert calls["n"] == 0  # source and target features came from the cache
    assert ScoreFile.load(r2["scores"]).num_items == 5
    # over classes: class level, no clustering
    r3 = score_source(source, "fm", [0.5], tmp_path / "oc", target=target, surrogate=tiny_arch, input_size=10, progress=False, fm_over_classes=True)
    s3 = ScoreFile.load(r3["scores"])
    assert s3.level == "class" and s3.variant == "over-classes" and s3.scores.sum() == 15
    assert len(r3["kept"][0.5]) == 2


def test_cli_fm(tmp_path, tiny_arch):
    source = write_shards(_npz(tmp_path / "s.npz", 40, 0), tmp_path / "source", samples_per_shard=10, image_format="png", progress=False)
    target = _npz(tmp_path / "t.npz", 10, 1, classes=[0])
    runner = CliRunner()
    r = runner.invoke(cli, ["score", source.path, "--method", "fm", "--clusters", "6", "--kmeans-iters", "5", "--target", target,
                            "--model", tiny_arch, "--input-size", "10", "--ratio", "0.5", "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / "o" / "scores.json").read_text())
    assert scores["num_items"] == 6 and scores["params"]["kmeans_iters"] == 5 and len(scores["assignments"]) == 40
    assert (tmp_path / "o" / "fm-0.5.spmask").exists()
    r = runner.invoke(cli, ["score", source.path, "--method", "lm", "--clusters", "6", "--target", target, "--model", tiny_arch,
                            "--ratio", "0.5", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--clusters is not an option of --method lm" in r.output


FASHION = FASHION_MNIST_DIR


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(3600)  # when run alone it also pays for the shared demo run
def test_fm_on_fashion_mnist_keeps_footwear_clusters(tmp_path, fashion):
    """FM with the session's surrogate on a class-balanced 10,000-image subset of the train split.

    1,000 images per class keep the footwear at 30% of the source, as in the full split,
    while embedding a sixth of the images.
    """
    from streamprune.demo import FOOTWEAR
    from streamprune.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ArraySource, idx_source

    full = idx_source(FASHION_MNIST_DIR, split="train")
    rng = np.random.default_rng(0)
    pick = np.sort(np.concatenate([rng.choice(np.flatnonzero(full.labels == c), 1000, replace=False) for c in range(10)]))
    subset = ArraySource(full.images[pick], full.labels[pick], class_names=FASHION_MNIST_CLASSES, prefix="train-")
    source = write_shards(subset, tmp_path / "train", samples_per_shard=2500, workers=2, progress=False)
    assert np.bincount(source.labels()).tolist() == [1000] * 10
    r = score_source(
        source, "fm", [0.8], tmp_path / "fm", target=fashion.target, surrogate="resnet18", checkpoint=fashion.checkpoint,
        workers=1, progress=False, clusters=30,
    )
    scores = ScoreFile.load(r["scores"])
    assert scores.level == "cluster" and len(r["kept"][0.8]) == 6
    labels = source.labels()
    kept = MaskFile(r["masks"][0.8]).to_bool()
    footwear = np.isin(labels[kept], FOOTWEAR).mean()
    print(f"FM K=30 ratio 0.8: kept {kept.sum()} samples, {footwear:.3f} footwear; params {scores.params}")
    assert footwear > 0.8
