"""What the two device decoders share (data.decode=gpu, gpu_decode.py; data.decode=dali, dali.py).

DataLoader workers read each file's bytes and draw its crop box, flip and colour as the CPU path
does, from the sample's own (seed, epoch, index) stream, or take the centre box at evaluation
(`EncodedFiles`). `EncodedLoader` hands a batch of them to its subclass's decoder, which only
decodes, crops, resizes and flips on the device; the loader then fills in the CPU path's images
for the files that are unreadable or that the decoder refused, and runs TF-slim's colour ops on
the whole batch where it lies.

A file the decoder refuses (a GIF named .JPEG for DALI, a CMYK JPEG for nvJPEG) is remembered in
`loader.refused` and goes through the CPU path from then on, never offered again: DALI must
rebuild its pipeline after each refusal.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from bnrepro.data import transforms as T
from bnrepro.data.datasets import ImageFiles, augment_rng
from bnrepro.data.sampler import loader_kwargs

Key = int | tuple[int, int, int]  # a dataset key: an index (evaluation) or (index, epoch, seed)


class Encoded(NamedTuple):
    """One sample as a worker hands it over."""

    key: Key  # the CPU path's key, should the device decoder not take the file
    data: np.ndarray | None  # the file's bytes (uint8); None: unreadable (warned and counted)
    params: T.TrainParams | None  # box, flip and colour ops; None with data
    label: int

    @property
    def index(self) -> int:
        return self.key[0] if isinstance(self.key, tuple) else self.key


class EncodedFiles(Dataset):
    """Worker side: a file's bytes and the box/flip/colour the CPU path would use for it, drawn
    from the same (seed, epoch, index) stream (training) or the centre box (evaluation)."""

    def __init__(self, ds: ImageFiles):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: Key) -> Encoded:
        index, epoch, seed = key if isinstance(key, tuple) else (key, 0, 0)
        label = int(self.ds.split.labels[index])
        read = self.ds.try_load(index, lambda data: (data, T.image_size(data)))
        if read is None:  # unreadable (warned, counted): the CPU path takes the next readable one
            return Encoded(key, None, None, label)
        data, (width, height) = read
        t = self.ds.transform
        if self.ds.train:
            params = T.sample_train(width, height, t.aug, augment_rng(seed, epoch, index))
        else:
            params = T.TrainParams(T.eval_box(width, height, t.resize, t.crop), False, ())
        # Copied here, in the worker, into a writable array: torch.from_numpy takes it as it is.
        return Encoded(key, np.frombuffer(bytearray(data), dtype=np.uint8), params, label)


class EncodedLoader:
    """Batches (uint8 [B, 3, S, S] on `device`, int64 [B]) of `ds` in `sampler`'s order, decoded
    by the subclass's `decode_batch`. Training: `sampler` is the EpochSampler, full batches;
    evaluation: a list of indices, the last batch may be short. `len` and `.sampler` are those of
    a DataLoader."""

    def __init__(
        self,
        cfg: DictConfig,
        ds: ImageFiles,
        sampler: Sampler | Sequence[int],
        device: str | torch.device,
        *,
        drop_last: bool = True,
    ):
        self.ds, self.sampler, self.device = ds, sampler, device
        self.files = DataLoader(
            EncodedFiles(ds), batch_size=int(cfg.batch_size), sampler=sampler,
            drop_last=drop_last, collate_fn=list, **loader_kwargs(cfg),
        )  # fmt: skip
        self.refused: set[int] = set()  # indices the decoder refused: the CPU path's from now on

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for samples in self.files:
            yield self.assemble(samples)

    def assemble(self, samples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's crops of the files it takes, the CPU path's images of the others, then
        the colour ops of the decoded ones, batched on the device."""
        offered = [
            i for i, s in enumerate(samples) if s.data is not None and s.index not in self.refused
        ]
        crops = self.decode_batch([samples[i] for i in offered]) if offered else []
        images: list[torch.Tensor | None] = [None] * len(samples)
        for i, crop in zip(offered, crops, strict=True):
            if crop is None:
                self.refused.add(samples[i].index)
            images[i] = crop
        color_ops, labels = [], []
        for i, sample in enumerate(samples):
            if images[i] is None:  # unreadable or refused: the CPU path (colour included)
                image, label = self.ds[sample.key]
                if image is None:  # unreadable at evaluation: left out (ImageFiles.__getitem__)
                    continue
                images[i] = image.to(self.device)
                color_ops.append(())
            else:
                label = sample.label
                color_ops.append(sample.params.color_ops)
            labels.append(label)
        images = [image for image in images if image is not None]
        if not images:
            return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        out = torch.stack(images)
        T.apply_color_batch(out, color_ops)  # TF-slim's colour ops, batched on the device
        return out, torch.tensor(labels, dtype=torch.int64)

    def decode_batch(self, samples: list[Encoded]) -> list[torch.Tensor | None]:
        """Each sample's box of its file, resized and flipped: uint8 [3, S, S] on the device (the
        colour comes after, for the whole batch), or None for a file the decoder refuses."""
        raise NotImplementedError
