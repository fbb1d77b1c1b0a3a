"""The config groups say where every value comes from: data groups hold only data, the CPU scale of
small data is its own group, `runtime` holds how a run executes; and every composition gives the
values it gave before this layout (tests/data/configs_before_restructure.json)."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnrepro.config import CONFIG_DIR, compose
from bnrepro.paper import PAPER_BATCH

BEFORE = json.loads(
    (Path(__file__).parent / "data" / "configs_before_restructure.json").read_text()
)
RUNTIME_KEYS = ("device", "amp", "channels_last", "compile", "tf32", "progress")
MOVED = {f"trainer.{k}": f"runtime.{k}" for k in RUNTIME_KEYS}  # old key -> new key
REPLACED = {"optim.reference_batch": PAPER_BATCH}  # old key -> the constant that replaces it
REMOVED = ("optim.warmup_lr_scale",)  # issue 11: the warmup starts at optim.lr, the paper's own LR
# Changed on purpose since that reference (issues 11, 15): keys added everywhere, with their value
# in the default composition and, per data, the data-set sizes bnrepro-plan counts in ...
ADDED = {"runtime.dist_timeout_s": 600,  # issue 15: DDP hang timeout
         "logger.wandb.log_checkpoints": False,  # issue 12: checkpoints as W&B artifacts
         "trainer.expect_divergence": False, "trainer.diverge_loss_factor": 10,
         "data.train_size": None, "data.val_size": None}  # fmt: skip
ADDED_BY_DATA = {"imagenet": {"data.train_size": 1_281_167, "data.val_size": 50_000},
                 "mnist": {"data.train_size": 4_000, "data.val_size": 1_000}}  # fmt: skip
# Issue 24: a -m sweep's keys in the run name (empty otherwise), and W&B's own environment
# variables as the logger's defaults (which, unset, are the values from before).
SWEEP_TAG = ("_seed${seed}", "${sweep_tag:}_seed${seed}")
WANDB_ENV = {"logger.wandb.project": "${oc.env:WANDB_PROJECT,bnrepro}",
             "logger.wandb.entity": "${oc.env:WANDB_ENTITY,null}",
             "logger.wandb.name": "${oc.env:WANDB_NAME,null}",
             "logger.wandb.group": "${oc.env:WANDB_RUN_GROUP,${experiment_name}}",
             "logger.wandb.tags": "${comma_list:${oc.env:WANDB_TAGS,null}}",
             "logger.wandb.notes": "${oc.env:WANDB_NOTES,null}"}  # fmt: skip
# Issue 21, on purpose: the LR scaling and per-activation BN keys, Algorithm 2 by default, the
# paper's within-shard shuffling where BN-x5 and later had a full permutation, and the ensemble
# members' per-activation BN in 5a/5b instead of BN on the pooled features.
ADDED |= {"optim.lr_scaling": "linear", "model.per_activation_bn": 0}
ISSUE_21 = {"trainer.pop_stats_batches": "auto"}
MEMBERS_21 = [{"init_gain": g, "dropout": d, "per_activation_bn": b, "head_bn": False}
              for g, d, b in [(1.5, 0.05, 2), (1.5, 0.10, 2), (1.0, 0.05, 2), (1.0, 0.10, 2),
                              (1.5, 0.05, 0), (1.5, 0.10, 0)]]  # fmt: skip
# ... and each experiment's own ImageNet budget (the CPU scales keep theirs), in images.
BUDGETS = {"inception": 1_120_000_000, "bn_baseline": 512_000_000, "bn_x5": 320_000_000,
           "bn_x30": 320_000_000, "bn_x5_sigmoid": 320_000_000,
           "bn_x30_ensemble": 256_000_000, "inception_sigmoid": 64_000_000}  # fmt: skip


def flat(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def expected(case: str) -> dict:
    values = dict(BEFORE["default"])
    if case != "default":
        values.update(BEFORE["cases"][case]["differs"])
        for key in BEFORE["cases"][case]["absent"]:
            del values[key]
    for old, constant in REPLACED.items():
        assert values.pop(old) == constant
    for old in REMOVED:
        values.pop(old)
    values.update(ADDED)
    values["run_name"] = values["run_name"].replace(*SWEEP_TAG)
    values.update(WANDB_ENV)
    values.update(ISSUE_21)
    if values["data.shuffle"] == "full":
        values["data.shuffle"] = "within_shard"
    if "members" in values:
        values["members"] = MEMBERS_21
        values["model.per_activation_bn"] = "${oc.select:members.${member}.per_activation_bn}"
    experiment, _, data = case.partition("/")
    values.update(ADDED_BY_DATA.get(data, {}))
    if data == "imagenet":
        values["trainer.max_images"] = BUDGETS[experiment]
    return {MOVED.get(k, k): v for k, v in values.items()}


@pytest.mark.parametrize("case", ["default", *BEFORE["cases"]])
def test_every_composition_gives_its_values_from_before(case):
    overrides = [] if case == "default" else BEFORE["cases"][case]["overrides"]
    now = flat(OmegaConf.to_container(compose("train", overrides), resolve=False))
    assert now == expected(case)


@pytest.mark.parametrize("name", ["imagenet", "synthetic", "mnist"])
def test_data_configs_hold_only_data(name):
    text = (Path(CONFIG_DIR) / "data" / f"{name}.yaml").read_text()
    assert "@package" not in text  # the group's own package: `data`
    assert set(OmegaConf.create(text)) <= {"defaults"} | set(compose("train").data)


def test_small_data_brings_its_scale_and_imagenet_none():
    synthetic, imagenet = compose("train"), compose("train", ["data=imagenet"])
    scale = OmegaConf.load(Path(CONFIG_DIR) / "scale" / "synthetic.yaml")
    assert synthetic.model.width_mult == scale.model.width_mult == 0.25
    assert synthetic.trainer.max_images == scale.trainer.max_images
    assert imagenet.model.width_mult == 1.0 and imagenet.trainer.max_images > 1e8
    assert not (Path(CONFIG_DIR) / "scale" / "imagenet.yaml").exists()


def test_ensemble_config_has_runtime_and_data_but_no_training_keys():
    cfg = compose("ensemble", ["checkpoints=x.pt"])
    runtime_keys = {*RUNTIME_KEYS, *(k.removeprefix("runtime.") for k in ADDED if "runtime." in k)}
    assert set(cfg.runtime) == runtime_keys == set(compose("train").runtime)
    assert not {"model", "optim", "trainer"} & set(cfg)
