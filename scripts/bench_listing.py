"""Start-up at scale: how long until every rank holds the training tree's file listing, with 1
and 2 ranks (torchrun --standalone, gloo, on the CPU), before and now, side by side in one run:
  every rank scans   each rank runs data.find_imagenet itself (before: 8 ranks per node, 8 scans
                     of the same 1.28M files on one shared file system at once)
  rank 0 shares      data.datasets.find_imagenet_once: rank 0 scans, the others receive its
                     listing (gloo broadcast) and wait for it
The two alternate, --repeats times each, between barriers; the time is the slowest rank's, the
CPU time all ranks' together (the work a shared file system's clients ask of it grows with it). The
tree (made once in --root, or a temporary folder): --classes x --per-class tiny files in
train/<wnid>/ and 10 per class in val/<wnid>/ (layout 1). files/s = train + val files / time.

    .venv/bin/python scripts/bench_listing.py --classes 100 --per-class 1000 --repeats 5

The metadata of a tree just made sits in the page cache: this measures the scan's CPU cost and
the ranks' contention for it, not a cold shared file system's latency (where rank 0 alone saves
more: its metadata server is asked once instead of once per rank).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

MODES = ("every rank scans", "rank 0 shares")


def make_tree(root: Path, classes: int, per_class: int) -> int:
    """The tree (kept if it is already there with these counts); its number of files."""
    stamp = root / f".bench_listing_{classes}x{per_class}_jpeg"
    total = classes * (per_class + 10)
    if stamp.exists():
        return total
    # Every file one real 8x8 JPEG: the listing spot-checks that its first files decode
    # (datasets.find_imagenet_once), so bytes that are no image would be refused.
    image = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(image, format="JPEG")
    for c in range(classes):
        wnid = f"n{c:08d}"
        for split, count in (("train", per_class), ("val", 10)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                (folder / f"{wnid}_{k}.JPEG").write_bytes(image.getvalue())
    stamp.touch()
    return total


def worker(root: str, repeats: int) -> None:
    """One rank of the torchrun job: time both modes, print rank 0's seconds as JSON."""
    import torch
    import torch.distributed as dist

    from bnrepro.data import datasets, layouts

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("gloo")
    ways = {
        MODES[0]: lambda: layouts.find_imagenet(root),
        MODES[1]: lambda: datasets.find_imagenet_once(
            root, rank=rank, local_rank=local, world_size=world
        ),
    }
    seconds = {mode: [] for mode in MODES}
    cpu = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, list_files in ways.items():
            dist.barrier()
            start, start_cpu = time.perf_counter(), time.process_time()
            train, val, _ = list_files()
            wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            used = torch.tensor([time.process_time() - start_cpu], dtype=torch.float64)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)  # the slowest rank's
            dist.all_reduce(used, op=dist.ReduceOp.SUM)  # every rank's
            seconds[mode].append(wall.item())
            cpu[mode].append(used.item())
    if rank == 0:
        files = len(train.files) + len(val.files)
        print(json.dumps({"files": files, "seconds": seconds, "cpu": cpu}))
    dist.destroy_process_group()


def run_job(root: str, ranks: int, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={ranks}", __file__, "--worker", root, "--repeats", str(repeats)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--root", help="where to make (or find) the tree; default: a temporary folder")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a torchrun rank: the tree's root
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.repeats)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        start = time.perf_counter()
        total = make_tree(root, args.classes, args.per_class)
        print(f"tree: {args.classes} classes x {args.per_class} train + 10 val files = {total:,} "
              f"files in {root} ({time.perf_counter() - start:.0f} s to make or find); "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"\n{'ranks':>5}  {'mode':<18} {'best s':>8} {'median s':>9} {'files/s (best)':>15}"
              f" {'CPU s, all ranks (median)':>26}  rounds (s)")  # fmt: skip
        for ranks in args.ranks:
            job = run_job(str(root), ranks, args.repeats)
            assert job["files"] == total, job["files"]
            for mode, times in job["seconds"].items():
                listed = ", ".join(f"{t:.2f}" for t in times)
                cpu = statistics.median(job["cpu"][mode])
                print(f"{ranks:>5}  {mode:<18} {min(times):8.2f} {statistics.median(times):9.2f} "
                      f"{total / min(times):15,.0f} {cpu:26.2f}  ({listed})")  # fmt: skip
    print(f"\n{time.perf_counter() - wall:.0f} s wall, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
