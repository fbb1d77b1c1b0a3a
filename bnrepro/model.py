"""BN-Inception: the network of the paper's appendix (Figure 5), registered in timm as `bn_inception`.

GoogLeNet with every 5x5 conv replaced by two 3x3 convs, three 28x28 modules, stride-2 modules (3c, 4e)
instead of pooling between stages, average or max pooling inside modules. docs/paper.md section 1 resolves
the printed table's defects; this file follows that resolution:
- 4c/4d output 608 channels (their columns), so 4e outputs 1056;
- conv1 is a plain 7x7 conv by default (the separable form is `separable_conv1=True`);
- with BN, convs have no bias (BN's beta replaces it, paper section 3.2) and BN comes before
  every nonlinearity; without BN, convs get a bias, as the original Inception.

Built as timm builds its own families (build_model_with_cfg, a pretrained_cfg, features_only,
forward_intermediates, reset_classifier with a pool type, grad checkpointing), so timm's train.py,
validate.py and feature extractors use it like any timm model:

    >>> import timm, bnrepro
    >>> model = timm.create_model("bn_inception", num_classes=1000)  # 11,285,224 parameters
    >>> backbone = timm.create_model("bn_inception", features_only=True)  # reductions 2..32

No weights are downloadable: `pretrained=True` needs a file, a bnrepro checkpoint (trained, or
the public Caffe BN-Inception converted by `bnrepro-convert`, bnrepro/weights.py):

    >>> timm.create_model("bn_inception", pretrained=True,
    ...                   pretrained_cfg_overlay=dict(file="converted.pt"))

No `from __future__ import annotations` here: TorchScript after FX needs real type objects.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn
from torch.utils.checkpoint import checkpoint

from bnrepro.errors import UserError

# Figure 5, one row per inception module:
# (name, #1x1, #3x3 reduce, #3x3, dbl #3x3 reduce, dbl #3x3, pool, pool proj, stride)
# pool proj 0 with stride 2 = "max + pass through"; #1x1 0 = no 1x1 branch.
INCEPTION_TABLE = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)

# The five feature levels (features_only, forward_intermediates): the last layer at each
# reduction of a 224 input (112, 56, 28, 14, 7).
FEATURE_MODULES = ("stem.conv1", "stem.lrn2", "blocks.3b", "blocks.4d", "blocks.5b")
FEATURE_REDUCTIONS = (2, 4, 8, 16, 32)

ACTIVATIONS = {"relu": partial(nn.ReLU, inplace=True), "sigmoid": nn.Sigmoid}

# How this project trains and evaluates on ImageNet (configs/data/imagenet.yaml: mean, std,
# train_crop; eval_crop / eval_resize = 224 / 256; bilinear resize, bnrepro/data/transforms.py).
# tests/test_timm_contract.py checks they agree with the YAML.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(UserError, ValueError):
    """pretrained=True without a file of weights; the message names the converter."""


@register_notrace_module  # a leaf for FX (timm's feature extraction): its shape check branches
class PerActivationBN(nn.Module):
    """BN of every activation on its own: each (channel, row, column) normalised over the batch,
    with its own gamma and beta, instead of one statistic per feature map over the batch and all
    locations (section 3.2). One reading of section 4.2.3's "non-convolutional, per-activation
    Batch Normalization" in the last hidden layers (`per_activation_bn`). A BatchNorm1d over
    the flattened C x H x W activations, so Algorithm 2, SyncBN and state dicts treat it as any
    BN; built for one spatial size, it refuses another."""

    def __init__(self, channels: int, side: int, *, eps: float, momentum: float) -> None:
        super().__init__()
        self.shape = [channels, side, side]
        self.bn = nn.BatchNorm1d(channels * side * side, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if list(x.shape[1:]) != self.shape:
            raise ValueError(
                f"per-activation BN built for {self.shape} activations, got {list(x.shape[1:])}: "
                "feed images of the size the network was built for (img_size, its training crop)"
            )
        return self.bn(x.flatten(1)).view_as(x)


class ConvBlock(nn.Sequential):
    """conv -> BN -> nonlinearity (paper section 3.2: x = Wu, BN(x), g(.)); conv has a bias only
    without BN. With `side` (the output's spatial side) the BN is per activation."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        *,
        batch_norm: bool,
        act_layer: Callable[[], nn.Module],
        bn_eps: float,
        bn_momentum: float,
        side: int | None = None,
    ) -> None:
        conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, bias=not batch_norm
        )
        if not batch_norm:
            norm = nn.Identity()
        elif side is None:
            norm = nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum)
        else:
            norm = PerActivationBN(out_chs, side, eps=bn_eps, momentum=bn_momentum)
        super().__init__()
        self.conv, self.bn, self.act = conv, norm, act_layer()


class SeparableConv1(nn.Module):
    """Figure 5's conv1 as printed: 7x7 depthwise with depth multiplier 8, then a 1x1 projection."""

    def __init__(self, in_chs: int, out_chs: int, conv_block: partial) -> None:
        super().__init__()
        mid = in_chs * 8
        self.depthwise = nn.Conv2d(in_chs, mid, 7, 2, padding=3, groups=in_chs, bias=False)
        self.pointwise = conv_block(mid, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool (-> 1x1 proj).

    With stride 2 (3c, 4e) the last conv of each 3x3 branch and the pool stride, the 1x1 branch is
    absent and the pool branch passes its input through (Figure 5, "max + pass through").
    pool_ceil_mode: the stride-2 pool is 3x3 without padding in ceil mode (Caffe's), instead of
    padding 1; pool_count_include_pad: average pools divide by 9 at the border too (Caffe's).
    side: the input's spatial side when every BN of the module is per activation (else None).
    """

    def __init__(
        self,
        in_chs: int,
        n1x1: int,
        n3x3red: int,
        n3x3: int,
        ndbl_red: int,
        ndbl: int,
        pool: str,
        pool_proj: int,
        stride: int,
        conv_block: partial,
        pool_ceil_mode: bool = False,
        pool_count_include_pad: bool = False,
        side: int | None = None,
    ) -> None:
        super().__init__()
        self.side = side
        if side is not None:  # per-activation BN: each conv's output side
            out_side = strided_side(side, stride)
            same, strided = partial(conv_block, side=side), partial(conv_block, side=out_side)
        else:
            same = strided = conv_block
        self.branch1x1 = same(in_chs, n1x1, 1) if n1x1 else None
        self.branch3x3 = nn.Sequential(same(in_chs, n3x3red, 1), strided(n3x3red, n3x3, 3, stride))
        self.branch_dbl3x3 = nn.Sequential(
            same(in_chs, ndbl_red, 1),
            same(ndbl_red, ndbl, 3),
            strided(ndbl, ndbl, 3, stride),
        )
        caffe_stride = pool_ceil_mode and stride > 1
        padding = 0 if caffe_stride else 1
        if pool == "max":
            pool_layer = nn.MaxPool2d(3, stride, padding=padding, ceil_mode=caffe_stride)
        else:
            pool_layer = nn.AvgPool2d(
                3,
                stride,
                padding=padding,
                ceil_mode=caffe_stride,
                count_include_pad=pool_count_include_pad,
            )
        proj = same(in_chs, pool_proj, 1) if pool_proj else nn.Identity()
        self.branch_pool = nn.Sequential(pool_layer, proj)
        self.out_chs = n1x1 + n3x3 + ndbl + (pool_proj or in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch3x3(x), self.branch_dbl3x3(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            branches.insert(0, self.branch1x1(x))
        return torch.cat(branches, dim=1)


def strided_side(side: int, stride: int) -> int:
    """The output side of a 3x3 conv with padding 1 (and of conv1's 7x7 with padding 3)."""
    return (side - 1) // stride + 1


def _ceil_pool_side(side: int) -> int:
    """The output side of the stem's 3x3/2 max pools (no padding, ceil mode)."""
    return -(-(side - 3) // 2) + 1


def _pool(pool_type: str) -> SelectAdaptivePool2d:
    """timm's global pool, flattened to N x C unless there is none (N x C x H x W)."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult)) if channels else 0


class BNInception(nn.Module):
    """Figure 5's network. Shapes below are for a 224x224 input; any size >= 32 works (global pool).

    Args:
        num_classes: classifier outputs (1000 for ImageNet); 0 = no classifier (pooled features).
        in_chans: input channels.
        batch_norm: BN before every nonlinearity (section 3.2); False gives the original Inception.
        activation: "relu" or "sigmoid" (BN-x5-Sigmoid, section 4.2.2).
        lrn: local response normalization at GoogLeNet's two places (after pool1, after conv2).
        dropout: dropout before the classifier (Inception: 0.4, section 4.2.3).
        drop_rate: timm's name for `dropout` (timm's train.py always passes it, 0 by default):
            used when given and non-zero; it must then agree with a non-zero `dropout`.
        global_pool: timm's pool type ("avg", "max", "avgmax", "catavgmax"; "" = none, only
            without a classifier).
        separable_conv1: conv1 as Figure 5 prints it (depthwise, multiplier 8) instead of plain 7x7.
        width_mult: scales every channel count, for small-scale runs.
        head_bn: per-activation BN on the classifier's input, the pooled features (one reading
            of the ensemble members' change, section 4.2.3).
        per_activation_bn: the last N inception modules normalise each activation (channel and
            location) over the batch instead of each feature map (PerActivationBN): the other
            reading of section 4.2.3's change. Needs batch_norm; 0 = none.
        img_size: the input side the per-activation BN layers are built for (their activations'
            spatial size follows from it); only with per_activation_bn.
        init_gain: multiplies the initial conv weights (the ensemble's "larger initial weights");
            with BN the output is unchanged, only the effective step size (lr / gain^2) is.
        bn_eps, bn_momentum: BN's epsilon and running-average momentum (docs/paper.md section 2, [ours]).
        lrn_size, lrn_alpha, lrn_beta: GoogLeNet's LRN parameters.
        pool_ceil_mode: 3c/4e's stride-2 pool without padding, in ceil mode, as the Caffe
            BN-Inception (the public weights, bnrepro/weights.py); needs even 28/14 px inputs to
            3c/4e (224 px images). Default: padding 1, aligned with the stride-2 convs.
        pool_count_include_pad: the modules' average pools count the zero padding (Caffe's);
            default: they average the pixels inside the image only.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        batch_norm: bool = True,
        activation: str = "relu",
        lrn: bool = False,
        dropout: float = 0.0,
        drop_rate: float | None = None,
        global_pool: str = "avg",
        separable_conv1: bool = False,
        width_mult: float = 1.0,
        head_bn: bool = False,
        per_activation_bn: int = 0,
        img_size: int = 224,
        init_gain: float = 1.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        lrn_size: int = 5,
        lrn_alpha: float = 1e-4,
        lrn_beta: float = 0.75,
        pool_ceil_mode: bool = False,
        pool_count_include_pad: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if drop_rate:
            if dropout and dropout != drop_rate:
                raise ValueError(
                    f"dropout={dropout} and drop_rate={drop_rate} name the same dropout before "
                    "the classifier: give one of them"
                )
            dropout = drop_rate
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.activation = activation
        self.drop_rate = dropout
        self.grad_checkpointing = False
        act_layer = ACTIVATIONS[activation]
        conv_block = partial(
            ConvBlock,
            batch_norm=batch_norm,
            act_layer=act_layer,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
        )
        w = partial(_scaled, width_mult=width_mult)

        def make_lrn() -> nn.Module:
            return nn.LocalResponseNorm(lrn_size, lrn_alpha, lrn_beta) if lrn else nn.Identity()

        # stem: 224 -> 112 -> 56 -> 56 -> 28
        if separable_conv1:
            conv1 = SeparableConv1(in_chans, w(64), conv_block)
        else:
            conv1 = conv_block(in_chans, w(64), 7, 2)
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", conv1)  # 112x112x64
        self.stem.add_module("pool1", nn.MaxPool2d(3, 2, ceil_mode=True))  # 56x56x64
        self.stem.add_module("lrn1", make_lrn())
        self.stem.add_module("conv2_reduce", conv_block(w(64), w(64), 1))
        self.stem.add_module("conv2", conv_block(w(64), w(192), 3))  # 56x56x192
        self.stem.add_module("lrn2", make_lrn())
        self.stem.add_module("pool2", nn.MaxPool2d(3, 2, ceil_mode=True))  # 28x28x192

        # inception modules: 3a-3c (28 -> 14), 4a-4e (14 -> 7), 5a-5b (7)
        if not 0 <= per_activation_bn <= len(INCEPTION_TABLE):
            raise ValueError(f"per_activation_bn counts inception modules: 0-{len(INCEPTION_TABLE)}, "
                             f"got {per_activation_bn}")  # fmt: skip
        if per_activation_bn and not batch_norm:
            raise ValueError("per_activation_bn replaces BN layers: it needs batch_norm=True")
        self.blocks = nn.Sequential()
        chs = w(192)
        side = _ceil_pool_side(_ceil_pool_side(strided_side(img_size, 2)))  # the stem's output
        channels = {"stem.conv1": w(64), "stem.lrn2": w(192)}
        first_per_activation = len(INCEPTION_TABLE) - per_activation_bn
        for i, (name, *cols, pool, proj, stride) in enumerate(INCEPTION_TABLE):
            n1, n3r, n3, ndr, nd = (w(c) for c in cols)
            block = InceptionModule(
                chs, n1, n3r, n3, ndr, nd, pool, w(proj), stride, conv_block,
                pool_ceil_mode=pool_ceil_mode, pool_count_include_pad=pool_count_include_pad,
                side=side if i >= first_per_activation else None,
            )  # fmt: skip
            self.blocks.add_module(name, block)
            chs = channels[f"blocks.{name}"] = block.out_chs
            side = strided_side(side, stride)
        self.num_features = self.head_hidden_size = chs  # 1024 at width 1
        self.feature_info = [
            dict(num_chs=channels[m], reduction=r, module=m)
            for m, r in zip(FEATURE_MODULES, FEATURE_REDUCTIONS, strict=True)
        ]

        # head: global average pool (7x7/1 at 224), [per-activation BN], dropout, linear
        self._head_bn = head_bn
        self._bn_args = dict(eps=bn_eps, momentum=bn_momentum)
        if head_bn and not global_pool:
            raise ValueError("head_bn normalises the pooled features: it needs a global_pool")
        self.global_pool = _pool(global_pool)
        pooled = chs * self.global_pool.feat_mult()
        self.head_bn = nn.BatchNorm1d(pooled, **self._bn_args) if head_bn else nn.Identity()
        self.head_drop = nn.Dropout(dropout)
        self.fc = self._classifier(num_classes, global_pool)
        self._init_weights(init_gain)

    def _classifier(self, num_classes: int, global_pool: str) -> nn.Module:
        if num_classes and not global_pool:
            raise ValueError("global_pool='' (no pooling) needs num_classes=0 (no classifier)")
        pooled = self.num_features * self.global_pool.feat_mult()
        return nn.Linear(pooled, num_classes) if num_classes else nn.Identity()

    def _init_weights(self, gain: float) -> None:
        # [ours] He-normal (fan_in), as TF-slim's inception_v2 arg scope; the paper does not say.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                m.weight.data.mul_(gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # ---- timm's model interface --------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise LR decay: the stem, then one group per module."""
        names = [row[0] for row in INCEPTION_TABLE]
        return dict(
            stem=r"^stem\.",
            blocks=[(rf"^blocks\.{name}\.", (i,)) for i, name in enumerate(names)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # timm already spares 1-d parameters (BN, biases) from weight decay

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier of num_classes (0: none); global_pool changes the pool ("" = none)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _pool(global_pool)
            pooled = self.num_features * self.global_pool.feat_mult()
            if not global_pool:  # no pooled features left to normalise: the head BN goes too
                self.head_bn = nn.Identity()
            elif self._head_bn and self.head_bn.num_features != pooled:
                self.head_bn = nn.BatchNorm1d(pooled, **self._bn_args)
        self.fc = self._classifier(num_classes, self.global_pool.pool_type)

    def _layers(self) -> list[tuple[str, nn.Module]]:
        """Stem layers then modules, in order, with their feature_info names."""
        return [(f"stem.{n}", m) for n, m in self.stem.named_children()] + [
            (f"blocks.{n}", m) for n, m in self.blocks.named_children()
        ]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The features at the feature_info levels (indices: the last n if int, all if None);
        with intermediates_only=False also forward_features' output."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        levels = [info["module"] for info in self.feature_info]
        intermediates = []
        for name, layer in self._layers():
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if name in levels:
                level = levels.index(name)
                if level in take_indices:
                    intermediates.append(x)
                if stop_early and level >= max_index:
                    break
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last feature level asked for (and the head)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self.feature_info[max_index]["module"]
        part, name = last.split(".")
        if part == "stem":
            keep = list(dict(self.stem.named_children())).index(name) + 1
            self.stem = self.stem[:keep]
            self.blocks = nn.Sequential()
        else:
            keep = list(dict(self.blocks.named_children())).index(name) + 1
            self.blocks = self.blocks[:keep]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # ---- forward ------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # N x 192 x 28 x 28 at 224
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)  # N x 1024 x 7 x 7 at 224

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_bn(self.global_pool(x))  # N x 1024 (unpooled with global_pool="")
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**overrides: Any) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 224 / 256,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "fc",
        "license": "mit",
        **overrides,
    }


# No weights to download: train them (bnrepro-train) or convert the public Caffe ones
# (bnrepro-convert), then pass the file (see _create).
default_cfgs = generate_default_cfgs({"bn_inception.bnrepro": _cfg()})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> BNInception:
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        if not overlay.get("file"):
            raise PretrainedWeightsError(
                f"{variant} has no pretrained weights to download: train one (bnrepro-train) or "
                "convert the public Caffe BN-Inception (bnrepro-convert "
                "bn_inception-52deb4733.pth converted.pt), then pass "
                "pretrained_cfg_overlay=dict(file='converted.pt')"
            )
        # The file's architecture, normalisation and evaluation size (what a converted
        # checkpoint needs: Caffe pooling, BN eps, BGR mean) unless the caller sets them.
        arch_kwargs, saved_cfg = _saved_model_info(overlay["file"])
        kwargs = {**arch_kwargs, **kwargs}
        overlay = {**saved_cfg, **overlay}
    model = build_model_with_cfg(
        BNInception,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )
    if getattr(model, "pretrained_cfg", None) and model.pretrained_cfg.get("state_dict"):
        model.pretrained_cfg["state_dict"] = None  # loaded: the config keeps no copy of weights
    return model


def _saved_model_info(path: str) -> tuple[dict, dict]:
    """(model keyword arguments, pretrained_cfg entries) of a bnrepro checkpoint: its classes,
    channels, mean/std, evaluation size and crop, and its weights (so timm does not read the file
    a second time); ({}, {}) for another file (timm loads it as a plain state dict)."""
    from bnrepro import checkpoint

    ckpt = checkpoint.read_if_checkpoint(path)
    if ckpt is None:
        return {}, {}
    saved = dict(ckpt["arch"].get("kwargs", {}))
    # The caller's num_classes / in_chans: timm adapts the classifier and first conv when they
    # differ from the pretrained_cfg's, which are the file's.
    cfg = {"num_classes": saved.pop("num_classes", 1000), "state_dict": ckpt["model"]}
    data = (ckpt.get("config") or {}).get("data") or {}
    side = data.get("eval_crop", _cfg()["input_size"][1])
    cfg["input_size"] = (saved.pop("in_chans", 3), side, side)  # the resolution it evaluates at
    if "eval_resize" in data:
        cfg["crop_pct"] = data["eval_crop"] / data["eval_resize"]
    cfg.update({k: tuple(data[k]) for k in ("mean", "std") if k in data})
    return saved, cfg


@register_model
def bn_inception(pretrained: bool = False, **kwargs: Any) -> BNInception:
    """BN-Inception, paper appendix Figure 5 (11,285,224 parameters with 1000 classes)."""
    return _create("bn_inception", pretrained, **kwargs)
