"""The LR schedule (paper section 4.2, docs/paper.md section 3) and every-N-images events."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from bnrepro.config import compose, effective_lr
from bnrepro.schedule import Every, build_scheduler, warmup_images

TRAIN_SIZE = 1000


def lr_at(optim_cfg, global_batch: int, images: list[int]) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    lr = effective_lr(optim_cfg.lr, global_batch)
    opt = torch.optim.SGD([param], lr=lr)
    sched = build_scheduler(opt, optim_cfg, global_batch=global_batch, train_size=TRAIN_SIZE)
    out = []
    for n in images:
        sched.step_update(n)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("experiment", ["inception", "bn_x30"])
def test_staircase_decay_matches_formula(experiment: str) -> None:
    optim = compose(overrides=[f"experiment={experiment}"]).optim
    images = [0, 1, 999, 1000, 1999, 2000, 7999, 8000, 8001, 16000, 50_000, 123_456]
    eff = effective_lr(optim.lr, 64)
    expected = [
        eff * optim.decay_rate ** math.floor(n / (optim.decay_epochs * TRAIN_SIZE)) for n in images
    ]
    assert lr_at(optim, 64, images) == pytest.approx(expected, rel=1e-12)
    assert eff == pytest.approx(2 * optim.lr)  # linear scaling: batch 64 = 2 x the paper's 32


def test_warmup_auto_only_for_large_batches() -> None:
    optim = compose(overrides=["experiment=bn_x30"]).optim
    assert warmup_images(optim, 256, TRAIN_SIZE) == 0
    assert warmup_images(optim, 512, TRAIN_SIZE) == 5 * TRAIN_SIZE  # 5 epochs (Goyal et al.)
    eff = effective_lr(optim.lr, 512)
    w = 5 * TRAIN_SIZE
    images = [0, w // 4, w // 2, w - 1, w, 3 * w]
    start = optim.warmup_lr_scale * eff
    decay = [optim.decay_rate ** math.floor(n / (optim.decay_epochs * TRAIN_SIZE)) for n in images]
    expected = [
        start + n * (eff - start) / w if n < w else eff * f
        for n, f in zip(images, decay, strict=True)
    ]
    assert lr_at(optim, 512, images) == pytest.approx(expected, rel=1e-12)


def test_explicit_warmup_and_bad_values() -> None:
    optim = compose(overrides=["optim.warmup_images=100"]).optim
    assert warmup_images(optim, 32, TRAIN_SIZE) == 100
    bad = OmegaConf.merge(optim, {"warmup_images": "soon"})
    with pytest.raises(ValueError, match="warmup_images"):
        warmup_images(bad, 32, TRAIN_SIZE)


def test_every_fires_once_per_interval_crossed() -> None:
    every = Every(100)
    fired = [n for n in range(0, 1001, 30) if every.due(n)]
    assert fired == [120, 210, 300, 420, 510, 600, 720, 810, 900]
    resumed = Every(100, images_seen=300)  # a resumed run does not re-fire what it already did
    assert not resumed.due(330) and resumed.due(400)
