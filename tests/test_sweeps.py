"""Issue 24: sweeps that name themselves and report what they did.

A -m sweep puts the keys it varies (besides experiment and seed) into its runs' names, so every
point has its own folder and W&B name and resumes there; a single run keeps its fixed name. A
sweep ends with a table of its jobs and, over several experiments, their comparison (steps to
Inception's best and the final top-1, with intervals) and a plot; compare=bn_x30 is the README's
first command; under a submitit launcher each job's id, run folder and log are printed as it is
submitted.
"""

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import TINY_TRAIN

from bnrepro import cli, sweeps
from bnrepro.checkpoint import RunFolder
from bnrepro.config import compose
from bnrepro.errors import EXIT_USER_ERROR
from bnrepro.figures import compare
from bnrepro.stats import wilson

# ---------------------------------------------------------------- names


def test_the_keys_a_sweep_varies():
    arguments = ["experiment=inception,bn_x30", "optim.lr=0.01,0.03", "data.root=/x",
                 "model.width_mult=choice(0.25,0.5)", "seed=range(0,2)", "data=synthetic"]  # fmt: skip
    assert sweeps.swept_keys(arguments) == ["experiment", "optim.lr", "model.width_mult", "seed"]
    assert sweeps.fixed_keys(arguments) == ["data.root", "data"]
    # hydra.sweeper.params first, the command line after: its value of a key wins
    both = sweeps.sweep_arguments(["experiment=bn_x30"], {"experiment": "inception,bn_x30"})
    assert both == ["experiment=inception,bn_x30", "experiment=bn_x30"]
    assert sweeps.swept_keys(both) == [] and sweeps.fixed_keys(both) == ["experiment"]


def test_short_names():
    assert sweeps.tag([("optim.lr", "0.01")]) == "_lr0.01"
    assert sweeps.tag([("data", "mnist"), ("model.batch_norm", "false")]) == (
        "_data-mnist_batch_norm-false"
    )
    assert sweeps.tag([("optim.lr", "0.1"), ("model.lr", "0.2")]) == "_optim.lr0.1_model.lr0.2"
    assert sweeps.tag([("trainer.monitor.layers", "[a,b/c]")]) == "_layers-a-b-c"  # path-safe
    assert sweeps.tag([]) == ""
    # the job's overrides, less what the sweep does not vary and what the name shows anyway
    job = ["experiment=bn_x30_ensemble", "member=2", "optim.lr=0.01", "data.root=/x", "seed=1"]
    assert sweeps.job_tag(job, ["data.root"]) == "_lr0.01"


def test_a_clash_suggests_a_run_name_in_the_sweeps_form():
    config = {"run_name": "bn_x30_seed0", "seed": 0, "optim": {"lr": 0.01},
              "model": {"batch_norm": False}}  # fmt: skip
    assert sweeps.suggested_run_name(config, ["optim.lr"]) == "bn_x30_lr0.01_seed0"
    assert sweeps.suggested_run_name(config, ["model.batch_norm", "optim.lr"]) == (
        "bn_x30_batch_norm-false_lr0.01_seed0"
    )
    assert sweeps.suggested_run_name({**config, "run_name": "mine"}, ["optim.lr"]) == "mine_lr0.01"


def test_a_single_run_keeps_its_fixed_name():
    assert compose("train", ["optim.lr=0.01"]).run_name == "bn_x30_seed0"
    cfg = compose("train", ["experiment=bn_x30_ensemble", "member=3"])
    assert cfg.run_name == "bn_x30_ensemble_member3_seed3"


# ---------------------------------------------------------------- the comparison


def run_with(tmp_path: Path, num: int, experiment: str, curve: list[tuple[float, float]],
             n: int = 500) -> compare.Run:  # fmt: skip
    """A run folder holding a summary and these (paper steps, val top-1) evaluations."""
    folder = RunFolder(tmp_path / f"{num}_{experiment}_seed0")
    folder.path.mkdir(parents=True)
    rows = [{"paper_steps": s, "images_seen": s * 32, "val/top1": t, "val/images": n}
            for s, t in curve]  # fmt: skip
    folder.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = max(t for _, t in curve)
    folder.summary.write_text(json.dumps({"experiment_name": experiment, "best/val/top1": best}))
    return compare.read_run(num, folder.path)


def test_steps_to_inceptions_best_with_their_intervals(tmp_path):
    """Figure 3's measure: steps to Inception's best, known between two evaluations; the final
    top-1 with its Wilson interval over the val images; the ratio over both intervals."""
    inception = run_with(tmp_path, 0, "inception", [(62.5, 0.12), (125, 0.18), (187.5, 0.224),
                                                     (250, 0.21)])  # fmt: skip
    bn = run_with(tmp_path, 1, "bn_x30", [(62.5, 0.3), (125, 0.35), (187.5, 0.4), (250, 0.42)])
    text, target, reference = compare.comparison([inception, bn])
    assert (target, reference) == (0.224, "0_inception_seed0")
    lines = text.splitlines()
    assert "target 22.4%" in lines[0] and "95% Wilson" in lines[0]
    row = {line.split()[0]: line for line in lines[2:4]}
    assert "by 187.5 (after 125)" in row["0_inception_seed0"]
    assert "by 62.5 (after 0)" in row["1_bn_x30_seed0"]
    low, high = wilson(105, 500)  # 21.0% of 500
    assert f"21.0% ({100 * low:.1f}%-{100 * high:.1f}%, 500 images)" in row["0_inception_seed0"]
    assert "42.0% (" in row["1_bn_x30_seed0"]
    assert lines[-1] == ("  0_inception_seed0 took at least 2x the paper steps of "
                         "1_bn_x30_seed0 to reach 22.4%")  # fmt: skip
    # one experiment: nothing to compare
    assert compare.comparison([inception]) is None


def test_a_run_that_never_reaches_the_target_and_one_without_val_images(tmp_path):
    inception = run_with(tmp_path, 0, "inception", [(100, 0.2), (200, 0.3)])
    slow = run_with(tmp_path, 1, "bn_baseline", [(100, 0.1), (200, 0.25)], n=0)
    text, _, _ = compare.comparison([inception, slow])
    assert "never (within 200)" in text and "interval unknown: no val/images" in text


# ---------------------------------------------------------------- sweeps, end to end


def sweep_command(argv: list[str], capsys) -> tuple[int, str]:
    """bnrepro-train in this process; (exit status, what it printed)."""
    status = 0
    try:
        cli.bnrepro_train(argv)
    except SystemExit as stop:
        status = stop.code or 0
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.mark.slow
def test_a_sweep_names_its_runs_reports_them_and_resumes_each_in_its_folder(
    tiny_data_root, tmp_path, capsys, monkeypatch
):
    """Issue 24: every run of an LR sweep was named bn_x30_seed0 (folder suffix and W&B name) and
    the sweep ended without a word; now each point is <num>_bn_x30_lr<lr>_seed0, named so in
    W&B, the sweep prints its jobs, and the same sweep again resumes each point in its folder."""
    from test_wandb import _records_when_done

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_NAME", raising=False)
    sweep_dir = tmp_path / "sweep"
    argv = ["-m", *TINY_TRAIN, f"data.root={tiny_data_root}", f"out_dir={tmp_path}",
            "optim.lr=0.01,0.02", "logger=wandb", "logger.wandb.mode=offline",
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    status, out = sweep_command([*argv, "trainer.max_images=48"], capsys)
    assert status == 0, out
    names = ["0_bn_x30_lr0.01_seed0", "1_bn_x30_lr0.02_seed0"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == names
    assert "[hydra] Launching 2 jobs locally" in out  # Hydra's launch lines
    table = out[out.index(f"sweep {sweep_dir}: 2 jobs, 2 done") :].splitlines()
    assert table[1].split() == ["#", "status", "best", "top-1", "run", "folder"]
    for line, name in zip(table[2:4], names, strict=True):
        assert line.split()[:2] == [name[0], "done"] and line.endswith(str(sweep_dir / name))
    for name in names:
        (run_file,) = (sweep_dir / name).glob("wandb/offline-run-*/run-*.wandb")
        (run,) = [r.run for r in _records_when_done(run_file) if r.HasField("run")]
        assert run.display_name == name.split("_", 1)[1]  # bn_x30_lr0.01_seed0
    assert compose("train", []).run_name == "bn_x30_seed0"  # a later single run: its own name

    status, out = sweep_command(argv, capsys)  # the same sweep, to 96 images: each resumes
    assert status == 0, out
    for name in names:
        log = (sweep_dir / name / "train.log").read_text()
        assert "resumed at 48 images" in log and "holds a run with another config" not in out
        assert json.loads((sweep_dir / name / "summary.json").read_text())["images_seen"] == 96


@pytest.mark.slow
def test_a_failed_job_is_in_the_table_and_the_sweep_exits_with_its_status(
    tiny_data_root, tmp_path, capsys
):
    sweep_dir = tmp_path / "sweep"
    status, out = sweep_command(["-m", *TINY_TRAIN, f"data.root={tiny_data_root}",
                                 f"out_dir={tmp_path}", "optim.lr=0.01,nan",
                                 "trainer.max_images=16", f"hydra.sweep.dir={sweep_dir}"],
                                capsys)  # fmt: skip
    assert status == EXIT_USER_ERROR
    table = out[out.index(f"sweep {sweep_dir}: 2 jobs, 1 done, 1 failed") :].splitlines()
    assert table[2].split()[:2] == ["0", "done"]
    assert table[3].split()[:3] == ["1", "failed", "-"]
    assert "optim.lr=nan is not valid" in table[4]


@pytest.mark.slow
def test_compare_trains_inception_and_bn_x30_and_compares_them(tiny_data_root, tmp_path, capsys):
    """The README's first command (compare=bn_x30), at debug=tiny: a sweep of Inception and
    BN-x30 without -m, ending with the comparison and its plot."""
    sweep_dir = tmp_path / "sweep"
    status, out = sweep_command(["compare=bn_x30", *TINY_TRAIN, f"data.root={tiny_data_root}",
                                 f"out_dir={tmp_path}", f"hydra.sweep.dir={sweep_dir}"],
                                capsys)  # fmt: skip
    assert status == 0, out
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == [
        "0_inception_seed0", "1_bn_x30_seed0"]  # fmt: skip
    text = out[out.index("comparison (val top-1") :]
    assert "the best of 0_inception_seed0" in text and "40 images" in text
    assert text.count("%-") >= 2  # each final top-1 with its interval
    plot = sweep_dir / compare.PLOT
    assert f"plot: {plot}" in out
    svg = ElementTree.parse(plot).getroot()
    assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2


@pytest.mark.slow
def test_a_submitit_launcher_prints_each_job_as_it_is_submitted(tiny_data_root, tmp_path):
    """Issue 24: `-m ... hydra/launcher=slurm` exited 0 printing nothing. The launcher (here
    with submitit's local executor: the same code without a cluster) prints each job's id, run
    folder and log as it submits it, then the table of jobs."""
    sweep_dir = tmp_path / "sweep"
    cmd = [str(Path(sys.executable).parent / "bnrepro-train"), "-m", *TINY_TRAIN,
           f"data.root={tiny_data_root}", f"out_dir={tmp_path}", "optim.lr=0.01,0.02",
           "trainer.max_images=16", f"hydra.sweep.dir={sweep_dir}",
           "hydra/launcher=submitit_local",
           "hydra.launcher._target_=hydra_plugins.bnrepro_launcher.launcher.LocalLauncher"]  # fmt: skip
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, WANDB_MODE="disabled"))  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    submitted = [line for line in out.stdout.splitlines() if line.startswith("submitted job ")]
    assert len(submitted) == 2, out.stdout
    for line, name in zip(submitted, ["0_bn_x30_lr0.01_seed0", "1_bn_x30_lr0.02_seed0"],
                          strict=True):  # fmt: skip
        job_id, rest = line.removeprefix("submitted job ").split(": ", 1)
        folder, log = rest.removeprefix("run folder ").split(", log ")
        assert Path(folder) == sweep_dir / name and (sweep_dir / name / "summary.json").is_file()
        assert Path(log).is_file() and job_id in log and Path(log).stat().st_mtime >= started - 1
    assert f"sweep {sweep_dir}: 2 jobs, 2 done" in out.stdout
