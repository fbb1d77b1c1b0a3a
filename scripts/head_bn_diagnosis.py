"""Why a checkpoint scores what it scores: its BN layers evaluated four ways, and its training
accuracy beside its validation accuracy (issue 21: the head_bn ensemble members' failure).

    python scripts/head_bn_diagnosis.py outputs/bn_x30_seed0 outputs/hb/checkpoints/best.pt
    python scripts/head_bn_diagnosis.py RUN ... --batches 50 --json diagnosis.json
    python scripts/head_bn_diagnosis.py --init          # the gradients at initialisation

The runs behind the members table's choice (configs/experiment/bn_x30_ensemble.yaml), BN-x30 on
the synthetic data at its CPU scale, seed 0, no dropout (about 5-20 minutes each on 2 cores):

    R="experiment=bn_x30 trainer.eval_every_images=4000 trainer.ckpt_every_images=4000"
    R="$R out_dir=outputs/head_bn"
    bnrepro-train $R trainer.max_images=8000 run_name=none
    bnrepro-train $R trainer.max_images=8000 run_name=pooled model.head_bn=true
    bnrepro-train $R trainer.max_images=8000 run_name=per_activation model.per_activation_bn=2
    bnrepro-train $R trainer.max_images=4000 run_name=none_lr optim.lr=0.0075
    bnrepro-train $R trainer.max_images=4000 run_name=pooled_lr optim.lr=0.0075 model.head_bn=true
    python scripts/head_bn_diagnosis.py outputs/head_bn/{none,pooled,per_activation,none_lr,pooled_lr}

For each checkpoint (a file or a run folder: its last checkpoint), single-crop val top-1 with
- `moving`: BN's moving averages (what training's evaluation reports);
- `population`: Algorithm 2's statistics over --batches training batches (paper section 3.1);
- `head batch`: the moving averages everywhere except the classifier's BN (head_bn), which uses
  each val batch's own statistics (as in training);
- `batch`: every BN layer on each val batch's own statistics (training mode, nothing updated);
then the last logged training top-1 (metrics.jsonl: dropout on, BN on batch statistics), the
training loss at the first and the last log (chance is ln(classes): 2.30 for 10), the spread
of the logits over the classes (mean over val images) and the classifier's weight norm, and, for
a head BN, how far its moving averages are from the population's (the mean over features of
|running - population| / population std, and the mean ratio of the variances) and the median
standard deviation of the pooled features it normalises.
Dropout is off in every evaluation. Prints one markdown table; --json writes the numbers.

--init: BN-x30 freshly initialised (seed 0, the synthetic data's first training batch) with no
BN before the classifier, with head_bn and with per_activation_bn=2: the spread of the pooled
features and the gradient norm reaching the classifier, module 5b and the stem. A head BN divides
the gradient by the pooled features' standard deviation.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from bnrepro import builders, checkpoint, engine
from bnrepro.evaluation import bn_stats


def _training_log(run: Path, images_seen: int) -> dict:
    """The logged training top-1 at the checkpoint, and the training loss at the first log and
    at the checkpoint (rows past it, from a longer run, are left out)."""
    metrics = run / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    )
    rows = [r for r in rows if "train/loss" in r and r["images_seen"] <= images_seen]
    if not rows:
        return {"train top-1 (logged)": None, "train loss first, last": None}
    return {
        "train top-1 (logged)": rows[-1]["train/top1"],
        "train loss first, last": f"{rows[0]['train/loss']:.2f}, {rows[-1]['train/loss']:.2f}",
    }


def _batch_mode(model: torch.nn.Module, only_head: bool) -> torch.nn.Module:
    """A copy whose BN layers (or only the head's) normalise with each batch's statistics."""
    model = copy.deepcopy(model).eval()
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and (not only_head or name == "head_bn"):
            module.train()
            module.track_running_stats = False  # batch statistics, nothing updated
            module.running_mean = module.running_var = None
    return model


def diagnose(spec: str, batches: int) -> dict:
    (path,) = checkpoint.find([spec])
    loaded = checkpoint.load_model(path)
    cfg = bn_stats.checkpoint_config(loaded, ["runtime.device=cpu", "runtime.progress=false"])
    runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
    data = builders.build_data(cfg, rank=0, world_size=1)
    model = loaded.model

    def top1(m: torch.nn.Module) -> float:
        return engine.evaluate(m, data.val_loader, runtime)["val/top1"]

    population = bn_stats.population_model(model, data.train_loader, runtime, batches)
    with torch.no_grad():  # how large the classifier's outputs have grown (moving averages)
        logits = torch.cat([model.eval()(runtime.inputs(x)) for x, _ in data.val_loader])
    out = {
        "checkpoint": str(path),
        "model": {
            k: loaded.arch["kwargs"].get(k)
            for k in ("head_bn", "per_activation_bn", "dropout", "init_gain")
        },
        "lr": loaded.config["optim"]["lr"],
        "moving": top1(model),
        "population": top1(population),
        "head batch": top1(_batch_mode(model, only_head=True))
        if hasattr(model, "head_bn")
        else None,
        "batch": top1(_batch_mode(model, only_head=False)),
        **_training_log(path.parent.parent, loaded.images_seen),
        "logit std": logits.std(1).mean().item(),
        "fc weight norm": model.fc.weight.norm().item(),
    }
    head, pop_head = getattr(model, "head_bn", None), getattr(population, "head_bn", None)
    if isinstance(head, _BatchNorm):
        std = pop_head.running_var.sqrt()
        out["head mean gap (pop std)"] = (
            ((head.running_mean - pop_head.running_mean).abs() / std).mean().item()
        )
        out["head var ratio"] = (head.running_var / pop_head.running_var).mean().item()
        # the pooled features' spread: a head BN divides the backbone's gradient by it
        out["pooled std (median)"] = pop_head.running_var.sqrt().median().item()
    return out


READINGS = {"none": [], "head_bn": ["model.head_bn=true"],
            "per_activation_bn=2": ["model.per_activation_bn=2"]}  # fmt: skip


def gradients_at_init() -> list[dict]:
    """One training batch through each reading of BN-x30 at initialisation (see --init)."""
    import torch.nn.functional as F

    from bnrepro.config import compose

    out = []
    for name, overrides in READINGS.items():
        cfg = compose("train", ["experiment=bn_x30", "data.num_workers=0", *overrides])
        builders.seed_everything(0)
        data = builders.build_data(cfg, rank=0, world_size=1)
        runtime = engine.build_runtime(cfg.runtime, cfg.data, torch.device("cpu"))
        model = builders.build_model(cfg, data.classes).train()
        images, labels = next(iter(data.train_loader))
        features = model.forward_features(runtime.inputs(images))
        pooled = model.global_pool(features)
        F.cross_entropy(model.forward_head(features), labels).backward()

        row = {"checkpoint": f"init, {name}", "pooled std (median)": pooled.std(0).median().item()}
        for label, prefix in (("fc", "fc."), ("5b", "blocks.5b."), ("stem", "stem.")):
            grads = [p.grad.flatten() for n, p in model.named_parameters() if n.startswith(prefix)]
            row[f"grad norm {label}"] = torch.cat(grads).norm().item()
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="checkpoint files or run folders")
    parser.add_argument("--init", action="store_true", help="gradients at initialisation")
    parser.add_argument("--batches", type=int, default=50, help="Algorithm 2's training batches")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    rows = [diagnose(spec, args.batches) for spec in args.checkpoints]
    rows += gradients_at_init() if args.init else []
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "checkpoint"]
    print("| checkpoint | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for r in rows:
        cells = [_cell(r.get(k)) for k in keys]
        print(f"| {r['checkpoint']} | " + " | ".join(cells) + " |")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
