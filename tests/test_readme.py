"""README.md's code blocks run, in order, on a small copy of Fashion-MNIST, and print what it shows.

Blocks are marked by an HTML comment on the line before them:

- ``<!-- readme-test: setup -->``: the set-up commands at the top; not run here (they install
  packages), but the test command must be the one ``.ci/run`` runs.
- ``<!-- readme-test: output -->``: a ``text`` block showing the previous block's output; every
  line of it must appear in the real output with the same words (numbers
  and spacing may differ: the test's data is smaller; absolute paths in the working directory are
  compared as the relative paths the README writes).
- ``<!-- readme-test: needs EXTRA -->``: run only when the extra imports (``ffcv``), else skipped
  with that reason; ``<!-- readme-test: skip: REASON -->``: never run (a server or cluster).

Every other ``bash``/``python`` block is run, in file order, in one empty directory: Python
blocks share one namespace (the README's examples build on each other), shell blocks run with
``bash -e``. The data path ``/usr/share/datasets/fashion-mnist`` becomes a small IDX copy (real
Fashion-MNIST images when installed, else random ones), and the few sizes in ``SMALLER`` are
scaled down so the whole file runs in minutes on two cores.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from streamprune.sources import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FASHION_MNIST = FASHION_MNIST_DIR
#: README text -> what the test runs instead (same command, smaller work).
SMALLER = {
    "--max-steps 100": "--max-steps 2",
    "--levels 10": "--levels 2",
}
TRAIN_SAMPLES, TEST_SAMPLES = 6000, 1000  # train: two shards of 5000 (the README's --samples-per-shard)

_MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    """One fenced code block of the README."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: str  # the readme-test marker before it, "" if none


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with the ``readme-test`` marker that precedes each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    marker = ""
    i = 0
    while i < len(lines):
        found = _MARKER.fullmatch(lines[i].strip())
        fence = _FENCE.match(lines[i])
        if found:
            marker = found.group(1)
        elif fence:
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(fence.group(1), "\n".join(body) + "\n", start + 1, marker))
            marker = ""
        elif lines[i].strip():
            marker = ""  # a marker applies to the block right after it (blank lines between are fine)
        i += 1
    return blocks


def line_words(line: str) -> tuple[str, ...]:
    """A line's words, for comparing outputs whose numbers and paths differ."""
    return tuple(re.findall(r"[A-Za-z]+", line))


def missing_lines(expected: str, actual: str) -> list[str]:
    """Lines of ``expected`` with no line of ``actual`` having the same words."""
    have = {line_words(line) for line in actual.splitlines()}
    return [line for line in expected.splitlines() if line.strip() and line_words(line) not in have]


def test_blocks_are_parsed_with_their_markers():
    text = "intro\n<!-- readme-test: skip: no server -->\n\n```bash\necho a\n```\nprose\n```python\nx = 1\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.code, b.marker) for b in blocks] == [("bash", "echo a\n", "skip: no server"), ("python", "x = 1\n", "")]


def test_output_comparison_ignores_numbers_not_words():
    assert missing_lines("kept 24,000 of 60,000 -> a/b.spmask\n", "kept 12 of 30 -> a/b.spmask\nmore\n") == []
    assert missing_lines("kept 24,000 of 60,000\n", "retained 12 of 30\n") == ["kept 24,000 of 60,000"]


def _ci_command() -> str:
    ci = (ROOT / ".ci" / "run").read_text()
    return next(line for line in ci.splitlines() if line.startswith("apt-get update"))


def _quiet_flags_removed(command: str) -> str:
    """``.ci/run``'s command without the flags and redirect that only silence it."""
    command = command.replace(" >/dev/null", "")
    # only apt-get's and pip's -q/-qq: pytest's -q is in the README's command too
    parts = [re.sub(r" -qq?(?= )", "", part + " ") if part.split()[0] in ("apt-get", "pip") else part
             for part in command.split(" && ")]
    return re.sub(r" +", " ", " && ".join(p.strip() for p in parts)).strip()


def test_setup_commands_are_the_ones_ci_runs():
    setup = [b for b in readme_blocks(README.read_text()) if b.marker == "setup"]
    assert len(setup) == 2, "README should start with exactly two set-up commands"
    demo, tests = (b.code.strip() for b in setup)
    assert tests == _quiet_flags_removed(_ci_command())
    assert tests.endswith('python -m pytest -q -n auto -m "not slow"'), "the README's tests: the default tier, in minutes"
    # CI runs the slow tier (real-data scale) after the README's command
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1].startswith("python -m pytest -q -m slow")
    assert demo.startswith("apt-get update && apt-get install -y dataset-fashion-mnist && pip install -e . && ")
    assert "dataset-fashion-mnist" in tests.split("&&")[1].split()  # the dataset the demo and the README test use
    assert demo.endswith("streamprune demo --out /tmp/streamprune-demo")
    blocks = readme_blocks(README.read_text())
    assert blocks[0].marker == blocks[1].marker == "setup", "the set-up commands come first"


def test_headline_table_is_computed_from_the_results_files():
    from benchmarks.headline import headline_table

    text = README.read_text()
    table = text.split("<!-- headline:start -->\n", 1)[1].split("<!-- headline:end -->", 1)[0]
    assert table.strip() == headline_table(), "README's headline table differs from benchmarks/results: paste `python -m benchmarks.headline`"
    # every row's link lands on a section of BENCHMARKS.md
    headings = [line.lstrip("#").strip() for line in (README.parent / "BENCHMARKS.md").read_text().splitlines() if line.startswith("## ")]
    slugs = {"".join(c for c in h.lower() if c.isalnum() or c in " -_").replace(" ", "-") for h in headings}
    anchors = re.findall(r"\(BENCHMARKS\.md#([^)]+)\)", table)
    assert len(anchors) == 7 and set(anchors) <= slugs, set(anchors) - slugs


def test_examples_write_each_output_once():
    """No example overwrites what an earlier one wrote (a later block may read it)."""
    outputs = []
    for block in readme_blocks(README.read_text()):
        if block.lang in ("bash", "python") and block.marker != "setup":
            outputs += re.findall(r"--out\s+(\S+)", block.code) + re.findall(r"\.save\(\s*\"([^\"]+)\"", block.code)
    assert outputs and len(outputs) == len(set(outputs)), sorted(o for o in outputs if outputs.count(o) > 1)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped) of a uint8 array, as the MNIST files are."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _small_fashion_mnist(out: Path) -> Path:
    """The first images of Fashion-MNIST's splits (random images when it is not installed).

    The directory is named like the real one, so ``shard`` names the classes as it does there.
    """
    from streamprune.sources import read_idx

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN_SAMPLES), ("t10k", TEST_SAMPLES)):
        images_file = Path(FASHION_MNIST) / f"{split}-images-idx3-ubyte.gz"
        if images_file.exists():
            images = read_idx(str(images_file))[:n]
            labels = read_idx(str(Path(FASHION_MNIST) / f"{split}-labels-idx1-ubyte.gz"))[:n]
        else:
            labels = np.arange(n) % 10
            images = (rng.random((n, 28, 28)) * 64 + labels[:, None, None] * 19).astype(np.uint8)
        _write_idx(out / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(out / f"{split}-labels-idx1-ubyte.gz", labels)
    return out


_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, subprocess, sys, traceback

    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__readme__"}
    outputs = []
    for block in blocks:
        if block["lang"] == "python":
            buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(buffer):
                    exec(compile(block["code"], f"README.md:{block['line']}", "exec"), namespace)
            except BaseException:
                outputs.append({"stdout": buffer.getvalue(), "error": traceback.format_exc()})
                break
            outputs.append({"stdout": buffer.getvalue(), "error": None})
        else:
            run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]], capture_output=True, text=True)
            error = None if run.returncode == 0 else f"exit {run.returncode}: {run.stderr[-3000:]}"
            outputs.append({"stdout": run.stdout, "error": error})
            if error:
                break
    json.dump(outputs, open(sys.argv[2], "w"))
    """
)


def _skip_reason(marker: str) -> str | None:
    if marker.startswith("skip"):
        return marker
    if marker.startswith("needs "):
        extra = marker[len("needs "):].strip()
        return None if importlib.util.find_spec(extra) else f"{extra} is not installed"
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_every_readme_block_runs_and_prints_what_it_shows(tmp_path):
    data = _small_fashion_mnist(tmp_path / "fashion-mnist")
    work = tmp_path / "work"
    work.mkdir()
    runnable: list[Block] = []
    expected: dict[int, str] = {}  # index into runnable -> the output block after it
    skipped = []
    for block in readme_blocks(README.read_text()):
        if block.marker == "setup" or block.lang not in ("bash", "python", "text"):
            continue
        if block.marker == "output":
            assert runnable, f"README.md:{block.line}: an output block with no block before it"
            expected[len(runnable) - 1] = block.code
            continue
        assert block.lang != "text", f"README.md:{block.line}: a text block without a marker"
        reason = _skip_reason(block.marker)
        if reason:
            skipped.append(f"README.md:{block.line}: {reason}")
            continue
        code = block.code.replace(FASHION_MNIST, str(data))
        for big, small in SMALLER.items():
            code = code.replace(big, small)
        runnable.append(Block(block.lang, code, block.line, block.marker))
    assert len(runnable) >= 12, "the walk-through's blocks are missing"
    blocks_file, outputs_file = tmp_path / "blocks.json", tmp_path / "outputs.json"
    blocks_file.write_text(json.dumps([b.__dict__ for b in runnable]))
    (tmp_path / "runner.py").write_text(_RUNNER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / ".pyshim"), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(blocks_file), str(outputs_file)],
                         cwd=work, env=env, capture_output=True, text=True, timeout=1100)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = json.loads(outputs_file.read_text())
    for block, out in zip(runnable, outputs):
        assert out["error"] is None, f"README.md:{block.line} ({block.lang}) failed:\n{block.code}\n{out['error']}"
    assert len(outputs) == len(runnable)
    for index, text in expected.items():
        missing = missing_lines(text, outputs[index]["stdout"].replace(f"{work}{os.sep}", ""))  # paths as the README writes them
        assert not missing, (f"README.md:{runnable[index].line}: output lines not printed {missing}; "
                             f"it printed:\n{outputs[index]['stdout']}")
    printed = [(b.code, out["stdout"]) for b, out in zip(runnable, outputs)]
    resumed = next(text for code, text in printed if "StatefulDataLoader" in code)  # step 6, before the elastic example
    before, after, twice = map(int, re.findall(r"\d+", resumed)[:3])
    step5 = next(text for code, text in printed if code.startswith("import torch"))
    assert twice == 0 and before + after == int(re.findall(r"epoch 0: (\d+) samples", step5)[0])
    infobatch = next(text for code, text in printed if "training_loader" in code)
    trained, full = map(int, re.findall(r"(\d+) samples in \d+ epochs \((\d+) without pruning\)", infobatch)[0])
    assert 0 < trained < full, infobatch  # the InfoBatch example does prune
