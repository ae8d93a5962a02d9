import os

import numpy as np
import pytest
from click.testing import CliRunner

from streamprune.demo import run_demo
from streamprune_cli.main import cli


def _digits_npz(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, images=(digits.images * 255 / 16).round().astype(np.uint8), labels=digits.target)
    return str(path), len(digits.target)


@pytest.mark.integration
def test_demo_reads_exactly_the_kept_classes_and_reports_speedup(tmp_path):
    src, n = _digits_npz(tmp_path)
    result = run_demo(str(tmp_path / "demo"), source=src, ratio=0.6, workers=2, samples_per_shard=300, progress=False)
    read = result["read"]
    assert read["full_samples"] == n
    from streamprune.masks import MaskFile

    mask = MaskFile(result["mask"])
    assert read["pruned_samples"] == mask.kept
    assert sum(1 for c in mask.header["kept_per_class"] if c) == 4  # round(10 * 0.4) classes kept
    assert "speed-up" in result["report"] and "kept" in result["report"]


@pytest.mark.integration
def test_demo_cli_prints_report(tmp_path):
    src, _ = _digits_npz(tmp_path)
    out = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d"), "--source", src, "--ratio", "0.5", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "measured speed-up" in out.output
    assert os.path.exists(tmp_path / "d" / "shards" / "manifest.json")


@pytest.mark.integration
def test_demo_lm_needs_fashion_mnist_and_auto_picks_random_for_digits(tmp_path):
    import pytest

    src, _ = _digits_npz(tmp_path)
    with pytest.raises(ValueError, match="needs Fashion-MNIST"):
        run_demo(str(tmp_path / "lm"), source=src, method="lm", progress=False)
    with pytest.raises(ValueError, match="method='nope'"):
        run_demo(str(tmp_path / "x"), source=src, method="nope", progress=False)
    result = run_demo(str(tmp_path / "auto"), source=src, ratio=0.5, samples_per_shard=500, progress=False)
    assert result["method"] == "random" and "random-class" in result["mask"]
    assert set(result["timings"]) >= {"shard source", "read all", "read pruned", "total"}
    assert "time per step" in result["report"]
    again = run_demo(str(tmp_path / "auto"), source=src, ratio=0.5, samples_per_shard=600, progress=False)  # a rerun replaces its shards
    assert again["method"] == "random" and sorted(n for n in os.listdir(tmp_path / "auto" / "shards") if n.endswith(".tar")) == [
        f"shard-{k:06d}.tar" for k in range(3)]
