"""Where the YAML lives, the one way to get a checked config, and the quantities derived from it.

The YAML is in the repository's top-level `configs/`; an installed wheel carries the same files
as `bnrepro/configs/`. `CONFIG_DIR` is whichever exists, so Hydra apps work both ways.

    cfg = compose_checked("train", ["experiment=bn_x5", "optim.lr=0.01"])  # composed, checked
    runs = sweep(["experiment=inception,bn_x5", "optim.lr=choice(0.01,0.1)"])  # Hydra's -m syntax

Every command that reads a config gets it checked (bnrepro/schema.py): the Hydra commands right
after composition (cli.py), `compose_checked` for the rest (bnrepro-plan, bnrepro-dashboard, tests).
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bnrepro import sweeps
from bnrepro.errors import ConfigError, one_line
from bnrepro.paper import PAPER_BATCH

_PKG = Path(__file__).resolve().parent
CONFIG_DIR = str(_PKG / "configs" if (_PKG / "configs").is_dir() else _PKG.parent / "configs")


def comma_list(text: str | None) -> list[str]:
    """The `${comma_list:...}` resolver: "paper, bn" -> ["paper", "bn"]; "" or null -> [] (W&B's
    WANDB_TAGS as logger.wandb.tags)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


# The YAML's own resolvers, registered wherever a config is composed (every command imports
# this module): ${sweep_tag:} in run_name (bnrepro/sweeps.py), ${comma_list:...} in logger/.
OmegaConf.register_new_resolver("sweep_tag", sweeps.sweep_tag, replace=True)
OmegaConf.register_new_resolver("comma_list", comma_list, replace=True)


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The config a Hydra app would get, unchecked (tests that build wrong configs on purpose);
    no run folder is made. `compose_checked` is the checked one."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [], return_hydra_config=False)


def compose_checked(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The composed config of configs/<config_name>.yaml with `overrides`, checked against its
    schema; ConfigError naming the key otherwise, or saying why Hydra could not compose it (an
    unknown key or option, an override that does not parse)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bnrepro.schema import SCHEMAS, check

    try:
        cfg = compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(composition_error(e, config_name)) from e
    check(cfg, SCHEMAS[config_name])
    return cfg


def composition_error(error: Exception, config_name: str) -> str:
    """Hydra's refusal to compose, on one line: where it looked is dropped (noise), and an unknown
    key, config group or option gets the nearest known one ("did you mean")."""
    import difflib
    import re

    from hydra.errors import MissingConfigException

    from bnrepro.schema import SCHEMAS, did_you_mean

    missing = getattr(error, "missing_cfg_file", None) or ""
    if isinstance(error, MissingConfigException) and error.options and "/" in missing:
        group, option = missing.rsplit("/", 1)  # experiment=bn_x31: experiment/bn_x31 is no file
        close = difflib.get_close_matches(option, error.options, n=1, cutoff=0.5)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={option} is not an option of {group}{hint}: the options are " + ", ".join(
            error.options
        )
    cause = f" ({one_line(error.__cause__)})" if error.__cause__ is not None else ""
    message = one_line(error).split(" | Config search path:")[0] + cause
    unknown = re.match(r"Could not override '([\w.]+)'", message)
    if unknown:  # Hydra's advice, "+key=value", would only meet the schema's refusal
        key = unknown.group(1)
        groups = sorted(
            p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra"
        )
        return f"{key} is not a config key{did_you_mean(key, SCHEMAS[config_name], groups)}"
    return message


def sweep(overrides: list[str]) -> list[list[str]]:
    """Every combination of a -m command line's sweeps, as Hydra's basic sweeper makes them:
    `a=1,2`, `a=choice(1,2)`, `a=range(1,3)`, `a=glob(*)` (against nothing: literal), quoting and
    brackets as Hydra parses them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:  # `oops`, `a=(`: the user's line, not a bug
        raise ConfigError(one_line(e)) from e
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return batch


def check_run(cfg: DictConfig) -> None:
    """A training config's checks between keys, whose messages name the fix (each key's own type
    and range were checked when it was composed: bnrepro/schema.py). bnrepro-train runs them at
    start-up, bnrepro-plan before it plans."""
    t = cfg.trainer
    if t.pop_stats_batches != "auto" and t.pop_stats_batches and not has_bn(cfg.model):
        raise ConfigError(
            "trainer.pop_stats_batches needs a BN network: set model.batch_norm=true, or "
            "trainer.pop_stats_batches=auto (Algorithm 2 where there is BN)"
        )
    if cfg.model.per_activation_bn:
        if not cfg.model.batch_norm:
            raise ConfigError(
                "model.per_activation_bn replaces BN layers: set model.batch_norm=true"
            )
        if cfg.data.eval_crop != cfg.data.train_crop:
            raise ConfigError(
                f"model.per_activation_bn builds its BN for data.train_crop={cfg.data.train_crop} "
                f"px activations, but data.eval_crop={cfg.data.eval_crop}: set them equal"
            )
    if "member" in cfg and cfg.member not in range(len(cfg.members)):  # bn_x30_ensemble's table
        raise ConfigError(
            f"member={cfg.member!r} is no row of the ensemble's members table: use 0-"
            f"{len(cfg.members) - 1} (configs/experiment/{cfg.experiment_name}.yaml)"
        )
    if not hasattr(signal, f"SIG{t.preempt_signal.removeprefix('SIG')}"):
        raise ConfigError(f"trainer.preempt_signal={t.preempt_signal!r} is no signal (e.g. USR2)")


# [ours] Algorithm 2's default number of training batches (trainer.pop_stats_batches=auto, the
# ensemble's, bnrepro-bn-stats'): 3,200 images at the paper's batch of 32, a quarter of a percent
# of an ImageNet epoch, forward only (about 0.1% of a BN-x30 run's compute). The paper averages
# over "multiple mini-batches" (section 3.1) without a number; each BN channel's mean and
# variance is then an average over 100 batch statistics of 32 x H x W values each, and a
# per-activation BN's over 3,200 values. Never more than one epoch: beyond it the batches repeat
# images (only their augmentation changes), nothing new about the population.
POP_STATS_BATCHES = 100


def pop_stats_batches(value: int | str, bn: bool, batches_per_epoch: int) -> int:
    """trainer.pop_stats_batches (or the ensemble's) as a number of batches: `auto` = 100, or
    one epoch's batches if fewer, on a network with BN, and 0 (moving averages only) without."""
    if value != "auto":
        return int(value)
    return min(POP_STATS_BATCHES, batches_per_epoch) if bn else 0


def has_bn(model_cfg: DictConfig) -> bool:
    """Whether the configured network has a BN layer (Algorithm 2 applies to it)."""
    return bool(model_cfg.batch_norm or model_cfg.head_bn)


def global_batch(batch_size: int, processes: int, grad_accum: int) -> int:
    """Images per optimizer step: data.batch_size per process x processes x trainer.grad_accum."""
    return batch_size * processes * grad_accum


LR_SCALINGS = {  # optim.lr_scaling: the factor on the paper's batch-32 LR at a global batch B
    "linear": lambda ratio: ratio,  # Goyal et al. 2017: B/32 (docs/departures.md says why)
    "sqrt": math.sqrt,  # Krizhevsky 2014, Hoffer et al. 2017: sqrt(B/32)
    "none": lambda ratio: 1.0,  # every synchronous step takes the paper's own LR
}


def effective_lr(lr: float, global_batch: int, scaling: str) -> float:
    """The paper's LR belongs to a batch of 32 (optim.lr); at a global batch B it becomes
    lr x B/32 (linear), lr x sqrt(B/32) (sqrt) or lr (none): optim.lr_scaling."""
    return lr * LR_SCALINGS[scaling](global_batch / PAPER_BATCH)


def lr_rule(scaling: str, global_batch: int) -> str:
    """How the effective LR came from optim.lr, in words: "x 256/32, optim.lr_scaling=linear"."""
    ratio = f"{global_batch}/{PAPER_BATCH}"
    factor = {"linear": f"x {ratio}", "sqrt": f"x sqrt({ratio})", "none": "unscaled"}[scaling]
    return f"{factor}, optim.lr_scaling={scaling}"


def model_kwargs(model_cfg: DictConfig, num_classes: int, in_chans: int, img_size: int) -> dict:
    """Keyword arguments for timm.create_model(model_cfg.name, **kwargs): every key of the model
    config except those that are not the network's own (name, sync_bn). With per_activation_bn
    also img_size (data.train_crop: the activations' size follows from it); without, neither, so
    the architecture recorded in checkpoints from before the key is still this one (resume)."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "sync_bn")}
    if kwargs.get("per_activation_bn"):
        kwargs["img_size"] = img_size
    else:
        kwargs.pop("per_activation_bn", None)
    return dict(kwargs, num_classes=num_classes, in_chans=in_chans)
