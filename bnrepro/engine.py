"""The engine (as deit's engine.py): how tensors run, one training step, and evaluation.

    runtime = build_runtime(cfg.runtime, cfg.data, device)  # device, AMP, memory format, input norm
    epoch, position = train_step(model, batches, optimizer, scaler, runtime, stats)
    metrics = evaluate(model, data.val_loader, runtime)     # single-crop val loss, top-1, top-5

bnrepro-train (train.py), bnrepro-ensemble and bnrepro-bn-stats (evaluation/) and the benchmarks
run their tensors through here (what they are built from: builders.py); nothing here imports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from bnrepro import distributed
from bnrepro.data.datasets import TrainBatch
from bnrepro.data.loaders import unreadable_files
from bnrepro.data.transforms import distort_color_batch
from bnrepro.errors import ConfigError, DataError
from bnrepro.metrics import topk_correct

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """How tensors run: the device, the autocast dtype (None = fp32), the memory format, whether
    to torch.compile, and the input normalisation (the data's mean and std in 0-255 units)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    mean: torch.Tensor  # [1, C, 1, 1] on `device`
    std: torch.Tensor

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def inputs(self, images: torch.Tensor, color: torch.Tensor | None = None) -> torch.Tensor:
        """The loader's uint8 [B, C, H, W] -> float32 on the device: each image through its
        colour distortion (a training batch's `color`, TF-slim's ops batched:
        transforms.distort_color_batch), clipped to [0, 255] once, then normalised. The uint8
        batch is what crosses the bus (4x fewer bytes than float), and the colour costs the
        workers nothing. Unlike the per-image reference (transforms.apply_color) the coloured
        pixels are not rounded to uint8 levels (TF-slim does not round either)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"the model's inputs start as the loader's uint8, got {images.dtype}")
        images = images.to(self.device, non_blocking=True)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if color is None or not bool((color[:, 0] >= 0).any()):  # on the CPU: no device sync
            return images.contiguous(memory_format=fmt).float().sub_(self.mean).div_(self.std)
        x = distort_color_batch(images.float(), color).clamp_(0, 255)
        return x.contiguous(memory_format=fmt).sub_(self.mean).div_(self.std)

    def batch_inputs(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch's model inputs (coloured, normalised) and labels, on the device."""
        labels = batch.labels.to(self.device, non_blocking=True)
        return self.inputs(batch.images, batch.color), labels

    def with_normalization(self, mean: list[float], std: list[float]) -> Runtime:
        """This runtime normalising with another mean and std (a data config's: fractions of
        255), e.g. a checkpoint's own (converted weights: bnrepro/weights.py)."""
        mean_t, std_t = _normalization(mean, std, self.device)
        return dataclasses.replace(self, mean=mean_t, std=std_t)


def _normalization(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A data config's mean and std (fractions of 255) as [1, C, 1, 1] tensors in 0-255 units."""
    mean_t = torch.tensor(list(mean), device=device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(list(std), device=device).view(1, -1, 1, 1) * 255
    return mean_t, std_t


def build_runtime(runtime_cfg: DictConfig, data_cfg: DictConfig, device: torch.device) -> Runtime:
    """The Runtime of configs/runtime/*.yaml on `device` (from distributed.setup/resolve_device)."""
    cuda = device.type == "cuda"
    amp = runtime_cfg.amp if runtime_cfg.amp != "auto" else ("bf16" if cuda else "none")
    if amp == "fp16" and not cuda:  # the choices themselves are the schema's
        raise ConfigError(
            "runtime.amp=fp16 needs a GPU (its GradScaler): use bf16 or none on the CPU"
        )
    if cuda and runtime_cfg.tf32:  # TF32 matmul/conv on Ampere+: ~fp32 accuracy, much faster
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    channels_last = cuda if runtime_cfg.channels_last == "auto" else bool(runtime_cfg.channels_last)
    mean, std = _normalization(data_cfg.mean, data_cfg.std, device)
    return Runtime(device, AMP_DTYPES[amp], channels_last, bool(runtime_cfg.compile), mean, std)


def training_batches(
    loader: torch.utils.data.DataLoader, epoch: int, images_in_epoch: int
) -> Iterator[tuple[int, int, TrainBatch]]:
    """Endless (epoch, images of that epoch's global order used so far, batch), from a saved
    data position (data/sampler.py: the position counts every rank's images)."""
    per_batch = loader.sampler.images_per_batch  # one batch on every rank
    while True:
        loader.sampler.set_epoch(epoch, start_image=images_in_epoch)
        # iter() draws worker seeds from the global RNG: fork it, so that the training randomness
        # (dropout) does not depend on where a run was resumed.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(loader)
        for batch in iterator:
            images_in_epoch += per_batch
            yield epoch, images_in_epoch, batch
        epoch, images_in_epoch = epoch + 1, 0


def training_inputs(
    loader: torch.utils.data.DataLoader, runtime: Runtime
) -> Iterator[torch.Tensor]:
    """Model-ready training inputs in epoch 0's order, for Algorithm 2 (evaluation/bn_stats.py)."""
    for _, _, batch in training_batches(loader, 0, 0):
        yield runtime.inputs(batch.images, batch.color)


def train_step(
    model: nn.Module,
    data_iter: Iterator,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    stats: torch.Tensor,
    *,
    grad_accum: int = 1,
) -> tuple[int, int]:
    """One optimizer step over `grad_accum` micro-batches; adds loss/top1/count to `stats`
    (no host sync here); returns the data position after it (epoch, images_in_epoch)."""
    optimizer.zero_grad(set_to_none=True)
    for micro in range(grad_accum):
        epoch, position, batch = next(data_iter)
        inputs, labels = runtime.batch_inputs(batch)
        # Under DDP, all-reduce gradients only on the last micro-batch.
        no_sync = micro < grad_accum - 1 and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext(), runtime.autocast():
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss / grad_accum).backward()
        with torch.no_grad():
            stats[0] += loss.detach() * len(labels)
            stats[1] += topk_correct(logits.detach().float(), labels, ks=(1,))[1].sum()
            stats[2] += len(labels)
    scaler.step(optimizer)
    scaler.update()
    return epoch, position


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    runtime: Runtime,
    *,
    max_images: int | None = None,
    dist: distributed.Dist | None = None,
    progress: bool = False,
) -> dict:
    """Single-centre-crop val loss, top-1, top-5 (fractions) and the number of images (for
    their intervals), summed over ranks; the first `max_images` images (over all ranks) when
    given. `progress`: draw a bar (a terminal's). Each readable file counts once; `val/skipped`
    says how many unreadable ones were left out (DataError if no file could be read)."""
    if dist is not None:
        distributed.broadcast_buffers(model, dist)  # every rank evaluates rank 0's model
    was_training = model.training
    model.eval()
    # loss, top-1, top-5, images, unreadable files left out
    totals = torch.zeros(5, dtype=torch.float64, device=runtime.device)
    world_size = dist.world_size if dist else 1
    bar = tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress)
    with torch.random.fork_rng(devices=[]):  # evaluating must not shift the training randomness
        for images, labels in bar:
            if len(labels) == 0:  # every file of the batch unreadable: left out
                continue
            labels = labels.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = model(runtime.inputs(images)).float()
            correct = topk_correct(logits, labels, ks=(1, 5))
            totals[0] += F.cross_entropy(logits, labels, reduction="sum")
            totals[1] += correct[1].sum()
            totals[2] += correct[5].sum()
            totals[3] += len(labels)
            if max_images and totals[3] * world_size >= max_images:
                break
    bar.close()
    totals[4] = unreadable_files(loader)
    if dist is not None:
        distributed.all_sum(totals, dist)
    model.train(was_training)
    loss, top1, top5, n, skipped = totals.tolist()
    if n == 0:
        raise DataError(
            f"no val image could be read ({skipped:.0f} unreadable, each warned about with its "
            "path): restore the val files, or point data.root at an intact copy"
        )
    # The image count gives each score its interval (stats.wilson; bnrepro-report).
    return {"val/loss": loss / n, "val/top1": top1 / n, "val/top5": top5 / n,
            "val/images": int(n), "val/skipped": int(skipped)}  # fmt: skip
