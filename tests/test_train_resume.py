"""Resuming with another global batch (bnrepro/data/sampler.py: the data position is global):
what continues exactly goes on, what cannot is refused before anything is written.
Across world sizes under DDP: tests/test_ddp.py."""

import json

import pytest

from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.data.sampler import DataPositionError


@pytest.mark.slow
def test_shard_groups_survive_a_batch_change_or_the_resume_is_refused(tiny_overrides, tmp_path):
    # inception: data.shuffle=shards, shards of 64 (synthetic), batch 16: stops 48 images in.
    base = [*tiny_overrides, "experiment=inception"]
    T.train(compose("train", [*base, "trainer.max_images=48"]))
    ckpt = tmp_path / "inception_seed0" / "checkpoints" / "ckpt_000000000048.pt"

    # Batches of 32 from image 48 would straddle the fixed groups of 16: refused, nothing written.
    other = tmp_path / "other"
    refused = [*base, f"out_dir={other}", f"trainer.resume={ckpt}", "data.batch_size=32"]
    with pytest.raises(DataPositionError, match="stopped 48 images into epoch 0, not a multiple"):
        T.train(compose("train", refused))
    assert not other.exists() or not any(other.rglob("*"))

    # Batches of 8 divide 48: the epoch goes on from image 48 with the LR of a global batch of 8.
    T.train(compose("train", [*base, f"out_dir={other}", f"trainer.resume={ckpt}",
                              "data.batch_size=8", "trainer.log_every_images=8"]))  # fmt: skip
    lines = (other / "inception_seed0" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if "train/lr" in line]
    assert [r["images_seen"] for r in rows] == list(range(56, 97, 8))
    assert all(r["train/lr"] == pytest.approx(0.0015 * 8 / 32) for r in rows)


@pytest.mark.slow
def test_within_shard_resumes_at_any_position_with_another_batch(tiny_overrides, tmp_path):
    """bn_x30 shuffles within shards (4.2.1): an epoch's order is (seed, epoch)'s alone, so a
    resume with another batch size goes on from the image where the run stopped, even where
    that is no multiple of the new batch (48 with batches of 32; sampler-level exactness:
    tests/test_data.py)."""
    assert compose("train", tiny_overrides).data.shuffle == "within_shard"
    T.train(compose("train", [*tiny_overrides, "trainer.max_images=48"]))
    ckpt = tmp_path / "bn_x30_seed0" / "checkpoints" / "ckpt_000000000048.pt"
    other = tmp_path / "other"
    summary = T.train(compose("train", [*tiny_overrides, f"out_dir={other}",
                                        f"trainer.resume={ckpt}", "data.batch_size=32",
                                        "trainer.max_images=112"]))  # fmt: skip
    assert summary["images_seen"] == 112
    lines = (other / "bn_x30_seed0" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["images_seen"] for line in lines if "train/lr" in line]
    assert steps == [80, 112]  # 48 + 32, + 32
