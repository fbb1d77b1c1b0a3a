"""data.decode=gpu: JPEGs decoded in batches on the GPU (torchvision.io.decode_jpeg), then cropped,
resized and flipped there, with the same per-sample parameters as the CPU path; the colour, as for
every loader, comes later, on the whole batch (engine.Runtime.inputs). The workers and the batch
assembly are encoded.py's, shared with decode=dali.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bnrepro.data import transforms as T
from bnrepro.data.datasets import ImageFiles
from bnrepro.data.encoded import Encoded, EncodedLoader
from bnrepro.data.sampler import EpochSampler


class DeviceDecodeLoader(EncodedLoader):
    """decode=gpu: workers read bytes and draw crops; torchvision.io.decode_jpeg decodes the batch
    on `device`, where crop, resize and flip happen too. Files it cannot decode (PNG, CMYK,
    corrupt) go through the CPU path, which also skips and counts bad ones."""

    def __init__(self, cfg: DictConfig, ds: ImageFiles, sampler: EpochSampler, device: str):
        super().__init__(cfg, ds, sampler, torch.device(device))
        self.size = ds.transform.size

    def decode_batch(self, samples: list[Encoded]) -> list[torch.Tensor | None]:
        buffers = [torch.from_numpy(s.data) for s in samples]
        try:
            decoded = self._decode(buffers)
        except RuntimeError:  # one bad file fails the batch call: decode one by one
            decoded = [self._decode_one(b) for b in buffers]
        return [
            None if image is None else self._crop(image, s.params)
            for image, s in zip(decoded, samples, strict=True)
        ]

    def _decode(self, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(buffers, mode=ImageReadMode.RGB, device=self.device)

    def _decode_one(self, buf: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decode([buf])[0]
        except RuntimeError:
            return None

    def _crop(self, img: torch.Tensor, p: T.TrainParams) -> torch.Tensor:
        """The sample's crop, resized and flipped (the colour comes later, for the whole batch)."""
        x0, y0, x1, y1 = p.box
        crop = img[None, :, y0:y1, x0:x1].float()
        out = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True)
        out = out[0].round_().clamp_(0, 255).to(torch.uint8)
        return out.flip(-1) if p.flip else out
