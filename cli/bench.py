"""``streamprune bench``: run benchmark suites by name and print their tables.

A thin wrapper around the ``benchmarks`` package of a source checkout (``python -m benchmarks``
runs the same code). That package is not installed with streamprune: ``bench`` works where
``benchmarks`` is importable, i.e. from the root of a source checkout.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import click

__all__ = ["NOT_AVAILABLE", "BenchCommand", "bench", "load_runner", "suite_names"]

NOT_AVAILABLE = ("the benchmarks are not installed with streamprune (the `benchmarks` package is source-only): "
                 "run `streamprune bench` from the root of a source checkout")


def _import(module: str) -> ModuleType:
    """Import ``module`` of the ``benchmarks`` package, from the current directory if need be (see :func:`load_runner`)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks":
            raise
    if not os.path.isfile(os.path.join(os.getcwd(), "benchmarks", "__init__.py")):
        raise click.ClickException(NOT_AVAILABLE)
    sys.path.insert(0, os.getcwd())
    return importlib.import_module(module)


def load_runner() -> ModuleType:
    """The ``benchmarks.__main__`` module (the runner behind ``python -m benchmarks``).

    ``benchmarks`` is imported normally; the installed ``streamprune`` script does not put the
    current directory on ``sys.path`` as ``python -m`` does, so a checkout's root (the current
    directory holding ``benchmarks/__init__.py``) is tried too.

    Raises:
        click.ClickException: ``benchmarks`` is not available (the one-line message says where to run).
    """
    return _import("benchmarks.__main__")


def suite_names() -> list[str] | None:
    """The registered suites' names (:data:`benchmarks.registry.SUITES`), ``None`` where ``benchmarks`` is not available."""
    try:
        return list(_import("benchmarks.registry").SUITES)
    except click.ClickException:
        return None


class BenchCommand(click.Command):
    """``bench``, whose help lists the suites of the registry when it is shown (never a list written by hand)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = suite_names()
        listed = f"Suites: {', '.join(names)}." if names is not None else f"Suites: none here; {NOT_AVAILABLE}."
        super().format_help_text(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(listed)


@click.command("bench", cls=BenchCommand, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run benchmark suites by name and print their tables.

    \b
    streamprune bench --list                  suites and the dates of their latest results
    streamprune bench io --quick              a smoke run (results/quick/)
    streamprune bench transfer --seeds 0,1    a suite with its own options (`-- ARGS` passes ARGS verbatim)
    streamprune bench --report [--quick]      regenerate BENCHMARKS.md [--output FILE | --stdout]

    The same as `python -m benchmarks ...`; works from a source checkout (benchmarks/ is not installed).
    """
    code = load_runner().main(list(args), invoked_as="streamprune bench")
    if code:  # the runner has said why: 2 an unknown suite, 1 a suite failed
        raise click.exceptions.Exit(code)
