"""The public config's types, checked right after Hydra composes it and before a command does
anything (`check_types`), so `optim.lr=fast` is refused naming the key, not mid-start.

One dataclass per config group; a field's annotation is the type its value must have once
interpolations are resolved (`float` takes an int too; `Number` is int or float, e.g. 1e6 images,
whose whole-ness train.check_config checks). A key that a group may lack (data.synthetic exists
for data=synthetic only) is simply absent from the composed config: only present keys are checked.

Adding a config key: add a field to the group's dataclass below. A key the schema lacks is not
refused at run time (a newer YAML keeps working); tests/test_schema.py fails, naming it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bnrepro.errors import ConfigError

Number = int | float


@dataclasses.dataclass
class ModelSchema:
    name: str
    batch_norm: bool
    activation: str
    lrn: bool
    dropout: float
    separable_conv1: bool
    width_mult: float
    head_bn: bool
    init_gain: float
    bn_eps: float
    bn_momentum: float
    sync_bn: bool


@dataclasses.dataclass
class OptimSchema:
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    decay_bn_and_bias: bool
    decay_rate: float
    decay_epochs: float
    warmup_images: str | Number  # auto | images


@dataclasses.dataclass
class MonitorSchema:
    layers: list[str]
    every_images: Number


@dataclasses.dataclass
class TrainerSchema:
    max_images: Number
    eval_every_images: Number
    ckpt_every_images: Number
    log_every_images: Number
    keep_last: int
    target_top1: float
    eval_max_images: Number | None
    grad_accum: int
    resume: str | None
    pop_stats_batches: int
    monitor: MonitorSchema
    preempt_signal: str
    expect_divergence: bool
    diverge_loss_factor: float


@dataclasses.dataclass
class RuntimeSchema:
    device: str
    amp: str
    channels_last: str | bool  # auto | true | false
    compile: bool
    tf32: bool
    progress: bool
    dist_timeout_s: Number


@dataclasses.dataclass
class AugmentSchema:
    min_area: float
    max_area: float
    min_aspect: float
    max_aspect: float
    flip: bool
    color_strength: float


@dataclasses.dataclass
class SyntheticSchema:
    train_per_class: int
    val_per_class: int
    min_side: int
    max_side: int
    quality: int
    seed: int


@dataclasses.dataclass
class DataSchema:
    name: str
    root: str | None
    num_classes: int
    in_chans: int
    batch_size: int
    num_workers: int
    train_crop: int
    eval_resize: int
    eval_crop: int
    mean: list[float]
    std: list[float]
    shuffle: str
    shard_size: int
    decode: str
    train_size: int | None  # bnrepro-plan's counts
    val_size: int | None
    augment: AugmentSchema
    synthetic: SyntheticSchema  # data=synthetic only


@dataclasses.dataclass
class WandbSchema:
    mode: str
    project: str | None
    entity: str | None
    group: str | None
    tags: list[str]
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
    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    cpus_per_task: int
    mem_gb: Number | None
    timeout_min: int
    signal_delay_s: int
    max_num_timeout: int
    array_parallelism: int


@dataclasses.dataclass
class MemberSchema:  # a row of bn_x30_ensemble's members table
    init_gain: float
    dropout: float
    head_bn: bool


@dataclasses.dataclass
class TrainSchema:
    """configs/train.yaml, composed."""

    experiment_name: str
    seed: int
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
class EnsembleSchema:
    """configs/ensemble.yaml, composed."""

    checkpoints: str | list[str]
    member_checkpoint: str
    crops: int
    resolution: int
    batch_crops: int
    max_images: int | None
    pop_stats_batches: int
    save_probs: bool
    results_dir: str | None
    seed: int
    experiment_name: str | None
    out_dir: str
    data: DataSchema
    runtime: RuntimeSchema
    logger: LoggerSchema
    cluster: ClusterSchema


SCHEMAS = {"train": TrainSchema, "ensemble": EnsembleSchema}


def check_types(cfg: DictConfig, schema: type) -> None:
    """ConfigError naming the first key whose (resolved) value has the wrong type."""
    for key, value, expected in _typed_values(cfg, schema, ""):
        if not _fits(value, expected):
            raise ConfigError(
                f"{key}={value!r} is {_article(type(value).__name__)}, but {key} takes "
                f"{_describe(expected)}: fix the override or the YAML (`--cfg job` prints the "
                "composed config; bnrepro/schema.py lists every key's type)"
            )


def unchecked_keys(cfg: DictConfig, schema: type) -> list[str]:
    """Dotted keys of `cfg` that `schema` does not type (tests/test_schema.py wants none)."""
    return [key for key, _, expected in _typed_values(cfg, schema, "") if expected is None]


def _typed_values(node: DictConfig, schema: type, prefix: str):
    """(dotted key, resolved value, expected type or None) for every leaf of `node`."""
    hints = typing.get_type_hints(schema)
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


def _list_of_dataclass(expected) -> bool:
    args = typing.get_args(expected)
    return typing.get_origin(expected) is list and bool(args) and dataclasses.is_dataclass(args[0])


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def _fits(value, expected) -> bool:
    if expected is None or expected is Any:
        return True
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if dataclasses.is_dataclass(expected):
        return isinstance(value, dict)
    if isinstance(value, bool):  # bool is an int to Python, never to a config
        return expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _describe(expected) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(expected))
    if expected is type(None):
        return "null"
    if typing.get_origin(expected) is list:
        return f"a list of {_describe(typing.get_args(expected)[0])}"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def _article(name: str) -> str:
    name = {"str": "string", "int": "integer", "float": "number", "NoneType": "null"}.get(
        name, name
    )
    return ("an " if name[0] in "aeiou" else "a ") + name
