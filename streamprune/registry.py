"""A named registry of functions: what score methods and selectors are looked up in.

A registry is a plain dict behind three operations (register, get, names) and an optional
record of metadata per entry (a selector's score levels, a score method's options), so that a
new method is added by decorating one function in its own module.

The options a user may set on a registered function (a scoring method's ``clusters``, a
selector's ``gamma``) are declared beside it, each a :class:`MethodOption`; the command line
builds its flags from these declarations.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from .errors import ArgumentError

__all__ = ["Registry", "MethodOption", "declare_options"]


@dataclass(frozen=True)
class MethodOption:
    """One option of a registered function (a scoring method, a selector) that users may set.

    Attributes:
        name: Keyword argument of the function.
        type: ``int``, ``float``, ``str`` or ``bool`` (a flag).
        help: What the option does (without the default).
        flag: Command-line flag without the dashes; default: ``name`` with dashes.
        choices: Allowed values, for string options.
        default: Filled in from the function's signature when it is registered.
        default_help: How to describe the default when it is computed (``None`` in the signature).
    """

    name: str
    type: type
    help: str
    flag: str | None = None
    choices: tuple[str, ...] | None = None
    default: Any = None
    default_help: str | None = None

    @property
    def cli_flag(self) -> str:
        """The command-line flag, with its dashes (``--kmeans-iters``)."""
        return "--" + (self.flag or self.name.replace("_", "-"))

    def describe_default(self) -> str | None:
        """The default in words, for help texts (``None`` when there is nothing to say)."""
        if self.default_help:
            return self.default_help
        if self.type is bool:
            return None if not self.default else "on"
        return None if self.default is None else str(self.default)


def declare_options(fn: Callable[..., Any], options: Sequence[MethodOption]) -> tuple[MethodOption, ...]:
    """``options`` with each default read from ``fn``'s signature (written once, there).

    Raises:
        TypeError: An option is not a parameter of ``fn`` (a programming error in the declaration).
    """
    params = inspect.signature(fn).parameters
    resolved = []
    for option in options:
        param = params.get(option.name)
        if param is None:
            raise TypeError(f"{fn.__module__}.{fn.__qualname__} declares option {option.name!r} but takes no such argument")
        default = None if param.default is inspect.Parameter.empty else param.default
        resolved.append(dataclasses.replace(option, default=default))
    return tuple(resolved)

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Functions registered under names, with metadata.

    Args:
        kind: What the entries are, for messages (``"scoring method"``, ``"selector"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[F, dict[str, Any]]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator registering a function under ``name`` with metadata ``meta``.

        Args:
            name: Registry key (what the CLI option takes).
            **meta: Stored with the entry, returned by :meth:`meta`.

        Returns:
            The decorator; it returns the function unchanged.

        Raises:
            ValueError: ``name`` is already registered to another function.
        """

        def decorate(fn: F) -> F:
            existing = self._entries.get(name)
            if existing is not None and existing[0] is not fn:
                raise ArgumentError(
                    f"{self.kind} {name!r} is already registered ({existing[0].__module__}.{existing[0].__name__})"
                )
            self._entries[name] = (fn, dict(meta))
            return fn

        return decorate

    def get(self, name: str) -> F:
        """The function registered under ``name``.

        Raises:
            ValueError: Unknown name (the message lists the known ones).
        """
        try:
            return self._entries[name][0]
        except KeyError:
            raise ArgumentError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata registered with ``name`` (raises like :meth:`get` for unknown names)."""
        self.get(name)
        return self._entries[name][1]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
