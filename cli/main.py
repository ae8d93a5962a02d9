"""The ``streamprune`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
import logging
import sys

import click

from streamprune.errors import StreamPruneError

__all__ = ["cli"]


class _Group(click.Group):
    """Turns library input errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (StreamPruneError, KeyError) as exc:
            raise click.ClickException(str(exc.args[0] if isinstance(exc, KeyError) else exc)) from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None


@click.group(cls=_Group)
@click.option("--verbose", "-v", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Prune streaming training datasets: shard, score, mask, and read only what is kept."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _ratio(ctx, param, value):
    from streamprune.masks import check_ratio

    if value is None:
        return value
    try:
        return check_ratio(value, f"--{param.name}")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
@click.option("--samples-per-shard", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--shuffle/--no-shuffle", default=True, show_default=True, help="Shuffle sample order before sharding.")
@click.option("--seed", default=0, show_default=True, help="Shuffle seed.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Shards written in parallel.")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality for arrays.")
@click.option("--image-format", type=click.Choice(["jpg", "png"]), default=None, help="Encoding for arrays (default jpg).")
@click.option("--split", default="train", show_default=True, help="IDX split: train or t10k/test.")
@click.option("--format", "fmt", type=click.Choice(["tar"]), default="tar", show_default=True)
@click.option("--no-checksum", is_flag=True, help="Skip SHA-256 of each shard.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def shard(src, out, samples_per_shard, shuffle, seed, workers, quality, image_format, split, fmt, no_checksum, quiet):
    """Write SRC (image folder tree, IDX, .npz) as indexed webdataset shards in OUT."""
    from streamprune.writers import write_shards

    manifest = write_shards(
        src, out, samples_per_shard=samples_per_shard, shuffle=shuffle, seed=seed, workers=workers,
        quality=quality, image_format=image_format, split=split, checksum=not no_checksum, progress=not quiet,
    )
    click.echo(f"{manifest.num_samples} samples, {len(manifest.shards)} shards, {len(manifest.classes)} classes -> {manifest.path}")


@cli.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory for the index sidecars and manifest.json.")
@click.option("--label-ext", default="cls", show_default=True, help="Extension of the integer label member.")
@click.option("--no-labels", is_flag=True, help="The shards carry no labels.")
@click.option("--no-checksum", is_flag=True, help="Skip SHA-256 of each shard (headers only: much faster).")
@click.option("--quiet", "-q", is_flag=True)
def index(shards, out, label_ext, no_labels, no_checksum, quiet):
    """Index existing tar SHARDS written by anyone and write OUT/manifest.json."""
    from streamprune.manifest import index_shards

    manifest = index_shards(
        list(shards), out, label_ext=None if no_labels else label_ext, checksum=not no_checksum, progress=not quiet
    )
    click.echo(f"{manifest.num_samples} samples in {len(manifest.shards)} shards -> {manifest.path}")


@cli.command()
@click.argument("manifest", type=click.Path(exists=True))
@click.option("--random", "use_random", is_flag=True, help="Remove a random fraction.")
@click.option("--ratio", type=float, callback=_ratio, required=True, help="Fraction REMOVED, in [0, 1).")
@click.option("--level", type=click.Choice(["sample", "class"]), default="sample", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--keys", "keys_file", type=click.Path(exists=True), help="File with one key to keep per line.")
@click.option("--classes", help="Comma-separated class ids or names to keep.")
@click.option("--out", required=True, type=click.Path(), help="Mask file to write (.spmask).")
def mask(manifest, use_random, ratio, level, seed, keys_file, classes, out):
    """Make a keep mask for MANIFEST (random, from a key list, or from kept classes)."""
    from streamprune import masks
    from streamprune.manifest import Manifest

    chosen = [bool(use_random), bool(keys_file), bool(classes)]
    if sum(chosen) != 1:
        raise click.UsageError("give exactly one of --random, --keys FILE, --classes LIST")
    m = Manifest.load(manifest)
    if use_random:
        result = masks.random_mask(m, ratio, level=level, seed=seed)
    elif keys_file:
        with open(keys_file) as fh:
            result = masks.mask_from_keys(m, [line.strip() for line in fh if line.strip()], source=keys_file)
    else:
        result = masks.mask_from_classes(m, [c.strip() for c in classes.split(",") if c.strip()])
    result.save(out)
    click.echo(f"kept {result.kept} of {m.num_samples} samples -> {out}")


@cli.command()
@click.argument("manifest", type=click.Path(exists=True))
@click.option("--mask", "mask_path", type=click.Path(exists=True), help="Keep mask to summarise.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(manifest, mask_path, as_json):
    """Per-shard and per-class kept counts, bytes to read and expected speed-up."""
    from streamprune.manifest import Manifest
    from streamprune.masks import MaskFile
    from streamprune.report import describe, format_report

    info = describe(Manifest.load(manifest), MaskFile(mask_path) if mask_path else None)
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


@cli.command()
@click.option("--out", default="streamprune-demo", show_default=True, type=click.Path(), help="Working directory.")
@click.option("--source", type=click.Path(exists=True), help="Dataset to use (default: Debian's Fashion-MNIST, else scikit-learn digits).")
@click.option("--ratio", type=float, callback=_ratio, default=0.6, show_default=True, help="Fraction removed.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--quiet", "-q", is_flag=True)
def demo(out, source, ratio, workers, quiet):
    """Run the whole job on a built-in dataset: shard, mask, read pruned, report."""
    from streamprune.demo import run_demo

    result = run_demo(out, source=source, ratio=ratio, workers=workers, progress=not quiet)
    click.echo(result["report"])


def main() -> None:
    """Console entry point."""
    cli(prog_name="streamprune")


if __name__ == "__main__":
    sys.exit(main())
