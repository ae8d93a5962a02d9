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
           "require_ray", "RAY_INSTALL_HINT", "require_extra"]

PARQUET_INSTALL_HINT = "parquet and Arrow key lists need the `parquet` extra: pip install 'streamprune[parquet]' (pyarrow)"
FFCV_APT_PACKAGES = "g++ pkg-config libopencv-dev libturbojpeg0-dev"
FFCV_INSTALL_HINT = (
    "FFCV support needs the `ffcv` extra: "
    f"apt-get install {FFCV_APT_PACKAGES} && pip install 'streamprune[ffcv]'"
)

RAY_INSTALL_HINT = "the Ray engine needs the `ray` extra: pip install 'streamprune[ray]'"


class MissingExtraError(StreamPruneError, ImportError):
    """An optional extra (e.g. ``ffcv``) is needed for this feature but is not installed."""


def require_extra(module: str, hint: str, feature: str, also: tuple[str, ...] = ()) -> ModuleType:
    """Import an optional extra's module, or raise one clear error saying how to install it.

    Args:
        module: The module to import (and return).
        hint: How to install the extra (the error's advice).
        feature: What needs it, named in the error message.
        also: Submodules that must import too (``pyarrow.parquet``).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: It (or one of its compiled parts) cannot be imported.
    """
    try:
        for sub in also:
            importlib.import_module(sub)
        return importlib.import_module(module)
    except ImportError as exc:  # also covers sys.modules[name] = None and a broken C extension
        raise MissingExtraError(f"{feature}: {hint} (import failed: {exc})") from None


def require_ffcv(feature: str = "this feature") -> ModuleType:
    """Import ``ffcv`` or raise one clear error naming the ``ffcv`` extra and its system packages."""
    return require_extra("ffcv", FFCV_INSTALL_HINT, feature)


def ffcv_available() -> bool:
    """Whether ``ffcv`` can be imported (without raising)."""
    try:
        require_ffcv()
    except MissingExtraError:
        return False
    return True


def require_pyarrow(feature: str = "this feature") -> ModuleType:
    """Import ``pyarrow`` (with ``pyarrow.parquet``) or raise one clear error naming the ``parquet`` extra."""
    return require_extra("pyarrow", PARQUET_INSTALL_HINT, feature, also=("pyarrow.parquet",))


def require_ray(feature: str = "the Ray engine") -> ModuleType:
    """Import ``ray`` or raise one clear error naming the ``ray`` extra."""
    return require_extra("ray", RAY_INSTALL_HINT, feature)
