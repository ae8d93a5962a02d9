"""The ``streamprune`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from streamprune import masks
from streamprune.errors import StreamPruneError
from streamprune.keys import export_keys
from streamprune.manifest import Manifest, open_manifest
from streamprune.report import describe, format_report
from streamprune.scores import ScoreFile

from .bench import bench
from .dynamics import dynamics
from .mask import mask
from .options import (
    engine_for,
    engine_options,
    location_options,
    model_option,
    ratio_callback,
    resume_summary,
    storage_options_option,
)
from .score import score

__all__ = ["cli"]


class _Group(click.Group):
    """Turns a user's error (a :class:`StreamPruneError`) into one line naming it and exit status 1.

    Only those: any other exception is a bug (or an environment failure the library did not
    expect), and its traceback is what a report needs.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StreamPruneError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.option("--verbose", "-v", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Prune streaming training datasets: shard, score, mask, and read only what is kept."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


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
@click.option("--layout", type=click.Choice(["default", "class-sorted", "page-aware"]), default="default", show_default=True,
              help="tar: class-sorted writes class after class (a class-level mask then keeps long runs: few reads or "
                   "requests); beton: page-aware keeps each class together in FFCV pages.")
@click.option("--no-checksum", is_flag=True, help="Skip SHA-256 of each shard.")
@click.option("--resume", is_flag=True,
              help="Keep the shards an interrupted run with the same options finished (checked against their indexes); says how many it skipped.")
@click.option("--overwrite", is_flag=True,
              help="OUT may hold another dataset: remove its shards and index files first (by default such an OUT is refused).")
@engine_options
@storage_options_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def shard(src, out, samples_per_shard, shuffle, seed, workers, quality, image_format, split, fmt, write_mode, max_resolution, layout,
          no_checksum, resume, overwrite, engine, ray_address, storage_options, quiet):
    """Write SRC (image folder tree, IDX, .npz) as indexed webdataset shards (or FFCV .beton files) in OUT.

    OUT may be a URL prefix (s3://bucket/ds) for tar shards: each shard and its index is uploaded as
    soon as it is written, while later shards are written, and the manifest last (a failed run
    leaves no manifest there).

    An OUT that holds another dataset (a manifest, or shards of another run) is refused, since
    writing over it would leave shards the new manifest does not list and invalidate masks made
    for it: pass --overwrite to replace it, or --resume to finish the same run.
    """
    # Deferred on purpose: the writers import the image codecs and source readers.
    from streamprune.writers import write_dataset

    given = click.get_current_context().get_parameter_source("workers") != click.core.ParameterSource.DEFAULT
    # ray: one actor per CPU unless --workers; local with --resume: an engine of our own, whose report says what ran
    with engine_for(engine, ray_address, workers if given else None, local_workers=workers if resume else None) as runner:
        manifest = write_dataset(
            src, out, format=fmt, samples_per_shard=samples_per_shard, shuffle=shuffle, seed=seed, workers=workers, quality=quality,
            image_format=image_format, split=split, write_mode=write_mode, max_resolution=max_resolution, layout=layout,
            checksum=not no_checksum, progress=not quiet, engine=runner, resume=resume, overwrite=overwrite, storage_options=storage_options,
        )
    kind = ".beton file(s)" if fmt == "beton" else "shards"
    click.echo(f"{manifest.num_samples} samples, {len(manifest.shards)} {kind}, {len(manifest.classes)} classes -> {manifest.path}")
    if resume:
        click.echo(resume_summary(runner))


@cli.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory (or URL prefix) for the index sidecars and manifest.json.")
@click.option("--label-ext", default="auto", show_default=True, help="Extension of the integer label member (auto: .cls when every sample has one, no labels when none has).")
@click.option("--no-labels", is_flag=True, help="The shards carry no labels.")
@click.option("--label-field", default="auto", show_default=True, help=".beton: integer field holding the label (auto: 'label', else the only IntField); MDS/LitData: the field (auto: 'cls', else 'label', when present).")
@click.option("--key-field", default=None,
              help="MDS/LitData: field whose value is each sample's key (e.g. uid, so that DataComp uid lists given to 'mask keys' "
                   "match by key); default: keys are global sample positions. Every sample is read and decoded once.")
@click.option("--no-checksum", is_flag=True,
              help="Skip SHA-256 of each shard (headers only: much faster); URLs: also no per-sample checksums, headers walked with ranged "
                   "reads only (far fewer bytes; a request per large member, so slower than streaming at high latency).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Tar shards indexed in parallel processes (or Ray actors; URLs: threads) [default: CPU count; URLs: 8].")
@click.option("--resume", is_flag=True,
              help="Keep the index files an interrupted run with the same options wrote (when still newer than their shards); says how many it skipped.")
@engine_options
@storage_options_option
@click.option("--quiet", "-q", is_flag=True)
def index(shards, out, label_ext, no_labels, label_field, key_field, no_checksum, workers, resume, engine, ray_address, storage_options, quiet):
    """Index existing tar SHARDS, FFCV .beton files or an MDS/LitData dataset and write OUT/manifest.json.

    An MDS or LitData dataset is given as its index.json (a path or URL) or, locally, its
    directory: each shard's own offset table gives the samples' byte ranges; keys are global
    sample positions ("0", "1", ...), as the format's own StreamingDataset numbers them, or with
    --key-field the value of that column (e.g. a DataComp uid), so that key and uid lists match it.

    A directory among SHARDS stands for its *.tar files, sorted by name (or its .beton files
    when it holds no tar). SHARDS may be URLs (s3://, https://, ...) and webdataset brace patterns
    (shards-{000000..000099}.tar): each is streamed once (with --no-checksum: only its headers
    are read, by ranged requests), several at a time, and its size and ETag recorded.
    """
    # Deferred on purpose: indexing pulls in tqdm and the tar walker, which --help and inspect do not need.
    from streamprune.remoteindex import index_dataset

    # local with --resume: an engine of our own, whose report says what ran
    with engine_for(engine, ray_address, workers, local_workers=(workers or os.cpu_count() or 1) if resume else None) as runner:
        manifest = index_dataset(
            shards, out, label_ext=None if no_labels else label_ext, label_field=None if no_labels else label_field,
            checksum=not no_checksum, workers=workers, engine=runner, resume=resume, storage_options=storage_options, progress=not quiet,
            key_field=key_field,
        )
    fmt = manifest.shards[0].format if manifest.shards else "tar"
    kind = {"beton": ".beton file(s)", "tar": "shards"}.get(fmt, f"{fmt} shards")
    click.echo(f"{manifest.num_samples} samples in {len(manifest.shards)} {kind} -> {manifest.path}")
    if resume and kind == "shards":
        click.echo(resume_summary(runner))


@cli.command()
@click.argument("manifest")
@click.option("--mask", "mask_path", help="Keep mask to summarise (path or URL).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--export", "export_path", type=click.Path(),
              help="Also write the kept keys (all keys without --mask): .txt, .npy, .parquet/.arrow (parquet extra).")
@click.option("--scores", "scores_file", type=click.Path(exists=True), help="With --export: add each kept sample's score from this scores file.")
@click.option("--uids", is_flag=True, help="With --export: add each kept sample's uid (uid/json member, or a 32-hex key).")
@click.option("--plan", "show_plan", is_flag=True,
              help="Predict one epoch read from a store: requests, bytes (kept and pruned), time and dollars, planned and whole shards.")
@click.option("--store", "store_preset", type=click.Choice(["s3-standard", "s3-express"]), help="With --plan: a store's latency and prices.")
@click.option("--latency", type=float, help="With --plan: seconds to first byte (default 0.03, or the --store's).")
@click.option("--bandwidth", type=float, help="With --plan: bytes/s per connection (default 100e6).")
@click.option("--objective", type=click.Choice(["time", "cost"]), default="time", show_default=True, help="With --plan: what the planner minimises.")
@click.option("--depth", type=int, help="With --plan: requests in flight (default: adaptive, as the reader).")
@location_options
def inspect(manifest, mask_path, as_json, export_path, scores_file, uids, show_plan, store_preset, latency, bandwidth, objective, depth,
            base, storage_options, allow_foreign_locations):
    """Per-shard and per-class kept counts, bytes to read and expected speed-up (MANIFEST: path or URL); optionally export the kept keys."""
    if (scores_file or uids) and not export_path:
        raise click.UsageError("--scores and --uids go with --export")
    m = Manifest.load(manifest, base=base, storage_options=storage_options, allow_foreign_locations=allow_foreign_locations)
    mask_file = masks.MaskFile.open(mask_path, storage_options) if mask_path else None
    info = describe(m, mask_file)
    if show_plan:
        # deferred: streamprune.readers loads torch, which the command line does not import at start-up
        from streamprune.readers.planner import store_model
        from streamprune.readers.prediction import format_prediction, predict_epoch

        model = store_model(store_preset, latency=latency, conn_bandwidth=bandwidth)
        info["plan"] = predict_epoch(m, mask_file, model, depth=depth, objective=objective)
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))
    if show_plan and not as_json:
        click.echo(format_prediction(info["plan"]))
    if export_path:
        done = export_keys(m, mask_file, export_path, scores=ScoreFile.load(scores_file) if scores_file else None, uids=uids)
        click.echo(f"{done['rows']} kept keys ({', '.join(done['columns'])}) -> {done['path']}", err=as_json)


@cli.command()
@click.option("--out", default="streamprune-demo", show_default=True, type=click.Path(), help="Working directory.")
@click.option("--source", type=click.Path(exists=True), help="Dataset to use (default: Debian's Fashion-MNIST, else scikit-learn digits).")
@click.option("--ratio", type=float, callback=ratio_callback, default=0.6, show_default=True, help="Fraction removed.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--method", type=click.Choice(["auto", "lm", "random"]), default="auto", show_default=True,
              help="lm: label mapping with Fashion-MNIST's footwear as the target; random: random classes; auto: lm on Fashion-MNIST, else random.")
@click.option("--train-steps", default=150, show_default=True, type=click.IntRange(min=1), help="Surrogate training steps (lm).")
@click.option("--quiet", "-q", is_flag=True)
def demo(out, source, ratio, workers, method, train_steps, quiet):
    """Run the whole job on a built-in dataset: shard, score (LM), mask, read pruned, report."""
    # Deferred on purpose: the demo trains a surrogate (torch).
    from streamprune.demo import run_demo

    result = run_demo(out, source=source, ratio=ratio, workers=workers, progress=not quiet, method=method, train_steps=train_steps)
    click.echo(result["report"])


@cli.command("train-surrogate")
@click.argument("manifest")
@model_option("torchvision architecture (resnet18, resnet50, mobilenet_v3_small, ...) or package.module:function.", required=True)
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
@location_options
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Kept-bytes cache for remote shards: epochs after the first read the kept samples from here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train_surrogate(manifest, model, out, epochs, max_steps, mask_path, batch_size, lr, optimizer, input_size, workers, device, seed,
                    base, storage_options, allow_foreign_locations, cache_dir, quiet):
    """Train a surrogate classifier on MANIFEST (path or URL; briefly) and write its checkpoint."""
    # Deferred on purpose: training imports torch, which the other commands do not need.
    from streamprune.train import train_surrogate as train

    r = train(
        open_manifest(manifest, base, storage_options, allow_foreign_locations), model, out, epochs=epochs, mask=mask_path, max_steps=max_steps, batch_size=batch_size, lr=lr,
        optimizer=optimizer, input_size=input_size, workers=workers, device=device, seed=seed, progress=not quiet,
        cache_dir=cache_dir,
    )
    click.echo(
        f"{model}: {r['steps']} steps ({r['samples']:,} samples) in {r['seconds']:.1f} s, "
        f"train loss {r['train_loss']:.3f}, train accuracy {r['train_accuracy']:.3f} -> {r['checkpoint']}"
    )


for _command in (mask, score, dynamics, bench):
    cli.add_command(_command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="streamprune")


if __name__ == "__main__":
    sys.exit(main())
