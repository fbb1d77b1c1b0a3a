"""Preemption (SLURM's warning signal, or SIGTERM): checkpoint, requeue, exit 0, then resume to the
exact planned end. SLURM is faked: SLURM_JOB_ID set and an `scontrol` that records its arguments."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_signal_checkpoints_requeues_and_the_rerun_finishes(tiny_overrides, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    overrides = [*tiny_overrides, "trainer.max_images=1600", "trainer.eval_every_images=800",
                 "trainer.ckpt_every_images=800"]  # fmt: skip
    cmd = [sys.executable, "-m", "bnrepro.train", *overrides]
    run_dir = tmp_path / "bn_x30_seed0"
    slurm = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")

    job = subprocess.Popen(
        cmd, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert job.poll() is None and time.time() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR2)
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 0, output
    assert "preempted: checkpointed, requeued" in output
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    (ckpt,) = (run_dir / "checkpoints").glob("ckpt_*.pt")
    stopped_at = int(ckpt.stem.split("_")[1])
    assert 0 < stopped_at < 1600

    # The requeued job: the same command, no signal this time.
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed at {stopped_at} images" in rerun.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["images_seen"] == 1600 and not summary["preempted"]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["images_seen"] for r in rows if "train/loss" in r] == list(range(16, 1601, 16))


def test_only_the_warning_signal_asks_for_a_requeue():
    """SIGTERM (scancel, a time-limit kill) stops the run; only USR2 also requeues it."""
    import os
    import signal

    from bnrepro.distributed import Preemption

    with Preemption("USR2") as p:
        os.kill(os.getpid(), signal.SIGTERM)
        assert p.requested and not p.requeue
    with Preemption("SIGUSR2") as p:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert p.requested and p.requeue
    assert signal.getsignal(signal.SIGTERM) != p._handle  # handlers restored on exit
