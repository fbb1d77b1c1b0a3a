"""data.decode=dali: NVIDIA DALI decodes, crops, resizes and flips the batch (on the GPU with its
"mixed" nvJPEG decoder, or on the CPU where there is none), from crops that OUR code chose.

    pip install -e '.[dali]'       # nvidia-dali-cuda130 (also runs CPU-only pipelines)
    bnrepro-train data=imagenet data.root=/datasets/imagenet data.decode=dali

Order, sharding, epoch and resume position are the CPU loader's by construction: DataLoader
workers walk the same EpochSampler (data/sampler.py) and hand each file's bytes to DALI through an
external source, with the crop box and flip drawn from the sample's own (seed, epoch, index)
stream as the CPU path draws them (transforms.sample_train), or the centre box at evaluation.
DALI does no random choice of its own.

The colour distortion is not DALI's: TF-slim's ops (transforms.py) run on the training device,
fused with the normalisation, as for every loader (engine.Runtime.inputs); DALI's output is
uncoloured. DALI cannot express them exactly: its brightness_contrast scales
about one fixed centre per image, TF's contrast about each channel's own mean; its hsv operator
is a linear map in YIQ space, TF's adjust_hue/adjust_saturation work in the HSV hexcone and clip
saturation to [0, 1]; and TF-slim leaves values unclipped between ops in one of four orders.

The workers and the batch assembly are encoded.py's, shared with decode=gpu. Files DALI cannot
take go through the CPU path, which also skips and counts bad files (datasets.ImageFiles.try_load):
unreadable ones, and the ones its decoder refuses. A refused file fails its whole batch and leaves
the pipeline unusable: the pipeline is rebuilt, the batch's files are run one at a time to find
the refused one, and that file is remembered (`loader.refused`) and never offered to DALI again.

Speed: the workers read files and draw crops ahead (the DataLoader's prefetch); DALI runs one
batch at a time when the loop asks for it, while the GPU still works through the step queued
before. Whether this or decode=gpu keeps the GPU busier is what scripts/bench_gpu.py measures
(results/bench_gpu.md); a deeper DALI queue is the next step if neither does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Sampler

from bnrepro.data.datasets import ImageFiles
from bnrepro.data.encoded import Encoded, EncodedLoader
from bnrepro.errors import UserError


class DaliMissingError(UserError):
    """data.decode=dali without the `dali` extra installed: the message says how to install it."""


def import_dali():
    """nvidia.dali, or a one-line error that says how to install it."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as err:
        raise DaliMissingError(
            f"data.decode=dali needs NVIDIA DALI ({err}): pip install -e '.[dali]' "
            "(or use data.decode=cpu / gpu)"
        ) from err
    return nvidia.dali


def _pipeline(size: int, device: str, batch_size: int, num_threads: int, device_id: int | None):
    """Encoded file + absolute crop box + flip flag -> uint8 [3, size, size] (CHW)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)  # fmt: skip
    def crops():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)  # x0, y0
        shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)  # w, h
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        images = fn.decoders.image_slice(
            jpegs, anchor, shape, device="mixed" if device == "cuda" else "cpu",
            output_type=types.RGB, normalized_anchor=False, normalized_shape=False,
        )  # fmt: skip
        # Antialiased bilinear, as the CPU path's torch.nn.functional.interpolate.
        images = fn.resize(images, resize_x=size, resize_y=size, antialias=True,
                           interp_type=types.INTERP_LINEAR)  # fmt: skip
        return fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", mirror=flip)

    pipe = crops()
    pipe.build()
    return pipe


class DaliLoader(EncodedLoader):
    """Batches of `ds` in `sampler`'s order (uint8 images on `device`).

    Training: TrainBatch; `sampler` is the EpochSampler (`loader.sampler.set_epoch(epoch,
    start_image)`), full batches. Evaluation: (images, labels); a list of indices, the last batch
    may be short."""

    def __init__(
        self,
        cfg: DictConfig,
        ds: ImageFiles,
        sampler: Sampler | Sequence[int],
        device: str,
        *,
        drop_last: bool = True,
    ):
        import_dali()
        if device not in ("cpu", "cuda"):
            raise ValueError(f"DALI runs on cpu or cuda, got {device!r}")
        super().__init__(cfg, ds, sampler, device, drop_last=drop_last)
        self.size = ds.transform.size if ds.train else ds.transform.crop
        self.batch_size, self.num_threads = int(cfg.batch_size), max(1, int(cfg.num_workers))
        self.pipe = self._build()
        self.copy_stream = None  # CUDA: made on first use

    def _build(self):
        device_id = torch.cuda.current_device() if self.device == "cuda" else None
        return _pipeline(self.size, self.device, self.batch_size, self.num_threads, device_id)

    def decode_batch(self, samples: list[Encoded]) -> list[torch.Tensor | None]:
        try:
            return list(self._run(samples))
        except RuntimeError:  # a file its decoder refuses fails the batch and the pipeline
            self.pipe = self._build()
        return [self._run_alone(s) for s in samples]  # which file: the loader remembers it

    def _run_alone(self, sample: Encoded) -> torch.Tensor | None:
        """DALI's crop of one sample, or None (and a new pipeline) if it refuses the file."""
        try:
            return self._run([sample])[0]
        except RuntimeError as err:
            self.pipe = self._build()  # a failed pipeline is not reused
            # DALI's message: the operator, its traceback, then "encountered:" and the reason
            reason = " ".join(str(err).split("encountered:")[-1].split())
            warnings.warn(
                f"DALI cannot decode {self.ds.split.path(sample.index)}: it goes through the CPU "
                f"path from now on ({reason})",
                stacklevel=2,
            )
            return None

    def _run(self, batch: list[Encoded]) -> torch.Tensor:
        """DALI's crops of `batch` (samples with bytes and params): uint8 [n, 3, S, S]."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        boxes = [s.params.box for s in batch]
        self.pipe.feed_input("jpegs", [s.data for s in batch])
        self.pipe.feed_input("anchor", [np.array(box[:2], np.float32) for box in boxes])
        self.pipe.feed_input(
            "shape", [np.array((x1 - x0, y1 - y0), np.float32) for x0, y0, x1, y1 in boxes]
        )
        self.pipe.feed_input("flip", [np.array(s.params.flip, np.int32) for s in batch])
        (crops,) = self.pipe.run()  # returns once the batch is decoded
        dense = crops.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        if self.device == "cpu":
            feed_ndarray(dense, out)
            return out
        # DALI writes its next batch into the same buffer, on its own stream: copy on a side
        # stream and wait for that copy only (the training kernels queued before keep running).
        if self.copy_stream is None:
            self.copy_stream = torch.cuda.Stream()
        feed_ndarray(dense, out, cuda_stream=self.copy_stream)
        self.copy_stream.synchronize()
        return out
