"""BN-Inception: the network of the paper's appendix (Figure 5), registered in timm as `bn_inception`.

GoogLeNet with every 5x5 conv replaced by two 3x3 convs, three 28x28 modules, stride-2 modules (3c, 4e)
instead of pooling between stages, average or max pooling inside modules. docs/paper.md section 1 resolves
the printed table's defects; this file follows that resolution:
- 4c/4d output 608 channels (their columns), so 4e outputs 1056;
- conv1 is a plain 7x7 conv by default (the separable form is `separable_conv1=True`);
- with BN, convs have no bias (BN's beta replaces it, paper section 3.2) and BN comes before
  every nonlinearity; without BN, convs get a bias, as the original Inception.

    >>> import timm, bnrepro
    >>> model = timm.create_model("bn_inception", num_classes=1000)  # 11,285,224 parameters
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models import register_model
from torch import nn

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

ACTIVATIONS = {"relu": partial(nn.ReLU, inplace=True), "sigmoid": nn.Sigmoid}


class ConvBlock(nn.Sequential):
    """conv -> BN -> nonlinearity (paper section 3.2: x = Wu, BN(x), g(.)); conv has a bias only without BN."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        *,
        batch_norm: bool,
        act_layer: type[nn.Module],
        bn_eps: float,
        bn_momentum: float,
    ) -> None:
        conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, bias=not batch_norm
        )
        norm = (
            nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum)
            if batch_norm
            else nn.Identity()
        )
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
    ) -> None:
        super().__init__()
        self.branch1x1 = conv_block(in_chs, n1x1, 1) if n1x1 else None
        self.branch3x3 = nn.Sequential(
            conv_block(in_chs, n3x3red, 1), conv_block(n3x3red, n3x3, 3, stride)
        )
        self.branch_dbl3x3 = nn.Sequential(
            conv_block(in_chs, ndbl_red, 1),
            conv_block(ndbl_red, ndbl, 3),
            conv_block(ndbl, ndbl, 3, stride),
        )
        if pool == "max":
            pool_layer = nn.MaxPool2d(3, stride, padding=1)
        else:
            pool_layer = nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)
        proj = conv_block(in_chs, pool_proj, 1) if pool_proj else nn.Identity()
        self.branch_pool = nn.Sequential(pool_layer, proj)
        self.out_chs = n1x1 + n3x3 + ndbl + (pool_proj or in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch3x3(x), self.branch_dbl3x3(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            branches.insert(0, self.branch1x1(x))
        return torch.cat(branches, dim=1)


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult)) if channels else 0


class BNInception(nn.Module):
    """Figure 5's network. Shapes below are for a 224x224 input; any size >= 32 works (global pool).

    Args:
        num_classes: classifier outputs (1000 for ImageNet).
        in_chans: input channels.
        batch_norm: BN before every nonlinearity (section 3.2); False gives the original Inception.
        activation: "relu" or "sigmoid" (BN-x5-Sigmoid, section 4.2.2).
        lrn: local response normalization at GoogLeNet's two places (after pool1, after conv2).
        dropout: dropout before the classifier (Inception: 0.4, section 4.2.3).
        separable_conv1: conv1 as Figure 5 prints it (depthwise, multiplier 8) instead of plain 7x7.
        width_mult: scales every channel count, for small-scale runs.
        head_bn: per-activation BN on the classifier's input (the ensemble members, section 4.2.3).
        init_gain: multiplies the initial conv weights (the ensemble's "larger initial weights");
            with BN the output is unchanged, only the effective step size (lr / gain^2) is.
        bn_eps, bn_momentum: BN's epsilon and running-average momentum (docs/paper.md section 2, [ours]).
        lrn_size, lrn_alpha, lrn_beta: GoogLeNet's LRN parameters.
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
        separable_conv1: bool = False,
        width_mult: float = 1.0,
        head_bn: bool = False,
        init_gain: float = 1.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        lrn_size: int = 5,
        lrn_alpha: float = 1e-4,
        lrn_beta: float = 0.75,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.num_classes = num_classes
        self.activation = activation
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
        self.blocks = nn.Sequential()
        chs = w(192)
        for name, *cols, pool, proj, stride in INCEPTION_TABLE:
            n1, n3r, n3, ndr, nd = (w(c) for c in cols)
            block = InceptionModule(chs, n1, n3r, n3, ndr, nd, pool, w(proj), stride, conv_block)
            self.blocks.add_module(name, block)
            chs = block.out_chs
        self.num_features = chs  # 1024 at width 1

        # head: global average pool (7x7/1 at 224), [per-activation BN], dropout, linear
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_bn = (
            nn.BatchNorm1d(chs, eps=bn_eps, momentum=bn_momentum) if head_bn else nn.Identity()
        )
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(chs, num_classes)
        self._init_weights(init_gain)

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

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))  # N x 1024 x 7 x 7 at 224

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_bn(self.global_pool(x).flatten(1))  # N x 1024
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def bn_inception(pretrained: bool = False, **kwargs) -> BNInception:
    """BN-Inception, paper appendix Figure 5 (11,285,224 parameters with 1000 classes)."""
    if pretrained:
        raise ValueError("bn_inception has no pretrained weights: train one with bnrepro-train")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's, not ours
        kwargs.pop(key, None)
    return BNInception(**kwargs)
