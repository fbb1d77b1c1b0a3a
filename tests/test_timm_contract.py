"""`bn_inception` keeps timm's model contract: the project's own copy of the checks of timm's
tests/test_models.py that apply to a CNN classifier (each test names the one it mirrors), and
what timm's train.py / validate.py do with a model (create it, resolve its data config, load a
checkpoint). Sizes are small (64-128 px, width 1/4 where the full width is not the point)."""

import math

import pytest
import timm
import torch
from omegaconf import OmegaConf
from timm.models import get_notrace_functions, get_notrace_modules
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import bnrepro  # noqa: F401  (registers bn_inception)
from bnrepro import checkpoint
from bnrepro.config import CONFIG_DIR
from bnrepro.model import PretrainedWeightsError

NAME = "bn_inception"
SMALL = dict(width_mult=0.25)  # 1/4 width: the same topology, a sixteenth of the compute


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_every_parameter_has_a_gradient(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"


# ---------------------------------------------------------------- forward, backward, cfgs


def test_forward_and_grad_checkpointing():
    """timm test_model_forward: eval forward, no NaN; set_grad_checkpointing keeps the output."""
    model = timm.create_model(NAME, pretrained=False).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000) and not out.isnan().any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


def test_backward_with_grad_checkpointing_reaches_every_parameter():
    """timm test_model_backward (num_classes=42, batch 2, train mode), also under grad
    checkpointing (timm's set_grad_checkpointing + checkpoint_seq)."""
    for checkpointing in (False, True):
        model = timm.create_model(NAME, pretrained=False, num_classes=42, **SMALL).train()
        model.set_grad_checkpointing(checkpointing)
        out = model(torch.randn(2, 3, 64, 64))
        out.mean().backward()
        assert out.shape == (2, 42) and not out.isnan().any()
        assert_every_parameter_has_a_gradient(model)


def test_default_cfg_features_head_and_classifier_removal():
    """timm test_model_default_cfgs: forward_features at the cfg's input size gives pool_size x
    num_features; pre_logits gives head_hidden_size; reset_classifier(0) gives pooled features,
    reset_classifier(0, "") and create_model(num_classes=0, global_pool="") unpooled ones; the
    cfg's classifier and first_conv name real parameters."""
    model = timm.create_model(NAME, pretrained=False).eval()
    cfg = model.default_cfg
    assert model.num_classes == 1000 and model.num_features == model.head_hidden_size == 1024
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert features.shape == (1, model.num_features, *cfg["pool_size"])
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == pre.shape
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        unpooled = timm.create_model(NAME, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape
    state = timm.create_model(NAME, **SMALL).state_dict()
    assert f"{cfg['classifier']}.weight" in state
    assert f"{cfg['first_conv']}.weight" in state


def test_num_classes_zero_gives_pooled_features():
    """timm test_model_default_cfgs_non_std's create_model(num_classes=0): pooled features, not
    an (N, 0) tensor of logits."""
    model = timm.create_model(NAME, num_classes=0, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, model.num_features) == (2, 256)
    assert isinstance(model.get_classifier(), nn.Identity)


@pytest.mark.parametrize("pool, mult", [("avg", 1), ("max", 1), ("avgmax", 1), ("catavgmax", 2)])
def test_global_pool_options_and_reset_classifier_with_a_pool_type(pool, mult):
    """timm's create_classifier pool types, at creation and through reset_classifier(n, pool)."""
    x = torch.randn(2, 3, 64, 64)
    model = timm.create_model(NAME, global_pool=pool, num_classes=7, **SMALL).eval()
    assert model.fc.in_features == 256 * mult and model(x).shape == (2, 7)
    model = timm.create_model(NAME, num_classes=7, **SMALL).eval()
    model.reset_classifier(5, pool)
    assert model.num_classes == 5 and model(x).shape == (2, 5)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256 * mult)


def test_pooling_can_only_be_removed_with_the_classifier():
    """As timm's create_classifier: global_pool="" with a classifier is refused, by name."""
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model(NAME, global_pool="", num_classes=10, **SMALL)
    with pytest.raises(ValueError, match="head_bn"):
        timm.create_model(NAME, global_pool="", num_classes=0, head_bn=True, **SMALL)


def test_head_bn_follows_the_pool():
    """The ensemble members' head BN (section 4.2.3) normalises what the pool gives."""
    model = timm.create_model(NAME, head_bn=True, num_classes=3, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    model.reset_classifier(3, "catavgmax")
    assert model.head_bn.num_features == 512 and model(x).shape == (2, 3)
    model.reset_classifier(0, "")
    assert isinstance(model.head_bn, nn.Identity) and model(x).ndim == 4


# ---------------------------------------------------------------- features


def test_features_only_at_five_reductions():
    """timm test_model_forward_features: features_only=True, feature_info channels and
    reductions (2, 4, 8, 16, 32), output sizes <= ceil(size / reduction) + 1."""
    model = timm.create_model(NAME, features_only=True, **SMALL).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 48, 80, 152, 256]
    size = 96
    with torch.no_grad():
        outs = model(torch.randn(1, 3, size, size))
    assert len(outs) == 5
    info = model.feature_info
    for c, r, o in zip(info.channels(), info.reduction(), outs, strict=True):
        assert o.shape[1] == c and o.shape[0] == 1 and not o.isnan().any()
        assert o.shape[2] <= math.ceil(size / r) + 1 and o.shape[3] <= math.ceil(size / r) + 1
    picked = timm.create_model(NAME, features_only=True, out_indices=(1, 4), **SMALL)
    assert picked.feature_info.reduction() == [4, 32]


def test_features_only_at_224_are_the_tables_sizes():
    """At 224 px the five levels are 112, 56, 28, 14 and 7 px (Figure 5's output sizes)."""
    model = timm.create_model(NAME, features_only=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (64, 112, 112), (192, 56, 56), (320, 28, 28), (608, 14, 14), (1024, 7, 7),
    ]  # fmt: skip


def test_features_only_through_forward_intermediates():
    """timm test_model_forward_intermediates_features: features_only with feature_cls='getter'."""
    model = timm.create_model(NAME, features_only=True, feature_cls="getter", **SMALL).eval()
    size = 96
    with torch.no_grad():
        outs = model(torch.randn(1, 3, size, size))
    info = model.feature_info
    for c, r, o in zip(info.channels(), info.reduction(), outs, strict=True):
        assert o.shape[1] == c and o.shape[2] <= math.ceil(size / r) + 1


def test_forward_intermediates():
    """timm test_model_forward_intermediates: one tensor per feature_info level, the final output
    equal to forward_features, the same under grad checkpointing; indices, stop_early and
    prune_intermediate_layers as timm's CNNs define them."""
    model = timm.create_model(NAME, **SMALL).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert [o.shape[1] for o in intermediates] == info.channels()
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        again, _ = model.forward_intermediates(x)
        torch.testing.assert_close(again, final, rtol=1e-4, atol=1e-5)
        model.set_grad_checkpointing(False)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [o.shape[1] for o in last_two] == info.channels()[-2:]
        early = model.forward_intermediates(
            x, indices=[1], stop_early=True, intermediates_only=True
        )
        torch.testing.assert_close(early[0], intermediates[1])
        model.prune_intermediate_layers(indices=[2])
        assert list(model.blocks.named_children())[-1][0] == "3b"
        assert model(x).shape == intermediates[2].shape  # no head left: the 3b features


# ---------------------------------------------------------------- TorchScript and FX


def _fx_model(model: nn.Module) -> nn.Module:
    """The model's last node through torchvision's FX feature extraction, traced with timm's
    leaf modules and functions (as timm's tests build their FX models)."""
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(),
        autowrap_functions=get_notrace_functions(),
        param_shapes_constant=True,
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    )


def _only(outputs: dict) -> torch.Tensor:
    (out,) = outputs.values()
    return out


@pytest.mark.slow
def test_torchscript_full_model():
    """timm test_model_forward_torchscript (set_scriptable, torch.jit.script, forward)."""
    with timm.set_scriptable(True):
        model = timm.create_model(NAME, pretrained=False).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = scripted(x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert out.shape == (1, 1000) and not out.isnan().any()


def test_fx_forward_equals_the_module():
    """timm test_model_forward_fx: the FX graph's output equals the module's, exactly."""
    model = timm.create_model(NAME, **SMALL).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        expected = model(x)
        out = _only(_fx_model(model)(x))
    assert torch.equal(out, expected)


def _fx_forward_backward(model, side: int):
    """timm's FX backward check on a 42-class model: its FX graph, a batch of 2 at side x side,
    a finite (2, 42) output, a gradient for every parameter. Returns the traced model."""
    fx = _fx_model(model)
    out = _only(fx(torch.randn(2, 3, side, side)))
    out.mean().backward()
    assert out.shape == (2, 42) and not out.isnan().any()
    assert_every_parameter_has_a_gradient(fx)
    return fx


def test_fx_backward_reaches_every_parameter():
    """timm test_model_backward_fx (num_classes=42, batch 2, train mode)."""
    model = timm.create_model(NAME, num_classes=42, **SMALL).train()
    fx = _fx_forward_backward(model, side=64)
    assert sum(p.grad.numel() for p in fx.parameters()) == n_params(model)


@pytest.mark.slow
def test_fx_then_torchscript():
    """timm test_model_forward_fx_torchscript: FX-trace, then script (needs real type objects in
    the annotations: no `from __future__ import annotations` in model.py)."""
    with timm.set_scriptable(True):
        model = timm.create_model(NAME, pretrained=False).eval()
    scripted = torch.jit.script(_fx_model(model))
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        out = _only(scripted(x))
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torchscript_of_fx_features():
    """timm test_model_forward_torchscript_with_features_fx: features_only with the FX feature
    extractor, scripted."""
    with timm.set_scriptable(True):
        model = timm.create_model(NAME, features_only=True, feature_cls="fx", **SMALL).eval()
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        outs = scripted(torch.randn(1, 3, 96, 96))
    assert isinstance(outs, list) and [o.shape[1] for o in outs] == [16, 48, 80, 152, 256]


# ---------------------------------------------------------------- what timm's scripts use


def test_group_matcher_and_no_weight_decay_for_timms_optimizers():
    """timm.optim's layer-wise decay groups (group_matcher: the stem, then one group per module)
    and param_groups_weight_decay's no_weight_decay, as create_optimizer_v2 calls them."""
    from timm.models import group_parameters
    from timm.optim import create_optimizer_v2
    from timm.optim._param_groups import param_groups_layer_decay

    model = timm.create_model(NAME, num_classes=10, **SMALL)
    assert model.no_weight_decay() == set()
    groups = group_parameters(model, model.group_matcher())  # {layer id: parameter names}
    first = [".".join(names[0].split(".")[:2]) for names in groups.values()]
    assert first[:3] == ["stem.conv1", "blocks.3a", "blocks.3b"]
    assert first[-2:] == ["blocks.5b", "fc.weight"] and len(groups) == 12  # + the head
    assert sum(len(names) for names in groups.values()) == len(list(model.parameters()))
    decay = param_groups_layer_decay(model, weight_decay=1e-4, layer_decay=0.5)
    assert len({g["lr_scale"] for g in decay}) == 12  # one scale per layer group
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, layer_decay=0.65)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_drop_rate_is_the_dropout_before_the_classifier():
    """timm's train.py always passes drop_rate (0 by default): it names the model's dropout."""
    assert timm.create_model(NAME, drop_rate=0.3, **SMALL).head_drop.p == 0.3
    assert timm.create_model(NAME, drop_rate=0.0, dropout=0.4, **SMALL).head_drop.p == 0.4
    assert timm.create_model(NAME, drop_rate=0.4, dropout=0.4, **SMALL).head_drop.p == 0.4
    with pytest.raises(ValueError, match="drop_rate"):
        timm.create_model(NAME, drop_rate=0.2, dropout=0.4, **SMALL)


def test_created_as_timms_train_py_creates_it(tmp_path):
    """timm's train.py: create_model with every keyword it passes (Nones included), then
    resolve_data_config; validate.py: the same with checkpoint_path."""
    kwargs = dict(
        pretrained=False, in_chans=None, num_classes=10, drop_rate=0.0, drop_path_rate=None,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
        checkpoint_path=None, **SMALL,
    )  # fmt: skip
    model = timm.create_model(NAME, **kwargs)
    assert model.num_classes == 10 and isinstance(model.global_pool.pool, nn.AdaptiveAvgPool2d)
    path = _bnrepro_checkpoint(tmp_path / "ckpt.pt", model)
    loaded = timm.create_model(NAME, **{**kwargs, "checkpoint_path": str(path)})
    assert _same_state(loaded, model)


def test_data_config_is_the_projects_imagenet_evaluation():
    """resolve_data_config gives what configs/data/imagenet.yaml trains and evaluates with:
    mean, std, crop_pct = eval_crop / eval_resize, 224 px, bilinear (bnrepro/data/transforms.py)."""
    data = OmegaConf.load(f"{CONFIG_DIR}/data/imagenet.yaml")
    model = timm.create_model(NAME, **SMALL)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == tuple(data.mean) and cfg["std"] == tuple(data.std)
    assert cfg["crop_pct"] == data.eval_crop / data.eval_resize
    assert cfg["input_size"] == (3, data.eval_crop, data.eval_crop)
    assert data.train_crop == data.eval_crop
    assert cfg["interpolation"] == "bilinear"


def test_save_for_hf_writes_config_and_weights(tmp_path):
    """timm._hub.save_for_hf (push_to_hub's writer, no network): config.json with the
    pretrained_cfg, and weights that load back."""
    from timm.models._hub import save_for_hf

    model = timm.create_model(NAME, num_classes=10, **SMALL)
    save_for_hf(model, tmp_path, model_args=dict(num_classes=10, **SMALL))
    config = (tmp_path / "config.json").read_text()
    assert '"architecture": "bn_inception"' in config and '"mean"' in config
    weights = list(tmp_path.glob("*.safetensors")) or list(tmp_path.glob("*.bin"))
    assert weights


# ---------------------------------------------------------------- checkpoints and weights


def _bnrepro_checkpoint(path, model: nn.Module, **arch_kwargs):
    """A checkpoint of checkpoint.assemble's format with real optimizer/scheduler/RNG state."""
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = checkpoint.assemble(
        model, opt, CosineLRScheduler(opt, t_initial=10), torch.amp.GradScaler("cpu", enabled=False),
        checkpoint.Progress(), arch={"name": NAME, "kwargs": arch_kwargs},
        classes=[str(i) for i in range(model.num_classes)], config={}, wandb_run_id=None,
    )  # fmt: skip
    checkpoint.save(path, ckpt)
    return path


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bnrepro_checkpoint_loads_with_checkpoint_path(tmp_path):
    """timm.create_model(..., checkpoint_path=a bnrepro checkpoint): timm's load_checkpoint reads
    its "model" state dict (weights_only)."""
    torch.manual_seed(1)
    trained = timm.create_model(NAME, num_classes=10, batch_norm=False, lrn=True, **SMALL)
    path = _bnrepro_checkpoint(tmp_path / "ckpt.pt", trained)
    loaded = timm.create_model(
        NAME, num_classes=10, batch_norm=False, lrn=True, checkpoint_path=str(path), **SMALL
    )
    assert _same_state(loaded, trained)


def test_pretrained_without_a_file_names_the_converter():
    with pytest.raises(PretrainedWeightsError, match="bnrepro-convert .*pretrained_cfg_overlay"):
        timm.create_model(NAME, pretrained=True)


def test_pretrained_from_a_file_takes_its_architecture_and_normalisation(tmp_path):
    """pretrained=True with pretrained_cfg_overlay=dict(file=...): the weights, the file's model
    keyword arguments and its data mean/std (pretrained_cfg, so resolve_data_config) are used;
    timm adapts the classifier to another num_classes."""
    arch = dict(SMALL, bn_eps=1e-5, pool_ceil_mode=True, pool_count_include_pad=True)
    torch.manual_seed(2)
    source = timm.create_model(NAME, num_classes=10, **arch)
    path = _bnrepro_checkpoint(tmp_path / "w.pt", source, num_classes=10, in_chans=3, **arch)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"] = {"data": {"mean": [0.5, 0.4, 0.3], "std": [0.01, 0.02, 0.03]}}
    torch.save(ckpt, path)

    model = timm.create_model(
        NAME, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert _same_state(model, source)
    assert model.stem.conv1.bn.eps == 1e-5
    assert model.blocks[2].branch_pool[0].ceil_mode  # 3c's stride-2 pool, Caffe's way
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.4, 0.3) and cfg["std"] == (0.01, 0.02, 0.03)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x))
    head_less = timm.create_model(
        NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert head_less.num_classes == 0


def test_pretrained_from_a_file_evaluates_at_its_own_resolution(tmp_path):
    """Issue 24: a checkpoint loaded with pretrained_cfg_overlay=dict(file=...) kept timm's
    224 px and crop 0.875 whatever it was trained at, so timm's validate.py evaluated a 32 px
    checkpoint at 224 px. Its pretrained_cfg now holds the checkpoint's data.eval_crop and
    eval_crop / eval_resize, which resolve_data_config (validate.py's call) returns; an explicit
    --img-size still wins."""
    torch.manual_seed(3)
    source = timm.create_model(NAME, num_classes=10, **SMALL)
    path = _bnrepro_checkpoint(tmp_path / "w.pt", source, num_classes=10, in_chans=3, **SMALL)
    ckpt = torch.load(path, weights_only=True)
    data = {"eval_crop": 32, "eval_resize": 36, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    ckpt["config"] = {"data": data}
    torch.save(ckpt, path)

    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    cfg = timm.data.resolve_data_config({}, model=model)  # what validate.py does
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 32 / 36
    assert cfg["mean"] == (0.5, 0.4, 0.3)
    transform = timm.data.create_transform(**cfg)  # validate.py's eval transform: 36 then 32
    from PIL import Image

    assert transform(Image.new("RGB", (80, 60))).shape == (3, 32, 32)
    asked = timm.data.resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    assert asked["input_size"] == (3, 64, 64)  # --img-size 64 wins


PER_ACTIVATION = dict(width_mult=0.25, per_activation_bn=2, img_size=96)  # 5a, 5b at 3 x 3


def test_per_activation_bn_keeps_the_contract():
    """The members' per-activation BN (model.per_activation_bn) under timm's checks: forward
    and backward, FX (its shape check is a leaf: timm's notrace registry), features_only,
    forward_intermediates, grad checkpointing."""
    model = timm.create_model(NAME, num_classes=42, **PER_ACTIVATION).train()
    _fx_forward_backward(model, side=96)
    model.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        assert torch.equal(_only(_fx_model(model)(x)), model(x))
        features = timm.create_model(NAME, features_only=True, **PER_ACTIVATION).eval()(x)
        assert [f.shape[-1] for f in features] == [48, 24, 12, 6, 3]
        final, levels = model.forward_intermediates(x)
        assert final.shape == (1, 256, 3, 3) and len(levels) == 5
    model.set_grad_checkpointing()
    model.train()(torch.randn(2, 3, 96, 96)).mean().backward()


@pytest.mark.slow
def test_per_activation_bn_scripts_with_and_without_fx():
    with timm.set_scriptable(True):
        model = timm.create_model(NAME, **PER_ACTIVATION).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=1e-4, atol=1e-5)
        scripted = torch.jit.script(_fx_model(model))
        torch.testing.assert_close(_only(scripted(x)), expected, rtol=1e-4, atol=1e-5)
