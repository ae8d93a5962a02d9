"""The habits that keep the code base in shape, checked on every run.

* no module imports a private name (``_x``) of another module;
* an import inside a function is there on purpose (deferring an optional extra or a heavy
  import), and says so in a comment on the line before or on the same line;
* the package and the command line start without importing torch, numba or webdataset.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("streamprune", "cli", "benchmarks") for p in (ROOT / d).rglob("*.py") if "data" not in p.parts)
ALLOWED_PRIVATE = {"__version__", "__future__"}


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_imported_from_another_module(path):
    offenders = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and alias.name not in ALLOWED_PRIVATE:
                    offenders.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
            if node.module and any(part.startswith("_") and part not in ("__future__", "_version") for part in node.module.split(".")):
                offenders.append(f"line {node.lineno}: from {node.module} (a private module)")
    assert not offenders, f"{path.relative_to(ROOT)} imports private names: {offenders}"


def _function_imports(tree: ast.Module):
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_function_local_imports_say_why(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    unexplained = []
    for node in _function_imports(_tree(path)):
        # the comment may stand on the import's line, or above it (over a group of imports)
        above = [lines[i].strip() for i in range(node.lineno - 2, max(node.lineno - 6, -1), -1)]
        block = [lines[node.lineno - 1]]
        for text in above:
            block.append(text)
            if not (text.startswith("from ") or text.startswith("import ") or text.startswith("#") or not text):
                break
        if not any("#" in text for text in block):
            unexplained.append(f"line {node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, f"{path.relative_to(ROOT)}: function-local imports without a comment saying why: {unexplained}"


@pytest.mark.integration
def test_package_and_cli_start_without_heavy_imports():
    code = (
        "import sys, streamprune, streamprune_cli.main; "
        "print(sorted(m for m in ('torch', 'numba', 'webdataset', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_lazy_package_names_resolve():
    import streamprune

    for name in streamprune.__all__:
        assert getattr(streamprune, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        streamprune.nope  # noqa: B018


def test_documented_old_import_paths_still_work():
    # README and earlier releases import these from where they used to live
    from streamprune.readers.webdataset import PrunedSource, PrunedWebDataset  # noqa: F401
    from streamprune.scoring.fm import kmeans, surrogate_features  # noqa: F401
    from streamprune.scoring.scores_file import ScoreFile, kept_count, mask_from_scores, rank_items  # noqa: F401
    from streamprune.tarindex import MemberTable, ShardIndex  # noqa: F401
