"""Optional dependencies, imported only when a feature needs them, with an actionable error.

FFCV is an optional extra: it builds a C extension against OpenCV and libjpeg-turbo, so it needs
system packages before ``pip`` can install it. Everything that uses FFCV calls
:func:`require_ffcv` first, so a missing extra is one clear :class:`MissingExtraError` naming
the extra and the packages, never an ``ImportError`` deep inside a stack. Ray (the
``--engine ray`` option of the per-shard passes) is the ``ray`` extra, checked by
:func:`require_ray` the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import StreamPruneError

__all__ = ["MissingExtraError", "require_ffcv", "FFCV_INSTALL_HINT", "ffcv_available", "require_pyarrow", "PARQUET_INSTALL_HINT",
           "require_ray", "RAY_INSTALL_HINT"]

PARQUET_INSTALL_HINT = "parquet and Arrow key lists need the `parquet` extra: pip install 'streamprune[parquet]' (pyarrow)"
FFCV_APT_PACKAGES = "g++ pkg-config libopencv-dev libturbojpeg0-dev"
FFCV_INSTALL_HINT = (
    "FFCV support needs the `ffcv` extra: "
    f"apt-get install {FFCV_APT_PACKAGES} && pip install 'streamprune[ffcv]'"
)

RAY_INSTALL_HINT = "the Ray engine needs the `ray` extra: pip install 'streamprune[ray]'"


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


def require_ray(feature: str = "the Ray engine") -> ModuleType:
    """Import ``ray`` or raise one clear error naming the ``ray`` extra.

    Args:
        feature: What needs Ray, named in the error message.

    Returns:
        The imported ``ray`` package.

    Raises:
        MissingExtraError: ``ray`` cannot be imported.
    """
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise MissingExtraError(f"{feature}: {RAY_INSTALL_HINT} (import failed: {exc})") from None
