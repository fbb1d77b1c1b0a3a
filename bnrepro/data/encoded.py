"""What the two device decoders share (data.decode=gpu, gpu_decode.py; data.decode=dali, dali.py).

DataLoader workers read each file's bytes and draw its crop box, flip and colour as the CPU path
does, from the sample's own (seed, epoch, index) stream, or take the centre box at evaluation
(`EncodedFiles`). `EncodedLoader` hands a batch of them to its subclass's decoder, which only
decodes, crops, resizes and flips on the device; the loader then fills in the CPU path's images
for the files that are unreadable or that the decoder refused, and yields the batch with each
image's colour parameters (a datasets.TrainBatch, as the CPU loader does): TF-slim's colour ops
run on the training device, fused with the normalisation (engine.Runtime.inputs).

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
from bnrepro.data.datasets import ImageFiles, TrainBatch, augment_rng
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
    """Batches of `ds` in `sampler`'s order, decoded by the subclass's `decode_batch`: training,
    a TrainBatch (uint8 images on `device`, labels, colour parameters); `sampler` is the
    EpochSampler, full batches. Evaluation: (uint8 images on `device`, labels); `sampler` is a
    list of indices, the last batch may be short. `len` and `.sampler` are those of a DataLoader."""

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

    def __iter__(self) -> Iterator[TrainBatch | tuple[torch.Tensor, torch.Tensor]]:
        for samples in self.files:
            yield self.assemble(samples)

    def assemble(self, samples: list[Encoded]) -> TrainBatch | tuple[torch.Tensor, torch.Tensor]:
        """The decoder's crops of the files it takes, the CPU path's images of the others; in
        training, with each image's colour parameters (the CPU path's own for its images)."""
        offered = [
            i for i, s in enumerate(samples) if s.data is not None and s.index not in self.refused
        ]
        crops = self.decode_batch([samples[i] for i in offered]) if offered else []
        images: list[torch.Tensor | None] = [None] * len(samples)
        for i, crop in zip(offered, crops, strict=True):
            if crop is None:
                self.refused.add(samples[i].index)
            images[i] = crop
        colors, labels = [], []
        for i, sample in enumerate(samples):
            if images[i] is None:  # unreadable or refused: the CPU path (the next readable file)
                image, label, *color = self.ds[sample.key]  # training: its colour too
                if image is None:  # unreadable at evaluation: left out (ImageFiles.__getitem__)
                    continue
                images[i] = image.to(self.device)
            else:
                label, color = sample.label, [T.color_params(sample.params.color_ops)]
            labels.append(label)
            colors += color
        images = [image for image in images if image is not None]
        if not images:  # evaluation, every file of the batch unreadable
            return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        out, labels = torch.stack(images), torch.tensor(labels, dtype=torch.int64)
        if not self.ds.train:
            return out, labels
        return TrainBatch(out, labels, torch.tensor(colors, dtype=torch.float32))

    def decode_batch(self, samples: list[Encoded]) -> list[torch.Tensor | None]:
        """Each sample's box of its file, resized and flipped: uint8 [3, S, S] on the device (the
        colour comes later, for the whole batch), or None for a file the decoder refuses."""
        raise NotImplementedError
