"""The formats suite's summary and verdicts, from stored rows (no peer runs here)."""

from __future__ import annotations

from benchmarks.formats_bench import ARMS, formats_summary, formats_targets, report_markdown
from benchmarks.stats import INCONCLUSIVE, MET, MISSED


def _rows(rounds: int, peer_seconds, ours_seconds, fraction=0.21, resident=0.0):
    rows = []
    for k in range(rounds):
        for reader, selection, ratio in ARMS:
            for epoch in (1, 2):
                if reader == "peer":
                    seconds = peer_seconds[k]
                elif selection == "random mask":
                    seconds = ours_seconds[k]
                else:
                    seconds = 5.0
                rows.append({"format": "mds", "round": k, "reader": reader, "selection": selection, "ratio": ratio,
                             "epoch": epoch, "seconds": seconds, "samples": 100, "read_bytes": 0,
                             "read_fraction": fraction if selection == "random mask" else 1.0, "dataset_bytes": 1,
                             "resident_after_evict": resident if epoch == 1 else None})
    return rows


def _by_name(targets):
    return {t["target"]: t for t in targets}


def test_a_peer_slower_in_every_round_is_met_and_one_faster_round_makes_it_inconclusive():
    targets = _by_name(formats_targets(_rows(5, [3.0, 3.1, 2.9, 3.2, 3.0], [1.0] * 5)))
    name = "mds: pruned epoch 1 (cold) at r=0.8 no slower than the peer's on full data: t(peer) / t(streamprune) >= 1"
    assert targets[name]["verdict"] == MET and targets[name]["interval"] == [2.9, 3.2]
    straddles = _by_name(formats_targets(_rows(5, [3.0, 0.5, 2.9, 3.2, 3.0], [1.0] * 5)))
    assert straddles[name]["verdict"] == INCONCLUSIVE
    assert len(targets) == 5  # bytes, then full / own subset x epochs 1 and 2


def test_bytes_over_a_quarter_in_any_round_is_not_met():
    rows = _rows(5, [3.0] * 5, [1.0] * 5)
    assert _by_name(formats_targets(rows))["mds: cold bytes read at r=0.8 (fraction of the dataset) <= 0.25"]["verdict"] == MET
    rows = _rows(5, [3.0] * 5, [1.0] * 5, fraction=0.3)
    assert _by_name(formats_targets(rows))["mds: cold bytes read at r=0.8 (fraction of the dataset) <= 0.25"]["verdict"] == MISSED


def test_two_rounds_are_never_met_and_the_table_shows_median_and_range():
    rows = _rows(2, [3.0, 3.0], [1.0, 1.0])
    assert all(t["verdict"] != MET for t in formats_targets(rows))
    summary = formats_summary(_rows(3, [1.0, 2.0, 6.0], [1.0] * 3))
    peer = next(r for r in summary if r["reader"] == "peer" and r["selection"] == "all" and r["epoch"] == 1)
    assert (peer["seconds"], peer["seconds_min"], peer["seconds_max"], peer["rounds"]) == (2.0, 1.0, 6.0, 3)
    text = report_markdown({"setup": {"samples": 100, "sample_bytes": 10, "rounds": 3}, "rows": rows, "summary": summary})
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| mds")]
    assert ["mds", "peer", "all", "1", "100", "2.000 [1.000-6.000]", "1.000", "0.000"] in cells


def test_a_round_whose_eviction_left_pages_cached_is_not_counted_for_bytes():
    name = "mds: cold bytes read at r=0.8 (fraction of the dataset) <= 0.25"
    rows = _rows(5, [3.0] * 5, [1.0] * 5, fraction=0.15, resident=0.2)  # low bytes because pages stayed cached
    target = _by_name(formats_targets(rows))[name]
    assert target["not_counted"] == 5 and target["verdict"] == MISSED  # nothing cold left to judge
    rows = [r for r in _rows(5, [3.0] * 5, [1.0] * 5, fraction=0.21)]
    rows[0]["resident_after_evict"] = 0.5  # round 0's first row: streamprune r=0 epoch 1 is not the judged arm
    judged = next(r for r in rows if r["round"] == 1 and r["selection"] == "random mask" and r["epoch"] == 1)
    judged["resident_after_evict"] = 0.5
    target = _by_name(formats_targets(rows))[name]
    assert target["not_counted"] == 1 and target["rounds"] == 4 and target["verdict"] == INCONCLUSIVE  # 4 rounds < 5
