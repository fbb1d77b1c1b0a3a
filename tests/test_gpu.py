"""The GPU path (issue 15): every CUDA code path of the loop, run on a GPU. Without CUDA these are
collected and skipped (conftest.py); scripts/gpu_check.sh runs them: `pytest -m gpu -v`.

Tiny runs (conftest.TINY_TRAIN) on cuda:0. Tolerances (not yet checked on a GPU): resume compares
an interrupted run with an uninterrupted one, both in fp32 under torch.backends.cudnn
.deterministic=True (benchmark off), expected bit-identical but held to rtol 1e-4 / atol 1e-5,
because some CUDA kernels of these networks are on torch's list of nondeterministic ones (the
backward of AvgPool3d, which LocalResponseNorm uses, and of AdaptiveAvgPool2d add with atomics).
GPU against CPU (same weights, fp32, TF32 off): rtol 1e-3 / atol 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bnrepro import builders, checkpoint, engine
from bnrepro import data as D
from bnrepro import train as T
from bnrepro.config import compose
from bnrepro.evaluation import bn_stats, ensemble

pytestmark = pytest.mark.gpu

CUDA = ["runtime.device=cuda"]
FP32 = ["runtime.amp=none", "runtime.tf32=false"]


@pytest.fixture
def deterministic():
    """cuDNN's deterministic kernels, no autotuning (its choice may differ from run to run)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


@pytest.fixture
def no_tf32():
    """Full fp32 matmul/conv for GPU-vs-CPU comparisons (runtime.tf32=true sets these globally)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_step(tiny_overrides: list[str], *options: str):
    """A tiny model on cuda:0, its optimizer and scaler, and an endless iterator of one batch."""
    cfg = compose("train", [*tiny_overrides, *CUDA, *options])
    dat = builders.build_data(cfg, rank=0, world_size=1)
    runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cuda"))
    builders.seed_everything(0)
    model = builders.build_model(cfg, dat.classes).cuda()
    optimizer = builders.build_optimizer(model, cfg.optim, 0.01)
    # A small initial scale: no genuine overflow in the first steps of a fresh network.
    fp16 = runtime.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0, enabled=fp16)
    batch = next(iter(dat.train_loader))
    batches = iter(lambda: (0, 1, batch), None)
    return model, optimizer, scaler, runtime, batches, batch.images


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same_params(a: list[torch.Tensor], model: torch.nn.Module) -> bool:
    return all(torch.equal(x, p) for x, p in zip(a, model.parameters(), strict=True))


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_training_steps(tiny_overrides, amp, dtype):
    model, optimizer, scaler, runtime, batches, images = cuda_step(
        tiny_overrides, f"runtime.amp={amp}"
    )
    assert runtime.amp_dtype == dtype and scaler.is_enabled() == (amp == "fp16")
    with torch.no_grad(), runtime.autocast():
        assert model(runtime.inputs(images)).dtype == dtype
    before = params_of(model)
    stats = torch.zeros(3, device="cuda")
    for _ in range(3):
        engine.train_step(model, batches, optimizer, scaler, runtime, stats)
    assert torch.isfinite(stats).all() and stats[2].item() == 3 * len(images)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not same_params(before, model)


def test_fp16_grad_scaler_skips_an_inf_step_and_halves_the_scale(tiny_overrides):
    model, optimizer, scaler, runtime, batches, _ = cuda_step(tiny_overrides, "runtime.amp=fp16")
    stats = torch.zeros(3, device="cuda")
    engine.train_step(model, batches, optimizer, scaler, runtime, stats)  # a clean step first
    scale, before = scaler.get_scale(), params_of(model)
    weight = next(p for p in model.parameters() if p.ndim > 1)
    hook = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))  # an overflow
    engine.train_step(model, batches, optimizer, scaler, runtime, stats)
    hook.remove()
    assert scaler.get_scale() == scale * scaler.get_backoff_factor() == scale / 2
    assert same_params(before, model)  # skipped: no weight moved, not even by momentum or decay
    engine.train_step(model, batches, optimizer, scaler, runtime, stats)
    assert scaler.get_scale() == scale / 2  # it grows back only after 2000 clean steps
    assert not same_params(before, model)


def test_channels_last_gives_the_same_logits(tiny_overrides, no_tf32):
    model, _, _, runtime, _, images = cuda_step(
        tiny_overrides, *FP32, "runtime.channels_last=false"
    )
    cfg = compose("train", [*tiny_overrides, *CUDA, *FP32, "runtime.channels_last=true"])
    last = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cuda"))
    model.eval()
    with torch.no_grad():
        plain = model(runtime.inputs(images))
        model.to(memory_format=torch.channels_last)
        x = last.inputs(images)
        assert x.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x), plain, rtol=1e-4, atol=1e-4)


def test_the_colour_on_the_gpu_is_the_cpus(no_tf32):
    """Runtime.inputs on CUDA (the whole batch, one pass per ordering) and on the CPU (in chunks)
    give the same coloured, normalised inputs, for every ordering and a colour-less row."""
    from conftest import cpu_runtime

    from bnrepro.data import transforms as TF

    cfg = compose("train", ["data=imagenet", *CUDA, *FP32, "runtime.channels_last=true"])
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (16, 3, 64, 64), dtype=np.uint8))
    color = torch.tensor([TF.color_params(TF.sample_color(TF.Augment(color_strength=s), rng))
                          for s in [0, 0.5, 1, 2] * 4])  # fmt: skip
    on_gpu = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cuda"))
    x = on_gpu.inputs(images.cuda(), color)
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.cpu(), cpu_runtime(cfg.data).inputs(images, color),
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def straight_and_resumed(overrides: list[str], tmp_path, run_name: str) -> tuple[dict, dict]:
    """Final weights of a 96-image run, and of the same run stopped at 64 and resumed."""
    T.train(compose("train", [*overrides, f"out_dir={tmp_path / 'straight'}"]))
    resumed = [*overrides, f"out_dir={tmp_path / 'resumed'}"]
    T.train(compose("train", [*resumed, "trainer.max_images=64"]))  # stops mid-epoch
    assert T.train(compose("train", resumed))["images_seen"] == 96
    name = "ckpt_000000000096.pt"
    a = checkpoint.load(tmp_path / f"straight/{run_name}/checkpoints/{name}")["model"]
    b = checkpoint.load(tmp_path / f"resumed/{run_name}/checkpoints/{name}")["model"]
    return a, b


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
        else:  # num_batches_tracked
            assert torch.equal(a[k], b[k]), k


def test_resume_on_gpu_matches_an_uninterrupted_run(tiny_overrides, tmp_path, deterministic):
    # inception: dropout (the CUDA RNG state must come back) and LRN; channels_last (auto on GPU)
    a, b = straight_and_resumed([*tiny_overrides, *CUDA, "runtime.amp=none", "experiment=inception"],
                                tmp_path, "inception_seed0")  # fmt: skip
    assert_same_weights(a, b)


def test_compiled_runs_checkpoint_the_plain_model_and_resume(
    tiny_overrides, tmp_path, deterministic
):
    compiled = [*tiny_overrides, *CUDA, "runtime.amp=none", "runtime.compile=true"]
    a, b = straight_and_resumed(compiled, tmp_path, "bn_x30_seed0")
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in a)  # the unwrapped model's keys
    assert_same_weights(a, b)
    # ... so a compiled run's checkpoint continues without compile
    more = [*compiled, f"out_dir={tmp_path / 'resumed'}", "trainer.max_images=112"]
    assert T.train(compose("train", [*more, "runtime.compile=false"]))["images_seen"] == 112


def test_population_statistics_on_cuda_equal_the_cpu(tiny_overrides, no_tf32):
    model, *_ = cuda_step(tiny_overrides, *FP32)
    cpu_model = builders.build_model(compose("train", tiny_overrides), [str(i) for i in range(10)])
    cpu_model.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    batches = [torch.randn(16, 3, 32, 32) for _ in range(3)]
    bn_stats.recompute_bn_stats(model, iter(b.cuda() for b in batches), num_batches=3)
    bn_stats.recompute_bn_stats(cpu_model, iter(batches), num_batches=3)
    gpu_state, cpu_state = model.state_dict(), cpu_model.state_dict()
    for k in cpu_state:
        if "running_" in k:
            torch.testing.assert_close(gpu_state[k].cpu(), cpu_state[k], rtol=1e-3, atol=1e-4)


def test_a_run_with_population_statistics_on_cuda(tiny_overrides):
    summary = T.train(compose("train", [*tiny_overrides, *CUDA, "trainer.pop_stats_batches=2"]))
    assert 0 <= summary["val_popstats/top1"] <= 1 and summary["images_seen"] == 96


def test_144_crop_ensemble_on_cuda_equals_the_cpu(tiny_data_root, tmp_path, no_tf32):
    from test_ensemble import DATA, ensemble_cfg, fake_checkpoint

    classes = D.build_datasets(compose("ensemble", [*DATA, f"data.root={tiny_data_root}"]).data)[2]
    members = [fake_checkpoint(tmp_path / f"m{i}.pt", classes, seed=i) for i in range(2)]
    results = {}
    for device in ("cuda", "cpu"):
        cfg = ensemble_cfg(tiny_data_root, tmp_path / device, members, "crops=144",
                           "max_images=6", "save_probs=true", f"runtime.device={device}", *FP32)  # fmt: skip
        rows = ensemble.evaluate_ensemble(cfg, tmp_path / device / "run")["rows"]
        results[device] = rows, dict(np.load(tmp_path / device / "run/probs.npz"))
    (gpu_rows, gpu), (cpu_rows, cpu) = results["cuda"], results["cpu"]
    # untrained members give near-uniform probabilities: compare them, not their near-tied top-k
    assert [(r["model"], r["crops"]) for r in gpu_rows] == [
        (r["model"], r["crops"]) for r in cpu_rows
    ]
    assert (gpu["labels"] == cpu["labels"]).all()
    torch.testing.assert_close(torch.from_numpy(gpu["probs"]), torch.from_numpy(cpu["probs"]),
                               rtol=1e-3, atol=1e-4)  # fmt: skip


def test_decode_gpu_takes_the_cpu_paths_crops(image_folder_tree):
    from test_data import data_cfg, epoch_batches

    root, _ = image_folder_tree
    cfg = data_cfg(root, "data.augment.color_strength=0.5")
    ds, _, _ = D.build_datasets(cfg)
    gpu_cfg = data_cfg(root, "data.augment.color_strength=0.5", "data.decode=gpu")
    loader = D.build_train_loader(gpu_cfg, ds, seed=0, rank=0, world_size=1)
    assert isinstance(loader, D.DeviceDecodeLoader)
    loader.sampler.set_epoch(1)
    on_gpu = list(loader)
    on_cpu = epoch_batches(cfg, ds, epoch=1)
    assert len(on_gpu) == len(on_cpu)
    for (x, y, c), (u, v, w) in zip(on_gpu, on_cpu, strict=True):
        assert x.is_cuda and x.dtype == torch.uint8 and torch.equal(y, v) and torch.equal(c, w)
        assert (x.cpu().float() - u.float()).abs().mean() < 12  # decoders differ, crops do not


def test_dali_on_cuda_takes_the_cpu_backends_crops(tmp_path):
    pytest.importorskip("nvidia.dali", reason="pip install -e '.[dali]'")
    from test_dali import dali_cfg, gradient_tree

    root = gradient_tree(tmp_path)
    cfg = dali_cfg(root, "data.augment.color_strength=0.5")
    ds, val_ds, _ = D.build_datasets(cfg)
    from bnrepro.data.dali import DaliLoader

    for dataset, sampler in ((ds, D.EpochSampler(len(ds), batch_size=4, seed=0)),
                             (val_ds, list(range(len(val_ds))))):  # fmt: skip
        on_gpu = list(DaliLoader(cfg, dataset, sampler, device="cuda", drop_last=False))
        on_cpu = list(DaliLoader(cfg, dataset, sampler, device="cpu", drop_last=False))
        assert len(on_gpu) == len(on_cpu) > 0
        for on_cuda, on_host in zip(on_gpu, on_cpu, strict=True):  # train: + colour params
            (x, y, *c), (u, v, *w) = on_cuda, on_host
            assert x.is_cuda and torch.equal(y, v) and all(map(torch.equal, c, w))
            assert (x.cpu().float() - u.float()).abs().mean() < 3  # nvJPEG vs libjpeg-turbo


NCCL_WORKER = """
import json, sys
import torch.distributed as dist
from torch import nn
from bnrepro import builders, distributed, train as T
from bnrepro.config import compose

dist.init_process_group("nccl")  # torchrun's environment: world size 1
# bnrepro wraps in DDP (and SyncBN) only for world size > 1: force it, to run them on one GPU.
distributed.Dist.enabled = property(lambda self: True)
seen = {}
wrap = builders.wrap_model
def spy(model, *args):
    step_model = wrap(model, *args)
    seen["wrapper"] = type(step_model).__name__
    seen["sync_bn"] = sum(isinstance(m, nn.SyncBatchNorm) for m in step_model.modules())
    seen["backend"] = dist.get_backend()
    return step_model
builders.wrap_model = spy
seen["images_seen"] = T.train(compose("train", sys.argv[2:]))["images_seen"]
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
"""


def test_nccl_ddp_with_sync_bn_on_one_gpu(tiny_overrides, tmp_path):
    """torchrun, world size 1: the NCCL process group, DDP's all-reduce and SyncBN's layers run on
    the GPU (SyncBN syncs nothing with one rank: its kernels need two GPUs)."""
    (tmp_path / "worker.py").write_text(NCCL_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(tmp_path / "worker.py"), str(tmp_path / "seen.json"), *tiny_overrides, *CUDA,
           "model.sync_bn=true"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, WANDB_MODE="disabled"))  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["wrapper"] == "DistributedDataParallel" and seen["backend"] == "nccl"
    assert seen["sync_bn"] > 0 and seen["images_seen"] == 96
    ckpt = checkpoint.load(tmp_path / "bn_x30_seed0/checkpoints/ckpt_000000000096.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
