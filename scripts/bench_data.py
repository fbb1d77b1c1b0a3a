"""Training-pipeline throughput: bnrepro's vs the plain torchvision reference, side by side.

Both read the same ImageNet-sized JPEG files (about 400x350, quality 90: random crops of the two
real photographs inside scikit-learn, written to a temporary folder) and produce 224x224 training
crops. Reference: PIL decode, RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize.
Ours: bnrepro.data.ImageFiles with the paper's augmentation (uint8 out; normalisation happens on
the device, so it is not CPU work here), with full colour distortion and without any (the
reference has none). Measured one image at a time in this process with one thread (per core),
and through a DataLoader with one worker process and batches of 32 (per worker). Pipelines take
turns within each round, so both see the same load on a shared machine; medians are printed.

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

from bnrepro.data import ImageFiles, Split
from bnrepro.data.transforms import Augment, TrainTransform


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

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), 0


def ours(paths: list[Path], color_strength: float) -> ImageFiles:
    split = Split.of(paths[0].parent, [p.name for p in paths], [0] * len(paths))
    return ImageFiles(split, TrainTransform(224, Augment(color_strength=color_strength)))


def rate_in_process(ds: Dataset, epoch: int) -> float:
    keys = [(i, epoch, 0) for i in range(len(ds))] if isinstance(ds, ImageFiles) else range(len(ds))
    start = time.perf_counter()
    for k in keys:
        ds[k]
    return len(ds) / (time.perf_counter() - start)


def rate_one_worker(ds: Dataset, epoch: int) -> float:
    keys = (
        [(i, epoch, 0) for i in range(len(ds))]
        if isinstance(ds, ImageFiles)
        else list(range(len(ds)))
    )
    loader = DataLoader(ds, batch_size=32, sampler=keys, num_workers=1, drop_last=True)
    it = iter(loader)
    next(it)  # the worker's start-up is not throughput
    start, n = time.perf_counter(), 0
    for x, _ in it:
        n += len(x)
    return n / (time.perf_counter() - start)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if a.images < 100:
        p.error("--images must be >= 100: the DataLoader measurement skips its first batch of 32")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), a.images)
        sizes = [Image.open(q).size for q in paths]
        kib = np.mean([q.stat().st_size for q in paths]) / 1024
        print(f"{len(paths)} JPEGs, mean {np.mean(sizes, 0).round()} px, {kib:.0f} KiB, q90")
        print(f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        pipelines = {
            "torchvision reference": Reference(paths),
            "bnrepro, colour 1.0": ours(paths, 1.0),
            "bnrepro, colour 0": ours(paths, 0.0),
        }
        for mode, measure in (
            ("in process, 1 thread", rate_in_process),
            ("1 DataLoader worker", rate_one_worker),
        ):
            rates = {name: [] for name in pipelines}
            for r in range(a.rounds):
                for name, ds in pipelines.items():
                    rates[name].append(measure(ds, r))
            ref = statistics.median(rates["torchvision reference"])
            print(f"\n{mode}: images/s (median of {a.rounds} rounds), ratio to the reference")
            for name, rs in rates.items():
                med = statistics.median(rs)
                print(
                    f"  {name:24s} {med:7.0f}   x{med / ref:.2f}   (rounds: {', '.join(f'{x:.0f}' for x in rs)})"
                )


if __name__ == "__main__":
    main()
