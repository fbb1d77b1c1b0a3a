"""W&B: an offline run holds the logged history and the full config (bnrepro/tracking.py).

wandb has no public reader for offline runs (`wandb.Api()` cannot read them): the .wandb file is read here
as LevelDB-log-framed protobuf records.
"""

import json
import struct
import time
from pathlib import Path

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
        *[o for o in tiny_overrides if o.startswith("data.")], "crops=1", "max_images=4",
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
