"""Optional dependencies, imported only when a feature needs them, with an actionable error.

FFCV is an optional extra: it builds a C extension against OpenCV and libjpeg-turbo, so it needs
system packages before ``pip`` can install it. Everything that uses FFCV calls
:func:`require_ffcv` first, so a missing extra is one clear :class:`MissingExtraError` naming
the extra and the packages, never an ``ImportError`` deep inside a stack.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import StreamPruneError

__all__ = ["MissingExtraError", "require_ffcv", "FFCV_INSTALL_HINT", "ffcv_available", "require_pyarrow", "PARQUET_INSTALL_HINT"]

PARQUET_INSTALL_HINT = "parquet and Arrow key lists need the `parquet` extra: pip install 'streamprune[parquet]' (pyarrow)"
FFCV_APT_PACKAGES = "g++ pkg-config libopencv-dev libturbojpeg0-dev"
FFCV_INSTALL_HINT = (
    "FFCV support needs the `ffcv` extra: "
    f"apt-get install {FFCV_APT_PACKAGES} && pip install 'streamprune[ffcv]'"
)


class MissingExtraError(StreamPruneError, ImportError):
    """An optional extra (e.g. ``ffcv``) is needed for this feature but is not installed."""


def require_ffcv(feature: str = "this feature") -> ModuleType:
    """Import ``ffcv`` or raise one clear error saying how to install it.

    Args:
        feature: What needs FFCV, named in the error message.

    Returns:
        The imported ``ffcv`` package.

    Raises:
        MissingExtraError: ``ffcv`` (or one of its compiled dependencies) cannot be imported.
    """
    try:
        return importlib.import_module("ffcv")
    except ImportError as exc:  # also covers sys.modules["ffcv"] = None and a broken C extension
        raise MissingExtraError(f"{feature}: {FFCV_INSTALL_HINT} (import failed: {exc})") from None


def ffcv_available() -> bool:
    """Whether ``ffcv`` can be imported (without raising)."""
    try:
        require_ffcv()
    except MissingExtraError:
        return False
    return True


def require_pyarrow(feature: str = "this feature") -> ModuleType:
    """Import ``pyarrow`` (with ``pyarrow.parquet``) or raise one clear error saying how to install it.

    Args:
        feature: What needs pyarrow, named in the error message.

    Returns:
        The imported ``pyarrow`` package (``pyarrow.parquet`` is imported too).

    Raises:
        MissingExtraError: ``pyarrow`` cannot be imported.
    """
    try:
        importlib.import_module("pyarrow.parquet")
        return importlib.import_module("pyarrow")
    except ImportError as exc:
        raise MissingExtraError(f"{feature}: {PARQUET_INSTALL_HINT} (import failed: {exc})") from None
