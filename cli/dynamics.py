"""``streamprune dynamics``: record per-sample training dynamics (thin wrapper over :func:`streamprune.dynamics.record_dynamics`)."""

from __future__ import annotations

import click

from streamprune.manifest import open_manifest

from .options import location_options, model_option

__all__ = ["dynamics"]


def _epoch_list(ctx, param, value):
    if not value:
        return []
    try:
        return [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated epoch numbers, e.g. 1,2") from None


@click.command("dynamics")
@click.argument("manifest")
@model_option("torchvision architecture (resnet18, ...) or package.module:function.", required=True)
@click.option("--checkpoint", type=click.Path(exists=True), help="Start from these weights (default: random initialisation, seeded).")
@click.option("--epochs", required=True, type=click.IntRange(min=1), help="Training epochs to record.")
@click.option("--out", required=True, type=click.Path(), help="Directory for dynamics.npy, dynamics.json (and grand.npy, el2n.npy).")
@click.option("--mask", "mask_path", type=click.Path(exists=True), help="Train on the samples this keep mask keeps (pruned samples get NaN rows).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0), help="Peak learning rate (default 0.05 for sgd, 0.002 for adam).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--schedule", type=click.Choice(["onecycle", "constant"]), default="onecycle", show_default=True, help="Learning-rate schedule over all steps.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=click.FloatRange(min=0))
@click.option("--input-size", type=click.IntRange(min=8), help="Network input side (default: the checkpoint's, else 32).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0), help="DataLoader decode workers.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the initialisation and the data order.")
@click.option("--grand-epochs", callback=_epoch_list, help="Also record per-sample gradient norms (GraNd) at these epochs, e.g. 1,2 (0 = before training).")
@click.option("--el2n-epochs", callback=_epoch_list, help="Also record every sample's EL2N in evaluation mode at these epochs, e.g. 1,2 (0 = before training); the el2n score uses these.")
@click.option("--runs", default=1, show_default=True, type=click.IntRange(min=1), help="Independent training runs (seeds SEED, SEED+1, ...); EL2N averages its snapshots over them. More than 1 needs --el2n-epochs.")
@click.option("--grad-strategy", type=click.Choice(["auto", "vmap", "loop"]), default="auto", show_default=True, help="GraNd: torch.func vmap, or one autograd call per sample (auto: vmap on CUDA, loop on the CPU, where it is faster).")
@location_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def dynamics(manifest, model, checkpoint, epochs, out, mask_path, batch_size, lr, optimizer, schedule, weight_decay, input_size, workers, device, seed, grand_epochs, el2n_epochs, runs, grad_strategy,
             base, storage_options, allow_foreign_locations, quiet):
    """Finetune on MANIFEST (path or URL) and record every sample's correctness, p_y, margin, loss and EL2N per epoch.

    The per-epoch values come from the training forward pass (of the first run); --grand-epochs
    and --el2n-epochs add evaluation-mode snapshots at chosen epochs.

    Score the recording with `streamprune score MANIFEST --method el2n|forgetting|aum|grand-dyn --dynamics OUT`.
    """
    # Deferred on purpose: recording trains a model (torch).
    from streamprune.dynamics import record_dynamics

    r = record_dynamics(
        open_manifest(manifest, base, storage_options, allow_foreign_locations), model, out, epochs=epochs, checkpoint=checkpoint, mask=mask_path, batch_size=batch_size, lr=lr,
        optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, input_size=input_size, workers=workers,
        device=device, seed=seed, grand_epochs=grand_epochs, el2n_epochs=el2n_epochs, runs=runs, grad_strategy=grad_strategy,
        progress=not quiet,
    )
    t = r.training
    for e, (s, loss, acc) in enumerate(zip(t.epoch_seconds, t.train_loss, t.train_accuracy), 1):
        click.echo(f"epoch {e}: train loss {loss:.4f}, train accuracy {acc:.4f}, {s:.1f} s")
    runs_note = f" x {r.runs} runs" if r.runs > 1 else ""
    click.echo(f"recorded {r.recorded} of {r.num_samples} samples x {r.epochs} epochs{runs_note} -> {r.files.directory}")
