"""Does the GPU stay busy? Training and 144-crop evaluation throughput on one GPU, side by side.

    .venv/bin/python scripts/bench_gpu.py --out results/bench_gpu.md     # scripts/gpu_check.sh runs it

The paper's network at its input size (BN-Inception, model.width_mult=1, 224 px, bf16 autocast and
channels_last as runtime/default.yaml sets them on a GPU), on cuda:0, at batch 32 per GPU (the
paper's) and at the largest batch that fits (doubling from 32 until out of memory, --max-batch):
  bare        forward+backward+SGD step (engine.train_step) on one batch held on the GPU
  bare+colour the same with the paper's colour distortion (strength 1) applied to that batch on
              the GPU at every step, fused with the normalisation (engine.Runtime.inputs)
  loop, X     train(), the whole loop, fed by data.decode=X: cpu (DataLoader workers decode with
              libjpeg-turbo), gpu (torchvision's batched decode_jpeg on CUDA), dali (NVIDIA DALI's
              nvJPEG "mixed" decoder; pip install -e '.[dali]')
images/s, peak GPU memory, ratio loop / bare (goal >= 0.9). Then 144-crop evaluation (evaluate_crops:
decode each image once, cut its crops on the GPU, forward) against pure forward passes over the same
number of crops held on the GPU (goal >= 0.9). Each row times --images images after
--warm-images untimed ones; no evaluation or checkpoint falls inside the timed steps.

Data: a synthetic ImageNet-shaped tree made once in --data-root (JPEG quality 90, sides 300-500 px
like ImageNet's, 10 classes: the classifier is 10-way, not 1000-way, a 0.1% change in compute).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bnrepro import builders, distributed, engine
from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.data import TrainBatch, WholeImages, build_datasets, whole_image_loader
from bnrepro.data import transforms as TF
from bnrepro.data.dali import DaliMissingError
from bnrepro.data.loaders import DECODERS
from bnrepro.evaluation import ensemble

DEVICE = torch.device("cuda")
NEVER = 10**12  # images: no evaluation or checkpoint inside the timed windows


def overrides(root: str, batch: int, train_images: int, workers: int) -> list[str]:
    return [
        f"data.root={root}", "data.train_crop=224", "data.eval_resize=256", "data.eval_crop=224",
        "data.synthetic.min_side=300", "data.synthetic.max_side=500",
        f"data.synthetic.train_per_class={-(-train_images // 10)}",
        "data.synthetic.val_per_class=13", f"data.batch_size={batch}", f"data.num_workers={workers}",
        "model.width_mult=1.0", f"runtime.device={DEVICE.type}", "runtime.progress=false",
        f"trainer.eval_every_images={NEVER}", f"trainer.ckpt_every_images={NEVER}",
        f"trainer.eval_max_images={batch}",
    ]  # fmt: skip


def bare_rate(
    cfg, classes: list[str], steps: int, warm: int, color: bool = False
) -> tuple[float, float]:
    """(images/s, peak GiB) of train_step on one uint8 batch held on the GPU; with `color`, each
    image with its own draw of the paper's colour distortion at strength 1."""
    device = DEVICE
    runtime = engine.build_runtime(cfg.runtime, cfg.data, device)
    model = builders.build_model(cfg, classes).to(device)
    step_model = builders.wrap_model(model, cfg, distributed.Dist(0, 1, 0, device), runtime)
    optimizer = builders.build_optimizer(model, cfg.optim, 0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    b, side = cfg.data.batch_size, cfg.data.train_crop
    images = torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, device=device)
    labels = torch.randint(0, len(classes), (b,), device=device)
    rng = np.random.default_rng(0)
    rows = [TF.color_params(TF.sample_color(TF.Augment(), rng)) if color else TF.NO_COLOR
            for _ in range(b)]  # fmt: skip
    batch = TrainBatch(images, labels, torch.tensor(rows))
    batches = iter(lambda: (0, 1, batch), None)
    stats = torch.zeros(3, device=device)
    torch.cuda.reset_peak_memory_stats()
    for i in range(warm + steps):
        if i == warm:
            torch.cuda.synchronize()
            start = time.perf_counter()
        engine.train_step(step_model, batches, optimizer, scaler, runtime, stats)
    torch.cuda.synchronize()
    return steps * b / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2**30


def fits(cfg, classes: list[str]) -> bool:
    try:
        bare_rate(cfg, classes, steps=1, warm=1)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(base: list[str], classes: list[str], cap: int) -> int:
    batch = 32
    while batch * 2 <= cap and fits(
        compose("train", [*base, f"data.batch_size={batch * 2}"]), classes
    ):
        batch *= 2
    return batch


def loop_rate(cfg, steps: int, warm: int, window: int) -> tuple[float, float]:
    """(images/s, peak GiB) of train() over `steps` steps after `warm`, from its log windows of
    `window` steps (each log syncs the host with the GPU once, as in a real run)."""
    b = cfg.data.batch_size
    cfg.trainer.max_images = (warm + steps) * b
    cfg.trainer.log_every_images = window * b
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        T.train(cfg, run_dir=run_dir)
        with open(f"{run_dir}/metrics.jsonl") as f:
            rows = [json.loads(line) for line in f]
    peak = torch.cuda.max_memory_allocated() / 2**30
    rates = [r["train/images_per_s"] for r in rows if "train/images_per_s" in r][warm // window :]
    return len(rates) / sum(1 / r for r in rates), peak  # images over total time


@torch.no_grad()
def ensemble_rates(cfg, classes: list[str], images: int, per_batch: int, workers: int):
    """(pipeline images/s, pure-forward images/s) of one member at 144 crops."""
    device = DEVICE
    runtime = engine.build_runtime(cfg.runtime, cfg.data, device)
    model = builders.build_model(cfg, classes).to(device).eval()
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    _, val_ds, _ = build_datasets(cfg.data)
    crops = 144
    side = cfg.data.eval_crop
    held = torch.randint(
        0, 256, (per_batch * crops, 3, side, side), dtype=torch.uint8, device=device
    )
    x = runtime.inputs(held)

    def forward() -> None:
        with runtime.autocast():
            model(x)

    forward()  # warm-up
    torch.cuda.synchronize()
    n_batches = -(-images // per_batch)
    start = time.perf_counter()
    for _ in range(n_batches):
        forward()
    torch.cuda.synchronize()
    bare = n_batches * per_batch / (time.perf_counter() - start)
    loader = whole_image_loader(WholeImages(val_ds, images), per_batch, workers, device)
    start = time.perf_counter()
    ev = ensemble.evaluate_crops([[model]], loader, n_crops=crops, resolution=side, runtime=runtime)
    torch.cuda.synchronize()
    return ev.images / (time.perf_counter() - start), bare


def machine() -> str:
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.split()[0]  # fmt: skip
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = "unknown"
    try:
        import nvidia.dali

        dali = nvidia.dali.__version__
    except ImportError:
        dali = "not installed"
    props = torch.cuda.get_device_properties(0)
    return (
        f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB), driver {driver}, "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}, DALI {dali}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16384, help="timed images per row")
    p.add_argument("--warm-images", type=int, default=2048, help="untimed images first")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 2)),
                   help="decoding worker processes (data.num_workers)")  # fmt: skip
    p.add_argument("--ensemble-images", type=int, default=128)
    p.add_argument("--data-root", default=os.path.join(tempfile.gettempdir(), "bnrepro_bench_gpu"))
    p.add_argument("--out", help="write the markdown here too (results/bench_gpu.md)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device visible; run this on a GPU machine")
    command = shlex.join(["python", "scripts/bench_gpu.py", *sys.argv[1:]])

    base = overrides(args.data_root, 32, args.max_batch + 100, args.workers)
    classes = build_datasets(compose("train", base).data)[2]  # makes the tree once
    rows = []  # (what, batch, images/s, peak GiB, ratio to bare)
    faster: dict[int, dict[str, float]] = {}
    for batch in dict.fromkeys([32, largest_batch(base, classes, args.max_batch)]):
        window = max(1, args.images // batch // 8)  # 8 timed log windows
        steps = -(-args.images // (batch * window)) * window
        warm = -(-args.warm_images // (batch * window)) * window
        cfg = compose("train", [*base, f"data.batch_size={batch}"])
        bare, peak = bare_rate(cfg, classes, steps, warm)
        rows.append(("bare forward+backward+step", batch, bare, peak, 1.0))
        print(rows[-1], flush=True)
        colored, peak = bare_rate(cfg, classes, steps, warm, color=True)
        rows.append(("bare + the paper's colour on the GPU", batch, colored, peak, colored / bare))
        print(rows[-1], flush=True)
        for decode in DECODERS:
            what = f"full loop, data.decode={decode}"
            what += f" ({args.workers} worker processes)" if decode == "cpu" else ""
            cfg = compose("train", [*base, f"data.batch_size={batch}", f"data.decode={decode}"])
            try:
                rate, peak = loop_rate(cfg, steps, warm, window)
            except DaliMissingError:
                rows.append(
                    (f"{what}: not installed (pip install -e '.[dali]')", batch, None, None, None)
                )
                continue
            except Exception as err:  # noqa: BLE001 - one failed row must not lose the others
                rows.append(
                    (f"{what}: failed, {type(err).__name__}: {err}"[:160], batch, None, None, None)
                )
                continue
            finally:
                gc.collect()
                torch.cuda.empty_cache()
            rows.append((what, batch, rate, peak, rate / bare))
            faster.setdefault(batch, {})[decode] = rate
            print(rows[-1], flush=True)

    per_batch = 4  # 576 crops a forward pass
    cfg = compose("train", [*base, "data.batch_size=32"])
    pipeline, pure = ensemble_rates(cfg, classes, args.ensemble_images, per_batch, args.workers)
    text = report(rows, faster, pipeline, pure, per_batch, args, command)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def report(rows, faster, pipeline, pure, per_batch, args, command) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        "# GPU throughput: the training loop and the 144-crop evaluation against bare compute",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
        f"`{command}` (scripts/gpu_check.sh) on: {machine()}.",
        "",
        "BN-Inception at full width, 224 px, bf16 autocast, channels_last, one GPU; synthetic "
        "ImageNet-sized JPEGs (300-500 px, quality 90). Goal: ratio >= 0.9.",
        "",
        "| what | batch per GPU | images/s | peak GPU memory (GiB) | ratio to bare |",
        "|---|---|---|---|---|",
    ]
    for what, batch, rate, peak, ratio in rows:
        lines.append(
            f"| {what} | {batch} | {num(rate, '.0f')} | {num(peak, '.1f')} | {num(ratio, '.3f')} |"
        )
    lines += [
        "",
        "| 144-crop evaluation, one member | crops per forward | images/s | ratio to pure forward |",
        "|---|---|---|---|",
        f"| evaluate_crops (decoded by {args.workers} worker processes, crops cut on the GPU) | "
        f"{per_batch * 144} | {pipeline:.1f} | {pipeline / pure:.3f} |",
        f"| pure forward on as many crops, held on the GPU | {per_batch * 144} | {pure:.1f} | 1 |",
        "",
        "## GPU-side data path: decode=gpu (torchvision) or decode=dali",
        "",
    ]
    for batch, rates in faster.items():
        best = max(rates, key=rates.get)
        listed = ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
        lines.append(f"- batch {batch}: fastest data.decode={best} (images/s: {listed}).")
    lines += [
        "",
        "Both GPU paths take the CPU loader's crops in its order and resume at the same position "
        "(tests/test_gpu.py, tests/test_dali.py); both stay behind the switch until the figures "
        "above decide the default (data.decode in configs/data/imagenet.yaml).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
