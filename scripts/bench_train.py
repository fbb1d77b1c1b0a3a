"""How much of the compute does the training loop keep? images/s, in one run, of:
  bare        forward+backward+SGD step on the same model, one batch held in memory, its input
              normalised once (no colour): the compute alone;
  bare+colour the same step making its input from the uint8 batch each time, the paper's colour
              distortion included (engine.Runtime.inputs: TF-slim's ops batched on the device,
              fused with the normalisation): what the colour costs the device step;
  loop/mem    the whole loop (train(): colour + normalisation, step, metrics, progress bar) fed
              batches decoded once and held in memory: the loop's own overhead;
  full loop   the whole loop with the real data loader decoding JPEGs in its worker (on a 2-core
              machine the worker takes CPU from the step, so this ratio measures the CPU budget).
No eval or checkpoint falls inside the timed windows.

    .venv/bin/python scripts/bench_train.py                       # the default run's settings
    .venv/bin/python scripts/bench_train.py --repeats 3 experiment=bn_x5 data.batch_size=32
    .venv/bin/python scripts/bench_train.py --repeats 2 --steps 6 model.width_mult=1.0 \\
      data.train_crop=224 data.eval_resize=256 data.eval_crop=224 data.synthetic.min_side=300 \\
      data.synthetic.max_side=500 data.root=/tmp/synth224       # the paper's network and size

Prints the rates and the ratios to bare (goal >= 0.95 on CPU). Bare and bare+colour alternate step
by step; the loops follow, `--repeats` times each; the best (least disturbed by other processes,
as timeit's minimum) and the median of each are compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from itertools import islice

import torch
import torch.nn.functional as F

from bnrepro import builders, engine
from bnrepro import train as T
from bnrepro.config import compose


def bare_rates(cfg, dat: builders.Data, steps: int) -> tuple[float, float]:
    """(bare, bare+colour) images/s of a forward+backward+step on one batch held in memory: its
    input made once (normalised, no colour), or made at every step from the uint8 batch with its
    colour. The two alternate step by step on one model, so both see the same machine load."""
    builders.seed_everything(cfg.seed)
    runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
    model = builders.build_model(cfg, dat.classes)
    optimizer = builders.build_optimizer(model, cfg.optim, cfg.optim.lr)
    batch = next(iter(dat.train_loader))
    held = runtime.inputs(batch.images)
    seconds = {False: 0.0, True: 0.0}
    for i in range(2 * (steps + 3)):  # 3 warm-up steps of each
        color = i % 2 == 1
        start = time.perf_counter()
        x, labels = runtime.batch_inputs(batch) if color else (held, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        optimizer.step()
        if i >= 6:
            seconds[color] += time.perf_counter() - start
    return steps * len(batch.labels) / seconds[False], steps * len(batch.labels) / seconds[True]


def color_cost(cfg, dat: builders.Data, repeats: int = 5) -> tuple[float, float]:
    """(ms per batch of Runtime.inputs with the colour, ms without): the colour's share of it."""
    runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
    batch = next(iter(dat.train_loader))
    times = []
    for color in (batch.color, None):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            runtime.inputs(batch.images, color)
            best = min(best, time.perf_counter() - start)
        times.append(1000 * best)
    return times[0], times[1]


class InMemoryLoader:
    """A loader's first batches, decoded once and replayed every epoch (sampler protocol kept)."""

    def __init__(self, loader, num_batches: int) -> None:
        self.batches = list(islice(loader, num_batches))
        self.sampler, self.start = self, 0
        self.images_per_batch = len(self.batches[0].labels)  # one process: a batch is the step

    def set_epoch(self, epoch: int, start_image: int = 0) -> None:
        self.start = start_image // self.images_per_batch

    def __iter__(self):
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)


def loop_rate(cfg, steps: int) -> float:
    """train() for 3 + steps steps; the rate of the logged windows after the first (warm-up)."""
    batch = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as run_dir:
        cfg.trainer.max_images = (steps + 3) * batch
        cfg.trainer.log_every_images = batch
        cfg.trainer.pop_stats_batches = 0  # Algorithm 2 after the last step: not the loop's rate
        T.train(cfg, run_dir=run_dir)
        with open(f"{run_dir}/metrics.jsonl") as f:
            rows = [json.loads(line) for line in f]
    rates = [r["train/images_per_s"] for r in rows if "train/images_per_s" in r][3:]
    return len(rates) / sum(1 / r for r in rates)  # images over total time (harmonic mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (as for bnrepro-train)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    wall = time.perf_counter()
    never = "trainer.eval_every_images=1_000_000_000"
    cfg = compose("train", [never, "trainer.ckpt_every_images=1_000_000_000",
                            "runtime.progress=true", *args.overrides])  # fmt: skip
    dat = builders.build_data(cfg, rank=0, world_size=1)
    print(f"torch threads {torch.get_num_threads()}, batch {cfg.data.batch_size}, "
          f"{cfg.data.train_crop}px, width {cfg.model.width_mult}, {cfg.experiment_name}, "
          f"colour strength {cfg.data.augment.color_strength}, {cfg.data.num_workers} loader "
          f"worker(s), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    with_color, without = color_cost(cfg, dat)
    print(f"Runtime.inputs per batch: {with_color:.1f} ms with the colour, {without:.1f} ms "
          "without (best of 5)")  # fmt: skip
    in_memory = dataclasses.replace(dat, train_loader=InMemoryLoader(dat.train_loader, 40))
    real_build_data = builders.build_data
    rates = {"bare": [], "bare+colour": [], "loop/mem": [], "full loop": []}
    for _ in range(args.repeats):
        bare, colored = bare_rates(cfg, dat, args.steps)
        rates["bare"].append(bare)
        rates["bare+colour"].append(colored)
        builders.build_data = lambda *a, **k: in_memory
        rates["loop/mem"].append(loop_rate(cfg.copy(), args.steps))
        builders.build_data = real_build_data
        rates["full loop"].append(loop_rate(cfg.copy(), args.steps))
        print("  " + "  ".join(f"{k} {v[-1]:6.1f}" for k, v in rates.items()) + " img/s")
    for name, pick in (("best", max), ("median", statistics.median)):  # best: least disturbed
        bare = pick(rates["bare"])
        others = " | ".join(f"{k} {pick(v):.1f} (ratio {pick(v) / bare:.3f})"
                            for k, v in rates.items() if k != "bare")  # fmt: skip
        print(f"{name:>6}: bare {bare:.1f} img/s | {others}")
    print(f"{time.perf_counter() - wall:.0f} s wall, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
