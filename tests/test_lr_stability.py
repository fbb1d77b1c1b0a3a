"""The LR-stability experiment (section 3.3) and the covariate-shift figure (Figure 1(b, c) on
BN-Inception): bnrepro-report --lr-stability / --covariate-shift and scripts/lr_stability.sh."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import fake_bin, fake_run_folder

from bnrepro.figures import report
from bnrepro.figures.lr_stability import LRStability, largest_lr
from bnrepro.figures.shift import CovariateShift
from bnrepro.stats import over_seeds

REPO = Path(__file__).resolve().parents[1]


def sweep(root: Path, network: str, seed: int, results: dict) -> None:
    """Run folders of one network and seed: {lr: [top1s] | "diverged"}."""
    for lr, top1s in results.items():
        diverged = top1s == "diverged"
        fake_run_folder(root, network, seed, [0.2] if diverged else top1s, diverged_at=7 if diverged else None,
                        name=f"{network}_lr{lr}_seed{seed}", optim__lr=lr, data__num_classes=10)  # fmt: skip


def test_largest_stable_lr_per_seed_stops_at_the_first_failure(tmp_path):
    """Diverged runs are marked, a run at chance does not train, and a seed's largest stable LR
    is the largest below its first divergence (a lucky run above it does not count)."""
    sweep(tmp_path, "inception", 0, {0.0015: [0.3, 0.5], 0.015: [0.3, 0.6], 0.15: [0.1, 0.1]})
    sweep(tmp_path, "inception", 1, {0.0015: [0.3, 0.52], 0.015: "diverged", 0.15: [0.4, 0.5]})
    sweep(tmp_path, "bn_baseline", 0, {0.0015: [0.3, 0.5], 0.15: [0.4, 0.6], 1.5: "diverged"})
    sweep(tmp_path, "bn_baseline", 1, {0.0015: [0.3, 0.5], 0.15: [0.4, 0.7], 1.5: "diverged"})
    report.main([str(tmp_path), "--out", str(tmp_path / "rep"), "--lr-stability"])
    summary = json.loads((tmp_path / "rep" / "lr_stability.json").read_text())
    inception, bn = summary["networks"]["inception"], summary["networks"]["bn_baseline"]
    assert inception["per_lr"]["0.15"]["outcomes"] == {"0": "not above chance", "1": "trained"}
    assert inception["per_lr"]["0.015"]["diverged_at"] == {"1": 7.0}
    assert inception["largest_stable_lr"]["per_seed"] == {"0": 0.15, "1": 0.0015}
    assert inception["largest_training_lr"]["per_seed"] == {"0": 0.015, "1": 0.0015}
    assert bn["largest_stable_lr"]["per_seed"] == {"0": 0.15, "1": 0.15}
    assert not bn["largest_stable_lr"]["censored"] and inception["largest_stable_lr"]["censored"]
    spread = over_seeds([0.6, 0.7])
    assert bn["per_lr"]["0.15"]["final_top1_mean"] == pytest.approx(0.65)
    assert bn["per_lr"]["0.15"]["final_top1_low"] == pytest.approx(spread.low)
    geo = (0.15 * 0.0015) ** 0.5
    assert inception["largest_stable_lr"]["geomean"] == pytest.approx(geo)
    assert summary["ratios"]["bn_baseline / inception"] == pytest.approx(0.15 / geo)
    md = (tmp_path / "rep" / "lr_stability.md").read_text()
    assert "| Inception | 0.015 | 2 | seed 1 (7) | - | 60.0% |" in md
    assert "| BN-Baseline | 1.5 | 2 | seed 0 (7), seed 1 (7) | - | - |" in md
    assert "- Inception, largest stable LR (no divergence): 0.0015 to 0.15" in md
    # seed by seed: stable (seeds 0.15, 0.15 against 0.15, 0.0015) overlaps; trains does not
    assert "**largest stable LR (no divergence), BN-Baseline against Inception: not settled" in md
    assert ("**largest LR that trains above chance, BN-Baseline against Inception: holds: every "
            "BN-Baseline seed above every Inception seed** (BN-Baseline 0.15 to 0.15, Inception "
            "0.0015 to 0.015, over 2 and 2 seeds)") in md  # fmt: skip
    for suffix in ("png", "pdf", "svg"):
        assert (tmp_path / "rep" / f"lr_stability.{suffix}").is_file()


def test_largest_lr_of_one_seed():
    import pandas as pd

    runs = pd.DataFrame({"lr": [0.1, 0.01, 1.0], "outcome": ["trained", "trained", "diverged"]})
    assert largest_lr(runs, {"trained"}) == 0.1
    assert largest_lr(runs.iloc[2:], {"trained"}) is None


def test_an_experiment_whose_runs_differ_in_more_than_the_lr_is_refused(tmp_path):
    """Two LR sweeps of one network (here with and without dropout) are not one sweep."""
    for i, (lr, dropout) in enumerate(((0.01, 0.4), (0.1, 0.0))):
        fake_run_folder(tmp_path, "inception", 0, [0.3], name=f"r{i}", optim__lr=lr,
                        model__dropout=dropout)  # fmt: skip
    df = report.load_runs([tmp_path])
    with pytest.raises(report.ReportError, match="differ in model.dropout besides optim.lr"):
        LRStability.of(df)
    assert len(LRStability.of(report.select(df, ["model.dropout=0.4"])).outcomes) == 1


def test_a_run_without_an_evaluation_is_listed_not_judged(tmp_path):
    fake_run_folder(tmp_path, "inception", 0, [0.3], name="a", optim__lr=0.01)
    crashed = tmp_path / "b"
    crashed.mkdir()
    (crashed / "config.yaml").write_text("experiment_name: inception\nseed: 0\noptim: {lr: 1.0}\n")
    (crashed / "metrics.jsonl").write_text('{"step": 1, "paper_steps": 1, "train/loss": 2.3}\n')
    summary = LRStability.of(report.load_runs([tmp_path])).summary()
    assert summary["runs_without_evaluation"] == [str(crashed)]
    assert summary["networks"]["inception"]["lrs"] == [0.01]


def monitored(root: Path, network: str, seed: int, lr: float, p50s: list) -> None:
    run = fake_run_folder(root, network, seed, [0.3, 0.4], name=f"{network}_{lr}_{seed}",
                          optim__lr=lr)  # fmt: skip
    key = "monitor/blocks.5b.branch1x1.act"
    with (run / "metrics.jsonl").open("a") as f:
        for step, p50 in enumerate(p50s, start=1):
            row = {"step": step, "paper_steps": step, f"{key}/p15": p50 - 1,
                   f"{key}/p50": p50, f"{key}/p85": p50 + 1}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def test_covariate_shift_draws_each_configuration_from_the_monitor(tmp_path):
    monitored(tmp_path, "inception", 0, 0.0015, [0.0, 1.0, 2.0])
    monitored(tmp_path, "inception", 1, 0.0015, [0.0, 3.0, 4.0])
    monitored(tmp_path, "bn_baseline", 0, 0.0015, [0.0, 0.1, 0.0])
    monitored(tmp_path, "bn_baseline", 0, 0.15, [5.0, 5.0, 5.0])
    report.main([str(tmp_path), "--out", str(tmp_path / "rep"), "--covariate-shift",
                 "--where", "optim.lr=0.0015"])  # fmt: skip
    summary = json.loads((tmp_path / "rep" / "covariate_shift.json").read_text())
    # inception has one configuration here, bn_baseline two (named by their LR)
    assert list(summary["groups"]) == ["inception", "bn_baseline (optim.lr=0.0015)"]
    inception = summary["groups"]["inception"]["blocks.5b.branch1x1.act"]
    assert inception["seeds"] == 2 and inception["p50"] == [0.0, 2.0, 3.0]  # seed means
    assert (inception["p85_first"], inception["p85_last"]) == (1.0, 4.0)
    bn = summary["groups"]["bn_baseline (optim.lr=0.0015)"]["blocks.5b.branch1x1.act"]
    assert (bn["p50_min"], bn["p50_max"]) == (0.0, 0.1)
    # the largest percentile range over the mean 15-85 spread (2): seed by seed
    assert inception["drift_per_seed"] == {"0": 1.0, "1": 2.0}
    assert bn["drift_per_seed"] == {"0": pytest.approx(0.05)}
    from bnrepro.figures.shift import shift_verdicts

    (line,) = shift_verdicts(summary)
    assert (
        "holds: every Inception seed drifts more than every BN-Baseline (optim.lr=0.0015)" in line
    )
    assert (tmp_path / "rep" / "covariate_shift.svg").is_file()


def test_covariate_shift_needs_the_monitor_and_few_panels(tmp_path):
    fake_run_folder(tmp_path, "inception", 0, [0.3], optim__lr=0.01)
    with pytest.raises(report.ReportError, match=r"trainer.monitor.layers=\[blocks.5b"):
        CovariateShift.of(report.load_runs([tmp_path]))
    for lr in range(1, 8):
        monitored(tmp_path / "many", "inception", 0, lr / 100, [0.0, 1.0])
    with pytest.raises(report.ReportError, match="7 configurations .* --where"):
        CovariateShift.of(report.load_runs([tmp_path / "many"]))


STUB_TRAIN = r"""
for a in "$@"; do case "$a" in out_dir=*) out=${a#*=} ;; run_name=*) name=${a#*=} ;;
  optim.lr=*) lr=${a#*=} ;; experiment=*) exp=${a#*=} ;; seed=*) seed=${a#*=} ;; esac; done
echo "$@"
# inception stops training above 0.01 (at chance at 0.03, diverged above); bn_baseline above 1
limit=0.01; [ "$exp" = bn_baseline ] && limit=1
mkdir -p "$out/$name"
printf 'experiment_name: %s\nseed: %s\noptim: {lr: %s}\ndata: {num_classes: 10}\n' "$exp" "$seed" "$lr" > "$out/$name/config.yaml"
if awk "BEGIN{exit !($lr > 3 * $limit)}"; then
  echo '{"step": 1, "paper_steps": 1, "diverged": true}' > "$out/$name/metrics.jsonl"; exit 3
fi
top1=0.5; awk "BEGIN{exit !($lr > $limit)}" && top1=0.1
printf '{"step": 1, "paper_steps": 1, "val/top1": %s, "val/images": 500, "monitor/m.act/p15": -1, "monitor/m.act/p50": 0, "monitor/m.act/p85": 1}\n' "$top1" > "$out/$name/metrics.jsonl"
"""


def run_lr_script(tmp_path: Path, bin_dir: Path, *overrides: str, **env):
    env = dict(os.environ, OUT=str(tmp_path / "lr"), RESULTS=str(tmp_path / "results"),
               SHIFT=str(tmp_path / "shift"), BIN=str(bin_dir), **env)  # fmt: skip
    return subprocess.run([str(REPO / "scripts/lr_stability.sh"), *overrides], env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip


def test_lr_script_climbs_each_grid_until_training_stops(tmp_path):
    """Each network and seed climbs the grid until STOP_AFTER runs in a row did not train
    (at chance or diverged: exit status 3 is a result); the rest are recorded as skipped; the
    reports and the record (command, wall time, commit) are written."""
    bin_dir = fake_bin(tmp_path / "bin", train=STUB_TRAIN)
    out = run_lr_script(tmp_path, bin_dir, "data.root=/x", SEEDS="0,1",
                        LRS="0.003 0.01 0.03 0.1 0.3 1 3 10 30")  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "lr_stability_run.json").read_text())
    ran = {(r["network"], r["seed"], r["lr"]): r["outcome"] for r in record["runs"]}
    assert ran["inception", 0, 0.01] == "trained"
    assert ran["inception", 0, 0.03] == "not_above_chance"
    assert ran["inception", 0, 0.1] == "diverged"
    assert ran["inception", 1, 0.3] == "skipped"  # two in a row did not train
    assert ran["bn_baseline", 0, 3] == "not_above_chance" and ran["bn_baseline", 0, 30] == "skipped"
    assert record["failed_runs"] == 0 and len(record["git_sha"]) == 40
    assert "LRS='0.003 0.01" in record["command"] and "data.root=/x" in record["command"]
    log = (tmp_path / "lr" / "logs" / "bn_baseline_lr0.3_seed1.log").read_text()
    assert "optim.lr=0.3 run_name=bn_baseline_lr0.3_seed1" in log
    assert "trainer.monitor.layers=[blocks.5b.branch1x1]" in log and "data.root=/x" in log
    summary = json.loads((tmp_path / "results" / "lr_stability.json").read_text())
    assert summary["networks"]["inception"]["largest_stable_lr"]["per_seed"] == {
        "0": 0.03,
        "1": 0.03,
    }
    assert summary["networks"]["bn_baseline"]["largest_training_lr"]["max"] == 1
    shift = json.loads((tmp_path / "shift" / "covariate_shift.json").read_text())
    assert list(shift["groups"]) == ["inception (optim.lr=0.003)", "bn_baseline (optim.lr=0.003)"]
    assert run_lr_script(tmp_path, bin_dir, STOP_AFTER="x").returncode == 2


def test_lr_script_reports_a_failed_run_and_goes_on(tmp_path):
    body = 'case " $* " in *" optim.lr=0.01 "*) echo broken >&2; exit 1 ;; esac\n' + STUB_TRAIN
    bin_dir = fake_bin(tmp_path / "bin", train=body)
    out = run_lr_script(tmp_path, bin_dir, SEEDS="0", LRS="0.003 0.01", NETWORKS="inception")
    assert out.returncode == 1
    record = json.loads((tmp_path / "results" / "lr_stability_run.json").read_text())
    assert [r["outcome"] for r in record["runs"]] == ["trained", "failed"]
    assert record["failed_runs"] == 1


@pytest.mark.slow
def test_lr_script_with_real_runs(tiny_data_root, tmp_path):
    """Real tiny runs: the paper's LR trains, LR 50 diverges, in both networks; the reports."""
    from conftest import TINY_TRAIN

    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.")]
    bin_dir = fake_bin(tmp_path / "bin")
    out = run_lr_script(tmp_path, bin_dir, *overrides, f"data.root={tiny_data_root}",
                        "trainer.log_every_images=16", SEEDS="0,1", LRS="0.0015 50",
                        MAX_IMAGES="64", EVAL_EVERY="32", MONITOR_EVERY="16")  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "lr_stability.json").read_text())
    for network in ("inception", "bn_baseline"):
        per_lr = summary["networks"][network]["per_lr"]
        assert set(per_lr["50"]["diverged_at"]) == {"0", "1"}, network
        assert per_lr["0.0015"]["diverged_at"] == {}
    shift = json.loads((tmp_path / "shift" / "covariate_shift.json").read_text())
    assert len(shift["groups"]) == 2
    assert sys.executable  # the runs used this venv's bnrepro-train (fake_bin)
