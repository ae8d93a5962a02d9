"""``streamprune score``: one scoring pass, its scores file and one keep mask per ratio.

The method options (``--clusters``, ``--levels``, ...) are not listed here: each scoring method
declares its own (:func:`streamprune.scoring.register_score`), and :class:`ScoreCommand` adds
them when the command runs or shows its help.
"""

from __future__ import annotations

from typing import Any

import click

from streamprune.manifest import open_manifest
from streamprune.masks import MaskFile
from streamprune.report import kept_summary

from .options import (
    RegistryHelpOption,
    declared_click_options,
    declared_kwargs,
    engine_for,
    engine_options,
    location_options,
    model_option,
    ratios_callback,
    scoring_methods_help,
    selector_kwargs,
    selector_options,
    selectors_help,
)

__all__ = ["score", "ScoreCommand"]

_PREFIX = "method_option_"


def method_click_options() -> list[click.Option]:
    """One click option per flag the registered scoring methods declare (see :func:`declared_click_options`)."""
    # Deferred on purpose: importing the scoring methods imports torch; `streamprune --help`
    # and the other commands must not pay for it.
    from streamprune.scoring import available_scores, method_options

    return declared_click_options([(m, o) for m in available_scores() for o in method_options(m)], _PREFIX)


def default_selectors_help() -> str:
    """Which selector each method uses when ``--selector`` is not given."""
    from streamprune.scoring import available_scores, default_selector  # deferred with method_click_options (torch)

    special = [f"{m}: {default_selector(m)}" for m in available_scores() if default_selector(m) != "top"]
    return " [default: the method's own: top" + "".join(f"; {s}" for s in special) + "]"


class ScoreCommand(click.Command):
    """A command whose scoring-method options come from the registry, added on first use."""

    _method_options_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        """The declared parameters plus, once loaded, the scoring methods' options."""
        if not self._method_options_added:
            at = next(i for i, p in enumerate(self.params) if p.name == "selector")
            self.params[at:at] = method_click_options()
            self._method_options_added = True
        return super().get_params(ctx)


def method_kwargs(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Map the method options given on the command line to ``method``'s keyword arguments.

    Raises:
        click.UsageError: An option was given that ``method`` does not declare.
    """
    from streamprune.scoring import method_options  # deferred with method_click_options (torch)

    return declared_kwargs(method_options(method), given, _PREFIX, f"--method {method}")


@click.command(cls=ScoreCommand)
@click.argument("source_manifest", metavar="MANIFEST")
@click.option("--method", default="lm", show_default=True, cls=RegistryHelpOption, help_fn=scoring_methods_help)
@click.option("--target", type=click.Path(exists=True), help="Target training set: a manifest (or its directory), or anything `shard` accepts (sharded into OUT/target).")
@click.option("--target-split", default="train", show_default=True, help="IDX split of the target to shard.")
@model_option("Model: torchvision architecture or package.module:function (the surrogate, or DLC's backbone).")
@click.option("--checkpoint", type=click.Path(exists=True), help="Model checkpoint (default: untrained, seeded).")
@click.option("--ratio", "ratios", multiple=True, required=True, callback=ratios_callback, help="Ratio: the fraction REMOVED (1 - ratio is kept); repeat or separate with commas: --ratio 0.4,0.6,0.8.")
@click.option("--out", required=True, type=click.Path(), help="Directory for scores.json and one mask per ratio.")
@click.option("--selector", cls=RegistryHelpOption, help_fn=lambda: selectors_help() + default_selectors_help())
@selector_options
@click.option("--input-size", type=click.IntRange(min=8), help="Network input side (default: the checkpoint's, else 32).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader decode workers.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True)
@engine_options
@location_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def score(source_manifest, method, target, target_split, model, checkpoint, ratios, out, selector,
          input_size, batch_size, workers, device, seed, engine, ray_address, base, storage_options,
          allow_foreign_locations, quiet, **given):
    """Score the dataset to prune at MANIFEST (path or URL) once: the source (for dlc and the training-based scores, often the target itself); write OUT/scores.json and a keep mask per ratio."""
    from streamprune.scoring import score_source  # deferred: the scoring methods import torch

    chosen = selector_kwargs(selector, given)
    kwargs = method_kwargs(method, given)
    with engine_for(engine, ray_address) as runner:  # local: the in-process pass; ray: one task per shard
        r = score_source(
            open_manifest(source_manifest, base, storage_options, allow_foreign_locations), method, ratios, out, target=target, target_split=target_split, surrogate=model,
            checkpoint=checkpoint, input_size=input_size, batch_size=batch_size, workers=workers, device=device,
            seed=seed, progress=not quiet, selector=selector, selector_options=chosen, engine=runner, **kwargs,
        )
    click.echo(f"scores -> {r['scores']} ({r['seconds']['score']:.1f} s)")
    for ratio, path in r["masks"].items():
        click.echo(f"ratio {ratio:g}: kept {kept_summary(MaskFile(path))} -> {path}")
