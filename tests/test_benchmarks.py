"""The benchmark scripts run end to end at a tiny size: they print the figures results/ quotes, and
a script broken by a change elsewhere (a sampler attribute, a check on the files) is found here,
not when someone sits down to measure. No timing is asserted: a benchmark's figures are its own
output, recorded in results/ with its command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str, timeout: int = 300) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / args[0]), *args[1:]], env=env,
                         capture_output=True, text=True, timeout=timeout, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_bench_train_times_every_loop(tiny_data_root):
    """Its in-memory loader stands in for the training loader: it keeps the sampler's protocol
    (batches_per_epoch: Algorithm 2's default reads it)."""
    out = run_script("bench_train.py", "--repeats", "1", "--steps", "2", *TINY_TRAIN,
                     f"data.root={tiny_data_root}", "runtime.progress=false")  # fmt: skip
    assert "median: bare" in out and "loop/mem" in out and "full loop" in out


@pytest.mark.slow
def test_bench_listing_lists_a_tree_it_made(tmp_path):
    """Its files are real JPEGs: the listing refuses a tree whose first files do not decode."""
    out = run_script("bench_listing.py", "--classes", "2", "--per-class", "40", "--repeats", "1",
                     "--root", str(tmp_path / "tree"))  # fmt: skip
    assert "rank 0 shares" in out and "every rank scans" in out
