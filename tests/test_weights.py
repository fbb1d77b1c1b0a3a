"""The public Caffe BN-Inception weights (bnrepro/weights.py): the converter against a reference
module that computes what the PyTorch port (Cadene's pretrainedmodels `bninception`) computes,
and the converted checkpoint in every evaluator (bnrepro-ensemble, bnrepro-bn-stats, timm).

The reference is written here from the port's layer list (its source is public; none of it is
copied): flat layer names `<conv>` / `<conv>_bn` / `last_linear`, every conv with a bias and
followed by BN (eps 1e-5) and ReLU, Caffe pooling, BGR 0-255 input minus (104, 117, 128).
"""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import cpu_runtime, write_jpeg
from omegaconf import OmegaConf
from torch import nn

from bnrepro import builders, checkpoint, engine
from bnrepro.cli import bnrepro_convert
from bnrepro.config import CONFIG_DIR, compose
from bnrepro.data import WholeImages
from bnrepro.evaluation import bn_stats, ensemble
from bnrepro.evaluation.crops import cut_crops
from bnrepro.weights import (
    CAFFE_MEAN,
    CAFFE_STD,
    WeightsError,
    converted_checkpoint,
    from_caffe_bninception,
    imagenet_classes,
    main,
)

# The port's inception modules: name, input channels, #1x1, #3x3 reduce, #3x3, double #3x3
# reduce, double #3x3, pool ("avg" 3x3/1 counting padding, "max" 3x3/1, "max/2" 3x3/2 ceil mode
# without padding), pool proj (0: the pooled input passes through).
CAFFE_MODULES = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 320, 0, 128, 160, 64, 96, "max/2", 0),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 608, 0, 128, 192, 192, 256, "max/2", 0),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128),
)
BGR_MEAN = torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)


class CaffeBNInception(nn.Module):
    """The port's network: its state dict keys, its ops (see the module docstring)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.unit("conv1_7x7_s2", 3, 64, 7, 2)
        self.unit("conv2_3x3_reduce", 64, 64, 1)
        self.unit("conv2_3x3", 64, 192, 3)
        for name, cin, n1, n3r, n3, ndr, nd, pool, proj in CAFFE_MODULES:
            p, stride = f"inception_{name}", 2 if pool == "max/2" else 1
            if n1:
                self.unit(f"{p}_1x1", cin, n1, 1)
            self.unit(f"{p}_3x3_reduce", cin, n3r, 1)
            self.unit(f"{p}_3x3", n3r, n3, 3, stride)
            self.unit(f"{p}_double_3x3_reduce", cin, ndr, 1)
            self.unit(f"{p}_double_3x3_1", ndr, nd, 3)
            self.unit(f"{p}_double_3x3_2", nd, nd, 3, stride)
            if proj:
                self.unit(f"{p}_pool_proj", cin, proj, 1)
        self.last_linear = nn.Linear(1024, num_classes)

    def unit(self, name: str, cin: int, cout: int, k: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, k, stride, padding=k // 2))  # with a bias
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))  # eps 1e-5

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # BGR 0-255 minus BGR_MEAN
        x = F.max_pool2d(self.run("conv1_7x7_s2", x), 3, 2, ceil_mode=True)
        x = self.run("conv2_3x3", self.run("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        for name, _, n1, _, _, _, _, pool, proj in CAFFE_MODULES:
            p = f"inception_{name}"
            out = [self.run(f"{p}_1x1", x)] if n1 else []
            out.append(self.run(f"{p}_3x3", self.run(f"{p}_3x3_reduce", x)))
            dbl = self.run(f"{p}_double_3x3_1", self.run(f"{p}_double_3x3_reduce", x))
            out.append(self.run(f"{p}_double_3x3_2", dbl))
            if pool == "avg":
                pooled = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
            elif pool == "max":
                pooled = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
            else:
                pooled = F.max_pool2d(x, 3, 2, ceil_mode=True)
            out.append(self.run(f"{p}_pool_proj", pooled) if proj else pooled)
            x = torch.cat(out, 1)
        x = F.avg_pool2d(x, x.shape[2])  # the whole 7x7 map at 224
        return self.last_linear(x.flatten(1))


def random_reference(seed: int = 0) -> CaffeBNInception:
    """Random weights, biases and BN statistics (in eval mode): nothing is left at a value that
    would hide a mistake (zero biases, unit variances)."""
    torch.manual_seed(seed)
    model = CaffeBNInception()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0, (2 / fan_in) ** 0.5)
                m.bias.uniform_(-1, 1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.normal_(0, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture(scope="module")
def reference() -> CaffeBNInception:
    return random_reference()


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """The reference's state dict through bnrepro-convert: the checkpoint's path."""
    folder = tmp_path_factory.mktemp("converted")
    torch.save(reference.state_dict(), folder / "bn_inception-random.pth")
    main([str(folder / "bn_inception-random.pth"), str(folder / "converted.pt")])
    return folder / "converted.pt"


def photo_224() -> torch.Tensor:
    """A real photo's centre 224 x 224 (scikit-learn's china.jpg), RGB uint8 [1, 3, 224, 224]."""
    from sklearn.datasets import load_sample_image

    img = load_sample_image("china.jpg")  # 427 x 640
    top, left = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
    crop = np.ascontiguousarray(img[top : top + 224, left : left + 224])
    return torch.from_numpy(crop).permute(2, 0, 1)[None]


def reference_logits(reference: nn.Module, rgb_uint8: torch.Tensor) -> torch.Tensor:
    """What the port computes: BGR 0-255 minus (104, 117, 128)."""
    with torch.no_grad():
        return reference(rgb_uint8.flip(1).float() - BGR_MEAN)


def assert_relative_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    err = (ours - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), f"max error {err} vs max |logit| {ref.abs().max()}"


# ---------------------------------------------------------------- the converter


def test_biases_fold_into_the_running_mean_and_conv1_takes_rgb(reference):
    sd = reference.state_dict()
    ours = from_caffe_bninception(sd)
    b, m = sd["inception_4a_3x3.bias"], sd["inception_4a_3x3_bn.running_mean"]
    torch.testing.assert_close(ours["blocks.4a.branch3x3.1.bn.running_mean"], m - b)
    w = sd["conv1_7x7_s2.weight"]
    assert torch.equal(ours["stem.conv1.conv.weight"], w[:, [2, 1, 0]])
    assert torch.equal(ours["fc.weight"], sd["last_linear.weight"])
    model = timm.create_model("bn_inception")
    assert ours.keys() == model.state_dict().keys()  # every tensor of the model, nothing else


def test_bias_folding_is_exact_on_one_conv_bn_pair():
    """BN(conv(x) + b) with running mean m = BN(conv(x)) with running mean m - b (eval mode)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6).eval()
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    folded_conv, folded_bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6).eval()
    folded_conv.weight.data.copy_(conv.weight)
    folded_bn.load_state_dict(bn.state_dict())
    folded_bn.running_mean.sub_(conv.bias.detach())
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded_bn(folded_conv(x)), bn(conv(x)))


def test_older_files_bn_shapes_and_wrapper_prefix_are_accepted(reference):
    """The TSN-era copies store BN tensors as [1, C]; DataParallel saves prefix 'module.'."""
    sd = reference.state_dict()
    odd = {f"module.{k}": (v[None] if "_bn." in k and v.ndim == 1 else v) for k, v in sd.items()}
    plain = from_caffe_bninception(sd)
    for k, v in from_caffe_bninception(odd).items():
        assert torch.equal(v, plain[k]), k


def test_other_state_dicts_are_refused_by_name(reference):
    sd = reference.state_dict()
    with pytest.raises(WeightsError, match="missing 1 keys.*inception_5b_pool_proj.bias"):
        from_caffe_bninception({k: v for k, v in sd.items() if k != "inception_5b_pool_proj.bias"})
    with pytest.raises(WeightsError, match="unknown 1 keys.*aux.weight"):
        from_caffe_bninception({**sd, "aux.weight": torch.zeros(1)})
    narrower = dict(sd)
    narrower["inception_3a_1x1.weight"] = torch.zeros(32, 192, 1, 1)
    with pytest.raises(WeightsError, match="widths"):
        converted_checkpoint(narrower)


def test_checkpoint_carries_architecture_classes_and_normalisation(reference):
    ckpt = converted_checkpoint(reference.state_dict(), source="x.pth")
    assert ckpt["format"] == checkpoint.FORMAT and "optimizer" not in ckpt  # weights only
    assert ckpt["arch"]["kwargs"]["pool_ceil_mode"] and ckpt["arch"]["kwargs"]["bn_eps"] == 1e-5
    assert checkpoint.input_normalization(ckpt) == (list(CAFFE_MEAN), list(CAFFE_STD))
    assert ckpt["classes"] == imagenet_classes() == sorted(ckpt["classes"])
    assert ckpt["classes"][0] == "n01440764" and len(ckpt["classes"]) == 1000
    # bnrepro-bn-stats rebuilds the network from the config: it must give the same arch
    cfg = OmegaConf.merge(ckpt["config"], {"data": {"root": "/nowhere"}})
    assert builders.arch_of(cfg, ckpt["classes"]) == ckpt["arch"]
    imagenet = OmegaConf.load(f"{CONFIG_DIR}/data/imagenet.yaml")
    assert cfg.data.keys() == imagenet.keys()


def test_cli_refuses_bad_input_with_one_line_and_keeps_files(reference, tmp_path, capsys):
    src, out = tmp_path / "w.pth", tmp_path / "out.pt"
    out.write_bytes(b"keep me")
    torch.save(reference.state_dict(), src, _use_new_zipfile_serialization=False)  # old format
    cases = [
        ([str(tmp_path / "missing.pth"), str(tmp_path / "o.pt")], "does not exist"),
        ([str(src), str(out)], "exists: choose another output file, or pass --force"),
    ]
    (tmp_path / "list.pth").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pth")
    cases.append(([str(tmp_path / "list.pth"), str(tmp_path / "o.pt")], "not a state dict"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            bnrepro_convert(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert out.read_bytes() == b"keep me" and not (tmp_path / "o.pt").exists()
    bnrepro_convert([str(src), str(out), "--force"])  # the legacy serialisation reads too
    assert checkpoint.load(out)["arch"]["name"] == "bn_inception"


def test_ensemble_members_get_their_checkpoints_normalisation():
    """bnrepro-ensemble: a member's own mean/std (its checkpoint's config.data), else data's;
    members with one normalisation share one Runtime (one normalised batch). Caffe's: RGB pixel
    128 becomes (128 - 128, 128 - 117, 128 - 104) = (0, 11, 24), the port's BGR input reversed."""
    data = compose("ensemble", ["checkpoints=[x]"]).data
    runtime = cpu_runtime(data)

    def member(normalization):
        loaded = checkpoint.Loaded(Path("x.pt"), nn.Identity(), {"name": "x", "kwargs": {}}, [],
                                   {}, 0, normalization, None)  # fmt: skip
        return ensemble.Member(loaded, "x", sha256="0" * 64)

    caffe = (list(CAFFE_MEAN), list(CAFFE_STD))
    own = (list(data.mean), list(data.std))
    runtimes = ensemble.member_runtimes(
        [member(None), member(own), member(caffe), member(caffe)], runtime
    )
    assert runtimes[0] is runtime and runtimes[1] is runtime
    assert runtimes[2] is runtimes[3] and runtimes[2] is not runtime
    pixel = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    x = runtimes[2].inputs(pixel)[0, :, 0, 0]
    torch.testing.assert_close(x, torch.tensor([0.0, 11.0, 24.0]), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- the same logits


@pytest.mark.slow
def test_converted_model_gives_the_ports_logits(reference, converted):
    """Must be true (issue 13): reference with random weights and BN statistics -> converter ->
    bn_inception, logits equal to 1e-4 relative at 224 px in eval mode, on the same photo: RGB
    uint8 through the evaluators' normalisation vs BGR 0-255 minus the mean through the port;
    and the same through timm (pretrained_cfg_overlay=dict(file=...), resolve_data_config)."""
    image = photo_224()
    expected = reference_logits(reference, image)

    (member,) = ensemble.load_members([str(converted)], "last")  # as bnrepro-ensemble does
    imagenet = OmegaConf.load(f"{CONFIG_DIR}/data/imagenet.yaml")
    (runtime,) = ensemble.member_runtimes([member], cpu_runtime(imagenet))
    with torch.no_grad():
        assert_relative_close(member.model(runtime.inputs(image)), expected)

    model = timm.create_model(
        "bn_inception", pretrained=True, pretrained_cfg_overlay=dict(file=str(converted))
    ).eval()
    data = timm.data.resolve_data_config({}, model=model)
    mean, std = (torch.tensor(data[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        assert_relative_close(model((image / 255 - mean) / std), expected)


@pytest.mark.slow
def test_with_todays_pooling_the_logits_differ(reference, converted):
    """The pooling options matter: without them (bnrepro's defaults) the logits are not the
    port's, so the round trip above can fail."""
    ckpt = checkpoint.load(converted)
    kwargs = {**ckpt["arch"]["kwargs"], "pool_ceil_mode": False, "pool_count_include_pad": False}
    model = timm.create_model("bn_inception", **kwargs).eval()
    model.load_state_dict(ckpt["model"])
    image = photo_224()
    runtime = cpu_runtime(OmegaConf.create(ckpt["config"]["data"]))
    with torch.no_grad():
        ours = model(runtime.inputs(image))
    expected = reference_logits(reference, image)
    assert (ours - expected).abs().max() > 1e-2 * expected.abs().max()


@pytest.fixture(scope="module")
def imagenet_1000(tmp_path_factory):
    """An ImageNet layout with the 1000 wnids (one tiny train image each) and 2 val images."""
    root = tmp_path_factory.mktemp("imagenet")
    for i, wnid in enumerate(imagenet_classes()):
        write_jpeg(root / "train" / wnid / f"{wnid}_0.JPEG", (12, 10), i)
    for i, wnid in enumerate(imagenet_classes()[:2]):
        write_jpeg(root / "val" / wnid / f"val_{i}.JPEG", (300, 260), i, seed=7)
    return root


@pytest.mark.slow
def test_bnrepro_ensemble_evaluates_the_converted_file(
    reference, converted, imagenet_1000, tmp_path
):
    """bnrepro-ensemble checkpoints=converted.pt crops=1 data=imagenet: one file, no training
    state; each crop normalised as the weights need (the probabilities are the port's)."""
    cfg = compose("ensemble", [
        f"checkpoints={converted}", "crops=1", "data=imagenet", f"data.root={imagenet_1000}",
        "data.num_workers=0", "save_probs=true", f"out_dir={tmp_path}", "runtime.device=cpu",
        "runtime.progress=false", "pop_stats_batches=0",  # the port's own BN statistics
    ])  # fmt: skip
    results = ensemble.evaluate_ensemble(cfg, tmp_path / "run")
    assert results["images"] == 2 and len(results["rows"]) == 1
    member = results["members"][0]
    np.testing.assert_allclose(member["input_mean"], CAFFE_MEAN, rtol=1e-6)
    np.testing.assert_allclose(member["input_std"], CAFFE_STD, rtol=1e-6)
    probs = np.load(tmp_path / "run" / "probs.npz")["probs"][0]
    _, val_ds, _ = ensemble.build_datasets(cfg.data)
    for i in range(2):
        image = WholeImages(val_ds, None)[i][0]
        crop = cut_crops(image, 1, 224)
        expected = reference_logits(reference, crop).softmax(-1)[0]
        np.testing.assert_allclose(probs[i], expected.numpy(), rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_bnrepro_bn_stats_normalises_as_the_weights_need(converted, imagenet_1000, monkeypatch):
    """bnrepro-bn-stats rebuilds the converted network from its config (data.root given) and
    feeds it inputs normalised with the weights' mean/std."""
    runtimes = []
    build = engine.build_runtime
    monkeypatch.setattr(
        engine, "build_runtime", lambda *a, **k: runtimes.append(build(*a, **k)) or runtimes[-1]
    )
    bn_stats.main([str(converted), f"data.root={imagenet_1000}", "data.batch_size=2",
                   "data.num_workers=0", "runtime.device=cpu", "--batches", "1"])  # fmt: skip
    (runtime,) = runtimes
    expected = torch.tensor(CAFFE_MEAN).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(runtime.mean, expected)
    torch.testing.assert_close(runtime.std, torch.ones(1, 3, 1, 1))
