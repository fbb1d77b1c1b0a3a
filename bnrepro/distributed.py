"""The job: who am I (rank, world size, device), DDP set-up and teardown, preemption signals and
the SLURM requeue.

The only module that reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and SLURM_*.
Order: torchrun's environment first, then SLURM's (srun, one task per GPU), else one process.
torch is imported inside the functions that need it: the command layer asks `launched_rank()`
(only rank 0 prints a user error) without paying for torch.

A check whose outcome can differ between ranks (the data each reads, the run folder rank 0 locks)
runs through `agree`: every rank ends the same way, and rank 0 alone says why.

    torchrun --nproc_per_node=8 -m bnrepro.train experiment=bn_x30        # one node
    srun --ntasks-per-node=8 bnrepro-train experiment=bn_x30               # SLURM, any nodes
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from bnrepro.errors import CommandError, ConfigError, UserError, one_line

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
Made = TypeVar("Made")


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_ranks(rendezvous: bool = True) -> tuple[int, int, int, dict[str, str]]:
    """(rank, world_size, local_rank, extra env for the rendezvous: with `rendezvous` only) from
    torchrun or SLURM."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (or a user's own launcher)
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), {}
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env:  # srun, one task per GPU
        meeting = {
            "MASTER_ADDR": env.get("MASTER_ADDR") or _slurm_master_addr(),
            # Same port on every task, different per job so two jobs on a node do not collide.
            "MASTER_PORT": env.get("MASTER_PORT") or str(15000 + int(env["SLURM_JOB_ID"]) % 20000),
        } if rendezvous else {}  # fmt: skip
        local = int(env.get("SLURM_LOCALID", 0))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), local, meeting
    return 0, 1, 0, {}


def launched_rank() -> int:
    """This process's rank when a launcher (torchrun, srun) started several, else 0; read from
    the environment alone (no torch, no process group, no scontrol)."""
    rank, world_size, _, _ = _env_ranks(rendezvous=False)
    return rank if world_size > 1 else 0


def tell_launcher(message: str) -> None:
    """Under torchrun, hand a user error's one line to its failure report (its error file, in
    the form torchrun reads), which otherwise says only "To enable traceback see ..."."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)


def _slurm_master_addr() -> str:
    """The first host of the job's node list (`scontrol show hostnames` expands 'node[1-4]')."""
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[0]


def resolve_device(name: str, key: str = "runtime.device", local_rank: int = 0) -> torch.device:
    """auto (CUDA when one is visible), cpu or cuda (the schema's choices); `key` names the
    config key in errors."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda but no CUDA device is visible: use {key}=cpu or auto")
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def setup(device: str = "auto", timeout_s: float | None = None) -> Dist:
    """Initialise the process group when launched as several processes; pick the device.

    runtime.device: auto (cuda if available), cpu or cuda. Backend: nccl on GPU, gloo on CPU.
    runtime.dist_timeout_s (`timeout_s`): a collective that waits longer than this for another
    rank fails, and the job ends. A rank that dies is caught sooner by the launcher (torchrun ends
    the job, srun --kill-on-bad-exit=1 too, both naming the rank); the timeout ends the job when a
    rank hangs instead (a stuck GPU, a stopped process), which no launcher notices. It must exceed
    the longest wait between two collectives: rank 0 writing a checkpoint while the others wait.
    None keeps torch's default (30 minutes for gloo, 10 for NCCL).
    """
    import torch
    import torch.distributed as dist

    resolve_device(device)  # a bad value fails before any rank or rendezvous is read
    rank, world_size, local_rank, rendezvous = _env_ranks()
    dev = resolve_device(device, local_rank=local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        os.environ.update(rendezvous)
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            init_method="env://",
            # NCCL: enforced by its watchdog thread, which aborts the process
            timeout=None if timeout_s is None else timedelta(seconds=timeout_s),
        )
    return Dist(rank, world_size, local_rank, dev)


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (in place; a no-op for one process)."""
    import torch.distributed as dist

    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank if any rank's flag is set (all ranks stop together on preemption)."""
    import torch

    if not d.enabled:
        return flag
    return bool(all_sum(torch.tensor([float(flag)], device=d.device), d).item())


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank. DDP does this at the start of
    each forward; after the last step each replica holds its own batch's update, so sync them
    before evaluating."""
    import torch.distributed as dist

    if d.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled:
        dist.barrier()


def gather(d: Dist, value: object) -> list:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    if not d.enabled:
        return [value]
    values = [None] * d.world_size
    dist.all_gather_object(values, value)
    return values


def agree(d: Dist, check: Callable[[], T]) -> T:
    """check() on every rank, and every rank ends the same way: when it raised a CommandError on
    any rank (data, a checkpoint or the run folder that rank sees), every rank raises the one of
    the lowest such rank, its message naming the rank when that is not rank 0 (rank 0 alone
    prints it: cli.py). One process just runs it."""
    if not d.enabled:
        return check()
    try:
        result, failed = check(), None
    except CommandError as e:
        result, failed = None, e
    verdicts = gather(d, None if failed is None else (one_line(failed), failed.exit_status))
    for rank, verdict in enumerate(verdicts):
        if verdict is None:
            continue
        if rank == d.rank:
            raise failed
        message, status = verdict
        error = CommandError(message if rank == 0 else f"rank {rank}: {message}")
        error.exit_status = status
        raise error
    return result


# [ours] How long start-up work on one rank (unpacking ImageNet's tars: tens of minutes on a slow
# disk) may keep the others waiting; runtime.dist_timeout_s, meant for a hung step, is far shorter.
STARTUP_TIMEOUT = timedelta(hours=6)


@contextlib.contextmanager
def _startup_group():
    """A gloo group over every rank (CPU collectives of Python objects, whatever the training
    backend) that waits up to STARTUP_TIMEOUT; every rank must enter it at the same point."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=STARTUP_TIMEOUT)
    try:
        yield group
    finally:
        dist.destroy_process_group(group)


def from_rank0(make: Callable[[], Made], rank: int, world_size: int) -> Made:
    """make() on rank 0 alone, its result sent to every rank: the others wait for it (a barrier)
    instead of doing the same work at the same time (a file listing: one scan of a shared file
    system, not one per rank). An exception on rank 0 is raised on every rank, so that none waits
    for a result that never comes. Needs the process group of `setup` when world_size > 1."""
    import torch.distributed as dist

    if world_size == 1:
        return make()
    box: list = [None]
    with _startup_group() as group:
        if rank == 0:
            try:
                box[0] = (make(), None)
            except Exception as err:  # noqa: BLE001 - sent on, then raised here as well
                # A UserError travels as it is (one line on every rank), anything else as text.
                sent = err if isinstance(err, UserError) else RuntimeError(f"rank 0: {err!r}")
                box[0] = (None, sent)
                dist.broadcast_object_list(box, src=0, group=group)
                raise
        dist.broadcast_object_list(box, src=0, group=group)
    made, error = box[0]
    if error is not None:
        raise error
    return made


class NodeFailed(UserError):
    """Another rank's `once_per_node` work failed: its own line says why."""


def once_per_node(work: Callable[[], None], local_rank: int, world_size: int) -> None:
    """work() on the first process of each node (LOCAL_RANK 0), every rank waiting until every
    node is done (unpacking the ImageNet tars onto node-local disks). A failure is raised on the
    rank where it happened and as NodeFailed on the others, so that none waits forever."""
    import torch.distributed as dist

    error: Exception | None = None
    if local_rank == 0:
        try:
            work()
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then raised
            error = err
    if world_size == 1:
        if error is not None:
            raise error
        return
    errors: list = [None] * world_size
    with _startup_group() as group:
        why = None if error is None else f"{type(error).__name__}: {error}"
        dist.all_gather_object(errors, why, group=group)
    if error is not None:
        raise error
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        rank, why = failed[0]
        raise NodeFailed(f"rank {rank} failed before this rank could start: {why}")


def slurm_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """Under SLURM, put this job back in the queue (`scontrol requeue`); False when not under SLURM.

    The requeued job runs the same command in the same run folder, so it resumes automatically.
    """
    job_id = slurm_job_id()
    if job_id is None:
        return False
    # Fails harmlessly when someone requeued the job already ("Job is pending execution"):
    # warn, and let the job end normally; its checkpoint is on disk either way.
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"warning: scontrol requeue {job_id} failed: {out.stderr.strip()}", flush=True)
    return out.returncode == 0


class Preemption:
    """Sets `requested` on SIGTERM, trainer.preempt_signal or (once `catch_ctrl_c` is called)
    Ctrl-C; the loop checks it every step, then checkpoints and stops. A second Ctrl-C interrupts
    at once (a checkpoint being written then leaves no partial file: checkpoint.save).

    Only the warning signal asks for a requeue: SIGTERM comes from `scancel`, a time-limit kill or
    a cluster that requeues by itself, so the run checkpoints and stops without requeueing.
    """

    def __init__(self, signal_name: str) -> None:
        self.warning = getattr(signal, f"SIG{signal_name.removeprefix('SIG')}")
        self.signals = {signal.SIGTERM, self.warning}
        self.requested = self.requeue = False

    def __enter__(self) -> Preemption:
        self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def catch_ctrl_c(self) -> None:
        """From now on (the run accepted, training), Ctrl-C too checkpoints and stops; before,
        it stops at once, with nothing written yet."""
        self.previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, self._handle))

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.requeue = self.requeue or signum == self.warning
        if signum == signal.SIGINT:  # Ctrl-C as SIGTERM; a second one stops at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
