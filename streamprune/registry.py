"""A named registry of functions: what score methods and selectors are looked up in.

A registry is a plain dict behind three operations (register, get, names) and an optional
record of metadata per entry (a selector's score levels, a score method's options), so that a
new method is added by decorating one function in its own module.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

__all__ = ["Registry"]

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
                raise ValueError(
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
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata registered with ``name`` (raises like :meth:`get` for unknown names)."""
        self.get(name)
        return self._entries[name][1]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
