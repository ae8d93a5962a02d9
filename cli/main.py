"""The ``streamprune`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from streamprune.errors import StreamPruneError

from .options import RegistryHelpOption, scoring_methods_help, selector_kwargs, selector_options, selectors_help

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
        except OSError as exc:  # unreadable or unwritable paths: the message names the file
            raise click.ClickException(str(exc)) from None


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
@click.option("--samples-per-shard", type=click.IntRange(min=1), help="Samples per shard [default: 1000 for tar, one file for beton].")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True, help="Shuffle sample order before sharding.")
@click.option("--seed", default=0, show_default=True, help="Shuffle seed.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Shards written in parallel (beton: FFCV writer processes).")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality for arrays (beton: for jpg/smart).")
@click.option("--image-format", type=click.Choice(["jpg", "png"]), default=None, help="Encoding for arrays (default jpg).")
@click.option("--split", default="train", show_default=True, help="IDX split: train or t10k/test.")
@click.option("--format", "fmt", type=click.Choice(["tar", "beton"]), default="tar", show_default=True, help="webdataset tar shards or FFCV .beton (needs the ffcv extra).")
@click.option("--write-mode", type=click.Choice(["raw", "jpg", "smart"]), default="smart", show_default=True, help="beton: how images are stored (smart: JPEG above 128x128 pixels).")
@click.option("--max-resolution", type=click.IntRange(min=1), help="beton: downscale so the longer side is at most this.")
@click.option("--layout", type=click.Choice(["default", "page-aware"]), default="default", show_default=True, help="beton: page-aware keeps each class together in FFCV pages.")
@click.option("--no-checksum", is_flag=True, help="Skip SHA-256 of each shard.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def shard(src, out, samples_per_shard, shuffle, seed, workers, quality, image_format, split, fmt, write_mode, max_resolution, layout, no_checksum, quiet):
    """Write SRC (image folder tree, IDX, .npz) as indexed webdataset shards (or FFCV .beton files) in OUT."""
    from streamprune.writers import write_beton, write_shards

    if fmt == "beton":
        manifest = write_beton(
            src, out, samples_per_file=samples_per_shard, shuffle=shuffle, seed=seed, workers=workers,
            write_mode=write_mode, max_resolution=max_resolution, quality=quality, layout=layout, split=split,
            checksum=not no_checksum, progress=not quiet,
        )
        click.echo(f"{manifest.num_samples} samples, {len(manifest.shards)} .beton file(s), {len(manifest.classes)} classes -> {manifest.path}")
        return
    manifest = write_shards(
        src, out, samples_per_shard=samples_per_shard or 1000, shuffle=shuffle, seed=seed, workers=workers,
        quality=quality, image_format=image_format, split=split, checksum=not no_checksum, progress=not quiet,
    )
    click.echo(f"{manifest.num_samples} samples, {len(manifest.shards)} shards, {len(manifest.classes)} classes -> {manifest.path}")


@cli.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory for the index sidecars and manifest.json.")
@click.option("--label-ext", default="cls", show_default=True, help="Extension of the integer label member.")
@click.option("--no-labels", is_flag=True, help="The shards carry no labels.")
@click.option("--label-field", default="auto", show_default=True, help=".beton: integer field holding the label (auto: 'label', else the only IntField).")
@click.option("--no-checksum", is_flag=True, help="Skip SHA-256 of each shard (headers only: much faster).")
@click.option("--workers", type=click.IntRange(min=1), help="Tar shards indexed in parallel processes [default: CPU count].")
@click.option("--quiet", "-q", is_flag=True)
def index(shards, out, label_ext, no_labels, label_field, no_checksum, workers, quiet):
    """Index existing tar SHARDS or FFCV .beton files written by anyone and write OUT/manifest.json."""
    from streamprune.betonindex import index_betons, looks_like_beton
    from streamprune.manifest import index_shards

    betons = [p.endswith(".beton") or (not p.endswith(".tar") and looks_like_beton(p)) for p in shards]
    if any(betons) and not all(betons):
        raise click.UsageError("give either tar shards or .beton files, not both")
    if all(betons):
        manifest = index_betons(
            list(shards), out, label_field=None if no_labels else label_field, checksum=not no_checksum, progress=not quiet
        )
        click.echo(f"{manifest.num_samples} samples in {len(manifest.shards)} .beton file(s) -> {manifest.path}")
        return
    manifest = index_shards(
        list(shards), out, label_ext=None if no_labels else label_ext, checksum=not no_checksum, progress=not quiet,
        workers=workers or os.cpu_count() or 1,
    )
    click.echo(f"{manifest.num_samples} samples in {len(manifest.shards)} shards -> {manifest.path}")


@cli.command()
@click.argument("manifest", type=click.Path(exists=True))
@click.option("--random", "use_random", is_flag=True, help="Remove a random fraction.")
@click.option("--scores", "scores_file", type=click.Path(exists=True), help="Scores file from `streamprune score`: keep its top items.")
@click.option("--ratio", type=float, callback=_ratio, help="Fraction REMOVED, in [0, 1) (with --random or --scores).")
@click.option("--level", type=click.Choice(["sample", "class"]), default="sample", show_default=True, help="For --random.")
@click.option("--seed", default=0, show_default=True)
@click.option("--keys", "keys_file", type=click.Path(exists=True), help="File with one key to keep per line.")
@click.option("--classes", help="Comma-separated class ids or names to keep.")
@click.option("--selector", default="top", show_default=True, cls=RegistryHelpOption, help_fn=lambda: "With --scores: " + selectors_help())
@selector_options
@click.option("--out", required=True, type=click.Path(), help="Mask file to write (.spmask).")
def mask(manifest, use_random, scores_file, ratio, level, seed, keys_file, classes, selector, gamma, beta, strata, out):
    """Make a keep mask for MANIFEST (random, from a scores file, a key list, or kept classes)."""
    from streamprune import masks
    from streamprune.manifest import Manifest

    chosen = [bool(use_random), bool(scores_file), bool(keys_file), bool(classes)]
    if sum(chosen) != 1:
        raise click.UsageError("give exactly one of --random, --scores FILE, --keys FILE, --classes LIST")
    if (use_random or scores_file) and ratio is None:
        raise click.UsageError("--ratio is required with --random and --scores")
    m = Manifest.load(manifest)
    if use_random:
        result = masks.random_mask(m, ratio, level=level, seed=seed)
    elif scores_file:
        from streamprune.scoring.scores_file import ScoreFile, mask_from_scores

        result = mask_from_scores(m, ScoreFile.load(scores_file), ratio, selector, seed=seed, **selector_kwargs(gamma, beta, strata))
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
@click.option("--method", type=click.Choice(["auto", "lm", "random"]), default="auto", show_default=True,
              help="lm: label mapping with Fashion-MNIST's footwear as the target; random: random classes; auto: lm on Fashion-MNIST, else random.")
@click.option("--train-steps", default=150, show_default=True, type=click.IntRange(min=1), help="Surrogate training steps (lm).")
@click.option("--quiet", "-q", is_flag=True)
def demo(out, source, ratio, workers, method, train_steps, quiet):
    """Run the whole job on a built-in dataset: shard, score (LM), mask, read pruned, report."""
    from streamprune.demo import run_demo

    result = run_demo(out, source=source, ratio=ratio, workers=workers, progress=not quiet, method=method, train_steps=train_steps)
    click.echo(result["report"])


class _ManyValues(click.Option):
    """An option taking one or more values after one flag (``--ratio 0.4 0.6 0.8``).

    Values are consumed up to the next argument that starts with ``-``; commas also
    separate values, and the option may be repeated.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            previous = opt.process

            def process(value, state, previous=previous):
                previous(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    previous(state.rargs.pop(0), state)

            opt.process = process
        return result


def _ratios(ctx, param, values):
    from streamprune.masks import check_ratio

    out = []
    for value in values:
        for part in str(value).split(","):
            if not part.strip():
                continue
            try:
                out.append(check_ratio(float(part), f"--{param.name}"))
            except ValueError as exc:
                raise click.BadParameter(str(exc) if "must be" in str(exc) else f"{part!r} is not a number") from None
    if not out:
        raise click.BadParameter("give at least one ratio")
    return sorted(set(out))


@cli.command("train-surrogate")
@click.argument("manifest", type=click.Path(exists=True))
@click.option("--arch", required=True, help="torchvision architecture (resnet18, resnet50, mobilenet_v3_small, ...) or package.module:function.")
@click.option("--out", required=True, type=click.Path(), help="Checkpoint file to write.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps.")
@click.option("--mask", "mask_path", type=click.Path(exists=True), help="Train on the samples this keep mask keeps.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", type=float, help="Peak learning rate (default 0.002 for adam, 0.05 for sgd).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--input-size", default=32, show_default=True, type=click.IntRange(min=8), help="Side of the square network input.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0), help="DataLoader decode workers.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train_surrogate(manifest, arch, out, epochs, max_steps, mask_path, batch_size, lr, optimizer, input_size, workers, device, seed, quiet):
    """Train a surrogate classifier on MANIFEST (briefly) and write its checkpoint."""
    from streamprune.train import train_surrogate as train

    r = train(
        manifest, arch, out, epochs=epochs, mask=mask_path, max_steps=max_steps, batch_size=batch_size, lr=lr,
        optimizer=optimizer, input_size=input_size, workers=workers, device=device, seed=seed, progress=not quiet,
    )
    click.echo(
        f"{arch}: {r['steps']} steps ({r['samples']:,} samples) in {r['seconds']:.1f} s, "
        f"train loss {r['train_loss']:.3f}, train accuracy {r['train_accuracy']:.3f} -> {r['checkpoint']}"
    )


@cli.command()
@click.argument("source_manifest", type=click.Path(exists=True))
@click.option("--method", default="lm", show_default=True, cls=RegistryHelpOption, help_fn=scoring_methods_help)
@click.option("--target", type=click.Path(exists=True), help="Target training set: a manifest (or its directory), or anything `shard` accepts (sharded into OUT/target).")
@click.option("--target-split", default="train", show_default=True, help="IDX split of the target to shard.")
@click.option("--surrogate", help="Surrogate: torchvision architecture or package.module:function.")
@click.option("--checkpoint", type=click.Path(exists=True), help="Surrogate checkpoint (default: untrained, seeded).")
@click.option("--ratio", "ratios", cls=_ManyValues, required=True, callback=_ratios, help="Fractions REMOVED, e.g. --ratio 0.4 0.6 0.8.")
@click.option("--out", required=True, type=click.Path(), help="Directory for scores.json and one mask per ratio.")
@click.option("--soft-vote", is_flag=True, help="LM: rank by summed softmax instead of top-1 votes.")
@click.option("--clusters", type=click.IntRange(min=1), help="FM/SSP: number of k-means clusters K [default: FM 1000, SSP the class count].")
@click.option("--kmeans-iters", type=click.IntRange(min=1), help="FM/SSP: maximum k-means (Lloyd) iterations [default: 20].")
@click.option("--dynamics", "dynamics_dir", type=click.Path(exists=True), help="el2n/forgetting/aum/grand-dyn: directory written by `streamprune dynamics`.")
@click.option("--dynamics-epochs", type=click.IntRange(min=1), help="el2n/forgetting/aum/grand-dyn: use the first N recorded epochs [default: EL2N min(10, all), others all].")
@click.option("--fm-over-classes", is_flag=True, help="FM: vote against source class means (needs labels): class-level mask.")
@click.option("--levels", type=click.IntRange(min=1), help="DLC: masking levels K, level 0 unmasked [default: 50].")
@click.option("--schedule", type=click.Choice(["geometric", "linear"]), help="DLC: geometric (mask 2% of the remaining weights per level) or linear (sparsity 2%, 4%, ...) [default: geometric].")
@click.option("--dlc-mask", type=click.Choice(["l1", "random"]), help="DLC: mask by smallest magnitude or at random (seeded) [default: l1].")
@click.option("--dlc-step", type=float, help="DLC: fraction masked per level [default: 0.02].")
@click.option("--pool", type=click.Choice(["cls", "mean"]), help="DLC: ViT token pooling [default: cls].")
@click.option("--selector", default="top", show_default=True, cls=RegistryHelpOption, help_fn=selectors_help)
@selector_options
@click.option("--input-size", type=click.IntRange(min=8), help="Network input side (default: the checkpoint's, else 32).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader decode workers.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def score(source_manifest, method, target, target_split, surrogate, checkpoint, ratios, out, soft_vote, clusters, kmeans_iters, dynamics_dir, dynamics_epochs, fm_over_classes,
          levels, schedule, dlc_mask, dlc_step, pool, selector, gamma, beta, strata, input_size, batch_size, workers, device, seed, quiet):
    """Score SOURCE_MANIFEST once (for dlc and the training-based scores: the downstream training set being pruned); write OUT/scores.json and a keep mask per ratio."""
    from streamprune.scoring import score_source

    options = {"soft_vote": True} if soft_vote else {}
    for name, value in (("clusters", clusters), ("kmeans_iters", kmeans_iters), ("fm_over_classes", fm_over_classes or None),
                        ("dynamics_dir", dynamics_dir), ("epochs", dynamics_epochs),
                        ("levels", levels), ("schedule", schedule), ("mask", dlc_mask), ("step", dlc_step), ("pool", pool)):
        if value is not None:
            options[name] = value
    r = score_source(
        source_manifest, method, ratios, out, target=target, target_split=target_split, surrogate=surrogate,
        checkpoint=checkpoint, input_size=input_size, batch_size=batch_size, workers=workers, device=device,
        seed=seed, progress=not quiet, selector=selector, selector_options=selector_kwargs(gamma, beta, strata), **options,
    )
    click.echo(f"scores -> {r['scores']} ({r['seconds']['score']:.1f} s)")
    for ratio, path in r["masks"].items():
        kept = r["kept"][ratio]
        if not kept:  # sample level: say how many samples, not which items
            from streamprune.masks import MaskFile

            kept = f"{MaskFile(path).kept} samples"
        click.echo(f"ratio {ratio:g}: kept {kept} -> {path}")


from .dynamics import dynamics as _dynamics  # noqa: E402

cli.add_command(_dynamics)


from streamprune_cli.bench import bench as _bench  # noqa: E402

cli.add_command(_bench)


def main() -> None:
    """Console entry point."""
    cli(prog_name="streamprune")


if __name__ == "__main__":
    sys.exit(main())
