"""The measuring helpers behind the suites' figures: paired ratios, the baselines, the fits, the file lists."""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks import downstream_bench, io_bench, jpegdata, pagecache, score_bench, transfer_bench
from benchmarks.io_bench import Dataset
from streamprune.kernels import nearest_centroid
from streamprune.manifest import Manifest
from streamprune.writers import write_shards


def test_numpy_baseline_uses_the_kernels_formula_and_agrees_with_it():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 16), dtype=np.float32)
    c = x[:7].copy()
    idx_np, dist_np = score_bench.numpy_mm_nearest(x, c, chunk=128)
    idx_nb, dist_nb = nearest_centroid(x, c)
    assert (idx_np == idx_nb).mean() > 0.99  # float32 rounding may flip a near-tie
    np.testing.assert_allclose(dist_np, dist_nb, rtol=1e-3, atol=1e-3)
    assert (score_bench.numpy_broadcast_nearest(x, c) == idx_nb).mean() > 0.99


def test_numpy_update_matches_a_plain_sum_and_keeps_empty_clusters():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 5), dtype=np.float32)
    idx = rng.integers(0, 4, 300)  # cluster 4 stays empty
    sums, counts = score_bench.numpy_accumulate(x, idx, 5, chunk=64)
    for j in range(5):
        np.testing.assert_allclose(sums[j], x[idx == j].astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
    previous = np.full((5, 5), 9.0, dtype=np.float32)
    cent = score_bench.lloyd_update(sums, counts, previous)
    assert counts[4] == 0 and (cent[4] == 9.0).all()
    np.testing.assert_allclose(cent[0], x[idx == 0].mean(0), rtol=1e-5, atol=1e-6)


def test_kernel_targets_are_inconclusive_when_the_interval_straddles_the_threshold():
    def arm(lo, med, hi):
        return {"assign_vs_numba": {"median": med, "min": lo, "max": hi, "n": 5, "coverage": 0.9375}}

    results = {"kernels": {"arms": {"numpy_mm": arm(1.5, 2.0, 2.5), "numpy_broadcast": arm(20, 30, 40), "torch_mm": arm(0.8, 1.1, 1.3)}}}
    verdicts = [t.verdict for t in score_bench.score_targets(results)]
    assert verdicts == ["missed", "met", "inconclusive"]


def test_lm_cost_counts_the_surrogates_training():
    d = {"train_seconds_measured": 20.0, "train_steps_measured": 60, "lm_score_source_seconds": 5.0, "epoch_seconds_extrapolated": 100.0}
    cost = score_bench.lm_cost(d)
    assert cost["lm_total_seconds"] == 25.0
    assert cost["total_fraction_of_epoch"] == pytest.approx(0.25)
    assert cost["score_fraction_of_epoch"] == pytest.approx(0.05)
    assert score_bench.lm_cost({"skipped": "no data"}) == {}


def test_merged_parts_record_who_measured_them_without_interpreter_paths():
    earlier = {"command": "/opt/py/bin/python3.11 benchmarks/score_bench.py --skip a,d --merge", "earlier_command": "python score_bench.py",
               "embed": {"x": 1}, "kernels": {"y": 2}}
    parts = score_bench.merged_parts(earlier)
    assert parts["kernels"]["measured_by"] == "python benchmarks/score_bench.py --skip a,d --merge"
    assert parts["embed"]["measured_by"] == "python score_bench.py"  # skipped then, carried over from the run before
    assert score_bench.plain_command("python -m benchmarks score") == "python -m benchmarks score"


def test_dataset_files_list_every_file_a_reader_opens(tmp_path):
    images = np.zeros((6, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "src.npz", images=images, labels=np.arange(6) % 2)
    manifest = write_shards(str(tmp_path / "src.npz"), str(tmp_path / "shards"), samples_per_shard=3, progress=False)
    manifest = Manifest.load(manifest.path)
    files = jpegdata.dataset_files(manifest)
    assert [len(files[k]) for k in ("shards", "index_json", "index_npz", "manifest")] == [2, 2, 2, 1]
    assert all(p.endswith(".index.npz") for p in files["index_npz"])
    ds = Dataset(name="t", manifest_path=manifest.path, urls=files["shards"], files=files, data_bytes=0, samples=6)
    ds.mask_paths[0.5] = "mask.spmask"
    assert ds.all_files(0.5) == [*files["shards"], *files["index_json"], *files["index_npz"], manifest.path, "mask.spmask"]


def test_fixed_cost_fit_recovers_a_line():
    runs = [{"method": "unpruned" if k == 60000 else "x", "pretrain": {"kept": k, "seconds": 0.5 + 0.3 * k / 1000, "cpu_seconds": 0.2 + 0.25 * k / 1000}}
            for k in (60000, 36000, 24000, 12000)]
    fit = transfer_bench.fixed_cost_fit(runs, [0.8])
    assert fit["wall"]["fixed_seconds"] == pytest.approx(0.5)
    assert fit["wall"]["seconds_per_1000_kept"] == pytest.approx(0.3)
    f = 0.5 / (0.5 + 18.0)
    assert fit["wall"]["fitted_time_ratio"]["0.8"] == pytest.approx(f + (1 - f) * 0.2)
    assert transfer_bench.fixed_cost_fit(runs[:1]) == {}


def test_spearman_handles_ties_like_average_ranks():
    assert downstream_bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert downstream_bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks 1.5, 1.5, 3, 4 against 1, 2, 3, 4
    r = np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1]
    assert downstream_bench.spearman([0, 0, 1, 2], [1, 2, 3, 4]) == pytest.approx(r)


def test_io_floor_replays_read_exactly_the_ranges(tmp_path, monkeypatch):
    paths = []
    for k in range(3):
        path = tmp_path / f"s{k}.tar"
        path.write_bytes(bytes([k]) * 100_000)
        paths.append(str(path))
    ranges = [(paths[0], [(0, 1000), (5000, 9000)]), (paths[1], [(100, 200)]), (paths[2], [(0, 50_000), (60_000, 60_001)])]
    want = {(p, lo, hi - lo) for p, spans in ranges for lo, hi in spans}
    events = []
    real_preadv, real_fadvise = os.preadv, os.posix_fadvise

    def preadv(fd, buffers, offset):
        events.append(("read", os.readlink(f"/proc/self/fd/{fd}"), offset, sum(len(b) for b in buffers)))
        return real_preadv(fd, buffers, offset)

    def fadvise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            events.append(("hint", os.readlink(f"/proc/self/fd/{fd}"), offset, length))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    total = sum(n for *_, n in want)
    assert io_bench.replay_floor(ranges) == total
    reads = [e[1:] for e in events if e[0] == "read"]
    assert reads == [(p, lo, hi - lo) for p, spans in ranges for lo, hi in spans]  # serial, in order
    assert {e[1:] for e in events if e[0] == "hint"} == want
    # one window over all files: the last file's first range is announced before the first file's last read
    first_hint = min(i for i, e in enumerate(events) if e[:2] == ("hint", paths[2]))
    last_read = max(i for i, e in enumerate(events) if e[:2] == ("read", paths[0]))
    assert first_hint < last_read
    events.clear()
    assert io_bench.replay_floor_parallel(ranges, depth=4) == total
    assert sorted(e[1:] for e in events) == sorted(want) and all(e[0] == "read" for e in events)


def test_device_model_charges_each_request_its_fixed_cost():
    probe = {"fixed_us_per_request": 100.0, "MBps": 1000.0}
    base = {"reader": "streamprune", "cache": "cold", "variant": "raw", "ratio": 0.0, "median_device_reads": 500, "median_device_read_bytes": 500e6}
    pruned = {**base, "ratio": 0.8, "median_device_reads": 700, "median_device_read_bytes": 100e6}
    warm = {**pruned, "cache": "warm"}
    rows = [base, pruned, warm]
    io_bench.add_device_model(rows, probe)
    assert pruned["device_model_seconds"] == pytest.approx(0.07 + 0.1)
    assert pruned["device_model_speedup"] == pytest.approx((0.05 + 0.5) / (0.07 + 0.1))  # 3.2, not the 5 of the bytes alone
    assert "device_model_speedup" not in warm
    io_bench.add_device_model(rows, {"unavailable": "O_DIRECT: not supported"})  # no probe: nothing added, nothing raised


def test_block_stat_counts_a_cold_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    before = pagecache.block_stat(str(path))
    if before is None:
        pytest.skip("no block device counters for this file system")
    pagecache.evict([str(path)])
    pagecache.warm([str(path)])
    delta = io_bench.device_delta(before, pagecache.block_stat(str(path)))
    assert delta["device_reads"] >= 1 and delta["device_read_bytes"] >= 1 << 20
