"""TrainConfig: the one place a training run's arguments are checked and its optimizer and schedule built."""

import math

import pytest
import torch

from streamprune.train import TrainConfig


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
