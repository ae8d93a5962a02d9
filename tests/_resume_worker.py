"""One rank of the crash-and-resume test's trainer (``tests/recipes/test_crash_resume.py``).

``python _resume_worker.py RANK WORLD PORT MANIFEST MASK WORKDIR MODE WORKERS``

A no-op consumer of one epoch of :class:`PrunedWebDataset` through a ``StatefulDataLoader``.
After each step it appends ``{"step", "keys"}`` to ``WORKDIR/keys-<MODE>-<RANK>.jsonl`` and
then checkpoints (rank 0 writes ``WORKDIR/ckpt.pt`` atomically): every rank's loader state and
the global resume point (``resume_point``, all-gathered over the gloo ranks). ``MODE`` is
``fresh`` (start the epoch; the test kills it with SIGKILL), ``same`` (resume each rank's loader
state, same world size and workers) or ``elastic`` (``load_resume_point``, any world size).
"""

from __future__ import annotations

import json
import os
import sys
import time

EPOCH = 1
SEED = 7
BATCH = 4
STEP_SLEEP_S = 0.06  # slow enough for the test to kill mid-epoch


def sample_key(sample):
    """Map stage: a sample dict to its key."""
    return sample["__key__"]


def main(rank: int, world: int, port: int, manifest: str, mask: str, workdir: str, mode: str, workers: int) -> None:
    """Run one epoch (or its resumed rest) as rank ``rank`` of ``world``."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torchdata.stateful_dataloader import StatefulDataLoader

    from streamprune import PrunedWebDataset

    torch.set_num_threads(1)
    if world > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    ds = PrunedWebDataset(manifest, mask, shuffle=True, seed=SEED, rank=rank, world_size=world)
    loader = StatefulDataLoader(ds.map(sample_key), batch_size=BATCH, num_workers=workers)
    ckpt_path = os.path.join(workdir, "ckpt.pt")
    first_step = 0
    if mode != "fresh":
        ckpt = torch.load(ckpt_path, weights_only=False)
        first_step = ckpt["step"] + 1
        if mode == "same":
            loader.load_state_dict(ckpt["loaders"][rank])
        else:
            ds.load_resume_point(ckpt["point"])
    ds.set_epoch(EPOCH)
    log = open(os.path.join(workdir, f"keys-{mode}-{rank}.jsonl"), "a")
    for step, keys in enumerate(loader, start=first_step):
        log.write(json.dumps({"step": step, "keys": list(keys)}) + "\n")
        log.flush()
        state = loader.state_dict()
        point = ds.resume_point(state)  # a collective when distributed
        states = [state]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, state)
        if rank == 0:
            tmp = ckpt_path + ".tmp"
            torch.save({"step": step, "loaders": states, "point": point}, tmp)
            os.replace(tmp, ckpt_path)
        if world > 1:
            dist.barrier()  # the checkpoint of this step exists before any rank goes on
        if mode == "fresh":
            time.sleep(STEP_SLEEP_S)
    log.close()
    with open(os.path.join(workdir, f"done-{mode}-{rank}"), "w") as fh:
        fh.write("ok")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), int(a[2]), a[3], a[4], a[5], a[6], int(a[7]))
