"""bnrepro-report and the Figure 2/3 proxy, on run folders made by short real training runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnrepro.config import compose
from bnrepro.figures import report
from bnrepro.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_data_root) -> Path:
    """inception and bn_x30, two short real runs under one folder (as a multirun)."""
    from conftest import TINY_TRAIN

    out = tmp_path_factory.mktemp("runs")
    for name in ("inception", "bn_x30"):
        cfg = compose(
            "train",
            [*TINY_TRAIN, f"experiment={name}", f"data.root={tiny_data_root}", f"out_dir={out}"],
        )
        train(cfg)
    return out


def test_load_runs_finds_every_run_with_its_experiment(two_runs):
    df = report.load_runs([two_runs])
    assert set(df["experiment"]) == {"inception", "bn_x30"}
    curves = report.val_curves(df)
    assert len(curves) >= 4  # two evaluations per run
    assert curves["val/top1"].between(0, 1).all()


def test_figure3_table_uses_inceptions_best_accuracy(two_runs):
    curves = report.val_curves(report.load_runs([two_runs]))
    table = report.figure3_table(curves)
    inception = curves[curves["experiment"] == "inception"]
    assert table["target_top1"] == pytest.approx(inception["val/top1"].max())
    row = table["rows"]["inception"]
    assert row["max_top1"] == pytest.approx(table["target_top1"])
    first_hit = inception[inception["val/top1"] >= table["target_top1"]]["paper_steps"].min()
    assert row["steps_to_target"] == pytest.approx(first_hit)
    assert table["rows"]["bn_x30"]["paper_max_top1"] == 0.748  # Figure 3


def test_cli_writes_figures_and_tables(two_runs, tmp_path):
    report.main([str(two_runs), "--out", str(tmp_path / "rep")])
    table = json.loads((tmp_path / "rep" / "figure3.json").read_text())
    assert list(table["rows"]) == ["inception", "bn_x30"]  # the paper's order
    md = (tmp_path / "rep" / "figure3.md").read_text()
    assert "| inception |" in md and "31.0e6" in md  # the paper's figure beside ours
    assert (tmp_path / "rep" / "figure2.png").stat().st_size > 10_000


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    with pytest.raises(SystemExit, match="does not exist"):
        report.main([str(tmp_path / "nope")])


def test_figure4_table_beside_the_paper():
    rows = [
        {
            "model": "ensemble",
            "resolution": 64,
            "crops": 144,
            "models": 6,
            "top1_error": 0.5,
            "top5_error": 0.1,
        }
    ]
    md = report.figure4_markdown(rows)
    assert "| ensemble | 64 | 144 | 6 | 50.0% | 10.0% | 20.1% | 4.9% |" in md


@pytest.mark.slow
def test_proxy_script_end_to_end(tiny_data_root, tmp_path):
    """The Figure 2/3 proxy at a reduced size: six experiments through bnrepro-train, then the report."""
    from conftest import TINY_TRAIN

    env = dict(
        os.environ,
        MAX_IMAGES="64",
        EVAL_EVERY="32",
        OUT=str(tmp_path / "proxy"),
        RESULTS=str(tmp_path / "results"),
        BIN=str(Path(sys.executable).parent),
    )
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.")] + [
        f"data.root={tiny_data_root}"
    ]
    out = subprocess.run(
        [str(REPO / "scripts/proxy_fig23.sh"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((tmp_path / "results" / "figure3.json").read_text())
    assert set(table["rows"]) == {
        "inception",
        "bn_baseline",
        "bn_x5",
        "bn_x30",
        "bn_x5_sigmoid",
        "inception_sigmoid",
    }
    assert (tmp_path / "results" / "figure2.png").is_file()
