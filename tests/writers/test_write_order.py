"""The write order computed per shard (``WriteOrder``, ``FeistelPermutation``) and the shard writer using it."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from streamprune.errors import OutputExistsError
from streamprune.writers import order as order_module
from streamprune.writers.order import FeistelPermutation, WriteOrder, sample_order
from tests.builders import make_samples


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 16, 17, 255, 256, 257, 1000, 4099])
def test_feistel_is_a_bijection_of_the_range(n):
    for seed in (0, 1, 99):
        got = FeistelPermutation(n, seed)(np.arange(n))
        assert sorted(got.tolist()) == list(range(n))
        assert np.array_equal(got, FeistelPermutation(n, seed)(np.arange(n)))  # the seed alone decides it


def test_feistel_shuffles_and_seeds_differ():
    a, b = FeistelPermutation(10_000, 1)(np.arange(10_000)), FeistelPermutation(10_000, 2)(np.arange(10_000))
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(np.arange(10_000), a)[0, 1]) < 0.05  # no trace of the input order left
    assert np.array_equal(FeistelPermutation(10_000, 1)(np.array([17, 3, 17])), a[[17, 3, 17]])  # per position


def test_below_the_threshold_the_order_is_numpys_array():
    labels = np.random.default_rng(1).integers(-1, 3, 500)
    plain = WriteOrder(500, True, 7)
    grouped = WriteOrder(500, True, 7, labels=lambda: labels)
    assert not plain.lazy and np.array_equal(plain.positions(0, 500), sample_order(500, True, 7))
    assert np.array_equal(grouped.positions(10, 90), sample_order(500, True, 7, labels)[10:90])


def test_lazy_order_by_ranges_is_one_permutation():
    order = WriteOrder(1003, True, 5, lazy_from=1)
    assert order.lazy
    parts = [order.positions(a, min(a + 97, 1003)) for a in range(0, 1003, 97)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1003))
    assert np.array_equal(np.concatenate(parts), FeistelPermutation(1003, 5)(np.arange(1003)))
    assert np.array_equal(WriteOrder(50, False, 5, lazy_from=1).positions(0, 50), np.arange(50))


def test_lazy_class_sorted_order_keeps_class_ranges_and_shuffles_within():
    labels = np.repeat([0, 1, 3, 4], [5, 40, 1, 54])  # a folder source: class after class
    order = WriteOrder(100, True, 2, labels=lambda: labels, lazy_from=1)
    assert order.lazy
    got = np.concatenate([order.positions(a, min(a + 7, 100)) for a in range(0, 100, 7)])
    assert np.array_equal(labels[got], labels)  # class after class, in label order
    for c in (0, 1, 3, 4):
        rng = np.flatnonzero(labels == c)
        assert sorted(got[labels[got] == c].tolist()) == rng.tolist()
    assert not np.array_equal(got[5:45], np.arange(5, 45))  # shuffled within the class
    mixed = WriteOrder(100, True, 2, labels=lambda: np.tile([0, 1], 50), lazy_from=1)  # labels not in class order
    assert not mixed.lazy and np.array_equal(mixed.positions(0, 100), sample_order(100, True, 2, np.tile([0, 1], 50)))


def _tar_keys(manifest):
    keys = []
    for k in range(len(manifest.shards)):
        with tarfile.open(manifest.shard_path(k)) as tf:
            keys.extend(dict.fromkeys(m.name.split(".", 1)[0] for m in tf.getmembers()))
    return keys


def test_writer_computes_the_order_per_shard_from_the_threshold_on(tmp_path, shard_writer, monkeypatch):
    samples = make_samples(53)
    numpy_order = shard_writer(samples, tmp_path / "small", seed=4)
    monkeypatch.setattr(order_module, "LAZY_FROM", 50)
    lazy = shard_writer(samples, tmp_path / "lazy", seed=4)
    expected = [samples[i][0] for i in FeistelPermutation(53, 4)(np.arange(53))]
    assert _tar_keys(lazy) == lazy.keys() == expected  # read back with tarfile
    assert sorted(expected) == sorted(numpy_order.keys()) and expected != numpy_order.keys()
    resumed = shard_writer(samples, tmp_path / "lazy", seed=4, resume=True)  # the same run resumes
    assert resumed.keys() == expected
    monkeypatch.setattr(order_module, "LAZY_FROM", 1 << 28)
    with pytest.raises(OutputExistsError):  # NumPy's order over shards written in the other: refused, not mixed
        shard_writer(samples, tmp_path / "lazy", seed=4, resume=True)


def test_class_starts_give_the_lazy_class_order_without_labels():
    labels = np.repeat([0, 1, 2], [4, 0, 9])
    calls = []

    def all_labels():
        calls.append(1)
        return labels

    by_starts = WriteOrder(13, True, 6, labels=all_labels, class_starts=lambda: np.array([0, 4, 4, 13]), lazy_from=1)
    by_labels = WriteOrder(13, True, 6, labels=all_labels, lazy_from=1)
    assert np.array_equal(by_starts.positions(0, 13), by_labels.positions(0, 13)) and len(calls) == 1
