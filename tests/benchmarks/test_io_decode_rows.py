"""The decoder rows (``python -m benchmarks io_decode``) on a few JPEGs, through the suite template."""

from __future__ import annotations

import json

import pytest

from benchmarks import decode_bench
from benchmarks.decode_bench import DecodeSuite
from streamprune.decode import available_decoders


@pytest.mark.integration
def test_only_decode_writes_one_row_per_decoder_and_size(tmp_path):
    args = ["--quick", "--decode-samples", "3", "--decode-sizes", "32", "--repeats", "1",
            "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]
    results = DecodeSuite(str(tmp_path)).run(args)
    saved = json.loads((tmp_path / "io_decode.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(results["summary"]))
    want = {(b, s) for b in available_decoders() for s in (None, 32)} | {(decode_bench.DECODE_REFERENCE, 32)}
    assert {(r["decoder"], r["size"]) for r in saved["summary"]} == want
    assert saved["auto_decoder"] == available_decoders()[0]
    assert all(r["samples_per_s_per_core"] > 0 and r["rounds"] == 1 for r in saved["summary"])
    assert all(e["images"] == 3 and e["mean_abs_diff"] < 5 for e in saved["equivalence"])
    assert "make_jpeg" in saved["data"]["source"]
    assert saved["commit"] and "dirty" in saved and saved["machine"]["python"]  # the base records provenance
