"""benchmarks/README.md's results blocks: generated from the results files, and checked."""

from __future__ import annotations

import json

from benchmarks import readme_blocks
from benchmarks.suite import Suite


class _Toy(Suite):
    name, title, results_name = "toy", "A toy suite", "toy_bench"

    def tables(self, results):
        return f"| x |\n|---|\n| {results['x']} |"


def _results(tmp_path, x):
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / "toy_bench.json").write_text(json.dumps({"x": x, "command": "python -m benchmarks toy", "commit": "abc1234"}))
    return {"toy": _Toy(str(tmp_path / "results"))}


def test_blocks_are_rewritten_from_results_and_checked(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\nprose 1\n<!-- results:toy:start -->\n| x |\n|---|\n| 1 |\n<!-- results:toy:end -->\nprose 2\n")
    suites = _results(tmp_path, 7)
    assert readme_blocks.block_names(readme.read_text()) == ["toy"]
    assert readme_blocks.outdated_blocks(str(readme), suites) == ["toy"]  # typed by hand: not what the file renders
    assert readme_blocks.update_blocks(str(readme), suites) == ["toy"]
    text = readme.read_text()
    assert "| 7 |" in text and "| 1 |" not in text and text.startswith("# t\n\nprose 1\n") and text.endswith("prose 2\n")
    assert "python -m benchmarks toy" in text and "abc1234" in text  # provenance travels with the table
    assert readme_blocks.outdated_blocks(str(readme), suites) == []
    assert readme_blocks.update_blocks(str(readme), suites) == []
    suites = _results(tmp_path, 8)  # a rerun: the block is out of date until --report
    assert readme_blocks.outdated_blocks(str(readme), suites) == ["toy"]


def test_a_block_for_no_suite_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:nosuch:start -->\nx\n<!-- results:nosuch:end -->\n")
    try:
        readme_blocks.outdated_blocks(str(readme), {})
    except KeyError as exc:
        assert "nosuch" in str(exc)
    else:
        raise AssertionError("no error")


def test_the_repository_blocks_match_their_results_files():
    assert readme_blocks.outdated_blocks() == []
