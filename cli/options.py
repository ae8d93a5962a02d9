"""Options shared by several commands: the model, ratios, registry-listing help, selector options, where data lives."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, Callable, Iterable, Iterator

import click

from streamprune.engine import ENGINES, Engine, make_engine
from streamprune.errors import ArgumentError
from streamprune.ratios import check_ratio
from streamprune.registry import MethodOption
from streamprune.selection import available_selectors
from streamprune.selection import selector_options as declared_selector_options

__all__ = [
    "RegistryHelpOption",
    "scoring_methods_help",
    "selectors_help",
    "selector_options",
    "selector_kwargs",
    "declared_click_options",
    "declared_kwargs",
    "model_option",
    "ratio_callback",
    "ratios_callback",
    "storage_options_option",
    "location_options",
    "engine_arg",
    "engine_for",
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
    except ArgumentError as exc:
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
            except ArgumentError as exc:
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


def declared_click_options(declared: Iterable[tuple[str, MethodOption]], prefix: str) -> list[click.Option]:
    """One click option per flag that registered functions (scoring methods, selectors) declare.

    A flag declared by several (``--clusters`` by fm and ssp) becomes one option whose help
    names them all, and each one's default when they differ
    (``[default: fm 1000; semdedup N / 1000, at least 1; ssp the number of classes]``).

    Args:
        declared: ``(owner name, option)`` pairs, e.g. from ``method_options`` of every method.
        prefix: Prepended to each parameter's Python name (``method_option_``), so a command
            tells its declared options apart in ``**kwargs`` (see :func:`declared_kwargs`).
    """
    by_flag: dict[str, list[tuple[str, MethodOption]]] = {}
    for owner, option in declared:
        by_flag.setdefault(option.cli_flag, []).append((owner, option))
    params = []
    for flag, entries in by_flag.items():
        option = entries[0][1]
        owners = "/".join(o for o, _ in entries)
        default = _defaults_text([(o, opt.describe_default()) for o, opt in entries])
        help_text = f"{owners}: {option.help}" + (f" [default: {default}]." if default else ".")
        name = prefix + flag[2:].replace("-", "_")
        if option.type is bool:
            params.append(click.Option([flag, name], is_flag=True, default=False, help=help_text))
        else:
            kind = click.Choice(option.choices) if option.choices else option.type
            params.append(click.Option([flag, name], type=kind, default=None, help=help_text))
    return params


def _defaults_text(defaults: list[tuple[str, str | None]]) -> str | None:
    """One default for all owners, else each owner's (owners with the same default grouped, ``;`` between)."""
    by_text: dict[str | None, list[str]] = {}
    for owner, text in defaults:
        by_text.setdefault(text, []).append(owner)
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"{'/'.join(owners)} {text}" for text, owners in by_text.items() if text)


def declared_kwargs(declared: Iterable[MethodOption], given: dict[str, Any], prefix: str, owner: str) -> dict[str, Any]:
    """The options given on the command line with ``prefix`` (see :func:`declared_click_options`),
    as keyword arguments of the one function that runs (``owner``, e.g. ``--selector ccs``).

    Options not given (``None``, or an unset flag) are left out; ``given`` keeps the others.

    Raises:
        click.UsageError: An option was given that ``owner`` does not declare.
    """
    by_name = {prefix + o.cli_flag[2:].replace("-", "_"): o for o in declared}
    out = {}
    for name, value in given.items():
        if not name.startswith(prefix) or value is None or value is False:
            continue
        option = by_name.get(name)
        if option is None:
            flag = "--" + name[len(prefix):].replace("_", "-")
            known = ", ".join(o.cli_flag for o in by_name.values()) or "none"
            raise click.UsageError(f"{flag} is not an option of {owner} (its options: {known})")
        out[option.name] = value
    return out


SELECTOR_PREFIX = "selector_option_"


def selector_options(fn: Callable) -> Callable:
    """Add the options the registered selectors declare (``--gamma``, ``--beta``, ``--strata``, ...) to a command.

    The command receives them in ``**kwargs`` (named ``selector_option_<flag>``); pass those
    to :func:`selector_kwargs`.
    """
    declared = [(name, o) for name in available_selectors() if not name.startswith("test-only") for o in declared_selector_options(name)]
    for param in reversed(declared_click_options(declared, SELECTOR_PREFIX)):
        fn = click.option(*param.opts, param.name, type=param.type, is_flag=param.is_flag, default=param.default, help=param.help)(fn)
    return fn


def selector_kwargs(selector: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The selector options given on the command line, as ``selector_options`` for the library.

    Args:
        selector: The selector that runs (``None``: the scoring method's default; then any
            declared option is passed on, and the library says whether it takes it).
        given: The command's ``**kwargs``; the selector options are taken out of it.

    Raises:
        click.UsageError: An option ``selector`` does not declare.
    """
    mine = {k: given.pop(k) for k in [k for k in given if k.startswith(SELECTOR_PREFIX)]}
    if selector is None:
        every = {o for name in available_selectors() for o in declared_selector_options(name)}
        return declared_kwargs(every, mine, SELECTOR_PREFIX, "the selectors")
    return declared_kwargs(declared_selector_options(selector), mine, SELECTOR_PREFIX, f"--selector {selector}")


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


@contextlib.contextmanager
def engine_for(
    engine: str, ray_address: str | None, workers: int | None = None, local_workers: int | None = None
) -> Iterator[Engine | None]:
    """:func:`engine_arg` as a ``with`` block: the engine made here is closed on leaving it (``None`` stays ``None``)."""
    runner = engine_arg(engine, ray_address, workers, local_workers)
    if runner is None:
        yield None
        return
    with runner:
        yield runner


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
