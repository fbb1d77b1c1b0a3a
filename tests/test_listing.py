"""Start-up at scale (issue 23): with several ranks the training tree is listed once, by rank 0,
and sent to the others (data.datasets.find_imagenet_once); the tars are unpacked once per node,
every rank waiting; a failure on one rank ends every rank with a one-line error, never a hang.
Two CPU ranks (torchrun, gloo); the per-node cases pass LOCAL_RANK explicitly (0 on both ranks
= two nodes sharing one file system)."""

import json
import os
import subprocess
import sys

import pytest
from test_data import write_tars

WORKER = """
import json, os, sys
import torch.distributed as dist
import torchvision.datasets.imagenet as tv
from bnrepro import distributed
from bnrepro.data import datasets, layouts
from bnrepro.errors import DataError

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo")
folders, tars, out = sys.argv[1:4]
tv.ARCHIVE_META = {k: tuple(v) for k, v in json.loads(sys.argv[4]).items()}  # the test tars' MD5s
calls = {"scan": 0, "unpack": 0}
scan, unpack = layouts.find_imagenet, layouts.unpack_tars
def counted(name, f):
    def call(*args):
        calls[name] += 1
        return f(*args)
    return call
datasets.find_imagenet = counted("scan", scan)
layouts.unpack_tars = datasets.unpack_tars = counted("unpack", unpack)

def listing(root, local_rank):
    train, val, classes = datasets.find_imagenet_once(
        root, rank=rank, local_rank=local_rank, world_size=world)
    return [train.root, train.files.astype(str).tolist(), train.labels.tolist(),
            val.files.astype(str).tolist(), val.labels.tolist(), classes]

result = {"folders": listing(folders, rank), "folder_calls": dict(calls)}
calls.update(scan=0, unpack=0)
result["tars"] = listing(tars, 0)  # two "nodes" on one file system
result["tar_calls"] = dict(calls)
try:
    listing(folders + "/nowhere", rank)
except DataError as err:
    result["missing"] = str(err)
ran = []
distributed.once_per_node(lambda: ran.append(rank), local_rank=rank, world_size=world)
result["one_node"] = len(ran)
distributed.once_per_node(lambda: ran.append(rank), local_rank=0, world_size=world)
result["two_nodes"] = len(ran)
def fail():
    raise DataError("no space left on device")
try:
    distributed.once_per_node(fail if rank == 1 else lambda: None, local_rank=0, world_size=world)
except Exception as err:
    result["node_failure"] = f"{type(err).__name__}: {err}"
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
def test_two_ranks_list_once_and_unpack_once(image_folder_tree, tmp_path):
    root, classes = image_folder_tree
    tars, _, archive_meta = write_tars(root, tmp_path)
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(root), str(tars), str(tmp_path),
           json.dumps(archive_meta)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # The folders: scanned by rank 0 alone; rank 1 has the same listing, label for label.
    assert rank0["folder_calls"]["scan"] == 1 and rank1["folder_calls"]["scan"] == 0
    assert rank0["folders"] == rank1["folders"] and rank0["folders"][-1] == classes
    assert len(rank0["folders"][1]) == 24 and rank0["folders"][0] == str(root)
    # The tars on one file system, first rank of two "nodes" each: unpacked once, by rank 0.
    assert rank0["tar_calls"] == {"scan": 1, "unpack": 1}
    assert rank1["tar_calls"] == {"scan": 0, "unpack": 0}  # it found them unpacked
    assert rank0["tars"] == rank1["tars"] and rank0["tars"][-1] == classes
    assert (tars / "train").is_dir() and (tars / "val").is_dir()
    # Rank 0's DataError is every rank's, with its message.
    assert "does not exist" in rank0["missing"] and rank0["missing"] == rank1["missing"]
    # Once per node: one node (local ranks 0, 1) once; two nodes (0, 0) once each.
    assert rank0["one_node"] + rank1["one_node"] == 1
    assert rank0["two_nodes"] + rank1["two_nodes"] == 3
    # A node's failure ends every rank: its own error there, NodeFailed naming it elsewhere.
    assert rank1["node_failure"] == "DataError: no space left on device"
    assert rank0["node_failure"] == (
        "NodeFailed: rank 1 failed before this rank could start: DataError: no space left on device"
    )
