"""data.decode=gpu: JPEGs decoded in batches on the GPU (torchvision.io.decode_jpeg), then cropped,
resized, flipped and colour-distorted there, with the same per-sample parameters as the CPU path.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from bnrepro.data import transforms as T
from bnrepro.data.datasets import ImageFiles, augment_rng
from bnrepro.data.sampler import EpochSampler, loader_kwargs


class _RawFiles(Dataset):
    """Worker side of decode=gpu: file bytes and the sample's augmentation parameters, drawn from
    the same (seed, epoch, index) stream as the CPU path, so both give the same crops."""

    def __init__(self, ds: ImageFiles):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, int]):
        index, epoch, seed = key
        label = int(self.ds.split.labels[index])
        read = self.ds.try_load(index, lambda data: (data, T.image_size(data)))
        if read is None:  # unreadable (warned, counted): the CPU path takes the next readable file
            return key, None, None, label
        data, (w, h) = read
        params = T.sample_train(w, h, self.ds.transform.aug, augment_rng(seed, epoch, index))
        return key, torch.frombuffer(bytearray(data), dtype=torch.uint8), params, label


class DeviceDecodeLoader:
    """decode=gpu: workers read bytes and draw crops; torchvision.io.decode_jpeg decodes the batch
    on `device`, where crop, resize, flip and colour happen too. Files it cannot decode (PNG,
    CMYK, corrupt) go through the CPU path, which also skips and counts bad ones."""

    def __init__(self, cfg: DictConfig, ds: ImageFiles, sampler: EpochSampler, device: str):
        self.ds, self.sampler, self.device = ds, sampler, torch.device(device)
        self.size = ds.transform.size
        self.loader = DataLoader(
            _RawFiles(ds), batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
            collate_fn=list, **loader_kwargs(cfg),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            ok = [b for b in batch if b[1] is not None]
            try:
                decoded = self._decode([b[1] for b in ok]) if ok else []
            except RuntimeError:  # one bad file fails the batch call: decode one by one
                decoded = [self._decode_one(b[1]) for b in ok]
            by_key = {b[0]: d for b, d in zip(ok, decoded, strict=True)}
            images, labels, color_ops = [], [], []
            for key, _, params, label in batch:
                img = by_key.get(key)
                if img is None:  # not a JPEG, CMYK, corrupt: the CPU path (colour included)
                    img, label = self.ds[key]
                    img = img.to(self.device)
                    color_ops.append(())
                else:
                    img = self._crop(img, params)
                    color_ops.append(params.color_ops)
                images.append(img)
                labels.append(label)
            images = torch.stack(images)
            T.apply_color_batch(images, color_ops)  # the CPU path's colour ops, batched
            yield images, torch.tensor(labels, dtype=torch.int64)

    def _decode(self, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(buffers, mode=ImageReadMode.RGB, device=self.device)

    def _decode_one(self, buf: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decode([buf])[0]
        except RuntimeError:
            return None

    def _crop(self, img: torch.Tensor, p: T.TrainParams) -> torch.Tensor:
        """The sample's crop, resized and flipped (the colour comes after, for the whole batch)."""
        x0, y0, x1, y1 = p.box
        crop = img[None, :, y0:y1, x0:x1].float()
        out = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True)
        out = out[0].round_().clamp_(0, 255).to(torch.uint8)
        return out.flip(-1) if p.flip else out
