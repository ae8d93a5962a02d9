"""The registry of scoring methods, and the options each method declares.

A scoring method is a function ``method(request: ScoreRequest, **options) -> ScoreFile``
registered under a name, with the options a user may set from the command line declared once,
beside the function::

    @register_score("fm", options=(MethodOption("clusters", int, "number of k-means clusters K"),))
    def fm(request: ScoreRequest, clusters: int = 1000) -> ScoreFile:
        ...

The default of an option is read from the function's signature (it is written once, there);
the declaration adds its type, help and command-line flag. ``streamprune score`` builds its
method options from these declarations, so a new method's options appear without editing
the CLI.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..registry import MethodOption, Registry, declare_options
from ..scores import ScoreFile

__all__ = [
    "ScoreFn",
    "MethodOption",
    "SCORES",
    "register_score",
    "get_score",
    "available_scores",
    "method_options",
    "default_selector",
]

ScoreFn = Callable[..., ScoreFile]

#: Every registered scoring method, by name.
SCORES: Registry[ScoreFn] = Registry("scoring method")


def register_score(
    name: str, options: Sequence[MethodOption] = (), default_selector: str = "top"
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator registering a scoring method under ``name`` with its user-settable options.

    Args:
        name: Registry key (what ``--method`` takes).
        options: The options users may set; each must be a keyword argument of the method.
        default_selector: How its scores become masks unless the user names a selector (the
            method's paper's choice: ``top`` keeps the top of the ranking; DLC uses FlexRand).

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: ``name`` is already registered to another function.
        TypeError: An option is not a parameter of the method.
    """

    def decorate(fn: ScoreFn) -> ScoreFn:
        return SCORES.register(name, options=declare_options(fn, options), default_selector=default_selector)(fn)

    return decorate


def get_score(name: str) -> ScoreFn:
    """Look up a registered scoring method (``ValueError`` naming the known ones if unknown)."""
    return SCORES.get(name)


def available_scores() -> list[str]:
    """Names of the registered scoring methods, sorted."""
    return SCORES.names()


def method_options(name: str) -> tuple[MethodOption, ...]:
    """The user-settable options a registered method declares."""
    return SCORES.meta(name)["options"]


def default_selector(name: str) -> str:
    """The selector a registered method's masks use unless another is named."""
    return SCORES.meta(name)["default_selector"]
