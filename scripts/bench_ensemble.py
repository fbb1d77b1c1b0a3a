"""Images/s of the multi-crop ensemble pipeline vs the members' bare forward passes.

The pipeline is bnrepro-ensemble's own loop (ensemble.evaluate_crops over data.whole_image_loader): read
and decode each JPEG once, cut its crops on the device, normalise, run every member, average.
The bare figure runs only the members' forward passes on the very same crops, cut and normalised
beforehand and held in memory. ratio = pipeline / bare: the share of the members' speed that the
pipeline keeps (goal >= 0.9 on CPU). Untrained members: speed does not depend on the weights.

Both are timed in the same run, batch by batch in turn (the bare passes on batch b just before the
pipeline's), on two clocks: wall time, and CPU time (user + system, of this process and of its
finished decoding workers). A busy shared machine then slows both alike.

    .venv/bin/python scripts/bench_ensemble.py                       # 6 members, 144 crops, 64 px
    .venv/bin/python scripts/bench_ensemble.py --resolution 224 --width 0.125 --images 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import timm
import torch

from bnrepro import engine
from bnrepro.config import compose
from bnrepro.data import WholeImages, build_datasets, whole_image_loader
from bnrepro.evaluation import ensemble
from bnrepro.evaluation.crops import cut_crops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=6)
    p.add_argument("--crops", type=int, default=144, choices=(1, 10, 144))
    p.add_argument("--images", type=int, default=8, help="val images to evaluate")
    p.add_argument("--resolution", type=int, default=64, help="crop side (224 = the paper's)")
    p.add_argument("--width", type=float, default=0.25, help="model.width_mult of the members")
    p.add_argument("--batch-crops", type=int, default=576, help="crops per forward pass")
    p.add_argument("--workers", type=int, default=1, help="decoding worker processes")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3, help="runs; the median is shown")
    p.add_argument("--data-root", help="a synthetic tree (default: a fresh one in a temp folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    root = args.data_root or tempfile.mkdtemp(prefix="bench_ensemble_")
    resize = round(args.resolution * 256 / 224)
    cfg = compose("ensemble", [
        "checkpoints=[none]", f"data.root={root}", f"data.eval_crop={args.resolution}",
        f"data.eval_resize={resize}",
        # ImageNet's image sizes relative to its 224 crop (~1.3-2.2x), scaled to the resolution
        f"data.synthetic.min_side={round(args.resolution * 1.25)}",
        f"data.synthetic.max_side={round(args.resolution * 2.5)}",
        f"data.synthetic.val_per_class={-(-args.images // 10)}", "data.synthetic.train_per_class=4",
    ])  # fmt: skip
    _, val_ds, classes = build_datasets(cfg.data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtime = engine.build_runtime(cfg.runtime, cfg.data, device)
    models = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        m = timm.create_model("bn_inception", width_mult=args.width, num_classes=len(classes))
        models.append(
            m.eval().to(
                device,
                memory_format=torch.channels_last
                if runtime.channels_last
                else torch.contiguous_format,
            )
        )

    images = WholeImages(val_ds, args.images)
    per_batch = max(1, args.batch_crops // args.crops)

    # The same batches, cut and normalised once, held in memory.
    held = []
    for i in range(0, len(images), per_batch):
        batch = [images[j][0].to(device) for j in range(i, min(i + per_batch, len(images)))]
        held.append(
            runtime.inputs(torch.cat([cut_crops(im, args.crops, args.resolution) for im in batch]))
        )

    @torch.no_grad()
    def bare(x: torch.Tensor) -> None:
        for m in models:
            with runtime.autocast():
                m(x)
        _sync(device)

    def measure() -> tuple[np.ndarray, np.ndarray]:
        """(wall, cpu) seconds of the pipeline alone and of the bare passes, in one run: the
        bare passes on held batch b run just before the pipeline gets batch b, so both see a
        busy shared machine in the same state. Their time is taken out of the pipeline's."""
        loader = whole_image_loader(images, per_batch, args.workers, device)
        bare_time = np.zeros(2)

        def batches(loader):
            nonlocal bare_time
            for x, batch in zip(held, loader, strict=True):
                t = _clocks()
                bare(x)
                bare_time += _clocks() - t
                yield batch

        t = _clocks()
        ensemble.evaluate_crops([models], batches(loader), n_crops=args.crops,
                                resolution=args.resolution, runtime=runtime)  # fmt: skip
        _sync(device)
        del loader  # its workers exit: their CPU time is counted
        return _clocks() - t - bare_time, bare_time

    bare(held[0])  # warm-up: allocator, kernels
    runs = [measure() for _ in range(args.repeats)]
    n = len(images)
    print(f"device {device} ({torch.get_num_threads()} threads), {args.members} members "
          f"bn_inception width {args.width}, {args.crops} crops at {args.resolution} px, "
          f"{n} images, {per_batch} images ({per_batch * args.crops} crops) a batch, "
          f"{args.workers} decoding worker(s); {args.repeats} runs, median")  # fmt: skip
    print("| clock | pipeline images/s | bare forward images/s | ratio |")
    print("|---|---|---|---|")
    for i, clock in enumerate(("wall", "cpu")):
        pipe = np.median([n / r[0][i] for r in runs])
        bare_ = np.median([n / r[1][i] for r in runs])
        ratio = np.median([r[1][i] / r[0][i] for r in runs])
        print(f"| {clock} | {pipe:.4f} | {bare_:.4f} | {ratio:.3f} |")
    print(
        "ratio per run (wall, cpu):", [tuple(round(float(x), 3) for x in r[1] / r[0]) for r in runs]
    )


def _clocks() -> np.ndarray:
    """Wall seconds, and CPU seconds of this process and its finished children."""
    t = os.times()
    return np.array([time.perf_counter(), t.user + t.system + t.children_user + t.children_system])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
