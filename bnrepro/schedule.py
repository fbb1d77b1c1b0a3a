"""When things happen, counted in images seen (so nothing depends on batch size or GPU count).

- The LR, a pure function of (images seen, global batch, optim config): the paper's exponential
  decay, staircase (section 4.2: "decayed exponentially"), times a linear warmup [ours]:
      lr(n) = decay_rate ** floor(n / (decay_epochs * train_size)) * ramp(n)
      ramp(n) = optim.lr + (peak - optim.lr) * min(1, n / warmup_images)
  with peak = config.effective_lr: optim.lr x global batch / 32 under optim.lr_scaling=linear
  (the default), x sqrt(global batch / 32) under sqrt, optim.lr itself under none
  (docs/departures.md argues the default). The ramp starts at the paper's own LR for a batch of
  32, which trained (Goyal et al. 2017 start at their reference batch's LR too), and multiplies
  the decay, so the curve meets the decayed schedule at the end of the warmup with no jump.
  warmup_images=auto: 5 epochs when the peak exceeds optim.lr (a global batch above 32 under
  linear or sqrt scaling), else none (docs/departures.md says why). Nothing of it is restored from a
  checkpoint: a run resumed on another number of GPUs follows its own global batch from the
  images it has seen.
- `Every`: a periodic event (eval, checkpoint, log) that fires when images_seen crosses a multiple
  of its interval, whatever the batch size; `Cadence`: the three of a run.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from bnrepro.config import effective_lr
from bnrepro.errors import ConfigError

WARMUP_EPOCHS = 5  # [ours] Goyal et al. 2017: 5 epochs from the reference batch's LR


def warmup_images(optim_cfg: DictConfig, global_batch: int, train_size: int) -> int:
    """optim.warmup_images, with `auto` = 5 epochs when the LR is scaled above the paper's
    batch-32 LR (a global batch above 32, under linear or sqrt scaling), else 0."""
    value = optim_cfg.warmup_images
    if value == "auto":
        peak = effective_lr(optim_cfg.lr, global_batch, optim_cfg.lr_scaling)
        return WARMUP_EPOCHS * train_size if peak > optim_cfg.lr else 0
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"optim.warmup_images must be auto or an integer >= 0, got {value!r}")
    return value


class LRSchedule:
    """The LR of the module docstring; `step_update(images_seen)` before every optimizer step
    sets it on the optimizer. state_dict() records what it was for reading only: on resume the
    LR comes from this run's global batch, never from the checkpoint."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        optim_cfg: DictConfig,
        global_batch: int,
        train_size: int,
    ) -> None:
        if optim_cfg.decay_epochs <= 0:
            raise ConfigError(f"optim.decay_epochs must be > 0, got {optim_cfg.decay_epochs}")
        self.optimizer = optimizer
        self.global_batch = global_batch
        self.peak = effective_lr(optim_cfg.lr, global_batch, optim_cfg.lr_scaling)
        self.start = min(optim_cfg.lr, self.peak)  # below batch 32 there is nothing to ramp
        self.decay_rate = optim_cfg.decay_rate
        self.decay_images = optim_cfg.decay_epochs * train_size
        self.warmup_images = warmup_images(optim_cfg, global_batch, train_size)

    def lr_at(self, images_seen: int) -> float:
        decay = self.decay_rate ** math.floor(images_seen / self.decay_images)
        if images_seen >= self.warmup_images:
            return decay * self.peak
        return decay * (self.start + (self.peak - self.start) * images_seen / self.warmup_images)

    def step_update(self, images_seen: int) -> None:
        lr = self.lr_at(images_seen)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"global_batch": self.global_batch, "peak_lr": self.peak}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (older checkpoints hold timm's scheduler state: ignored too)."""


def build_scheduler(
    optimizer: torch.optim.Optimizer | None,
    optim_cfg: DictConfig,
    global_batch: int,
    train_size: int,
) -> LRSchedule:
    """The LR schedule; call .step_update(images_seen) before every optimizer step, or read
    .lr_at(images_seen) (bnrepro-plan draws the curve from it: no optimizer needed)."""
    return LRSchedule(optimizer, optim_cfg, global_batch, train_size)


class Every:
    """A periodic event in images: `due(images_seen)` is True once each time a multiple of
    `interval` has been reached (or passed) since the last time it fired."""

    def __init__(self, interval: int, images_seen: int = 0) -> None:
        if interval <= 0:
            raise ValueError(f"an every-N-images interval must be > 0, got {interval}")
        self.interval = interval
        self.last = images_seen // interval

    def due(self, images_seen: int) -> bool:
        k = images_seen // self.interval
        if k > self.last:
            self.last = k
            return True
        return False


class Cadence:
    """When a run logs, evaluates and checkpoints (trainer.log/eval/ckpt_every_images)."""

    def __init__(self, trainer_cfg: DictConfig, images_seen: int = 0) -> None:
        t = trainer_cfg
        self.log = Every(t.log_every_images, images_seen)
        self.evaluate = Every(t.eval_every_images, images_seen)
        self.save = Every(t.ckpt_every_images, images_seen)

    def due(self, images_seen: int) -> tuple[bool, bool, bool]:
        """(log, evaluate, save) now that `images_seen` images have been trained on."""
        return self.log.due(images_seen), self.evaluate.due(images_seen), self.save.due(images_seen)
