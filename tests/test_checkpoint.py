"""Checkpoint files: atomic save, validated load, keep-last-K + best, refusals (bnrepro/checkpoint.py)."""

import random

import numpy as np
import pytest
import torch

from bnrepro import checkpoint
from bnrepro.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError, RunFolder

ARCH = {"name": "bn_inception", "kwargs": {"width_mult": 0.25, "num_classes": 10}}
CLASSES = [f"n{i:08d}" for i in range(10)]


def fake_ckpt(images_seen: int, **changes) -> dict:
    ckpt = {
        "format": checkpoint.FORMAT,
        "arch": ARCH,
        "classes": CLASSES,
        "model": {"w": torch.full((3,), float(images_seen))},
        "rng": checkpoint.rng_state(),
        "images_seen": images_seen,
        "config": {"seed": 0, "optim": {"lr": 0.1}, "trainer": {"max_images": 10}},
        # what a run resumes from (checkpoint.TRAINING_KEYS)
        "optimizer": {}, "scheduler": {}, "scaler": None, "step": 1, "wandb_run_id": None,
        "data": {"epoch": 0, "images_in_epoch": images_seen},
        "best": {"val/top1": 0.0, "val/top5": 0.0},
    }  # fmt: skip
    return ckpt | changes


def test_roundtrip_loads_with_weights_only(tmp_path) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save(path, fake_ckpt(64))
    assert not path.with_name("c.pt.tmp").exists()
    back = checkpoint.load(path)  # weights_only=True inside: no pickle code runs
    assert torch.equal(back["model"]["w"], torch.full((3,), 64.0))
    assert back["classes"] == CLASSES


def test_rng_state_roundtrip() -> None:
    state = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_truncated_and_foreign_files_are_refused(tmp_path) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save(path, fake_ckpt(64))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a bnrepro checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_other_architecture_or_classes_are_refused() -> None:
    ckpt = fake_ckpt(64)
    checkpoint.check_compatible(ckpt, ARCH, CLASSES, "c.pt")  # same: accepted
    wider = {"name": "bn_inception", "kwargs": {"width_mult": 0.5, "num_classes": 10}}
    with pytest.raises(CheckpointError, match="width_mult: checkpoint 0.25 vs run 0.5"):
        checkpoint.check_compatible(ckpt, wider, CLASSES, "c.pt")
    with pytest.raises(CheckpointError, match="another class list"):
        checkpoint.check_compatible(ckpt, ARCH, CLASSES[:-1] + ["n99999999"], "c.pt")


def test_keep_last_best_and_newest_valid(tmp_path) -> None:
    ckpts = Checkpointer(RunFolder(tmp_path), keep_last=2)
    for n, best in [(100, True), (200, False), (300, True), (400, False)]:
        ckpts.save(fake_ckpt(n), periodic=True, best=best)
    assert [p.name for p in ckpts.folder.periodic_checkpoints()] == [
        "ckpt_000000000300.pt",
        "ckpt_000000000400.pt",
    ]
    assert checkpoint.load(ckpts.folder.checkpoints / "best.pt")["images_seen"] == 300
    ckpts.save(fake_ckpt(450), periodic=False, best=True)  # a best eval between checkpoints
    assert checkpoint.load(ckpts.folder.checkpoints / "best.pt")["images_seen"] == 450
    assert len(ckpts.folder.periodic_checkpoints()) == 2

    newest = ckpts.folder.periodic(400)
    newest.write_bytes(newest.read_bytes()[:1000])  # killed while copying, say
    with pytest.warns(UserWarning, match="ckpt_000000000400.pt is unreadable"):
        path, ckpt = ckpts.newest_valid()
    assert path == ckpts.folder.periodic(300) and ckpt["images_seen"] == 300
    ckpts.save(fake_ckpt(350), periodic=True, best=False)  # resumed at 300: the bad 400 stays
    assert ckpts.folder.periodic(350).exists() and ckpts.folder.periodic(400).exists()


def test_config_diff_names_only_the_keys_that_define_a_run() -> None:
    saved = {"seed": 0, "optim": {"lr": 0.1}, "data": {"root": "/a", "batch_size": 32},
             "trainer": {"max_images": 10, "grad_accum": 1}, "logger": {"wandb": {"mode": "x"}}}  # fmt: skip
    same_run = {"seed": 0, "optim": {"lr": 0.1}, "data": {"root": "/b", "batch_size": 32},
                "trainer": {"max_images": 99, "grad_accum": 1}, "logger": {"wandb": {"mode": "y"}}}  # fmt: skip
    assert checkpoint.config_diff(saved, same_run) == []
    other = same_run | {"seed": 1, "optim": {"lr": 0.2}, "trainer": {"grad_accum": 2}}
    assert checkpoint.config_diff(saved, other) == ["optim.lr", "seed", "trainer.grad_accum"]


def test_config_diff_ignores_keys_a_newer_version_added() -> None:
    saved = {"optim": {"lr": 0.045}, "seed": 0}
    upgraded = {"optim": {"lr": 0.045, "new_knob": True}, "seed": 0}
    assert checkpoint.config_diff(saved, upgraded) == []
    assert checkpoint.config_diff(saved, {"optim": {"lr": 0.03, "new_knob": True}, "seed": 0}) == [
        "optim.lr"
    ]


def _disk_fills_after(nbytes: int):
    """A torch.save that writes `nbytes` of the file, then fails as a full disk does."""
    import errno

    def full_disk(obj, f) -> None:
        f.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return full_disk


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch) -> None:
    ckpts = Checkpointer(RunFolder(tmp_path), keep_last=1)
    ckpts.save(fake_ckpt(100), periodic=True, best=True)
    monkeypatch.setattr(torch, "save", _disk_fills_after(1000))
    with pytest.raises(CheckpointWriteError, match=r"ckpt_000000000200.pt: No space left on dev"):
        ckpts.save(fake_ckpt(200), periodic=True, best=True)
    monkeypatch.undo()
    # No half-written or temp file; the previous checkpoint (not pruned) and best.pt still load.
    assert sorted(p.name for p in ckpts.folder.checkpoints.iterdir()) == [
        "best.pt",
        "ckpt_000000000100.pt",
    ]
    assert ckpts.newest_valid()[1]["images_seen"] == 100
    assert checkpoint.load(ckpts.folder.checkpoints / "best.pt")["images_seen"] == 100


def test_io_error_writing_best_alone_leaves_the_old_best(tmp_path, monkeypatch) -> None:
    ckpts = Checkpointer(RunFolder(tmp_path), keep_last=2)
    ckpts.save(fake_ckpt(100), periodic=True, best=True)
    monkeypatch.setattr(torch, "save", _disk_fills_after(10))
    with pytest.raises(CheckpointWriteError, match="best.pt: No space left on device.*intact"):
        ckpts.save(fake_ckpt(150), periodic=False, best=True)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpts.folder.checkpoints.iterdir()) == [
        "best.pt",
        "ckpt_000000000100.pt",
    ]
    assert checkpoint.load(ckpts.folder.checkpoints / "best.pt")["images_seen"] == 100


def test_training_stops_with_a_clear_message_when_the_disk_fills(tiny_overrides, tmp_path):
    """The run's second checkpoint fails to write: train() stops with CheckpointWriteError (a
    UserError: one line, exit status 2) and the same command resumes from the first."""
    from bnrepro import train as T
    from bnrepro.config import compose

    cfg = compose("train", tiny_overrides)  # checkpoints at 48 and 96 images
    real_save, calls = torch.save, []

    def fails_second_time(obj, f) -> None:
        calls.append(1)
        (_disk_fills_after(500) if len(calls) == 2 else real_save)(obj, f)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", fails_second_time)
        with pytest.raises(CheckpointWriteError, match="ckpt_000000000096.pt: No space left"):
            T.train(cfg)
    folder = tmp_path / cfg.run_name / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "ckpt_000000000048.pt"]
    assert T.train(cfg)["images_seen"] == 96  # the same command resumes and finishes


def restored_progress(data: dict, shuffle: str = "full") -> checkpoint.Progress:
    """checkpoint.restore of a run at 320 images after 10 steps of 2 ranks x 16 (grad_accum 1)."""
    from omegaconf import OmegaConf

    from bnrepro.schedule import build_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optim_cfg = OmegaConf.create({"lr": 0.1, "lr_scaling": "linear", "decay_rate": 0.9,
                                  "decay_epochs": 1.0, "warmup_images": 0})  # fmt: skip
    scheduler = build_scheduler(optimizer, optim_cfg, global_batch=32, train_size=100)
    ckpt = fake_ckpt(320, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), scaler=None, step=10, data=data,
                     best={"val/top1": 0.0, "val/top5": 0.0},
                     config={"data": {"shuffle": shuffle}, "trainer": {"grad_accum": 1}})  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return checkpoint.restore(ckpt, model, optimizer, scheduler, scaler)


def test_data_position_is_kept_in_global_images_and_older_checkpoints_convert() -> None:
    assert restored_progress({"epoch": 3, "images_in_epoch": 48}).images_in_epoch == 48
    # Older checkpoints: 4 batches per rank of a global batch of 32 = the first 128 images.
    assert restored_progress({"epoch": 3, "batch_in_epoch": 4}).images_in_epoch == 128
    assert restored_progress({"epoch": 3, "batch_in_epoch": 0}, "shards").images_in_epoch == 0
    with pytest.raises(CheckpointError, match="inside epoch 3 under data.shuffle=shards"):
        restored_progress({"epoch": 3, "batch_in_epoch": 4}, "shards")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_model_state_is_never_written(tmp_path, bad) -> None:
    """A diverged run must not leave a NaN checkpoint or best.pt (issue 11)."""
    ckpts = Checkpointer(RunFolder(tmp_path), keep_last=2)
    ckpts.save(fake_ckpt(64), periodic=True, best=True)
    diverged = fake_ckpt(128, model={"w": torch.tensor([1.0, bad]), "steps": torch.tensor([3])})
    with pytest.raises(checkpoint.NonFiniteError, match="non-finite model state in w"):
        ckpts.save(diverged, periodic=True, best=True)
    with pytest.raises(checkpoint.NonFiniteError):
        ckpts.save(diverged, periodic=False, best=True)
    assert [p.name for p in ckpts.folder.periodic_checkpoints()] == ["ckpt_000000000064.pt"]
    assert checkpoint.load(ckpts.folder.checkpoints / "best.pt")["images_seen"] == 64
    assert not list(ckpts.folder.checkpoints.glob("*.tmp"))
