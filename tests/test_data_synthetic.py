"""The synthetic ImageNet-shaped tree (bnrepro/data/synthetic.py)."""

import json

import pytest
import torch
from conftest import cpu_runtime
from torch import nn

from bnrepro import data as D
from bnrepro.config import compose
from bnrepro.data.synthetic import class_specs, ensure_tree, main
from bnrepro.data.transforms import image_size
from bnrepro.errors import ConfigError

TINY = dict(
    num_classes=3, train_per_class=4, val_per_class=2, min_side=30, max_side=50, quality=90, seed=1
)


def test_tree_has_imagenet_layout_2(tmp_path):
    root = ensure_tree(tmp_path / "syn", **TINY)
    train, val, classes = D.find_imagenet(root)
    assert len(classes) == 3 and all(c.startswith("n0") and len(c) == 9 for c in classes)
    assert len(train.files) == 12 and len(val.files) == 6
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert all(f.decode().startswith("val/ILSVRC2012_val_") for f in val.files)
    sizes = {image_size((root / f.decode()).read_bytes()) for f in train.files}
    assert len(sizes) > 6 and all(30 <= s <= 50 for wh in sizes for s in wh)


def test_tree_is_made_once_and_remade_when_parameters_change(tmp_path):
    root = ensure_tree(tmp_path / "syn", **TINY)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    ensure_tree(root, **TINY)
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    ensure_tree(root, **{**TINY, "train_per_class": 5})
    assert json.loads((root / "manifest.json").read_text())["train_per_class"] == 5
    assert len(D.find_imagenet(root)[0].files) == 15
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic tree"):
        ensure_tree(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(num_classes=1), "data.num_classes must be >= 2 for data=synthetic, got 1"),
        (dict(min_side=0), r"data.synthetic.min_side and data.synthetic.max_side .* got 0 and 50"),
        (dict(min_side=60), "data.synthetic.min_side and data.synthetic.max_side"),
        (dict(quality=101), r"data.synthetic.quality must be in \[1, 100\] \(JPEG\), got 101"),
        (dict(train_per_class=0), "data.synthetic.train_per_class and data.synthetic.val_per"),
        (dict(val_per_class=0), "data.synthetic.train_per_class and data.synthetic.val_per"),
    ],
)
def test_bad_parameters_are_config_errors(tmp_path, params, message):
    with pytest.raises(ConfigError, match=message):
        ensure_tree(tmp_path / "syn", **{**TINY, **params})
    assert not (tmp_path / "syn").exists()


def test_classes_differ_and_generation_is_reproducible(tmp_path):
    specs = class_specs(60, seed=3)
    assert len({s[1:] for s in specs}) == 60 and [s[0] for s in specs] == sorted(
        s[0] for s in specs
    )
    a, b = ensure_tree(tmp_path / "a", **TINY), ensure_tree(tmp_path / "b", **TINY)
    for f in sorted((a / "val").iterdir()):
        assert f.read_bytes() == (b / "val" / f.name).read_bytes()


def test_command_line(tmp_path):
    main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--classes",
            "2",
            "--train-per-class",
            "2",
            "--val-per-class",
            "1",
        ]
    )
    assert len(D.find_imagenet(tmp_path / "cli")[2]) == 2


@pytest.mark.slow
def test_default_synthetic_classes_are_learnable_but_not_trivial(tmp_path):
    """A small conv net, 64 px, the training augmentation: far above chance (10%) after 150
    steps, far from perfect after 20."""
    torch.manual_seed(0)
    cfg = compose("train", [f"data.root={tmp_path / 'syn'}"]).data
    runtime = cpu_runtime(cfg)
    train_ds, val_ds, _ = D.build_datasets(cfg)
    loader = D.build_train_loader(cfg, train_ds, seed=0, rank=0, world_size=1)
    val_loader = D.build_val_loader(cfg, val_ds, rank=0, world_size=1)

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    net = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

    def accuracy() -> float:
        net.eval()
        with torch.no_grad():
            hits = [(net(runtime.inputs(x)).argmax(1) == y) for x, y in val_loader]
        net.train()
        return torch.cat(hits).float().mean().item()

    step, acc = 0, {}
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for x, y, color in loader:
            loss = nn.functional.cross_entropy(net(runtime.inputs(x, color)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step in (20, 150):
                acc[step] = accuracy()
            if step == 150:
                break
        if step == 150:
            break
    assert acc[20] < 0.6 and acc[150] > 0.3, acc


def _make(root):
    ensure_tree(root, **TINY)


def test_ranks_generating_at_once_leave_one_complete_tree(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_make, args=(tmp_path / "syn",)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(D.find_imagenet(tmp_path / "syn")[0].files) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temp folders left
