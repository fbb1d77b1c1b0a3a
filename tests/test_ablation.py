"""Section 4.2.1's ablation: one config per change (configs/experiment/ablation/), the report
(bnrepro-report --ablation) and scripts/ablation_421.sh."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_report import fake_bin, fake_run_folder, real_bin_but

from bnrepro.checkpoint import defining_keys
from bnrepro.config import CONFIG_DIR, compose
from bnrepro.figures import report
from bnrepro.figures.ablation import Ablation, row_verdict
from bnrepro.stats import over_seeds

REPO = Path(__file__).resolve().parents[1]
ABLATION = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment" / "ablation").glob("*.yaml"))
NAMING = ("seed", "run_name", "experiment_name")


def settings(experiment: str) -> dict:
    cfg = OmegaConf.to_container(compose("train", [f"experiment={experiment}"]), resolve=True)
    return {k: v for k, v in defining_keys(cfg).items() if k not in NAMING}


def changed(a: dict, b: dict) -> dict:
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def test_seven_changes_each_way():
    plus = [n for n in ABLATION if n.startswith("bn_baseline_plus_")]
    minus = [n for n in ABLATION if n.startswith("bn_x5_minus_")]
    assert len(plus) == len(minus) == 7 and len(ABLATION) == 14
    assert [n.removeprefix("bn_baseline_plus_") for n in plus] == [
        n.removeprefix("bn_x5_minus_") for n in minus
    ]


@pytest.mark.parametrize("name", ABLATION)
def test_each_config_is_its_base_with_one_change(name):
    """Added to BN-Baseline: BN-x5's values of its keys, nothing else; taken from BN-x5:
    BN-Baseline's values of the same keys as its twin, nothing else."""
    plus = "_plus_" in name
    base, other = ("bn_baseline", "bn_x5") if plus else ("bn_x5", "bn_baseline")
    assert compose("train", [f"experiment=ablation/{name}"]).experiment_name == name
    diff = changed(settings(base), settings(f"ablation/{name}"))
    wanted = settings(other)
    assert diff and {k: new for k, (_, new) in diff.items()} == {k: wanted[k] for k in diff}
    change = name.split("_plus_" if plus else "_minus_")[1]
    twin = f"bn_x5_minus_{change}" if plus else f"bn_baseline_plus_{change}"
    other_base = "bn_x5" if plus else "bn_baseline"
    assert set(diff) == set(changed(settings(other_base), settings(f"ablation/{twin}")))


def test_the_seven_changes_are_every_difference_between_bn_baseline_and_bn_x5():
    """Nothing that makes BN-x5 is left out of the ablation, and no change is counted twice."""
    keys = [set(changed(settings("bn_baseline"), settings(f"ablation/{n}")))
            for n in ABLATION if "_plus_" in n]  # fmt: skip
    assert set().union(*keys) == set(changed(settings("bn_baseline"), settings("bn_x5")))
    assert sum(map(len, keys)) == len(set().union(*keys))


def ablation_runs(root: Path, finals: dict) -> None:
    """{experiment: ({dotted config}, [final top-1 per seed])} as run folders."""
    base = {"optim__lr": 0.0015, "model__dropout": 0.4, "data__num_classes": 10}
    for experiment, (config, per_seed) in finals.items():
        for seed, top1 in enumerate(per_seed):
            fake_run_folder(root, experiment, seed, [0.2, top1], **(base | config))


def test_each_change_against_its_nearest_base_paired_by_seed(tmp_path):
    ablation_runs(tmp_path, {
        "bn_baseline": ({}, [0.30, 0.34, 0.32]),
        "bn_x5": ({"optim__lr": 0.0075, "model__dropout": 0.0}, [0.50, 0.52, 0.48]),
        "bn_baseline_plus_lr_x5": ({"optim__lr": 0.0075}, [0.40, 0.45, 0.41]),
        "bn_x5_minus_no_dropout": ({"optim__lr": 0.0075}, [0.49, 0.50, 0.50]),
    })  # fmt: skip
    # bn_x5_minus_no_dropout is bn_baseline_plus_lr_x5's configuration under another name: both
    # are one key from each base; a tie goes to the first base named.
    report.main([str(tmp_path), "--out", str(tmp_path / "rep"), "--ablation", "bn_baseline,bn_x5"])
    summary = json.loads((tmp_path / "rep" / "ablation.json").read_text())
    row = summary["rows"]["bn_baseline_plus_lr_x5"]
    assert row["base"] == "bn_baseline" and row["change"] == {"optim.lr": [0.0015, 0.0075]}
    deltas = [0.10, 0.11, 0.09]
    assert list(row["delta_final_top1"].values()) == pytest.approx(deltas)
    spread = over_seeds(deltas)
    assert (row["delta_mean"], row["delta_low"], row["delta_high"]) == pytest.approx(
        (spread.mean, spread.low, spread.high)
    )
    assert summary["target_top1"] == pytest.approx(0.32)  # bn_baseline's best seed-mean
    assert row["per_seed"]["0"]["steps_to_target"] == 2
    assert summary["rows"]["bn_x5_minus_no_dropout"]["base"] == "bn_baseline"
    md = (tmp_path / "rep" / "ablation.md").read_text()
    assert "| bn_baseline_plus_lr_x5 | bn_baseline | optim.lr: 0.0015 -> 0.0075 | 3 |" in md
    assert (
        f"| {100 * spread.mean:+.1f} pt [{100 * spread.low:+.1f}, {100 * spread.high:+.1f}] "
        "| higher than its base |"
    ) in md
    minus = summary["rows"]["bn_x5_minus_no_dropout"]  # vs bn_baseline: +0.19, +0.16, +0.18
    assert minus["delta_low"] > 0
    assert (tmp_path / "rep" / "ablation.svg").is_file()


def test_a_missing_base_or_a_repeat_of_it_is_refused(tmp_path):
    ablation_runs(tmp_path, {"bn_baseline": ({}, [0.3]), "copy": ({}, [0.31])})
    df = report.load_runs([tmp_path])
    with pytest.raises(report.ReportError, match="no 'bn_x5' run"):
        Ablation.of(df, ["bn_baseline", "bn_x5"])
    with pytest.raises(
        report.ReportError, match="copy has the configuration of the base bn_baseline"
    ):
        Ablation.of(df, ["bn_baseline"])


def run_ablation_script(tmp_path: Path, bin_dir: Path, *overrides: str, **env):
    env = dict(os.environ, OUT=str(tmp_path / "ab"), RESULTS=str(tmp_path / "results"),
               BIN=str(bin_dir), **env)  # fmt: skip
    return subprocess.run([str(REPO / "scripts/ablation_421.sh"), *overrides], env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip


def test_ablation_script_runs_both_bases_and_every_change(tmp_path):
    bin_dir = fake_bin(tmp_path / "bin", train='echo "$@"', report='echo report "$@"')
    out = run_ablation_script(tmp_path, bin_dir, "data.root=/x", SEEDS="0,1")
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "results" / "ablation_run.json").read_text())
    experiments = [r["experiment"] for r in record["runs"]][::2]
    assert experiments == ["bn_baseline", *(f"ablation/{n}" for n in ABLATION if "_plus_" in n),
                           "bn_x5", *(f"ablation/{n}" for n in ABLATION if "_minus_" in n)]  # fmt: skip
    assert [r["seed"] for r in record["runs"][:2]] == [0, 1]
    assert "--ablation bn_baseline,bn_x5" in out.stdout
    log = (tmp_path / "ab" / "logs" / "bn_x5_minus_shuffle_seed1.log").read_text()
    assert "experiment=ablation/bn_x5_minus_shuffle seed=1 trainer.max_images=9600" in log
    assert "data.root=/x" in log and len(record["git_sha"]) == 40
    out = run_ablation_script(tmp_path, bin_dir, DIRECTIONS="minus", SEEDS="0")
    assert "--ablation bn_x5 " in out.stdout
    assert run_ablation_script(tmp_path, bin_dir, DIRECTIONS="sideways").returncode == 2


@pytest.mark.slow
def test_ablation_script_with_real_runs(tiny_data_root, tmp_path):
    """Every change added to BN-Baseline, real tiny runs, one seed, one run failing (as a
    broken one would): the others go on and the report compares each with BN-Baseline."""
    from conftest import TINY_TRAIN

    bin_dir = real_bin_but(tmp_path / "bin", '*"bn_baseline_plus_no_lrn "*', 1)
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.")]
    out = run_ablation_script(tmp_path, bin_dir, *overrides, f"data.root={tiny_data_root}",
                              DIRECTIONS="plus", SEEDS="0",
                              MAX_IMAGES="64", EVAL_EVERY="32")  # fmt: skip
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert len(summary["rows"]) == 7  # the base and six of seven changes
    assert all(r["base"] == "bn_baseline" for n, r in summary["rows"].items() if n != "bn_baseline")
    record = json.loads((tmp_path / "results" / "ablation_run.json").read_text())
    assert record["failed_runs"] == 1


def test_the_verdict_follows_the_interval():
    row = {"base": "b", "delta_mean": 0.01, "delta_low": -0.02, "delta_high": 0.04}
    assert row_verdict(row) == "no difference detected"
    assert row_verdict(row | {"delta_low": 0.001}) == "higher than its base"
    assert row_verdict(row | {"delta_high": -0.001}) == "lower than its base"
    assert row_verdict(row | {"delta_low": None}) == "no interval (one seed)"
    assert row_verdict({"base": None}) == "-"
