"""W&B: an offline run holds the logged history and the full config (bnrepro/tracking.py).

wandb has no public reader for offline runs (`wandb.Api()` cannot read them): the .wandb file is read here
as LevelDB-log-framed protobuf records.
"""

import json
import os
import struct
import time
from pathlib import Path

import pytest
from conftest import TINY_DATA

from bnrepro import checkpoint
from bnrepro import train as T
from bnrepro.config import compose

BLOCK = 32 * 1024  # LevelDB log block; each record: uint32 crc, uint16 length, uint8 type


def wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # full, or last piece of a record
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def test_offline_run_holds_history_and_config(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [*tiny_overrides, "logger=wandb", "logger.wandb.mode=offline"]
    T.train(compose("train", [*overrides, "logger.wandb.tags=[test]", "trainer.max_images=48"]))
    run_dir = tmp_path / "bn_x30_seed0"
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(100):  # wandb-core may still be flushing after finish(): wait for the exit
        records = list(wandb_records(path))
        if any(r.HasField("exit") for r in records):
            break
        time.sleep(0.1)

    (run,) = [r.run for r in records if r.HasField("run")]
    assert (run.run_group, run.job_type, list(run.tags)) == ("bn_x30", "train", ["test"])
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["model"]["batch_norm"] is True and config["optim"]["lr"] == 0.045
    assert config["trainer"]["max_images"] == 48  # the full resolved config

    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.HasField("history")
    ]
    local = {}  # W&B merges what is logged at one step into one history row
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        local.setdefault(row["step"], {}).update(row)
    assert [h["_step"] for h in history] == list(local) == [1, 2, 3]
    for h, row in zip(history, local.values(), strict=True):
        assert {k: h[k] for k in row if k != "time"} == {
            k: v for k, v in row.items() if k != "time"
        }
    assert "val/top1" in history[-1] and "train/loss" in history[0]

    # the run id is in the checkpoint, for a resumed run to continue the same W&B run
    ckpt = checkpoint.load(run_dir / "checkpoints" / "ckpt_000000000048.pt")
    assert path.name == f"run-{ckpt['wandb_run_id']}.wandb"


def _records_when_done(path: Path) -> list:
    for _ in range(100):  # wandb-core may still be flushing after finish(): wait for the exit
        records = list(wandb_records(path))
        if any(r.HasField("exit") for r in records):
            return records
        time.sleep(0.1)
    return records


def test_wandb_environment_variables_are_the_defaults(monkeypatch):
    """WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY fill logger=wandb's values; the command line wins."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.setenv("WANDB_ENTITY", "lab")
    w = compose("train", ["logger=wandb"]).logger.wandb
    assert (w.mode, w.project, w.entity) == ("offline", "mine", "lab")
    explicit = ["logger=wandb", "logger.wandb.mode=disabled", "logger.wandb.project=p"]
    w = compose("train", explicit).logger.wandb
    assert (w.mode, w.project) == ("disabled", "p")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_ENTITY")
    w = compose("train", ["logger=wandb"]).logger.wandb
    assert (w.mode, w.entity) == ("online", None)  # W&B's own defaults


def test_wandb_mode_offline_alone_runs_offline_and_logs_checkpoints(
    tiny_overrides, tmp_path, monkeypatch
):
    """WANDB_MODE=offline and no API key: `logger=wandb` runs offline (no login), in WANDB_DIR
    when set; with log_checkpoints every checkpoint is a version of model-<run id>; the ensemble
    records the members' artifacts (W&B inputs, and in results.json)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    tiny = [o for o in tiny_overrides if not o.startswith("logger.wandb.mode=")]  # env alone
    overrides = [*tiny, "logger=wandb", "logger.wandb.log_checkpoints=true"]
    T.train(compose("train", [*overrides, "trainer.max_images=48"]))
    run_dir = tmp_path / "bn_x30_seed0"
    assert not list(run_dir.glob("wandb"))  # WANDB_DIR, not the run folder
    (path,) = (tmp_path / "wandb_dir").glob("wandb/offline-run-*/run-*.wandb")
    ckpt = checkpoint.load(run_dir / "checkpoints" / "ckpt_000000000048.pt")
    artifacts = [r.artifact for r in _records_when_done(path) if r.HasField("artifact")]
    assert {(a.name, a.type) for a in artifacts} == {(f"model-{ckpt['wandb_run_id']}", "model")}
    assert any({"latest", "best", "images-48"} <= set(a.aliases) for a in artifacts)

    from bnrepro.evaluation import ensemble

    ens = compose("ensemble", [
        f"checkpoints=[{run_dir}]", f"data.root={tiny_overrides[-2].split('=', 1)[1]}",
        *TINY_DATA, "crops=1", "max_images=4",
        "runtime.progress=false", "logger=wandb", "member_checkpoint=best",
    ])  # fmt: skip
    results = ensemble.evaluate_ensemble(ens, tmp_path / "ensemble")
    (member,) = results["members"]
    assert member["artifact"] == f"model-{ckpt['wandb_run_id']}"
    assert member["wandb_run_id"] == ckpt["wandb_run_id"] and len(member["sha256"]) == 64
    runs = {}
    for path in (tmp_path / "wandb_dir").glob("wandb/offline-run-*/run-*.wandb"):
        records = _records_when_done(path)
        (run,) = [r.run for r in records if r.HasField("run")]
        runs[run.job_type] = records
    (run,) = [r.run for r in runs["ensemble"] if r.HasField("run")]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    # offline, wandb cannot record an artifact's use: the run's config names the members
    assert [m["artifact"] for m in config["members"]] == [f"model-{ckpt['wandb_run_id']}"]


def test_wandb_environment_variables_win_over_the_config_and_the_command_line_over_both(
    monkeypatch,
):
    """Issue 24: WANDB_NAME, WANDB_RUN_GROUP, WANDB_TAGS and WANDB_NOTES were ignored (the run
    name and the experiment always won); as W&B documents them, they replace the config's
    defaults, and a value on the command line replaces them."""
    for key in ("WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_NOTES"):
        monkeypatch.delenv(key, raising=False)
    w = compose("train", ["logger=wandb"]).logger.wandb
    assert (w.name, w.group, list(w.tags), w.notes) == (None, "bn_x30", [], None)  # the defaults
    monkeypatch.setenv("WANDB_NAME", "lr-probe")
    monkeypatch.setenv("WANDB_RUN_GROUP", "probes")
    monkeypatch.setenv("WANDB_TAGS", "paper, cpu")  # W&B's form: comma-separated
    monkeypatch.setenv("WANDB_NOTES", "a try")
    for logger in ("wandb", "local"):  # logger=local turned on with logger.wandb.mode=offline
        w = compose("train", [f"logger={logger}"]).logger.wandb
        assert (w.name, w.group, list(w.tags), w.notes) == ("lr-probe", "probes", ["paper", "cpu"],
                                                            "a try")  # fmt: skip
    explicit = ["logger=wandb", "logger.wandb.name=mine", "logger.wandb.group=g",
                "logger.wandb.tags=[t]", "logger.wandb.notes=n"]  # fmt: skip
    w = compose("train", explicit).logger.wandb
    assert (w.name, w.group, list(w.tags), w.notes) == ("mine", "g", ["t"], "n")
    w = compose("ensemble", ["logger=wandb", "checkpoints=x.pt"]).logger.wandb
    assert (w.name, w.group) == ("lr-probe", "probes")  # bnrepro-ensemble's W&B run too


@pytest.mark.slow
def test_a_resumed_offline_run_is_two_folders_of_one_id_and_one_sync_command(
    tiny_overrides, tmp_path, monkeypatch, capsys
):
    """Issue 24: wandb cannot resume offline: each start writes offline-run-<time>-<id>, both with
    the run's id (the checkpoint's). The run's last line names the `wandb sync` command that
    uploads both as one run (checked as far as offline allows: `wandb sync --dry-run` takes both).
    The run record carries WANDB_NAME / _RUN_GROUP / _TAGS / _NOTES."""
    import glob
    import shlex
    import subprocess
    import sys

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_NAME", "lr-probe")
    monkeypatch.setenv("WANDB_RUN_GROUP", "probes")
    monkeypatch.setenv("WANDB_TAGS", "paper, cpu")
    monkeypatch.setenv("WANDB_NOTES", "a try")
    overrides = [*tiny_overrides, "logger=wandb", "logger.wandb.mode=offline"]
    T.train(compose("train", [*overrides, "trainer.max_images=48"]))  # stopped here ...
    T.train(compose("train", overrides))  # ... and resumed to 96
    run_dir = tmp_path / "bn_x30_seed0"
    ckpt = checkpoint.load(run_dir / "checkpoints" / "ckpt_000000000096.pt")
    run_id = ckpt["wandb_run_id"]
    folders = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders), folders
    assert [p.name for f in folders for p in f.glob("*.wandb")] == [f"run-{run_id}.wandb"] * 2
    for folder in folders:
        (run,) = [r.run for r in _records_when_done(folder / f"run-{run_id}.wandb")
                  if r.HasField("run")]  # fmt: skip
        assert (run.run_id, run.display_name, run.run_group) == (run_id, "lr-probe", "probes")
        assert (list(run.tags), run.notes) == (["paper", "cpu"], "a try")

    lines = [line for line in capsys.readouterr().out.splitlines() if "wandb sync" in line]
    assert len(lines) == 2  # one per start, the same command
    command = lines[-1].split("with: ", 1)[1]
    assert command == f"wandb sync {run_dir}/wandb/offline-run-*-{run_id}"
    argv = shlex.split(command)
    paths = sorted(glob.glob(argv[2]))
    assert paths == [str(f) for f in folders]
    wandb = str(Path(sys.executable).parent / "wandb")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    out = subprocess.run([wandb, "sync", "--dry-run", *paths], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0 and "Would sync 2 run(s)" in out.stdout + out.stderr, out
