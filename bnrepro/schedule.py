"""When things happen, counted in images seen (so nothing depends on batch size or GPU count).

- The LR: the paper's exponential decay, staircase (section 4.2: "decayed exponentially"):
      lr(images) = eff_lr * decay_rate ** floor(images / (decay_epochs * train_size))
  with eff_lr = optim.lr x global batch / 32 (docs/paper.md section 3) and, for large global batches, a
  linear warmup from warmup_lr_scale x eff_lr over warmup_images (Goyal et al. 2017) [ours].
  It is timm's StepLRScheduler with t = images seen (t_in_epochs=False, warmup counted inside the
  decay clock, warmup_prefix=False).
- `Every`: a periodic event (eval, checkpoint, log) that fires when images_seen crosses a multiple
  of its interval, whatever the batch size.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from timm.scheduler import StepLRScheduler

WARMUP_EPOCHS = 5  # [ours] Goyal et al. 2017: 5 epochs of warmup for large batches
WARMUP_ABOVE_BATCH = 256  # [ours] no warmup up to a global batch of 256


def warmup_images(optim_cfg: DictConfig, global_batch: int, train_size: int) -> int:
    """optim.warmup_images, with `auto` = 5 epochs when the global batch exceeds 256, else 0."""
    value = optim_cfg.warmup_images
    if value == "auto":
        return WARMUP_EPOCHS * train_size if global_batch > WARMUP_ABOVE_BATCH else 0
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"optim.warmup_images must be auto or an integer >= 0, got {value!r}")
    return value


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    optim_cfg: DictConfig,
    global_batch: int,
    train_size: int,
) -> StepLRScheduler:
    """The LR schedule; call .step_update(images_seen) after every optimizer step.

    The optimizer's lr must already be the effective LR (config.effective_lr).
    """
    if optim_cfg.decay_epochs <= 0:
        raise ValueError(f"optim.decay_epochs must be > 0, got {optim_cfg.decay_epochs}")
    eff_lr = optimizer.param_groups[0]["lr"]
    return StepLRScheduler(
        optimizer,
        decay_t=optim_cfg.decay_epochs * train_size,
        decay_rate=optim_cfg.decay_rate,
        warmup_t=warmup_images(optim_cfg, global_batch, train_size),
        warmup_lr_init=optim_cfg.warmup_lr_scale * eff_lr,
        warmup_prefix=False,  # the decay clock starts at image 0, as the formula above
        t_in_epochs=False,
    )


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
