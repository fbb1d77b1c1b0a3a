"""bnrepro-plan: what a training run will do, before it costs anything.

    bnrepro-plan experiment=bn_x30 data=imagenet                       # 8 GPUs on one node
    bnrepro-plan experiment=bn_x30                                     # small data: this machine
    bnrepro-plan experiment=inception data=imagenet plan.gpus=8 plan.nodes=4
    bnrepro-plan experiment=bn_x5 data=imagenet plan.images_per_s=2500 # a measured throughput
    bnrepro-plan -m experiment=inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid data=imagenet
    bnrepro-plan -m experiment=bn_x30 'optim.lr=choice(0.03,0.045)' data=imagenet

Takes bnrepro-train's overrides, plus plan.* (configs/plan.yaml: the cluster shape and the cost
model) and cluster.* (configs/cluster/: the CPUs each GPU gets), checked as bnrepro-train checks
them; -m takes Hydra's sweep syntax. Prints the global batch, the LR over the run (warmup, decays, an ASCII plot against paper
steps), the budget in images, paper steps and epochs, the paper's steps to 72.2% (Figure 3) and
whether the budget covers them, the evaluations and checkpoints planned, and an estimate of
GPU-hours: the slower of what the GPU computes and what its CPU workers feed (`run_cost`), with
what bounds the run and the assumptions, rounded to two significant figures; a warning where a
network without BN would train above 0.0075, the LR at which the paper's Inception diverged
(section 4.2.2). With -m, every combination of the comma lists is composed and the plans are
printed as one table. Reads no data and builds the network only on the meta device (to count its
FLOPs). The LR curve is schedule.LRSchedule's own, as the training loop sets it.

    bnrepro-plan experiment=bn_x30 data=imagenet cluster.cpus_per_task=4   # a CPU-poor node
    bnrepro-plan experiment=bn_x30 data=imagenet plan.pipeline_images_per_s_per_core=600
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from bnrepro import builders, schedule
from bnrepro.config import check_run, compose_checked, effective_lr, global_batch, lr_rule, sweep
from bnrepro.errors import UserError
from bnrepro.figures.tables import paper_steps_text
from bnrepro.paper import FIGURE3, PAPER_BATCH, PAPER_DIVERGED, PAPER_DIVERGED_LR

LR_SAMPLES = 4000  # points of the LR curve (more where decays are frequent)
COST_DIGITS = 2  # significant figures of a cost: its inputs are assumptions and one CPU's rate


class PlanError(UserError):
    """Bad input to bnrepro-plan; the message names the fix."""


@dataclass(frozen=True)
class Cost:
    """What a run costs on its GPUs and what bounds it (`run_cost`)."""

    gpu_hours: float  # GPUs x wall hours: a GPU is held while it waits for its input too
    bound: str  # "the GPU" or "the input pipeline"
    gpu_images_per_s: float  # training images/s one GPU computes
    pipeline_images_per_s: float | None  # training images/s its CPUs feed; None: not modelled
    why: str  # the comparison behind `bound`, in words
    assumptions: str


@dataclass
class Plan:
    experiment: str
    data: str
    processes: int  # GPUs (or CPU processes) sharing the global batch
    global_batch: int
    effective_lr: float  # optim.lr scaled to the global batch (optim.lr_scaling)
    lr_scaling: str  # optim.lr_scaling: linear | sqrt | none
    curve: list[tuple[int, float]]  # (images seen, LR of the step that starts there)
    warmup_images: int  # the scheduler's warmup (0: none); decays may fall inside it
    max_images: int
    train_size: int
    paper_target: float | None  # Figure 3's paper steps to 72.2%; None: never or no entry
    paper_note: str  # what the paper says of this variant's steps to 72.2%
    evals: int
    checkpoints: int
    keep_last: int
    gflops_per_image: float  # forward, at the configured crop and width
    cost: Cost
    warnings: list[str]  # what to check before paying (lr_warnings)

    @property
    def gpu_hours(self) -> float:
        return self.cost.gpu_hours

    @property
    def paper_steps(self) -> float:
        return self.max_images / PAPER_BATCH

    @property
    def epochs(self) -> float:
        return self.max_images / self.train_size

    @property
    def peak_lr(self) -> float:
        return max(lr for _, lr in self.curve)

    @property
    def covered(self) -> bool | None:
        return None if self.paper_target is None else self.paper_steps >= self.paper_target

    def decays(self) -> list[tuple[int, float]]:
        """(images, LR) where the LR falls: the staircase's steps (inside the warmup too)."""
        return [b for a, b in itertools.pairwise(self.curve) if b[1] < a[1] * (1 - 1e-9)]


def data_sizes(data: DictConfig) -> tuple[int, int]:
    """(train, val) images of the configured data, from its config alone (no file is read)."""
    if data.name == "synthetic":  # the generator's counts
        return (data.synthetic.train_per_class * data.num_classes,
                data.synthetic.val_per_class * data.num_classes)  # fmt: skip
    if data.get("train_size") is None or data.get("val_size") is None:
        raise PlanError(f"data {data.name!r} has no train_size / val_size: set data.train_size=N")
    return data.train_size, data.val_size


def forward_gflops(cfg: DictConfig) -> float:
    """The configured network's forward cost per image at data.train_crop, counted on the meta
    device (nothing is allocated)."""
    from torch.utils.flop_counter import FlopCounterMode

    side = cfg.data.train_crop
    with torch.device("meta"):
        model = builders.build_model(cfg, [str(i) for i in range(cfg.data.num_classes)]).eval()
        inputs = torch.zeros(1, cfg.data.in_chans, side, side)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    return counter.get_total_flops() / 1e9  # 2 per multiply-add: 4.07 at 224 px, width 1


def lr_curve(
    cfg: DictConfig, global_batch: int, train_size: int
) -> tuple[list[tuple[int, float]], int]:
    """The LR the training loop sets at sampled optimizer steps (schedule.LRSchedule, read at the
    images seen before each step, as train.py sets it), and the images over which its warmup
    ramps (0: none)."""
    lr = schedule.build_scheduler(None, cfg.optim, global_batch, train_size)
    steps = math.ceil(cfg.trainer.max_images / global_batch)
    per_decay = cfg.optim.decay_epochs * train_size / global_batch  # steps between decays
    samples = min(steps, max(LR_SAMPLES, math.ceil(8 * steps / per_decay)))
    picked = sorted({round(i * (steps - 1) / max(samples - 1, 1)) for i in range(samples)})
    curve = [(k * global_batch, lr.lr_at(k * global_batch)) for k in picked]
    return curve, lr.warmup_images


def lr_warnings(cfg: DictConfig, peak_lr: float) -> list[str]:
    """A BN-free network whose peak LR exceeds the paper's divergence LR (Inception at 0.0075,
    batch 32, section 4.2.2) may diverge as the paper's did: say so before the run is paid for
    (not for a run that expects to diverge)."""
    if cfg.model.batch_norm or cfg.trainer.expect_divergence or peak_lr <= PAPER_DIVERGED_LR:
        return []
    return [
        f"warning: {cfg.experiment_name} has no BN and its peak LR {peak_lr:.4g} exceeds "
        f"{PAPER_DIVERGED_LR:g}, the LR at which the paper's Inception diverged at batch 32 "
        "(section 4.2.2): run the pilot first (README, 'Scaling with the GPU count') or set "
        "optim.lr_scaling=sqrt or none"
    ]


def periodic_count(interval: int, global_batch: int, max_images: int) -> int:
    """How often an every-`interval`-images event fires (schedule.Every), plus the final one
    made at the end when the last periodic one was not made there."""
    final = math.ceil(max_images / global_batch) * global_batch
    n = final // interval
    last = math.ceil(n * interval / global_batch) * global_batch if n else 0
    return n + (last != final)


def cpus_per_gpu(cluster: DictConfig) -> float:
    """The CPU cores each GPU's training process gets (configs/cluster/*.yaml: one task per GPU
    by default, each with cpus_per_task cores)."""
    tasks = cluster.cpus_per_task * cluster.tasks_per_node
    return tasks / cluster.gpus_per_node if cluster.gpus_per_node else cluster.cpus_per_task


def run_cost(cfg: DictConfig, gflops: float, train_images: float, eval_images: float) -> Cost:
    """GPU-hours of `train_images` training and `eval_images` evaluated images (all GPUs
    together), each phase at the slower of the GPU and its input pipeline.

    GPU: plan.images_per_s (measured) or plan.sustained_tflops / (train_flops_factor x forward
    FLOPs); an evaluated image costs a forward only (1 / train_flops_factor of a training one).
    Pipeline (data.decode=cpu): its workers run on the GPU's cores but one (the training
    process's), at most data.num_workers of them, each at plan.pipeline_images_per_s_per_core,
    in parallel with the GPU; with no core to spare the training process decodes between steps
    (the two times add up). Validation images cost a worker what a training image does. With
    data.decode=gpu or dali the workers only read files: the pipeline is not modelled."""
    s, data = cfg.plan, cfg.data
    if s.images_per_s:
        gpu = float(s.images_per_s)
        gpu_basis = f"measured {s.images_per_s:g} training images/s per GPU"
    else:
        gpu = s.sustained_tflops * 1e12 / (s.train_flops_factor * gflops * 1e9)
        gpu_basis = (f"{gflops:.3g} GFLOPs/image forward x{s.train_flops_factor:g} to train at an "
                     f"assumed {s.sustained_tflops:g} TFLOP/s per GPU")  # fmt: skip
    cpus = cpus_per_gpu(cfg.cluster)
    per_core = s.pipeline_images_per_s_per_core
    workers = min(data.num_workers, math.floor(cpus) - 1)
    assumptions = [gpu_basis, "evaluation: a forward pass per image"]
    if data.decode != "cpu":
        pipeline = None
        why = f"data.decode={data.decode}: GPU decoding is not modelled (scripts/bench_gpu.py)"
    elif workers >= 1:
        pipeline = workers * per_core
        why = (f"{workers} worker core{'s' * (workers > 1)} per GPU x {rounded(per_core)} images/s "
               f"= {rounded(pipeline)} training images/s fed; the GPU computes {rounded(gpu)}")  # fmt: skip
    else:  # decoding and the step take turns on one core
        pipeline = 1 / (1 / gpu + 1 / per_core)
        alone = "data.num_workers=0" if data.num_workers == 0 else "one CPU core per GPU"
        why = (f"{alone}: the training process decodes between steps, {rounded(pipeline)} "
               "images/s")  # fmt: skip
    if pipeline is not None:
        assumptions += [
            f"{cpus:g} CPU core{'s' * (cpus != 1)} per GPU (cluster.cpus_per_task), one kept by "
            "the training process",
            f"{rounded(per_core)} images/s per worker core (plan.pipeline_images_per_s_per_core, "
            "results/bench_data.md: smaller files than ImageNet's, so likely optimistic)",
        ]
    train_rate = gpu if pipeline is None else min(gpu, pipeline)
    eval_gpu = gpu * s.train_flops_factor
    eval_rate = eval_gpu if pipeline is None else min(eval_gpu, pipeline)
    seconds = train_images / train_rate + eval_images / eval_rate
    bound = "the GPU" if pipeline is None or gpu <= pipeline else "the input pipeline"
    assumptions.append(f"rounded to {COST_DIGITS} significant figures")
    return Cost(seconds / 3600, bound, gpu, pipeline, why, "; ".join(assumptions))


def rounded(x: float, digits: int = COST_DIGITS) -> str:
    """`x` to `digits` significant figures, in plain digits (46, 4.6, 1,200; never 1.2e+03)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    places = digits - 1 - math.floor(math.log10(abs(x)))
    value = round(x, places)
    return f"{value:,.{max(places, 0)}f}"


def gpus_per_node(cfg: DictConfig) -> int:
    """plan.gpus; `auto`: a node of 8 GPUs for ImageNet, else this machine (its GPUs, or one CPU
    process): small data is planned where it will run."""
    if cfg.plan.gpus != "auto":
        return cfg.plan.gpus
    if cfg.data.name == "imagenet":
        return 8
    return max(1, torch.cuda.device_count() if cfg.runtime.device != "cpu" else 0)


def make_plan(cfg: DictConfig) -> Plan:
    """The plan of the run `cfg` (configs/plan.yaml, composed: bnrepro-train's config + plan.*)."""
    settings = cfg.plan
    processes = gpus_per_node(cfg) * settings.nodes
    batch = global_batch(cfg.data.batch_size, processes, cfg.trainer.grad_accum)
    train_size, val_size = data_sizes(cfg.data)
    t = cfg.trainer
    gflops = forward_gflops(cfg)
    train_images = t.max_images
    eval_images = min(t.eval_max_images or val_size, val_size)
    evals = periodic_count(t.eval_every_images, batch, t.max_images)
    cost = run_cost(cfg, gflops, train_images, evals * eval_images)
    name = cfg.experiment_name
    paper = FIGURE3.get(name, (None, None))[0]
    if name in PAPER_DIVERGED:
        note = "diverged (section 4.2.2)"
    elif name not in FIGURE3:
        note = "-"
    else:
        note = "never" if paper is None else paper_steps_text(paper)
    imagenet = cfg.data.name == "imagenet"
    note += "" if imagenet or note == "-" else " on ImageNet: not comparable"
    target = paper if imagenet else None  # Figure 3's steps are ImageNet's
    curve, warmup_images = lr_curve(cfg, batch, train_size)
    return Plan(
        experiment=name, data=cfg.data.name, processes=processes, global_batch=batch,
        effective_lr=effective_lr(cfg.optim.lr, batch, cfg.optim.lr_scaling),
        lr_scaling=cfg.optim.lr_scaling,
        curve=curve,
        warmup_images=warmup_images,
        max_images=int(t.max_images), train_size=train_size, paper_target=target, paper_note=note,
        evals=evals, checkpoints=periodic_count(t.ckpt_every_images, batch, t.max_images),
        keep_last=t.keep_last, gflops_per_image=gflops, cost=cost,
        warnings=lr_warnings(cfg, max(lr for _, lr in curve)),
    )  # fmt: skip


def ascii_plot(curve: list[tuple[int, float]], width: int, height: int) -> str:
    """LR (rows: the peak at the top, 0 at the bottom) against paper steps (columns): one '*'
    per column, at the LR of the column's first sample."""
    top = max(lr for _, lr in curve)
    last = curve[-1][0] or 1
    columns: dict[int, float] = {}
    for images, lr in curve:
        columns.setdefault(min(width - 1, images * width // (last + 1)), lr)
    grid = [[" "] * width for _ in range(height)]
    for c, lr in columns.items():
        grid[round((1 - lr / top) * (height - 1))][c] = "*"
    labels = {0: f"{top:.4g}", height - 1: "0"}
    rows = [f"{labels.get(r, ''):>9} |" + "".join(cells) for r, cells in enumerate(grid)]
    rows.append(" " * 10 + "+" + "-" * width)
    end = f"{paper_steps_text(last / PAPER_BATCH)} paper steps"
    rows.append(" " * 11 + "0" + end.rjust(width - 1))
    return "\n".join(rows)


def describe(plan: Plan, settings: DictConfig) -> str:
    """The plan of one run, for a person about to submit it."""
    decays = plan.decays()
    first_decays = ", ".join(f"{lr:.4g} at {images / PAPER_BATCH:,.0f}"
                             for images, lr in decays[:3])  # fmt: skip
    warmup = (f"rises over {plan.warmup_images:,} images "
              f"({paper_steps_text(plan.warmup_images / PAPER_BATCH)} paper steps) from "
              f"{plan.curve[0][1]:.4g}" if plan.warmup_images else "none")  # fmt: skip
    covered = {None: "", True: " -> the budget covers it", False: " -> NOT covered by the budget"}
    wall = plan.gpu_hours / plan.processes
    lines = [
        f"{plan.experiment} on {plan.data}: {plan.processes} process{'es' * (plan.processes > 1)} "
        f"({plan.processes // settings.nodes} per node x {settings.nodes} nodes)",
        *(f"  {w}" for w in plan.warnings),
        f"  global batch     {plan.global_batch} (data.batch_size x processes x trainer.grad_accum)",
        f"  effective LR     {plan.effective_lr:.4g} (optim.lr "
        f"{lr_rule(plan.lr_scaling, plan.global_batch)}); peak {plan.peak_lr:.4g}, final "
        f"{plan.curve[-1][1]:.4g}",
        f"  warmup           {warmup}",
        f"  decays           {len(decays)}" + (f": {first_decays}{', ...' * (len(decays) > 3)} (LR at paper step)" if decays else ""),
        f"  budget           {plan.max_images:,} images = {paper_steps_text(plan.paper_steps)} paper steps = "
        f"{plan.epochs:.4g} epochs of {plan.train_size:,} images",
        f"  paper (Fig. 3)   steps to 72.2%: {plan.paper_note}{covered[plan.covered]}",
        f"  evaluations      {plan.evals}; checkpoints {plan.checkpoints} (the last "
        f"{plan.keep_last} kept, plus best.pt)",
        f"  cost             {rounded(plan.gpu_hours)} GPU-hours, {rounded(wall)} h wall on "
        f"{plan.processes} processes",
        f"  bounded by       {plan.cost.bound}: {plan.cost.why}",
        f"  assumptions      {plan.cost.assumptions}",
        "  LR against paper steps:",
        ascii_plot(plan.curve, settings.plot_width, settings.plot_height),
    ]  # fmt: skip
    return "\n".join(lines)


def table(plans: list[Plan]) -> str:
    """One markdown row per plan (bnrepro-plan -m)."""
    lines = [
        "| experiment | processes | global batch | effective LR | warmup (paper steps) "
        "| budget (paper steps) | epochs | steps to 72.2% (paper) | covered | evaluations "
        "| GPU-hours | bounded by | LR scaling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        covered = {None: "-", True: "yes", False: "NO"}[p.covered]
        lines.append(
            f"| {p.experiment} | {p.processes} | {p.global_batch} | {p.effective_lr:.4g} "
            f"| {paper_steps_text(p.warmup_images / PAPER_BATCH)} | {paper_steps_text(p.paper_steps)} "
            f"| {p.epochs:.4g} "
            f"| {p.paper_note} | {covered} | {p.evals} | {rounded(p.gpu_hours)} | {p.cost.bound} "
            f"| {p.lr_scaling} |"
        )
    warnings = [w for p in plans for w in p.warnings]
    return "\n".join(lines + ([""] + warnings if warnings else []))


def print_plans(overrides: list[str], *, multirun: bool = False) -> None:
    """bnrepro-plan [-m] [overrides]: one plan, or with -m every combination of Hydra's sweep
    syntax as one table. Every configuration is composed and checked before any is printed."""
    configs = [
        compose_checked("plan", run) for run in (sweep(overrides) if multirun else [overrides])
    ]
    for cfg in configs:
        check_run(cfg)  # what bnrepro-train would refuse at start-up
    plans = [make_plan(cfg) for cfg in configs]
    if len(plans) == 1:
        print(describe(plans[0], configs[0].plan))
    else:
        print(table(plans))
        print(f"\n({plans[0].processes} processes each; cost: {plans[0].cost.assumptions})")
