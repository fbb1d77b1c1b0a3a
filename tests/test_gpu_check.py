"""scripts/gpu_check.sh and the `gpu` marker where there is no CUDA (CUDA_VISIBLE_DEVICES= hides
any GPU, so these run the same on a GPU machine)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)


def test_gpu_check_without_cuda_says_so_in_one_line_and_writes_nothing():
    before = (REPO / "results" / "bench_gpu.md").read_bytes()
    out = subprocess.run([str(REPO / "scripts" / "gpu_check.sh")], env=NO_GPU, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert "no CUDA device visible" in out.stderr and "nothing written" in out.stderr
    assert (REPO / "results" / "bench_gpu.md").read_bytes() == before


def test_gpu_tests_are_collected_and_skipped_cleanly_without_cuda():
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "tests/test_gpu.py",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    summary = out.stdout.strip().splitlines()[-1]
    skipped = re.search(r"(\d+) skipped", summary)
    assert skipped and int(skipped[1]) >= 12 and "passed" not in summary, summary
    assert "error" not in summary and "failed" not in summary
    assert "needs a CUDA device: run scripts/gpu_check.sh" in out.stdout
