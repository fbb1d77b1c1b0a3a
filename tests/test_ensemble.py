"""The ensemble evaluator (bnrepro/evaluation/ensemble.py): finding members, refusing bad input before any
image is read, the evaluation core, and end to end on 6 trained tiny members at 1/10/144 crops.

Tiny: width 1/8, 32 px crops, the session's tiny synthetic tree (conftest.py, 40 val images).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_DATA, TINY_TRAIN, cpu_runtime
from omegaconf import OmegaConf
from sklearn.metrics import top_k_accuracy_score

from bnrepro import checkpoint, train
from bnrepro.checkpoint import find
from bnrepro.config import compose
from bnrepro.data import build_datasets
from bnrepro.errors import ConfigError, UserError
from bnrepro.evaluation import ensemble
from bnrepro.evaluation.crops import cut_crops
from bnrepro.schema import EnsembleSchema, check

DATA = TINY_DATA  # the same tree, read as the trainer's tests read it
# a fake checkpoint's data config: the tiny tree's (32 px), as a trained one records it
TRAINED_AT = OmegaConf.to_container(compose("train", TINY_TRAIN).data, resolve=True)
WIDTH = 0.125
MEMBERS = 6


def ensemble_cfg(root: str, tmp_path: Path, checkpoints, *extra: str):
    specs = (
        checkpoints if isinstance(checkpoints, str) else "[" + ",".join(map(str, checkpoints)) + "]"
    )
    return compose(
        "ensemble",
        [*DATA, f"data.root={root}", f"checkpoints={specs}", f"out_dir={tmp_path}",
         "runtime.progress=false", *extra],
    )  # fmt: skip


def fake_checkpoint(path: Path, classes: list[str], *, seed: int = 0, **arch_changes) -> Path:
    """A DESIGN.md checkpoint of an untrained tiny network (no training needed)."""
    torch.manual_seed(seed)
    kwargs = {"width_mult": WIDTH, "num_classes": len(classes), "in_chans": 3}
    name = arch_changes.pop("name", "bn_inception")
    kwargs.update(arch_changes)
    model = timm.create_model("bn_inception", **{**kwargs, "num_classes": len(classes)})
    ckpt = {
        "format": checkpoint.FORMAT,
        "arch": {"name": name, "kwargs": kwargs},
        "classes": classes,
        "model": model.state_dict(),
        "images_seen": 0,
        "config": {"run_name": path.stem, "experiment_name": "fake", "data": TRAINED_AT},
    }
    checkpoint.save(path, ckpt)
    return path


@pytest.fixture(scope="session")
def classes(tiny_data_root) -> list[str]:
    return build_datasets(compose("ensemble", [*DATA, f"data.root={tiny_data_root}"]).data)[2]


@pytest.fixture(scope="session")
def trained_members(tiny_data_root, tmp_path_factory) -> Path:
    """The 6 members (member=0-5) trained for 2 steps each: a multirun-like folder of run folders."""
    out = tmp_path_factory.mktemp("members")
    for member in range(MEMBERS):
        overrides = [*TINY_TRAIN, f"data.root={tiny_data_root}", f"out_dir={out}",
                     f"member={member}", "experiment=bn_x30_ensemble", "trainer.max_images=32",
                     "trainer.eval_every_images=32", "trainer.ckpt_every_images=32"]  # fmt: skip
        train.train(compose("train", overrides))
    return out


@pytest.fixture
def no_long_work(monkeypatch):
    """Fail the test if evaluation starts (a crop is cut)."""

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation started before the input was checked")

    monkeypatch.setattr(ensemble, "cut_crops", refuse)


# ---------------------------------------------------------------- finding members


def test_find_checkpoints_in_files_folders_globs_and_runs(tmp_path) -> None:
    for run, files in {"a_seed0": ["ckpt_000000000032.pt", "best.pt"],
                       "a_seed1": ["ckpt_000000000032.pt", "ckpt_000000000064.pt"]}.items():  # fmt: skip
        (tmp_path / "multi" / run / "checkpoints").mkdir(parents=True)
        for f in files:
            (tmp_path / "multi" / run / "checkpoints" / f).touch()
    (tmp_path / "loose").mkdir()
    for f in ("x.pt", "y.pt"):
        (tmp_path / "loose" / f).touch()
    best = tmp_path / "multi" / "a_seed0" / "checkpoints" / "best.pt"
    last = tmp_path / "multi" / "a_seed0" / "checkpoints" / "ckpt_000000000032.pt"
    newest = tmp_path / "multi" / "a_seed1" / "checkpoints" / "ckpt_000000000064.pt"

    assert find(str(tmp_path / "multi")) == [last, newest]  # the end of training
    assert find([str(tmp_path / "multi" / "a_seed1")]) == [newest]  # a run folder
    assert find(str(tmp_path / "multi" / "a_seed*")) == [last, newest]  # a glob
    assert find(str(tmp_path / "multi" / "a_seed0"), "best") == [best]  # on request
    with pytest.raises(UserError, match="a_seed1 has no best.pt: use member_checkpoint=last"):
        find(str(tmp_path / "multi"), "best")
    with pytest.raises(KeyError):  # the choices are the schema's: anything else is a bug
        find(str(tmp_path / "multi"), "newest")
    assert find([str(tmp_path / "loose")]) == [tmp_path / "loose" / "x.pt",
                                                           tmp_path / "loose" / "y.pt"]  # fmt: skip
    assert find([str(best)]) == [best]


@pytest.mark.parametrize(
    "specs, message",
    [
        ([], "checkpoints is empty"),
        (["nowhere.pt"], "does not exist"),
        (["nothing*"], "matches no file"),
        (["loose/x.pt", "loose"], "the same file twice"),
        (["empty"], "holds no .pt file"),
        (["run"], "has no checkpoint yet"),
    ],
)
def test_find_checkpoints_refuses(tmp_path, monkeypatch, specs, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "x.pt").touch()
    (tmp_path / "empty").mkdir()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=message):
        find(specs)


# ---------------------------------------------------------------- bad input, before any image


def test_missing_checkpoint_is_refused(tiny_data_root, classes, tmp_path, no_long_work) -> None:
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    cfg = ensemble_cfg(tiny_data_root, tmp_path, [good, tmp_path / "missing.pt"])
    with pytest.raises(UserError, match="missing.pt does not exist"):
        ensemble.evaluate_ensemble(cfg, tmp_path / "run")


def test_truncated_checkpoint_is_refused(tiny_data_root, classes, tmp_path, no_long_work) -> None:
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    cut = fake_checkpoint(tmp_path / "cut.pt", classes)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UserError, match="cut.pt is unreadable .truncated or corrupt"):
        ensemble.evaluate_ensemble(
            ensemble_cfg(tiny_data_root, tmp_path, [good, cut]), tmp_path / "run"
        )


def test_unknown_architecture_is_refused(tiny_data_root, classes, tmp_path, no_long_work) -> None:
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    other = fake_checkpoint(tmp_path / "other.pt", classes, name="no_such_net")
    with pytest.raises(UserError, match="'no_such_net', which is not in timm's registry"):
        ensemble.evaluate_ensemble(
            ensemble_cfg(tiny_data_root, tmp_path, [good, other]), tmp_path / "run"
        )


def test_weights_of_another_shape_are_refused(tiny_data_root, classes, tmp_path, no_long_work):
    ckpt = fake_checkpoint(tmp_path / "wide.pt", classes)
    saved = torch.load(ckpt, weights_only=True)
    saved["arch"]["kwargs"]["width_mult"] = 0.25  # weights of width 1/8, arch says 1/4
    checkpoint.save(ckpt, saved)
    with pytest.raises(UserError, match="weights do not fit bn_inception"):
        ensemble.evaluate_ensemble(ensemble_cfg(tiny_data_root, tmp_path, [ckpt]), tmp_path / "run")


def test_member_with_non_finite_weights_is_refused(tiny_data_root, classes, tmp_path, no_long_work):
    """A diverged member would make the ensemble's probabilities NaN (issue 11): refused first."""
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    saved = torch.load(good, weights_only=True)
    name = next(k for k, v in saved["model"].items() if k.endswith("running_var"))
    saved["model"][name][0] = float("nan")  # a buffer: weights and BN statistics both count
    torch.save(saved, tmp_path / "diverged.pt")  # checkpoint.save itself refuses such a state
    with pytest.raises(UserError, match=f"diverged.pt holds non-finite weights .{name}"):
        ensemble.evaluate_ensemble(
            ensemble_cfg(tiny_data_root, tmp_path, [good, tmp_path / "diverged.pt"]),
            tmp_path / "run",
        )


def test_another_class_count_is_refused(tiny_data_root, classes, tmp_path, no_long_work) -> None:
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    fewer = fake_checkpoint(tmp_path / "fewer.pt", classes[:5])
    with pytest.raises(UserError, match="fewer.pt was trained on another class list .5 classes"):
        ensemble.evaluate_ensemble(
            ensemble_cfg(tiny_data_root, tmp_path, [good, fewer]), tmp_path / "run"
        )


def test_another_class_list_than_the_val_set_is_refused(
    tiny_data_root, classes, tmp_path, no_long_work
) -> None:
    renamed = [f"n9{c[2:]}" for c in classes]  # same count, other wnids
    a = fake_checkpoint(tmp_path / "a.pt", renamed)
    b = fake_checkpoint(tmp_path / "b.pt", renamed, seed=1)
    with pytest.raises(UserError, match="a.pt was trained on 10 classes .* the val set has 10"):
        ensemble.evaluate_ensemble(ensemble_cfg(tiny_data_root, tmp_path, [a, b]), tmp_path / "run")


def test_empty_val_set_is_refused(tiny_data_root, classes, tmp_path, no_long_work) -> None:
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    cfg = ensemble_cfg(tiny_data_root, tmp_path, [good], "max_images=0")
    with pytest.raises(UserError, match="val set .* is empty"):
        ensemble.evaluate_ensemble(cfg, tmp_path / "run")


def test_bad_crop_count_is_refused(tiny_data_root, classes, tmp_path) -> None:
    good = fake_checkpoint(tmp_path / "good.pt", classes)
    with pytest.raises(ConfigError, match="crops=12 is not valid: crops takes one of 1, 10, 144"):
        check(ensemble_cfg(tiny_data_root, tmp_path, [good], "crops=12"), EnsembleSchema)


# ---------------------------------------------------------------- which checkpoint, which pipeline


def fake_run(folder: Path, classes: list[str], files: list[str], **config) -> Path:
    """A run folder whose checkpoints are fake_checkpoint files with this training config."""
    for i, name in enumerate(files):
        fake_checkpoint(folder / "checkpoints" / name, classes, seed=i)
        ckpt = checkpoint.load(folder / "checkpoints" / name)
        ckpt["config"] = {"run_name": folder.name, "experiment_name": "fake", "data": TRAINED_AT,
                          **config}  # fmt: skip
        checkpoint.save(folder / "checkpoints" / name, ckpt)
    return folder


def test_best_checkpoints_only_on_request_and_then_the_table_says_so(
    tiny_data_root, classes, tmp_path
) -> None:
    runs = tmp_path / "runs"
    for i in range(2):
        fake_run(runs / f"m{i}", classes, ["ckpt_000000000016.pt", "best.pt"], member=i,
                 model={"init_gain": 1.5, "dropout": 0.05 * (i + 1), "head_bn": True})  # fmt: skip
    last = ensemble.evaluate_ensemble(
        ensemble_cfg(tiny_data_root, tmp_path, str(runs), "crops=1", "max_images=4"), tmp_path / "a"
    )
    assert [Path(m["checkpoint"]).name for m in last["members"]] == ["ckpt_000000000016.pt"] * 2
    assert not last["selected_on_val"]
    best = ensemble.evaluate_ensemble(
        ensemble_cfg(tiny_data_root, tmp_path, str(runs), "crops=1", "max_images=4",
                     "member_checkpoint=best"), tmp_path / "b",
    )  # fmt: skip
    assert [Path(m["checkpoint"]).name for m in best["members"]] == ["best.pt"] * 2
    assert best["selected_on_val"] and all(m["selected_on_val"] for m in best["members"])
    md = (tmp_path / "b" / "results.md").read_text()
    assert "**Members selected on this val set**" in md
    assert "| member 0: init x1.5, dropout 5%, head BN |" in md
    assert best["members"][1]["changes"] == {"member": 1, "init_gain": 1.5, "dropout": 0.1,
                                             "head_bn": True, "per_activation_bn": None}  # fmt: skip


def test_population_statistics_use_each_members_own_training_pipeline(
    tiny_data_root, classes, tmp_path, monkeypatch
) -> None:
    """Algorithm 2 on each member's data config (as bnrepro-bn-stats does), not the ensemble's:
    here the ensemble's colour strength is 1.0, the members trained at 0.5 and 0.25."""
    cfg = ensemble_cfg(tiny_data_root, tmp_path, str(tmp_path / "runs"), "crops=1",
                       "max_images=4", "pop_stats_batches=1")  # fmt: skip
    assert cfg.data.augment.color_strength == 1.0
    for i, (strength, batch) in enumerate([(0.5, 8), (0.25, 4)]):
        data = OmegaConf.to_container(cfg.data, resolve=True)
        data.update(root="/where/it/was/trained", batch_size=batch)
        data["augment"]["color_strength"] = strength
        fake_run(tmp_path / "runs" / f"m{i}", classes, ["ckpt_000000000016.pt"], data=data)
    seen = []

    def population_model(model, loader, runtime, num_batches):
        aug = loader.dataset.transform.aug
        seen.append((aug.color_strength, loader.batch_size, str(loader.dataset.split.root)))
        return model

    monkeypatch.setattr(ensemble, "population_model", population_model)
    results = ensemble.evaluate_ensemble(cfg, tmp_path / "run")
    root = str(build_datasets(cfg.data)[0].split.root)  # the data where this command reads it
    assert seen == [(0.5, 8, root), (0.25, 4, root)]
    assert [m["pop_stats_data"]["augment"]["color_strength"] for m in results["members"]] == [
        0.5, 0.25,
    ]  # fmt: skip


def _trained_at(eval_crop: int) -> dict:
    return dict(TRAINED_AT, eval_crop=eval_crop, train_crop=eval_crop)


def test_the_resolution_comes_from_the_members_checkpoints(tiny_data_root, classes, tmp_path):
    """Members trained at 32 px are scored at 32 px, whatever this command's data.eval_crop
    (here 48: the ensemble used to evaluate at it); resolution=N scores them at N."""
    runs = tmp_path / "runs"
    for i in range(2):
        fake_run(runs / f"m{i}", classes, ["ckpt_000000000016.pt"], data=_trained_at(32))
    cfg = ensemble_cfg(tiny_data_root, tmp_path, str(runs), "crops=1", "max_images=4",
                       "data.eval_crop=48", "data.eval_resize=55")  # fmt: skip
    results = ensemble.evaluate_ensemble(cfg, tmp_path / "a")
    assert results["resolution"] == 32 and results["resolution_from"] == "members"
    assert {r["resolution"] for r in results["rows"]} == {32}
    assert [m["trained_resolution"] for m in results["members"]] == [32, 32]
    explicit = ensemble.evaluate_ensemble(
        ensemble_cfg(tiny_data_root, tmp_path, str(runs), "crops=1", "max_images=4",
                     "resolution=40"), tmp_path / "b"
    )  # fmt: skip
    assert {r["resolution"] for r in explicit["rows"]} == {40}
    assert explicit["resolution_from"] == "resolution"


def test_members_of_different_resolutions_are_refused_unless_one_is_set(
    tiny_data_root, classes, tmp_path, no_long_work
):
    runs = tmp_path / "runs"
    fake_run(runs / "small", classes, ["ckpt_000000000016.pt"], data=_trained_at(32))
    fake_run(runs / "large", classes, ["ckpt_000000000016.pt"], data=_trained_at(64))
    cfg = ensemble_cfg(tiny_data_root, tmp_path, str(runs), "crops=1", "max_images=4")
    with pytest.raises(ensemble.EnsembleError, match=r"different resolutions \(large: 64 px, "
                       r"small: 32 px\).* set resolution=N"):  # fmt: skip
        ensemble.evaluate_ensemble(cfg, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # refused before anything is written
    per_activation = fake_checkpoint(tmp_path / "pa.pt", classes, per_activation_bn=2, img_size=32)
    cfg = ensemble_cfg(tiny_data_root, tmp_path, [per_activation], "resolution=48")
    with pytest.raises(ensemble.EnsembleError, match="per-activation BN built for 32 px"):
        ensemble.evaluate_ensemble(cfg, tmp_path / "b")


def test_population_statistics_and_paired_tests_by_default(tiny_data_root, classes, tmp_path):
    """A default ensemble run reports Algorithm 2's scores beside the moving averages (auto: at
    most one epoch of each member's training pipeline), every error with its interval, and the
    paired tests that its hits allow; an explicit count with a BN-free member is refused."""
    members = [fake_checkpoint(tmp_path / f"m{i}.pt", classes, seed=i) for i in range(2)]
    cfg = ensemble_cfg(tiny_data_root, tmp_path, members, "crops=1", "max_images=8")
    assert cfg.pop_stats_batches == "auto" and cfg.resolution is None  # the defaults
    results = ensemble.evaluate_ensemble(cfg, tmp_path / "run")
    rows = results["rows"]
    assert [r["bn_stats"] for r in rows] == ["moving"] * 3 + ["population"] * 3
    train_batches = 160 // 16  # the tiny tree's epoch at the members' batch of 16
    assert [m["pop_stats_batches"] for m in results["members"]] == [train_batches] * 2
    from bnrepro.stats import wilson

    for r in rows:
        wrong = round(r["top1_error"] * r["images"])
        assert r["top1_error_ci95"] == pytest.approx(wilson(wrong, r["images"]))
    tested = {(c["a"], c["b"], c["metric"]) for c in results["comparisons"]}
    assert ("ensemble of 2", "m0", "top1") in tested  # the ensemble against each member
    assert ("m1 (population BN)", "m1", "top5") in tested  # population against moving
    for c in results["comparisons"]:
        assert 0 <= c["p_value"] <= 1 and c["better"] in ("A", "B", "neither")
    md = (tmp_path / "run" / "results.md").read_text()
    assert "Paired tests on the same images" in md and "(95% CI)" in md
    assert "paper top-1" not in md  # synthetic data: the paper's ImageNet numbers are not shown
    no_bn = fake_checkpoint(tmp_path / "plain.pt", classes, batch_norm=False)
    cfg = ensemble_cfg(tiny_data_root, tmp_path, [members[0], no_bn], "pop_stats_batches=2")
    with pytest.raises(ensemble.EnsembleError, match="plain have no BN layer"):
        ensemble.evaluate_ensemble(cfg, tmp_path / "refused")


def test_cli_exits_non_zero_with_one_line(tmp_path) -> None:
    cmd = [str(Path(sys.executable).parent / "bnrepro-ensemble"),
           f"checkpoints=[{tmp_path}/none.pt]", f"out_dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"bnrepro-ensemble: error: checkpoint {tmp_path}/none.pt does not exist: check the path"
    )


# ---------------------------------------------------------------- the evaluation core


def test_evaluate_averages_crops_then_members_batch_by_batch() -> None:
    """Against a direct computation, and with the order: every member sees a batch before the
    next batch is loaded."""
    cfg = compose("ensemble", ["checkpoints=[x]", "resolution=32"])
    torch.manual_seed(0)
    models = [timm.create_model("bn_inception", width_mult=WIDTH, num_classes=10).eval()
              for _ in range(2)]  # fmt: skip
    images = [torch.randint(0, 256, (3, 40 + 7 * i, 60 - 5 * i), dtype=torch.uint8)
              for i in range(3)]  # fmt: skip
    labels = torch.tensor([1, 4, 9])
    log = []

    def batches():
        for i in range(0, 3, 2):
            log.append("load")
            yield images[i : i + 2], labels[i : i + 2], 0

    for i, m in enumerate(models):
        m.register_forward_hook(lambda *_, i=i: log.append(f"m{i}"))
    runtime = cpu_runtime(cfg.data)
    prepare = runtime.inputs
    ev = ensemble.evaluate_crops([models], batches(), n_crops=10, resolution=32,
                                 runtime=runtime, save_probs=True)  # fmt: skip

    assert log == ["load", "m0", "m1"] * 2
    with torch.no_grad():
        expected = torch.stack([
            torch.stack([m(prepare(cut_crops(im, 10, 32))).softmax(-1).mean(0) for im in images])
            for m in models
        ])  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(ev.probs[0]), expected)
    assert ev.images == 3 and ev.labels.tolist() == labels.tolist()
    for i, p in enumerate([*expected, expected.mean(0)]):
        top1 = (p.argmax(1) == labels).sum().item()
        assert ev.correct[0, i, 0].item() == top1


class NaNNet(torch.nn.Module):
    """A diverged network: NaN logits for every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 10), float("nan"))


def test_nan_logits_count_as_wrong_for_the_member_and_the_ensemble() -> None:
    """With NaN probabilities every image used to count as correct (issue 11)."""
    cfg = compose("ensemble", ["checkpoints=[x]", "resolution=32"])
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8) for _ in range(4)]
    batches = [(images, torch.tensor([0, 3, 5, 9]), 0)]
    ev = ensemble.evaluate_crops([[NaNNet(), NaNNet()]], batches, n_crops=1, resolution=32,
                                 runtime=cpu_runtime(cfg.data))  # fmt: skip
    assert ev.correct.sum().item() == 0


# ---------------------------------------------------------------- end to end


def _errors(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    n = len(probs[0])
    return tuple(
        1
        - top_k_accuracy_score(labels, probs, k=k, labels=np.arange(n), normalize=False)
        / len(labels)
        for k in (1, 5)
    )


@pytest.mark.slow
@pytest.mark.parametrize("crops, max_images", [(1, 40), (10, 40), (144, 12)])
def test_six_members_equal_the_mean_of_their_saved_probs(
    trained_members, tiny_data_root, tmp_path, crops, max_images
) -> None:
    cfg = ensemble_cfg(tiny_data_root, tmp_path, str(trained_members), f"crops={crops}",
                       f"max_images={max_images}", "save_probs=true",
                       f"results_dir={tmp_path / 'results'}")  # fmt: skip
    results = ensemble.evaluate_ensemble(cfg, tmp_path / "run")

    saved = np.load(tmp_path / "run" / "probs.npz")
    probs, labels = saved["probs"], saved["labels"]
    assert probs.shape == saved["probs_population"].shape == (MEMBERS, max_images, 10)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    rows = results["rows"]  # moving averages, then Algorithm 2 (on by default)
    assert {(r["crops"], r["resolution"], r["images"]) for r in rows} == {(crops, 32, max_images)}
    for stats, key in (("moving", "probs"), ("population", "probs_population")):
        these = [r for r in rows if r["bn_stats"] == stats]
        assert [r["models"] for r in these] == [1] * MEMBERS + [MEMBERS]
        suffix = "" if stats == "moving" else " (population BN)"
        assert [r["model"] for r in these[:MEMBERS]] == [
            f"bn_x30_ensemble_member{i}_seed{i}{suffix}" for i in range(6)
        ]
        for r, p in zip(these, [*saved[key], saved[key].mean(0)], strict=True):
            assert (r["top1_error"], r["top5_error"]) == pytest.approx(
                _errors(p, labels), abs=1e-12
            )
    # the labels are the val set's, in order
    val_labels = build_datasets(cfg.data)[1].split.labels[:max_images]
    assert labels.tolist() == val_labels.tolist()
    on_disk = json.loads((tmp_path / "results" / "results.json").read_text())
    assert on_disk["rows"] == rows
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| ensemble of 6 | moving | 32 |" in md and "| ensemble of 6 (population BN) |" in md
    # the Figure 4 table lists each member's changes (configs/experiment/bn_x30_ensemble.yaml)
    assert "| member 1: init x1.5, dropout 10%, per-activation BN in the last 2 modules |" in md
    assert "| member 4: init x1.5, dropout 5% |" in md
    # the last checkpoints by default: no selection on the val set
    assert not results["selected_on_val"] and "selected on this val set" not in md
    assert {m["checkpoint"].rsplit("/", 1)[1] for m in results["members"]} == {
        "ckpt_000000000032.pt"
    }


@pytest.mark.slow
def test_population_statistics_are_reported_beside(trained_members, tiny_data_root, tmp_path):
    cfg = ensemble_cfg(tiny_data_root, tmp_path, str(trained_members), "crops=1",
                       "pop_stats_batches=2", "save_probs=true")  # fmt: skip
    rows = ensemble.evaluate_ensemble(cfg, tmp_path / "run")["rows"]
    assert [r["bn_stats"] for r in rows] == ["moving"] * 7 + ["population"] * 7
    saved = np.load(tmp_path / "run" / "probs.npz")
    assert not np.allclose(saved["probs"], saved["probs_population"])
    pop = rows[-1]
    assert (pop["top1_error"], pop["top5_error"]) == pytest.approx(
        _errors(saved["probs_population"].mean(0), saved["labels"]), abs=1e-12
    )


@pytest.mark.slow
def test_cli_runs_as_a_job(trained_members, tiny_data_root, tmp_path) -> None:
    cmd = [str(Path(sys.executable).parent / "bnrepro-ensemble"),
           f"checkpoints=[{trained_members}/*member0*,{trained_members}/*member1*]",
           *DATA, f"data.root={tiny_data_root}", f"out_dir={tmp_path}", "crops=10",
           "max_images=8", "runtime.progress=false"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (result,) = tmp_path.glob("ensemble/*/results.json")
    assert len(json.loads(result.read_text())["members"]) == 2


def test_wandb_run_is_an_ensemble_job_in_the_members_group(
    tiny_data_root, classes, tmp_path, monkeypatch
) -> None:
    from test_wandb import wandb_records

    monkeypatch.setenv("WANDB_SILENT", "true")
    members = [fake_checkpoint(tmp_path / f"m{i}.pt", classes, seed=i) for i in range(2)]
    cfg = ensemble_cfg(tiny_data_root, tmp_path, members, "crops=1", "max_images=4",
                       "logger=wandb", "logger.wandb.mode=offline")  # fmt: skip
    rows = ensemble.evaluate_ensemble(cfg, tmp_path / "run")["rows"]
    (path,) = (tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(100):  # wandb-core may still be flushing after finish()
        records = list(wandb_records(path))
        if any(r.HasField("exit") for r in records):
            break
        time.sleep(0.1)
    (run,) = [r.run for r in records if r.HasField("run")]
    assert (run.run_group, run.job_type) == ("fake", "ensemble")  # group: the members' experiment
    summary = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.HasField("summary")
        for item in r.summary.update
    }
    by_name = {r["model"]: r for r in rows}  # moving averages and Algorithm 2 (the default)
    for name in ("ensemble of 2", "ensemble of 2 (population BN)"):
        assert summary[f"{name}/top1_error"] == pytest.approx(by_name[name]["top1_error"])
