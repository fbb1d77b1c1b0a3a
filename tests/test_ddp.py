"""2-process DDP on CPU (torchrun, gloo): both ranks end with the same model; only rank 0 logs.
A rank that dies or hangs ends the whole job, never a hang (runtime.dist_timeout_s)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

WORKER = """
import os, sys, torch
from bnrepro import builders
from bnrepro import train as T
from bnrepro.config import compose

wrap = builders.wrap_model
replica = {}
def spy(model, *args):  # keep this rank's unwrapped model, to compare it after training
    replica["model"] = model
    return wrap(model, *args)
builders.wrap_model = spy
T.train(compose("train", sys.argv[2:]))
torch.save(replica["model"].state_dict(), f"{sys.argv[1]}/rank{os.environ['RANK']}.pt")
"""


@pytest.mark.slow
def test_two_cpu_ranks_train_one_model(tiny_overrides, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    overrides = [*tiny_overrides, "experiment=bn_x5", "runtime.device=cpu"]  # 3 steps of 2 x 16
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path), *overrides]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "global batch 32 | device cpu | world 2" in out.stdout
    assert out.stdout.count("run folder") == 1  # rank 0 alone prints

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    run_dir = tmp_path / "bn_x5_seed0"
    ckpt = torch.load(run_dir / "checkpoints" / "ckpt_000000000096.pt", weights_only=True)
    assert all(torch.equal(rank0[k], ckpt["model"][k]) for k in rank0)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [(r["step"], r["images_seen"]) for r in rows if "train/loss" in r]
    assert train_rows == [(1, 32), (2, 64), (3, 96)]  # one line per step: one writer
    assert [r["images_seen"] for r in rows if "val/top1" in r] == [64, 96]  # every 48 images


def test_resolve_device_names_the_key_in_its_errors():
    from bnrepro.distributed import resolve_device
    from bnrepro.errors import ConfigError

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="runtime.device=cuda but no CUDA device"):
            resolve_device("cuda")


# A rank that writes rank<RANK>.pid after its first step, and stops itself there (alive, never at
# the next collective: a hung rank) when it is HANG_RANK.
REPORTING_WORKER = """
import os, signal, sys
from pathlib import Path
from bnrepro import engine
from bnrepro import train as T
from bnrepro.config import compose

step = engine.train_step
def reporting_step(*args, **kwargs):
    out = step(*args, **kwargs)
    rank = os.environ["RANK"]
    Path(sys.argv[1], f"rank{rank}.pid").write_text(str(os.getpid()))
    if os.environ.get("HANG_RANK") == rank:
        os.kill(os.getpid(), signal.SIGSTOP)
    return out
engine.train_step = reporting_step
T.train(compose("train", sys.argv[2:]))
"""


def wait_for_pid(path, processes, timeout: float = 180) -> int:
    deadline = time.time() + timeout
    while not path.exists() or not path.read_text():
        assert all(p.poll() is None for p in processes), "a rank ended before its first step"
        assert time.time() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.2)
    return int(path.read_text())


def long_run(tiny_overrides) -> list[str]:
    """Two ranks that would train for minutes: only a failure ends them early."""
    return [*tiny_overrides, "experiment=bn_x5", "runtime.device=cpu", "trainer.max_images=1e6",
            "trainer.eval_every_images=1e6", "trainer.ckpt_every_images=1e6"]  # fmt: skip


@pytest.mark.slow
def test_a_killed_rank_ends_the_torchrun_job_naming_it(tiny_overrides, tmp_path):
    (tmp_path / "worker.py").write_text(REPORTING_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path), *long_run(tiny_overrides)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    job = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        pid = wait_for_pid(tmp_path / "rank1.pid", [job])
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        output, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert time.monotonic() - killed < 60, "the job outlived its dead rank by a minute"
    assert job.returncode != 0
    # torchrun's failure report names the rank and the signal
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", output), output[-3000:]
    assert "SIGKILL" in output, output[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_after_dist_timeout(tiny_overrides, tmp_path):
    """Rank 1 stops (alive, silent: no launcher notices). Rank 0's next collective fails after
    runtime.dist_timeout_s instead of waiting forever (torch's default is 30 minutes)."""
    (tmp_path / "worker.py").write_text(REPORTING_WORKER)
    overrides = [*long_run(tiny_overrides), "runtime.dist_timeout_s=5"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), HANG_RANK="1")  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "worker.py"), str(tmp_path), *overrides],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    try:
        wait_for_pid(tmp_path / "rank1.pid", ranks[:1])
        hung = time.monotonic()
        output, _ = ranks[0].communicate(timeout=120)
    finally:
        for rank in ranks:
            rank.kill()
    assert time.monotonic() - hung < 60, "rank 0 waited a minute for the hung rank"
    assert ranks[0].returncode != 0
    assert re.search(r"time(d)? ?out", output, re.IGNORECASE), output[-3000:]


RECORDING_WORKER = """
import json, os, sys
from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.data.datasets import ImageFiles

get, used = ImageFiles.__getitem__, []
def spy(self, key):  # record every training image the loop loads: (epoch, index)
    if isinstance(key, tuple):  # training keys are (index, epoch, seed); validation's are ints
        used.append((key[1], key[0]))
    return get(self, key)
ImageFiles.__getitem__ = spy
T.train(compose("train", sys.argv[2:]))
with open(f"{sys.argv[1]}/rank{os.environ['RANK']}.json", "w") as f:
    json.dump(used, f)
"""


@pytest.mark.slow
def test_resume_on_other_world_sizes_continues_images_lr_and_epoch(tiny_overrides, tmp_path):
    """2 ranks stop at 64 images, 3 ranks resume to 208, 1 rank to 320: images_seen continues,
    the LR follows each run's global batch, and in both interrupted epochs (160 images each)
    every image is used exactly once. Batch 8 per rank: global 16, 24, 8 (no warmup <= 32)."""
    (tmp_path / "worker.py").write_text(RECORDING_WORKER)
    run_dir = tmp_path / "bn_x30_seed0"
    base = [*tiny_overrides, "runtime.device=cpu", "data.batch_size=8", "optim.decay_epochs=0.5",
            "trainer.log_every_images=8", "trainer.eval_every_images=10000",
            "trainer.ckpt_every_images=10000", "trainer.eval_max_images=8",
            "trainer.pop_stats_batches=0"]  # Algorithm 2 reads training images too  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    used, previous = {}, 0
    for world, max_images in ((2, 64), (3, 208), (1, 320)):
        out_dir = tmp_path / f"world{world}"
        out_dir.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}", str(tmp_path / "worker.py"), str(out_dir), *base,
               f"trainer.max_images={max_images}"]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"global batch {8 * world} | device cpu | world {world}" in out.stdout
        assert previous == 0 or f"resumed at {previous} images" in out.stdout
        assert json.loads((run_dir / "summary.json").read_text())["images_seen"] == max_images
        used[world] = [tuple(k) for r in range(world) for k in
                       json.loads((out_dir / f"rank{r}.json").read_text())]  # fmt: skip
        previous = max_images

    # Epoch 0: 64 images on 2 ranks, the other 96 on 3; epoch 1: 48 on 3 ranks, 112 on 1.
    epoch0 = [i for e, i in used[2] + used[3] if e == 0]
    epoch1 = [i for e, i in used[3] + used[1] if e == 1]
    assert len(used[2]) == 64 and len(used[3]) == 144 and len(used[1]) == 112
    assert sorted(epoch0) == sorted(epoch1) == list(range(160))

    # The LR of the step that ended at n: 0.045 x G/32 x 0.94^floor((n - G) / 80), with G the
    # global batch of the run that made it (bn_x30; decay every half epoch of 160 images).
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [(r["images_seen"], r["train/lr"]) for r in rows if "train/lr" in r]
    assert [n for n, _ in lrs] == [*range(16, 65, 16), *range(88, 209, 24), *range(216, 321, 8)]
    for n, lr in lrs:
        g = 16 if n <= 64 else 24 if n <= 208 else 8
        assert lr == pytest.approx(0.045 * g / 32 * 0.94 ** ((n - g) // 80), rel=1e-9), n


@pytest.mark.slow
def test_two_cpu_ranks_stop_together_when_diverged(tiny_overrides, tmp_path):
    """Every rank reaches the same verdict at the same step (else one would wait forever in a
    collective): rank 0 says it once, both exit EXIT_DIVERGED, nothing non-finite is written."""
    from bnrepro import checkpoint
    from bnrepro.errors import EXIT_DIVERGED

    overrides = [*tiny_overrides, "experiment=inception", "optim.lr=50", "runtime.device=cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bnrepro.train", *overrides]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and f"exitcode  : {EXIT_DIVERGED}" in out.stderr, out.stderr[-3000:]
    assert out.stdout.count("diverged at paper step") == 1, out.stdout[-3000:]
    run_dir = tmp_path / "inception_seed0"
    assert json.loads((run_dir / "summary.json").read_text())["diverged"] is True
    for path in (run_dir / "checkpoints").glob("*.pt"):
        assert not checkpoint.nonfinite_tensors(checkpoint.load(path)["model"])
