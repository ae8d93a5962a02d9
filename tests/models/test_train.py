"""The training loop (streamprune.train): TrainConfig, the one place a run's arguments are checked and its
optimizer and schedule built; train_surrogate; fit and its hooks."""

import math

import pytest
import torch
from builders import brightness_npz

from streamprune.errors import StreamPruneError
from streamprune.models import load_checkpoint
from streamprune.train import TrainConfig, evaluate_surrogate, fit, train_surrogate
from streamprune.writers import write_shards


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs=0: must be at least 1"),
        ({"max_steps": 0}, "max_steps=0: must be at least 1"),
        ({"batch_size": 0}, "batch_size=0: must be at least 1"),
        ({"optimizer": "lion"}, "optimizer='lion': must be one of"),
        ({"schedule": "step"}, "schedule='step': must be one of"),
        ({"lr": -1.0}, "lr=-1.0: must be a finite number >= 0"),
        ({"lr": math.inf}, "lr=inf: must be a finite number >= 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_steps_lr_and_description():
    config = TrainConfig(epochs=3, batch_size=10, optimizer="sgd")
    assert config.peak_lr == 0.05 and TrainConfig(optimizer="adam").peak_lr == 2e-3 and TrainConfig(lr=0.0).peak_lr == 0.0
    assert config.total_steps(25) == 9  # 3 epochs of ceil(25 / 10) batches
    assert TrainConfig(epochs=3, batch_size=10, max_steps=4).total_steps(25) == 4
    assert config.describe(25) == {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "onecycle", "batch_size": 10, "steps": 9}


def test_build_gives_the_named_optimizer_and_schedule():
    model = torch.nn.Linear(3, 2)
    opt, sched = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.01, schedule="constant").build(model.parameters(), 8)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 0.01 and group["lr"] == 0.1
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.1  # constant throughout
    opt, sched = TrainConfig(epochs=5, batch_size=1, lr=0.01).build(model.parameters(), 20)  # 100 steps, one cycle
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)  # warm-up starts at peak / 10
    lrs = []
    for _ in range(99):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert int(torch.tensor(lrs).argmax()) + 1 == 14  # the peak at 15% of the steps
    assert max(lrs) == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01 / 1e4)  # then decays to peak / 1e4


@pytest.mark.integration
def test_train_surrogate_learns_and_writes_a_loadable_checkpoint(tmp_path, tiny_arch):
    manifest = write_shards(brightness_npz(tmp_path / "x.npz", n=90), tmp_path / "data", samples_per_shard=30, image_format="png", progress=False)
    result = train_surrogate(
        manifest, tiny_arch, tmp_path / "ck.pt", epochs=30, batch_size=16, optimizer="adam", lr=0.05,
        input_size=12, workers=0, progress=False,
    )
    assert result["steps"] == 30 * 6 and result["epochs"] == 30 and result["samples"] == 30 * 90
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["manifest_fingerprint"] == manifest.fingerprint and ckpt["input_size"] == 12
    assert ckpt["classes"] == manifest.classes
    evaluation = evaluate_surrogate(result["checkpoint"], manifest, progress=False)
    assert evaluation["samples"] == 90
    assert evaluation["accuracy"] > 0.9, evaluation  # brightness separates the classes
    capped = train_surrogate(manifest, tiny_arch, tmp_path / "ck2.pt", epochs=5, max_steps=3, batch_size=16, workers=0, progress=False)
    assert capped["steps"] == 3


def test_fit_calls_its_hooks_in_order_and_stops_at_max_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    batches = [(["a", "b"], torch.randn(2, 4), torch.tensor([0, 2])), (["c"], torch.randn(1, 4), torch.tensor([1]))]
    events = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = fit(
        model, batches, epochs=3, optimizer=opt, device=torch.device("cpu"), max_steps=5, index_of={"a": 7, "b": 8, "c": 9},
        on_epoch_start=lambda e: events.append(("start", e)),
        on_batch=lambda b: events.append(("batch", b.epoch, b.step, b.indices.tolist(), tuple(b.logits.shape), b.losses.requires_grad)),
        on_epoch_end=lambda s: events.append(("end", s.epoch, s.samples)), progress=False,
    )
    assert events == [
        ("start", 0), ("batch", 0, 1, [7, 8], (2, 3), False), ("batch", 0, 2, [9], (1, 3), False), ("end", 0, 3),
        ("start", 1), ("batch", 1, 3, [7, 8], (2, 3), False), ("batch", 1, 4, [9], (1, 3), False), ("end", 1, 3),
        ("start", 2), ("batch", 2, 5, [7, 8], (2, 3), False), ("end", 2, 2),
    ]
    assert run.steps == 5 and run.epochs == 3 and run.samples == 8 and len(run.train_loss) == 3
    with pytest.raises(StreamPruneError, match="sample 'c' has a label outside 0..2"):
        fit(model, [(["c"], torch.randn(1, 4), torch.tensor([3]))], epochs=1, optimizer=opt, device=torch.device("cpu"), progress=False)
