"""Algorithm 2 (bn_stats.py) and the covariate-shift monitor (monitor.py), alone and in a run."""

import json

import pytest
import torch
from torch import nn

from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.evaluation.bn_stats import main as bn_stats_main
from bnrepro.evaluation.bn_stats import recompute_bn_stats
from bnrepro.monitor import Monitor


def test_population_statistics_are_algorithm_2():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    recompute_bn_stats(model, iter(batches), num_batches=3)
    with torch.no_grad():
        xs = [model[0](b) for b in batches]  # the BN layer's inputs, batch by batch
    means = torch.stack([x.mean((0, 2, 3)) for x in xs])
    m = xs[0].numel() // xs[0].shape[1]  # values per feature map in a batch
    variances = torch.stack([x.var((0, 2, 3), unbiased=False) for x in xs])
    bn = model[1]
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, m / (m - 1) * variances.mean(0), rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # restored, ready for inference
    with pytest.raises(ValueError, match="asked for 5 batches"):
        recompute_bn_stats(model, iter(batches), num_batches=5)


def test_monitor_records_percentiles_of_nonlinearity_inputs():
    model = nn.Sequential(nn.Linear(10, 1000), nn.Sigmoid())
    monitor = Monitor(model, ["1"], every_images=100)
    assert not monitor.arm(images_seen=50)
    model(torch.randn(4, 10))
    assert monitor.collect() == {}
    assert monitor.arm(images_seen=120)
    x = torch.randn(4, 10)
    model(x)
    values = monitor.collect()
    q = torch.quantile(model[0](x).detach().flatten(), torch.tensor([0.15, 0.5, 0.85])).tolist()
    assert [values[f"monitor/1/p{p}"] for p in (15, 50, 85)] == pytest.approx(q)
    with pytest.raises(ValueError, match="no module named"):
        Monitor(model, ["blocks.9z"], every_images=100)


def test_monitor_records_the_input_of_an_inplace_relu():
    """The network's ReLUs are inplace: the percentiles are of what goes in (half of it below 0
    here), not of what the ReLU leaves in the same memory (nothing below 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 1000), nn.ReLU(inplace=True))
    monitor = Monitor(model, ["1"], every_images=100)
    assert monitor.arm(images_seen=100)
    x = torch.randn(4, 10)
    model(x)
    values = monitor.collect()
    q = torch.quantile(model[0](x).detach().flatten(), torch.tensor([0.15, 0.5, 0.85])).tolist()
    assert values["monitor/1/p15"] < 0
    assert [values[f"monitor/1/p{p}"] for p in (15, 50, 85)] == pytest.approx(q)


def test_run_with_population_statistics_and_monitor(tiny_overrides, tmp_path, capsys):
    layer = "blocks.5b.branch1x1"
    overrides = [*tiny_overrides, "trainer.pop_stats_batches=2",
                 f"trainer.monitor.layers=[{layer}]", "trainer.monitor.every_images=32"]  # fmt: skip
    summary = T.train(compose("train", overrides))
    assert 0 <= summary["val_popstats/top1"] <= 1 and "val/top1" in summary
    lines = (tmp_path / "bn_x30_seed0/metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    monitored = [r for r in rows if f"monitor/{layer}.act/p50" in r]
    # armed at the start of the steps that cross 32 and 64 images; logged at their ends
    assert [r["images_seen"] for r in monitored] == [48, 80]
    assert all(r[f"monitor/{layer}.act/p15"] <= r[f"monitor/{layer}.act/p85"] for r in monitored)
    assert "val_popstats/top1" in rows[-1]

    # bnrepro-bn-stats on the run's checkpoint reports both numbers and writes a new checkpoint
    ckpt = tmp_path / "bn_x30_seed0/checkpoints/ckpt_000000000096.pt"
    bn_stats_main([str(ckpt), "--batches", "2", "--out", str(tmp_path / "pop.pt")])
    out = capsys.readouterr().out
    assert "moving averages:" in out and "population stats:" in out
    assert out.count("(95% CI ") == 4  # top-1 and top-5, before and after
    assert (tmp_path / "pop.pt").is_file()


def test_a_default_run_reports_population_statistics_with_intervals(tiny_overrides, capsys):
    """trainer.pop_stats_batches=auto (the default): the final evaluation of a BN network also
    uses Algorithm 2 (one epoch of the tiny tree: 10 batches of 16, fewer than 100), beside the
    moving averages; every accuracy of the summary and the eval line has its 95% interval."""
    from bnrepro.stats import fraction_interval

    cfg = compose("train", tiny_overrides)
    assert cfg.trainer.pop_stats_batches == "auto"
    summary = T.train(cfg)
    n = summary["val/images"]
    for key in ("val/top1", "val/top5", "val_popstats/top1", "val_popstats/top5"):
        assert 0 <= summary[key] <= 1
        assert summary[f"{key}_ci95"] == pytest.approx(list(fraction_interval(summary[key], n)))
    assert summary["best/val/top1_ci95"] == pytest.approx(
        list(fraction_interval(summary["best/val/top1"], n))
    )
    out = capsys.readouterr().out
    assert "Algorithm 2 at the end: 10 batches" in out
    popstats = f"val (population BN) top-1 {100 * summary['val_popstats/top1']:.2f}% ("
    assert popstats in out.splitlines()[-2]  # the final eval line, before "done at ..."
    # Inception has no BN: auto means none, where an explicit count is refused (test_train.py)
    inception = T.train(compose("train", [*tiny_overrides, "experiment=inception",
                                          "trainer.max_images=16"]))  # fmt: skip
    assert "val_popstats/top1" not in inception and "val/top1_ci95" in inception
