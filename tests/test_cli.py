"""What a person sees: every known user error ends in one line with its exit status (the real
console scripts), a bug keeps its traceback; one console line per evaluation, copied to the run
folder's train.log with the command-line overrides beside it; a user's own config folder."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bnrepro import cli
from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.errors import EXIT_DIVERGED, EXIT_USER_ERROR, Diverged

BIN = Path(sys.executable).parent


def command(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A console script as a user runs it (installed next to this Python)."""
    cmd = [str(BIN / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line(out: subprocess.CompletedProcess, status: int, *words: str) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == status, out.stderr
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_a_wrong_type_is_refused_before_anything_starts(tmp_path):
    out = command("bnrepro-train", "optim.lr=fast", f"out_dir={tmp_path}")
    line = assert_one_line(out, EXIT_USER_ERROR, "bnrepro-train: error:", "optim.lr", "number")
    assert "'fast'" in line
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written


def test_hydras_own_refusals_are_one_line_too(tmp_path):
    out = command("bnrepro-train", "optim.lrr=0.1", f"out_dir={tmp_path}")
    assert_one_line(out, EXIT_USER_ERROR, "optim.lrr is not a config key", "did you mean optim.lr?")
    out = command("bnrepro-ensemble", "checkpoints=x.pt", "crops=fast", f"out_dir={tmp_path}")
    assert_one_line(out, EXIT_USER_ERROR, "bnrepro-ensemble: error:", "crops")


@pytest.mark.parametrize(
    "args, words",
    [
        (["+optim.lrr=0.1"], ["optim.lrr is not a config key", "did you mean optim.lr?"]),
        (["runtime.amp=fp17"], ["runtime.amp='fp17'", "one of auto, none, bf16, fp16"]),
        (["data.batch_size=0"], ["data.batch_size=0", "an integer >= 1"]),
        (["optim.lr=nan"], ["optim.lr=nan", "a number > 0"]),  # invalid input, not divergence
        # issue 24: a misspelled option or config group gets the nearest one too
        (
            ["experiment=bn_x31"],
            [
                "experiment=bn_x31 is not an option of experiment",
                "(did you mean experiment=bn_x30?)",
                "bn_baseline, bn_x30",
            ],
        ),
        (["data=imagnet"], ["(did you mean data=imagenet?)", "imagenet, mnist, synthetic"]),
        (["expriment=bn_x30"], ["expriment is not a config key (did you mean experiment?)"]),
    ],
)
def test_bad_values_are_one_line_before_anything_is_written(tmp_path, args, words):
    """Issue 19: each one line, exit 2, no traceback, nothing written (`+optim.lrr` trained with
    the key ignored, `data.batch_size=0` ended in a traceback). Issue 24: an unknown option
    (experiment=bn_x31) was Hydra's list of options alone, without the one meant."""
    out = command("bnrepro-train", *args, f"out_dir={tmp_path}")
    assert_one_line(out, EXIT_USER_ERROR, "bnrepro-train: error:", *words)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["trainer.grad_accum=0"], ["trainer.grad_accum=0", "an integer >= 1"]),
        (["optim.lr=fast"], ["optim.lr='fast'", "a number > 0"]),
        (["optim.lrr=0.1"], ["optim.lrr is not a config key", "did you mean optim.lr?"]),
        (["plan.gpu=4"], ["plan.gpu is not a config key", "did you mean plan.gpus?"]),
        (["'optim.lr=choice(0.01,0.1)'"], ["requires --multirun"]),
    ],
)
def test_bnrepro_plan_checks_its_config_as_bnrepro_train_does(args, words):
    """Issue 19: bnrepro-plan trainer.grad_accum=0 ended in a traceback."""
    out = command("bnrepro-plan", *[a.strip("'") for a in args])
    assert_one_line(out, EXIT_USER_ERROR, "bnrepro-plan: error:", *words)


def test_bnrepro_plan_takes_hydras_sweep_syntax():
    """Issue 19: choice() and range() were not understood (plan.py parsed sweeps by hand)."""
    out = command("bnrepro-plan", "-m", "optim.lr=choice(0.01,0.1)", "seed=range(0,2)",
                  "data=imagenet")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| bn_x30 ")]
    assert len(rows) == 4  # 2 LRs x 2 seeds
    assert sorted({line.split("|")[4].strip() for line in rows}) == ["0.08", "0.8"]  # x 256/32


def test_missing_data_and_a_sweep_of_them(tmp_path):
    """data.root=/no/such/dir: one line. In a multirun every run reports its own line, the
    others still run, and the command exits with the status."""
    out = command("bnrepro-train", "data=imagenet", "data.root=/no/such/dir", f"out_dir={tmp_path}")
    assert_one_line(out, EXIT_USER_ERROR, "data.root=/no/such/dir does not exist")
    out = command("bnrepro-train", "-m", "data=imagenet", "data.root=/no/a,/no/b",
                  f"out_dir={tmp_path}")  # fmt: skip
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert out.returncode == EXIT_USER_ERROR and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 2 and "/no/a" in errors[0] and "/no/b" in errors[1]


def test_hydra_full_error_shows_the_traceback(tmp_path):
    import os

    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    out = command("bnrepro-train", "optim.lr=fast", f"out_dir={tmp_path}", env=env)
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_a_run_in_this_process_leaves_the_full_error_setting_as_it_found_it(monkeypatch):
    """run_hydra_app sets FULL_ERROR_ENV while its app runs; left behind, it overrode a later
    command's HYDRA_FULL_ERROR=1 (the test above failed after any in-process run)."""
    import os

    from bnrepro.cli import run_hydra_app
    from bnrepro.errors import FULL_ERROR_ENV

    monkeypatch.delenv(FULL_ERROR_ENV, raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    seen = {}
    run_hydra_app(
        lambda: seen.update(inside=os.environ.get(FULL_ERROR_ENV)), [], "bnrepro-test", "train"
    )
    assert seen == {"inside": ""}  # the user's (unset) setting travels while the app runs
    assert FULL_ERROR_ENV not in os.environ and "HYDRA_FULL_ERROR" not in os.environ


@pytest.mark.slow
def test_checkpoint_and_run_folder_errors_are_one_line(tiny_overrides, tmp_path):
    T.train(compose("train", [*tiny_overrides, "trainer.max_images=48"]))
    ckpt = tmp_path / "bn_x30_seed0" / "checkpoints" / "ckpt_000000000048.pt"
    # the run folder of another config
    out = command("bnrepro-train", *tiny_overrides, "optim.lr=0.1")
    assert_one_line(out, EXIT_USER_ERROR, "holds a run with another config", "optim.lr")
    # a foreign file, then a truncated checkpoint, named by trainer.resume
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    out = command("bnrepro-train", *tiny_overrides, f"trainer.resume={foreign}")
    assert_one_line(out, EXIT_USER_ERROR, "is not a bnrepro checkpoint")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    out = command("bnrepro-train", *tiny_overrides, f"trainer.resume={ckpt}")
    assert_one_line(out, EXIT_USER_ERROR, "truncated or corrupt")


def test_divergence_exits_3_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """In process, the job replaced: a Diverged error ends in one line with EXIT_DIVERGED; any
    other exception is a bug and propagates with its traceback."""
    monkeypatch.setattr(sys, "argv", ["bnrepro-train"])

    def diverge(cfg, run_dir, overrides):
        raise Diverged("the loss is nan at step 3: lower optim.lr")

    monkeypatch.setattr(T, "train_job", diverge)
    with pytest.raises(SystemExit) as exit_info:
        cli.bnrepro_train([f"out_dir={tmp_path}"])
    assert exit_info.value.code == EXIT_DIVERGED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bnrepro-train: error: the loss is nan at step 3: lower optim.lr"]

    def bug(cfg, run_dir, overrides):
        raise KeyError("a bug")

    monkeypatch.setattr(T, "train_job", bug)
    with pytest.raises(KeyError, match="a bug"):
        cli.bnrepro_train([f"out_dir={tmp_path}"])


def test_a_missing_optional_dependency_names_its_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as exit_info:
        cli.bnrepro_report(["runs"])
    assert exit_info.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "bnrepro-report needs matplotlib" in line and "pip install 'bnrepro[figures]'" in line


# ---------------------------------------------------------------- console and run folder


EVAL_LINE = re.compile(  # each accuracy with its 95% interval in brackets
    r"eval \| step (\d+) \| ([\d,]+) images \| [\d,.]+ paper steps \| val top-1 ([\d.]+)% "
    r"\([\d.]+-[\d.]+\) top-5 ([\d.]+)% \([\d.]+-[\d.]+\) loss ([\d.]+) \| "
    r"(?:val \(population BN\) [^|]+\| )?best top-1 ([\d.]+)% \| [\d,]+ img/s \| ETA \S+"
)


def test_one_line_per_evaluation_also_in_train_log(tiny_overrides, tmp_path, monkeypatch, capsys):
    """Without a TTY (pytest's capture is none) every evaluation prints its line; train.log holds
    the same lines and they match metrics.jsonl; a resumed run appends to the log; the CLI records
    the command line's overrides in overrides.yaml."""
    monkeypatch.setattr(sys, "argv", ["bnrepro-train"])
    first = [*tiny_overrides, "trainer.max_images=48", "runtime.progress=true"]
    cli.bnrepro_train(first)
    run_dir = tmp_path / "bn_x30_seed0"
    assert OmegaConf.to_container(OmegaConf.load(run_dir / "overrides.yaml")) == first
    T.train(compose("train", tiny_overrides))  # resumes at 48, goes on to 96
    printed = [m.groups() for m in map(EVAL_LINE.search, capsys.readouterr().out.splitlines()) if m]
    # the final evaluation's line comes again with Algorithm 2's scores (trainer.pop_stats_batches)
    printed = list(dict.fromkeys(printed))

    log = (run_dir / "train.log").read_text().splitlines()
    logged = list(dict.fromkeys(m.groups() for m in map(EVAL_LINE.search, log) if m))
    assert logged == printed and len(logged) == 2
    assert sum("run folder" in line for line in log) == 2  # both starts
    assert any("resumed at 48 images" in line for line in log)

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/top1" in r]
    assert len(evals) == len(logged)
    best = 0.0
    for (step, images, top1, top5, loss, best_top1), row in zip(logged, evals, strict=True):
        best = max(best, row["val/top1"])
        assert int(step) == row["step"] and int(images.replace(",", "")) == row["images_seen"]
        assert float(top1) == pytest.approx(100 * row["val/top1"], abs=0.005)
        assert float(top5) == pytest.approx(100 * row["val/top5"], abs=0.005)
        assert float(loss) == pytest.approx(row["val/loss"], abs=5e-5)
        assert float(best_top1) == pytest.approx(100 * best, abs=0.005)


def test_a_users_own_config_folder(tmp_path):
    """--config-dir adds a folder to Hydra's search path: a cluster file (or an experiment) of
    one's own, outside the installed package."""
    mine = tmp_path / "my-configs"
    (mine / "cluster").mkdir(parents=True)
    (mine / "cluster" / "mine.yaml").write_text(
        "defaults:\n  - default\n  - _self_\npartition: gpu-long\naccount: lab42\n"
    )
    (mine / "experiment").mkdir()
    (mine / "experiment" / "my_bn_x30.yaml").write_text(
        "# @package _global_\ndefaults:\n  - bn_x30\nexperiment_name: my_bn_x30\noptim:\n  lr: 0.03\n"
    )
    out = command("bnrepro-train", "--config-dir", str(mine), "experiment=my_bn_x30",
                  "hydra/launcher=slurm", "cluster=mine", "--cfg", "job")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "partition: gpu-long" in out.stdout and "account: lab42" in out.stdout
    assert "experiment_name: my_bn_x30" in out.stdout and "lr: 0.03" in out.stdout
