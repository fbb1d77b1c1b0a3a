"""The config's types, the one check of every composed config (`check`), run right after Hydra
composes it and before a command does anything: `optim.lr=fast`, `runtime.amp=fp17`,
`data.batch_size=0`, `optim.lr=nan` and `+optim.lrr=0.1` are refused naming the key, not mid-start.

One dataclass per config group. A field's annotation is what its value must be once
interpolations are resolved:
- a type (`float` takes an int too; a float must be finite: NaN and infinity are never a setting;
  `Number` is int or float, e.g. 1e6 images);
- a `Literal` of the choices of a fixed-choice key (`Literal["auto", "none", "bf16", "fp16"]`):
  checked here once, so the code that reads the key only dispatches on it;
- `Annotated[type, Range(...)]`: a number within bounds (a count of images: whole and positive).
Cross-key rules (min_area <= max_area, pop_stats_batches needs BN) are checked where the values are
used, with the same error type (ConfigError).

A key the schema does not know is refused, with the nearest known key ("did you mean"): a typo
that Hydra lets through with `+` would otherwise train with the key silently ignored. A key a group
may lack (data.synthetic for data=synthetic only, cluster.* under hydra/launcher=slurm only) is
simply absent from the composed config. Adding a config key: add a field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from bnrepro.errors import ConfigError

Number = int | float


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number: low <= x <= high (or < with *_open); `whole`: an integral value (1e6
    images is fine, 1.5 is not)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False

    def holds(self, x: float) -> bool:
        if self.whole and x != int(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]  # a probability, an accuracy
Count = Annotated[int, Range(1)]  # at least one
NonNegativeCount = Annotated[int, Range(0)]
Images = Annotated[Number, Range(1, whole=True)]  # a number of images: 1e6 is fine
Seed = Annotated[int, Range(0, 2**32 - 1)]  # what numpy's seeding takes


@dataclasses.dataclass
class ModelSchema:
    name: str
    batch_norm: bool
    activation: Literal["relu", "sigmoid"]
    lrn: bool
    dropout: Annotated[float, Range(0, 1, high_open=True)]
    separable_conv1: bool
    width_mult: Positive
    head_bn: bool
    per_activation_bn: Annotated[int, Range(0, 10)]  # inception modules, counted from the last
    init_gain: Positive
    bn_eps: Positive
    bn_momentum: Annotated[float, Range(0, 1, low_open=True)]
    sync_bn: bool


@dataclasses.dataclass
class OptimSchema:
    lr: Positive
    lr_scaling: Literal["linear", "sqrt", "none"]
    momentum: Annotated[float, Range(0, 1, high_open=True)]
    nesterov: bool
    weight_decay: NonNegative
    decay_bn_and_bias: bool
    decay_rate: Annotated[float, Range(0, 1, low_open=True)]
    decay_epochs: Positive
    warmup_images: Literal["auto"] | Annotated[int, Range(0)]


@dataclasses.dataclass
class MonitorSchema:
    layers: list[str]
    every_images: Images


@dataclasses.dataclass
class TrainerSchema:
    max_images: Images
    eval_every_images: Images
    ckpt_every_images: Images
    log_every_images: Images
    keep_last: Count
    target_top1: Fraction
    eval_max_images: Images | None
    grad_accum: Count
    resume: str | None
    pop_stats_batches: Literal["auto"] | NonNegativeCount
    monitor: MonitorSchema
    preempt_signal: str  # a signal name (USR2): checked against the platform's signals
    expect_divergence: bool
    diverge_loss_factor: Positive | None


@dataclasses.dataclass
class RuntimeSchema:
    device: Literal["auto", "cpu", "cuda"]
    amp: Literal["auto", "none", "bf16", "fp16"]
    channels_last: Literal["auto"] | bool
    compile: bool
    tf32: bool
    progress: bool
    dist_timeout_s: Positive


@dataclasses.dataclass
class AugmentSchema:
    min_area: Annotated[float, Range(0, 1, low_open=True)]
    max_area: Annotated[float, Range(0, 1, low_open=True)]
    min_aspect: Positive
    max_aspect: Positive
    flip: bool
    color_strength: Annotated[float, Range(0, 2)]


@dataclasses.dataclass
class SyntheticSchema:
    train_per_class: Count
    val_per_class: Count
    min_side: Count
    max_side: Count
    quality: Annotated[int, Range(1, 100)]
    seed: Seed


@dataclasses.dataclass
class DataSchema:
    name: str
    root: str | None
    num_classes: Annotated[int, Range(2)]
    in_chans: Count
    batch_size: Count
    num_workers: NonNegativeCount
    train_crop: Count
    eval_resize: Count
    eval_crop: Count
    mean: list[float]
    std: list[Positive]
    shuffle: Literal["shards", "within_shard", "full"]
    shard_size: Count
    decode: Literal["cpu", "gpu", "dali"]
    train_size: Count | None  # bnrepro-plan's counts
    val_size: Count | None
    augment: AugmentSchema
    synthetic: SyntheticSchema  # data=synthetic only


@dataclasses.dataclass
class WandbSchema:
    # dryrun and run: wandb's older names for offline and online
    mode: Literal["online", "offline", "disabled", "dryrun", "run"]
    project: str | None
    entity: str | None
    name: str | None  # null: the run's own name (run_name; bnrepro-ensemble's own)
    group: str | None
    tags: list[str]
    notes: str | None
    log_checkpoints: bool


@dataclasses.dataclass
class LoggerSchema:
    wandb: WandbSchema


@dataclasses.dataclass
class ClusterSchema:  # hydra/launcher=slurm only
    partition: str | None
    account: str | None
    qos: str | None
    constraint: str | None
    nodes: Count
    gpus_per_node: NonNegativeCount
    tasks_per_node: Count
    cpus_per_task: Count
    mem_gb: Positive | None
    timeout_min: Count
    signal_delay_s: NonNegativeCount
    max_num_timeout: NonNegativeCount
    array_parallelism: Count


@dataclasses.dataclass
class MemberSchema:  # a row of bn_x30_ensemble's members table
    init_gain: Positive
    dropout: Annotated[float, Range(0, 1, high_open=True)]
    head_bn: bool
    per_activation_bn: Annotated[int, Range(0, 10)]


@dataclasses.dataclass
class TrainSchema:
    """configs/train.yaml, composed."""

    experiment_name: str
    seed: Seed
    run_name: str
    out_dir: str
    model: ModelSchema
    optim: OptimSchema
    trainer: TrainerSchema
    runtime: RuntimeSchema
    data: DataSchema
    logger: LoggerSchema
    cluster: ClusterSchema
    member: int  # bn_x30_ensemble only
    members: list[MemberSchema]


@dataclasses.dataclass
class PlanSettingsSchema:
    gpus: Literal["auto"] | Count
    nodes: Count
    train_flops_factor: Positive
    sustained_tflops: Positive
    images_per_s: Positive | None
    pipeline_images_per_s_per_core: Positive
    plot_width: Annotated[int, Range(8)]
    plot_height: Annotated[int, Range(3)]


@dataclasses.dataclass
class PlanSchema(TrainSchema):
    """configs/plan.yaml, composed: bnrepro-train's config plus plan.*."""

    plan: PlanSettingsSchema


@dataclasses.dataclass
class EnsembleSchema:
    """configs/ensemble.yaml, composed."""

    checkpoints: str | list[str]
    member_checkpoint: Literal["last", "best"]
    crops: Literal[1, 10, 144]
    resolution: Count | None
    batch_crops: Count
    max_images: Count | None
    pop_stats_batches: Literal["auto"] | NonNegativeCount
    save_probs: bool
    results_dir: str | None
    seed: Seed
    experiment_name: str | None
    out_dir: str
    data: DataSchema
    runtime: RuntimeSchema
    logger: LoggerSchema
    cluster: ClusterSchema


@dataclasses.dataclass
class BnStatsSchema:
    """bnrepro-bn-stats: a checkpoint's seed and data config with this machine's runtime."""

    seed: Seed
    data: DataSchema
    runtime: RuntimeSchema


SCHEMAS = {"train": TrainSchema, "plan": PlanSchema, "ensemble": EnsembleSchema}


def check(cfg: DictConfig, schema: type) -> None:
    """ConfigError naming the first key the schema does not know, or whose (resolved) value has
    the wrong type or lies outside its range."""
    for key, value, expected in _typed_values(cfg, schema, ""):
        if expected is None:
            raise ConfigError(f"{key} is not a config key{did_you_mean(key, schema)}: "
                              "`--cfg job` prints the composed config")  # fmt: skip
        if not _fits(value, expected):
            raise ConfigError(
                f"{key}={value!r} is not valid: {key} takes {_describe(expected)}. Fix the override "
                "or the YAML (`--cfg job` prints the composed config; bnrepro/schema.py lists every "
                "key's type)"
            )


def unchecked_keys(cfg: DictConfig, schema: type) -> list[str]:
    """Dotted keys of `cfg` that `schema` does not type (check refuses them)."""
    return [key for key, _, expected in _typed_values(cfg, schema, "") if expected is None]


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema, include_extras=True)


def _typed_values(node: DictConfig, schema: type, prefix: str):
    """(dotted key, resolved value, expected type or None) for every leaf of `node`."""
    hints = _hints(schema)
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            continue  # ??? is refused where it is read, with a message that says what to set
        value = node[key]
        expected = hints.get(key)
        if dataclasses.is_dataclass(expected) and isinstance(value, DictConfig):
            yield from _typed_values(value, expected, full + ".")
        elif _list_of_dataclass(expected) and isinstance(value, ListConfig):
            row = typing.get_args(expected)[0]
            for i, item in enumerate(value):
                yield from _typed_values(item, row, f"{full}.{i}.")
        else:
            yield full, _plain(value), expected


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for key, expected in _hints(schema).items():
        if dataclasses.is_dataclass(expected):
            keys += _all_keys(expected, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def did_you_mean(key: str, schema: type, groups: list[str] = ()) -> str:
    """ "(did you mean optim.lr?)" for a key close to one of the schema's (or to a config group's
    name: `expriment` -> experiment), else ""."""
    close = difflib.get_close_matches(key, [*groups, *_all_keys(schema)], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _list_of_dataclass(expected) -> bool:
    args = typing.get_args(expected)
    return typing.get_origin(expected) is list and bool(args) and dataclasses.is_dataclass(args[0])


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def _fits(value, expected) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin is Annotated:
        base, *constraints = typing.get_args(expected)
        return _fits(value, base) and all(c.holds(value) for c in constraints)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(expected))
    if origin is Literal:  # True == 1 to Python: compare types too
        return any(type(value) is type(c) and value == c for c in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if dataclasses.is_dataclass(expected):
        return isinstance(value, dict)
    if isinstance(value, bool):  # bool is an int to Python, never to a config
        return expected is bool
    if expected is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, expected)


def _describe(expected) -> str:
    origin = typing.get_origin(expected)
    if origin is Annotated:
        base, *constraints = typing.get_args(expected)
        bounds = " and ".join(c.describe() for c in constraints)
        whole = any(c.whole for c in constraints)
        return f"{'a whole number' if whole else _describe(base)} {bounds}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(expected))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(expected)))
    if expected is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(expected)[0])}"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))
