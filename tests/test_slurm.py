"""The SLURM path (issue 6): the launcher config, then, against a real cluster, the sbatch
templates, srun DDP, requeue and the warning signal, the Hydra launcher, scripts/submit_paper.sh.

The `slurm` tests need a running cluster: `scripts/local_slurm.sh start` (one node, this machine).
Without one they skip, unless BNREPRO_REQUIRE_SLURM=1 (CI), where they fail. Tiny CPU jobs:
    .venv/bin/pytest -m slurm tests/test_slurm.py      # 4-6 minutes on 2 shared cores
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnrepro.checkpoint import config_diff
from bnrepro.config import CONFIG_DIR, compose
from bnrepro.data import build_datasets

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
# A tiny network on 32 px images, one CPU, no W&B: a job spends most of its time starting Python.
TINY = [
    "model.width_mult=0.125",
    "data.train_crop=32",
    "data.eval_resize=37",
    "data.eval_crop=32",
    f"data.batch_size={BATCH}",
    "data.num_workers=0",
    "runtime.device=cpu",
    "runtime.progress=false",
    "trainer.eval_max_images=64",
    "logger=local",
]
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def budget(max_images: int, every: int) -> list[str]:
    """Training length, and how often to log, evaluate and checkpoint, in images."""
    return [
        f"trainer.max_images={max_images}",
        f"trainer.log_every_images={every}",
        f"trainer.eval_every_images={max_images}",
        f"trainer.ckpt_every_images={every}",
    ]


def on_cluster(test):
    """Needs the local SLURM cluster (marker `slurm`); tens of seconds of tiny CPU jobs."""
    return pytest.mark.slurm(pytest.mark.slow(test))


def launcher_config(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(
            "train", ["hydra/launcher=slurm", *overrides], return_hydra_config=True
        )


def test_cluster_overrides_reach_the_launcher():
    cfg = launcher_config("cluster.partition=gpu", "cluster.gpus_per_node=4", "cluster.nodes=2")
    launcher = cfg.hydra.launcher
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    launcher_class = get_class(launcher._target_)  # hydra-submitit's, saying what it submits
    assert issubclass(launcher_class, BaseSubmititLauncher) and launcher_class._EXECUTOR == "slurm"
    assert launcher.partition == "gpu" and launcher.nodes == 2
    assert launcher.gpus_per_node == launcher.tasks_per_node == 4  # one process per GPU
    assert launcher.additional_parameters.requeue is True


def test_cluster_settings_do_not_change_training():
    """Infrastructure only: the training config is the same with or without the launcher, and a
    run may resume under other cluster settings."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(compose("train", ["experiment=bn_x30"]), resolve=True)
    slurm = OmegaConf.to_container(launcher_config("experiment=bn_x30", "cluster.nodes=4"))
    slurm.pop("hydra")  # Hydra's own node needs a running job (hydra.job.num) to resolve
    slurm = OmegaConf.to_container(OmegaConf.create(slurm), resolve=True)
    assert set(slurm) - set(plain) == {"cluster"}
    assert config_diff(plain, slurm) == []
    assert {k: v for k, v in slurm.items() if k != "cluster"} == plain


@pytest.mark.parametrize("template", ["train.sbatch", "ensemble_members.sbatch"])
def test_templates_send_the_trainers_preemption_signal(template):
    signal = compose("train").trainer.preempt_signal
    text = (REPO / "slurm" / template).read_text()
    assert f"#SBATCH --signal=B:{signal}@" in text and "#SBATCH --requeue" in text
    assert f'kill -{signal} "$srun_pid"' in text  # the batch shell forwards it to the tasks
    signal_delay = launcher_config().hydra.launcher.signal_delay_s
    assert f"@{signal_delay}" in text  # the same warning time as the launcher's


@pytest.mark.parametrize("template", ["train.sbatch", "ensemble_members.sbatch"])
def test_templates_end_the_job_when_a_task_dies(template):
    text = (REPO / "slurm" / template).read_text()
    assert "srun --kill-on-bad-exit=1 bnrepro-train" in text


@pytest.mark.parametrize("template", ["train.sbatch", "ensemble_members.sbatch", "ensemble.sbatch"])
def test_templates_log_into_a_folder_git_ignores(template):
    """Issue 24: the templates wrote %x-%j.out into the submission folder (the repository root),
    where git saw it and every later run's provenance said "uncommitted changes". Their logs
    go to logs/, which every checkout has (sbatch does not make --output's folder) and git
    ignores."""
    text = (REPO / "slurm" / template).read_text()
    (output,) = re.findall(r"^#SBATCH --output=(\S+)$", text, flags=re.M)
    assert output.startswith("logs/") and "/" not in output.removeprefix("logs/"), output
    tracked = _run(["git", "ls-files", "logs"], cwd=REPO).stdout.split()
    assert tracked == ["logs/.gitignore"]  # the folder exists in a checkout, nothing else of it
    log = output.replace("%x", "bnrepro-train").replace("%j", "42").replace("%A", "42")
    ignored = _run(["git", "check-ignore", "-q", log.replace("%a", "0")], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"git does not ignore {log}"


@pytest.fixture(scope="session")
def job_env(tmp_path_factory) -> dict[str, str]:
    """The environment the jobs inherit (sbatch exports it): this venv first on PATH, and the
    synthetic data made once here, so that jobs starting together do not all generate it."""
    if shutil.which("sbatch") is None or _run(["sinfo", "-h", "-o", "%T"], check=False).returncode:
        message = "no SLURM cluster: start one with scripts/local_slurm.sh start"
        if os.environ.get("BNREPRO_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    cache = os.environ.get("BNREPRO_CACHE") or str(tmp_path_factory.mktemp("cache"))
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        BNREPRO_CACHE=cache,
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNREPRO_CACHE", cache)  # compose() resolves data.root from it
        build_datasets(compose("train").data)  # generates the tree if missing
    return env


def _run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kwargs)


def sbatch(args: list[str], env: dict, cwd: Path) -> str:
    out = _run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout
    return out.strip().split(";")[0]


def states(job_id: str) -> dict[str, str]:
    """{job id (array tasks as <id>_<i>): state} from accounting."""
    out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"]).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return {jid: state.split()[0] for jid, state in rows}  # "CANCELLED by 0" -> CANCELLED


def queued(job_id: str) -> bool:
    """Still pending or running (a requeued job is pending again)."""
    return bool(_run(["squeue", "-h", "-j", job_id], check=False).stdout.strip())


def wait_done(job_id: str, timeout: float = 240) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not queued(job_id):
            done = states(job_id)
            if done and all(s in DONE_STATES for s in done.values()):
                return done
        time.sleep(1)
    _run(["scancel", job_id], check=False)
    raise AssertionError(f"job {job_id} not done after {timeout}s: {states(job_id)}")


def wait_for(what: str, predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.5)


def assert_completed(job_id: str, log: Path) -> None:
    done = wait_done(job_id)
    text = log.read_text() if log.exists() else "(no log)"
    assert set(done.values()) == {"COMPLETED"}, f"job {job_id}: {done}\n--- {log}:\n{text[-3000:]}"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_one_curve(run_dir: Path, max_images: int, global_batch: int) -> None:
    """The run reached exactly the planned steps and its log is one curve: every logged image
    count once, in order, none missing (the train/loss rows)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["images_seen"] == max_images
    rows = [r for r in metrics(run_dir) if "train/loss" in r]
    seen = [r["images_seen"] for r in rows]
    every = seen[0]
    assert seen == list(range(every, max_images + 1, every)), seen
    assert [r["step"] for r in rows] == [s // global_batch for s in seen]


def train_job(tmp_path: Path, env: dict, *, max_images: int, every: int, sbatch_args=()) -> tuple:
    """Submit slurm/train.sbatch; returns (job id, log path, run folder)."""
    log = tmp_path / "train.out"
    args = [*CPU_JOB, "--ntasks-per-node=1", f"--output={log}", *sbatch_args]
    overrides = ["experiment=bn_x5", "seed=0", f"out_dir={tmp_path}", *TINY]
    job = sbatch([*args, str(REPO / "slurm/train.sbatch"), *overrides, *budget(max_images, every)],
                 env, tmp_path)  # fmt: skip
    return job, log, tmp_path / "bn_x5_seed0"


@on_cluster
def test_sbatch_training_job_leaves_checkpoint_and_metrics(tmp_path, job_env):
    job, log, run_dir = train_job(tmp_path, job_env, max_images=64, every=32)
    assert_completed(job, log)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt_*.pt")) == [
        "ckpt_000000000032.pt",
        "ckpt_000000000064.pt",
    ]
    assert (run_dir / "checkpoints/best.pt").exists()
    assert_one_curve(run_dir, max_images=64, global_batch=BATCH)
    final = [row for row in metrics(run_dir) if row["images_seen"] == 64]
    # the last evaluation, then Algorithm 2's (trainer.pop_stats_batches=auto: a BN network)
    assert "val/top1" in final[-2] and "val_popstats/top1" in final[-1]


@on_cluster
def test_srun_runs_ddp_over_two_tasks(tmp_path, job_env):
    job, log, run_dir = train_job(
        tmp_path, job_env, max_images=64, every=32, sbatch_args=["--ntasks-per-node=2"]
    )
    assert_completed(job, log)
    assert "world 2" in log.read_text()  # rank 0's start-up line: both tasks joined one gloo group
    assert_one_curve(run_dir, max_images=64, global_batch=2 * BATCH)


def first_checkpoint(run_dir: Path):
    return lambda: any((run_dir / "checkpoints").glob("ckpt_*.pt"))


@on_cluster
def test_scontrol_requeue_resumes_from_checkpoint(tmp_path, job_env):
    job, log, run_dir = train_job(tmp_path, job_env, max_images=1600, every=32)
    wait_for("the first checkpoint", first_checkpoint(run_dir))
    _run(["scontrol", "requeue", job])
    assert_completed(job, log)
    text = log.read_text()
    assert "(restart 1)" in text and "resumed at" in text, text[-3000:]
    assert_one_curve(run_dir, max_images=1600, global_batch=BATCH)


@on_cluster
@pytest.mark.parametrize("tasks", [1, 2])
def test_warning_signal_checkpoints_requeues_and_completes(tmp_path, job_env, tasks):
    """USR2 to the batch shell, as SLURM sends it before the time limit (--signal=B:USR2@120);
    with 2 tasks (DDP) every rank stops at the same step and rank 0 alone writes and requeues."""
    max_images = 1600 // tasks  # about 10 s of training either way: time to signal it mid-run
    job, log, run_dir = train_job(
        tmp_path,
        job_env,
        max_images=max_images,
        every=32,
        sbatch_args=[f"--ntasks-per-node={tasks}"],
    )
    wait_for("the first checkpoint", first_checkpoint(run_dir))
    _run(["scancel", "--signal=USR2", "--batch", job])
    assert_completed(job, log)
    text = log.read_text()
    assert text.count("preempted: checkpointed, requeued") == 1, text[-3000:]
    assert "(restart 1)" in text and "resumed at" in text, text[-3000:]
    assert_one_curve(run_dir, max_images=max_images, global_batch=tasks * BATCH)


def task_pids(job_id: str, task: int) -> list[int]:
    """The processes of global task (rank) `task` of the job's steps (`scontrol listpids`)."""
    out = _run(["scontrol", "listpids", job_id]).stdout.splitlines()[
        1:
    ]  # PID JOBID STEPID LOCALID GLOBALID
    rows = [line.split() for line in out]
    return [int(r[0]) for r in rows if len(r) == 5 and r[4] == str(task) and r[2].isdigit()]


@on_cluster
def test_a_killed_rank_ends_the_srun_job_naming_it(tmp_path, job_env):
    """SIGKILL to rank 1 of a 2-task DDP job: srun --kill-on-bad-exit=1 (slurm/train.sbatch) ends
    the other task and the job within a minute, and the log names the task; never a hang."""
    job, log, run_dir = train_job(
        tmp_path, job_env, max_images=100_000, every=32, sbatch_args=["--ntasks-per-node=2"]
    )
    wait_for("the first checkpoint", first_checkpoint(run_dir))
    pids = task_pids(job, 1)
    assert pids, _run(["scontrol", "listpids", job]).stdout
    for pid in pids:
        os.kill(pid, 9)
    killed = time.time()
    done = wait_done(job, timeout=120)
    assert time.time() - killed < 60, f"job {job} outlived its dead rank by a minute"
    assert set(done.values()) == {"FAILED"}, done
    text = log.read_text()
    assert "task 1: Killed" in text, text[-3000:]


@on_cluster
def test_scancel_stops_a_training_job_for_good(tmp_path, job_env):
    """SIGTERM from scancel checkpoints but must not requeue: a cancelled job stays cancelled."""
    job, log, run_dir = train_job(tmp_path, job_env, max_images=1600, every=32)
    wait_for("the first checkpoint", first_checkpoint(run_dir))
    _run(["scancel", job])
    assert wait_done(job) == {job: "CANCELLED"}
    time.sleep(10)  # a requeued job would be back in the queue by now (restart takes ~7 s)
    assert not queued(job), _run(["squeue", "-j", job], check=False).stdout


@on_cluster
def test_hydra_launcher_sweep_runs_an_array(tmp_path, job_env):
    cluster = [
        "hydra/launcher=slurm",
        "cluster.gpus_per_node=0",
        "cluster.tasks_per_node=1",
        "cluster.cpus_per_task=1",
        "cluster.timeout_min=5",  # USR2 comes 2 min early, or up to a minute more (slurmctld polls)
    ]
    cmd = ["bnrepro-train", "-m", "experiment=bn_x5,bn_x30", f"out_dir={tmp_path}", *cluster]
    # the launcher waits for the jobs and fails if one fails
    out = _run([*cmd, *TINY, *budget(32, 32)], check=False, env=job_env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    logs = sorted(tmp_path.glob("multirun/*/.submitit/*_*/*_log.out"))
    assert len(logs) == 2, logs
    array_id = logs[0].parent.name.split("_")[0]
    assert wait_done(array_id) == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}
    summaries = [json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")]
    assert sorted(s["experiment_name"] for s in summaries) == ["bn_x30", "bn_x5"]
    assert all(s["images_seen"] == 32 for s in summaries)
    # issue 24: it said nothing; each job's id, run folder and log as it was submitted, the
    # table of jobs at the end
    submitted = [line for line in out.stdout.splitlines() if line.startswith("submitted job ")]
    (sweep_dir,) = tmp_path.glob("multirun/*")
    for i, (line, name) in enumerate(zip(submitted, ["bn_x5", "bn_x30"], strict=True)):
        run = sweep_dir / f"{i}_{name}_seed0"
        assert line == f"submitted job {array_id}_{i}: run folder {run}, log {logs[i]}", line
    assert f"sweep {sweep_dir}: 2 jobs, 2 done" in out.stdout


@on_cluster
def test_submit_paper_runs_members_then_the_ensemble(tmp_path, job_env):
    env = dict(
        job_env,
        GPUS="0",
        CPUS="1",
        TIME="10",
        OUT_DIR=str(tmp_path),
        TRAIN_ARGS=" ".join([*TINY, *budget(16, 16)]),
        ENSEMBLE_ARGS="crops=1 max_images=16 runtime.progress=false runtime.device=cpu data.num_workers=0 "
        "data.eval_resize=37 data.eval_crop=32",
    )
    out = _run([str(REPO / "scripts/submit_paper.sh")], env=env, cwd=tmp_path)
    jobs = dict(line.split() for line in out.stdout.splitlines())
    variants = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid"]
    assert list(jobs) == [*variants, "bn_x30_ensemble_members", "ensemble"]
    logs = tmp_path / "slurm-logs"
    for name in [*variants, "bn_x30_ensemble_members", "ensemble"]:
        done = wait_done(jobs[name], timeout=400)
        assert set(done.values()) == {"COMPLETED"}, (name, done, _tails(logs))
    assert len(states(jobs["bn_x30_ensemble_members"])) == 6
    for run in [
        *(f"{v}_seed0" for v in variants),
        *(f"bn_x30_ensemble_member{i}_seed{i}" for i in range(6)),
    ]:
        assert json.loads((tmp_path / run / "summary.json").read_text())["images_seen"] == 16
    results = list((tmp_path / "ensemble").glob("*/results.json"))
    assert len(results) == 1, _tails(logs)
    assert len(json.loads(results[0].read_text())["members"]) == 6
    # afterok: the ensemble started only after the last member ended
    members_end = _times(jobs["bn_x30_ensemble_members"], "End")
    assert min(_times(jobs["ensemble"], "Start")) >= max(members_end)


def _times(job_id: str, field: str) -> list[str]:
    """ISO times sort as strings."""
    out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", field]).stdout
    return [t for t in out.split() if t]


def _tails(folder: Path) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text()[-1500:]}" for p in sorted(folder.glob("*")))
