"""Options shared by several commands: registry-listing help, and the selector options."""

from __future__ import annotations

from typing import Any, Callable

import click

__all__ = ["RegistryHelpOption", "scoring_methods_help", "selectors_help", "selector_options", "selector_kwargs"]


class RegistryHelpOption(click.Option):
    """An option whose help text is computed when help is shown (it lists a registry).

    Args:
        help_fn: Returns the help text.
    """

    def __init__(self, *args: Any, help_fn: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._help_fn = help_fn

    def get_help_record(self, ctx: click.Context):
        self.help = self._help_fn()
        return super().get_help_record(ctx)


def scoring_methods_help() -> str:
    """Help for ``--method``: the registered scoring methods."""
    from streamprune.scoring import available_scores

    return f"Scoring method: {', '.join(available_scores())}."


def selectors_help() -> str:
    """Help for ``--selector``: the registered selectors."""
    from streamprune.selection import available_selectors

    names = [n for n in available_selectors() if not n.startswith("test-only")]
    return (
        f"How scores become a mask: {', '.join(names)} (top: the top of the stored ranking; "
        "flexrand/easy/hard/se/sh/ccs need a hardness score such as dlc)."
    )


def selector_options(fn: Callable) -> Callable:
    """Add ``--gamma``, ``--beta``, ``--strata`` (selector options) to a command."""
    fn = click.option("--strata", type=click.IntRange(min=1), help="ccs: number of equal-width score strata [default: 50].")(fn)
    fn = click.option("--beta", type=float, help="ccs: fraction of ALL samples dropped first, the hardest [default: 0].")(fn)
    fn = click.option("--gamma", type=float, help="flexrand: easy fraction of each class [default: 0.5].")(fn)
    return fn


def selector_kwargs(gamma: float | None, beta: float | None, strata: int | None) -> dict[str, Any]:
    """The selector options that were given, as ``selector_options`` for the library."""
    return {k: v for k, v in (("gamma", gamma), ("beta", beta), ("strata", strata)) if v is not None}
