"""Options shared by several commands: the model, ratios, registry-listing help, selector options, where data lives."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import click

from streamprune.engine import ENGINES, Engine, make_engine
from streamprune.ratios import check_ratio
from streamprune.selection import available_selectors

__all__ = [
    "RegistryHelpOption",
    "scoring_methods_help",
    "selectors_help",
    "selector_options",
    "selector_kwargs",
    "model_option",
    "ratio_callback",
    "ratios_callback",
    "storage_options_option",
    "location_options",
    "engine_arg",
    "engine_options",
    "resume_summary",
]

#: Flags that named the model before ``--model`` was the one name for it (kept, hidden).
DEPRECATED_MODEL_FLAGS = ("--arch", "--surrogate")


def model_option(help: str, required: bool = False) -> Callable[[Callable], Callable]:
    """Add ``--model`` (and the hidden, deprecated ``--arch`` / ``--surrogate``) to a command.

    The command receives the value as its ``model`` argument, whichever flag gave it.

    Args:
        help: Help text of ``--model``.
        required: Fail with a usage error when no flag gives a model.

    Returns:
        The decorator.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, model: str | None, arch: str | None, surrogate: str | None, **kwargs: Any):
            given = [v for v in (model, arch, surrogate) if v]
            if len(set(given)) > 1:
                raise click.UsageError(f"--model was given twice with different values: {', '.join(given)}")
            if required and not given:
                raise click.UsageError("Missing option '--model'.")
            return fn(*args, model=given[0] if given else None, **kwargs)

        for flag in reversed(DEPRECATED_MODEL_FLAGS):
            wrapper = click.option(flag, flag[2:], hidden=True, deprecated="use --model instead")(wrapper)
        return click.option("--model", help=help + (" [required]" if required else ""))(wrapper)

    return decorate


def _flag(param: click.Parameter) -> str:
    """The flag a user typed for ``param`` (``--ratio``), not its Python name (``ratios``)."""
    return max(param.opts, key=len) if param.opts else f"--{param.name}"


def ratio_callback(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Check one ``--ratio`` (fraction removed) and turn a bad one into a usage error naming it."""
    if value is None:
        return value
    try:
        return check_ratio(value, _flag(param))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def ratios_callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[float]:
    """Parse ``--ratio`` given one or more times, each a number or comma-separated numbers.

    Returns:
        The distinct ratios, ascending.
    """
    out = []
    for value in values:
        for part in str(value).split(","):
            if not part.strip():
                continue
            try:
                number = float(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not a number") from None
            try:
                out.append(check_ratio(number, _flag(param)))
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
    if not out:
        raise click.BadParameter("give at least one ratio")
    return sorted(set(out))


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
    from streamprune.scoring import available_scores  # deferred: the scoring methods import torch

    return f"Scoring method: {', '.join(available_scores())}."


def selectors_help(scores: str = "scores") -> str:
    """Help for ``--selector``: the registered selectors.

    Args:
        scores: What the selector is applied to, as the sentence names it (``the --scores``).
    """
    names = [n for n in available_selectors() if not n.startswith("test-only")]
    return (
        f"How {scores} become a mask: {', '.join(names)} (top: the top of the stored ranking; "
        "flexrand/easy/hard/se/sh/ccs need a hardness score such as dlc)."
    )


def selector_options(fn: Callable) -> Callable:
    """Add ``--gamma``, ``--beta``, ``--strata`` (selector options) to a command."""
    fn = click.option("--strata", type=click.IntRange(min=1), help="ccs: number of equal-width score strata [default: 50].")(fn)
    fn = click.option("--beta", type=float, help="ccs: fraction of ALL samples dropped first, the hardest [default: 0 when keeping >= 50%, rising to 0.3 at 10% kept].")(fn)
    fn = click.option("--gamma", type=float, help="flexrand: easy fraction of each class [default: 0.5].")(fn)
    return fn


def selector_kwargs(gamma: float | None, beta: float | None, strata: int | None) -> dict[str, Any]:
    """The selector options that were given, as ``selector_options`` for the library."""
    return {k: v for k, v in (("gamma", gamma), ("beta", beta), ("strata", strata)) if v is not None}


def engine_options(fn: Callable) -> Callable:
    """Add ``--engine local|ray`` and ``--ray-address`` (where the per-shard tasks run) to a command."""
    fn = click.option(
        "--ray-address",
        help="With --engine ray: the cluster to join (head:6379, ray://head:10001, auto) "
        "[default: RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a new local instance].",
    )(fn)
    fn = click.option(
        "--engine", type=click.Choice(ENGINES), default="local", show_default=True,
        help="Where the per-shard tasks run: this machine's processes, or Ray tasks (needs the ray extra).",
    )(fn)
    return fn


def engine_arg(
    engine: str, ray_address: str | None, workers: int | None = None, local_workers: int | None = None
) -> Engine | None:
    """The ``engine=`` a library pass takes: for ``local`` its own default (``None``), else a Ray engine.

    Args:
        engine: ``local`` or ``ray``.
        ray_address: ``--ray-address``.
        workers: Ray actors (``None``: one per CPU of the cluster).
        local_workers: For ``local``: return a local engine of this many processes instead of
            ``None`` (a command that reports what the pass ran reads the engine's reports).

    Raises:
        click.UsageError: ``--ray-address`` without ``--engine ray``.
        MissingExtraError: ``--engine ray`` without the ray extra.
    """
    if ray_address and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    if engine == "local":
        return None if local_workers is None else make_engine("local", workers=local_workers)
    return make_engine(engine, address=ray_address, workers=workers)


def resume_summary(runner: Engine | None, what: str = "shards") -> str | None:
    """``--resume: ran N, skipped M (already complete) of T shards`` from the pass's report (``None`` when none ran)."""
    report = runner.last_report if runner is not None else None
    return None if report is None else f"--resume: {report.summary()} {what}"


STORAGE_OPTIONS_HELP = "fsspec options for URLs, as a JSON object (credentials otherwise come from the backend's standard configuration)."
BASE_HELP = "Directory or URL prefix holding the shards, instead of the manifest's directory."
ALLOW_FOREIGN_LOCATIONS_HELP = (
    "Let a manifest read from a URL name shards or indexes outside its own prefix and --base (absolute local paths, "
    "file:// URLs, other hosts, '..' out of the prefix). Refused by default, so a downloaded manifest cannot make "
    "this command read local files or internal endpoints; give it only for a manifest you trust."
)


def parse_storage_options(ctx: click.Context | None, param: click.Parameter | None, text: str | None) -> dict | None:
    """``--storage-options JSON`` parsed (fsspec options: endpoint, profile, ...; never written anywhere).

    Raises:
        click.BadParameter: Not JSON, or not a JSON object.
    """
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="--storage-options") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--storage-options")
    return value


def storage_options_option(fn: Callable) -> Callable:
    """Add ``--storage-options JSON``; the command receives ``storage_options`` as a dict (or ``None``)."""
    return click.option("--storage-options", callback=parse_storage_options, help=STORAGE_OPTIONS_HELP)(fn)


def location_options(fn: Callable) -> Callable:
    """Add ``--base`` (where the shards of the manifest are), ``--storage-options`` and ``--allow-foreign-locations`` to a command that opens a manifest.

    The command receives ``base``, ``storage_options`` and ``allow_foreign_locations`` (a bool),
    the arguments of :func:`streamprune.manifest.open_manifest`.
    """
    fn = click.option("--allow-foreign-locations", is_flag=True, help=ALLOW_FOREIGN_LOCATIONS_HELP)(fn)
    fn = storage_options_option(fn)
    return click.option("--base", help=BASE_HELP)(fn)
