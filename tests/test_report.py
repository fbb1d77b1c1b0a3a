"""bnrepro-report and the Figure 2/3 proxy, on run folders made by short real training runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnrepro.config import compose
from bnrepro.errors import EXIT_USER_ERROR, UserError
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
    assert (curves["val/images"] == 40).all()  # each score's image count: 4 per class x 10
    assert set(df["group"]) == {"inception", "bn_x30"}  # one configuration each


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
    assert "| Inception |" in md and "31.0e6" in md  # the paper's name and figure beside ours
    assert (tmp_path / "rep" / "figure2.png").stat().st_size > 10_000
    for suffix in ("pdf", "svg"):  # vectors beside the raster
        assert (tmp_path / "rep" / f"figure2.{suffix}").stat().st_size > 10_000


def test_missing_or_empty_folder_is_a_user_error(tmp_path):
    """A UserError, not a SystemExit of its own: the command layer prints it in one line."""
    with pytest.raises(report.ReportError, match="no metrics.jsonl"):
        report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    with pytest.raises(report.ReportError, match="does not exist"):
        report.main([str(tmp_path / "nope")])
    assert issubclass(report.ReportError, UserError)


def test_the_command_ends_a_user_error_in_one_line_and_exit_status_2(tmp_path, capsys):
    from bnrepro import cli  # here: the command layer, not the module under test

    with pytest.raises(SystemExit) as stop:
        cli.bnrepro_report([str(tmp_path / "nope"), "--out", str(tmp_path / "rep")])
    assert stop.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("bnrepro-report: error: ") and "nope does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_each_wrong_input_is_named(tmp_path):
    """A run folder without config.yaml, a metrics.jsonl that is not JSON lines, runs with no
    evaluation yet, a missing --ensemble path, a results.json that is not JSON."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(report.ReportError, match="no config.yaml"):
        report.load_runs([tmp_path / "a"])
    (tmp_path / "a" / "config.yaml").write_text("experiment_name: inception\n")
    with pytest.raises(report.ReportError, match="no val/top1"):
        report.main([str(tmp_path / "a"), "--out", str(tmp_path / "rep")])
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 1, "val/top1": 0.5}\n{"step": ')
    with pytest.raises(report.ReportError, match="not a metrics file"):
        report.load_runs([tmp_path / "a"])
    fake_run_folder(tmp_path / "b", "inception", 0, [0.5])
    args = [str(tmp_path / "b"), "--out", str(tmp_path / "rep"), "--ensemble"]
    with pytest.raises(report.ReportError, match="--ensemble .*nope does not exist"):
        report.main([*args, str(tmp_path / "nope")])
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(report.ReportError, match="not a results.json"):
        report.main([*args, str(tmp_path / "results.json")])
    curves = report.val_curves(report.load_runs([tmp_path / "b"]))
    with pytest.raises(report.ReportError, match="no 'bn_x30' run"):
        report.figure3_table(curves, reference="bn_x30")


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """main no longer turns every ValueError into a one-line exit: only the project's errors are
    the user's."""
    fake_run_folder(tmp_path, "inception", 0, [0.5])

    def broken(*args, **kwargs):
        raise ValueError("a bug in the report")

    monkeypatch.setattr(report, "build_report", broken)
    with pytest.raises(ValueError, match="a bug in the report"):
        report.main([str(tmp_path), "--out", str(tmp_path / "rep")])


def test_wandb_without_login_or_runs_is_a_user_error(monkeypatch):
    import wandb
    from wandb.errors import UsageError

    def no_login():
        raise UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "Api", no_login)
    with pytest.raises(report.ReportError, match="cannot read W&B project .*wandb login"):
        report.load_wandb("me/bnrepro")

    class NoRuns:
        def runs(self, project, filters=None):
            assert (project, filters) == ("me/bnrepro", {"group": "bn_x30"})
            return []

    monkeypatch.setattr(wandb, "Api", NoRuns)
    with pytest.raises(report.ReportError, match="has no runs"):
        report.load_wandb("me/bnrepro/bn_x30")


def test_the_report_imports_neither_torch_timm_nor_hydra():
    """A plotting command: its tables come from bnrepro.figures.tables, not the ensemble."""
    code = (
        "import sys, bnrepro.figures.report, bnrepro.figures.tables\n"
        "print(sorted({'torch', 'timm', 'hydra'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_figure4_says_when_members_were_selected_on_the_val_set(tmp_path):
    row = {"model": "m", "resolution": 64, "crops": 1, "models": 1, "top1_error": 0.5,
           "top5_error": 0.1, "changes": "member 2: dropout 5%, head BN"}  # fmt: skip
    fake_run_folder(tmp_path / "runs", "inception", 0, [0.5])
    curves = report.load_runs([tmp_path / "runs"])
    for selected in (False, True):
        (tmp_path / "results.json").write_text(
            json.dumps({"rows": [row], "selected_on_val": selected})
        )
        report.build_report(curves, tmp_path / "out", [str(tmp_path / "results.json")])
        md = (tmp_path / "out" / "figure4.md").read_text()
        assert "| member 2: dropout 5%, head BN |" in md
        assert ("selected on this val set" in md) == selected


def fake_bin(folder: Path, train: str = "", report: str = "") -> Path:
    """A BIN folder for scripts/proxy_fig23.sh: python and, unless replaced by a script body,
    the real bnrepro-train and bnrepro-report."""
    real = Path(sys.executable).parent
    folder.mkdir()
    # A wrapper, not a symlink: through a symlink in another folder Python would not find its
    # venv (pandas, and bnrepro from anywhere).
    (folder / "python").write_text(f'#!/usr/bin/env bash\nexec {real / "python"} "$@"\n')
    (folder / "python").chmod(0o755)
    for name, body in (("bnrepro-train", train), ("bnrepro-report", report)):
        if body:
            (folder / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
            (folder / name).chmod(0o755)
        else:
            (folder / name).symlink_to(real / name)
    return folder


def real_bin_but(folder: Path, pattern: str, status: int) -> Path:
    """fake_bin whose bnrepro-train is the real one, except for the runs whose arguments match
    the bash case `pattern`: those end at once with `status` (as a diverged or broken run)."""
    real = Path(sys.executable).parent / "bnrepro-train"
    train = f'case " $* " in {pattern}) echo failed >&2; exit {status} ;; esac\nexec {real} "$@"'
    return fake_bin(folder, train=train)


def run_proxy(tmp_path: Path, bin_dir: Path, *overrides: str, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path / "proxy"), RESULTS=str(tmp_path / "results"),
               BIN=str(bin_dir), **env)  # fmt: skip
    return subprocess.run([str(REPO / "scripts/proxy_fig23.sh"), *overrides], env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip


def test_proxy_script_runs_every_experiment_and_seed_by_default(tmp_path):
    """Six experiments (and the divergence control inception_x5 where its config exists) x the
    seeds, each run once, in order; bnrepro-train and bnrepro-report stubbed out."""
    bin_dir = fake_bin(tmp_path / "bin", train='echo "$@"', report="exit 0")
    out = run_proxy(tmp_path, bin_dir, "data.root=/x", SEEDS="0,1,2")
    assert out.returncode == 0, out.stderr
    experiments = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid",
                   "inception_sigmoid"]  # fmt: skip
    if (REPO / "configs/experiment/inception_x5.yaml").exists():
        experiments.append("inception_x5")
    run = json.loads((tmp_path / "results" / "proxy_run.json").read_text())
    assert [(r["experiment"], r["seed"]) for r in run["runs"]] == [
        (e, s) for e in experiments for s in (0, 1, 2)
    ]
    assert run["failed_runs"] == 0 and "SEEDS=0,1,2" in run["command"]
    assert run["git_sha"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO,
                                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    log = (tmp_path / "proxy" / "logs" / "bn_x30_seed2.log").read_text()
    assert "experiment=bn_x30 seed=2 trainer.max_images=48000" in log and "data.root=/x" in log
    assert run_proxy(tmp_path, bin_dir, SEEDS="0;1").returncode == 2  # a bad SEEDS: refused


@pytest.mark.slow
def test_proxy_script_runs_every_seed_unattended(tiny_data_root, tmp_path):
    """The Figure 2/3 proxy at a reduced size, two seeds, real runs: one failing run (as a
    diverged one would) is reported without stopping the others; the report has seed spreads."""
    from conftest import TINY_TRAIN

    bin_dir = real_bin_but(tmp_path / "bin", '*" experiment=bn_x5 seed=1 "*', 3)
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.")]
    out = run_proxy(tmp_path, bin_dir, *overrides, f"data.root={tiny_data_root}", SEEDS="0,1",
                    EXPERIMENTS="inception bn_x5 bn_x30", MAX_IMAGES="64", EVAL_EVERY="32")  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]  # one run failed; the others went on
    assert "experiment=bn_x5 seed=1: exit 3" in out.stdout
    assert "experiment=bn_x30 seed=1: exit 0" in out.stdout
    run = json.loads((tmp_path / "results" / "proxy_run.json").read_text())
    assert run["failed_runs"] == 1 and len(run["runs"]) == 6
    assert len(run["git_sha"]) == 40 and run["wall_seconds"] >= 0  # what made it
    table = json.loads((tmp_path / "results" / "figure3.json").read_text())
    assert list(table["rows"]) == ["inception", "bn_x5", "bn_x30"]
    bn_x30 = table["rows"]["bn_x30"]
    assert bn_x30["seeds"] == 2 and set(bn_x30["per_seed"]) == {"0", "1"}
    finals = [s["final_top1"] for s in bn_x30["per_seed"].values()]
    assert bn_x30["final_top1_mean"] == pytest.approx(sum(finals) / 2)
    assert table["rows"]["bn_x5"]["seeds"] == 1  # its seed 1 failed
    assert "+-" in (tmp_path / "results" / "figure3.md").read_text()
    assert (tmp_path / "results" / "figure2.png").is_file()


def fake_run_folder(
    root: Path, experiment: str, seed: int, top1s: list, diverged_at=None, name=None, **config
) -> Path:
    """A run folder as bnrepro-train writes it: config.yaml (`config`: dotted keys) and
    metrics.jsonl (an evaluation of 500 images per paper step)."""
    import yaml

    run = root / (name or f"{experiment}_seed{seed}")
    run.mkdir(parents=True)
    cfg = {"experiment_name": experiment, "seed": seed, "run_name": run.name}
    for key, value in config.items():
        *parents, last = key.split("__")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": i, "images_seen": 32 * i, "paper_steps": i, "val/top1": t, "val/images": 500}
            for i, t in enumerate(top1s, start=1)]  # fmt: skip
    if diverged_at is not None:
        rows.append({"step": diverged_at, "images_seen": 32 * diverged_at,
                     "paper_steps": diverged_at, "diverged": True, "diverged_reason": "loss nan"})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_a_diverged_run_is_shown_as_diverged(tmp_path):
    """As the paper shows Inception at BN-x5's LR: "diverged", not an accuracy; a diverged seed
    leaves the others' numbers alone."""
    fake_run_folder(tmp_path, "inception", 0, [0.3, 0.5])
    fake_run_folder(tmp_path, "inception_x5", 0, [], diverged_at=3)
    fake_run_folder(tmp_path, "bn_x30", 0, [0.6, 0.7])
    fake_run_folder(tmp_path, "bn_x30", 1, [0.9], diverged_at=2)  # its 0.9 is before the NaN
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    table = json.loads((tmp_path / "rep" / "figure3.json").read_text())
    assert list(table["rows"]) == ["inception", "bn_x30", "inception_x5"]
    assert table["rows"]["inception_x5"]["diverged_seeds"] == {"0": 3.0}
    assert table["rows"]["bn_x30"]["max_top1"] == pytest.approx(0.7)
    assert table["rows"]["bn_x30"]["seeds"] == 1
    md = (tmp_path / "rep" / "figure3.md").read_text()
    assert (
        "| Inception-x5 | 0 (+1 diverged) | diverged | diverged | - | - | diverged | diverged |"
        in md
    )
    assert "| BN-x30 | 1 (+1 diverged) | 1 | 70.0% |" in md


def test_every_run_diverged(tmp_path):
    fake_run_folder(tmp_path, "inception_x5", 0, [0.2], diverged_at=3)
    table = report.build_report(report.load_runs([tmp_path]), tmp_path / "rep")
    assert table["rows"]["inception_x5"]["max_top1"] is None


# ---------------------------------------------------------------- one curve per configuration


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every matplotlib figure the report saves, as it saves it (old report or new)."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def curves_of(fig) -> dict:
    """The Figure 2 panel's curves: {legend label: (x, y)}."""
    ax = fig.axes[0]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines() if not line.get_label().startswith("_")}  # fmt: skip


def test_two_lrs_of_one_experiment_are_two_curves(tmp_path, drawn):
    """`-m experiment=bn_x30 optim.lr=0.01,0.1` made one bn_x30 curve, "1 seed", the mean of the
    two LRs: now two curves and two rows, each labelled by its LR, no band (one seed each)."""
    fake_run_folder(tmp_path, "bn_x30", 0, [0.2, 0.4], name="0_bn_x30", optim__lr=0.01)
    fake_run_folder(tmp_path, "bn_x30", 0, [0.3, 0.6], name="1_bn_x30", optim__lr=0.1)
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    curves = curves_of(drawn[0])
    assert curves == {"BN-x30 (optim.lr=0.01) (1 seed)": ([1, 2], [0.2, 0.4]),
                      "BN-x30 (optim.lr=0.1) (1 seed)": ([1, 2], [0.3, 0.6])}  # fmt: skip
    assert not drawn[0].axes[0].collections  # no band: nothing to spread over
    table = json.loads((tmp_path / "rep" / "figure3.json").read_text())
    assert list(table["rows"]) == ["bn_x30 (optim.lr=0.01)", "bn_x30 (optim.lr=0.1)"]
    # Which of a sweep's configurations is the paper's BN-x30 is not for the report to guess.
    assert all(row["paper_max_top1"] is None for row in table["rows"].values())
    # each row keeps its curve, so a sentence about Figure 2 can be checked against numbers
    assert table["rows"]["bn_x30 (optim.lr=0.1)"]["curve"] == {
        "paper_steps": [1.0, 2.0],
        "mean_top1": [0.3, 0.6],
    }
    with pytest.raises(report.ReportError, match="bn_x30 has 2 configurations here: name one"):
        report.main([str(tmp_path), "--out", str(tmp_path / "rep2"), "--reference", "bn_x30"])
    assert not (tmp_path / "rep2").exists()  # refused before the first write
    report.main([str(tmp_path), "--out", str(tmp_path / "rep2"), "--reference",
                 "bn_x30 (optim.lr=0.1)"])  # fmt: skip
    target = json.loads((tmp_path / "rep2" / "figure3.json").read_text())["target_top1"]
    assert target == 0.6


def test_two_seeds_of_one_config_are_one_curve_with_a_band(tmp_path, drawn):
    for seed, top1s in ((0, [0.2, 0.4]), (1, [0.3, 0.6])):
        fake_run_folder(tmp_path, "bn_x30", seed, top1s, optim__lr=0.045, runtime__device="cpu")
    (tmp_path / "bn_x30_seed1" / "config.yaml").write_text(  # another machine: the same run
        (tmp_path / "bn_x30_seed1" / "config.yaml").read_text().replace("cpu", "cuda")
    )
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    curves = curves_of(drawn[0])
    assert curves == {"BN-x30 (2 seeds)": ([1, 2], [0.25, 0.5])}
    (band,) = drawn[0].axes[0].collections  # the mean's 95% t interval over the two seeds
    from bnrepro.stats import over_seeds

    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    spread = over_seeds([0.4, 0.6])
    assert (low, high) == pytest.approx((min(over_seeds([0.2, 0.3]).low, spread.low), spread.high))
    row = json.loads((tmp_path / "rep" / "figure3.json").read_text())["rows"]["bn_x30"]
    assert row["seeds"] == 2 and row["paper_max_top1"] == 0.748
    assert (row["final_top1_low"], row["final_top1_high"]) == pytest.approx(
        (spread.low, spread.high)
    )


def test_the_same_config_and_seed_twice_is_refused(tmp_path):
    fake_run_folder(tmp_path / "a", "bn_x30", 0, [0.2], optim__lr=0.045)
    fake_run_folder(tmp_path / "b", "bn_x30", 0, [0.3], optim__lr=0.045)
    with pytest.raises(report.ReportError, match="same seed 0: not two seeds"):
        report.load_runs([tmp_path])


def test_figure2_is_drawn_as_a_paper_figure(tmp_path, drawn):
    """The paper's names, percent, a marker at each evaluation, the chance line, and beside it
    the paper's Figure 3 as the table it is: "never" is a cell, not a cross on Inception's point."""
    for name in ("inception", "bn_x5_sigmoid"):
        fake_run_folder(tmp_path, name, 0, [0.2, 0.3, 0.4], data__num_classes=10)
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    ax, ax_paper = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"Inception (1 seed)", "BN-x5-Sigmoid (1 seed)"} <= set(lines)
    assert lines["Inception (1 seed)"].get_marker() == "o"
    assert [line.get_ydata()[0] for line in ax.get_lines() if list(line.get_ydata()) == [0.1, 0.1]]
    assert ax.yaxis.get_major_formatter()(0.5, 0) == "50%"
    assert not ax_paper.collections  # no scatter of points
    (table,) = ax_paper.tables
    cells = {(r, c): cell.get_text().get_text() for (r, c), cell in table.get_celld().items()}
    rows = {cells[r, 0]: (cells[r, 1], cells[r, 2]) for r in range(1, 6)}
    assert rows == {"Inception": ("31.0e6", "72.2%"), "BN-Baseline": ("13.3e6", "72.7%"),
                    "BN-x5": ("2.1e6", "73%"), "BN-x30": ("2.7e6", "74.8%"),
                    "BN-x5-Sigmoid": ("never", "69.8%")}  # fmt: skip
    md = (tmp_path / "rep" / "figure3.md").read_text()
    assert "| BN-x5-Sigmoid | 1 |" in md


def test_where_keeps_the_runs_of_one_value(tmp_path):
    for lr in (0.0015, 0.015):
        fake_run_folder(tmp_path, "inception", 0, [0.2], name=f"i{lr}", optim__lr=lr)
    df = report.select(report.load_runs([tmp_path]), ["optim.lr=1.5e-3"])
    assert set(df["group"]) == {"inception (optim.lr=0.0015)"}
    with pytest.raises(report.ReportError, match="no run has that value"):
        report.select(report.load_runs([tmp_path]), ["optim.lr=0.3"])
    with pytest.raises(report.ReportError, match="no run's config defines optim.momentum"):
        report.select(report.load_runs([tmp_path]), ["optim.momentum=0.9"])
    with pytest.raises(report.ReportError, match="write KEY=VALUE"):
        report.select(report.load_runs([tmp_path]), ["optim.lr"])


def test_a_key_that_some_runs_lack(tmp_path):
    """A key a newer bnrepro added (one value among the runs that have it) does not split a
    group; a key whose values differ does, a run without it being "?"."""
    fake_run_folder(tmp_path / "a", "bn_x30", 0, [0.2], optim__lr=0.045, model__head_bn=False)
    fake_run_folder(tmp_path / "a", "bn_x30", 1, [0.3], optim__lr=0.045)
    assert set(report.load_runs([tmp_path / "a"])["group"]) == {"bn_x30"}
    fake_run_folder(tmp_path / "a", "bn_x30", 2, [0.4], optim__lr=0.045, model__head_bn=True)
    assert set(report.load_runs([tmp_path / "a"])["group"]) == {
        "bn_x30 (model.head_bn=false)",
        "bn_x30 (model.head_bn=?)",
        "bn_x30 (model.head_bn=true)",
    }
