"""The training input pipeline's throughput per core: bnrepro's workers vs the torchvision reference,
side by side in one run, and what the colour distortion costs where it now runs (the device).

Every pipeline reads the same ImageNet-sized JPEG files (about 400x350, quality 90: random crops of
the two real photographs inside scikit-learn, written to a temporary folder) and produces 224x224
training crops:
  torchvision reference      PIL decode, RandomResizedCrop(224), RandomHorizontalFlip, ToTensor,
                             Normalize (no colour distortion at all)
  bnrepro workers            what a DataLoader worker does now: decode (libjpeg-turbo), the paper's
                             random-sized crop, resize, flip, uint8 out, and each image's colour
                             parameters (TF-slim's distort_color, strength 1) for the device
  bnrepro, colour in worker  the same plus the colour applied per image in the worker
                             (transforms.apply_color): where it ran before it moved to the device
  bnrepro, no colour         strength 0: no colour parameters drawn either
Measured one image at a time in this process with one thread (per core), and through a DataLoader
with one worker process and batches of 32 (per worker). Pipelines take turns within each round,
so all see the same load on a shared machine; medians are printed, with ratios to the reference.

Then the device side on this CPU (one thread, batches of 32): engine.Runtime.inputs turning the
uint8 batch into the model's input, with the batched colour and without (normalisation only).

    .venv/bin/python scripts/bench_data.py --images 300 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bnrepro.config import compose
from bnrepro.data import ImageFiles, Split
from bnrepro.data import transforms as T
from bnrepro.data.datasets import collate_train
from bnrepro.engine import build_runtime


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427x640, real photos
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = int(rng.integers(330, 480)), int(rng.integers(290, 420))
        s = rng.uniform(max(w / photo.width, h / photo.height), 1.0)
        big = photo.resize((int(photo.width * s) + 1, int(photo.height * s) + 1), Image.BICUBIC)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        paths.append(folder / f"{i:05d}.JPEG")
        big.crop((x, y, x + w, y + h)).save(paths[-1], quality=90)
    return paths


class Reference(Dataset):
    """What a torchvision ImageFolder training set does per image."""

    def __init__(self, paths: list[Path]):
        import torchvision.transforms as tv

        self.paths = paths
        self.transform = tv.Compose([
            tv.RandomResizedCrop(224), tv.RandomHorizontalFlip(), tv.ToTensor(),
            tv.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        return self.transform(Image.open(self.paths[key]).convert("RGB")), 0


class ColourInWorker(Dataset):
    """bnrepro's training samples with the colour applied per image, in the worker (as before)."""

    def __init__(self, ds: ImageFiles):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        image, label, color = self.ds[key]
        return T.apply_color(image, T.color_ops(color)), label


def ours(paths: list[Path], color_strength: float) -> ImageFiles:
    split = Split.of(paths[0].parent, [p.name for p in paths], [0] * len(paths))
    return ImageFiles(split, T.TrainTransform(224, T.Augment(color_strength=color_strength)))


def keys(ds: Dataset, epoch: int) -> list:
    """The training sampler's keys (index, epoch, seed) for bnrepro, plain indices otherwise."""
    return (
        [(i, epoch, 0) for i in range(len(ds))]
        if not isinstance(ds, Reference)
        else list(range(len(ds)))
    )


def rate_in_process(ds: Dataset, epoch: int) -> float:
    start = time.perf_counter()
    for k in keys(ds, epoch):
        ds[k]
    return len(ds) / (time.perf_counter() - start)


def rate_one_worker(ds: Dataset, epoch: int) -> float:
    collate = collate_train if isinstance(ds, ImageFiles) else None
    loader = DataLoader(ds, batch_size=32, sampler=keys(ds, epoch), num_workers=1,
                        drop_last=True, collate_fn=collate)  # fmt: skip
    it = iter(loader)
    next(it)  # the worker's start-up is not throughput
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch[1])
    return n / (time.perf_counter() - start)


def device_side(ds: ImageFiles, rounds: int) -> dict[str, list[float]]:
    """images/s of Runtime.inputs on this CPU (one thread), batches of 32 of `ds`'s samples:
    colour + normalisation, and normalisation alone."""
    cfg = compose("train", ["data=imagenet", "runtime.device=cpu", "runtime.amp=none",
                            "runtime.channels_last=false"])  # fmt: skip
    runtime = build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
    batch = collate_train([ds[(i, 0, 0)] for i in range(32)])
    rates = {"colour + normalisation": [], "normalisation only": []}
    for _ in range(rounds):
        for name, color in (("colour + normalisation", batch.color), ("normalisation only", None)):
            start = time.perf_counter()
            for _ in range(5):
                runtime.inputs(batch.images, color)
            rates[name].append(5 * 32 / (time.perf_counter() - start))
    return rates


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def show(title: str, rates: dict[str, list[float]], reference: str) -> None:
    ref = statistics.median(rates[reference])
    print(f"\n{title}: images/s (median of {len(rates[reference])} rounds), ratio to {reference}")
    for name, rs in rates.items():
        med = statistics.median(rs)
        listed = ", ".join(f"{x:.0f}" for x in rs)
        print(f"  {name:28s} {med:7.0f}   x{med / ref:.2f}   (rounds: {listed})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if a.images < 100:
        p.error("--images must be >= 100: the DataLoader measurement skips its first batch of 32")
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), a.images)
        sizes = [Image.open(q).size for q in paths]
        kib = np.mean([q.stat().st_size for q in paths]) / 1024
        print(f"{len(paths)} JPEGs, mean {np.mean(sizes, 0).round()} px, {kib:.0f} KiB, q90")
        print(f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
              f"torch {torch.__version__}")  # fmt: skip
        workers = ours(paths, 1.0)
        pipelines = {
            "torchvision reference": Reference(paths),
            "bnrepro workers": workers,
            "bnrepro, colour in worker": ColourInWorker(workers),
            "bnrepro, no colour": ours(paths, 0.0),
        }
        for mode, measure in (
            ("in process, 1 thread", rate_in_process),
            ("1 DataLoader worker", rate_one_worker),
        ):
            rates = {name: [] for name in pipelines}
            for r in range(a.rounds):
                for name, ds in pipelines.items():
                    rates[name].append(measure(ds, r))
            show(mode, rates, "torchvision reference")
        show("device side on this CPU, 1 thread, batches of 32", device_side(workers, a.rounds),
             "normalisation only")  # fmt: skip
    print(f"\n{time.perf_counter() - start:.0f} s wall, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
