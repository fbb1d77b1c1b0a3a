"""BN-Inception against docs/paper.md section 1 (the Figure 5 table as resolved there)."""

import pytest
import timm
import torch
from torch import nn

import bnrepro  # noqa: F401  (registers bn_inception)
from bnrepro.model import INCEPTION_TABLE, BNInception, PerActivationBN

# Figure 5's "output size" column with the real post-stride sizes of 3c and 4e (docs/paper.md section 1).
EXPECTED_SHAPES_224 = {
    "stem": (192, 28, 28),
    "3a": (256, 28, 28),
    "3b": (320, 28, 28),
    "3c": (576, 14, 14),
    "4a": (576, 14, 14),
    "4b": (576, 14, 14),
    "4c": (608, 14, 14),
    "4d": (608, 14, 14),
    "4e": (1056, 7, 7),
    "5a": (1024, 7, 7),
    "5b": (1024, 7, 7),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def full_model() -> nn.Module:
    return timm.create_model("bn_inception", num_classes=1000).eval()


def test_registered_in_timm():
    assert "bn_inception" in timm.list_models("bn_inception")
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("bn_inception", pretrained=True)


def test_module_output_shapes_at_224(full_model):
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        h = full_model.stem(x)
        shapes = {"stem": tuple(h.shape[1:])}
        for name, block in full_model.blocks.named_children():
            h = block(h)
            shapes[name] = tuple(h.shape[1:])
        logits = full_model.forward_head(h)
    assert shapes == EXPECTED_SHAPES_224
    assert logits.shape == (1, 1000)
    assert [row[0] for row in INCEPTION_TABLE] == list(EXPECTED_SHAPES_224)[1:]


def test_stem_sizes_at_224(full_model):
    x = torch.zeros(1, 3, 224, 224)
    sizes = {}
    with torch.no_grad():
        for name, layer in full_model.stem.named_children():
            x = layer(x)
            sizes[name] = tuple(x.shape[1:])
    assert sizes["conv1"] == (64, 112, 112)
    assert sizes["pool1"] == (64, 56, 56)
    assert sizes["conv2"] == (192, 56, 56)
    assert sizes["pool2"] == (192, 28, 28)


def test_parameter_count_is_the_tables(full_model):
    # docs/paper.md section 1: the table read literally, BN gamma+beta, no conv bias, 1000-way classifier.
    assert n_params(full_model) == 11_285_224


def test_bn_free_network_differs_by_conv_biases_and_bn_parameters(full_model):
    plain = timm.create_model("bn_inception", num_classes=1000, batch_norm=False)
    convs = [m for m in full_model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in full_model.modules() if isinstance(m, nn.BatchNorm2d)]
    conv_biases = sum(m.out_channels for m in convs)
    bn_params = sum(2 * m.num_features for m in bns)
    assert len(bns) == len(convs)  # BN after every conv (section 3.2)
    assert all(m.bias is None for m in convs)  # BN's beta replaces the bias (section 3.2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert n_params(full_model) - n_params(plain) == bn_params - conv_biases


def test_bn_comes_before_every_nonlinearity():
    model = BNInception(num_classes=10, width_mult=0.125)
    blocks = [m for m in model.modules() if hasattr(m, "conv") and hasattr(m, "bn")]
    assert blocks
    for block in blocks:
        assert list(block.children()) == [block.conv, block.bn, block.act]
        assert isinstance(block.bn, nn.BatchNorm2d) and isinstance(block.act, nn.ReLU)


def test_sigmoid_replaces_every_relu():
    relu = BNInception(num_classes=10, width_mult=0.125)
    sig = BNInception(num_classes=10, width_mult=0.125, activation="sigmoid")
    n_relu = sum(isinstance(m, nn.ReLU) for m in relu.modules())
    assert n_relu == sum(isinstance(m, nn.Sigmoid) for m in sig.modules()) > 0
    assert not any(isinstance(m, nn.ReLU) for m in sig.modules())
    with pytest.raises(ValueError, match="activation"):
        BNInception(activation="tanh")


def test_lrn_at_googlenets_two_places():
    model = BNInception(num_classes=10, width_mult=0.125, lrn=True)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.LocalResponseNorm)]
    assert names == ["stem.lrn1", "stem.lrn2"]
    assert not any(
        isinstance(m, nn.LocalResponseNorm) for m in BNInception(width_mult=0.125).modules()
    )


def test_options_dropout_head_bn_separable_conv1():
    model = BNInception(num_classes=10, width_mult=0.25, dropout=0.1, head_bn=True)
    assert model.head_drop.p == 0.1
    assert isinstance(model.head_bn, nn.BatchNorm1d) and model.head_bn.num_features == 256
    sep = BNInception(num_classes=10, width_mult=0.25, separable_conv1=True)
    depthwise = sep.stem.conv1.depthwise
    assert depthwise.groups == 3 and depthwise.out_channels == 24  # depth multiplier 8
    assert sep(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_init_gain_scales_conv_weights():
    torch.manual_seed(0)
    a = BNInception(num_classes=10, width_mult=0.25)
    torch.manual_seed(0)
    b = BNInception(num_classes=10, width_mult=0.25, init_gain=1.5)
    wa, wb = a.stem.conv1.conv.weight, b.stem.conv1.conv.weight
    assert torch.allclose(wb, 1.5 * wa)


@pytest.mark.parametrize("kwargs", [{}, {"batch_norm": False, "lrn": True, "dropout": 0.4}])
def test_small_forward_backward_every_parameter_gets_a_gradient(kwargs):
    model = timm.create_model("bn_inception", num_classes=10, width_mult=0.125, **kwargs)
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_width_multiplier_and_single_channel_input():
    model = timm.create_model("bn_inception", num_classes=10, width_mult=0.25, in_chans=1)
    assert model.num_features == 256
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("side", [32, 65, 224])
def test_per_activation_bn_normalises_every_activation_of_the_last_modules(side):
    """The second reading of section 4.2.3: in the last N modules every BN normalises each
    (channel, row, column) over the batch, sized from img_size (for any input side), and the
    rest stays per feature map. Train mode: each activation's batch mean 0, variance 1."""
    kwargs = dict(num_classes=10, width_mult=0.125, per_activation_bn=2, img_size=side)
    model = BNInception(**kwargs).train()
    per_activation = {n for n, m in model.named_modules() if isinstance(m, PerActivationBN)}
    assert per_activation and all(
        n.startswith(("blocks.5a.", "blocks.5b.")) for n in per_activation
    )
    assert all(not isinstance(m, nn.BatchNorm2d) for n, m in model.named_modules()
               if n.startswith(("blocks.5a.", "blocks.5b.")))  # fmt: skip
    seen = []
    bn = getattr(model.blocks, "5b").branch1x1.bn
    bn.register_forward_hook(lambda _m, i, out: seen.append((i[0].clone(), out.clone())))
    model(torch.randn(8, 3, side, side))
    x, out = seen[0]  # before the in-place ReLU; gamma 1 and beta 0 at initialisation
    assert out.shape[2:] == tuple(bn.shape[1:]) == (getattr(model.blocks, "5b").side,) * 2
    eps = bn.bn.eps  # each (channel, row, column) over the batch of 8, nothing shared
    expected = (x - x.mean(0)) / (x.var(0, unbiased=False) + eps).sqrt()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    model.eval()(torch.randn(1, 3, side, side))  # evaluation at the size it was built for
    with pytest.raises(ValueError, match="per-activation BN built for"):
        model(torch.randn(1, 3, side + 32, side + 32))
    with pytest.raises(ValueError, match="needs batch_norm=True"):
        BNInception(**kwargs, batch_norm=False)


def test_per_activation_bn_takes_algorithm_2():
    """Algorithm 2 finds its BatchNorm1d like any BN: population statistics per activation."""
    from bnrepro.evaluation.bn_stats import recompute_bn_stats

    torch.manual_seed(0)
    model = BNInception(num_classes=10, width_mult=0.125, per_activation_bn=1, img_size=64)
    batches = [torch.randn(4, 3, 64, 64) for _ in range(3)]
    recompute_bn_stats(model, iter(batches), num_batches=3)
    bn = getattr(model.blocks, "5b").branch1x1.bn.bn
    assert bn.momentum == 0.1 and bn.running_mean.shape == (bn.num_features,)
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
