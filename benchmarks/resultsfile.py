"""Results files: where they live, and writing and reading them (atomically; NumPy values converted)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["DEFAULT_DATA", "DEFAULT_RESULTS", "load_json", "write_json"]

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where suites keep generated data (shards, checkpoints) between runs.
DEFAULT_DATA = os.path.join(HERE, "data")
#: Where results files live (``quick/`` below it for smoke runs).
DEFAULT_RESULTS = os.path.join(HERE, "results")


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (a temporary name, then a rename; NumPy values converted)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, default=_json_default)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(type(obj).__name__)


def load_json(path: str) -> dict[str, Any] | None:
    """The results object in ``path``, or ``None`` when the file does not exist.

    Raises:
        ValueError: The file is not a JSON object (the message names the file).
    """
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")  # noqa: TRY004 - callers catch ValueError
    return data
