"""The training loop (bnrepro/train.py): every experiment trains; resume is exact; refusals.

Tiny runs: width 1/8, 32 px, the session's tiny synthetic tree (conftest.py), 16 images a step.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import ConfigCompositionException

from bnrepro import builders, checkpoint, engine
from bnrepro import train as T
from bnrepro.checkpoint import CheckpointError
from bnrepro.config import CONFIG_DIR, compose, effective_lr

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def digest(folder: Path) -> dict[str, str]:
    """Every file under folder -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_and_fits_a_fixed_batch(experiment, tiny_overrides, tmp_path):
    cfg = compose("train", [*tiny_overrides, f"experiment={experiment}", "trainer.max_images=32"])
    summary = T.train(cfg)
    run_dir = tmp_path / cfg.run_name  # <experiment>_seed0; bn_x30_ensemble_member0_seed0
    assert summary["images_seen"] == 32 and summary["paper_steps"] == 1.0
    assert json.loads((run_dir / "summary.json").read_text())["experiment_name"] == experiment
    assert (run_dir / "checkpoints" / "ckpt_000000000032.pt").is_file()

    # The same model and optimizer, five steps on one batch: its loss goes down.
    dat = builders.build_data(cfg, rank=0, world_size=1)
    runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
    model = builders.build_model(cfg, dat.classes)
    optimizer = builders.build_optimizer(
        model, cfg.optim, effective_lr(cfg.optim.lr, 16, cfg.optim.lr_scaling)
    )
    batch = next(iter(dat.train_loader))

    def loss() -> float:  # train mode (BN on batch statistics), the same dropout mask each time
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1)
            inputs, labels = runtime.batch_inputs(batch)
            return F.cross_entropy(model(inputs), labels).item()

    before = loss()
    fixed_batch = iter(lambda: (0, 1, batch), None)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(5):
        engine.train_step(model, fixed_batch, optimizer, scaler, runtime, torch.zeros(3))
    assert loss() < before


def test_metrics_and_summary(tiny_overrides, tmp_path):
    summary = T.train(compose("train", [*tiny_overrides, "trainer.target_top1=0.0"]))
    rows = read_metrics(tmp_path / "bn_x30_seed0")
    train_rows = [r for r in rows if "train/loss" in r]
    val_rows = [r for r in rows if "val/top1" in r]
    assert [r["images_seen"] for r in train_rows] == [16, 32, 48, 64, 80, 96]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["paper_steps"] == r["images_seen"] / 32 for r in rows)
    assert [r["images_seen"] for r in val_rows] == [48, 96]
    assert [r["val/images"] for r in val_rows] == [40, 40]  # the tree's val set: an interval's n
    assert summary["steps_to_target"] == 1.5  # target 0: reached at the first eval, 48 images
    assert summary["best/val/top1"] == max(r["val/top1"] for r in val_rows)
    assert train_rows[0]["train/lr"] == pytest.approx(0.045 * 16 / 32)  # bn_x30, linear scaling


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_overrides, tmp_path):
    # inception: dropout and LRN, so the RNG state and data position must both come back exactly
    base = [*tiny_overrides, "experiment=inception"]
    T.train(compose("train", [*base, "out_dir=" + str(tmp_path / "straight")]))
    interrupted = [*base, "out_dir=" + str(tmp_path / "resumed")]
    T.train(compose("train", [*interrupted, "trainer.max_images=64"]))  # stops mid-epoch
    summary = T.train(compose("train", interrupted))  # the same command: resumes at 64
    assert summary["images_seen"] == 96
    a = checkpoint.load(tmp_path / "straight/inception_seed0/checkpoints/ckpt_000000000096.pt")
    b = checkpoint.load(tmp_path / "resumed/inception_seed0/checkpoints/ckpt_000000000096.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = read_metrics(tmp_path / "resumed/inception_seed0")
    train_images = [r["images_seen"] for r in rows if "train/loss" in r]
    assert train_images == [16, 32, 48, 64, 80, 96]  # one curve, no duplicates
    assert len(list((tmp_path / "resumed/inception_seed0/checkpoints").glob("ckpt_*.pt"))) == 2


def test_refusals_leave_the_run_folder_untouched(tiny_overrides, tmp_path):
    T.train(compose("train", [*tiny_overrides, "trainer.max_images=48"]))
    run_dir = tmp_path / "bn_x30_seed0"
    ckpt = run_dir / "checkpoints" / "ckpt_000000000048.pt"
    before = digest(run_dir)

    # another architecture, explicitly resumed
    wider = [*tiny_overrides, "model.width_mult=0.25", f"trainer.resume={ckpt}"]
    with pytest.raises(CheckpointError, match="width_mult: checkpoint 0.125 vs run 0.25"):
        T.train(compose("train", wider))
    # the same folder with another config (a new run in an old folder): the message names the
    # way out, a run name of its own (issue 24: it named only out_dir and seed)
    with pytest.raises(CheckpointError, match=r"another config \(differs in: optim.lr\)") as e:
        T.train(compose("train", [*tiny_overrides, "optim.lr=0.1"]))
    assert "run_name=bn_x30_lr0.1_seed0" in str(e.value)
    assert digest(run_dir) == before
    summary = T.train(compose("train", [*tiny_overrides, "optim.lr=0.1", "run_name=bn_x30_lr0.1_seed0",
                                        "trainer.max_images=16"]))  # fmt: skip
    assert summary["images_seen"] == 16 and (tmp_path / "bn_x30_lr0.1_seed0").is_dir()
    assert digest(run_dir) == before

    # a truncated checkpoint: refused when named, and when found with nothing valid left: the
    # folder is never restarted from scratch over its metrics, best.pt and summary (issue 20)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    before = digest(run_dir)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        T.train(compose("train", [*tiny_overrides, f"trainer.resume={ckpt}"]))
    assert digest(run_dir) == before
    with pytest.raises(CheckpointError, match="no checkpoint it can continue.*truncated"):
        T.train(compose("train", tiny_overrides))
    assert digest(run_dir) == before


def test_unknown_config_keys_fail_in_hydra(tiny_overrides):
    with pytest.raises(ConfigCompositionException, match="trainer.max_imgs"):
        compose("train", [*tiny_overrides, "trainer.max_imgs=10"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_images=0.5", "trainer.max_images takes a whole number >= 1"),
        ("trainer.grad_accum=0", "trainer.grad_accum takes an integer >= 1"),
        ("trainer.preempt_signal=WAKEUP", "is no signal"),
    ],
)
def test_bad_values_are_named_at_start(override, message, tiny_overrides):
    with pytest.raises(ValueError, match=message):
        T.train(compose("train", [*tiny_overrides, override]))


def test_population_statistics_need_bn(tiny_overrides):
    bad = [*tiny_overrides, "experiment=inception", "trainer.pop_stats_batches=2"]
    with pytest.raises(ValueError, match="needs a BN network"):
        T.train(compose("train", bad))


def test_grad_accum_and_bf16_autocast(tiny_overrides, tmp_path, capsys):
    options = ["trainer.grad_accum=2", "runtime.amp=bf16", "runtime.channels_last=true"]
    summary = T.train(compose("train", [*tiny_overrides, *options]))
    assert "global batch 32" in capsys.readouterr().out  # 16 per micro-batch x 2
    rows = read_metrics(tmp_path / "bn_x30_seed0")
    assert [(r["step"], r["images_seen"]) for r in rows if "train/loss" in r] == [
        (1, 32),
        (2, 64),
        (3, 96),
    ]
    assert summary["images_seen"] == 96 and 0 <= summary["val/top1"] <= 1
