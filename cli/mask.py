"""``streamprune mask``: a keep mask for a manifest, one subcommand per way of making it.

``mask random|scores|keys|classes|combine MANIFEST ...``, each a few lines around one library
function. The flag form of earlier releases (``mask MANIFEST --random --ratio 0.5 --out M``)
still works for one release: :class:`MaskGroup` hands it to :func:`legacy_mask`, which checks
the old flags, logs a deprecation warning and runs the subcommand they name.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from streamprune import masks
from streamprune.keys import mask_from_keys
from streamprune.manifest import Manifest, open_manifest
from streamprune.scores import ScoreFile
from streamprune.selection import mask_from_scores

from .options import (
    RegistryHelpOption,
    engine_for,
    engine_options,
    location_options,
    ratio_callback,
    selector_kwargs,
    selector_options,
    selectors_help,
)

__all__ = ["mask", "MaskGroup", "legacy_mask"]

log = logging.getLogger(__name__)

#: What ``mask combine`` does with its masks (the old ``--and``/``--or``/``--not``/``--minus`` flags).
OPERATIONS = ("and", "or", "not", "minus")
#: The flags that name a mask's kind in the old form (``mask MANIFEST --random ...``).
LEGACY_FLAGS = frozenset({"--random", "--scores", "--keys", "--keys-drop", "--classes", "--and", "--or", "--not", "--minus", "--duplicates"})
#: Where :class:`MaskGroup` leaves the arguments of the old flag form for the group's callback.
_LEGACY_ARGS = "streamprune.mask.legacy_args"

_out_option = click.option("--out", required=True, type=click.Path(), help="Mask file to write (.spmask).")


def _opened(manifest: str, base: str | None, storage_options: dict | None, allow_foreign_locations: bool) -> Manifest:
    return open_manifest(manifest, base, storage_options, allow_foreign_locations)


def _saved(result: masks.KeepMask, manifest: Manifest, out: str) -> None:
    """Write the mask and say what it keeps."""
    result.save(out)
    click.echo(f"kept {result.kept} of {manifest.num_samples} samples -> {out}")


class MaskGroup(click.Group):
    """The ``mask`` subcommands; arguments that name none (the old flag form) go to :func:`legacy_mask`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # the old form names its kind by a flag; without one, a first word that is no
        # subcommand is a typo for one ("No such command"), not an old-form manifest
        old_form = any(a.split("=", 1)[0] in LEGACY_FLAGS for a in args)
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names and old_form:
            ctx.meta[_LEGACY_ARGS] = list(args)
            args = []
        return super().parse_args(ctx, args)


@click.group(cls=MaskGroup, invoke_without_command=True)
@click.pass_context
def mask(ctx: click.Context) -> None:
    """Make a keep mask for MANIFEST (path or URL): random, from scores, a key list, kept classes, or mask algebra.

    \b
    streamprune mask random  MANIFEST --ratio 0.6 [--level class] --out M.spmask
    streamprune mask scores  MANIFEST DIR/scores.json --ratio 0.6 [--selector ccs] --out M.spmask
    streamprune mask keys    MANIFEST KEYS.txt [--drop] --out M.spmask
    streamprune mask classes MANIFEST 0,3,cat --out M.spmask
    streamprune mask combine MANIFEST and|or|not|minus A.spmask [B.spmask ...] --out M.spmask

    The flag form of earlier releases (`mask MANIFEST --random|--scores F|--keys F|--keys-drop F|
    --classes L|--and|--or|--not|--minus ...`) is deprecated: it still works in this release,
    and says which subcommand to use instead.
    """
    legacy = ctx.meta.pop(_LEGACY_ARGS, None)
    if legacy is not None:
        with legacy_mask.make_context("mask", legacy, parent=ctx.parent) as sub:  # its usage line reads `streamprune mask`
            legacy_mask.invoke(sub)
    elif ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@mask.command("random")
@click.argument("manifest")
@click.option("--ratio", required=True, type=float, callback=ratio_callback, help="Fraction REMOVED, in [0, 1).")
@click.option("--level", type=click.Choice(["sample", "class"]), default="sample", show_default=True,
              help="Remove random samples, or random whole classes.")
@click.option("--seed", default=0, show_default=True)
@location_options
@_out_option
def mask_random(manifest, ratio, level, seed, base, storage_options, allow_foreign_locations, out):
    """Remove a random fraction of MANIFEST's samples (or of its classes)."""
    m = _opened(manifest, base, storage_options, allow_foreign_locations)
    _saved(masks.random_mask(m, ratio, level=level, seed=seed), m, out)


@mask.command("scores")
@click.argument("manifest")
@click.argument("scores_file", metavar="SCORES", type=click.Path(exists=True))
@click.option("--ratio", type=float, callback=ratio_callback, help="Fraction REMOVED, in [0, 1).")
@click.option("--duplicates", is_flag=True, help="Scores of semdedup/exact-dedup, instead of --ratio: remove exactly the samples flagged as duplicates.")
@click.option("--selector", default="top", show_default=True, cls=RegistryHelpOption, help_fn=lambda: selectors_help("the SCORES"))
@selector_options
@click.option("--seed", default=0, show_default=True, help="Seed of the selectors that draw at random.")
@engine_options
@location_options
@_out_option
def mask_scores(manifest, scores_file, ratio, duplicates, selector, seed, engine, ray_address, base, storage_options,
                allow_foreign_locations, out, **given):
    """Keep what a scores file (from `streamprune score`) ranks on top: SCORES through --selector at --ratio.

    With the `top` selector the mask is written shard by shard (one task per shard, on --engine)
    and nothing sorts all the scores.
    """
    if duplicates == (ratio is not None):
        raise click.UsageError("--ratio is required (or --duplicates, instead of it, with dedup scores)")
    m = _opened(manifest, base, storage_options, allow_foreign_locations)
    scores = ScoreFile.load(scores_file)
    if duplicates:
        # Deferred on purpose: the scoring package imports torch, which the other mask kinds do not need.
        from streamprune.scoring.dedup import mask_from_duplicates

        _saved(mask_from_duplicates(m, scores), m, out)
    else:
        with engine_for(engine, ray_address) as runner:
            written = mask_from_scores(m, scores, ratio, selector, seed=seed, out=out, engine=runner, **selector_kwargs(selector, given))
        click.echo(f"kept {written.kept} of {m.num_samples} samples -> {out}")


@mask.command("keys")
@click.argument("manifest")
@click.argument("keys_file", metavar="KEYS", type=click.Path(exists=True))
@click.option("--drop", is_flag=True, help="The listed samples are removed and all others kept (by default they are the ones kept).")
@click.option("--key-column", help="Column (or .npy field) holding the keys [default: key, else uid, else __key__].")
@click.option("--allow-missing", is_flag=True, help="Accept listed ids that are not in MANIFEST (by default any is an error); they are reported.")
@engine_options
@location_options
@_out_option
def mask_keys(manifest, keys_file, drop, key_column, allow_missing, engine, ray_address, base, storage_options, allow_foreign_locations, out):
    """Keep the samples a key list names: KEYS (keys or 128-bit uids) as text (one per line), .npy or .parquet/.arrow.

    The list is streamed into a digest table on disk and each shard is matched by a task (on
    --engine) that writes its bits: neither the list nor the dataset's keys are held at once.
    """
    m = _opened(manifest, base, storage_options, allow_foreign_locations)
    with engine_for(engine, ray_address) as runner:
        written = mask_from_keys(m, keys_file, drop=drop, key_column=key_column, allow_missing=allow_missing, out=out, engine=runner)
    p = written.provenance
    click.echo(f"{p['matched']} of {p['ids']} listed ids found (by {p['matched_by']}), {p['missing']} missing, {p['duplicates']} repeated")
    click.echo(f"kept {written.kept} of {m.num_samples} samples -> {out}")


@mask.command("classes")
@click.argument("manifest")
@click.argument("classes")
@location_options
@_out_option
def mask_classes(manifest, classes, base, storage_options, allow_foreign_locations, out):
    """Keep every sample of the CLASSES given (comma-separated class ids or names)."""
    m = _opened(manifest, base, storage_options, allow_foreign_locations)
    _saved(masks.mask_from_classes(m, [c.strip() for c in classes.split(",") if c.strip()]), m, out)


@mask.command("combine")
@click.argument("manifest")
@click.argument("operation", type=click.Choice(OPERATIONS))
@click.argument("masks_given", metavar="MASKS...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--mask-manifest", "--source-manifest", "source_manifests", multiple=True, type=click.Path(exists=True),
              help="Manifest a mask was made for, when not MANIFEST (tar vs .beton of one source): it is translated by key. Repeatable.")
@location_options
@_out_option
def mask_combine(manifest, operation, masks_given, source_manifests, base, storage_options, allow_foreign_locations, out):
    """Mask algebra over MASKS: `and` keeps what every one keeps, `or` what any keeps, `not A` what A removes, `minus A B` what A keeps and B does not."""
    m = _opened(manifest, base, storage_options, allow_foreign_locations)
    _saved(masks.combine_masks(operation, masks_given, manifest=m, source_manifests=source_manifests), m, out)


@click.command("mask", hidden=True)
@click.argument("manifest")
@click.argument("operands", nargs=-1, type=click.Path(exists=True))
@click.option("--random", "use_random", is_flag=True)
@click.option("--scores", "scores_file", type=click.Path(exists=True))
@click.option("--ratio", type=float, callback=ratio_callback)
@click.option("--duplicates", is_flag=True)
@click.option("--level", type=click.Choice(["sample", "class"]), default="sample")
@click.option("--seed", default=0)
@click.option("--keys", "keys_file", type=click.Path(exists=True))
@click.option("--keys-drop", "drop_file", type=click.Path(exists=True))
@click.option("--key-column")
@click.option("--allow-missing", is_flag=True)
@click.option("--classes")
@click.option("--and", "op_and", is_flag=True)
@click.option("--or", "op_or", is_flag=True)
@click.option("--not", "op_not", is_flag=True)
@click.option("--minus", "op_minus", is_flag=True)
@click.option("--mask-manifest", "--source-manifest", "source_manifests", multiple=True, type=click.Path(exists=True))
@click.option("--selector", default="top")
@selector_options
@location_options
@_out_option
def legacy_mask(manifest, operands, use_random, scores_file, ratio, duplicates, level, seed, keys_file, drop_file, key_column, allow_missing,
                classes, op_and, op_or, op_not, op_minus, source_manifests, selector, base, storage_options, allow_foreign_locations, out,
                **given: Any):
    """The flag form of ``mask`` (deprecated): checks its flags, then runs the subcommand they name."""
    ops = [name for name, on in zip(OPERATIONS, (op_and, op_or, op_not, op_minus)) if on]
    chosen = [bool(use_random), bool(scores_file), bool(keys_file), bool(drop_file), bool(classes), bool(ops)]
    if sum(chosen) != 1 or len(ops) > 1:
        raise click.UsageError("give exactly one of --random, --scores FILE, --keys FILE, --keys-drop FILE, --classes LIST, --and/--or/--not/--minus")
    if operands and not ops:
        raise click.UsageError(f"unexpected arguments {list(operands)}: mask files are operands of --and/--or/--not/--minus only")
    if duplicates and not scores_file:
        raise click.UsageError("--duplicates goes with --scores")
    if (use_random or (scores_file and not duplicates)) and ratio is None:
        raise click.UsageError("--ratio is required with --random and --scores (or --duplicates with dedup scores)")
    if use_random:
        command, args, old = mask_random, {"ratio": ratio, "level": level, "seed": seed}, "--random"
    elif scores_file:
        command, old = mask_scores, "--scores"
        args = {"scores_file": scores_file, "ratio": None if duplicates else ratio, "duplicates": duplicates, "selector": selector,
                "seed": seed, **given}
    elif keys_file or drop_file:
        command, old = mask_keys, "--keys-drop" if drop_file else "--keys"
        args = {"keys_file": keys_file or drop_file, "drop": bool(drop_file), "key_column": key_column, "allow_missing": allow_missing}
    elif ops:
        command, args, old = mask_combine, {"operation": ops[0], "masks_given": operands, "source_manifests": source_manifests}, f"--{ops[0]}"
    else:
        command, args, old = mask_classes, {"classes": classes}, "--classes"
    log.warning("`streamprune mask MANIFEST %s ...` is deprecated and goes in the next release: use `streamprune mask %s MANIFEST ...`",
                old, command.name)
    click.get_current_context().invoke(command, manifest=manifest, base=base, storage_options=storage_options,
                                       allow_foreign_locations=allow_foreign_locations, out=out, **args)
