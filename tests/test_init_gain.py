"""model.init_gain (the ensemble's "larger initial weights", section 4.2.3) in a BN network: every
scaled conv is followed by BN, so the network computes the same function at any gain, in training
mode and with population statistics; what the gain changes is the optimisation: SGD on weights
g x w takes steps of lr / g^2 relative to w (with L2 of g^2 x wd), as the tests below check."""

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from bnrepro.builders import build_optimizer
from bnrepro.evaluation.bn_stats import recompute_bn_stats

GAIN = 1.5
KWARGS = dict(num_classes=10, width_mult=0.125, batch_norm=True, dropout=0.0)
TIGHT = dict(bn_eps=1e-12)  # BN's epsilon is the only term that sees the weights' scale


def pair(**kwargs) -> tuple[nn.Module, nn.Module]:
    models = []
    for gain in (1.0, GAIN):
        torch.manual_seed(0)
        models.append(timm.create_model("bn_inception", init_gain=gain, **KWARGS, **kwargs))
    return models[0], models[1]


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 32, 32, generator=g) for _ in range(n)]


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("kwargs", [{}, {"head_bn": True}, {"separable_conv1": True}])
def test_the_gain_scales_every_conv_and_changes_no_output(kwargs):
    base, scaled = pair(**TIGHT, **kwargs)
    for w, v in zip(conv_weights(base), conv_weights(scaled), strict=True):
        assert torch.equal(v, w * GAIN)  # the same draw, scaled
    x = batches(1)[0]
    base.train(), scaled.train()
    torch.testing.assert_close(scaled(x), base(x), rtol=1e-4, atol=1e-4)  # batch statistics
    for model in (base, scaled):  # Algorithm 2's population statistics, on the same batches
        recompute_bn_stats(model, iter(batches(3)), 3)
    torch.testing.assert_close(scaled(x), base(x), rtol=1e-4, atol=1e-4)


def test_what_differs_at_the_default_bn_epsilon_is_epsilons_share_only():
    """BN divides by sqrt(Var + eps), and eps does not scale with the weights: the outputs differ
    by an amount that vanishes with eps (the default 1e-3 is [ours], docs/paper.md section 2)."""
    x = batches(1)[0]
    differences = []
    for eps in (1e-3, 1e-5, 1e-7):
        base, scaled = pair(bn_eps=eps)
        differences.append((scaled.train()(x) - base.train()(x)).abs().max().item())
    assert differences[0] > differences[1] > differences[2] and differences[2] < 1e-4


def test_sgd_on_gain_scaled_weights_is_sgd_on_the_unscaled_ones_at_lr_over_gain_squared():
    """Momentum SGD with L2 (the trainer's own optimizer) on w_g = g x w equals, for w, momentum
    SGD at lr / g^2 with L2 g^2 x wd: the larger weights take smaller effective steps."""
    base, scaled = (model.double() for model in pair(**TIGHT))  # float64: no float error to grow
    optim_cfg = OmegaConf.create(
        {"momentum": 0.9, "nesterov": False, "weight_decay": 4e-5, "decay_bn_and_bias": False}
    )
    lr = 0.0015  # the relation holds at any LR; at 0.045 this tiny net amplifies float error
    opt_scaled = build_optimizer(scaled, optim_cfg, lr)
    convs = {id(w) for w in conv_weights(base)}
    groups = [  # the unscaled network, with the conv weights' step and L2 rewritten
        {"params": conv_weights(base), "lr": lr / GAIN**2, "weight_decay": 4e-5 * GAIN**2},
        {"params": [p for p in base.parameters() if p.ndim > 1 and id(p) not in convs],
         "weight_decay": 4e-5},
        {"params": [p for p in base.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]  # fmt: skip
    opt_base = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    for x in (x.double() for x in batches(4)):
        for model, opt in ((base, opt_base), (scaled, opt_scaled)):
            step(model, opt, x)
    for w, v in zip(conv_weights(base), conv_weights(scaled), strict=True):
        torch.testing.assert_close(v, w * GAIN, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scaled(x), base(x), rtol=1e-3, atol=1e-3)  # float error, grown


def test_larger_initial_weights_move_one_over_gain_squared_as_far_per_step():
    """What "larger initial weights" means, measurably, in a BN network trained as ours are: the
    first update of every conv's weights, relative to their size, is 1/g^2 of gain 1's."""
    moved = []
    for model in pair(**TIGHT):
        optim_cfg = OmegaConf.create(
            {"momentum": 0.9, "nesterov": False, "weight_decay": 4e-5, "decay_bn_and_bias": False}
        )
        before = [w.detach().clone() for w in conv_weights(model)]
        step(model, build_optimizer(model, optim_cfg, 0.045), batches(1)[0])
        pairs = zip(conv_weights(model), before, strict=True)
        moved.append(torch.stack([(w - b).norm() / b.norm() for w, b in pairs]))
    torch.testing.assert_close(moved[1], moved[0] / GAIN**2, rtol=1e-3, atol=0)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    F.cross_entropy(model.train()(x), torch.arange(len(x)) % 10).backward()
    optimizer.step()
