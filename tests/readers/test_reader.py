"""The pruned webdataset reader: same samples as webdataset-then-filter, never reads pruned bytes.

The reference for every equivalence check is plain ``webdataset.WebDataset`` over the same
shards followed by a filter on the kept keys; the dataset builder's own record of what was
written is checked against that reference first, so a broken reference cannot hide a bug.
"""

from __future__ import annotations

import collections
import os
import shutil

import numpy as np
import pytest
import webdataset as wds
from _dist_worker import build_dataset, sample_key
from torch.utils.data import DataLoader

import streamprune
from streamprune import (
    IndexMismatchError,
    Manifest,
    MaskFile,
    MaskMismatchError,
    PrunedSource,
    PrunedWebDataset,
    mask_from_bool,
    mask_from_classes,
    pruned_tarfile_samples,
    random_mask,
)
from streamprune.readers import webdataset as wds_reader
from streamprune.readers.byterange import ReadAhead
from streamprune.writers.tar import TarShardWriter

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

# ---------------------------------------------------------------------------------------------
# fixtures


# built, manifest, reference: readers/conftest.py (build_dataset's defaults)


def _one_shard_empty_mask(manifest, built):
    rng = np.random.default_rng(11)
    keep = rng.random(manifest.num_samples) < 0.6
    keep[built.shard_of == 2] = False  # the biggest shard: all pruned
    keep[built.shard_of == 5] = True  # another: all kept
    return mask_from_bool(manifest, keep)


MASKS = {
    "all-kept": lambda m, b: random_mask(m, 0.0, seed=1),
    "random-0.4": lambda m, b: random_mask(m, 0.4, seed=2),
    "random-0.8": lambda m, b: random_mask(m, 0.8, seed=3),
    "class-level": lambda m, b: mask_from_classes(m, [1, 4]),
    "random-class": lambda m, b: random_mask(m, 0.5, level="class", seed=4),
    "one-shard-all-pruned": _one_shard_empty_mask,
    "keep-one": lambda m, b: mask_from_bool(m, np.arange(m.num_samples) == 200),
}


@pytest.fixture(scope="module", params=sorted(MASKS))
def mask(request, manifest, built):
    return MASKS[request.param](manifest, built)


@pytest.fixture(scope="module")
def mask_40(manifest):
    return random_mask(manifest, 0.4, seed=2)


def kept_keys(mask, manifest):
    keys = manifest.keys()
    return [keys[i] for i in np.flatnonzero(mask.keep)]


def assert_same_samples(got, want):
    """Same samples, same order, same keys, byte-identical values for every extension."""
    assert [s["__key__"] for s in got] == [s["__key__"] for s in want]
    for g, w in zip(got, want):
        assert set(g) == set(w), g["__key__"]
        for ext in w:
            assert g[ext] == w[ext], (g["__key__"], ext)
            if ext not in ("__key__", "__url__"):
                assert isinstance(g[ext], bytes), (g["__key__"], ext, type(g[ext]))


# ---------------------------------------------------------------------------------------------
# the reference itself


def test_reference_matches_what_was_written(built, reference, manifest):
    assert [s["__key__"] for s in reference] == built.keys == manifest.keys()
    for s, files in zip(reference, built.files):
        assert {k: v for k, v in s.items() if not k.startswith("__")} == files
    sizes = [len(f["bin"]) for f in built.files]
    assert min(sizes) == 0 and max(sizes) >= 100_000  # empty members and big ones are present
    assert any(len(k) > 100 for k in built.keys) and any("/" in k for k in built.keys)
    assert len(set(built.shard_sizes)) == len(built.shard_sizes)


# ---------------------------------------------------------------------------------------------
# equivalence with webdataset + filter


@pytest.mark.parametrize("as_file", [False, True], ids=["keepmask", "maskfile"])
def test_equivalent_to_webdataset_filtered(mask, manifest, reference, tmp_path, as_file):
    kept = set(kept_keys(mask, manifest))
    want = [s for s in reference if s["__key__"] in kept]
    assert len(want) == mask.kept
    m = mask.save(tmp_path / "m.spmask") if as_file else mask
    ds = PrunedWebDataset(manifest.path if as_file else manifest, m)
    got = list(ds)
    assert_same_samples(got, want)
    assert len(ds) == mask.kept
    # __url__ is the shard file the sample came from
    for s in got:
        k = manifest.keys().index(s["__key__"])
        shard = int(np.searchsorted(manifest.shard_offsets, k, side="right") - 1)
        assert s["__url__"] == manifest.shard_path(shard)
    # a second pass over the same object gives the same epoch
    assert [s["__key__"] for s in ds] == [s["__key__"] for s in want]


def test_no_mask_reads_everything(manifest, reference):
    ds = PrunedWebDataset(manifest)
    assert_same_samples(list(ds), reference)
    assert len(ds) == manifest.num_samples


@pytest.mark.parametrize("max_run_bytes", [1, 4096, 65536, 1 << 22])
def test_run_size_does_not_change_samples(mask_40, manifest, reference, max_run_bytes):
    kept = set(kept_keys(mask_40, manifest))
    want = [s for s in reference if s["__key__"] in kept]
    got = list(PrunedWebDataset(manifest, mask_40, max_run_bytes=max_run_bytes))
    assert_same_samples(got, want)


def test_fadvise_off_gives_same_samples(mask_40, manifest, reference):
    kept = set(kept_keys(mask_40, manifest))
    want = [s for s in reference if s["__key__"] in kept]
    assert_same_samples(list(PrunedWebDataset(manifest, mask_40, fadvise=False, check_headers=False)), want)


# ---------------------------------------------------------------------------------------------
# pruned bytes are never read


class ReadRecorder:
    """Records every os.pread and POSIX_FADV_WILLNEED made on the dataset's shard files."""

    def __init__(self, monkeypatch, shard_paths):
        self.shards = {os.path.realpath(p): k for k, p in enumerate(shard_paths)}
        self.reads = collections.defaultdict(list)  # shard -> [(offset, length)]
        self.willneed = collections.defaultdict(list)
        self.events = []  # ("read" | "willneed", shard, offset, length), in call order
        self.other_reads = 0
        real_pread = os.pread
        real_fadvise = getattr(os, "posix_fadvise", None)

        def shard_of(fd):
            return self.shards.get(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))

        def pread(fd, length, offset):
            k = shard_of(fd)
            if k is None:
                self.other_reads += 1
            else:
                self.reads[k].append((offset, length))
                self.events.append(("read", k, offset, length))
            return real_pread(fd, length, offset)

        def fadvise(fd, offset, length, advice):
            if advice == os.POSIX_FADV_WILLNEED:
                k = shard_of(fd)
                if k is not None:
                    self.willneed[k].append((offset, length))
                    self.events.append(("willneed", k, offset, length))
            return real_fadvise(fd, offset, length, advice)

        monkeypatch.setattr(os, "pread", pread)
        if real_fadvise is not None:
            monkeypatch.setattr(os, "posix_fadvise", fadvise)

    @property
    def calls(self):
        return sum(len(v) for v in self.reads.values())


def kept_intervals(index, keep):
    """Merged [start, end) byte ranges of the kept samples of one shard."""
    out = []
    for i in np.flatnonzero(keep):
        a, b = int(index.start[i]), int(index.end[i])
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return out


def inside(intervals, a, b):
    return any(lo <= a and b <= hi for lo, hi in intervals)


def covered(ranges, a, b):
    """Is [a, b) covered by the union of (offset, length) ranges?"""
    pos = a
    for off, length in sorted(ranges):
        if off <= pos < off + length:
            pos = off + length
        if pos >= b:
            return True
    return pos >= b


def check_reads(rec, manifest, mask, extra_ok=None):
    for k in range(len(manifest.shards)):
        index = manifest.index(k)
        keep = mask.shard(k)
        intervals = kept_intervals(index, keep)
        reads = [(o, n) for o, n in rec.reads.get(k, []) if n > 0]
        # nothing read that is not part of a kept sample ...
        for off, length in reads:
            assert inside(intervals, off, off + length), (k, off, length)
        # ... so no read overlaps any pruned sample (stated directly, too)
        for i in np.flatnonzero(~keep):
            a, b = int(index.start[i]), int(index.end[i])
            for off, length in reads:
                assert off + length <= a or b <= off, f"shard {k}: read [{off}, {off + length}) touches pruned sample {index.keys[i]} [{a}, {b})"
        for off, length in rec.willneed.get(k, []):
            assert length > 0 and inside(intervals, off, off + length), ("prefetch", k, off, length)
        # every kept member was read
        for i in np.flatnonzero(keep):
            for ext, offset, size in index.members[i]:
                if size:
                    assert covered(reads, offset, offset + size), (k, index.keys[i], ext)


def test_pruned_bytes_never_read(mask, manifest, monkeypatch):
    rec = ReadRecorder(monkeypatch, [manifest.shard_path(k) for k in range(len(manifest.shards))])
    got = list(PrunedWebDataset(manifest, mask))
    assert len(got) == mask.kept
    check_reads(rec, manifest, mask)
    for k in range(len(manifest.shards)):
        if not mask.shard(k).any():
            assert not rec.reads.get(k), f"shard {k} has nothing kept but was read"


def test_pruned_bytes_never_read_by_tarfile_stage(mask_40, manifest, built, monkeypatch):
    rec = ReadRecorder(monkeypatch, built.shard_paths)
    pipe = wds.DataPipeline(wds.SimpleShardList(built.shard_paths), pruned_tarfile_samples(manifest, mask_40))
    assert len(list(pipe)) == mask_40.kept
    check_reads(rec, manifest, mask_40)


def test_everything_pruned_reads_nothing(manifest, built, monkeypatch):
    mask = mask_from_bool(manifest, np.zeros(manifest.num_samples, dtype=bool))
    rec = ReadRecorder(monkeypatch, built.shard_paths)
    ds = PrunedWebDataset(manifest, mask)
    assert len(ds) == 0 and list(ds) == []
    assert rec.calls == 0 and not rec.willneed
    assert loader_keys(ds, 2) == []
    pipe = wds.DataPipeline(wds.SimpleShardList(built.shard_paths), pruned_tarfile_samples(manifest, mask))
    assert list(pipe) == [] and rec.calls == 0


def test_adjacent_kept_samples_are_coalesced(manifest, built, monkeypatch):
    # keep long runs: the first two thirds of every shard
    keep = np.concatenate([np.arange(n) < (2 * n + 2) // 3 for n in built.shard_sizes])
    mask = mask_from_bool(manifest, keep)
    members = sum(len(built.files[i]) for i in np.flatnonzero(keep))
    rec = ReadRecorder(monkeypatch, built.shard_paths)
    got = list(PrunedWebDataset(manifest, mask))
    assert len(got) == mask.kept
    check_reads(rec, manifest, mask)
    assert rec.calls < members
    assert rec.calls < mask.kept  # far fewer reads than samples, not just than members


@pytest.mark.parametrize("max_run_bytes", [4096, 65536])
def test_reads_respect_max_run_bytes(manifest, built, monkeypatch, max_run_bytes):
    mask = random_mask(manifest, 0.2, seed=9)
    rec = ReadRecorder(monkeypatch, built.shard_paths)
    got = list(PrunedWebDataset(manifest, mask, max_run_bytes=max_run_bytes))
    assert len(got) == mask.kept
    check_reads(rec, manifest, mask)
    for k, reads in rec.reads.items():
        index = manifest.index(k)
        singles = {(offset, size) for group in index.members for _, offset, size in group}
        for off, length in reads:
            # a coalesced read stays under the limit; a bigger read is exactly one member
            # (a sample too big for the limit is read member by member) or a tar header check
            assert length <= max_run_bytes or (off, length) in singles, (k, off, length)


# ---------------------------------------------------------------------------------------------
# read-ahead: one window of hints across the shards of an epoch


def test_read_ahead_runs_on_into_the_next_shard(mask_40, manifest, built, monkeypatch):
    rec = ReadRecorder(monkeypatch, built.shard_paths)
    assert len(list(PrunedWebDataset(manifest, mask_40))) == mask_40.kept
    check_reads(rec, manifest, mask_40)
    read = [k for k in range(len(manifest.shards)) if mask_40.shard(k).any()]
    assert len(read) >= 3
    for k, after in zip(read, read[1:]):
        last_read = max(i for i, e in enumerate(rec.events) if e[:2] == ("read", k))
        first_hint = min(i for i, e in enumerate(rec.events) if e[:2] == ("willneed", after))
        assert first_hint < last_read, f"shard {after}'s first kept run was announced only after shard {k} was read"


@pytest.mark.integration
def test_shards_opened_ahead_are_bounded_and_closed(mask_40, manifest, built, monkeypatch):
    monkeypatch.setattr(wds_reader, "SHARDS_AHEAD", 2)
    shard_paths = {os.path.realpath(p) for p in built.shard_paths}

    def open_shards():
        fds = os.listdir("/proc/self/fd")
        return sum(1 for fd in fds if os.path.realpath(os.path.join("/proc/self/fd", fd)) in shard_paths)

    most = []
    real_pread = os.pread

    def pread(fd, length, offset):
        most.append(open_shards())
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert len(list(PrunedWebDataset(manifest, mask_40))) == mask_40.kept
    assert max(most) == 3  # the shard being read and two ahead, of 7
    it = iter(PrunedWebDataset(manifest, mask_40))
    next(it)
    assert open_shards() == 3
    it.close()  # abandoned mid-epoch: the shards opened ahead are closed too
    assert open_shards() == 0


def test_error_opening_a_shard_ahead_is_raised_at_its_turn(dataset_copy):
    manifest = Manifest.load(dataset_copy)
    with open(manifest.shard_path(1), "ab") as fh:
        fh.write(bytes(1024))  # shard 1 no longer matches its index: opening it fails
    got = []
    with pytest.raises(IndexMismatchError, match="shard-000001.tar"):
        for sample in PrunedWebDataset(dataset_copy, None):
            got.append(sample["__key__"])
    assert got == manifest.index(0).keys  # every sample of shard 0 first, though shard 1 was opened while reading it


class _Hinted:
    """What :class:`ReadAhead` needs of a shard: an open descriptor and ``fadvise`` on."""

    def __init__(self, fd):
        self.fd = fd
        self.fadvise = True


def test_read_ahead_window(tmp_path, monkeypatch):
    hints = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: hints.append((fd, off, n, advice)))
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDONLY)
    try:
        a, b = _Hinted(fd), _Hinted(fd)
        later = [b]

        def more():
            if not later:
                return False
            ra.add(later.pop(), [1000, 1100], [1050, 1400])
            return True

        ra = ReadAhead(window_bytes=100, more=more)
        ra.add(a, [0, 40, 80], [30, 70, 90])  # runs of 30, 30 and 10 bytes
        ra.fill()
        assert [(off, n) for _, off, n, _ in hints] == [(0, 30), (40, 30), (80, 10), (1000, 50)]  # 120: past 100 by one run
        assert {advice for *_, advice in hints} == {os.POSIX_FADV_WILLNEED}
        ra.consumed(30 + 30)
        ra.fill()  # 60 ahead: room, so the next run, though 300 bytes
        assert hints[-1][1:3] == (1100, 300) and len(hints) == 5
        ra.consumed(10 + 50)
        ra.fill()  # 300 ahead: no room
        assert len(hints) == 5
        ra.consumed(300)
        ra.fill()  # room, but nothing queued and nothing more
        assert len(hints) == 5 and not later
        closed = _Hinted(-1)  # a shard closed before its runs were announced: skipped
        ra.add(closed, [0], [10])
        ra.add(a, [200], [210])
        ra.fill()
        assert hints[-1][1:3] == (200, 10) and len(hints) == 6
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# fluent API


def test_decode_and_to_tuple(mask_40, manifest, built):
    kept = np.flatnonzero(mask_40.keep)
    ds = PrunedWebDataset(manifest, mask_40).decode("rgb8").to_tuple("seg.png", "cls", "__key__")
    rows = list(ds)
    assert len(rows) == len(kept) == len(ds)
    for (img, cls, key), i in zip(rows, kept):
        assert key == built.keys[i]
        assert isinstance(cls, int) and cls == built.labels[i]
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, built.images[i])


def test_default_decode_gives_int_labels_and_json(mask_40, manifest, built):
    kept = np.flatnonzero(mask_40.keep)
    rows = list(PrunedWebDataset(manifest, mask_40).decode())
    assert [r["cls"] for r in rows] == built.labels[kept].tolist()
    for r, i in zip(rows, kept):
        assert r["bin"] == built.files[i]["bin"]  # unknown extension stays bytes
        if "meta.json" in built.files[i]:
            assert r["meta.json"] == {"g": int(i), "key": built.keys[i]}
        else:
            assert "meta.json" not in r


def test_map_and_len_of_composed_pipeline(mask_40, manifest):
    ds = PrunedWebDataset(manifest, mask_40)
    mapped = ds.map(lambda s: (s["__key__"], len(s["bin"])))
    assert len(mapped) == len(ds) == mask_40.kept
    assert list(mapped) == [(s["__key__"], len(s["bin"])) for s in ds]
    # composing returns a new pipeline; the original still yields dicts
    assert isinstance(next(iter(ds)), dict)


def test_shuffle_stage_keeps_the_multiset(mask_40, manifest):
    want = kept_keys(mask_40, manifest)
    got = [s["__key__"] for s in PrunedWebDataset(manifest, mask_40).shuffle(100)]
    assert collections.Counter(got) == collections.Counter(want)
    assert got != want  # it did shuffle (290 samples, buffer 100)


@pytest.mark.parametrize("partial", [True, False])
def test_batched(mask_40, manifest, built, partial):
    n = mask_40.kept
    ds = PrunedWebDataset(manifest, mask_40).decode().to_tuple("__key__", "cls").batched(16, partial=partial)
    batches = list(ds)
    full, rest = divmod(n, 16)
    assert rest  # the mask leaves a partial batch, so both branches are exercised
    expected_sizes = [16] * full + ([rest] if partial else [])
    assert [len(b[0]) for b in batches] == expected_sizes
    keys = [k for b in batches for k in b[0]]
    labels = np.concatenate([np.asarray(b[1]) for b in batches])
    kept = np.flatnonzero(mask_40.keep)[: len(keys)]
    assert keys == [built.keys[i] for i in kept]
    np.testing.assert_array_equal(labels, built.labels[kept])


@pytest.mark.integration
def test_chained_pipeline_through_dataloader(mask_40, manifest, built):
    ds = (
        PrunedWebDataset(manifest, mask_40, shuffle=True, seed=1)
        .decode("rgb8")
        .to_tuple("seg.png", "cls", "__key__")
        .map_tuple(lambda im: im.astype(np.float32) / 255.0, lambda c: c, lambda k: k)
        .batched(32)
    )
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    seen = collections.Counter()
    pos = {k: i for i, k in enumerate(built.keys)}
    for imgs, labels, keys in loader:
        assert imgs.shape[1:] == (6, 5, 3)
        for img, label, key in zip(imgs, labels, keys):
            i = pos[key]
            assert int(label) == built.labels[i]
            np.testing.assert_allclose(np.asarray(img), built.images[i] / 255.0, rtol=1e-6)
            seen[key] += 1
    assert seen == collections.Counter(kept_keys(mask_40, manifest))


# ---------------------------------------------------------------------------------------------
# stage forms


def test_pruned_source_as_first_stage(mask, manifest, reference):
    kept = set(kept_keys(mask, manifest))
    want = [(s["__key__"], s["seg.png"], s["cls"]) for s in reference if s["__key__"] in kept]
    pipe = wds.DataPipeline(PrunedSource(manifest, mask), wds.to_tuple("__key__", "seg.png", "cls"))
    assert list(pipe) == want


def test_pruned_tarfile_samples_stage(mask, manifest, built, reference):
    kept = set(kept_keys(mask, manifest))
    want = [s for s in reference if s["__key__"] in kept]
    pipe = wds.DataPipeline(
        wds.SimpleShardList(built.shard_paths),
        wds.split_by_worker,
        pruned_tarfile_samples(manifest, mask),
    )
    assert_same_samples(list(pipe), want)


def test_pruned_tarfile_samples_accepts_plain_urls_and_other_spellings(mask_40, manifest, built, reference):
    kept = set(kept_keys(mask_40, manifest))
    # shards listed in another order, as strings, via a path with a redundant component
    order = [3, 0, 6, 2]
    urls = [os.path.join(built.root, ".", os.path.basename(built.shard_paths[k])) for k in order]
    stage = pruned_tarfile_samples(manifest.path, mask_40)
    got = list(stage(iter(urls)))
    want = [s for k in order for s in reference if s["__url__"] == built.shard_paths[k] and s["__key__"] in kept]
    assert [s["__key__"] for s in got] == [s["__key__"] for s in want]
    for g, w in zip(got, want):
        assert all(g[e] == w[e] for e in w if not e.startswith("__"))


@pytest.mark.integration
def test_pruned_tarfile_samples_with_workers(mask_40, manifest, built):
    pipe = wds.DataPipeline(
        wds.SimpleShardList(built.shard_paths),
        wds.split_by_worker,
        pruned_tarfile_samples(manifest, mask_40),
        wds.map(sample_key),
    )
    got = list(DataLoader(pipe, batch_size=None, num_workers=2))
    assert collections.Counter(got) == collections.Counter(kept_keys(mask_40, manifest))


def test_pruned_tarfile_samples_rejects_unknown_shard(mask_40, manifest, tmp_path):
    stranger = tmp_path / "stranger.tar"
    with TarShardWriter(str(stranger)) as w:
        w.write("a", {"bin": b"x"}, 0)
        w.close(checksum=False)
    stage = pruned_tarfile_samples(manifest, mask_40)
    with pytest.raises(MaskMismatchError, match="stranger.tar"):
        list(stage(iter([{"url": str(stranger)}])))


# ---------------------------------------------------------------------------------------------
# DataLoader workers and epochs


def loader_keys(ds, num_workers):
    return list(DataLoader(ds.map(sample_key), batch_size=None, num_workers=num_workers))


@pytest.mark.parametrize("num_workers", [2, 3])
@pytest.mark.parametrize("mask_name", ["random-0.4", "one-shard-all-pruned", "keep-one"])
def test_dataloader_workers_read_every_kept_sample_once(manifest, built, num_workers, mask_name):
    mask = MASKS[mask_name](manifest, built)
    ds = PrunedWebDataset(manifest, mask)
    got = loader_keys(ds, num_workers)
    assert collections.Counter(got) == collections.Counter(kept_keys(mask, manifest))
    assert len(got) == len(ds)


@pytest.mark.integration
@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_shuffle_is_deterministic_per_epoch(mask_40, manifest, num_workers):
    want = collections.Counter(kept_keys(mask_40, manifest))
    ds = PrunedWebDataset(manifest, mask_40, shuffle=True, seed=7)
    orders = {}
    for epoch in (0, 1, 0, 1):
        ds.set_epoch(epoch)
        got = loader_keys(ds, num_workers)
        assert collections.Counter(got) == want  # exactly once per epoch
        if epoch in orders:
            assert got == orders[epoch]  # same (seed, epoch): same order
        orders[epoch] = got
    assert orders[0] != orders[1]
    assert orders[0] != kept_keys(mask_40, manifest)  # actually shuffled
    # another seed, same epoch: another order
    other = PrunedWebDataset(manifest, mask_40, shuffle=True, seed=8)
    other.set_epoch(0)
    assert loader_keys(other, num_workers) != orders[0]
    # a fresh object with the same seed and epoch reproduces the order
    again = PrunedWebDataset(manifest.path, mask_40, shuffle=True, seed=7)
    again.set_epoch(1)
    assert loader_keys(again, num_workers) == orders[1]


def test_shuffle_moves_samples_across_shards(mask_40, manifest):
    ds = PrunedWebDataset(manifest, mask_40, shuffle=True, seed=0)
    urls = [s["__url__"] for s in ds]
    firsts = list(dict.fromkeys(urls))
    assert firsts != sorted(firsts) or len(firsts) < 2  # shard order shuffled ...
    # ... but each shard is read in one stretch (contiguous per shard, good for I/O)
    runs = [u for i, u in enumerate(urls) if i == 0 or urls[i - 1] != u]
    assert len(runs) == len(set(urls))


# ---------------------------------------------------------------------------------------------
# shards streamprune did not write


def _write_foreign_tar(path, samples, fmt, rng):
    import io
    import tarfile

    with tarfile.open(path, "w", format=fmt) as tar:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)  # non-regular entries are skipped by both readers
        for key, files in samples:
            for ext in rng.permutation(sorted(files)).tolist():  # member order within a sample varies
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(files[ext])
                info.mtime = 1_700_000_000
                tar.addfile(info, io.BytesIO(files[ext]))


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_foreign_tar_shards_and_an_empty_shard(tmp_path, fmt, monkeypatch):
    import tarfile

    tar_format = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}[fmt]
    rng = np.random.default_rng(5)
    paths, g = [], 0
    for k, n in enumerate([12, 0, 30, 9]):
        samples = []
        for _ in range(n):
            if fmt != "ustar" and g % 5 == 1:
                key = "deep/" * 25 + f"k{g:04d}"  # > 100 bytes: GNU long name / PAX path
            elif g % 5 == 2:
                key = "sub" * 40 + f"/k{g:04d}"  # ustar can store it with the name prefix
            else:
                key = f"k{g:04d}"
            size = int(rng.choice([0, 1, 511, 512, 513, 5000, 70_000]))
            samples.append((key, {"bin": rng.bytes(size), "cls": str(g % 3).encode(), "txt": f"{g}".encode()}))
            g += 1
        path = str(tmp_path / f"part{k}.tar")
        _write_foreign_tar(path, samples, tar_format, rng)
        paths.append(path)
    manifest = streamprune.index_shards(paths, tmp_path / "idx", progress=False)
    assert [s.samples for s in manifest.shards] == [12, 0, 30, 9]
    urls = [manifest.shard_path(k) for k in range(4)]
    reference = list(wds.WebDataset(urls, shardshuffle=False))
    for s in reference:
        s.pop("__local_path__", None)
    assert [s["__key__"] for s in reference] == manifest.keys()
    mask = random_mask(manifest, 0.5, seed=1)
    kept = set(kept_keys(mask, manifest))
    want = [s for s in reference if s["__key__"] in kept]
    rec = ReadRecorder(monkeypatch, urls)
    assert_same_samples(list(PrunedWebDataset(manifest, mask)), want)
    check_reads(rec, manifest, mask)
    stage = wds.DataPipeline(wds.SimpleShardList(urls), pruned_tarfile_samples(manifest, mask))
    assert_same_samples(list(stage), want)
    got = loader_keys(PrunedWebDataset(manifest, mask, shuffle=True), 2)
    assert collections.Counter(got) == collections.Counter(s["__key__"] for s in want)


# ---------------------------------------------------------------------------------------------
# masks and indexes that do not belong to the data


@pytest.fixture()
def dataset_copy(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built.root, root)
    return root


def test_mask_for_another_manifest_is_rejected(manifest, tmp_path):
    other = build_dataset(tmp_path / "other", seed=99, big_fraction=0.0)  # same shard layout, other data
    other_manifest = Manifest.load(other.manifest_path)
    foreign = random_mask(other_manifest, 0.3, seed=0)
    path = foreign.save(tmp_path / "foreign.spmask")
    with pytest.raises(MaskMismatchError, match=r"shard 0 \(shard-000000\.tar\)"):
        PrunedWebDataset(manifest, path)
    with pytest.raises(MaskMismatchError, match=r"shard 0 \(shard-000000\.tar\)"):
        PrunedSource(manifest, MaskFile(path))
    with pytest.raises(MaskMismatchError, match=r"shard-000000\.tar"):
        pruned_tarfile_samples(manifest, path)
    with pytest.raises(MaskMismatchError):
        PrunedWebDataset(manifest, foreign)  # in-memory mask of another manifest
    with pytest.raises(MaskMismatchError):
        streamprune.PrunedMapDataset(manifest, path)


def test_mask_with_other_shard_count_is_rejected(manifest, tmp_path):
    other = build_dataset(tmp_path / "other", shard_sizes=(10, 20), seed=3, big_fraction=0.0)
    path = random_mask(Manifest.load(other.manifest_path), 0.5).save(tmp_path / "m.spmask")
    with pytest.raises(MaskMismatchError, match="2 shards"):
        PrunedWebDataset(manifest, path)


def test_reindexed_shard_after_masking_is_rejected(dataset_copy, tmp_path):
    manifest = Manifest.load(dataset_copy)
    path = random_mask(manifest, 0.4, seed=1).save(tmp_path / "m.spmask")
    assert len(list(PrunedWebDataset(dataset_copy, path))) == MaskFile(path).kept
    # rewrite shard 3 with different content and re-index the dataset
    shard3 = os.path.join(dataset_copy, "shard-000003.tar")
    with TarShardWriter(shard3) as w:
        w.write("replacement", {"bin": b"new"}, 0)
        w.write("replacement2", {"bin": b"newer"}, 1)
        w.close(checksum=False)
    shards = [Manifest.load(dataset_copy).shard_path(k) for k in range(7)]
    streamprune.index_shards(shards, dataset_copy, progress=False, classes=manifest.classes)
    with pytest.raises(MaskMismatchError, match=r"shard 3 \(shard-000003\.tar\)"):
        PrunedWebDataset(dataset_copy, path)


def test_index_sidecar_rewritten_after_masking_is_rejected(dataset_copy, tmp_path):
    manifest = Manifest.load(dataset_copy)
    path = random_mask(manifest, 0.0).save(tmp_path / "m.spmask")
    # someone edits shard 4's index behind the manifest's back (same samples, a key renamed)
    index_file = os.path.join(dataset_copy, "shard-000004.tar.index.json")
    text = open(index_file).read()
    key = manifest.index(4).keys[0]
    with open(index_file, "w") as fh:
        fh.write(text.replace(f'"{key}"', f'"{key[:-1]}Z"', 1))
    # the manifest binds the index's binary companion too: it is still the index the manifest
    # and mask were made with, so reads are unchanged (the edited JSON is not used)
    assert len(list(PrunedWebDataset(dataset_copy, path))) == manifest.num_samples
    # a re-index rewrites the companion as well: then the edited JSON is the index, and refused
    from streamprune.indexfile import companion_path

    os.unlink(companion_path(index_file))
    ds = PrunedWebDataset(dataset_copy, path)  # masks bind to the manifest; failure comes at read time
    with pytest.raises(IndexMismatchError, match="shard-000004.tar.index.json"):
        list(ds)


def test_shard_file_replaced_after_indexing_is_rejected(dataset_copy, tmp_path):
    manifest = Manifest.load(dataset_copy)
    path = random_mask(manifest, 0.0).save(tmp_path / "m.spmask")
    with open(os.path.join(dataset_copy, "shard-000001.tar"), "ab") as fh:
        fh.write(bytes(1024))
    with pytest.raises(IndexMismatchError, match="shard-000001.tar"):
        list(PrunedWebDataset(dataset_copy, path))
    with pytest.raises(IndexMismatchError, match="shard-000001.tar"):
        list(pruned_tarfile_samples(dataset_copy, path)(iter([manifest.shard_path(1)])))


def test_shard_rewritten_with_same_size_is_caught_by_header_check(dataset_copy, built):
    """Same byte length, different member names: only the tar header check can notice."""
    from streamprune.tarindex import index_tar

    manifest = Manifest.load(dataset_copy)
    k = 6
    shard = manifest.shard_path(k)
    before = index_tar(shard)
    lo = int(np.flatnonzero(built.shard_of == k)[0])
    with TarShardWriter(shard) as w:
        for i, key in enumerate(before.keys):
            files = built.files[lo + i]
            w.write(key.replace("s", "t", 1), dict(files), None)
        w.close(checksum=False)
    after = index_tar(shard)
    assert after.shard_bytes == before.shard_bytes and after.keys != before.keys
    with pytest.raises(IndexMismatchError, match=r"shard-000006\.tar"):
        list(PrunedWebDataset(dataset_copy, None))


@pytest.mark.integration
def test_set_epoch_reaches_persistent_workers(mask_40, manifest):
    ds = streamprune.PrunedWebDataset(manifest.path, mask_40, shuffle=True, seed=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append([s["__key__"] for s in loader])
    assert sorted(orders[0]) == sorted(orders[1])
    assert orders[0] != orders[1]  # the new epoch reshuffled inside the long-lived workers
    assert orders[0] == orders[2]


def test_iterating_leaves_the_callers_manifest_cache_alone(mask_40, manifest):
    index = manifest.index(0)
    list(streamprune.PrunedWebDataset(manifest, mask_40))
    assert manifest.index(0) is index
