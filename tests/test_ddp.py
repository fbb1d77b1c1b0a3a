"""2-process DDP on CPU (torchrun, gloo): both ranks end with the same model; only rank 0 logs."""

import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = """
import os, sys, torch
from bnrepro import train as T
from bnrepro.config import compose

wrap = T.wrap_model
replica = {}
def spy(model, *args):  # keep this rank's unwrapped model, to compare it after training
    replica["model"] = model
    return wrap(model, *args)
T.wrap_model = spy
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

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu", key="device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="runtime.device=cuda but no CUDA device"):
            resolve_device("cuda")


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
