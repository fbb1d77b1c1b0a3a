"""The LR schedule (paper section 4.2, docs/paper.md section 3) and every-N-images events."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from bnrepro.config import compose, effective_lr
from bnrepro.schedule import Every, build_scheduler, warmup_images

TRAIN_SIZE = 1000
IMAGENET_TRAIN = 1_281_167
EXPERIMENTS = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_sigmoid",
               "bn_x30_ensemble"]  # fmt: skip
GLOBAL_BATCHES = [32, 64, 256, 512, 2048]
INCEPTION_DIVERGED_LR = 0.0075  # docs/paper.md section 3: Inception at BN-x5's LR diverged


def schedule(optim_cfg, global_batch: int, train_size: int = TRAIN_SIZE):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(
        [param], lr=effective_lr(optim_cfg.lr, global_batch, optim_cfg.lr_scaling)
    )
    return opt, build_scheduler(opt, optim_cfg, global_batch=global_batch, train_size=train_size)


def lr_at(optim_cfg, global_batch: int, images: list[int], train_size: int = TRAIN_SIZE):
    """The LR the optimizer gets before the step at each images_seen (step_update's effect)."""
    opt, sched = schedule(optim_cfg, global_batch, train_size)
    out = []
    for n in images:
        sched.step_update(n)
        out.append(opt.param_groups[0]["lr"])
    return out


def staircase(optim_cfg, n: int, train_size: int = TRAIN_SIZE) -> float:
    return optim_cfg.decay_rate ** math.floor(n / (optim_cfg.decay_epochs * train_size))


@pytest.mark.parametrize("experiment", ["inception", "bn_x30"])
@pytest.mark.parametrize("global_batch", [32, 64])
def test_staircase_decay_matches_formula(experiment: str, global_batch: int) -> None:
    optim = compose(overrides=[f"experiment={experiment}", "optim.warmup_images=0"]).optim
    images = [0, 1, 999, 1000, 1999, 2000, 7999, 8000, 8001, 16000, 50_000, 123_456]
    eff = effective_lr(optim.lr, global_batch, "linear")
    expected = [eff * staircase(optim, n) for n in images]
    assert lr_at(optim, global_batch, images) == pytest.approx(expected, rel=1e-12)
    assert eff == pytest.approx(global_batch / 32 * optim.lr)  # linear scaling from the paper's 32


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_warmup_starts_at_the_papers_lr_whenever_the_lr_is_scaled(experiment: str) -> None:
    """Every variant starts at its paper LR (batch 32: known to train), never above it, so a
    network without BN starts below Inception's divergence point; no warmup at the paper's 32."""
    cfg = compose(overrides=[f"experiment={experiment}", "data=imagenet"])
    optim = cfg.optim
    for batch in GLOBAL_BATCHES:
        warm = warmup_images(optim, batch, IMAGENET_TRAIN)
        assert warm == (0 if batch == 32 else 5 * IMAGENET_TRAIN)  # 5 epochs (Goyal et al.)
        eff = effective_lr(optim.lr, batch, "linear")
        first, at_end, after = lr_at(optim, batch, [0, warm, warm + 10 * batch], IMAGENET_TRAIN)
        assert first == pytest.approx(optim.lr, rel=1e-12)  # the paper's own LR
        assert cfg.model.batch_norm or first < INCEPTION_DIVERGED_LR
        assert at_end == pytest.approx(eff * staircase(optim, warm, IMAGENET_TRAIN), rel=1e-12)
        assert after == pytest.approx(
            eff * staircase(optim, warm + 10 * batch, IMAGENET_TRAIN), rel=1e-12
        )


@pytest.mark.parametrize("experiment", ["inception", "bn_x5"])  # decay every 8 / 2 epochs
@pytest.mark.parametrize("global_batch", [64, 512, 2048])
def test_lr_curve_is_continuous_but_for_the_staircase(experiment: str, global_batch: int) -> None:
    """Step to step over 8 epochs: the LR never drops except at a decay point (by the decay rate),
    and grows by at most the warmup's increment; in particular no drop at the warmup's end."""
    optim = compose(overrides=[f"experiment={experiment}", "data=imagenet"]).optim
    steps = 8 * IMAGENET_TRAIN // global_batch
    images = [k * global_batch for k in range(steps)]
    lrs = lr_at(optim, global_batch, images, IMAGENET_TRAIN)
    decay_images = optim.decay_epochs * IMAGENET_TRAIN
    ramp_step = (global_batch / 32 - 1) * global_batch / (5 * IMAGENET_TRAIN)  # relative, at most
    for k in range(1, steps):
        ratio = lrs[k] / lrs[k - 1]
        decayed = images[k] // decay_images > images[k - 1] // decay_images
        low = optim.decay_rate if decayed else 1.0
        assert low * (1 - 1e-12) <= ratio <= low * (1 + ramp_step + 1e-12), (k, images[k], ratio)
    end = -(-5 * IMAGENET_TRAIN // global_batch)  # the first step after the warmup: on the curve
    eff = effective_lr(optim.lr, global_batch, "linear")
    assert lrs[end] == pytest.approx(eff * staircase(optim, images[end], IMAGENET_TRAIN), rel=1e-12)


def test_lr_is_a_function_of_images_seen_and_this_runs_global_batch() -> None:
    """Restoring a scheduler state (ours or timm's, from another global batch) changes nothing."""
    optim = compose(overrides=["experiment=bn_x30"]).optim
    images = [0, 2500, 9000]
    expected = lr_at(optim, 512, images)
    _, small = schedule(optim, 64)
    opt, large = schedule(optim, 512)
    large.load_state_dict(small.state_dict())  # a checkpoint of a run on 8x fewer GPUs
    for n, lr in zip(images, expected, strict=True):
        large.step_update(n)
        assert opt.param_groups[0]["lr"] == lr
    large.load_state_dict({"base_values": [0.09], "warmup_t": 0})  # timm's, in older checkpoints
    large.step_update(images[-1])
    assert opt.param_groups[0]["lr"] == expected[-1]


def test_explicit_warmup_and_bad_values() -> None:
    optim = compose(overrides=["optim.warmup_images=100"]).optim
    assert warmup_images(optim, 32, TRAIN_SIZE) == 100
    assert lr_at(optim, 32, [0, 50, 100]) == pytest.approx([optim.lr] * 3)  # nothing to ramp
    assert lr_at(optim, 64, [0, 50, 100]) == pytest.approx([optim.lr, 1.5 * optim.lr, 2 * optim.lr])
    bad = OmegaConf.merge(optim, {"warmup_images": "soon"})
    with pytest.raises(ValueError, match="warmup_images"):
        warmup_images(bad, 32, TRAIN_SIZE)


def test_every_fires_once_per_interval_crossed() -> None:
    every = Every(100)
    fired = [n for n in range(0, 1001, 30) if every.due(n)]
    assert fired == [120, 210, 300, 420, 510, 600, 720, 810, 900]
    resumed = Every(100, images_seen=300)  # a resumed run does not re-fire what it already did
    assert not resumed.due(330) and resumed.due(400)


@pytest.mark.parametrize("experiment", ["inception", "bn_x30"])
@pytest.mark.parametrize("global_batch", GLOBAL_BATCHES)
def test_lr_scaling_none_keeps_optim_lr_at_any_global_batch(experiment, global_batch) -> None:
    """optim.lr_scaling=none: every step takes the paper's batch-32 LR (then its decay), with no
    warmup to ramp; sqrt scales by sqrt(B/32); linear by B/32 (the default)."""
    cfg = compose(overrides=[f"experiment={experiment}", "data=imagenet", "optim.lr_scaling=none"])
    optim = cfg.optim
    assert warmup_images(optim, global_batch, IMAGENET_TRAIN) == 0
    images = [0, global_batch, 3 * IMAGENET_TRAIN, 9 * IMAGENET_TRAIN + global_batch]
    expected = [optim.lr * staircase(optim, n, IMAGENET_TRAIN) for n in images]
    assert lr_at(optim, global_batch, images, IMAGENET_TRAIN) == pytest.approx(expected, rel=1e-12)
    ratio = global_batch / 32
    assert effective_lr(optim.lr, global_batch, "sqrt") == pytest.approx(optim.lr * ratio**0.5)
    assert effective_lr(optim.lr, global_batch, "linear") == pytest.approx(optim.lr * ratio)
    assert compose(overrides=[f"experiment={experiment}"]).optim.lr_scaling == "linear"
