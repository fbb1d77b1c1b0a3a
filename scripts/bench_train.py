"""How much of the compute does the training loop keep? images/s, in one run, of:
  bare       forward+backward+SGD step on the same model, one batch held in memory;
  loop/mem   the whole loop (train(): normalisation, step, metrics, progress bar) fed batches
             decoded once and held in memory: the loop's own overhead;
  full loop  the whole loop with the real data loader decoding JPEGs in its worker (on a 2-core
             machine the worker takes CPU from the step, so this ratio measures the CPU budget).
No eval or checkpoint falls inside the timed windows.

    .venv/bin/python scripts/bench_train.py                       # the default run's settings
    .venv/bin/python scripts/bench_train.py --repeats 3 experiment=bn_x5 data.batch_size=32

Prints the rates and the ratios to bare (goal >= 0.95 on CPU). The three alternate, `--repeats`
times each; the best (least disturbed by other processes, as timeit's minimum) and the median of
each are compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from itertools import islice

import torch
import torch.nn.functional as F

from bnrepro import builders, engine
from bnrepro import train as T
from bnrepro.config import compose


def bare_rate(cfg, dat: builders.Data, steps: int) -> float:
    """A forward+backward+step on a batch that is already normalised and in memory."""
    builders.seed_everything(cfg.seed)
    runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
    model = builders.build_model(cfg, dat.classes)
    optimizer = builders.build_optimizer(model, cfg.optim, cfg.optim.lr)
    images, labels = next(iter(dat.train_loader))
    x = runtime.inputs(images)
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        optimizer.step()
    return steps * len(labels) / (time.perf_counter() - start)


class InMemoryLoader:
    """A loader's first batches, decoded once and replayed every epoch (sampler protocol kept)."""

    def __init__(self, loader, num_batches: int) -> None:
        self.batches = list(islice(loader, num_batches))
        self.sampler, self.start = self, 0
        self.images_per_batch = len(self.batches[0][1])  # one process: a batch is the whole step

    def set_epoch(self, epoch: int, start_image: int = 0) -> None:
        self.start = start_image // self.images_per_batch

    def __iter__(self):
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start


def loop_rate(cfg, steps: int) -> float:
    """train() for 3 + steps steps; the rate of the logged windows after the first (warm-up)."""
    batch = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as run_dir:
        cfg.trainer.max_images = (steps + 3) * batch
        cfg.trainer.log_every_images = batch
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
    never = "trainer.eval_every_images=1_000_000_000"
    cfg = compose("train", [never, "trainer.ckpt_every_images=1_000_000_000",
                            "runtime.progress=true", *args.overrides])  # fmt: skip
    dat = builders.build_data(cfg, rank=0, world_size=1)
    print(f"torch threads {torch.get_num_threads()}, batch {cfg.data.batch_size}, "
          f"{cfg.data.train_crop}px, width {cfg.model.width_mult}, {cfg.experiment_name}")  # fmt: skip
    in_memory = dataclasses.replace(dat, train_loader=InMemoryLoader(dat.train_loader, 40))
    real_build_data = builders.build_data
    bare, mem, loop = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_rate(cfg, dat, args.steps))
        builders.build_data = lambda *a, **k: in_memory
        mem.append(loop_rate(cfg.copy(), args.steps))
        builders.build_data = real_build_data
        loop.append(loop_rate(cfg.copy(), args.steps))
        print(f"  bare {bare[-1]:6.1f}  loop/mem {mem[-1]:6.1f}  full loop {loop[-1]:6.1f} img/s")
    for name, pick in (("best", max), ("median", statistics.median)):  # best: least disturbed
        b, m, lp = (pick(x) for x in (bare, mem, loop))
        print(f"{name:>6}: bare {b:.1f} img/s | loop/mem {m:.1f} img/s (ratio {m / b:.3f}) | "
              f"full loop {lp:.1f} img/s (ratio {lp / b:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
